//! Device status reports against a real edge node over its framed-TCP device service: forged
//! and replayed reports are refused, and one client address can neither flood the node with
//! reports nor make it hold reports for more than its quota of made-up devices — so it cannot
//! evict the reports of real devices.

mod support;

use ed25519_dalek::{Signer, SigningKey};
use protocol::wire::device::{frame_body_len, limits, ErrorCode, Request, Response, ResponseView, FRAME_HEADER_BYTES};
use std::time::Duration;
use support::reports::{report, signed};
use support::{eventually, Edge, Origin};

fn key(i: u32) -> SigningKey {
    let mut seed = [0x5a; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// A framed-TCP device connection whose socket is bound to `local_ip` (a loopback address),
/// speaking the wire format directly.
struct Client(tokio::net::TcpStream);

impl Client {
    async fn connect_from(edge: std::net::SocketAddr, local_ip: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local_ip}:0").parse().unwrap()).unwrap();
        Client(socket.connect(edge).await.unwrap())
    }

    /// Sends a report; `None` if acknowledged, else the error code it was refused with.
    async fn report_status(&mut self, body: &[u8]) -> Option<ErrorCode> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let frame = Request::ReportStatus { body }.to_frame().unwrap();
        self.0.write_all(&frame).await.unwrap();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        self.0.read_exact(&mut header).await.expect("the edge node answered");
        let mut response = vec![0u8; frame_body_len(header, limits::MAX_RESPONSE_BYTES).unwrap()];
        self.0.read_exact(&mut response).await.unwrap();
        match ResponseView::parse(&response).unwrap() {
            Response::Ack => None,
            Response::Error { code } => Some(code),
            other => panic!("unexpected answer to a status report: {other:?}"),
        }
    }
}

fn reporting_devices(edge: &Edge) -> u64 {
    edge.status().and_then(|s| s["trust"]["reporting_devices"].as_u64()).unwrap_or(0)
}

#[test]
fn forged_replayed_and_flooded_status_reports_are_refused_and_bounded_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    // The product's defaults, not the test harness's loopback allowances.
    let edge = Edge::start_with("edge", &dir.path().join("edge"), "plant-a", &[origin.addr.as_str()], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let device = key(0);
    runtime.block_on(async {
        // A real device, from its own address (127.0.0.2 is loopback too).
        let mut honest = Client::connect_from(edge.device_tcp, "127.0.0.2").await;
        assert_eq!(honest.report_status(&signed(&device, &report(&device, 1, "committed"))).await, None);

        // Forged: another key signs a report in the device's name; tampered: a signed report
        // with one field changed; garbage.
        let mut attacker = Client::connect_from(edge.device_tcp, "127.0.0.1").await;
        let impostor = key(999_999);
        let forged = report(&device, 2, "rolled-back").to_signed(|m| impostor.sign(m).to_bytes());
        assert_eq!(attacker.report_status(&forged).await, Some(ErrorCode::BAD_REQUEST));
        let tampered = String::from_utf8(signed(&device, &report(&device, 3, "committed")))
            .unwrap()
            .replace("committed", "rolled-back");
        assert_eq!(attacker.report_status(tampered.as_bytes()).await, Some(ErrorCode::BAD_REQUEST));
        assert_eq!(attacker.report_status(b"{\"signed\": 7}").await, Some(ErrorCode::BAD_REQUEST));

        // Replayed: the device's own report, captured and sent again, from anywhere.
        let captured = signed(&device, &report(&device, 1, "committed"));
        assert_eq!(attacker.report_status(&captured).await, Some(ErrorCode::BAD_REQUEST));

        // Made-up devices from one address: only the per-address quota is held, the rest are
        // told to back off, and a flood is rate-limited.
        let (mut accepted, mut busy) = (0u32, 0u32);
        for i in 1..=200u32 {
            let fake = key(i);
            match attacker.report_status(&signed(&fake, &report(&fake, 1, "committed"))).await {
                None => accepted += 1,
                Some(ErrorCode::BUSY) => busy += 1,
                Some(other) => panic!("unexpected refusal {other:?}"),
            }
        }
        eprintln!("made-up devices from one address: {accepted} accepted, {busy} refused as busy");
        assert!(accepted <= 16, "one address spoke for {accepted} devices");
        assert!(busy >= 184);

        // The real device still reports, and its next report is accepted.
        assert_eq!(honest.report_status(&signed(&device, &report(&device, 2, "committed"))).await, None);
    });
    let devices = eventually("the edge node's status to count reporters", Duration::from_secs(10), || {
        let n = reporting_devices(&edge);
        (n > 0).then_some(n)
    });
    assert!(devices <= 17, "the edge node holds reports for {devices} devices");
    let metrics = String::from_utf8(support::http_get(edge.http, "/metrics").unwrap()).unwrap();
    let rejected = metrics
        .lines()
        .find_map(|l| l.strip_prefix("otamesh_edge_status_reports_rejected_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(rejected >= 188, "rejected reports counted: {rejected}");
}
