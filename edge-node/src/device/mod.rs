//! The device service: what devices on the edge node's LAN talk to. Linux gateways use QUIC
//! ([`quic`], ALPN [`ALPN`]), MCUs framed TCP ([`tcp`]); both carry the same messages,
//! [`protocol::wire::device`], and are answered by the same code ([`Shared::answer`]).
//!
//! Trust: none is placed in this layer. Devices verify TUF metadata from their pinned root
//! and every chunk against its [`ChunkId`] (named by signed manifests), so the edge node and
//! anyone between it and the device can only withhold or corrupt bytes, which verification
//! catches. That is why the QUIC certificate is self-signed and devices do not pin it: QUIC
//! gives confidentiality of what a device asks for, congestion and flow control, not
//! authenticity.
//!
//! Bounds (see [`DeviceServiceConfig`]): concurrent connections (a semaphore shared by both
//! transports) and connections per client address (so one host cannot take every slot),
//! concurrent streams per QUIC connection, a read deadline per request (a client that sends
//! half a frame is dropped), request size ([`limits::MAX_REQUEST_BYTES`]), response size per
//! request ([`DeviceServiceConfig::max_response_bytes`]) and memory across all clients
//! ([`DeviceServiceConfig::max_buffered_bytes`]). A `GetChunks` is sized before any chunk is
//! read ([`batch`]): duplicate ids collapse to one read, a range of length 0 counts as the
//! rest of the stored chunk, and the bodies to read plus the frame to build are charged
//! against both budgets first; what does not fit is answered `Busy`. The frame is allocated
//! at exactly its planned size and handed to the transport without a copy, so what is charged
//! is what is allocated. Responses are written with backpressure: a slow reader holds at most
//! its own responses, within the global budget.
//!
//! What that bounds: response memory is at most `max_buffered_bytes` however many clients
//! ask, for anything they ask, whether they read the answers or not, so a hostile client's
//! best effort leaves the node's RSS within `max_buffered_bytes` + the daemon's hot-chunk
//! cache (`device_hot_cache_bytes`, 32 MiB by default) + 96 MiB (fixed overhead:
//! runtime, libp2p, sled, QUIC and socket buffers, allocator slack; `main` makes large
//! buffers bypass glibc's arenas so freed frames go back to the OS). Measured with a real
//! debug `edge-node` process (`tests/tests/hostile_clients.rs`): 63 source addresses × 10
//! TCP connections (8 admitted per address) pipelining `GetChunks` that name one 1 MiB chunk
//! 256 times and never reading, plus 8 QUIC connections with 16 such requests in flight,
//! against a 64 MiB budget: peak RSS 108-114 MiB, back near idle once the client leaves. The
//! same load before requests were sized: 38 -> 4295 MiB.

mod batch;
mod clients;
pub mod mdns;
pub mod quic;
mod quic_socket;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::wire::device::{limits, EdgeHoldAnswer, ErrorCode, Request, RequestView, Response, FRAME_HEADER_BYTES};
use protocol::ChunkId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// The device side, for tests and benchmarks of this service (the crate `edge-client`).
pub use edge_client::{ChunkBatch, ClientError, DeviceClient, ALPN};

/// What the backend knows about a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkLookup {
    /// The chunk's stored bytes, already verified against its id.
    Found(Bytes),
    /// Not stored here.
    Missing,
    /// Known but not yet available (being fetched); the device should ask again.
    Busy,
}

/// What the backend knows about a chunk's size, learnt without reading its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSize {
    /// Stored here, this many bytes.
    Stored(u64),
    /// Not stored here.
    Missing,
    /// Known but not yet available (being fetched); the device should ask again.
    Busy,
}

