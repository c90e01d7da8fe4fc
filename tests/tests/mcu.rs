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
use support::hostile::{Endless, Hostiles, Lie, Shape};
use support::netns::{in_netns, NetPair};
use support::{eventually, random_bytes, run_to_exit, seeder, Edge, Origin};

/// The kernel's side of the TAP link, where the edge node's device service listens.
const TAP_HOST_IP: &str = "10.78.0.1";
/// The agent's address on the TAP link (its embassy-net stack).
const AGENT_IP: &str = "10.78.0.2/24";
const TAP: &str = "om-tap";
const EDGE_NAME: &str = "edge";
/// The edge's per-address connection cap, lifted: every reset of the agent leaves a
/// connection the edge holds until its idle timeout.
const CAP: &[&str] = &["--max-connections-per-client", "512"];
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

/// Waits until `edge` serves rollout `id` (its policy and seal arrive in the same refresh).
fn wait_for_rollout_at(net: &NetPair, edge: &Edge, id: &str) {
    eventually(&format!("rollout {id} at the edge"), Duration::from_secs(60), || {
        let status = in_netns(&net.edge, || edge.status())?;
        status["rollouts"].as_array()?.iter().any(|r| r["rollout"] == id).then_some(())
    });
}

/// The public half of an ed25519 seed given as hex, as hex.
fn device_public_key(seed_hex: &str) -> String {
    let seed: [u8; 32] = protocol::hex::decode_array(seed_hex).unwrap();
    protocol::hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes())
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
    origin_addr: String,
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
        let edge = net.edge_with(EDGE_NAME, &dir.path().join("edge"), "plant-1", "0.0.0.0:0", &origin.addr, CAP);
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
        wait_for_rollout_at(&net, &edge, "gw-2.0.0");
        // The device's status key, enrolled at the origin so its reports count.
        let device_key = "4d".repeat(32);
        std::fs::write(dir.path().join("device.key"), &device_key).unwrap();
        seeder(&[
            "devices",
            "enroll",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            &device_public_key(&device_key),
            "--id",
            "mcu-0001",
            "--site",
            "plant-1",
            "--hw-class",
            "imx8",
        ]);
        let chunks = published["chunks"].as_u64().unwrap();
        let origin_addr = origin.addr.clone();
        Some(Bench { net, dir, _origin: origin, origin_addr, edge, repo, factory, v2, chunks })
    }

    fn wait_for_rollout(&self, id: &str) {
        wait_for_rollout_at(&self.net, &self.edge, id);
    }

    /// Kills the edge node and starts it again on the same data directory and device port.
    fn restart_edge(&mut self) {
        self.edge.proc.kill();
        let listen = format!("0.0.0.0:{}", self.edge.device_tcp.port());
        let origin = self.origin_addr.clone();
        self.edge = self.net.edge_with(EDGE_NAME, &self.dir.path().join("edge"), "plant-1", &listen, &origin, CAP);
        self.wait_for_rollout("gw-2.0.0");
    }

    /// The edge's counts for the rollout once `check` holds for them.
    fn wait_for_edge_counts(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(what, Duration::from_secs(30), || {
            let status = in_netns(&self.net.edge, || self.edge.status())?;
            let rollout = status["rollouts"].as_array()?.iter().find(|r| r["rollout"] == "gw-2.0.0")?.clone();
            check(&rollout).then_some(rollout)
        })
    }

    /// `seeder rollout status` (the fleet database) once `check` holds for it.
    fn wait_for_origin_counts(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(what, Duration::from_secs(30), || {
            let status = seeder(&["rollout", "status", "--repo", self.repo.to_str().unwrap(), "gw"])[0].clone();
            check(&status).then_some(status)
        })
    }

    fn flash(&self) -> PathBuf {
        self.dir.path().join("flash.bin")
    }

    /// `ip netns exec … mcu-agent …` for the device whose flash file is `flash`.
    fn agent_args(&self, flash: &Path, health: &str) -> Vec<String> {
        self.agent_args_with(flash, health, &[self.honest()])
    }

    /// The honest edge's device service as the agent reaches it.
    fn honest(&self) -> String {
        format!("{TAP_HOST_IP}:{}", self.edge.device_tcp.port())
    }

    /// [`Bench::agent_args`] with these edges, in this order.
    fn agent_args_with(&self, flash: &Path, health: &str, edges: &[String]) -> Vec<String> {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = vec!["netns".into(), "exec".into(), self.net.edge.clone()];
        args.push(path(&mcu_binary("mcu-agent")));
        for (flag, value) in [
            ("--tap", TAP.to_string()),
            ("--ip", AGENT_IP.to_string()),
            ("--flash", path(flash)),
            ("--factory", path(&self.dir.path().join("factory.bin"))),
            ("--anchor", path(&self.dir.path().join("anchor.bin"))),
            ("--content-key", path(&self.repo.join("keys/content.key"))),
            ("--release", "gw".into()),
            ("--hw-class", "imx8".into()),
            ("--health", health.into()),
            ("--device-key", path(&self.dir.path().join("device.key"))),
        ] {
            args.extend([flag.to_string(), value]);
        }
        for edge in edges {
            args.extend(["--edge".to_string(), edge.clone()]);
        }
        args
    }

    /// One boot of the agent on `flash`; its JSON line.
    fn agent_on(&self, flash: &Path, health: &str) -> Value {
        self.agent_with(flash, health, &[self.honest()])
    }

    /// One boot of the agent on `flash` with these edges; its JSON line.
    fn agent_with(&self, flash: &Path, health: &str, edges: &[String]) -> Value {
        let run = run_to_exit(Path::new("ip"), &self.agent_args_with(flash, health, edges), &[], RUN_TIMEOUT);
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
        active_image_of(&self.flash())
    }

    /// Installs the rolled-out release on `flash` with `edges` (boot, bootloader, boot) and
    /// checks that it committed.
    fn install_and_commit(&self, flash: &Path, edges: &[String], expect: &[u8], version: &str) -> Value {
        let first = self.agent_with(flash, "pass", edges);
        assert_eq!(first["outcome"], "reboot", "{first}");
        assert_eq!(Self::bootloader_on(flash), "swapped");
        let second = self.agent_with(flash, "pass", edges);
        assert_eq!(second["outcome"], "resting:committed", "{second}");
        assert_eq!(second["installed"], version, "{second}");
        assert!(active_image_of(flash) == expect, "ACTIVE does not hold {version} byte for byte");
        second
    }

    /// Publishes `image` as gw `version` (fixed 4 KiB chunks) and rolls it out to everyone
    /// in place of the running rollout.
    fn publish_and_roll_out(&self, image: &[u8], version: &str, counter: u64) {
        let repo = self.repo.to_str().unwrap();
        let path = self.dir.path().join(format!("{version}.bin"));
        std::fs::write(&path, image).unwrap();
        seeder(&[
            "release",
            "add",
            "--repo",
            repo,
            "--image",
            path.to_str().unwrap(),
            "--name",
            "gw",
            "--version",
            version,
            "--hw-class",
            "imx8",
            "--security-counter",
            &counter.to_string(),
            "--chunking",
            "fixed:4K",
            "--compress",
            "none",
        ]);
        seeder(&["rollout", "abort", "--repo", repo, "gw"]);
        seeder(&["rollout", "start", "--repo", repo, "gw", version, "--waves", "100"]);
        self.wait_for_rollout(&format!("gw-{version}"));
    }

    /// `edges` alone install nothing on a fresh `flash`: the agent rests, ACTIVE keeps the
    /// factory image and the DFU partition is not marked for a swap.
    fn installs_nothing(&self, flash: &Path, edges: &[String], what: &str) -> Value {
        let run = self.agent_with(flash, "pass", edges);
        assert_ne!(run["outcome"], "reboot", "{what}: {run}");
        assert_eq!(run["installed"], "factory", "{what}: {run}");
        assert_eq!(Self::bootloader_on(flash), "boot", "{what}: the bootloader was asked to swap");
        assert!(active_image_of(flash) == self.factory, "{what}: ACTIVE changed");
        run
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
    assert_eq!(second["report_unsent"], false, "the commit's status report was not acknowledged: {second}");
    // The signed report reached the edge (which counts it for its site) and, through it, the
    // publisher's fleet database.
    bench.wait_for_edge_counts("the edge counts the MCU's commit", |r| r["committed"] == 1);
    bench.wait_for_origin_counts("the origin counts the MCU's commit", |s| s["waves"][0]["committed"] == 1);
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
    bench.wait_for_edge_counts("the edge counts the MCU's rollback", |r| r["rolled_back"] == 1);
}

