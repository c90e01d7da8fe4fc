//! Staged rollouts with real processes: `seeder serve` as the origin, an edge node, and Linux
//! device agents on 127.0.0.1. The devices obey the signed policy themselves; the edge node
//! holds its site back when its own devices' reports cross the failure threshold.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::device::Device;
use support::{eventually, random_bytes, seeder, Edge, Origin};

const CHECK_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(120);

struct Fleet {
    _dir: tempfile::TempDir,
    root: PathBuf,
    origin: Origin,
    edge: Edge,
}

/// An origin and one edge node in site `plant-1`, with v1 published and installed (before
/// any rollout: a repository without the delegation installs at once) on `names` devices.
fn fleet(names: &[&str], health: &[Option<&[&str]>]) -> (Fleet, Vec<Device>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let origin = Origin::start(&root);
    let edge = Edge::start("edge", &root.join("edge"), "plant-1", &[origin.addr.as_str()]);
    origin.publish(&image(&root, 1), "1.0.0");
    wait_for(&edge, "release 1.0.0", |s| has_release(s, "1.0.0"));
    let edges = [format!("quic://{}", edge.device_quic)];
    let devices: Vec<Device> = names
        .iter()
        .zip(health)
        .map(|(name, health)| {
            let device = Device::new(&root.join(name), &origin.repo, &edges, *health);
            let run = device.check(CHECK_TIMEOUT);
            assert!(run.success, "{name}: v1 install failed:\n{}", run.output);
            assert_eq!(device.status()["version"], "1.0.0", "{name}");
            device
        })
        .collect();
    (Fleet { _dir: dir, root, origin, edge }, devices)
}

fn image(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("v{seed}.img"));
    std::fs::write(&path, random_bytes(2 << 20, seed)).unwrap();
    path
}

fn has_release(status: &Value, version: &str) -> bool {
    status["releases"].as_array().is_some_and(|r| r.iter().any(|r| r["version"] == version && r["complete"] == true))
}

/// The edge's view of rollout `id`, once `check` holds for it.
fn wait_for(edge: &Edge, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("edge: {what}"), WAIT, || edge.status().filter(|s| check(s)))
}

fn rollout_of<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["rollouts"].as_array()?.iter().find(|r| r["rollout"] == id)
}

fn start_rollout(fleet: &Fleet, version: &str, extra: &[&str]) -> Value {
    let mut args = vec!["rollout", "start", "--repo", fleet.origin.repo.to_str().unwrap(), "gw", version];
    args.extend_from_slice(extra);
    let started = seeder(&args);
    let id = started["id"].as_str().unwrap().to_string();
    wait_for(&fleet.edge, &format!("policy of {id}"), |s| rollout_of(s, &id).is_some());
    started
}

fn device_key(device: &Device) -> String {
    device.status()["device"].as_str().unwrap().to_string()
}