/// What the daemon provides to the device service: its TUF repository copy, its chunk store,
/// and a place for status reports to go.
pub trait DeviceBackend: Send + Sync + 'static {
    /// Length of a TUF metadata file (`timestamp.json`, `3.snapshot.json`, …) without
    /// reading it, if held: the service charges the read and the response first.
    fn metadata_len(&self, name: &str) -> impl Future<Output = Option<u64>> + Send;
    /// A TUF metadata file by name, if held and at most `max_len` bytes (its sized length;
    /// a longer file, replaced since, is not read beyond it and answers `None`).
    fn metadata(&self, name: &str, max_len: u64) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// Length of a TUF target file (`releases/gw/1.0.0.manifest`) without reading it.
    fn target_len(&self, path: &str) -> impl Future<Output = Option<u64>> + Send;
    /// A TUF target file by path, if held and at most `max_len` bytes.
    fn target(&self, path: &str, max_len: u64) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// Stored bytes of chunk `id` (verified by the backend), or why not.
    fn chunk(&self, id: ChunkId) -> impl Future<Output = ChunkLookup> + Send;
    /// Stored lengths of distinct chunks, one per id in order, without reading their bodies
    /// (file metadata, an index): the service sizes a request with them before it reads.
    fn chunk_lens(&self, ids: Vec<ChunkId>) -> impl Future<Output = Vec<ChunkSize>> + Send;
    /// Several chunks at once, one lookup per `(id, sized length)` in order; a backend reads
    /// no more than the sized length of each (the service answers a body of another length
    /// `Busy`: it changed since it was sized). The default asks [`chunk`] for each;
    /// backends that read from disk override it to pay one thread hop per batch and to bound
    /// each read.
    ///
    /// [`chunk`]: DeviceBackend::chunk
    fn chunks(&self, sized: Vec<(ChunkId, u64)>) -> impl Future<Output = Vec<ChunkLookup>> + Send {
        async move {
            let mut out = Vec::with_capacity(sized.len());
            for (id, _) in sized {
                out.push(self.chunk(id).await);
            }
            out
        }
    }
    /// A device's signed status report from `peer`, for the backend to check and keep for
    /// upstream. `Err` is what the device is answered: the report was refused (forged,
    /// replayed: `BAD_REQUEST`) or the sender is over its allowance (`BUSY`).
    fn report_status(&self, peer: SocketAddr, body: Vec<u8>) -> impl Future<Output = Result<(), ErrorCode>> + Send;
    /// Whether this node holds `device` back in rollout `rollout` (its site halted itself,
    /// or the site's install budget is used up). A node without rollout state holds nothing:
    /// the answer can only delay a device, which decides from the signed policy itself.
    fn rollout_hold(&self, rollout: &str, device: [u8; 32]) -> impl Future<Output = EdgeHoldAnswer> + Send {
        let _ = (rollout, device);
        async { EdgeHoldAnswer::None }
    }
}

/// Limits and addresses of the device service.
#[derive(Debug, Clone)]
pub struct DeviceServiceConfig {
    /// UDP address for QUIC (port 0 picks one; see [`DeviceAddrs`]); `None` disables QUIC.
    pub quic_addr: Option<SocketAddr>,
    /// TCP address for MCUs; `None` disables TCP.
    pub tcp_addr: Option<SocketAddr>,
    /// Where the QUIC certificate and key live (`device-quic-cert.der`,
    /// `device-quic-key.der`). Loaded if present, otherwise generated and saved there; with
    /// `None` a fresh certificate is generated at every start (devices do not pin it).
    pub cert_dir: Option<PathBuf>,
    /// Concurrent device connections over both transports (default 512). Beyond it, QUIC
    /// connection attempts are refused and TCP connections get `Error(BUSY)` and are closed:
    /// each connection costs buffers and a task, and a LAN has a known device count.
    pub max_connections: usize,
    /// Concurrent connections from one client IP address (default 8), refused like those
    /// over `max_connections`: a device agent uses one QUIC connection (or two TCP connections)
    /// per edge node, and one host must not
    /// take the slots of the site's other devices.
    pub max_connections_per_client: usize,
    /// Concurrent request streams per QUIC connection (default 16); with
    /// `max_response_bytes` this bounds what one Linux device can make us buffer.
    pub max_streams_per_connection: u32,
    /// Time from a request's first byte to its last (default 30 s). Requests are at most
    /// 64 KiB, so only a stalled or malicious client needs longer; it is disconnected.
    pub request_timeout: Duration,
    /// Time a connection may sit with no request in flight (default 120 s). Devices poll
    /// rarely; idle connections are closed so they do not hold connection slots forever.
    pub idle_timeout: Duration,
    /// Time to write one response (default 120 s: 8 MiB at ~0.5 Mbit/s). A client that stops
    /// reading is dropped rather than holding its response in memory.
    pub response_timeout: Duration,
    /// Largest response body the service builds for one request (default and maximum
    /// [`limits::MAX_RESPONSE_BYTES`]). Chunk items that would not fit are answered `Busy`.
    pub max_response_bytes: usize,
    /// Response bytes held in memory across all clients (default 256 MiB), from when a
    /// response is built until it is written (TCP) or acknowledged by the device (QUIC, so
    /// bytes waiting in quinn's send buffer count too). When spent, chunk items are answered
    /// `Busy` and metadata requests `Error(BUSY)`, so a burst of devices slows down instead
    /// of exhausting memory.
    pub max_buffered_bytes: usize,
    /// Chunk-batch requests whose chunks are being read at once (default 8): bounds disk
    /// reads and threads. Memory is bounded by `max_buffered_bytes` regardless, because a
    /// batch's reads are sized and charged before they happen.
    pub max_concurrent_lookups: usize,
    /// How long a chunk batch of which nothing fits the spent `max_buffered_bytes` waits, in
    /// arrival order, for memory to come back before it is answered `Busy` (default 4 s:
    /// under the MCU agent's 10 s request timeout with room for the transfer, well under the
    /// Linux agent's 30 s). Waiting costs the node the request's few KiB; a `Busy` costs a
    /// round trip, a re-ask and the request's place in line. Answering at once made a
    /// thousand devices re-ask in a loop; after 1 s, 1,000 devices against a 128 MiB budget
    /// still re-asked each chunk about four times, and 4 s cut those re-asks by 85 % and
    /// raised the aggregate rate by 15 % (`scripts/bench-device`, interleaved medians of 3).
    pub busy_wait: Duration,
    /// Largest QUIC datagram (UDP payload) MTU discovery probes for (default and maximum
    /// [`edge_client::QUIC_MAX_DATAGRAM_BYTES`], 6,500; values outside 1,200 to 6,500 are
    /// clamped). Where the path carries less, the larger probes are lost and discovery
    /// settles below; 1,452 keeps every probe within one Ethernet frame.
    pub quic_max_datagram_bytes: u16,
}

