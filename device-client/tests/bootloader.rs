//! Bootloader backends against real files: the `file` env, and fake `fw_printenv`/`fw_setenv`/
//! `grub-editenv`/slot scripts that keep their variables in a tempdir.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use device_client::bootloader::{self, Bootloader, BootloaderConfig, EnvVars};
use protocol::install::{BootInfo, Slot};

fn info(booted: Slot, pending: Option<Slot>) -> BootInfo {
    BootInfo { booted, pending }
}

/// Writes an executable shell script. A child process writes it: a file this process held
/// open for writing could be inherited by a child another test thread forks at that moment,
/// and executing the script while that child lives fails with ETXTBSY ("Text file busy").
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut writer = std::process::Command::new("/bin/sh")
        .args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writer.stdin.take().unwrap().write_all(format!("#!/bin/sh\n{body}").as_bytes()).unwrap();
    assert!(writer.wait().unwrap().success(), "cannot write {}", path.display());
    path
}

/// `name=value` lines, as the fake env tools store them.
fn read_vars(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn var(path: &Path, name: &str) -> Option<String> {
    read_vars(path).into_iter().rev().find(|(k, _)| k == name).map(|(_, v)| v).filter(|v| !v.is_empty())
}

/// What the documented U-Boot/GRUB scripts do at power-on, on the fake env: count a trial
/// boot, give up after `limit` tries, and put the chosen slot on the kernel command line.
fn firmware_boot(env: &Path, cmdline: &Path, limit: u32, set: impl Fn(&str, &str)) {
    let trial = var(env, "upgrade_available").as_deref() == Some("1");
    let try_slot = var(env, "otamesh_try_slot");
    let mut slot = var(env, "otamesh_slot").unwrap_or_else(|| "a".into());
    if trial {
        if let Some(try_slot) = try_slot {
            let count: u32 = var(env, "bootcount").map_or(0, |c| c.parse().unwrap()) + 1;
            if count > limit {
                set("upgrade_available", "0");
                set("otamesh_try_slot", "");
                set("bootcount", "0");
            } else {
                set("bootcount", &count.to_string());
                slot = try_slot;
            }
        }
    }
    fs::write(cmdline, format!("console=ttyS0 root=/dev/mmcblk0p2 otamesh.slot={slot} quiet\n")).unwrap();
}

fn err_text(error: anyhow::Error) -> String {
    format!("{error:#}")
}

mod config {
    use super::*;

    fn parse(text: &str) -> Result<BootloaderConfig, toml::de::Error> {
        #[derive(serde::Deserialize)]
        struct Agent {
            bootloader: BootloaderConfig,
        }
        toml::from_str::<Agent>(text).map(|agent| agent.bootloader)
    }

    #[test]
    fn default_is_file_with_two_tries() {
        assert_eq!(BootloaderConfig::default(), BootloaderConfig::File { env: None, max_tries: 2 });
        assert_eq!(parse("[bootloader]\nkind = \"file\"\n").unwrap(), BootloaderConfig::default());
    }

    #[test]
    fn every_backend_parses_from_toml() {
        let file = parse("[bootloader]\nkind = \"file\"\nenv = \"/tmp/env\"\nmax_tries = 3\n").unwrap();
        assert_eq!(file, BootloaderConfig::File { env: Some("/tmp/env".into()), max_tries: 3 });

        let uboot = parse(
            "[bootloader]\nkind = \"uboot\"\nfw_setenv = \"/usr/sbin/fw_setenv\"\n\
             [bootloader.vars]\nbootcount = \"boot_tries\"\n",
        )
        .unwrap();
        assert_eq!(
            uboot,
            BootloaderConfig::Uboot {
                fw_printenv: "fw_printenv".into(),
                fw_setenv: "/usr/sbin/fw_setenv".into(),
                cmdline: "/proc/cmdline".into(),
                vars: EnvVars { bootcount: "boot_tries".into(), ..EnvVars::default() },
                timeout_secs: 30,
            }
        );

        let grub = parse("[bootloader]\nkind = \"grub\"\nenv = \"/boot/efi/EFI/debian/grubenv\"\n").unwrap();
        assert_eq!(
            grub,
            BootloaderConfig::Grub {
                grub_editenv: "grub-editenv".into(),
                env: "/boot/efi/EFI/debian/grubenv".into(),
                cmdline: "/proc/cmdline".into(),
                vars: EnvVars::default(),
                timeout_secs: 30,
            }
        );

        let command = parse(
            "[bootloader]\nkind = \"command\"\nboot_info = [\"/usr/local/bin/slotctl\", \"info\"]\n\
             activate = [\"slotctl\", \"activate\"]\ncommit = [\"slotctl\", \"commit\"]\n\
             roll_back = [\"slotctl\", \"roll-back\"]\ntimeout_secs = 5\n",
        )
        .unwrap();
        assert_eq!(
            command,
            BootloaderConfig::Command {
                boot_info: vec!["/usr/local/bin/slotctl".into(), "info".into()],
                activate: vec!["slotctl".into(), "activate".into()],
                commit: vec!["slotctl".into(), "commit".into()],
                roll_back: vec!["slotctl".into(), "roll-back".into()],
                timeout_secs: 5,
            }
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        let typo = parse("[bootloader]\nkind = \"file\"\nmax_trys = 3\n").unwrap_err().to_string();
        assert!(typo.contains("max_trys"), "{typo}");
        let kind = parse("[bootloader]\nkind = \"lilo\"\n").unwrap_err().to_string();
        assert!(kind.contains("lilo"), "{kind}");
        let var = parse("[bootloader]\nkind = \"uboot\"\n[bootloader.vars]\nslott = \"x\"\n").unwrap_err().to_string();
        assert!(var.contains("slott"), "{var}");
    }

    #[test]
    fn open_rejects_unusable_configs() {
        let dir = tempfile::tempdir().unwrap();
        let zero_tries = BootloaderConfig::File { env: None, max_tries: 0 };
        assert!(err_text(bootloader::open(&zero_tries, dir.path()).err().unwrap()).contains("max_tries"));
        let empty_command = BootloaderConfig::Command {
            boot_info: vec![],
            activate: vec!["true".into()],
            commit: vec!["true".into()],
            roll_back: vec!["true".into()],
            timeout_secs: 30,
        };
        assert!(err_text(bootloader::open(&empty_command, dir.path()).err().unwrap()).contains("boot_info"));
        let same_var = BootloaderConfig::Uboot {
            fw_printenv: "fw_printenv".into(),
            fw_setenv: "fw_setenv".into(),
            cmdline: "/proc/cmdline".into(),
            vars: EnvVars { try_slot: "otamesh_slot".into(), ..EnvVars::default() },
            timeout_secs: 30,
        };
        assert!(err_text(bootloader::open(&same_var, dir.path()).err().unwrap()).contains("otamesh_slot"));
    }
}

mod file {
    use super::*;

    /// A new agent process: for this backend, a reboot.
    fn boot(dir: &Path) -> Box<dyn Bootloader> {
        bootloader::open(&BootloaderConfig::default(), dir).unwrap()
    }

    #[test]
    fn fresh_device_runs_a_and_creates_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let mut bl = boot(dir.path());
        assert_eq!(bl.name(), "file");
        assert_eq!(bl.boot_info().unwrap(), info(Slot::A, None));
        let text = fs::read_to_string(dir.path().join("bootenv")).unwrap();
        assert!(text.contains("active=a") && text.contains("pending=\n"), "{text}");
        // Nothing beside the env: no temp file left, whatever its name.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["bootenv"]);
    }

    #[test]
    fn activate_reboot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut bl = boot(dir.path());
        assert_eq!(bl.boot_info().unwrap(), info(Slot::A, None));
        bl.activate(Slot::B).unwrap();

        let mut bl = boot(dir.path());
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        // Asking again in the same process is the same boot, not another try.
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.commit(Slot::B).unwrap();

        for _ in 0..3 {
            assert_eq!(boot(dir.path()).boot_info().unwrap(), info(Slot::B, None));
        }
    }

    #[test]
    fn activate_then_roll_back_runs_a() {
        let dir = tempfile::tempdir().unwrap();
        boot(dir.path()).activate(Slot::B).unwrap();
        let mut bl = boot(dir.path());
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.roll_back(Slot::A).unwrap();
        assert_eq!(boot(dir.path()).boot_info().unwrap(), info(Slot::A, None));
    }

    #[test]
    fn boot_count_exhausted_falls_back_to_active() {
        let dir = tempfile::tempdir().unwrap();
        boot(dir.path()).activate(Slot::B).unwrap();
        // Two tries (the default), each a boot that never commits.
        assert_eq!(boot(dir.path()).boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        assert_eq!(boot(dir.path()).boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        assert_eq!(boot(dir.path()).boot_info().unwrap(), info(Slot::A, None));
        assert_eq!(boot(dir.path()).boot_info().unwrap(), info(Slot::A, None));
    }

    #[test]
    fn max_tries_and_env_path_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("sub/env");
        let config = BootloaderConfig::File { env: Some(env.clone()), max_tries: 1 };
        bootloader::open(&config, dir.path()).unwrap().activate(Slot::B).unwrap();
        assert_eq!(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        assert_eq!(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap(), info(Slot::A, None));
        assert!(env.exists() && !dir.path().join("bootenv").exists());
    }

    #[test]
    fn corrupt_env_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootenv");
        for (contents, expect) in [
            (&b"active=c\n"[..], "active=\"c\""),
            (b"active=a\npending=x\n", "pending=\"x\""),
            (b"active=a\nboot_count=-1\n", "boot_count"),
            (b"active=a\nactive=b\n", "set twice"),
            (b"pending=b\n", "no `active=` line"),
            (b"active=a\ncolour=blue\n", "colour"),
            (b"garbage\n", "not `key=value`"),
            (b"\xff\xfe\x00binary", "UTF-8"),
        ] {
            fs::write(&path, contents).unwrap();
            let error = err_text(boot(dir.path()).boot_info().unwrap_err());
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(expect), "{expect}: {error}");
            assert!(error.contains("delete it"), "{error}");
            // Nothing was rewritten over the evidence.
            assert_eq!(fs::read(&path).unwrap(), contents);
        }
    }
}