fn active_image_of(flash: &Path) -> Vec<u8> {
    std::fs::read(flash).unwrap()[ACTIVE_OFFSET..ACTIVE_OFFSET + IMAGE_BYTES].to_vec()
}

/// Hostile edges next to the honest one, on the TAP link: each alone installs nothing, and
/// listed before the honest edge it is refused and the honest one completes the install.
#[test]
fn hostile_edges_are_refused_and_an_honest_one_completes_the_install() {
    let Some(bench) = Bench::new("mcu-hostile") else { return };
    let hostiles = in_netns(&bench.net.edge, || Hostiles::on(TAP_HOST_IP.parse().unwrap()));
    // Another release's manifest, validly published: what a replaying edge would serve.
    let other = bench.dir.path().join("other.bin");
    std::fs::write(&other, random_bytes(IMAGE_BYTES, 9)).unwrap();
    let repo = bench.repo.to_str().unwrap();
    seeder(&[
        "release",
        "add",
        "--repo",
        repo,
        "--image",
        other.to_str().unwrap(),
        "--name",
        "gw",
        "--version",
        "1.5.0",
        "--hw-class",
        "imx8",
        "--security-counter",
        "2",
        "--chunking",
        "fixed:4K",
        "--compress",
        "none",
    ]);
    let other_manifest = manifest_file(&bench.repo, "1.5.0");
    let cases = [
        ("corrupt chunks", Lie::CorruptChunks),
        ("another release's manifest", Lie::ManifestsFrom(other_manifest)),
        ("bad seal signatures", Lie::CorruptSeals),
    ];
    for (n, (what, lie)) in cases.into_iter().enumerate() {
        let hostile = in_netns(&bench.net.edge, || hostiles.repo_edge(&bench.repo, lie.clone()));
        let at = hostile.tcp.to_string();
        let alone = bench.dir.path().join(format!("alone-{n}.bin"));
        let run = bench.installs_nothing(&alone, std::slice::from_ref(&at), what);
        assert!(hostile.counters.targets() > 0, "{what}: the hostile edge was never asked");
        if matches!(lie, Lie::CorruptChunks) {
            assert!(hostile.counters.chunks() > 0, "{what}: no chunk was asked for");
            assert!(!run["last_error"].is_null(), "{what}: no error recorded: {run}");
        } else {
            assert_eq!(hostile.counters.chunks(), 0, "{what}: chunks asked after a failed check");
        }
        let both = bench.dir.path().join(format!("both-{n}.bin"));
        bench.install_and_commit(&both, &[at, bench.honest()], &bench.v2, "2.0.0");
    }
    for kind in [Endless::OversizedLength, Endless::LargestThenMore] {
        let endless = in_netns(&bench.net.edge, || hostiles.endless_edge(kind));
        let at = endless.tcp.to_string();
        let alone = bench.dir.path().join(format!("endless-{kind:?}.bin"));
        bench.installs_nothing(&alone, std::slice::from_ref(&at), &format!("{kind:?}"));
        assert!(endless.counters.total() > 0, "{kind:?}: the endless edge was never asked");
        let both = bench.dir.path().join(format!("endless-both-{kind:?}.bin"));
        bench.install_and_commit(&both, &[at, bench.honest()], &bench.v2, "2.0.0");
    }

    // An older counter: a mirror frozen at 2.0.0 — validly signed, but old — listed first
    // hides nothing from a device on 2.0.0 once 3.0.0 is out, and cannot take a device on
    // 3.0.0 (anti-rollback floor 3) back to 2.0.0.
    let device = bench.dir.path().join("stale-device.bin");
    bench.install_and_commit(&device, &[bench.honest()], &bench.v2, "2.0.0");
    let stale_repo = bench.dir.path().join("stale-repo");
    copy_dir(&bench.repo, &stale_repo);
    let v3 = random_bytes(IMAGE_BYTES, 3);
    bench.publish_and_roll_out(&v3, "3.0.0", 3);
    let stale = in_netns(&bench.net.edge, || hostiles.repo_edge(&stale_repo, Lie::Nothing));
    bench.install_and_commit(&device, &[stale.tcp.to_string(), bench.honest()], &v3, "3.0.0");
    let asked = stale.counters.targets();
    assert!(asked > 0, "the stale edge was never asked");
    let run = bench.agent_with(&device, "pass", &[stale.tcp.to_string()]);
    assert_eq!(
        (run["outcome"].as_str(), run["installed"].as_str()),
        (Some("resting:committed"), Some("3.0.0")),
        "{run}"
    );
    assert_eq!(Bench::bootloader_on(&device), "boot");
    assert!(active_image_of(&device) == v3, "the stale edge changed ACTIVE");
    assert!(stale.counters.targets() > asked, "the stale edge was not asked again");
    assert_eq!(stale.counters.chunks(), 0, "chunks of an older release were fetched");
}

