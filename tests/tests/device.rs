//! The Linux device agent against real edge nodes on 127.0.0.1: install and commit, chunk
//! reuse, health-check rollback, kill -9 at random points, and hostile edge nodes.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::device::Device;
use support::{eventually, random_bytes, Edge, Origin};

const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// v1 and a v2 with 5% of its bytes rewritten in three places.
fn images(dir: &Path, mib: usize) -> (PathBuf, PathBuf) {
    let v1 = random_bytes(mib << 20, 11);
    let mut v2 = v1.clone();
    let region = v2.len() / 60;
    for (i, start) in [v2.len() / 10, v2.len() / 2, v2.len() * 8 / 10].into_iter().enumerate() {
        v2[start..start + region].copy_from_slice(&random_bytes(region, 100 + i as u64));
    }
    let (p1, p2) = (dir.join("v1.img"), dir.join("v2.img"));
    std::fs::write(&p1, v1).unwrap();
    std::fs::write(&p2, v2).unwrap();
    (p1, p2)
}

fn wait_for_release(edge: &Edge, version: &str) {
    eventually(&format!("{} to hold {version}", edge.proc.name), Duration::from_secs(120), || {
        edge.has_release(version).then_some(())
    });
}

struct Mesh {
    _dir: tempfile::TempDir,
    root: PathBuf,
    origin: Origin,
    edge: Edge,
    v1: PathBuf,
    v2: PathBuf,
}

/// An origin, one edge node, and a `mib` MiB v1 published and staged on the edge.
fn mesh_with_v1(mib: usize) -> Mesh {
    mesh_with_v1_published_with(mib, &[])
}

/// As [`mesh_with_v1`], with extra `seeder release add` flags for v1.
fn mesh_with_v1_published_with(mib: usize, extra: &[&str]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let origin = Origin::start(&root);
    let edge = Edge::start("edge", &root.join("edge"), "site-a", &[origin.addr.as_str()]);
    let (v1, v2) = images(&root, mib);
    origin.publish_with(&v1, "1.0.0", extra);
    wait_for_release(&edge, "1.0.0");
    Mesh { _dir: dir, root, origin, edge, v1, v2 }
}

fn quic(edge: &Edge) -> String {
    format!("quic://{}", edge.device_quic)
}

/// Releases cut with S-box CDC install and delta like FastCDC ones: the device finds the
/// unchanged chunks of its installed release in the new manifest and copies them from its
/// active slot. (Switching a repository from FastCDC costs one full download: chunk ids
/// match only between releases cut the same way.)
#[test]
fn devices_reuse_chunks_between_releases_cut_with_sbox_cdc() {
    let sbox = ["--chunking", "sbox-cdc"];
    let mesh = mesh_with_v1_published_with(32, &sbox);
    let device = Device::new(&mesh.root.join("dev"), &mesh.origin.repo, &[quic(&mesh.edge)], None);
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "v1 install failed:\n{}", run.output);
    assert!(device.slot("b") == std::fs::read(&mesh.v1).unwrap(), "slot b is not v1");

    mesh.origin.publish_with(&mesh.v2, "2.0.0", &sbox);
    wait_for_release(&mesh.edge, "2.0.0");
    let v2 = std::fs::read(&mesh.v2).unwrap();
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "v2 install failed:\n{}", run.output);
    let status = device.status();
    assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("2.0.0")));
    assert!(device.slot("a") == v2, "slot a is not v2");
    let fetched = status["progress"]["bytes_fetched"].as_u64().unwrap();
    let reused = status["progress"]["bytes_reused"].as_u64().unwrap();
    eprintln!("v1 -> v2, S-box CDC: fetched {fetched} bytes, reused {reused} of {} bytes", v2.len());
    assert!(fetched * 10 <= v2.len() as u64, "fetched {fetched} bytes: more than 10% of the image");
    assert!(reused * 10 >= v2.len() as u64 * 8, "reused only {reused} bytes");
}

