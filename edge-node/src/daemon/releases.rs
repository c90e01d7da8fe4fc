//! The release registry: every release this node knows (from verified targets metadata),
//! with the manifest entries needed to verify its chunks, found by id or by a chunk it
//! contains.

use protocol::edge::{ChunkSpec, ReleaseSpec};
use protocol::manifest::{ChunkEntry, ManifestView};
use protocol::{ChunkId, ReleaseId};
use std::collections::{BTreeMap, HashSet};

/// A release this node knows.
pub(super) struct KnownRelease {
    pub(super) target_path: String,
    pub(super) name: String,
    pub(super) version: String,
    pub(super) hw_class: String,
    pub(super) entries: Vec<ChunkEntry>,
}

/// A newly registered release: what the scheduler and the device service need of it.
pub(super) struct Registered {
    pub(super) id: ReleaseId,
    pub(super) spec: ReleaseSpec,
    /// The manifest's file in the mirror (consistent-snapshot, hash-prefixed) and its length.
    pub(super) mirror_file: (String, u64),
}

/// Every release this node knows.
#[derive(Default)]
pub(super) struct Releases {
    by_id: BTreeMap<ReleaseId, KnownRelease>,
}

impl Releases {
    /// Adds the release of a verified manifest; `None` if it does not parse or is known.
    pub(super) fn add(&mut self, target_path: &str, manifest: &[u8]) -> Option<Registered> {
        let view = ManifestView::new_checked(manifest).ok()?;
        let id = ReleaseId::of_manifest(manifest);
        if self.by_id.contains_key(&id) {
            return None;
        }
        let entries: Vec<ChunkEntry> = view.chunks().collect();
        let spec = ReleaseSpec {
            hw_class: view.hw_class().into(),
            chunks: entries.iter().map(|e| ChunkSpec { id: e.id, stored_len: e.stored_length }).collect(),
        };
        let known = KnownRelease {
            target_path: target_path.into(),
            name: view.name().into(),
            version: view.version().into(),
            hw_class: view.hw_class().into(),
            entries,
        };
        self.by_id.insert(id, known);
        Some(Registered { id, spec, mirror_file: (mirror_file_name(target_path, manifest), manifest.len() as u64) })
    }

    pub(super) fn get(&self, id: &ReleaseId) -> Option<&KnownRelease> {
        self.by_id.get(id)
    }

    pub(super) fn contains(&self, id: &ReleaseId) -> bool {
        self.by_id.contains_key(id)
    }

    /// A release that contains `chunk`, for turning a device's miss into demand.
    pub(super) fn containing(&self, chunk: &ChunkId) -> Option<ReleaseId> {
        self.by_id.iter().find(|(_, r)| r.entries.iter().any(|e| e.id == *chunk)).map(|(id, _)| *id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ReleaseId, &KnownRelease)> {
        self.by_id.iter()
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = &ReleaseId> {
        self.by_id.keys()
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Target paths of every known release, so a refresh fetches only new manifests.
    pub(super) fn target_paths(&self) -> HashSet<String> {
        self.by_id.values().map(|r| r.target_path.clone()).collect()
    }
}

/// The mirror's name for a target file: `targets/<dir>/<sha256>.<base>`, as a
/// consistent-snapshot repository stores it.
fn mirror_file_name(target_path: &str, manifest: &[u8]) -> String {
    use sha2::Digest;
    let sha256 = protocol::hex::encode(&sha2::Sha256::digest(manifest));
    let (dir, base) = target_path.rsplit_once('/').unwrap_or(("", target_path));
    if dir.is_empty() {
        format!("targets/{sha256}.{base}")
    } else {
        format!("targets/{dir}/{sha256}.{base}")
    }
}
