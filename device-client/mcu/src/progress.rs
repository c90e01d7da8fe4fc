//! Which chunks of the target image already sit verified in DFU: one bit per chunk.
//!
//! Why a bitmap and not the record's `chunks_done` count: chunks may arrive out of order from
//! several edges, and after a power cut the agent must fetch only the missing ones. The
//! in-flash encoding (inverted bits, so a mark needs no erase) belongs to
//! [`crate::agent_store`]; this type is the plain in-memory view.

/// Most chunks one image may have. 1024 chunks of the default chunk size cover any image
/// an MCU of this class can hold, and keep the bitmap at 128 bytes.
pub const MAX_CHUNKS: u32 = 1024;
/// Bytes of a full bitmap.
pub const BITMAP_BYTES: usize = MAX_CHUNKS as usize / 8;

/// A chunk index at or past the image's chunk count, or a count above [`MAX_CHUNKS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOutOfRange {
    /// The index (or count) asked for.
    pub index: u32,
    /// The limit it broke.
    pub limit: u32,
}

/// Done-bits for the chunks `0..chunk_count`; bits past `chunk_count` are always clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkProgress {
    chunk_count: u32,
    done: [u8; BITMAP_BYTES],
}

impl ChunkProgress {
    /// No chunk done yet, for an image of `chunk_count` chunks.
    pub fn new(chunk_count: u32) -> Result<ChunkProgress, ChunkOutOfRange> {
        if chunk_count > MAX_CHUNKS {
            return Err(ChunkOutOfRange { index: chunk_count, limit: MAX_CHUNKS });
        }
        Ok(ChunkProgress { chunk_count, done: [0; BITMAP_BYTES] })
    }

    /// Progress for no image at all (no download under way).
    pub const fn none() -> ChunkProgress {
        ChunkProgress { chunk_count: 0, done: [0; BITMAP_BYTES] }
    }

    /// Rebuilds progress from stored done-bits, dropping any bit past `chunk_count` so two
    /// views of the same progress compare equal.
    pub(crate) fn from_done_bits(chunk_count: u32, mut done: [u8; BITMAP_BYTES]) -> Result<Self, ChunkOutOfRange> {
        let mut progress = ChunkProgress::new(chunk_count)?;
        for index in chunk_count..MAX_CHUNKS {
            let (byte, mask) = Self::position(index);
            done[byte] &= !mask;
        }
        progress.done = done;
        Ok(progress)
    }

    /// The raw done-bits (bit `i % 8` of byte `i / 8` is chunk `i`).
    pub(crate) fn done_bits(&self) -> &[u8; BITMAP_BYTES] {
        &self.done
    }

    /// Chunks in the image.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// Byte index and bit mask of chunk `index`; callers have bounded `index` by MAX_CHUNKS.
    pub(crate) fn position(index: u32) -> (usize, u8) {
        ((index / 8) as usize, 1u8 << (index % 8))
    }

    fn check(&self, index: u32) -> Result<(usize, u8), ChunkOutOfRange> {
        if index >= self.chunk_count {
            return Err(ChunkOutOfRange { index, limit: self.chunk_count });
        }
        Ok(Self::position(index))
    }

    /// Whether chunk `index` is done; false for indexes outside the image.
    pub fn is_done(&self, index: u32) -> bool {
        match self.check(index) {
            Ok((byte, mask)) => self.done[byte] & mask != 0,
            Err(_) => false,
        }
    }

    /// Marks chunk `index` done (idempotent).
    pub fn mark(&mut self, index: u32) -> Result<(), ChunkOutOfRange> {
        let (byte, mask) = self.check(index)?;
        self.done[byte] |= mask;
        Ok(())
    }

    /// How many chunks are done.
    pub fn done_count(&self) -> u32 {
        self.done.iter().map(|b| b.count_ones()).sum()
    }

    /// The lowest chunk not done yet, or `None` when every chunk is done.
    pub fn first_missing(&self) -> Option<u32> {
        (0..self.chunk_count).find(|&i| !self.is_done(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_bounded_and_counted() {
        let mut p = ChunkProgress::new(10).unwrap();
        assert_eq!(p.first_missing(), Some(0));
        p.mark(0).unwrap();
        p.mark(9).unwrap();
        p.mark(9).unwrap();
        assert_eq!(p.mark(10), Err(ChunkOutOfRange { index: 10, limit: 10 }));
        assert!(p.is_done(9) && !p.is_done(10) && !p.is_done(u32::MAX));
        assert_eq!(p.done_count(), 2);
        assert_eq!(p.first_missing(), Some(1));
        assert!(ChunkProgress::new(MAX_CHUNKS + 1).is_err());
    }

    #[test]
    fn stray_bits_past_the_count_are_dropped() {
        let p = ChunkProgress::from_done_bits(3, [0xFF; BITMAP_BYTES]).unwrap();
        assert_eq!(p.done_count(), 3);
        assert_eq!(p.first_missing(), None);
    }
}
