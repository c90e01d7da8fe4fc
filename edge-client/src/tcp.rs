//! The framed-TCP transport, client side: one request frame written, one response frame read.

use protocol::wire::device::{frame_body_len, limits, FRAME_HEADER_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ClientError;

/// Writes `frame` and reads one response body (at most [`limits::MAX_RESPONSE_BYTES`],
/// checked before allocating).
pub(crate) async fn round_trip(stream: &mut TcpStream, frame: &[u8]) -> Result<Vec<u8>, ClientError> {
    stream.write_all(frame).await?;
    read_response(stream).await
}

/// Reads one response frame's body.
pub(crate) async fn read_response(stream: &mut TcpStream) -> Result<Vec<u8>, ClientError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    let len = frame_body_len(header, limits::MAX_RESPONSE_BYTES).map_err(ClientError::Malformed)?;
    let mut body = crate::client::body_buffer(len)?;
    let read = (&mut *stream).take(len as u64).read_to_end(&mut body).await?;
    if read < len {
        return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(body)
}
