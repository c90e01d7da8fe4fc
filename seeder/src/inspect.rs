//! `seeder inspect`: roles, keys, expiries, releases and the store's deduplication.

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::fs;

use crate::repo::Repo;

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
}

/// The whole inspection.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    /// Top-level roles.
    pub roles: Vec<RoleInfo>,
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

/// Reads the repository's current state (unverified; `seeder verify` checks it).
pub fn run(repo: &Repo) -> Result<InspectReport> {
    let current = repo.current()?;
    let roles = ["root", "targets", "snapshot", "timestamp"]
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
    let mut releases = Vec::new();
    if let Some(targets) = current.targets["targets"].as_object() {
        for (path, entry) in targets {
            let o = &entry["custom"]["otamesh"];
            let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
            releases.push(ReleaseInfo {
                target: path.clone(),
                name: text(&o["name"]),
                version: text(&o["version"]),
                hw_class: text(&o["hw_class"]),
                security_counter: o["security_counter"].as_u64().unwrap_or(0),
                image_bytes: o["image_length"].as_u64().unwrap_or(0),
                chunks: o["chunk_count"].as_u64().unwrap_or(0),
                stored_bytes: o["stored_bytes"].as_u64().unwrap_or(0),
            });
        }
    }
    let (mut store_chunks, mut store_bytes) = (0u64, 0u64);
    if let Ok(fanouts) = fs::read_dir(repo.chunks_dir()) {
        for fanout in fanouts.flatten() {
            if fanout.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            for chunk in fs::read_dir(fanout.path()).into_iter().flatten().flatten() {
                store_chunks += 1;
                store_bytes += chunk.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    let referenced: u64 = releases.iter().map(|r| r.stored_bytes).sum();
    let dedup_ratio = if store_bytes == 0 { 1.0 } else { referenced as f64 / store_bytes as f64 };
    Ok(InspectReport { roles, releases, store_chunks, store_bytes, dedup_ratio })
}
