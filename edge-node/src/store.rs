//! The chunk store: bodies in a content-addressed file tree, written crash-safely in batches.
//!
//! Layout: `DIR/chunks/ab/<64 hex>`. A batch is written under hidden temp names, made
//! durable with one `syncfs`, then renamed into place and synced again: a kill or power cut
//! leaves only complete chunks under final names (temp files are swept at open). Every read
//! re-hashes the body against its name before it is served, so a damaged file is dropped,
//! never sent. Which chunks to keep is decided by `protocol::edge` (the cache), not here.

use anyhow::{Context, Result};
use protocol::ChunkId;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a stored chunk could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Not in the store.
    Missing,
    /// The body no longer hashes to its name; it has been deleted.
    Damaged,
}

/// A content-addressed chunk store rooted at a directory.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
}

impl ChunkStore {
    /// Opens (creating) the store under `data_dir/chunks` and sweeps temp files a killed
    /// process left behind.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let root = data_dir.join("chunks");
        for byte in 0..=255u8 {
            let dir = root.join(protocol::hex::encode(&[byte]));
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for entry in fs::read_dir(&dir)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(ChunkStore { root })
    }

    /// Opens an existing store without touching it: the origin reads the seeder's chunk
    /// tree, where a concurrent `seeder release add` may have files staged.
    pub fn open_read_only(data_dir: &Path) -> Self {
        ChunkStore { root: data_dir.join("chunks") }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Writes verified chunks durably; returns once all are in place. Callers verify bytes
    /// against their ids before calling: the store trusts its callers, not the network.
    pub fn put_batch(&self, chunks: &[(ChunkId, &[u8])]) -> Result<()> {
        let mut staged = Vec::with_capacity(chunks.len());
        for (id, bytes) in chunks {
            let path = self.path(id);
            if path.exists() {
                continue;
            }
            let tmp = path.with_file_name(format!(".{}.tmp", id.to_hex()));
            let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            file.write_all(bytes)?;
            staged.push((tmp, path));
        }
        if staged.is_empty() {
            return Ok(());
        }
        sync_filesystem(&self.root)?;
        for (tmp, path) in &staged {
            fs::rename(tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
        }
        sync_filesystem(&self.root)
    }

    /// Reads a chunk and checks it against its id; a damaged body is deleted.
    pub fn get(&self, id: &ChunkId, max_len: u64) -> Result<Vec<u8>, ReadError> {
        let path = self.path(id);
        let mut bytes = Vec::new();
        let read = File::open(&path).and_then(|f| f.take(max_len + 1).read_to_end(&mut bytes));
        if read.is_err() {
            return Err(ReadError::Missing);
        }
        if bytes.len() as u64 > max_len || !id.matches(&bytes) {
            let _ = fs::remove_file(&path);
            return Err(ReadError::Damaged);
        }
        Ok(bytes)
    }

    /// Deletes a chunk (evicted by the cache).
    pub fn remove(&self, id: &ChunkId) -> Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every chunk file's id and length, for rebuilding the cache at start-up. Contents are
    /// checked when read, not here, so start-up stays fast on a large store.
    pub fn scan(&self) -> Vec<(ChunkId, u64)> {
        let mut out = Vec::new();
        for byte in 0..=255u8 {
            let dir = self.root.join(protocol::hex::encode(&[byte]));
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let Ok(id) = ChunkId::from_hex(&name.to_string_lossy()) else { continue };
                if let Ok(meta) = entry.metadata() {
                    out.push((id, meta.len()));
                }
            }
        }
        out.sort();
        out
    }
}

fn sync_filesystem(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: syncfs only reads the descriptor number; `dir` keeps it open for the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let body = b"stored chunk bytes".to_vec();
        let id = ChunkId::of(&body);
        store.put_batch(&[(id, &body)]).unwrap();
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert_eq!(store.scan(), vec![(id, body.len() as u64)]);

        // A flipped byte on disk is caught at read time and the file is dropped.
        let path = store.path(&id);
        let mut damaged = body.clone();
        damaged[3] ^= 1;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(store.get(&id, 1024), Err(ReadError::Damaged));
        assert!(!path.exists());
        assert_eq!(store.get(&id, 1024), Err(ReadError::Missing));

        store.put_batch(&[(id, &body)]).unwrap();
        store.remove(&id).unwrap();
        assert!(store.scan().is_empty());
    }

    #[test]
    fn temp_files_from_a_killed_write_are_swept_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let id = ChunkId::of(b"x");
        let tmp = store.path(&id).with_file_name(format!(".{}.tmp", id.to_hex()));
        fs::write(&tmp, b"partial").unwrap();
        assert!(store.scan().is_empty());
        ChunkStore::open(dir.path()).unwrap();
        assert!(!tmp.exists());
    }
}
