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
//! at mask bits below bit [`Cdc::window`] (48 for averages from 1 KiB up). Whether a
//! position passes therefore depends on the `window` bytes ending there, not on where its
//! chunk began, except within `window - 1` positions of where the crate (re)starts hashing,
//! at each chunk's minimum size. The work splits in two:
//! 1. **pieces** that a host may run on threads. A FastCDC piece **walks ahead** ([`walk_ahead`]):
//!    from four places in its range at once, each taken as a chunk start, it cuts chunks as
//!    the crate does, so it skips each chunk's first `min` bytes (a quarter of the image at
//!    16/64/256 KiB) and four independent hash chains share the core (instruction-level
//!    parallelism in place of one serial chain). It keeps the chunks it cut, the rare
//!    positions whose hash might pass a cut test ([`Filter`], [`CutCandidates`]), and which
//!    positions it tested. An S-box piece scans every position instead;
//! 2. a **walk** from chunk to chunk. A chunk's cut depends only on its start and the data,
//!    so once the walk reaches a start some piece cut from, it takes that chunk as it is.
//!    Chains from guessed starts meet the true one within a chunk or two on content-defined
//!    data; elsewhere the walk hashes the first `window - 1` positions after the restart as
//!    the crate does and, past them, consults the candidates where a piece tested and scans
//!    where none did (the skipped minimums of a chain that never met, as in long runs of one
//!    byte, which cut only at the maximum).
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

    /// Which gear hashes are candidates (see [`Filter`]).
    fn filter(&self) -> Filter {
        let shared = self.shared_mask();
        if shared.count_ones() >= Filter::SHARED_BITS {
            Filter::Shared(shared)
        } else {
            Filter::EitherMask(self.mask_s, self.mask_l)
        }
    }

    /// Which positions the crate tests in a chunk with `remaining` bytes from its start to the
    /// data's end, relative to its start; `Err(remaining)` when all of them are one chunk.
    fn bounds(&self, remaining: usize) -> Result<ChunkBounds, usize> {
        if remaining <= self.min {
            return Err(remaining);
        }
        let limit = remaining.min(self.max);
        let center = self.avg.min(limit);
        // The crate tests positions in pairs from min/2*2: `mask_s` up to the center, then
        // `mask_l` up to the limit, each rounded down to even. S-box CDC tests every position.
        let (first, small_end, end) = match self.hash {
            Hash::FastCdc2020 => (self.min & !1, center & !1, limit & !1),
            Hash::Sbox => (self.min, center, limit),
        };
        // The crate's hash restarts at `first`; until `window - 1` bytes have gone in it
        // differs from the windowed hash a scan computes. S-box CDC's hash never restarts.
        let exact_end = match self.hash {
            Hash::FastCdc2020 => (first + self.window() - 1).min(end),
            Hash::Sbox => first,
        };
        Ok(ChunkBounds { first, small_end, exact_end, end, limit })
    }
}

/// Where a chunk's cut tests happen, relative to its start (see [`Cdc::bounds`]).
#[derive(Debug, Clone, Copy)]
struct ChunkBounds {
    /// The first position tested, where the crate's hash restarts.
    first: usize,
    /// Positions before this test `mask_s`, the rest `mask_l`.
    small_end: usize,
    /// From here on the hash is the windowed one a scan computes.
    exact_end: usize,
    /// One past the last position tested.
    end: usize,
    /// The chunk's length when no position passes.
    limit: usize,
}

impl ChunkBounds {
    fn mask_at(&self, cdc: &Cdc, p: usize) -> u64 {
        if p < self.small_end {
            cdc.mask_s
        } else {
            cdc.mask_l
        }
    }
}

/// Which hashes may pass a cut test at some position: the scan and the lanes keep those
/// positions and stop their tight loop at each, so they must be rare.
#[derive(Debug, Clone, Copy)]
enum Filter {
    /// Clears the bits both masks share: one test a position. The crate's masks for averages
    /// of 2 KiB and up share 10 to 21 bits.
    Shared(u64),
    /// Clears one of the two masks. For averages under 2 KiB the masks share two or three
    /// bits, so one position in four to eight cleared them: every lane stopped every few
    /// bytes, 30 times the crate's time at a 1 KiB average.
    EitherMask(u64, u64),
}

