//! The request-response codec: one length-prefixed frame per message.
//!
//! A frame is a `u32` big-endian body length followed by the body ([`WireMessage`]
//! encoding). The length is checked against the message type's `MAX_ENCODED_BYTES` before
//! anything is allocated, and the body is then read through `take(length)`, growing the
//! buffer only as bytes actually arrive, so a peer that claims 8 MiB and sends nothing
//! costs us nothing. Why a length prefix although request-response closes the stream after
//! each message: the frame is transport-independent (the device service reuses it over
//! plain TCP) and a short body is detected as truncation, not as a different message.
//!
//! Chunk responses, up to 8 MiB of chunk bodies each, are the exception to reading and
//! writing a frame whole: [`ChunkCodec`] streams them through
//! [`protocol::wire::chunk_pieces`], same bytes on the wire, so a body is written from the
//! buffer it was read into and read into the buffer the store is handed.

use std::{io, marker::PhantomData};

use protocol::wire::chunk_pieces::{ChunkResponseDecoder, Next, MAX_FIELDS_BYTES};

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
    let len = read_length(io).await?;
    if len > M::MAX_ENCODED_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the limit of {}", M::MAX_ENCODED_BYTES),
        ));
    }
    let body = read_growing(io, len, "frame body truncated").await?;
    M::decode(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads exactly `len` bytes into a buffer grown by doubling as bytes arrive, each byte zeroed
/// once, so a peer that claims megabytes and sends nothing costs nothing. (`read_to_end`
/// re-zeroes the whole spare capacity on every poll that finds no data, which at 8 MiB
/// bodies arriving in QUIC-packet-sized pieces cost more CPU than the decryption.)
async fn read_growing<T>(io: &mut T, len: usize, truncated: &'static str) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut body = vec![0u8; len.min(INITIAL_READ_BUFFER_BYTES)];
    let mut filled = 0;
    while filled < len {
        if filled == body.len() {
            body.resize(len.min(body.len().saturating_mul(2)), 0);
        }
        match io.read(&mut body[filled..]).await? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, truncated)),
            n => filled += n,
        }
    }
    Ok(body)
}

/// Reads the length prefix of a frame.
async fn read_length<T>(io: &mut T) -> io::Result<usize>
where
    T: AsyncRead + Unpin + Send,
{
    let mut header = [0u8; FRAME_HEADER_BYTES];
    io.read_exact(&mut header).await?;
    Ok(u32::from_be_bytes(header) as usize)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Reads one frame holding a [`ChunkResponse`] a piece at a time: each chunk body goes
/// straight into its own buffer, with its length checked against the frame and the
/// response's limit before it is read.
pub async fn read_chunk_response<T>(io: &mut T) -> io::Result<ChunkResponse>
where
    T: AsyncRead + Unpin + Send,
{
    let mut decoder = ChunkResponseDecoder::new(read_length(io).await?).map_err(invalid)?;
    let mut fields = [0u8; MAX_FIELDS_BYTES];
    loop {
        match decoder.next() {
            Next::Fields(n) => {
                io.read_exact(&mut fields[..n]).await?;
                decoder.fields(&fields[..n]).map_err(invalid)?;
            }
            Next::Body(n) => {
                // Sized up front: only a peer we asked sends a response, and the decoder has
                // checked the length against the frame and the response's 8 MiB, so a claimed
                // length costs at most what a full honest answer would. Filled once, with no
                // regrowth copies.
                let mut body = vec![0u8; n];
                io.read_exact(&mut body).await?;
                decoder.body(body).map_err(invalid)?;
            }
            Next::Done => return decoder.finish().map_err(invalid),
        }
    }
}

/// Writes one frame holding `response`, each chunk body from where it lies; the bytes are
/// [`write_frame`]'s.
pub async fn write_chunk_response<T>(io: &mut T, response: &ChunkResponse) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let pieces = response.pieces().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = u32::try_from(pieces.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    io.write_all(&len.to_be_bytes()).await?;
    for (fields, body) in &pieces.pieces {
        io.write_all(&pieces.fields[fields.clone()]).await?;
        io.write_all(body).await?;
    }
    io.flush().await
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

/// The chunk batch protocol, `/otamesh/chunks/2`: requests as whole frames, responses in
/// pieces.
#[derive(Clone, Default)]
pub struct ChunkCodec;

impl request_response::Codec for ChunkCodec {
    type Protocol = StreamProtocol;
    type Request = ChunkRequest;
    type Response = ChunkResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ChunkRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<ChunkResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_chunk_response(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: ChunkRequest) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: ChunkResponse) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_chunk_response(io, &res).await
    }
}
