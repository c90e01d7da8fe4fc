//! Which chunks of a release a node holds: one bit per chunk index.

use alloc::vec::Vec;

/// A fixed-length set of chunk indices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl Bitfield {
    /// An empty set over `len` chunks.
    pub fn new(len: u32) -> Self {
        Bitfield { words: alloc::vec![0; (len as usize).div_ceil(64)], len, ones: 0 }
    }
    /// A full set over `len` chunks (what an origin holds).
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }
    /// Number of chunks the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }
    /// True when it ranges over no chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Number of chunks held.
    pub fn count(&self) -> u32 {
        self.ones
    }
    /// True when every chunk is held.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }
    /// Whether chunk `i` is held; out-of-range indices are not.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] >> (i % 64) & 1 == 1
    }
    /// Marks chunk `i` held; returns whether it was newly set.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.ones += 1;
        true
    }
    /// Marks chunk `i` not held; returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.ones -= 1;
        true
    }
    /// The chunks in `range` not held, in ascending order, a word at a time (late in a fetch
    /// most of a release is held).
    pub fn missing(&self, range: core::ops::Range<u32>) -> Indices<'_> {
        Indices { words: &self.words, flip: !0, next: range.start, end: range.end.min(self.len) }
    }
    /// The chunks in `range` held, in ascending order, a word at a time.
    pub fn held(&self, range: core::ops::Range<u32>) -> Indices<'_> {
        Indices { words: &self.words, flip: 0, next: range.start, end: range.end.min(self.len) }
    }
    /// The set as 64-bit words, chunk i in bit i % 64 of word i / 64; bits past the length are
    /// never set. For combining sets a word at a time (the scheduler's passes).
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// The set of `len` chunks whose words are `words` (as [`Self::words`] gives them): words
    /// past the length are dropped, missing ones read as empty, bits past the length cleared.
    pub fn from_words(len: u32, mut words: Vec<u64>) -> Self {
        let count = (len as usize).div_ceil(64);
        words.resize(count, 0);
        if let Some(last) = words.last_mut() {
            *last &= valid_bits(len, count - 1);
        }
        let ones = words.iter().map(|w| w.count_ones()).sum();
        Bitfield { words, len, ones }
    }
    /// Little-endian bytes, bit i of byte i/8 = chunk i; the wire form of a Have message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate((self.len as usize).div_ceil(8));
        out
    }
    /// Parses the wire form for a release of `len` chunks. Bits past `len` are ignored, so a
    /// peer cannot claim chunks that do not exist; missing bytes are chunks not held. Eight
    /// bytes at a time: an edge node parses a Have answer from each peer it polls, twice a
    /// second while a release is pending.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Self {
        let mut words = alloc::vec![0u64; (len as usize).div_ceil(64)];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut le = [0u8; 8];
            le[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        Self::from_words(len, words)
    }
}

/// The bits of word `w` that stand for chunks of a set of `len` chunks: all of them but in
/// the last word's tail (for combining sets' words where a word's complement is taken).
pub(crate) fn valid_bits(len: u32, w: usize) -> u64 {
    let in_word = (len as usize).saturating_sub(w * 64);
    if in_word >= 64 {
        !0
    } else {
        (1u64 << in_word) - 1
    }
}

/// The chunks whose bits are set in `word`, word `w` of a set, in ascending order.
pub(crate) fn held_in_word(w: usize, mut word: u64) -> impl Iterator<Item = u32> {
    core::iter::from_fn(move || {
        let bit = (word != 0).then(|| word.trailing_zeros())?;
        word &= word - 1;
        Some(w as u32 * 64 + bit)
    })
}

/// The chunks of a range held or not held (see [`Bitfield::ones`] and [`Bitfield::missing`]).
pub struct Indices<'a> {
    words: &'a [u64],
    /// Xored into each word: all ones to walk the chunks not held.
    flip: u64,
    next: u32,
    end: u32,
}

impl Iterator for Indices<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.next < self.end {
            let word = self.words[(self.next / 64) as usize] ^ self.flip;
            // The chunks walked from `next` to the end of its word (bits past the set's
            // length are never set, and read as missing once flipped: `end` bounds both walks).
            let free = word >> (self.next % 64);
            if free == 0 {
                // The next word (none past the last one a `u32` index reaches).
                let Some(next_word) = (self.next / 64 + 1).checked_mul(64) else { break };
                self.next = next_word;
                continue;
            }
            let index = self.next + free.trailing_zeros();
            if index >= self.end {
                break;
            }
            self.next = index + 1;
            return Some(index);
        }
        self.next = self.end;
        None
    }
}