mod uboot {
    use super::*;

    struct Fake {
        dir: tempfile::TempDir,
        config: BootloaderConfig,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let env = dir.path().join("ubootenv");
            let env = env.display();
            let fw_printenv = script(
                dir.path(),
                "fw_printenv",
                &format!(
                    r###"[ "$1" = "-n" ] || {{ echo "fake fw_printenv: only -n VAR" >&2; exit 2; }}
line=$(grep "^$2=" "{env}" 2>/dev/null | tail -n 1)
[ -n "$line" ] || {{ echo "## Error: \"$2\" not defined" >&2; exit 1; }}
printf '%s\n' "${{line#*=}}"
"###
                ),
            );
            let fw_setenv = script(
                dir.path(),
                "fw_setenv",
                &format!(
                    r#"touch "{env}"
grep -v "^$1=" "{env}" > "{env}.new"
[ $# -lt 2 ] || printf '%s=%s\n' "$1" "$2" >> "{env}.new"
mv "{env}.new" "{env}"
"#
                ),
            );
            let cmdline = dir.path().join("cmdline");
            fs::write(&cmdline, "console=ttyS0 otamesh.slot=a\n").unwrap();
            let config =
                BootloaderConfig::Uboot { fw_printenv, fw_setenv, cmdline, vars: EnvVars::default(), timeout_secs: 10 };
            Fake { dir, config }
        }

