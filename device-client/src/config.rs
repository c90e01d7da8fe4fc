//! Agent settings: a TOML file with documented defaults; the CLI overrides the few fields an
//! operator changes per run.
//!
//! ```toml
//! data_dir = "otamesh-device"          # record, progress, TUF metadata, device key, installed manifest
//! release = "gateway-os"               # release name this device follows
//! hw_class = "imx8-gw"                 # hardware class; releases for others are refused
//! site = ""                            # the site's name, as rollouts' maintenance windows match it
//! trusted_root = "root.json"           # pinned TUF root (copied into data_dir on first start)
//! content_key = ""                     # fleet content key file (hex), for encrypted releases
//! edges = ["quic://10.0.0.5:4433"]     # edge nodes' device service (quic:// or tcp://)
//! mdns = true                          # also find edge nodes on the LAN by mDNS (_otamesh-dev._udp);
//!                                      # a browse takes up to 2 s, at most once a minute
//! request_timeout_secs = 30            # one request to an edge node, at most, on every connection
//! connect_timeout_secs = 10            # connecting to an edge node (TCP, QUIC handshake), at most
//! parallel_edges = 3                   # fetch from up to this many edge nodes at once
//! slot_a = "/dev/mmcblk0p2"            # slot paths: block devices or files
//! slot_b = "/dev/mmcblk0p3"
//! check_interval_secs = 3600
//! trial_deadline_secs = 120
//! reboot = ["systemctl", "reboot"]     # empty: the agent restarts itself (demo, tests)
//!
//! [bootloader]                         # see bootloader/: file | uboot | grub | command
//! kind = "file"
//!
//! [[health_check]]                     # each must exit 0 within its timeout
//! name = "app"
//! command = ["/usr/bin/systemctl", "is-active", "app"]
//! timeout_secs = 30
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::bootloader::BootloaderConfig;

/// Resolved settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Everything the agent keeps.
    pub data_dir: PathBuf,
    /// The release name this device follows (`releases/<release>/…` targets).
    pub release: String,
    /// This device's hardware class.
    pub hw_class: String,
    /// The site's name: a rollout's maintenance windows name sites by pattern, and a device
    /// switches slots only inside a window of its site (empty: only `*` windows match).
    pub site: String,
    /// The pinned TUF root.
    pub trusted_root: Option<PathBuf>,
    /// The fleet content key (hex file), needed for encrypted releases.
    pub content_key: Option<PathBuf>,
    /// Edge nodes' device-service addresses, `quic://IP:PORT` or `tcp://IP:PORT`.
    pub edges: Vec<String>,
    /// Also find edge nodes on the LAN by mDNS (DNS-SD `_otamesh-dev._udp.local.`), added to
    /// `edges`; see `discovery.rs`.
    pub mdns: bool,
    /// Seconds one request to an edge node may take (its whole response), on every connection.
    pub request_timeout_secs: u64,
    /// Seconds connecting to an edge node (TCP connect, QUIC handshake) may take.
    pub connect_timeout_secs: u64,
    /// Most edge nodes fetched from at once.
    pub parallel_edges: usize,
    /// Slot A: a file or a block device.
    pub slot_a: PathBuf,
    /// Slot B.
    pub slot_b: PathBuf,
    /// Seconds between update checks.
    pub check_interval_secs: u64,
    /// Seconds the new slot gets to pass its health checks.
    pub trial_deadline_secs: u64,
    /// How to reboot; empty means the agent re-executes itself.
    pub reboot: Vec<String>,
    /// The bootloader backend.
    pub bootloader: BootloaderConfig,
    /// Health checks run during the trial.
    pub health_check: Vec<HealthCheckConfig>,
    /// The version the factory image in slot A is (before any otamesh install).
    pub factory_version: String,
    /// The factory image's security counter.
    pub factory_security_counter: u64,
}

/// One health check: a command without a shell.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Name for reports.
    pub name: String,
    /// argv.
    pub command: Vec<String>,
    /// Seconds before the check counts as failed.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

fn default_check_timeout() -> u64 {
    30
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from("otamesh-device"),
            release: "gateway-os".into(),
            hw_class: "generic".into(),
            site: String::new(),
            trusted_root: None,
            content_key: None,
            edges: vec!["quic://127.0.0.1:4433".into()],
            mdns: true,
            request_timeout_secs: 30,
            connect_timeout_secs: 10,
            parallel_edges: 3,
            slot_a: PathBuf::from("otamesh-device/slot-a.img"),
            slot_b: PathBuf::from("otamesh-device/slot-b.img"),
            check_interval_secs: 3600,
            trial_deadline_secs: 120,
            reboot: Vec::new(),
            bootloader: BootloaderConfig::default(),
            health_check: Vec::new(),
            factory_version: "factory".into(),
            factory_security_counter: 0,
        }
    }
}