/// A small deterministic source of test patterns (xorshift32), for the tests of sets and
/// of the scheduler that combines them.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u32) -> impl FnMut() -> u32 {
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_and_wire_form() {
        let mut b = Bitfield::new(70);
        assert!(b.set(0) && b.set(69) && !b.set(69) && !b.set(70));
        assert_eq!(b.count(), 2);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 9);
        assert_eq!(Bitfield::from_bytes(70, &bytes), b);
        assert!(b.clear(0) && !b.clear(0));
        assert_eq!(b.count(), 1);
        assert!(Bitfield::full(70).is_full());
        // Bits beyond the length in a hostile message are ignored.
        assert_eq!(Bitfield::from_bytes(3, &[0xff, 0xff]).count(), 3);
    }

    /// The word-at-a-time parse holds exactly the bits a bit-by-bit reading finds, for
    /// lengths around word edges and messages that are short, exact or too long.
    #[test]
    fn parsing_the_wire_form_matches_reading_it_bit_by_bit() {
        let mut random = xorshift(0x2545_f491);
        let mut byte = || random() as u8;
        for len in [0u32, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 1000, 1021] {
            for bytes_len in [0, len as usize / 8, (len as usize).div_ceil(8), len as usize / 8 + 9] {
                let bytes: Vec<u8> = (0..bytes_len).map(|_| byte()).collect();
                let parsed = Bitfield::from_bytes(len, &bytes);
                let mut expected = Bitfield::new(len);
                for i in 0..len {
                    if bytes.get(i as usize / 8).is_some_and(|b| b >> (i % 8) & 1 == 1) {
                        expected.set(i);
                    }
                }
                assert_eq!(parsed, expected, "len {len}, {bytes_len} bytes");
                assert_eq!(parsed.count(), (0..len).filter(|i| parsed.get(*i)).count() as u32);
            }
        }
    }

    /// The word-at-a-time walks find exactly the chunks a bit-by-bit test of each index
    /// finds, for ranges that start, end and wrap anywhere around word edges; a set rebuilt
    /// from its words is the same set.
    #[test]
    fn missing_chunks_match_testing_each_index() {
        let mut next = xorshift(0x9e37_79b9);
        for len in [0u32, 1, 63, 64, 65, 130, 1021] {
            let mut b = Bitfield::new(len);
            for i in 0..len {
                if !next().is_multiple_of(3) {
                    b.set(i);
                }
            }
            for _ in 0..20 {
                let start = if len == 0 { 0 } else { next() % (len + 2) };
                let end = start + next() % (len + 70);
                let want: Vec<u32> = (start..end).filter(|i| *i < len && !b.get(*i)).collect();
                assert_eq!(b.missing(start..end).collect::<Vec<_>>(), want, "len {len} {start}..{end}");
                let held: Vec<u32> = (start..end).filter(|i| b.get(*i)).collect();
                assert_eq!(b.held(start..end).collect::<Vec<_>>(), held, "len {len} {start}..{end}");
                let by_words: Vec<u32> = b
                    .words()
                    .iter()
                    .enumerate()
                    .flat_map(|(w, word)| held_in_word(w, *word))
                    .filter(|i| (start..end).contains(i))
                    .collect();
                assert_eq!(by_words, held, "len {len} {start}..{end}");
            }
            assert_eq!(Bitfield::full(len).missing(0..len).count(), 0);
            assert_eq!(Bitfield::new(len).missing(0..len).count() as u32, len);
            // Rebuilt from its words, with words too many or too few, and the tail's stray bits.
            assert_eq!(Bitfield::from_words(len, b.words().to_vec()), b);
            let mut longer = b.words().to_vec();
            longer.extend([!0, !0]);
            if let Some(last) = longer.get_mut(b.words().len().saturating_sub(1)).filter(|_| len % 64 != 0) {
                *last |= !0 << (len % 64);
            }
            assert_eq!(Bitfield::from_words(len, longer), b);
            let shorter = Bitfield::from_words(len, b.words().iter().copied().take(1).collect());
            let mut first_word_only = Bitfield::new(len);
            for i in b.held(0..len.min(64)) {
                first_word_only.set(i);
            }
            assert_eq!(shorter, first_word_only);
        }
    }
}
