//! The device service over real sockets on 127.0.0.1: both transports, the limits, load and
//! a throughput print. Every wait has a timeout; nothing synchronizes by sleeping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_node::device::{
    ChunkLookup, ChunkSize, ClientError, DeviceAddrs, DeviceBackend, DeviceClient, DeviceService, DeviceServiceConfig,
};
use edge_node::metrics::Metrics;
use protocol::wire::{
    device::{limits, ChunkStatus, ErrorCode, Request, Response, ResponseView, FRAME_HEADER_BYTES},
    ChunkRange,
};
use protocol::ChunkId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// An in-memory backend: files by name, chunks by id, some chunks "busy".
#[derive(Default)]
struct MemBackend {
    metadata: HashMap<String, Vec<u8>>,
    targets: HashMap<String, Vec<u8>>,
    chunks: HashMap<ChunkId, Arc<Vec<u8>>>,
    busy: Vec<ChunkId>,
    statuses: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    /// Chunk body bytes handed out (what a disk backend would have read).
    read_bytes: AtomicU64,
    /// A chunk whose read waits for a permit of the semaphore, and how many reads of it
    /// have started waiting.
    gate: Option<(ChunkId, Arc<tokio::sync::Semaphore>)>,
    gated_reads: AtomicU64,
}

impl MemBackend {
    fn add_chunk(&mut self, bytes: Vec<u8>) -> ChunkId {
        let id = ChunkId::of(&bytes);
        self.chunks.insert(id, Arc::new(bytes));
        id
    }
}

impl DeviceBackend for MemBackend {
    async fn metadata_len(&self, name: &str) -> Option<u64> {
        self.metadata.get(name).map(|b| b.len() as u64)
    }

    async fn metadata(&self, name: &str, max_len: u64) -> Option<Vec<u8>> {
        self.metadata.get(name).filter(|b| b.len() as u64 <= max_len).cloned()
    }

    async fn target_len(&self, path: &str) -> Option<u64> {
        self.targets.get(path).map(|b| b.len() as u64)
    }

    async fn target(&self, path: &str, max_len: u64) -> Option<Vec<u8>> {
        self.targets.get(path).filter(|b| b.len() as u64 <= max_len).cloned()
    }

    async fn chunk(&self, id: ChunkId) -> ChunkLookup {
        if let Some((gated, gate)) = self.gate.as_ref().filter(|(gated, _)| *gated == id) {
            self.gated_reads.fetch_add(1, Relaxed);
            let _open = gate.acquire().await.expect("gate closed");
            debug_assert_eq!(*gated, id);
        }
        if self.busy.contains(&id) {
            return ChunkLookup::Busy;
        }
        match self.chunks.get(&id) {
            Some(bytes) => {
                self.read_bytes.fetch_add(bytes.len() as u64, Relaxed);
                ChunkLookup::Found(bytes.as_ref().clone().into())
            }
            None => ChunkLookup::Missing,
        }
    }

    async fn chunk_lens(&self, ids: Vec<ChunkId>) -> Vec<ChunkSize> {
        ids.iter()
            .map(|id| match self.chunks.get(id) {
                _ if self.busy.contains(id) => ChunkSize::Busy,
                Some(bytes) => ChunkSize::Stored(bytes.len() as u64),
                None => ChunkSize::Missing,
            })
            .collect()
    }