        fn env(&self) -> PathBuf {
            self.dir.path().join("ubootenv")
        }

        fn open(&self) -> Box<dyn Bootloader> {
            bootloader::open(&self.config, self.dir.path()).unwrap()
        }

        /// Power-on: U-Boot's bootcount logic, then a new agent.
        fn reboot(&self) -> Box<dyn Bootloader> {
            let env = self.env();
            let set = |k: &str, v: &str| {
                let mut vars: Vec<_> = read_vars(&env).into_iter().filter(|(name, _)| name != k).collect();
                vars.push((k.to_string(), v.to_string()));
                let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                fs::write(&env, text).unwrap();
            };
            firmware_boot(&env, &self.dir.path().join("cmdline"), 2, set);
            self.open()
        }
    }

    #[test]
    fn activate_reboot_commit() {
        let fake = Fake::new();
        let mut bl = fake.open();
        assert_eq!(bl.name(), "uboot");
        // A fresh env has none of our variables.
        assert_eq!(bl.boot_info().unwrap(), info(Slot::A, None));
        bl.activate(Slot::B).unwrap();
        assert_eq!(var(&fake.env(), "otamesh_try_slot").as_deref(), Some("b"));
        assert_eq!(var(&fake.env(), "upgrade_available").as_deref(), Some("1"));
        assert_eq!(var(&fake.env(), "bootcount").as_deref(), Some("0"));
        // Before the reboot: still on a, b pending.
        assert_eq!(fake.open().boot_info().unwrap(), info(Slot::A, Some(Slot::B)));

        let mut bl = fake.reboot();
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.commit(Slot::B).unwrap();
        assert_eq!(var(&fake.env(), "otamesh_slot").as_deref(), Some("b"));
        assert_eq!(var(&fake.env(), "upgrade_available").as_deref(), Some("0"));
        assert_eq!(var(&fake.env(), "otamesh_try_slot"), None);
        assert_eq!(var(&fake.env(), "bootcount").as_deref(), Some("0"));

        assert_eq!(fake.reboot().boot_info().unwrap(), info(Slot::B, None));
    }

