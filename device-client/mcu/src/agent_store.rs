//! The agent's persisted state (install record, pinned trust anchor, chunk progress) in the
//! AGENT partition, safe against a power cut at any flash operation.
//!
//! Why two slots: NOR must be erased before it is rewritten, and an erase destroys the only
//! copy. The partition is split into two equal slots; a save erases and writes the slot that
//! does *not* hold the newest state, with a sequence number one higher, and the slot counts
//! only once its commit block (a blake3 hash of the body) is written, last. On open, the
//! valid slot with the highest sequence wins. A cut before the commit leaves the old slot
//! newest; a cut after it leaves the new one; the older slot is never touched by a save.
//!
//! Slot format (fixed offsets, all multiples of [`crate::layout::MAX_WRITE_SIZE`]):
//!
//! ```text
//! 0    body   magic "OTAS" | format u8 | 0 u8 | anchor_len u16 | sequence u64 |
//!             chunk_count u32 | record [RECORD_BYTES] | anchor [MAX_ANCHOR_BYTES] |
//!             target image sha256 [32] | report seq u64 | report unsent u8 |
//!             rollout id len u8 | install release id [32] | install started i64 |
//!             rollout id [64] | zero pad
//! 960  commit blake3(body) [32]
//! 992  bitmap [128], inverted: an erased 1 bit means "not done", 0 means "done"
//! ```
//!
//! Format 2 added the report state; format 1 was never shipped to a device.
//!
//! The bitmap lies outside the hash because it changes in place: marking a chunk clears one
//! bit, which NOR allows without an erase. A cut during a mark loses at most that mark (the
//! chunk is fetched again). The install engine hashes the whole image before it installs,
//! so a wrongly set bit can cost a retry, never a bad install.
//!
//! Caveat: a mark re-programs a write unit that may already hold cleared bits. Plain NOR
//! (STM32F4/F7, the host's `FileFlash`) allows that; flashes with per-word ECC (STM32L4/G4/H7)
//! refuse it, and would need one write unit per chunk instead.

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use protocol::install::{Record, RecordError, RECORD_BYTES};
use protocol::seal::{TrustAnchor, MAX_ANCHOR_BYTES};

use crate::layout::MAX_WRITE_SIZE;
use crate::progress::{ChunkOutOfRange, ChunkProgress, BITMAP_BYTES};

const MAGIC: [u8; 4] = *b"OTAS";
const FORMAT: u8 = 2;
const ALIGN: usize = MAX_WRITE_SIZE as usize;
const RECORD_AT: usize = 20;
const ANCHOR_AT: usize = RECORD_AT + RECORD_BYTES;
const TARGET_SHA256_AT: usize = ANCHOR_AT + MAX_ANCHOR_BYTES;
const REPORT_AT: usize = TARGET_SHA256_AT + 32;
const BODY_BYTES: usize = round_up(REPORT_AT + REPORT_BYTES, ALIGN);
const COMMIT_AT: usize = BODY_BYTES;
const BITMAP_AT: usize = COMMIT_AT + ALIGN;
/// Bytes one slot needs; each of the two slots is at least this, rounded up to erase pages.
pub const SLOT_BYTES: usize = BITMAP_AT + round_up(BITMAP_BYTES, ALIGN);

const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Everything the agent keeps across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    /// The install engine's record.
    pub record: Record,
    /// The pinned trust anchor; `None` before provisioning.
    pub anchor: Option<TrustAnchor>,
    /// Which chunks of the target are verified in DFU.
    pub progress: ChunkProgress,
    /// sha256 of the target's whole image (zero without a target): after a reset during a
    /// trial, whether ACTIVE holds it tells a commit from a rollback (embassy-boot's state
    /// alone cannot, see `crate::agent`).
    pub target_sha256: [u8; 32],
    /// Status reports: their number and whether the newest is still unacknowledged.
    pub report: ReportState,
}

/// Longest rollout id kept for reports (the policy format's own limit).
pub const MAX_ROLLOUT_ID_BYTES: usize = protocol::rollout::policy::limits::MAX_ID_BYTES;
const REPORT_BYTES: usize = 8 + 1 + 1 + 32 + 8 + MAX_ROLLOUT_ID_BYTES;

