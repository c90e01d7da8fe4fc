//! The chunk store: bodies in a content-addressed file tree, written crash-safely in batches.
//!
//! Layout: [`crate::layout`] (`DIR/chunks/ab/<64 hex>`). A batch is written under hidden temp names, made
//! durable with one `syncfs`, then renamed into place: a kill or power cut leaves only
//! complete chunks under final names (temp files are swept at open). A rename lost to a
//! power cut only loses the chunk (start-up reconciles the index with the files).
//!
//! Verification: a body is checked against its name before it is first served by this
//! process, and the ids that passed (or that this process verified and wrote itself) are
//! remembered in a bounded in-memory set, so a chunk served to many peers and devices is
//! hashed once per read pass, not once per read. A restart (kill -9 included) starts with an
//! empty set, so everything on disk is re-verified before it is served again; a damaged file
//! is deleted, never sent. A file altered on disk behind the running process's back after it
//! was verified is found by background re-verification ([`ChunkStore::check`], which the
//! edge node runs over every file in turn at a bounded byte rate) and by `put_batch`, which
//! hashes a file that already exists before trusting it. Every damaged file found by any
//! path is reported to the store's [`OnDamage`] (the edge node counts `corrupt_chunks`). Devices verify every chunk
//! themselves and peers verify before storing, so such a byte can never be installed or
//! spread, only cost a refetch.
//!
//! Sizing: [`ChunkStore::len`] gives a chunk's stored length without reading it, so servers
//! charge a request against their memory budgets before any body is read, and
//! [`ChunkStore::get`] never reads past the length the caller sized.
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

use crate::layout;

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

/// What hashing a stored file found ([`ChunkStore::check`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The file hashes to its name; `len` bytes were read.
    Intact {
        /// Bytes read and hashed.
        len: u64,
    },
    /// The file did not hash to its name (or was over the limit) and has been deleted;
    /// `len` bytes were read.
    Damaged {
        /// Bytes read and hashed.
        len: u64,
    },
    /// No such file (evicted meanwhile, or only staged in memory).
    Missing,
}

/// Told of every damaged file the store finds and deletes, whichever path found it (a read,
/// a `put_batch` over an existing file, a re-verification).
pub trait OnDamage: Send + Sync + std::fmt::Debug {
    /// `id`'s file did not hash to its name and has been deleted.
    fn damaged(&self, id: &ChunkId);
}

/// A content-addressed chunk store rooted at a directory. Clones share the in-memory state.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
    memory: Arc<Mutex<Memory>>,
    /// Told of damaged files found by any path.
    on_damage: Option<Arc<dyn OnDamage>>,
}

