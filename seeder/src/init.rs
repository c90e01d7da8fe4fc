//! `seeder init`: keys and the first version of every role.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map};
use std::collections::BTreeMap;
use std::fs;

use crate::keys::{self, RoleKey, ROLES};
use crate::repo::{self, Current, ExtraSigners, Repo};
use crate::time;

/// What init created, for the report.
pub struct InitReport {
    /// Key ids per role.
    pub roles: BTreeMap<String, (Vec<String>, usize)>,
}

/// Creates a repository with `counts[role]` ed25519 keys and `thresholds[role]` per role.
pub fn run(repo: &Repo, counts: &BTreeMap<String, usize>, thresholds: &BTreeMap<String, usize>) -> Result<InitReport> {
    for role in counts.keys().chain(thresholds.keys()) {
        if !ROLES.contains(&role.as_str()) {
            bail!("unknown role `{role}`; roles are root, targets, snapshot, timestamp");
        }
    }
    if repo.metadata_dir().join("1.root.json").exists() {
        bail!("{} is already a repository; use another --repo or `seeder inspect`", repo.dir.display());
    }
    for dir in [repo.metadata_dir(), repo.targets_dir(), repo.chunks_dir()] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let keys_dir = repo.keys_dir();
    fs::create_dir_all(&keys_dir).with_context(|| format!("cannot create {}", keys_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o700))?;
    }

    let mut role_keys: Vec<(&str, Vec<RoleKey>, usize)> = Vec::new();
    for role in ROLES {
        let count = counts.get(role).copied().unwrap_or(1);
        let threshold = thresholds.get(role).copied().unwrap_or(1);
        if count == 0 || threshold == 0 || threshold > count || count > 16 {
            bail!("role {role}: need 1 <= threshold ({threshold}) <= keys ({count}) <= 16");
        }
        let mut generated = Vec::new();
        for _ in 0..count {
            let mut key = RoleKey::generate(keys_dir.join("pending"))?;
            key.path = keys_dir.join(format!("{role}-{}.json", &key.keyid[..16]));
            key.save()?;
            generated.push(key);
        }
        role_keys.push((role, generated, threshold));
    }
    if !keys::content_key_path(&keys_dir).exists() {
        keys::create_content_key(&keys_dir)?;
    }

    let roles: Vec<(&str, Vec<&RoleKey>, usize)> =
        role_keys.iter().map(|(r, ks, t)| (*r, ks.iter().collect(), *t)).collect();
    let root = repo::root_signed(1, time::now_unix() + repo::expiry::ROOT_SECS, &roles);
    let empty = |role: &str| json!({"_type": role, "spec_version": repo::SPEC_VERSION, "version": 0, "targets": {}});
    let current = Current {
        root: root.clone(),
        root_version: 1,
        targets: empty("targets"),
        snapshot: empty("snapshot"),
        timestamp: empty("timestamp"),
    };
    // Targets, snapshot and timestamp first, root last: a killed init leaves no 1.root.json,
    // so it can simply be run again.
    repo.publish_targets(&current, Map::new(), &ExtraSigners::default())?;
    let root_keys: Vec<&RoleKey> = role_keys[0].1.iter().collect();
    let envelope = Repo::sign(&root, &root_keys)?;
    repo.write_metadata("root.json", &envelope)?;
    repo.write_metadata("1.root.json", &envelope)?;
    // Epoch 1 of the trust chain MCUs pin (`seeder mcu anchor` exports it).
    crate::mcu_trust::sync(repo, &repo.current()?)?;

    Ok(InitReport {
        roles: role_keys
            .iter()
            .map(|(r, ks, t)| (r.to_string(), (ks.iter().map(|k| k.keyid.clone()).collect(), *t)))
            .collect(),
    })
}