#[test]
fn the_canary_installs_first_and_a_device_outside_the_current_wave_waits() {
    let (fleet, devices) = fleet(&["canary", "other"], &[None, None]);
    let (canary, other) = (&devices[0], &devices[1]);
    fleet.origin.publish(&image(&fleet.root, 2), "2.0.0");
    wait_for(&fleet.edge, "release 2.0.0", |s| has_release(s, "2.0.0"));
    // Wave 0 is the canary plus 10 ppm of the fleet: `other` is (almost surely) not in it,
    // and the wave cannot advance for an hour.
    start_rollout(&fleet, "2.0.0", &["--waves", "0.001,100", "--canary", &device_key(canary), "--soak", "1h"]);

    let run = other.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    let status = other.status();
    assert_eq!(status["version"], "1.0.0", "a device outside the current wave installed:\n{}", run.output);
    let waiting = status["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("wave has not started"), "status does not say why it waits: {status}");

    let run = canary.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    let status = canary.status();
    assert_eq!(
        (status["state"].as_str(), status["version"].as_str()),
        (Some("committed"), Some("2.0.0")),
        "{}",
        run.output
    );
    assert_eq!(status["rollout"], "gw-2.0.0");
    assert_eq!(status["result"], "committed");
    // The edge counted the canary's verified reports for its site.
    wait_for(&fleet.edge, "the canary's commit", |s| rollout_of(s, "gw-2.0.0").is_some_and(|r| r["committed"] == 1));
}

#[test]
fn a_site_cut_off_from_the_origin_halts_itself_from_its_devices_reports() {
    // All devices are in the single wave; two fail their health check on 3.0.0 (one failure
    // is bad luck, two out of two are a release failing everywhere).
    let rigged = ["sh", "-c", "test \"$OTAMESH_VERSION\" != 3.0.0"];
    let (mut fleet, devices) = fleet(&["bad-1", "bad-2", "next"], &[Some(&rigged), Some(&rigged), None]);
    let (bad, next) = (&devices[..2], &devices[2]);
    fleet.origin.publish(&image(&fleet.root, 3), "3.0.0");
    wait_for(&fleet.edge, "release 3.0.0", |s| has_release(s, "3.0.0"));
    start_rollout(&fleet, "3.0.0", &["--waves", "100", "--soak", "1h", "--min-reports", "1"]);
    // The site loses its origin: what stops the rollout here is the edge alone.
    fleet.origin.proc.kill();

    // A rollback is a failed attempt: `check` exits non-zero.
    for bad in bad {
        let run = bad.check(CHECK_TIMEOUT);
        let status = bad.status();
        assert_eq!(
            (status["state"].as_str(), status["version"].as_str()),
            (Some("rolled-back"), Some("1.0.0")),
            "{}",
            run.output
        );
    }
    // The rollback reports reached the edge: two failures of two are far above 5 %, and the
    // site halts itself without the origin.
    let edge =
        wait_for(&fleet.edge, "the site halt", |s| rollout_of(s, "gw-3.0.0").is_some_and(|r| r["site_halted"] == true));
    assert_eq!(rollout_of(&edge, "gw-3.0.0").unwrap()["rolled_back"], 2);

    // The next device of the site pre-stages the image but does not switch to it.
    let run = next.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    let status = next.status();
    assert_eq!(status["version"], "1.0.0", "a device of a halted site installed:\n{}", run.output);
    assert_eq!(status["state"], "staged", "{}", run.output);
    let waiting = status["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("halted at this site"), "status does not say why it waits: {status}");
    assert_eq!(next.bootenv(), ("b".to_string(), None), "the bootloader was pointed at the new slot");
}

fn enroll(fleet: &Fleet, device: &Device, id: &str) {
    let key = device_key(device);
    let repo = fleet.origin.repo.to_str().unwrap();
    seeder(&[
        "devices",
        "enroll",
        "--repo",
        repo,
        "--key",
        &key,
        "--id",
        id,
        "--site",
        "plant-1",
        "--hw-class",
        "imx8",
    ]);
}

fn rollout_status(fleet: &Fleet) -> Value {
    seeder(&["rollout", "status", "--repo", fleet.origin.repo.to_str().unwrap(), "gw"])[0].clone()
}

/// `seeder rollout status` once `check` holds for it.
fn wait_for_origin(fleet: &Fleet, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let found = test_procs::eventually(&format!("origin: {what}"), WAIT, || {
        let status = rollout_status(fleet);
        *last.borrow_mut() = status.clone();
        Some(status).filter(|s| check(s))
    });
    found.unwrap_or_else(|e| {
        let devices = seeder(&["devices", "list", "--repo", fleet.origin.repo.to_str().unwrap()]);
        panic!(
            "{e}; last status: {}\ndevices: {devices}\nedge: {:?}\nedge log:\n{}",
            last.borrow(),
            fleet.edge.status(),
            fleet.edge.proc.tail(40)
        )
    })
}

/// A report for `rollout` signed by a key no one enrolled, claiming a commit: made-up
/// devices voting to hasten the rollout.
fn unenrolled_commit(i: u8, rollout: &str) -> Vec<u8> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
    let mut report = support::reports::report(&key, 1, "committed");
    report.rollout = Some(rollout.into());
    report.result = Some(protocol::status::InstallResult::Committed);
    report.install_secs = Some(10);
    report.slot = Some("b".into());
    support::reports::signed(&key, &report)
}

#[test]
fn enrolled_devices_reports_advance_the_waves_and_made_up_devices_move_nothing() {
    let (fleet, devices) = fleet(&["first", "second"], &[None, None]);
    let (first, second) = (&devices[0], &devices[1]);
    enroll(&fleet, first, "gw-0001");
    enroll(&fleet, second, "gw-0002");
    fleet.origin.publish(&image(&fleet.root, 2), "2.0.0");
    wait_for(&fleet.edge, "release 2.0.0", |s| has_release(s, "2.0.0"));
    // Wave 0: the canary `first` (by its enrolled id) and 10 ppm; then everyone.
    start_rollout(
        &fleet,
        "2.0.0",
        &["--waves", "0.001,100", "--canary", "gw-0001", "--soak", "0", "--min-reports", "1"],
    );

    // Made-up devices claim commits through the edge: the edge forwards them (it cannot know
    // the fleet), the origin verifies them and drops them as unenrolled: no wave advances.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = edge_node::device::DeviceClient::connect_tcp(fleet.edge.device_tcp).await.unwrap();
        for i in 1..=5u8 {
            client.report_status(&unenrolled_commit(i, "gw-2.0.0")).await.unwrap();
        }
    });
    wait_for(&fleet.edge, "the made-up reports forwarded", |s| s["reports"]["forwarded"].as_u64() >= Some(5));
    let status = rollout_status(&fleet);
    assert_eq!(
        (status["current_wave"].as_u64(), status["waves"][0]["committed"].as_u64()),
        (Some(0), Some(0)),
        "{status}"
    );

    // The canary installs; its reports reach the origin, wave 0 passes, wave 1 starts.
    let run = first.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    let status = wait_for_origin(&fleet, "wave 1", |s| s["current_wave"] == 1 || s["state"] == "complete");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["waves"][0]["committed"], 1, "{status}");
    assert_eq!(status["sites"][0]["committed"], 1, "made-up reports counted: {status}");
    assert_eq!(status["sites"][0]["site"], "plant-1", "{status}");

    // The second device sees the new policy at its next check and installs; the rollout
    // completes from its report.
    wait_for(&fleet.edge, "policy v2", |s| {
        rollout_of(s, "gw-2.0.0").is_some_and(|r| r["policy_seq"].as_u64() >= Some(2))
    });
    let run = second.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    assert_eq!(second.status()["version"], "2.0.0", "{}", run.output);
    let status = wait_for_origin(&fleet, "completion", |s| s["state"] == "complete");
    assert_eq!(status["waves"][1]["committed"], 1, "{status}");
}