    async fn report_status(&self, peer: SocketAddr, body: Vec<u8>) -> Result<(), protocol::wire::device::ErrorCode> {
        self.statuses.lock().unwrap().push((peer, body));
        Ok(())
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn localhost_config() -> DeviceServiceConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    DeviceServiceConfig { quic_addr: Some(any), tcp_addr: Some(any), ..DeviceServiceConfig::default() }
}

struct Fixture {
    addrs: DeviceAddrs,
    task: JoinHandle<()>,
    backend: Arc<MemBackend>,
    metrics: Arc<Metrics>,
    chunk_a: ChunkId,
    chunk_b: ChunkId,
    busy: ChunkId,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(config: DeviceServiceConfig) -> Fixture {
    let mut backend = MemBackend::default();
    backend.metadata.insert("timestamp.json".into(), b"{\"signed\":{\"_type\":\"timestamp\"}}".to_vec());
    backend.metadata.insert("1.root.json".into(), b"{\"signed\":{\"_type\":\"root\"}}".to_vec());
    backend.targets.insert("releases/gw/1.0.0.manifest".into(), pattern(3000, 7));
    let chunk_a = backend.add_chunk(pattern(64 * 1024, 1));
    let chunk_b = backend.add_chunk(pattern(1000, 2));
    let busy = backend.add_chunk(pattern(10, 3));
    backend.busy.push(busy);
    let backend = Arc::new(backend);
    let metrics = Arc::new(Metrics::default());
    let (addrs, task) = DeviceService::bind(config, backend.clone(), metrics.clone()).await.unwrap();
    Fixture { addrs, task, backend, metrics, chunk_a, chunk_b, busy }
}

async fn quic(f: &Fixture) -> DeviceClient {
    timeout(WAIT, DeviceClient::connect_quic(f.addrs.quic.unwrap())).await.unwrap().unwrap()
}

async fn tcp(f: &Fixture) -> DeviceClient {
    timeout(WAIT, DeviceClient::connect_tcp(f.addrs.tcp.unwrap())).await.unwrap().unwrap()
}

/// Metadata, targets, ranges, not-found paths and status reports, on either transport.
async fn fetch_everything(f: &Fixture, client: &mut DeviceClient) {
    let ts = client.get_metadata("timestamp.json").await.unwrap();
    assert_eq!(ts.as_deref(), Some(&f.backend.metadata["timestamp.json"][..]));
    assert_eq!(client.get_metadata("2.root.json").await.unwrap(), None);
    let manifest = client.get_target("releases/gw/1.0.0.manifest").await.unwrap();
    assert_eq!(manifest.as_deref(), Some(&f.backend.targets["releases/gw/1.0.0.manifest"][..]));
    assert_eq!(client.get_target("releases/gw/9.9.9.manifest").await.unwrap(), None);

    let a = f.backend.chunks[&f.chunk_a].clone();
    let b = f.backend.chunks[&f.chunk_b].clone();
    let unknown = ChunkId([0xee; 32]);
    let ranges = [
        ChunkRange::whole(f.chunk_a),
        ChunkRange { id: f.chunk_a, offset: 100, length: 50 },
        ChunkRange { id: f.chunk_b, offset: 990, length: 0 },
        ChunkRange { id: f.chunk_b, offset: 990, length: 11 }, // one byte past the end
        ChunkRange { id: f.chunk_b, offset: 1001, length: 0 }, // offset past the end
        ChunkRange::whole(unknown),
        ChunkRange::whole(f.busy),
    ];
    let batch = client.get_chunks(&ranges).await.unwrap();
    let items: Vec<_> = batch.items().iter().collect();
    assert_eq!(items.len(), ranges.len());
    assert_eq!(items[0].status, ChunkStatus::Ok(&a[..]));
    assert!(f.chunk_a.matches(match items[0].status {
        ChunkStatus::Ok(bytes) => bytes,
        _ => unreachable!(),
    }));
    assert_eq!(items[1].status, ChunkStatus::Ok(&a[100..150]));
    assert_eq!(items[2].status, ChunkStatus::Ok(&b[990..]));
    assert_eq!(items[3].status, ChunkStatus::NotFound);
    assert_eq!(items[4].status, ChunkStatus::NotFound);
    assert_eq!(items[5].status, ChunkStatus::NotFound);
    assert_eq!(items[6].status, ChunkStatus::Busy);

    client.report_status(b"signed status v1").await.unwrap();
    assert!(f.backend.statuses.lock().unwrap().iter().any(|(_, body)| body == b"signed status v1"));
}

/// A `GetChunks` frame with 300 ranges: well-framed, 12 KiB, above `MAX_RANGES`.
fn three_hundred_ranges() -> Vec<u8> {
    let count: u16 = 300;
    let body_len = 1 + 2 + usize::from(count) * 40;
    let mut frame = (body_len as u32).to_le_bytes().to_vec();
    frame.push(0x03);
    frame.extend_from_slice(&count.to_le_bytes());
    frame.resize(FRAME_HEADER_BYTES + body_len, 0);
    frame
}

fn expect_error(body: &[u8], code: ErrorCode) {
    assert_eq!(ResponseView::parse(body).unwrap(), Response::Error { code });
}

mod fetch {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_serves_metadata_targets_and_chunk_ranges() {
        let f = start(localhost_config()).await;
        let mut client = quic(&f).await;
        timeout(WAIT, fetch_everything(&f, &mut client)).await.unwrap();
        assert!(f.metrics.bytes_out_devices.load(Relaxed) > 64 * 1024);
        assert!(f.metrics.cache_hits.load(Relaxed) >= 5);
        assert!(f.metrics.cache_misses.load(Relaxed) >= 1);
        assert_eq!(f.metrics.devices.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_serves_metadata_targets_and_chunk_ranges() {
        let f = start(localhost_config()).await;
        let mut client = tcp(&f).await;
        timeout(WAIT, fetch_everything(&f, &mut client)).await.unwrap();
        assert!(f.metrics.bytes_out_devices.load(Relaxed) > 64 * 1024);
        assert_eq!(f.metrics.devices.load(Relaxed), 1);
    }

    /// Fetches 16 MiB of chunk batches over `client` and returns the average size of the
    /// datagrams it received.
    async fn datagram_bytes_after_bulk(f: &Fixture, client: &mut DeviceClient) -> u64 {
        let batch = vec![ChunkRange::whole(f.chunk_a); 64];
        for _ in 0..4 {
            let got = timeout(WAIT, client.get_chunks(&batch)).await.unwrap().unwrap();
            assert_eq!(got.items().iter().count(), 64);
        }
        client.quic_received_datagram_bytes().expect("a QUIC client")
    }

    /// MTU discovery takes the device path past one Ethernet frame where the path allows
    /// (loopback does): the device advertises QUIC_MAX_DATAGRAM_BYTES, the node probes up to
    /// it, and nothing is lost on the way. Ten-datagram GSO batches of 8,952 bytes were
    /// dropped silently, and the connection fell to 1,200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_datagrams_grow_past_an_ethernet_frame() {
        let f = start(localhost_config()).await;
        let mut client = quic(&f).await;
        let datagram = datagram_bytes_after_bulk(&f, &mut client).await;
        let max = u64::from(edge_client::QUIC_MAX_DATAGRAM_BYTES);
        assert!(datagram > max * 9 / 10 && datagram <= max, "datagrams of {datagram} bytes on average");
    }

