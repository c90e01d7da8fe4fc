//! Device-service throughput: chunks served from a real on-disk store (each body re-verified
//! on read, as the daemon does) to device clients that verify each chunk against its id.
//!
//! `cargo run --release -p edge-node --example bench_device -- DIR MIB CLIENTS`
//! writes DIR/image.bin (the same bytes, for an nginx baseline) and DIR/store, then prints one
//! line of JSON: single-client QUIC and TCP MiB/s, the CLIENTS-way aggregate and peak RSS.

use edge_node::device::{ChunkLookup, DeviceBackend, DeviceClient, DeviceService, DeviceServiceConfig};
use edge_node::metrics::Metrics;
use edge_node::store::ChunkStore;
use protocol::device_wire::{ChunkRange, ChunkStatus};
use protocol::ChunkId;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

const CHUNK_BYTES: usize = 256 * 1024;
const BATCH_CHUNKS: usize = 16; // 4 MiB per request

struct StoreBackend(ChunkStore);

impl DeviceBackend for StoreBackend {
    async fn metadata(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    async fn target(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    async fn chunk(&self, id: ChunkId) -> ChunkLookup {
        let store = self.0.clone();
        match tokio::task::spawn_blocking(move || store.get(&id, 1 << 22)).await {
            Ok(Ok(bytes)) => ChunkLookup::Found(bytes),
            _ => ChunkLookup::Missing,
        }
    }
    async fn report_status(&self, _: SocketAddr, _: Vec<u8>) {}
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn fetch(mut client: DeviceClient, ids: &[ChunkId]) -> u64 {
    let mut bytes = 0u64;
    for batch in ids.chunks(BATCH_CHUNKS) {
        let ranges: Vec<ChunkRange> = batch.iter().map(|id| ChunkRange { id: *id, offset: 0, length: 0 }).collect();
        let response = client.get_chunks(&ranges).await.expect("batch");
        for item in response.items().iter() {
            let ChunkStatus::Ok(data) = item.status else { panic!("chunk not served") };
            assert!(item.id.matches(data), "chunk failed verification");
            bytes += data.len() as u64;
        }
    }
    bytes
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let mib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let clients: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);
    std::fs::create_dir_all(&dir).unwrap();
    let store = ChunkStore::open(&dir.join("store")).unwrap();
    let mut image = std::fs::File::create(dir.join("image.bin")).unwrap();
    let mut ids = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut batch: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    for _ in 0..(mib << 20) / CHUNK_BYTES {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        image.write_all(&chunk).unwrap();
        let id = ChunkId::of(&chunk);
        ids.push(id);
        batch.push((id, chunk));
        if batch.len() == 64 {
            store.put_batch(&batch.iter().map(|(i, b)| (*i, b.as_slice())).collect::<Vec<_>>()).unwrap();
            batch.clear();
        }
    }
    store.put_batch(&batch.iter().map(|(i, b)| (*i, b.as_slice())).collect::<Vec<_>>()).unwrap();
    image.sync_all().unwrap();

    let config = DeviceServiceConfig {
        quic_addr: Some("127.0.0.1:0".parse().unwrap()),
        tcp_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    let (addrs, _task) = DeviceService::bind(config, Arc::new(StoreBackend(store)), metrics).await.unwrap();
    let (quic, tcp) = (addrs.quic.unwrap(), addrs.tcp.unwrap());

    let mut single = Vec::new();
    for (name, client) in [
        ("quic", DeviceClient::connect_quic(quic).await.unwrap()),
        ("tcp", DeviceClient::connect_tcp(tcp).await.unwrap()),
    ] {
        let t0 = Instant::now();
        let bytes = fetch(client, &ids).await;
        let secs = t0.elapsed().as_secs_f64();
        single.push((name, bytes as f64 / (1 << 20) as f64 / secs));
    }

    // `clients` devices at once, each fetching its own slice of the release over QUIC.
    let rss_before = peak_rss_mib();
    let per_client = (ids.len() / clients).max(1);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let slice: Vec<ChunkId> = ids.iter().cycle().skip(c * per_client).take(per_client).copied().collect();
        tasks.push(tokio::spawn(async move {
            let client = DeviceClient::connect_quic(quic).await.expect("connect");
            fetch(client, &slice).await
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mib": mib,
            "single_quic_mib_s": single[0].1,
            "single_tcp_mib_s": single[1].1,
            "clients": clients,
            "concurrent_total_mib": total as f64 / (1 << 20) as f64,
            "concurrent_mib_s": total as f64 / (1 << 20) as f64 / secs,
            "peak_rss_mib_before_concurrent": rss_before,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
}
