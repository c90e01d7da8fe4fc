//! The chunk codec: plaintext chunk -> stored bytes (optional zstd, optional AEAD) and back.
//!
//! Stored layout of an encrypted chunk: `nonce [24] | ciphertext | tag [16]`, XChaCha20-
//! Poly1305 under a key derived from the fleet content key.
//!
//! Encryption is deterministic so that an unchanged chunk yields the same stored bytes, and
//! so the same `ChunkId`, in every release: edge nodes deduplicate ciphertext they cannot
//! read. Derivation, from the 32-byte fleet content key `K`:
//!
//! ```text
//! cipher_key = blake3::derive_key("otamesh 2026-11 chunk cipher key v1", K)
//! nonce_key  = blake3::derive_key("otamesh 2026-11 chunk nonce key v1", K)
//! nonce      = blake3::keyed_hash(nonce_key, codec_byte | payload)[..24]
//! aad        = "otamesh chunk v1" | codec_byte
//! key id     = blake3::derive_key("otamesh 2026-11 content key id v1", K)[..16]
//! ```
//!
//! `payload` is what is encrypted (the zstd frame when compressed). The nonce is a PRF of the
//! payload under a secret key (the synthetic-IV construction), so a nonce repeats only for an
//! identical payload, which then encrypts to identical bytes: the only thing revealed is that
//! two chunks are equal, which is exactly what deduplication needs.
//!
//! Verification order on every reader: stored length, then blake3 against the signed id
//! (the peer may lie), then the AEAD tag, then decompression capped at the signed length.

use crate::manifest::limits::MAX_STORED_CHUNK_BYTES;
use crate::manifest::ChunkEntry;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};

/// Bytes an encrypted chunk carries beyond its payload: the nonce and the tag.
pub const AEAD_OVERHEAD_BYTES: u32 = 24 + 16;
const AAD_PREFIX: &[u8] = b"otamesh chunk v1";

/// How a chunk's stored bytes were made from its plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Codec {
    /// The payload is a zstd frame (Linux images; never used for MCU releases).
    pub zstd: bool,
    /// The payload is sealed with XChaCha20-Poly1305 under the fleet content key.
    pub encrypted: bool,
}

impl Codec {
    /// Parses the manifest's codec byte; unknown bits are refused.
    pub fn from_byte(byte: u8) -> Option<Codec> {
        (byte & !0b11 == 0).then_some(Codec { zstd: byte & 1 != 0, encrypted: byte & 2 != 0 })
    }

    /// The manifest's codec byte.
    pub fn to_byte(self) -> u8 {
        self.zstd as u8 | (self.encrypted as u8) << 1
    }

    /// Whether `stored` bytes can encode `length` plaintext bytes with this codec. zstd is
    /// only used when it saves bytes, so a compressed chunk is always shorter than the
    /// uncompressed form would be; this bounds what a device accepts before it hashes.
    pub fn stored_length_possible(self, length: u32, stored: u32) -> bool {
        let overhead = if self.encrypted { AEAD_OVERHEAD_BYTES } else { 0 };
        if stored > MAX_STORED_CHUNK_BYTES {
            return false;
        }
        if self.zstd {
            stored > overhead && stored < length.saturating_add(overhead)
        } else {
            Some(stored) == length.checked_add(overhead)
        }
    }
}

/// The 32-byte fleet content key. Only the seeder and devices hold it; edge nodes never do.
#[derive(Clone)]
pub struct ContentKey(pub [u8; 32]);

impl core::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ContentKey(…)")
    }
}

impl ContentKey {
    /// The key's public id, recorded in manifests so a device knows which key it needs.
    pub fn id(&self) -> [u8; 16] {
        let full = blake3::derive_key("otamesh 2026-11 content key id v1", &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.cipher_key()).into())
    }

    /// The XChaCha20-Poly1305 key chunks are sealed with, derived from the content key.
    fn cipher_key(&self) -> [u8; 32] {
        blake3::derive_key("otamesh 2026-11 chunk cipher key v1", &self.0)
    }

    #[cfg(feature = "std")]
    fn nonce_for(&self, codec: Codec, payload: &[u8]) -> [u8; 24] {
        let nonce_key = blake3::derive_key("otamesh 2026-11 chunk nonce key v1", &self.0);
        let mut hasher = blake3::Hasher::new_keyed(&nonce_key);
        hasher.update(&[codec.to_byte()]);
        hasher.update(payload);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&hasher.finalize().as_bytes()[..24]);
        nonce
    }
}

