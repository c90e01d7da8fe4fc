//! The device service's wire format: what devices and edge nodes say to each other, the same
//! bytes over QUIC (Linux devices, one request per bidirectional stream) and over plain TCP
//! (MCUs, requests answered in order on one connection).
//!
//! Goals:
//! - MCUs parse responses without a heap: [`ResponseView::parse`] borrows from the frame and
//!   chunk batches are read through an iterator ([`ChunkItems`]); encoders write into a
//!   caller's buffer.
//! - every length is checked against [`limits`] before anyone allocates for it, and no input
//!   makes a parser panic;
//! - errors say what was wrong ([`WireError`]), so a server can answer "bad request" or "too
//!   large" and keep the connection.
//!
//! Non-goals: trust. Nothing here is authenticated; devices verify metadata through TUF and
//! chunks against their [`ChunkId`], so an edge node (or anyone on the path) can at worst
//! withhold or corrupt bytes, which verification detects.
//!
//! # Layout
//!
//! All integers are little-endian. A frame is `len: u32` followed by `len` body bytes; the
//! body's first byte is the message kind and the body must be consumed exactly.
//!
//! | kind | message | rest of the body |
//! |------|---------|------------------|
//! | 0x01 | [`Request::GetMetadata`] | `name_len: u16`, name (UTF-8) |
//! | 0x02 | [`Request::GetTarget`] | `path_len: u16`, path (UTF-8) |
//! | 0x03 | [`Request::GetChunks`] | `count: u16`, `count` × (`id: [u8; 32]`, `offset: u32`, `length: u32`) |
//! | 0x04 | [`Request::ReportStatus`] | `len: u32`, opaque status bytes |
//! | 0x81 | [`Response::Bytes`] | `len: u32`, bytes |
//! | 0x82 | [`Response::NotFound`] | — |
//! | 0x83 | [`Response::Chunks`] | `count: u16`, `count` × (`id: [u8; 32]`, `status: u8`, if status = 0: `len: u32`, bytes) |
//! | 0x84 | [`Response::Ack`] | — |
//! | 0x85 | [`Response::Error`] | `code: u16` ([`ErrorCode`]) |
//!
//! Chunk status bytes: 0 = ok, 1 = not found, 2 = busy (not served in this response: the
//! edge node is still fetching the chunk or the response's byte budget is spent; ask again).

use super::{ChunkRange, ReadError, Reader, RANGE_BYTES};
use crate::ChunkId;

/// Bounds on everything a peer can make the other side hold.
pub mod limits {
    /// Largest request body. A `GetChunks` with [`MAX_RANGES`] ranges is ~10 KiB, a status
    /// report at most [`MAX_STATUS_BYTES`]; 64 KiB leaves room and bounds server buffers.
    pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
    /// Largest response body: an 8 MiB chunk batch plus per-item headers.
    pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024 + 64 * 1024;
    /// Most ranges in one `GetChunks` (and so items in one `Chunks` response).
    pub const MAX_RANGES: usize = 256;
    /// Longest metadata name or target path, in bytes.
    pub const MAX_NAME_BYTES: usize = 256;
    /// Largest status report. Reports are small signed records; the cap keeps an edge node
    /// from forwarding floods.
    pub const MAX_STATUS_BYTES: usize = 16 * 1024;
}

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

const KIND_GET_METADATA: u8 = 0x01;
const KIND_GET_TARGET: u8 = 0x02;
const KIND_GET_CHUNKS: u8 = 0x03;
const KIND_REPORT_STATUS: u8 = 0x04;
const KIND_ASK_HOLD: u8 = 0x05;
const KIND_BYTES: u8 = 0x81;
const KIND_NOT_FOUND: u8 = 0x82;
const KIND_CHUNKS: u8 = 0x83;
const KIND_ACK: u8 = 0x84;
const KIND_ERROR: u8 = 0x85;
const KIND_HOLD: u8 = 0x86;

const STATUS_OK: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_BUSY: u8 = 2;

/// Why bytes were refused, by a parser or an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The frame or a field ended early.
    Truncated,
    /// Bytes left over after the message.
    TrailingBytes,
    /// A frame with an empty body (no kind byte).
    Empty,
    /// A kind byte that is not a request (or not a response) of this version.
    UnknownKind(u8),
    /// A frame's length prefix is above the limit for its direction.
    FrameTooLarge {
        /// The announced body length.
        len: u32,
    },
    /// More than [`limits::MAX_RANGES`] ranges or items.
    TooManyRanges {
        /// The announced count.
        count: u16,
    },
    /// A name or path longer than [`limits::MAX_NAME_BYTES`].
    NameTooLong {
        /// The announced length.
        len: u16,
    },
    /// A name or path that is empty, not UTF-8, or could escape a directory (`..`, `/` in a
    /// metadata name, a leading `/`, control characters, backslashes).
    BadName,
    /// A status report longer than [`limits::MAX_STATUS_BYTES`].
    StatusTooLarge {
        /// The announced length.
        len: u32,
    },
    /// A chunk item status byte other than ok, not found or busy.
    UnknownChunkStatus(u8),
    /// Encoding: the message would exceed its frame limit.
    MessageTooLarge,
    /// Encoding: the output buffer is too small; `needed` bytes are required.
    BufferTooSmall {
        /// Bytes the whole frame needs.
        needed: usize,
    },
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("message truncated"),
            WireError::TrailingBytes => f.write_str("trailing bytes after message"),
            WireError::Empty => f.write_str("empty frame"),
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            WireError::FrameTooLarge { len } => write!(f, "frame of {len} bytes is above the limit"),
            WireError::TooManyRanges { count } => write!(f, "{count} ranges, at most {} allowed", limits::MAX_RANGES),
            WireError::NameTooLong { len } => {
                write!(f, "name of {len} bytes, at most {} allowed", limits::MAX_NAME_BYTES)
            }
            WireError::BadName => f.write_str("name is empty, not UTF-8 or not a safe path"),
            WireError::StatusTooLarge { len } => {
                write!(f, "status report of {len} bytes, at most {} allowed", limits::MAX_STATUS_BYTES)
            }
            WireError::UnknownChunkStatus(s) => write!(f, "unknown chunk status {s}"),
            WireError::MessageTooLarge => f.write_str("message exceeds its frame limit"),
            WireError::BufferTooSmall { needed } => write!(f, "output buffer too small, {needed} bytes needed"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

impl ReadError for WireError {
    fn truncated(_field: &'static str) -> Self {
        WireError::Truncated
    }

    fn trailing(_left: usize) -> Self {
        WireError::TrailingBytes
    }
}

/// A server error code. A newtype rather than an enum so a device can still parse codes
/// added by newer edge nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request did not parse (see [`WireError`]); the framing was intact.
    pub const BAD_REQUEST: ErrorCode = ErrorCode(1);
    /// The request or its answer exceeds a limit (frame size, ranges, status size).
    pub const TOO_LARGE: ErrorCode = ErrorCode(2);
    /// The edge node is at a limit (connections, memory); retry later or elsewhere.
    pub const BUSY: ErrorCode = ErrorCode(3);
    /// The edge node failed; not the device's fault.
    pub const INTERNAL: ErrorCode = ErrorCode(4);

    /// The code a server answers a request that failed to parse with `error`.
    pub fn for_request_error(error: WireError) -> ErrorCode {
        match error {
            WireError::FrameTooLarge { .. }
            | WireError::TooManyRanges { .. }
            | WireError::NameTooLong { .. }
            | WireError::StatusTooLarge { .. }
            | WireError::MessageTooLarge => ErrorCode::TOO_LARGE,
            _ => ErrorCode::BAD_REQUEST,
        }
    }
}

