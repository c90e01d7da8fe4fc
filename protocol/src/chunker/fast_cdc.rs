//! FastCDC cut points, byte for byte where the `fastcdc` crate's 2020 chunker puts them,
//! found several times faster.
//!
//! Why not call the crate: it hashes one byte after another through a single dependency
//! chain (shift, add, test), about 1.8 GiB/s here, which made chunking three quarters of the
//! publishing pipeline's time (`scripts/bench-pipeline`).
//!
//! Why the same cut points: every FastCDC manifest was cut with them, and a device reuses
//! only chunks whose ids its installed release shares with the new one. Other cut points
//! would make the next release of every repository a full download for every device.
//!
//! The scan, walk and streaming here also serve S-box CDC (`sbox_cdc.rs`, [`Hash::Sbox`]),
//! which swaps the hash and drops the crate's quirks.
//!
//! How: the gear hash is `h = (h << 1) + GEAR[byte]` in 64 bits, and a cut test looks only
//! at mask bits below bit [`Cdc::window`] (48 for every mask the crate has). Whether a
//! position passes therefore depends on the `window` bytes ending there, not on where its
//! chunk began, except within `window - 1` positions of where the crate (re)starts hashing,
//! at each chunk's minimum size. The work splits in two:
//! 1. a **scan** of every position, independent of chunk starts, so it runs as several
//!    interleaved lanes (instruction-level parallelism in place of one serial chain) and,
//!    at the caller's choice, as independent pieces on threads. It keeps the rare positions
//!    whose hash clears the bits both masks share ([`CutCandidates`]);
//! 2. a **walk** from chunk to chunk that hashes the first `window - 1` positions after each
//!    restart exactly as the crate does and, past them, consults only the candidates.
//!
//! `tests/properties.rs` checks the cut points against the crate's on random, low-entropy
//! and constant data, for every piece count and through the streaming path.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::OnceLock;
use std::vec::Vec;

use super::{ChunkSpan, StreamChunk};

/// The crate's gear table. It is private there, so it is read once through the crate's public
/// `cut`: with no minimum size and a zero first mask, `cut` hashes one byte, which gives that
/// byte's entry shifted left once, and stops. The shift drops the entry's top bit, which no
/// cut test looks at (see [`Cdc::window`]). Reading it instead of restating it keeps these
/// cut points the crate's by construction.
fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        let mut table = [0u64; 256];
        for (byte, entry) in table.iter_mut().enumerate() {
            let (shifted, _) = fastcdc::v2020::cut(&[byte as u8, 0, 0, 0], 0, 4, 4, 0, 0, 0, 0);
            *entry = shifted >> 1;
        }
        table
    })
}

/// One rolling-hash step.
#[inline(always)]
fn roll(hash: u64, byte: u8, gear: &[u64; 256]) -> u64 {
    (hash << 1).wrapping_add(gear[byte as usize])
}

/// Which hash decides the cut tests. The scan, walk and streaming below serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hash {
    /// The `fastcdc` crate's 2020 gear hash and its quirks (even positions, a hash that
    /// restarts at each minimum).
    FastCdc2020,
    /// `sbox_cdc`'s windowed hash: every position, no restarts.
    Sbox,
}

/// Content-defined chunking parameters with normalization level 1, as
/// `fastcdc::v2020::FastCDC::new` uses.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cdc {
    hash: Hash,
    min: usize,
    avg: usize,
    max: usize,
    /// Used before the average size: more bits, so cuts are rarer.
    mask_s: u64,
    /// Used from the average size on: fewer bits, so cuts come sooner.
    mask_l: u64,
}

impl Cdc {
    /// Parameters that passed [`super::Chunking::validate`], so the mask indexes are in range.
    pub(super) fn new(min_bytes: u32, avg_bytes: u32, max_bytes: u32) -> Self {
        let bits = fastcdc::v2020::logarithm2(avg_bytes) as usize;
        Cdc {
            hash: Hash::FastCdc2020,
            min: min_bytes as usize,
            avg: avg_bytes as usize,
            max: max_bytes as usize,
            mask_s: fastcdc::v2020::MASKS[bits + 1],
            mask_l: fastcdc::v2020::MASKS[bits - 1],
        }
    }

    /// S-box CDC with these bounds (see `sbox_cdc`); they passed `Chunking::validate`.
    pub(super) fn sbox(min_bytes: u32, avg_bytes: u32, max_bytes: u32) -> Self {
        let (mask_s, mask_l) = super::sbox_cdc::masks(avg_bytes);
        Cdc {
            hash: Hash::Sbox,
            min: min_bytes as usize,
            avg: avg_bytes as usize,
            max: max_bytes as usize,
            mask_s,
            mask_l,
        }
    }