/// Why a stored chunk was refused. The first two mean the sender lied (penalize it); the
/// rest mean the release itself cannot be opened here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Stored bytes of the wrong length for the manifest entry.
    StoredLengthMismatch,
    /// Stored bytes whose blake3 is not the entry's id.
    HashMismatch,
    /// The chunk is encrypted and no content key was given.
    MissingContentKey,
    /// The AEAD tag did not verify: the content key is wrong for this release.
    DecryptFailed,
    /// The chunk is compressed and this build has no zstd (MCUs).
    CompressionUnsupported,
    /// The zstd frame is corrupt or decompresses to the wrong length.
    DecompressFailed,
}

impl ChunkError {
    /// True when the error proves the sender sent bytes the manifest does not sign.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, ChunkError::StoredLengthMismatch | ChunkError::HashMismatch)
    }
}

impl core::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ChunkError::StoredLengthMismatch => "chunk has the wrong stored length",
            ChunkError::HashMismatch => "chunk bytes do not match the signed chunk id",
            ChunkError::MissingContentKey => "chunk is encrypted and no content key is configured",
            ChunkError::DecryptFailed => "chunk did not decrypt: wrong content key",
            ChunkError::CompressionUnsupported => "chunk is zstd-compressed; this build has no zstd",
            ChunkError::DecompressFailed => "chunk did not decompress to its signed length",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ChunkError {}

/// Checks stored bytes against the manifest entry: length, then blake3. What an edge node
/// runs before storing or serving a chunk (it has no key, so it stops here).
pub fn verify_stored(entry: &ChunkEntry, stored: &[u8]) -> Result<(), ChunkError> {
    if stored.len() != entry.stored_length as usize {
        return Err(ChunkError::StoredLengthMismatch);
    }
    if !entry.id.matches(stored) {
        return Err(ChunkError::HashMismatch);
    }
    Ok(())
}

/// Verifies and decrypts a stored chunk in place, without a heap, returning the payload
/// (the plaintext, or a zstd frame if the codec says so).
pub fn open_in_place<'b>(
    entry: &ChunkEntry,
    key: Option<&ContentKey>,
    stored: &'b mut [u8],
) -> Result<&'b mut [u8], ChunkError> {
    verify_stored(entry, stored)?;
    if !entry.codec.encrypted {
        return Ok(stored);
    }
    let key = key.ok_or(ChunkError::MissingContentKey)?;
    // Entries from a checked manifest always leave room for nonce and tag, but `ChunkEntry`
    // can be built by hand: never trust that here.
    if stored.len() < AEAD_OVERHEAD_BYTES as usize {
        return Err(ChunkError::StoredLengthMismatch);
    }
    let (nonce, rest) = stored.split_at_mut(24);
    let (payload, tag) = rest.split_at_mut(rest.len() - 16);
    let aad = aad(entry.codec);
    #[cfg(feature = "ring-aead")]
    crate::xchacha_ring::open_in_place(&key.cipher_key(), nonce, &aad, payload, tag)
        .map_err(|_| ChunkError::DecryptFailed)?;
    #[cfg(not(feature = "ring-aead"))]
    key.cipher()
        .decrypt_in_place_detached(XNonce::from_slice(nonce), &aad, payload, chacha20poly1305::Tag::from_slice(tag))
        .map_err(|_| ChunkError::DecryptFailed)?;
    Ok(payload)
}

fn aad(codec: Codec) -> [u8; 17] {
    let mut aad = [0u8; 17];
    aad[..16].copy_from_slice(AAD_PREFIX);
    aad[16] = codec.to_byte();
    aad
}

/// A chunk as the seeder stores it: codec, stored bytes and their id.
#[cfg(feature = "std")]
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// The codec used.
    pub codec: Codec,
    /// The stored bytes.
    pub stored: std::vec::Vec<u8>,
    /// blake3 of `stored`.
    pub id: crate::ChunkId,
}

