//! What the rollout machinery reads from a device's status report: which rollout, which
//! outcome, when. One conversion from [`StatusReport`] so the edge's site guard and the
//! publisher's controller count the same things.

use alloc::string::String;

use crate::status::{InstallResult, StatusReport};

/// An install's outcome as the controller counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Under way (downloading, staged, on trial): counts toward a site's concurrency, not
    /// toward the health gate.
    Installing,
    /// Committed: a success.
    Committed,
    /// Rolled back on the device: a failure.
    RolledBack,
    /// Failed before the switch, with the install engine's error code: a failure.
    Failed(u16),
}

impl Outcome {
    /// Whether the outcome is final (the health gate counts only final outcomes).
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::Installing)
    }

    /// Whether the outcome is a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::RolledBack | Outcome::Failed(_))
    }

    /// Order among outcomes reported at the same second, so the result does not depend on
    /// arrival order: failures win over successes, which win over progress.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Outcome::Installing => 0,
            Outcome::Committed => 1,
            Outcome::RolledBack => 2,
            Outcome::Failed(_) => 3,
        }
    }
}

/// One device's outcome under one rollout, from a verified status report.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RolloutReport {
    /// The device's ed25519 public key.
    pub device_id: [u8; 32],
    /// The rollout it installs under.
    pub rollout_id: String,
    /// The outcome.
    pub outcome: Outcome,
    /// When the device says it happened, unix seconds.
    pub at: i64,
}

impl RolloutReport {
    /// The rollout part of a report, if it has one: a rollout id, a result, and a device key
    /// in hex. The caller has verified the report's signature.
    pub fn from_status(report: &StatusReport) -> Option<RolloutReport> {
        let rollout_id = report.rollout.clone()?;
        let device_id = crate::hex::decode_array::<32>(&report.device).ok()?;
        let outcome = match report.result? {
            InstallResult::Installing => Outcome::Installing,
            InstallResult::Committed => Outcome::Committed,
            InstallResult::RolledBack => Outcome::RolledBack,
            InstallResult::Failed => Outcome::Failed(report.error_code.unwrap_or(0)),
        };
        Some(RolloutReport { device_id, rollout_id, outcome, at: report.time })
    }

    /// Whether this report, taken as made at `at` (its time, capped at the receiver's clock),
    /// replaces `(previous, previous_at)` as the device's latest: a later time wins; at the
    /// same time the higher-ranked outcome wins, so duplicates and reordering change nothing.
    pub(crate) fn supersedes_at(&self, at: i64, previous: Outcome, previous_at: i64) -> bool {
        at > previous_at || (at == previous_at && self.outcome.rank() > previous.rank())
    }
}