/// Reads a frame's length prefix and checks it against `max_body_bytes` (one of
/// [`limits::MAX_REQUEST_BYTES`] or [`limits::MAX_RESPONSE_BYTES`]) — before the caller
/// allocates or reads the body.
pub fn frame_body_len(header: [u8; FRAME_HEADER_BYTES], max_body_bytes: usize) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n <= max_body_bytes => Ok(n),
        _ => Err(WireError::FrameTooLarge { len }),
    }
}

/// Splits one complete frame off the front of `buf`: `Ok(Some((body, consumed)))`,
/// `Ok(None)` if more bytes are needed. For MCUs reading into a fixed buffer.
pub fn split_frame(buf: &[u8], max_body_bytes: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_BYTES>() else { return Ok(None) };
    let len = frame_body_len(*header, max_body_bytes)?;
    let end = FRAME_HEADER_BYTES + len;
    Ok(buf.get(FRAME_HEADER_BYTES..end).map(|body| (body, end)))
}

/// A writer into a caller's buffer whose size was checked up front.
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Checks that `out` holds a whole frame of `body_len` and writes its length prefix.
    /// Callers have bounded `body_len` by a limit far below 4 GiB.
    fn start_frame(out: &'a mut [u8], body_len: usize) -> Result<Self, WireError> {
        let needed = FRAME_HEADER_BYTES + body_len;
        if out.len() < needed {
            return Err(WireError::BufferTooSmall { needed });
        }
        let mut w = Writer { out, pos: 0 };
        w.put(&(body_len as u32).to_le_bytes());
        Ok(w)
    }
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        // Callers size the buffer with `encoded_len` first; `get_mut` keeps this panic-free
        // even if that invariant were broken (the frame would then be short, not a crash).
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.pos += bytes.len();
    }
}

/// Whether `name` is a metadata file name: one path segment, no leading dot.
fn valid_metadata_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.bytes().all(|b| b > 0x20 && b != 0x7f && b != b'/' && b != b'\\')
}

/// Whether `path` is a relative target path that cannot climb out of the targets directory.
fn valid_target_path(path: &str) -> bool {
    !path.is_empty()
        && path.bytes().all(|b| b >= 0x20 && b != 0x7f && b != b'\\')
        && path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn read_name<'a>(r: &mut Reader<'a, WireError>, valid: fn(&str) -> bool) -> Result<&'a str, WireError> {
    let len = r.u16("name length")?;
    if usize::from(len) > limits::MAX_NAME_BYTES {
        return Err(WireError::NameTooLong { len });
    }
    let name = core::str::from_utf8(r.take(usize::from(len), "name")?).map_err(|_| WireError::BadName)?;
    if !valid(name) {
        return Err(WireError::BadName);
    }
    Ok(name)
}

fn check_name(name: &str, valid: fn(&str) -> bool) -> Result<(), WireError> {
    if name.len() > limits::MAX_NAME_BYTES {
        return Err(WireError::NameTooLong { len: u16::try_from(name.len()).unwrap_or(u16::MAX) });
    }
    if !valid(name) {
        return Err(WireError::BadName);
    }
    Ok(())
}

/// The ranges of a `GetChunks` request: either validated wire bytes (parsing) or a caller's
/// slice (encoding). Iterate with [`ChunkRanges::iter`]; neither form allocates.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRanges<'a>(RangesRepr<'a>);

#[derive(Debug, Clone, Copy)]
enum RangesRepr<'a> {
    Wire(&'a [u8]),
    Slice(&'a [ChunkRange]),
}

impl<'a> ChunkRanges<'a> {
    /// Ranges to encode.
    pub fn from_slice(ranges: &'a [ChunkRange]) -> Self {
        ChunkRanges(RangesRepr::Slice(ranges))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        match self.0 {
            RangesRepr::Wire(b) => b.len() / RANGE_BYTES,
            RangesRepr::Slice(s) => s.len(),
        }
    }

    /// True when there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ranges in request order.
    pub fn iter(&self) -> impl Iterator<Item = ChunkRange> + 'a {
        let (wire, slice): (&'a [u8], &'a [ChunkRange]) = match self.0 {
            RangesRepr::Wire(b) => (b, &[]),
            RangesRepr::Slice(s) => (&[], s),
        };
        wire.chunks_exact(RANGE_BYTES)
            .filter_map(|bytes| ChunkRange::read(&mut Reader::<WireError>::new(bytes)).ok())
            .chain(slice.iter().copied())
    }
}