/// The publisher rotates the targets key: the next release's seals carry a trust statement
/// signed by the old and the new key, and the MCU — pinned to the old key at the factory,
/// or to an anchor it learnt since — installs it and pins the new anchor.
#[test]
fn a_targets_key_rotation_reaches_the_mcu_through_its_seals() {
    let Some(bench) = Bench::new("mcu-rotate") else { return };
    let device = bench.dir.path().join("device.bin");
    let on_v2 = bench.install_and_commit(&device, &[bench.honest()], &bench.v2, "2.0.0");
    // Epoch 1 at the factory; the rollouts key, created by the first rollout, made it 2.
    assert_eq!(on_v2["anchor_epoch"], 2, "{on_v2}");

    seeder(&["key", "rotate", "--repo", bench.repo.to_str().unwrap(), "--role", "targets"]);
    let v3 = random_bytes(IMAGE_BYTES, 3);
    bench.publish_and_roll_out(&v3, "3.0.0", 3);
    let on_v3 = bench.install_and_commit(&device, &[bench.honest()], &v3, "3.0.0");
    assert_eq!(on_v3["anchor_epoch"], 3, "the rotated anchor was not pinned: {on_v3}");
    // A device fresh from the factory (epoch 1) follows the whole chain at once.
    let fresh = bench.dir.path().join("fresh.bin");
    let fresh_v3 = bench.install_and_commit(&fresh, &[bench.honest()], &v3, "3.0.0");
    assert_eq!(fresh_v3["anchor_epoch"], 3, "{fresh_v3}");
}

