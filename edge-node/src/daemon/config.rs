//! Edge node settings: a TOML file, every field overridable by a flag, and defaults that run
//! with no configuration at all.
//!
//! ```toml
//! data_dir = "otamesh-edge"            # store, TUF state, mirror, node key
//! site = "default"                     # nodes with the same site share one backhaul fetch
//! listen = ["/ip4/0.0.0.0/udp/4101/quic-v1", "/ip4/0.0.0.0/tcp/4101"]
//! bootstrap = []                       # multiaddrs ending in /p2p/<peer id>: origin, site-mates
//! origin_peers = []                    # the origin's peer ids; bootstrap peers that identify as
//!                                      # the origin count too (see "Trust" below)
//! capacity = "16GiB"                   # chunk store capacity
//! trusted_root = ""                    # root.json to pin; empty: pin a configured origin's 1.root.json on first use
//! serve_hw_classes = []                # hardware classes to pre-stage; empty: all
//! mdns = true                          # find site-mates on the LAN, advertise the device service
//! http_listen = "127.0.0.1:4180"       # TUF mirror, /metrics, /status
//! device_quic_listen = "0.0.0.0:4433"  # device service (QUIC, ALPN otamesh-device/1)
//! device_tcp_listen = "0.0.0.0:4434"   # device service (framed TCP, for MCUs)
//! refresh_secs = 60                    # poll the repository even without announcements
//! report_devices_per_client = 16       # device keys one LAN address may send status reports for
//! reports_per_sec_per_client = 2       # sustained status reports per LAN address (burst 20)
//! device_max_connections = 512         # device connections in all (QUIC and TCP), 1 to 65536
//! max_connections_per_client = 8       # device connections from one IP address
//! device_max_buffered_bytes = "256MiB" # device responses and their reads in memory, all clients
//! device_busy_wait_ms = 4000           # a chunk request waits this long, in line, for that
//!                                      # memory before it is answered Busy; 0 to 10000
//! device_hot_cache_bytes = "32MiB"     # chunks devices read recently, answered from memory;
//!                                      # "0" disables it
//! device_quic_max_datagram = 6500      # largest QUIC datagram probed for, 1200 to 6500;
//!                                      # 1452 stays within one Ethernet frame
//! mesh_max_concurrent_serves = 8       # peers' chunk requests read at once (4x as many queue)
//! reverify_bytes_per_sec = "16MiB"     # background re-hashing of the store; "0" disables
//! report_queue_bytes = "64MiB"         # device status reports kept on disk until the origin
//!                                      # acknowledges them; when full, new ones are refused
//!                                      # (Busy) and counted in status_reports_dropped_total
//! ```
//!
//! Trust: metadata from any peer is verified against the pinned root, so who serves it only
//! matters for liveness. Peers are asked in this order: configured origins, peers that served
//! metadata that verified, site-mates, the rest; shuffled within each class, and a peer whose
//! metadata failed verification is skipped for 10 minutes. The one decision that does trust a
//! peer is pinning a root when `trusted_root` is empty: that root is taken only from a
//! configured origin — a peer in `origin_peers`, or a `bootstrap` peer that identifies as the
//! origin — never from a peer found through the DHT, mDNS or one that dialled in. Production
//! nodes set `trusted_root`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Resolved settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Where everything this node keeps lives.
    pub data_dir: PathBuf,
    /// Site name.
    pub site: String,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers to dial at start.
    pub bootstrap: Vec<String>,
    /// The origin's libp2p peer ids (base58). Also trusted as the origin: `bootstrap` peers
    /// that identify as it.
    pub origin_peers: Vec<String>,
    /// Store capacity, e.g. `16GiB`, `500MB`, `1048576`.
    pub capacity: String,
    /// Pinned TUF root; empty for trust on first use from a configured origin.
    pub trusted_root: Option<PathBuf>,
    /// Hardware classes to pre-stage; empty for all.
    pub serve_hw_classes: Vec<String>,
    /// mDNS: discovery of site-mates (libp2p) and DNS-SD advertising of the device service
    /// to devices (`device::mdns`).
    pub mdns: bool,
    /// Ops HTTP listen address.
    pub http_listen: SocketAddr,
    /// Device service QUIC address.
    pub device_quic_listen: SocketAddr,
    /// Device service TCP address.
    pub device_tcp_listen: SocketAddr,
    /// Seconds between repository polls.
    pub refresh_secs: u64,
    /// Distinct device keys one client address may send status reports for.
    pub report_devices_per_client: usize,
    /// Sustained status reports per second per client address.
    pub reports_per_sec_per_client: u32,
    /// Concurrent device connections in all (QUIC and TCP together); more are refused before
    /// their handshake. Size it for the site's devices (an agent uses one QUIC connection,
    /// or two TCP connections, per edge node);
    /// each costs a few tens of KiB, and their responses share `device_max_buffered_bytes`.
    pub device_max_connections: usize,
    /// Concurrent device connections from one client IP address (QUIC and TCP together);
    /// more are refused. A device agent uses one QUIC connection, or two TCP connections, per
    /// edge node.
    pub max_connections_per_client: usize,
    /// Device-service memory for responses and the chunk reads behind them, across all
    /// clients, e.g. `256MiB`; when spent, devices are answered Busy. Peak RSS stays within
    /// this plus a fixed overhead (see `device`).
    pub device_max_buffered_bytes: String,
    /// Milliseconds a device's chunk request waits, in arrival order, for response memory
    /// when `device_max_buffered_bytes` is spent, before it is answered Busy (0 to 10000:
    /// devices' request timeouts must cover this wait plus the transfer; the MCU agent's is
    /// 10 s, the Linux agent's 30 s by default).
    pub device_busy_wait_ms: u64,
    /// Chunks devices read recently, kept in memory and answered without a disk read, e.g.
    /// `32MiB`; `0` disables it. Adds at most this to the node's RSS.
    pub device_hot_cache_bytes: String,
    /// Largest QUIC datagram (UDP payload) the device service's MTU discovery probes for,
    /// 1200 to 6500: larger datagrams cost less CPU per byte where the path carries them
    /// (loopback, jumbo frames); elsewhere the probes are lost and discovery settles lower.
    pub device_quic_max_datagram: u16,
    /// Peers' chunk requests read at once; four times as many wait, the rest are answered Busy.
    pub mesh_max_concurrent_serves: usize,
    /// Bytes per second the background re-verification hashes, e.g. `16MiB`; `0` disables it.
    pub reverify_bytes_per_sec: String,
    /// Bytes of device status reports kept on disk (`data_dir/reports/`) until the origin
    /// acknowledges them, e.g. `64MiB`; when full, new reports are refused and counted.
    pub report_queue_bytes: String,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            data_dir: PathBuf::from("otamesh-edge"),
            site: "default".into(),
            listen: vec!["/ip4/0.0.0.0/udp/4101/quic-v1".into(), "/ip4/0.0.0.0/tcp/4101".into()],
            bootstrap: Vec::new(),
            origin_peers: Vec::new(),
            capacity: "16GiB".into(),
            trusted_root: None,
            serve_hw_classes: Vec::new(),
            mdns: true,
            http_listen: ([127, 0, 0, 1], 4180).into(),
            device_quic_listen: ([0, 0, 0, 0], 4433).into(),
            device_tcp_listen: ([0, 0, 0, 0], 4434).into(),
            refresh_secs: 60,
            report_devices_per_client: 16,
            reports_per_sec_per_client: 2,
            device_max_connections: 512,
            max_connections_per_client: 8,
            device_max_buffered_bytes: "256MiB".into(),
            device_busy_wait_ms: 4000,
            device_hot_cache_bytes: "32MiB".into(),
            device_quic_max_datagram: edge_client::QUIC_MAX_DATAGRAM_BYTES,
            mesh_max_concurrent_serves: mesh::chunk_server::DEFAULT_MAX_CONCURRENT_SERVES,
            reverify_bytes_per_sec: "16MiB".into(),
            report_queue_bytes: "64MiB".into(),
        }
    }
}

