//! The request-response codec: one length-prefixed frame per message.
//!
//! A frame is a `u32` big-endian body length followed by the body ([`WireMessage`]
//! encoding). The length is checked against the message type's `MAX_ENCODED_BYTES` before
//! anything is allocated, and the body is then read through `take(length)`, growing the
//! buffer only as bytes actually arrive, so a peer that claims 8 MiB and sends nothing
//! costs us nothing. Why a length prefix although request-response closes the stream after
//! each message: the frame is transport-independent (the device service reuses it over
//! plain TCP) and a short body is detected as truncation, not as a different message.

use std::{io, marker::PhantomData};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};

use super::messages::{
    ChunkRequest, ChunkResponse, HaveRequest, HaveResponse, MetaRequest, MetaResponse, StatusAck, StatusBatch,
    WireMessage,
};

/// Bytes of the frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Buffer reserved up front when reading a body; it grows from here only with data received.
const INITIAL_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reads one frame holding an `M`, refusing bodies over `M::MAX_ENCODED_BYTES`.
pub async fn read_frame<M, T>(io: &mut T) -> io::Result<M>
where
    M: WireMessage,
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; FRAME_HEADER_BYTES];
    io.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > M::MAX_ENCODED_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the limit of {}", M::MAX_ENCODED_BYTES),
        ));
    }
    // Grown by doubling as bytes arrive, each byte zeroed once. (`read_to_end` re-zeroes
    // the whole spare capacity on every poll that finds no data, which at 8 MiB bodies
    // arriving in QUIC-packet-sized pieces cost more CPU than the decryption.)
    let mut body = vec![0u8; len.min(INITIAL_READ_BUFFER_BYTES)];
    let mut filled = 0;
    while filled < len {
        if filled == body.len() {
            body.resize(len.min(body.len().saturating_mul(2)), 0);
        }
        match io.read(&mut body[filled..]).await? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "frame body truncated")),
            n => filled += n,
        }
    }
    M::decode(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame holding `message`; refuses (without writing) a message over a limit.
pub async fn write_frame<M, T>(io: &mut T, message: &M) -> io::Result<()>
where
    M: WireMessage,
    T: AsyncWrite + Unpin + Send,
{
    let body = message.encode().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // encode() enforces the limits, and every MAX_ENCODED_BYTES is far below 4 GiB.
    let len = u32::try_from(body.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await
}

/// A request-response codec for any pair of [`WireMessage`]s.
pub struct WireCodec<Req, Resp> {
    // fn() -> keeps the codec Send + Sync whatever the message types are.
    _messages: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Default for WireCodec<Req, Resp> {
    fn default() -> Self {
        WireCodec { _messages: PhantomData }
    }
}

impl<Req, Resp> Clone for WireCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The chunk batch protocol, `/otamesh/chunks/1`.
pub type ChunkCodec = WireCodec<ChunkRequest, ChunkResponse>;
/// The chunk inventory protocol, `/otamesh/have/1`.
pub type HaveCodec = WireCodec<HaveRequest, HaveResponse>;
/// The repository file protocol, `/otamesh/meta/1`.
pub type MetaCodec = WireCodec<MetaRequest, MetaResponse>;
/// The device status report protocol, `/otamesh/status/1`.
pub type StatusCodec = WireCodec<StatusBatch, StatusAck>;

impl<Req, Resp> request_response::Codec for WireCodec<Req, Resp>
where
    Req: WireMessage + Send + Sync + 'static,
    Resp: WireMessage + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Resp) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}
