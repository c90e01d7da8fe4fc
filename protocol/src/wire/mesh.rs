//! Wire messages of the edge mesh: chunk batches, "which chunks do you have", and repository
//! files. Edge nodes and the origin parse these from any peer on the internet, which is why
//! the parser lives here, bounded and fuzzed (`fuzz/fuzz_targets/mesh_wire.rs`), next to the
//! device service's ([`super::device`]) and sharing its `Reader` and [`ChunkRange`]; the
//! libp2p codec that frames them is the mesh crate's.
//!
//! Goals: a compact binary encoding that a hostile peer cannot use to make us allocate
//! more than a fixed limit, and whose parser never panics. Every length and count read
//! from the wire is checked against its limit *before* anything is allocated for it, and
//! the encoder refuses to produce a message the decoder would refuse, so an honest node
//! finds out on its own side.
//!
//! Non-goals: authenticity of chunk bytes (chunks are verified against their blake3 id by
//! the caller before use), backwards-compatible evolution (the protocol name carries the
//! version, `/otamesh/chunks/2`).
//!
//! Encoding: every message body starts with a one-byte kind tag (so a body sent on the wrong
//! protocol is refused, not misread), then fields in order: integers little-endian, chunk
//! and release ids as 32 raw bytes, names as a `u8` length plus UTF-8 bytes, byte strings as
//! a `u32` length plus bytes. A body must be consumed exactly; trailing bytes are an error.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::{ChunkRange, ReadError, Reader, RANGE_BYTES};
use crate::{ChunkId, ReleaseId};

/// Most ranges in one [`ChunkRequest`] (and items in one [`ChunkResponse`]).
pub const MAX_RANGES_PER_REQUEST: usize = 256;
/// Most chunk bytes one request may ask for and one response may carry: 8 MiB.
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Longest [`HaveResponse::bitfield`]: 128 KiB, i.e. one million chunks per release.
pub const MAX_BITFIELD_BYTES: usize = 128 * 1024;

const KIND_CHUNK_REQUEST: u8 = 0x01;
pub(super) const KIND_CHUNK_RESPONSE: u8 = 0x02;
const KIND_HAVE_REQUEST: u8 = 0x03;
const KIND_HAVE_RESPONSE: u8 = 0x04;
const KIND_META_REQUEST: u8 = 0x05;
const KIND_META_RESPONSE: u8 = 0x06;
const KIND_STATUS_BATCH: u8 = 0x07;
const KIND_STATUS_ACK: u8 = 0x08;

/// Most device status reports in one [`StatusBatch`].
pub const MAX_STATUS_REPORTS: usize = 512;
/// Largest single report in a batch (a signed report is a few hundred bytes; see
/// [`crate::status::MAX_REPORT_BYTES`]).
pub const MAX_STATUS_REPORT_BYTES: usize = crate::status::MAX_REPORT_BYTES;
/// Most bytes of reports in one batch: 1 MiB.
pub const MAX_STATUS_BATCH_BYTES: usize = 1024 * 1024;

/// Longest name in a [`MetaRequest`].
pub const MAX_META_NAME_BYTES: usize = 255;
/// Largest file a [`MetaResponse`] carries: TUF metadata and release manifests.
pub const MAX_META_BYTES: usize = 64 * 1024 * 1024;

pub(super) const STATUS_OK: u8 = 0;
pub(super) const STATUS_NOT_FOUND: u8 = 1;
pub(super) const STATUS_BUSY: u8 = 2;

/// Smallest encoded item: id and status byte (NotFound / Busy).
pub(super) const MIN_ITEM_BYTES: usize = 32 + 1;

/// A message with a bounded binary encoding, as carried by the mesh crate's libp2p codec.
pub trait WireMessage: Sized {
    /// Upper bound of [`WireMessage::encode`]'s output for any valid message; the codec
    /// refuses to read a body longer than this.
    const MAX_ENCODED_BYTES: usize;

    /// Encodes a message, refusing one that breaks a limit (the peer would refuse it too).
    fn encode(&self) -> Result<Vec<u8>, WireError>;

    /// Decodes exactly one message from `bytes`.
    fn decode(bytes: &[u8]) -> Result<Self, WireError>;
}

