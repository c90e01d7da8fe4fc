//! Pack files: an edge node's chunk bodies appended to a few large files instead of one file
//! per chunk.
//!
//! Why: on a gateway's ext4, creating, renaming, stat-ing and opening one file per 64 KiB chunk
//! cost about as much CPU as the mesh's transport encryption (a profile of `scripts/bench-mesh`).
//! A batch is now appended (a `pwritev` per MiB) and `fdatasync`ed once; a read is one `pread`
//! on a file that stays open; sizing a chunk is a map lookup.
//!
//! Layout: `DIR/packs/<8 hex>.pack`, numbered in creation order. Each file is a sequence of
//! records, a [`HEADER_BYTES`] header then the body:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `OTPK` |
//! | 4..8 | state: `LIVE`, or `DEAD` once evicted |
//! | 8..12 | body length, little-endian, at most `MAX_CHUNK_BYTES` |
//! | 12..44 | chunk id (blake3 of the body) |
//! | 44..48 | zero |
//!
//! Crash safety: a batch's records are appended, then `fdatasync`ed, and only then enter the
//! index (until then the store serves them from memory). A crash mid-append leaves a torn
//! tail: a header whose body runs past the end of the file is cut off at open, and a body
//! that is present but wrong fails its hash on the first read, as any damaged body does, and
//! is dropped. A header that is not a header ends the readable part of its pack; the rest is
//! cut off (it can only be a torn append or damage; either way the cache refetches).
//!
//! Eviction marks the record `DEAD`, writes that mark to disk, then punches the body out of
//! the file, which frees the disk blocks at once (ext4, XFS, btrfs). The order matters: a
//! crash must not keep the punch and lose the mark, or a live header would sit over zeros.
//! A pack whose records are all dead is deleted. On a filesystem that cannot punch holes, a
//! dead body keeps its space until its whole pack dies.
//!
//! Readers never see a body change under them unnoticed: the index entry is removed before
//! the body is punched, and a reader checks after its `pread` that the entry it read from is
//! still the index's (see [`Packs::still_at`]).

use anyhow::{bail, Context, Result};
use protocol::chunker::limits::MAX_CHUNK_BYTES;
use protocol::ChunkId;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes of a record header.
pub const HEADER_BYTES: u64 = 48;
const MAGIC: &[u8; 4] = b"OTPK";
const LIVE: &[u8; 4] = b"LIVE";
const DEAD: &[u8; 4] = b"DEAD";
/// A pack stops taking appends once it is this long: large enough that a cache of tens of
/// GiB stays at a few hundred open files, small enough that a pack kept alive by a few
/// long-lived chunks on a filesystem without hole punching wastes little.
const PACK_TARGET_BYTES: u64 = 256 << 20;
/// Bytes written per `pwritev` before that piece's writeback is started.
const WRITE_PIECE_BYTES: u64 = 1 << 20;
/// Most slices per `pwritev` (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 1024;

/// Where a stored body lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The pack's number (its file name).
    pub pack: u32,
    /// Offset of the record's header in the pack.
    pub header_offset: u64,
    /// Body length.
    pub len: u32,
}

impl Location {
    fn body_offset(&self) -> u64 {
        self.header_offset + HEADER_BYTES
    }
}

#[derive(Debug)]
struct Pack {
    file: Arc<File>,
    /// Bytes written (the next append's offset).
    len: u64,
    /// Records in the index.
    live: u32,
    /// Records written but not yet indexed (their append is syncing): a pack with any is
    /// not deleted, even if nothing in it is live yet.
    unindexed: u32,
    /// A sync of this pack failed. Linux reports a writeback error to one `fdatasync` only,
    /// whichever append's pages it came from, so after one nothing more written to the pack
    /// is indexed: it takes no appends, and what is still syncing fails.
    poisoned: bool,
}

