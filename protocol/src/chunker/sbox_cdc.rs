//! S-box CDC: content-defined cut points from a windowed hash that vector units compute for
//! 64 positions at a time, so finding cuts costs a fraction of hashing the chunks.
//!
//! Why another chunker: FastCDC's gear hash is one table lookup and one shift-add per byte,
//! about 4 GiB/s here even with the four-lane scan of `fast_cdc.rs`, half of blake3's speed
//! on one core, so cutting took more time than hashing the chunks. This hash is built from
//! the instruction that x86 CPUs with GFNI run on 64 bytes at once: an S-box (inversion in
//! GF(2^8), then an 8×8 bit matrix, `gf2p8affineinvqb`). Its cut points are found at 1.2–1.6×
//! blake3's speed (`scripts/bench-pipeline`).
//!
//! Why it is not the default: its cut points differ from FastCDC's, and a device reuses only
//! chunks whose ids match its installed release's, so the first release cut this way after
//! FastCDC ones is downloaded in full by every site and device; and agents and edge nodes
//! built before it refuse its manifests (chunking kind 2 is unknown to them), so a fleet
//! upgrades them first. `seeder release add --chunking sbox-cdc` chooses it per release.
//!
//! The hash of position `i` depends on the 16 bytes `data[i - 15..=i]`, nothing else, so a cut
//! moves only when bytes within 16 of it change: boundaries survive insertions like FastCDC's.
//! With `T_k(x) = A_k · inv(x)` for 32 fixed matrices `A_k`, and all sums mod 256:
//! - `p1 = C1 + Σ_{k<4} T_k(b[i-k])` (bits 0–7),
//! - `p2 = T_1(b[i-1]) + 2·T_2(b[i-2]) + 3·T_3(b[i-3])`, low two bits (bits 8–9),
//! - `q = CQ + Σ_{4≤k<16} T_k(b[i-k])` (bits 10–17),
//! - `r = CR + Σ_{k<16} T_{16+k}(b[i-k])` (bits 18–25).
//!
//! A cut test with `n` bits passes when the hash's low `n` bits are zero. The first ten bits
//! need only the four newest bytes: `sbox-scan` computes them for 64 positions per step, `q`
//! as well for the one step in sixteen where some position passes them, and only the rare
//! positions that pass both are hashed in full here. Without AVX-512 and GFNI a portable
//! loop computes the first ten bits from byte-pair tables: the same cut points at about
//! 1.3 GiB/s here, a third of FastCDC's scan, so S-box CDC only pays on publishers with
//! those instructions (AVX2+GFNI and NEON paths would widen that).
//!
//! The walk from cut to cut is FastCDC's (`fast_cdc::Walk`): no cut before the minimum, a
//! stricter test (average bits + 1) up to the average, a looser one (bits − 1) after it, and a
//! forced cut at the maximum. Unlike FastCDC, positions are not rounded to even and no hash
//! restarts at the minimum: the windowed hash is the whole definition.
//!
//! The matrices and constants below are part of the format: changing any of them moves every
//! cut point of every release chunked this way. `tests` pins the cut points of a fixed image.

use std::ops::Range;
use std::sync::OnceLock;
#[cfg(test)]
use std::vec::Vec;

/// Bytes whose values decide a position's hash: the position's own and the 15 before it.
pub const WINDOW: usize = 16;

/// Bits the vector prefilter decides (`p1` and the low two bits of `p2`).
const PREFILTER_BITS: u32 = 10;

/// Where the 32 matrices come from: splitmix64 from this seed ("otamesh" in ASCII), keeping
/// the outputs that are invertible matrices so every S-box is a permutation of the bytes
/// (a random-looking but lopsided S-box would bias the sums the cut tests read).
const MATRIX_SEED: u64 = 0x006f_7461_6d65_7368;

/// Added to `p1`, `q` and `r`. Chosen with `tests::no_run_of_one_byte_value_ever_cuts`: a run
/// of any single byte value (zero-filled partitions, erased flash) passes no test that uses
/// ten bits or more, so long runs become maximum-size chunks instead of minimum-size ones.
const C1: u8 = 0x5b;
const CQ: u8 = 0xa7;
const CR: u8 = 0x3d;