    /// An operator's bound holds (and is not quinn's default by accident).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_datagrams_stay_within_the_configured_bound() {
        let f = start(DeviceServiceConfig { quic_max_datagram_bytes: 3000, ..localhost_config() }).await;
        let mut client = quic(&f).await;
        let datagram = datagram_bytes_after_bulk(&f, &mut client).await;
        assert!(datagram > 2700 && datagram <= 3000, "datagrams of {datagram} bytes on average");
    }

    /// QUIC: each request has its own stream, so a refused request leaves the connection
    /// usable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_too_many_ranges_is_refused_and_connection_stays_usable() {
        let f = start(localhost_config()).await;
        let mut client = quic(&f).await;
        let body = timeout(WAIT, client.request_frame(&three_hundred_ranges())).await.unwrap().unwrap();
        expect_error(&body, ErrorCode::TOO_LARGE);
        assert!(client.get_metadata("timestamp.json").await.unwrap().is_some());
    }

    /// TCP: the frame was intact, so the server answers `Error(TOO_LARGE)` and keeps the
    /// connection (requests are read whole, so the next frame starts cleanly).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_too_many_ranges_is_refused_and_connection_stays_usable() {
        let f = start(localhost_config()).await;
        let mut client = tcp(&f).await;
        let body = timeout(WAIT, client.request_frame(&three_hundred_ranges())).await.unwrap().unwrap();
        expect_error(&body, ErrorCode::TOO_LARGE);
        assert!(client.get_metadata("timestamp.json").await.unwrap().is_some());
        // An unparseable (but framed) request: BAD_REQUEST, still usable.
        let body = client.request_frame(&[2, 0, 0, 0, 0x01, 0xff]).await.unwrap();
        expect_error(&body, ErrorCode::BAD_REQUEST);
        assert!(client.get_target("releases/gw/1.0.0.manifest").await.unwrap().is_some());
    }

