//! Many devices at once against a running edge node's device service (its own process, e.g.
//! `edge-node run`): each client connects, fetches the release manifest through the device
//! service, then fetches its share of the release's chunks and verifies every chunk against
//! its id. Prints one line of JSON: clients, bytes, seconds, aggregate MiB/s, Busy retries.
//!
//! `device_load --quic ADDR --target releases/NAME/VERSION.manifest [--clients 200]
//!  [--mib-per-client 32] [--in-flight 2]`
//!
//! Client i starts at chunk i * (chunks / clients) and wraps around, so together the clients
//! touch the whole release and the edge node serves many different chunks at once.

use edge_node::device::{ClientError, DeviceClient};
use protocol::manifest::ManifestView;
use protocol::wire::{device::ChunkStatus, ChunkRange};
use protocol::ChunkId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes per request (the device service allows 8 MiB).
const BATCH_BYTES: u64 = 4 << 20;
/// Most chunks per request.
const BATCH_CHUNKS: usize = 64;

struct Args {
    quic: SocketAddr,
    target: String,
    clients: usize,
    mib_per_client: u64,
    in_flight: usize,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        quic: "127.0.0.1:4433".parse().unwrap(),
        target: String::new(),
        clients: 200,
        mib_per_client: 32,
        in_flight: 2,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--quic" => a.quic = value.parse().expect("--quic ADDR"),
            "--target" => a.target = value,
            "--clients" => a.clients = value.parse().expect("--clients N"),
            "--mib-per-client" => a.mib_per_client = value.parse().expect("--mib-per-client N"),
            "--in-flight" => a.in_flight = value.parse().expect("--in-flight N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.target.is_empty(), "--target releases/NAME/VERSION.manifest");
    a
}

async fn connect(addr: SocketAddr) -> DeviceClient {
    // 200 handshakes at once on two cores can take a while; retry refusals (connection limit).
    for attempt in 0.. {
        match DeviceClient::connect_quic(addr).await {
            Ok(client) => return client,
            Err(e) if attempt < 50 => {
                eprintln!("connect failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
    unreachable!()
}

/// Fetches `wanted` (id, stored length) pairs, verifying each chunk; Busy items are asked
/// for again. Returns verified bytes.
async fn fetch(client: &mut DeviceClient, wanted: Vec<(ChunkId, u32)>, in_flight: usize, busy: &AtomicU64) -> u64 {
    let mut bytes = 0u64;
    let mut todo = wanted;
    while !todo.is_empty() {
        let mut batches: Vec<Vec<ChunkRange>> = Vec::new();
        let mut current: Vec<ChunkRange> = Vec::new();
        let mut current_bytes = 0u64;
        for (id, len) in &todo {
            if !current.is_empty() && (current.len() >= BATCH_CHUNKS || current_bytes + u64::from(*len) > BATCH_BYTES) {
                batches.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current.push(ChunkRange { id: *id, offset: 0, length: 0 });
            current_bytes += u64::from(*len);
        }
        batches.push(current);
        let lens: std::collections::HashMap<ChunkId, u32> = todo.iter().copied().collect();
        let mut again = Vec::new();
        let result = client
            .get_chunks_pipelined(&batches, in_flight, |_, batch| {
                for item in batch.items().iter() {
                    match item.status {
                        ChunkStatus::Ok(data) => {
                            if !item.id.matches(data) {
                                return Err(ClientError::Unexpected("chunk failed verification"));
                            }
                            bytes += data.len() as u64;
                        }
                        ChunkStatus::Busy => again.push((item.id, lens[&item.id])),
                        ChunkStatus::NotFound => return Err(ClientError::Unexpected("chunk not found")),
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            panic!("fetch failed: {e}");
        }
        if !again.is_empty() {
            busy.fetch_add(again.len() as u64, Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        todo = again;
    }
    bytes
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut first = connect(a.quic).await;
    let manifest = first.get_target(&a.target).await.expect("manifest request").expect("manifest not found");
    let view = ManifestView::new_checked(&manifest).expect("manifest does not decode");
    let chunks: Vec<(ChunkId, u32)> = view.chunks().map(|c| (c.id, c.stored_length)).collect();
    drop(first);
    let chunks = Arc::new(chunks);
    let busy = Arc::new(AtomicU64::new(0));
    let stride = (chunks.len() / a.clients.max(1)).max(1);
    let per_client = a.mib_per_client << 20;

    // Connect everyone first, then start together: the figure is transfer, not handshakes.
    let t_connect = Instant::now();
    let mut clients = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        clients.push(tokio::spawn(connect(a.quic)));
    }
    let mut connected = Vec::with_capacity(a.clients);
    for c in clients {
        connected.push(c.await.expect("connect task"));
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.clients);
    for (i, mut client) in connected.into_iter().enumerate() {
        let (chunks, busy) = (chunks.clone(), busy.clone());
        let in_flight = a.in_flight;
        tasks.push(tokio::spawn(async move {
            let mut wanted = Vec::new();
            let mut total = 0u64;
            let mut index = i * stride;
            while total < per_client {
                let (id, len) = chunks[index % chunks.len()];
                wanted.push((id, len));
                total += u64::from(len);
                index += 1;
            }
            fetch(&mut client, wanted, in_flight, &busy).await
        }));
    }
    let mut bytes = 0u64;
    for t in tasks {
        bytes += t.await.expect("client task");
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "clients": a.clients,
            "connect_secs": connect_secs,
            "mib": bytes as f64 / (1 << 20) as f64,
            "secs": secs,
            "mib_s": bytes as f64 / (1 << 20) as f64 / secs,
            "busy_retries": busy.load(Relaxed),
            "client_peak_rss_mib": peak_rss_mib(),
        })
    );
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .map_or(0.0, |kb: f64| kb / 1024.0)
}
