//! `seeder devices` and the fleet database as an operator and a crash see them: the real
//! binary on real files.

use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use test_procs::Proc;

fn seeder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seeder")).args(args).output().expect("seeder runs")
}

fn ok_json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = seeder(&all);
    assert!(
        out.status.success(),
        "seeder {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a command that must fail; returns its one stderr line.
fn fails(args: &[&str]) -> String {
    let out = seeder(args);
    assert_eq!(out.status.code(), Some(1), "seeder {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        ok_json(&["init", "--repo", repo.to_str().unwrap()]);
        Fixture { dir, repo }
    }
    fn repo(&self) -> &str {
        self.repo.to_str().unwrap()
    }
    fn db(&self) -> PathBuf {
        self.repo.join("fleet.sqlite")
    }
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
    fn list(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["devices", "list", "--repo", self.repo()];
        args.extend_from_slice(extra);
        let listed = ok_json(&args);
        let devices = listed["devices"].as_array().unwrap().clone();
        assert!(listed["total"].as_u64().unwrap() >= devices.len() as u64, "{listed}");
        devices
    }
}

fn key_hex(seed: u8) -> String {
    let key = SigningKey::from_bytes(&[seed; 32]);
    key.verifying_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn bulk_line(seed: u8, id: &str, site: &str) -> String {
    format!(r#"{{"key": "{}", "id": "{id}", "site": "{site}", "hw_class": "imx8"}}"#, key_hex(seed))
}

#[test]
fn enroll_ingest_and_list() {
    let f = Fixture::new();
    let key = key_hex(1);
    let out = ok_json(&[
        "devices",
        "enroll",
        "--repo",
        f.repo(),
        "--key",
        &key,
        "--id",
        "gw-1",
        "--site",
        "plant-3",
        "--hw-class",
        "imx8",
    ]);
    assert_eq!(out["enrolled"], 1);
    // A key file holding the hex works too.
    let key_file = f.file("gw-2.pub", &format!("{}\n", key_hex(2)));
    ok_json(&[
        "devices",
        "enroll",
        "--repo",
        f.repo(),
        "--key",
        &key_file,
        "--id",
        "gw-2",
        "--site",
        "plant-4",
        "--hw-class",
        "imx8",
    ]);
    let rows = f.list(&[]);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["id"].as_str(), rows[0]["key"].as_str()), (Some("gw-1"), Some(key.as_str())));
    assert!(rows[0]["state"].is_null());
    assert_eq!(f.list(&["--site", "plant-4"]).len(), 1);

    // Made-up devices enrolled and reporting (3 devices × 10 reports), through the ingestor.
    let out = seeder(&["fleet-test-ingest", "--repo", f.repo(), "--devices", "3", "--reports", "30", "--enroll"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap().strip_prefix("done ").unwrap()).unwrap();
    assert_eq!(done["accepted"], 30, "{stdout}");
    let rows = f.list(&[]);
    assert_eq!(rows.len(), 5);
    let reported: Vec<&Value> = rows.iter().filter(|r| !r["state"].is_null()).collect();
    assert_eq!(reported.len(), 3);
    for row in reported {
        assert_eq!(row["state"]["last_seq"], 10);
        assert_eq!(row["state"]["version"], "1.4.2");
        assert_eq!(row["state"]["rollout"], "gw-1.4.2-r1");
    }
    // The text form names every device.
    let out = seeder(&["devices", "list", "--repo", f.repo()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("5 devices") && text.contains("gw-2") && text.contains("(no report yet)"), "{text}");

    // The inventory's filters, staleness and paging from the command line.
    let page = ok_json(&["devices", "list", "--repo", f.repo(), "--limit", "2", "--offset", "1"]);
    assert_eq!((page["total"].as_u64(), page["devices"].as_array().map(Vec::len)), (Some(5), Some(2)), "{page}");
    assert_eq!(f.list(&["--state", "never-reported"]).len(), 2);
    assert_eq!(f.list(&["--release", "gw@1.4.2"]).len(), 3);
    assert_eq!(f.list(&["--stale", "1h"]).len(), 2, "only the never-reported are stale an hour back");
    let rows = f.list(&["--stale-after", "1h"]);
    assert_eq!(rows.iter().filter(|r| r["stale"] == true).count(), 2);
    assert!(rows.iter().all(|r| r["state"].is_null() || r["state"]["security_floor"].is_u64()), "{rows:?}");
    let line = fails(&["devices", "list", "--repo", f.repo(), "--stale", "soon"]);
    assert!(line.contains("--stale") && line.contains("not a duration"), "{line}");

    // One device and its history, by id or key.
    let reported = rows.iter().find(|r| !r["state"].is_null()).unwrap();
    let id = reported["id"].as_str().unwrap();
    let shown = ok_json(&["devices", "show", "--repo", f.repo(), id, "--history", "4"]);
    assert_eq!(shown["device"]["id"], id);
    let seqs: Vec<u64> = shown["history"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![10, 9, 8, 7], "{shown}");
    let by_key = ok_json(&["devices", "show", "--repo", f.repo(), reported["key"].as_str().unwrap()]);
    assert_eq!(by_key["device"]["id"], id);
    let text = String::from_utf8(seeder(&["devices", "show", "--repo", f.repo(), id]).stdout).unwrap();
    assert!(text.contains("history (10 newest first)") && text.contains("gw-1.4.2"), "{text}");
    let line = fails(&["devices", "show", "--repo", f.repo(), "gw-404"]);
    assert!(line.contains("no device `gw-404`"), "{line}");
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn bad_enrollments_are_refused_in_one_line_and_leave_nothing() {
    let f = Fixture::new();
    let enroll = |key: &str, id: &str| {
        vec!["devices", "enroll", "--repo", f.repo(), "--key", key, "--id", id, "--site", "s", "--hw-class", "imx8"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let short = enroll(&"ab".repeat(31), "gw-1");
    let line = fails(&args(&short));
    assert!(line.contains("neither 64 hex digits"), "{line}");
    assert!(!f.db().exists(), "a refused enrollment created the database");

    ok_json(&args(&enroll(&key_hex(1), "gw-1")));
    let line = fails(&args(&enroll(&key_hex(2), "gw-1")));
    assert_eq!(line, "error: --id `gw-1` is already enrolled; nothing was enrolled");
    let line = fails(&args(&enroll(&key_hex(1), "gw-9")));
    assert!(line.contains("is already enrolled as `gw-1`"), "{line}");
    assert_eq!(f.list(&[]).len(), 1);

    let line = fails(&["devices", "enroll", "--repo", f.repo(), "--id", "x"]);
    assert!(line.contains("--key") && line.contains("--help"), "{line}");
    let line = fails(&["devices", "list", "--repo", f.dir.path().to_str().unwrap()]);
    assert!(line.contains("is not a seeder repository"), "{line}");
}

#[test]
fn a_bulk_file_with_a_bad_line_enrolls_nothing() {
    let f = Fixture::new();
    let lines = [bulk_line(1, "gw-1", "a"), "# comment".into(), bulk_line(2, "gw-2", "b")];
    let good = f.file("good.jsonl", &lines.join("\n"));
    assert_eq!(ok_json(&["devices", "enroll", "--repo", f.repo(), "--from", &good])["enrolled"], 2);

    let cases = [
        // (line 3 of the file, what the error must name)
        (bulk_line(3, "gw-3", "a").replace(&key_hex(3), &"0g".repeat(32)), "line 3: field `key`"),
        (r#"{"key": "00", "id": "gw-3", "site": "a"}"#.to_string(), "line 3: missing field `hw_class`"),
        (bulk_line(3, "gw-3", "a").replace("\"a\"", "\"\""), "line 3: field `site`: site is empty"),
        (bulk_line(3, "gw-10", "a"), "line 3: field `id`: `gw-10` is already on line 1"),
        (bulk_line(3, "gw-3", "a").replace("}", r#", "color": "red"}"#), "line 3: unknown field `color`"),
    ];
    for (bad, expected) in cases {
        let text = [bulk_line(10, "gw-10", "a"), bulk_line(11, "gw-11", "a"), bad].join("\n");
        let path = f.file("bad.jsonl", &text);
        let line = fails(&["devices", "enroll", "--repo", f.repo(), "--from", &path]);
        assert!(line.contains(expected), "expected `{expected}` in: {line}");
        assert_eq!(f.list(&[]).len(), 2, "a bad file enrolled something: {line}");
    }
    // Valid lines, but one names a device already enrolled: nothing of the file either.
    let text = ["# devices".into(), bulk_line(20, "gw-20", "a"), bulk_line(21, "gw-2", "a")].join("\n");
    let path = f.file("dup.jsonl", &text);
    let line = fails(&["devices", "enroll", "--repo", f.repo(), "--from", &path]);
    assert!(line.ends_with("dup.jsonl line 3: field `id`: `gw-2` is already enrolled; nothing was enrolled"), "{line}");
    assert_eq!(f.list(&[]).len(), 2);
}

/// `ack <key> <seq> accepted` lines: what the child acknowledged as durable.
fn acked(output: &str) -> BTreeMap<String, BTreeSet<u64>> {
    let mut acked: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in output.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        if let ["ack", key, seq, "accepted"] = parts.as_slice() {
            acked.entry(key.to_string()).or_default().insert(seq.parse().unwrap());
        }
    }
    acked
}

fn stored(db: &Path) -> BTreeMap<String, BTreeSet<u64>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let mut stmt =
        conn.prepare("SELECT d.public_key, e.seq FROM status_events e JOIN devices d ON d.id = e.device").unwrap();
    let mut stored: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))).unwrap();
    for row in rows {
        let (key, seq) = row.unwrap();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        stored.entry(hex).or_default().insert(seq as u64);
    }
    stored
}

#[test]
fn every_acknowledged_report_survives_a_kill_9() {
    let f = Fixture::new();
    let args: Vec<String> = ["fleet-test-ingest", "--repo", f.repo(), "--devices", "50", "--enroll"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut child = Proc::spawn("seeder fleet-test-ingest", Path::new(env!("CARGO_BIN_EXE_seeder")), &args).unwrap();
    // Kill it mid-stream, once it has acknowledged at least 20 reports of some device
    // (about 1,000 in all); it never stops by itself.
    child
        .wait_line("an ack of seq 20", Duration::from_secs(120), |line| {
            line.strip_prefix("ack ").and_then(|rest| rest.split(' ').nth(1)?.parse::<u64>().ok()).filter(|s| *s >= 20)
        })
        .unwrap();
    child.kill();
    let acked = acked(&child.output());
    let acked_count: usize = acked.values().map(BTreeSet::len).sum();
    assert!(acked_count >= 950, "{acked_count} acks seen");

    let stored = stored(&f.db());
    for (key, seqs) in &acked {
        let missing: Vec<&u64> = seqs.iter().filter(|s| !stored.get(key).is_some_and(|st| st.contains(s))).collect();
        assert!(missing.is_empty(), "device {key}: acknowledged reports {missing:?} are not in the database");
    }
    // And the seeder reads the database back after the kill.
    let reported = f.list(&[]).iter().filter(|r| !r["state"].is_null()).count();
    assert_eq!(reported, 50);
}
