//! Malicious edge nodes inside the test process, on their own tokio runtime (dropped, and so
//! stopped, with [`Hostiles`]):
//! - [`Hostiles::repo_edge`]: edge-node's real device service (QUIC and framed TCP) over a
//!   backend that reads a seeder repository directory — the live one or a stale copy — and
//!   lies as told by [`Lie`];
//! - [`Hostiles::endless_edge`]: a raw TCP listener that answers the first request frame of
//!   every connection with a response that never ends ([`Endless`]);
//! - [`Hostiles::proxy`]: a framed-TCP proxy in front of a real edge node that shapes its
//!   answers ([`Shape`]): chunk batches trickling a few bytes per second, or every answer
//!   late (an honest edge that is merely far away);
//! - [`Hostiles::black_hole`]: a UDP socket and a TCP listener that take everything and
//!   answer nothing (QUIC never completes its handshake; TCP connects, then silence).
//!
//! Every edge counts what it was asked, so a test can tell that a device really talked to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use edge_node::device::{ChunkLookup, ChunkSize, DeviceBackend, DeviceService, DeviceServiceConfig};
use edge_node::metrics::Metrics;
use protocol::wire::device::{frame_body_len, limits, Request, RequestView, FRAME_HEADER_BYTES};
use protocol::ChunkId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests a hostile edge answered, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    pub metadata: AtomicU64,
    pub targets: AtomicU64,
    /// Chunk items (not requests).
    pub chunks: AtomicU64,
    /// Raw request frames (endless edges only).
    pub frames: AtomicU64,
}

impl Counters {
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Relaxed)
    }

    pub fn targets(&self) -> u64 {
        self.targets.load(Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.metadata.load(Relaxed) + self.targets.load(Relaxed) + self.chunks.load(Relaxed) + self.frames.load(Relaxed)
    }
}

/// How a repository-backed edge lies. Whatever it does not lie about comes from its
/// repository directory as is.
#[derive(Debug, Clone)]
pub enum Lie {
    /// Nothing: the repository itself may be the lie (a stale copy).
    Nothing,
    /// Every chunk body with one byte flipped.
    CorruptChunks,
    /// Says "not found" to every chunk.
    WithholdChunks,
    /// Says "busy, ask again" to every chunk, forever.
    BusyChunks,
    /// Answers every target request with these bytes (an older release's manifest).
    EveryTarget(Vec<u8>),
    /// Answers every manifest request (`….manifest`) with these bytes: another release's
    /// manifest, validly published, in place of the one the seal names.
    ManifestsFrom(Vec<u8>),
    /// Every seal (`….sig` target, what MCUs verify instead of TUF) with its last byte — a
    /// signature byte — flipped; everything else as is.
    CorruptSeals,
}

/// A hostile edge's addresses and counters.
#[derive(Debug, Clone)]
pub struct HostileEdge {
    pub quic: Option<SocketAddr>,
    pub tcp: SocketAddr,
    pub counters: Arc<Counters>,
}

impl HostileEdge {
    pub fn quic_url(&self) -> String {
        format!("quic://{}", self.quic.expect("this hostile edge has no QUIC listener"))
    }

    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.tcp)
    }
}

/// What an endless edge sends after reading a request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endless {
    /// A length prefix of `0xFFFF_FFFF`, then filler forever.
    OversizedLength,
    /// A well-formed `Bytes` response of exactly [`limits::MAX_RESPONSE_BYTES`] (the largest
    /// a client accepts), then filler forever where the next response should start.
    LargestThenMore,
}

/// How a [`Hostiles::proxy`] shapes the answers of the edge node behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Chunk batches go out this many bytes per second; metadata and manifests pass at once,
    /// so the edge passes a device's probe and metadata checks and is really handed batches.
    TrickleChunks { bytes_per_second: usize },
    /// Every answer is held back this long: honest, current, and slower than its neighbours.
    Delay(Duration),
}

/// The runtime the hostile edges run on, and the address they listen on.
pub struct Hostiles {
    runtime: tokio::runtime::Runtime,
    ip: std::net::IpAddr,
}

impl Hostiles {
    pub fn new() -> Hostiles {
        Hostiles::on("127.0.0.1".parse().unwrap())
    }

    /// Hostile edges listening on `ip`. Made inside a network namespace (`netns::in_netns`),
    /// the runtime's threads — and so every socket they open, proxies' upstream connections
    /// included — live in that namespace.
    pub fn on(ip: std::net::IpAddr) -> Hostiles {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        // Start the workers now, from this thread (and so in its namespace).
        runtime.block_on(async {});
        Hostiles { runtime, ip }
    }

