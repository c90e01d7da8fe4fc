//! `simnet demo --hold`: after the summary, the mesh stays up for a microcontroller.
//!
//! The MCU agent's host build (`mcu-agent`) runs its own TCP/IP stack on a TAP device, so it
//! reaches the edge nodes over the TAP link, not loopback: with `--hold` the edges' framed-TCP
//! device services listen on every interface. This module publishes a small firmware release
//! the way an MCU takes it (fixed 4 KiB chunks, sealed for verification without TUF), rolls
//! it out, writes the trust anchor and a factory image, prints the commands that install it,
//! and waits for Ctrl-C, which ends every daemon (they share the terminal's process group).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{procs, say, wait_until};

/// The MCU release the held demo serves.
const MCU_RELEASE: &str = "sensor-fw";
const MCU_VERSION: &str = "1.1.0";
const MCU_HW_CLASS: &str = "stm32f767";
/// Below the host layout's 256 KiB ACTIVE partition.
const MCU_IMAGE_BYTES: usize = 200 * 1024;
/// The kernel's side of the TAP link the printed commands create.
const TAP_HOST_IP: &str = "10.78.0.1";

/// Publishes and rolls out the MCU release, prints how to install it, and never returns:
/// Ctrl-C ends the demo. `device_tcp_ports` are the edges' device-service TCP ports.
pub fn serve_mcu(
    seeder: &Path,
    repo: &str,
    dir: &Path,
    device_tcp_ports: &[u16],
    rollout_seen: impl Fn(&str) -> bool,
) -> Result<()> {
    say(&format!(
        "--hold: publish {MCU_RELEASE} {MCU_VERSION} for microcontrollers (fixed 4 KiB chunks, sealed) and roll it out"
    ));
    let factory = dir.join("mcu-factory.bin");
    let image = dir.join("mcu-image.bin");
    std::fs::write(&factory, test_procs::random_bytes(MCU_IMAGE_BYTES, 11)).context("writing the factory image")?;
    std::fs::write(&image, test_procs::random_bytes(MCU_IMAGE_BYTES, 12)).context("writing the MCU image")?;
    let image_s = image.to_str().context("path")?;
    procs::run(
        seeder,
        &[
            "release",
            "add",
            "--repo",
            repo,
            "--image",
            image_s,
            "--name",
            MCU_RELEASE,
            "--version",
            MCU_VERSION,
            "--hw-class",
            MCU_HW_CLASS,
            "--security-counter",
            "1",
            "--chunking",
            "fixed:4K",
            "--compress",
            "none",
        ],
    )?;
    procs::run(seeder, &["rollout", "start", "--repo", repo, MCU_RELEASE, MCU_VERSION, "--waves", "100"])?;
    let anchor = dir.join("mcu-anchor.bin");
    procs::run(seeder, &["mcu", "anchor", "--repo", repo, "--out", anchor.to_str().context("path")?])?;
    // The device's status key, enrolled in site-0 so the rollout counts its signed reports.
    let seed: [u8; 32] = test_procs::random_bytes(32, 13)[..32].try_into().context("seed")?;
    let device_key = dir.join("mcu-device.key");
    std::fs::write(&device_key, protocol::hex::encode(&seed)).context("writing the MCU device key")?;
    let public = protocol::hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    procs::run(
        seeder,
        &[
            "devices",
            "enroll",
            "--repo",
            repo,
            "--key",
            &public,
            "--id",
            "mcu-0001",
            "--site",
            "site-0",
            "--hw-class",
            MCU_HW_CLASS,
        ],
    )?;
    let rollout = format!("{MCU_RELEASE}-{MCU_VERSION}");
    wait_until("the edge nodes to serve the MCU rollout", Duration::from_secs(120), || rollout_seen(&rollout))?;

    let edges: String = device_tcp_ports.iter().map(|p| format!(" --edge {TAP_HOST_IP}:{p}")).collect();
    let flash = dir.join("mcu-flash.bin");
    println!(
        "\nThe mesh stays up (Ctrl-C ends it; the working directory {dir} is kept: remove it when done).\n\
         Install {MCU_RELEASE} {MCU_VERSION} on the MCU agent's host build, as root, from the repository root:\n\n\
         ip tuntap add dev tap0 mode tap && ip addr add {TAP_HOST_IP}/24 dev tap0 && ip link set tap0 up\n\
         cargo build --manifest-path device-client/mcu/Cargo.toml --features host --bins\n\
         B=device-client/mcu/target/debug\n\
         A=\"--tap tap0 --ip 10.78.0.2/24{edges} --flash {flash} --factory {factory} --anchor {anchor} \\\n   \
         --content-key {repo}/keys/content.key --device-key {device_key} --release {MCU_RELEASE} --hw-class {MCU_HW_CLASS}\"\n\
         $B/mcu-agent $A                                # downloads, verifies, marks DFU: \"outcome\":\"reboot\"\n\
         $B/mcu-bootloader --layout device {flash}      # swaps: \"outcome\":\"swapped\"\n\
         $B/mcu-agent $A                                # trial, health check, mark_booted: \"resting:committed\"\n\
         {seeder} rollout status --repo {repo} {MCU_RELEASE}   # the MCU's signed report, counted\n\
         ip link del tap0\n",
        dir = dir.display(),
        flash = flash.display(),
        factory = factory.display(),
        anchor = anchor.display(),
        device_key = device_key.display(),
        seeder = seeder.display(),
    );
    loop {
        std::thread::park();
    }
}
