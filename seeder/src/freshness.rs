//! Keeping the repository fresh: a repository nobody publishes to must not freeze its fleet.
//!
//! Clients refuse expired metadata (TUF's freeze-attack defence), so a quiet repository
//! would stop every device once its timestamp (7 days) or snapshot (30 days) expired.
//! [`Policy`] says when each is due for renewal — when less than its margin is left — and
//! [`renew_if_due`] re-signs through the repository's commit protocol: a new snapshot naming
//! the same targets when the snapshot is due (which also means a new timestamp), otherwise a
//! new timestamp naming the same snapshot; `timestamp.json` is always written last.
//! `seeder timestamp refresh` runs it once; `seeder serve` runs it in a loop that sleeps
//! until [`Renewal::next_due_unix`].

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::repo::{expiry, Current, ExtraSigners, Repo};
use crate::time;

/// Default share of the timestamp's lifetime left at which it is renewed: one half.
pub const DEFAULT_TIMESTAMP_RENEW_DIVISOR: i64 = 2;

/// When to renew what, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Lifetime of each timestamp signed.
    pub timestamp_lifetime_secs: i64,
    /// Renew the timestamp when less than this is left.
    pub timestamp_renew_before_secs: i64,
    /// Renew the snapshot when less than this is left.
    pub snapshot_renew_before_secs: i64,
}

impl Policy {
    /// Checks that a renewal leaves the role outside its margin: a margin as long as the
    /// lifetime would make every fresh signature due again at once (a signing busy loop).
    pub fn new(
        timestamp_lifetime_secs: i64,
        timestamp_renew_before_secs: Option<i64>,
        snapshot_renew_before_secs: i64,
    ) -> Result<Policy> {
        let timestamp_renew_before_secs =
            timestamp_renew_before_secs.unwrap_or(timestamp_lifetime_secs / DEFAULT_TIMESTAMP_RENEW_DIVISOR);
        if timestamp_renew_before_secs >= timestamp_lifetime_secs {
            bail!("the timestamp renewal margin must be shorter than the timestamp's lifetime; lower --timestamp-renew-before or raise --timestamp-expires");
        }
        if snapshot_renew_before_secs >= expiry::SNAPSHOT_SECS {
            bail!(
                "the snapshot renewal margin must be shorter than the snapshot's {}-day lifetime; lower --snapshot-renew-before",
                expiry::SNAPSHOT_SECS / 86_400
            );
        }
        Ok(Policy { timestamp_lifetime_secs, timestamp_renew_before_secs, snapshot_renew_before_secs })
    }

    /// When the snapshot and the timestamp of `current` fall due, in unix seconds.
    pub fn due_at(&self, current: &Current) -> Result<(i64, i64)> {
        let expires = |signed: &serde_json::Value, role: &str| {
            time::parse_expiry(signed["expires"].as_str().unwrap_or("")).with_context(|| format!("current {role}"))
        };
        let snapshot = expires(&current.snapshot, "snapshot")? - self.snapshot_renew_before_secs;
        let timestamp = expires(&current.timestamp, "timestamp")? - self.timestamp_renew_before_secs;
        Ok((snapshot, timestamp))
    }
}

/// What a renewal did, and when the next one is due.
#[derive(Debug, Serialize)]
pub struct Renewal {
    /// A new snapshot was signed.
    pub renewed_snapshot: bool,
    /// A new timestamp was signed.
    pub renewed_timestamp: bool,
    /// Snapshot version now published.
    pub snapshot_version: u64,
    /// When it expires.
    pub snapshot_expires: String,
    /// Timestamp version now published.
    pub timestamp_version: u64,
    /// When it expires.
    pub timestamp_expires: String,
    /// When the next renewal is due (unix seconds).
    pub next_due_unix: i64,
}

/// Renews what is due at `time::now_unix()`; with `force_timestamp`, the timestamp even if
/// it is not. Holds the repository's writer lock throughout.
pub fn renew_if_due(repo: &Repo, policy: &Policy, force_timestamp: bool) -> Result<Renewal> {
    let _lock = repo.lock()?;
    let current = repo.current()?;
    let now = time::now_unix();
    let (snapshot_due, timestamp_due) = policy.due_at(&current)?;
    let renewed_snapshot = snapshot_due <= now;
    let renewed_timestamp = renewed_snapshot || force_timestamp || timestamp_due <= now;
    if renewed_snapshot {
        repo.publish_snapshot(
            &current,
            current.version("targets"),
            policy.timestamp_lifetime_secs,
            &ExtraSigners::default(),
        )?;
    } else if renewed_timestamp {
        let snapshot_version = current.version("snapshot");
        let name = format!("{snapshot_version}.snapshot.json");
        let envelope = std::fs::read(repo.metadata_dir().join(&name))
            .with_context(|| format!("cannot read {name}; run `seeder verify --repo DIR`"))?;
        repo.publish_timestamp(
            &current,
            snapshot_version,
            &envelope,
            policy.timestamp_lifetime_secs,
            &ExtraSigners::default(),
        )?;
    }
    let after = if renewed_timestamp { repo.current()? } else { current };
    let (snapshot_due, timestamp_due) = policy.due_at(&after)?;
    let text = |v: &serde_json::Value| v["expires"].as_str().unwrap_or("?").to_string();
    Ok(Renewal {
        renewed_snapshot,
        renewed_timestamp,
        snapshot_version: after.version("snapshot"),
        snapshot_expires: text(&after.snapshot),
        timestamp_version: after.version("timestamp"),
        timestamp_expires: text(&after.timestamp),
        next_due_unix: snapshot_due.min(timestamp_due),
    })
}
