//! `mcu-agent`: the MCU agent as a Linux process — the very same library the board firmware
//! links, on embassy's std platform, its network a TAP device (embassy-net over
//! embassy-net-tuntap: its own TCP/IP stack, as on the board), its flash a file laid out as
//! `layout::HOST_DEVICE` with embassy-boot's partitions.
//!
//! One run is one boot (`agent::run_once`): it ends when the agent rests (nothing to install,
//! or the trial committed) or asks for a reset — the process then exits, and whoever runs it
//! runs `mcu-bootloader --layout device` on the flash file before starting it again, as a
//! board's bootloader runs before its application. Prints one JSON line.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use clap::Parser;
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Config, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_sync::blocking_mutex::Mutex;
use embassy_time::Duration;
use static_cell::StaticCell;

use otamesh_mcu::agent::{run_once, AgentBuffers, AgentConfig, Edges, RunOutcome};
use otamesh_mcu::layout::HOST_DEVICE;
use otamesh_mcu::HostFlash;
use protocol::codec::ContentKey;
use protocol::device::sealed::DeviceLimits;
use protocol::seal::TrustAnchor;

/// The MCU agent on a Linux TAP device: one boot of an MCU, for host tests and for trying the
/// MCU path without a board.
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
    /// The flash file (created erased if missing; `--factory` writes its first image).
    #[arg(long)]
    flash: PathBuf,
    /// Put this image in ACTIVE of a new flash file: the factory firmware.
    #[arg(long)]
    factory: Option<PathBuf>,
    /// The trust anchor provisioned at the factory (`seeder mcu anchor --out FILE`); the agent
    /// keeps the newest it learns in flash.
    #[arg(long)]
    anchor: PathBuf,
    /// The fleet content key (the seeder's keys/content.key, 64 hex digits).
    #[arg(long)]
    content_key: Option<PathBuf>,
    /// Release name this device follows.
    #[arg(long)]
    release: String,
    /// This device's hardware class.
    #[arg(long)]
    hw_class: String,
    /// The device's id in rollouts (64 hex digits; its status key on a real device).
    #[arg(long)]
    device_id: Option<String>,
    /// What the trial's health check answers.
    #[arg(long, value_parser = ["pass", "fail"], default_value = "pass")]
    health: String,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 10)]
    request_timeout_secs: u64,
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

/// TCP receive window: one chunk answer in flight.
const RX_BYTES: usize = 8 * 1024;
/// TCP send buffer: requests are small.
const TX_BYTES: usize = 1024;
/// The link's frame buffer: the largest answer (a 4 KiB chunk, a seal, a manifest).
const LINK_BYTES: usize = 16 * 1024;
/// The largest manifest this device takes.
const MANIFEST_BYTES: usize = 16 * 1024;
/// The largest stored chunk: 4 KiB plus the AEAD's nonce and tag.
const CHUNK_BYTES: usize = 4096 + 40;
const POLICY_BYTES: usize = protocol::rollout::policy::limits::MAX_POLICY_BYTES;
/// A seal, and later a stored chunk, in one buffer (see `AgentBuffers::seal`).
const SEAL_BYTES: usize =
    if protocol::seal::MAX_SEAL_BYTES > CHUNK_BYTES { protocol::seal::MAX_SEAL_BYTES } else { CHUNK_BYTES };

static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
static RX: StaticCell<[u8; RX_BYTES]> = StaticCell::new();
static TX: StaticCell<[u8; TX_BYTES]> = StaticCell::new();
static LINK: StaticCell<[u8; LINK_BYTES]> = StaticCell::new();
static SEAL: StaticCell<[u8; SEAL_BYTES]> = StaticCell::new();
static POLICY: StaticCell<[u8; POLICY_BYTES]> = StaticCell::new();
static MANIFEST: StaticCell<[u8; MANIFEST_BYTES]> = StaticCell::new();

/// The configured edges over the TAP stack, one TCP socket at a time.
struct TapEdges {
    stack: Stack<'static>,
    addrs: Vec<SocketAddrV4>,
    rx: &'static mut [u8; RX_BYTES],
    tx: &'static mut [u8; TX_BYTES],
    timeout: Duration,
}

impl Edges for TapEdges {
    type Stream<'s> = TcpSocket<'s>;

    fn count(&self) -> usize {
        self.addrs.len()
    }

    async fn connect(&mut self, index: usize) -> Option<TcpSocket<'_>> {
        let addr = *self.addrs.get(index)?;
        let mut socket = TcpSocket::new(self.stack, &mut self.rx[..], &mut self.tx[..]);
        socket.set_timeout(Some(self.timeout));
        socket.connect((*addr.ip(), addr.port())).await.ok()?;
        Some(socket)
    }
}

fn fail(what: &str) -> ! {
    println!("{}", serde_json::json!({"ok": false, "error": what}));
    std::process::exit(1);
}

fn read_hex32(path: &std::path::Path, what: &str) -> [u8; 32] {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("cannot read {what} {}: {e}", path.display())));
    protocol::hex::decode_array(text.trim()).unwrap_or_else(|e| fail(&format!("{what} {}: {e}", path.display())))
}

