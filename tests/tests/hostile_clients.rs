//! Issue 9 item 2: a hostile LAN client against a real `edge-node` process. The client does
//! its best to make the node buffer memory: TCP connections from 63 addresses, as many per
//! address as it is allowed and more, each pipelining `GetChunks` requests that name one
//! 1 MiB chunk 256 times (`length = 0`: the whole chunk) and never reading a response; plus,
//! from the 64th address, QUIC connections keeping 16 such requests in flight each (these
//! read, as fast as loopback allows; once the TCP connections hold the whole budget, until
//! their response timeout, the QUIC ones are answered Busy).
//!
//! The node runs with `--device-max-buffered-bytes 64MiB`; its peak RSS (VmHWM from
//! /proc/PID/status) must stay within that budget plus [`FIXED_OVERHEAD_MIB`] (measured:
//! 108-114 MiB), and come back down once the client has gone. Before requests were sized,
//! the same load (default 256 MiB budget, no per-address cap) took the node from 38 MiB to
//! 4295 MiB: every request read all 256 copies before it was sized.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::wire::{device::Request, ChunkRange};
use protocol::ChunkId;
use support::{eventually, http_get, random_bytes, stored_chunks, Edge, Origin};
use tokio::io::AsyncWriteExt;

/// The node's device-service memory budget in this test.
const BUDGET_MIB: u64 = 64;
/// What the node needs besides the budget: runtime and threads, libp2p, sled, QUIC and TCP
/// buffers, the verified-id set, allocator slack. Measured idle (after fetching the release)
/// at 31-55 MiB in a debug build.
const FIXED_OVERHEAD_MIB: u64 = 96;
/// How close to its peak before the attack the node's RSS must come once the client is gone.
const RETURNED_WITHIN_MIB: u64 = 48;
/// Source addresses of the hostile TCP connections (127.0.0.2 ..= 127.0.0.64, loopback);
/// the QUIC connections come from 127.0.0.1.
const TCP_ADDRESSES: u8 = 63;
/// The node's cap per address in this test, and what the client tries.
const CAP_PER_ADDRESS: usize = 8;
const TRIED_PER_ADDRESS: usize = 10;
/// `GetChunks` requests each TCP connection writes without ever reading.
const REQUESTS_PER_CONNECTION: usize = 4;
/// Requests each QUIC connection keeps in flight (the node's stream limit).
const QUIC_IN_FLIGHT: usize = 16;
/// How long the load is kept up once every connection the node admits is open.
const LOAD_SECS: u64 = 8;

/// A field of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A counter or gauge from the node's `/metrics`.
fn metric(edge: &Edge, name: &str) -> u64 {
    let text = http_get(edge.http, "/metrics").map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// 256 copies of one chunk, `length = 0`.
fn duplicate_heavy(chunk: ChunkId) -> Vec<ChunkRange> {
    vec![ChunkRange { id: chunk, offset: 0, length: 0 }; 256]
}

/// Opens `TRIED_PER_ADDRESS` connections from each address and writes the hostile requests
/// on each; returns the open streams (never read) and how many connects failed outright.
async fn attack_tcp(target: SocketAddr, chunks: &[ChunkId]) -> (Vec<tokio::net::TcpStream>, usize) {
    let mut streams = Vec::new();
    let mut failed = 0;
    for a in 2..=TCP_ADDRESSES + 1 {
        for c in 0..TRIED_PER_ADDRESS {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            // A tiny receive window: the node's answers stay on its side.
            let _ = socket.set_recv_buffer_size(4096);
            socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, a), 0))).unwrap();
            let Ok(mut stream) = socket.connect(target).await else {
                failed += 1;
                continue;
            };
            let ranges = duplicate_heavy(chunks[(usize::from(a) + c) % chunks.len()]);
            let frame = Request::GetChunks { ranges: protocol::wire::device::ChunkRanges::from_slice(&ranges) }
                .to_frame()
                .unwrap();
            for _ in 0..REQUESTS_PER_CONNECTION {
                // Refused connections are closed by the node; that is its answer.
                if stream.write_all(&frame).await.is_err() {
                    break;
                }
            }
            streams.push(stream);
        }
    }
    (streams, failed)
}

/// One QUIC connection from 127.0.0.1 keeping `QUIC_IN_FLIGHT` duplicate-heavy requests in
/// flight until `stop`; adds the chunk bytes it received to `received`.
async fn attack_quic(target: SocketAddr, chunk: ChunkId, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) {
    let Ok(mut client) = edge_node::device::DeviceClient::connect_quic(target).await else { return };
    let batches = vec![duplicate_heavy(chunk); 4 * QUIC_IN_FLIGHT];
    while !stop.load(Relaxed) {
        let result = client
            .get_chunks_pipelined(&batches, QUIC_IN_FLIGHT, |_, batch| {
                for item in batch.items().iter() {
                    if let protocol::wire::device::ChunkStatus::Ok(bytes) = item.status {
                        received.fetch_add(bytes.len() as u64, Relaxed);
                    }
                }
                Ok(())
            })
            .await;
        if result.is_err() {
            return;
        }
    }
}

