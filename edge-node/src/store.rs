//! The chunk store: bodies in a content-addressed file tree, written crash-safely in batches.
//!
//! Layout: `DIR/chunks/ab/<64 hex>`. A batch is written under hidden temp names, made
//! durable with one `syncfs`, then renamed into place: a kill or power cut leaves only
//! complete chunks under final names (temp files are swept at open). A rename lost to a
//! power cut only loses the chunk (start-up reconciles the index with the files).
//!
//! Verification: a body is checked against its name before it is first served by this
//! process, and the ids that passed (or that this process verified and wrote itself) are
//! remembered in a bounded in-memory set, so a chunk served to many peers and devices is
//! hashed once per process lifetime, not once per read. A restart (kill -9 included) starts
//! with an empty set, so everything on disk is re-verified before it is served again; a
//! damaged file is deleted, never sent. What is not caught until the next restart: a file
//! altered on disk behind the running process's back after it was verified — devices verify
//! every chunk themselves, and peers verify before storing, so such a byte can never be
//! installed or spread, only cost a refetch.
//!
//! Staging: verified chunks waiting for their batch to be written are held in memory and
//! served from there ([`ChunkStore::stage`]), so a chunk is readable from the moment the
//! cache admits it, not only once its batch is durable; `put_batch` unstages what it wrote.
//!
//! Which chunks to keep is decided by `protocol::edge` (the cache), not here.

use anyhow::{Context, Result};
use bytes::Bytes;
use protocol::ChunkId;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Most ids remembered as verified (32 bytes each, ~12 MiB with the set's overhead); past it
/// the set is cleared and chunks are verified again on their next read.
const MAX_VERIFIED_IDS: usize = 256 * 1024;

/// Why a stored chunk could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Not in the store.
    Missing,
    /// The body no longer hashes to its name; it has been deleted.
    Damaged,
}

#[derive(Debug, Default)]
struct Memory {
    /// Ids whose file this process has verified or written (see the module doc).
    verified: HashSet<ChunkId>,
    /// Verified bodies not yet written.
    staged: HashMap<ChunkId, Bytes>,
    /// Bytes in `staged`.
    staged_bytes: usize,
}

