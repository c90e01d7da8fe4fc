//! The device service: what devices on the edge node's LAN talk to. Linux gateways use QUIC
//! ([`quic`], ALPN [`ALPN`]), MCUs framed TCP ([`tcp`]); both carry the same messages,
//! [`protocol::device_wire`], and are answered by the same code ([`Shared::answer`]).
//!
//! Trust: none is placed in this layer. Devices verify TUF metadata from their pinned root
//! and every chunk against its [`ChunkId`] (named by signed manifests), so the edge node and
//! anyone between it and the device can only withhold or corrupt bytes, which verification
//! catches. That is why the QUIC certificate is self-signed and devices do not pin it: QUIC
//! gives confidentiality of what a device asks for, congestion and flow control, not
//! authenticity.
//!
//! Bounds (see [`DeviceServiceConfig`]): concurrent connections (a semaphore shared by both
//! transports), concurrent streams per QUIC connection, a read deadline per request (a client
//! that sends half a frame is dropped), request size ([`limits::MAX_REQUEST_BYTES`]),
//! response size per request ([`DeviceServiceConfig::max_response_bytes`]) and response
//! memory across all clients ([`DeviceServiceConfig::max_buffered_bytes`]). Responses are
//! written with backpressure: a slow reader holds at most its own responses.

pub mod mdns;
pub mod quic;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use protocol::device_wire::{
    chunk_item_bytes, limits, ChunkItem, ChunkStatus, ChunksFrameBuilder, ErrorCode, Request, RequestView, Response,
};
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
    Found(Vec<u8>),
    /// Not stored here.
    Missing,
    /// Known but not yet available (being fetched); the device should ask again.
    Busy,
}

/// What the daemon provides to the device service: its TUF repository copy, its chunk store,
/// and a place for status reports to go.
pub trait DeviceBackend: Send + Sync + 'static {
    /// A TUF metadata file by name (`timestamp.json`, `3.snapshot.json`, …), if held.
    fn metadata(&self, name: &str) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// A TUF target file by path (`releases/gw/1.0.0.manifest`), if held.
    fn target(&self, path: &str) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// Stored bytes of chunk `id` (verified by the backend), or why not.
    fn chunk(&self, id: ChunkId) -> impl Future<Output = ChunkLookup> + Send;
    /// Several chunks at once, one lookup per id in order. The default asks [`chunk`]
    /// for each; backends that read from disk override it to pay one thread hop per batch.
    ///
    /// [`chunk`]: DeviceBackend::chunk
    fn chunks(&self, ids: Vec<ChunkId>) -> impl Future<Output = Vec<ChunkLookup>> + Send {
        async move {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.chunk(id).await);
            }
            out
        }
    }
    /// A device's signed status report from `peer`, for the backend to check and keep for
    /// upstream. `Err` is what the device is answered: the report was refused (forged,
    /// replayed: `BAD_REQUEST`) or the sender is over its allowance (`BUSY`).
    fn report_status(&self, peer: SocketAddr, body: Vec<u8>) -> impl Future<Output = Result<(), ErrorCode>> + Send;
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
    /// Chunk-batch requests whose chunks are being read at once (default 8): a batch is read
    /// whole before the response is sized against `max_buffered_bytes`, so this bounds
    /// that memory (8 × 8 MiB) however many devices ask at once. Two cores are busy with
    /// far fewer; the others wait their turn.
    pub max_concurrent_lookups: usize,
}