/// The S-boxes as matrices (for the vector kernel) and as tables (for everything else).
struct Sboxes {
    matrices: [u64; 32],
    tables: [[u8; 256]; 32],
    /// The portable prefilter's table, indexed by two bytes `u16::from_le_bytes([older,
    /// newer])`. As a position's newest pair (bytes 1 and 0 back), an entry's low half holds
    /// `T_0 + T_1` and `T_1` (low and high byte); as the pair before it (3 and 2 back), its
    /// high half holds `T_2 + T_3` and `2·T_2 + 3·T_3`. Bytewise sums of the two halves give
    /// `p1 - C1` and `p2`: one lookup per position (each pair serves two positions), in
    /// 256 KiB that stay in L2.
    pairs: Vec<u32>,
}

fn sboxes() -> &'static Sboxes {
    static SBOXES: OnceLock<Sboxes> = OnceLock::new();
    SBOXES.get_or_init(|| {
        let mut state = MATRIX_SEED;
        let mut matrices = [0u64; 32];
        for matrix in &mut matrices {
            *matrix = loop {
                let candidate = splitmix64(&mut state);
                if is_invertible(candidate) {
                    break candidate;
                }
            };
        }
        let inverses: [u8; 256] = core::array::from_fn(|x| gf_inverse(x as u8));
        let tables: [[u8; 256]; 32] = matrices.map(|matrix| core::array::from_fn(|x| affine(matrix, inverses[x])));
        let t = |k: usize, byte: u8| tables[k][byte as usize];
        let pairs = (0..=u16::MAX)
            .map(|index| {
                let [older, newer] = index.to_le_bytes();
                let as_newest = [t(0, newer).wrapping_add(t(1, older)), t(1, older)];
                let (t2, t3) = (t(2, newer), t(3, older));
                let as_older = [t2.wrapping_add(t3), t2.wrapping_mul(2).wrapping_add(t3.wrapping_mul(3))];
                u32::from_le_bytes([as_newest[0], as_newest[1], as_older[0], as_older[1]])
            })
            .collect();
        Sboxes { matrices, tables, pairs }
    })
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (the AES and GFNI field).
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1B;
        }
        b >>= 1;
    }
    product
}

/// The multiplicative inverse, with 0 mapped to 0 as GFNI does.
fn gf_inverse(x: u8) -> u8 {
    (1..=255u8).find(|&y| gf_mul(x, y) == 1).unwrap_or(0)
}

/// `gf2p8affineqb` on one byte with a zero constant: output bit `j` is the parity of `x` and
/// the matrix's byte `7 - j`.
fn affine(matrix: u64, x: u8) -> u8 {
    (0..8).fold(0, |out, bit| {
        let row = (matrix >> (8 * (7 - bit))) as u8;
        out | ((((row & x).count_ones() & 1) as u8) << bit)
    })
}

/// Whether the matrix's eight rows are linearly independent over GF(2).
fn is_invertible(matrix: u64) -> bool {
    let mut rows = matrix.to_le_bytes();
    for bit in 0..8 {
        let Some(pivot) = (bit..8).find(|&r| rows[r] & (1 << bit) != 0) else { return false };
        rows.swap(bit, pivot);
        for r in 0..8 {
            if r != bit && rows[r] & (1 << bit) != 0 {
                rows[r] ^= rows[bit];
            }
        }
    }
    true
}

/// The hash of the position whose byte is `window[WINDOW - 1]`, from the 16 bytes ending there.
/// This is the definition; the scans only find the same values faster.
pub fn window_hash(window: &[u8; WINDOW]) -> u32 {
    let tables = &sboxes().tables;
    let back = |k: usize| window[WINDOW - 1 - k] as usize;
    let t: [u8; 4] = core::array::from_fn(|k| tables[k][back(k)]);
    let p1 = C1.wrapping_add(t[0]).wrapping_add(t[1]).wrapping_add(t[2]).wrapping_add(t[3]);
    let p2 = t[1].wrapping_add(t[2].wrapping_mul(2)).wrapping_add(t[3].wrapping_mul(3));
    let q = (4..WINDOW).fold(CQ, |q, k| q.wrapping_add(tables[k][back(k)]));
    let r = (0..WINDOW).fold(CR, |r, k| r.wrapping_add(tables[16 + k][back(k)]));
    p1 as u32 | ((p2 & 3) as u32) << 8 | (q as u32) << 10 | (r as u32) << 18
}

