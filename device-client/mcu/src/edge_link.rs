//! One connection to an edge node's device service: framed requests and responses
//! (`protocol::wire::device`) over any `embedded-io-async` byte stream — embassy-net's
//! `TcpSocket` on the device and in the host runs, anything else in tests.
//!
//! The link owns one buffer for both directions: a request is encoded into it, and the
//! response read into it and parsed in place ([`Response`] borrows from it), so an MCU spends
//! exactly one statically sized buffer per connection. A response longer than the buffer is
//! refused before a byte of its body is read; the connection is then out of step with the
//! edge and must be dropped, which every error but [`LinkError::Edge`] implies.
//!
//! The link never flushes: the stream must put written bytes on the wire by itself, as
//! embassy-net's `TcpSocket` does (its network task sends what the socket holds). Its flush
//! waits until the edge has *acknowledged* every byte, and an acknowledgement rides on the
//! edge's next data, so a flush before each read made a chunk wait for more than its own
//! answer. For the same reason the sockets run without Nagle's algorithm: with it, each
//! pipelined request waited for the acknowledgement of the one before (`scripts/bench-mcu`
//! with a 16 KiB receive window: 25x the plain download's time with Nagle, 3x without).

use embassy_time::{with_timeout, Duration};
use embedded_io_async::{Read, ReadExactError, Write};
use protocol::wire::device::{ErrorCode, Request, Response, ResponseView, WireError, FRAME_HEADER_BYTES};

/// Why a request got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// The connection failed or closed.
    Io,
    /// No complete answer within the link's timeout.
    Timeout,
    /// The request does not fit the buffer or breaks a wire limit (the device's own fault).
    Request(WireError),
    /// The edge announced a response longer than the buffer.
    TooLarge {
        /// The announced body length.
        len: u32,
    },
    /// The response does not parse.
    Malformed(WireError),
    /// A well-formed answer of the wrong kind (chunks for a file request, say).
    Unexpected,
    /// The edge answered with an error code; the connection stays usable.
    Edge(ErrorCode),
}

impl LinkError {
    /// Whether the connection can take another request.
    pub fn keeps_connection(&self) -> bool {
        matches!(self, LinkError::Edge(_) | LinkError::Request(_))
    }

    /// Whether the edge broke the protocol (as opposed to the network failing): a device
    /// that sees this drops the edge for a while.
    pub fn blames_edge(&self) -> bool {
        matches!(self, LinkError::TooLarge { .. } | LinkError::Malformed(_) | LinkError::Unexpected)
    }
}

/// A framed request/response link over `S`, with one buffer of `buffer.len()` bytes.
pub struct EdgeLink<'b, S> {
    stream: S,
    buffer: &'b mut [u8],
    timeout: Duration,
}

impl<'b, S: Read + Write> EdgeLink<'b, S> {
    /// A link over a connected stream; `timeout` bounds each request and its whole answer.
    pub fn new(stream: S, buffer: &'b mut [u8], timeout: Duration) -> Self {
        EdgeLink { stream, buffer, timeout }
    }

    /// The largest response body this link can take.
    pub fn max_body(&self) -> usize {
        self.buffer.len()
    }

    /// Sends `request` and returns the edge's answer, parsed in the link's buffer.
    /// `Response::Error` comes back as [`LinkError::Edge`].
    pub async fn request(&mut self, request: &Request<'_>) -> Result<Response<'_>, LinkError> {
        let len = request.emit(self.buffer).map_err(LinkError::Request)?;
        let (stream, buffer) = (&mut self.stream, &mut *self.buffer);
        let exchange = async {
            write_frame(stream, &buffer[..len]).await?;
            read_frame(stream, buffer).await
        };
        let body_len = with_timeout(self.timeout, exchange).await.map_err(|_| LinkError::Timeout)??;
        parse(&self.buffer[..body_len])
    }

    /// Sends `request` without waiting for its answer, which [`EdgeLink::receive`] then reads:
    /// the device works on one answer while the next crosses the network. The edge answers
    /// in order; the link's buffer is free again once this returns.
    pub async fn send(&mut self, request: &Request<'_>) -> Result<(), LinkError> {
        let len = request.emit(self.buffer).map_err(LinkError::Request)?;
        let frame = self.stream.write_all(&self.buffer[..len]);
        with_timeout(self.timeout, frame).await.map_err(|_| LinkError::Timeout)?.map_err(|_| LinkError::Io)
    }

    /// The answer to the oldest request [`EdgeLink::send`] sent, parsed in the link's buffer.
    /// `Response::Error` comes back as [`LinkError::Edge`].
    pub async fn receive(&mut self) -> Result<Response<'_>, LinkError> {
        let answer = read_frame(&mut self.stream, self.buffer);
        let body_len = with_timeout(self.timeout, answer).await.map_err(|_| LinkError::Timeout)??;
        parse(&self.buffer[..body_len])
    }

    /// A target file into `out` (bounded by its length): `Ok(None)` when the edge does not
    /// have it.
    pub async fn get_target<'o>(&mut self, path: &str, out: &'o mut [u8]) -> Result<Option<&'o [u8]>, LinkError> {
        match self.request(&Request::GetTarget { path }).await? {
            Response::NotFound => Ok(None),
            Response::Bytes(bytes) => {
                let copy = out.get_mut(..bytes.len()).ok_or(LinkError::TooLarge { len: bytes.len() as u32 })?;
                copy.copy_from_slice(bytes);
                Ok(Some(copy))
            }
            _ => Err(LinkError::Unexpected),
        }
    }

    /// Gives the stream back (to close it).
    pub fn into_stream(self) -> S {
        self.stream
    }
}

/// Writes `frame` without flushing: see the module doc.
async fn write_frame<S: Write>(stream: &mut S, frame: &[u8]) -> Result<(), LinkError> {
    stream.write_all(frame).await.map_err(|_| LinkError::Io)
}

/// One response frame's body into `buffer`; its length. A body longer than the buffer is
/// refused before a byte of it is read.
async fn read_frame<S: Read>(stream: &mut S, buffer: &mut [u8]) -> Result<usize, LinkError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await.map_err(read_error)?;
    let body_len = u32::from_le_bytes(header);
    let body = buffer.get_mut(..body_len as usize).ok_or(LinkError::TooLarge { len: body_len })?;
    stream.read_exact(body).await.map_err(read_error)?;
    Ok(body_len as usize)
}

fn parse(body: &[u8]) -> Result<Response<'_>, LinkError> {
    match ResponseView::parse(body).map_err(LinkError::Malformed)? {
        Response::Error { code } => Err(LinkError::Edge(code)),
        response => Ok(response),
    }
}

fn read_error<E>(_: ReadExactError<E>) -> LinkError {
    LinkError::Io
}
