//! What the host binaries share (feature `host`): embassy-net on a Linux TAP device with the
//! MCU's buffer sizes, and the clocks their JSON lines report.
//!
//! `mcu-agent` and `mcu-plain-download` both take their TCP buffers from here, so the
//! benchmark that sets one against the other (`scripts/bench-mcu`) compares the agent's
//! protocol, verification and flash writes with a plain download over the very same socket
//! configuration, not with a bigger window.

use std::net::Ipv4Addr;

use embassy_executor::Spawner;
use embassy_net::{Config, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use static_cell::StaticCell;

/// TCP receive window: one chunk answer in flight.
pub const RX_BYTES: usize = 8 * 1024;
/// TCP send buffer: requests are small.
pub const TX_BYTES: usize = 1024;
/// The largest stored chunk: 4 KiB plus the AEAD's nonce and tag (the agent's chunk buffer;
/// the plain download reads through a buffer of the same size).
pub const CHUNK_BYTES: usize = 4096 + 40;

static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

/// Parses `ADDRESS/PREFIX` (e.g. `10.78.0.2/24`).
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= 32)?;
    Some((ip.parse().ok()?, prefix))
}

/// Opens TAP device `tap`, starts embassy-net on it with the static address `ip/prefix`
/// (its network task spawned on `spawner`) and returns the stack once it is configured.
/// Call once per process: the stack's resources are static.
pub async fn start_stack(spawner: Spawner, tap: &str, ip: Ipv4Addr, prefix: u8) -> Result<Stack<'static>, String> {
    let device = TunTapDevice::new(tap)
        .map_err(|e| format!("cannot open TAP device {tap}: {e} (create it and bring it up first)"))?;
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ip, prefix),
        gateway: None,
        dns_servers: heapless::Vec::new(),
    });
    let mut seed = [0u8; 8];
    // The seed only spreads TCP sequence numbers and ports; a zero seed still works.
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let resources = RESOURCES.try_init(StackResources::new()).ok_or("the network stack was started twice")?;
    let (stack, runner) = embassy_net::new(device, config, resources, u64::from_le_bytes(seed));
    spawner.spawn(net_task(runner).map_err(|e| format!("cannot start the network task: {e:?}"))?);
    stack.wait_config_up().await;
    Ok(stack)
}

/// CPU time (user + system, all threads) this process has used, in milliseconds.
pub fn process_cpu_ms() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 * 1e3 + now.tv_nsec as f64 / 1e6
}

/// Milliseconds since `start`, to the microsecond.
pub fn elapsed_ms(start: std::time::Instant) -> f64 {
    start.elapsed().as_micros() as f64 / 1e3
}
