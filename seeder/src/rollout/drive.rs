//! The controller loop `seeder serve` runs: every rollout whose policy the repository holds
//! gets a [`Tracked`] controller fed from the fleet database; when one decides (a wave
//! advances, the rollout halts or completes) its next policy is signed under the `rollouts`
//! delegation — the origin announces the new timestamp as for any publish — and the change
//! is recorded in the fleet database.
//!
//! An operator's `seeder rollout pause|resume|abort` (another process) signs a policy too;
//! the loop sees the sequence number move under it and rebuilds that controller from the
//! database, so the two never sign from different states. The repository lock serializes
//! the signing itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use protocol::rollout::{Phase, RolloutPolicy};

use super::record;
use super::tracked::Tracked;
use crate::fleet::ingest::Ingestor;
use crate::repo::Repo;
use crate::{fleet, rollouts_role, time};

/// How often the loop looks at the reports and the clock.
pub const TICK: Duration = Duration::from_secs(1);
/// How often (in ticks) each controller re-counts the enrolled devices per wave.
const RECOUNT_TICKS: u64 = 30;

/// Runs forever; a failed pass is logged and retried on the next tick.
pub async fn run_forever(repo: PathBuf, fleet: Arc<Ingestor>) -> std::convert::Infallible {
    let mut tracked: BTreeMap<String, Tracked> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    for ticks in 0u64.. {
        tick.tick().await;
        let (dir, writer) = (repo.clone(), Arc::clone(&fleet));
        let mut state = std::mem::take(&mut tracked);
        let recount = ticks % RECOUNT_TICKS == 0;
        let pass = tokio::task::spawn_blocking(move || {
            let result = pass(&dir, &writer, &mut state, recount);
            (state, result)
        })
        .await;
        match pass {
            Ok((state, result)) => {
                tracked = state;
                if let Err(e) = result {
                    tracing::warn!("rollout controller pass failed (retrying): {e:#}");
                }
            }
            Err(e) => tracing::error!("rollout controller task failed: {e}"),
        }
    }
    unreachable!("the tick counter does not run out")
}

/// One look at every rollout.
fn pass(
    repo_dir: &std::path::Path,
    fleet: &Ingestor,
    tracked: &mut BTreeMap<String, Tracked>,
    recount: bool,
) -> Result<()> {
    let repo = Repo::at(repo_dir);
    let Some(conn) = fleet::open_read(&fleet::db_path(repo_dir))? else { return Ok(()) };
    for (name, bytes) in rollouts_role::current_policies(&repo)? {
        let policy = RolloutPolicy::decode(&bytes).map_err(|e| anyhow!("policy of {name}: {e}"))?;
        if !matches!(policy.state.phase(), Phase::Running) {
            tracked.remove(&policy.id);
            continue;
        }
        let entry = match tracked.remove(&policy.id) {
            Some(mut t) if t.controller.policy().seq == policy.seq => {
                t.feed(&conn)?;
                if recount {
                    t.count_targeted(&conn)?;
                }
                t
            }
            _ => Tracked::rebuild(&conn, policy.clone())?,
        };
        let mut entry = entry;
        let now = time::now_unix();
        if let Some(next) = entry.controller.poll(now) {
            publish(&repo, fleet, &name, &policy, &next, now)?;
        }
        tracked.insert(policy.id.clone(), entry);
    }
    Ok(())
}

/// Signs `next` if the repository still holds `previous` (an operator may have signed in
/// between), and records the change.
fn publish(
    repo: &Repo,
    fleet: &Ingestor,
    name: &str,
    previous: &RolloutPolicy,
    next: &RolloutPolicy,
    now: i64,
) -> Result<()> {
    let _lock = repo.lock()?;
    let current = super::current_policy(repo, name)?;
    if current.as_ref().map(|p| p.seq) != Some(previous.seq) {
        tracing::info!(rollout = %previous.id, "the policy changed under the controller; rebuilding");
        return Ok(());
    }
    let bytes = next.encode().map_err(|e| anyhow!("{e}"))?;
    rollouts_role::publish_policy(repo, name, &bytes)?;
    let (previous_owned, next_owned) = (previous.clone(), next.clone());
    fleet.write(move |conn| record::record(conn, Some(&previous_owned), &next_owned, &bytes, now))?;
    tracing::info!(
        rollout = %next.id,
        state = next.state.phase().name(),
        wave = next.current_wave,
        seq = next.seq,
        "rollout policy signed"
    );
    Ok(())
}