/// Why a message could not be encoded or decoded. Decode errors mean the peer sent
/// something malformed or over a limit; encode errors mean our own caller asked for too much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The body ended inside `field`.
    Truncated {
        /// The field being read when the input ran out.
        field: &'static str,
    },
    /// A length or count in `field` is over its limit.
    OverLimit {
        /// The field whose length or count is too large.
        field: &'static str,
        /// The length or count found (or requested).
        found: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// The kind tag does not name the expected message.
    WrongKind {
        /// The tag expected for this message type.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// A chunk item status byte (or a file's presence byte) is not one we know.
    UnknownStatus(u8),
    /// A name is not UTF-8.
    NotUtf8 {
        /// The field holding the name.
        field: &'static str,
    },
    /// Bytes were left after a complete message.
    TrailingBytes(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { field } => write!(f, "message truncated in {field}"),
            WireError::OverLimit { field, found, max } => write!(f, "{field} is {found}, over the limit of {max}"),
            WireError::WrongKind { expected, found } => {
                write!(f, "message kind {found:#04x}, expected {expected:#04x}")
            }
            WireError::UnknownStatus(s) => write!(f, "unknown status byte {s}"),
            WireError::NotUtf8 { field } => write!(f, "{field} is not UTF-8"),
            WireError::TrailingBytes(n) => write!(f, "{n} trailing bytes after the message"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

impl ReadError for WireError {
    fn truncated(field: &'static str) -> Self {
        WireError::Truncated { field }
    }

    fn trailing(left: usize) -> Self {
        WireError::TrailingBytes(left)
    }
}

/// A batch of chunk ranges of one release, asked of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    /// Release the chunks belong to, so the server can account and prioritize per release.
    pub release: ReleaseId,
    /// Ranges wanted; the response answers them in this order.
    pub chunks: Vec<ChunkRange>,
}

/// What a peer could do for one requested range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkResult {
    /// The requested bytes (unverified: check against the chunk id before use).
    Ok(Vec<u8>),
    /// The peer does not hold this chunk.
    NotFound,
    /// The peer holds it but will not serve it now; ask someone else or later.
    Busy,
}

/// The answer to one [`ChunkRange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkItem {
    /// The chunk id of the range this item answers.
    pub id: ChunkId,
    /// The bytes or why there are none.
    pub result: ChunkResult,
}

/// The answer to a [`ChunkRequest`]: one item per requested range, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkResponse {
    /// One item per requested range.
    pub items: Vec<ChunkItem>,
}

/// "Which chunks of this release do you hold?"
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveRequest {
    /// The release asked about.
    pub release: ReleaseId,
}

/// Which chunks of a release a peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveResponse {
    /// The release answered about (echoed, so a mixed-up answer is detectable).
    pub release: ReleaseId,
    /// Bit `i` (LSB-first within each byte) set = the peer holds chunk index `i` of the
    /// release's chunk manifest.
    pub bitfield: Vec<u8>,
}

/// "Send me this repository file": a TUF metadata file (`metadata/3.snapshot.json`) or a
/// target file (`targets/releases/gw/<hash>.1.0.0.manifest`). Any peer may answer: the
/// requester verifies everything against its pinned root, so the source is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    /// Repository-relative path.
    pub name: String,
}

/// The file, or `None` if the peer does not have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaResponse {
    /// The bytes, unverified.
    pub body: Option<Vec<u8>>,
}

/// Device status reports an edge node forwards toward the origin, signed by each device
/// (the receiver verifies every one again: edge nodes are untrusted). Store and forward: the
/// edge keeps a report until a [`StatusAck`] says it is durable upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusBatch {
    /// Signed reports, each as the device sent it.
    pub reports: Vec<Vec<u8>>,
}

/// "The first `stored` reports of your batch are durable here; forget them." Reports the
/// receiver refused (forged, replayed, unenrolled) count as stored: sending them again would
/// change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusAck {
    /// How many of the batch's reports, from its start, the edge may drop.
    pub stored: u32,
}

impl HaveResponse {
    /// Whether bit `index` is set; indexes past the bitfield are "not held".
    pub fn has(&self, index: usize) -> bool {
        self.bitfield.get(index / 8).is_some_and(|byte| byte & (1 << (index % 8)) != 0)
    }
}

/// Reads the kind tag and checks it names the message being decoded.
fn read_kind(r: &mut Reader<'_, WireError>, expected: u8) -> Result<(), WireError> {
    let found = r.u8("kind")?;
    if found != expected {
        return Err(WireError::WrongKind { expected, found });
    }
    Ok(())
}