impl Default for DeviceServiceConfig {
    fn default() -> Self {
        DeviceServiceConfig {
            quic_addr: None,
            tcp_addr: None,
            cert_dir: None,
            max_connections: 512,
            max_streams_per_connection: 16,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            response_timeout: Duration::from_secs(120),
            max_response_bytes: limits::MAX_RESPONSE_BYTES,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_concurrent_lookups: 8,
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
        let shared = Arc::new(Shared::new(config, backend, metrics));
        let connections = Arc::new(Semaphore::new(shared.config.max_connections.min(Semaphore::MAX_PERMITS)));
        let quic = match shared.config.quic_addr {
            Some(addr) => Some(quic::bind_server(&shared.config, addr)?),
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
                    quic::serve(endpoint, shared.clone(), connections.clone()).await;
                }
            };
            let tcp_loop = async {
                if let Some(listener) = tcp {
                    tcp::serve(listener, shared.clone(), connections.clone()).await;
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
    /// Response bytes currently held, in bytes; see `max_buffered_bytes`.
    memory: Arc<Semaphore>,
    /// Chunk batches being read; see `max_concurrent_lookups`.
    lookups: Semaphore,
}

/// An encoded response frame and the memory budget it holds until written.
pub(crate) struct Answer {
    pub(crate) frame: Vec<u8>,
    _memory: Option<OwnedSemaphorePermit>,
}

impl Answer {
    pub(crate) fn error(code: ErrorCode) -> Answer {
        Answer::small(Response::Error { code })
    }

    fn small(response: Response<'_>) -> Answer {
        // Error, NotFound and Ack are a few bytes and always encode.
        Answer { frame: response.to_frame().unwrap_or_default(), _memory: None }
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
            Request::GetMetadata { name } => self.file(self.backend.metadata(name).await),
            Request::GetTarget { path } => self.file(self.backend.target(path).await),
            Request::GetChunks { ranges } => {
                let mut builder = ChunksFrameBuilder::new();
                let mut memory: Option<OwnedSemaphorePermit> = None;
                // Held until the frame is built: the looked-up bodies are dropped by then.
                let Ok(_reading) = self.lookups.acquire().await else { return Answer::error(ErrorCode::BUSY) };
                let lookups = self.backend.chunks(ranges.iter().map(|r| r.id).collect()).await;
                for (range, lookup) in ranges.iter().zip(lookups) {
                    let status = match &lookup {
                        ChunkLookup::Found(stored) => {
                            Metrics::add(&self.metrics.cache_hits, 1);
                            match range.slice(stored) {
                                Some(bytes) => {
                                    let fits = builder.body_len().saturating_add(chunk_item_bytes(bytes.len()))
                                        <= self.config.max_response_bytes
                                        && builder.fits(bytes.len());
                                    match fits.then(|| self.reserve(chunk_item_bytes(bytes.len()))).flatten() {
                                        Some(permit) => {
                                            match memory.as_mut() {
                                                Some(held) => held.merge(permit),
                                                None => memory = Some(permit),
                                            }
                                            ChunkStatus::Ok(bytes)
                                        }
                                        None => ChunkStatus::Busy,
                                    }
                                }
                                None => ChunkStatus::NotFound,
                            }
                        }
                        ChunkLookup::Missing => {
                            Metrics::add(&self.metrics.cache_misses, 1);
                            ChunkStatus::NotFound
                        }
                        ChunkLookup::Busy => ChunkStatus::Busy,
                    };
                    // At most MAX_RANGES items (checked by the parser) and payload checked
                    // by `fits` above, so pushing cannot fail; if it did, the item is dropped
                    // and the client sees a short batch, which it treats as a protocol error.
                    if builder.push(ChunkItem { id: range.id, status }).is_err() {
                        return Answer::error(ErrorCode::INTERNAL);
                    }
                }
                Answer { frame: builder.finish(), _memory: memory }
            }
            Request::ReportStatus { body } => match self.backend.report_status(peer, body.to_vec()).await {
                Ok(()) => Answer::small(Response::Ack),
                Err(code) => Answer::error(code),
            },
        }
    }

    fn file(&self, bytes: Option<Vec<u8>>) -> Answer {
        let Some(bytes) = bytes else { return Answer::small(Response::NotFound) };
        let response = Response::Bytes(&bytes);
        match response.body_len() {
            Ok(len) if len <= self.config.max_response_bytes => match self.reserve(len) {
                Some(permit) => match response.to_frame() {
                    Ok(frame) => Answer { frame, _memory: Some(permit) },
                    Err(_) => Answer::error(ErrorCode::INTERNAL),
                },
                None => Answer::error(ErrorCode::BUSY),
            },
            _ => Answer::error(ErrorCode::TOO_LARGE),
        }
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
