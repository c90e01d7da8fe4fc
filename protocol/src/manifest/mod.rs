//! The release manifest: the signed list of an image's chunks.
//!
//! A manifest is a TUF target (so its bytes are covered by the targets role's signature) and
//! the only thing a device needs, beyond the chunks, to rebuild and verify an image. It is a
//! compact binary format so that an MCU can check it in place, from flash, without a heap:
//! [`ManifestView::new_checked`] validates every field and bound once, after which the
//! accessors cannot fail.
//!
//! Wire layout, version 1, all integers little-endian:
//!
//! ```text
//! magic "OTAM" | format u16 = 1 | flags u16 (bit 0: encrypted)
//! name_len u8 | name | version_len u8 | version | hw_class_len u8 | hw_class   (UTF-8)
//! security_counter u64 | image_len u64 | image_blake3 [32] | image_sha256 [32]
//! content_key_id [16] (zero unless encrypted)
//! chunking kind u8 (0 fixed, 1 FastCDC, 2 S-box CDC) | a u32 | b u32 | c u32   (fixed: size,0,0)
//! chunk_count u32
//! chunk_count × { offset u64 | length u32 | codec u8 | stored_length u32 | chunk_id [32] }
//! ```
//!
//! Goals: bounded, panic-free parsing of hostile bytes; every error says which field or chunk
//! index was wrong. Non-goals: extensibility inside version 1 (a new layout gets a new format
//! number), human readability (TUF custom fields carry the human view).

#[cfg(feature = "alloc")]
mod owned;
mod view;

#[cfg(feature = "alloc")]
pub use owned::ReleaseManifest;
pub use view::{ChunkEntries, ChunkEntry, ManifestView};

/// The four bytes every manifest starts with.
pub const MAGIC: [u8; 4] = *b"OTAM";
/// The only layout this code reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Manifest flag: chunks are encrypted under the fleet content key.
pub const FLAG_ENCRYPTED: u16 = 1;

/// Hard limits on what a manifest may describe; decoding refuses anything beyond them.
pub mod limits {
    /// Longest release name.
    pub const MAX_NAME_BYTES: usize = 64;
    /// Longest version string.
    pub const MAX_VERSION_BYTES: usize = 32;
    /// Longest hardware class.
    pub const MAX_HW_CLASS_BYTES: usize = 32;
    /// Most chunks: 2^20, 64 GiB at FastCDC's 64 KiB average; about 49 MiB of manifest.
    pub const MAX_CHUNKS: u32 = 1 << 20;
    /// Largest image: 256 GiB.
    pub const MAX_IMAGE_BYTES: u64 = 1 << 38;
    /// Bytes one chunk entry occupies.
    pub const ENTRY_BYTES: usize = 8 + 4 + 1 + 4 + 32;
    /// Largest stored chunk: the largest plaintext chunk plus room for zstd's worst-case
    /// expansion and the AEAD nonce and tag.
    pub const MAX_STORED_CHUNK_BYTES: u32 = crate::chunker::limits::MAX_CHUNK_BYTES + 64 * 1024;
}

/// Which manifest field an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The release name.
    Name,
    /// The version string.
    Version,
    /// The hardware class.
    HwClass,
}

/// Why manifest bytes were refused. Chunk errors carry the chunk's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestError {
    /// The bytes end before a field that starts at this offset.
    Truncated {
        /// Offset of the field that did not fit.
        offset: usize,
    },
    /// Does not start with `OTAM`.
    BadMagic,
    /// A format version this code does not read.
    UnsupportedFormat(u16),
    /// Flag bits this code does not know.
    UnknownFlags(u16),
    /// A string field is empty or longer than its limit.
    FieldLength(Field),
    /// A string field is not valid UTF-8.
    NotUtf8(Field),
    /// The chunking parameters are invalid.
    Chunking(crate::chunker::ChunkingError),
    /// An unknown chunking kind.
    UnknownChunkingKind(u8),
    /// The image length is over [`limits::MAX_IMAGE_BYTES`].
    ImageTooLarge,
    /// More than [`limits::MAX_CHUNKS`] chunks.
    TooManyChunks(u32),
    /// A chunk does not start where the previous one ended.
    ChunkNotContiguous {
        /// Index of the chunk.
        index: u32,
    },
    /// A chunk's length breaks the chunking parameters.
    ChunkLength {
        /// Index of the chunk.
        index: u32,
    },
    /// A chunk codec with unknown bits, or one that disagrees with the encrypted flag.
    ChunkCodec {
        /// Index of the chunk.
        index: u32,
    },
    /// A chunk's stored length is impossible for its codec and length.
    StoredLength {
        /// Index of the chunk.
        index: u32,
    },
    /// The chunks do not add up to the image length.
    ImageLengthMismatch,
    /// Encrypted without a content key id, or a key id without encryption.
    ContentKeyId,
    /// Bytes after the last chunk entry.
    TrailingBytes,
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use ManifestError::*;
        match self {
            Truncated { offset } => write!(f, "manifest truncated at byte {offset}"),
            BadMagic => f.write_str("not an otamesh manifest (bad magic)"),
            UnsupportedFormat(v) => write!(f, "manifest format {v} is not supported"),
            UnknownFlags(v) => write!(f, "manifest has unknown flags {v:#x}"),
            FieldLength(field) => write!(f, "manifest {field:?} is empty or too long"),
            NotUtf8(field) => write!(f, "manifest {field:?} is not UTF-8"),
            Chunking(e) => write!(f, "manifest chunking: {e}"),
            UnknownChunkingKind(k) => write!(f, "manifest chunking kind {k} is unknown"),
            ImageTooLarge => f.write_str("manifest image length is over the limit"),
            TooManyChunks(n) => write!(f, "manifest lists {n} chunks, over the limit"),
            ChunkNotContiguous { index } => write!(f, "chunk {index} is not contiguous"),
            ChunkLength { index } => write!(f, "chunk {index} has a length the chunking forbids"),
            ChunkCodec { index } => write!(f, "chunk {index} has an invalid codec"),
            StoredLength { index } => write!(f, "chunk {index} has an impossible stored length"),
            ImageLengthMismatch => f.write_str("chunks do not add up to the image length"),
            ContentKeyId => f.write_str("content key id disagrees with the encrypted flag"),
            TrailingBytes => f.write_str("manifest has bytes after its last chunk"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ManifestError {}
