//! What the harness knows about otamesh's daemons: the command line that runs an edge node
//! on loopback with every listener on an ephemeral port, and the log lines in which the
//! daemons name the addresses they got.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{field, Proc};

/// `edge-node run` flags for a node whose devices all connect and report from 127.0.0.1
/// (and whose killed agents leave QUIC connections open until the idle timeout): the
/// per-address caps are meant for real LANs, where each device has its own address.
pub const LOOPBACK_LAN_FLAGS: [&str; 6] = [
    "--max-connections-per-client",
    "512",
    "--report-devices-per-client",
    "1024",
    "--reports-per-sec-per-client",
    "100",
];

/// `edge-node run` on 127.0.0.1, mDNS off, every listener on an ephemeral port (learnt with
/// [`edge_addrs`]), bootstrapping from `bootstrap`, with `extra` flags appended.
pub fn edge_run_args(data_dir: &Path, site: &str, bootstrap: &[&str], extra: &[&str]) -> Result<Vec<String>> {
    let data_dir = data_dir.to_str().context("the data directory is not UTF-8")?;
    let mut args = vec![
        "run",
        "--data-dir",
        data_dir,
        "--site",
        site,
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--no-mdns",
        "--http-listen",
        "127.0.0.1:0",
        "--device-quic-listen",
        "127.0.0.1:0",
        "--device-tcp-listen",
        "127.0.0.1:0",
    ];
    for b in bootstrap {
        args.extend(["--bootstrap", b]);
    }
    args.extend_from_slice(extra);
    Ok(args.into_iter().map(String::from).collect())
}

/// The addresses a started edge node reported.
#[derive(Clone, Debug)]
pub struct EdgeAddrs {
    /// Its libp2p address, `/p2p/<peer id>` included.
    pub p2p: String,
    /// Its operations HTTP (`/status`, `/metrics`).
    pub http: SocketAddr,
    /// The device service over QUIC.
    pub device_quic: SocketAddr,
    /// The device service over TCP.
    pub device_tcp: SocketAddr,
}

impl EdgeAddrs {
    /// The node's peer id, from the `/p2p/` suffix of its address.
    pub fn peer_id(&self) -> &str {
        peer_id(&self.p2p)
    }
}

/// The peer id at the end of a libp2p address (`…/p2p/<peer id>`); empty if it names none.
pub fn peer_id(p2p_addr: &str) -> &str {
    p2p_addr.rsplit_once("/p2p/").map_or("", |(_, id)| id)
}

/// Waits (each for at most `timeout`) until an edge node's log has named all its addresses.
pub fn edge_addrs(proc: &Proc, timeout: Duration) -> Result<EdgeAddrs> {
    let p2p = proc.wait_line("p2p address", timeout, |l| {
        (l.contains("listening") && l.contains("/p2p/")).then(|| field(l, "addr").map(String::from)).flatten()
    })?;
    let http = proc.wait_line("ops HTTP address", timeout, |l| {
        l.contains("ops HTTP listening").then(|| field(l, "addr")?.parse().ok()).flatten()
    })?;
    // The device service logs each listener as an `Option`: `quic=Some(127.0.0.1:4242)`.
    let device = |key: &'static str| {
        move |l: &str| {
            let v = field(l, key)?;
            l.contains("device service listening")
                .then(|| v.trim_start_matches("Some(").trim_end_matches(')').parse().ok())
                .flatten()
        }
    };
    let device_quic = proc.wait_line("device QUIC address", timeout, device("quic"))?;
    let device_tcp = proc.wait_line("device TCP address", timeout, device("tcp"))?;
    Ok(EdgeAddrs { p2p, http, device_quic, device_tcp })
}

/// Waits until `seeder --json serve` has printed the mesh addresses it listens on; the first.
pub fn origin_addr(proc: &Proc, timeout: Duration) -> Result<String> {
    proc.wait_line("origin addrs", timeout, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(v["addrs"][0].as_str()?.to_string())
    })
}
