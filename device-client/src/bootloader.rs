//! Bootloader backends: how the Linux agent learns which A/B slot runs and how it switches.
//!
//! The install engine (`protocol::install`) decides *when* to activate, commit or roll back a
//! slot; this module carries those decisions to the real bootloader. Every backend keeps the
//! same contract, because the engine's crash recovery depends on it:
//! - [`Bootloader::activate`] arms a *single, uncommitted* trial of the other slot. If that
//!   slot never commits, the bootloader itself falls back to the committed slot after a bounded
//!   number of boots, so a kernel that cannot even start the agent still rolls back.
//! - [`Bootloader::boot_info`] reports the slot on probation as `pending` for as long as it is
//!   on probation, including on the boot that runs it. The engine reads "running the pending
//!   slot" as "this is the trial" and "running it, not pending" as "already committed".
//! - Each step is written so that a power cut between two of its writes leaves the device
//!   either before or after the step, never in a state that boots an unverified slot for good.
//!
//! Backends and their `[bootloader]` table in the agent's TOML config:
//!
//! ```toml
//! # Tests and the demo: an env file; restarting the agent is the "reboot".
//! [bootloader]
//! kind = "file"
//! env = "/var/lib/otamesh/bootenv"   # default: <data_dir>/bootenv
//! max_tries = 2                      # boots of a pending slot before falling back
//!
//! # U-Boot, through libubootenv's (or u-boot-tools') fw_printenv / fw_setenv.
//! [bootloader]
//! kind = "uboot"
//! fw_printenv = "fw_printenv"        # looked up in PATH unless a path is given
//! fw_setenv = "fw_setenv"
//! cmdline = "/proc/cmdline"          # where `otamesh.slot=a|b` is read from
//! timeout_secs = 30
//! [bootloader.vars]                  # optional; these are the defaults
//! slot = "otamesh_slot"
//! try_slot = "otamesh_try_slot"
//! upgrade_available = "upgrade_available"
//! bootcount = "bootcount"
//!
//! # GRUB, through grub-editenv on its environment block.
//! [bootloader]
//! kind = "grub"
//! grub_editenv = "grub-editenv"
//! env = "/boot/grub/grubenv"
//! cmdline = "/proc/cmdline"
//! timeout_secs = 30
//! # [bootloader.vars] as for uboot
//!
//! # Anything else: the operator's own scripts, run without a shell.
//! [bootloader]
//! kind = "command"
//! boot_info = ["/usr/local/bin/slotctl", "info"]       # prints `booted=a pending=b`
//! activate = ["/usr/local/bin/slotctl", "activate"]    # the slot name is appended
//! commit = ["/usr/local/bin/slotctl", "commit"]
//! roll_back = ["/usr/local/bin/slotctl", "roll-back"]
//! timeout_secs = 30
//! ```
//!
//! External commands are not trusted to behave: each runs with a timeout (a hung one is
//! killed with everything it started), at most 64 KiB of its output is read, and a failure
//! reports the command line, its exit status and the end of its stderr.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use protocol::install::{BootInfo, Slot};
use serde::{Deserialize, Serialize};