/// The hash at position `at`, which has at least `WINDOW - 1` bytes before it.
fn hash_at(data: &[u8], at: usize) -> u32 {
    window_hash(data[at + 1 - WINDOW..=at].try_into().expect("a full window"))
}

/// The cut masks for an average size: its bits + 1 before the average, − 1 after, as FastCDC's
/// normalization level 1. `avg_bytes` passed `Chunking::validate` (at most 4 MiB), so both
/// fit the hash's 26 bits.
pub(super) fn masks(avg_bytes: u32) -> (u64, u64) {
    let bits = 31 - avg_bytes.leading_zeros();
    ((1u64 << (bits + 1)) - 1, (1u64 << (bits - 1)) - 1)
}

/// Calls `found(position, hash)`, in order, for every position in `positions` (those with a
/// full window) whose hash has the bits of `mask` clear.
pub(super) fn scan(data: &[u8], positions: Range<usize>, mask: u64, found: &mut impl FnMut(usize, u64)) {
    let start = positions.start.max(WINDOW - 1);
    if start >= positions.end {
        return;
    }
    let mask = mask as u32;
    let mut check = |at: usize| {
        let hash = hash_at(data, at);
        if hash & mask == 0 {
            found(at, hash as u64);
        }
    };
    let prefilter_mask = mask & ((1 << PREFILTER_BITS) - 1);
    let filter = sbox_scan::Prefilter {
        matrices: sboxes().matrices[..16].try_into().expect("16 of the 32 matrices"),
        p_offset: C1,
        q_offset: CQ,
        mask_p1: prefilter_mask as u8,
        mask_p2: (prefilter_mask >> 8) as u8,
        mask_q: (mask >> PREFILTER_BITS) as u8,
    };
    let vector_end = sbox_scan::prefilter(data, start..positions.end, &filter, &mut check).unwrap_or(start);
    prefilter_portable(data, vector_end..positions.end, prefilter_mask, &mut check);
}

/// The prefilter on any CPU: the first ten bits of the hash from the four newest bytes, one
/// pair-table lookup a position (see [`Sboxes::pairs`]), four positions a turn so each
/// table entry is looked up once for the two positions that use it.
fn prefilter_portable(data: &[u8], positions: Range<usize>, mask: u32, hit: &mut impl FnMut(usize)) {
    if positions.is_empty() {
        return;
    }
    let pairs: &[u32; 1 << 16] = sboxes().pairs.as_slice().try_into().expect("an entry per byte pair");
    let (mask_p1, mask_p2) = (mask & 0xFF, (mask >> 8 & 0xFF) << 8);
    // The entry of the pair ending `r + 1` bytes into `bytes`, whose byte 0 is 3 back from
    // position `positions.start`.
    let bytes = &data[positions.start - 3..positions.end];
    let entry = |w: &[u8], k: usize| pairs[u16::from_le_bytes([w[k], w[k + 1]]) as usize];
    let passes = |newest: u32, older: u32| {
        let p1 = (newest & 0xFF) + (older >> 16 & 0xFF) + C1 as u32;
        let p2 = (newest & 0xFF00) + (older >> 16 & 0xFF00);
        p1 & mask_p1 == 0 && p2 & mask_p2 == 0
    };
    let mut r = 0;
    while r + 4 <= positions.len() {
        let w: &[u8; 7] = bytes[r..r + 7].try_into().expect("seven bytes");
        let e: [u32; 6] = core::array::from_fn(|k| entry(w, k));
        let pass = [passes(e[2], e[0]), passes(e[3], e[1]), passes(e[4], e[2]), passes(e[5], e[3])];
        for (k, _) in pass.iter().enumerate().filter(|(_, &p)| p) {
            hit(positions.start + r + k);
        }
        r += 4;
    }
    for r in r..positions.len() {
        if passes(entry(bytes, r + 2), entry(bytes, r)) {
            hit(positions.start + r);
        }
    }
}