/// What the agent keeps for its status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportState {
    /// The last report number used: edge nodes refuse a number they have seen, so it must
    /// survive resets.
    pub seq: u64,
    /// The newest report was not acknowledged by any edge: send it (anew) on the next run.
    pub unsent: bool,
    /// The install the reports' rollout fields are about.
    pub install: Option<InstallMark>,
}

/// The install started under a rollout: reports name its rollout until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallMark {
    id: [u8; MAX_ROLLOUT_ID_BYTES],
    id_len: u8,
    /// The release being installed.
    pub release: protocol::ReleaseId,
    /// When the download started (unix seconds, the device's clock).
    pub started_unix: i64,
}

impl InstallMark {
    /// A mark for `rollout` (`None` if the id is empty or longer than the policy allows).
    pub fn new(rollout: &str, release: protocol::ReleaseId, started_unix: i64) -> Option<InstallMark> {
        if rollout.is_empty() || rollout.len() > MAX_ROLLOUT_ID_BYTES {
            return None;
        }
        let mut id = [0u8; MAX_ROLLOUT_ID_BYTES];
        id[..rollout.len()].copy_from_slice(rollout.as_bytes());
        Some(InstallMark { id, id_len: rollout.len() as u8, release, started_unix })
    }

    /// The rollout id.
    pub fn rollout(&self) -> &str {
        core::str::from_utf8(&self.id[..self.id_len as usize]).unwrap_or("")
    }
}

/// Why a store operation failed. Corrupt slots are not errors: they are skipped on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The flash driver failed (on the host this includes an injected power cut).
    Flash(NorFlashErrorKind),
    /// The partition cannot hold two erase-aligned slots of [`SLOT_BYTES`], or the flash's
    /// write size does not divide the format's alignment.
    Geometry,
    /// A chunk index past the progress's chunk count.
    Chunk(ChunkOutOfRange),
    /// A chunk was marked before any state was saved.
    NothingSaved,
    /// A mark was asked for a chunk count other than the one saved (save the new target first).
    ProgressMismatch,
}

impl From<ChunkOutOfRange> for StoreError {
    fn from(e: ChunkOutOfRange) -> Self {
        StoreError::Chunk(e)
    }
}

/// Why a slot was skipped on open; kept for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    /// Erased or never written: no magic.
    Empty,
    /// Magic present but the format byte is unknown.
    Format,
    /// The commit hash does not match: a torn save.
    Checksum,
    /// A length field out of bounds.
    Bounds,
    /// The record inside does not decode.
    Record(RecordError),
    /// The anchor inside does not decode.
    Anchor,
}

#[derive(Debug, Clone, Copy)]
struct Newest {
    slot: u32,
    sequence: u64,
    chunk_count: u32,
}

/// The two-slot store over the AGENT partition (offset 0 of `F` is the partition's start).
pub struct AgentStore<F> {
    flash: F,
    slot_bytes: u32,
    newest: Option<Newest>,
}

fn flash_err<E: NorFlashError>(e: E) -> StoreError {
    StoreError::Flash(e.kind())
}

impl<F: NorFlash> AgentStore<F> {
    /// Opens the store and returns the newest valid state, or `None` on a fresh partition.
    ///
    /// Never inlined: its slot buffer and parsed copies take about 5 KiB of stack, which an
    /// async caller would otherwise carry in the frame of every poll (the deepest one, the
    /// signature checks, included).
    #[inline(never)]
    pub fn open(mut flash: F) -> Result<(AgentStore<F>, Option<AgentState>), StoreError> {
        let write = F::WRITE_SIZE;
        let capacity = flash.capacity();
        let slot_bytes = capacity / 2;
        if write == 0
            || !ALIGN.is_multiple_of(write)
            || F::READ_SIZE == 0
            || write % F::READ_SIZE != 0
            || !capacity.is_multiple_of(2)
            || !slot_bytes.is_multiple_of(F::ERASE_SIZE)
            || slot_bytes < SLOT_BYTES
            || u32::try_from(capacity).is_err()
        {
            return Err(StoreError::Geometry);
        }
        let slot_bytes = slot_bytes as u32;
        let mut best: Option<(Newest, AgentState)> = None;
        let mut buf = [0u8; SLOT_BYTES];
        for slot in 0..2u32 {
            flash.read(slot * slot_bytes, &mut buf).map_err(flash_err)?;
            if let Ok((sequence, state)) = parse_slot(&buf) {
                // Ties cannot come from saves; prefer slot 0 so the choice is deterministic.
                if best.as_ref().is_none_or(|(b, _)| sequence > b.sequence) {
                    let newest = Newest { slot, sequence, chunk_count: state.progress.chunk_count() };
                    best = Some((newest, state));
                }
            }
        }
        let newest = best.as_ref().map(|(n, _)| *n);
        Ok((AgentStore { flash, slot_bytes, newest }, best.map(|(_, s)| s)))
    }