impl Filter {
    /// Fewer shared bits than this and [`Filter::EitherMask`] tests fewer positions.
    const SHARED_BITS: u32 = 8;

    fn passes(self, hash: u64) -> bool {
        match self {
            Filter::Shared(mask) => hash & mask == 0,
            Filter::EitherMask(a, b) => hash & a == 0 || hash & b == 0,
        }
    }
}

/// A position whose windowed hash passes the [`Filter`], with that hash.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    at: usize,
    hash: u64,
}

/// A chunk whose length a piece found: the crate's for a chunk starting there, whatever came
/// before it.
#[derive(Debug, Clone, Copy)]
struct KnownCut {
    start: usize,
    length: usize,
}

/// What scanning a range of positions found. What a piece tested and cut may reach past its
/// range into the next piece's, so results overlap there; [`Walk::add`] sorts and merges them.
#[derive(Debug, Clone)]
pub struct CutCandidates {
    range: Range<usize>,
    /// Every candidate within `covered`.
    found: Vec<Candidate>,
    /// The positions the piece tested with the windowed hash, so `found` is complete there.
    covered: Vec<Range<usize>>,
    /// Chunks the piece cut while walking ahead (FastCDC only).
    known: Vec<KnownCut>,
}

/// One independent piece of a scan: a range of positions over the data. `Send`, so a host
/// may run pieces on threads; the protocol crate itself starts none.
#[derive(Clone, Copy)]
pub struct ScanPiece<'a> {
    data: &'a [u8],
    cdc: Cdc,
    start: usize,
    end: usize,
    /// Whether `data` ends where the image ends; if not, a chunk that could reach past it is
    /// left to the walk, which cuts it once more data is in.
    complete: bool,
}

impl ScanPiece<'_> {
    /// Scans the piece. Pure: the same piece always gives the same candidates.
    pub fn scan(self) -> CutCandidates {
        let range = self.start..self.end;
        match self.cdc.hash {
            Hash::FastCdc2020 => walk_ahead(self.data, range, self.cdc, self.complete),
            Hash::Sbox => {
                let mut found = Vec::new();
                scan(self.data, range.clone(), &self.cdc, &mut found);
                CutCandidates { range: range.clone(), found, covered: std::vec![range], known: Vec::new() }
            }
        }
    }

    /// Whether the piece covers no position.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Splits positions `range` of `data` into at most `pieces` scan pieces of similar size.