/// Reads a `u16` count of ranges or items, bounded by [`MAX_RANGES_PER_REQUEST`]; the peer
/// must also prove the entries are there (`min_entry_bytes` each) before room is reserved.
fn read_count(
    r: &mut Reader<'_, WireError>,
    (count_field, entries_field): (&'static str, &'static str),
    min_entry_bytes: usize,
) -> Result<usize, WireError> {
    let count = usize::from(r.u16(count_field)?);
    check_limit(count_field, count as u64, MAX_RANGES_PER_REQUEST as u64)?;
    if r.remaining() < count * min_entry_bytes {
        return Err(WireError::Truncated { field: entries_field });
    }
    Ok(count)
}

pub(super) fn check_limit(field: &'static str, found: u64, max: u64) -> Result<(), WireError> {
    if found > max {
        return Err(WireError::OverLimit { field, found, max });
    }
    Ok(())
}

impl ChunkRequest {
    /// Bytes the ranges' explicit lengths add up to, bounded by [`MAX_BATCH_BYTES`] so an
    /// honest requester cannot ask for more than a response may carry. Whole-chunk ranges
    /// (length 0) count 0 here: a server sizes its work with [`ChunkRange::bounds`] against
    /// the stored lengths before reading.
    pub fn requested_bytes(&self) -> u64 {
        self.chunks.iter().map(|r| u64::from(r.length)).sum()
    }
}

impl WireMessage for ChunkRequest {
    const MAX_ENCODED_BYTES: usize = 1 + 32 + 2 + MAX_RANGES_PER_REQUEST * RANGE_BYTES;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        check_limit("range count", self.chunks.len() as u64, MAX_RANGES_PER_REQUEST as u64)?;
        check_limit("requested bytes", self.requested_bytes(), MAX_BATCH_BYTES)?;
        let mut out = Vec::with_capacity(4 + 32 + self.chunks.len() * RANGE_BYTES);
        out.push(KIND_CHUNK_REQUEST);
        out.extend_from_slice(&self.release.0);
        // Checked above: at most 256, fits a u16.
        out.extend_from_slice(&(self.chunks.len() as u16).to_le_bytes());
        for range in &self.chunks {
            out.extend_from_slice(&range.to_bytes());
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_CHUNK_REQUEST)?;
        let release = r.release_id("release")?;
        let count = read_count(&mut r, ("range count", "ranges"), RANGE_BYTES)?;
        let mut chunks = Vec::with_capacity(count);
        let mut requested_bytes = 0u64;
        for _ in 0..count {
            let range = ChunkRange::read(&mut r)?;
            requested_bytes += u64::from(range.length);
            chunks.push(range);
        }
        check_limit("requested bytes", requested_bytes, MAX_BATCH_BYTES)?;
        r.finish()?;
        Ok(ChunkRequest { release, chunks })
    }
}

impl ChunkResponse {
    /// Total chunk bytes carried.
    pub fn payload_bytes(&self) -> u64 {
        self.items
            .iter()
            .map(|item| match &item.result {
                ChunkResult::Ok(bytes) => bytes.len() as u64,
                ChunkResult::NotFound | ChunkResult::Busy => 0,
            })
            .sum()
    }
}

impl WireMessage for ChunkResponse {
    const MAX_ENCODED_BYTES: usize = 1 + 2 + MAX_RANGES_PER_REQUEST * (MIN_ITEM_BYTES + 4) + MAX_BATCH_BYTES as usize;

    /// Built from [`ChunkResponse::pieces`], so the streaming writer sends these very bytes.
    fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(self.pieces()?.joined())
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_CHUNK_RESPONSE)?;
        let count = read_count(&mut r, ("item count", "items"), MIN_ITEM_BYTES)?;
        let mut items = Vec::with_capacity(count);
        let mut payload_bytes = 0u64;
        for _ in 0..count {
            let id = r.chunk_id("item id")?;
            let result = match r.u8("item status")? {
                STATUS_OK => {
                    let len = r.u32("item length")?;
                    payload_bytes += u64::from(len);
                    check_limit("response bytes", payload_bytes, MAX_BATCH_BYTES)?;
                    ChunkResult::Ok(r.take(len as usize, "item bytes")?.to_vec())
                }
                STATUS_NOT_FOUND => ChunkResult::NotFound,
                STATUS_BUSY => ChunkResult::Busy,
                other => return Err(WireError::UnknownStatus(other)),
            };
            items.push(ChunkItem { id, result });
        }
        r.finish()?;
        Ok(ChunkResponse { items })
    }
}

