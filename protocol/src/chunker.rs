//! How an image is cut into chunks.
//!
//! Three strategies, recorded in every manifest. A device reuses the chunks of its installed
//! release whose ids the new manifest lists, so releases cut the same way share chunks and
//! releases cut differently share none:
//! - FastCDC (content-defined, 16/64/256 KiB by default) for Linux filesystem images, where an
//!   insertion shifts bytes and fixed chunks would all change;
//! - S-box CDC, content-defined like FastCDC but with a hash that vector units compute for
//!   64 positions at once (`sbox_cdc`), so cutting costs a fraction of hashing;
//! - fixed-size chunks aligned to flash sectors for MCU firmware, which needs no heap.

#[cfg(feature = "std")]
mod fast_cdc;
#[cfg(feature = "std")]
pub mod sbox_cdc;
#[cfg(feature = "std")]
pub use fast_cdc::{CutCandidates, ScanPiece};

/// The chunking strategy and its parameters, as stored in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Every chunk is `size_bytes` long except possibly the last.
    Fixed {
        /// Chunk length in bytes; a multiple of the flash sector size on MCUs.
        size_bytes: u32,
    },
    /// FastCDC (2020 variant, normalization level 1) with these bounds.
    FastCdc {
        /// No chunk is shorter, except the last.
        min_bytes: u32,
        /// The target average.
        avg_bytes: u32,
        /// No chunk is longer.
        max_bytes: u32,
    },
    /// S-box CDC (see [`sbox_cdc`]) with these bounds: FastCDC's walk and normalization over
    /// a 16-byte windowed hash built for vector units. Other cut points than FastCDC's.
    SboxCdc {
        /// No chunk is shorter, except the last.
        min_bytes: u32,
        /// The target average.
        avg_bytes: u32,
        /// No chunk is longer.
        max_bytes: u32,
    },
}

/// The limits every chunking must respect. They bound what a device must buffer for one
/// chunk and keep FastCDC inside the ranges its implementation accepts.
pub mod limits {
    /// Smallest fixed chunk (one small flash page).
    pub const MIN_FIXED_BYTES: u32 = 256;
    /// Largest chunk of any kind: a device buffers one stored chunk at a time.
    pub const MAX_CHUNK_BYTES: u32 = 4 * 1024 * 1024;
    /// FastCDC's smallest accepted minimum.
    pub const MIN_CDC_MIN_BYTES: u32 = 64;
    /// FastCDC's largest accepted minimum.
    pub const MAX_CDC_MIN_BYTES: u32 = 1024 * 1024;
    /// FastCDC's smallest accepted average.
    pub const MIN_CDC_AVG_BYTES: u32 = 256;
    /// FastCDC's smallest accepted maximum.
    pub const MIN_CDC_MAX_BYTES: u32 = 1024;
    /// S-box CDC's smallest accepted average: its looser cut test then still reads more
    /// than the four newest bytes (ten bits come from them), so cuts depend on 16.
    pub const MIN_SBOX_CDC_AVG_BYTES: u32 = 4096;
}

/// Why chunking parameters were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkingError {
    /// A fixed size outside `MIN_FIXED_BYTES..=MAX_CHUNK_BYTES`.
    FixedSizeOutOfRange,
    /// FastCDC bounds that are out of range or not ordered `min <= avg <= max`.
    CdcBoundsInvalid,
    /// S-box CDC bounds that are out of range or not ordered `min <= avg <= max`.
    SboxCdcBoundsInvalid,
}