impl PartialEq for ChunkRanges<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// A request from a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request<'a> {
    /// A TUF metadata file, e.g. `timestamp.json`, `3.snapshot.json`, `1.root.json`.
    GetMetadata {
        /// The file name (one path segment).
        name: &'a str,
    },
    /// A TUF target file, e.g. `releases/gw/1.0.0.manifest`.
    GetTarget {
        /// The target path (relative, no `.`/`..` segments).
        path: &'a str,
    },
    /// Byte ranges of stored chunks.
    GetChunks {
        /// At most [`limits::MAX_RANGES`].
        ranges: ChunkRanges<'a>,
    },
    /// An opaque signed status record for the edge node to forward.
    ReportStatus {
        /// At most [`limits::MAX_STATUS_BYTES`].
        body: &'a [u8],
    },
    /// Whether the edge node holds this device back in a rollout (its site halted itself, or
    /// the site's install budget is used up). The answer can only delay an install: the
    /// device decides from the signed policy itself.
    AskHold {
        /// The rollout id (the same name rules as a metadata file name).
        rollout: &'a str,
        /// The device's key.
        device: [u8; 32],
    },
}

/// Checks a body against its direction's limit and reads its kind byte.
fn open_body(body: &[u8], max_body_bytes: usize) -> Result<(Reader<'_, WireError>, u8), WireError> {
    if body.len() > max_body_bytes {
        return Err(WireError::FrameTooLarge { len: u32::try_from(body.len()).unwrap_or(u32::MAX) });
    }
    let mut r = Reader::new(body);
    let kind = r.u8("kind").map_err(|_| WireError::Empty)?;
    Ok((r, kind))
}

/// Parses request bodies (the bytes after the length prefix).
#[derive(Debug)]
pub struct RequestView;

impl RequestView {
    /// Parses and validates a whole request body, borrowing from it.
    pub fn parse(body: &[u8]) -> Result<Request<'_>, WireError> {
        let (mut r, kind) = open_body(body, limits::MAX_REQUEST_BYTES)?;
        let request = match kind {
            KIND_GET_METADATA => Request::GetMetadata { name: read_name(&mut r, valid_metadata_name)? },
            KIND_GET_TARGET => Request::GetTarget { path: read_name(&mut r, valid_target_path)? },
            KIND_GET_CHUNKS => {
                let count = r.u16("count")?;
                if usize::from(count) > limits::MAX_RANGES {
                    return Err(WireError::TooManyRanges { count });
                }
                Request::GetChunks {
                    ranges: ChunkRanges(RangesRepr::Wire(r.take(usize::from(count) * RANGE_BYTES, "ranges")?)),
                }
            }
            KIND_REPORT_STATUS => {
                let len = r.u32("length")?;
                if usize::try_from(len).map_or(true, |n| n > limits::MAX_STATUS_BYTES) {
                    return Err(WireError::StatusTooLarge { len });
                }
                Request::ReportStatus { body: r.take(len as usize, "status")? }
            }
            KIND_ASK_HOLD => {
                let rollout = read_name(&mut r, valid_metadata_name)?;
                let device = r.take(32, "device")?.try_into().map_err(|_| WireError::Truncated)?;
                Request::AskHold { rollout, device }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Request<'_> {
    /// Bytes of the body (without the length prefix); checks every limit.
    pub fn body_len(&self) -> Result<usize, WireError> {
        let len = match self {
            Request::GetMetadata { name } => {
                check_name(name, valid_metadata_name)?;
                3 + name.len()
            }
            Request::GetTarget { path } => {
                check_name(path, valid_target_path)?;
                3 + path.len()
            }
            Request::GetChunks { ranges } => {
                if ranges.len() > limits::MAX_RANGES {
                    return Err(WireError::TooManyRanges { count: u16::try_from(ranges.len()).unwrap_or(u16::MAX) });
                }
                3 + ranges.len() * RANGE_BYTES
            }
            Request::ReportStatus { body } => {
                if body.len() > limits::MAX_STATUS_BYTES {
                    return Err(WireError::StatusTooLarge { len: u32::try_from(body.len()).unwrap_or(u32::MAX) });
                }
                5 + body.len()
            }
            Request::AskHold { rollout, .. } => {
                check_name(rollout, valid_metadata_name)?;
                3 + rollout.len() + 32
            }
        };
        if len > limits::MAX_REQUEST_BYTES {
            return Err(WireError::MessageTooLarge);
        }
        Ok(len)
    }

    /// Writes the whole frame (length prefix and body) into `out`; returns its length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        // body_len ≤ MAX_REQUEST_BYTES, so every cast below is lossless.
        let mut w = Writer::start_frame(out, self.body_len()?)?;
        match self {
            Request::GetMetadata { name } => {
                w.put(&[KIND_GET_METADATA]);
                w.put(&(name.len() as u16).to_le_bytes());
                w.put(name.as_bytes());
            }
            Request::GetTarget { path } => {
                w.put(&[KIND_GET_TARGET]);
                w.put(&(path.len() as u16).to_le_bytes());
                w.put(path.as_bytes());
            }
            Request::GetChunks { ranges } => {
                w.put(&[KIND_GET_CHUNKS]);
                w.put(&(ranges.len() as u16).to_le_bytes());
                for range in ranges.iter() {
                    w.put(&range.id.0);
                    w.put(&range.offset.to_le_bytes());
                    w.put(&range.length.to_le_bytes());
                }
            }
            Request::ReportStatus { body } => {
                w.put(&[KIND_REPORT_STATUS]);
                w.put(&(body.len() as u32).to_le_bytes());
                w.put(body);
            }
            Request::AskHold { rollout, device } => {
                w.put(&[KIND_ASK_HOLD]);
                w.put(&(rollout.len() as u16).to_le_bytes());
                w.put(rollout.as_bytes());
                w.put(device);
            }
        }
        Ok(w.pos)
    }

    /// The whole frame in a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_frame(&self) -> Result<alloc::vec::Vec<u8>, WireError> {
        let mut out = alloc::vec![0u8; FRAME_HEADER_BYTES + self.body_len()?];
        self.emit(&mut out)?;
        Ok(out)
    }
}