#[derive(Debug, Default)]
struct State {
    index: HashMap<ChunkId, Location>,
    packs: BTreeMap<u32, Pack>,
    /// The pack taking appends, if any.
    active: Option<u32>,
    /// The number the next new pack gets: numbers are never reused while the store is open,
    /// so a deleted pack's number cannot name another file.
    next_number: u32,
}

/// The pack files under one directory and the index of what they hold.
#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    /// Where a pack stops taking appends ([`PACK_TARGET_BYTES`] outside tests).
    target_bytes: u64,
    /// Opened to look, not to write: nothing is cut off, deleted or appended (another
    /// process, the edge node, may be writing).
    read_only: bool,
    state: Mutex<State>,
    /// Held while an append writes, so records follow each other in the order their appends
    /// took it.
    appending: Mutex<()>,
    /// Held for one `fdatasync` and what its result decides (see `Pack::poisoned`), so a
    /// writeback error reaches the pack's state before any later sync can succeed.
    syncing: Mutex<()>,
}

/// The file name of pack `number`.
fn pack_name(number: u32) -> String {
    format!("{number:08x}.pack")
}

/// The number a pack file name stands for: exactly [`pack_name`]'s form (eight lowercase
/// hex digits), so no two names can stand for one pack.
fn pack_number(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 8 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

fn header(id: &ChunkId, len: u32) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(LIVE);
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..44].copy_from_slice(&id.0);
    h
}

/// A header as read from disk: `None` if it is not one (bad magic or state, or a length no
/// chunk may have).
fn parse_header(h: &[u8; HEADER_BYTES as usize]) -> Option<(ChunkId, u32, bool)> {
    if &h[0..4] != MAGIC {
        return None;
    }
    let live = match &h[4..8] {
        s if s == LIVE => true,
        s if s == DEAD => false,
        _ => return None,
    };
    let len = u32::from_le_bytes(h[8..12].try_into().ok()?);
    if len > MAX_CHUNK_BYTES {
        return None;
    }
    Some((ChunkId(h[12..44].try_into().ok()?), len, live))
}

