//! Where chunk bodies live: `ROOT/chunks/ab/<64 hex>`, named by the blake3 of their stored
//! bytes, spread over 256 fan-out directories by the first byte of the id.
//!
//! Names starting with a dot are work files (a write in progress, a staged release chunk):
//! never chunks, never listed, never served. The seeder's repository uses this layout, and the
//! origin serves its chunks through [`crate::ChunkStore::open_read_only`]. Edge nodes wrote it
//! too before they kept pack files ([`crate::packs`]); such a store is moved into packs at open.

use anyhow::{Context, Result};
use protocol::ChunkId;
use std::fs;
use std::path::{Path, PathBuf};

/// The chunk tree under a repository or data directory: `root/chunks`.
pub fn chunks_dir(root: &Path) -> PathBuf {
    root.join("chunks")
}

/// Where chunk `id` lives under a chunk tree: two hex digits of fan-out, then the full id.
pub fn chunk_path(chunks_dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_hex();
    chunks_dir.join(&hex[..2]).join(hex)
}

/// The 256 fan-out directories of a chunk tree, `00` to `ff`.
pub fn fanout_dirs(chunks_dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    (0..=255u8).map(move |byte| chunks_dir.join(protocol::hex::encode(&[byte])))
}

/// Whether a file name in a fan-out directory is a work file rather than a chunk.
pub fn is_work_file(name: &str) -> bool {
    name.starts_with('.')
}

/// The chunk a file name stands for; `None` for work files and anything else.
pub fn chunk_id_of(name: &str) -> Option<ChunkId> {
    ChunkId::from_hex(name).ok()
}

/// The hidden name a chunk is written under before it is durable: beside its final name,
/// so the rename stays in one directory.
pub fn work_path(final_path: &Path, suffix: &str) -> PathBuf {
    let name = final_path.file_name().and_then(|n| n.to_str()).unwrap_or("chunk");
    final_path.with_file_name(format!(".{name}.{suffix}"))
}

/// Creates the 256 fan-out directories and deletes the work files a killed writer left
/// whose name `is_leftover` accepts.
pub fn prepare(chunks_dir: &Path, is_leftover: impl Fn(&str) -> bool) -> Result<()> {
    for dir in fanout_dirs(chunks_dir) {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_work_file(&name) && is_leftover(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Every chunk file's id and length, sorted by id; work files and foreign names are skipped.
pub fn scan(chunks_dir: &Path) -> Vec<(ChunkId, u64)> {
    let mut out = Vec::new();
    for dir in fanout_dirs(chunks_dir) {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Some(id) = chunk_id_of(&entry.file_name().to_string_lossy()) else { continue };
            if let Ok(meta) = entry.metadata() {
                out.push((id, meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_lives_under_its_first_byte_and_work_files_are_not_chunks() {
        let id = ChunkId::of(b"body");
        let hex = id.to_hex();
        let path = chunk_path(Path::new("/r/chunks"), &id);
        assert_eq!(path, Path::new("/r/chunks").join(&hex[..2]).join(&hex));
        assert_eq!(chunk_id_of(&hex), Some(id));
        let work = work_path(&path, "tmp");
        let work_name = work.file_name().unwrap().to_str().unwrap();
        assert!(is_work_file(work_name));
        assert_eq!(chunk_id_of(work_name), None);
        assert_eq!(work.parent(), path.parent());
    }

    #[test]
    fn prepare_creates_every_fanout_and_sweeps_only_the_leftovers_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = chunks_dir(dir.path());
        prepare(&chunks, |_| true).unwrap();
        assert_eq!(fanout_dirs(&chunks).filter(|d| d.is_dir()).count(), 256);
        let id = ChunkId::of(b"x");
        let final_path = chunk_path(&chunks, &id);
        let (staged, tmp) = (work_path(&final_path, "staged"), work_path(&final_path, "tmp"));
        fs::write(&staged, b"s").unwrap();
        fs::write(&tmp, b"t").unwrap();
        fs::write(&final_path, b"x").unwrap();
        prepare(&chunks, |name| name.ends_with(".staged")).unwrap();
        assert!(!staged.exists() && tmp.exists() && final_path.exists());
        assert_eq!(scan(&chunks), vec![(id, 1)]);
    }
}