impl EdgeConfig {
    /// Reads a TOML file; unknown keys are an error so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        if text.len() > 1 << 20 {
            bail!("config {} is over 1 MiB", path.display());
        }
        toml::from_str(&text).with_context(|| format!("config {} is invalid", path.display()))
    }

    /// The origin's peer ids: `origin_peers`, each checked.
    pub fn origin_peer_ids(&self) -> Result<Vec<libp2p::PeerId>> {
        self.origin_peers
            .iter()
            .map(|p| p.parse().with_context(|| format!("origin peer `{p}` is not a libp2p peer id (12D3KooW…)")))
            .collect()
    }

    /// Peer ids named by `bootstrap` addresses (their `/p2p/` part).
    pub fn bootstrap_peer_ids(&self) -> Vec<libp2p::PeerId> {
        self.bootstrap
            .iter()
            .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
            .filter_map(|a| {
                a.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                })
            })
            .collect()
    }

    /// Bounds of status report admission.
    pub fn report_limits(&self) -> protocol::status::ReportLimits {
        protocol::status::ReportLimits {
            devices_per_client: self.report_devices_per_client.max(1),
            reports_per_sec_per_client: self.reports_per_sec_per_client.max(1),
            ..Default::default()
        }
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> Result<u64> {
        parse_bytes(&self.capacity)
    }

    /// `device_max_buffered_bytes` in bytes.
    pub fn device_max_buffered_bytes(&self) -> Result<u64> {
        parse_bytes(&self.device_max_buffered_bytes)
    }

    /// `device_max_connections`, checked: 1 to 65,536.
    pub fn device_max_connections(&self) -> Result<usize> {
        if !(1..=65_536).contains(&self.device_max_connections) {
            bail!("device_max_connections must be 1 to 65536, not {}", self.device_max_connections);
        }
        Ok(self.device_max_connections)
    }

    /// `device_quic_max_datagram`, checked.
    pub fn device_quic_max_datagram(&self) -> Result<u16> {
        let max = edge_client::QUIC_MAX_DATAGRAM_BYTES;
        if !(1200..=max).contains(&self.device_quic_max_datagram) {
            bail!(
                "device_quic_max_datagram must be 1200 to {max}, not {}: QUIC needs 1200, and devices take at most {max}",
                self.device_quic_max_datagram
            );
        }
        Ok(self.device_quic_max_datagram)
    }

    /// `device_busy_wait_ms` as a duration.
    pub fn device_busy_wait(&self) -> Result<std::time::Duration> {
        if self.device_busy_wait_ms > 10_000 {
            bail!(
                "device_busy_wait_ms must be 0 to 10000, not {}: MCU agents time a request out after 10 s",
                self.device_busy_wait_ms
            );
        }
        Ok(std::time::Duration::from_millis(self.device_busy_wait_ms))
    }

    /// `device_hot_cache_bytes` in bytes.
    pub fn device_hot_cache_bytes(&self) -> Result<u64> {
        parse_bytes(&self.device_hot_cache_bytes)
    }

    /// `reverify_bytes_per_sec` in bytes per second (0: disabled).
    pub fn reverify_bytes_per_sec(&self) -> Result<u64> {
        parse_bytes(&self.reverify_bytes_per_sec)
    }

    /// `report_queue_bytes` in bytes.
    pub fn report_queue_bytes(&self) -> Result<u64> {
        parse_bytes(&self.report_queue_bytes)
    }
}