/// Which bootloader a device uses, from the agent's TOML config
/// (`[bootloader] kind = "file" | "uboot" | "grub" | "command"`; see the module docs for
/// each table).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BootloaderConfig {
    /// An env file the agent itself interprets at start-up, for tests and the demo, where
    /// restarting the agent stands in for a reboot.
    File {
        /// The env file; `None` means `<data_dir>/bootenv`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<PathBuf>,
        /// How many boots a pending slot gets before the "bootloader" gives up on it.
        #[serde(default = "default_max_tries")]
        max_tries: u32,
    },
    /// U-Boot, with its environment changed through `fw_printenv` / `fw_setenv`. U-Boot's own
    /// `bootcount`/`bootlimit`/`altbootcmd` logic does the fallback; see [`UBOOT_SCRIPT`].
    Uboot {
        /// The `fw_printenv` program (a bare name is looked up in `PATH`).
        #[serde(default = "default_fw_printenv")]
        fw_printenv: PathBuf,
        /// The `fw_setenv` program.
        #[serde(default = "default_fw_setenv")]
        fw_setenv: PathBuf,
        /// The kernel command line, which names the booted slot (`otamesh.slot=a|b`).
        #[serde(default = "default_cmdline")]
        cmdline: PathBuf,
        /// The environment variable names.
        #[serde(default)]
        vars: EnvVars,
        /// How long one `fw_printenv`/`fw_setenv` may run.
        #[serde(default = "default_timeout_secs")]
        timeout_secs: u64,
    },
    /// GRUB, with its environment block changed through `grub-editenv`; a `grub.cfg` snippet
    /// does the counting and the fallback, see [`GRUB_SCRIPT`].
    Grub {
        /// The `grub-editenv` program.
        #[serde(default = "default_grub_editenv")]
        grub_editenv: PathBuf,
        /// GRUB's environment block (on EFI systems often under `/boot/efi/EFI/<distro>/`).
        #[serde(default = "default_grubenv")]
        env: PathBuf,
        /// The kernel command line, which names the booted slot (`otamesh.slot=a|b`).
        #[serde(default = "default_cmdline")]
        cmdline: PathBuf,
        /// The environment variable names.
        #[serde(default)]
        vars: EnvVars,
        /// How long one `grub-editenv` may run.
        #[serde(default = "default_timeout_secs")]
        timeout_secs: u64,
    },
    /// Operator scripts for any other bootloader. Each is an argv array run without a shell;
    /// `activate`, `commit` and `roll_back` get the slot name (`a`/`b`) appended.
    Command {
        /// Prints `booted=a pending=b` (`pending=` or no `pending` when nothing is on trial).
        boot_info: Vec<String>,
        /// Tries the slot on the next boot, once.
        activate: Vec<String>,
        /// Makes the slot permanent.
        commit: Vec<String>,
        /// Drops the pending slot; the next boot runs the given (committed) slot.
        roll_back: Vec<String>,
        /// How long one script may run before it is killed.
        #[serde(default = "default_timeout_secs")]
        timeout_secs: u64,
    },
}

impl Default for BootloaderConfig {
    /// The file backend: it needs nothing from the system, so a fresh demo config works.
    fn default() -> BootloaderConfig {
        BootloaderConfig::File { env: None, max_tries: default_max_tries() }
    }
}

/// The environment variable names the `uboot` and `grub` backends use. They are configurable
/// because a board's existing U-Boot scripts may already use other names for the same ideas.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EnvVars {
    /// The committed slot, `a` or `b`.
    pub slot: String,
    /// The slot on trial (empty when none).
    pub try_slot: String,
    /// `1` while a slot is on trial: U-Boot's standard name, which its bootcount logic reads.
    pub upgrade_available: String,
    /// Boots of the trial slot so far (U-Boot's `CONFIG_BOOTCOUNT_ENV` name).
    pub bootcount: String,
}