#[test]
fn devices_install_reuse_chunks_commit_and_a_failed_health_check_rolls_back() {
    // 32 MiB: large enough that the chunks straddling each changed region (FastCDC, 64 KiB
    // average) are a small share of what a 5% change costs.
    let mesh = mesh_with_v1(32);
    let edges = [quic(&mesh.edge)];
    let rigged = ["sh", "-c", "test \"$OTAMESH_VERSION\" != 2.0.0"];
    let good = Device::new(&mesh.root.join("dev-good"), &mesh.origin.repo, &edges, None);
    let bad = Device::new(&mesh.root.join("dev-bad"), &mesh.origin.repo, &edges, Some(&rigged));

    let v1 = std::fs::read(&mesh.v1).unwrap();
    for device in [&good, &bad] {
        let run = device.check(CHECK_TIMEOUT);
        assert!(run.success, "v1 install failed:\n{}", run.output);
        let status = device.status();
        assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("1.0.0")));
        assert_eq!(device.bootenv(), ("b".to_string(), None));
        assert!(device.slot("b") == v1, "slot b is not v1");
    }

    mesh.origin.publish(&mesh.v2, "2.0.0");
    wait_for_release(&mesh.edge, "2.0.0");
    let v2 = std::fs::read(&mesh.v2).unwrap();

    let run = good.check(CHECK_TIMEOUT);
    assert!(run.success, "v2 install failed:\n{}", run.output);
    let status = good.status();
    assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("2.0.0")));
    assert_eq!(good.bootenv(), ("a".to_string(), None));
    assert!(good.slot("a") == v2, "slot a is not v2");
    let fetched = status["progress"]["bytes_fetched"].as_u64().unwrap();
    let reused = status["progress"]["bytes_reused"].as_u64().unwrap();
    eprintln!("v1 -> v2: fetched {fetched} bytes, reused {reused} of {} bytes", v2.len());
    assert!(fetched * 10 <= v2.len() as u64, "fetched {fetched} bytes: more than 10% of the image");
    assert!(reused > 0);

    let run = bad.check(CHECK_TIMEOUT);
    assert!(!run.success, "a rolled-back install must exit nonzero:\n{}", run.output);
    let status = bad.status();
    assert_eq!(status["state"].as_str(), Some("rolled-back"), "{}", run.output);
    assert_eq!(status["version"].as_str(), Some("1.0.0"));
    assert_eq!(status["error"].as_str(), Some("health-check-failed"));
    assert_eq!(bad.bootenv(), ("b".to_string(), None));
    assert!(bad.slot("b") == v1, "the old slot changed");

    // The rolled-back release is not tried again: a second check is quiet.
    let run = bad.check(CHECK_TIMEOUT);
    assert!(!run.output.contains("download complete"), "refused release fetched again:\n{}", run.output);
    assert_eq!(bad.status()["version"].as_str(), Some("1.0.0"));

    // Both agents' signed, numbered status reports were accepted by the edge node.
    let trust = mesh.edge.status().unwrap()["trust"].clone();
    assert_eq!(trust["reporting_devices"], 2, "{trust}");
    assert_eq!(trust["status_reports_rejected"], 0, "{trust}");
}

/// Chunks copied from the active slot are not verified one by one: the image check before
/// the switch covers them, and it reads the new slot itself (hashed as the download committed
/// its chunks). A byte flipped in the active slot after v1 committed is copied into v2's slot;
/// the check fails, and the device fetches v2 again without reuse and commits it whole.
#[test]
fn a_damaged_active_slot_fails_the_image_check_and_the_release_is_fetched_again_without_reuse() {
    let mesh = mesh_with_v1(32);
    let device = Device::new(&mesh.root.join("dev"), &mesh.origin.repo, &[quic(&mesh.edge)], None);
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "v1 install failed:\n{}", run.output);
    assert_eq!(device.bootenv(), ("b".to_string(), None));
    // The download carried the image hash to the end; the check read nothing more.
    let whole = format!("hashed_during_download={}", 32 << 20);
    let logged = |output: &str, message: &str| output.lines().any(|l| l.contains(message) && l.contains(&whole));
    assert!(logged(&run.output, "image hash matches the manifest"), "{}", run.output);
    // 1 MiB in: v2 keeps v1's bytes there (its first rewritten region starts at a tenth).
    let active = device.dir.join("slot-b.img");
    let mut damaged = std::fs::read(&active).unwrap();
    damaged[1 << 20] ^= 0x40;
    std::fs::write(&active, &damaged).unwrap();

    mesh.origin.publish(&mesh.v2, "2.0.0");
    wait_for_release(&mesh.edge, "2.0.0");
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "v2 install failed:\n{}", run.output);
    assert!(
        logged(&run.output, "image hash does not match the manifest"),
        "the damaged copy was not caught:\n{}",
        run.output
    );
    assert_eq!(run.output.matches("download complete").count(), 2, "not fetched again:\n{}", run.output);
    let status = device.status();
    assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("2.0.0")));
    assert_eq!(device.bootenv(), ("a".to_string(), None));
    assert!(device.slot("a") == std::fs::read(&mesh.v2).unwrap(), "slot a is not v2");
}