    /// How many bytes ending at a position decide its cut test. For the gear hash: one past
    /// the highest mask bit, since a byte `k` positions back only reaches bits `k` and up.
    pub(super) fn window(&self) -> usize {
        match self.hash {
            Hash::FastCdc2020 => 64 - (self.mask_s | self.mask_l).leading_zeros() as usize,
            Hash::Sbox => super::sbox_cdc::WINDOW,
        }
    }

    /// Positions whose hash clears these bits are candidates for either mask.
    fn shared_mask(&self) -> u64 {
        self.mask_s & self.mask_l
    }
}

/// A position whose windowed hash clears the shared mask bits, with that hash.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    at: usize,
    hash: u64,
}

/// What scanning a range of positions found; results of adjacent ranges concatenate.
#[derive(Debug, Clone)]
pub struct CutCandidates {
    range: Range<usize>,
    found: Vec<Candidate>,
}

/// One independent piece of a scan: a range of positions over the data. `Send`, so a host
/// may run pieces on threads; the protocol crate itself starts none.
#[derive(Clone, Copy)]
pub struct ScanPiece<'a> {
    data: &'a [u8],
    cdc: Cdc,
    start: usize,
    end: usize,
}

impl ScanPiece<'_> {
    /// Scans the piece. Pure: the same piece always gives the same candidates.
    pub fn scan(self) -> CutCandidates {
        let mut found = Vec::new();
        scan(self.data, self.start..self.end, &self.cdc, &mut found);
        CutCandidates { range: self.start..self.end, found }
    }

    /// Whether the piece covers no position.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Splits positions `range` of `data` into at most `pieces` scan pieces of similar size.
fn split(data: &[u8], range: Range<usize>, cdc: Cdc, pieces: usize) -> Vec<ScanPiece<'_>> {
    let len = range.end - range.start;
    let count = pieces.clamp(1, len.max(1));
    let per_piece = len.div_ceil(count);
    (0..count)
        .map(|i| {
            let start = (range.start + i * per_piece).min(range.end);
            let end = (start + per_piece).min(range.end);
            ScanPiece { data, cdc, start, end }
        })
        .filter(|piece| !piece.is_empty() || len == 0)
        .collect()
}

/// Joins scan results, or `None` unless they tile `range` in order (the caller's runner
/// lost, repeated or reordered a piece).
fn join(results: Vec<CutCandidates>, range: Range<usize>) -> Option<Vec<CutCandidates>> {
    let mut at = range.start;
    for result in &results {
        if result.range.start != at {
            return None;
        }
        at = result.range.end;
    }
    (at == range.end).then_some(results)
}

/// Interleaved lanes per scan: enough independent hash chains to keep the core's ALUs and
/// load ports busy instead of waiting on one chain's latency.
const LANES: usize = 4;

/// Appends, in order, the candidates among `positions` of `data`.
fn scan(data: &[u8], positions: Range<usize>, cdc: &Cdc, out: &mut Vec<Candidate>) {
    if cdc.hash == Hash::Sbox {
        super::sbox_cdc::scan(data, positions, cdc.shared_mask(), &mut |at, hash| out.push(Candidate { at, hash }));
        return;
    }
    let gear = gear();
    let mask = cdc.shared_mask();
    let lead = cdc.window() - 1;
    let lane_len = (positions.end - positions.start) / LANES;
    if lane_len > 0 {
        let starts: [usize; LANES] = core::array::from_fn(|lane| positions.start + lane * lane_len);
        let mut found: [Vec<Candidate>; LANES] = Default::default();
        let mut hash = starts.map(|start| warm_up(data, start, lead, gear));
        let lanes = starts.map(|start| &data[start..start + lane_len]);
        let mut step = 0;
        while step < lane_len {
            step = roll_lanes_until_a_hit(lanes, &mut hash, step, mask, gear);
            for ((&hash, &start), found) in hash.iter().zip(&starts).zip(&mut found) {
                if step < lane_len && hash & mask == 0 {
                    found.push(Candidate { at: start + step, hash });
                }
            }
            step += 1;
        }
        for lane in found {
            out.extend(lane);
        }
    }
    let tail = positions.start + LANES * lane_len;
    let mut hash = warm_up(data, tail, lead, gear);
    for (at, &byte) in data.iter().enumerate().take(positions.end).skip(tail) {
        hash = roll(hash, byte, gear);
        if hash & mask == 0 {
            out.push(Candidate { at, hash });
        }
    }
}

