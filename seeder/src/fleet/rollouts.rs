//! Rollouts as the fleet database keeps them: generic strings and blobs, so that the policy
//! format (`protocol::rollout`) and the controller's state names are theirs alone. Every
//! state change is a compare-and-set that also appends a transition, in one transaction.
//! Writers inside `seeder serve` call these through [`super::ingest::Ingestor::write`].

use super::Db;
use anyhow::{bail, Result};
use serde::Serialize;

/// A rollout to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    /// Rollout id (unique).
    pub id: String,
    /// Release name.
    pub release_name: String,
    /// Release version.
    pub release_version: String,
    /// Hardware class.
    pub hw_class: String,
    /// Initial state name.
    pub state: String,
    /// Sequence number of the signed policy.
    pub policy_seq: u64,
    /// The signed policy's bytes.
    pub policy: Vec<u8>,
}

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// Rollout id.
    pub id: String,
    /// Release name.
    pub release_name: String,
    /// Release version.
    pub release_version: String,
    /// Hardware class.
    pub hw_class: String,
    /// Current state name.
    pub state: String,
    /// Current wave (0 before the first).
    pub current_wave: u32,
    /// Sequence number of the current signed policy.
    pub policy_seq: u64,
    /// The current signed policy's bytes.
    #[serde(skip)]
    pub policy: Vec<u8>,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Last changed (unix seconds).
    pub updated_at: i64,
}

/// One state change of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
    /// Why (the controller's words).
    pub reason: String,
    /// When (unix seconds).
    pub at: i64,
}

/// Creates a rollout at wave 0.
pub fn create(conn: &Db, rollout: &NewRollout, now: i64) -> Result<()> {
    let r = rollout;
    let inserted = conn.execute(
        "INSERT INTO rollouts (id, release_name, release_version, hw_class, state, current_wave, policy_seq, policy,
                               created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?8) ON CONFLICT (id) DO NOTHING",
        &[&r.id, &r.release_name, &r.release_version, &r.hw_class, &r.state, &(r.policy_seq as i64), &r.policy, &now],
    )?;
    if inserted == 0 {
        bail!("rollout `{}` already exists", r.id);
    }
    Ok(())
}

/// A state change asked of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<'a> {
    /// The state it must be in (compare-and-set).
    pub from: &'a str,
    /// The state it moves to.
    pub to: &'a str,
    /// Its wave afterwards.
    pub wave: u32,
    /// A new signed policy (sequence number, bytes), if the change publishes one.
    pub policy: Option<(u64, &'a [u8])>,
    /// Why (the controller's words).
    pub reason: &'a str,
}

/// Applies `change` to rollout `id` and appends a transition. Fails, changing nothing, if
/// the rollout is not in `change.from`.
pub fn transition(conn: &Db, id: &str, change: &Change<'_>, now: i64) -> Result<()> {
    let Change { from, to, wave, policy, reason } = *change;
    let changed = match policy {
        Some((seq, bytes)) => conn.execute(
            "UPDATE rollouts SET state = ?3, current_wave = ?4, policy_seq = ?5, policy = ?6, updated_at = ?7
             WHERE id = ?1 AND state = ?2",
            &[&id, &from, &to, &wave, &(seq as i64), &bytes, &now],
        )?,
        None => conn.execute(
            "UPDATE rollouts SET state = ?3, current_wave = ?4, updated_at = ?5 WHERE id = ?1 AND state = ?2",
            &[&id, &from, &to, &wave, &now],
        )?,
    };
    if changed == 0 {
        match get(conn, id)? {
            None => bail!("rollout `{id}` does not exist"),
            Some(r) => bail!("rollout `{id}` is `{}`, not `{from}`", r.state),
        }
    }
    conn.execute(
        "INSERT INTO rollout_transitions (rollout, from_state, to_state, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[&id, &from, &to, &reason, &now],
    )?;
    Ok(())
}

/// The rollout `id`, if it exists.
pub fn get(conn: &Db, id: &str) -> Result<Option<Rollout>> {
    conn.query_opt(
        "SELECT id, release_name, release_version, hw_class, state, current_wave, policy_seq, policy, created_at,
                    updated_at FROM rollouts WHERE id = ?1",
        &[&id],
        |row| {
            Ok(Rollout {
                id: row.get(0)?,
                release_name: row.get(1)?,
                release_version: row.get(2)?,
                hw_class: row.get(3)?,
                state: row.get(4)?,
                current_wave: row.get(5)?,
                policy_seq: row.get::<i64>(6)? as u64,
                policy: row.get(7)?,
                created_at: row.get(8)?,
                updated_at: row.get(9)?,
            })
        },
    )
}

/// Every transition of rollout `id`, oldest first.
pub fn transitions(conn: &Db, id: &str) -> Result<Vec<Transition>> {
    conn.query(
        "SELECT from_state, to_state, reason, at FROM rollout_transitions WHERE rollout = ?1 ORDER BY id",
        &[&id],
        |row| Ok(Transition { from: row.get(0)?, to: row.get(1)?, reason: row.get(2)?, at: row.get(3)? }),
    )
}
