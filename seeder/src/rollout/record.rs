//! Keeping the fleet database's account of a rollout in step with its signed policies: the
//! rollout's row (created when it starts) and one transition per signed change, with why.

use crate::fleet::Db as Connection;
use anyhow::Result;
use protocol::rollout::{RolloutPolicy, RolloutState};

use crate::fleet::rollouts::{self, Change, NewRollout};

/// Records a newly signed `next` policy that replaced `previous` (`None`: the rollout
/// starts), creating the rollout's row when the database has none yet.
pub fn record(
    conn: &Connection,
    previous: Option<&RolloutPolicy>,
    next: &RolloutPolicy,
    bytes: &[u8],
    now: i64,
) -> Result<()> {
    let state = next.state.phase().name();
    if rollouts::get(conn, &next.id)?.is_none() {
        let new = NewRollout {
            id: next.id.clone(),
            release_name: next.release.name.clone(),
            release_version: next.release.version.clone(),
            hw_class: next.release.hw_class.clone(),
            state: previous.map_or(state, |p| p.state.phase().name()).to_string(),
            policy_seq: previous.map_or(next.seq, |p| p.seq),
            policy: bytes.to_vec(),
        };
        rollouts::create(conn, &new, now)?;
        if previous.is_none() {
            return Ok(());
        }
    }
    let from = match rollouts::get(conn, &next.id)? {
        Some(row) => row.state,
        None => state.to_string(),
    };
    let reason = match (&next.state, previous) {
        (RolloutState::Halted { reason, .. }, _) => reason.clone(),
        (RolloutState::Running, Some(p)) if p.current_wave != next.current_wave => {
            format!("wave {} started", next.current_wave)
        }
        (RolloutState::Complete, _) => "every wave passed".into(),
        (_, _) => format!("{} (policy v{})", state, next.seq),
    };
    let change = Change {
        from: &from,
        to: state,
        wave: next.current_wave as u32,
        policy: Some((next.seq, bytes)),
        reason: &reason,
    };
    rollouts::transition(conn, &next.id, &change, now)
}
