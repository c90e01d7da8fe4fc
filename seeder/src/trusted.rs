//! Reads the repository back through the TUF client workflow, exactly as a device would:
//! from a trusted root (the repository's `1.root.json`, or one the operator supplies),
//! through every root version, the timestamp, snapshot and targets.

use anyhow::{anyhow, Context, Result};
use protocol::tuf::{rollouts_role, TargetFile, TrustedMetadataSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use crate::repo::Repo;

/// Metadata that passed verification, and the files it came from.
pub struct Verified {
    /// The trusted set after loading root, timestamp, snapshot and targets.
    pub set: TrustedMetadataSet,
    /// Metadata files that were verified, in order.
    pub files: Vec<String>,
}

/// Reads at most `cap` bytes of `path`; a longer file is an error, not a truncation.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        anyhow::bail!("{} is larger than {cap} bytes", path.display());
    }
    Ok(bytes)
}

/// Verifies the repository's metadata chain at time `now`.
pub fn load(repo: &Repo, root_file: Option<&Path>, now: i64) -> Result<Verified> {
    let config = protocol::tuf::Config::default();
    let metadata = repo.metadata_dir();
    let initial = root_file.map(Path::to_path_buf).unwrap_or_else(|| metadata.join("1.root.json"));
    let bytes = read_capped(&initial, config.root_max_length)?;
    let mut set = TrustedMetadataSet::new(&bytes, now, None).map_err(|e| anyhow!("{}: {e}", initial.display()))?;
    let mut files = vec![initial.display().to_string()];
    loop {
        let next = set.root().common.version + 1;
        let path = metadata.join(format!("{next}.root.json"));
        if !path.exists() {
            break;
        }
        let bytes = read_capped(&path, config.root_max_length)?;
        set.update_root(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        files.push(path.display().to_string());
    }
    let path = metadata.join("timestamp.json");
    let bytes = read_capped(&path, config.timestamp_max_length)?;
    set.update_timestamp(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    files.push(path.display().to_string());

    let version = set.timestamp().map(|t| t.snapshot_meta.version).context("no timestamp")?;
    let path = metadata.join(format!("{version}.snapshot.json"));
    let bytes = read_capped(&path, config.snapshot_max_length)?;
    set.update_snapshot(&bytes, false).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    files.push(path.display().to_string());

    let version = set
        .snapshot()
        .and_then(|s| s.meta.get("targets.json"))
        .map(|m| m.version)
        .context("snapshot names no targets.json")?;
    let path = metadata.join(format!("{version}.targets.json"));
    let bytes = read_capped(&path, config.targets_max_length)?;
    set.update_delegated_targets(&bytes, "targets", "root").map_err(|e| anyhow!("{}: {e}", path.display()))?;
    files.push(path.display().to_string());

    // The rollouts delegation, when the targets role made one: verified under the keys it
    // names, as devices verify it.
    if set.targets("targets").is_some_and(rollouts_role::is_delegated) {
        let role = rollouts_role::ROLE;
        let version = set
            .snapshot()
            .and_then(|s| s.meta.get(&format!("{role}.json")))
            .map(|m| m.version)
            .with_context(|| format!("targets delegates {role} but the snapshot names no {role}.json"))?;
        let path = metadata.join(format!("{version}.{role}.json"));
        let bytes = read_capped(&path, config.targets_max_length)?;
        set.update_delegated_targets(&bytes, role, "targets").map_err(|e| anyhow!("{}: {e}", path.display()))?;
        files.push(path.display().to_string());
    }
    Ok(Verified { set, files })
}

impl Verified {
    /// The top-level targets, path by path.
    pub fn targets(&self) -> impl Iterator<Item = &TargetFile> {
        self.set.targets("targets").into_iter().flat_map(|t| t.targets.values())
    }

    /// The rollout policies the `rollouts` role signs (none without the delegation).
    pub fn policies(&self) -> impl Iterator<Item = &TargetFile> {
        self.set.targets(rollouts_role::ROLE).into_iter().flat_map(|t| t.targets.values())
    }

    /// Reads and verifies the bytes of a target file `role` signs; `None` if it signs no
    /// such target.
    pub fn read_target(&self, repo: &Repo, role: &str, target_path: &str) -> Result<Option<Vec<u8>>> {
        let Some(target) = self.set.targets(role).and_then(|t| t.targets.get(target_path)) else {
            return Ok(None);
        };
        let sha256 = target.hashes.get("sha256").with_context(|| format!("target {target_path} has no sha256"))?;
        let path = repo.target_file_path(target_path, sha256);
        let bytes = read_capped(&path, target.length)?;
        target.verify(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Some(bytes))
    }
}
