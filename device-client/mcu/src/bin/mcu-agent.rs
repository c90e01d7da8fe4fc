//! `mcu-agent`: the MCU agent as a Linux process — the very same library the board firmware
//! links, on embassy's std platform, its network a TAP device (embassy-net over
//! embassy-net-tuntap, its own TCP/IP stack as on the board), its flash a file.
//!
//! One run is one check: connect to the first configured edge that answers, find the
//! release a sealed rollout policy names for this device, download it into the update
//! partition (resuming from the progress record), and report what happened as one JSON line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use clap::Parser;
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Config, Ipv4Cidr, Runner, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_time::Duration;
use static_cell::StaticCell;

use otamesh_mcu::edge_link::EdgeLink;
use otamesh_mcu::find::{find_release, FindBuffers, FindError};
use protocol::device::sealed::DeviceLimits;
use protocol::seal::TrustAnchor;

/// The MCU agent on a Linux TAP device, for host tests and trying the MCU path without a board.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TAP device to attach to (it must exist and be up: `ip tuntap add dev tap0 mode tap`).
    #[arg(long, default_value = "tap0")]
    tap: String,
    /// This device's IPv4 address and prefix on the TAP network.
    #[arg(long, default_value = "10.78.0.2/24")]
    ip: String,
    /// Edge node device service (TCP), tried in order (repeatable).
    #[arg(long = "edge", required = true)]
    edges: Vec<SocketAddrV4>,
    /// The pinned trust anchor (`seeder mcu anchor --out FILE`).
    #[arg(long)]
    anchor: PathBuf,
    /// Release name this device follows.
    #[arg(long)]
    release: String,
    /// This device's hardware class.
    #[arg(long)]
    hw_class: String,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 10)]
    request_timeout_secs: u64,
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
static RX: StaticCell<[u8; RX_BYTES]> = StaticCell::new();
static TX: StaticCell<[u8; TX_BYTES]> = StaticCell::new();
static LINK: StaticCell<[u8; LINK_BYTES]> = StaticCell::new();
static SEAL: StaticCell<[u8; protocol::seal::MAX_SEAL_BYTES]> = StaticCell::new();
static POLICY: StaticCell<[u8; protocol::rollout::policy::limits::MAX_POLICY_BYTES]> = StaticCell::new();
static MANIFEST: StaticCell<[u8; MANIFEST_BYTES]> = StaticCell::new();

/// TCP receive window: one chunk answer in flight.
const RX_BYTES: usize = 8 * 1024;
/// TCP send buffer: requests are small.
const TX_BYTES: usize = 1024;
/// The link's frame buffer: the largest answer (a 4 KiB chunk, a seal, a manifest).
const LINK_BYTES: usize = 16 * 1024;
/// The largest manifest this device takes.
const MANIFEST_BYTES: usize = 16 * 1024;

fn fail(what: &str) -> ! {
    println!("{}", serde_json::json!({"ok": false, "error": what}));
    std::process::exit(1);
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let args = Args::parse();
    let Some((ip, prefix)) = args.ip.split_once('/') else { fail("--ip must be ADDRESS/PREFIX, e.g. 10.78.0.2/24") };
    let (Ok(ip), Ok(prefix)) = (ip.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
        fail("--ip must be ADDRESS/PREFIX, e.g. 10.78.0.2/24")
    };
    let anchor_bytes = std::fs::read(&args.anchor).unwrap_or_else(|e| fail(&format!("cannot read the anchor: {e}")));
    let anchor = TrustAnchor::decode(&anchor_bytes).unwrap_or_else(|e| {
        fail(&format!("{} is not a trust anchor ({e}); write one with `seeder mcu anchor`", args.anchor.display()))
    });
    let device = TunTapDevice::new(&args.tap).unwrap_or_else(|e| {
        fail(&format!("cannot open TAP device {}: {e} (create it and bring it up first)", args.tap))
    });
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ip, prefix),
        gateway: None,
        dns_servers: heapless::Vec::new(),
    });
    let mut seed = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed)).ok();
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), u64::from_le_bytes(seed));
    spawner.spawn(net_task(runner).unwrap_or_else(|_| fail("cannot start the network task")));
    stack.wait_config_up().await;

    let limits = DeviceLimits {
        release: &args.release,
        hw_class: &args.hw_class,
        max_image_bytes: 1 << 20,
        max_chunks: 1024,
        max_stored_chunk_bytes: 4096 + 40,
    };
    let (rx, tx, link_buffer) = (RX.init([0; RX_BYTES]), TX.init([0; TX_BYTES]), LINK.init([0; LINK_BYTES]));
    let (seal, policy, manifest) = (
        SEAL.init([0; protocol::seal::MAX_SEAL_BYTES]),
        POLICY.init([0; protocol::rollout::policy::limits::MAX_POLICY_BYTES]),
        MANIFEST.init([0; MANIFEST_BYTES]),
    );
    let timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    let mut last_error = String::from("no edge answered");
    for edge in &args.edges {
        let mut socket = TcpSocket::new(stack, &mut rx[..], &mut tx[..]);
        socket.set_timeout(Some(timeout));
        if let Err(e) = socket.connect((*edge.ip(), edge.port())).await {
            last_error = format!("cannot connect to {edge}: {e:?}");
            continue;
        }
        let mut link = EdgeLink::new(socket, &mut link_buffer[..], timeout);
        let buffers = FindBuffers { seal: &mut seal[..], policy: &mut policy[..], manifest: &mut manifest[..] };
        match find_release(&mut link, &anchor, &limits, buffers).await {
            Ok(found) => {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "edge": edge.to_string(),
                        "version": found.manifest.version(),
                        "security_counter": found.offer.release.security_counter,
                        "chunks": found.offer.release.chunk_count,
                        "anchor_epoch": found.anchor.anchor.epoch,
                        "anchor_rotated": found.anchor.rotated,
                    })
                );
                let mut socket = link.into_stream();
                socket.close();
                embassy_time::Timer::after(Duration::from_millis(100)).await;
                std::process::exit(0);
            }
            Err(e @ FindError::Missing) => last_error = format!("{edge}: {e:?}"),
            // Failover: the next configured edge (a lying one is simply not asked again
            // in this run).
            Err(e) => last_error = format!("{edge}: {e:?} (blames the edge: {})", e.blames_edge()),
        }
    }
    fail(&last_error)
}
