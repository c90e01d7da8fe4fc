//! The set of metadata the client currently trusts.
//!
//! Invariant: every object in the set was verified against the objects loaded before it
//! (root chain → timestamp → snapshot → targets → delegated targets), at the injected
//! `now`. The `update_*` methods mirror python-tuf's `TrustedMetadataSet`, including its
//! deliberate quirk: an *intermediate* timestamp or snapshot that is expired (or whose
//! version does not match) is still stored before the error is returned, so a stale cached
//! copy keeps providing rollback protection while a fresh one is fetched.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};

use super::metadata::{verify_threshold, Envelope, Root, Snapshot, Targets, Timestamp};
use super::{Error, RepositoryError, VerifyHook};

/// Verified metadata for one refresh. Construct with [`TrustedMetadataSet::new`] from the
/// locally trusted root.
#[derive(Debug, Clone)]
pub struct TrustedMetadataSet {
    now: i64,
    hook: Option<VerifyHook>,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    /// Targets roles by name, with the delegator they were verified against.
    targets: BTreeMap<String, (String, Targets)>,
}

fn expired(role: &str) -> Error {
    RepositoryError::ExpiredMetadata { role: role.to_string() }.into()
}

impl TrustedMetadataSet {
    /// Loads the trusted root, verified only against itself (it is the trust anchor). An
    /// expired root is accepted here: expiry is checked on the final root, before the
    /// timestamp, so an expired device can still rotate forward.
    pub fn new(root_bytes: &[u8], now: i64, hook: Option<VerifyHook>) -> Result<Self, Error> {
        let root = Root::parse(Envelope::parse("root", root_bytes)?)?;
        verify_threshold("root", &root.keys, &root.roles["root"], &root.envelope, hook)?;
        Ok(TrustedMetadataSet { now, hook, root, timestamp: None, snapshot: None, targets: BTreeMap::new() })
    }

