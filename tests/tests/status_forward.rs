//! Store and forward of device status reports: a real edge node keeps the reports devices
//! send on disk while no origin is reachable, keeps them across a kill -9, delivers them once
//! an origin connects, and never delivers an acknowledged report twice. The origin here is a
//! test-side mesh peer that records every `StatusBatch` and acknowledges it whole.

mod support;

use ed25519_dalek::SigningKey;
use mesh::{InboundRequest, NetworkClient, NetworkConfig, NetworkEvent, SiteName, StatusAck};
use protocol::wire::device::{frame_body_len, limits, Request, Response, ResponseView, FRAME_HEADER_BYTES};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{eventually, reports, Edge};

fn signed_report(i: u32) -> Vec<u8> {
    let mut seed = [0x3c; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    let key = SigningKey::from_bytes(&seed);
    reports::signed(&key, &reports::report(&key, 1, "committed"))
}

/// Sends one report over the framed-TCP device service; true if the node acknowledged it.
async fn report_status(edge: std::net::SocketAddr, body: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    stream.write_all(&Request::ReportStatus { body }.to_frame().unwrap()).await.unwrap();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await.expect("the edge node answered");
    let mut response = vec![0u8; frame_body_len(header, limits::MAX_RESPONSE_BYTES).unwrap()];
    stream.read_exact(&mut response).await.unwrap();
    matches!(ResponseView::parse(&response).unwrap(), Response::Ack)
}

/// The test's origin: answers status batches by recording them, everything else with
/// nothing.
async fn run_origin(key: libp2p::identity::Keypair, received: Arc<Mutex<Vec<Vec<u8>>>>) -> NetworkClient {
    let mut config = NetworkConfig::new(SiteName::new("origin").unwrap());
    config.enable_mdns = false;
    config.origin = true;
    let (client, mut events, event_loop) = mesh::new(key, config).unwrap();
    tokio::spawn(event_loop.run());
    client.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap();
    let answering = client.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let client = answering.clone();
            match event {
                NetworkEvent::Inbound(InboundRequest::Status { request, reply, .. }) => {
                    let stored = request.reports.len() as u32;
                    received.lock().unwrap().extend(request.reports);
                    tokio::spawn(async move { client.respond_status(reply, StatusAck { stored }).await });
                }
                NetworkEvent::Inbound(InboundRequest::Meta { reply, .. }) => {
                    tokio::spawn(async move { client.respond_meta(reply, mesh::MetaResponse { body: None }).await });
                }
                _ => {}
            }
        }
    });
    client
}

fn reports_status(edge: &Edge) -> Option<(u64, u64)> {
    let s = edge.status()?;
    Some((s["reports"]["queued"].as_u64()?, s["reports"]["forwarded"].as_u64()?))
}

#[test]
fn reports_queue_while_the_origin_is_away_survive_a_kill_and_are_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("edge");
    let origin_key = libp2p::identity::Keypair::generate_ed25519();
    let origin_id = origin_key.public().to_peer_id().to_string();
    let mut flags: Vec<&str> = test_procs::LOOPBACK_LAN_FLAGS.to_vec();
    flags.extend(["--origin-peer", origin_id.as_str()]);
    let start = || Edge::start_with("edge", &data_dir, "plant-a", &[], &flags);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // No origin anywhere: the node acknowledges reports to devices and keeps them.
    let mut edge = start();
    let first: Vec<Vec<u8>> = (0..5).map(signed_report).collect();
    runtime.block_on(async {
        for body in &first {
            assert!(report_status(edge.device_tcp, body).await, "report refused");
        }
    });
    eventually("5 reports queued", Duration::from_secs(10), || (reports_status(&edge)? == (5, 0)).then_some(()));

    // A power cut: the acknowledged reports are still there after the restart.
    edge.proc.kill();
    drop(edge);
    let edge = start();
    eventually("5 reports queued after the restart", Duration::from_secs(10), || {
        (reports_status(&edge)?.0 == 5).then_some(())
    });

    // The origin comes up and connects: everything queued is delivered and forgotten.
    let received = Arc::new(Mutex::new(Vec::new()));
    let origin = runtime.block_on(run_origin(origin_key, received.clone()));
    runtime.block_on(origin.dial(edge.p2p.parse().unwrap())).unwrap();
    eventually("the queued reports at the origin", Duration::from_secs(20), || {
        (received.lock().unwrap().len() >= 5).then_some(())
    });
    eventually("the queue emptied", Duration::from_secs(10), || (reports_status(&edge)? == (0, 5)).then_some(()));

    // With the origin connected, a new report goes straight through.
    runtime.block_on(async { assert!(report_status(edge.device_tcp, &signed_report(5)).await) });
    eventually("the new report at the origin", Duration::from_secs(10), || {
        (received.lock().unwrap().len() >= 6).then_some(())
    });

    // Restart again: nothing acknowledged is sent a second time. A report sent after the
    // origin reconnected arrives, and behind it nothing older.
    let mut edge = edge;
    edge.proc.kill();
    drop(edge);
    let edge = start();
    eventually("an empty queue after the restart", Duration::from_secs(10), || {
        (reports_status(&edge)?.0 == 0).then_some(())
    });
    runtime.block_on(origin.dial(edge.p2p.parse().unwrap())).unwrap();
    eventually("the origin identified", Duration::from_secs(10), || {
        edge.status()?["peers"].as_array()?.iter().any(|p| p["origin"] == true).then_some(())
    });
    runtime.block_on(async { assert!(report_status(edge.device_tcp, &signed_report(6)).await) });
    eventually("the last report at the origin", Duration::from_secs(10), || {
        (reports_status(&edge)? == (0, 1)).then_some(())
    });

    let received = received.lock().unwrap().clone();
    let mut expected: Vec<Vec<u8>> = (0..7).map(signed_report).collect();
    let mut got = received.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every report delivered exactly once");
    // Order is kept: the first five in the order devices sent them.
    assert_eq!(&received[..5], &first[..]);
    let metrics = String::from_utf8(support::http_get(edge.http, "/metrics").unwrap()).unwrap();
    assert!(metrics.contains("otamesh_edge_status_reports_forwarded_total 1\n"), "{metrics}");
    assert!(metrics.contains("otamesh_edge_status_reports_queued 0\n"), "{metrics}");
    drop(runtime);
}
