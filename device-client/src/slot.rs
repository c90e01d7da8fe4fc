//! Slots and download progress on disk.
//!
//! A slot is a file or a block device; chunks are written at their image offsets, and a
//! chunk only counts as done once its bytes are synced and its bit is set in the progress
//! file (written temp, fsync, rename). So after a kill or power cut every bit set names a
//! chunk that is really in the slot, and no verified chunk is fetched twice.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use protocol::ReleaseId;

/// An open slot.
#[derive(Debug)]
pub struct SlotFile {
    file: File,
    path: PathBuf,
    /// One `pwrite` at a time. Chunks are decoded on several blocking threads, and the
    /// kernel serializes writes to one file on the inode lock anyway, spinning while the
    /// holder copies: on two cores that spin was 6 % of the agent's CPU in a QUIC install.
    /// A waiter here sleeps instead.
    writing: std::sync::Mutex<()>,
}

impl SlotFile {
    /// Opens `path` for writing an image of `image_len` bytes. A regular file is created and
    /// sized; a block device must already be large enough.
    pub fn open_for_write(path: &Path, image_len: u64) -> Result<SlotFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open slot {}", path.display()))?;
        let meta = file.metadata()?;
        if meta.file_type().is_block_device() {
            let size = block_device_size(&file)?;
            if size < image_len {
                bail!("slot {} holds {size} bytes, the image needs {image_len}", path.display());
            }
        } else if meta.len() != image_len {
            file.set_len(image_len).with_context(|| format!("cannot size slot {}", path.display()))?;
        }
        Ok(SlotFile { file, path: path.to_path_buf(), writing: std::sync::Mutex::new(()) })
    }

    /// Opens a slot read-only (the active slot, for chunk reuse).
    pub fn open_read(path: &Path) -> Result<SlotFile> {
        let file = File::open(path).with_context(|| format!("cannot open slot {}", path.display()))?;
        Ok(SlotFile { file, path: path.to_path_buf(), writing: std::sync::Mutex::new(()) })
    }

    /// Writes `bytes` at `offset`.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let _one_writer = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.file.write_all_at(bytes, offset).with_context(|| format!("writing slot {}", self.path.display()))
    }

    /// Reads exactly `len` bytes at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).with_context(|| format!("reading slot {}", self.path.display()))?;
        Ok(buf)
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().with_context(|| format!("syncing slot {}", self.path.display()))
    }
}

fn block_device_size(file: &File) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file.try_clone()?;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// The blake3 of the first `image_len` bytes of a slot: what the manifest says the whole
/// image hashes to, read back from the slot itself.
///
/// Only blake3: the manifest is signed (through TUF) and carries both blake3 and sha256,
/// and one cryptographic hash binds the slot to it. sha256 is in the manifest for
/// bootloaders and tools that only know sha256; computing it here too cost about a fifth of
/// the agent's CPU per install (scripts/bench-agent profile).
///
/// The download advances it over the slot's durable prefix as each commit lands, and its last
/// commit carries it to the image's end, so the check before the switch normally only
/// finalizes it. Hashed after the download instead, a GiB took 0.3 s of a 3.2 s install
/// (bench-agent), while during the download a core is partly idle. It reads the slot back
/// (through the page cache, as the check always did), never the bytes the download handed to
/// the writer, so chunks copied from the active slot are covered too.
pub struct ImageHasher {
    file: File,
    path: PathBuf,
    image_len: u64,
    hashed: u64,
    blake: blake3::Hasher,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ImageHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageHasher")
            .field("path", &self.path)
            .field("image_len", &self.image_len)
            .field("hashed", &self.hashed)
            .finish_non_exhaustive()
    }
}

/// Bytes read from the slot per step.
const HASH_READ_BYTES: usize = 1 << 20;

impl ImageHasher {
    /// Starts hashing the image of `image_len` bytes in the slot at `path`, from its first byte.
    pub fn open(path: &Path, image_len: u64) -> Result<ImageHasher> {
        let file = File::open(path).with_context(|| format!("cannot open slot {}", path.display()))?;
        Ok(ImageHasher {
            file,
            path: path.to_path_buf(),
            image_len,
            hashed: 0,
            blake: blake3::Hasher::new(),
            buf: Vec::new(),
        })
    }

    /// The slot it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image length it hashes to.
    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// Bytes hashed so far, from the image's start.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// Hashes the slot from where it stopped up to `end` (clamped to the image). Call it only
    /// over bytes that are final: they are read once, now.
    pub fn advance_to(&mut self, end: u64) -> Result<()> {
        let end = end.min(self.image_len);
        if self.buf.is_empty() && end > self.hashed {
            self.buf = vec![0; HASH_READ_BYTES];
        }
        while self.hashed < end {
            let n = (end - self.hashed).min(HASH_READ_BYTES as u64) as usize;
            self.file.read_exact_at(&mut self.buf[..n], self.hashed).with_context(|| {
                format!(
                    "reading slot {} at byte {} of the image's {}",
                    self.path.display(),
                    self.hashed,
                    self.image_len
                )
            })?;
            self.blake.update(&self.buf[..n]);
            self.hashed += n as u64;
        }
        Ok(())
    }

    /// Hashes the rest of the image and returns its blake3.
    pub fn finish(mut self) -> Result<[u8; 32]> {
        self.advance_to(self.image_len)?;
        Ok(*self.blake.finalize().as_bytes())
    }
}

const PROGRESS_MAGIC: &[u8; 4] = b"OTPG";

/// Which chunks of a target are durable in the inactive slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    release: ReleaseId,
    done: Vec<u64>,
    chunk_count: u32,
}

impl Progress {
    /// Nothing done yet for `release`.
    pub fn new(release: ReleaseId, chunk_count: u32) -> Progress {
        Progress { release, done: vec![0; (chunk_count as usize).div_ceil(64)], chunk_count }
    }