/// Turns a plaintext chunk into stored bytes: zstd at `zstd_level` if asked and if it saves
/// bytes, then deterministic encryption if a key is given.
#[cfg(feature = "std")]
pub fn seal(plaintext: &[u8], zstd_level: Option<i32>, key: Option<&ContentKey>) -> std::io::Result<SealedChunk> {
    let mut codec = Codec { zstd: false, encrypted: key.is_some() };
    let mut payload = match zstd_level {
        Some(level) => {
            let compressed = zstd::bulk::compress(plaintext, level)?;
            if compressed.len() < plaintext.len() {
                codec.zstd = true;
                compressed
            } else {
                plaintext.to_vec()
            }
        }
        None => plaintext.to_vec(),
    };
    let stored = match key {
        None => payload,
        Some(key) => {
            let nonce = key.nonce_for(codec, &payload);
            let tag = key
                .cipher()
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad(codec), &mut payload)
                .map_err(|_| std::io::Error::other("chunk encryption failed"))?;
            let mut stored = std::vec::Vec::with_capacity(payload.len() + AEAD_OVERHEAD_BYTES as usize);
            stored.extend_from_slice(&nonce);
            stored.extend_from_slice(&payload);
            stored.extend_from_slice(&tag);
            stored
        }
    };
    let id = crate::ChunkId::of(&stored);
    Ok(SealedChunk { codec, stored, id })
}

#[cfg(feature = "std")]
std::thread_local! {
    /// One zstd decompression context per thread, reused: creating one per chunk (what
    /// `zstd::bulk::decompress` does) allocated and cleared ~100 KiB each time, about 1% of
    /// a device's install CPU.
    static DECOMPRESSOR: core::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { core::cell::RefCell::new(None) };
}

/// zstd-decompresses `data` into at most `capacity` bytes with this thread's context.
#[cfg(feature = "std")]
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<std::vec::Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(decompressor) => decompressor.decompress(data, capacity),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

/// Verifies, decrypts and decompresses a stored chunk into its plaintext.
#[cfg(feature = "std")]
pub fn open(
    entry: &ChunkEntry,
    key: Option<&ContentKey>,
    mut stored: std::vec::Vec<u8>,
) -> Result<std::vec::Vec<u8>, ChunkError> {
    let payload_len = open_in_place(entry, key, &mut stored)?.len();
    if entry.codec.encrypted {
        stored.copy_within(24..24 + payload_len, 0);
        stored.truncate(payload_len);
    }
    if !entry.codec.zstd {
        return Ok(stored);
    }
    decompress_checked(entry, &stored)
}

/// [`open`] for stored bytes that lie in a buffer the caller owns — a response body holding
/// a whole batch: the chunk is verified and decrypted where it lies, and only a compressed
/// chunk gets a new buffer (its plaintext). A Linux device's install used to copy each chunk
/// out of the response and then its payload down over the nonce: two copies of every
/// encrypted byte fetched before the one into the slot.
#[cfg(feature = "std")]
pub fn open_in_buffer<'b>(
    entry: &ChunkEntry,
    key: Option<&ContentKey>,
    stored: &'b mut [u8],
) -> Result<std::borrow::Cow<'b, [u8]>, ChunkError> {
    let payload = open_in_place(entry, key, stored)?;
    if !entry.codec.zstd {
        return Ok(std::borrow::Cow::Borrowed(payload));
    }
    decompress_checked(entry, payload).map(std::borrow::Cow::Owned)
}