    /// The current trusted root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The trusted timestamp, if loaded.
    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref()
    }

    /// The trusted snapshot, if loaded.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// A trusted targets role (`targets` or delegated), if loaded.
    pub fn targets(&self, role: &str) -> Option<&Targets> {
        self.targets.get(role).map(|(_, t)| t)
    }

    /// Whether `role` is trusted *as delegated by `delegator`*. A role reachable through
    /// two delegators must be re-verified on each path: trust via one does not transfer.
    pub fn contains(&self, role: &str, delegator: &str) -> bool {
        self.targets.get(role).is_some_and(|(d, _)| d == delegator)
    }

    /// Verifies `bytes` as root version N+1: signed by a threshold of the trusted root's
    /// root keys *and* of its own, version exactly N+1. Expiry is not checked here.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.timestamp.is_some() {
            return Err(Error::InvalidState("root update after timestamp"));
        }
        let envelope = Envelope::parse("root", bytes)?;
        // Type first, then the old root's signatures, as python-tuf does.
        super::metadata::parse_common("root", &envelope.signed, "root")?;
        verify_threshold("root", &self.root.keys, &self.root.roles["root"], &envelope, self.hook)?;
        let new_root = Root::parse(envelope)?;
        let expected = self.root.common.version + 1;
        if new_root.common.version != expected {
            return Err(RepositoryError::BadVersion {
                role: "root".to_string(),
                expected,
                got: new_root.common.version,
            }
            .into());
        }
        verify_threshold("root", &new_root.keys, &new_root.roles["root"], &new_root.envelope, self.hook)?;
        self.root = new_root;
        Ok(())
    }

    /// Verifies `bytes` as timestamp. Returns `Ok(false)` if it has the same version as the
    /// trusted one (nothing new; keep the trusted copy). An expired timestamp is stored
    /// before `ExpiredMetadata` is returned (see the module docs).
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<bool, Error> {
        if self.snapshot.is_some() {
            return Err(Error::InvalidState("timestamp update after snapshot"));
        }
        if self.root.common.is_expired(self.now) {
            return Err(expired("root"));
        }
        let envelope = Envelope::parse("timestamp", bytes)?;
        let new = Timestamp::parse(&envelope)?;
        verify_threshold("timestamp", &self.root.keys, &self.root.roles["timestamp"], &envelope, self.hook)?;
        if let Some(old) = &self.timestamp {
            if new.common.version < old.common.version {
                return Err(RepositoryError::Rollback {
                    role: "timestamp".to_string(),
                    trusted: old.common.version,
                    got: new.common.version,
                }
                .into());
            }
            if new.common.version == old.common.version {
                return Ok(false);
            }
            if new.snapshot_meta.version < old.snapshot_meta.version {
                return Err(RepositoryError::Rollback {
                    role: "snapshot".to_string(),
                    trusted: old.snapshot_meta.version,
                    got: new.snapshot_meta.version,
                }
                .into());
            }
        }
        self.timestamp = Some(new);
        self.check_final_timestamp()?;
        Ok(true)
    }

    fn check_final_timestamp(&self) -> Result<&Timestamp, Error> {
        let ts = self.timestamp.as_ref().ok_or(Error::InvalidState("no timestamp"))?;
        if ts.common.is_expired(self.now) {
            return Err(expired("timestamp"));
        }
        Ok(ts)
    }

    /// Verifies `bytes` as snapshot. `from_cache` skips the timestamp's length/hash check
    /// (a cached snapshot was verified when it was stored and may legitimately be older
    /// than the timestamp); everything else is checked. An expired or version-mismatched
    /// snapshot is stored before the error is returned, for rollback protection.
    pub fn update_snapshot(&mut self, bytes: &[u8], from_cache: bool) -> Result<(), Error> {
        if self.timestamp.is_none() {
            return Err(Error::InvalidState("snapshot update before timestamp"));
        }
        if self.targets.contains_key("targets") {
            return Err(Error::InvalidState("snapshot update after targets"));
        }
        let meta = self.check_final_timestamp()?.snapshot_meta.clone();
        if !from_cache {
            meta.verify("snapshot", bytes)?;
        }
        let envelope = Envelope::parse("snapshot", bytes)?;
        let new = Snapshot::parse(&envelope)?;
        verify_threshold("snapshot", &self.root.keys, &self.root.roles["snapshot"], &envelope, self.hook)?;
        if let Some(old) = &self.snapshot {
            for (name, old_info) in &old.meta {
                let Some(new_info) = new.meta.get(name) else {
                    return Err(RepositoryError::RoleRemoved { role: name.clone() }.into());
                };
                if new_info.version < old_info.version {
                    return Err(RepositoryError::Rollback {
                        role: name.trim_end_matches(".json").to_string(),
                        trusted: old_info.version,
                        got: new_info.version,
                    }
                    .into());
                }
            }
        }
        self.snapshot = Some(new);
        self.check_final_snapshot()?;
        Ok(())
    }

    fn check_final_snapshot(&self) -> Result<&Snapshot, Error> {
        let snapshot = self.snapshot.as_ref().ok_or(Error::InvalidState("no snapshot"))?;
        if snapshot.common.is_expired(self.now) {
            return Err(expired("snapshot"));
        }
        let expected = self.check_final_timestamp()?.snapshot_meta.version;
        if snapshot.common.version != expected {
            return Err(RepositoryError::BadVersion {
                role: "snapshot".to_string(),
                expected,
                got: snapshot.common.version,
            }
            .into());
        }
        Ok(snapshot)
    }

    /// Verifies `bytes` as targets role `role`, delegated by `delegator` (`root` for the
    /// top-level `targets`): length/hashes and version from the snapshot, signatures from
    /// the delegator's keys, expiry.
    pub fn update_delegated_targets(&mut self, bytes: &[u8], role: &str, delegator: &str) -> Result<(), Error> {
        let meta = self
            .check_final_snapshot()?
            .meta
            .get(&alloc::format!("{role}.json"))
            .cloned()
            .ok_or_else(|| RepositoryError::MissingFromSnapshot { role: role.to_string() })?;
        meta.verify(role, bytes)?;
        let envelope = Envelope::parse(role, bytes)?;
        super::metadata::parse_common(role, &envelope.signed, "targets")?;
        if delegator == "root" {
            verify_threshold(role, &self.root.keys, &self.root.roles["targets"], &envelope, self.hook)?;
        } else {
            let not_delegated =
                || RepositoryError::NotDelegated { role: role.to_string(), delegator: delegator.to_string() };
            let parent = self.targets(delegator).ok_or(Error::InvalidState("delegator not loaded"))?;
            let delegations = parent.delegations.as_ref().ok_or_else(not_delegated)?;
            let role_keys = delegations.role_keys(role).ok_or_else(not_delegated)?;
            verify_threshold(role, &delegations.keys, role_keys, &envelope, self.hook)?;
        }
        let new = Targets::parse(role, &envelope)?;
        if new.common.version != meta.version {
            return Err(RepositoryError::BadVersion {
                role: role.to_string(),
                expected: meta.version,
                got: new.common.version,
            }
            .into());
        }
        if new.common.is_expired(self.now) {
            return Err(expired(role));
        }
        self.targets.insert(role.to_string(), (delegator.to_string(), new));
        Ok(())
    }
}
