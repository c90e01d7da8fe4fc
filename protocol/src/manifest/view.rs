//! The zero-copy, validate-once view over manifest bytes.

use super::{limits, Field, ManifestError, FLAG_ENCRYPTED, FORMAT_VERSION, MAGIC};
use crate::chunker::Chunking;
use crate::codec::Codec;
use crate::ChunkId;

/// One chunk as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Offset of the plaintext chunk in the image.
    pub offset: u64,
    /// Plaintext length.
    pub length: u32,
    /// How the stored bytes were made from the plaintext.
    pub codec: Codec,
    /// Length of the stored (compressed, encrypted) bytes.
    pub stored_length: u32,
    /// blake3 of the stored bytes.
    pub id: ChunkId,
}

/// A checked view over manifest bytes. Constructing one validates everything; the
/// accessors then only read.
#[derive(Debug, Clone, Copy)]
pub struct ManifestView<'a> {
    bytes: &'a [u8],
    name: &'a str,
    version: &'a str,
    hw_class: &'a str,
    security_counter: u64,
    image_len: u64,
    image_blake3: [u8; 32],
    image_sha256: [u8; 32],
    content_key_id: [u8; 16],
    encrypted: bool,
    chunking: Chunking,
    chunk_count: u32,
    entries_offset: usize,
}

/// Reads fixed-size fields from the front of a byte slice, tracking the offset for errors.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(ManifestError::Truncated { offset: self.offset })?;
        let out = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ManifestError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ManifestError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self, field: Field, max: usize) -> Result<&'a str, ManifestError> {
        let len = self.u8()? as usize;
        if len == 0 || len > max {
            return Err(ManifestError::FieldLength(field));
        }
        core::str::from_utf8(self.take(len)?).map_err(|_| ManifestError::NotUtf8(field))
    }
}

fn decode_entry(raw: &[u8]) -> Option<(u64, u32, u8, u32, [u8; 32])> {
    let offset = u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?);
    let length = u32::from_le_bytes(raw.get(8..12)?.try_into().ok()?);
    let codec = *raw.get(12)?;
    let stored = u32::from_le_bytes(raw.get(13..17)?.try_into().ok()?);
    let id: [u8; 32] = raw.get(17..49)?.try_into().ok()?;
    Some((offset, length, codec, stored, id))
}