/// Rolls every lane from `step` on and returns the first step at which some lane's hash
/// clears `mask` (its hashes left as of that step), or the lanes' length. A tight loop with
/// nothing else live, so the hashes, lanes and mask stay in registers; a branch per lane,
/// each one fused test-and-jump and rarely taken.
#[inline(never)]
fn roll_lanes_until_a_hit(
    lanes: [&[u8]; LANES],
    hash: &mut [u64; LANES],
    mut step: usize,
    mask: u64,
    gear: &[u64; 256],
) -> usize {
    let [a, b, c, d] = lanes;
    let len = a.len().min(b.len()).min(c.len()).min(d.len());
    let (a, b, c, d) = (&a[..len], &b[..len], &c[..len], &d[..len]);
    let [mut h0, mut h1, mut h2, mut h3] = *hash;
    let clear = |h: u64| h & mask == 0;
    // Two steps per turn: half the loop overhead. A hit at the first of the two steps is
    // found by rolling back, never skipped.
    while len > 0 && step < len - 1 {
        let (g0, g1, g2, g3) =
            (roll(h0, a[step], gear), roll(h1, b[step], gear), roll(h2, c[step], gear), roll(h3, d[step], gear));
        if clear(g0) | clear(g1) | clear(g2) | clear(g3) {
            *hash = [g0, g1, g2, g3];
            return step;
        }
        h0 = roll(g0, a[step + 1], gear);
        h1 = roll(g1, b[step + 1], gear);
        h2 = roll(g2, c[step + 1], gear);
        h3 = roll(g3, d[step + 1], gear);
        if clear(h0) | clear(h1) | clear(h2) | clear(h3) {
            *hash = [h0, h1, h2, h3];
            return step + 1;
        }
        step += 2;
    }
    while step < len {
        h0 = roll(h0, a[step], gear);
        h1 = roll(h1, b[step], gear);
        h2 = roll(h2, c[step], gear);
        h3 = roll(h3, d[step], gear);
        if clear(h0) | clear(h1) | clear(h2) | clear(h3) {
            break;
        }
        step += 1;
    }
    *hash = [h0, h1, h2, h3];
    step
}

/// The hash just before `start`: the `lead` bytes before it, or as many as there are. Near
/// the data's start the window is short, but no cut test reads a position there (every
/// minimum size exceeds the window).
fn warm_up(data: &[u8], start: usize, lead: usize, gear: &[u64; 256]) -> u64 {
    data[start.saturating_sub(lead)..start].iter().fold(0, |hash, &byte| roll(hash, byte, gear))
}

/// Finds cut points chunk by chunk from scan results, as the crate's `cut` would.
pub(super) struct Walk {
    cdc: Cdc,
    /// Candidates in position order, relative to the data the walk is given.
    candidates: Vec<Candidate>,
    /// The first candidate no cut has looked at yet.
    next: usize,
}

impl Walk {
    pub(super) fn new(cdc: Cdc) -> Self {
        Walk { cdc, candidates: Vec::new(), next: 0 }
    }

    /// Adds the results of scanning the positions that follow those added before.
    pub(super) fn add(&mut self, scanned: Vec<CutCandidates>) {
        for result in scanned {
            self.candidates.extend(result.found);
        }
    }

    /// The data now begins `offset` bytes later (a stream dropped what it cut): forgets the
    /// candidates before it and renumbers the rest.
    pub(super) fn forget_before(&mut self, offset: usize) {
        let kept = self.candidates.split_off(self.next);
        self.candidates = kept
            .into_iter()
            .filter(|c| c.at >= offset)
            .map(|c| Candidate { at: c.at - offset, hash: c.hash })
            .collect();
        self.next = 0;
    }