    #[test]
    fn activate_then_roll_back_runs_a() {
        let fake = Fake::new();
        fake.open().activate(Slot::B).unwrap();
        let mut bl = fake.reboot();
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.roll_back(Slot::A).unwrap();
        assert_eq!(var(&fake.env(), "otamesh_slot").as_deref(), Some("a"));
        assert_eq!(fake.reboot().boot_info().unwrap(), info(Slot::A, None));
    }

    #[test]
    fn firmware_fallback_shows_as_nothing_pending() {
        let fake = Fake::new();
        fake.open().activate(Slot::B).unwrap();
        fake.reboot();
        fake.reboot();
        assert_eq!(fake.reboot().boot_info().unwrap(), info(Slot::A, None));
    }

    #[test]
    fn bad_variable_value_names_variable_and_value() {
        let fake = Fake::new();
        fs::write(fake.env(), "upgrade_available=yes\n").unwrap();
        let error = err_text(fake.open().boot_info().unwrap_err());
        assert!(error.contains("upgrade_available") && error.contains("\"yes\""), "{error}");
        fs::write(fake.env(), "upgrade_available=1\notamesh_try_slot=c\n").unwrap();
        let error = err_text(fake.open().boot_info().unwrap_err());
        assert!(error.contains("otamesh_try_slot") && error.contains("\"c\""), "{error}");
    }

    #[test]
    fn cmdline_without_slot_is_an_error() {
        let fake = Fake::new();
        fs::write(fake.dir.path().join("cmdline"), "console=ttyS0 root=/dev/mmcblk0p2\n").unwrap();
        let error = err_text(fake.open().boot_info().unwrap_err());
        assert!(error.contains("otamesh.slot=a|b"), "{error}");
    }

    #[test]
    fn failing_fw_setenv_reports_its_stderr() {
        let fake = Fake::new();
        script(fake.dir.path(), "fw_setenv", "echo 'Cannot open /dev/mtd1: Permission denied' >&2\nexit 1\n");
        let error = err_text(fake.open().activate(Slot::B).unwrap_err());
        assert!(error.contains("fw_setenv otamesh_try_slot b"), "{error}");
        assert!(error.contains("Cannot open /dev/mtd1: Permission denied"), "{error}");
        assert!(error.contains("exit status: 1"), "{error}");
    }
}

mod grub {
    use super::*;

    struct Fake {
        dir: tempfile::TempDir,
        config: BootloaderConfig,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let grub_editenv = script(
                dir.path(),
                "grub-editenv",
                r#"file=$1; cmd=$2; shift 2
case "$cmd" in
create) : > "$file" ;;
list) [ -f "$file" ] || { echo "grub-editenv: error: cannot open '$file': No such file or directory" >&2; exit 1; }
      cat "$file" ;;
set) for kv in "$@"; do
       grep -v "^${kv%%=*}=" "$file" > "$file.new"; printf '%s\n' "$kv" >> "$file.new"; mv "$file.new" "$file"
     done ;;
