//! Links the firmware (this crate's memory.x, cortex-m-rt's link.x) and turns the build-time
//! provisioning variables into `$OUT_DIR/config.rs`, checked here so that a bad value is a
//! build error, not a board that boots into nothing.
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `OTAMESH_DEVICE_IP` | `10.78.0.2/24` | the board's IPv4 address and prefix (static) |
//! | `OTAMESH_GATEWAY` | none | IPv4 gateway, if the edges are not on the local network |
//! | `OTAMESH_EDGES` | `10.78.0.1:4434` | edge device services, comma-separated, tried in order (at most 4) |
//! | `OTAMESH_RELEASE` | `sensor-fw` | the release name the board follows |
//! | `OTAMESH_HW_CLASS` | `nucleo-f767zi` | its hardware class |
//! | `OTAMESH_DEVICE_ID` | sha256 of the MCU's 96-bit unique id | 64 hex digits: its place in a rollout's waves |
//! | `OTAMESH_CONTENT_KEY` | none (plaintext releases) | the fleet content key, 64 hex digits |
//! | `OTAMESH_DEVICE_KEY` | none (no status reports) | path of the board's status key: a 32-byte ed25519 seed as 64 hex digits; its public half becomes the device id (enroll it with `seeder devices enroll`) |
//! | `OTAMESH_ANCHOR` | `firmware/fixtures/anchor.bin` (a TEST key, with a warning) | path of the trust anchor (`seeder mcu anchor --out FILE`) |
//! | `OTAMESH_FACTORY_VERSION` | `factory` | the version the agent records for this image before any update |
//! | `OTAMESH_CHECK_INTERVAL_SECS` | `600` | seconds between checks |
//! | `OTAMESH_UNIX_TIME` | the build's time | the wall clock at boot (there is no RTC or SNTP yet) |
//!
//! The defaults match `firmware/fixtures` and `scripts/firmware-qemu`.
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

const MAX_EDGES: usize = 4;
/// `protocol::seal::MAX_ANCHOR_BYTES`.
const MAX_ANCHOR_BYTES: usize = 4 + 1 + 4 + 2 * (2 + 8 * 32);

fn var(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| v.trim().to_string())
}

fn fail(name: &str, why: impl std::fmt::Display) -> ! {
    panic!("{name}: {why}");
}

fn hex32(name: &str, text: &str) -> [u8; 32] {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        fail(name, "must be 64 hex digits");
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).unwrap_or_else(|_| fail(name, "not hex"));
        out[i] = u8::from_str_radix(digits, 16).unwrap_or_else(|_| fail(name, "not hex"));
    }
    out
}

