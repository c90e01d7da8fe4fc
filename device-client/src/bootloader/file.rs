//! The `file` backend: the agent plays the bootloader (tests, the demo), keeping the slot
//! state in an env file it replaces atomically; restarting the agent is the reboot.

use std::io;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use protocol::install::{BootInfo, Slot};

use super::{read_small_file, set_once, Bootloader};

/// The `file` backend: the agent plays the bootloader, so its start-up is the boot step.
pub(super) struct FileBootloader {
    pub(super) path: PathBuf,
    pub(super) max_tries: u32,
    /// This process's boot, once taken: taking it twice would count two boots.
    pub(super) booted: Option<BootInfo>,
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