impl WireMessage for HaveRequest {
    const MAX_ENCODED_BYTES: usize = 1 + 32;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(2 + 32);
        out.push(KIND_HAVE_REQUEST);
        out.extend_from_slice(&self.release.0);
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_HAVE_REQUEST)?;
        let release = r.release_id("release")?;
        r.finish()?;
        Ok(HaveRequest { release })
    }
}

impl WireMessage for HaveResponse {
    const MAX_ENCODED_BYTES: usize = 1 + 32 + 4 + MAX_BITFIELD_BYTES;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        check_limit("bitfield length", self.bitfield.len() as u64, MAX_BITFIELD_BYTES as u64)?;
        let mut out = Vec::with_capacity(6 + 32 + self.bitfield.len());
        out.push(KIND_HAVE_RESPONSE);
        out.extend_from_slice(&self.release.0);
        // Checked above: at most 128 KiB, fits a u32.
        out.extend_from_slice(&(self.bitfield.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.bitfield);
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_HAVE_RESPONSE)?;
        let release = r.release_id("release")?;
        let len = r.u32("bitfield length")?;
        check_limit("bitfield length", u64::from(len), MAX_BITFIELD_BYTES as u64)?;
        let bitfield = r.take(len as usize, "bitfield")?.to_vec();
        r.finish()?;
        Ok(HaveResponse { release, bitfield })
    }
}

impl WireMessage for MetaRequest {
    const MAX_ENCODED_BYTES: usize = 1 + 1 + MAX_META_NAME_BYTES;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        check_limit("name length", self.name.len() as u64, MAX_META_NAME_BYTES as u64)?;
        let mut out = Vec::with_capacity(2 + self.name.len());
        out.push(KIND_META_REQUEST);
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_META_REQUEST)?;
        let len = usize::from(r.u8("name length")?);
        let name =
            core::str::from_utf8(r.take(len, "name")?).map_err(|_| WireError::NotUtf8 { field: "name" })?.to_owned();
        r.finish()?;
        Ok(MetaRequest { name })
    }
}

impl WireMessage for MetaResponse {
    const MAX_ENCODED_BYTES: usize = 1 + 1 + 4 + MAX_META_BYTES;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![KIND_META_RESPONSE];
        match &self.body {
            None => out.push(0),
            Some(body) => {
                check_limit("file length", body.len() as u64, MAX_META_BYTES as u64)?;
                out.push(1);
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(body);
            }
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_META_RESPONSE)?;
        // Exactly 0 or 1: one encoding per message (found by the mesh_wire fuzz target).
        let body = match r.u8("presence")? {
            0 => None,
            1 => {
                let len = r.u32("file length")?;
                check_limit("file length", u64::from(len), MAX_META_BYTES as u64)?;
                Some(r.take(len as usize, "file")?.to_vec())
            }
            other => return Err(WireError::UnknownStatus(other)),
        };
        r.finish()?;
        Ok(MetaResponse { body })
    }
}

impl WireMessage for StatusBatch {
    const MAX_ENCODED_BYTES: usize = 1 + 2 + MAX_STATUS_REPORTS * 2 + MAX_STATUS_BATCH_BYTES;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        check_limit("reports", self.reports.len() as u64, MAX_STATUS_REPORTS as u64)?;
        let total: usize = self.reports.iter().map(Vec::len).sum();
        check_limit("batch bytes", total as u64, MAX_STATUS_BATCH_BYTES as u64)?;
        let mut out = Vec::with_capacity(3 + 2 * self.reports.len() + total);
        out.push(KIND_STATUS_BATCH);
        out.extend_from_slice(&(self.reports.len() as u16).to_le_bytes());
        for report in &self.reports {
            check_limit("report length", report.len() as u64, MAX_STATUS_REPORT_BYTES as u64)?;
            out.extend_from_slice(&(report.len() as u16).to_le_bytes());
            out.extend_from_slice(report);
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_STATUS_BATCH)?;
        let count = r.u16("reports")?;
        check_limit("reports", u64::from(count), MAX_STATUS_REPORTS as u64)?;
        let mut reports = Vec::with_capacity(usize::from(count));
        let mut total = 0usize;
        for _ in 0..count {
            let len = usize::from(r.u16("report length")?);
            check_limit("report length", len as u64, MAX_STATUS_REPORT_BYTES as u64)?;
            total += len;
            check_limit("batch bytes", total as u64, MAX_STATUS_BATCH_BYTES as u64)?;
            reports.push(r.take(len, "report")?.to_vec());
        }
        r.finish()?;
        Ok(StatusBatch { reports })
    }
}