/// The edge node restarts in the middle of a download: the agent's run ends on the broken
/// connection, and the next run resumes from the chunks it verified, fetching none again.
#[test]
fn an_edge_restarted_mid_download_resumes_the_download_without_refetching() {
    let Some(mut bench) = Bench::new("mcu-restart") else { return };
    let hostiles = in_netns(&bench.net.edge, || Hostiles::on(TAP_HOST_IP.parse().unwrap()));
    // A far-away but honest path to the edge: each answer 100 ms late, so the download
    // lasts seconds and the restart lands in its middle.
    let upstream = std::net::SocketAddr::new(TAP_HOST_IP.parse().unwrap(), bench.edge.device_tcp.port());
    let slow = in_netns(&bench.net.edge, || hostiles.proxy(upstream, Shape::Delay(Duration::from_millis(100))));
    let edges = [slow.tcp.to_string()];
    let flash = bench.flash();
    let args = bench.agent_args_with(&flash, "pass", &edges);
    let agent = std::thread::spawn(move || run_to_exit(Path::new("ip"), &args, &[], RUN_TIMEOUT));
    let third = bench.chunks / 3;
    eventually("a third of the chunks through the slow path", RUN_TIMEOUT, || {
        (slow.counters.chunks() >= third).then_some(())
    });
    bench.restart_edge();
    let first = agent.join().unwrap();
    let first: Value = serde_json::from_str(first.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("agent printed no JSON ({e}): {}{}", first.stdout, first.stderr));
    assert_ne!(first["outcome"], "reboot", "the download finished before the restart: {first}");
    let done = first["chunks_done"].as_u64().unwrap();
    eprintln!("restart: {done} of {} chunks verified before the edge restarted", bench.chunks);
    assert!(done >= third.saturating_sub(1) && done < bench.chunks, "{first}");

    let second = bench.agent_with(&flash, "pass", &edges);
    assert_eq!(second["outcome"], "reboot", "{second}");
    // The restarted edge served only what the first run had not verified.
    let served = bench.chunks_served();
    eprintln!("restart: the restarted edge served {served} chunks");
    assert!(
        served <= bench.chunks - done,
        "fetched {served} chunks again after {done} of {} were verified",
        bench.chunks
    );
    assert_eq!(bench.bootloader(), "swapped");
    assert_eq!(bench.agent_with(&flash, "pass", &edges)["outcome"], "resting:committed");
    assert!(bench.active_image() == bench.v2, "ACTIVE does not hold v2 byte for byte");
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().expect("cp runs");
    assert!(out.status.success(), "cp -a: {}", String::from_utf8_lossy(&out.stderr));
}

/// The consistent-snapshot file of `releases/gw/VERSION.manifest` in `repo`.
fn manifest_file(repo: &Path, version: &str) -> Vec<u8> {
    let dir = repo.join("targets/releases/gw");
    let suffix = format!(".{version}.manifest");
    let entry = std::fs::read_dir(&dir).unwrap().flatten().find(|e| e.file_name().to_string_lossy().ends_with(&suffix));
    std::fs::read(entry.unwrap_or_else(|| panic!("no {suffix} in {}", dir.display())).path()).unwrap()
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
