//! Issue 9 item 2: a hostile LAN client against a real `edge-node` process. The client does
//! its best to make the node buffer memory: connections from 64 addresses, as many per
//! address as it is allowed and more, each pipelining `GetChunks` requests that name one
//! 1 MiB chunk 256 times (`length = 0`: the whole chunk), and it never reads a response.
//!
//! The node runs with `--device-max-buffered-bytes 64MiB`; its peak RSS (VmHWM from
//! /proc/PID/status) must stay within that budget plus [`FIXED_OVERHEAD_MIB`]; measured:
//! 55 MiB idle, 114 MiB peak. Before requests were sized, the same load (default 256 MiB
//! budget, no per-address cap) took the node from 45 MiB to 3188 MiB: every request read all
//! 256 copies before it was sized.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use protocol::device_wire::{ChunkRange, Request};
use protocol::ChunkId;
use support::{eventually, http_get, random_bytes, Edge, Origin};
use tokio::io::AsyncWriteExt;

/// The node's device-service memory budget in this test.
const BUDGET_MIB: u64 = 64;
/// What the node needs besides the budget: runtime and threads, libp2p, sled, QUIC and TCP
/// buffers, the verified-id set, allocator slack. Measured idle (after fetching the release)
/// at about 55 MiB in a debug build.
const FIXED_OVERHEAD_MIB: u64 = 96;
/// Source addresses the hostile client uses (127.0.0.1 ..= 127.0.0.64, all loopback).
const ADDRESSES: u8 = 64;
/// The node's cap per address in this test, and what the client tries.
const CAP_PER_ADDRESS: usize = 8;
const TRIED_PER_ADDRESS: usize = 10;
/// `GetChunks` requests each connection writes without ever reading.
const REQUESTS_PER_CONNECTION: usize = 4;
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

/// Chunk ids in a node's store (file names).
fn stored_chunks(data_dir: &Path) -> Vec<ChunkId> {
    let mut ids = Vec::new();
    for fanout in std::fs::read_dir(data_dir.join("chunks")).unwrap().flatten() {
        for file in std::fs::read_dir(fanout.path()).unwrap().flatten() {
            if let Ok(id) = ChunkId::from_hex(&file.file_name().to_string_lossy()) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Opens `TRIED_PER_ADDRESS` connections from each address and writes the hostile requests
/// on each; returns the open streams (never read) and how many connects failed outright.
async fn attack(target: SocketAddr, chunks: &[ChunkId]) -> (Vec<tokio::net::TcpStream>, usize) {
    let mut streams = Vec::new();
    let mut failed = 0;
    for a in 1..=ADDRESSES {
        for c in 0..TRIED_PER_ADDRESS {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            // A tiny receive window: the node's answers stay on its side.
            let _ = socket.set_recv_buffer_size(4096);
            socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, a), 0))).unwrap();
            let Ok(mut stream) = socket.connect(target).await else {
                failed += 1;
                continue;
            };
            let chunk = chunks[(usize::from(a) + c) % chunks.len()];
            let ranges = vec![ChunkRange { id: chunk, offset: 0, length: 0 }; 256];
            let frame = Request::GetChunks { ranges: protocol::device_wire::ChunkRanges::from_slice(&ranges) }
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
    let (streams, failed) = runtime.block_on(attack(edge.device_tcp, &chunks));
    let admitted = usize::from(ADDRESSES) * CAP_PER_ADDRESS;
    eventually("every admitted hostile connection to be open", Duration::from_secs(60), || {
        (metric(&edge, "otamesh_edge_devices") as usize >= admitted).then_some(())
    });
    // Keep the load up, sampling the peak (VmHWM only grows; sampling shows the course).
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECS);
    while Instant::now() < deadline {
        peak_rss = peak_rss.max(proc_status_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = proc_status_kib(pid, "VmHWM:");
    let refused = metric(&edge, "otamesh_edge_device_connections_refused_total");
    let hits = metric(&edge, "otamesh_edge_cache_hits_total");
    println!(
        "hostile client: {} connections attempted ({} connect failures), {} admitted, {refused} refused, \
         {hits} cache hits; node RSS idle {} MiB (peak so far {} MiB) -> peak {} MiB under load \
         (budget {BUDGET_MIB} MiB + overhead {FIXED_OVERHEAD_MIB} MiB), {:.1?}",
        usize::from(ADDRESSES) * TRIED_PER_ADDRESS,
        failed,
        metric(&edge, "otamesh_edge_devices"),
        idle_rss / 1024,
        idle_hwm / 1024,
        hwm / 1024,
        started.elapsed()
    );
    assert_eq!(metric(&edge, "otamesh_edge_devices") as usize, admitted);
    assert!(refused >= (usize::from(ADDRESSES) * (TRIED_PER_ADDRESS - CAP_PER_ADDRESS)) as u64, "{refused} refused");
    assert!(hits > 0, "the node served nothing: the load did not reach it");
    assert!(
        hwm / 1024 <= BUDGET_MIB + FIXED_OVERHEAD_MIB,
        "peak RSS {} MiB is over the budget {BUDGET_MIB} MiB + {FIXED_OVERHEAD_MIB} MiB",
        hwm / 1024
    );
    drop(streams);
}
