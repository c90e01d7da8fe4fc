//! `mcu-agent`: the MCU agent as a Linux process — the very same library the board firmware
//! links, on embassy's std platform, its network a TAP device (embassy-net over
//! embassy-net-tuntap: its own TCP/IP stack, as on the board), its flash a file laid out as
//! `layout::HOST_DEVICE` with embassy-boot's partitions.
//!
//! One run is one boot (`agent::run_once`): it ends when the agent rests (nothing to install,
//! or the trial committed) or asks for a reset — the process then exits, and whoever runs it
//! runs `mcu-bootloader --layout device` on the flash file before starting it again, as a
//! board's bootloader runs before its application. Prints one JSON line: where the run ended,
//! and its cost — `elapsed_ms` and `cpu_ms` of `run_once` alone (the network up, the flash
//! file made), `received_bytes`, every byte it read from the edges, and `connections`, each
//! connection's bytes read and milliseconds from connect to close (the download is the one
//! that read the chunks). `scripts/bench-mcu` sets the run and the download connection
//! against `mcu-plain-download` of as many bytes.

use std::cell::{Cell, RefCell};
use std::net::SocketAddrV4;
use std::path::PathBuf;

use clap::Parser;
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_sync::blocking_mutex::Mutex;
use embassy_time::Duration;
use static_cell::StaticCell;

use otamesh_mcu::agent::{run_once, AgentBuffers, AgentConfig, Edges, RunOutcome};
use otamesh_mcu::host::{elapsed_ms, parse_cidr, process_cpu_ms, start_stack, CHUNK_BYTES, RX_BYTES, TX_BYTES};
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
    /// The device's status key: a file holding a 32-byte ed25519 seed as 64 hex digits (the
    /// Linux agent's `device.key` format). Its public half is the device's id in rollouts
    /// and signs its status reports; without it the device reports nothing and counts as
    /// an all-zero id.
    #[arg(long)]
    device_key: Option<PathBuf>,
    /// What the trial's health check answers.
    #[arg(long, value_parser = ["pass", "fail"], default_value = "pass")]
    health: String,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 10)]
    request_timeout_secs: u64,
}

/// The link's frame buffer: the largest answer (a 4 KiB chunk, a seal, a manifest).
const LINK_BYTES: usize = 16 * 1024;
/// The largest manifest this device takes.
const MANIFEST_BYTES: usize = 16 * 1024;
const POLICY_BYTES: usize = protocol::rollout::policy::limits::MAX_POLICY_BYTES;

static RX: StaticCell<[u8; RX_BYTES]> = StaticCell::new();
static TX: StaticCell<[u8; TX_BYTES]> = StaticCell::new();
static LINK: StaticCell<[u8; LINK_BYTES]> = StaticCell::new();
static CHUNK: StaticCell<[u8; CHUNK_BYTES]> = StaticCell::new();
static POLICY: StaticCell<[u8; POLICY_BYTES]> = StaticCell::new();
static MANIFEST: StaticCell<[u8; MANIFEST_BYTES]> = StaticCell::new();

/// The configured edges over the TAP stack, one TCP socket at a time.
struct TapEdges {
    stack: Stack<'static>,
    addrs: Vec<SocketAddrV4>,
    rx: &'static mut [u8; RX_BYTES],
    tx: &'static mut [u8; TX_BYTES],
    timeout: Duration,
    /// Bytes read from every connection so far (the JSON line's `received_bytes`).
    received: Cell<u64>,
    /// Each connection's bytes and duration, in the order they were opened.
    connections: RefCell<Vec<ConnectionCost>>,
}

/// One connection's share of a run: what the JSON line's `connections` lists.
#[derive(Debug, Clone, Copy, Default)]
struct ConnectionCost {
    /// Bytes read on it.
    bytes: u64,
    /// Milliseconds from just before the connect until the socket was dropped (the agent
    /// is done with it: for the download, its last chunk is verified and written).
    ms: f64,
}

impl Edges for TapEdges {
    type Stream<'s> = CountedSocket<'s>;

    fn count(&self) -> usize {
        self.addrs.len()
    }

    async fn connect(&mut self, index: usize) -> Option<CountedSocket<'_>> {
        let addr = *self.addrs.get(index)?;
        let opened = std::time::Instant::now();
        let mut socket = TcpSocket::new(self.stack, &mut self.rx[..], &mut self.tx[..]);
        socket.set_timeout(Some(self.timeout));
        // Requests are small and pipelined: Nagle would hold each behind the acknowledgement
        // of the one before, which the edge sends with its answer (see `edge_link`).
        socket.set_nagle_enabled(false);
        socket.connect((*addr.ip(), addr.port())).await.ok()?;
        let slot = {
            let mut connections = self.connections.borrow_mut();
            connections.push(ConnectionCost::default());
            connections.len() - 1
        };
        Some(CountedSocket { socket, received: &self.received, connections: &self.connections, slot, opened })
    }
}