impl WireMessage for StatusAck {
    const MAX_ENCODED_BYTES: usize = 1 + 4;

    fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![KIND_STATUS_ACK];
        out.extend_from_slice(&self.stored.to_le_bytes());
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        read_kind(&mut r, KIND_STATUS_ACK)?;
        let stored = r.u32("stored")?;
        r.finish()?;
        Ok(StatusAck { stored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> ChunkRequest {
        ChunkRequest {
            release: ReleaseId([0x24; 32]),
            chunks: (0..3u8)
                .map(|i| ChunkRange { id: ChunkId([i; 32]), offset: u32::from(i) * 7, length: 100 })
                .collect(),
        }
    }

    fn sample_response() -> ChunkResponse {
        ChunkResponse {
            items: vec![
                ChunkItem { id: ChunkId([1; 32]), result: ChunkResult::Ok(vec![9; 1000]) },
                ChunkItem { id: ChunkId([2; 32]), result: ChunkResult::NotFound },
                ChunkItem { id: ChunkId([3; 32]), result: ChunkResult::Busy },
                ChunkItem { id: ChunkId([4; 32]), result: ChunkResult::Ok(Vec::new()) },
            ],
        }
    }

    #[test]
    fn meta_round_trips_and_truncations() {
        let b = round_trip(&MetaRequest { name: "metadata/3.snapshot.json".into() });
        truncations_refused::<MetaRequest>(&b);
        let b = round_trip(&MetaResponse { body: Some(b"{}".to_vec()) });
        truncations_refused::<MetaResponse>(&b);
        round_trip(&MetaResponse { body: None });
        let long = MetaRequest { name: "x".repeat(MAX_META_NAME_BYTES + 1) };
        assert!(long.encode().is_err());
    }

    fn sample_have() -> HaveResponse {
        HaveResponse { release: ReleaseId([1; 32]), bitfield: vec![0b1010_0001, 0xff, 0] }
    }

    fn round_trip<M: WireMessage + PartialEq + fmt::Debug>(m: &M) -> Vec<u8> {
        let bytes = m.encode().expect("valid message encodes");
        assert!(bytes.len() <= M::MAX_ENCODED_BYTES);
        assert_eq!(&M::decode(&bytes).expect("own encoding decodes"), m);
        bytes
    }

    /// Every strict prefix of a valid encoding is refused (no panic, no partial message),
    /// and so is the encoding with one byte appended.
    fn truncations_refused<M: WireMessage + fmt::Debug>(bytes: &[u8]) {
        for cut in 0..bytes.len() {
            assert!(M::decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(M::decode(&longer).unwrap_err(), WireError::TrailingBytes(1));
    }

    #[test]
    fn round_trips_and_truncations() {
        let b = round_trip(&sample_request());
        truncations_refused::<ChunkRequest>(&b);
        let b = round_trip(&sample_response());
        truncations_refused::<ChunkResponse>(&b);
        let b = round_trip(&HaveRequest { release: ReleaseId([1; 32]) });
        truncations_refused::<HaveRequest>(&b);
        let b = round_trip(&sample_have());
        truncations_refused::<HaveResponse>(&b);
        round_trip(&ChunkResponse::default());
    }

    #[test]
    fn wrong_kind_refused() {
        let b = sample_request().encode().unwrap();
        assert_eq!(
            ChunkResponse::decode(&b).unwrap_err(),
            WireError::WrongKind { expected: KIND_CHUNK_RESPONSE, found: KIND_CHUNK_REQUEST }
        );
    }

    #[test]
    fn limits_refused_on_encode() {
        let mut req = sample_request();
        req.chunks = vec![ChunkRange { id: ChunkId([0; 32]), offset: 0, length: 1 }; MAX_RANGES_PER_REQUEST + 1];
        assert!(matches!(req.encode(), Err(WireError::OverLimit { field: "range count", .. })));
        req.chunks = vec![ChunkRange { id: ChunkId([0; 32]), offset: 0, length: u32::MAX }; 2];
        assert!(matches!(req.encode(), Err(WireError::OverLimit { field: "requested bytes", .. })));
        let have = HaveResponse { release: ReleaseId([2; 32]), bitfield: vec![0; MAX_BITFIELD_BYTES + 1] };
        assert!(matches!(have.encode(), Err(WireError::OverLimit { field: "bitfield length", .. })));
    }

    #[test]
    fn huge_length_fields_refused_before_allocation() {
        // A response claiming a 4 GiB item in a 40-byte body: refused by the limit check,
        // not by failing to allocate or by reading past the end.
        let mut b = vec![KIND_CHUNK_RESPONSE, 1, 0];
        b.extend_from_slice(&[7; 32]);
        b.push(STATUS_OK);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(ChunkResponse::decode(&b), Err(WireError::OverLimit { field: "response bytes", .. })));

        // 65535 items claimed.
        let b = [KIND_CHUNK_RESPONSE, 0xff, 0xff];
        assert!(matches!(ChunkResponse::decode(&b), Err(WireError::OverLimit { field: "item count", .. })));

        // 300 ranges claimed (and present): over the per-request limit.
        let mut b = vec![KIND_CHUNK_REQUEST];
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&300u16.to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, 300 * RANGE_BYTES));
        assert!(matches!(ChunkRequest::decode(&b), Err(WireError::OverLimit { field: "range count", .. })));

        // A release id one byte short.
        let mut b = vec![KIND_HAVE_REQUEST];
        b.extend_from_slice(&[9; 31]);
        assert_eq!(HaveRequest::decode(&b), Err(WireError::Truncated { field: "release" }));

        // A bitfield length of 4 GiB.
        let mut b = vec![KIND_HAVE_RESPONSE];
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(HaveResponse::decode(&b), Err(WireError::OverLimit { field: "bitfield length", .. })));

        // Per-range lengths that add up past 8 MiB.
        let mut b = vec![KIND_CHUNK_REQUEST];
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&2u16.to_le_bytes());
        for _ in 0..2 {
            b.extend_from_slice(&[0; 32]);
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&(5u32 << 20).to_le_bytes());
        }
        assert!(matches!(ChunkRequest::decode(&b), Err(WireError::OverLimit { field: "requested bytes", .. })));
    }

    #[test]
    fn unknown_status_and_bad_utf8_refused() {
        let mut b = vec![KIND_CHUNK_RESPONSE, 1, 0];
        b.extend_from_slice(&[7; 32]);
        b.push(9);
        assert_eq!(ChunkResponse::decode(&b).unwrap_err(), WireError::UnknownStatus(9));
        assert_eq!(
            MetaRequest::decode(&[KIND_META_REQUEST, 1, 0xff]).unwrap_err(),
            WireError::NotUtf8 { field: "name" }
        );
    }

    #[test]
    fn have_bits() {
        let have = sample_have();
        assert!(have.has(0) && !have.has(1) && have.has(5) && have.has(7) && have.has(8) && !have.has(16));
        assert!(!have.has(1_000_000));
    }

    #[test]
    fn max_encoded_bytes_is_reachable_but_not_exceeded() {
        let full = ChunkResponse {
            items: (0..MAX_RANGES_PER_REQUEST)
                .map(|i| ChunkItem {
                    id: ChunkId([i as u8; 32]),
                    result: ChunkResult::Ok(vec![0; MAX_BATCH_BYTES as usize / MAX_RANGES_PER_REQUEST]),
                })
                .collect(),
        };
        let b = full.encode().unwrap();
        assert_eq!(b.len(), ChunkResponse::MAX_ENCODED_BYTES);
    }

    #[test]
    fn a_meta_response_presence_byte_other_than_0_or_1_is_refused() {
        // Any non-zero byte used to mean "present": two encodings of one message.
        assert_eq!(MetaResponse::decode(&[KIND_META_RESPONSE, 0x35, 0, 0, 0, 0]), Err(WireError::UnknownStatus(0x35)));
        let present = MetaResponse { body: Some(Vec::new()) };
        assert_eq!(MetaResponse::decode(&present.encode().unwrap()), Ok(present));
    }
}