*) echo "grub-editenv: unknown command $cmd" >&2; exit 1 ;;
esac
"#,
            );
            let env = dir.path().join("grubenv");
            let cmdline = dir.path().join("cmdline");
            fs::write(&cmdline, "BOOT_IMAGE=/boot/vmlinuz otamesh.slot=a ro\n").unwrap();
            let config = BootloaderConfig::Grub {
                grub_editenv,
                env: env.clone(),
                cmdline,
                vars: EnvVars::default(),
                timeout_secs: 10,
            };
            Fake { dir, config }
        }

        fn env(&self) -> PathBuf {
            self.dir.path().join("grubenv")
        }

        fn open(&self) -> Box<dyn Bootloader> {
            bootloader::open(&self.config, self.dir.path()).unwrap()
        }

        /// Power-on: the grub.cfg snippet, then a new agent.
        fn reboot(&self) -> Box<dyn Bootloader> {
            let env = self.env();
            let BootloaderConfig::Grub { grub_editenv, .. } = &self.config else { unreachable!() };
            let set = |k: &str, v: &str| {
                let status = std::process::Command::new(grub_editenv)
                    .arg(&env)
                    .arg("set")
                    .arg(format!("{k}={v}"))
                    .status()
                    .unwrap();
                assert!(status.success());
            };
            firmware_boot(&env, &self.dir.path().join("cmdline"), 2, set);
            self.open()
        }
    }

    #[test]
    fn missing_env_block_is_an_error_with_grubs_message() {
        let fake = Fake::new();
        let error = err_text(fake.open().boot_info().unwrap_err());
        assert!(error.contains("grub-editenv") && error.contains("No such file or directory"), "{error}");
    }

    #[test]
    fn activate_reboot_commit() {
        let fake = Fake::new();
        fs::write(fake.env(), "").unwrap();
        let mut bl = fake.open();
        assert_eq!(bl.name(), "grub");
        assert_eq!(bl.boot_info().unwrap(), info(Slot::A, None));
        bl.activate(Slot::B).unwrap();
        assert_eq!(var(&fake.env(), "otamesh_try_slot").as_deref(), Some("b"));
        assert_eq!(var(&fake.env(), "upgrade_available").as_deref(), Some("1"));
        assert_eq!(fake.open().boot_info().unwrap(), info(Slot::A, Some(Slot::B)));

        let mut bl = fake.reboot();
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.commit(Slot::B).unwrap();
        assert_eq!(var(&fake.env(), "otamesh_slot").as_deref(), Some("b"));
        assert_eq!(var(&fake.env(), "otamesh_try_slot"), None);
        assert_eq!(fake.reboot().boot_info().unwrap(), info(Slot::B, None));
    }

    #[test]
    fn activate_then_roll_back_runs_a() {
        let fake = Fake::new();
        fs::write(fake.env(), "").unwrap();
        fake.open().activate(Slot::B).unwrap();
        let mut bl = fake.reboot();
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.roll_back(Slot::A).unwrap();
        assert_eq!(fake.reboot().boot_info().unwrap(), info(Slot::A, None));
    }
}

mod command {
    use super::*;