/// What happened to one requested range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus<'a> {
    /// The requested bytes of the stored chunk.
    Ok(&'a [u8]),
    /// The edge node does not have the chunk, or the range lies outside it.
    NotFound,
    /// Not served in this response (still being fetched, or the response budget is spent);
    /// ask again.
    Busy,
}

/// One item of a `Chunks` response, answering the range at the same position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkItem<'a> {
    /// The chunk the range named.
    pub id: ChunkId,
    /// Its outcome.
    pub status: ChunkStatus<'a>,
}

impl ChunkItem<'_> {
    fn wire_len(&self) -> usize {
        match self.status {
            ChunkStatus::Ok(bytes) => 32 + 1 + 4 + bytes.len(),
            _ => 32 + 1,
        }
    }
}

/// The items of a `Chunks` response: validated wire bytes (parsing) or a caller's slice
/// (encoding). Iterating never allocates and, on wire bytes, never fails: they were checked
/// once by [`ResponseView::parse`].
#[derive(Debug, Clone, Copy)]
pub struct ChunkItems<'a> {
    repr: ItemsRepr<'a>,
    count: usize,
}

#[derive(Debug, Clone, Copy)]
enum ItemsRepr<'a> {
    Wire(&'a [u8]),
    Slice(&'a [ChunkItem<'a>]),
}

impl<'a> ChunkItems<'a> {
    /// Items to encode.
    pub fn from_slice(items: &'a [ChunkItem<'a>]) -> Self {
        ChunkItems { repr: ItemsRepr::Slice(items), count: items.len() }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items in request order.
    pub fn iter(&self) -> ChunkItemIter<'a> {
        ChunkItemIter { repr: self.repr, remaining: self.count }
    }

    /// Walks `count` items of wire bytes; returns the bytes they span.
    fn check(r: &mut Reader<'a, WireError>, count: usize) -> Result<&'a [u8], WireError> {
        let start = r.rest();
        let mut used = 0usize;
        for _ in 0..count {
            let before = r.remaining();
            read_item(r)?;
            used += before - r.remaining();
        }
        start.get(..used).ok_or(WireError::Truncated)
    }
}

impl PartialEq for ChunkItems<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

fn read_item<'a>(r: &mut Reader<'a, WireError>) -> Result<ChunkItem<'a>, WireError> {
    let id = r.chunk_id("item id")?;
    let status = match r.u8("item status")? {
        STATUS_OK => {
            let len = r.u32("length")?;
            ChunkStatus::Ok(r.take(usize::try_from(len).map_err(|_| WireError::Truncated)?, "item bytes")?)
        }
        STATUS_NOT_FOUND => ChunkStatus::NotFound,
        STATUS_BUSY => ChunkStatus::Busy,
        other => return Err(WireError::UnknownChunkStatus(other)),
    };
    Ok(ChunkItem { id, status })
}

/// Iterator over [`ChunkItems`].
#[derive(Debug, Clone)]
pub struct ChunkItemIter<'a> {
    repr: ItemsRepr<'a>,
    remaining: usize,
}

impl<'a> Iterator for ChunkItemIter<'a> {
    type Item = ChunkItem<'a>;