fn label(name: &str, default: &str, max: usize) -> String {
    let value = var(name).unwrap_or_else(|| default.to_string());
    if value.is_empty() || value.len() > max || !value.is_ascii() {
        fail(name, format_args!("must be 1 to {max} ASCII characters"));
    }
    value
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("memory.x is in the crate root");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");

    let ip_text = var("OTAMESH_DEVICE_IP").unwrap_or_else(|| "10.78.0.2/24".into());
    let (ip, prefix) = ip_text.split_once('/').unwrap_or_else(|| fail("OTAMESH_DEVICE_IP", "ADDRESS/PREFIX"));
    let ip: Ipv4Addr = ip.parse().unwrap_or_else(|e| fail("OTAMESH_DEVICE_IP", e));
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).unwrap_or_else(|| fail("OTAMESH_DEVICE_IP", "prefix"));
    let gateway: Option<Ipv4Addr> =
        var("OTAMESH_GATEWAY").map(|g| g.parse().unwrap_or_else(|e| fail("OTAMESH_GATEWAY", e)));
    let edges: Vec<SocketAddrV4> = var("OTAMESH_EDGES")
        .unwrap_or_else(|| "10.78.0.1:4434".into())
        .split(',')
        .map(|e| e.trim().parse().unwrap_or_else(|err| fail("OTAMESH_EDGES", format_args!("{e}: {err}"))))
        .collect();
    if edges.is_empty() || edges.len() > MAX_EDGES {
        fail("OTAMESH_EDGES", format_args!("1 to {MAX_EDGES} edges"));
    }
    // The install record's label limit (`protocol::install::Label`) and the manifest's.
    let release = label("OTAMESH_RELEASE", "sensor-fw", 64);
    let hw_class = label("OTAMESH_HW_CLASS", "nucleo-f767zi", 32);
    let factory_version = label("OTAMESH_FACTORY_VERSION", "factory", 32);
    let device_id = var("OTAMESH_DEVICE_ID").map(|h| hex32("OTAMESH_DEVICE_ID", &h));
    let content_key = var("OTAMESH_CONTENT_KEY").map(|h| hex32("OTAMESH_CONTENT_KEY", &h));
    let device_key = var("OTAMESH_DEVICE_KEY").map(|path| {
        println!("cargo:rerun-if-changed={path}");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| fail("OTAMESH_DEVICE_KEY", format_args!("{path}: {e}")));
        hex32("OTAMESH_DEVICE_KEY", text.trim())
    });
    let anchor_path = match var("OTAMESH_ANCHOR") {
        Some(path) => PathBuf::from(path),
        None => {
            println!(
                "cargo:warning=OTAMESH_ANCHOR is not set: this build trusts firmware/fixtures/anchor.bin, \
                 a TEST anchor whose private keys are in the repository"
            );
            manifest_dir.join("../fixtures/anchor.bin")
        }
    };
    let anchor_path = anchor_path.canonicalize().unwrap_or_else(|e| fail("OTAMESH_ANCHOR", e));
    println!("cargo:rerun-if-changed={}", anchor_path.display());
    let anchor = std::fs::read(&anchor_path).unwrap_or_else(|e| fail("OTAMESH_ANCHOR", e));
    // The full check (`TrustAnchor::decode`) runs on the board at boot; this catches the
    // wrong file.
    if !anchor.starts_with(b"OTTA") || anchor.len() > MAX_ANCHOR_BYTES {
        fail("OTAMESH_ANCHOR", "not a trust anchor (write one with `seeder mcu anchor --out FILE`)");
    }
    let check_interval_secs: u64 = var("OTAMESH_CHECK_INTERVAL_SECS")
        .map(|s| s.parse().ok().filter(|n| *n > 0).unwrap_or_else(|| fail("OTAMESH_CHECK_INTERVAL_SECS", "seconds")))
        .unwrap_or(600);
    let unix_time: i64 = match var("OTAMESH_UNIX_TIME") {
        Some(s) => s.parse().unwrap_or_else(|e| fail("OTAMESH_UNIX_TIME", e)),
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
    };

    let mut config = String::new();
    let mut line = |s: String| {
        config.push_str(&s);
        config.push('\n');
    };
    line("// Generated by build.rs from the OTAMESH_* variables; see its doc comment.".into());
    line(format!("pub const DEVICE_IP: [u8; 4] = {:?};", ip.octets()));
    line(format!("pub const PREFIX_LEN: u8 = {prefix};"));
    line(format!("pub const GATEWAY: Option<[u8; 4]> = {:?};", gateway.map(|g| g.octets())));
    let mut list = String::new();
    for e in &edges {
        let _ = write!(list, "({:?}, {}), ", e.ip().octets(), e.port());
    }
    line(format!("pub const EDGES: &[([u8; 4], u16)] = &[{list}];"));
    line(format!("pub const RELEASE: &str = {release:?};"));
    line(format!("pub const HW_CLASS: &str = {hw_class:?};"));
    line(format!("pub const FACTORY_VERSION: &str = {factory_version:?};"));
    line(format!("pub const DEVICE_ID: Option<[u8; 32]> = {device_id:?};"));
    line(format!("pub const CONTENT_KEY: Option<[u8; 32]> = {content_key:?};"));
    line(format!("pub const DEVICE_KEY: Option<[u8; 32]> = {device_key:?};"));
    line(format!("pub const ANCHOR: &[u8] = include_bytes!({:?});", anchor_path.display().to_string()));
    line(format!("pub const CHECK_INTERVAL_SECS: u64 = {check_interval_secs};"));
    line(format!("pub const UNIX_TIME_AT_BOOT: i64 = {unix_time};"));
    std::fs::write(out.join("config.rs"), config).expect("OUT_DIR is writable");
}