/// Opens the flash file. A new one is made whole first — erased, `--factory` in ACTIVE — in
/// a temporary file renamed into place, so a kill while provisioning leaves no half-made flash.
fn open_flash(args: &Args) -> HostFlash {
    let size = HOST_DEVICE.flash_size_bytes as usize;
    if !args.flash.exists() {
        let mut contents = vec![0xFFu8; size];
        if let Some(factory) = &args.factory {
            let image =
                std::fs::read(factory).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", factory.display())));
            let active = HOST_DEVICE.active.offset as usize;
            if image.len() > HOST_DEVICE.active.size_bytes as usize {
                fail("the factory image is bigger than ACTIVE");
            }
            contents[active..active + image.len()].copy_from_slice(&image);
        }
        let provisional = args.flash.with_extension("provisioning");
        let written = std::fs::write(&provisional, &contents)
            .and_then(|()| std::fs::File::open(&provisional)?.sync_all())
            .and_then(|()| std::fs::rename(&provisional, &args.flash));
        written.unwrap_or_else(|e| fail(&format!("cannot create the flash file {}: {e}", args.flash.display())));
    }
    HostFlash::open(&args.flash, size, true)
        .unwrap_or_else(|e| fail(&format!("cannot open the flash file {}: {e}", args.flash.display())))
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let args = Args::parse();
    let usage = "--ip must be ADDRESS/PREFIX, e.g. 10.78.0.2/24";
    let Some((ip, prefix)) = args.ip.split_once('/') else { fail(usage) };
    let (Ok(ip), Ok(prefix)) = (ip.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else { fail(usage) };
    let anchor_bytes = std::fs::read(&args.anchor).unwrap_or_else(|e| fail(&format!("cannot read the anchor: {e}")));
    let anchor = TrustAnchor::decode(&anchor_bytes).unwrap_or_else(|e| {
        fail(&format!("{} is not a trust anchor ({e}); write one with `seeder mcu anchor`", args.anchor.display()))
    });
    let content_key = args.content_key.as_deref().map(|p| ContentKey(read_hex32(p, "content key")));
    let device_id = match &args.device_id {
        Some(hex) => protocol::hex::decode_array(hex).unwrap_or_else(|e| fail(&format!("--device-id: {e}"))),
        None => [0; 32],
    };
    let flash = Mutex::new(RefCell::new(open_flash(&args)));

    let device = TunTapDevice::new(&args.tap).unwrap_or_else(|e| {
        fail(&format!("cannot open TAP device {}: {e} (create it and bring it up first)", args.tap))
    });
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ip, prefix),
        gateway: None,
        dns_servers: heapless::Vec::new(),
    });
    let mut seed = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), u64::from_le_bytes(seed));
    spawner.spawn(net_task(runner).unwrap_or_else(|_| fail("cannot start the network task")));
    stack.wait_config_up().await;

    let timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    let mut edges =
        TapEdges { stack, addrs: args.edges.clone(), rx: RX.init([0; RX_BYTES]), tx: TX.init([0; TX_BYTES]), timeout };
    let agent = AgentConfig {
        limits: DeviceLimits {
            release: &args.release,
            hw_class: &args.hw_class,
            max_image_bytes: u64::from(HOST_DEVICE.active.size_bytes),
            max_chunks: otamesh_mcu::progress::MAX_CHUNKS,
            max_stored_chunk_bytes: CHUNK_BYTES as u32,
        },
        content_key,
        device_id,
        provisioned_anchor: anchor,
        factory_version: "factory",
        request_timeout: timeout,
    };
    let buffers = AgentBuffers {
        link: &mut LINK.init([0; LINK_BYTES])[..],
        seal: &mut SEAL.init([0; SEAL_BYTES])[..],
        policy: &mut POLICY.init([0; POLICY_BYTES])[..],
        manifest: &mut MANIFEST.init([0; MANIFEST_BYTES])[..],
    };
    let healthy = args.health == "pass";
    let unix_now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let outcome = run_once(&flash, &HOST_DEVICE, &agent, &mut edges, buffers, || healthy, unix_now).await;
    let record = otamesh_mcu::agent_store::AgentStore::open(
        otamesh_mcu::boot::Partitions::new(&HOST_DEVICE, &flash).unwrap_or_else(|_| fail("layout")).agent,
    )
    .ok()
    .and_then(|(_, state)| state);
    let installed = record.as_ref().map(|s| s.record.installed.version.as_str().to_string());
    let state = record.as_ref().map(|s| s.record.state.name());
    let error = record.as_ref().and_then(|s| s.record.last_error).map(|e| format!("{e:?}"));
    let epoch = record.as_ref().and_then(|s| s.anchor).map(|a| a.epoch);
    match outcome {
        Ok(outcome) => {
            let outcome = match outcome {
                RunOutcome::Reboot => "reboot".to_string(),
                RunOutcome::Resting(state) => format!("resting:{}", state.name()),
            };
            println!(
                "{}",
                serde_json::json!({
                    "ok": true, "outcome": outcome, "state": state, "installed": installed,
                    "last_error": error, "anchor_epoch": epoch,
                })
            );
            std::process::exit(0);
        }
        Err(e) => fail(&format!("{e:?}")),
    }
}