    /// A `slotctl` that keeps the booted, committed and pending slots in files.
    fn slotctl(dir: &Path) -> BootloaderConfig {
        let d = dir.display();
        let slotctl = script(
            dir,
            "slotctl",
            &format!(
                r#"cd "{d}" || exit 1
case "$1" in
info) printf 'booted=%s pending=%s\n' "$(cat booted 2>/dev/null || echo a)" "$(cat pending 2>/dev/null)" ;;
activate) echo "$2" > pending ;;
commit) echo "$2" > committed; : > pending ;;
roll-back) echo "$2" > committed; : > pending ;;
*) echo "slotctl: unknown command $1" >&2; exit 2 ;;
esac
"#
            ),
        );
        let argv = |sub: &str| vec![slotctl.display().to_string(), sub.to_string()];
        BootloaderConfig::Command {
            boot_info: argv("info"),
            activate: argv("activate"),
            commit: argv("commit"),
            roll_back: argv("roll-back"),
            timeout_secs: 10,
        }
    }

    /// Power-on for the fake: boot the pending slot if any, else the committed one.
    fn reboot(dir: &Path, config: &BootloaderConfig) -> Box<dyn Bootloader> {
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default().trim().to_string();
        let (pending, committed) = (read("pending"), read("committed"));
        let booted = if !pending.is_empty() {
            pending
        } else if !committed.is_empty() {
            committed
        } else {
            "a".into()
        };
        fs::write(dir.join("booted"), booted).unwrap();
        bootloader::open(config, dir).unwrap()
    }

    fn sh(line: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), line.into(), "slotctl".into()]
    }

    fn with(boot_info: Vec<String>, other: Vec<String>, timeout_secs: u64) -> BootloaderConfig {
        BootloaderConfig::Command {
            boot_info,
            activate: other.clone(),
            commit: other.clone(),
            roll_back: other,
            timeout_secs,
        }
    }

    #[test]
    fn activate_reboot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let config = slotctl(dir.path());
        let mut bl = bootloader::open(&config, dir.path()).unwrap();
        assert_eq!(bl.name(), "command");
        assert_eq!(bl.boot_info().unwrap(), info(Slot::A, None));
        bl.activate(Slot::B).unwrap();
        let mut bl = reboot(dir.path(), &config);
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.commit(Slot::B).unwrap();
        assert_eq!(reboot(dir.path(), &config).boot_info().unwrap(), info(Slot::B, None));
    }

    #[test]
    fn activate_then_roll_back_runs_a() {
        let dir = tempfile::tempdir().unwrap();
        let config = slotctl(dir.path());
        bootloader::open(&config, dir.path()).unwrap().activate(Slot::B).unwrap();
        let mut bl = reboot(dir.path(), &config);
        assert_eq!(bl.boot_info().unwrap(), info(Slot::B, Some(Slot::B)));
        bl.roll_back(Slot::A).unwrap();
        assert_eq!(reboot(dir.path(), &config).boot_info().unwrap(), info(Slot::A, None));
    }

    #[test]
    fn hanging_script_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        // A child of the script holds the pipes too: killing only the script would not end it.
        let config = with(sh("echo 'waiting for the bootloader lock' >&2; sleep 60; echo booted=a"), sh("true"), 1);
        let started = Instant::now();
        let error = err_text(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap_err());
        let took = started.elapsed();
        assert!(error.contains("timed out after 1 s"), "{error}");
        assert!(error.contains("/bin/sh -c"), "{error}");
        assert!(took.as_secs() < 10, "took {took:?}");
    }

    #[test]
    fn failing_script_reports_command_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let config = with(sh("true"), sh("echo \"slotctl: /dev/mmcblk0boot1 is read-only ($1)\" >&2; exit 3"), 10);
        let error = err_text(bootloader::open(&config, dir.path()).unwrap().activate(Slot::B).unwrap_err());
        assert!(error.contains("/bin/sh -c"), "{error}");
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains("slotctl: /dev/mmcblk0boot1 is read-only (b)"), "{error}");
    }

    #[test]
    fn stderr_in_errors_is_bounded_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let noisy = "i=0; while [ $i -lt 2000 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done; echo 'the real reason' >&2; exit 1";
        let config = with(sh(noisy), sh("true"), 10);
        let error = err_text(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap_err());
        assert!(error.contains("the real reason"), "{error}");
        assert!(error.len() < 1000, "{} bytes: {error}", error.len());
    }

    #[test]
    fn huge_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = with(sh("head -c 1000000 /dev/zero"), sh("true"), 10);
        let error = err_text(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap_err());
        assert!(error.contains("more than 64 KiB"), "{error}");
    }

    #[test]
    fn bad_boot_info_output_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        for (output, expect) in [
            ("booted=c", "booted=\"c\""),
            ("pending=b", "no `booted=a|b`"),
            ("booted=a slot=b", "unknown key \"slot\""),
            ("A", "not `key=value`"),
        ] {
            let config = with(sh(&format!("echo '{output}'")), sh("true"), 10);
            let error = err_text(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap_err());
            assert!(error.contains(expect), "{expect}: {error}");
            assert!(error.contains("must print `booted=a|b pending=a|b|`"), "{error}");
        }
        let config = with(sh("printf 'booted=b\\npending=\\n'"), sh("true"), 10);
        assert_eq!(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap(), info(Slot::B, None));
    }

    #[test]
    fn missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = with(vec!["/nonexistent/slotctl".into(), "info".into()], sh("true"), 10);
        let error = err_text(bootloader::open(&config, dir.path()).unwrap().boot_info().unwrap_err());
        assert!(error.contains("cannot run `/nonexistent/slotctl info`"), "{error}");
    }
}