    /// Persists `state` as the newest state. Returns once it is committed; after an error
    /// (a power cut) the previous state is still what [`AgentStore::open`] finds, or this one.
    // Out of line (as `open`): its slot image (`SLOT_BYTES` on the stack) must not join the
    // agent's poll frame, where it would sit under every seal check.
    #[inline(never)]
    pub fn save(&mut self, state: &AgentState) -> Result<(), StoreError> {
        let (slot, sequence) = match self.newest {
            Some(n) => (1 - n.slot, n.sequence.wrapping_add(1)),
            None => (0, 1),
        };
        let base = slot * self.slot_bytes;
        let mut buf = [0u8; SLOT_BYTES];
        encode_slot(state, sequence, &mut buf);
        // The commit block goes last: until it is written the slot does not count.
        self.flash.erase(base, base + self.slot_bytes).map_err(flash_err)?;
        self.flash.write(base, &buf[..BODY_BYTES]).map_err(flash_err)?;
        if state.progress.done_count() > 0 {
            self.flash.write(base + BITMAP_AT as u32, &buf[BITMAP_AT..]).map_err(flash_err)?;
        }
        self.flash.write(base + COMMIT_AT as u32, &buf[COMMIT_AT..BITMAP_AT]).map_err(flash_err)?;
        self.newest = Some(Newest { slot, sequence, chunk_count: state.progress.chunk_count() });
        Ok(())
    }

    /// Marks chunk `index` done in memory and in the newest slot, without an erase: it only
    /// clears one bit of the inverted bitmap.
    pub fn mark_chunk(&mut self, state: &mut AgentState, index: u32) -> Result<(), StoreError> {
        let newest = self.newest.ok_or(StoreError::NothingSaved)?;
        if newest.chunk_count != state.progress.chunk_count() {
            return Err(StoreError::ProgressMismatch);
        }
        state.progress.mark(index)?;
        let (byte, mask) = ChunkProgress::position(index);
        let write = F::WRITE_SIZE;
        let unit_at = BITMAP_AT + byte / write * write;
        let addr = newest.slot * self.slot_bytes + unit_at as u32;
        let mut unit = [0u8; ALIGN];
        let unit = &mut unit[..write];
        self.flash.read(addr, unit).map_err(flash_err)?;
        let bit = &mut unit[byte % write];
        if *bit & mask == 0 {
            return Ok(()); // already marked in flash
        }
        *bit &= !mask;
        self.flash.write(addr, unit).map_err(flash_err)
    }

    /// Gives the flash back (tests reopen it to simulate a restart).
    pub fn into_inner(self) -> F {
        self.flash
    }
}