    /// The progress saved at `path` if it is for `release` and intact; otherwise fresh.
    pub fn load_or_new(path: &Path, release: ReleaseId, chunk_count: u32) -> Progress {
        Self::load(path).filter(|p| p.release == release && p.chunk_count == chunk_count).unwrap_or_else(|| {
            let _ = fs::remove_file(path);
            Progress::new(release, chunk_count)
        })
    }

    fn load(path: &Path) -> Option<Progress> {
        let bytes = fs::read(path).ok()?;
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != sum || body.get(..4)? != PROGRESS_MAGIC {
            return None;
        }
        let release = ReleaseId(body.get(4..36)?.try_into().ok()?);
        let chunk_count = u32::from_le_bytes(body.get(36..40)?.try_into().ok()?);
        let words = body.get(40..)?;
        if words.len() != (chunk_count as usize).div_ceil(64) * 8 {
            return None;
        }
        let done = words.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))).collect();
        Some(Progress { release, done, chunk_count })
    }

    /// Writes the progress durably (temp, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::with_capacity(40 + self.done.len() * 8 + 32);
        bytes.extend_from_slice(PROGRESS_MAGIC);
        bytes.extend_from_slice(&self.release.0);
        bytes.extend_from_slice(&self.chunk_count.to_le_bytes());
        for w in &self.done {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        Ok(host::fs::write_atomic(path, &bytes, host::fs::PUBLIC)?)
    }

    /// True if chunk `index` is durable.
    pub fn is_done(&self, index: u32) -> bool {
        self.done.get(index as usize / 64).is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Marks chunk `index` done (call only after its bytes are synced).
    pub fn mark(&mut self, index: u32) {
        if let Some(w) = self.done.get_mut(index as usize / 64) {
            *w |= 1 << (index % 64);
        }
    }

    /// The first chunk not done, or `None` once all are: chunks before it are the slot's
    /// durable prefix.
    pub fn first_missing(&self) -> Option<u32> {
        let (word, bits) = self.done.iter().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let index = (word * 64) as u32 + bits.trailing_ones();
        (index < self.chunk_count).then_some(index)
    }

    /// Chunks done.
    pub fn count(&self) -> u32 {
        self.done.iter().map(|w| w.count_ones()).sum()
    }

    /// The release this progress is for.
    pub fn release(&self) -> ReleaseId {
        self.release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_rejects_damage_or_other_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress");
        let mut p = Progress::new(ReleaseId([3; 32]), 130);
        for i in [0, 63, 64, 129] {
            p.mark(i);
        }
        p.save(&path).unwrap();
        let back = Progress::load_or_new(&path, ReleaseId([3; 32]), 130);
        assert_eq!(back, p);
        assert_eq!(back.count(), 4);
        assert!(back.is_done(129) && !back.is_done(128));
        assert_eq!(Progress::load_or_new(&path, ReleaseId([4; 32]), 130).count(), 0);
        p.save(&path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[45] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(Progress::load_or_new(&path, ReleaseId([3; 32]), 130).count(), 0);
    }

    #[test]
    fn first_missing_is_where_the_durable_prefix_ends() {
        let mut p = Progress::new(ReleaseId([3; 32]), 130);
        assert_eq!(p.first_missing(), Some(0));
        for i in (0..70).chain([71, 129]) {
            p.mark(i);
        }
        assert_eq!(p.first_missing(), Some(70));
        p.mark(70);
        assert_eq!(p.first_missing(), Some(72));
        for i in 72..129 {
            p.mark(i);
        }
        assert_eq!(p.first_missing(), None);
        let mut exact = Progress::new(ReleaseId([3; 32]), 128);
        (0..127).for_each(|i| exact.mark(i));
        assert_eq!(exact.first_missing(), Some(127));
        exact.mark(127);
        assert_eq!(exact.first_missing(), None);
        // Bits past the last chunk (a progress file may carry them) name no chunk.
        let mut stray = Progress::new(ReleaseId([3; 32]), 66);
        (0..65).chain([67, 100]).for_each(|i| stray.mark(i));
        assert_eq!(stray.first_missing(), Some(65));
        stray.mark(65);
        assert_eq!(stray.first_missing(), None);
    }

    /// Hashed in steps of any size, in any number of calls, the image hashes as it does in
    /// one piece; a slot shorter than the image is an error, not a short hash.
    #[test]
    fn an_image_hashed_in_steps_matches_one_hash_of_it_and_a_short_slot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let image: Vec<u8> = (0..(3 * HASH_READ_BYTES + 12_345)).map(|i| (i * 7 + i / 5000) as u8).collect();
        fs::write(&path, &image).unwrap();
        let whole = *blake3::hash(&image).as_bytes();
        assert_eq!(ImageHasher::open(&path, image.len() as u64).unwrap().finish().unwrap(), whole);
        let mut stepped = ImageHasher::open(&path, image.len() as u64).unwrap();
        for end in [0, 1, 1, 4096, 1_000_000, 500, HASH_READ_BYTES as u64 * 2 + 3, u64::MAX] {
            stepped.advance_to(end).unwrap();
            assert!(stepped.hashed() <= image.len() as u64);
        }
        assert_eq!(stepped.hashed(), image.len() as u64);
        assert_eq!(stepped.finish().unwrap(), whole);
        let prefix = ImageHasher::open(&path, 1000).unwrap().finish().unwrap();
        assert_eq!(prefix, *blake3::hash(&image[..1000]).as_bytes());
        let short = ImageHasher::open(&path, image.len() as u64 + 1).unwrap().finish();
        assert!(format!("{:#}", short.unwrap_err()).contains("reading slot"));
    }
}
