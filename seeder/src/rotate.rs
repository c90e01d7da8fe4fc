//! `seeder key rotate`.

use anyhow::{bail, Result};
use serde_json::json;
use std::fs;

use crate::keys::{RoleKey, ROLES};
use crate::repo::{self, ExtraSigners, Repo};
use crate::time;

/// Replaces every key of `role` with a fresh one (same count and threshold) and publishes
/// root N+1 as TUF requires: signed by a threshold of the old root keys and of the new.
///
/// Ordering keeps the repository valid at every instant: new key files first; then, for a
/// rotated targets/snapshot/timestamp role, new versions of the metadata signed by both the
/// old and the new keys (valid under root N and N+1); then N+1.root.json; only then are the
/// old key files retired.
pub fn rotate(repo: &Repo, role: &str) -> Result<Vec<String>> {
    if !ROLES.contains(&role) {
        bail!("unknown role `{role}`; roles are root, targets, snapshot, timestamp");
    }
    let _lock = repo.lock()?;
    let current = repo.current()?;
    let (old_keyids, _threshold_unchanged) = current.role_keys(role);
    let old_root_keys = repo.signers(&current, "root")?;
    let old_role_keys = repo.signers(&current, role)?;

    let mut new_keys = Vec::new();
    for _ in 0..old_keyids.len().max(1) {
        let mut key = RoleKey::generate(repo.keys_dir().join("pending"))?;
        key.path = repo.keys_dir().join(format!("{role}-{}.json", &key.keyid[..16]));
        key.save()?;
        new_keys.push(key);
    }
    let new_keyids: Vec<String> = new_keys.iter().map(|k| k.keyid.clone()).collect();

    let mut root = current.root.clone();
    let new_version = current.root_version + 1;
    root["version"] = json!(new_version);
    root["expires"] = json!(time::format_expiry(time::now_unix() + repo::expiry::ROOT_SECS));
    root["roles"][role]["keyids"] = json!(new_keyids);
    if let Some(keys) = root["keys"].as_object_mut() {
        for key in &new_keys {
            keys.insert(key.keyid.clone(), key.public_object());
        }
        let still_used: Vec<String> = ROLES
            .iter()
            .flat_map(|r| current.role_keys(r).0.into_iter().filter(move |_| *r != role))
            .chain(new_keyids.iter().cloned())
            .collect();
        keys.retain(|id, _| still_used.contains(id));
    }

    if role != "root" {
        let rotated = repo::Current { root: root.clone(), ..clone_current(&current) };
        let mut extra = ExtraSigners::default();
        match role {
            "targets" => extra.targets = old_role_keys,
            "snapshot" => extra.snapshot = old_role_keys,
            _ => extra.timestamp = old_role_keys,
        }
        let map = current.targets["targets"].as_object().cloned().unwrap_or_default();
        repo.publish_targets(&rotated, map, &extra)?;
    }

    let mut signers: Vec<&RoleKey> = old_root_keys.iter().collect();
    if role == "root" {
        signers.extend(new_keys.iter());
    }
    let envelope = Repo::sign(&root, &signers)?;
    repo.write_metadata(&format!("{new_version}.root.json"), &envelope)?;
    repo.write_metadata("root.json", &envelope)?;
    // Before the old keys retire: a targets rotation is a new MCU trust epoch, signed by
    // the old targets keys and the new (`mcu_trust` also finds them in keys/retired/ if
    // this step is interrupted).
    crate::mcu_trust::sync(repo, &repo.current()?)?;

    let retired = repo.keys_dir().join("retired");
    fs::create_dir_all(&retired)?;
    for key in repo.signers(&current, role).unwrap_or_default() {
        if let Some(name) = key.path.file_name() {
            let _ = fs::rename(&key.path, retired.join(name));
        }
    }
    Ok(new_keyids)
}

fn clone_current(current: &repo::Current) -> repo::Current {
    repo::Current {
        root: current.root.clone(),
        root_version: current.root_version,
        targets: current.targets.clone(),
        snapshot: current.snapshot.clone(),
        timestamp: current.timestamp.clone(),
    }
}