/// A content-addressed chunk store rooted at a directory. Clones share the in-memory state.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
    memory: Arc<Mutex<Memory>>,
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
        Ok(ChunkStore { root, memory: Arc::default() })
    }

    /// Opens an existing store without touching it: the origin reads the seeder's chunk
    /// tree, where a concurrent `seeder release add` may have files staged.
    pub fn open_read_only(data_dir: &Path) -> Self {
        ChunkStore { root: data_dir.join("chunks"), memory: Arc::default() }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The lock guards plain maps; a panic while holding it cannot leave them torn.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a verified chunk in memory until `put_batch` writes it (or `unstage` drops
    /// it); [`ChunkStore::get`] serves it meanwhile. Callers verify first and bound how
    /// much they stage.
    pub fn stage(&self, id: ChunkId, bytes: Bytes) {
        let mut memory = self.memory();
        let len = bytes.len();
        if let Some(old) = memory.staged.insert(id, bytes) {
            memory.staged_bytes -= old.len();
        }
        memory.staged_bytes += len;
    }

    /// Drops staged chunks that will not be written.
    pub fn unstage(&self, ids: &[ChunkId]) {
        let mut memory = self.memory();
        for id in ids {
            if let Some(old) = memory.staged.remove(id) {
                memory.staged_bytes -= old.len();
            }
        }
    }

    /// Bytes staged in memory, not yet written.
    pub fn staged_bytes(&self) -> usize {
        self.memory().staged_bytes
    }

    /// Writes verified chunks durably; returns once all are in place, and unstages them.
    /// Callers verify bytes against their ids before calling: the store trusts its callers,
    /// not the network.
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
            start_writeback(&file);
            staged.push((tmp, path));
        }
        if !staged.is_empty() {
            // Bodies durable before any name points at them.
            sync_filesystem(&self.root)?;
            for (tmp, path) in &staged {
                fs::rename(tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
            }
        }
        // Renamed (visible to `get` from disk) before unstaged, so a reader never misses it.
        let mut memory = self.memory();
        for (id, _) in chunks {
            if memory.verified.len() >= MAX_VERIFIED_IDS {
                memory.verified.clear();
            }
            memory.verified.insert(*id);
            if let Some(old) = memory.staged.remove(id) {
                memory.staged_bytes -= old.len();
            }
        }
        Ok(())
    }

    /// A chunk's bytes, checked against its id unless this process already did (see the
    /// module doc); a damaged body is deleted.
    pub fn get(&self, id: &ChunkId, max_len: u64) -> Result<Bytes, ReadError> {
        let verified = {
            let memory = self.memory();
            if let Some(bytes) = memory.staged.get(id) {
                return Ok(bytes.clone());
            }
            memory.verified.contains(id)
        };
        let path = self.path(id);
        let mut bytes = Vec::new();
        let read = File::open(&path).and_then(|f| {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0).min(max_len + 1);
            bytes.reserve_exact(len as usize);
            f.take(max_len + 1).read_to_end(&mut bytes)
        });
        if read.is_err() {
            return Err(ReadError::Missing);
        }
        if verified && bytes.len() as u64 <= max_len {
            return Ok(Bytes::from(bytes));
        }
        if bytes.len() as u64 > max_len || !id.matches(&bytes) {
            self.memory().verified.remove(id);
            let _ = fs::remove_file(&path);
            return Err(ReadError::Damaged);
        }
        let mut memory = self.memory();
        if memory.verified.len() >= MAX_VERIFIED_IDS {
            memory.verified.clear();
        }
        memory.verified.insert(*id);
        Ok(Bytes::from(bytes))
    }

    /// Deletes a chunk (evicted by the cache).
    pub fn remove(&self, id: &ChunkId) -> Result<()> {
        {
            let mut memory = self.memory();
            memory.verified.remove(id);
            if let Some(old) = memory.staged.remove(id) {
                memory.staged_bytes -= old.len();
            }
        }
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

/// Starts writing a file's dirty pages to disk without waiting, so the batch's `syncfs`
/// finds most of its data already on the way instead of issuing it all at once.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor number; `file` keeps it open. A
    // failure (unsupported filesystem) only loses the head start; `syncfs` still decides.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
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

        // A flipped byte on disk is caught at the first read after a restart (kill -9
        // included) and the file is dropped.
        let path = store.path(&id);
        let mut damaged = body.clone();
        damaged[3] ^= 1;
        fs::write(&path, &damaged).unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&id, 1024), Err(ReadError::Damaged));
        assert!(!path.exists());
        assert_eq!(store.get(&id, 1024), Err(ReadError::Missing));

        store.put_batch(&[(id, &body)]).unwrap();
        store.remove(&id).unwrap();
        assert!(store.scan().is_empty());
        assert_eq!(store.get(&id, 1024), Err(ReadError::Missing));
    }

    #[test]
    fn a_file_is_hashed_once_per_process_and_damage_found_before_it_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"written by an earlier run".to_vec();
        let id = ChunkId::of(&body);
        ChunkStore::open(dir.path()).unwrap().put_batch(&[(id, &body)]).unwrap();

        // A new process: nothing is trusted until hashed.
        let store = ChunkStore::open(dir.path()).unwrap();
        let path = store.path(&id);
        fs::write(&path, b"written by an earlier rum").unwrap();
        assert_eq!(store.get(&id, 1024), Err(ReadError::Damaged));

        // Intact: verified on the first read, then served from the verified set.
        store.put_batch(&[(id, &body)]).unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert!(store.memory().verified.contains(&id));
        // Too long for the caller's limit is refused even when verified.
        assert_eq!(store.get(&id, 4), Err(ReadError::Damaged));
    }

    #[test]
    fn staged_chunks_are_served_until_written_and_then_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let body = b"verified, not yet written".to_vec();
        let id = ChunkId::of(&body);
        store.stage(id, Bytes::from(body.clone()));
        assert_eq!(store.staged_bytes(), body.len());
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert!(store.scan().is_empty());
        store.put_batch(&[(id, &body)]).unwrap();
        assert_eq!(store.staged_bytes(), 0);
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert_eq!(store.scan(), vec![(id, body.len() as u64)]);

        let other = ChunkId::of(b"dropped");
        store.stage(other, Bytes::from_static(b"dropped"));
        store.unstage(&[other]);
        assert_eq!(store.staged_bytes(), 0);
        assert_eq!(store.get(&other, 1024), Err(ReadError::Missing));
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