/// The variable changes of each step, in the order that keeps a power cut between two
/// writes safe; shared by the U-Boot and GRUB backends, which use the same scheme.
impl EnvVars {
    /// The try slot, a zero count, and the flag last: until the flag is up the bootloader
    /// ignores the try slot, and the stale count must be gone before it counts again.
    fn activate(&self, slot: Slot) -> [(&str, &'static str); 3] {
        [(&self.try_slot, slot.name()), (&self.bootcount, "0"), (&self.upgrade_available, "1")]
    }

    /// The committed slot first: with the flag still up, the bootloader keeps booting it.
    fn commit(&self, slot: Slot) -> [(&str, &'static str); 4] {
        [(&self.slot, slot.name()), (&self.upgrade_available, "0"), (&self.try_slot, ""), (&self.bootcount, "0")]
    }

    /// The flag first: once it is down the bootloader boots the committed slot.
    fn roll_back(&self, to: Slot) -> [(&str, &'static str); 3] {
        [(&self.upgrade_available, "0"), (&self.try_slot, ""), (&self.slot, to.name())]
    }
}

impl Default for EnvVars {
    fn default() -> EnvVars {
        EnvVars {
            slot: "otamesh_slot".into(),
            try_slot: "otamesh_try_slot".into(),
            upgrade_available: "upgrade_available".into(),
            bootcount: "bootcount".into(),
        }
    }
}

fn default_max_tries() -> u32 {
    2
}
fn default_fw_printenv() -> PathBuf {
    PathBuf::from("fw_printenv")
}
fn default_fw_setenv() -> PathBuf {
    PathBuf::from("fw_setenv")
}
fn default_grub_editenv() -> PathBuf {
    PathBuf::from("grub-editenv")
}
fn default_grubenv() -> PathBuf {
    PathBuf::from("/boot/grub/grubenv")
}
fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}
fn default_timeout_secs() -> u64 {
    30
}

/// The U-Boot environment an operator adds for the `uboot` backend (default variable names;
/// adapt the partitions, `load` and `booti` lines to the board), e.g. with
/// `fw_setenv -s FILE`. It needs `CONFIG_BOOTCOUNT_LIMIT` with `CONFIG_BOOTCOUNT_ENV`: while
/// `upgrade_available=1`, U-Boot counts boots in `bootcount` and runs `altbootcmd` instead of
/// `bootcmd` once `bootcount > bootlimit`. That is how a slot that cannot even start the agent
/// still falls back. The kernel gets `otamesh.slot=<slot>` on its command line: it is how the
/// agent learns what booted.
pub const UBOOT_SCRIPT: &str = r#"bootlimit 2
otamesh_a setenv bootargs "${bootargs} root=/dev/mmcblk0p2 otamesh.slot=a"; load mmc 0:2 ${kernel_addr_r} /boot/Image
otamesh_b setenv bootargs "${bootargs} root=/dev/mmcblk0p3 otamesh.slot=b"; load mmc 0:3 ${kernel_addr_r} /boot/Image
bootcmd setenv otamesh_boot ${otamesh_slot}; if test "${upgrade_available}" = 1 && test -n "${otamesh_try_slot}"; then setenv otamesh_boot ${otamesh_try_slot}; fi; if test "${otamesh_boot}" = b; then run otamesh_b; else run otamesh_a; fi; booti ${kernel_addr_r} - ${fdt_addr}
altbootcmd setenv upgrade_available 0; setenv otamesh_try_slot; setenv bootcount 0; saveenv; run bootcmd
"#;

/// The `grub.cfg` snippet an operator adds for the `grub` backend (default variable names;
/// adapt the partitions and kernel paths). GRUB has no arithmetic, so the counter is spelled
/// out for two tries; the last branch is the fallback to the committed slot. `save_env` (and
/// so this scheme) only works when the environment block is on a plain filesystem GRUB can
/// write (not btrfs, LVM or RAID).
pub const GRUB_SCRIPT: &str = r#"load_env otamesh_slot otamesh_try_slot upgrade_available bootcount
if [ "${upgrade_available}" = "1" -a -n "${otamesh_try_slot}" ]; then
  if [ "${bootcount}" = "0" ]; then set bootcount=1
  elif [ "${bootcount}" = "1" ]; then set bootcount=2
  else set upgrade_available=0; set otamesh_try_slot=; set bootcount=0; fi
  save_env upgrade_available otamesh_try_slot bootcount
fi
set otamesh_boot="${otamesh_slot}"
if [ "${upgrade_available}" = "1" -a -n "${otamesh_try_slot}" ]; then set otamesh_boot="${otamesh_try_slot}"; fi
if [ "${otamesh_boot}" = "b" ]; then set root=(hd0,gpt3); else set otamesh_boot=a; set root=(hd0,gpt2); fi
linux /boot/vmlinuz root=PARTLABEL=root_${otamesh_boot} ro otamesh.slot=${otamesh_boot}
initrd /boot/initrd.img
"#;

/// A device's bootloader, as the install engine's driver sees it.
pub trait Bootloader: Send {
    /// Called once when the agent starts. Reports the slot that runs and the slot on probation
    /// (activated, not yet committed).
    fn boot_info(&mut self) -> Result<BootInfo>;
    /// Try `slot` on the next boot, once (uncommitted).
    fn activate(&mut self, slot: Slot) -> Result<()>;
    /// Make `slot` the permanent choice (it is running and passed its trial).
    fn commit(&mut self, slot: Slot) -> Result<()>;
    /// Drop the pending slot so the next boot runs `to` (the previous committed slot).
    fn roll_back(&mut self, to: Slot) -> Result<()>;
    /// Name for logs/status ("file", "uboot", ...).
    fn name(&self) -> &'static str;
}

/// The backend `config` names. Checks the config (but runs nothing), so a bad config fails at
/// start-up rather than in the middle of an install.
pub fn open(config: &BootloaderConfig, data_dir: &Path) -> Result<Box<dyn Bootloader>> {
    Ok(match config {
        BootloaderConfig::File { env, max_tries } => {
            ensure!(*max_tries >= 1, "bootloader.max_tries must be at least 1 (a pending slot must boot once)");
            let path = env.clone().unwrap_or_else(|| data_dir.join("bootenv"));
            Box::new(FileBootloader { path, max_tries: *max_tries, booted: None })
        }
        BootloaderConfig::Uboot { fw_printenv, fw_setenv, cmdline, vars, timeout_secs } => {
            check_vars(vars)?;
            Box::new(UbootBootloader {
                fw_printenv: fw_printenv.clone(),
                fw_setenv: fw_setenv.clone(),
                cmdline: cmdline.clone(),
                vars: vars.clone(),
                timeout: timeout(*timeout_secs)?,
            })
        }
        BootloaderConfig::Grub { grub_editenv, env, cmdline, vars, timeout_secs } => {
            check_vars(vars)?;
            Box::new(GrubBootloader {
                grub_editenv: grub_editenv.clone(),
                env: env.clone(),
                cmdline: cmdline.clone(),
                vars: vars.clone(),
                timeout: timeout(*timeout_secs)?,
            })
        }
        BootloaderConfig::Command { boot_info, activate, commit, roll_back, timeout_secs } => {
            for (field, argv) in
                [("boot_info", boot_info), ("activate", activate), ("commit", commit), ("roll_back", roll_back)]
            {
                ensure!(
                    argv.first().is_some_and(|program| !program.is_empty()),
                    "bootloader.{field} must name a program, e.g. [\"/usr/local/bin/slotctl\", \"{field}\"]"
                );
            }
            Box::new(CommandBootloader {
                boot_info: boot_info.clone(),
                activate: activate.clone(),
                commit: commit.clone(),
                roll_back: roll_back.clone(),
                timeout: timeout(*timeout_secs)?,
            })
        }
    })
}

fn timeout(secs: u64) -> Result<Duration> {
    ensure!(secs >= 1, "bootloader.timeout_secs must be at least 1");
    Ok(Duration::from_secs(secs))
}

fn check_vars(vars: &EnvVars) -> Result<()> {
    let names = [
        ("slot", &vars.slot),
        ("try_slot", &vars.try_slot),
        ("upgrade_available", &vars.upgrade_available),
        ("bootcount", &vars.bootcount),
    ];
    for (field, name) in names {
        ensure!(
            !name.is_empty() && !name.contains(|c: char| c == '=' || c.is_whitespace()),
            "bootloader.vars.{field} = {name:?} is not a usable variable name (empty, or has `=` or spaces)"
        );
    }
    for (i, (field, name)) in names.iter().enumerate() {
        if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
            bail!("bootloader.vars.{field} and bootloader.vars.{other} both name {name:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// file

/// Largest env/cmdline file read; the real ones are a few dozen bytes, so anything bigger is
/// not what we think it is.
const SMALL_FILE_LIMIT_BYTES: u64 = 64 * 1024;

/// The `file` backend: the agent plays the bootloader, so its start-up is the boot step.
struct FileBootloader {
    path: PathBuf,
    max_tries: u32,
    /// This process's boot, once taken: taking it twice would count two boots.
    booted: Option<BootInfo>,
}

/// The env file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileEnv {
    active: Slot,
    pending: Option<Slot>,
    boot_count: u32,
}

impl FileEnv {
    /// A device straight from the factory: slot a, nothing to try.
    const FRESH: FileEnv = FileEnv { active: Slot::A, pending: None, boot_count: 0 };

    fn encode(&self) -> String {
        format!(
            "# otamesh boot env (file bootloader), rewritten by the agent\nactive={}\npending={}\nboot_count={}\n",
            self.active.name(),
            self.pending.map_or("", Slot::name),
            self.boot_count
        )
    }

    /// Parses the env file text; the error says which line and why, without the file name.
    fn parse(text: &str) -> Result<FileEnv, String> {
        let mut active = None;
        let mut pending = None;
        let mut boot_count = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {number} ({line:?}) is not `key=value`"));
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "active" => {
                    let slot = Slot::from_name(value)
                        .ok_or_else(|| format!("line {number}: active={value:?} is not a slot (a or b)"))?;
                    set_once(&mut active, slot, key).map_err(|e| format!("line {number}: {e}"))?;
                }
                "pending" => {
                    let slot = match value {
                        "" => None,
                        _ => Some(Slot::from_name(value).ok_or_else(|| {
                            format!("line {number}: pending={value:?} is not a slot (a, b or empty)")
                        })?),
                    };
                    set_once(&mut pending, slot, key).map_err(|e| format!("line {number}: {e}"))?;
                }
                "boot_count" => {
                    let count = value
                        .parse::<u32>()
                        .map_err(|_| format!("line {number}: boot_count={value:?} is not a count"))?;
                    set_once(&mut boot_count, count, key).map_err(|e| format!("line {number}: {e}"))?;
                }
                _ => return Err(format!("line {number}: unknown key {key:?} (expected active, pending, boot_count)")),
            }
        }
        let active = active.ok_or("no `active=` line")?;
        Ok(FileEnv { active, pending: pending.flatten(), boot_count: boot_count.unwrap_or(0) })
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{key} is set twice"));
    }
    *slot = Some(value);
    Ok(())
}

impl FileBootloader {
    /// The env file, or `None` when there is none yet (a fresh device).
    fn load(&self) -> Result<Option<FileEnv>> {
        let path = &self.path;
        let bytes = match read_small_file(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("cannot read boot env {}", path.display())),
        };
        let parsed =
            std::str::from_utf8(&bytes).map_err(|_| "it is not UTF-8 text".to_string()).and_then(FileEnv::parse);
        match parsed {
            Ok(env) => Ok(Some(env)),
            Err(what) => bail!(
                "boot env {} is corrupt: {what}. Fix it (lines `active=a|b`, `pending=a|b|`, `boot_count=N`) \
                 or delete it to start over as a fresh device (slot a active, nothing pending)",
                path.display()
            ),
        }
    }

    /// Replaces the env file atomically and durably: a power cut leaves the old or the new
    /// env, never a torn one, and a returned `Ok` survives one.
    fn store(&self, env: &FileEnv) -> Result<()> {
        host::fs::write_atomic(&self.path, env.encode().as_bytes(), host::fs::PUBLIC)
            .with_context(|| format!("cannot write boot env {}", self.path.display()))
    }

    fn update(&self, change: impl FnOnce(&mut FileEnv)) -> Result<()> {
        let mut env = self.load()?.unwrap_or(FileEnv::FRESH);
        change(&mut env);
        self.store(&env)
    }
}

impl Bootloader for FileBootloader {
    fn boot_info(&mut self) -> Result<BootInfo> {
        if let Some(info) = self.booted {
            return Ok(info);
        }
        let loaded = self.load()?;
        let mut env = loaded.unwrap_or(FileEnv::FRESH);
        let booted = match env.pending {
            Some(pending) => {
                env.boot_count = env.boot_count.saturating_add(1);
                if env.boot_count > self.max_tries {
                    // Out of tries: what a real bootloader's fallback does.
                    env.pending = None;
                    env.boot_count = 0;
                    env.active
                } else {
                    pending
                }
            }
            None => env.active,
        };
        // Persist before reporting: a crash right after must still count this boot.
        if loaded != Some(env) {
            self.store(&env)?;
        }
        let info = BootInfo { booted, pending: env.pending };
        self.booted = Some(info);
        Ok(info)
    }