fn split(data: &[u8], range: Range<usize>, cdc: Cdc, pieces: usize, complete: bool) -> Vec<ScanPiece<'_>> {
    let len = range.end - range.start;
    let count = pieces.clamp(1, len.max(1));
    let per_piece = len.div_ceil(count);
    (0..count)
        .map(|i| {
            let start = (range.start + i * per_piece).min(range.end);
            let end = (start + per_piece).min(range.end);
            ScanPiece { data, cdc, start, end, complete }
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

/// FastCDC's chunks from [`LANES`] places in `range` at once, as if a chunk began at each:
/// what a piece contributes instead of scanning every position.
///
/// Why: a chunk's first `min` bytes are never tested, a quarter of the image at the default
/// 16/64/256 KiB, but a scan of every position cannot know where chunks start. Walking
/// ahead from a guessed start finds the crate's chunks from there on, because a chunk's cut
/// depends only on its start and the data. Guessed chains meet the true one within a chunk
/// or two on content-defined data, and [`Walk::cut`] takes known chunks from then on.
/// Where they do not meet (long runs of one byte cut only at the maximum), the candidates
/// each lane records over the positions it tested leave the walk only the skipped
/// minimums to scan. A lane that reaches a chunk that could run past data that is not the
/// image's end (a stream block's last `max` bytes) scans the rest of its range plainly
/// instead, so the walk finds those positions tested when it cuts there with the next block
/// in.
///
/// Each lane rolls the crate's own hash from each chunk's restart; the lanes advance in step
/// through [`roll_lanes_until_a_hit`], so four independent chains share the core as in
/// [`scan`].
fn walk_ahead(data: &[u8], range: Range<usize>, cdc: Cdc, complete: bool) -> CutCandidates {
    let gear = gear();
    let filter = cdc.filter();
    let per_lane = range.len().div_ceil(LANES);
    let mut lanes: [AheadLane; LANES] = core::array::from_fn(|i| {
        let from = (range.start + i * per_lane).min(range.end);
        AheadLane::new(from, (from + per_lane).min(range.end))
    });
    for lane in &mut lanes {
        lane.start_chunk(lane.chunk, data, &cdc, complete);
    }
    while let Some(busy) = lanes.iter().position(|lane| lane.bounds.is_some()) {
        // A lane with nothing left rolls a copy of a busy one, and its result is ignored.
        let source = |i: usize| if lanes[i].bounds.is_some() { i } else { busy };
        let slices: [&[u8]; LANES] = core::array::from_fn(|i| {
            let lane = &lanes[source(i)];
            &data[lane.pos..lane.test_end]
        });
        let shortest = slices.iter().map(|slice| slice.len()).min().unwrap_or(0);
        let mut hashes: [u64; LANES] = core::array::from_fn(|i| lanes[source(i)].hash);
        let hit_at = roll_lanes_until_a_hit(slices, &mut hashes, 0, filter, gear);
        let rolled = if hit_at < shortest { hit_at + 1 } else { shortest };
        for (lane, hash) in lanes.iter_mut().zip(hashes) {
            if lane.bounds.is_some() {
                lane.pos += rolled;
                lane.hash = hash;
                lane.after_roll(data, &cdc, complete);
            }
        }
    }
    let mut out = CutCandidates { range, found: Vec::new(), covered: Vec::new(), known: Vec::new() };
    for lane in &mut lanes {
        // Every later lane, here and in later pieces, stops at its own start (less data is
        // left there), so each scanning up to its `until` tiles the rest of the data once.
        if let Some(from) = lane.unfinished {
            scan(data, from..lane.until, &cdc, &mut lane.found);
            lane.covered.push(from..lane.until);
        }
    }
    for lane in lanes {
        out.found.extend(lane.found);
        out.covered.extend(lane.covered);
        out.known.extend(lane.known);
    }
    out
}

/// One chain of chunks [`walk_ahead`] follows: chunks that start in `chunk..until`.
struct AheadLane {
    until: usize,
    /// The current chunk's start.
    chunk: usize,
    /// Its test positions (relative), or `None` once the lane is done.
    bounds: Option<ChunkBounds>,
    /// The next byte to roll, and where the chunk's tests end (both absolute).
    pos: usize,
    test_end: usize,
    /// The crate's hash of the chunk's bytes from its restart up to `pos`.
    hash: u64,
    /// Where the chunk starts that the lane left to the walk, the data not being complete.
    unfinished: Option<usize>,
    found: Vec<Candidate>,
    covered: Vec<Range<usize>>,
    known: Vec<KnownCut>,
}

impl AheadLane {
    fn new(from: usize, until: usize) -> Self {
        AheadLane {
            until,
            chunk: from,
            bounds: None,
            pos: from,
            test_end: from,
            hash: 0,
            unfinished: None,
            found: Vec::new(),
            covered: Vec::new(),
            known: Vec::new(),
        }
    }

    /// Starts the chunk at `start`, cutting at once those that test no position; done when
    /// the chunk starts past `until`, or could reach past data that is not the image's end.
    fn start_chunk(&mut self, mut start: usize, data: &[u8], cdc: &Cdc, complete: bool) {
        self.bounds = None;
        while start < self.until {
            let remaining = data.len() - start;
            if !complete && remaining < cdc.max {
                self.unfinished = Some(start);
                return;
            }
            match cdc.bounds(remaining) {
                Err(length) => {
                    self.known.push(KnownCut { start, length });
                    start += length;
                }
                Ok(bounds) if bounds.first >= bounds.end => {
                    self.known.push(KnownCut { start, length: bounds.limit });
                    start += bounds.limit;
                }
                Ok(bounds) => {
                    self.chunk = start;
                    self.pos = start + bounds.first;
                    self.test_end = start + bounds.end;
                    self.hash = 0;
                    self.bounds = Some(bounds);
                    return;
                }
            }
        }
    }

    /// Tests the position just rolled, if its hash passes the filter, and ends the
    /// chunk at a cut or at its last tested position.
    fn after_roll(&mut self, data: &[u8], cdc: &Cdc, complete: bool) {
        let Some(bounds) = self.bounds else { return };
        let exact_end = self.chunk + bounds.exact_end;
        let at = self.pos - 1;
        if cdc.filter().passes(self.hash) {
            if at >= exact_end {
                self.found.push(Candidate { at, hash: self.hash });
            }
            let p = at - self.chunk;
            if self.hash & bounds.mask_at(cdc, p) == 0 {
                self.end_chunk(exact_end, p, data, cdc, complete);
                return;
            }
        }
        if self.pos == self.test_end {
            self.end_chunk(exact_end, bounds.limit, data, cdc, complete);
        }
    }

    /// Records the chunk (`length` bytes) and the windowed positions it tested, then starts
    /// the next one.
    fn end_chunk(&mut self, exact_end: usize, length: usize, data: &[u8], cdc: &Cdc, complete: bool) {
        if self.pos > exact_end {
            self.covered.push(exact_end..self.pos);
        }
        self.known.push(KnownCut { start: self.chunk, length });
        self.start_chunk(self.chunk + length, data, cdc, complete);
    }
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
    let filter = cdc.filter();
    let lead = cdc.window() - 1;
    let lane_len = (positions.end - positions.start) / LANES;
    if lane_len > 0 {
        let starts: [usize; LANES] = core::array::from_fn(|lane| positions.start + lane * lane_len);
        let mut found: [Vec<Candidate>; LANES] = Default::default();
        let mut hash = starts.map(|start| warm_up(data, start, lead, gear));
        let lanes = starts.map(|start| &data[start..start + lane_len]);
        let mut step = 0;
        while step < lane_len {
            step = roll_lanes_until_a_hit(lanes, &mut hash, step, filter, gear);
            for ((&hash, &start), found) in hash.iter().zip(&starts).zip(&mut found) {
                if step < lane_len && filter.passes(hash) {
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
        if filter.passes(hash) {
            out.push(Candidate { at, hash });
        }
    }
}

/// Rolls every lane from `step` on and returns the first step at which some lane's hash
/// passes `filter` (its hashes left as of that step), or the lanes' length.
fn roll_lanes_until_a_hit(
    lanes: [&[u8]; LANES],
    hash: &mut [u64; LANES],
    step: usize,
    filter: Filter,
    gear: &[u64; 256],
) -> usize {
    match filter {
        Filter::Shared(mask) => roll_lanes_until(lanes, hash, step, gear, move |h| h & mask == 0),
        Filter::EitherMask(a, b) => roll_lanes_until(lanes, hash, step, gear, move |h| h & a == 0 || h & b == 0),
    }
}

/// [`roll_lanes_until_a_hit`] for one filter. A tight loop with nothing else live, so the
/// hashes, lanes and masks stay in registers; a branch per lane and mask, each one fused
/// test-and-jump and rarely taken.
#[inline(never)]
fn roll_lanes_until(
    lanes: [&[u8]; LANES],
    hash: &mut [u64; LANES],
    mut step: usize,
    gear: &[u64; 256],
    clear: impl Fn(u64) -> bool + Copy,
) -> usize {
    let [a, b, c, d] = lanes;
    let len = a.len().min(b.len()).min(c.len()).min(d.len());
    let (a, b, c, d) = (&a[..len], &b[..len], &c[..len], &d[..len]);
    let [mut h0, mut h1, mut h2, mut h3] = *hash;
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
    /// Where `candidates` is complete: in order, disjoint.
    covered: Vec<Range<usize>>,
    /// Chunks the scan already cut, by start.
    known: Vec<KnownCut>,
    /// The last positions no piece tested that the walk scanned itself, with their
    /// candidates. A chunk may start inside them and need the rest; the walk finds such gaps
    /// in position order, so no earlier one is needed again.
    scanned: Option<(Range<usize>, Vec<Candidate>)>,
}

impl Walk {
    pub(super) fn new(cdc: Cdc) -> Self {
        Walk { cdc, candidates: Vec::new(), covered: Vec::new(), known: Vec::new(), scanned: None }
    }

    /// Adds the results of scanning the positions that follow those added before. A piece's
    /// last chunk may reach into the next piece, so the results overlap there: sorted and
    /// merged here.
    pub(super) fn add(&mut self, scanned: Vec<CutCandidates>) {
        let (candidates, covered, known) = (self.candidates.len(), self.covered.len(), self.known.len());
        for result in scanned {
            self.candidates.extend(result.found);
            self.covered.extend(result.covered);
            self.known.extend(result.known);
        }
        self.candidates[candidates..].sort_unstable_by_key(|c| c.at);
        self.candidates.dedup_by_key(|c| c.at);
        self.known[known..].sort_unstable_by_key(|k| k.start);
        self.known.dedup_by_key(|k| k.start);
        self.covered[covered..].sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(self.covered.len());
        for range in self.covered.drain(..).filter(|r| !r.is_empty()) {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        self.covered = merged;
    }

    /// The data now begins `offset` bytes later (a stream dropped what it cut): forgets what
    /// lies before it and renumbers the rest.
    pub(super) fn forget_before(&mut self, offset: usize) {
        self.candidates.retain(|c| c.at >= offset);
        self.candidates.iter_mut().for_each(|c| c.at -= offset);
        self.covered.retain(|r| r.end > offset);
        self.covered.iter_mut().for_each(|r| *r = r.start.max(offset) - offset..r.end - offset);
        self.known.retain(|k| k.start >= offset);
        self.known.iter_mut().for_each(|k| k.start -= offset);
        self.scanned = self.scanned.take().filter(|(range, _)| range.end > offset).map(|(range, found)| {
            let found = found.into_iter().filter(|c| c.at >= offset).map(|c| Candidate { at: c.at - offset, ..c });
            (range.start.max(offset) - offset..range.end - offset, found.collect())
        });
    }

    /// The length of the chunk at `start`, where `data[start..]` is everything up to the end
    /// of the image or at least the maximum chunk size. For FastCDC the crate's `cut`,
    /// position for position; for S-box CDC the first position from the minimum whose hash
    /// passes. Either way a cut at position `p` ends the chunk before byte `p`.
    pub(super) fn cut(&mut self, data: &[u8], start: usize) -> usize {
        let cdc = self.cdc;
        let bounds = match cdc.bounds(data.len() - start) {
            Ok(bounds) => bounds,
            Err(length) => return length,
        };
        if let Ok(i) = self.known.binary_search_by_key(&start, |k| k.start) {
            return self.known[i].length;
        }
        // Until the crate's restarted hash has taken in `window - 1` bytes it is not the
        // windowed one, so these positions are hashed here.
        let gear = gear();
        let mut hash = 0u64;
        for p in bounds.first..bounds.exact_end {
            hash = roll(hash, data[start + p], gear);
            if hash & bounds.mask_at(&cdc, p) == 0 {
                return p;
            }
        }
        // Past them: the candidates where a piece tested, a scan here where none did (kept
        // for the next chunk, which may start inside it).
        let passes = |c: &Candidate| c.hash & bounds.mask_at(&cdc, c.at - start) == 0;
        let (mut at, end) = (start + bounds.exact_end, start + bounds.end);
        while at < end {
            let next = self.covered.partition_point(|r| r.end <= at);
            match self.covered.get(next) {
                Some(range) if range.start <= at => {
                    let until = range.end.min(end);
                    let from = self.candidates.partition_point(|c| c.at < at);
                    if let Some(c) = self.candidates[from..].iter().take_while(|c| c.at < until).find(|c| passes(c)) {
                        return c.at - start;
                    }
                    at = until;
                }
                following => {
                    let gap_end = following.map_or(end, |range| range.start.min(end));
                    let (range, found): &(Range<usize>, Vec<Candidate>) = match &mut self.scanned {
                        Some(last) if last.0.contains(&at) => last,
                        last => {
                            let until = match last {
                                Some((range, _)) if range.start > at => gap_end.min(range.start),
                                _ => gap_end,
                            };
                            let mut found = Vec::new();
                            scan(data, at..until, &cdc, &mut found);
                            last.insert((at..until, found))
                        }
                    };
                    let until = range.end.min(gap_end);
                    let from = found.partition_point(|c| c.at < at);
                    if let Some(c) = found[from..].iter().take_while(|c| c.at < until).find(|c| passes(c)) {
                        return c.at - start;
                    }
                    at = until;
                }
            }
        }
        bounds.limit
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
    complete: bool,
    run: &mut impl FnMut(Vec<ScanPiece<'_>>) -> Vec<CutCandidates>,
) -> Vec<CutCandidates> {
    let results = run(split(data, range.clone(), cdc, pieces, complete));
    join(results, range.clone())
        .unwrap_or_else(|| split(data, range, cdc, 1, complete).into_iter().map(ScanPiece::scan).collect())
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
        walk.add(scan_all(&buffer, scanned_to..buffer.len(), cdc, pieces, end_of_stream, run));
    }
}

/// Appends up to one block from `reader`; fewer bytes only at the end of the stream. Read
/// into the buffer's spare capacity, not zero-filled first: the fill cost 3 % of streaming.
fn read_block(reader: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<usize> {
    buffer.reserve(STREAM_BLOCK_BYTES);
    reader.by_ref().take(STREAM_BLOCK_BYTES as u64).read_to_end(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::tests::xorshift_bytes;

    /// The crate's first chunk of `data[start..]`.
    fn crate_length_from(data: &[u8], start: usize, cdc: &Cdc) -> usize {
        let (min, avg, max) = (cdc.min as u32, cdc.avg as u32, cdc.max as u32);
        fastcdc::v2020::FastCDC::new(&data[start..], min, avg, max).next().expect("a chunk").length
    }

    #[test]
    fn chunks_cut_walking_ahead_are_the_crates_and_the_walk_takes_them_once_chains_meet() {
        let data = xorshift_bytes(6 << 20, 0x5eed);
        let cdc = Cdc::new(16 << 10, 64 << 10, 256 << 10);
        let results: Vec<_> = split(&data, 0..data.len(), cdc, 3, true).into_iter().map(ScanPiece::scan).collect();
        let known: Vec<KnownCut> = results.iter().flat_map(|r| r.known.iter().copied()).collect();
        assert!(known.len() > 50, "walking ahead cut {} chunks", known.len());
        for cut in &known {
            assert_eq!(cut.length, crate_length_from(&data, cut.start, &cdc), "chunk at {}", cut.start);
        }

        let mut walk = Walk::new(cdc);
        walk.add(results);
        let (mut start, mut unknown, mut chunks) = (0, 0, 0);
        while start < data.len() {
            let was_known = walk.known.binary_search_by_key(&start, |k| k.start).is_ok();
            unknown += usize::from(!was_known);
            chunks += 1;
            start += walk.cut(&data, start);
        }
        // 3 pieces of 4 lanes: 11 guessed starts, each off the true chain for a chunk or two.
        assert!(unknown <= 2 * 11, "{unknown} of {chunks} chunks were cut by the walk itself");
    }

    #[test]
    fn a_chunk_that_could_reach_past_an_unfinished_stream_is_left_to_the_walk() {
        let data = xorshift_bytes(1 << 20, 7);
        let cdc = Cdc::new(16 << 10, 64 << 10, 256 << 10);
        let result = ScanPiece { data: &data, cdc, start: 0, end: data.len(), complete: false }.scan();
        let last = result.known.iter().map(|k| k.start).max().expect("some chunks");
        assert!(last + cdc.max <= data.len(), "a chunk at {last} was cut with less than the maximum after it");
        let complete = ScanPiece { data: &data, cdc, start: 0, end: data.len(), complete: true }.scan();
        let ends = complete.known.iter().map(|k| k.start + k.length).max();
        assert_eq!(ends, Some(data.len()), "with the whole image a lane cuts up to its end");
    }
}