    fn next(&mut self) -> Option<ChunkItem<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match &mut self.repr {
            ItemsRepr::Wire(bytes) => {
                let mut r = Reader::<WireError>::new(bytes);
                // Validated by `ResponseView::parse`; an error here cannot happen, and if it
                // did, ending the iteration is the safe answer.
                let item = read_item(&mut r).ok();
                *bytes = r.rest();
                if item.is_none() {
                    self.remaining = 0;
                }
                item
            }
            ItemsRepr::Slice(items) => {
                let (first, rest) = items.split_first()?;
                *items = rest;
                Some(*first)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

/// A response from the edge node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Response<'a> {
    /// The metadata or target file.
    Bytes(&'a [u8]),
    /// No such metadata or target.
    NotFound,
    /// One item per requested range, in request order.
    Chunks {
        /// At most [`limits::MAX_RANGES`].
        items: ChunkItems<'a>,
    },
    /// The status report was accepted for forwarding.
    Ack,
    /// The request failed.
    Error {
        /// Why.
        code: ErrorCode,
    },
    /// The edge node's answer to [`Request::AskHold`].
    Hold(EdgeHoldAnswer),
}

/// What an edge node says about a device in a rollout: no hold, its site halted itself, or
/// the site's install budget is used up until a time (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeHoldAnswer {
    /// Nothing holds the device back here.
    None,
    /// The site's own reports halted the rollout here.
    SiteHalted,
    /// Too many devices of the site are installing; ask again at `retry_at`.
    ConcurrencyFull {
        /// Unix seconds.
        retry_at: i64,
    },
}

const HOLD_NONE: u8 = 0;
const HOLD_SITE_HALTED: u8 = 1;
const HOLD_CONCURRENCY_FULL: u8 = 2;

/// Parses response bodies (the bytes after the length prefix).
#[derive(Debug)]
pub struct ResponseView;

impl ResponseView {
    /// Parses and validates a whole response body, borrowing from it.
    pub fn parse(body: &[u8]) -> Result<Response<'_>, WireError> {
        let (mut r, kind) = open_body(body, limits::MAX_RESPONSE_BYTES)?;
        let response = match kind {
            KIND_BYTES => {
                let len = r.u32("length")?;
                Response::Bytes(r.take(usize::try_from(len).map_err(|_| WireError::Truncated)?, "bytes")?)
            }
            KIND_NOT_FOUND => Response::NotFound,
            KIND_CHUNKS => {
                let count = r.u16("count")?;
                if usize::from(count) > limits::MAX_RANGES {
                    return Err(WireError::TooManyRanges { count });
                }
                let count = usize::from(count);
                let items = ChunkItems::check(&mut r, count)?;
                Response::Chunks { items: ChunkItems { repr: ItemsRepr::Wire(items), count } }
            }
            KIND_ACK => Response::Ack,
            KIND_ERROR => Response::Error { code: ErrorCode(r.u16("error code")?) },
            KIND_HOLD => {
                let hold = r.u8("hold")?;
                let retry_at = i64::from_le_bytes(r.take(8, "retry at")?.try_into().map_err(|_| WireError::Truncated)?);
                Response::Hold(match (hold, retry_at) {
                    // A time only where it means something: one encoding per answer.
                    (HOLD_NONE, 0) => EdgeHoldAnswer::None,
                    (HOLD_SITE_HALTED, 0) => EdgeHoldAnswer::SiteHalted,
                    (HOLD_CONCURRENCY_FULL, retry_at) => EdgeHoldAnswer::ConcurrencyFull { retry_at },
                    (other, _) => return Err(WireError::UnknownKind(other)),
                })
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(response)
    }
}

impl Response<'_> {
    /// Bytes of the body (without the length prefix); checks every limit.
    pub fn body_len(&self) -> Result<usize, WireError> {
        let len = match self {
            Response::Bytes(bytes) => 5usize.checked_add(bytes.len()).ok_or(WireError::MessageTooLarge)?,
            Response::NotFound | Response::Ack => 1,
            Response::Chunks { items } => {
                if items.len() > limits::MAX_RANGES {
                    return Err(WireError::TooManyRanges { count: u16::try_from(items.len()).unwrap_or(u16::MAX) });
                }
                items
                    .iter()
                    .try_fold(3usize, |acc, item| acc.checked_add(item.wire_len()))
                    .ok_or(WireError::MessageTooLarge)?
            }
            Response::Error { .. } => 3,
            Response::Hold(_) => 10,
        };
        if len > limits::MAX_RESPONSE_BYTES {
            return Err(WireError::MessageTooLarge);
        }
        Ok(len)
    }

    /// Writes the whole frame (length prefix and body) into `out`; returns its length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        // body_len ≤ MAX_RESPONSE_BYTES < 4 GiB, so every length cast below is lossless.
        let mut w = Writer::start_frame(out, self.body_len()?)?;
        match self {
            Response::Bytes(bytes) => {
                w.put(&[KIND_BYTES]);
                w.put(&(bytes.len() as u32).to_le_bytes());
                w.put(bytes);
            }
            Response::NotFound => w.put(&[KIND_NOT_FOUND]),
            Response::Chunks { items } => {
                w.put(&[KIND_CHUNKS]);
                w.put(&(items.len() as u16).to_le_bytes());
                for item in items.iter() {
                    w.put(&item.id.0);
                    match item.status {
                        ChunkStatus::Ok(bytes) => {
                            w.put(&[STATUS_OK]);
                            w.put(&(bytes.len() as u32).to_le_bytes());
                            w.put(bytes);
                        }
                        ChunkStatus::NotFound => w.put(&[STATUS_NOT_FOUND]),
                        ChunkStatus::Busy => w.put(&[STATUS_BUSY]),
                    }
                }
            }
            Response::Ack => w.put(&[KIND_ACK]),
            Response::Error { code } => {
                w.put(&[KIND_ERROR]);
                w.put(&code.0.to_le_bytes());
            }
            Response::Hold(hold) => {
                let (kind, retry_at) = match hold {
                    EdgeHoldAnswer::None => (HOLD_NONE, 0),
                    EdgeHoldAnswer::SiteHalted => (HOLD_SITE_HALTED, 0),
                    EdgeHoldAnswer::ConcurrencyFull { retry_at } => (HOLD_CONCURRENCY_FULL, *retry_at),
                };
                w.put(&[KIND_HOLD, kind]);
                w.put(&retry_at.to_le_bytes());
            }
        }
        Ok(w.pos)
    }

    /// The whole frame in a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_frame(&self) -> Result<alloc::vec::Vec<u8>, WireError> {
        let mut out = alloc::vec![0u8; FRAME_HEADER_BYTES + self.body_len()?];
        self.emit(&mut out)?;
        Ok(out)
    }
}

/// A `Chunks` response frame as pieces: the small fields in one buffer, each chunk body as
/// the caller's own handle. Byte for byte what `Response::Chunks` encodes with
/// [`Response::to_frame`], without copying the bodies into a frame: a server holding chunks in shared buffers sends them from
/// there (the device service hands each one to quinn as it is), so 1,000 devices fetching
/// one release no longer each cost a frame-sized copy of it.
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct ChunksFramePieces<B> {
    /// The length prefix and every byte that is not a chunk body, in wire order.
    pub fields: alloc::vec::Vec<u8>,
    /// In wire order: a range of `fields`, then a chunk body (none after the last run).
    pub pieces: alloc::vec::Vec<(core::ops::Range<usize>, Option<B>)>,
}

/// Builds [`ChunksFramePieces`] item by item, refusing an item past the response limits
/// ([`limits::MAX_RANGES`] items, [`limits::MAX_RESPONSE_BYTES`] of body) as `to_frame` would.
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct ChunksPiecesBuilder<B> {
    frame: ChunksFramePieces<B>,
    run_start: usize,
    body_len: usize,
    count: u16,
}

