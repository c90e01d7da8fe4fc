//! `ChunkId`: the blake3 hash of a chunk's stored bytes, its name everywhere in the mesh.

use core::fmt;

/// The blake3 hash of a chunk's *stored* bytes (after compression and encryption), so that
/// edge nodes, which only ever hold ciphertext, can verify what they cache and serve.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkId(pub [u8; 32]);

crate::id_order::order_by_bytes32!(ChunkId);

impl ChunkId {
    /// Hashes `stored_bytes`.
    pub fn of(stored_bytes: &[u8]) -> Self {
        ChunkId(*blake3::hash(stored_bytes).as_bytes())
    }

    /// True when `stored_bytes` hash to this id. Constant-time comparison.
    pub fn matches(&self, stored_bytes: &[u8]) -> bool {
        blake3::hash(stored_bytes) == blake3::Hash::from(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, crate::hex::HexError> {
        crate::hex::decode_array(text).map(ChunkId)
    }

    /// The id as 64 lowercase hex digits.
    #[cfg(feature = "alloc")]
    pub fn to_hex(&self) -> alloc::string::String {
        crate::hex::encode(&self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::hex::write(f, &self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkId(")?;
        crate::hex::write(f, &self.0[..8])?;
        f.write_str("…)")
    }
}
