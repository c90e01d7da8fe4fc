//! The `rollouts` delegation: rollout policies are TUF targets `rollouts/<release>.policy`
//! of a delegated role `rollouts`, signed by its own online key that `seeder serve` holds.
//!
//! Why a delegation and not the targets role itself: the controller must re-sign a policy
//! whenever a wave advances or a rollout halts, unattended, so its key has to be online; the
//! targets key, which alone can introduce a release, stays offline. The delegation limits the
//! online key to the paths `rollouts/*` (terminating), so a stolen rollouts key can publish
//! only policies — and a device installs a release only when the top-level targets role
//! signed its manifest AND a verified policy names it. At worst such a thief delays or
//! hastens an already-signed release.
//!
//! Commit order, as everywhere in the repository: the policy file (content-addressed), then
//! `N.rollouts.json`, then the snapshot naming it, then `timestamp.json` last.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use sha2::Digest;

use protocol::tuf::rollouts_role::{policy_target_path, release_of_policy_path, PATHS, ROLE};

use crate::keys::{self, RoleKey};
use crate::repo::{expiry, Current, ExtraSigners, Repo, SPEC_VERSION};
use crate::time;

/// The delegation as it stands in the current targets metadata: (key ids, threshold).
fn delegation(current: &Current) -> Option<(Vec<String>, usize)> {
    let roles = current.targets["delegations"]["roles"].as_array()?;
    let role = roles.iter().find(|r| r["name"] == ROLE)?;
    let keyids = role["keyids"].as_array()?.iter().filter_map(|k| k.as_str().map(String::from)).collect();
    Some((keyids, role["threshold"].as_u64().unwrap_or(1) as usize))
}

/// Whether the repository delegates `rollouts/*` (devices then install only what a policy
/// names).
pub fn is_delegated(current: &Current) -> bool {
    delegation(current).is_some()
}

/// The current `rollouts` metadata's `signed` object, if the role exists.
pub fn current_role(repo: &Repo, current: &Current) -> Result<Option<Value>> {
    let Some(version) = current.snapshot["meta"][format!("{ROLE}.json")]["version"].as_u64() else {
        return Ok(None);
    };
    let mut envelope = repo.read_envelope(&format!("{version}.{ROLE}.json"))?;
    Ok(Some(envelope["signed"].take()))
}

/// Creates the `rollouts` key and delegation if the repository has none: a new key
/// (`keys/rollouts-<id>.json`), an empty `1.rollouts.json`, and targets metadata that
/// delegates `rollouts/*` to it (signed with the targets key, which must be present).
/// Returns whether anything was created. The caller holds the repository lock.
pub fn ensure_delegation(repo: &Repo) -> Result<bool> {
    let current = repo.current()?;
    if is_delegated(&current) {
        return Ok(false);
    }
    let keys_dir = repo.keys_dir();
    let mut key = RoleKey::generate(keys_dir.join("pending"))?;
    key.path = keys_dir.join(format!("{ROLE}-{}.json", &key.keyid[..16]));
    key.save()?;
    let version = current.snapshot["meta"][format!("{ROLE}.json")]["version"].as_u64().unwrap_or(0) + 1;
    write_role(repo, version, Map::new(), &[&key])?;
    let keyid = key.keyid.clone();
    let public = key.public_object();
    repo.publish_targets_with(
        &current,
        |targets| {
            let delegations = &mut targets["delegations"];
            if !delegations.is_object() {
                *delegations = json!({"keys": {}, "roles": []});
            }
            delegations["keys"][&keyid] = public;
            let role = json!({
                "name": ROLE,
                "keyids": [keyid],
                "threshold": 1,
                "paths": [PATHS],
                "terminating": true,
            });
            match delegations["roles"].as_array_mut() {
                Some(roles) => roles.push(role),
                None => delegations["roles"] = json!([role]),
            }
        },
        &[(ROLE, version)],
        &ExtraSigners::default(),
    )?;
    // MCUs learn the rollouts key through the trust chain (signed by the targets keys).
    crate::mcu_trust::sync(repo, &repo.current()?)?;
    Ok(true)
}

/// Signs and writes `N.rollouts.json` with `targets` as its target map.
fn write_role(repo: &Repo, version: u64, targets: Map<String, Value>, keys: &[&RoleKey]) -> Result<()> {
    let signed = json!({
        "_type": "targets",
        "spec_version": SPEC_VERSION,
        "version": version,
        "expires": time::format_expiry(time::now_unix() + expiry::TARGETS_SECS),
        "targets": targets,
    });
    let envelope = Repo::sign(&signed, keys)?;
    repo.write_metadata(&format!("{version}.{ROLE}.json"), &envelope)
}

/// The `rollouts` signing keys present in `keys/` (enough for the delegation's threshold).
fn signers(repo: &Repo, current: &Current) -> Result<Vec<RoleKey>> {
    let (keyids, threshold) = delegation(current)
        .ok_or_else(|| anyhow!("the repository has no rollouts delegation; start a rollout first"))?;
    let keys = keys::load_for(&repo.keys_dir(), &keyids)?;
    if keys.len() < threshold {
        bail!("the rollouts key is not in {}; restore it", repo.keys_dir().display());
    }
    Ok(keys)
}

/// Publishes `policy` as the current policy for release `release_name`: the target file,
/// `rollouts.json` version + 1, snapshot, timestamp. The caller holds the repository lock
/// and has checked the policy. Returns the new `rollouts.json` version.
pub fn publish_policy(repo: &Repo, release_name: &str, policy: &[u8]) -> Result<u64> {
    let current = repo.current()?;
    let keys = signers(repo, &current)?;
    let role = current_role(repo, &current)?.context("the snapshot names no rollouts metadata")?;
    let mut targets = role["targets"].as_object().cloned().unwrap_or_default();
    let path = policy_target_path(release_name);
    let sha256 = protocol::hex::encode(&sha2::Sha256::digest(policy));
    host::fs::write_atomic(&repo.target_file_path(&path, &sha256), policy, host::fs::PUBLIC)?;
    // The seal MCUs verify the policy with, signed by the same rollouts keys.
    let (seal_path, seal_entry) =
        crate::mcu_trust::seal_target(repo, protocol::seal::SealKind::Policy, &path, policy, &keys)?;
    targets.insert(seal_path, seal_entry);
    targets.insert(path, json!({"length": policy.len(), "hashes": {"sha256": sha256}}));
    let version = role["version"].as_u64().unwrap_or(0) + 1;
    write_role(repo, version, targets, &keys.iter().collect::<Vec<_>>())?;
    repo.publish_snapshot_naming(&current, &[(ROLE, version)], expiry::TIMESTAMP_SECS, &ExtraSigners::default())?;
    Ok(version)
}

/// Every current policy: (release name, policy bytes), read from the repository's own files
/// (the publisher trusts its repository; `seeder verify` checks it).
pub fn current_policies(repo: &Repo) -> Result<Vec<(String, Vec<u8>)>> {
    let current = repo.current()?;
    let Some(role) = current_role(repo, &current)? else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for (path, target) in role["targets"].as_object().into_iter().flatten() {
        let Some(name) = release_of_policy_path(path) else { continue };
        let sha256 = target["hashes"]["sha256"].as_str().context("policy target without sha256")?;
        let file = repo.target_file_path(path, sha256);
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        found.push((name.to_string(), bytes));
    }
    Ok(found)
}
