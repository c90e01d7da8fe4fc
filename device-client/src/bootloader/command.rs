//! The `command` backend: the operator's own scripts, run without a shell through
//! [`host::process::run`].

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{anyhow, Result};
use protocol::install::{BootInfo, Slot};

use super::{set_once, Bootloader};

/// The `command` backend: the operator's scripts.
pub(super) struct CommandBootloader {
    pub(super) boot_info: Vec<String>,
    pub(super) activate: Vec<String>,
    pub(super) commit: Vec<String>,
    pub(super) roll_back: Vec<String>,
    pub(super) timeout: Duration,
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