impl ChunkStore {
    /// Opens (creating) the store under `data_dir/chunks` and sweeps temp files a killed
    /// process left behind.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let root = layout::chunks_dir(data_dir);
        // Every work file is this store's own: nobody else writes an edge node's tree.
        layout::prepare(&root, |_| true)?;
        Ok(ChunkStore { root, memory: Arc::default(), on_damage: None })
    }

    /// Opens an existing store without touching it: the origin reads the seeder's chunk
    /// tree, where a concurrent `seeder release add` may have files staged.
    pub fn open_read_only(data_dir: &Path) -> Self {
        ChunkStore { root: layout::chunks_dir(data_dir), memory: Arc::default(), on_damage: None }
    }

    /// Reports every damaged file this store finds (on a read, a `put_batch` over an
    /// existing file, a re-verification) to `on_damage`, whoever asked.
    pub fn with_on_damage(mut self, on_damage: Arc<dyn OnDamage>) -> Self {
        self.on_damage = Some(on_damage);
        self
    }

    /// Deletes a file that failed verification, forgets it was verified, and counts it.
    fn discard_damaged(&self, id: &ChunkId) {
        self.memory().verified.remove(id);
        let _ = fs::remove_file(self.path(id));
        if let Some(on_damage) = &self.on_damage {
            on_damage.damaged(id);
        }
        tracing::warn!(chunk = %id, "stored chunk failed verification; deleted");
    }

    /// Remembers that `id`'s file hashed to its name.
    fn mark_verified(memory: &mut Memory, id: ChunkId) {
        if memory.verified.len() >= MAX_VERIFIED_IDS {
            memory.verified.clear();
        }
        memory.verified.insert(id);
    }

    /// Stored length of a chunk without reading it: staged bytes, else the file's length.
    /// `None` if neither exists. Servers size requests with it before reading anything.
    pub fn len(&self, id: &ChunkId) -> Option<u64> {
        if let Some(bytes) = self.memory().staged.get(id) {
            return Some(bytes.len() as u64);
        }
        fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Reads `id`'s file (at most `max_len + 1` bytes) and hashes it, deleting (and counting)
    /// it when it does not match; an intact file is remembered as verified. What background
    /// re-verification runs; staged chunks are not on disk yet and count as `Missing`.
    pub fn check(&self, id: &ChunkId, max_len: u64) -> Check {
        let Some(bytes) = read_bounded(&self.path(id), max_len) else { return Check::Missing };
        let len = bytes.len() as u64;
        if len > max_len || !id.matches(&bytes) {
            self.discard_damaged(id);
            return Check::Damaged { len };
        }
        Self::mark_verified(&mut self.memory(), *id);
        Check::Intact { len }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        layout::chunk_path(&self.root, id)
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
    /// not the network. A file that already exists is hashed before it is trusted (and
    /// replaced, counted as damaged, when it does not match).
    pub fn put_batch(&self, chunks: &[(ChunkId, &[u8])]) -> Result<()> {
        let mut staged = Vec::with_capacity(chunks.len());
        for (id, bytes) in chunks {
            let path = self.path(id);
            if path.exists() {
                match self.check(id, bytes.len() as u64) {
                    Check::Intact { .. } => continue,
                    // Deleted by `check`; written again below.
                    Check::Damaged { .. } | Check::Missing => {}
                }
            }
            let tmp = layout::work_path(&path, "tmp");
            let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            file.write_all(bytes)?;
            start_writeback(&file);
            staged.push((tmp, path));
        }
        if !staged.is_empty() {
            // Bodies durable before any name points at them.
            host::fs::sync_filesystem(&self.root)?;
            for (tmp, path) in &staged {
                fs::rename(tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
            }
        }
        // Renamed (visible to `get` from disk) before unstaged, so a reader never misses it.
        let mut memory = self.memory();
        for (id, _) in chunks {
            Self::mark_verified(&mut memory, *id);
            if let Some(old) = memory.staged.remove(id) {
                memory.staged_bytes -= old.len();
            }
        }
        Ok(())
    }

    /// A chunk's bytes, checked against its id unless this process already did (see the
    /// module doc); a damaged body is deleted. Never reads more than `max_len + 1` bytes, so
    /// a caller that sized the chunk with [`ChunkStore::len`] passes that length here.
    pub fn get(&self, id: &ChunkId, max_len: u64) -> Result<Bytes, ReadError> {
        let verified = {
            let memory = self.memory();
            if let Some(bytes) = memory.staged.get(id) {
                return Ok(bytes.clone());
            }
            memory.verified.contains(id)
        };
        let Some(bytes) = read_bounded(&self.path(id), max_len) else { return Err(ReadError::Missing) };
        if verified && bytes.len() as u64 <= max_len {
            return Ok(Bytes::from(bytes));
        }
        if bytes.len() as u64 > max_len || !id.matches(&bytes) {
            self.discard_damaged(id);
            return Err(ReadError::Damaged);
        }
        Self::mark_verified(&mut self.memory(), *id);
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
        layout::scan(&self.root)
    }
}

/// Reads at most `max_len + 1` bytes of a file into a buffer sized from its metadata (so a
/// longer file is detectable but never read whole); `None` if it cannot be opened or read.
fn read_bounded(path: &Path, max_len: u64) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let limit = max_len.saturating_add(1);
    let len = file.metadata().map(|m| m.len()).unwrap_or(0).min(limit);
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(usize::try_from(len).ok()?).ok()?;
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts damaged files, as the edge node's `corrupt_chunks` does.
    #[derive(Debug, Default)]
    struct DamageCount(std::sync::atomic::AtomicU64);

    impl OnDamage for DamageCount {
        fn damaged(&self, _: &ChunkId) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

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

    /// `put_batch` over a file that already exists hashes it before trusting it: a damaged
    /// one is replaced (and counted), an intact one is left alone. Before, an existing file
    /// was marked verified unread, so a damaged body was then served as verified.
    #[test]
    fn put_batch_over_an_existing_corrupt_file_rehashes_and_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"the chunk as signed".to_vec();
        let id = ChunkId::of(&body);
        ChunkStore::open(dir.path()).unwrap().put_batch(&[(id, &body)]).unwrap();
        let damage = Arc::new(DamageCount::default());
        let store = ChunkStore::open(dir.path()).unwrap().with_on_damage(damage.clone());
        let path = store.path(&id);
        fs::write(&path, b"the chunk as altered").unwrap();

        store.put_batch(&[(id, &body)]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), body);
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert_eq!(damage.0.load(std::sync::atomic::Ordering::Relaxed), 1);

        // Intact: not rewritten, not counted.
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap().with_on_damage(damage.clone());
        store.put_batch(&[(id, &body)]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert_eq!(damage.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Sizing reads no body: staged chunks by their bytes, files by their metadata.
    #[test]
    fn len_sizes_staged_and_stored_chunks_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (a, b) = (b"staged".to_vec(), b"on disk, longer".to_vec());
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        store.stage(ia, Bytes::from(a.clone()));
        store.put_batch(&[(ib, &b)]).unwrap();
        assert_eq!(store.len(&ia), Some(a.len() as u64));
        assert_eq!(store.len(&ib), Some(b.len() as u64));
        assert_eq!(store.len(&ChunkId::of(b"absent")), None);
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
        let tmp = layout::work_path(&store.path(&id), "tmp");
        fs::write(&tmp, b"partial").unwrap();
        assert!(store.scan().is_empty());
        ChunkStore::open(dir.path()).unwrap();
        assert!(!tmp.exists());
    }
}