#[test]
fn a_bad_release_halts_at_the_origin_and_the_halt_survives_a_seeder_restart() {
    let rigged = ["sh", "-c", "test \"$OTAMESH_VERSION\" != 3.0.0"];
    let (mut fleet, devices) = fleet(&["bad", "late"], &[Some(&rigged), None]);
    let (bad, late) = (&devices[0], &devices[1]);
    enroll(&fleet, bad, "gw-0001");
    enroll(&fleet, late, "gw-0002");
    fleet.origin.publish(&image(&fleet.root, 3), "3.0.0");
    wait_for(&fleet.edge, "release 3.0.0", |s| has_release(s, "3.0.0"));
    start_rollout(
        &fleet,
        "3.0.0",
        &["--waves", "0.001,100", "--canary", "gw-0001", "--soak", "0", "--min-reports", "1"],
    );

    let _ = bad.check(CHECK_TIMEOUT);
    assert_eq!(bad.status()["state"], "rolled-back");
    let status = wait_for_origin(&fleet, "the halt", |s| s["state"] == "halted");
    assert_eq!(status["current_wave"], 0, "the halt came after the canary wave: {status}");
    assert_eq!(status["waves"][0]["rolled_back"], 1, "{status}");
    assert!(status["halt_reason"].as_str().is_some_and(|r| !r.is_empty()), "{status}");
    // The halt reaches the edge.
    wait_for(&fleet.edge, "the halted policy", |s| rollout_of(s, "gw-3.0.0").is_some_and(|r| r["state"] == "halted"));

    // A restarted seeder rebuilds its controllers from the fleet database: the rollout stays
    // halted and the report is still counted.
    let repo = fleet.origin.repo.clone();
    fleet.origin.proc.kill();
    fleet.origin = Origin::serve(&repo, &[]);
    let status = rollout_status(&fleet);
    assert_eq!(
        (status["state"].as_str(), status["waves"][0]["rolled_back"].as_u64()),
        (Some("halted"), Some(1)),
        "{status}"
    );

    // The late device (wave 1, never started) does not install.
    let run = late.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    assert_eq!(late.status()["version"], "1.0.0", "a device installed a halted release:\n{}", run.output);
}

