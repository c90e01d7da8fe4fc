//! The device's side of a staged rollout: the signed policy it follows, the gate it asks
//! before downloading and before switching slots, and the rollout fields of its status
//! reports.
//!
//! The device decides from the signed policy itself (`protocol::rollout::Gate`); its edge
//! node's answer (`AskHold`) can only add a hold — a site that halted itself, a used-up
//! install budget — so a hostile edge answering "go" for a device outside its wave or its
//! maintenance window changes nothing. Files in `data_dir`:
//! - `rollout.policy` — the last verified policy (a staged device that restarts asks the
//!   switch gate again before it has refreshed);
//! - `rollout.install` — which rollout the current install belongs to (rollout id, release
//!   id, start time), so the reports after a reboot still name it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use protocol::install::{GateDecision, Record};
use protocol::rollout::{EdgeHold, Gate, GateVerdict, PolicyView, StopReason};
use protocol::status::InstallResult;
use protocol::time::Instant;
use protocol::wire::device::EdgeHoldAnswer;
use protocol::ReleaseId;
use serde::{Deserialize, Serialize};

/// Which install decision is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before fetching into the inactive slot (windows do not apply: pre-staging).
    Download,
    /// Before pointing the bootloader at the verified slot and rebooting.
    Switch,
}

/// The install a rollout's reports are about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InstallMark {
    rollout: String,
    release: String,
    started_unix: i64,
}

/// What the device keeps of the rollout it follows.
#[derive(Debug, Default)]
pub struct RolloutState {
    dir: PathBuf,
    policy: Option<Vec<u8>>,
    install: Option<InstallMark>,
    /// Why the last gate decision held the device back, for `device-client status`.
    pub waiting: Option<String>,
}

/// The rollout fields of a status report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReportFields {
    /// Rollout id.
    pub rollout: Option<String>,
    /// Where the install stands, as the controller counts it.
    pub result: Option<InstallResult>,
    /// The install engine's last error code.
    pub error_code: Option<u16>,
    /// Seconds from the download's start to now (for a final result, to the outcome).
    pub install_secs: Option<u64>,
    /// The slot the install targets.
    pub slot: Option<String>,
}

impl RolloutState {
    /// Reads what `data_dir` holds; damaged files count as absent (the next refresh brings the
    /// policy back; a lost install mark only drops the rollout fields of a report).
    pub fn load(data_dir: &Path) -> RolloutState {
        let policy = std::fs::read(data_dir.join("rollout.policy")).ok().filter(|b| PolicyView::parse(b).is_ok());
        let install =
            std::fs::read(data_dir.join("rollout.install")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        RolloutState { dir: data_dir.to_path_buf(), policy, install, waiting: None }
    }

    /// The verified policy of the last refresh (`None`: the repository has no rollout for
    /// this device's release), kept durably.
    pub fn set_policy(&mut self, policy: Option<Vec<u8>>) -> Result<()> {
        let path = self.dir.join("rollout.policy");
        match &policy {
            Some(bytes) => host::fs::write_atomic(&path, bytes, host::fs::PUBLIC)?,
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
        self.policy = policy;
        Ok(())
    }

    /// The policy in force, parsed.
    pub fn policy(&self) -> Option<PolicyView<'_>> {
        self.policy.as_deref().and_then(|b| PolicyView::parse(b).ok())
    }

    /// The gate's answer for `stage`, with the edge's `hold`. Without a policy (a repository
    /// that does not use rollouts) the device proceeds. `recheck_secs` is the device's own
    /// check interval: a device outside the current wave looks again after it (or at the
    /// wave's earliest advance, whichever is later).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        stage: Stage,
        device: &[u8; 32],
        site: &str,
        hold: EdgeHoldAnswer,
        now: Instant,
        unix_now: i64,
        recheck_secs: u64,
    ) -> GateDecision {
        let Some(policy) = self.policy() else {
            self.waiting = None;
            return GateDecision::Proceed;
        };
        let gate = Gate { max_wait_secs: recheck_secs.clamp(1, u32::MAX as u64) as u32, ..Gate::default() };
        let hold = match hold {
            EdgeHoldAnswer::None => EdgeHold::None,
            EdgeHoldAnswer::SiteHalted => EdgeHold::SiteHalted,
            EdgeHoldAnswer::ConcurrencyFull { retry_at } => EdgeHold::ConcurrencyFull { retry_at },
        };
        let verdict = match stage {
            Stage::Download => gate.download_decision(&policy, device, unix_now, hold),
            Stage::Switch => gate.switch_decision(&policy, device, site, unix_now, hold),
        };
        let waiting = describe(&verdict, policy.id(), unix_now);
        let decision = gate.engine_decision(verdict, now, unix_now);
        if let Some(why) = &waiting {
            tracing::info!(rollout = policy.id(), ?stage, "{why}");
        }
        self.waiting = waiting;
        decision
    }

    /// The install about to start belongs to the policy's rollout: remembered so reports
    /// name it through reboots.
    pub fn mark_install(&mut self, release: ReleaseId, unix_now: i64) -> Result<()> {
        let Some(rollout) = self.policy().map(|p| p.id().to_string()) else { return Ok(()) };
        if self.install.as_ref().is_some_and(|m| m.rollout == rollout && m.release == release.to_hex()) {
            return Ok(());
        }
        let mark = InstallMark { rollout, release: release.to_hex(), started_unix: unix_now };
        host::fs::write_atomic(&self.dir.join("rollout.install"), &serde_json::to_vec(&mark)?, host::fs::PUBLIC)
            .context("cannot record the rollout of this install")?;
        self.install = Some(mark);
        Ok(())
    }

    /// The rollout fields for a report of `record`: only while the record is about the
    /// marked install (its target, its committed release, or the release it rolled back).
    pub fn report_fields(&self, record: &Record, unix_now: i64) -> ReportFields {
        let Some(mark) = &self.install else { return ReportFields::default() };
        let Ok(release) = ReleaseId::from_hex(&mark.release) else { return ReportFields::default() };
        let Some(result) = protocol::rollout::install_result(record, &release) else {
            return ReportFields::default();
        };
        ReportFields {
            rollout: Some(mark.rollout.clone()),
            result: Some(result),
            error_code: record.last_error.map(|e| e as u16),
            install_secs: Some(unix_now.saturating_sub(mark.started_unix).max(0) as u64),
            slot: Some(record.inactive().name().to_string()),
        }
    }
}

/// Why a verdict holds the device back, one line; `None` for go.
fn describe(verdict: &GateVerdict, rollout: &str, unix_now: i64) -> Option<String> {
    let in_secs = |at: i64| at.saturating_sub(unix_now).max(0);
    Some(match verdict {
        GateVerdict::Proceed => return None,
        GateVerdict::WaitUntil(at) => {
            format!(
                "rollout {rollout}: waiting {} s for a maintenance window or the site's install budget",
                in_secs(*at)
            )
        }
        GateVerdict::NotInRolloutYet { recheck_at } => {
            format!(
                "rollout {rollout}: this device's wave has not started; checking again in {} s",
                in_secs(*recheck_at)
            )
        }
        GateVerdict::Stopped(reason) => match reason {
            StopReason::Paused => format!("rollout {rollout} is paused"),
            StopReason::Halted { code } => format!("rollout {rollout} halted (code {code})"),
            StopReason::Aborted => format!("rollout {rollout} was aborted"),
            StopReason::SiteHalted => format!("rollout {rollout} is halted at this site by its edge node"),
        },
    })
}