impl core::fmt::Display for ChunkingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ChunkingError::FixedSizeOutOfRange => write!(
                f,
                "fixed chunk size must be between {} and {} bytes",
                limits::MIN_FIXED_BYTES,
                limits::MAX_CHUNK_BYTES
            ),
            ChunkingError::CdcBoundsInvalid => write!(
                f,
                "FastCDC bounds must satisfy {}<=min<={}, avg>={}, {}<=max<={}, min<=avg<=max",
                limits::MIN_CDC_MIN_BYTES,
                limits::MAX_CDC_MIN_BYTES,
                limits::MIN_CDC_AVG_BYTES,
                limits::MIN_CDC_MAX_BYTES,
                limits::MAX_CHUNK_BYTES
            ),
            ChunkingError::SboxCdcBoundsInvalid => write!(
                f,
                "S-box CDC bounds must satisfy {}<=min<={}, avg>={}, {}<=max<={}, min<=avg<=max",
                limits::MIN_CDC_MIN_BYTES,
                limits::MAX_CDC_MIN_BYTES,
                limits::MIN_SBOX_CDC_AVG_BYTES,
                limits::MIN_CDC_MAX_BYTES,
                limits::MAX_CHUNK_BYTES
            ),
        }
    }
}

impl Chunking {
    /// FastCDC with otamesh's defaults: 16 KiB / 64 KiB / 256 KiB.
    pub const DEFAULT_CDC: Chunking =
        Chunking::FastCdc { min_bytes: 16 * 1024, avg_bytes: 64 * 1024, max_bytes: 256 * 1024 };

    /// S-box CDC with the same bounds as [`Chunking::DEFAULT_CDC`].
    pub const DEFAULT_SBOX_CDC: Chunking =
        Chunking::SboxCdc { min_bytes: 16 * 1024, avg_bytes: 64 * 1024, max_bytes: 256 * 1024 };

    /// Checks the parameters against [`limits`]; decoding a manifest calls this so a
    /// hostile manifest cannot make a device chunk with absurd bounds.
    pub fn validate(&self) -> Result<(), ChunkingError> {
        use limits::*;
        match *self {
            Chunking::Fixed { size_bytes } => {
                if (MIN_FIXED_BYTES..=MAX_CHUNK_BYTES).contains(&size_bytes) {
                    Ok(())
                } else {
                    Err(ChunkingError::FixedSizeOutOfRange)
                }
            }
            Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } => {
                if cdc_bounds_ok(min_bytes, avg_bytes, max_bytes, MIN_CDC_AVG_BYTES) {
                    Ok(())
                } else {
                    Err(ChunkingError::CdcBoundsInvalid)
                }
            }
            Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes } => {
                if cdc_bounds_ok(min_bytes, avg_bytes, max_bytes, MIN_SBOX_CDC_AVG_BYTES) {
                    Ok(())
                } else {
                    Err(ChunkingError::SboxCdcBoundsInvalid)
                }
            }
        }
    }

    /// The longest chunk these parameters can produce.
    pub fn max_chunk_bytes(&self) -> u32 {
        match *self {
            Chunking::Fixed { size_bytes } => size_bytes,
            Chunking::FastCdc { max_bytes, .. } | Chunking::SboxCdc { max_bytes, .. } => max_bytes,
        }
    }
}

/// Content-defined bounds in range and ordered `min <= avg <= max`; the smallest average
/// differs between the two content-defined chunkings.
fn cdc_bounds_ok(min_bytes: u32, avg_bytes: u32, max_bytes: u32, min_avg_bytes: u32) -> bool {
    use limits::*;
    (MIN_CDC_MIN_BYTES..=MAX_CDC_MIN_BYTES).contains(&min_bytes)
        && avg_bytes >= min_avg_bytes
        && (MIN_CDC_MAX_BYTES..=MAX_CHUNK_BYTES).contains(&max_bytes)
        && min_bytes <= avg_bytes
        && avg_bytes <= max_bytes
}

/// A chunk's place in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

/// Fixed-size spans over an image of `image_len` bytes; no heap, usable on MCUs.
#[derive(Debug, Clone)]
pub struct FixedSpans {
    next_offset: u64,
    image_len: u64,
    size_bytes: u32,
}

