//! The seeder as an operator uses it: the real binary on real files.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use test_procs::{eventually, random_bytes, Options, Proc};

fn seeder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seeder")).args(args).output().expect("seeder runs")
}

fn ok(args: &[&str]) -> String {
    let out = seeder(args);
    assert!(
        out.status.success(),
        "seeder {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    work: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let work = dir.path().to_path_buf();
        ok(&["init", "--repo", repo.to_str().unwrap()]);
        Fixture { _dir: dir, repo, work }
    }
    fn repo(&self) -> &str {
        self.repo.to_str().unwrap()
    }
    fn image(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.work.join(name);
        fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    }
    fn add(&self, image: &str, version: &str, extra: &[&str]) -> Value {
        let mut args =
            vec!["release", "add", "--repo", self.repo(), "--image", image, "--name", "gw", "--version", version];
        args.extend_from_slice(&["--hw-class", "imx8"]);
        args.extend_from_slice(extra);
        json(&args)
    }
    fn verify(&self) -> (bool, Value) {
        let out = seeder(&["--json", "verify", "--repo", self.repo()]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.success(), report["ok"].as_bool().unwrap());
        (out.status.success(), report)
    }
    fn extract(&self, version: &str) -> Vec<u8> {
        let out = self.work.join(format!("extracted-{version}"));
        ok(&[
            "release",
            "extract",
            "--repo",
            self.repo(),
            "--name",
            "gw",
            "--version",
            version,
            "--out",
            out.to_str().unwrap(),
        ]);
        fs::read(out).unwrap()
    }
}

