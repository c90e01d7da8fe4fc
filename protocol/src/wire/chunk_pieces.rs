//! A [`ChunkResponse`] encoded and decoded in pieces, so chunk bodies go between the
//! network and buffers of their own without passing through one frame-sized buffer.
//!
//! Why: a response carries up to 8 MiB of chunk bodies. Encoded whole, the server copied
//! every body into one frame buffer before the transport copied it again; decoded whole, the
//! receiver zeroed and filled a frame buffer, then copied each body out of it. Each of those
//! frame buffers was fresh memory, and on a mesh node moving a release the page faults of
//! touching it were about a fifth of its CPU. In pieces, a body is written from where it
//! lies and read straight into the `Vec` the caller keeps.
//!
//! The bytes on the wire are exactly [`ChunkResponse::encode`]'s (which is built from
//! [`ChunkResponse::pieces`]), and [`ChunkResponseDecoder`] accepts exactly what
//! [`ChunkResponse::decode`] accepts, with the same limits checked before anything is
//! allocated for a field: a body's length is checked against the frame's remaining bytes
//! and the response's 8 MiB before the caller is asked to read it. Sans-IO: the caller
//! reads; this decides how much and what it means.

use alloc::vec::Vec;
use core::ops::Range;

use super::mesh::{
    check_limit, ChunkItem, ChunkResponse, ChunkResult, WireError, WireMessage, KIND_CHUNK_RESPONSE, MAX_BATCH_BYTES,
    MAX_RANGES_PER_REQUEST, MIN_ITEM_BYTES, STATUS_BUSY, STATUS_NOT_FOUND, STATUS_OK,
};
use crate::ChunkId;

/// Bytes of an item's fixed fields: id and status.
const ITEM_HEAD_BYTES: usize = 32 + 1;
/// Bytes of an `Ok` item's body length.
const BODY_LENGTH_BYTES: usize = 4;

/// A response's encoding as runs of small fields, each run followed by a borrowed body.
pub struct ResponsePieces<'a> {
    /// Every byte that is not a chunk body, in wire order.
    pub fields: Vec<u8>,
    /// In wire order: a range of `fields`, then a body (empty after the last run).
    pub pieces: Vec<(Range<usize>, &'a [u8])>,
}

impl ResponsePieces<'_> {
    /// Bytes of the whole encoding.
    pub fn len(&self) -> usize {
        self.fields.len() + self.pieces.iter().map(|(_, body)| body.len()).sum::<usize>()
    }

    /// Whether the encoding is empty (never: a response has at least its kind and count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole encoding in one buffer.
    pub fn joined(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for (fields, body) in &self.pieces {
            out.extend_from_slice(&self.fields[fields.clone()]);
            out.extend_from_slice(body);
        }
        out
    }
}

impl ChunkResponse {
    /// The encoding in pieces, refusing a response over a limit (as [`WireMessage::encode`]).
    pub fn pieces(&self) -> Result<ResponsePieces<'_>, WireError> {
        check_limit("item count", self.items.len() as u64, MAX_RANGES_PER_REQUEST as u64)?;
        check_limit("response bytes", self.payload_bytes(), MAX_BATCH_BYTES)?;
        let mut fields = Vec::with_capacity(3 + self.items.len() * (ITEM_HEAD_BYTES + BODY_LENGTH_BYTES));
        let mut pieces = Vec::new();
        fields.push(KIND_CHUNK_RESPONSE);
        // Checked above: at most 256, fits a u16.
        fields.extend_from_slice(&(self.items.len() as u16).to_le_bytes());
        let mut run_start = 0;
        for item in &self.items {
            fields.extend_from_slice(&item.id.0);
            match &item.result {
                ChunkResult::Ok(body) => {
                    fields.push(STATUS_OK);
                    // Checked above: the sum is at most 8 MiB, so each fits a u32.
                    fields.extend_from_slice(&(body.len() as u32).to_le_bytes());
                    pieces.push((run_start..fields.len(), body.as_slice()));
                    run_start = fields.len();
                }
                ChunkResult::NotFound => fields.push(STATUS_NOT_FOUND),
                ChunkResult::Busy => fields.push(STATUS_BUSY),
            }
        }
        pieces.push((run_start..fields.len(), &[][..]));
        Ok(ResponsePieces { fields, pieces })
    }
}

/// What the decoder needs read next from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Exactly this many bytes of small fields (at most [`MAX_FIELDS_BYTES`]), for
    /// [`ChunkResponseDecoder::fields`].
    Fields(usize),
    /// A chunk body of exactly this many bytes (within the frame and the response's
    /// limit), for [`ChunkResponseDecoder::body`].
    Body(usize),
    /// The response is complete; take it with [`ChunkResponseDecoder::finish`].
    Done,
}

