//! Framed TCP for MCUs: one connection, requests answered strictly in order.
//!
//! Why not QUIC for MCUs: an embassy-net TCP socket and a few KiB of buffers is what fits;
//! chunk verification makes the transport's lack of authentication irrelevant.
//!
//! A request whose framing is intact but whose body does not parse gets an `Error` response
//! and the connection stays usable. A frame whose length prefix exceeds
//! [`limits::MAX_REQUEST_BYTES`] gets `Error(TOO_LARGE)` and the connection is closed: we will
//! not read (or skip) an unbounded body to find the next frame.

use std::net::SocketAddr;
use std::sync::Arc;

use protocol::wire::device::{frame_body_len, limits, ErrorCode, WireError, FRAME_HEADER_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use super::clients::{Admission, Admitted};
use super::{Answer, DeviceBackend, DeviceGauge, Shared};
use crate::metrics::Metrics;

/// Accepts TCP devices until the task is aborted.
pub(crate) async fn serve<B: DeviceBackend>(listener: TcpListener, shared: Arc<Shared<B>>, admission: Arc<Admission>) {
    // Connection tasks live in this set, so aborting the service aborts them too.
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit(peer) {
                    Some(admitted) => {
                        tasks.spawn(connection(stream, peer, shared.clone(), admitted));
                    }
                    None => refuse(stream),
                },
                Err(error) => {
                    // Usually EMFILE: back off briefly instead of spinning on a full fd table.
                    tracing::warn!(%error, "device tcp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next() => {}
        }
    }
}

/// Tells a device over a connection limit why it is turned away, without waiting: a fresh
/// socket's send buffer always takes these few bytes, and a refusal must cost nothing.
fn refuse(stream: TcpStream) {
    let frame = Answer::error(ErrorCode::BUSY).frame.concat();
    let _ = stream.try_write(&frame);
}

/// Why a connection ended; for logs only.
enum End {
    Closed,
    Idle,
    Stalled,
    Io(std::io::Error),
    TooLarge(WireError),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed by the device"),
            End::Idle => f.write_str("idle timeout"),
            End::Stalled => f.write_str("request or response deadline passed"),
            End::Io(error) => write!(f, "io error: {error}"),
            End::TooLarge(error) => write!(f, "frame refused: {error}"),
        }
    }
}

async fn connection<B: DeviceBackend>(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<B>>,
    _admitted: Admitted,
) {
    let _gauge = DeviceGauge::new(shared.metrics.clone());
    let _ = stream.set_nodelay(true);
    let mut body = Vec::new();
    let end = loop {
        match read_request(&mut stream, &mut body, &shared).await {
            Ok(()) => {}
            Err(End::TooLarge(error)) => {
                let answer = Answer::error(ErrorCode::for_request_error(error));
                let _ = timeout(shared.config.response_timeout, write_all_parts(&mut stream, &answer.frame)).await;
                break End::TooLarge(error);
            }
            Err(end) => break end,
        }
        let answer = shared.answer(peer, &body).await;
        match timeout(shared.config.response_timeout, write_all_parts(&mut stream, &answer.frame)).await {
            Ok(Ok(())) => Metrics::add(&shared.metrics.bytes_out_devices, answer.len() as u64),
            Ok(Err(error)) => break End::Io(error),
            Err(_) => break End::Stalled,
        }
    };
    tracing::debug!(%peer, %end, "device tcp connection ended");
}

/// Writes a frame given as buffers in order, with vectored writes: a chunk batch is small
/// fields between chunk bodies, and writing each piece on its own would cost a syscall (and,
/// with `TCP_NODELAY`, a segment) per 37-byte item header.
async fn write_all_parts(stream: &mut TcpStream, parts: &[bytes::Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        parts.iter().filter(|part| !part.is_empty()).map(|part| std::io::IoSlice::new(part)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match stream.write_vectored(rest).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => std::io::IoSlice::advance_slices(&mut rest, n),
        }
    }
    Ok(())
}

/// Reads one request frame into `body`: waits up to `idle_timeout` for its first byte, then
/// up to `request_timeout` for the rest.
async fn read_request<B>(stream: &mut TcpStream, body: &mut Vec<u8>, shared: &Shared<B>) -> Result<(), End> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match timeout(shared.config.idle_timeout, stream.read(&mut header[..1])).await {
        Err(_) => return Err(End::Idle),
        Ok(Ok(0)) => return Err(End::Closed),
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(End::Io(error)),
    }
    let deadline = Instant::now() + shared.config.request_timeout;
    let rest = async {
        stream.read_exact(&mut header[1..]).await?;
        let len = match frame_body_len(header, limits::MAX_REQUEST_BYTES) {
            Ok(len) => len,
            Err(error) => return Ok(Err(error)),
        };
        // `len` is at most MAX_REQUEST_BYTES: checked before this allocation.
        body.resize(len, 0);
        stream.read_exact(body).await?;
        Ok::<_, std::io::Error>(Ok(()))
    };
    match timeout_at(deadline, rest).await {
        Err(_) => Err(End::Stalled),
        Ok(Err(error)) => Err(End::Io(error)),
        Ok(Ok(Err(error))) => Err(End::TooLarge(error)),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}
