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

mod command;
mod env;
mod file;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use protocol::install::{BootInfo, Slot};
use serde::{Deserialize, Serialize};

use command::CommandBootloader;
use env::{EnvBootloader, FwEnv, GrubEnv};
use file::FileBootloader;

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
            Box::new(EnvBootloader {
                tool: FwEnv {
                    fw_printenv: fw_printenv.clone(),
                    fw_setenv: fw_setenv.clone(),
                    timeout: timeout(*timeout_secs)?,
                },
                cmdline: cmdline.clone(),
                vars: vars.clone(),
                name: "uboot",
            })
        }
        BootloaderConfig::Grub { grub_editenv, env, cmdline, vars, timeout_secs } => {
            check_vars(vars)?;
            Box::new(EnvBootloader {
                tool: GrubEnv {
                    grub_editenv: grub_editenv.clone(),
                    env: env.clone(),
                    timeout: timeout(*timeout_secs)?,
                },
                cmdline: cmdline.clone(),
                vars: vars.clone(),
                name: "grub",
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

/// Largest env/cmdline file read; the real ones are a few dozen bytes, so anything bigger is
/// not what we think it is.
const SMALL_FILE_LIMIT_BYTES: u64 = 64 * 1024;

pub(crate) fn read_small_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(SMALL_FILE_LIMIT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > SMALL_FILE_LIMIT_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "larger than 64 KiB"));
    }
    Ok(bytes)
}

pub(crate) fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{key} is set twice"));
    }
    *slot = Some(value);
    Ok(())
}