/// Most bytes [`Next::Fields`] asks for at once.
pub const MAX_FIELDS_BYTES: usize = ITEM_HEAD_BYTES;

/// Where the decoder is in the frame.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Kind and item count.
    Head,
    /// An item's id and status.
    ItemHead,
    /// An `Ok` item's body length.
    BodyLength(ChunkId),
    /// An `Ok` item's body.
    Body(ChunkId, usize),
    Done,
}

/// Decodes one [`ChunkResponse`] frame a piece at a time.
#[derive(Debug)]
pub struct ChunkResponseDecoder {
    /// Bytes of the frame not yet consumed.
    frame_left: usize,
    items_left: usize,
    payload_bytes: u64,
    items: Vec<ChunkItem>,
    step: Step,
}

impl ChunkResponseDecoder {
    /// A decoder for a frame whose body is `frame_len` bytes, refused over
    /// [`ChunkResponse::MAX_ENCODED_BYTES`] before anything is read.
    pub fn new(frame_len: usize) -> Result<Self, WireError> {
        check_limit("response length", frame_len as u64, ChunkResponse::MAX_ENCODED_BYTES as u64)?;
        Ok(ChunkResponseDecoder {
            frame_left: frame_len,
            items_left: 0,
            payload_bytes: 0,
            items: Vec::new(),
            step: Step::Head,
        })
    }

    /// What to read next.
    pub fn next(&self) -> Next {
        match self.step {
            Step::Head => Next::Fields(3),
            Step::ItemHead => Next::Fields(ITEM_HEAD_BYTES),
            Step::BodyLength(_) => Next::Fields(BODY_LENGTH_BYTES),
            Step::Body(_, len) => Next::Body(len),
            Step::Done => Next::Done,
        }
    }

    /// Takes `n` bytes of the frame, or says which field the frame ended in.
    fn consume(&mut self, n: usize, field: &'static str) -> Result<(), WireError> {
        self.frame_left = self.frame_left.checked_sub(n).ok_or(WireError::Truncated { field })?;
        Ok(())
    }

    /// Feeds the bytes [`Next::Fields`] asked for.
    ///
    /// Panics if `bytes` is not exactly the length asked for (a caller bug, never input).
    pub fn fields(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        assert_eq!(Next::Fields(bytes.len()), self.next(), "fed the decoder what it did not ask for");
        match self.step {
            Step::Head => {
                self.consume(1, "kind")?;
                if bytes[0] != KIND_CHUNK_RESPONSE {
                    return Err(WireError::WrongKind { expected: KIND_CHUNK_RESPONSE, found: bytes[0] });
                }
                self.consume(2, "item count")?;
                let count = usize::from(u16::from_le_bytes([bytes[1], bytes[2]]));
                check_limit("item count", count as u64, MAX_RANGES_PER_REQUEST as u64)?;
                if self.frame_left < count * MIN_ITEM_BYTES {
                    return Err(WireError::Truncated { field: "items" });
                }
                self.items = Vec::with_capacity(count);
                self.items_left = count;
                self.next_item();
            }
            Step::ItemHead => {
                self.consume(32, "item id")?;
                let mut id = [0u8; 32];
                id.copy_from_slice(&bytes[..32]);
                let id = ChunkId(id);
                self.consume(1, "item status")?;
                match bytes[32] {
                    STATUS_OK => self.step = Step::BodyLength(id),
                    STATUS_NOT_FOUND => self.push(id, ChunkResult::NotFound),
                    STATUS_BUSY => self.push(id, ChunkResult::Busy),
                    other => return Err(WireError::UnknownStatus(other)),
                }
            }
            Step::BodyLength(id) => {
                self.consume(BODY_LENGTH_BYTES, "item length")?;
                let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                self.payload_bytes += u64::from(len);
                check_limit("response bytes", self.payload_bytes, MAX_BATCH_BYTES)?;
                let len = len as usize;
                if len > self.frame_left {
                    return Err(WireError::Truncated { field: "item bytes" });
                }
                self.step = Step::Body(id, len);
            }
            Step::Body(..) | Step::Done => unreachable!("checked against next() above"),
        }
        Ok(())
    }

    /// Feeds the body [`Next::Body`] asked for; the decoder keeps it as the item's bytes.
    ///
    /// Panics if `body` is not exactly the length asked for (a caller bug, never input).
    pub fn body(&mut self, body: Vec<u8>) -> Result<(), WireError> {
        let Step::Body(id, len) = self.step else { panic!("fed the decoder a body it did not ask for") };
        assert_eq!(body.len(), len, "fed the decoder a body of the wrong length");
        // Checked against frame_left when the length was read.
        self.consume(len, "item bytes")?;
        self.push(id, ChunkResult::Ok(body));
        Ok(())
    }

