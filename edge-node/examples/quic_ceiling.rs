//! The QUIC transport's own ceiling for many devices on this machine: the device service's
//! endpoint (`edge_node::device::quic::bind_server`, same certificate, cipher suites, windows,
//! datagram size and socket buffers) answering each request with a slice of an image held in
//! memory, and as many device endpoints (`edge_client::device_endpoint`, each its own, as
//! `device_load` has them) reading the answers and dropping them: no chunk store, no framing,
//! no verification. Answers in flight are bounded like the service's response budget
//! (`--budget-mib`, waiting in line): unbounded, 1,000 devices asking at once put gigabytes
//! in quinn's send buffers. What this leaves to nginx over plain TCP is what QUIC costs here;
//! the gap from here to the device service is the node's work (store, sizing, framing) and
//! the devices' (copying each answer out and verifying every chunk, on the same cores).
//!
//! `quic_ceiling serve --mib N [--budget 128MiB]` prints `{"addr": ...}` and serves until killed;
//! `quic_ceiling fetch --addr ADDR --clients N --mib-per-client M [--in-flight 2]` prints one
//! line of JSON (the same shape of load as `device_load`: 4 MiB per request, client i
//! starting at its own offset).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use edge_node::device::{quic::bind_server, DeviceServiceConfig};
use edge_node::metrics::Metrics;
use futures::stream::{self, StreamExt};

/// Bytes per request, as `device_load` asks.
const REQUEST_BYTES: u64 = 4 << 20;

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a value")),
        None => default.unwrap_or_else(|| panic!("{name} is required")),
    }
}

/// Random bytes, so nothing downstream can take a shortcut on them.
fn image(mib: u64) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut image = vec![0u8; (mib << 20) as usize];
    for word in image.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    Bytes::from(image)
}

async fn serve(mib: u64, budget: &str) {
    let image = image(mib);
    // Answers in flight, from written until acknowledged, as the service counts them.
    let budget_bytes = edge_node::daemon::config::parse_bytes(budget).expect("--budget, e.g. 128MiB");
    let budget_bytes = u32::try_from(budget_bytes).unwrap_or(u32::MAX).max(1);
    let budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes as usize));
    let config = DeviceServiceConfig { max_connections: 4096, ..Default::default() };
    let endpoint = bind_server(&config, "127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default())).unwrap();
    println!("{}", serde_json::json!({ "addr": endpoint.local_addr().unwrap().to_string() }));
    std::io::stdout().flush().unwrap();
    while let Some(incoming) = endpoint.accept().await {
        let (image, budget) = (image.clone(), budget.clone());
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let (image, budget) = (image.clone(), budget.clone());
                tokio::spawn(async move {
                    // A request is the range wanted: offset and length, little-endian u64s.
                    let mut request = [0u8; 16];
                    if recv.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    let offset = u64::from_le_bytes(request[..8].try_into().unwrap()) % image.len() as u64;
                    let len = u64::from_le_bytes(request[8..].try_into().unwrap());
                    let end = (offset + len).min(image.len() as u64);
                    // At most the whole budget, as the service asks, so that it can be had.
                    let permits = u32::try_from(end - offset).unwrap_or(u32::MAX).clamp(1, budget_bytes);
                    let Ok(_held) = budget.acquire_many_owned(permits).await else {
                        return;
                    };
                    let _ = send.write_chunk(image.slice(offset as usize..end as usize)).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

/// One device: `total` bytes from `start`, `in_flight` requests at once; returns bytes read.
async fn fetch_one(connection: quinn::Connection, start: u64, total: u64, in_flight: usize) -> u64 {
    let requests = (0..total.div_ceil(REQUEST_BYTES))
        .map(|i| (start + i * REQUEST_BYTES, REQUEST_BYTES.min(total - i * REQUEST_BYTES)));
    stream::iter(requests)
        .map(|(offset, len)| {
            let connection = connection.clone();
            async move {
                let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
                let mut request = [0u8; 16];
                request[..8].copy_from_slice(&offset.to_le_bytes());
                request[8..].copy_from_slice(&len.to_le_bytes());
                send.write_all(&request).await.expect("request");
                let _ = send.finish();
                let mut got = 0u64;
                while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("response") {
                    got += chunk.bytes.len() as u64;
                }
                got
            }
        })
        .buffered(in_flight)
        .fold(0u64, |sum, got| async move { sum + got })
        .await
}

async fn fetch(args: &[String]) {
    let addr: SocketAddr = flag(args, "--addr", None);
    let clients: u64 = flag(args, "--clients", Some(200));
    let per_client = flag::<u64>(args, "--mib-per-client", Some(32)) << 20;
    let image_bytes = flag::<u64>(args, "--image-mib", Some(1024)) << 20;
    let in_flight: usize = flag(args, "--in-flight", Some(2));
    let t_connect = Instant::now();
    let connecting: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let endpoint = edge_client::device_endpoint(addr).expect("endpoint");
                let connection = endpoint.connect(addr, edge_client::SERVER_NAME).unwrap().await.expect("connect");
                (endpoint, connection)
            })
        })
        .collect();
    let mut connected = Vec::new();
    for c in connecting {
        connected.push(c.await.expect("connect task"));
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let stride = image_bytes.saturating_sub(per_client).max(1) / clients.max(1);
    let tasks: Vec<_> = connected
        .iter()
        .enumerate()
        .map(|(i, (_, connection))| {
            tokio::spawn(fetch_one(connection.clone(), i as u64 * stride, per_client, in_flight))
        })
        .collect();
    let mut bytes = 0u64;
    for t in tasks {
        bytes += t.await.expect("client task");
    }
    let secs = t0.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "{}",
        serde_json::json!({ "clients": clients, "connect_secs": connect_secs, "mib": mib, "secs": secs, "mib_s": mib / secs })
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            serve(flag(&args, "--mib", Some(1024)), &flag::<String>(args.as_slice(), "--budget", Some("128MiB".into())))
                .await
        }
        Some("fetch") => fetch(&args).await,
        _ => panic!("usage: quic_ceiling serve --mib N | fetch --addr ADDR --clients N --mib-per-client M"),
    }
}