#[test]
fn a_hostile_client_never_reading_duplicate_heavy_batches_keeps_the_node_within_its_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    let edge = Edge::start_with(
        "edge",
        &dir.path().join("edge"),
        "site-a",
        &[origin.addr.as_str()],
        &[
            "--device-max-buffered-bytes",
            &format!("{BUDGET_MIB}MiB"),
            "--max-connections-per-client",
            &CAP_PER_ADDRESS.to_string(),
        ],
    );
    let image = dir.path().join("v1.img");
    std::fs::write(&image, random_bytes(16 << 20, 91)).unwrap();
    origin.publish_with(&image, "1.0.0", &["--chunking", "fixed:1M"]);
    eventually("the edge to hold 1.0.0", Duration::from_secs(120), || edge.has_release("1.0.0").then_some(()));
    let chunks = stored_chunks(&edge.data_dir);
    assert!(chunks.len() >= 16, "{} chunks stored", chunks.len());

    let pid = edge.proc.pid();
    let (idle_rss, idle_hwm) = (proc_status_kib(pid, "VmRSS:"), proc_status_kib(pid, "VmHWM:"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let (stop, quic_bytes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let quic: Vec<_> = (0..CAP_PER_ADDRESS)
        .map(|i| {
            runtime.spawn(attack_quic(edge.device_quic, chunks[i % chunks.len()], stop.clone(), quic_bytes.clone()))
        })
        .collect();
    // QUIC first, so its streams are being served (and held in quinn's send buffers) when
    // the TCP connections that never read take the rest of the budget.
    eventually("the QUIC connections to be served", Duration::from_secs(60), || {
        (quic_bytes.load(Relaxed) >= 64 << 20).then_some(())
    });
    let (streams, failed) = runtime.block_on(attack_tcp(edge.device_tcp, &chunks));
    let admitted = (usize::from(TCP_ADDRESSES) + 1) * CAP_PER_ADDRESS;
    eventually("every admitted hostile connection to be open", Duration::from_secs(60), || {
        (metric(&edge, "otamesh_edge_devices") as usize >= admitted).then_some(())
    });
    // Keep the load up for a while; the peak (VmHWM) only grows.
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECS);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = proc_status_kib(pid, "VmHWM:");
    let devices = metric(&edge, "otamesh_edge_devices") as usize;
    let refused = metric(&edge, "otamesh_edge_device_connections_refused_total");
    let hits = metric(&edge, "otamesh_edge_cache_hits_total");
    stop.store(true, Relaxed);
    println!(
        "hostile client: {} TCP connections attempted ({failed} connect failures) + {CAP_PER_ADDRESS} QUIC, \
         {devices} admitted, {refused} refused, {hits} cache hits, {} MiB received over QUIC; node RSS idle \
         {} MiB (peak so far {} MiB) -> peak {} MiB under load (budget {BUDGET_MIB} MiB + overhead \
         {FIXED_OVERHEAD_MIB} MiB), {:.1?}",
        usize::from(TCP_ADDRESSES) * TRIED_PER_ADDRESS,
        quic_bytes.load(Relaxed) >> 20,
        idle_rss / 1024,
        idle_hwm / 1024,
        hwm / 1024,
        started.elapsed()
    );
    assert_eq!(devices, admitted);
    assert!(
        refused >= (usize::from(TCP_ADDRESSES) * (TRIED_PER_ADDRESS - CAP_PER_ADDRESS)) as u64,
        "{refused} refused"
    );
    assert!(hits > 0, "the node served nothing: the load did not reach it");
    assert!(
        hwm / 1024 <= BUDGET_MIB + FIXED_OVERHEAD_MIB,
        "peak RSS {} MiB is over the budget {BUDGET_MIB} MiB + {FIXED_OVERHEAD_MIB} MiB",
        hwm / 1024
    );
    for task in quic {
        task.abort();
    }
    // The client goes away: the node gives the memory back (before, glibc kept ~2.4 GiB).
    drop(streams);
    let after = eventually("the node's RSS to come back down", Duration::from_secs(60), || {
        let rss = proc_status_kib(pid, "VmRSS:");
        (rss / 1024 <= idle_hwm / 1024 + RETURNED_WITHIN_MIB).then_some(rss)
    });
    println!("node RSS after the client left: {} MiB", after / 1024);
}
