//! The on-disk TUF repository the seeder publishes.
//!
//! ```text
//! DIR/keys/        signing keys and the content key (0700, never served)
//! DIR/metadata/    N.root.json, root.json, N.targets.json, N.snapshot.json, timestamp.json
//! DIR/targets/     releases/NAME/<sha256>.VERSION.manifest   (consistent-snapshot names)
//! DIR/chunks/      ab/abcdef…   chunk bodies named by blake3 of their stored bytes
//! ```
//!
//! The layout is standard TUF with consistent snapshots, so python-tuf, tuf-js or tough can
//! read it. Chunks are not TUF targets (a GiB has ~16k of them): the manifest, which is a
//! target, signs their ids.
//!
//! Writers take `Repo::lock` (an `flock` on `metadata/`), so `seeder serve`'s renewals and
//! `seeder release add` never interleave.
//!
//! Commit protocol: every change writes new versioned files first (content-addressed or not
//! yet referenced), and `timestamp.json` last. Clients start from the timestamp, so a run
//! killed at any point leaves the previous state intact and verifiable; the next run simply
//! overwrites the unreferenced files.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::fs;
use std::path::{Path, PathBuf};

use crate::keys::{self, RoleKey};
use crate::time;

/// TUF specification version written into metadata.
pub const SPEC_VERSION: &str = "1.0.31";

/// Default lifetimes, in seconds. The timestamp is short so a frozen mirror is noticed within
/// a week; `seeder serve` renews timestamp and snapshot before they expire, and
/// `seeder timestamp refresh` does the same once (see `freshness`).
pub mod expiry {
    /// Root metadata: one year.
    pub const ROOT_SECS: i64 = 365 * 86_400;
    /// Targets metadata: one year.
    pub const TARGETS_SECS: i64 = 365 * 86_400;
    /// Snapshot metadata: 30 days.
    pub const SNAPSHOT_SECS: i64 = 30 * 86_400;
    /// Timestamp metadata: 7 days.
    pub const TIMESTAMP_SECS: i64 = 7 * 86_400;
}

/// A repository directory.
pub struct Repo {
    /// Its root directory.
    pub dir: PathBuf,
}

/// The metadata the repository currently publishes (as referenced from `timestamp.json`).
pub struct Current {
    /// Newest root's `signed` object.
    pub root: Value,
    /// Newest root version.
    pub root_version: u64,
    /// Current targets `signed` object.
    pub targets: Value,
    /// Current snapshot `signed` object.
    pub snapshot: Value,
    /// Current timestamp `signed` object.
    pub timestamp: Value,
}

fn version_of(signed: &Value) -> u64 {
    signed["version"].as_u64().unwrap_or(0)
}

impl Current {
    /// Version of a top-level role's current metadata.
    pub fn version(&self, role: &str) -> u64 {
        match role {
            "root" => self.root_version,
            "targets" => version_of(&self.targets),
            "snapshot" => version_of(&self.snapshot),
            _ => version_of(&self.timestamp),
        }
    }

    /// Key ids and threshold of a role, from the current root.
    pub fn role_keys(&self, role: &str) -> (Vec<String>, usize) {
        let entry = &self.root["roles"][role];
        let keyids = entry["keyids"]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
            .unwrap_or_default();
        (keyids, entry["threshold"].as_u64().unwrap_or(1) as usize)
    }
}

impl Repo {
    /// Opens `dir` without reading anything yet.
    pub fn at(dir: &Path) -> Self {
        Repo { dir: dir.to_owned() }
    }
    /// `DIR/metadata`.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }
    /// `DIR/targets`.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }
    /// `DIR/chunks` (the layout is `chunk_store::layout`'s, shared with edge nodes).
    pub fn chunks_dir(&self) -> PathBuf {
        chunk_store::layout::chunks_dir(&self.dir)
    }
    /// `DIR/keys`.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
    /// Where a chunk body lives: two hex digits of fan-out, then the full id.
    pub fn chunk_path(&self, id: &protocol::ChunkId) -> PathBuf {
        chunk_store::layout::chunk_path(&self.chunks_dir(), id)
    }

    /// Where a target file lives with its consistent-snapshot hash prefix.
    pub fn target_file_path(&self, target_path: &str, sha256_hex: &str) -> PathBuf {
        self.targets_dir().join(protocol::tuf::hashed_target_path(target_path, sha256_hex))
    }

