//! The MCU agent (`device-client/mcu`, issue 12) as its host build runs it: embassy-net on a
//! TAP device — its own TCP/IP stack, as on the board — inside a network namespace this
//! test creates, talking to a real origin and edge node in the same namespace. Needs root;
//! elsewhere the test prints why and passes without running. The agent binary is built by
//! `scripts/test` (`cargo build --manifest-path device-client/mcu/Cargo.toml --features host`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::netns::{in_netns, NetPair};
use support::{eventually, random_bytes, run_to_exit, seeder};

/// The kernel's side of the TAP link, where the edge node's device service listens.
const TAP_HOST_IP: &str = "10.78.0.1";
/// The agent's address on the TAP link (its embassy-net stack).
const AGENT_IP: &str = "10.78.0.2/24";
const TAP: &str = "om-tap";

fn agent_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-client/mcu/target/debug/mcu-agent");
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

#[test]
fn an_mcu_on_a_tap_device_finds_and_verifies_the_release_its_sealed_policy_names() {
    let agent = agent_binary();
    let net = match NetPair::create("mcu") {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are unavailable here ({why}); run as root");
            return;
        }
    };
    add_tap(&net.edge);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let origin = net.origin(root);
    let repo = origin.repo.to_str().unwrap().to_string();
    // The device pins the anchor of a fresh repository: the rollouts key, created by the
    // first rollout below, reaches it through the trust statement the seals carry.
    let anchor = root.join("anchor.bin");
    seeder(&["mcu", "anchor", "--repo", &repo, "--out", anchor.to_str().unwrap()]);
    let edge = net.edge("edge", &root.join("edge"), "plant-1", "0.0.0.0:0", &origin.addr);

    let image = root.join("fw.bin");
    std::fs::write(&image, random_bytes(200_000, 12)).unwrap();
    let published = seeder(&[
        "release", "add", "--repo", &repo, "--image", image.to_str().unwrap(), "--name", "gw", "--version", "2.0.0",
        "--hw-class", "imx8", "--security-counter", "2", "--chunking", "fixed:4K", "--compress", "none",
    ]);
    seeder(&["rollout", "start", "--repo", &repo, "gw", "2.0.0", "--waves", "100"]);
    // Served once registered (its seal in the same refresh): the edge's status lists it.
    eventually("the rollout policy at the edge", Duration::from_secs(60), || {
        let status = in_netns(&net.edge, || edge.status())?;
        status["rollouts"].as_array()?.iter().any(|r| r["rollout"] == "gw-2.0.0").then_some(())
    });

    let edge_addr = format!("{TAP_HOST_IP}:{}", edge.device_tcp.port());
    let args: Vec<String> = [
        "netns", "exec", &net.edge, agent.to_str().unwrap(), "--tap", TAP, "--ip", AGENT_IP, "--edge", &edge_addr,
        "--anchor", anchor.to_str().unwrap(), "--release", "gw", "--hw-class", "imx8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = run_to_exit(Path::new("ip"), &args, &[], Duration::from_secs(60));
    let line = run.stdout.lines().last().unwrap_or_default().to_string();
    let report: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("agent printed no JSON ({e}): {}{}", run.stdout, run.stderr));
    assert_eq!(report["ok"], true, "{report} {}", run.stderr);
    assert_eq!(report["version"], "2.0.0");
    assert_eq!(report["chunks"], published["chunks"]);
    assert_eq!(report["security_counter"], 2);
    // Pinned before the rollouts key existed: the policy's seal carried the statement.
    assert_eq!((report["anchor_epoch"].as_u64(), report["anchor_rotated"].as_bool()), (Some(2), Some(true)));
}