#[cfg(feature = "alloc")]
impl<B: AsRef<[u8]>> Default for ChunksPiecesBuilder<B> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "alloc")]
impl<B: AsRef<[u8]>> ChunksPiecesBuilder<B> {
    /// An empty batch.
    pub fn new() -> Self {
        let mut fields = alloc::vec::Vec::with_capacity(FRAME_HEADER_BYTES + CHUNKS_HEADER_BYTES + 8 * 37);
        fields.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        fields.push(KIND_CHUNKS);
        fields.extend_from_slice(&[0, 0]);
        ChunksPiecesBuilder {
            frame: ChunksFramePieces { fields, pieces: alloc::vec::Vec::new() },
            run_start: 0,
            body_len: CHUNKS_HEADER_BYTES,
            count: 0,
        }
    }

    /// Room for one more item of `wire_len` body bytes, or the limit it would break.
    fn check(&self, wire_len: usize) -> Result<(), WireError> {
        if usize::from(self.count) >= limits::MAX_RANGES {
            return Err(WireError::TooManyRanges { count: self.count.saturating_add(1) });
        }
        if self.body_len.saturating_add(wire_len) > limits::MAX_RESPONSE_BYTES {
            return Err(WireError::MessageTooLarge);
        }
        Ok(())
    }

    /// Appends an item carrying `body`; refused (and nothing appended) past a limit.
    pub fn push_ok(&mut self, id: ChunkId, body: B) -> Result<(), WireError> {
        let len = body.as_ref().len();
        self.check(chunk_item_bytes(len))?;
        self.frame.fields.extend_from_slice(&id.0);
        self.frame.fields.push(STATUS_OK);
        // Bounded by MAX_RESPONSE_BYTES above, so the cast is lossless.
        self.frame.fields.extend_from_slice(&(len as u32).to_le_bytes());
        self.frame.pieces.push((self.run_start..self.frame.fields.len(), Some(body)));
        self.run_start = self.frame.fields.len();
        self.body_len += chunk_item_bytes(len);
        self.count += 1;
        Ok(())
    }

    /// Appends an item without data (`NotFound` or `Busy`).
    fn push_empty(&mut self, id: ChunkId, status: u8) -> Result<(), WireError> {
        self.check(EMPTY_ITEM_BYTES)?;
        self.frame.fields.extend_from_slice(&id.0);
        self.frame.fields.push(status);
        self.body_len += EMPTY_ITEM_BYTES;
        self.count += 1;
        Ok(())
    }

    /// Appends a `NotFound` item.
    pub fn push_not_found(&mut self, id: ChunkId) -> Result<(), WireError> {
        self.push_empty(id, STATUS_NOT_FOUND)
    }

    /// Appends a `Busy` item.
    pub fn push_busy(&mut self, id: ChunkId) -> Result<(), WireError> {
        self.push_empty(id, STATUS_BUSY)
    }

    /// Bytes of the whole frame (length prefix and body).
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.body_len
    }

    /// The finished frame in pieces.
    pub fn finish(mut self) -> ChunksFramePieces<B> {
        // At most MAX_RESPONSE_BYTES, checked on every push.
        let body_len = self.body_len as u32;
        self.frame.fields[..FRAME_HEADER_BYTES].copy_from_slice(&body_len.to_le_bytes());
        self.frame.fields[FRAME_HEADER_BYTES + 1..FRAME_HEADER_BYTES + 3].copy_from_slice(&self.count.to_le_bytes());
        let end = self.frame.fields.len();
        self.frame.pieces.push((self.run_start..end, None));
        self.frame
    }
}

/// Bytes a `Chunks` response item with `payload_bytes` of data adds to the body; servers use
/// it to keep a batch under [`limits::MAX_RESPONSE_BYTES`].
pub const fn chunk_item_bytes(payload_bytes: usize) -> usize {
    32 + 1 + 4 + payload_bytes
}

/// Bytes a `Chunks` response item without data (`NotFound`, `Busy`) adds to the body.
pub const EMPTY_ITEM_BYTES: usize = 32 + 1;