    /// Reads and parses a metadata envelope, returning it whole.
    pub fn read_envelope(&self, file_name: &str) -> Result<Value> {
        let path = self.metadata_dir().join(file_name);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))
    }

    /// The highest N with `metadata/N.root.json`.
    pub fn latest_root_version(&self) -> Result<u64> {
        let mut latest = 0;
        let dir = self.metadata_dir();
        for entry in fs::read_dir(&dir).with_context(|| {
            format!("{} is not a seeder repository; run `seeder init --repo DIR`", self.dir.display())
        })? {
            let name = entry?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".root.json")).and_then(|n| n.parse().ok()) {
                latest = latest.max(n);
            }
        }
        if latest == 0 {
            bail!("{} has no root metadata; run `seeder init --repo DIR`", self.dir.display());
        }
        Ok(latest)
    }

    /// Takes the repository's writer lock, `flock(2)` on the `metadata/` directory itself
    /// (no lock file to leave behind), held until the guard drops. Every command that
    /// publishes metadata holds it from reading the current state to writing
    /// `timestamp.json`: two writers (say `seeder serve` renewing the snapshot while
    /// `seeder release add` publishes) would otherwise both write `N+1.snapshot.json` and one
    /// timestamp would name the other's bytes. The kernel releases it when the process dies,
    /// so a killed command never wedges the repository.
    pub fn lock(&self) -> Result<RepoLock> {
        use std::os::fd::AsRawFd;
        let dir = self.metadata_dir();
        let handle = fs::File::open(&dir).with_context(|| {
            format!("{} is not a seeder repository; run `seeder init --repo DIR`", self.dir.display())
        })?;
        // SAFETY: flock only reads the descriptor number; `handle` keeps it open for the call
        // and for as long as the guard lives.
        let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {}", dir.display()));
        }
        Ok(RepoLock { _handle: handle })
    }

    /// Loads what the repository currently publishes, following timestamp → snapshot →
    /// targets. This trusts the local files (it is the publisher's own repository);
    /// `seeder verify` is what checks them.
    pub fn current(&self) -> Result<Current> {
        let root_version = self.latest_root_version()?;
        let root = self.read_envelope(&format!("{root_version}.root.json"))?["signed"].take();
        let timestamp = self.read_envelope("timestamp.json")?["signed"].take();
        let snapshot_version = timestamp["meta"]["snapshot.json"]["version"]
            .as_u64()
            .context("timestamp.json names no snapshot version")?;
        let snapshot = self.read_envelope(&format!("{snapshot_version}.snapshot.json"))?["signed"].take();
        let targets_version =
            snapshot["meta"]["targets.json"]["version"].as_u64().context("snapshot names no targets version")?;
        let targets = self.read_envelope(&format!("{targets_version}.targets.json"))?["signed"].take();
        Ok(Current { root, root_version, targets, snapshot, timestamp })
    }

    /// Signs `signed` with `signers` and returns the envelope bytes.
    pub fn sign(signed: &Value, signers: &[&RoleKey]) -> Result<Vec<u8>> {
        let canonical = protocol::tuf::canonical::to_vec(signed).map_err(|e| anyhow::anyhow!("{e}"))?;
        let signatures: Vec<Value> = signers.iter().map(|k| k.sign(&canonical)).collect();
        Ok(serde_json::to_vec_pretty(&json!({"signatures": signatures, "signed": signed}))?)
    }

    /// Writes a metadata file atomically.
    pub fn write_metadata(&self, file_name: &str, envelope: &[u8]) -> Result<()> {
        Ok(host::fs::write_atomic(&self.metadata_dir().join(file_name), envelope, host::fs::PUBLIC)?)
    }

    /// Loads the signing keys the current root lists for `role`; fails unless there are
    /// enough to meet its threshold.
    pub fn signers(&self, current: &Current, role: &str) -> Result<Vec<RoleKey>> {
        let (keyids, threshold) = current.role_keys(role);
        let keys = keys::load_for(&self.keys_dir(), &keyids)?;
        if keys.len() < threshold {
            bail!(
                "only {} of the {threshold} {role} keys needed are in {}; restore them or rotate the role",
                keys.len(),
                self.keys_dir().display()
            );
        }
        Ok(keys)
    }

    /// Publishes a new targets object: writes targets, snapshot, then timestamp (the commit
    /// point). `extra_signers` adds signatures from keys a rotation is retiring, so the new
    /// files verify under both the old and the new root.
    pub fn publish_targets(
        &self,
        current: &Current,
        targets_map: Map<String, Value>,
        extra: &ExtraSigners,
    ) -> Result<()> {
        self.publish_targets_with(current, |targets| targets["targets"] = Value::Object(targets_map), &[], extra)
    }

    /// Publishes a new targets object made by `change` from the current one (its `targets`,
    /// its `delegations`), with a snapshot that also names `delegated` roles' new versions
    /// (files already written), then the timestamp.
    pub fn publish_targets_with(
        &self,
        current: &Current,
        change: impl FnOnce(&mut Value),
        delegated: &[(&str, u64)],
        extra: &ExtraSigners,
    ) -> Result<()> {
        let now = time::now_unix();
        let targets_version = current.version("targets") + 1;
        let mut targets = current.targets.clone();
        change(&mut targets);
        targets["version"] = json!(targets_version);
        targets["expires"] = json!(time::format_expiry(now + expiry::TARGETS_SECS));
        let signers = self.signers(current, "targets")?;
        let envelope = Self::sign(&targets, &with_extra(&signers, &extra.targets))?;
        self.write_metadata(&format!("{targets_version}.targets.json"), &envelope)?;
        let mut roles = vec![("targets", targets_version)];
        roles.extend_from_slice(delegated);
        self.publish_snapshot_naming(current, &roles, expiry::TIMESTAMP_SECS, extra)
    }

    /// Writes a snapshot naming `targets_version` (and every delegated role at the version
    /// the current snapshot names), then a timestamp naming the snapshot that lives
    /// `timestamp_lifetime_secs`.
    pub fn publish_snapshot(
        &self,
        current: &Current,
        targets_version: u64,
        timestamp_lifetime_secs: i64,
        extra: &ExtraSigners,
    ) -> Result<()> {
        self.publish_snapshot_naming(current, &[("targets", targets_version)], timestamp_lifetime_secs, extra)
    }

    /// Writes a snapshot that names `roles` at the given versions and every other role at the
    /// version the current snapshot names (a delegated role's file is carried forward
    /// unchanged), then the timestamp.
    pub fn publish_snapshot_naming(
        &self,
        current: &Current,
        roles: &[(&str, u64)],
        timestamp_lifetime_secs: i64,
        extra: &ExtraSigners,
    ) -> Result<()> {
        let now = time::now_unix();
        let snapshot_version = current.version("snapshot") + 1;
        let mut meta = current.snapshot["meta"].as_object().cloned().unwrap_or_default();
        for (role, version) in roles {
            meta.insert(format!("{role}.json"), json!({"version": version}));
        }
        let snapshot = json!({
            "_type": "snapshot",
            "spec_version": SPEC_VERSION,
            "version": snapshot_version,
            "expires": time::format_expiry(now + expiry::SNAPSHOT_SECS),
            "meta": meta,
        });
        let signers = self.signers(current, "snapshot")?;
        let envelope = Self::sign(&snapshot, &with_extra(&signers, &extra.snapshot))?;
        self.write_metadata(&format!("{snapshot_version}.snapshot.json"), &envelope)?;
        self.publish_timestamp(current, snapshot_version, &envelope, timestamp_lifetime_secs, extra)
    }

    /// Writes `timestamp.json` naming a snapshot version, length and sha256.
    pub fn publish_timestamp(
        &self,
        current: &Current,
        snapshot_version: u64,
        snapshot_envelope: &[u8],
        lifetime_secs: i64,
        extra: &ExtraSigners,
    ) -> Result<()> {
        let now = time::now_unix();
        let timestamp = json!({
            "_type": "timestamp",
            "spec_version": SPEC_VERSION,
            "version": current.version("timestamp") + 1,
            "expires": time::format_expiry(now + lifetime_secs),
            "meta": {"snapshot.json": {
                "version": snapshot_version,
                "length": snapshot_envelope.len(),
                "hashes": {"sha256": protocol::hex::encode(&sha2::Sha256::digest(snapshot_envelope))},
            }},
        });
        let signers = self.signers(current, "timestamp")?;
        let envelope = Self::sign(&timestamp, &with_extra(&signers, &extra.timestamp))?;
        self.write_metadata("timestamp.json", &envelope)
    }
}

