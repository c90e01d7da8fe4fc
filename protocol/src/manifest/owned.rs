//! The owned manifest the seeder builds and hosts decode.

use alloc::string::String;
use alloc::vec::Vec;

use super::{limits, view::ChunkEntry, ManifestError, ManifestView, FLAG_ENCRYPTED, FORMAT_VERSION, MAGIC};
use crate::chunker::Chunking;

/// A release manifest with owned fields. [`ReleaseManifest::encode`] then
/// [`ManifestView::new_checked`] round-trips; `encode` refuses what `decode` would refuse,
/// so the seeder cannot publish a manifest devices reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseManifest {
    /// Release name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// Hardware class.
    pub hw_class: String,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Plaintext image length.
    pub image_len: u64,
    /// blake3 of the plaintext image.
    pub image_blake3: [u8; 32],
    /// sha256 of the plaintext image.
    pub image_sha256: [u8; 32],
    /// Fleet content key id when chunks are encrypted.
    pub content_key_id: Option<[u8; 16]>,
    /// Chunking parameters.
    pub chunking: Chunking,
    /// Chunks in image order.
    pub chunks: Vec<ChunkEntry>,
}

impl ReleaseManifest {
    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let view = ManifestView::new_checked(bytes)?;
        Ok(Self::from_view(&view))
    }

    /// Copies a checked view into owned fields.
    pub fn from_view(view: &ManifestView<'_>) -> Self {
        ReleaseManifest {
            name: view.name().into(),
            version: view.version().into(),
            hw_class: view.hw_class().into(),
            security_counter: view.security_counter(),
            image_len: view.image_len(),
            image_blake3: view.image_blake3(),
            image_sha256: view.image_sha256(),
            content_key_id: view.content_key_id(),
            chunking: view.chunking(),
            chunks: view.chunks().collect(),
        }
    }

    /// Encodes the manifest, validating it exactly as a device would.
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        let mut out = Vec::with_capacity(256 + self.chunks.len() * limits::ENTRY_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.content_key_id.is_some() { FLAG_ENCRYPTED } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        for (field, text, max) in [
            (super::Field::Name, &self.name, limits::MAX_NAME_BYTES),
            (super::Field::Version, &self.version, limits::MAX_VERSION_BYTES),
            (super::Field::HwClass, &self.hw_class, limits::MAX_HW_CLASS_BYTES),
        ] {
            if text.is_empty() || text.len() > max {
                return Err(ManifestError::FieldLength(field));
            }
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.security_counter.to_le_bytes());
        out.extend_from_slice(&self.image_len.to_le_bytes());
        out.extend_from_slice(&self.image_blake3);
        out.extend_from_slice(&self.image_sha256);
        out.extend_from_slice(&self.content_key_id.unwrap_or([0u8; 16]));
        let (kind, a, b, c) = match self.chunking {
            Chunking::Fixed { size_bytes } => (0u8, size_bytes, 0, 0),
            Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } => (1u8, min_bytes, avg_bytes, max_bytes),
            Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes } => (2u8, min_bytes, avg_bytes, max_bytes),
        };
        out.push(kind);
        for v in [a, b, c] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let count = u32::try_from(self.chunks.len()).map_err(|_| ManifestError::TooManyChunks(u32::MAX))?;
        out.extend_from_slice(&count.to_le_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(&chunk.offset.to_le_bytes());
            out.extend_from_slice(&chunk.length.to_le_bytes());
            out.push(chunk.codec.to_byte());
            out.extend_from_slice(&chunk.stored_length.to_le_bytes());
            out.extend_from_slice(&chunk.id.0);
        }
        ManifestView::new_checked(&out)?;
        Ok(out)
    }

    /// Sum of stored chunk lengths.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_length as u64).sum()
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::ChunkId;

    fn sample() -> ReleaseManifest {
        let codec = Codec { zstd: false, encrypted: true };
        ReleaseManifest {
            name: "gateway-os".into(),
            version: "1.2.3".into(),
            hw_class: "imx8-gw".into(),
            security_counter: 7,
            image_len: 8192 + 100,
            image_blake3: [1; 32],
            image_sha256: [2; 32],
            content_key_id: Some([3; 16]),
            chunking: Chunking::Fixed { size_bytes: 8192 },
            chunks: std::vec![
                ChunkEntry { offset: 0, length: 8192, codec, stored_length: 8192 + 40, id: ChunkId([4; 32]) },
                ChunkEntry { offset: 8192, length: 100, codec, stored_length: 140, id: ChunkId([5; 32]) },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(ReleaseManifest::decode(&bytes).unwrap(), m);
        let view = ManifestView::new_checked(&bytes).unwrap();
        assert_eq!(view.chunk(1).unwrap().id, ChunkId([5; 32]));
        assert_eq!(view.chunk(2), None);
        assert_eq!(view.stored_bytes(), 8232 + 140);
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(ManifestView::new_checked(&bytes[..len]).is_err(), "prefix {len} accepted");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(ManifestView::new_checked(&long).unwrap_err(), ManifestError::TrailingBytes);
    }

    #[test]
    fn errors_name_the_chunk() {
        let mut m = sample();
        m.chunks[1].offset = 9000;
        assert_eq!(m.encode().unwrap_err(), ManifestError::ChunkNotContiguous { index: 1 });
        let mut m = sample();
        m.chunks[1].stored_length = 99;
        assert_eq!(m.encode().unwrap_err(), ManifestError::StoredLength { index: 1 });
        let mut m = sample();
        m.chunks[0].codec = Codec { zstd: false, encrypted: false };
        assert_eq!(m.encode().unwrap_err(), ManifestError::ChunkCodec { index: 0 });
        let mut m = sample();
        m.image_len += 1;
        assert_eq!(m.encode().unwrap_err(), ManifestError::ImageLengthMismatch);
        let mut m = sample();
        m.chunks[0].length = 4096;
        m.chunks[1].offset = 4096;
        assert_eq!(m.encode().unwrap_err(), ManifestError::ChunkLength { index: 0 });
    }

    #[test]
    fn huge_chunk_count_is_refused_before_reading_entries() {
        let mut bytes = sample().encode().unwrap();
        let count_at = bytes.len() - 2 * limits::ENTRY_BYTES - 4;
        bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ManifestView::new_checked(&bytes).unwrap_err(), ManifestError::TooManyChunks(u32::MAX));
    }
}