#[test]
fn a_device_downloads_outside_its_maintenance_window_but_does_not_switch() {
    let (fleet, devices) = fleet(&["device"], &[None]);
    let device = &devices[0];
    fleet.origin.publish(&image(&fleet.root, 2), "2.0.0");
    wait_for(&fleet.edge, "release 2.0.0", |s| has_release(s, "2.0.0"));
    // A daily one-hour window for this site that opens two hours from now (UTC), and one for
    // every other site that is open now: the device's site decides.
    let hour = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600) % 24;
    let at = |h: u64| format!("{:02}:00", h % 24);
    let closed = format!("plant-*:daily:{}-{}:Z", at(hour + 2), at(hour + 3));
    let open_elsewhere = format!("elsewhere:daily:{}-{}:Z", at(hour + 23), at(hour + 1));
    start_rollout(&fleet, "2.0.0", &["--waves", "100", "--window", &closed, "--window", &open_elsewhere]);

    // The edge answers every hold question with "go"; the device pre-stages the image and
    // waits for its window.
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    let status = device.status();
    assert_eq!(
        (status["state"].as_str(), status["version"].as_str()),
        (Some("staged"), Some("1.0.0")),
        "{}",
        run.output
    );
    let waiting = status["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("maintenance window"), "status does not say why it waits: {status}");
    assert_eq!(device.bootenv(), ("b".to_string(), None), "the bootloader was pointed at the new slot");
    assert_eq!(device.slot("a"), std::fs::read(fleet.root.join("v2.img")).unwrap(), "the image was not pre-staged");
}

/// What a thief of `seeder serve`'s online keys (rollouts, snapshot, timestamp — not the
/// offline targets key) can publish: any rollout policy for release `gw`, signed and
/// committed exactly as the seeder would (policy file, `N.rollouts.json`, snapshot,
/// timestamp), with no help from the seeder's code.
fn publish_as_thief(repo: &Path, policy: &protocol::rollout::RolloutPolicy) {
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::Digest;
    let key = |role: &str| -> (String, SigningKey) {
        let path = std::fs::read_dir(repo.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&format!("{role}-")))
            .unwrap_or_else(|| panic!("no {role} key"));
        let body: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let seed: [u8; 32] = protocol::hex::decode_array(body["private"].as_str().unwrap()).unwrap();
        (body["keyid"].as_str().unwrap().to_string(), SigningKey::from_bytes(&seed))
    };
    let sign = |signed: Value, role: &str| -> Vec<u8> {
        let (keyid, key) = key(role);
        let canonical = protocol::tuf::canonical::to_vec(&signed).unwrap();
        let sig = protocol::hex::encode(&key.sign(&canonical).to_bytes());
        serde_json::to_vec(&serde_json::json!({"signatures": [{"keyid": keyid, "sig": sig}], "signed": signed}))
            .unwrap()
    };
    let sha256 = |bytes: &[u8]| protocol::hex::encode(&sha2::Sha256::digest(bytes));
    let metadata = repo.join("metadata");
    let read = |name: &str| -> Value { serde_json::from_slice(&std::fs::read(metadata.join(name)).unwrap()).unwrap() };
    let timestamp = read("timestamp.json")["signed"].clone();
    let snapshot_version = timestamp["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    let snapshot = read(&format!("{snapshot_version}.snapshot.json"))["signed"].clone();
    let rollouts_version = snapshot["meta"]["rollouts.json"]["version"].as_u64().unwrap();
    let mut rollouts = read(&format!("{rollouts_version}.rollouts.json"))["signed"].clone();

    let bytes = policy.encode().unwrap();
    let hash = sha256(&bytes);
    std::fs::write(repo.join(format!("targets/rollouts/{hash}.gw.policy")), &bytes).unwrap();
    rollouts["version"] = (rollouts_version + 1).into();
    rollouts["targets"]["rollouts/gw.policy"] = serde_json::json!({"length": bytes.len(), "hashes": {"sha256": hash}});
    std::fs::write(metadata.join(format!("{}.rollouts.json", rollouts_version + 1)), sign(rollouts, "rollouts"))
        .unwrap();
    let mut snapshot = snapshot;
    snapshot["version"] = (snapshot_version + 1).into();
    snapshot["meta"]["rollouts.json"] = serde_json::json!({"version": rollouts_version + 1});
    let snapshot_bytes = sign(snapshot, "snapshot");
    std::fs::write(metadata.join(format!("{}.snapshot.json", snapshot_version + 1)), &snapshot_bytes).unwrap();
    let mut timestamp = timestamp;
    timestamp["version"] = (timestamp["version"].as_u64().unwrap() + 1).into();
    timestamp["meta"]["snapshot.json"] = serde_json::json!({
        "version": snapshot_version + 1,
        "length": snapshot_bytes.len(),
        "hashes": {"sha256": sha256(&snapshot_bytes)},
    });
    let tmp = metadata.join(".thief-timestamp");
    std::fs::write(&tmp, sign(timestamp, "timestamp")).unwrap();
    std::fs::rename(tmp, metadata.join("timestamp.json")).unwrap();
}

