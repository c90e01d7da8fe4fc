//! The vector kernel of protocol's S-box chunker (`protocol::chunker`, `Chunking::SboxCdc`).
//!
//! Why a crate of its own: the kernel needs `unsafe` (runtime-dispatched `#[target_feature]`
//! code and raw-pointer vector loads), and protocol forbids unsafe code. Keeping the kernel
//! here keeps that guarantee literal there and puts every unsafe line of chunking in one
//! short file to review. protocol holds the definition and a portable implementation; this
//! crate only finds, faster, the same positions that the portable prefilter finds, and
//! protocol's tests compare the two.
//!
//! What it computes, per position `i`, with `T_k = A_k · inv(data[i - k])` in GF(2^8) (the
//! AES field; `inv(0) = 0`; `A_k` an 8×8 bit matrix in `gf2p8affineinvqb`'s row order):
//! - `p1 = p_offset + T_0 + T_1 + T_2 + T_3`,
//! - `p2 = T_1 + 2·T_2 + 3·T_3` and
//! - `q = q_offset + T_4 + … + T_15`, all mod 256;
//!
//! and a position passes when `p1 & mask_p1`, `p2 & mask_p2` and `q & mask_q` are all zero.
//! `gf2p8affineinvqb` computes one `T_k` for 64 positions in one instruction, which is what
//! makes the scan cost a fraction of hashing the same bytes with blake3. `q` costs three
//! times `p1` and `p2` together, so it is computed only for the few 64-position steps where
//! some position passes those (about one in sixteen when ten bits are tested): testing it in
//! scalar code at each such position cost more than the whole vector step.

#![deny(missing_docs)]

use core::ops::Range;

/// The prefilter's parameters (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefilter {
    /// `A_0..A_15`, one per byte offset back from the position.
    pub matrices: [u64; 16],
    /// Added to `p1`.
    pub p_offset: u8,
    /// Added to `q`.
    pub q_offset: u8,
    /// Bits of `p1` that must be zero.
    pub mask_p1: u8,
    /// Bits of `p2` that must be zero.
    pub mask_p2: u8,
    /// Bits of `q` that must be zero.
    pub mask_q: u8,
}

/// Calls `hit(i)`, in increasing order, for every passing position `i` in `positions`,
/// working in whole steps of 64 positions from `positions.start`, and returns the first
/// position it did not look at; the caller checks the rest. `None`, having called nothing,
/// when this CPU lacks AVX-512BW or GFNI. Positions must have fifteen bytes before them.
///
/// # Panics
/// When `positions.start < 15` or `positions.end > data.len()`.
pub fn prefilter(
    data: &[u8],
    positions: Range<usize>,
    filter: &Prefilter,
    hit: &mut dyn FnMut(usize),
) -> Option<usize> {
    assert!(positions.start >= 15 && positions.end <= data.len(), "positions out of range");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("gfni")
        {
            // SAFETY: the CPU has the features `prefilter_avx512` is compiled for (checked just
            // above), and the range was checked against `data` (see its loads).
            return Some(unsafe { x86::prefilter_avx512(data, positions, filter, hit) });
        }
    }
    let _ = (data, filter, hit);
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Prefilter, Range};
    use core::arch::x86_64::*;

    /// Positions per vector step.
    const LANES: usize = 64;

    /// See [`super::prefilter`]. Every load reads `data[i - k .. i - k + 64]` for `k` in
    /// `0..16` and a step at `i` runs only while `i + 64 <= positions.end <= data.len()`,
    /// with `i >= positions.start >= 15`: all in bounds.
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    pub(super) unsafe fn prefilter_avx512(
        data: &[u8],
        positions: Range<usize>,
        filter: &Prefilter,
        hit: &mut dyn FnMut(usize),
    ) -> usize {
        let matrix = filter.matrices.map(|m| _mm512_set1_epi64(m as i64));
        let p_offset = _mm512_set1_epi8(filter.p_offset as i8);
        let q_offset = _mm512_set1_epi8(filter.q_offset as i8);
        let mask_p1 = _mm512_set1_epi8(filter.mask_p1 as i8);
        let mask_p2 = _mm512_set1_epi8(filter.mask_p2 as i8);
        let mask_q = _mm512_set1_epi8(filter.mask_q as i8);
        let base = data.as_ptr();
        let mut i = positions.start;
        while i + LANES <= positions.end {
            // T_k for the 64 positions from i: the bytes k back, through the k-th S-box.
            // SAFETY: in bounds, see the function's docs.
            let t = |k: usize| unsafe {
                _mm512_gf2p8affineinv_epi64_epi8::<0>(_mm512_loadu_si512(base.add(i - k).cast()), matrix[k])
            };
            let (t0, t1, t2, t3) = (t(0), t(1), t(2), t(3));
            let t1_t3 = _mm512_add_epi8(t1, t3);
            let t2_t3 = _mm512_add_epi8(t2, t3);
            let p1 = _mm512_add_epi8(_mm512_add_epi8(t1_t3, t2), _mm512_add_epi8(t0, p_offset));
            let p2 = _mm512_add_epi8(_mm512_add_epi8(t1_t3, t2_t3), t2_t3);
            let mut passing = _mm512_testn_epi8_mask(p1, mask_p1) & _mm512_testn_epi8_mask(p2, mask_p2);
            if passing != 0 && filter.mask_q != 0 {
                // Four independent sums of three, so the adds do not wait on each other.
                let sum3 = |k: usize| _mm512_add_epi8(_mm512_add_epi8(t(k), t(k + 1)), t(k + 2));
                let (a, b, c, d) = (sum3(4), sum3(7), sum3(10), sum3(13));
                let q = _mm512_add_epi8(_mm512_add_epi8(a, b), _mm512_add_epi8(_mm512_add_epi8(c, d), q_offset));
                passing &= _mm512_testn_epi8_mask(q, mask_q);
            }
            while passing != 0 {
                hit(i + passing.trailing_zeros() as usize);
                passing &= passing - 1;
            }
            i += LANES;
        }
        i
    }
}