    /// The length of the chunk at `start`, where `data[start..]` is everything up to the end
    /// of the image or at least the maximum chunk size, and every position up to there has
    /// been scanned. For FastCDC the crate's `cut`, position for position; for S-box CDC the
    /// first position from the minimum whose hash passes. Either way a cut at position `p`
    /// ends the chunk before byte `p`.
    pub(super) fn cut(&mut self, data: &[u8], start: usize) -> usize {
        let Cdc { hash: kind, min, avg, max, mask_s, mask_l } = self.cdc;
        let remaining = data.len() - start;
        if remaining <= min {
            return remaining;
        }
        let limit = remaining.min(max);
        let center = avg.min(limit);
        // The crate tests positions in pairs from min/2*2: `mask_s` up to the center, then
        // `mask_l` up to the limit, each rounded down to even. S-box CDC tests every position.
        let (first, small_end, end) = match kind {
            Hash::FastCdc2020 => (min & !1, center & !1, limit & !1),
            Hash::Sbox => (min, center, limit),
        };
        let mask_at = |p: usize| if p < small_end { mask_s } else { mask_l };

        // The crate's hash restarts at `first`; until `window - 1` bytes have gone in it
        // differs from the windowed hash the scan computed, so these positions are hashed
        // here. S-box CDC's hash never restarts: the scan's values hold everywhere.
        let gear = gear();
        let exact_end = match kind {
            Hash::FastCdc2020 => (first + self.cdc.window() - 1).min(end),
            Hash::Sbox => first,
        };
        let mut hash = 0u64;
        for p in first..exact_end {
            hash = roll(hash, data[start + p], gear);
            if hash & mask_at(p) == 0 {
                return p;
            }
        }
        while let Some(candidate) = self.candidates.get(self.next).copied().filter(|c| c.at < start + end) {
            self.next += 1;
            if candidate.at < start + exact_end {
                continue;
            }
            let p = candidate.at - start;
            if candidate.hash & mask_at(p) == 0 {
                return p;
            }
        }
        limit
    }
}

/// Every span of `data`, from scan results covering all of it.
pub(super) fn spans(data: &[u8], cdc: Cdc, scanned: Vec<CutCandidates>) -> Vec<ChunkSpan> {
    let mut walk = Walk::new(cdc);
    walk.add(scanned);
    let mut out = Vec::with_capacity(data.len() / cdc.avg + 1);
    let mut start = 0;
    while start < data.len() {
        let length = walk.cut(data, start);
        out.push(ChunkSpan { offset: start as u64, length: length as u32 });
        start += length;
    }
    out
}

/// Scans positions `range` of `data` in `pieces` pieces through `run`; scans them here
/// instead when `run` does not return one result per piece, in order.
pub(super) fn scan_all(
    data: &[u8],
    range: Range<usize>,
    cdc: Cdc,
    pieces: usize,
    run: &mut impl FnMut(Vec<ScanPiece<'_>>) -> Vec<CutCandidates>,
) -> Vec<CutCandidates> {
    let results = run(split(data, range.clone(), cdc, pieces));
    join(results, range.clone())
        .unwrap_or_else(|| split(data, range, cdc, 1).into_iter().map(ScanPiece::scan).collect())
}

/// Bytes a stream reads per step: the scan's unit of work, big enough to split over threads
/// and to make the per-step copy of the unfinished chunk (at most the maximum chunk) small.
const STREAM_BLOCK_BYTES: usize = 8 << 20;

/// Streams `reader` through the chunker, holding one read block plus at most one maximum-size
/// chunk; the cut points are those of [`spans`] over the whole stream.
pub(super) fn stream<R: Read, E: From<io::Error>>(
    mut reader: R,
    cdc: Cdc,
    pieces: usize,
    run: &mut impl FnMut(Vec<ScanPiece<'_>>) -> Vec<CutCandidates>,
    each: &mut impl FnMut(StreamChunk) -> Result<(), E>,
) -> Result<(), E> {
    let mut buffer: Vec<u8> = Vec::new();
    // The stream offset of `buffer[0]`, and where the next chunk starts in `buffer`.
    let (mut base, mut start) = (0u64, 0usize);
    let mut walk = Walk::new(cdc);
    let mut end_of_stream = false;
    loop {
        // A chunk is cut once all it could span is here: its maximum size, or the stream's end.
        while start < buffer.len() && (end_of_stream || buffer.len() - start >= cdc.max) {
            let length = walk.cut(&buffer, start);
            let span = ChunkSpan { offset: base + start as u64, length: length as u32 };
            each(StreamChunk { span, data: buffer[start..start + length].to_vec() })?;
            start += length;
        }
        if end_of_stream {
            return Ok(());
        }
        buffer.drain(..start);
        walk.forget_before(start);
        base += start as u64;
        start = 0;
        let scanned_to = buffer.len();
        end_of_stream = read_block(&mut reader, &mut buffer)? < STREAM_BLOCK_BYTES;
        walk.add(scan_all(&buffer, scanned_to..buffer.len(), cdc, pieces, run));
    }
}

/// Appends up to one block from `reader`; fewer bytes only at the end of the stream.
fn read_block(reader: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let old_len = buffer.len();
    buffer.resize(old_len + STREAM_BLOCK_BYTES, 0);
    let mut filled = 0;
    let result = loop {
        if filled == STREAM_BLOCK_BYTES {
            break Ok(filled);
        }
        match reader.read(&mut buffer[old_len + filled..]) {
            Ok(0) => break Ok(filled),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    buffer.truncate(old_len + filled);
    result
}