    fn activate(&mut self, slot: Slot) -> Result<()> {
        self.update(|env| {
            env.pending = Some(slot);
            env.boot_count = 0;
        })
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.update(|env| *env = FileEnv { active: slot, pending: None, boot_count: 0 })
    }

    fn roll_back(&mut self, to: Slot) -> Result<()> {
        self.update(|env| {
            env.pending = None;
            env.boot_count = 0;
            env.active = to;
        })
    }

    fn name(&self) -> &'static str {
        "file"
    }
}

fn read_small_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(SMALL_FILE_LIMIT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > SMALL_FILE_LIMIT_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "larger than 64 KiB"));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// shared by uboot and grub

/// The slot the kernel was booted from: the last `otamesh.slot=` on its command line (the
/// kernel's rule too: later parameters override earlier ones).
fn booted_from_cmdline(path: &Path) -> Result<Slot> {
    let bytes =
        read_small_file(path).with_context(|| format!("cannot read the kernel command line {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let value =
        text.split_whitespace().filter_map(|param| param.strip_prefix("otamesh.slot=")).next_back().ok_or_else(
            || {
                anyhow!(
                    "{} has no `otamesh.slot=a|b` parameter; the bootloader script must pass the booted slot \
                 to the kernel (see the bootloader module docs)",
                    path.display()
                )
            },
        )?;
    let value = value.trim_matches('"');
    Slot::from_name(value).ok_or_else(|| anyhow!("{}: otamesh.slot={value:?} is not a slot (a or b)", path.display()))
}

/// Reads a slot-valued variable; empty or unset is `None`.
fn parse_slot_var(var: &str, value: Option<&str>) -> Result<Option<Slot>> {
    match value.map(str::trim).unwrap_or("") {
        "" => Ok(None),
        value => Slot::from_name(value)
            .map(Some)
            .ok_or_else(|| anyhow!("bootloader variable {var} is {value:?}; expected a, b or empty")),
    }
}

/// Reads the trial flag; empty or unset is "no trial".
fn parse_flag_var(var: &str, value: Option<&str>) -> Result<bool> {
    match value.map(str::trim).unwrap_or("") {
        "" | "0" => Ok(false),
        "1" => Ok(true),
        value => bail!("bootloader variable {var} is {value:?}; expected 0, 1 or empty"),
    }
}

/// The pending slot under the shared variable scheme: the try slot while the trial flag is
/// up. A raised flag without a try slot makes the bootloader boot the committed slot, so
/// nothing is pending then either.
fn pending_from_vars(vars: &EnvVars, upgrade_available: Option<&str>, try_slot: Option<&str>) -> Result<Option<Slot>> {
    if !parse_flag_var(&vars.upgrade_available, upgrade_available)? {
        return Ok(None);
    }
    parse_slot_var(&vars.try_slot, try_slot)
}

// ---------------------------------------------------------------------------------------------
// uboot

/// The `uboot` backend (see [`UBOOT_SCRIPT`]).
struct UbootBootloader {
    fw_printenv: PathBuf,
    fw_setenv: PathBuf,
    cmdline: PathBuf,
    vars: EnvVars,
    timeout: Duration,
}

impl UbootBootloader {
    /// `fw_printenv -n VAR`; `None` when the variable is not defined.
    fn get(&self, var: &str) -> Result<Option<String>> {
        let argv = [self.fw_printenv.clone().into_os_string(), "-n".into(), var.into()];
        let finished = host::process::run(&argv, &[], self.timeout)?;
        // Both fw_printenv implementations fail with `## Error: "VAR" not defined` for an
        // unset variable; that is an answer, not a failure.
        if !finished.status.success() && String::from_utf8_lossy(&finished.stderr.bytes).contains("not defined") {
            return Ok(None);
        }
        let stdout = finished.into_stdout(&argv)?;
        let text = String::from_utf8(stdout).map_err(|_| anyhow!("U-Boot variable {var} is not UTF-8"))?;
        let value = text.trim_end_matches(['\n', '\r']);
        Ok((!value.is_empty()).then(|| value.to_string()))
    }

    /// `fw_setenv VAR VALUE`, or `fw_setenv VAR` (which deletes it) for an empty value.
    fn set(&self, var: &str, value: &str) -> Result<()> {
        let mut argv = vec![self.fw_setenv.clone().into_os_string(), var.into()];
        if !value.is_empty() {
            argv.push(value.into());
        }
        host::process::run(&argv, &[], self.timeout)?.into_stdout(&argv).map(drop)
    }

    /// Applies `changes` one `fw_setenv` at a time, in order. Callers order them so that every
    /// prefix is a safe env: each call is its own flash write and power can fail between them.
    fn set_all(&self, changes: &[(&str, &str)]) -> Result<()> {
        for (var, value) in changes {
            self.set(var, value)?;
        }
        Ok(())
    }
}

impl Bootloader for UbootBootloader {
    fn boot_info(&mut self) -> Result<BootInfo> {
        let booted = booted_from_cmdline(&self.cmdline)?;
        let upgrade_available = self.get(&self.vars.upgrade_available)?;
        let try_slot = self.get(&self.vars.try_slot)?;
        let pending = pending_from_vars(&self.vars, upgrade_available.as_deref(), try_slot.as_deref())?;
        Ok(BootInfo { booted, pending })
    }

    fn activate(&mut self, slot: Slot) -> Result<()> {
        self.set_all(&self.vars.activate(slot))
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.set_all(&self.vars.commit(slot))
    }

    fn roll_back(&mut self, to: Slot) -> Result<()> {
        self.set_all(&self.vars.roll_back(to))
    }

    fn name(&self) -> &'static str {
        "uboot"
    }
}

// ---------------------------------------------------------------------------------------------
// grub

/// The `grub` backend (see [`GRUB_SCRIPT`]).
struct GrubBootloader {
    grub_editenv: PathBuf,
    env: PathBuf,
    cmdline: PathBuf,
    vars: EnvVars,
    timeout: Duration,
}

impl GrubBootloader {
    fn argv(&self, command: &str) -> Vec<OsString> {
        vec![self.grub_editenv.clone().into_os_string(), self.env.clone().into_os_string(), command.into()]
    }

    /// `grub-editenv FILE list`, as `(name, value)` pairs.
    fn list(&self) -> Result<Vec<(String, String)>> {
        let argv = self.argv("list");
        let stdout = host::process::run(&argv, &[], self.timeout)?.into_stdout(&argv)?;
        let text = String::from_utf8_lossy(&stdout);
        Ok(text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect())
    }

    /// One `grub-editenv FILE set K=V ...`: one rewrite of the environment block, so the step
    /// is all-or-nothing (an empty value clears a variable for the `grub.cfg` snippet).
    fn set_all(&self, changes: &[(&str, &str)]) -> Result<()> {
        let mut argv = self.argv("set");
        argv.extend(changes.iter().map(|(var, value)| OsString::from(format!("{var}={value}"))));
        host::process::run(&argv, &[], self.timeout)?.into_stdout(&argv).map(drop)
    }
}

impl Bootloader for GrubBootloader {
    fn boot_info(&mut self) -> Result<BootInfo> {
        let booted = booted_from_cmdline(&self.cmdline)?;
        let env = self.list()?;
        // Like GRUB's own env block, a later duplicate wins.
        let get = |var: &str| env.iter().rev().find(|(name, _)| name == var).map(|(_, value)| value.as_str());
        let pending = pending_from_vars(&self.vars, get(&self.vars.upgrade_available), get(&self.vars.try_slot))?;
        Ok(BootInfo { booted, pending })
    }

    fn activate(&mut self, slot: Slot) -> Result<()> {
        self.set_all(&self.vars.activate(slot))
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.set_all(&self.vars.commit(slot))
    }

    fn roll_back(&mut self, to: Slot) -> Result<()> {
        self.set_all(&self.vars.roll_back(to))
    }

    fn name(&self) -> &'static str {
        "grub"
    }
}