/// Decompresses an opened payload into exactly the signed length.
#[cfg(feature = "std")]
fn decompress_checked(entry: &ChunkEntry, payload: &[u8]) -> Result<std::vec::Vec<u8>, ChunkError> {
    // Cap the output at the signed length: a zstd bomb cannot make us allocate more.
    let plain = decompress(payload, entry.length as usize).map_err(|_| ChunkError::DecompressFailed)?;
    if plain.len() != entry.length as usize {
        return Err(ChunkError::DecompressFailed);
    }
    Ok(plain)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    fn entry_for(sealed: &SealedChunk, length: u32) -> ChunkEntry {
        ChunkEntry { offset: 0, length, codec: sealed.codec, stored_length: sealed.stored.len() as u32, id: sealed.id }
    }

    #[test]
    fn codec_byte_round_trip_refuses_unknown_bits() {
        for b in 0..4u8 {
            assert_eq!(Codec::from_byte(b).unwrap().to_byte(), b);
        }
        assert_eq!(Codec::from_byte(4), None);
    }

    #[test]
    fn seal_open_is_deterministic_and_round_trips() {
        let key = ContentKey([9; 32]);
        let text = b"firmware block ".repeat(1000);
        for level in [None, Some(3)] {
            let a = seal(&text, level, Some(&key)).unwrap();
            let b = seal(&text, level, Some(&key)).unwrap();
            assert_eq!(a.id, b.id, "same plaintext must give the same id");
            assert_eq!(a.codec.zstd, level.is_some());
            let entry = entry_for(&a, text.len() as u32);
            assert!(entry.codec.stored_length_possible(entry.length, entry.stored_length));
            assert_eq!(open(&entry, Some(&key), a.stored.clone()).unwrap(), text);
            assert_eq!(open(&entry, None, a.stored.clone()), Err(ChunkError::MissingContentKey));
            assert_eq!(open(&entry, Some(&ContentKey([8; 32])), a.stored.clone()), Err(ChunkError::DecryptFailed));
        }
        let other = seal(b"other", None, Some(&key)).unwrap();
        assert_ne!(other.stored[..24], seal(&text, None, Some(&key)).unwrap().stored[..24]);
    }

    /// Opening where the bytes lie gives what `open` gives, for every codec, with no new
    /// buffer unless the chunk is compressed; a damaged chunk is the same error.
    #[test]
    fn opening_in_a_buffer_matches_open_and_copies_only_compressed_chunks() {
        let key = ContentKey([5; 32]);
        let text = b"bootloader table ".repeat(700);
        for (level, key) in [(None, None), (Some(3), None), (None, Some(&key)), (Some(3), Some(&key))] {
            let sealed = seal(&text, level, key).unwrap();
            let entry = entry_for(&sealed, text.len() as u32);
            let mut buffer = [b"head".as_slice(), &sealed.stored, b"tail"].concat();
            let stored = &mut buffer[4..4 + sealed.stored.len()];
            let plain = open_in_buffer(&entry, key, stored).unwrap();
            assert_eq!(&plain[..], &open(&entry, key, sealed.stored.clone()).unwrap()[..]);
            assert_eq!(matches!(plain, std::borrow::Cow::Owned(_)), sealed.codec.zstd, "{:?}", sealed.codec);
            let mut bad = sealed.stored.clone();
            bad[sealed.stored.len() / 2] ^= 1;
            assert_eq!(open_in_buffer(&entry, key, &mut bad.clone()), open(&entry, key, bad).map(Into::into));
        }
    }

    #[test]
    fn flipped_byte_is_a_peer_fault() {
        let key = ContentKey([1; 32]);
        let sealed = seal(&[7u8; 5000], Some(3), Some(&key)).unwrap();
        let entry = entry_for(&sealed, 5000);
        for i in [0, sealed.stored.len() / 2, sealed.stored.len() - 1] {
            let mut bad = sealed.stored.clone();
            bad[i] ^= 1;
            let err = open(&entry, Some(&key), bad).unwrap_err();
            assert_eq!(err, ChunkError::HashMismatch);
            assert!(err.is_peer_fault());
        }
        assert_eq!(open(&entry, Some(&key), sealed.stored[1..].to_vec()), Err(ChunkError::StoredLengthMismatch));
    }

    #[test]
    fn a_hand_made_entry_shorter_than_the_aead_overhead_is_refused_not_a_panic() {
        let mut stored = [7u8; 10];
        let entry = ChunkEntry {
            offset: 0,
            length: 1,
            codec: Codec { zstd: false, encrypted: true },
            stored_length: 10,
            id: crate::ChunkId::of(&stored),
        };
        assert_eq!(
            open_in_place(&entry, Some(&ContentKey([0; 32])), &mut stored).unwrap_err(),
            ChunkError::StoredLengthMismatch
        );
    }

    #[test]
    fn incompressible_data_is_stored_uncompressed() {
        let mut data = [0u8; 4096];
        let mut x = 12345u32;
        for b in data.iter_mut() {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            *b = (x >> 24) as u8;
        }
        let sealed = seal(&data, Some(19), None).unwrap();
        assert!(!sealed.codec.zstd);
        assert_eq!(sealed.stored, data);
    }
}
