//! [`DeviceClient`]: one connection to an edge node's device service over either transport.
//! It does not verify what it receives; callers verify metadata through TUF and chunks
//! against their ids.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::wire::{
    device::{
        ChunkItems, ChunkRanges, ChunkStatus, EdgeHoldAnswer, ErrorCode, Request, Response, ResponseView, WireError,
    },
    ChunkRange,
};
use tokio::net::TcpStream;

/// Why a request failed. `Malformed` and `Unexpected` mean the edge node misbehaved (try
/// another); `Io`, `Connect`, `ConnectTimeout` and `Timeout` mean the operation failed; `Server` is the edge
/// node's own answer; `Request` means our request broke a limit and was never sent.
#[derive(Debug)]
pub enum ClientError {
    /// The connection failed or closed.
    Io(std::io::Error),
    /// Connecting (including the QUIC handshake) failed.
    Connect(String),
    /// Connecting (including the QUIC handshake) took longer than the connect timeout: an
    /// edge that accepts nothing (a black hole) costs this long, not the transport's own
    /// minutes-long give-up.
    ConnectTimeout(Duration),
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
            ClientError::ConnectTimeout(after) => write!(f, "connect timed out after {} ms", after.as_millis()),
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

/// An empty buffer with room for a response body of `len` bytes (already checked against
/// the wire limit), reserved but not zeroed: zero-filling megabytes per batch only to
/// overwrite them was a tenth of a loaded device process's CPU (`scripts/bench-device`).
pub(crate) fn body_buffer(len: usize) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    body.try_reserve_exact(len).map_err(|_| ClientError::Io(std::io::ErrorKind::OutOfMemory.into()))?;
    Ok(body)
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

    /// Each item's outcome, with its stored bytes as a range of the body, and the body:
    /// what a caller needs to open chunks where they arrived (decrypting in place) instead
    /// of copying each one out of the response first.
    pub fn into_parts(self) -> (Vec<StoredAt>, Vec<u8>) {
        let base = self.body.as_ptr() as usize;
        let spans = self
            .items()
            .iter()
            .map(|item| match item.status {
                // The items borrow from `body` (parsed from it), so the offset is in range.
                ChunkStatus::Ok(stored) => {
                    let start = stored.as_ptr() as usize - base;
                    StoredAt::Body(start..start + stored.len())
                }
                ChunkStatus::NotFound => StoredAt::NotFound,
                ChunkStatus::Busy => StoredAt::Busy,
            })
            .collect();
        (spans, self.body)
    }
}

/// Where one item of a [`ChunkBatch`] is, from [`ChunkBatch::into_parts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredAt {
    /// The stored bytes are this range of the body.
    Body(std::ops::Range<usize>),
    /// The edge node does not have the chunk.
    NotFound,
    /// Not served in this response; ask again.
    Busy,
}

enum Transport {
    Quic { _endpoint: quinn::Endpoint, connection: quinn::Connection },
    Tcp(TcpStream),
}

