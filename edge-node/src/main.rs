//! `edge-node`: the otamesh daemon for factory gateways.
//!
//! `edge-node run` joins the mesh, pre-stages releases for the hardware classes it serves,
//! caches verified chunks and serves devices and standard TUF clients on its LAN.
//! `edge-node status` asks a running node what it holds.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edge_node::daemon::{self, config::EdgeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// otamesh edge node: caches signed releases near devices.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node. Every setting can come from --config and be overridden by a flag.
    Run(Box<RunArgs>),
    /// Show a running node's peers, releases, store and traffic.
    Status {
        /// The node's ops HTTP address.
        #[arg(long, default_value = "127.0.0.1:4180")]
        http: SocketAddr,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config file (see `edge_node::daemon::config` for every key and its default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the store, TUF state, mirror and node key.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Site name; nodes of one site fetch each chunk over the backhaul once.
    #[arg(long)]
    site: Option<String>,
    /// libp2p listen multiaddr (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Peer to dial at start, a multiaddr ending in /p2p/<peer id> (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// The origin's libp2p peer id (repeatable). A --bootstrap peer that identifies as the
    /// origin counts as configured too; only configured origins may supply the root pinned on
    /// first use, and they are asked for metadata first.
    #[arg(long = "origin-peer")]
    origin_peers: Vec<String>,
    /// Store capacity, e.g. 16GiB.
    #[arg(long)]
    capacity: Option<String>,
    /// TUF root.json to pin (default: a configured origin's, on first use).
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// Hardware class to pre-stage (repeatable; default all).
    #[arg(long = "serve-hw-class")]
    serve_hw_classes: Vec<String>,
    /// Disable mDNS: no discovery of site-mates, no advertising of the device service.
    #[arg(long)]
    no_mdns: bool,
    /// Ops HTTP address (TUF mirror, /metrics, /status).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Device service QUIC address.
    #[arg(long)]
    device_quic_listen: Option<SocketAddr>,
    /// Device service TCP address.
    #[arg(long)]
    device_tcp_listen: Option<SocketAddr>,
    /// Seconds between repository polls.
    #[arg(long)]
    refresh_secs: Option<u64>,
    /// Device keys one LAN address may send status reports for (default 16).
    #[arg(long)]
    report_devices_per_client: Option<usize>,
    /// Sustained status reports per second per LAN address (default 2, burst 20).
    #[arg(long)]
    reports_per_sec_per_client: Option<u32>,
    /// Device connections in all, QUIC and TCP (default 512, at most 65536); more are refused.
    #[arg(long)]
    device_max_connections: Option<usize>,
    /// Device connections allowed from one IP address (default 8); more are refused.
    #[arg(long)]
    max_connections_per_client: Option<usize>,
    /// Memory for device responses across all clients, e.g. 256MiB; beyond it devices get Busy.
    #[arg(long)]
    device_max_buffered_bytes: Option<String>,
    /// Milliseconds a chunk request waits in line for that memory before Busy (default
    /// 4000, at most 10000).
    #[arg(long)]
    device_busy_wait_ms: Option<u64>,
    /// Memory for chunks devices read recently, answered without a disk read, e.g. 32MiB
    /// (the default); 0 disables it.
    #[arg(long)]
    device_hot_cache_bytes: Option<String>,
    /// Largest QUIC datagram the device service probes for (default 6500, 1200 to 6500;
    /// 1452 keeps every probe within one Ethernet frame).
    #[arg(long)]
    device_quic_max_datagram: Option<u16>,
    /// Peers' chunk requests read at once (default 8); 4x as many queue, the rest get Busy.
    #[arg(long)]
    mesh_max_concurrent_serves: Option<usize>,
    /// Background re-verification rate of the store, e.g. 16MiB (per second); 0 disables.
    #[arg(long)]
    reverify_bytes_per_sec: Option<String>,
    /// Disk for device status reports awaiting the origin's acknowledgement, e.g. 64MiB.
    #[arg(long)]
    report_queue_bytes: Option<String>,
}

impl RunArgs {
    fn resolve(self) -> Result<EdgeConfig> {
        let mut c = match &self.config {
            Some(path) => EdgeConfig::from_file(path)?,
            None => EdgeConfig::default(),
        };
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.site {
            c.site = v;
        }
        if !self.listen.is_empty() {
            c.listen = self.listen;
        }
        c.bootstrap.extend(self.bootstrap);
        c.origin_peers.extend(self.origin_peers);
        if let Some(v) = self.capacity {
            c.capacity = v;
        }
        if self.trusted_root.is_some() {
            c.trusted_root = self.trusted_root;
        }
        if !self.serve_hw_classes.is_empty() {
            c.serve_hw_classes = self.serve_hw_classes;
        }
        if self.no_mdns {
            c.mdns = false;
        }
        if let Some(v) = self.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = self.device_quic_listen {
            c.device_quic_listen = v;
        }
        if let Some(v) = self.device_tcp_listen {
            c.device_tcp_listen = v;
        }
        if let Some(v) = self.refresh_secs {
            c.refresh_secs = v;
        }
        if let Some(v) = self.report_devices_per_client {
            c.report_devices_per_client = v;
        }
        if let Some(v) = self.reports_per_sec_per_client {
            c.reports_per_sec_per_client = v;
        }
        c.capacity_bytes().context("--capacity")?;
        c.origin_peer_ids().context("--origin-peer")?;
        if let Some(v) = self.device_max_connections {
            c.device_max_connections = v;
        }
        c.device_max_connections().context("--device-max-connections")?;
        if let Some(v) = self.max_connections_per_client {
            c.max_connections_per_client = v;
        }
        if let Some(v) = self.device_max_buffered_bytes {
            c.device_max_buffered_bytes = v;
        }
        if let Some(v) = self.device_busy_wait_ms {
            c.device_busy_wait_ms = v;
        }
        if let Some(v) = self.device_hot_cache_bytes {
            c.device_hot_cache_bytes = v;
        }
        if let Some(v) = self.device_quic_max_datagram {
            c.device_quic_max_datagram = v;
        }
        if let Some(v) = self.mesh_max_concurrent_serves {
            c.mesh_max_concurrent_serves = v;
        }
        if let Some(v) = self.reverify_bytes_per_sec {
            c.reverify_bytes_per_sec = v;
        }
        if let Some(v) = self.report_queue_bytes {
            c.report_queue_bytes = v;
        }
        c.capacity_bytes().context("--capacity")?;
        c.device_max_buffered_bytes().context("--device-max-buffered-bytes (device_max_buffered_bytes)")?;
        c.device_busy_wait().context("--device-busy-wait-ms (device_busy_wait_ms)")?;
        c.device_hot_cache_bytes().context("--device-hot-cache-bytes (device_hot_cache_bytes)")?;
        c.device_quic_max_datagram().context("--device-quic-max-datagram (device_quic_max_datagram)")?;
        c.reverify_bytes_per_sec().context("--reverify-bytes-per-sec (reverify_bytes_per_sec)")?;
        c.report_queue_bytes().context("--report-queue-bytes (report_queue_bytes)")?;
        Ok(c)
    }
}

/// Buffers of 128 KiB and more (chunk reads, response frames) are mapped and unmapped on
/// their own instead of coming from glibc's heap arenas. glibc otherwise raises this
/// threshold as such buffers are freed and then keeps freed megabytes in each thread's
/// arena: under a burst of device requests that retention added ~100 MiB of RSS on top of
/// the device service's budget and stayed after the burst.
///
/// At most two heap arenas: glibc gives each thread that meets a locked arena one of its
/// own (up to 8 per core), and each keeps its freed small buffers (chunk reads under
/// 128 KiB, per-request state). With 1,000 QUIC devices against a 128 MiB response budget
/// that retention was ~60 MiB of the peak RSS (373 -> 312 MiB with one arena, aggregate
/// throughput unchanged); two arenas keep the runtime's two workers from queueing on one
/// lock. Called before any thread starts.
fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no allocation is in flight on
    // another thread because none has been started yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    return_large_buffers_to_the_os();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli: Cli = host::cli::parse_args();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        host::cli::print_error(&e);
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Status { http, json } => {
            let status = edge_node::http::fetch_status(http)
                .await
                .with_context(|| format!("is an edge node running with --http-listen {http}?"))?;
            println!("{}", edge_node::http::print_status(&status, json));
            Ok(())
        }
        Command::Run(args) => {
            let config = (*args).resolve()?;
            let http = tokio::net::TcpListener::bind(config.http_listen)
                .await
                .with_context(|| format!("cannot listen on {} (--http-listen)", config.http_listen))?;
            let mirror_root = config.data_dir.join("repo");
            daemon::run(config, move |running| {
                let status = running.status.clone();
                let state = edge_node::http::HttpState {
                    mirror_root,
                    metrics: running.metrics.clone(),
                    status: Arc::new(move || status.lock().map(|s| s.clone()).unwrap_or_default()),
                };
                if let Ok(addr) = http.local_addr() {
                    tracing::info!(%addr, "ops HTTP listening");
                }
                tokio::spawn(edge_node::http::serve(http, state));
            })
            .await
        }
    }
}