/// Holds the repository's writer lock ([`Repo::lock`]) until dropped.
pub struct RepoLock {
    _handle: fs::File,
}

/// Keys being retired by a rotation, which co-sign so files stay valid under either root.
#[derive(Default)]
pub struct ExtraSigners {
    /// Old targets keys.
    pub targets: Vec<RoleKey>,
    /// Old snapshot keys.
    pub snapshot: Vec<RoleKey>,
    /// Old timestamp keys.
    pub timestamp: Vec<RoleKey>,
}

fn with_extra<'a>(signers: &'a [RoleKey], extra: &'a [RoleKey]) -> Vec<&'a RoleKey> {
    let mut all: Vec<&RoleKey> = signers.iter().collect();
    for key in extra {
        if !all.iter().any(|k| k.keyid == key.keyid) {
            all.push(key);
        }
    }
    all
}

/// A root `signed` object.
pub fn root_signed(version: u64, expires_unix: i64, roles: &[(&str, Vec<&RoleKey>, usize)]) -> Value {
    let mut keys = Map::new();
    let mut role_map = Map::new();
    for (role, role_keys, threshold) in roles {
        for key in role_keys {
            keys.insert(key.keyid.clone(), key.public_object());
        }
        let keyids: Vec<&str> = role_keys.iter().map(|k| k.keyid.as_str()).collect();
        role_map.insert((*role).into(), json!({"keyids": keyids, "threshold": threshold}));
    }
    json!({
        "_type": "root",
        "spec_version": SPEC_VERSION,
        "version": version,
        "expires": time::format_expiry(expires_unix),
        "consistent_snapshot": true,
        "keys": keys,
        "roles": role_map,
    })
}