/// How long connecting and each request may take. Every connection a device opens should
/// carry its configured values: a connection opened with defaults silently lets a slow edge
/// hold a request for a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting, including the QUIC handshake.
    pub connect: Duration,
    /// One request and its whole response (a total deadline, so a trickling edge cannot
    /// stretch it by sending a byte now and then).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: DeviceClient::DEFAULT_CONNECT_TIMEOUT, request: DeviceClient::DEFAULT_REQUEST_TIMEOUT }
    }
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
    /// Default time for connecting (TCP connect or the QUIC handshake).
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Connects over QUIC, accepting any server certificate (see the crate doc), with the
    /// default [`Timeouts`].
    pub async fn connect_quic(addr: SocketAddr) -> Result<Self, ClientError> {
        Self::connect_quic_with(addr, Timeouts::default()).await
    }

    /// Connects over framed TCP with the default [`Timeouts`].
    pub async fn connect_tcp(addr: SocketAddr) -> Result<Self, ClientError> {
        Self::connect_tcp_with(addr, Timeouts::default()).await
    }

    /// Connects over QUIC within `timeouts.connect`; requests get `timeouts.request`.
    pub async fn connect_quic_with(addr: SocketAddr, timeouts: Timeouts) -> Result<Self, ClientError> {
        let (endpoint, connection) = tokio::time::timeout(timeouts.connect, crate::quic::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(timeouts.connect))??;
        Ok(DeviceClient {
            transport: Transport::Quic { _endpoint: endpoint, connection },
            request_timeout: timeouts.request,
        })
    }

    /// Connects over framed TCP within `timeouts.connect`; requests get `timeouts.request`.
    pub async fn connect_tcp_with(addr: SocketAddr, timeouts: Timeouts) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(timeouts.connect))?
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(DeviceClient { transport: Transport::Tcp(stream), request_timeout: timeouts.request })
    }

    /// Another handle on the same QUIC connection, for requests in flight beside this one's
    /// (each request is its own stream, so they do not wait on each other). `None` over TCP,
    /// where a connection carries one exchange at a time.
    pub fn share(&self) -> Option<DeviceClient> {
        match &self.transport {
            Transport::Quic { _endpoint, connection } => Some(DeviceClient {
                transport: Transport::Quic { _endpoint: _endpoint.clone(), connection: connection.clone() },
                request_timeout: self.request_timeout,
            }),
            Transport::Tcp(_) => None,
        }
    }

    /// The average size of the QUIC datagrams received so far (UDP payload bytes); `None`
    /// over TCP. The edge node's MTU discovery sets how large its datagrams are, and the
    /// client cannot read that directly. The tests check with it that bulk transfers run at
    /// about [`crate::QUIC_MAX_DATAGRAM_BYTES`].
    pub fn quic_received_datagram_bytes(&self) -> Option<u64> {
        match &self.transport {
            Transport::Quic { connection, .. } => {
                let received = connection.stats().udp_rx;
                Some(received.bytes / received.datagrams.max(1))
            }
            Transport::Tcp(_) => None,
        }
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

    /// Asks whether the edge node holds this device back in `rollout` (see
    /// [`Request::AskHold`]): a hold only delays, so a lying edge costs time, not safety.
    pub async fn rollout_hold(&mut self, rollout: &str, device: [u8; 32]) -> Result<EdgeHoldAnswer, ClientError> {
        let frame = Request::AskHold { rollout, device }.to_frame().map_err(ClientError::Request)?;
        let response = self.request_frame(&frame).await?;
        match ResponseView::parse(&response).map_err(ClientError::Malformed)? {
            Response::Hold(hold) => Ok(hold),
            Response::Error { code } => Err(ClientError::Server(code)),
            _ => Err(ClientError::Unexpected("not a hold answer")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Every served item's range names its own bytes in the body, in request order, and
    /// the other outcomes come through as they were.
    #[test]
    fn a_batch_splits_into_ranges_of_its_body() {
        use protocol::wire::device::{ChunkItem, FRAME_HEADER_BYTES};
        use protocol::ChunkId;
        let (a, b) = (vec![1u8; 300], vec![2u8; 5]);
        let items = [
            ChunkItem { id: ChunkId([1; 32]), status: ChunkStatus::Ok(&a) },
            ChunkItem { id: ChunkId([2; 32]), status: ChunkStatus::NotFound },
            ChunkItem { id: ChunkId([3; 32]), status: ChunkStatus::Busy },
            ChunkItem { id: ChunkId([4; 32]), status: ChunkStatus::Ok(&b) },
        ];
        let frame = Response::Chunks { items: ChunkItems::from_slice(&items) }.to_frame().unwrap();
        let ranges: Vec<ChunkRange> = items.iter().map(|item| ChunkRange::whole(item.id)).collect();
        let batch = check_batch(frame[FRAME_HEADER_BYTES..].to_vec(), &ranges).unwrap();
        let (spans, body) = batch.into_parts();
        assert_eq!(spans.len(), 4);
        let StoredAt::Body(first) = spans[0].clone() else { panic!("{:?}", spans[0]) };
        let StoredAt::Body(last) = spans[3].clone() else { panic!("{:?}", spans[3]) };
        assert_eq!((&body[first], &body[last.clone()]), (&a[..], &b[..]));
        assert_eq!(last.end, body.len(), "the last body ends the response");
        assert_eq!(spans[1..3], [StoredAt::NotFound, StoredAt::Busy]);
    }

    /// A QUIC "edge" that is a bound UDP socket never answering: the handshake would wait
    /// for quinn's idle timeout; the connect timeout ends it.
    #[tokio::test]
    async fn a_black_hole_quic_edge_costs_the_connect_timeout_not_the_transports() {
        let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let timeouts = Timeouts { connect: Duration::from_millis(300), request: Duration::from_secs(60) };
        let started = Instant::now();
        let result = DeviceClient::connect_quic_with(hole.local_addr().unwrap(), timeouts).await;
        let took = started.elapsed();
        assert!(matches!(result, Err(ClientError::ConnectTimeout(t)) if t == timeouts.connect), "{result:?}");
        assert!(took < Duration::from_secs(2), "connect took {took:?}");
        assert_eq!(result.unwrap_err().to_string(), "connect timed out after 300 ms");
    }

    /// A TCP "edge" that accepts and never answers: the connection's own request timeout
    /// (not the default minute) ends every request.
    #[tokio::test]
    async fn a_black_hole_tcp_edge_costs_the_request_timeout_given_at_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move { listener.accept().await.map(|(stream, _)| stream) });
        let timeouts = Timeouts { connect: Duration::from_secs(5), request: Duration::from_millis(300) };
        let mut client = DeviceClient::connect_tcp_with(addr, timeouts).await.unwrap();
        let started = Instant::now();
        let result = client.get_metadata("timestamp.json").await;
        assert!(matches!(result, Err(ClientError::Timeout)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "request took {:?}", started.elapsed());
        drop(hold);
    }
}