    fn any_port(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 0)
    }

    /// The device service over `repo` (a directory with `metadata/`, `targets/` and
    /// `chunks/`), lying as `lie` says; QUIC and TCP on 127.0.0.1.
    pub fn repo_edge(&self, repo: &Path, lie: Lie) -> HostileEdge {
        let counters = Arc::new(Counters::default());
        let backend = Arc::new(RepoBackend { root: repo.to_path_buf(), lie, counters: counters.clone() });
        let config = DeviceServiceConfig {
            quic_addr: Some(self.any_port()),
            tcp_addr: Some(self.any_port()),
            ..DeviceServiceConfig::default()
        };
        let (addrs, _task) = self
            .runtime
            .block_on(async { DeviceService::bind(config, backend, Arc::new(Metrics::default())).await })
            .expect("hostile device service binds");
        HostileEdge { quic: addrs.quic, tcp: addrs.tcp.unwrap(), counters }
    }

    /// A framed-TCP "edge" whose responses never end.
    pub fn endless_edge(&self, kind: Endless) -> HostileEdge {
        let counters = Arc::new(Counters::default());
        let listener =
            self.runtime.block_on(tokio::net::TcpListener::bind(self.any_port())).expect("endless edge binds");
        let tcp = listener.local_addr().unwrap();
        let count = counters.clone();
        self.runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(endless(stream, kind, count.clone()));
            }
        });
        HostileEdge { quic: None, tcp, counters }
    }
}

impl Hostiles {
    /// A framed-TCP edge that forwards every request to `upstream` (a real edge node's
    /// device-service TCP port) and shapes the answers as `shape` says.
    pub fn proxy(&self, upstream: SocketAddr, shape: Shape) -> HostileEdge {
        let counters = Arc::new(Counters::default());
        let listener = self.runtime.block_on(tokio::net::TcpListener::bind(self.any_port())).expect("proxy binds");
        let tcp = listener.local_addr().unwrap();
        let count = counters.clone();
        self.runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(proxy(stream, upstream, shape, count.clone()));
            }
        });
        HostileEdge { quic: None, tcp, counters }
    }

    /// An edge that takes every datagram and connection and never answers: a QUIC device
    /// waits for a handshake that never comes, a TCP one for a response. Counts datagrams
    /// and connections as `frames`.
    pub fn black_hole(&self) -> HostileEdge {
        let counters = Arc::new(Counters::default());
        let (udp, listener) = self.runtime.block_on(async {
            let udp = tokio::net::UdpSocket::bind(self.any_port()).await.expect("black hole binds UDP");
            let tcp = tokio::net::TcpListener::bind(self.any_port()).await.expect("black hole binds TCP");
            (udp, tcp)
        });
        let (quic, tcp) = (udp.local_addr().unwrap(), listener.local_addr().unwrap());
        let count = counters.clone();
        self.runtime.spawn(async move {
            let mut datagram = vec![0u8; 65536];
            while udp.recv_from(&mut datagram).await.is_ok() {
                count.frames.fetch_add(1, Relaxed);
            }
        });
        let count = counters.clone();
        self.runtime.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.frames.fetch_add(1, Relaxed);
                // Read and drop everything until the device hangs up.
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 65536];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        HostileEdge { quic: Some(quic), tcp, counters }
    }
}

impl Default for Hostiles {
    fn default() -> Self {
        Hostiles::new()
    }
}

/// Reads one request frame, then writes until the peer goes away.
async fn endless(mut stream: tokio::net::TcpStream, kind: Endless, counters: Arc<Counters>) {
    let mut header = [0u8; 4];
    if stream.read_exact(&mut header).await.is_err() {
        return;
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > limits::MAX_REQUEST_BYTES {
        return;
    }
    let mut body = vec![0u8; len];
    if stream.read_exact(&mut body).await.is_err() {
        return;
    }
    counters.frames.fetch_add(1, Relaxed);
    let start = match kind {
        Endless::OversizedLength => u32::MAX.to_le_bytes().to_vec(),
        Endless::LargestThenMore => {
            // `Bytes` kind 0x81, then its own u32 length: a frame exactly at the limit.
            let frame = limits::MAX_RESPONSE_BYTES as u32;
            let mut start = frame.to_le_bytes().to_vec();
            start.push(0x81);
            start.extend_from_slice(&(frame - 5).to_le_bytes());
            start
        }
    };
    if stream.write_all(&start).await.is_err() {
        return;
    }
    let filler = vec![0xa5u8; 64 << 10];
    while stream.write_all(&filler).await.is_ok() {}
}

/// Reads one frame (header and body, at most `max_body` bytes) from `stream`.
async fn read_frame(stream: &mut tokio::net::TcpStream, max_body: usize) -> Option<Vec<u8>> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await.ok()?;
    let len = frame_body_len(header, max_body).ok()?;
    let mut frame = header.to_vec();
    frame.resize(FRAME_HEADER_BYTES + len, 0);
    stream.read_exact(&mut frame[FRAME_HEADER_BYTES..]).await.ok()?;
    Some(frame)
}

