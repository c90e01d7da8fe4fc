//! `mcu-plain-download`: the baseline for the MCU agent's download. embassy-net on the same
//! TAP device with the agent's TCP buffers (`otamesh_mcu::host`), one connection to a plain
//! TCP server, everything read until the server closes through a buffer of the agent's chunk
//! size and thrown away: no protocol, no verification, no flash. Prints one JSON line with
//! the bytes read and `elapsed_ms` from just before the connect to EOF.

use std::net::SocketAddrV4;

use clap::Parser;
use embassy_executor::Spawner;
use embassy_net::tcp::TcpSocket;
use embassy_time::Duration;
use static_cell::StaticCell;

use otamesh_mcu::host::{elapsed_ms, parse_cidr, process_cpu_ms, start_stack, CHUNK_BYTES, RX_BYTES, TX_BYTES};

/// A plain TCP download over embassy-net on a TAP device, with the MCU agent's buffer sizes:
/// what `scripts/bench-mcu` compares the agent's download with.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TAP device to attach to (it must exist and be up: `ip tuntap add dev tap0 mode tap`).
    #[arg(long, default_value = "tap0")]
    tap: String,
    /// This device's IPv4 address and prefix on the TAP network.
    #[arg(long, default_value = "10.78.0.2/24")]
    ip: String,
    /// The server: it sends its bytes on connect and closes.
    #[arg(long)]
    server: SocketAddrV4,
    /// Seconds the socket may sit idle before the download fails.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

static RX: StaticCell<[u8; RX_BYTES]> = StaticCell::new();
static TX: StaticCell<[u8; TX_BYTES]> = StaticCell::new();

fn fail(what: &str) -> ! {
    println!("{}", serde_json::json!({"ok": false, "error": what}));
    std::process::exit(1);
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let args = Args::parse();
    let Some((ip, prefix)) = parse_cidr(&args.ip) else { fail("--ip must be ADDRESS/PREFIX, e.g. 10.78.0.2/24") };
    let stack = start_stack(spawner, &args.tap, ip, prefix).await.unwrap_or_else(|e| fail(&e));
    let mut socket = TcpSocket::new(stack, &mut RX.init([0; RX_BYTES])[..], &mut TX.init([0; TX_BYTES])[..]);
    socket.set_timeout(Some(Duration::from_secs(args.timeout_secs.max(1))));
    let mut chunk = [0u8; CHUNK_BYTES];

    let (started, cpu_before) = (std::time::Instant::now(), process_cpu_ms());
    let server = (*args.server.ip(), args.server.port());
    socket.connect(server).await.unwrap_or_else(|e| fail(&format!("cannot connect to {}: {e:?}", args.server)));
    let mut bytes = 0u64;
    loop {
        match socket.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) => fail(&format!("the download failed after {bytes} bytes: {e:?}")),
        }
    }
    let (elapsed_ms, cpu_ms) = (elapsed_ms(started), process_cpu_ms() - cpu_before);
    println!("{}", serde_json::json!({"ok": true, "bytes": bytes, "elapsed_ms": elapsed_ms, "cpu_ms": cpu_ms}));
    std::process::exit(0);
}