#[test]
fn stolen_online_keys_can_hasten_a_signed_release_but_never_introduce_one_or_roll_back() {
    let (fleet, devices) = fleet(&["device"], &[None]);
    let device = &devices[0];
    fleet.origin.publish(&image(&fleet.root, 2), "2.0.0");
    wait_for(&fleet.edge, "release 2.0.0", |s| has_release(s, "2.0.0"));
    // The publisher starts 2.0.0's rollout paused: the device may not install it yet.
    // (So many reports needed that the seeder's own controller never signs in between.)
    let started = start_rollout(&fleet, "2.0.0", &["--waves", "100", "--soak", "0", "--min-reports", "1000"]);
    seeder(&["rollout", "pause", "--repo", fleet.origin.repo.to_str().unwrap(), "gw"]);
    let repo = fleet.origin.repo.clone();
    let policy = |seq: u64, version: &str| {
        let mut p =
            protocol::rollout::RolloutPolicy::decode(&std::fs::read(newest_policy_file(&repo)).unwrap()).unwrap();
        (p.seq, p.release.version, p.state) = (seq, version.to_string(), protocol::rollout::RolloutState::Running);
        p
    };
    assert_eq!(started["seq"], 1);

    // 1. A policy naming a release the targets role never signed: nothing installs.
    publish_as_thief(&repo, &policy(10, "6.6.6"));
    wait_for(&fleet.edge, "the thief's policy", |s| rollout_of(s, "gw-2.0.0").is_some_and(|r| r["policy_seq"] == 10));
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    assert_eq!(
        device.status()["version"],
        "1.0.0",
        "a release the targets role never signed installed:\n{}",
        run.output
    );

    // 2. Un-pausing a signed release early: that much a thief can do.
    publish_as_thief(&repo, &policy(11, "2.0.0"));
    wait_for(&fleet.edge, "the hastening policy", |s| rollout_of(s, "gw-2.0.0").is_some_and(|r| r["policy_seq"] == 11));
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    assert_eq!(device.status()["version"], "2.0.0", "{}", run.output);

    // 3. Pointing the fleet back at the older signed release: refused, no rollback.
    publish_as_thief(&repo, &policy(12, "1.0.0"));
    wait_for(&fleet.edge, "the rollback policy", |s| rollout_of(s, "gw-2.0.0").is_some_and(|r| r["policy_seq"] == 12));
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "{}", run.output);
    let status = device.status();
    assert_eq!(
        (status["state"].as_str(), status["version"].as_str()),
        (Some("committed"), Some("2.0.0")),
        "{}",
        run.output
    );
}

/// The policy file the repository's current rollouts metadata names for `gw`.
fn newest_policy_file(repo: &Path) -> PathBuf {
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(repo.join("metadata").join(name)).unwrap()).unwrap()
    };
    let snapshot_version = read("timestamp.json")["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    let snapshot = read(&format!("{snapshot_version}.snapshot.json"));
    let version = snapshot["signed"]["meta"]["rollouts.json"]["version"].as_u64().unwrap();
    let rollouts = read(&format!("{version}.rollouts.json"));
    let hash = rollouts["signed"]["targets"]["rollouts/gw.policy"]["hashes"]["sha256"].as_str().unwrap().to_string();
    repo.join(format!("targets/rollouts/{hash}.gw.policy"))
}

