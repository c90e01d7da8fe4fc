//! The two wire formats otamesh parses from the network, with one cursor and one chunk range
//! shared between them:
//! - [`device`]: devices ↔ edge nodes (QUIC streams and framed TCP), heap-free for MCUs;
//! - [`mesh`]: edge nodes ↔ edge nodes and the origin (libp2p request-response);
//!   [`chunk_pieces`] encodes and decodes its chunk responses a piece at a time, so bodies
//!   skip the frame-sized buffer.
//!
//! Both are parsed from bytes any peer can send, so both live here, bounded, and fuzzed
//! (`fuzz/fuzz_targets/{device_wire,mesh_wire}.rs`): every length and count is checked
//! against its limit before anything is allocated or read for it, no input makes a parser
//! panic, and each message has exactly one encoding (decode → encode is the identity).
//! Integers are little-endian in both formats. Chunks are named by [`ChunkId`] and releases
//! by [`ReleaseId`], 32 raw bytes each on the wire — never hex, never a string.
//!
//! Non-goals: trust. Nothing on either wire is authenticated; metadata is verified through
//! TUF and chunks against their id, so a peer can at worst withhold or corrupt bytes.

use core::marker::PhantomData;

use crate::ChunkId;
#[cfg(feature = "alloc")]
use crate::ReleaseId;

#[cfg(feature = "alloc")]
pub mod chunk_pieces;
pub mod device;
#[cfg(feature = "alloc")]
pub mod mesh;

/// Bytes of one [`ChunkRange`] on either wire: id, offset, length.
pub const RANGE_BYTES: usize = 32 + 4 + 4;

/// One byte range of a stored chunk, as both wires ask for it. `length == 0` means "to the
/// end of the chunk", so a server sizes a request by the stored length, not by this field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRange {
    /// The chunk.
    pub id: ChunkId,
    /// First byte wanted.
    pub offset: u32,
    /// Bytes wanted; 0 = through the end.
    pub length: u32,
}

impl ChunkRange {
    /// The whole chunk.
    pub fn whole(id: ChunkId) -> Self {
        ChunkRange { id, offset: 0, length: 0 }
    }

    /// The bytes `start..end` this range asks of a stored chunk of `stored_len` bytes, or
    /// `None` if the range lies outside it. The one rule every server (device service, mesh)
    /// sizes and slices by, before reading anything.
    pub fn bounds(&self, stored_len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(self.offset).ok()?;
        let end = if self.length == 0 { stored_len } else { start.checked_add(usize::try_from(self.length).ok()?)? };
        (start <= end && end <= stored_len).then_some(start..end)
    }

    /// The requested bytes of `stored`, or `None` if the range lies outside it.
    pub fn slice<'a>(&self, stored: &'a [u8]) -> Option<&'a [u8]> {
        stored.get(self.bounds(stored.len())?)
    }

    /// The range's wire encoding.
    pub fn to_bytes(&self) -> [u8; RANGE_BYTES] {
        let mut out = [0u8; RANGE_BYTES];
        out[..32].copy_from_slice(&self.id.0);
        out[32..36].copy_from_slice(&self.offset.to_le_bytes());
        out[36..].copy_from_slice(&self.length.to_le_bytes());
        out
    }

    /// Reads one range.
    pub(crate) fn read<E: ReadError>(r: &mut Reader<'_, E>) -> Result<Self, E> {
        Ok(ChunkRange { id: r.chunk_id("range id")?, offset: r.u32("range offset")?, length: r.u32("range length")? })
    }
}

/// How each format's error type says "the input ended early" and "bytes were left over",
/// so one [`Reader`] serves both.
pub(crate) trait ReadError {
    /// The body ended inside `field`.
    fn truncated(field: &'static str) -> Self;
    /// `left` bytes remained after a complete message.
    fn trailing(left: usize) -> Self;
}

/// A cursor over a borrowed message body; every read is bounds-checked first.
pub(crate) struct Reader<'a, E> {
    rest: &'a [u8],
    error: PhantomData<fn() -> E>,
}

impl<'a, E: ReadError> Reader<'a, E> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes, error: PhantomData }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The unread bytes, without consuming them.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], E> {
        if self.rest.len() < n {
            return Err(E::truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], E> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, E> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A little-endian `u16`.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, E> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, E> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// A chunk id: 32 raw bytes.
    pub(crate) fn chunk_id(&mut self, field: &'static str) -> Result<ChunkId, E> {
        self.array(field).map(ChunkId)
    }

    /// A release id: 32 raw bytes (only the mesh wire, which needs `alloc`, names releases).
    #[cfg(feature = "alloc")]
    pub(crate) fn release_id(&mut self, field: &'static str) -> Result<ReleaseId, E> {
        self.array(field).map(ReleaseId)
    }

    /// Ends the message: nothing may be left over.
    pub(crate) fn finish(self) -> Result<(), E> {
        match self.rest.len() {
            0 => Ok(()),
            left => Err(E::trailing(left)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_size_by_the_stored_length_and_refuse_what_lies_outside() {
        let id = ChunkId([1; 32]);
        assert_eq!(ChunkRange::whole(id).bounds(1000), Some(0..1000));
        assert_eq!(ChunkRange { id, offset: 10, length: 0 }.bounds(1000), Some(10..1000));
        assert_eq!(ChunkRange { id, offset: 10, length: 90 }.bounds(1000), Some(10..100));
        assert_eq!(ChunkRange { id, offset: 1000, length: 0 }.bounds(1000), Some(1000..1000));
        assert_eq!(ChunkRange { id, offset: 990, length: 20 }.bounds(1000), None);
        assert_eq!(ChunkRange { id, offset: 1001, length: 0 }.bounds(1000), None);
        assert_eq!(ChunkRange { id, offset: u32::MAX, length: u32::MAX }.bounds(1000), None);
        assert_eq!(ChunkRange { id, offset: 2, length: 3 }.slice(b"abcdefg"), Some(&b"cde"[..]));
    }

    #[test]
    fn a_range_reads_back_its_own_encoding() {
        struct E;
        impl ReadError for E {
            fn truncated(_: &'static str) -> Self {
                E
            }
            fn trailing(_: usize) -> Self {
                E
            }
        }
        let range = ChunkRange { id: ChunkId([7; 32]), offset: 0x0102_0304, length: 9 };
        let bytes = range.to_bytes();
        let mut r = Reader::<E>::new(&bytes);
        assert!(ChunkRange::read(&mut r).ok() == Some(range));
        assert!(r.finish().is_ok());
        assert!(ChunkRange::read(&mut Reader::<E>::new(&bytes[..39])).is_err());
    }
}