/// A parsed edge address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeAddr {
    /// The device service over QUIC.
    Quic(SocketAddr),
    /// The device service over framed TCP.
    Tcp(SocketAddr),
}

impl EdgeAddr {
    /// Parses `quic://IP:PORT`, `tcp://IP:PORT` or a bare `IP:PORT` (QUIC).
    pub fn parse(text: &str) -> Result<EdgeAddr> {
        let (kind, rest) = match text.split_once("://") {
            Some((kind, rest)) => (kind, rest),
            None => ("quic", text),
        };
        let addr: SocketAddr =
            rest.parse().with_context(|| format!("edge `{text}`: expected quic://IP:PORT or tcp://IP:PORT"))?;
        match kind {
            "quic" => Ok(EdgeAddr::Quic(addr)),
            "tcp" => Ok(EdgeAddr::Tcp(addr)),
            other => bail!("edge `{text}`: unknown scheme `{other}`; use quic:// or tcp://"),
        }
    }
}

impl std::fmt::Display for EdgeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeAddr::Quic(a) => write!(f, "quic://{a}"),
            EdgeAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl AgentConfig {
    /// Reads a TOML file; unknown keys are an error so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read config {}", path.display()))?;
        if meta.len() > 1 << 20 {
            bail!("config {} is over 1 MiB", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let config: AgentConfig =
            toml::from_str(&text).with_context(|| format!("config {} is invalid", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: lengths, ranges, addresses.
    pub fn validate(&self) -> Result<()> {
        if protocol::install::Label::new(&self.hw_class).is_none() || self.hw_class.is_empty() {
            bail!("hw_class must be 1 to 32 bytes");
        }
        if protocol::install::Label::new(&self.factory_version).is_none() {
            bail!("factory_version must be at most 32 bytes");
        }
        if self.release.is_empty() || self.release.contains('/') {
            bail!("release must be a name without `/`");
        }
        if self.request_timeout_secs == 0 {
            bail!("request_timeout_secs must be at least 1");
        }
        if self.connect_timeout_secs == 0 {
            bail!("connect_timeout_secs must be at least 1");
        }
        if self.parallel_edges == 0 || self.parallel_edges > 16 {
            bail!("parallel_edges must be 1 to 16");
        }
        if self.slot_a == self.slot_b {
            bail!("slot_a and slot_b are the same path");
        }
        for edge in &self.edges {
            EdgeAddr::parse(edge)?;
        }
        for check in &self.health_check {
            if check.command.is_empty() {
                bail!("health check `{}` has an empty command", check.name);
            }
        }
        Ok(())
    }

    /// The connect and request timeouts every connection to an edge node gets.
    pub fn timeouts(&self) -> edge_client::Timeouts {
        edge_client::Timeouts {
            connect: std::time::Duration::from_secs(self.connect_timeout_secs),
            request: std::time::Duration::from_secs(self.request_timeout_secs),
        }
    }

    /// The configured edges, parsed.
    pub fn edge_addrs(&self) -> Result<Vec<EdgeAddr>> {
        self.edges.iter().map(|e| EdgeAddr::parse(e)).collect()
    }

    /// The path of a slot.
    pub fn slot_path(&self, slot: protocol::install::Slot) -> &Path {
        match slot {
            protocol::install::Slot::A => &self.slot_a,
            protocol::install::Slot::B => &self.slot_b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_keys_are_refused() {
        AgentConfig::default().validate().unwrap();
        let c: AgentConfig = toml::from_str("hw_class = \"imx8\"\nedges = [\"tcp://127.0.0.1:9\"]").unwrap();
        assert_eq!(c.edge_addrs().unwrap(), vec![EdgeAddr::Tcp("127.0.0.1:9".parse().unwrap())]);
        assert!(c.mdns, "mDNS discovery is on by default");
        let c: AgentConfig = toml::from_str("edges = []\nmdns = false").unwrap();
        assert!(c.edges.is_empty() && !c.mdns);
        assert!(toml::from_str::<AgentConfig>("hw_clas = \"x\"").is_err());
        assert!(EdgeAddr::parse("http://1.2.3.4:5").is_err());
        assert!(EdgeAddr::parse("quic://nowhere").is_err());
    }
}