impl Default for DeviceServiceConfig {
    fn default() -> Self {
        DeviceServiceConfig {
            quic_addr: None,
            tcp_addr: None,
            cert_dir: None,
            max_connections: 512,
            max_connections_per_client: 8,
            max_streams_per_connection: 16,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            response_timeout: Duration::from_secs(120),
            max_response_bytes: limits::MAX_RESPONSE_BYTES,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_concurrent_lookups: 8,
            busy_wait: Duration::from_secs(4),
            quic_max_datagram_bytes: edge_client::QUIC_MAX_DATAGRAM_BYTES,
        }
    }
}

/// The addresses the service actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAddrs {
    /// The QUIC (UDP) address, if enabled.
    pub quic: Option<SocketAddr>,
    /// The TCP address, if enabled.
    pub tcp: Option<SocketAddr>,
}

/// The device service's entry point.
#[derive(Debug)]
pub struct DeviceService;

impl DeviceService {
    /// Binds the configured listeners and starts serving. Returns the bound addresses and the
    /// task running everything; aborting (or dropping the runtime of) that task closes the
    /// listeners and every connection.
    pub async fn bind<B: DeviceBackend>(
        config: DeviceServiceConfig,
        backend: Arc<B>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(DeviceAddrs, JoinHandle<()>)> {
        let admission =
            clients::Admission::new(config.max_connections, config.max_connections_per_client, metrics.clone());
        let shared = Arc::new(Shared::new(config, backend, metrics));
        let quic = match shared.config.quic_addr {
            Some(addr) => Some(quic::bind_server(&shared.config, addr, shared.metrics.clone())?),
            None => None,
        };
        let tcp = match shared.config.tcp_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        let addrs = DeviceAddrs {
            quic: quic.as_ref().map(|e| e.local_addr()).transpose()?,
            tcp: tcp.as_ref().map(|l| l.local_addr()).transpose()?,
        };
        let task = tokio::spawn(async move {
            let quic_loop = async {
                if let Some(endpoint) = quic {
                    quic::serve(endpoint, shared.clone(), admission.clone()).await;
                }
            };
            let tcp_loop = async {
                if let Some(listener) = tcp {
                    tcp::serve(listener, shared.clone(), admission.clone()).await;
                }
            };
            tokio::join!(quic_loop, tcp_loop);
        });
        Ok((addrs, task))
    }
}

/// State every connection task shares.
pub(crate) struct Shared<B> {
    pub(crate) config: DeviceServiceConfig,
    backend: Arc<B>,
    pub(crate) metrics: Arc<Metrics>,
    /// Response and read bytes currently held, in bytes; see `max_buffered_bytes`.
    memory: Arc<Semaphore>,
    /// Chunk batches being read; see `max_concurrent_lookups`.
    lookups: Semaphore,
}

/// An encoded response frame and the memory budget it holds until written.
///
/// The frame is a list of buffers sent in order: one for most answers; for a chunk batch, the
/// small fields interleaved with each chunk's stored bytes as they are (`Bytes` shared with
/// the hot cache or the read), so a batch is never copied into a frame of its own.
pub(crate) struct Answer {
    pub(crate) frame: Vec<Bytes>,
    _memory: Option<OwnedSemaphorePermit>,
}

impl Answer {
    pub(crate) fn error(code: ErrorCode) -> Answer {
        Answer::small(Response::Error { code })
    }

    fn small(response: Response<'_>) -> Answer {
        // Error, NotFound and Ack are a few bytes and always encode.
        Answer::whole(response.to_frame().unwrap_or_default(), None)
    }

    fn whole(frame: Vec<u8>, memory: Option<OwnedSemaphorePermit>) -> Answer {
        Answer::from_parts(vec![Bytes::from(frame)], memory)
    }