/// One device connection through the proxy: request frames go upstream as they are, answers
/// come back shaped.
async fn proxy(mut device: tokio::net::TcpStream, upstream: SocketAddr, shape: Shape, counters: Arc<Counters>) {
    let Ok(mut edge) = tokio::net::TcpStream::connect(upstream).await else { return };
    let _ = device.set_nodelay(true);
    while let Some(request) = read_frame(&mut device, limits::MAX_REQUEST_BYTES).await {
        let is_chunks = match RequestView::parse(&request[FRAME_HEADER_BYTES..]) {
            Ok(Request::GetMetadata { .. }) => {
                counters.metadata.fetch_add(1, Relaxed);
                false
            }
            Ok(Request::GetTarget { .. }) => {
                counters.targets.fetch_add(1, Relaxed);
                false
            }
            Ok(Request::GetChunks { ranges }) => {
                counters.chunks.fetch_add(ranges.len() as u64, Relaxed);
                true
            }
            _ => false,
        };
        if edge.write_all(&request).await.is_err() {
            return;
        }
        let Some(response) = read_frame(&mut edge, limits::MAX_RESPONSE_BYTES).await else { return };
        let sent = match shape {
            Shape::TrickleChunks { bytes_per_second } if is_chunks => {
                // A quarter of the rate four times a second, for as long as the device listens.
                let mut sent = Ok(());
                for piece in response.chunks((bytes_per_second / 4).max(1)) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    sent = device.write_all(piece).await;
                    if sent.is_err() {
                        break;
                    }
                }
                sent
            }
            Shape::Delay(delay) => {
                tokio::time::sleep(delay).await;
                device.write_all(&response).await
            }
            Shape::TrickleChunks { .. } => device.write_all(&response).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

struct RepoBackend {
    root: PathBuf,
    lie: Lie,
    counters: Arc<Counters>,
}

impl RepoBackend {
    /// `targets/DIR/<sha256>.BASE` for the target path `DIR/BASE` (consistent snapshots).
    fn target_file(&self, path: &str) -> Option<PathBuf> {
        // Asked by content name (what devices ask for): the file itself.
        let by_content = self.root.join("targets").join(path);
        if by_content.is_file() {
            return Some(by_content);
        }
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        std::fs::read_dir(self.root.join("targets").join(dir)).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).and_then(protocol::tuf::naming::split_hashed_file_name).is_some_and(
                |(hash, name)| name == base && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            )
        })
    }
}

impl DeviceBackend for RepoBackend {
    // Requests are counted where every one of them arrives: the length lookups.
    async fn metadata_len(&self, name: &str) -> Option<u64> {
        self.counters.metadata.fetch_add(1, Relaxed);
        // The wire parser already refused names with `/` or `..`.
        std::fs::metadata(self.root.join("metadata").join(name)).ok().map(|m| m.len())
    }

    async fn metadata(&self, name: &str, _max_len: u64) -> Option<Vec<u8>> {
        std::fs::read(self.root.join("metadata").join(name)).ok()
    }

    async fn target_len(&self, path: &str) -> Option<u64> {
        self.counters.targets.fetch_add(1, Relaxed);
        match &self.lie {
            Lie::EveryTarget(bytes) => Some(bytes.len() as u64),
            Lie::ManifestsFrom(bytes) if path.ends_with(".manifest") => Some(bytes.len() as u64),
            _ => std::fs::metadata(self.target_file(path)?).ok().map(|m| m.len()),
        }
    }

    async fn target(&self, path: &str, _max_len: u64) -> Option<Vec<u8>> {
        match &self.lie {
            Lie::EveryTarget(bytes) => Some(bytes.clone()),
            Lie::ManifestsFrom(bytes) if path.ends_with(".manifest") => Some(bytes.clone()),
            Lie::CorruptSeals if path.ends_with(".sig") => {
                let mut bytes = std::fs::read(self.target_file(path)?).ok()?;
                *bytes.last_mut()? ^= 0x01;
                Some(bytes)
            }
            _ => std::fs::read(self.target_file(path)?).ok(),
        }
    }

    async fn chunk(&self, id: ChunkId) -> ChunkLookup {
        match self.lie {
            Lie::WithholdChunks => return ChunkLookup::Missing,
            Lie::BusyChunks => return ChunkLookup::Busy,
            _ => {}
        }
        let hex = id.to_hex();
        match std::fs::read(self.root.join("chunks").join(&hex[..2]).join(&hex)) {
            Ok(mut bytes) => {
                if matches!(self.lie, Lie::CorruptChunks) {
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x01;
                }
                ChunkLookup::Found(bytes.into())
            }
            Err(_) => ChunkLookup::Missing,
        }
    }

    async fn chunk_lens(&self, ids: Vec<ChunkId>) -> Vec<ChunkSize> {
        self.counters.chunks.fetch_add(ids.len() as u64, Relaxed);
        ids.iter()
            .map(|id| match self.lie {
                Lie::WithholdChunks => ChunkSize::Missing,
                Lie::BusyChunks => ChunkSize::Busy,
                _ => {
                    let hex = id.to_hex();
                    match std::fs::metadata(self.root.join("chunks").join(&hex[..2]).join(&hex)) {
                        Ok(meta) => ChunkSize::Stored(meta.len()),
                        Err(_) => ChunkSize::Missing,
                    }
                }
            })
            .collect()
    }

    async fn report_status(&self, _peer: SocketAddr, _body: Vec<u8>) -> Result<(), protocol::wire::device::ErrorCode> {
        Ok(())
    }
}
