//! `seeder inspect`: roles, keys, expiries, releases and the store's deduplication.

use anyhow::Result;
use protocol::tuf::ReleaseTarget;
use serde::Serialize;

use crate::repo::{expiry, Repo};

/// A role as the current root defines it.
#[derive(Debug, Serialize)]
pub struct RoleInfo {
    /// Role name.
    pub role: String,
    /// Key ids.
    pub keyids: Vec<String>,
    /// Signatures needed.
    pub threshold: usize,
    /// Current metadata version.
    pub version: u64,
    /// When it expires.
    pub expires: String,
}

/// A published release.
#[derive(Debug, Serialize)]
pub struct ReleaseInfo {
    /// TUF target path of its manifest.
    pub target: String,
    /// Release name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Hardware class.
    pub hw_class: String,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Plaintext image bytes.
    pub image_bytes: u64,
    /// Chunks.
    pub chunks: u64,
    /// Stored bytes of all its chunks.
    pub stored_bytes: u64,
    /// Whether the release has a seal for microcontrollers (`….manifest.sig`).
    pub mcu_seal: bool,
}

/// A role that expires soon: what clients will refuse, when, and what renews it.
#[derive(Debug, Serialize)]
pub struct ExpiryWarning {
    /// Role name.
    pub role: String,
    /// When it expires.
    pub expires: String,
    /// Seconds left (negative: already expired).
    pub seconds_left: i64,
    /// The command that renews it.
    pub fix: String,
}

/// The whole inspection.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    /// Top-level roles.
    pub roles: Vec<RoleInfo>,
    /// Roles expiring within the warning window, or expired.
    pub warnings: Vec<ExpiryWarning>,
    /// Releases, sorted by target path.
    pub releases: Vec<ReleaseInfo>,
    /// Chunk files in the store.
    pub store_chunks: u64,
    /// Bytes in the store.
    pub store_bytes: u64,
    /// Sum of every release's stored bytes over the store's bytes: how much deduplication
    /// across releases saves (1.0 = none).
    pub dedup_ratio: f64,
}

/// Reads the repository's current state (unverified; `seeder verify` checks it) and warns
/// about every role that expires within `warn_within_secs` of `now`. The timestamp lives only
/// 7 days by design, so for it the window is at most half of that — the point where
/// `seeder serve` renews it by default — or a healthy repository would always warn.
pub fn run(repo: &Repo, now: i64, warn_within_secs: i64) -> Result<InspectReport> {
    let current = repo.current()?;
    let roles: Vec<RoleInfo> = ["root", "targets", "snapshot", "timestamp"]
        .into_iter()
        .map(|role| {
            let (keyids, threshold) = current.role_keys(role);
            let signed = match role {
                "root" => &current.root,
                "targets" => &current.targets,
                "snapshot" => &current.snapshot,
                _ => &current.timestamp,
            };
            RoleInfo {
                role: role.into(),
                keyids,
                threshold,
                version: current.version(role),
                expires: signed["expires"].as_str().unwrap_or("?").into(),
            }
        })
        .collect();
    let mut warnings = Vec::new();
    for role in &roles {
        let window = match role.role.as_str() {
            "timestamp" => warn_within_secs.min(expiry::TIMESTAMP_SECS / 2),
            _ => warn_within_secs,
        };
        // An unreadable expiry is as bad as an expired one: clients refuse it.
        let expires = protocol::tuf::time::parse_expiry(&role.expires).unwrap_or(i64::MIN / 2);
        if expires - now < window {
            let fix = match role.role.as_str() {
                "root" => "run `seeder key rotate --role root`",
                "targets" => "publish a release or run `seeder key rotate --role targets`",
                _ => "run `seeder timestamp refresh` or keep `seeder serve` running",
            };
            warnings.push(ExpiryWarning {
                role: role.role.clone(),
                expires: role.expires.clone(),
                seconds_left: expires - now,
                fix: fix.into(),
            });
        }
    }
    let releases = releases(&current);
    // Chunk files only: work files of a `release add` in progress are not the store.
    let stored = chunk_store::layout::scan(&repo.chunks_dir());
    let (store_chunks, store_bytes) = (stored.len() as u64, stored.iter().map(|(_, len)| len).sum::<u64>());
    let referenced: u64 = releases.iter().map(|r| r.stored_bytes).sum();
    let dedup_ratio = if store_bytes == 0 { 1.0 } else { referenced as f64 / store_bytes as f64 };
    Ok(InspectReport { roles, warnings, releases, store_chunks, store_bytes, dedup_ratio })
}

/// Every release the repository's top-level targets publish (seals folded into their
/// release's `mcu_seal`); no chunk store scan, so it is cheap enough for every API call.
pub fn releases(current: &crate::repo::Current) -> Vec<ReleaseInfo> {
    let mut releases = Vec::new();
    if let Some(targets) = current.targets["targets"].as_object() {
        for (path, entry) in targets {
            // Seals belong to what they seal (`mcu_seal` below).
            if protocol::seal::sealed_target_path(path).is_some() {
                continue;
            }
            // A target another tool published (no valid release metadata) is listed by path.
            let release = ReleaseTarget::from_custom(entry.get("custom")).ok();
            let text = |field: fn(&ReleaseTarget) -> &String| release.as_ref().map_or("?".into(), |r| field(r).clone());
            releases.push(ReleaseInfo {
                target: path.clone(),
                name: text(|r| &r.name),
                version: text(|r| &r.version),
                hw_class: text(|r| &r.hw_class),
                security_counter: release.as_ref().map_or(0, |r| r.security_counter),
                image_bytes: release.as_ref().map_or(0, |r| r.image_length),
                chunks: release.as_ref().map_or(0, |r| r.chunk_count),
                stored_bytes: release.as_ref().map_or(0, |r| r.stored_bytes),
                mcu_seal: targets.contains_key(&crate::mcu_trust::seal_path(path)),
            });
        }
    }
    releases
}
