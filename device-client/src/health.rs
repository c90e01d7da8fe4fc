//! Trial health checks: the operator's commands, each with a timeout, plus "an edge node is
//! reachable" — a new image that cannot reach the update path again must not be committed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

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
    let Some((program, args)) = check.command.split_first() else { return Err("empty command".into()) };
    let child = Command::new(program)
        .args(args)
        .env("OTAMESH_VERSION", &trial.version)
        .env("OTAMESH_SLOT", &trial.slot)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("timed out after {} s", timeout.as_secs_f64())),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = stderr.lines().last().unwrap_or("").chars().take(200).collect::<String>();
            Err(format!(
                "exited with {}{}",
                out.status,
                if line.is_empty() { String::new() } else { format!(": {line}") }
            ))
        }
    }
}