impl Packs {
    /// Opens (creating) the packs under `dir`, indexing every live record and cutting off
    /// torn tails (see the module doc).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, PACK_TARGET_BYTES, false)
    }

    /// Opens the packs under `dir` to read them while their owner may be appending: records
    /// past a torn tail are left alone, and [`Packs::append`] and [`Packs::remove`] refuse.
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        Self::open_with(dir, PACK_TARGET_BYTES, true)
    }

    fn open_with(dir: &Path, target_bytes: u64, read_only: bool) -> Result<Self> {
        if !read_only {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut state = State::default();
        let mut numbers: Vec<u32> = fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .flatten()
            .filter_map(|e| pack_number(&e.file_name().to_string_lossy()))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        for number in numbers {
            let path = dir.join(pack_name(number));
            let file = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let (len, records) = read_records(&file, &path, read_only)?;
            let mut live = 0;
            for (id, location) in records {
                let location = Location { pack: number, ..location };
                // A chunk written twice (two appends of it at once, or an append before a
                // crash lost the eviction of the other) is served from its first record; the
                // later one is dead weight.
                if let std::collections::hash_map::Entry::Vacant(slot) = state.index.entry(id) {
                    slot.insert(location);
                    live += 1;
                }
            }
            state.next_number = number.saturating_add(1);
            if live == 0 && !read_only {
                drop(file);
                fs::remove_file(&path).with_context(|| format!("cannot delete the empty pack {}", path.display()))?;
                continue;
            }
            state.packs.insert(number, Pack { file: Arc::new(file), len, live, unindexed: 0, poisoned: false });
        }
        Ok(Packs {
            dir: dir.to_path_buf(),
            target_bytes,
            read_only,
            state: Mutex::new(state),
            appending: Mutex::new(()),
            syncing: Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain maps; a panic while holding it cannot leave them torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where `id`'s body lies, if stored.
    pub fn location(&self, id: &ChunkId) -> Option<Location> {
        self.state().index.get(id).copied()
    }

    /// The path of pack `number` (for operators and tests that inspect a store).
    pub fn pack_path(&self, number: u32) -> PathBuf {
        self.dir.join(pack_name(number))
    }

    /// Whether `id` is still stored at `location`: a read checks this after its `pread`, so
    /// a body evicted (and punched to zeros) meanwhile reads as missing, not as damaged.
    pub fn still_at(&self, id: &ChunkId, location: Location) -> bool {
        self.state().index.get(id) == Some(&location)
    }

    /// Reads `id`'s body if its stored length is at most `max_len`. `Err(len)` gives the
    /// stored length when it is longer (the caller treats that as damage).
    pub fn read(&self, id: &ChunkId, max_len: u64) -> Option<(Location, Result<Vec<u8>, u64>)> {
        let (location, file) = {
            let state = self.state();
            let location = *state.index.get(id)?;
            (location, state.packs.get(&location.pack)?.file.clone())
        };
        if u64::from(location.len) > max_len {
            return Some((location, Err(u64::from(location.len))));
        }
        let mut body = Vec::new();
        body.try_reserve_exact(location.len as usize).ok()?;
        body.resize(location.len as usize, 0);
        match file.read_exact_at(&mut body, location.body_offset()) {
            Ok(()) => Some((location, Ok(body))),
            // A pack cut short behind our back: the body is not all there.
            Err(_) => Some((location, Err(u64::from(location.len)))),
        }
    }

    /// Appends chunks not stored yet and makes them durable, then indexes them. Returns once
    /// every one is on disk.
    pub fn append(&self, chunks: &[(ChunkId, &[u8])]) -> Result<()> {
        if self.read_only {
            bail!("the packs in {} are open read-only", self.dir.display());
        }
        let mut pending: Vec<(ChunkId, &[u8])> = Vec::with_capacity(chunks.len());
        {
            let state = self.state();
            let mut seen = std::collections::HashSet::with_capacity(chunks.len());
            for (id, bytes) in chunks {
                if !state.index.contains_key(id) && seen.insert(*id) {
                    if bytes.len() > MAX_CHUNK_BYTES as usize {
                        bail!("chunk {id} is {} bytes, over the {MAX_CHUNK_BYTES}-byte limit", bytes.len());
                    }
                    pending.push((*id, bytes));
                }
            }
        }
        // Written under the append lock, so records follow each other in the order their
        // appends took it; synced outside it, so one append's `fdatasync` overlaps the next
        // one's write. A sync flushes the whole file, so a synced record never follows an
        // unsynced one: after a crash the durable records are a prefix of the pack.
        let mut written: Vec<(u32, Arc<File>, u64, std::ops::Range<usize>)> = Vec::new();
        let appending = self.appending.lock().unwrap_or_else(|e| e.into_inner());
        let wrote = self.write_records(&pending, &mut written);
        drop(appending);
        // Readers only see records once indexed, after the sync.
        // After a failed write nothing of this append is synced or indexed; the counts of
        // what it wrote are settled below all the same.
        let failed_write = wrote.err();
        let synced: Vec<bool> = written
            .iter()
            .map(|(number, file, _, _)| failed_write.is_none() && self.sync(*number, file).is_ok())
            .collect();
        let mut state = self.state();
        for ((number, _, offset, range), synced) in written.into_iter().zip(&synced) {
            let index = *synced && state.packs.get(&number).is_some_and(|p| !p.poisoned);
            let mut at = offset;
            let mut added = 0;
            for (id, body) in &pending[range.clone()] {
                let location = Location { pack: number, header_offset: at, len: body.len() as u32 };
                at += HEADER_BYTES + body.len() as u64;
                // A chunk appended twice at once keeps its first record; the other is dead
                // weight, as after a crash.
                if index {
                    if let std::collections::hash_map::Entry::Vacant(slot) = state.index.entry(*id) {
                        slot.insert(location);
                        added += 1;
                    }
                }
            }
            if let Some(pack) = state.packs.get_mut(&number) {
                pack.unindexed -= range.len() as u32;
                pack.live += added;
            }
        }
        drop(state);
        if let Some(e) = failed_write {
            return Err(e);
        }
        if synced.contains(&false) {
            bail!("cannot sync the pack files in {}; the chunks are not stored", self.dir.display());
        }
        Ok(())
    }

    /// Writes `pending` after the active pack's last record (starting new packs as they
    /// fill), noting each pack's part in `written`, with the part's records counted as
    /// unindexed. On an error the parts already written stay in `written`, so the caller
    /// settles their counts.
    fn write_records(
        &self,
        pending: &[(ChunkId, &[u8])],
        written: &mut Vec<(u32, Arc<File>, u64, std::ops::Range<usize>)>,
    ) -> Result<()> {
        let mut start = 0;
        while start < pending.len() {
            let (number, file, offset) = self.active_pack()?;
            let mut end = start;
            let mut bytes = 0u64;
            while end < pending.len() && (end == start || offset + bytes < self.target_bytes) {
                bytes += HEADER_BYTES + pending[end].1.len() as u64;
                end += 1;
            }
            // Counted before the write, so an error after a partial write settles it too.
            if let Some(pack) = self.state().packs.get_mut(&number) {
                pack.unindexed += (end - start) as u32;
            }
            written.push((number, file.clone(), offset, start..end));
            let part = &pending[start..end];
            let headers: Vec<[u8; HEADER_BYTES as usize]> =
                part.iter().map(|(id, body)| header(id, body.len() as u32)).collect();
            // Written a piece at a time, each piece's writeback started at once: the disk
            // works while the next piece is copied, as it did for one file per chunk.
            let mut piece_offset = offset;
            let mut slices = Vec::new();
            let mut piece_bytes = 0u64;
            for (i, ((_, body), h)) in part.iter().zip(&headers).enumerate() {
                slices.push(IoSlice::new(h));
                slices.push(IoSlice::new(body));
                piece_bytes += HEADER_BYTES + body.len() as u64;
                if piece_bytes >= WRITE_PIECE_BYTES || i + 1 == part.len() {
                    if let Err(e) = write_all_vectored_at(&file, &mut slices, piece_offset) {
                        // Whatever part of it reached the file is never indexed; the pack
                        // takes no more appends, so nothing follows a half-written record.
                        let mut state = self.state();
                        if let Some(pack) = state.packs.get_mut(&number) {
                            pack.poisoned = true;
                        }
                        state.active = None;
                        return Err(e)
                            .with_context(|| format!("cannot append to {}", self.pack_path(number).display()));
                    }
                    start_writeback(&file, piece_offset, piece_bytes);
                    piece_offset += piece_bytes;
                    piece_bytes = 0;
                    slices.clear();
                }
            }
            let mut state = self.state();
            if let Some(pack) = state.packs.get_mut(&number) {
                pack.len = offset + bytes;
            }
            if offset + bytes >= self.target_bytes {
                state.active = None;
            }
            start = end;
        }
        Ok(())
    }

    /// `fdatasync`s pack `number`; a failure poisons it (see `Pack::poisoned`).
    fn sync(&self, number: u32, file: &File) -> Result<()> {
        let _syncing = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let synced = file.sync_data();
        if let Err(e) = &synced {
            tracing::warn!(pack = %self.pack_path(number).display(), "sync failed ({e}); the pack takes no more chunks");
            let mut state = self.state();
            if let Some(pack) = state.packs.get_mut(&number) {
                pack.poisoned = true;
            }
            if state.active == Some(number) {
                state.active = None;
            }
        }
        synced.with_context(|| format!("cannot sync {}", self.pack_path(number).display()))
    }

    /// The pack taking appends (a new one if none is), with its file and end offset. Only
    /// called with the append lock held.
    fn active_pack(&self) -> Result<(u32, Arc<File>, u64)> {
        let mut state = self.state();
        if let Some(number) = state.active {
            if let Some(pack) = state.packs.get(&number) {
                return Ok((number, pack.file.clone(), pack.len));
            }
        }
        let number = state.next_number;
        state.next_number = number.checked_add(1).context("pack numbers are used up")?;
        // Created outside the lock, so reads do not wait for the directory sync; only
        // appends (one at a time) create packs.
        drop(state);
        let path = self.pack_path(number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // The new name durable before any record in it is indexed.
        host::fs::sync_dir(&self.dir)?;
        let file = Arc::new(file);
        let mut state = self.state();
        state.packs.insert(number, Pack { file: file.clone(), len: 0, live: 0, unindexed: 0, poisoned: false });
        state.active = Some(number);
        Ok((number, file, 0))
    }

    /// Drops `id`: out of the index first, then its record marked dead and its body punched
    /// out (or its whole pack deleted when nothing in it is live). Returns whether it was
    /// stored.
    pub fn remove(&self, id: &ChunkId) -> Result<bool> {
        self.remove_where(id, None)
    }

    /// Drops `id` only if it is still stored at `location`: what a reader that found the
    /// body there damaged deletes, so a copy written again meanwhile is left alone.
    pub fn remove_if_at(&self, id: &ChunkId, location: Location) -> Result<bool> {
        self.remove_where(id, Some(location))
    }

    fn remove_where(&self, id: &ChunkId, expected: Option<Location>) -> Result<bool> {
        if self.read_only {
            bail!("the packs in {} are open read-only", self.dir.display());
        }
        let (location, file, pack_dead) = {
            let mut state = self.state();
            match (state.index.get(id), expected) {
                (None, _) => return Ok(false),
                (Some(current), Some(expected)) if *current != expected => return Ok(false),
                _ => {}
            }
            let Some(location) = state.index.remove(id) else { return Ok(false) };
            let active = state.active;
            let Some(pack) = state.packs.get_mut(&location.pack) else { return Ok(true) };
            pack.live = pack.live.saturating_sub(1);
            let file = pack.file.clone();
            let pack_dead = pack.live == 0 && pack.unindexed == 0 && active != Some(location.pack);
            if pack_dead {
                state.packs.remove(&location.pack);
            }
            (location, file, pack_dead)
        };
        if pack_dead {
            let path = self.pack_path(location.pack);
            // Readers holding the file keep reading it until they close it.
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot delete {}", path.display()))
                }
                _ => Ok(true),
            };
        }
        file.write_all_at(DEAD, location.header_offset + 4)
            .with_context(|| format!("cannot mark a record dead in {}", self.pack_path(location.pack).display()))?;
        // The mark reaches the disk before the hole is punched: the punch is journaled and
        // could outlive a crash that loses an unwritten mark, leaving a live header over a
        // zeroed body, which the next read would count as damage.
        if write_and_wait(&file, location.header_offset, HEADER_BYTES) {
            punch_hole(&file, location.body_offset(), u64::from(location.len));
        }
        Ok(true)
    }

    /// Every stored chunk's id and length, sorted by id.
    pub fn list(&self) -> Vec<(ChunkId, u64)> {
        let mut out: Vec<(ChunkId, u64)> =
            self.state().index.iter().map(|(id, location)| (*id, u64::from(location.len))).collect();
        out.sort();
        out
    }

    /// How many pack files there are (for tests and metrics).
    pub fn pack_count(&self) -> usize {
        self.state().packs.len()
    }
}

/// Reads a pack's headers in order: the live records and the length of the readable part.
///
/// Bytes that are not a whole record (damage, or a header over a torn body) are skipped to
/// the next whole record, so one bad header does not cost the records after it. A torn tail
/// (nothing whole after it) is cut off so the file ends on a record. A read error ends the
/// pack where it is, cutting nothing. Read-only, nothing is cut.
fn read_records(file: &File, path: &Path, read_only: bool) -> Result<(u64, Vec<(ChunkId, Location)>)> {
    let file_len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let mut records = Vec::new();
    let mut at = 0u64;
    while at + HEADER_BYTES <= file_len {
        match record_at(file, at, file_len) {
            Ok(Some((id, len, live))) => {
                if live {
                    records.push((id, Location { pack: 0, header_offset: at, len }));
                }
                at += HEADER_BYTES + u64::from(len);
            }
            Ok(None) => match next_record(file, at + 1, file_len) {
                Some(next) => {
                    tracing::warn!(pack = %path.display(), from = at, skipped = next - at, "bytes that are not a record skipped");
                    at = next;
                }
                None => break,
            },
            Err(e) => {
                tracing::warn!(pack = %path.display(), at, "cannot read the pack past here ({e}); its later records are not used");
                return Ok((file_len, records));
            }
        }
    }
    if at < file_len && !read_only {
        tracing::warn!(pack = %path.display(), kept = at, cut = file_len - at, "pack ends in a torn record; cut off");
        file.set_len(at).with_context(|| format!("cannot cut the torn tail off {}", path.display()))?;
        file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    }
    Ok((at, records))
}

/// The record whose header is at `at`, if a whole one is there.
fn record_at(file: &File, at: u64, file_len: u64) -> std::io::Result<Option<(ChunkId, u32, bool)>> {
    let mut h = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut h, at)?;
    Ok(parse_header(&h).filter(|(_, len, _)| at + HEADER_BYTES + u64::from(*len) <= file_len))
}

/// The offset of the next whole record at or after `from`, searching for the magic.
fn next_record(file: &File, from: u64, file_len: u64) -> Option<u64> {
    const WINDOW: u64 = 1 << 20;
    let mut buf = vec![0u8; WINDOW as usize];
    let mut pos = from;
    while pos + HEADER_BYTES <= file_len {
        let n = WINDOW.min(file_len - pos) as usize;
        file.read_exact_at(&mut buf[..n], pos).ok()?;
        for (i, window) in buf[..n].windows(MAGIC.len()).enumerate() {
            if window == MAGIC && matches!(record_at(file, pos + i as u64, file_len), Ok(Some(_))) {
                return Some(pos + i as u64);
            }
        }
        if n < WINDOW as usize {
            break;
        }
        // Overlap by the magic's length less one, so a magic across the edge is found.
        pos += WINDOW - (MAGIC.len() as u64 - 1);
    }
    None
}

/// `pwritev` until every slice is written (the kernel may write fewer bytes than asked).
fn write_all_vectored_at(file: &File, mut slices: &mut [IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !slices.is_empty() {
        let count = slices.len().min(MAX_IOVECS);
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the slices borrow live buffers
        // for the duration of the call and the descriptor is open.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr() as *const libc::iovec,
                count as libc::c_int,
                offset as libc::off_t,
            )
        };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += written as u64;
        IoSlice::advance_slices(&mut slices, written as usize);
    }
    Ok(())
}

