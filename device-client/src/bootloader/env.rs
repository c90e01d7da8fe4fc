//! The `uboot` and `grub` backends: one bootloader over an environment of variables, with
//! the same variable scheme (see [`UBOOT_SCRIPT`](super::UBOOT_SCRIPT) and
//! [`GRUB_SCRIPT`](super::GRUB_SCRIPT)) and the same step order. They differ only in the tool
//! that reads and writes the variables ([`EnvTool`]); the booted slot comes from the kernel
//! command line in both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use protocol::install::{BootInfo, Slot};

use super::{read_small_file, Bootloader, EnvVars};

/// How a bootloader's variables are read and written.
pub(super) trait EnvTool: Send {
    /// The values of `vars` (`None`: unset), in order.
    fn get(&self, vars: &[&str]) -> Result<Vec<Option<String>>>;
    /// Applies `changes` in order. Callers order them so that every prefix is a safe env, for
    /// a tool that writes them one at a time.
    fn set_all(&self, changes: &[(&str, &str)]) -> Result<()>;
}

/// The `uboot` or `grub` backend: `tool` over the variables `vars`.
pub(super) struct EnvBootloader<T> {
    pub(super) tool: T,
    pub(super) cmdline: PathBuf,
    pub(super) vars: EnvVars,
    pub(super) name: &'static str,
}

/// The variable changes of each step, in the order that keeps a power cut between two
/// writes safe.
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

impl<T: EnvTool> Bootloader for EnvBootloader<T> {
    fn boot_info(&mut self) -> Result<BootInfo> {
        let booted = booted_from_cmdline(&self.cmdline)?;
        let values = self.tool.get(&[&self.vars.upgrade_available, &self.vars.try_slot])?;
        let [upgrade_available, try_slot] = <[Option<String>; 2]>::try_from(values)
            .map_err(|_| anyhow!("the {} tool answered for the wrong number of variables", self.name))?;
        let pending = pending_from_vars(&self.vars, upgrade_available.as_deref(), try_slot.as_deref())?;
        Ok(BootInfo { booted, pending })
    }

    fn activate(&mut self, slot: Slot) -> Result<()> {
        self.tool.set_all(&self.vars.activate(slot))
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        self.tool.set_all(&self.vars.commit(slot))
    }

    fn roll_back(&mut self, to: Slot) -> Result<()> {
        self.tool.set_all(&self.vars.roll_back(to))
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// U-Boot's environment through libubootenv's (or u-boot-tools') `fw_printenv`/`fw_setenv`.
pub(super) struct FwEnv {
    pub(super) fw_printenv: PathBuf,
    pub(super) fw_setenv: PathBuf,
    pub(super) timeout: Duration,
}

impl FwEnv {
    /// `fw_printenv -n VAR`; `None` when the variable is not defined.
    fn get_one(&self, var: &str) -> Result<Option<String>> {
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
}

impl EnvTool for FwEnv {
    fn get(&self, vars: &[&str]) -> Result<Vec<Option<String>>> {
        vars.iter().map(|var| self.get_one(var)).collect()
    }

    /// One `fw_setenv` at a time, in order: each call is its own flash write and power can
    /// fail between them.
    fn set_all(&self, changes: &[(&str, &str)]) -> Result<()> {
        for (var, value) in changes {
            self.set(var, value)?;
        }
        Ok(())
    }
}

/// GRUB's environment block through `grub-editenv`.
pub(super) struct GrubEnv {
    pub(super) grub_editenv: PathBuf,
    pub(super) env: PathBuf,
    pub(super) timeout: Duration,
}

impl GrubEnv {
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
}

impl EnvTool for GrubEnv {
    fn get(&self, vars: &[&str]) -> Result<Vec<Option<String>>> {
        let env = self.list()?;
        // Like GRUB's own env block, a later duplicate wins.
        Ok(vars
            .iter()
            .map(|var| env.iter().rev().find(|(name, _)| name == var).map(|(_, value)| value.clone()))
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
