//! Trial health checks: the operator's commands, each run by [`host::process::run`] (a
//! timeout that kills the check's whole process group, bounded output), plus "an edge node is
//! reachable" — a new image that cannot reach the update path again must not be committed.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::config::HealthCheckConfig;
use crate::edges::EdgePool;

/// The verdict, with the failing check's name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// All checks passed.
    Healthy,
    /// A check failed.
    Failed {
        /// The check's name.
        check: String,
        /// One line on why.
        why: String,
    },
}

/// What a check is told about the slot on trial, as environment variables
/// (`OTAMESH_VERSION`, `OTAMESH_SLOT`), so a check can test what is specific to a release.
#[derive(Debug, Clone)]
pub struct TrialInfo {
    /// The version on trial.
    pub version: String,
    /// The slot on trial (`a` or `b`).
    pub slot: String,
}

/// Runs every configured check, then the edge check, stopping at the first failure or when
/// `deadline` passes.
pub async fn run_checks(
    checks: &[HealthCheckConfig],
    trial: &TrialInfo,
    pool: &mut EdgePool,
    deadline: Instant,
) -> Verdict {
    for check in checks {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_secs(check.timeout_secs).min(left);
        if let Err(why) = run_one(check, trial, timeout).await {
            return Verdict::Failed { check: check.name.clone(), why };
        }
    }
    if !pool.any_reachable().await {
        return Verdict::Failed { check: "edge-reachable".into(), why: "no edge node answered".into() };
    }
    Verdict::Healthy
}

async fn run_one(check: &HealthCheckConfig, trial: &TrialInfo, timeout: Duration) -> Result<(), String> {
    if check.command.is_empty() {
        return Err("empty command".into());
    }
    let argv: Vec<OsString> = check.command.iter().map(OsString::from).collect();
    let env = [("OTAMESH_VERSION", trial.version.clone()), ("OTAMESH_SLOT", trial.slot.clone())];
    // The runner blocks (it waits on the child and its pipes); a check takes seconds.
    let finished = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host::process::run(&argv, &env, timeout)
    })
    .await
    .map_err(|e| format!("the check's runner failed: {e}"))?
    .map_err(|e| format!("{e:#}"))?;
    if finished.status.success() {
        return Ok(());
    }
    let line = finished.last_stderr_line();
    Err(format!("exited with {}{}", finished.status, if line.is_empty() { String::new() } else { format!(": {line}") }))
}