/// Every candidate `scan` finds, by the portable prefilter alone (tests compare the two).
#[cfg(test)]
fn scan_portable(data: &[u8], positions: Range<usize>, mask: u64) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let start = positions.start.max(WINDOW - 1);
    prefilter_portable(data, start..positions.end.max(start), mask as u32 & ((1 << PREFILTER_BITS) - 1), &mut |at| {
        let hash = hash_at(data, at);
        if hash & mask as u32 == 0 {
            out.push((at, hash as u64));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::tests::xorshift_bytes as xorshift;

    #[test]
    fn the_sboxes_are_permutations_and_match_the_field() {
        let boxes = sboxes();
        for table in &boxes.tables {
            let mut seen = [false; 256];
            table.iter().for_each(|&y| seen[y as usize] = true);
            assert!(seen.iter().all(|&s| s), "an S-box is not a permutation");
        }
        assert_eq!(gf_inverse(0), 0);
        assert_eq!(gf_inverse(1), 1);
        assert_eq!(gf_inverse(0x53), 0xCA, "the AES field's textbook pair");
        assert_eq!(affine(0x0102_0408_1020_4080, 0xA5), 0xA5, "the identity matrix in GFNI's row order");
    }

    #[test]
    fn no_run_of_one_byte_value_ever_cuts() {
        let mask = (1u32 << PREFILTER_BITS) - 1;
        for value in 0..=255u8 {
            assert_ne!(window_hash(&[value; WINDOW]) & mask, 0, "a run of {value:#04x} would cut");
        }
    }

    #[test]
    fn the_vector_and_portable_scans_find_the_same_candidates() {
        let mut data = xorshift(1 << 20, 0x2545_F491_4F6C_DD1D);
        // Low-entropy stretches and a run, as filesystem images have.
        data[200_000..400_000].iter_mut().for_each(|b| *b &= 0x0F);
        data[500_000..520_000].fill(0);
        for avg in [4096u32, 65536, 1 << 22] {
            let (_, mask_l) = masks(avg);
            for range in [0..data.len(), 1..data.len() - 1, 17..100_000, 70_001..70_100, 5..5] {
                let mut vector = Vec::new();
                scan(&data, range.clone(), mask_l, &mut |at, hash| vector.push((at, hash)));
                assert_eq!(vector, scan_portable(&data, range.clone(), mask_l), "avg {avg}, {range:?}");
            }
        }
    }

    /// The format's fixed point: these cut points are what every release chunked with S-box CDC
    /// was cut with. A change here is a change of format, not a refactoring.
    #[test]
    fn the_cut_points_of_a_fixed_image_never_change() {
        let data = xorshift(4 << 20, 0x2545_F491_4F6C_DD1D);
        let spans = crate::chunker::spans(&data, crate::chunker::Chunking::DEFAULT_SBOX_CDC).unwrap();
        let lengths: Vec<u32> = spans.iter().map(|s| s.length).collect();
        let fold = lengths.iter().fold(0u64, |acc, &l| acc.rotate_left(7) ^ l as u64);
        let first = [68721, 48452, 32414, 75424, 65615, 110849, 123766, 26506];
        assert_eq!((lengths.len(), &lengths[..8], fold), (57, &first[..], 0x9d0b_d09a_016a_8819));
    }

    proptest::proptest! {
        /// The portable prefilter against the definition, so CPUs without the vector kernel
        /// are covered too: random bytes, bytes from a small alphabet, every range shape.
        #[test]
        fn the_portable_prefilter_passes_exactly_where_the_hash_does(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 16..3000),
            alphabet in 1u8..=255,
            start in 0usize..64,
            bits in 1u32..=10,
        ) {
            let data: Vec<u8> = data.iter().map(|b| b % alphabet).collect();
            let start = (WINDOW - 1 + start).min(data.len());
            let mask = (1u32 << bits) - 1;
            let mut hits = Vec::new();
            prefilter_portable(&data, start..data.len(), mask, &mut |at| hits.push(at));
            let expected: Vec<usize> = (start..data.len()).filter(|&at| hash_at(&data, at) & mask == 0).collect();
            proptest::prop_assert_eq!(hits, expected);
        }
    }

    #[test]
    fn about_one_position_in_two_to_the_mask_bits_passes() {
        let data = xorshift(8 << 20, 0x9E37_79B9_7F4A_7C15);
        let (_, mask_l) = masks(65536);
        let mut count = 0usize;
        scan(&data, 0..data.len(), mask_l, &mut |_, _| count += 1);
        let expected = data.len() >> mask_l.count_ones();
        assert!(
            count * 10 > expected * 9 && count * 10 < expected * 11,
            "{count} candidates, about {expected} expected"
        );
    }
}