    fn from_parts(frame: Vec<Bytes>, memory: Option<OwnedSemaphorePermit>) -> Answer {
        Answer { frame, _memory: memory }
    }

    /// Bytes of the whole frame.
    pub(crate) fn len(&self) -> usize {
        self.frame.iter().map(Bytes::len).sum()
    }
}

impl<B: DeviceBackend> Shared<B> {
    fn new(mut config: DeviceServiceConfig, backend: Arc<B>, metrics: Arc<Metrics>) -> Self {
        config.max_response_bytes = config.max_response_bytes.min(limits::MAX_RESPONSE_BYTES);
        let memory = Arc::new(Semaphore::new(config.max_buffered_bytes.min(Semaphore::MAX_PERMITS)));
        let lookups = Semaphore::new(config.max_concurrent_lookups.clamp(1, Semaphore::MAX_PERMITS));
        Shared { config, backend, metrics, memory, lookups }
    }

    /// Reserves `bytes` of response memory, without waiting.
    fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        self.memory.clone().try_acquire_many_owned(n).ok()
    }

    /// Waits up to `busy_wait` for `bytes` of response memory (at most the whole budget, so
    /// that it can come back), behind every request already waiting: the semaphore hands
    /// released bytes to the longest waiter first.
    async fn wait_for_memory(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let cap = self.config.max_buffered_bytes.min(Semaphore::MAX_PERMITS);
        let n = u32::try_from(bytes.clamp(1, cap.max(1))).ok()?;
        let acquire = self.memory.clone().acquire_many_owned(n);
        Metrics::add(&self.metrics.device_requests_waiting, 1);
        let got = tokio::time::timeout(self.config.busy_wait, acquire).await;
        self.metrics.device_requests_waiting.fetch_sub(1, Relaxed);
        got.ok()?.ok()
    }

    /// Answers one request body (already size-checked by the transport).
    pub(crate) async fn answer(&self, peer: SocketAddr, body: &[u8]) -> Answer {
        let request = match RequestView::parse(body) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%peer, %error, "bad device request");
                return Answer::error(ErrorCode::for_request_error(error));
            }
        };
        match request {
            Request::GetMetadata { name } => {
                let len = self.backend.metadata_len(name).await;
                self.file(len, |max_len| self.backend.metadata(name, max_len)).await
            }
            Request::GetTarget { path } => {
                let len = self.backend.target_len(path).await;
                self.file(len, |max_len| self.backend.target(path, max_len)).await
            }
            Request::GetChunks { ranges } => self.answer_chunks(ranges).await,
            Request::ReportStatus { body } => match self.backend.report_status(peer, body.to_vec()).await {
                Ok(()) => Answer::small(Response::Ack),
                Err(code) => Answer::error(code),
            },
            Request::AskHold { rollout, device } => {
                Answer::small(Response::Hold(self.backend.rollout_hold(rollout, device).await))
            }
        }
    }

    /// Answers with a file of sized length `len`: the read buffer and the frame are charged
    /// against the budget before `read` runs (at most `len` bytes), and the charge shrinks to
    /// the frame once the read buffer is dropped.
    async fn file<F: Future<Output = Option<Vec<u8>>>>(&self, len: Option<u64>, read: impl FnOnce(u64) -> F) -> Answer {
        let Some(len) = len else { return Answer::small(Response::NotFound) };
        let Ok(empty_body) = Response::Bytes(&[]).body_len() else { return Answer::error(ErrorCode::INTERNAL) };
        let body_len = match usize::try_from(len) {
            Ok(len) if empty_body.saturating_add(len) <= self.config.max_response_bytes => empty_body + len,
            _ => return Answer::error(ErrorCode::TOO_LARGE),
        };
        let frame_len = FRAME_HEADER_BYTES + body_len;
        let Some(mut permit) = self.reserve(frame_len + (body_len - empty_body)) else {
            return Answer::error(ErrorCode::BUSY);
        };
        let Some(bytes) = read(len).await else { return Answer::small(Response::NotFound) };
        let frame = match Response::Bytes(&bytes).to_frame() {
            Ok(frame) => frame,
            Err(_) => return Answer::error(ErrorCode::INTERNAL),
        };
        drop(bytes);
        let surplus = permit.num_permits().saturating_sub(frame.capacity());
        if surplus > 0 {
            drop(permit.split(surplus));
        }
        Answer::whole(frame, Some(permit))
    }
}

/// Counts a connected device in [`Metrics::devices`] for as long as it lives.
pub(crate) struct DeviceGauge(Arc<Metrics>);

impl DeviceGauge {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Metrics::add(&metrics.devices, 1);
        DeviceGauge(metrics)
    }
}

impl Drop for DeviceGauge {
    fn drop(&mut self) {
        self.0.devices.fetch_sub(1, Relaxed);
    }
}