    /// A length prefix above the request limit: answered `Error(TOO_LARGE)`, then closed,
    /// because skipping an arbitrary body to resynchronize is exactly what the limit forbids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_oversized_frame_is_refused_and_closed() {
        let f = start(localhost_config()).await;
        let mut stream = TcpStream::connect(f.addrs.tcp.unwrap()).await.unwrap();
        stream.write_all(&(limits::MAX_REQUEST_BYTES as u32 + 1).to_le_bytes()).await.unwrap();
        let mut reply = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut reply)).await.unwrap().unwrap();
        expect_error(&reply[FRAME_HEADER_BYTES..], ErrorCode::TOO_LARGE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_certificate_is_persisted_in_cert_dir() {
        let dir = tempfile::tempdir().unwrap();
        let config = DeviceServiceConfig { cert_dir: Some(dir.path().into()), ..localhost_config() };
        let first = start(config.clone()).await;
        let cert = std::fs::read(dir.path().join("device-quic-cert.der")).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("device-quic-key.der")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        drop(first);
        let second = start(config).await;
        assert_eq!(std::fs::read(dir.path().join("device-quic-cert.der")).unwrap(), cert);
        let mut client = quic(&second).await;
        assert!(client.get_metadata("1.root.json").await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_refuses_requests_over_the_limits_without_sending() {
        let f = start(localhost_config()).await;
        let mut client = tcp(&f).await;
        let ranges = vec![ChunkRange::whole(f.chunk_a); 257];
        assert!(matches!(client.get_chunks(&ranges).await, Err(ClientError::Request(_))));
        assert!(matches!(client.get_metadata("../secret").await, Err(ClientError::Request(_))));
        assert!(client.get_metadata("timestamp.json").await.unwrap().is_some());
    }

    /// A batch bigger than `max_response_bytes`: the items that fit are served, the rest are
    /// `Busy` (ask again), never a response over the limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_over_response_budget_answers_rest_busy() {
        let config = DeviceServiceConfig { max_response_bytes: 100 * 1024, ..localhost_config() };
        let f = start(config).await;
        let mut client = quic(&f).await;
        let ranges = [ChunkRange::whole(f.chunk_a), ChunkRange::whole(f.chunk_a), ChunkRange::whole(f.chunk_b)];
        let batch = timeout(WAIT, client.get_chunks(&ranges)).await.unwrap().unwrap();
        let statuses: Vec<_> = batch.items().iter().map(|i| i.status).collect();
        assert!(matches!(statuses[0], ChunkStatus::Ok(b) if b.len() == 64 * 1024));
        assert_eq!(statuses[1], ChunkStatus::Busy);
        assert!(matches!(statuses[2], ChunkStatus::Ok(b) if b.len() == 1000));
    }
}

mod limits_enforced {
    use super::*;

    /// Over `max_connections`, TCP devices get `Error(BUSY)` and EOF, QUIC devices a refused
    /// handshake; a freed slot is reusable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_are_refused() {
        let f = start(DeviceServiceConfig { max_connections: 2, ..localhost_config() }).await;
        // A completed request proves the server accepted (and counted) each connection.
        let mut first = tcp(&f).await;
        first.get_metadata("timestamp.json").await.unwrap();
        let mut second = quic(&f).await;
        second.get_metadata("timestamp.json").await.unwrap();
        assert_eq!(f.metrics.devices.load(Relaxed), 2);

        let mut refused = TcpStream::connect(f.addrs.tcp.unwrap()).await.unwrap();
        let mut reply = Vec::new();
        timeout(WAIT, refused.read_to_end(&mut reply)).await.unwrap().unwrap();
        expect_error(&reply[FRAME_HEADER_BYTES..], ErrorCode::BUSY);

        let quic_refused = timeout(WAIT, DeviceClient::connect_quic(f.addrs.quic.unwrap())).await.unwrap();
        assert!(matches!(quic_refused, Err(ClientError::Connect(_))), "{quic_refused:?}");

        // Free a slot; the server notices the close asynchronously, so retry until it has.
        drop(first);
        let reconnected = timeout(WAIT, async {
            loop {
                let mut client = tcp(&f).await;
                match client.get_metadata("timestamp.json").await {
                    Ok(_) => return client,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await;
        assert!(reconnected.is_ok());
        second.get_metadata("1.root.json").await.unwrap();
    }

    /// Slow loris: half a frame, then silence. The read deadline drops that client; another
    /// client is served throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_partial_frame_is_disconnected_by_read_deadline() {
        let config = DeviceServiceConfig { request_timeout: Duration::from_millis(300), ..localhost_config() };
        let f = start(config).await;
        let mut loris = TcpStream::connect(f.addrs.tcp.unwrap()).await.unwrap();
        let frame = Request::GetMetadata { name: "timestamp.json" }.to_frame().unwrap();
        loris.write_all(&frame[..frame.len() / 2]).await.unwrap();

        let mut honest = tcp(&f).await;
        let started = Instant::now();
        let loris_read = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loris.read(&mut buf).await
        });
        // Meanwhile the honest client keeps working, request after request.
        let served = timeout(WAIT, async {
            let mut served = 0;
            while !loris_read.is_finished() {
                assert!(honest.get_metadata("timestamp.json").await.unwrap().is_some());
                served += 1;
            }
            served
        })
        .await
        .expect("the stalled client was never disconnected");
        let read = loris_read.await.unwrap();
        // EOF (0) or a reset: either way the server dropped it, and sent no response.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(served > 0);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(honest.get_target("releases/gw/1.0.0.manifest").await.unwrap().is_some());
    }
}

/// Issue 9: hostile clients. Each test is named after the attack and failed before the fix.
mod hostile_clients {
    use super::*;

    const MIB: usize = 1 << 20;

    async fn with_big_chunk(config: DeviceServiceConfig) -> (Fixture, ChunkId) {
        let mut backend = MemBackend::default();
        let big = backend.add_chunk(pattern(MIB, 9));
        let backend = Arc::new(backend);
        let metrics = Arc::new(Metrics::default());
        let (addrs, task) = DeviceService::bind(config, backend.clone(), metrics.clone()).await.unwrap();
        (Fixture { addrs, task, backend, metrics, chunk_a: big, chunk_b: big, busy: big }, big)
    }

    /// Two 1 MiB chunks, the first one's reads held until the returned gate gets a permit.
    async fn with_gated_chunk(config: DeviceServiceConfig) -> (Fixture, ChunkId, ChunkId, Arc<tokio::sync::Semaphore>) {
        let mut backend = MemBackend::default();
        let slow = backend.add_chunk(pattern(MIB, 9));
        let other = backend.add_chunk(pattern(MIB, 10));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        backend.gate = Some((slow, gate.clone()));
        let backend = Arc::new(backend);
        let metrics = Arc::new(Metrics::default());
        let (addrs, task) = DeviceService::bind(config, backend.clone(), metrics.clone()).await.unwrap();
        (Fixture { addrs, task, backend, metrics, chunk_a: slow, chunk_b: other, busy: other }, slow, other, gate)
    }

    /// Waits (with a deadline) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A request that finds the response budget spent (a 3 MiB budget, 2 MiB of it held by
    /// a request whose read is stalled) is not answered Busy at once: it waits in line, and
    /// when the stalled request's answer is written and its memory returns, it is served in
    /// full.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_finds_the_budget_spent_waits_for_memory_and_is_served() {
        let config = DeviceServiceConfig { max_buffered_bytes: 3 * MIB, busy_wait: WAIT, ..localhost_config() };
        let (f, slow, other, gate) = with_gated_chunk(config).await;
        let (mut first, mut second) = (tcp(&f).await, tcp(&f).await);
        let held = tokio::spawn(async move { first.get_chunks(&[ChunkRange::whole(slow)]).await });
        until("the first request's read has started", || f.backend.gated_reads.load(Relaxed) == 1).await;
        let waiting = tokio::spawn(async move { second.get_chunks(&[ChunkRange::whole(other)]).await });
        until("the second request waits for memory", || f.metrics.device_requests_waiting.load(Relaxed) == 1).await;
        assert!(!waiting.is_finished(), "a waiting request must not have been answered");
        gate.add_permits(1);
        let first = timeout(WAIT, held).await.unwrap().unwrap().unwrap();
        assert_eq!(served_bytes(&first), (1, MIB, 0));
        let second = timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
        assert_eq!(served_bytes(&second), (1, MIB, 0), "served in full once the memory came back");
        assert_eq!(f.metrics.device_requests_waiting.load(Relaxed), 0);
    }

    /// A shared QUIC handle is another stream on the same connection, not another
    /// connection, and its request is answered while the first one's read is held: the agent
    /// keeps several batches in flight per edge this way. TCP handles do not share.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_quic_handles_carry_concurrent_requests_on_one_connection() {
        let (f, slow, other, gate) = with_gated_chunk(localhost_config()).await;
        let mut tcp_client = tcp(&f).await;
        tcp_client.get_metadata("timestamp.json").await.unwrap();
        assert!(tcp_client.share().is_none(), "a TCP connection carries one exchange at a time");
        drop(tcp_client);
        until("the TCP client has gone", || f.metrics.devices.load(Relaxed) == 0).await;
        let mut first = quic(&f).await;
        let mut second = first.share().expect("a QUIC client shares its connection");
        let held = tokio::spawn(async move { first.get_chunks(&[ChunkRange::whole(slow)]).await });
        until("the first request's read has started", || f.backend.gated_reads.load(Relaxed) == 1).await;
        let beside = timeout(WAIT, second.get_chunks(&[ChunkRange::whole(other)])).await.unwrap().unwrap();
        assert_eq!(served_bytes(&beside), (1, MIB, 0), "served while the first request is held");
        assert!(!held.is_finished(), "the first request must still be held at the gate");
        assert_eq!(f.metrics.devices.load(Relaxed), 1, "both handles must use one connection");
        gate.add_permits(1);
        let first = timeout(WAIT, held).await.unwrap().unwrap().unwrap();
        assert_eq!(served_bytes(&first), (1, MIB, 0));
    }

    /// The wait is bounded: memory that does not come back within `busy_wait` gets the
    /// request its `Busy`, as before, and the device asks again later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_waits_longer_than_busy_wait_is_answered_busy() {
        let config = DeviceServiceConfig {
            max_buffered_bytes: 3 * MIB,
            busy_wait: Duration::from_millis(100),
            ..localhost_config()
        };
        let (f, slow, other, gate) = with_gated_chunk(config).await;
        let (mut first, mut second) = (tcp(&f).await, tcp(&f).await);
        let held = tokio::spawn(async move { first.get_chunks(&[ChunkRange::whole(slow)]).await });
        until("the first request's read has started", || f.backend.gated_reads.load(Relaxed) == 1).await;
        let started = Instant::now();
        let refused = timeout(WAIT, second.get_chunks(&[ChunkRange::whole(other)])).await.unwrap().unwrap();
        assert_eq!(served_bytes(&refused), (0, 0, 1));
        assert!(started.elapsed() >= Duration::from_millis(100), "answered Busy before busy_wait passed");
        gate.add_permits(1);
        let first = timeout(WAIT, held).await.unwrap().unwrap().unwrap();
        assert_eq!(served_bytes(&first), (1, MIB, 0));
    }

    fn served_bytes(batch: &edge_node::device::ChunkBatch) -> (usize, usize, usize) {
        let (mut ok, mut bytes, mut busy) = (0, 0, 0);
        for item in batch.items().iter() {
            match item.status {
                ChunkStatus::Ok(b) => {
                    ok += 1;
                    bytes += b.len();
                }
                ChunkStatus::Busy => busy += 1,
                ChunkStatus::NotFound => {}
            }
        }
        (ok, bytes, busy)
    }

    /// One 1 MiB chunk named 256 times (as `length = 0` ranges, i.e. the whole chunk): the
    /// request is sized before reading, so the chunk is read once (not 256 times) and the
    /// response carries what fits the per-request limit, the rest Busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_naming_one_chunk_256_times_is_sized_before_reading() {
        let (f, big) = with_big_chunk(localhost_config()).await;
        let mut client = tcp(&f).await;
        let ranges = vec![ChunkRange { id: big, offset: 0, length: 0 }; 256];
        let batch = timeout(WAIT, client.get_chunks(&ranges)).await.unwrap().unwrap();
        let (ok, bytes, busy) = served_bytes(&batch);
        assert_eq!((ok, busy), (8, 248));
        assert_eq!(bytes, 8 * MIB);
        assert_eq!(f.backend.read_bytes.load(Relaxed), MIB as u64, "the chunk must be read once");
    }

    /// The same attack against a small global budget (3 MiB): the read and the frame are
    /// both charged before anything is read, so one copy is served and no more than the
    /// budget is ever read; when the response is gone the budget is whole again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_heavy_request_reads_no_more_than_the_memory_budget() {
        let config = DeviceServiceConfig { max_buffered_bytes: 3 * MIB, ..localhost_config() };
        let (f, big) = with_big_chunk(config).await;
        // TCP answers strictly in order and releases an answer's budget once it is written,
        // so each round starts with the whole budget free.
        let mut client = tcp(&f).await;
        let ranges = vec![ChunkRange::whole(big); 256];
        for round in 1..=3u64 {
            let batch = timeout(WAIT, client.get_chunks(&ranges)).await.unwrap().unwrap();
            let (ok, bytes, busy) = served_bytes(&batch);
            // 1 MiB read + 1 MiB in the frame fit 3 MiB; a second copy would not.
            assert_eq!((ok, bytes, busy), (1, MIB, 255), "round {round}");
            assert_eq!(f.backend.read_bytes.load(Relaxed), round * MIB as u64);
        }
    }

    /// One address opening more connections than `max_connections_per_client` is refused
    /// (TCP: `Error(BUSY)` then EOF; QUIC: refused handshake) while another address
    /// (127.0.0.2, also loopback) still connects and is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_over_the_per_address_connection_cap_is_refused_while_another_address_connects() {
        let f = start(DeviceServiceConfig { max_connections_per_client: 2, ..localhost_config() }).await;
        let mut first = tcp(&f).await;
        first.get_metadata("timestamp.json").await.unwrap();
        let mut second = quic(&f).await;
        second.get_metadata("timestamp.json").await.unwrap();

        let mut refused = TcpStream::connect(f.addrs.tcp.unwrap()).await.unwrap();
        let mut reply = Vec::new();
        timeout(WAIT, refused.read_to_end(&mut reply)).await.unwrap().unwrap();
        expect_error(&reply[FRAME_HEADER_BYTES..], ErrorCode::BUSY);
        let quic_refused = timeout(WAIT, DeviceClient::connect_quic(f.addrs.quic.unwrap())).await.unwrap();
        assert!(matches!(quic_refused, Err(ClientError::Connect(_))), "{quic_refused:?}");
        assert_eq!(f.metrics.device_connections_refused.load(Relaxed), 2);

        // Another host: its own slots.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = timeout(WAIT, socket.connect(f.addrs.tcp.unwrap())).await.unwrap().unwrap();
        let frame = Request::GetMetadata { name: "timestamp.json" }.to_frame().unwrap();
        other.write_all(&frame).await.unwrap();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        timeout(WAIT, other.read_exact(&mut header)).await.unwrap().unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        other.read_exact(&mut body).await.unwrap();
        assert_eq!(ResponseView::parse(&body).unwrap(), Response::Bytes(&f.backend.metadata["timestamp.json"][..]));
        // The first host's connections still work.
        assert!(first.get_metadata("1.root.json").await.unwrap().is_some());
        assert!(second.get_metadata("1.root.json").await.unwrap().is_some());
    }
}

