//! Linux device agents as real processes: a config per device (file-backed slots, the file
//! bootloader, the repository's root and content key), `device-client check` runs with a
//! deadline, and helpers that read what the device holds.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
            "data_dir = {data:?}\nrelease = \"gw\"\nhw_class = \"imx8\"\ntrusted_root = {root:?}\n\
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

    /// `device-client check --config … extra`, run through `wrapper` (e.g. `ip netns exec
    /// NS`) when it is not empty, with output piped.
    pub fn check_command(&self, wrapper: &[&str], extra: &[&str]) -> Command {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("device-client"));
                c
            }
            None => Command::new(bin("device-client")),
        };
        command
            .args(["check", "--config"])
            .arg(&self.config)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `device-client check` without waiting.
    pub fn spawn_check(&self) -> std::process::Child {
        self.check_command(&[], &[]).spawn().expect("device-client starts")
    }

    /// Runs `device-client check` to its end (through its own restarts); kills it and panics
    /// after `timeout`.
    pub fn check(&self, timeout: Duration) -> CheckRun {
        run_check(self.check_command(&[], &[]), timeout)
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

pub fn kill9(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Runs a `device-client check` command to its end; kills it and panics after `timeout`,
/// printing what it wrote.
pub fn run_check(mut command: Command, timeout: Duration) -> CheckRun {
    let child = command.spawn().expect("device-client starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let text = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => CheckRun { success: out.status.success(), output: text(&out) },
        Ok(Err(e)) => panic!("device-client check: {e}"),
        Err(_) => {
            kill9(pid);
            let output = match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(out)) => text(&out),
                _ => "(no output)".into(),
            };
            panic!("device-client check did not finish within {timeout:?}; output:\n{output}");
        }
    }
}