/// A TCP socket that adds the bytes it reads to the run's counters.
struct CountedSocket<'s> {
    socket: TcpSocket<'s>,
    received: &'s Cell<u64>,
    connections: &'s RefCell<Vec<ConnectionCost>>,
    /// Its entry in `connections`.
    slot: usize,
    opened: std::time::Instant,
}

impl Drop for CountedSocket<'_> {
    fn drop(&mut self) {
        if let Some(cost) = self.connections.borrow_mut().get_mut(self.slot) {
            cost.ms = elapsed_ms(self.opened);
        }
    }
}

impl embedded_io_async::ErrorType for CountedSocket<'_> {
    type Error = embassy_net::tcp::Error;
}

impl embedded_io_async::Read for CountedSocket<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.socket.read(buf).await?;
        self.received.set(self.received.get() + n as u64);
        if let Some(cost) = self.connections.borrow_mut().get_mut(self.slot) {
            cost.bytes += n as u64;
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for CountedSocket<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.socket.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.socket.flush().await
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
    let Some((ip, prefix)) = parse_cidr(&args.ip) else { fail("--ip must be ADDRESS/PREFIX, e.g. 10.78.0.2/24") };
    let anchor_bytes = std::fs::read(&args.anchor).unwrap_or_else(|e| fail(&format!("cannot read the anchor: {e}")));
    let anchor = TrustAnchor::decode(&anchor_bytes).unwrap_or_else(|e| {
        fail(&format!("{} is not a trust anchor ({e}); write one with `seeder mcu anchor`", args.anchor.display()))
    });
    let content_key = args.content_key.as_deref().map(|p| ContentKey(read_hex32(p, "content key")));
    let status_key =
        args.device_key.as_deref().map(|p| otamesh_mcu::status_key::StatusKey::from_seed(&read_hex32(p, "device key")));
    let device_id = status_key.as_ref().map_or([0; 32], |k| k.public());
    let flash = Mutex::new(RefCell::new(open_flash(&args)));

    let stack = start_stack(spawner, &args.tap, ip, prefix).await.unwrap_or_else(|e| fail(&e));

    let timeout = Duration::from_secs(args.request_timeout_secs.max(1));
    let mut edges = TapEdges {
        stack,
        addrs: args.edges.clone(),
        rx: RX.init([0; RX_BYTES]),
        tx: TX.init([0; TX_BYTES]),
        timeout,
        received: Cell::new(0),
        connections: RefCell::new(Vec::new()),
    };
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
        status_key: status_key.as_ref(),
        provisioned_anchor: anchor,
        factory_version: "factory",
        request_timeout: timeout,
    };
    let buffers = AgentBuffers {
        link: &mut LINK.init([0; LINK_BYTES])[..],
        chunk: &mut CHUNK.init([0; CHUNK_BYTES])[..],
        policy: &mut POLICY.init([0; POLICY_BYTES])[..],
        manifest: &mut MANIFEST.init([0; MANIFEST_BYTES])[..],
    };
    let healthy = args.health == "pass";
    let unix_now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    // The run alone, after the network is up and the flash file exists: what a benchmark
    // sets against a plain download of `received_bytes` over the same stack.
    let (started, cpu_before) = (std::time::Instant::now(), process_cpu_ms());
    let outcome = run_once(&flash, &HOST_DEVICE, &agent, &mut edges, buffers, || healthy, unix_now).await;
    let (elapsed_ms, cpu_ms) = (elapsed_ms(started), process_cpu_ms() - cpu_before);
    let record = otamesh_mcu::agent_store::AgentStore::open(
        otamesh_mcu::boot::Partitions::new(&HOST_DEVICE, &flash).unwrap_or_else(|_| fail("layout")).agent,
    )
    .ok()
    .and_then(|(_, state)| state);
    let installed = record.as_ref().map(|s| s.record.installed.version.as_str().to_string());
    let state = record.as_ref().map(|s| s.record.state.name());
    let error = record.as_ref().and_then(|s| s.record.last_error).map(|e| format!("{e:?}"));
    let epoch = record.as_ref().and_then(|s| s.anchor).map(|a| a.epoch);
    let report_seq = record.as_ref().map(|s| s.report.seq);
    let chunks_done = record.as_ref().map(|s| s.progress.done_count());
    let report_unsent = record.as_ref().map(|s| s.report.unsent);
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
                    "report_seq": report_seq, "report_unsent": report_unsent,
                    "chunks_done": chunks_done,
                    "elapsed_ms": elapsed_ms, "cpu_ms": cpu_ms, "received_bytes": edges.received.get(),
                    "connections": edges.connections.borrow().iter()
                        .map(|c| serde_json::json!({"bytes": c.bytes, "ms": c.ms})).collect::<Vec<_>>(),
                })
            );
            std::process::exit(0);
        }
        Err(e) => fail(&format!("{e:?}")),
    }
}