/// The demo once saw a device penalize both of its honest edges: the controller re-signed the
/// policy between the device's metadata refresh and its policy fetch, so the edges served the
/// newer policy under the plain path. Devices ask by content name, and an edge serves every
/// version its mirror holds by that name.
#[test]
fn an_edge_serves_an_older_policy_by_its_content_name_after_the_policy_changed() {
    let (fleet, _devices) = fleet(&[], &[]);
    fleet.origin.publish(&image(&fleet.root, 2), "2.0.0");
    wait_for(&fleet.edge, "release 2.0.0", |s| has_release(s, "2.0.0"));
    start_rollout(&fleet, "2.0.0", &["--waves", "10,100", "--soak", "1h"]);
    let first = newest_policy_file(&fleet.origin.repo);
    seeder(&["rollout", "pause", "--repo", fleet.origin.repo.to_str().unwrap(), "gw"]);
    wait_for(&fleet.edge, "the paused policy", |s| rollout_of(s, "gw-2.0.0").is_some_and(|r| r["state"] == "paused"));
    let second = newest_policy_file(&fleet.origin.repo);
    assert_ne!(first, second, "pausing re-signed nothing");
    let content_name = |file: &Path| format!("rollouts/{}", file.file_name().unwrap().to_str().unwrap());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut edge = edge_client::DeviceClient::connect_tcp(fleet.edge.device_tcp).await.unwrap();
        let older = edge.get_target(&content_name(&first)).await.unwrap();
        assert_eq!(older, Some(std::fs::read(&first).unwrap()), "the older policy by its content name");
        let newer = edge.get_target(&content_name(&second)).await.unwrap();
        assert_eq!(newer, Some(std::fs::read(&second).unwrap()), "the current policy by its content name");
        let plain = edge.get_target("rollouts/gw.policy").await.unwrap();
        assert_eq!(plain, newer, "the plain path is the current policy");
        let unknown = format!("rollouts/{}.gw.policy", "0".repeat(64));
        assert_eq!(edge.get_target(&unknown).await.unwrap(), None, "a version the edge never had");
        let not_a_hash = format!("rollouts/{}.gw.policy", "g".repeat(64));
        assert_eq!(edge.get_target(&not_a_hash).await.unwrap(), None);
    });
}

/// What a microcontroller relies on (issue 12): the edge relays each release's and each
/// policy's seal, and the anchor `seeder mcu anchor` exports opens them — over the device
/// wire, with no TUF metadata at all.
#[test]
fn an_edge_relays_the_seals_an_mcu_verifies_a_release_and_its_policy_with() {
    use protocol::seal::{open, SealKind, TrustAnchor};
    let (fleet, _devices) = fleet(&[], &[]);
    let anchor_hex = seeder(&["mcu", "anchor", "--repo", fleet.origin.repo.to_str().unwrap()])["anchor_hex"]
        .as_str()
        .unwrap()
        .to_string();
    let pinned = TrustAnchor::decode(&protocol::hex::decode(&anchor_hex).unwrap()).unwrap();
    fleet.origin.publish(&image(&fleet.root, 2), "2.0.0");
    wait_for(&fleet.edge, "release 2.0.0", |s| has_release(s, "2.0.0"));
    start_rollout(&fleet, "2.0.0", &["--waves", "10,100", "--soak", "1h"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut edge = edge_client::DeviceClient::connect_tcp(fleet.edge.device_tcp).await.unwrap();
        let manifest = edge.get_target("releases/gw/2.0.0.manifest").await.unwrap().expect("manifest");
        let seal = edge.get_target("releases/gw/2.0.0.manifest.sig").await.unwrap().expect("manifest seal");
        let opened = open(&pinned, &seal, SealKind::Manifest, &manifest).expect("the release's seal opens");
        assert!(!opened.rotated);
        // The policy's seal: the rollouts key came after the anchor was pinned, through a
        // statement the seal carries.
        // (Registered with the policy in one refresh: `start_rollout` waited for the policy.)
        let policy = edge.get_target("rollouts/gw.policy").await.unwrap().expect("policy");
        let seal = edge.get_target("rollouts/gw.policy.sig").await.unwrap().expect("policy seal");
        let opened = open(&pinned, &seal, SealKind::Policy, &policy).expect("the policy's seal opens");
        assert!(opened.rotated && !opened.anchor.rollouts.is_empty());
        // A seal does not open for other bytes.
        assert!(open(&pinned, &seal, SealKind::Policy, &manifest).is_err());
    });
}
