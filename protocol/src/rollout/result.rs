//! Where a device's install stands under a rollout, as its status reports say it: one
//! mapping from the install record, without a heap, for the Linux agent and the MCU agent
//! alike (the edge's site guard and the publisher's controller then count the same thing
//! whichever kind of device sent it).

use crate::install::{Record, State};
use crate::ReleaseId;

/// An install's outcome in a status report (JSON: `"installing"`, `"committed"`,
/// `"rolled-back"`, `"failed"`).
///
/// The serde derives are for the heap-backed status reports only (feature `alloc`): derived
/// deserialization of an enum uses an allocating helper, which would make a no-alloc build
/// (the MCU firmware) need a global allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "alloc", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "alloc", serde(rename_all = "kebab-case"))]
pub enum InstallResult {
    /// Downloading, staged or on trial: not final yet.
    Installing,
    /// The new release passed its health checks and is permanent.
    Committed,
    /// The new release failed on the device and the previous one runs again.
    RolledBack,
    /// The install failed before the switch (the error code says why).
    Failed,
}

impl InstallResult {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            InstallResult::Installing => "installing",
            InstallResult::Committed => "committed",
            InstallResult::RolledBack => "rolled-back",
            InstallResult::Failed => "failed",
        }
    }
}

/// The result a report of `record` carries for the install of `release` (the release the
/// device started installing under the rollout), or `None` when the record is not about
/// that install: switching or on trial counts as installing (it holds a place in the site's
/// concurrency budget); committed or rolled back only once the record says so for this
/// release. Downloading and staged are not reported as installing: a device that merely
/// pre-stages holds no place in the budget.
pub fn install_result(record: &Record, release: &ReleaseId) -> Option<InstallResult> {
    match record.state {
        State::Installing | State::PendingReboot | State::Trial if record.target.is_some_and(|t| &t.id == release) => {
            Some(InstallResult::Installing)
        }
        State::Committed if &record.installed.id == release => Some(InstallResult::Committed),
        State::RolledBack if &record.refused == release => Some(InstallResult::RolledBack),
        _ => None,
    }
}
