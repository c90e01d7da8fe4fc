//! The chunk store: bodies in pack files (an edge node) or a content-addressed file tree
//! (the seeder's repository, read by the origin).
//!
//! An edge node's store ([`ChunkStore::open`]) appends bodies to pack files
//! ([`crate::packs`]): a batch is one vectored append and one `fdatasync`, a read one
//! `pread`, sizing a map lookup. A store written by an older edge node as one file per
//! chunk (`DIR/chunks/ab/<64 hex>`) is moved into packs the first time it is opened. The
//! origin reads the seeder's file tree ([`ChunkStore::open_read_only`], [`crate::layout`]),
//! which `seeder release add` writes while the origin serves it.
//!
//! Verification: a body is checked against its id before it is first served by this
//! process, and the ids that passed (or that this process verified and wrote itself) are
//! remembered in a bounded in-memory set, so a chunk served to many peers and devices is
//! hashed once per read pass, not once per read. A restart (kill -9 included) starts with an
//! empty set, so everything on disk is re-verified before it is served again; a damaged body
//! is deleted, never sent. A body altered on disk behind the running process's back after it
//! was verified is found by background re-verification ([`ChunkStore::check`], which the
//! edge node runs over every chunk in turn at a bounded byte rate) and by `put_batch`, which
//! hashes a chunk that is already stored before trusting it. Every damaged body found by any
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

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use protocol::chunker::limits::MAX_CHUNK_BYTES;
use protocol::ChunkId;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::layout;
use crate::packs::{Location, Packs};

/// Most ids remembered as verified (32 bytes each, ~12 MiB with the set's overhead); past it
/// the set is cleared and chunks are verified again on their next read.
const MAX_VERIFIED_IDS: usize = 256 * 1024;

/// Bytes of old chunk files moved into packs per append when a file-tree store is upgraded.
const UPGRADE_BATCH_BYTES: usize = 64 << 20;

/// Why a stored chunk could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Not in the store.
    Missing,
    /// The body no longer hashes to its name; it has been deleted (except from a store opened
    /// with [`ChunkStore::inspect`], which changes nothing).
    Damaged,
}

#[derive(Debug, Default)]
struct Memory {
    /// Ids whose body this process has verified or written (see the module doc).
    verified: HashSet<ChunkId>,
    /// Verified bodies not yet written.
    staged: HashMap<ChunkId, Bytes>,
    /// Bytes in `staged`.
    staged_bytes: usize,
}

/// What hashing a stored body found ([`ChunkStore::check`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The body hashes to its id; `len` bytes were read.
    Intact {
        /// Bytes read and hashed.
        len: u64,
    },
    /// The body did not hash to its id (or was over the limit) and has been deleted;
    /// `len` bytes were read.
    Damaged {
        /// Bytes read and hashed.
        len: u64,
    },
    /// Not stored (evicted meanwhile, or only staged in memory).
    Missing,
}

/// Told of every damaged body the store finds and deletes, whichever path found it (a read,
/// a `put_batch` over a stored chunk, a re-verification).
pub trait OnDamage: Send + Sync + std::fmt::Debug {
    /// `id`'s body did not hash to its id and has been deleted.
    fn damaged(&self, id: &ChunkId);
}

/// Where the bytes of a stored body lie on disk: for operators and tests that inspect or
/// alter a store from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyOnDisk {
    /// The file holding it.
    pub path: PathBuf,
    /// Offset of the body in that file.
    pub offset: u64,
    /// Body length.
    pub len: u64,
}

/// Where bodies live.
#[derive(Debug)]
enum Bodies {
    /// An edge node's pack files.
    Packs(Packs),
    /// A file per chunk under `chunks/` (the seeder's repository), read only.
    Files(PathBuf),
}

/// A body read from disk, with what is needed to tell damage from a concurrent eviction.
struct ReadBody {
    bytes: Vec<u8>,
    /// The stored length, when it is over the caller's limit (then `bytes` is empty).
    too_long: Option<u64>,
    /// The pack record it came from (pack stores only).
    location: Option<Location>,
}

/// A content-addressed chunk store. Clones share the in-memory state.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    bodies: Arc<Bodies>,
    memory: Arc<Mutex<Memory>>,
    /// Told of damaged bodies found by any path.
    on_damage: Option<Arc<dyn OnDamage>>,
}