impl<'a> ManifestView<'a> {
    /// Validates `bytes` as a version-1 manifest. Never panics, never allocates.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let mut r = Reader { bytes, offset: 0 };
        if r.array::<4>()? != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let format = r.u16()?;
        if format != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedFormat(format));
        }
        let flags = r.u16()?;
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(ManifestError::UnknownFlags(flags));
        }
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        let name = r.string(Field::Name, limits::MAX_NAME_BYTES)?;
        let version = r.string(Field::Version, limits::MAX_VERSION_BYTES)?;
        let hw_class = r.string(Field::HwClass, limits::MAX_HW_CLASS_BYTES)?;
        let security_counter = r.u64()?;
        let image_len = r.u64()?;
        if image_len > limits::MAX_IMAGE_BYTES {
            return Err(ManifestError::ImageTooLarge);
        }
        let image_blake3 = r.array()?;
        let image_sha256 = r.array()?;
        let content_key_id: [u8; 16] = r.array()?;
        if encrypted == (content_key_id == [0u8; 16]) {
            return Err(ManifestError::ContentKeyId);
        }
        let kind = r.u8()?;
        let (a, b, c) = (r.u32()?, r.u32()?, r.u32()?);
        let chunking = match kind {
            0 if b == 0 && c == 0 => Chunking::Fixed { size_bytes: a },
            0 => return Err(ManifestError::Chunking(crate::chunker::ChunkingError::FixedSizeOutOfRange)),
            1 => Chunking::FastCdc { min_bytes: a, avg_bytes: b, max_bytes: c },
            2 => Chunking::SboxCdc { min_bytes: a, avg_bytes: b, max_bytes: c },
            other => return Err(ManifestError::UnknownChunkingKind(other)),
        };
        chunking.validate().map_err(ManifestError::Chunking)?;
        let chunk_count = r.u32()?;
        if chunk_count > limits::MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks(chunk_count));
        }
        let entries_offset = r.offset;
        let entries_len = chunk_count as usize * limits::ENTRY_BYTES;
        let entries = r.take(entries_len)?;
        if r.offset != bytes.len() {
            return Err(ManifestError::TrailingBytes);
        }

        let mut expected_offset = 0u64;
        for (i, raw) in entries.chunks_exact(limits::ENTRY_BYTES).enumerate() {
            let index = i as u32;
            let is_last = index + 1 == chunk_count;
            let (offset, length, codec, stored, _) =
                decode_entry(raw).ok_or(ManifestError::Truncated { offset: entries_offset })?;
            if offset != expected_offset {
                return Err(ManifestError::ChunkNotContiguous { index });
            }
            let length_ok = length > 0
                && match chunking {
                    Chunking::Fixed { size_bytes } => length == size_bytes || (is_last && length < size_bytes),
                    Chunking::FastCdc { min_bytes, max_bytes, .. } | Chunking::SboxCdc { min_bytes, max_bytes, .. } => {
                        length <= max_bytes && (length >= min_bytes || is_last)
                    }
                };
            if !length_ok {
                return Err(ManifestError::ChunkLength { index });
            }
            let codec = Codec::from_byte(codec).ok_or(ManifestError::ChunkCodec { index })?;
            if codec.encrypted != encrypted {
                return Err(ManifestError::ChunkCodec { index });
            }
            if !codec.stored_length_possible(length, stored) {
                return Err(ManifestError::StoredLength { index });
            }
            expected_offset += length as u64;
        }
        if expected_offset != image_len {
            return Err(ManifestError::ImageLengthMismatch);
        }
        Ok(ManifestView {
            bytes,
            name,
            version,
            hw_class,
            security_counter,
            image_len,
            image_blake3,
            image_sha256,
            content_key_id,
            encrypted,
            chunking,
            chunk_count,
            entries_offset,
        })
    }

    /// The bytes this view was checked over.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Release name, e.g. `gateway-os`.
    pub fn name(&self) -> &'a str {
        self.name
    }
    /// Release version string, e.g. `1.4.2`.
    pub fn version(&self) -> &'a str {
        self.version
    }
    /// Hardware class the image is built for; devices refuse any other.
    pub fn hw_class(&self) -> &'a str {
        self.hw_class
    }
    /// Anti-rollback counter: a device refuses anything below the counter it has persisted.
    pub fn security_counter(&self) -> u64 {
        self.security_counter
    }
    /// Total plaintext image length.
    pub fn image_len(&self) -> u64 {
        self.image_len
    }
    /// blake3 of the whole plaintext image.
    pub fn image_blake3(&self) -> [u8; 32] {
        self.image_blake3
    }
    /// sha256 of the whole plaintext image (for bootloaders and tools that only know sha256).
    pub fn image_sha256(&self) -> [u8; 32] {
        self.image_sha256
    }
    /// The fleet content key's id, if chunks are encrypted.
    pub fn content_key_id(&self) -> Option<[u8; 16]> {
        self.encrypted.then_some(self.content_key_id)
    }
    /// How the image was chunked, so a device can chunk its active slot the same way.
    pub fn chunking(&self) -> Chunking {
        self.chunking
    }
    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }
    /// The chunk at `index`, or `None` past the end.
    pub fn chunk(&self, index: u32) -> Option<ChunkEntry> {
        if index >= self.chunk_count {
            return None;
        }
        let start = self.entries_offset + index as usize * limits::ENTRY_BYTES;
        let raw = self.bytes.get(start..start + limits::ENTRY_BYTES)?;
        let (offset, length, codec, stored_length, id) = decode_entry(raw)?;
        Some(ChunkEntry { offset, length, codec: Codec::from_byte(codec)?, stored_length, id: ChunkId(id) })
    }
    /// All chunks in image order.
    pub fn chunks(&self) -> ChunkEntries<'a> {
        ChunkEntries { view: *self, next: 0 }
    }
    /// Sum of stored chunk lengths: what crosses the network for a full download.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks().map(|c| c.stored_length as u64).sum()
    }
}

/// Iterator over a manifest's chunk entries.
#[derive(Debug, Clone)]
pub struct ChunkEntries<'a> {
    view: ManifestView<'a>,
    next: u32,
}

impl Iterator for ChunkEntries<'_> {
    type Item = ChunkEntry;
    fn next(&mut self) -> Option<ChunkEntry> {
        let entry = self.view.chunk(self.next)?;
        self.next += 1;
        Some(entry)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.view.chunk_count - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for ChunkEntries<'_> {}