fn encode_slot(state: &AgentState, sequence: u64, out: &mut [u8; SLOT_BYTES]) {
    let mut anchor = [0u8; MAX_ANCHOR_BYTES];
    let anchor_len = state.anchor.map_or(0, |a| a.encode(&mut anchor));
    out[..4].copy_from_slice(&MAGIC);
    out[4] = FORMAT;
    out[6..8].copy_from_slice(&(anchor_len as u16).to_le_bytes());
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    out[16..20].copy_from_slice(&state.progress.chunk_count().to_le_bytes());
    out[RECORD_AT..ANCHOR_AT].copy_from_slice(&state.record.encode());
    out[ANCHOR_AT..ANCHOR_AT + MAX_ANCHOR_BYTES].copy_from_slice(&anchor);
    out[TARGET_SHA256_AT..TARGET_SHA256_AT + 32].copy_from_slice(&state.target_sha256);
    let report = &mut out[REPORT_AT..REPORT_AT + REPORT_BYTES];
    report[..8].copy_from_slice(&state.report.seq.to_le_bytes());
    report[8] = state.report.unsent as u8;
    if let Some(mark) = &state.report.install {
        report[9] = mark.id_len;
        report[10..42].copy_from_slice(&mark.release.0);
        report[42..50].copy_from_slice(&mark.started_unix.to_le_bytes());
        report[50..].copy_from_slice(&mark.id);
    }
    let hash = blake3::hash(&out[..BODY_BYTES]);
    out[COMMIT_AT..COMMIT_AT + 32].copy_from_slice(hash.as_bytes());
    for (stored, done) in out[BITMAP_AT..BITMAP_AT + BITMAP_BYTES].iter_mut().zip(state.progress.done_bits()) {
        *stored = !done;
    }
}

/// Parses one slot's bytes, which may be erased, torn or hostile. Bounded, never panics.
pub fn parse_slot(buf: &[u8; SLOT_BYTES]) -> Result<(u64, AgentState), SlotError> {
    if buf[..4] != MAGIC {
        return Err(SlotError::Empty);
    }
    if buf[4] != FORMAT {
        return Err(SlotError::Format);
    }
    if blake3::hash(&buf[..BODY_BYTES]).as_bytes()[..] != buf[COMMIT_AT..COMMIT_AT + 32] {
        return Err(SlotError::Checksum);
    }
    let anchor_len = u16::from_le_bytes([buf[6], buf[7]]) as usize;
    let sequence = u64::from_le_bytes(array(&buf[8..16]));
    let chunk_count = u32::from_le_bytes(array(&buf[16..20]));
    if anchor_len > MAX_ANCHOR_BYTES {
        return Err(SlotError::Bounds);
    }
    let record = Record::decode(&buf[RECORD_AT..ANCHOR_AT]).map_err(SlotError::Record)?;
    let anchor = match anchor_len {
        0 => None,
        n => Some(TrustAnchor::decode(&buf[ANCHOR_AT..ANCHOR_AT + n]).map_err(|_| SlotError::Anchor)?),
    };
    let mut done = [0u8; BITMAP_BYTES];
    for (done, stored) in done.iter_mut().zip(&buf[BITMAP_AT..BITMAP_AT + BITMAP_BYTES]) {
        *done = !stored;
    }
    let progress = ChunkProgress::from_done_bits(chunk_count, done).map_err(|_| SlotError::Bounds)?;
    let target_sha256 = array(&buf[TARGET_SHA256_AT..TARGET_SHA256_AT + 32]);
    let report = parse_report(&buf[REPORT_AT..REPORT_AT + REPORT_BYTES])?;
    Ok((sequence, AgentState { record, anchor, progress, target_sha256, report }))
}

fn parse_report(bytes: &[u8]) -> Result<ReportState, SlotError> {
    let seq = u64::from_le_bytes(array(&bytes[..8]));
    let unsent = match bytes[8] {
        0 => false,
        1 => true,
        _ => return Err(SlotError::Bounds),
    };
    let install = match bytes[9] as usize {
        0 => None,
        len if len <= MAX_ROLLOUT_ID_BYTES => {
            let id: [u8; MAX_ROLLOUT_ID_BYTES] = array(&bytes[50..50 + MAX_ROLLOUT_ID_BYTES]);
            core::str::from_utf8(&id[..len]).map_err(|_| SlotError::Bounds)?;
            let release = protocol::ReleaseId(array(&bytes[10..42]));
            Some(InstallMark {
                id,
                id_len: len as u8,
                release,
                started_unix: i64::from_le_bytes(array(&bytes[42..50])),
            })
        }
        _ => return Err(SlotError::Bounds),
    };
    Ok(ReportState { seq, unsent, install })
}

/// Copies a slice of known length into an array without a fallible conversion.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

// The offsets the module doc states.
const _: () = assert!(COMMIT_AT == 960 && BITMAP_AT == 992);