/// Starts writing a just-appended range to disk without waiting, so the disk works while the
/// next append is written and the `fdatasync` finds most of it done, instead of the whole
/// group's bytes being issued at once when it is called. A failure only loses the head
/// start; `fdatasync` still decides.
fn start_writeback(file: &File, offset: u64, len: u64) {
    sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
}

/// Writes a range's dirty pages to disk and waits for them (no journal commit: the punch's
/// commit that follows flushes the disk's cache). Whether it succeeded.
fn write_and_wait(file: &File, offset: u64, len: u64) -> bool {
    sync_range(
        file,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

/// `sync_file_range` on `file`; whether it succeeded.
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor number and the range; `file` keeps
    // it open.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) == 0 }
}

/// Frees a dead body's disk blocks; the file keeps its length. Best effort: a filesystem
/// without hole punching keeps the bytes until the pack is deleted.
fn punch_hole(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    // SAFETY: fallocate only reads the descriptor number and the range; `file` keeps it open.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn body(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn put(packs: &Packs, bodies: &[Vec<u8>]) -> Vec<ChunkId> {
        let chunks: Vec<(ChunkId, &[u8])> = bodies.iter().map(|b| (ChunkId::of(b), b.as_slice())).collect();
        packs.append(&chunks).unwrap();
        chunks.iter().map(|(id, _)| *id).collect()
    }

    impl Packs {
        fn pack_file(&self, number: u32) -> Arc<File> {
            self.state().packs[&number].file.clone()
        }
    }

    fn read(packs: &Packs, id: &ChunkId) -> Option<Vec<u8>> {
        packs.read(id, u64::from(MAX_CHUNK_BYTES)).and_then(|(_, r)| r.ok())
    }

    #[test]
    fn records_survive_a_reopen_and_a_second_copy_is_not_indexed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let bodies: Vec<Vec<u8>> = (0..5).map(|i| body(i, 1000 * usize::from(i) + 1)).collect();
        let packs = Packs::open(dir.path()).unwrap();
        let ids = put(&packs, &bodies);
        put(&packs, &bodies[..2]);
        drop(packs);
        let packs = Packs::open(dir.path()).unwrap();
        assert_eq!(packs.list().len(), 5);
        for (id, b) in ids.iter().zip(&bodies) {
            assert_eq!(read(&packs, id).as_ref(), Some(b));
        }
    }

    /// A crash mid-append leaves a header whose body runs past the end, or bytes that are not
    /// a header: both are cut off at open, and appends continue after the last whole record.
    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue_after_it() {
        for tail in [&header(&ChunkId::of(b"torn"), 4096)[..], &b"garbage that is not a record header at all, 48 b"[..]]
        {
            let dir = tempfile::tempdir().unwrap();
            let packs = Packs::open(dir.path()).unwrap();
            let first = body(1, 3000);
            let ids = put(&packs, std::slice::from_ref(&first));
            let path = packs.pack_path(0);
            drop(packs);
            let whole = fs::metadata(&path).unwrap().len();
            let file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all_at(tail, whole).unwrap();
            file.write_all_at(&[7u8; 100], whole + tail.len() as u64).unwrap();

            let packs = Packs::open(dir.path()).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), whole);
            assert_eq!(packs.list(), vec![(ids[0], first.len() as u64)]);
            let second = body(2, 500);
            let more = put(&packs, std::slice::from_ref(&second));
            drop(packs);
            let packs = Packs::open(dir.path()).unwrap();
            assert_eq!(read(&packs, &ids[0]), Some(first));
            assert_eq!(read(&packs, &more[0]), Some(second));
        }
    }

    /// A damaged header in the middle of a pack costs its own record, not the ones after it.
    #[test]
    fn a_bad_header_mid_pack_is_skipped_to_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let bodies: Vec<Vec<u8>> = (0..3).map(|i| body(i, 5000)).collect();
        let ids = put(&packs, &bodies);
        let second = packs.location(&ids[1]).unwrap();
        let whole = fs::metadata(packs.pack_path(0)).unwrap().len();
        packs.pack_file(0).write_all_at(b"XXXX", second.header_offset).unwrap();
        drop(packs);

        let packs = Packs::open(dir.path()).unwrap();
        let mut expected = vec![(ids[0], 5000), (ids[2], 5000)];
        expected.sort();
        assert_eq!(packs.list(), expected);
        assert_eq!(read(&packs, &ids[2]), Some(bodies[2].clone()));
        assert_eq!(fs::metadata(packs.pack_path(0)).unwrap().len(), whole, "nothing cut");
    }

    /// Eviction frees the body's disk blocks at once, survives a reopen, and deletes a pack
    /// once nothing in it is live.
    #[test]
    fn eviction_punches_the_body_out_and_deletes_dead_packs() {
        let dir = tempfile::tempdir().unwrap();
        // A small target: every append after the first 1 MiB starts a new pack.
        let packs = Packs::open_with(dir.path(), 1 << 20, false).unwrap();
        let big: Vec<Vec<u8>> = (0..4).map(|i| body(i, 512 << 10)).collect();
        let ids = put(&packs, &big);
        assert_eq!(packs.pack_count(), 2);
        let later = put(&packs, &[body(9, 1000)]);
        assert_eq!(packs.pack_count(), 3);

        let path = packs.pack_path(0);
        let blocks = fs::metadata(&path).unwrap().blocks();
        assert!(packs.remove(&ids[0]).unwrap());
        assert!(!packs.remove(&ids[0]).unwrap());
        let punched = fs::metadata(&path).unwrap().blocks();
        assert!(punched < blocks, "a punched body frees its blocks ({blocks} -> {punched} sectors)");
        assert_eq!(read(&packs, &ids[0]), None);

        // The other record in pack 0 still reads; once it goes, so does the pack.
        assert_eq!(read(&packs, &ids[1]).as_ref(), Some(&big[1]));
        packs.remove(&ids[1]).unwrap();
        assert!(!path.exists());
        drop(packs);

        let packs = Packs::open(dir.path()).unwrap();
        let mut left: Vec<ChunkId> = vec![ids[2], ids[3], later[0]];
        left.sort();
        assert_eq!(packs.list().into_iter().map(|(id, _)| id).collect::<Vec<_>>(), left);
    }

    /// A reader that found a record checks it is still the index's after its read: an
    /// eviction (or a rewrite elsewhere) in between makes the bytes it read not the chunk's.
    #[test]
    fn a_record_evicted_after_it_was_looked_up_is_no_longer_current() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let b = body(3, 4000);
        let id = put(&packs, std::slice::from_ref(&b))[0];
        let (location, read) = packs.read(&id, 1 << 20).unwrap();
        assert_eq!(read.unwrap(), b);
        assert!(packs.still_at(&id, location));
        packs.remove(&id).unwrap();
        assert!(!packs.still_at(&id, location));
        put(&packs, std::slice::from_ref(&b));
        assert!(!packs.still_at(&id, location), "written again elsewhere");
    }

    /// Looking at packs another process is writing changes nothing, not even a torn tail.
    #[test]
    fn read_only_packs_leave_the_files_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let b = body(5, 2000);
        let id = put(&packs, std::slice::from_ref(&b))[0];
        let path = packs.pack_path(0);
        let whole = fs::metadata(&path).unwrap().len();
        packs.pack_file(0).write_all_at(&header(&ChunkId::of(b"half-written"), 1000), whole).unwrap();

        let look = Packs::open_read_only(dir.path()).unwrap();
        assert_eq!(look.list(), vec![(id, b.len() as u64)]);
        assert_eq!(read(&look, &id), Some(b.clone()));
        assert!(look.append(&[(ChunkId::of(b"x"), b"x")]).is_err());
        assert!(look.remove(&id).is_err());
        assert_eq!(fs::metadata(&path).unwrap().len(), whole + HEADER_BYTES);
        assert_eq!(read(&packs, &id), Some(b));
    }

    #[test]
    fn a_stored_length_over_the_limit_is_reported_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let id = put(&packs, &[body(4, 100)])[0];
        assert_eq!(packs.read(&id, 99).unwrap().1, Err(100));
        assert!(packs.append(&[(ChunkId::of(b"x"), &vec![0u8; MAX_CHUNK_BYTES as usize + 1])]).is_err());
    }

    #[test]
    fn only_pack_names_are_packs() {
        assert_eq!(pack_number("0000002a.pack"), Some(42));
        assert_eq!(pack_number(&pack_name(7)), Some(7));
        for name in ["2a.pack", "0000002a.pack.tmp", "0000002g.pack", "0000002A.pack", "+000002a.pack", "index.sled"] {
            assert_eq!(pack_number(name), None, "{name}");
        }
    }
}
