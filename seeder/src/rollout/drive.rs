//! The controller loop `seeder serve` runs: every rollout whose policy the repository holds
//! gets a [`Tracked`] controller fed from the fleet database; when one decides (a wave
//! advances, the rollout halts or completes) its next policy is signed under the `rollouts`
//! delegation — the origin announces the new timestamp as for any publish — and the change
//! is recorded in the fleet database.
//!
//! Rollouts that are not running (paused, halted, finished) are tracked too, since devices
//! still report on them: after each pass the loop publishes every rollout's status to the
//! [`Board`] the API answers from.
//!
//! With several `seeder serve` replicas on one PostgreSQL fleet database, only the one
//! holding the controller's lease (`fleet::lease`, tried every tick) decides and signs; the
//! others track and publish the same statuses, so any replica's API answers from memory.
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
use protocol::rollout::RolloutPolicy;

use super::board::Board;
use super::record;
use super::tracked::Tracked;
use crate::fleet::ingest::Ingestor;
use crate::fleet::lease::Lease;
use crate::repo::Repo;
use crate::{fleet, rollouts_role, time};

/// How often the loop looks at the reports and the clock.
pub const TICK: Duration = Duration::from_secs(1);
/// How often (in ticks) each controller re-counts the enrolled devices per wave even when no
/// device was enrolled (it always does after an enrollment).
const RECOUNT_TICKS: u64 = 30;

/// Runs forever; a failed pass is logged and retried on the next tick.
pub async fn run_forever(repo: PathBuf, fleet: Arc<Ingestor>, board: Arc<Board>) -> std::convert::Infallible {
    let mut tracked: BTreeMap<String, Entry> = BTreeMap::new();
    let mut lease = Some(Lease::new(fleet::location(&repo)));
    let mut tick = tokio::time::interval(TICK);
    for ticks in 0u64.. {
        tick.tick().await;
        let (dir, writer, board) = (repo.clone(), Arc::clone(&fleet), Arc::clone(&board));
        let mut state = std::mem::take(&mut tracked);
        let mut held = lease.take();
        let recount = ticks % RECOUNT_TICKS == 0;
        // The lease (a PostgreSQL session) is only used, and never dropped, on a blocking
        // thread.
        let pass = tokio::task::spawn_blocking(move || {
            let lead = held.as_mut().is_some_and(Lease::hold);
            if lead != board.leading() {
                board.set_leading(lead);
                match lead {
                    true => tracing::info!("this seeder now runs the rollout controller"),
                    false => tracing::warn!("this seeder no longer runs the rollout controller"),
                }
            }
            let result = pass(&dir, &writer, &mut state, recount, lead);
            board.publish(state.values().map(|t| (t.release.clone(), Arc::new(t.tracked.status()))).collect());
            (state, held, result)
        })
        .await;
        match pass {
            Ok((state, held, result)) => {
                tracked = state;
                lease = held;
                if let Err(e) = result {
                    tracing::warn!("rollout controller pass failed (retrying): {e:#}");
                }
            }
            Err(e) => tracing::error!("rollout controller task failed: {e}"),
        }
    }
    unreachable!("the tick counter does not run out")
}

/// What every rollout of one pass shares.
struct Pass<'a> {
    repo: &'a Repo,
    conn: &'a fleet::Db,
    fleet: &'a Ingestor,
    /// Count the targeted devices again even if none was enrolled.
    recount: bool,
    /// This replica holds the lease: it decides and signs.
    lead: bool,
    /// The newest enrolled device now.
    newest_device: i64,
}

/// A tracked rollout and the release it is of.
struct Entry {
    release: String,
    tracked: Tracked,
}

/// One look at every rollout: each is fed what arrived, and a running one's controller
/// decides. Rollouts whose policy left the repository are dropped; one that fails is
/// rebuilt on the next pass, and does not stop the others.
fn pass(
    repo_dir: &std::path::Path,
    fleet: &Ingestor,
    tracked: &mut BTreeMap<String, Entry>,
    recount: bool,
    lead: bool,
) -> Result<()> {
    let repo = Repo::at(repo_dir);
    let Some(conn) = fleet::open_read(&fleet::location(repo_dir))? else { return Ok(()) };
    let newest_device = super::tracked::newest_device(&conn)?;
    let pass = Pass { repo: &repo, conn: &conn, fleet, recount, lead, newest_device };
    let mut seen = BTreeMap::new();
    let mut first_error = None;
    for (name, bytes) in rollouts_role::current_policies(&repo)? {
        let policy = RolloutPolicy::decode(&bytes).map_err(|e| anyhow!("policy of {name}: {e}"))?;
        match step(&pass, tracked.remove(&policy.id), &name, &policy) {
            Ok(Some(entry)) => {
                seen.insert(policy.id.clone(), entry);
            }
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e.context(format!("rollout {}", policy.id)));
            }
        }
    }
    *tracked = seen;
    first_error.map_or(Ok(()), Err)
}

/// Feeds one rollout (or rebuilds it if its policy changed), and signs what it decides.
/// `None` when an operator signed a policy in between: the controller decided from a state
/// that is gone, so the next pass rebuilds it from the one the repository holds.
fn step(pass: &Pass<'_>, previous: Option<Entry>, name: &str, policy: &RolloutPolicy) -> Result<Option<Entry>> {
    let mut entry = match previous {
        Some(mut t) if t.tracked.controller.policy().seq == policy.seq => {
            t.tracked.feed(pass.conn)?;
            if pass.recount || t.tracked.enrolled_since_count(pass.newest_device) {
                t.tracked.count_targeted(pass.conn)?;
            }
            t
        }
        _ => Entry { release: name.to_string(), tracked: Tracked::rebuild(pass.conn, policy.clone())? },
    };
    let now = time::now_unix();
    // Only a running policy decides anything (`poll` says nothing otherwise), and only the
    // leader asks.
    if let Some(next) = pass.lead.then(|| entry.tracked.controller.poll(now)).flatten() {
        if !publish(pass.repo, pass.fleet, name, policy, &next, now)? {
            return Ok(None);
        }
    }
    Ok(Some(entry))
}

/// Signs `next` if the repository still holds `previous` (an operator may have signed in
/// between), and records the change; whether it signed.
fn publish(
    repo: &Repo,
    fleet: &Ingestor,
    name: &str,
    previous: &RolloutPolicy,
    next: &RolloutPolicy,
    now: i64,
) -> Result<bool> {
    let _lock = repo.lock()?;
    let current = super::current_policy(repo, name)?;
    if current.as_ref().map(|p| p.seq) != Some(previous.seq) {
        tracing::info!(rollout = %previous.id, "the policy changed under the controller; rebuilding");
        return Ok(false);
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
    Ok(true)
}
