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
/// Where ACTIVE starts in the agent's flash file (`layout::HOST_DEVICE`), and its size.
const ACTIVE_OFFSET: usize = 4096;
const FLASH_BYTES: usize = 132 * 4096;
const IMAGE_BYTES: usize = 150_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Chunks a kill may cost the agent: the one it writes and `download::IN_FLIGHT` more it has
/// asked for (device-client/mcu is not a dependency of this workspace, hence the copy).
const CHUNKS_IN_FLIGHT: u64 = 3;

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
    /// Chunks in v2's manifest.
    chunks: u64,
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
        // A SIGKILLed agent's stack dies without closing its TCP connection, which the edge
        // holds until its idle timeout; the kill test resets the device far more often than
        // the per-address cap of 8 connections allows for.
        let edge = net.edge_with(
            "edge",
            &dir.path().join("edge"),
            "plant-1",
            "0.0.0.0:0",
            &origin.addr,
            &["--max-connections-per-client", "512"],
        );
        let (factory, v2) = (random_bytes(IMAGE_BYTES, 1), random_bytes(IMAGE_BYTES, 2));
        std::fs::write(dir.path().join("factory.bin"), &factory).unwrap();
        let image = dir.path().join("v2.bin");
        std::fs::write(&image, &v2).unwrap();
        // Fixed 4 KiB chunks (flash sectors), encrypted (the default), not compressed.
        let published = seeder(&[
            "release",
            "add",
            "--repo",
            repo.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--name",
            "gw",
            "--version",
            "2.0.0",
            "--hw-class",
            "imx8",
            "--security-counter",
            "2",
            "--chunking",
            "fixed:4K",
            "--compress",
            "none",
        ]);
        seeder(&["rollout", "start", "--repo", repo.to_str().unwrap(), "gw", "2.0.0", "--waves", "100"]);
        // Served once registered (its seal in the same refresh): the edge's status lists it.
        eventually("the rollout policy at the edge", Duration::from_secs(60), || {
            let status = in_netns(&net.edge, || edge.status())?;
            status["rollouts"].as_array()?.iter().any(|r| r["rollout"] == "gw-2.0.0").then_some(())
        });
        let chunks = published["chunks"].as_u64().unwrap();
        Some(Bench { net, dir, _origin: origin, edge, repo, factory, v2, chunks })
    }

    fn flash(&self) -> PathBuf {
        self.dir.path().join("flash.bin")
    }

    /// `ip netns exec … mcu-agent …` for the device whose flash file is `flash`.
    fn agent_args(&self, flash: &Path, health: &str) -> Vec<String> {
        let edge = format!("{TAP_HOST_IP}:{}", self.edge.device_tcp.port());
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = vec!["netns".into(), "exec".into(), self.net.edge.clone()];
        args.push(path(&mcu_binary("mcu-agent")));
        for (flag, value) in [
            ("--tap", TAP.to_string()),
            ("--ip", AGENT_IP.to_string()),
            ("--edge", edge),
            ("--flash", path(flash)),
            ("--factory", path(&self.dir.path().join("factory.bin"))),
            ("--anchor", path(&self.dir.path().join("anchor.bin"))),
            ("--content-key", path(&self.repo.join("keys/content.key"))),
            ("--release", "gw".into()),
            ("--hw-class", "imx8".into()),
            ("--health", health.into()),
        ] {
            args.extend([flag.to_string(), value]);
        }
        args
    }

    /// One boot of the agent on `flash`; its JSON line.
    fn agent_on(&self, flash: &Path, health: &str) -> Value {
        let run = run_to_exit(Path::new("ip"), &self.agent_args(flash, health), &[], RUN_TIMEOUT);
        let line = run.stdout.lines().last().unwrap_or_default().to_string();
        let report: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("agent printed no JSON ({e}): {}{}", run.stdout, run.stderr));
        assert_eq!(report["ok"], true, "{report} {}", run.stderr);
        report
    }

    /// One boot of the agent on the bench's device.
    fn agent(&self, health: &str) -> Value {
        self.agent_on(&self.flash(), health)
    }

    fn bootloader_args(flash: &Path) -> Vec<String> {
        vec!["--layout".into(), "device".into(), flash.to_str().unwrap().to_string()]
    }

    /// The bootloader step between boots of the device on `flash`; its outcome.
    fn bootloader_on(flash: &Path) -> String {
        let run = run_to_exit(&mcu_binary("mcu-bootloader"), &Self::bootloader_args(flash), &[], RUN_TIMEOUT);
        assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
        let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
        report["outcome"].as_str().unwrap().to_string()
    }

    fn bootloader(&self) -> String {
        Self::bootloader_on(&self.flash())
    }

    fn active_image(&self) -> Vec<u8> {
        std::fs::read(self.flash()).unwrap()[ACTIVE_OFFSET..ACTIVE_OFFSET + IMAGE_BYTES].to_vec()
    }

    /// Chunk reads the edge answered from its store (it serves no peer here: all devices').
    fn chunks_served(&self) -> u64 {
        let metrics = in_netns(&self.net.edge, || support::http_get(self.edge.http, "/metrics")).expect("metrics");
        let text = String::from_utf8_lossy(&metrics).into_owned();
        let line = text.lines().find(|l| l.starts_with("otamesh_edge_cache_hits_total ")).expect("cache hits metric");
        line.split_whitespace().last().unwrap().parse().unwrap()
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
    assert_eq!(
        (second["outcome"].as_str(), second["installed"].as_str()),
        (Some("resting:committed"), Some("2.0.0")),
        "{second}"
    );
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

/// A xorshift step: the kill schedule is random but repeatable.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Starts `program args`, lets it run `delay`, then SIGKILLs it; true if it had already ended.
fn run_killed_after(program: &Path, args: &[String], delay: Duration) -> bool {
    let mut child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Deliberate: the kill lands at a random moment; nothing is being waited for.
    std::thread::sleep(delay);
    let ended = child.try_wait().expect("try_wait").is_some();
    if !ended {
        child.kill().expect("kill");
    }
    child.wait().expect("reap");
    ended
}

#[test]
fn sigkill_at_thirty_random_points_leaves_a_whole_image_and_refetches_no_verified_chunk() {
    let Some(bench) = Bench::new("mcu-kill") else { return };
    // How long each uninterrupted step takes here, on a probe device.
    let probe = bench.dir.path().join("probe.bin");
    let timed = |f: &dyn Fn()| {
        let started = std::time::Instant::now();
        f();
        started.elapsed()
    };
    let download = timed(&|| assert_eq!(bench.agent_on(&probe, "pass")["outcome"], "reboot"));
    let swap = timed(&|| assert_eq!(Bench::bootloader_on(&probe), "swapped"));
    let trial = timed(&|| assert_eq!(bench.agent_on(&probe, "pass")["installed"], "2.0.0"));
    eprintln!("uninterrupted: download {download:?}, swap {swap:?}, trial {trial:?}");

    let mut rng = 0x2545f4914f6cdd1du64;
    let mut kills = 0u64;
    let mut devices = 0;
    // Fresh devices until 30 kills have landed in downloads, swaps and trials.
    while kills < 30 {
        devices += 1;
        kills += kill_one_device_through_its_update(&bench, &mut rng, 30 - kills, (download, swap));
    }
    eprintln!("{kills} kills over {devices} devices");
}

/// One device from the factory image to rest, each boot SIGKILLed at a random moment (at
/// most `budget` kills): the agent within a third of a whole download (so most kills land
/// mid-download and it advances between them), and every other time the bootloader within
/// a whole swap. A reset always runs the bootloader again, to its end, before the agent:
/// ACTIVE must then hold a whole image. Returns the kills that landed.
fn kill_one_device_through_its_update(
    bench: &Bench,
    rng: &mut u64,
    budget: u64,
    (download, swap): (Duration, Duration),
) -> u64 {
    let served_before = bench.chunks_served();
    let flash = bench.flash();
    // The device as it leaves the factory (the agent would make the same file; a kill while
    // it does is not what this test is about).
    let mut factory_flash = vec![0xFFu8; FLASH_BYTES];
    factory_flash[ACTIVE_OFFSET..ACTIVE_OFFSET + IMAGE_BYTES].copy_from_slice(&bench.factory);
    std::fs::write(&flash, factory_flash).unwrap();
    let whole = |what: &str| {
        let active = bench.active_image();
        assert!(active == bench.factory || active == bench.v2, "{what}: ACTIVE holds a partial image");
    };
    let delay = |rng: &mut u64, full: Duration| Duration::from_micros(next(rng) % (full.as_micros() as u64).max(1));
    let (mut kills, mut reverts) = (0u64, 0u64);
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut last = Value::Null;
    for _ in 0..60 {
        if kills < budget {
            let agent = bench.agent_args(&flash, "pass");
            kills += u64::from(!run_killed_after(Path::new("ip"), &agent, delay(rng, download / 3)));
            if next(rng).is_multiple_of(2) && kills < budget {
                let args = Bench::bootloader_args(&flash);
                kills += u64::from(!run_killed_after(&mcu_binary("mcu-bootloader"), &args, delay(rng, swap)));
            }
        } else {
            // Out of kills: uninterrupted boots until the agent rests.
            last = bench.agent("pass");
            if last["outcome"] != "reboot" {
                break;
            }
        }
        let outcome = bench.bootloader();
        whole(&format!("after kill {kills} (bootloader: {outcome})"));
        reverts += u64::from(outcome == "reverted" || outcome == "after-revert");
        *outcomes.entry(outcome).or_default() += 1;
    }
    if last.is_null() {
        // The budget outlasted the update: one more boot to see where it rests.
        last = bench.agent("pass");
    }
    eprintln!("device: {kills} kills; bootloader outcomes {outcomes:?}; last boot {last}");
    assert!(last["outcome"].as_str().is_some_and(|o| o.starts_with("resting")), "never came to rest: {last}");
    match last["installed"].as_str() {
        Some("2.0.0") => assert!(bench.active_image() == bench.v2, "{last}"),
        Some("factory") => assert!(bench.active_image() == bench.factory, "{last}"),
        other => panic!("installed {other:?}: {last}"),
    }
    // Each kill costs at most the chunks in flight: the one being written and the
    // `download::IN_FLIGHT` (2) asked for meanwhile. Only a revert (a reset during a trial
    // puts the old image back into DFU) makes a whole download necessary again.
    let served = bench.chunks_served() - served_before;
    let bound = bench.chunks * (1 + reverts) + CHUNKS_IN_FLIGHT * kills;
    assert!(
        served <= bound,
        "{served} chunks served, more than {bound} ({} per download, {reverts} reverts, {kills} kills): \
         verified chunks were fetched again",
        bench.chunks
    );
    kills
}