impl FixedSpans {
    /// Spans of `size_bytes` over `image_len` bytes. `size_bytes` must be non-zero.
    pub fn new(image_len: u64, size_bytes: u32) -> Self {
        FixedSpans { next_offset: 0, image_len, size_bytes: size_bytes.max(1) }
    }
}

impl Iterator for FixedSpans {
    type Item = ChunkSpan;
    fn next(&mut self) -> Option<ChunkSpan> {
        if self.next_offset >= self.image_len {
            return None;
        }
        let length = (self.image_len - self.next_offset).min(self.size_bytes as u64) as u32;
        let span = ChunkSpan { offset: self.next_offset, length };
        self.next_offset += length as u64;
        Some(span)
    }
}

/// Cuts an in-memory image into spans, on this thread, for tests, benchmarks and tools; the
/// seeder streams with [`stream_chunks_with`].
#[cfg(feature = "std")]
pub fn spans(data: &[u8], chunking: Chunking) -> Result<std::vec::Vec<ChunkSpan>, ChunkingError> {
    spans_with(data, chunking, 1, scan_here)
}

/// As [`spans`], with the content-defined scan split into at most `pieces` independent pieces that
/// `run` executes and returns the results of, in order: [`scan_here`] on this thread, or a
/// host's threads (this crate starts none). The cut points do not depend on `pieces`.
#[cfg(feature = "std")]
pub fn spans_with(
    data: &[u8],
    chunking: Chunking,
    pieces: usize,
    mut run: impl FnMut(std::vec::Vec<ScanPiece<'_>>) -> std::vec::Vec<CutCandidates>,
) -> Result<std::vec::Vec<ChunkSpan>, ChunkingError> {
    chunking.validate()?;
    Ok(match chunking {
        Chunking::Fixed { size_bytes } => FixedSpans::new(data.len() as u64, size_bytes).collect(),
        Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } => {
            let cdc = fast_cdc::Cdc::new(min_bytes, avg_bytes, max_bytes);
            fast_cdc::spans(data, cdc, fast_cdc::scan_all(data, 0..data.len(), cdc, pieces, true, &mut run))
        }
        Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes } => {
            let cdc = fast_cdc::Cdc::sbox(min_bytes, avg_bytes, max_bytes);
            fast_cdc::spans(data, cdc, fast_cdc::scan_all(data, 0..data.len(), cdc, pieces, true, &mut run))
        }
    })
}

/// Runs every scan piece on the calling thread, in order.
#[cfg(feature = "std")]
pub fn scan_here(pieces: std::vec::Vec<ScanPiece<'_>>) -> std::vec::Vec<CutCandidates> {
    pieces.into_iter().map(ScanPiece::scan).collect()
}

/// One chunk read from a stream: its span and its plaintext bytes.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct StreamChunk {
    /// Where it sits in the image.
    pub span: ChunkSpan,
    /// Its plaintext bytes.
    pub data: std::vec::Vec<u8>,
}

/// Streams `reader` through the chunker on this thread, calling `each` per chunk.
#[cfg(feature = "std")]
pub fn stream_chunks<R: std::io::Read, E: From<std::io::Error>>(
    reader: R,
    chunking: Chunking,
    each: impl FnMut(StreamChunk) -> Result<(), E>,
) -> Result<(), E> {
    stream_chunks_with(reader, chunking, 1, scan_here, each)
}

