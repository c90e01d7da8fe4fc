//! [`DeviceClient`]: one connection to an edge node's device service over either transport.
//! It does not verify what it receives; callers verify metadata through TUF and chunks
//! against their ids.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::device_wire::{
    ChunkItems, ChunkRange, ChunkRanges, ErrorCode, Request, Response, ResponseView, WireError,
};
use tokio::net::TcpStream;

/// Why a request failed. `Malformed` and `Unexpected` mean the edge node misbehaved (try
/// another); `Io`, `Connect` and `Timeout` mean the operation failed; `Server` is the edge
/// node's own answer; `Request` means our request broke a limit and was never sent.
#[derive(Debug)]
pub enum ClientError {
    /// The connection failed or closed.
    Io(std::io::Error),
    /// Connecting (including the QUIC handshake) failed.
    Connect(String),
    /// No response within the client's request timeout.
    Timeout,
    /// The response did not parse.
    Malformed(WireError),
    /// The response parsed but does not answer the request (wrong kind, wrong item count or
    /// ids).
    Unexpected(&'static str),
    /// The edge node answered with an error.
    Server(ErrorCode),
    /// Our request exceeds a wire limit.
    Request(WireError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Timeout => f.write_str("request timed out"),
            ClientError::Malformed(e) => write!(f, "edge node sent a malformed response: {e}"),
            ClientError::Unexpected(what) => write!(f, "edge node sent an unexpected response: {what}"),
            ClientError::Server(code) => write!(f, "edge node answered error {}", code.0),
            ClientError::Request(e) => write!(f, "request not sent: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A parsed `Chunks` response that owns its bytes; items borrow from it without copying.
#[derive(Debug)]
pub struct ChunkBatch {
    body: Vec<u8>,
}

impl ChunkBatch {
    /// The items, one per requested range, in request order.
    pub fn items(&self) -> ChunkItems<'_> {
        match ResponseView::parse(&self.body) {
            Ok(Response::Chunks { items }) => items,
            // Unreachable: the body was parsed as `Chunks` when the batch was built.
            _ => ChunkItems::from_slice(&[]),
        }
    }

    /// Bytes of the response body.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

enum Transport {
    Quic { _endpoint: quinn::Endpoint, connection: quinn::Connection },
    Tcp(TcpStream),
}

/// A connection to an edge node's device service.
pub struct DeviceClient {
    transport: Transport,
    request_timeout: Duration,
}

impl fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.transport {
            Transport::Quic { .. } => "quic",
            Transport::Tcp(_) => "tcp",
        };
        f.debug_struct("DeviceClient").field("transport", &kind).finish()
    }
}

fn chunks_frame(ranges: &[ChunkRange]) -> Result<Vec<u8>, ClientError> {
    Request::GetChunks { ranges: ChunkRanges::from_slice(ranges) }.to_frame().map_err(ClientError::Request)
}

/// Checks that a response body is a chunk batch answering exactly `ranges`.
fn check_batch(body: Vec<u8>, ranges: &[ChunkRange]) -> Result<ChunkBatch, ClientError> {
    match ResponseView::parse(&body).map_err(ClientError::Malformed)? {
        Response::Chunks { items } => {
            if items.len() != ranges.len() || !items.iter().zip(ranges).all(|(item, range)| item.id == range.id) {
                return Err(ClientError::Unexpected("chunk items do not match the requested ranges"));
            }
        }
        Response::Error { code } => return Err(ClientError::Server(code)),
        _ => return Err(ClientError::Unexpected("not a chunk batch")),
    }
    Ok(ChunkBatch { body })
}

impl DeviceClient {
    /// Default time for one request/response.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects over QUIC, accepting any server certificate (see the crate doc).
    pub async fn connect_quic(addr: SocketAddr) -> Result<Self, ClientError> {
        let (endpoint, connection) = crate::quic::connect(addr).await?;
        Ok(DeviceClient {
            transport: Transport::Quic { _endpoint: endpoint, connection },
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Connects over framed TCP.
    pub async fn connect_tcp(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(DeviceClient { transport: Transport::Tcp(stream), request_timeout: Self::DEFAULT_REQUEST_TIMEOUT })
    }

    /// Changes the per-request timeout.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// A TUF metadata file; `None` if the edge node does not have it.
    pub async fn get_metadata(&mut self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.file(Request::GetMetadata { name }).await
    }

    /// A TUF target file; `None` if the edge node does not have it.
    pub async fn get_target(&mut self, path: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.file(Request::GetTarget { path }).await
    }

    /// Byte ranges of chunks; the batch has one item per range, checked to name the same ids.
    pub async fn get_chunks(&mut self, ranges: &[ChunkRange]) -> Result<ChunkBatch, ClientError> {
        let frame = chunks_frame(ranges)?;
        let body = self.request_frame(&frame).await?;
        check_batch(body, ranges)
    }

    /// Many chunk batches with up to `in_flight` requests outstanding, handed to `on_batch`
    /// in request order (with their index in `batches`). Over QUIC each request is its own
    /// stream; over TCP requests are written ahead and the edge node answers them in order.
    /// Keeping several batches in flight hides the round trip and the edge node's lookup
    /// time, which one request at a time pays per batch.
    pub async fn get_chunks_pipelined(
        &mut self,
        batches: &[Vec<ChunkRange>],
        in_flight: usize,
        mut on_batch: impl FnMut(usize, ChunkBatch) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        use futures::StreamExt;
        let in_flight = in_flight.max(1);
        let timeout = self.request_timeout;
        match &mut self.transport {
            Transport::Quic { connection, .. } => {
                let connection = connection.clone();
                // Collected first (futures are lazy): a stream over a borrowing closure
                // would not be `Send` for callers that spawn this.
                let requests: Vec<_> = batches
                    .iter()
                    .map(|ranges| {
                        let connection = connection.clone();
                        async move {
                            let frame = chunks_frame(ranges)?;
                            let exchange = crate::quic::round_trip(&connection, &frame);
                            let body =
                                tokio::time::timeout(timeout, exchange).await.map_err(|_| ClientError::Timeout)??;
                            check_batch(body, ranges)
                        }
                    })
                    .collect();
                let mut responses = futures::stream::iter(requests).buffered(in_flight);
                let mut index = 0;
                while let Some(batch) = responses.next().await {
                    on_batch(index, batch?)?;
                    index += 1;
                }
            }
            Transport::Tcp(stream) => {
                use tokio::io::AsyncWriteExt;
                let (mut sent, mut received) = (0, 0);
                while received < batches.len() {
                    // Requests are a few KiB: socket buffers hold `in_flight` of them, so
                    // writing ahead cannot block on an edge node busy writing to us.
                    while sent < batches.len() && sent - received < in_flight {
                        stream.write_all(&chunks_frame(&batches[sent])?).await?;
                        sent += 1;
                    }
                    let body = tokio::time::timeout(timeout, crate::tcp::read_response(stream))
                        .await
                        .map_err(|_| ClientError::Timeout)??;
                    on_batch(received, check_batch(body, &batches[received])?)?;
                    received += 1;
                }
            }
        }
        Ok(())
    }

    /// Sends a signed status report for the edge node to forward.
    pub async fn report_status(&mut self, body: &[u8]) -> Result<(), ClientError> {
        let frame = Request::ReportStatus { body }.to_frame().map_err(ClientError::Request)?;
        let response = self.request_frame(&frame).await?;
        match ResponseView::parse(&response).map_err(ClientError::Malformed)? {
            Response::Ack => Ok(()),
            Response::Error { code } => Err(ClientError::Server(code)),
            _ => Err(ClientError::Unexpected("not an ack")),
        }
    }

    /// Sends one already-encoded request frame and returns the response body (length-checked
    /// but not parsed). For tests that send requests no encoder would produce.
    pub async fn request_frame(&mut self, frame: &[u8]) -> Result<Vec<u8>, ClientError> {
        let exchange = async {
            match &mut self.transport {
                Transport::Quic { connection, .. } => crate::quic::round_trip(connection, frame).await,
                Transport::Tcp(stream) => crate::tcp::round_trip(stream, frame).await,
            }
        };
        tokio::time::timeout(self.request_timeout, exchange).await.map_err(|_| ClientError::Timeout)?
    }

    async fn file(&mut self, request: Request<'_>) -> Result<Option<Vec<u8>>, ClientError> {
        let frame = request.to_frame().map_err(ClientError::Request)?;
        let body = self.request_frame(&frame).await?;
        match ResponseView::parse(&body).map_err(ClientError::Malformed)? {
            Response::Bytes(bytes) => Ok(Some(bytes.to_vec())),
            Response::NotFound => Ok(None),
            Response::Error { code } => Err(ClientError::Server(code)),
            _ => Err(ClientError::Unexpected("not a file response")),
        }
    }
}
