//! Device-service throughput: chunks served from a real on-disk store (verified on first read,
//! as the daemon does) to one device client that verifies each chunk against its id, over
//! QUIC and over TCP; and, in the same run, raw quinn on one stream (the QUIC ceiling).
//!
//! `cargo run --release -p edge-node --example bench_device -- DIR MIB`
//! writes DIR/image.bin (the same bytes, for an nginx baseline) and DIR/store, then prints one
//! line of JSON. Many clients against a separate edge-node process: `examples/device_load.rs`.

use chunk_store::ChunkStore;
use edge_node::device::{ChunkLookup, ChunkSize, DeviceBackend, DeviceClient, DeviceService, DeviceServiceConfig};
use edge_node::metrics::Metrics;
use protocol::wire::{device::ChunkStatus, ChunkRange};
use protocol::ChunkId;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

const CHUNK_BYTES: usize = 256 * 1024;
const BATCH_CHUNKS: usize = 16; // 4 MiB per request

struct StoreBackend(ChunkStore);

impl DeviceBackend for StoreBackend {
    async fn metadata_len(&self, _: &str) -> Option<u64> {
        None
    }
    async fn metadata(&self, _: &str, _: u64) -> Option<Vec<u8>> {
        None
    }
    async fn target_len(&self, _: &str) -> Option<u64> {
        None
    }
    async fn target(&self, _: &str, _: u64) -> Option<Vec<u8>> {
        None
    }
    async fn chunk(&self, id: ChunkId) -> ChunkLookup {
        self.chunks(vec![(id, 1 << 22)]).await.pop().unwrap_or(ChunkLookup::Missing)
    }
    async fn chunk_lens(&self, ids: Vec<ChunkId>) -> Vec<ChunkSize> {
        ids.iter().map(|id| self.0.len(id).map_or(ChunkSize::Missing, ChunkSize::Stored)).collect()
    }
    // One thread hop per batch, as the daemon's backend does.
    async fn chunks(&self, sized: Vec<(ChunkId, u64)>) -> Vec<ChunkLookup> {
        let store = self.0.clone();
        let read = tokio::task::spawn_blocking(move || {
            sized
                .iter()
                .map(|(id, len)| match store.get(id, *len) {
                    Ok(bytes) => ChunkLookup::Found(bytes),
                    Err(_) => ChunkLookup::Missing,
                })
                .collect()
        });
        read.await.unwrap_or_default()
    }
    async fn report_status(&self, _: SocketAddr, _: Vec<u8>) -> Result<(), protocol::wire::device::ErrorCode> {
        Ok(())
    }
}

/// Requests kept in flight by one client (QUIC streams, or TCP requests written ahead).
const IN_FLIGHT: usize = 4;

async fn fetch(mut client: DeviceClient, ids: &[ChunkId]) -> u64 {
    let batches: Vec<Vec<ChunkRange>> = ids
        .chunks(BATCH_CHUNKS)
        .map(|batch| batch.iter().map(|id| ChunkRange { id: *id, offset: 0, length: 0 }).collect())
        .collect();
    let mut bytes = 0u64;
    client
        .get_chunks_pipelined(&batches, IN_FLIGHT, |_, response| {
            for item in response.items().iter() {
                let ChunkStatus::Ok(data) = item.status else { panic!("chunk not served") };
                assert!(item.id.matches(data), "chunk failed verification");
                bytes += data.len() as u64;
            }
            Ok(())
        })
        .await
        .expect("batches");
    bytes
}

/// What QUIC itself does here: quinn with the same crypto provider (ring, TLS 1.3), one
/// stream, `total` bytes written in 4 MiB pieces by the server and read and dropped by the
/// client — no chunk store, no framing, no verification. The ceiling for the device
/// service over QUIC on this machine.
async fn raw_quinn_mib_s(total: u64) -> f64 {
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"raw".to_vec()];
    // The device path's datagram size, so the ceiling is measured as the service runs.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(edge_client::QUIC_MAX_DATAGRAM_BYTES);
    let mut transport = quinn::TransportConfig::default();
    transport.send_window(32 << 20).mtu_discovery_config(Some(mtu));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    server.transport_config(Arc::new(transport));
    let socket = edge_client::bulk_udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let server =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, Arc::new(quinn::TokioRuntime))
            .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let mut send = connection.open_uni().await.unwrap();
        let piece = bytes::Bytes::from(vec![0x5au8; 4 << 20]);
        let mut sent = 0u64;
        while sent < total {
            send.write_chunk(piece.clone()).await.unwrap();
            sent += piece.len() as u64;
        }
        send.finish().unwrap();
        let _ = send.stopped().await;
        drop(server);
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"raw".to_vec()];
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    client.transport_config(Arc::new(transport));
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.max_udp_payload_size(edge_client::QUIC_MAX_DATAGRAM_BYTES).unwrap();
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config,
        None,
        edge_client::bulk_udp_socket("127.0.0.1:0".parse().unwrap()).unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    endpoint.set_default_client_config(client);
    let connection = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let t0 = Instant::now();
    let mut recv = connection.accept_uni().await.unwrap();
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        got += chunk.bytes.len() as u64;
    }
    assert_eq!(got, total.div_ceil(4 << 20) * (4 << 20));
    got as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let mib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1024);
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

    let raw = raw_quinn_mib_s((mib as u64) << 20).await;
    println!(
        "{}",
        serde_json::json!({
            "mib": mib,
            "single_quic_mib_s": single[0].1,
            "single_tcp_mib_s": single[1].1,
            "raw_quinn_mib_s": raw,
            "in_flight": IN_FLIGHT,
            "batch_mib": BATCH_CHUNKS * CHUNK_BYTES / (1 << 20),
        })
    );
}