/// Bytes of a `Chunks` response body before its items.
pub const CHUNKS_HEADER_BYTES: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The pieces join to exactly the frame `Response::Chunks` encodes, and an item that would
    /// break a limit is refused with nothing appended.
    #[test]
    fn chunk_frame_pieces_join_to_the_encoded_frame() {
        let big = vec![7u8; limits::MAX_RESPONSE_BYTES / 3];
        let mut accepted = Vec::new();
        let mut pieces = ChunksPiecesBuilder::<&[u8]>::new();
        let offered: [(u8, ChunkStatus<'_>); 8] = [
            (1, ChunkStatus::Ok(b"abc")),
            (2, ChunkStatus::NotFound),
            (3, ChunkStatus::Busy),
            (4, ChunkStatus::Ok(b"")),
            (5, ChunkStatus::Ok(&big)),
            (6, ChunkStatus::Ok(&big)),
            (7, ChunkStatus::Ok(&big)),
            (8, ChunkStatus::Busy),
        ];
        for (n, status) in offered {
            let before = pieces.frame_len();
            let pushed = match status {
                ChunkStatus::Ok(body) => pieces.push_ok(id(n), body),
                ChunkStatus::NotFound => pieces.push_not_found(id(n)),
                ChunkStatus::Busy => pieces.push_busy(id(n)),
            };
            match pushed {
                Ok(()) => accepted.push(ChunkItem { id: id(n), status }),
                Err(e) => {
                    assert_eq!((n, e), (7, WireError::MessageTooLarge), "only the third big body is over the limit");
                    assert_eq!(pieces.frame_len(), before, "a refused item appended something");
                }
            }
        }
        let expected = Response::Chunks { items: ChunkItems::from_slice(&accepted) }.to_frame().unwrap();
        assert_eq!(pieces.frame_len(), expected.len());
        let pieces = pieces.finish();
        let mut joined = Vec::new();
        for (fields, body) in &pieces.pieces {
            joined.extend_from_slice(&pieces.fields[fields.clone()]);
            joined.extend_from_slice(body.unwrap_or(&[]));
        }
        assert_eq!(joined, expected);
        // One more than the item limit: refused as the encoder refuses it.
        let mut full = ChunksPiecesBuilder::<&[u8]>::new();
        for _ in 0..limits::MAX_RANGES {
            full.push_busy(id(0)).unwrap();
        }
        assert!(matches!(full.push_busy(id(0)), Err(WireError::TooManyRanges { .. })));
        let busy = [ChunkItem { id: id(0), status: ChunkStatus::Busy }; limits::MAX_RANGES + 1];
        assert!(Response::Chunks { items: ChunkItems::from_slice(&busy) }.to_frame().is_err());
    }

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn body(frame: &[u8]) -> &[u8] {
        let (body, used) = split_frame(frame, limits::MAX_RESPONSE_BYTES).unwrap().unwrap();
        assert_eq!(used, frame.len());
        body
    }

    fn requests() -> Vec<Vec<u8>> {
        let ranges = [ChunkRange { id: id(1), offset: 5, length: 10 }, ChunkRange::whole(id(2))];
        [
            Request::GetMetadata { name: "1.root.json" },
            Request::GetMetadata { name: "timestamp.json" },
            Request::GetTarget { path: "releases/gw/1.0.0.manifest" },
            Request::GetChunks { ranges: ChunkRanges::from_slice(&ranges) },
            Request::GetChunks { ranges: ChunkRanges::from_slice(&[]) },
            Request::ReportStatus { body: b"signed status" },
            Request::ReportStatus { body: &[] },
        ]
        .iter()
        .map(|r| {
            let frame = r.to_frame().unwrap();
            assert_eq!(RequestView::parse(body(&frame)).unwrap(), *r);
            frame
        })
        .collect()
    }

    fn responses() -> Vec<Vec<u8>> {
        let items = [
            ChunkItem { id: id(1), status: ChunkStatus::Ok(b"abc") },
            ChunkItem { id: id(2), status: ChunkStatus::NotFound },
            ChunkItem { id: id(3), status: ChunkStatus::Busy },
            ChunkItem { id: id(4), status: ChunkStatus::Ok(&[]) },
        ];
        [
            Response::Bytes(b"{\"signed\":{}}"),
            Response::Bytes(&[]),
            Response::NotFound,
            Response::Chunks { items: ChunkItems::from_slice(&items) },
            Response::Chunks { items: ChunkItems::from_slice(&[]) },
            Response::Ack,
            Response::Error { code: ErrorCode::BUSY },
            Response::Error { code: ErrorCode(999) },
        ]
        .iter()
        .map(|r| {
            let frame = r.to_frame().unwrap();
            let parsed = ResponseView::parse(body(&frame)).unwrap();
            assert_eq!(parsed, *r);
            assert_eq!(parsed.to_frame().unwrap(), frame, "re-encoding a parsed response is identical");
            frame
        })
        .collect()
    }

    #[test]
    fn every_message_round_trips() {
        let ranges = [ChunkRange { id: id(9), offset: 1, length: 2 }];
        let frame = Request::GetChunks { ranges: ChunkRanges::from_slice(&ranges) }.to_frame().unwrap();
        match RequestView::parse(body(&frame)).unwrap() {
            Request::GetChunks { ranges: parsed } => assert_eq!(parsed.iter().collect::<Vec<_>>(), ranges),
            other => panic!("{other:?}"),
        }
        assert_eq!(requests().len(), 7);
        assert_eq!(responses().len(), 8);
    }

    #[test]
    fn every_truncation_is_refused() {
        for frame in requests() {
            let body = &frame[FRAME_HEADER_BYTES..];
            for cut in 0..body.len() {
                assert!(RequestView::parse(&body[..cut]).is_err(), "{cut} of {body:?}");
            }
            assert_eq!(split_frame(&frame[..frame.len() - 1], limits::MAX_REQUEST_BYTES), Ok(None));
        }
        for frame in responses() {
            let body = &frame[FRAME_HEADER_BYTES..];
            for cut in 0..body.len() {
                assert!(ResponseView::parse(&body[..cut]).is_err(), "{cut} of {body:?}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for frame in requests() {
            let mut body = frame[FRAME_HEADER_BYTES..].to_vec();
            body.push(0);
            assert_eq!(RequestView::parse(&body), Err(WireError::TrailingBytes));
        }
        for frame in responses() {
            let mut body = frame[FRAME_HEADER_BYTES..].to_vec();
            body.push(0);
            assert_eq!(ResponseView::parse(&body), Err(WireError::TrailingBytes));
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading_them() {
        // Frame prefixes: checked from the 4 header bytes alone.
        let big = (limits::MAX_REQUEST_BYTES as u32 + 1).to_le_bytes();
        assert_eq!(frame_body_len(big, limits::MAX_REQUEST_BYTES), Err(WireError::FrameTooLarge { len: 65537 }));
        assert_eq!(split_frame(&big, limits::MAX_REQUEST_BYTES), Err(WireError::FrameTooLarge { len: 65537 }));
        assert_eq!(
            frame_body_len(u32::MAX.to_le_bytes(), limits::MAX_RESPONSE_BYTES),
            Err(WireError::FrameTooLarge { len: u32::MAX })
        );
        // Counts and lengths inside bodies: refused from the count field, without the data.
        let mut chunks = vec![KIND_GET_CHUNKS];
        chunks.extend_from_slice(&300u16.to_le_bytes());
        assert_eq!(RequestView::parse(&chunks), Err(WireError::TooManyRanges { count: 300 }));
        let mut name = vec![KIND_GET_METADATA];
        name.extend_from_slice(&257u16.to_le_bytes());
        assert_eq!(RequestView::parse(&name), Err(WireError::NameTooLong { len: 257 }));
        let mut status = vec![KIND_REPORT_STATUS];
        status.extend_from_slice(&(16 * 1024 + 1u32).to_le_bytes());
        assert_eq!(RequestView::parse(&status), Err(WireError::StatusTooLarge { len: 16385 }));
        let mut items = vec![KIND_CHUNKS];
        items.extend_from_slice(&257u16.to_le_bytes());
        assert_eq!(ResponseView::parse(&items), Err(WireError::TooManyRanges { count: 257 }));
        let mut bytes = vec![KIND_BYTES];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ResponseView::parse(&bytes), Err(WireError::Truncated));
    }

    #[test]
    fn a_hold_answer_has_one_encoding() {
        // Found by the device_wire fuzz target: "no hold" with a stray time re-encoded without it.
        let mut stray = vec![KIND_HOLD, HOLD_NONE];
        stray.extend_from_slice(&1234i64.to_le_bytes());
        assert_eq!(ResponseView::parse(&stray), Err(WireError::UnknownKind(HOLD_NONE)));
        let full = Response::Hold(EdgeHoldAnswer::ConcurrencyFull { retry_at: 1234 }).to_frame().unwrap();
        assert_eq!(
            ResponseView::parse(&full[FRAME_HEADER_BYTES..]),
            Ok(Response::Hold(EdgeHoldAnswer::ConcurrencyFull { retry_at: 1234 }))
        );
    }

    #[test]
    fn encoders_enforce_limits() {
        let long = "a".repeat(257);
        assert_eq!(Request::GetMetadata { name: &long }.to_frame(), Err(WireError::NameTooLong { len: 257 }));
        let ranges = vec![ChunkRange::whole(id(0)); 257];
        assert_eq!(
            Request::GetChunks { ranges: ChunkRanges::from_slice(&ranges) }.to_frame(),
            Err(WireError::TooManyRanges { count: 257 })
        );
        let status = vec![0u8; limits::MAX_STATUS_BYTES + 1];
        assert!(Request::ReportStatus { body: &status }.to_frame().is_err());
        let huge = vec![0u8; limits::MAX_RESPONSE_BYTES];
        assert_eq!(Response::Bytes(&huge).to_frame(), Err(WireError::MessageTooLarge));
        let mut small = [0u8; 8];
        assert_eq!(
            Request::GetMetadata { name: "timestamp.json" }.emit(&mut small),
            Err(WireError::BufferTooSmall { needed: 4 + 3 + 14 })
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["", ".", "..", "../x", "a/b", ".hidden", "a\\b", "a b", "nul\0"] {
            assert_eq!(Request::GetMetadata { name }.to_frame(), Err(WireError::BadName), "{name:?}");
        }
        for path in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a\\b", "..", "x\n"] {
            assert_eq!(Request::GetTarget { path }.to_frame(), Err(WireError::BadName), "{path:?}");
        }
        // Same checks on the parse side, with bytes no encoder would produce.
        let mut raw = vec![KIND_GET_TARGET, 5, 0];
        raw.extend_from_slice(b"../ab");
        assert_eq!(RequestView::parse(&raw), Err(WireError::BadName));
        let raw = [KIND_GET_METADATA, 2, 0, 0xff, 0xfe];
        assert_eq!(RequestView::parse(&raw), Err(WireError::BadName));
        assert!(Request::GetTarget { path: "targets/a b/ü.bin" }.to_frame().is_ok());
    }

    #[test]
    fn unknown_kinds_and_statuses_are_named() {
        assert_eq!(RequestView::parse(&[0x7f]), Err(WireError::UnknownKind(0x7f)));
        assert_eq!(RequestView::parse(&[KIND_ACK]), Err(WireError::UnknownKind(KIND_ACK)));
        assert_eq!(ResponseView::parse(&[KIND_GET_CHUNKS]), Err(WireError::UnknownKind(KIND_GET_CHUNKS)));
        assert_eq!(RequestView::parse(&[]), Err(WireError::Empty));
        let mut item = vec![KIND_CHUNKS, 1, 0];
        item.extend_from_slice(&[0; 32]);
        item.push(7);
        assert_eq!(ResponseView::parse(&item), Err(WireError::UnknownChunkStatus(7)));
    }

    #[test]
    fn ranges_slice_within_bounds_only() {
        let stored = b"0123456789";
        let r = |offset, length| ChunkRange { id: id(0), offset, length };
        assert_eq!(r(0, 0).slice(stored), Some(&stored[..]));
        assert_eq!(r(2, 3).slice(stored), Some(&b"234"[..]));
        assert_eq!(r(10, 0).slice(stored), Some(&b""[..]));
        assert_eq!(r(11, 0).slice(stored), None);
        assert_eq!(r(8, 3).slice(stored), None);
        assert_eq!(r(u32::MAX, u32::MAX).slice(stored), None);
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = RequestView::parse(&bytes);
            if let Ok(Response::Chunks { items }) = ResponseView::parse(&bytes) {
                prop_assert!(items.iter().count() == items.len());
            }
            let _ = split_frame(&bytes, limits::MAX_REQUEST_BYTES);
        }

        #[test]
        fn parsing_mutated_messages_never_panics(
            which in 0usize..15, pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()
        ) {
            let frames: Vec<Vec<u8>> = requests().into_iter().chain(responses()).collect();
            let mut body = frames[which % frames.len()][FRAME_HEADER_BYTES..].to_vec();
            let at = pos % body.len();
            body[at] = byte;
            body.truncate(cut % (body.len() + 1));
            if let Ok(request) = RequestView::parse(&body) {
                // Whatever parses re-encodes to the same bytes.
                prop_assert_eq!(&request.to_frame().unwrap()[FRAME_HEADER_BYTES..], &body[..]);
            }
            if let Ok(response) = ResponseView::parse(&body) {
                prop_assert_eq!(&response.to_frame().unwrap()[FRAME_HEADER_BYTES..], &body[..]);
            }
        }
    }
}