// ---------------------------------------------------------------------------------------------
// command

/// The `command` backend: the operator's scripts.
struct CommandBootloader {
    boot_info: Vec<String>,
    activate: Vec<String>,
    commit: Vec<String>,
    roll_back: Vec<String>,
    timeout: Duration,
}

impl CommandBootloader {
    fn run_with_slot(&self, argv: &[String], slot: Slot) -> Result<()> {
        let mut argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        argv.push(slot.name().into());
        host::process::run(&argv, &[], self.timeout)?.into_stdout(&argv).map(drop)
    }
}

/// Parses a `boot_info` script's output: `booted=a pending=b`, whitespace-separated, `pending`
/// empty or absent when nothing is on trial.
fn parse_boot_info_output(text: &str) -> Result<BootInfo, String> {
    let mut booted = None;
    let mut pending = None;
    for token in text.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            return Err(format!("{token:?} is not `key=value`"));
        };
        match key {
            "booted" => {
                let slot = Slot::from_name(value).ok_or_else(|| format!("booted={value:?} is not a slot (a or b)"))?;
                set_once(&mut booted, slot, key)?;
            }
            "pending" => {
                let slot = match value {
                    "" => None,
                    _ => Some(
                        Slot::from_name(value)
                            .ok_or_else(|| format!("pending={value:?} is not a slot (a, b or empty)"))?,
                    ),
                };
                set_once(&mut pending, slot, key)?;
            }
            _ => return Err(format!("unknown key {key:?} (expected booted, pending)")),
        }
    }
    let booted = booted.ok_or("no `booted=a|b`")?;
    Ok(BootInfo { booted, pending: pending.flatten() })
}

impl Bootloader for CommandBootloader {
    fn boot_info(&mut self) -> Result<BootInfo> {
        let argv: Vec<OsString> = self.boot_info.iter().map(OsString::from).collect();
        let stdout = host::process::run(&argv, &[], self.timeout)?.into_stdout(&argv)?;
        let text = String::from_utf8_lossy(&stdout);
        parse_boot_info_output(&text).map_err(|what| {
            anyhow!(
                "`{}` printed {:?}: {what}; it must print `booted=a|b pending=a|b|`",
                host::process::show_argv(&argv),
                host::process::bounded_text(&text)
            )
        })
    }

    fn activate(&mut self, slot: Slot) -> Result<()> {
        self.run_with_slot(&self.activate, slot)
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.run_with_slot(&self.commit, slot)
    }

    fn roll_back(&mut self, to: Slot) -> Result<()> {
        self.run_with_slot(&self.roll_back, to)
    }

    fn name(&self) -> &'static str {
        "command"
    }
}
