//! The MCU agent (`device-client/mcu`, issue 12) as its host build runs it: embassy-net on a
//! TAP device — its own TCP/IP stack, as on the board — inside a network namespace this
//! test creates, against a real origin and edge node in the same namespace; its flash a file
//! with embassy-boot's partitions, and embassy-boot's bootloader run as a separate step
//! between the agent's "boots". Needs root; elsewhere the test prints why and passes without
//! running. The agent binaries are built by `scripts/test`
//! (`cargo build --manifest-path device-client/mcu/Cargo.toml --features host`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::netns::{in_netns, NetPair};
use support::{eventually, random_bytes, run_to_exit, seeder, Edge, Origin};

/// The kernel's side of the TAP link, where the edge node's device service listens.
const TAP_HOST_IP: &str = "10.78.0.1";
/// The agent's address on the TAP link (its embassy-net stack).
const AGENT_IP: &str = "10.78.0.2/24";
const TAP: &str = "om-tap";
/// Where ACTIVE starts in the agent's flash file (`layout::HOST_DEVICE`).
const ACTIVE_OFFSET: usize = 4096;
const IMAGE_BYTES: usize = 150_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn mcu_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-client/mcu/target/debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --manifest-path device-client/mcu/Cargo.toml --features host` \
         (scripts/test does)",
        path.display()
    );
    path
}

/// A TAP device in `ns`, up, with the host side's address.
fn add_tap(ns: &str) {
    for args in [
        vec!["-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap"],
        vec!["-n", ns, "addr", "add", &format!("{TAP_HOST_IP}/24"), "dev", TAP],
        vec!["-n", ns, "link", "set", TAP, "up"],
    ] {
        let out = Command::new("ip").args(&args).output().expect("ip runs");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
}

/// An origin and an edge in a namespace with a TAP link, the factory image and v2 published,
/// v2 rolled out to everyone; the device's flash file not yet created.
struct Bench {
    net: NetPair,
    dir: tempfile::TempDir,
    _origin: Origin,
    edge: Edge,
    repo: PathBuf,
    factory: Vec<u8>,
    v2: Vec<u8>,
}

impl Bench {
    fn new(tag: &str) -> Option<Bench> {
        let net = match NetPair::create(tag) {
            Ok(net) => net,
            Err(why) => {
                eprintln!("SKIPPED: network namespaces are unavailable here ({why}); run as root");
                return None;
            }
        };
        add_tap(&net.edge);
        let dir = tempfile::tempdir().unwrap();
        let origin = net.origin(dir.path());
        let repo = origin.repo.clone();
        // The device pins the anchor of a fresh repository: the rollouts key, created by
        // the first rollout below, reaches it through the statement the seals carry.
        let anchor = dir.path().join("anchor.bin");
        seeder(&["mcu", "anchor", "--repo", repo.to_str().unwrap(), "--out", anchor.to_str().unwrap()]);
        let edge = net.edge("edge", &dir.path().join("edge"), "plant-1", "0.0.0.0:0", &origin.addr);
        let (factory, v2) = (random_bytes(IMAGE_BYTES, 1), random_bytes(IMAGE_BYTES, 2));
        std::fs::write(dir.path().join("factory.bin"), &factory).unwrap();
        let image = dir.path().join("v2.bin");
        std::fs::write(&image, &v2).unwrap();
        // Fixed 4 KiB chunks (flash sectors), encrypted (the default), not compressed.
        seeder(&[
            "release", "add", "--repo", repo.to_str().unwrap(), "--image", image.to_str().unwrap(), "--name", "gw",
            "--version", "2.0.0", "--hw-class", "imx8", "--security-counter", "2", "--chunking", "fixed:4K",
            "--compress", "none",
        ]);
        seeder(&["rollout", "start", "--repo", repo.to_str().unwrap(), "gw", "2.0.0", "--waves", "100"]);
        // Served once registered (its seal in the same refresh): the edge's status lists it.
        eventually("the rollout policy at the edge", Duration::from_secs(60), || {
            let status = in_netns(&net.edge, || edge.status())?;
            status["rollouts"].as_array()?.iter().any(|r| r["rollout"] == "gw-2.0.0").then_some(())
        });
        Some(Bench { net, dir, _origin: origin, edge, repo, factory, v2 })
    }

    fn flash(&self) -> PathBuf {
        self.dir.path().join("flash.bin")
    }

    /// One boot of the agent; its JSON line.
    fn agent(&self, health: &str) -> Value {
        let edge = format!("{TAP_HOST_IP}:{}", self.edge.device_tcp.port());
        let path = |p: PathBuf| p.to_str().unwrap().to_string();
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.net.edge.clone(),
            path(mcu_binary("mcu-agent")),
            "--tap".into(),
            TAP.into(),
            "--ip".into(),
            AGENT_IP.into(),
            "--edge".into(),
            edge,
            "--flash".into(),
            path(self.flash()),
            "--factory".into(),
            path(self.dir.path().join("factory.bin")),
            "--anchor".into(),
            path(self.dir.path().join("anchor.bin")),
            "--content-key".into(),
            path(self.repo.join("keys/content.key")),
            "--release".into(),
            "gw".into(),
            "--hw-class".into(),
            "imx8".into(),
            "--health".into(),
            health.into(),
        ];
        let run = run_to_exit(Path::new("ip"), &args, &[], RUN_TIMEOUT);
        let line = run.stdout.lines().last().unwrap_or_default().to_string();
        let report: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("agent printed no JSON ({e}): {}{}", run.stdout, run.stderr));
        assert_eq!(report["ok"], true, "{report} {}", run.stderr);
        report
    }

    /// The bootloader step between boots; its outcome.
    fn bootloader(&self) -> String {
        let args = vec!["--layout".into(), "device".into(), self.flash().to_str().unwrap().to_string()];
        let run = run_to_exit(&mcu_binary("mcu-bootloader"), &args, &[], RUN_TIMEOUT);
        assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
        let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
        report["outcome"].as_str().unwrap().to_string()
    }

    fn active_image(&self) -> Vec<u8> {
        std::fs::read(self.flash()).unwrap()[ACTIVE_OFFSET..ACTIVE_OFFSET + IMAGE_BYTES].to_vec()
    }
}

#[test]
fn an_mcu_installs_an_encrypted_fixed_chunk_release_and_commits_it() {
    let Some(bench) = Bench::new("mcu-ok") else { return };
    let first = bench.agent("pass");
    assert_eq!(first["outcome"], "reboot", "{first}");
    assert_eq!(first["state"], "pending-reboot", "{first}");
    // Pinned before the rollouts key existed: the policy's seal carried the statement.
    assert_eq!(first["anchor_epoch"], 2, "{first}");
    assert!(bench.active_image() == bench.factory, "ACTIVE changed before the bootloader ran");

    assert_eq!(bench.bootloader(), "swapped");
    let second = bench.agent("pass");
    assert_eq!((second["outcome"].as_str(), second["installed"].as_str()), (Some("resting:committed"), Some("2.0.0")), "{second}");
    assert!(bench.active_image() == bench.v2, "ACTIVE does not hold v2 byte for byte");
    // Committed: the next reset boots it as it is.
    assert_eq!(bench.bootloader(), "boot");
    assert!(bench.active_image() == bench.v2);
}

#[test]
fn a_failing_health_check_reverts_the_mcu_to_its_old_image() {
    let Some(bench) = Bench::new("mcu-bad") else { return };
    assert_eq!(bench.agent("pass")["outcome"], "reboot");
    assert_eq!(bench.bootloader(), "swapped");
    assert!(bench.active_image() == bench.v2);
    let trial = bench.agent("fail");
    assert_eq!(trial["outcome"], "reboot", "the failed trial must reset into the bootloader: {trial}");
    assert_eq!(bench.bootloader(), "reverted");
    assert!(bench.active_image() == bench.factory, "ACTIVE does not hold the factory image again");
    let after = bench.agent("pass");
    assert_eq!(after["installed"], "factory", "{after}");
    assert_eq!(after["state"], "rolled-back", "{after}");
}