impl ChunkStore {
    /// Opens (creating) an edge node's store: pack files under `data_dir/packs`. Chunk files
    /// an older version left under `data_dir/chunks` are moved into packs first.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let packs = Packs::open(&data_dir.join("packs"))?;
        upgrade_file_tree(&layout::chunks_dir(data_dir), &packs)?;
        Ok(ChunkStore { bodies: Arc::new(Bodies::Packs(packs)), memory: Arc::default(), on_damage: None })
    }

    /// Opens an edge node's store to look at it while the node may be running (tests,
    /// operators): nothing on disk changes, and `put_batch` and `remove` fail. Reads still
    /// verify; a damaged body is reported but cannot be deleted.
    pub fn inspect(data_dir: &Path) -> Result<Self> {
        let packs = Packs::open_read_only(&data_dir.join("packs"))?;
        Ok(ChunkStore { bodies: Arc::new(Bodies::Packs(packs)), memory: Arc::default(), on_damage: None })
    }

    /// Opens a seeder's chunk file tree without touching it: the origin reads it while a
    /// concurrent `seeder release add` may have files staged. Such a store is never written
    /// (`put_batch` refuses); a damaged file is still deleted.
    pub fn open_read_only(data_dir: &Path) -> Self {
        ChunkStore {
            bodies: Arc::new(Bodies::Files(layout::chunks_dir(data_dir))),
            memory: Arc::default(),
            on_damage: None,
        }
    }

    /// Reports every damaged body this store finds (on a read, a `put_batch` over a stored
    /// chunk, a re-verification) to `on_damage`, whoever asked.
    pub fn with_on_damage(mut self, on_damage: Arc<dyn OnDamage>) -> Self {
        self.on_damage = Some(on_damage);
        self
    }

    /// Deletes a body that failed verification, forgets it was verified, and counts it.
    /// `location` is the pack record that was read: if the index has moved on (evicted or
    /// written again meanwhile) the bytes read were not the stored chunk's, so nothing is
    /// deleted or counted and the read reports `Missing`.
    fn discard_damaged(&self, id: &ChunkId, location: Option<Location>) -> bool {
        match (&*self.bodies, location) {
            (Bodies::Packs(packs), Some(location)) => {
                if !packs.still_at(id, location) {
                    return false;
                }
                self.memory().verified.remove(id);
                // Checked again under the index's lock: a copy written again since the
                // check above is not the damaged one.
                if matches!(packs.remove_if_at(id, location), Ok(false)) {
                    return false;
                }
            }
            (Bodies::Packs(packs), None) => {
                self.memory().verified.remove(id);
                let _ = packs.remove(id);
            }
            (Bodies::Files(root), _) => {
                self.memory().verified.remove(id);
                let _ = fs::remove_file(layout::chunk_path(root, id));
            }
        }
        if let Some(on_damage) = &self.on_damage {
            on_damage.damaged(id);
        }
        tracing::warn!(chunk = %id, "stored chunk failed verification; deleted (unless the store is only inspected)");
        true
    }

    /// Remembers that `id`'s stored body hashed to its id.
    fn mark_verified(memory: &mut Memory, id: ChunkId) {
        if memory.verified.len() >= MAX_VERIFIED_IDS {
            memory.verified.clear();
        }
        memory.verified.insert(id);
    }

    /// Stored length of a chunk without reading it: staged bytes, else the stored body's.
    /// `None` if neither exists. Servers size requests with it before reading anything.
    pub fn len(&self, id: &ChunkId) -> Option<u64> {
        if let Some(bytes) = self.memory().staged.get(id) {
            return Some(bytes.len() as u64);
        }
        match &*self.bodies {
            Bodies::Packs(packs) => packs.location(id).map(|l| u64::from(l.len)),
            Bodies::Files(root) => fs::metadata(layout::chunk_path(root, id)).ok().map(|m| m.len()),
        }
    }

    /// Where `id`'s body lies on disk, if it is stored there (not only staged).
    pub fn body_on_disk(&self, id: &ChunkId) -> Option<BodyOnDisk> {
        match &*self.bodies {
            Bodies::Packs(packs) => packs.location(id).map(|l| BodyOnDisk {
                path: packs.pack_path(l.pack),
                offset: l.header_offset + crate::packs::HEADER_BYTES,
                len: u64::from(l.len),
            }),
            Bodies::Files(root) => {
                let path = layout::chunk_path(root, id);
                let len = fs::metadata(&path).ok()?.len();
                Some(BodyOnDisk { path, offset: 0, len })
            }
        }
    }

    /// Reads a stored body, at most `max_len` bytes of it (`None` if not stored).
    fn read_body(&self, id: &ChunkId, max_len: u64) -> Option<ReadBody> {
        match &*self.bodies {
            Bodies::Packs(packs) => {
                let (location, read) = packs.read(id, max_len)?;
                Some(match read {
                    Ok(bytes) => ReadBody { bytes, too_long: None, location: Some(location) },
                    Err(len) => ReadBody { bytes: Vec::new(), too_long: Some(len), location: Some(location) },
                })
            }
            Bodies::Files(root) => {
                let bytes = read_bounded(&layout::chunk_path(root, id), max_len)?;
                let len = bytes.len() as u64;
                Some(if len > max_len {
                    ReadBody { bytes: Vec::new(), too_long: Some(len), location: None }
                } else {
                    ReadBody { bytes, too_long: None, location: None }
                })
            }
        }
    }

    /// Reads `id`'s stored body (at most `max_len` bytes) and hashes it, deleting (and
    /// counting) it when it does not match; an intact body is remembered as verified. What
    /// background re-verification runs; staged chunks are not on disk yet and count as
    /// `Missing`.
    pub fn check(&self, id: &ChunkId, max_len: u64) -> Check {
        let Some(read) = self.read_body(id, max_len) else { return Check::Missing };
        if let Some(len) = read.too_long {
            return if self.discard_damaged(id, read.location) { Check::Damaged { len } } else { Check::Missing };
        }
        let len = read.bytes.len() as u64;
        if !id.matches(&read.bytes) {
            return if self.discard_damaged(id, read.location) { Check::Damaged { len } } else { Check::Missing };
        }
        Self::mark_verified(&mut self.memory(), *id);
        Check::Intact { len }
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

    /// Writes verified chunks durably; returns once all are on disk, and unstages them.
    /// Callers verify bytes against their ids before calling: the store trusts its callers,
    /// not the network. A chunk that is already stored is hashed before it is trusted (and
    /// replaced, counted as damaged, when it does not match).
    pub fn put_batch(&self, chunks: &[(ChunkId, &[u8])]) -> Result<()> {
        let Bodies::Packs(packs) = &*self.bodies else {
            bail!("this chunk store is a seeder's repository, opened read-only");
        };
        let mut fresh = Vec::with_capacity(chunks.len());
        for (id, bytes) in chunks {
            if packs.location(id).is_some() {
                match self.check(id, bytes.len() as u64) {
                    Check::Intact { .. } => continue,
                    // Deleted by `check`; written again below.
                    Check::Damaged { .. } | Check::Missing => {}
                }
            }
            fresh.push((*id, *bytes));
        }
        packs.append(&fresh)?;
        // Indexed (readable from disk) before unstaged, so a reader never misses it.
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
        let Some(read) = self.read_body(id, max_len) else { return Err(ReadError::Missing) };
        if read.too_long.is_some() || !(verified || id.matches(&read.bytes)) {
            return Err(if self.discard_damaged(id, read.location) { ReadError::Damaged } else { ReadError::Missing });
        }
        // A verified id skips the hash, so a body evicted (punched to zeros) while it was
        // read must be caught here instead.
        if let (Bodies::Packs(packs), Some(location)) = (&*self.bodies, read.location) {
            if !packs.still_at(id, location) {
                return Err(ReadError::Missing);
            }
        }
        if !verified {
            Self::mark_verified(&mut self.memory(), *id);
        }
        Ok(Bytes::from(read.bytes))
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
        match &*self.bodies {
            Bodies::Packs(packs) => packs.remove(id).map(|_| ()),
            Bodies::Files(root) => match fs::remove_file(layout::chunk_path(root, id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
        }
    }

    /// Every stored chunk's id and length, sorted by id, for rebuilding the cache at
    /// start-up. Contents are checked when read, not here, so start-up stays fast on a large
    /// store.
    pub fn scan(&self) -> Vec<(ChunkId, u64)> {
        match &*self.bodies {
            Bodies::Packs(packs) => packs.list(),
            Bodies::Files(root) => layout::scan(root),
        }
    }
}

/// Moves a file-per-chunk store (what edge nodes wrote before pack files) into `packs`,
/// then deletes the tree. Bodies are not hashed here: they are verified on first read like
/// everything else on disk. A file that cannot be read is dropped (the cache refetches it).
fn upgrade_file_tree(chunks_dir: &Path, packs: &Packs) -> Result<()> {
    if !chunks_dir.is_dir() {
        return Ok(());
    }
    // A seeder's repository has this tree too: it is never an edge store to move.
    if chunks_dir.parent().is_some_and(|root| root.join("metadata").is_dir()) {
        tracing::warn!(dir = %chunks_dir.display(), "a repository's chunk tree beside an edge store; left alone");
        return Ok(());
    }
    let mut moved = 0usize;
    let mut batch: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    // Each batch's files go once the batch is durable in packs, so the move never needs
    // twice the store's space; a move cut short resumes at the next open.
    let flush = |batch: &mut Vec<(ChunkId, Vec<u8>)>| -> Result<()> {
        let slices: Vec<(ChunkId, &[u8])> = batch.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        packs.append(&slices)?;
        for (id, _) in batch.drain(..) {
            let _ = fs::remove_file(layout::chunk_path(chunks_dir, &id));
        }
        Ok(())
    };
    for (id, _) in layout::scan(chunks_dir) {
        let path = layout::chunk_path(chunks_dir, &id);
        let Some(bytes) = read_bounded(&path, u64::from(MAX_CHUNK_BYTES)) else { continue };
        if bytes.len() as u64 > u64::from(MAX_CHUNK_BYTES) {
            let _ = fs::remove_file(&path);
            continue;
        }
        batch_bytes += bytes.len();
        batch.push((id, bytes));
        moved += 1;
        if batch_bytes >= UPGRADE_BATCH_BYTES {
            flush(&mut batch)?;
            batch_bytes = 0;
        }
    }
    flush(&mut batch)?;
    // What is left is work files and empty fan-out directories.
    fs::remove_dir_all(chunks_dir)
        .with_context(|| format!("cannot delete the old chunk tree {}", chunks_dir.display()))?;
    if moved > 0 {
        tracing::info!(chunks = moved, from = %chunks_dir.display(), "moved chunk files into pack files");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::flip_stored_byte;

    /// Counts damaged bodies, as the edge node's `corrupt_chunks` does.
    #[derive(Debug, Default)]
    struct DamageCount(std::sync::atomic::AtomicU64);

    impl OnDamage for DamageCount {
        fn damaged(&self, _: &ChunkId) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl DamageCount {
        fn count(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
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
        // included) and the body is dropped.
        flip_stored_byte(&store, &id, 3);
        drop(store);
        let store = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&id, 1024), Err(ReadError::Damaged));
        assert_eq!(store.get(&id, 1024), Err(ReadError::Missing));
        assert!(store.scan().is_empty());

        store.put_batch(&[(id, &body)]).unwrap();
        store.remove(&id).unwrap();
        assert!(store.scan().is_empty());
        assert_eq!(store.get(&id, 1024), Err(ReadError::Missing));
        // Nothing comes back after a restart: the removal is on disk.
        drop(store);
        assert!(ChunkStore::open(dir.path()).unwrap().scan().is_empty());
    }

    #[test]
    fn a_body_is_hashed_once_per_process_and_damage_found_before_it_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"written by an earlier run".to_vec();
        let id = ChunkId::of(&body);
        let store = ChunkStore::open(dir.path()).unwrap();
        store.put_batch(&[(id, &body)]).unwrap();
        flip_stored_byte(&store, &id, 0);
        drop(store);

        // A new process: nothing is trusted until hashed.
        let store = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&id, 1024), Err(ReadError::Damaged));

        // Intact: verified on the first read, then served from the verified set.
        store.put_batch(&[(id, &body)]).unwrap();
        drop(store);
        let store = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert!(store.memory().verified.contains(&id));
        // Too long for the caller's limit is refused even when verified.
        assert_eq!(store.get(&id, 4), Err(ReadError::Damaged));
    }

    /// `put_batch` over a chunk that is already stored hashes it before trusting it: a
    /// damaged one is replaced (and counted), an intact one is left alone.
    #[test]
    fn put_batch_over_a_stored_corrupt_body_rehashes_and_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"the chunk as signed".to_vec();
        let id = ChunkId::of(&body);
        let store = ChunkStore::open(dir.path()).unwrap();
        store.put_batch(&[(id, &body)]).unwrap();
        flip_stored_byte(&store, &id, 5);
        drop(store);
        let damage = Arc::new(DamageCount::default());
        let store = ChunkStore::open(dir.path()).unwrap().with_on_damage(damage.clone());

        store.put_batch(&[(id, &body)]).unwrap();
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert_eq!(damage.count(), 1);

        // Intact: not rewritten, not counted.
        let before = store.body_on_disk(&id).unwrap();
        drop(store);
        let store = ChunkStore::open(dir.path()).unwrap().with_on_damage(damage.clone());
        store.put_batch(&[(id, &body)]).unwrap();
        assert_eq!(store.body_on_disk(&id).unwrap(), before);
        assert_eq!(damage.count(), 1);
    }

    /// Sizing reads no body: staged chunks by their bytes, stored ones from the index.
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

    /// A store an older edge node wrote as one file per chunk is moved into packs at open:
    /// every chunk readable after, the old tree gone, nothing lost on a second open.
    #[test]
    fn a_file_per_chunk_store_is_moved_into_packs_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = layout::chunks_dir(dir.path());
        layout::prepare(&chunks, |_| true).unwrap();
        let bodies: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        for body in &bodies {
            fs::write(layout::chunk_path(&chunks, &ChunkId::of(body)), body).unwrap();
        }
        fs::write(layout::work_path(&layout::chunk_path(&chunks, &ChunkId::of(b"t")), "tmp"), b"partial").unwrap();

        let store = ChunkStore::open(dir.path()).unwrap();
        assert!(!chunks.exists());
        assert_eq!(store.scan().len(), bodies.len());
        for body in &bodies {
            assert_eq!(store.get(&ChunkId::of(body), 4096).unwrap(), *body);
        }
        drop(store);
        assert_eq!(ChunkStore::open(dir.path()).unwrap().scan().len(), bodies.len());
    }

    /// A data directory that is a seeder's repository keeps its chunk tree: only an edge
    /// store's old tree is moved.
    #[test]
    fn a_repository_chunk_tree_is_never_moved_into_packs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("metadata")).unwrap();
        let chunks = layout::chunks_dir(dir.path());
        layout::prepare(&chunks, |_| true).unwrap();
        let body = b"a repository chunk".to_vec();
        let path = layout::chunk_path(&chunks, &ChunkId::of(&body));
        fs::write(&path, &body).unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        assert!(store.scan().is_empty());
        assert_eq!(fs::read(&path).unwrap(), body);
    }

    /// The origin's store reads the seeder's file tree and never writes it.
    #[test]
    fn the_read_only_store_serves_the_file_tree_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = layout::chunks_dir(dir.path());
        layout::prepare(&chunks, |_| true).unwrap();
        let body = b"a release chunk".to_vec();
        let id = ChunkId::of(&body);
        fs::write(layout::chunk_path(&chunks, &id), &body).unwrap();
        let damage = Arc::new(DamageCount::default());
        let store = ChunkStore::open_read_only(dir.path()).with_on_damage(damage.clone());
        assert_eq!(store.len(&id), Some(body.len() as u64));
        assert_eq!(store.get(&id, 1024).unwrap(), body);
        assert_eq!(store.scan(), vec![(id, body.len() as u64)]);
        assert!(store.put_batch(&[(id, &body)]).is_err());

        // A damaged file is still deleted and counted, never served.
        let other = b"another chunk".to_vec();
        let other_id = ChunkId::of(&other);
        fs::write(layout::chunk_path(&chunks, &other_id), b"another chunK").unwrap();
        assert_eq!(store.get(&other_id, 1024), Err(ReadError::Damaged));
        assert!(!layout::chunk_path(&chunks, &other_id).exists());
        assert_eq!(damage.count(), 1);
    }
}