#[test]
fn add_verify_extract_round_trips_a_64_mib_image() {
    let f = Fixture::new();
    let data = random_bytes(64 << 20, 1);
    let image = f.image("v1.img", &data);
    let report = f.add(&image, "1.0.0", &[]);
    assert_eq!(report["published"], true);
    assert_eq!(report["image_bytes"], 64 << 20);
    let chunks = report["chunks"].as_u64().unwrap();
    assert!((400..=2000).contains(&chunks), "FastCDC 64 KiB average gave {chunks} chunks");
    assert!(f.verify().0);
    assert!(f.extract("1.0.0") == data, "extracted image differs");

    // The same content again is a no-op; other content under the same version is refused.
    assert_eq!(f.add(&image, "1.0.0", &[])["published"], false);
    let other = f.image("other.img", &random_bytes(1 << 20, 2));
    let out = seeder(&[
        "release",
        "add",
        "--repo",
        f.repo(),
        "--image",
        &other,
        "--name",
        "gw",
        "--version",
        "1.0.0",
        "--hw-class",
        "imx8",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already published with other content"));
}

#[test]
fn a_second_release_reuses_unchanged_chunks() {
    let f = Fixture::new();
    let mut data = random_bytes(8 << 20, 3);
    f.add(&f.image("v1.img", &data), "1", &[]);
    // Change 64 KiB in the middle: only the chunks around it are new.
    data[4 << 20..(4 << 20) + 65536].copy_from_slice(&random_bytes(65536, 4));
    let report = f.add(&f.image("v2.img", &data), "2", &[]);
    let (chunks, new) = (report["chunks"].as_u64().unwrap(), report["new_chunks"].as_u64().unwrap());
    assert!((1..=4).contains(&new), "{new} of {chunks} chunks were new");
    assert_eq!(f.extract("2"), data);
    let inspect = json(&["inspect", "--repo", f.repo()]);
    assert!(inspect["dedup_ratio"].as_f64().unwrap() > 1.8, "{inspect}");
    assert_eq!(inspect["releases"].as_array().unwrap().len(), 2);
}

/// Without `--chunking`, a release is cut the way the name's newest release is (the one its
/// devices run): a device reuses only chunks of releases cut the same way, so a forgotten
/// flag must not turn the next release into a full download (or an MCU's fixed chunks into
/// CDC).
#[test]
fn release_add_cuts_like_the_release_its_devices_would_install() {
    let f = Fixture::new();
    let mut data = random_bytes(4 << 20, 5);
    let first = f.add(&f.image("v1.img", &data), "1", &["--chunking", "sbox-cdc"]);
    assert_eq!(first["chunking"], "sbox-cdc");
    data[2 << 20..(2 << 20) + 4096].copy_from_slice(&random_bytes(4096, 6));
    let second = f.add(&f.image("v2.img", &data), "2", &[]);
    assert_eq!(second["chunking"], "sbox-cdc", "{second}");
    let (chunks, new) = (second["chunks"].as_u64().unwrap(), second["new_chunks"].as_u64().unwrap());
    assert!((1..=3).contains(&new), "{new} of {chunks} chunks were new");
    assert_eq!(f.extract("2"), data);

    let add_other = |name: &str, version: &str, extra: &[&str]| {
        let image = f.image(&format!("{name}-{version}.bin"), &random_bytes(64 << 10, 7));
        let mut args = vec!["release", "add", "--repo", f.repo(), "--image", &image, "--name", name];
        args.extend_from_slice(&["--version", version, "--hw-class", "nrf52", "--compress", "none"]);
        args.extend_from_slice(extra);
        json(&args)
    };
    assert_eq!(add_other("sensor", "1", &["--chunking", "fixed:4K"])["chunking"], "fixed:4096");
    assert_eq!(add_other("sensor", "2", &[])["chunking"], "fixed:4096");
    assert_eq!(add_other("fresh", "1", &[])["chunking"], "cdc", "a name's first release");

    // A publisher switches the name back to FastCDC: later releases follow the newest.
    let third = f.add(&f.image("v3.img", &data), "3", &["--chunking", "cdc"]);
    assert_eq!(third["chunking"], "cdc");
    data[1 << 20..(1 << 20) + 4096].copy_from_slice(&random_bytes(4096, 8));
    let fourth = f.add(&f.image("v4.img", &data), "4", &[]);
    assert_eq!(fourth["chunking"], "cdc", "{fourth}");
    assert!(fourth["new_chunks"].as_u64().unwrap() <= 3, "{fourth}");
    // Version 10 outranks 4 (digit runs compare as numbers, as devices compare them), and a
    // higher security counter outranks any version.
    f.add(&f.image("v10.img", &data[..3 << 20]), "10", &["--chunking", "sbox-cdc"]);
    assert_eq!(f.add(&f.image("v11.img", &data[..2 << 20]), "11", &[])["chunking"], "sbox-cdc");
    f.add(&f.image("v5.img", &data[..1 << 20]), "5", &["--chunking", "cdc", "--security-counter", "2"]);
    assert_eq!(f.add(&f.image("v12.img", &data[..3 << 19]), "12", &["--security-counter", "2"])["chunking"], "cdc");
    // Re-adding what is published reports how it was cut.
    let again = f.add(&f.image("v10-again.img", &data[..3 << 20]), "10", &["--chunking", "cdc"]);
    assert_eq!((again["published"].as_bool(), again["chunking"].as_str()), (Some(false), Some("sbox-cdc")));
    assert!(f.verify().0);
}

#[test]
fn fixed_chunks_without_compression_or_encryption_round_trip() {
    let f = Fixture::new();
    let data = random_bytes(300_000, 5);
    let report =
        f.add(&f.image("mcu.bin", &data), "7", &["--chunking", "fixed:4K", "--compress", "none", "--no-encrypt"]);
    assert_eq!(report["chunks"], 74);
    assert_eq!(report["stored_bytes"], 300_000);
    assert_eq!(f.extract("7"), data);
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    let i = at % bytes.len();
    bytes[i] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn verify_names_every_file_with_a_flipped_byte() {
    let f = Fixture::new();
    f.add(&f.image("v1.img", &random_bytes(2 << 20, 6)), "1", &[]);
    f.add(&f.image("v2.img", &random_bytes(1 << 20, 7)), "2", &[]);
    assert!(f.verify().0);
    let mut files = Vec::new();
    for sub in ["metadata", "targets", "chunks"] {
        all_files(&f.repo.join(sub), &mut files);
    }
    assert!(files.len() > 30, "only {} files", files.len());
    for (n, path) in files.iter().enumerate() {
        // A byte inside the JSON body for metadata, anywhere for binary files.
        let at = if path.extension().is_some_and(|e| e == "json") { 120 + n * 7 } else { n * 7919 };
        flip_byte(path, at);
        let (passed, report) = f.verify();
        let named = report["problems"].as_array().unwrap().iter().any(|p| {
            p["file"].as_str().unwrap().contains(path.to_str().unwrap())
                || p["problem"].as_str().unwrap().contains(path.to_str().unwrap())
        });
        assert!(!passed && named, "flipping a byte in {} was not reported: {report}", path.display());
        flip_byte(path, at);
    }
    assert!(f.verify().0);
}

#[test]
fn extract_refuses_a_corrupted_chunk_and_writes_nothing() {
    let f = Fixture::new();
    f.add(&f.image("v1.img", &random_bytes(1 << 20, 8)), "1", &[]);
    let mut chunks = Vec::new();
    all_files(&f.repo.join("chunks"), &mut chunks);
    flip_byte(&chunks[0], 10);
    let out_path = f.work.join("out.img");
    let out = seeder(&[
        "release",
        "extract",
        "--repo",
        f.repo(),
        "--name",
        "gw",
        "--version",
        "1",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not match the signed chunk id"));
    assert!(!out_path.exists());
}

#[test]
fn key_rotation_of_every_role_keeps_the_repository_verifiable() {
    let f = Fixture::new();
    let data = random_bytes(1 << 20, 9);
    f.add(&f.image("v1.img", &data), "1", &[]);
    for role in ["timestamp", "snapshot", "targets", "root"] {
        let before = json(&["inspect", "--repo", f.repo()]);
        let rotated = json(&["key", "rotate", "--repo", f.repo(), "--role", role]);
        let new_ids = rotated["keyids"].as_array().unwrap();
        let after = json(&["inspect", "--repo", f.repo()]);
        let role_after = after["roles"].as_array().unwrap().iter().find(|r| r["role"] == role).unwrap();
        assert_eq!(&role_after["keyids"], &Value::Array(new_ids.clone()));
        assert_eq!(after["roles"][0]["version"].as_u64().unwrap(), before["roles"][0]["version"].as_u64().unwrap() + 1);
        let (passed, report) = f.verify();
        assert!(passed, "after rotating {role}: {report}");
    }
    assert_eq!(f.extract("1"), data);
    // New releases are signed with the new keys.
    f.add(&f.image("v2.img", &random_bytes(1 << 20, 10)), "2", &[]);
    assert!(f.verify().0);
    assert!(fs::read_dir(f.repo.join("keys/retired")).unwrap().count() >= 4);
}

#[test]
fn timestamp_refresh_renews_expiry() {
    let f = Fixture::new();
    let v = json(&["timestamp", "refresh", "--repo", f.repo(), "--expires", "2h"]);
    assert_eq!(v["timestamp_version"], 2);
    assert!(f.verify().0);
    let out = seeder(&["timestamp", "refresh", "--repo", f.repo(), "--expires", "soon"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn errors_are_one_line_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let repo = missing.to_str().unwrap();
    let cases = [
        format!("inspect --repo {repo}"),
        format!("release add --repo {repo} --image x --name a/b --version 1 --hw-class h"),
        format!("release add --repo {repo} --image x --name a --version 1 --hw-class h --chunking fixed:1"),
    ];
    for case in &cases {
        let args: Vec<&str> = case.split(' ').collect();
        let out = seeder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}

#[test]
fn killed_release_add_never_leaves_an_unverifiable_repository() {
    let f = Fixture::new();
    let v1 = random_bytes(1 << 20, 11);
    f.add(&f.image("v1.img", &v1), "1", &[]);
    let v2 = f.image("v2.img", &random_bytes(24 << 20, 12));
    // Kill points spread across the run (chunking, the chunk commit, metadata writes).
    // These delays inject the fault; nothing waits on them for correctness.
    let mut x = 0x9E3779B97F4A7C15u64;
    let mut completed = false;
    for round in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay_ms = x % 2500;
        let mut child = Command::new(env!("CARGO_BIN_EXE_seeder"))
            .args([
                "release",
                "add",
                "--repo",
                f.repo(),
                "--image",
                &v2,
                "--name",
                "gw",
                "--version",
                "2",
                "--hw-class",
                "imx8",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The delay injects the fault at a random point; the wait itself returns on exit.
        use wait_timeout::ChildExt;
        match child.wait_timeout(std::time::Duration::from_millis(delay_ms)).unwrap() {
            Some(_) => completed = true,
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
        }
        let (passed, report) = f.verify();
        assert!(passed, "round {round}: killed after {delay_ms} ms left a bad repository: {report}");
        assert_eq!(f.extract("1"), v1, "round {round}: the previous release no longer extracts");
    }
    // Finishing the interrupted publish works and yields a verifiable release.
    let report = f.add(&v2, "2", &[]);
    assert!(report["published"].as_bool().unwrap() || completed);
    assert!(f.verify().0);
    assert_eq!(f.extract("2"), fs::read(&v2).unwrap());
}

#[test]
fn python_tuf_ngclient_downloads_a_release() {
    let f = Fixture::new();
    f.add(&f.image("v1.img", &random_bytes(1 << 20, 13)), "1.0.0", &[]);
    // Rotations exercise python-tuf's root chain and fast-forward recovery.
    ok(&["key", "rotate", "--repo", f.repo(), "--role", "root"]);
    ok(&["key", "rotate", "--repo", f.repo(), "--role", "timestamp"]);
    f.add(&f.image("v2.img", &random_bytes(1 << 20, 14)), "2.0.0", &[]);
    // A rollout adds the `rollouts` delegation; standard clients still read the repository,
    // and find the policy through the delegation.
    ok(&["rollout", "start", "--repo", f.repo(), "gw", "2.0.0", "--soak", "0"]);
    ok(&["rollout", "pause", "--repo", f.repo(), "gw"]);
    let downloaded = python_tuf_download(&f, "releases/gw/2.0.0.manifest");
    let view = protocol::manifest::ManifestView::new_checked(&downloaded).unwrap();
    assert_eq!((view.name(), view.version(), view.hw_class()), ("gw", "2.0.0", "imx8"));
    let policy = protocol::rollout::RolloutPolicy::decode(&python_tuf_download(&f, "rollouts/gw.policy")).unwrap();
    assert_eq!((policy.release.version.as_str(), policy.seq), ("2.0.0", 2));
    assert_eq!(policy.state, protocol::rollout::RolloutState::Paused);
}

/// `target_path` as python-tuf's ngclient downloads it from the repository.
fn python_tuf_download(f: &Fixture, target_path: &str) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ngclient_download.py");
    let root = f.repo.join("metadata/1.root.json");
    let out_file = f.work.join("download.out");
    let out = Command::new("python3")
        .args([script.to_str().unwrap(), f.repo(), root.to_str().unwrap(), target_path, out_file.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python-tuf failed on {target_path} (is `pip install tuf` done?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&out_file).unwrap()
}

#[test]
fn rollout_commands_sign_policies_and_refuse_bad_input_without_signing() {
    let f = Fixture::new();
    f.add(&f.image("v1.img", &random_bytes(1 << 20, 21)), "1.0.0", &[]);
    let metadata_files = || fs::read_dir(f.repo.join("metadata")).unwrap().count();
    let before = metadata_files();
    for (args, names) in [
        (vec!["gw", "9.9.9"], "not published"),
        (vec!["gw", "1.0.0", "--waves", "10,5,100"], "waves[1]"),
        (vec!["gw", "1.0.0", "--waves", "1,50"], "last wave"),
        (vec!["gw", "1.0.0", "--window", "*:daily:02:00-02:00:Z"], "windows[0]"),
        (vec!["gw", "1.0.0", "--window", "*:someday:01:00-02:00:Z"], "--window"),
        (vec!["gw", "1.0.0", "--canary", "not-a-key"], "--canary"),
        (vec!["gw", "1.0.0", "--max-failure-rate", "120"], "--max-failure-rate"),
    ] {
        let mut all = vec!["rollout", "start", "--repo", f.repo()];
        all.extend_from_slice(&args);
        let out = seeder(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: not one line: {stderr}");
        assert!(stderr.contains(names), "{args:?}: error does not name {names}: {stderr}");
    }
    assert_eq!(metadata_files(), before, "a refused rollout signed something");

    let canary = "ab".repeat(32);
    let started = json(&["rollout", "start", "--repo", f.repo(), "gw", "1.0.0", "--canary", &canary, "--soak", "0"]);
    assert_eq!((started["state"].as_str(), started["seq"].as_u64()), (Some("running"), Some(1)));
    assert_eq!(started["waves"].as_array().unwrap().len(), 4, "default waves 1,10,50,100");
    // One running rollout per release name.
    assert!(!seeder(&["rollout", "start", "--repo", f.repo(), "gw", "1.0.0"]).status.success());
    for (command, state, seq) in [("pause", "paused", 2), ("resume", "running", 3), ("abort", "aborted", 4)] {
        let s = json(&["rollout", command, "--repo", f.repo(), "gw"]);
        assert_eq!((s["state"].as_str(), s["seq"].as_u64()), (Some(state), Some(seq)), "{command}");
    }
    assert!(!seeder(&["rollout", "resume", "--repo", f.repo(), "gw"]).status.success(), "an aborted rollout resumed");
    let all = json(&["rollout", "status", "--repo", f.repo()]);
    assert_eq!(all[0]["state"], "aborted");
    // Every signed file verifies, the delegated role and its policies included.
    let (passed, report) = f.verify();
    assert!(passed, "{report}");
    // After an abort a new rollout of the same release may start.
    ok(&["rollout", "start", "--repo", f.repo(), "gw", "1.0.0", "--id", "gw-1.0.0-again"]);
}

/// Runs the seeder with its clock moved to `now` (unix seconds).
fn seeder_at(now: i64, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seeder"))
        .args(args)
        .env("OTAMESH_SEEDER_NOW", now.to_string())
        .output()
        .expect("seeder runs")
}

fn json_at(now: i64, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = seeder_at(now, &all);
    assert!(
        out.status.success(),
        "seeder {args:?} at {now} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `(version, expires)` of a role's current metadata, read from the files.
fn published(repo: &Path, role: &str) -> (u64, i64) {
    let read =
        |name: &str| -> Value { serde_json::from_slice(&fs::read(repo.join("metadata").join(name)).unwrap()).unwrap() };
    let timestamp = read("timestamp.json");
    let signed = match role {
        "timestamp" => timestamp["signed"].clone(),
        _ => {
            let v = timestamp["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
            read(&format!("{v}.snapshot.json"))["signed"].clone()
        }
    };
    let expires = protocol::tuf::time::parse_expiry(signed["expires"].as_str().unwrap()).unwrap();
    (signed["version"].as_u64().unwrap(), expires)
}

const DAY: i64 = 86_400;

#[test]
fn a_quiet_repository_does_not_freeze_devices() {
    let f = Fixture::new();
    f.add(&f.image("v1.img", &random_bytes(1 << 20, 15)), "1", &[]);
    let start = unix_now();
    let (snapshot_v, snapshot_expires) = published(&f.repo, "snapshot");
    assert!(snapshot_expires - start > 29 * DAY);

    // 25 days on nobody has published: the timestamp is long expired and the snapshot has 5
    // days left. Devices refuse the repository.
    let later = start + 25 * DAY;
    let out = seeder_at(later, &["verify", "--repo", f.repo()]);
    assert_eq!(out.status.code(), Some(1), "an expired timestamp must fail verification at {later}");

    // `timestamp refresh` renews the snapshot too, since it is within its 7-day margin.
    let r = json_at(later, &["timestamp", "refresh", "--repo", f.repo()]);
    assert_eq!(r["renewed_snapshot"], true, "{r}");
    let (new_snapshot_v, new_snapshot_expires) = published(&f.repo, "snapshot");
    assert_eq!(new_snapshot_v, snapshot_v + 1);
    assert!(new_snapshot_expires >= later + 29 * DAY, "snapshot still expires at {new_snapshot_expires}");
    let (_, timestamp_expires) = published(&f.repo, "timestamp");
    assert!(timestamp_expires >= later + 6 * DAY);
    let out = seeder_at(later, &["verify", "--repo", f.repo()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The release still verifies and extracts at the later time (snapshot names the same targets).
    assert_eq!(json_at(later, &["inspect", "--repo", f.repo()])["releases"].as_array().unwrap().len(), 1);

    // Another 25 days on, `seeder serve` renews by itself: at once (both are due), then the
    // timestamp again each time less than 2 of its 4 seconds are left.
    let later = later + 25 * DAY;
    let (before_snapshot_v, _) = published(&f.repo, "snapshot");
    let (before_timestamp_v, _) = published(&f.repo, "timestamp");
    let args: Vec<String> = [
        "serve",
        "--repo",
        f.repo(),
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--no-mdns",
        "--timestamp-expires",
        "4s",
        "--timestamp-renew-before",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut options = Options::default();
    options.env.push(("OTAMESH_SEEDER_NOW".into(), later.to_string()));
    let serve = Proc::spawn_with("seeder serve", Path::new(env!("CARGO_BIN_EXE_seeder")), &args, &options).unwrap();
    // Polling files the serving process writes: it announces renewals nowhere else.
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        eventually(&format!("seeder serve to renew {what}"), Duration::from_secs(30), || done().then_some(()))
            .unwrap_or_else(|e| panic!("{e}; output:\n{}", serve.output()))
    };
    wait_for("the snapshot", &|| published(&f.repo, "snapshot").0 > before_snapshot_v);
    let (renewed_timestamp_v, _) = published(&f.repo, "timestamp");
    assert!(renewed_timestamp_v > before_timestamp_v);
    wait_for("the timestamp a second time", &|| published(&f.repo, "timestamp").0 > renewed_timestamp_v);
    let (_, snapshot_expires) = published(&f.repo, "snapshot");
    assert!(snapshot_expires >= later + 29 * DAY);
    let out = seeder_at(later, &["verify", "--repo", f.repo()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop(serve);
}

#[test]
fn inspect_warns_about_every_role_expiring_within_a_week() {
    let f = Fixture::new();
    let now = unix_now();
    let quiet = seeder_at(now, &["inspect", "--repo", f.repo()]);
    assert!(quiet.status.success());
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("warning"), "{}", String::from_utf8_lossy(&quiet.stderr));

    // 24 days on: the snapshot (30 days) has 6 left, the timestamp (7 days) has expired.
    let later = now + 24 * DAY;
    let out = seeder_at(later, &["inspect", "--repo", f.repo()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let snapshot_expires = json_at(later, &["inspect", "--repo", f.repo()])["roles"][2]["expires"].clone();
    let line = |role: &str| {
        stderr.lines().find(|l| l.starts_with("warning: ") && l.contains(&format!("{role} metadata"))).map(String::from)
    };
    let snapshot = line("snapshot").unwrap_or_else(|| panic!("no snapshot warning: {stderr}"));
    assert!(snapshot.contains(snapshot_expires.as_str().unwrap()) && snapshot.contains("expires"), "{snapshot}");
    assert!(line("timestamp").is_some_and(|l| l.contains("expired")), "{stderr}");
    assert!(line("root").is_none() && line("targets").is_none(), "{stderr}");

    // 360 days on, root and targets (one year) warn too; JSON names every role.
    let report = json_at(now + 360 * DAY, &["inspect", "--repo", f.repo()]);
    let roles: Vec<&str> = report["warnings"].as_array().unwrap().iter().map(|w| w["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["root", "targets", "snapshot", "timestamp"]);
}
