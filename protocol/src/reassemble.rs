//! Whole-image verification while an image is rebuilt chunk by chunk.
//!
//! Each chunk is verified on its own (see [`crate::codec`]); this checks that the opened
//! chunks, in manifest order, form exactly the image the manifest signs (blake3 and sha256),
//! so nothing is switched to unless it was verified whole.

use crate::manifest::{ChunkEntry, ManifestView};
use sha2::Digest;

/// Why a rebuilt image was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReassemblyError {
    /// A chunk was fed out of order or with the wrong length.
    OutOfOrder {
        /// Index of the chunk that was expected next.
        expected_index: u32,
    },
    /// The image ended before all its bytes were fed.
    Incomplete,
    /// The image's blake3 or sha256 is not the signed one.
    ImageHashMismatch,
}

impl core::fmt::Display for ReassemblyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReassemblyError::OutOfOrder { expected_index } => {
                write!(f, "chunk fed out of order; expected chunk {expected_index}")
            }
            ReassemblyError::Incomplete => f.write_str("image is incomplete"),
            ReassemblyError::ImageHashMismatch => f.write_str("image hash does not match the manifest"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ReassemblyError {}

/// Hashes an image's plaintext chunks in order and checks the result against the manifest.
#[derive(Clone)]
pub struct ImageVerifier {
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
    next_index: u32,
    next_offset: u64,
}

impl Default for ImageVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageVerifier {
    /// Starts at chunk 0.
    pub fn new() -> Self {
        ImageVerifier { blake3: blake3::Hasher::new(), sha256: sha2::Sha256::new(), next_index: 0, next_offset: 0 }
    }

    /// Feeds the plaintext of the next chunk.
    pub fn update(&mut self, entry: &ChunkEntry, plaintext: &[u8]) -> Result<(), ReassemblyError> {
        if entry.offset != self.next_offset || plaintext.len() != entry.length as usize {
            return Err(ReassemblyError::OutOfOrder { expected_index: self.next_index });
        }
        self.blake3.update(plaintext);
        self.sha256.update(plaintext);
        self.next_index += 1;
        self.next_offset += plaintext.len() as u64;
        Ok(())
    }

    /// Checks that every chunk was fed and both image hashes match.
    pub fn finish(self, manifest: &ManifestView<'_>) -> Result<(), ReassemblyError> {
        if self.next_index != manifest.chunk_count() || self.next_offset != manifest.image_len() {
            return Err(ReassemblyError::Incomplete);
        }
        let blake3_ok = self.blake3.finalize() == blake3::Hash::from(manifest.image_blake3());
        let sha256: [u8; 32] = self.sha256.finalize().into();
        if !blake3_ok || sha256 != manifest.image_sha256() {
            return Err(ReassemblyError::ImageHashMismatch);
        }
        Ok(())
    }
}
