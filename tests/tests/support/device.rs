//! Linux device agents as real processes: a config per device (file-backed slots, the file
//! bootloader, the repository's root and content key), `device-client check` runs with a
//! deadline, and helpers that read what the device holds.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::bin;

/// One device: its directory holds the config, data dir and both slots.
pub struct Device {
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// How a `check` run ended.
#[derive(Debug)]
pub struct CheckRun {
    pub success: bool,
    pub output: String,
}

impl Device {
    /// A device of hardware class `imx8` following release `gw`; `health` is an extra health
    /// check command (argv), e.g. one rigged to fail for a version.
    pub fn new(dir: &Path, repo: &Path, edges: &[String], health: Option<&[&str]>) -> Device {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = format!(
            "data_dir = {data:?}\nrelease = \"gw\"\nhw_class = \"imx8\"\nsite = \"plant-1\"\ntrusted_root = {root:?}\n\
             content_key = {key:?}\nedges = {edges:?}\nslot_a = {a:?}\nslot_b = {b:?}\n\
             request_timeout_secs = 5\nconnect_timeout_secs = 5\nmdns = {mdns}\ntrial_deadline_secs = 30\n\n[bootloader]\nkind = \"file\"\n",
            data = dir.join("data"),
            root = repo.join("metadata/1.root.json"),
            key = repo.join("keys/content.key"),
            a = dir.join("slot-a.img"),
            b = dir.join("slot-b.img"),
            // Configured edges keep tests hermetic; with none, the device must discover them.
            mdns = edges.is_empty(),
        );
        if let Some(cmd) = health {
            config.push_str(&format!("\n[[health_check]]\nname = \"app\"\ncommand = {cmd:?}\ntimeout_secs = 10\n"));
        }
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        Device { dir: dir.into(), config: path }
    }

    /// `device-client check --config … extra` as an argv, run through `wrapper` (e.g. `ip
    /// netns exec NS`) when it is not empty.
    pub fn check_argv(&self, wrapper: &[&str], extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.push(bin("device-client").to_str().expect("utf-8 path").into());
        argv.extend(["check".into(), "--config".into(), self.config.to_str().expect("utf-8 path").into()]);
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// Starts `device-client check` without waiting.
    pub fn spawn_check(&self) -> std::process::Child {
        let argv = self.check_argv(&[], &[]);
        Command::new(&argv[0])
            .args(&argv[1..])
            .envs(CHECK_ENV.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("device-client starts")
    }

    /// Runs `device-client check` to its end (through its own restarts); kills it and panics
    /// after `timeout`.
    pub fn check(&self, timeout: Duration) -> CheckRun {
        run_check(&self.check_argv(&[], &[]), timeout)
    }

    /// The agent's last status document.
    pub fn status(&self) -> Value {
        let bytes = std::fs::read(self.dir.join("data/status.json")).expect("status.json");
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The file bootloader's env: (active, pending).
    pub fn bootenv(&self) -> (String, Option<String>) {
        let text = std::fs::read_to_string(self.dir.join("data/bootenv")).unwrap_or_default();
        let get = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::trim).filter(|v| !v.is_empty())
        };
        (get("active").unwrap_or("a").to_string(), get("pending").map(String::from))
    }

    /// The bytes of slot `a` or `b` (empty if it does not exist yet).
    pub fn slot(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("slot-{name}.img"))).unwrap_or_default()
    }

    /// A copy of this device (state, slots, config) in `dir`, its config pointing there.
    pub fn copy_to(&self, dir: &Path) -> Device {
        copy_tree(&self.dir, dir);
        let config = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
        let config = config.replace(self.dir.to_str().unwrap(), dir.to_str().unwrap());
        std::fs::write(dir.join("agent.toml"), config).unwrap();
        Device { dir: dir.into(), config: dir.join("agent.toml") }
    }

    /// Replaces the edge nodes in the config, in this order.
    pub fn set_edges(&self, edges: &[String]) {
        self.set("edges", &format!("{edges:?}"));
    }

    /// Sets a top-level config key to `value` (TOML), replacing its line.
    pub fn set(&self, key: &str, value: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let prefix = format!("{key} = ");
        assert!(config.lines().any(|l| l.starts_with(&prefix)), "no {key} in {}", self.config.display());
        let config: Vec<String> = config
            .lines()
            .map(|l| if l.starts_with(&prefix) { format!("{prefix}{value}") } else { l.into() })
            .collect();
        std::fs::write(&self.config, config.join("\n") + "\n").unwrap();
    }

    /// The slot the bootloader would boot next: the pending one if any, else the active one.
    pub fn next_boot_slot(&self) -> String {
        let (active, pending) = self.bootenv();
        pending.unwrap_or(active)
    }
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The environment every `device-client check` runs with.
const CHECK_ENV: &[(&str, &str)] = &[("RUST_LOG", "info"), ("NO_COLOR", "1")];

/// Runs a `device-client check` argv to its end with the test-process harness (output
/// bounded, its whole process group killed on timeout); panics after `timeout` with what it
/// wrote.
pub fn run_check(argv: &[String], timeout: Duration) -> CheckRun {
    let (program, args) = argv.split_first().expect("a program");
    match test_procs::run_to_exit(Path::new(program), args, CHECK_ENV, timeout) {
        Ok(out) => CheckRun { success: out.code == Some(0), output: format!("{}{}", out.stdout, out.stderr) },
        Err(e) => panic!("device-client check: {e:#}"),
    }
}