fn record_state(device: &Device) -> String {
    // The status file lags the record by at most one step; it is what an operator sees.
    std::fs::read(device.dir.join("data/status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["state"].as_str().map(String::from))
        .unwrap_or_else(|| "none".into())
}

#[test]
fn kill9_at_fifty_random_points_never_leaves_a_half_written_boot_slot() {
    let mesh = mesh_with_v1(8);
    let edges = [quic(&mesh.edge)];
    let template = Device::new(&mesh.root.join("template"), &mesh.origin.repo, &edges, None);
    let run = template.check(CHECK_TIMEOUT);
    assert!(run.success, "v1 install failed:\n{}", run.output);
    mesh.origin.publish(&mesh.v2, "2.0.0");
    wait_for_release(&mesh.edge, "2.0.0");
    let v1 = std::fs::read(&mesh.v1).unwrap();
    let v2 = std::fs::read(&mesh.v2).unwrap();
    let slot_of = |d: &Device, name: &str| d.slot(name);

    // How long an uninterrupted v1 -> v2 check takes here.
    let probe_dir = mesh.root.join("probe");
    let probe = template.copy_to(&probe_dir);
    let started = std::time::Instant::now();
    assert!(probe.check(CHECK_TIMEOUT).success);
    let full = started.elapsed();
    eprintln!("uninterrupted v1 -> v2 check: {full:?}");

    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut states_at_kill = std::collections::BTreeMap::<String, u32>::new();
    let mut final_states = std::collections::BTreeMap::<String, u32>::new();
    for run_no in 0..50 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_micros(rng % (full.as_micros() as u64).max(1));
        let dir = mesh.root.join(format!("kill-{run_no}"));
        let device = template.copy_to(&dir);
        let mut child = device.spawn_check();
        // Deliberate: the kill lands at a random moment; nothing is being waited for.
        let exited = wait_or_kill(&mut child, delay);
        let state = if exited { "finished".to_string() } else { record_state(&device) };
        *states_at_kill.entry(state).or_default() += 1;

        // Right after the kill: whatever the bootloader would boot is a whole, signed image.
        let next = device.next_boot_slot();
        let image = slot_of(&device, &next);
        assert!(image == v1 || image == v2, "run {run_no}: slot {next} would boot a partial image");

        // A restarted agent ends committed on the new slot, or — when the kill hit the trial,
        // which counts as a reboot during the trial — rolled back to the old one.
        let run = device.check(CHECK_TIMEOUT);
        let status = device.status();
        let ended = (status["state"].as_str().unwrap_or("?").to_string(), status["version"].as_str().map(String::from));
        match ended.0.as_str() {
            "committed" => {
                assert_eq!(ended.1.as_deref(), Some("2.0.0"), "run {run_no}:\n{}", run.output);
                assert_eq!(device.bootenv(), ("a".to_string(), None), "run {run_no}");
                assert!(slot_of(&device, "a") == v2, "run {run_no}: committed slot is not v2");
            }
            "rolled-back" => {
                assert_eq!(ended.1.as_deref(), Some("1.0.0"), "run {run_no}:\n{}", run.output);
                assert_eq!(status["error"].as_str(), Some("reboot-during-trial"), "run {run_no}:\n{}", run.output);
                assert_eq!(device.bootenv(), ("b".to_string(), None), "run {run_no}");
                assert!(slot_of(&device, "b") == v1, "run {run_no}: old slot changed");
            }
            other => panic!("run {run_no} (killed after {delay:?}) ended {other}:\n{}", run.output),
        }
        *final_states.entry(ended.0).or_default() += 1;
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("state at kill: {states_at_kill:?}; final: {final_states:?}");
    assert!(states_at_kill.len() >= 3, "kills landed in too few states: {states_at_kill:?}");
}

/// Waits up to `delay` for the child to exit on its own; otherwise SIGKILLs it. Returns
/// whether it exited by itself.
fn wait_or_kill(child: &mut std::process::Child, delay: Duration) -> bool {
    let deadline = std::time::Instant::now() + delay;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            return false;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}