mod load {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// 200 devices at once (half TCP, half QUIC), each fetching a few chunks. Asserts
    /// correctness; prints time and memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_concurrent_clients_fetch_chunks() {
        // 200 devices, all from 127.0.0.1: lift the per-address cap meant for real LANs.
        let config = DeviceServiceConfig { max_connections_per_client: 512, ..localhost_config() };
        let f = Arc::new(start(config).await);
        let rss_before = rss_kib();
        let started = Instant::now();
        let mut clients = Vec::new();
        for i in 0..200 {
            let f = f.clone();
            clients.push(tokio::spawn(async move {
                let mut client = if i % 2 == 0 { tcp(&f).await } else { quic(&f).await };
                for _ in 0..3 {
                    let ranges = [
                        ChunkRange::whole(f.chunk_a),
                        ChunkRange { id: f.chunk_b, offset: i, length: 10 },
                        ChunkRange::whole(f.chunk_b),
                    ];
                    let batch = client.get_chunks(&ranges).await.unwrap();
                    let items: Vec<_> = batch.items().iter().collect();
                    let b = &f.backend.chunks[&f.chunk_b];
                    assert_eq!(items[0].status, ChunkStatus::Ok(&f.backend.chunks[&f.chunk_a][..]));
                    assert_eq!(items[1].status, ChunkStatus::Ok(&b[i as usize..i as usize + 10]));
                    assert_eq!(items[2].status, ChunkStatus::Ok(&b[..]));
                }
                client
            }));
        }
        let mut held = Vec::new();
        for client in clients {
            held.push(timeout(Duration::from_secs(120), client).await.unwrap().unwrap());
        }
        let elapsed = started.elapsed();
        assert_eq!(f.metrics.devices.load(Relaxed), 200);
        println!(
            "200 concurrent clients x 3 batches (~196 KiB each): {:.2?}, RSS {} MiB -> {} MiB",
            elapsed,
            rss_before / 1024,
            rss_kib() / 1024
        );
    }

    /// One QUIC client fetching 256 MiB as 4 MiB batches of 256 KiB chunks. Prints MiB/s;
    /// run with `cargo test --release -p edge-node --test device_service -- --nocapture
    /// throughput`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_quic_256_mib_in_4_mib_batches() {
        let mut backend = MemBackend::default();
        let ids: Vec<ChunkId> = (0..16).map(|i| backend.add_chunk(pattern(256 * 1024, i))).collect();
        let backend = Arc::new(backend);
        let metrics = Arc::new(Metrics::default());
        let (addrs, task) = DeviceService::bind(localhost_config(), backend.clone(), metrics).await.unwrap();
        let mut client = quic_at(addrs.quic.unwrap()).await;
        let ranges: Vec<ChunkRange> = ids.iter().map(|id| ChunkRange::whole(*id)).collect();

        // Verify one batch fully, outside the timed loop.
        let batch = client.get_chunks(&ranges).await.unwrap();
        assert!(batch.items().iter().all(|item| matches!(item.status, ChunkStatus::Ok(b) if item.id.matches(b))));

        let total: usize = 256 * 1024 * 1024;
        let started = Instant::now();
        let mut received = 0usize;
        while received < total {
            let batch = timeout(WAIT, client.get_chunks(&ranges)).await.unwrap().unwrap();
            for item in batch.items().iter() {
                match item.status {
                    ChunkStatus::Ok(bytes) => received += bytes.len(),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "throughput: QUIC, 1 client, {} MiB in 4 MiB batches of 256 KiB chunks: {:.2} s, {:.0} MiB/s",
            received >> 20,
            secs,
            (received >> 20) as f64 / secs
        );
        task.abort();
    }

    async fn quic_at(addr: SocketAddr) -> DeviceClient {
        timeout(WAIT, DeviceClient::connect_quic(addr)).await.unwrap().unwrap()
    }
}