    fn push(&mut self, id: ChunkId, result: ChunkResult) {
        self.items.push(ChunkItem { id, result });
        self.items_left -= 1;
        self.next_item();
    }

    fn next_item(&mut self) {
        self.step = if self.items_left == 0 { Step::Done } else { Step::ItemHead };
    }

    /// The response, once [`Next::Done`]; bytes left in the frame after it are an error.
    pub fn finish(self) -> Result<ChunkResponse, WireError> {
        if !matches!(self.step, Step::Done) {
            return Err(WireError::Truncated { field: "items" });
        }
        if self.frame_left != 0 {
            return Err(WireError::TrailingBytes(self.frame_left));
        }
        Ok(ChunkResponse { items: self.items })
    }
}

/// Decodes a whole body through [`ChunkResponseDecoder`], as a streaming reader would.
pub fn decode_in_pieces(body: &[u8]) -> Result<ChunkResponse, WireError> {
    let mut decoder = ChunkResponseDecoder::new(body.len())?;
    let mut rest = body;
    loop {
        let (n, is_body) = match decoder.next() {
            Next::Fields(n) => (n, false),
            Next::Body(n) => (n, true),
            Next::Done => return decoder.finish(),
        };
        // The decoder has checked `n` against the frame's length, which is `body.len()`.
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        if piece.len() < n {
            return Err(WireError::Truncated { field: "items" });
        }
        rest = tail;
        if is_body {
            decoder.body(piece.to_vec())?;
        } else {
            decoder.fields(piece)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> ChunkResponse {
        ChunkResponse {
            items: vec![
                ChunkItem { id: ChunkId([1; 32]), result: ChunkResult::Busy },
                ChunkItem { id: ChunkId([2; 32]), result: ChunkResult::Ok(vec![7; 1000]) },
                ChunkItem { id: ChunkId([3; 32]), result: ChunkResult::NotFound },
                ChunkItem { id: ChunkId([4; 32]), result: ChunkResult::Ok(Vec::new()) },
                ChunkItem { id: ChunkId([5; 32]), result: ChunkResult::Ok(vec![9; 3]) },
            ],
        }
    }

    #[test]
    fn pieces_join_to_the_encoding_and_decode_back() {
        for response in [sample(), ChunkResponse::default()] {
            let pieces = response.pieces().unwrap();
            let bytes = pieces.joined();
            assert_eq!(bytes, response.encode().unwrap());
            assert_eq!(pieces.len(), bytes.len());
            assert_eq!(decode_in_pieces(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn every_truncation_and_every_extension_is_refused_like_decode() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_in_pieces(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_in_pieces(&longer).unwrap_err(), WireError::TrailingBytes(1));
        assert_eq!(ChunkResponse::decode(&longer).unwrap_err(), WireError::TrailingBytes(1));
    }

    #[test]
    fn a_body_length_beyond_the_frame_is_refused_before_the_body_is_asked_for() {
        let mut bytes = vec![KIND_CHUNK_RESPONSE, 1, 0];
        bytes.extend_from_slice(&[0; 32]);
        bytes.push(STATUS_OK);
        bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
        let mut decoder = ChunkResponseDecoder::new(bytes.len() + 10).unwrap();
        decoder.fields(&bytes[..3]).unwrap();
        decoder.fields(&bytes[3..36]).unwrap();
        assert_eq!(decoder.fields(&bytes[36..40]).unwrap_err(), WireError::Truncated { field: "item bytes" });
        // Over the response's 8 MiB, whatever the frame claims.
        let mut decoder = ChunkResponseDecoder::new(ChunkResponse::MAX_ENCODED_BYTES).unwrap();
        decoder.fields(&bytes[..3]).unwrap();
        decoder.fields(&bytes[3..36]).unwrap();
        let over = ((MAX_BATCH_BYTES + 1) as u32).to_le_bytes();
        assert!(matches!(decoder.fields(&over), Err(WireError::OverLimit { field: "response bytes", .. })));
        assert!(ChunkResponseDecoder::new(ChunkResponse::MAX_ENCODED_BYTES + 1).is_err());
    }

    #[test]
    fn counts_statuses_and_kinds_are_refused_like_decode() {
        let mut unknown_status = vec![KIND_CHUNK_RESPONSE, 1, 0];
        unknown_status.extend_from_slice(&[0; 32]);
        unknown_status.push(9);
        let cases: [&[u8]; 4] =
            [&[KIND_CHUNK_RESPONSE, 0xff, 0xff], &[KIND_CHUNK_RESPONSE, 2, 0], &[0x01, 0, 0], &unknown_status];
        for bytes in cases {
            assert_eq!(decode_in_pieces(bytes).unwrap_err(), ChunkResponse::decode(bytes).unwrap_err(), "{bytes:?}");
        }
    }
}