/// Parses `16GiB`, `500MB`, `64KiB`, `1048576`.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().with_context(|| format!("`{text}` is not a size like 16GiB or 500MB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => bail!("`{text}` has unknown unit `{other}`; use B, KB, MB, GB, KiB, MiB, GiB"),
    };
    n.checked_mul(scale).context("size overflows")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_defaults() {
        assert_eq!(parse_bytes("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_bytes("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs").is_err());
        let defaults = EdgeConfig::default();
        assert_eq!(defaults.capacity_bytes().unwrap(), 16 << 30);
        assert_eq!(defaults.device_max_buffered_bytes().unwrap(), 256 << 20);
        assert_eq!(defaults.device_hot_cache_bytes().unwrap(), 32 << 20);
        assert_eq!(defaults.device_max_connections().unwrap(), 512);
        assert_eq!(defaults.device_busy_wait().unwrap(), std::time::Duration::from_secs(4));
        let too_long = EdgeConfig { device_busy_wait_ms: 10_001, ..EdgeConfig::default() };
        assert!(too_long.device_busy_wait().unwrap_err().to_string().contains("0 to 10000"));
        for bad in [0, 65_537] {
            let config = EdgeConfig { device_max_connections: bad, ..EdgeConfig::default() };
            assert!(config.device_max_connections().unwrap_err().to_string().contains("1 to 65536"));
        }
        assert_eq!(defaults.device_quic_max_datagram().unwrap(), 6500);
        for bad in [1199, 6501, u16::MAX] {
            let config = EdgeConfig { device_quic_max_datagram: bad, ..EdgeConfig::default() };
            assert!(config.device_quic_max_datagram().unwrap_err().to_string().contains("1200 to 6500"));
        }
        assert_eq!(defaults.reverify_bytes_per_sec().unwrap(), 16 << 20);
        assert_eq!(defaults.report_queue_bytes().unwrap(), 64 << 20);
        assert_eq!((defaults.max_connections_per_client, defaults.mesh_max_concurrent_serves), (8, 8));
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let c: EdgeConfig = toml::from_str("site = \"plant-7\"\ncapacity = \"2GiB\"\nmdns = false").unwrap();
        assert_eq!((c.site.as_str(), c.mdns), ("plant-7", false));
        assert_eq!(c.listen, EdgeConfig::default().listen);
        assert!(toml::from_str::<EdgeConfig>("sitee = \"x\"").is_err());
    }
}