/// Streams `reader` through the chunker, calling `each` per chunk, holding at most one
/// maximum-size chunk plus one 8 MiB read block in memory; the content-defined scan of each
/// block runs in `pieces` pieces through `run`, as in [`spans_with`]. This is what lets `seeder
/// release add` take a multi-GiB image in bounded memory.
#[cfg(feature = "std")]
pub fn stream_chunks_with<R: std::io::Read, E: From<std::io::Error>>(
    mut reader: R,
    chunking: Chunking,
    pieces: usize,
    mut run: impl FnMut(std::vec::Vec<ScanPiece<'_>>) -> std::vec::Vec<CutCandidates>,
    mut each: impl FnMut(StreamChunk) -> Result<(), E>,
) -> Result<(), E> {
    use std::io::{Error, ErrorKind};
    chunking.validate().map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    match chunking {
        Chunking::Fixed { size_bytes } => {
            let mut offset = 0u64;
            loop {
                let mut data = std::vec![0u8; size_bytes as usize];
                let mut filled = 0;
                while filled < data.len() {
                    match reader.read(&mut data[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                if filled == 0 {
                    return Ok(());
                }
                data.truncate(filled);
                let span = ChunkSpan { offset, length: filled as u32 };
                offset += filled as u64;
                each(StreamChunk { span, data })?;
                if filled < size_bytes as usize {
                    return Ok(());
                }
            }
        }
        Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } => {
            let cdc = fast_cdc::Cdc::new(min_bytes, avg_bytes, max_bytes);
            fast_cdc::stream(reader, cdc, pieces, &mut run, &mut each)
        }
        Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes } => {
            let cdc = fast_cdc::Cdc::sbox(min_bytes, avg_bytes, max_bytes);
            fast_cdc::stream(reader, cdc, pieces, &mut run, &mut each)
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn fixed_spans_cover_the_image() {
        let spans: std::vec::Vec<_> = FixedSpans::new(10_000, 4096).collect();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[2], ChunkSpan { offset: 8192, length: 1808 });
        assert_eq!(FixedSpans::new(0, 4096).count(), 0);
    }

    #[test]
    fn validate_refuses_bad_bounds() {
        assert!(Chunking::DEFAULT_CDC.validate().is_ok());
        assert!(Chunking::Fixed { size_bytes: 0 }.validate().is_err());
        let inverted = Chunking::FastCdc { min_bytes: 65536, avg_bytes: 16384, max_bytes: 262144 };
        assert_eq!(inverted.validate(), Err(ChunkingError::CdcBoundsInvalid));
        assert!(Chunking::DEFAULT_SBOX_CDC.validate().is_ok());
        // An average whose looser test would read only the four newest bytes.
        let tiny = Chunking::SboxCdc { min_bytes: 256, avg_bytes: 2048, max_bytes: 8192 };
        assert_eq!(tiny.validate(), Err(ChunkingError::SboxCdcBoundsInvalid));
    }

    /// Pseudo-random bytes (xorshift64), for the chunkers' tests.
    pub(super) fn xorshift_bytes(len: usize, mut x: u64) -> std::vec::Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_runner_that_loses_or_reorders_scan_pieces_changes_no_cut_point() {
        let data = xorshift_bytes(1 << 20, 0x9E37_79B9_7F4A_7C15);
        let expected = spans(&data, Chunking::DEFAULT_CDC).unwrap();
        assert!(expected.len() > 8, "{} chunks", expected.len());
        let lost = spans_with(&data, Chunking::DEFAULT_CDC, 4, |mut pieces| {
            pieces.pop();
            scan_here(pieces)
        });
        assert_eq!(lost.unwrap(), expected);
        let reordered = spans_with(&data, Chunking::DEFAULT_CDC, 4, |pieces| {
            let mut results = scan_here(pieces);
            results.swap(0, 1);
            results
        });
        assert_eq!(reordered.unwrap(), expected);
    }

    #[test]
    fn streaming_matches_in_memory() {
        let data = xorshift_bytes(3 << 20, 0x2545F4914F6CDD1D);
        for chunking in [Chunking::DEFAULT_CDC, Chunking::DEFAULT_SBOX_CDC, Chunking::Fixed { size_bytes: 65536 }] {
            let expected = spans(&data, chunking).unwrap();
            let mut got = std::vec::Vec::new();
            stream_chunks::<_, std::io::Error>(&data[..], chunking, |c| {
                assert_eq!(&data[c.span.offset as usize..][..c.span.length as usize], &c.data[..]);
                got.push(c.span);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, expected);
        }
    }
}
