//! The trust chain microcontrollers follow, and the seals they verify releases with
//! (`protocol::seal`).
//!
//! An MCU pins a `TrustAnchor`: the top-level targets keys and the `rollouts` keys, with
//! their thresholds and an epoch. The repository keeps the chain of trust statements in
//! `mcu-trust/N.statement`, one per epoch: statement N+1 names the next anchor and is signed
//! by the targets keys of anchor N and of anchor N+1. [`sync`] appends a statement whenever
//! the repository's keys differ from the chain's last anchor (a targets key rotation, the
//! rollouts delegation being created); it runs under the repository lock before anything
//! is sealed, and it can still sign after a rotation because rotated keys are kept in
//! `keys/retired/`.
//!
//! Every release manifest gets a seal target `releases/NAME/VERSION.manifest.sig` (signed by
//! the targets keys) and every rollout policy `rollouts/NAME.policy.sig` (signed by the
//! rollouts keys); each seal carries the chain's newest statements so a device pinned to an
//! older anchor can follow the rotations.

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use sha2::Digest;
use std::fs;
use std::path::{Path, PathBuf};

use protocol::seal::{KeySet, SealKind, TrustAnchor};

use crate::keys::RoleKey;
use crate::repo::{Current, Repo};

/// `DIR/mcu-trust`: the statements, `N.statement` for epoch N.
pub fn chain_dir(repo: &Repo) -> PathBuf {
    repo.dir.join("mcu-trust")
}

/// The seal target of a manifest or policy target path.
pub fn seal_path(target_path: &str) -> String {
    format!("{target_path}{}", protocol::seal::SEAL_SUFFIX)
}

/// The chain's statements in epoch order, each with the anchor it names.
pub fn chain(repo: &Repo) -> Result<Vec<(TrustAnchor, Vec<u8>)>> {
    let dir = chain_dir(repo);
    let mut chain = Vec::new();
    for epoch in 1u32.. {
        let path = dir.join(format!("{epoch}.statement"));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let anchor =
            protocol::seal::statement_anchor(&bytes).map_err(|e| anyhow!("{} is damaged: {e}", path.display()))?;
        if anchor.epoch != epoch {
            bail!("{} names epoch {}, not {epoch}", path.display(), anchor.epoch);
        }
        chain.push((anchor, bytes));
    }
    Ok(chain)
}

/// The anchor the repository's current keys make, at `epoch`.
fn anchor_of(current: &Current, epoch: u32) -> Result<TrustAnchor> {
    let (keyids, threshold) = current.role_keys("targets");
    let targets = key_set(&current.root["keys"], &keyids, threshold, "targets")?;
    let rollouts = match current.targets["delegations"]["roles"]
        .as_array()
        .and_then(|roles| roles.iter().find(|r| r["name"] == protocol::tuf::rollouts_role::ROLE))
    {
        Some(role) => {
            let keyids: Vec<String> =
                role["keyids"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(String::from)).collect();
            let threshold = role["threshold"].as_u64().unwrap_or(1) as usize;
            key_set(&current.targets["delegations"]["keys"], &keyids, threshold, "rollouts")?
        }
        None => KeySet::EMPTY,
    };
    Ok(TrustAnchor { epoch, targets, rollouts })
}

fn key_set(keys: &Value, keyids: &[String], threshold: usize, role: &str) -> Result<KeySet> {
    let mut public = Vec::new();
    for id in keyids {
        let key = &keys[id];
        if key["keytype"] != "ed25519" {
            bail!("{role} key {id} is not ed25519; MCU seals need ed25519 keys");
        }
        let hex = key["keyval"]["public"].as_str().with_context(|| format!("{role} key {id} has no public part"))?;
        public.push(protocol::hex::decode_array::<32>(hex).map_err(|e| anyhow!("{role} key {id}: {e}"))?);
    }
    let threshold = u8::try_from(threshold).unwrap_or(u8::MAX);
    KeySet::new(threshold, &public)
        .map_err(|e| anyhow!("the {role} role ({threshold} of {} keys) cannot be pinned by an MCU: {e}", public.len()))
}

/// Makes the chain end with the anchor of the repository's current keys, appending a
/// statement if they changed; returns that anchor. The caller holds the repository lock.
pub fn sync(repo: &Repo, current: &Current) -> Result<TrustAnchor> {
    let chain = chain(repo)?;
    let last = chain.last().map(|(anchor, _)| *anchor);
    let next_epoch = last.map_or(1, |a| a.epoch + 1);
    let wanted = anchor_of(current, next_epoch)?;
    if let Some(last) = last {
        if last.targets == wanted.targets && last.rollouts == wanted.rollouts {
            return Ok(last);
        }
    }
    let signing = signing_keys_for(repo, last.iter().chain([&wanted]))?;
    let signers: Vec<&SigningKey> = signing.iter().collect();
    let statement = protocol::seal::statement(&wanted, &signers).map_err(|e| anyhow!("trust statement: {e}"))?;
    if let Some(last) = last {
        last.apply(&statement).map_err(|e| {
            anyhow!(
                "cannot extend the MCU trust chain past epoch {}: {e}; the previous targets keys must be in {} \
                 (or keys/retired/), or MCUs pinned to that epoch must be re-provisioned",
                last.epoch,
                repo.keys_dir().display()
            )
        })?;
    }
    let dir = chain_dir(repo);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    host::fs::write_atomic(&dir.join(format!("{next_epoch}.statement")), &statement, host::fs::PUBLIC)?;
    tracing::info!(epoch = next_epoch, "MCU trust chain extended");
    Ok(wanted)
}

/// Signing keys in `keys/` and `keys/retired/` that belong to the targets key set of any
/// of `anchors`.
fn signing_keys_for<'a>(repo: &Repo, anchors: impl Iterator<Item = &'a TrustAnchor>) -> Result<Vec<SigningKey>> {
    let wanted: Vec<[u8; 32]> = anchors.flat_map(|a| a.targets.keys().to_vec()).collect();
    let mut found: Vec<SigningKey> = Vec::new();
    for dir in [repo.keys_dir(), repo.keys_dir().join("retired")] {
        for key in key_files(&dir)? {
            let public = key.signing.verifying_key().to_bytes();
            if wanted.contains(&public) && !found.iter().any(|k| k.verifying_key().to_bytes() == public) {
                found.push(key.signing);
            }
        }
    }
    Ok(found)
}

fn key_files(dir: &Path) -> Result<Vec<RoleKey>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            keys.push(RoleKey::load(&path)?);
        }
    }
    Ok(keys)
}

/// Seals `subject` (published at `target_path`) with `signers`, carrying the chain's newest
/// statements; writes the seal under its consistent-snapshot name and returns its target
/// path and entry for the role's target map.
pub fn seal_target(
    repo: &Repo,
    kind: SealKind,
    target_path: &str,
    subject: &[u8],
    signers: &[RoleKey],
) -> Result<(String, Value)> {
    let statements: Vec<Vec<u8>> = chain(repo)?.into_iter().map(|(_, bytes)| bytes).collect();
    let keys: Vec<&SigningKey> = signers.iter().map(|k| &k.signing).collect();
    let seal =
        protocol::seal::seal(kind, subject, &statements, &keys).map_err(|e| anyhow!("sealing {target_path}: {e}"))?;
    let path = seal_path(target_path);
    let sha256 = protocol::hex::encode(&sha2::Sha256::digest(&seal));
    host::fs::write_atomic(&repo.target_file_path(&path, &sha256), &seal, host::fs::PUBLIC)?;
    Ok((path, json!({"length": seal.len(), "hashes": {"sha256": sha256}})))
}
