//! Every binary, started with a missing or bad input, fails the same way: one line on stderr
//! starting with `error:`, exit code 1, and no file or directory that did not exist before
//! (no node key, chunk directories, index, data dir or origin key left for an operator to
//! find). Real processes, table-driven.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{bin, run_to_exit, seeder};

/// One failed start: the command, and the paths that must not exist after it.
struct Case {
    name: &'static str,
    binary: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    must_not_exist: Vec<PathBuf>,
    /// Words the error line must contain (what went wrong, or what to do).
    mentions: &'static str,
}

fn case(
    name: &'static str,
    binary: &'static str,
    args: &[&str],
    must_not_exist: &[&Path],
    mentions: &'static str,
) -> Case {
    Case {
        name,
        binary,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        must_not_exist: must_not_exist.iter().map(|p| p.to_path_buf()).collect(),
        mentions,
    }
}

/// `edge-node run` on loopback, port 0 everywhere, no mDNS; `changes` replace a default
/// flag's value or add a flag (clap refuses a single-valued flag given twice).
fn edge_args<'a>(data_dir: &'a str, changes: &[&'a str]) -> Vec<&'a str> {
    let mut flags: Vec<(&str, Option<&str>)> = vec![
        ("--data-dir", Some(data_dir)),
        ("--listen", Some("/ip4/127.0.0.1/udp/0/quic-v1")),
        ("--no-mdns", None),
        ("--http-listen", Some("127.0.0.1:0")),
        ("--device-quic-listen", Some("127.0.0.1:0")),
        ("--device-tcp-listen", Some("127.0.0.1:0")),
    ];
    for pair in changes.chunks(2) {
        match flags.iter_mut().find(|(flag, _)| *flag == pair[0]) {
            Some(entry) => entry.1 = Some(pair[1]),
            None => flags.push((pair[0], Some(pair[1]))),
        }
    }
    let mut args = vec!["run"];
    for (flag, value) in flags {
        args.push(flag);
        args.extend(value);
    }
    args
}

#[test]
fn failed_starts_leave_no_debris_and_say_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let repo = dir.join("repo");
    seeder(&["init", "--repo", repo.to_str().unwrap()]);
    let good_root = repo.join("metadata/1.root.json");
    let bad_root = dir.join("bad-root.json");
    std::fs::write(&bad_root, br#"{"signed": {"_type": "targets"}, "signatures": []}"#).unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "site = \n").unwrap();
    let no_edges = dir.join("no-edges.toml");
    std::fs::write(&no_edges, "edges = []\nmdns = false\n").unwrap();
    let missing = dir.join("missing.json");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    // An existing, empty data dir must stay empty.
    let empty = dir.join("empty-data");
    std::fs::create_dir(&empty).unwrap();

    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (repo_s, good_s, bad_s, missing_s, toml_s) = (s(&repo), s(&good_root), s(&bad_root), s(&missing), s(&bad_toml));
    let edge_dir = dir.join("edge/data");
    let edge_s = s(&edge_dir);
    let device_dir = dir.join("device/data");
    let device_s = s(&device_dir);
    let missing_repo = dir.join("no-repo");
    let missing_repo_s = s(&missing_repo);
    let origin_key = repo.join("keys/origin-node.key");
    let edge_parent = dir.join("edge");
    let device_parent = dir.join("device");

    let mut cases = vec![
        case(
            "edge: missing trusted root",
            "edge-node",
            &edge_args(&edge_s, &["--trusted-root", &missing_s]),
            &[&edge_parent],
            "trusted root",
        ),
        case(
            "edge: trusted root is not a root",
            "edge-node",
            &edge_args(&edge_s, &["--trusted-root", &bad_s]),
            &[&edge_parent],
            "trusted root",
        ),
        case(
            "edge: listen address is not a multiaddr",
            "edge-node",
            &edge_args(&edge_s, &["--listen", "udp:4101"]),
            &[&edge_parent],
            "multiaddr",
        ),
        case(
            "edge: capacity is not a size",
            "edge-node",
            &edge_args(&edge_s, &["--capacity", "12parsecs"]),
            &[&edge_parent],
            "parsecs",
        ),
        case(
            "edge: no device connections allowed",
            "edge-node",
            &edge_args(&edge_s, &["--device-max-connections", "0"]),
            &[&edge_parent],
            "1 to 65536",
        ),
        case(
            "edge: device TCP port in use",
            "edge-node",
            &edge_args(&edge_s, &["--device-tcp-listen", &busy_addr]),
            &[&edge_parent],
            "device service",
        ),
        case(
            "edge: HTTP port in use",
            "edge-node",
            &edge_args(&edge_s, &["--http-listen", &busy_addr]),
            &[&edge_parent],
            "http-listen",
        ),
        case(
            "edge: missing config",
            "edge-node",
            &edge_args(&edge_s, &["--config", &missing_s]),
            &[&edge_parent],
            "config",
        ),
        case(
            "edge: config is not TOML",
            "edge-node",
            &edge_args(&edge_s, &["--config", &toml_s]),
            &[&edge_parent],
            "config",
        ),
        case(
            "edge: unknown flag",
            "edge-node",
            &edge_args(&edge_s, &["--trusted-roots", &good_s]),
            &[&edge_parent],
            "--help",
        ),
        case(
            "device run: missing trusted root",
            "device-client",
            &["run", "--data-dir", &device_s, "--trusted-root", &missing_s, "--edge", "tcp://127.0.0.1:9", "--no-mdns"],
            &[&device_parent],
            "trusted root",
        ),
        case(
            "device check: trusted root is not a root",
            "device-client",
            &["check", "--data-dir", &device_s, "--trusted-root", &bad_s, "--edge", "tcp://127.0.0.1:9", "--no-mdns"],
            &[&device_parent],
            "trusted root",
        ),
        case(
            "device run: no trusted root at all",
            "device-client",
            &["run", "--data-dir", &device_s, "--edge", "tcp://127.0.0.1:9", "--no-mdns"],
            &[&device_parent],
            "trusted_root",
        ),
        case(
            "device check: bad edge address",
            "device-client",
            &["check", "--data-dir", &device_s, "--trusted-root", &good_s, "--edge", "http://127.0.0.1:9", "--no-mdns"],
            &[&device_parent],
            "scheme",
        ),
        case(
            "device check: no edge and no mDNS",
            "device-client",
            &["check", "--config", &s(&no_edges), "--data-dir", &device_s, "--trusted-root", &good_s],
            &[&device_parent],
            "no edge node",
        ),
        case(
            "device run: config is not TOML",
            "device-client",
            &["run", "--config", &toml_s, "--data-dir", &device_s],
            &[&device_parent],
            "config",
        ),
        case(
            "seeder verify: missing --root",
            "seeder",
            &["verify", "--repo", &repo_s, "--root", &missing_s],
            &[&missing],
            "--root",
        ),
        case(
            "seeder verify: --root is not a root",
            "seeder",
            &["verify", "--repo", &repo_s, "--root", &bad_s],
            &[],
            "--root",
        ),
        case(
            "seeder verify: missing repository",
            "seeder",
            &["verify", "--repo", &missing_repo_s],
            &[&missing_repo],
            "not a seeder repository",
        ),
        case("seeder verify: no --repo", "seeder", &["verify"], &[], "--repo"),
        case(
            "seeder inspect: missing repository",
            "seeder",
            &["inspect", "--repo", &missing_repo_s],
            &[&missing_repo],
            "seeder init",
        ),
        case(
            "seeder serve: missing repository",
            "seeder",
            &["serve", "--repo", &missing_repo_s, "--no-mdns"],
            &[&missing_repo],
            "seeder init",
        ),
        case(
            "seeder serve: listen address is not a multiaddr",
            "seeder",
            &["serve", "--repo", &repo_s, "--listen", "udp:4100", "--no-mdns"],
            &[&origin_key],
            "multiaddr",
        ),
        case(
            "seeder serve: renewal margin as long as the lifetime",
            "seeder",
            &[
                "serve",
                "--repo",
                &repo_s,
                "--timestamp-expires",
                "1d",
                "--timestamp-renew-before",
                "1d",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--no-mdns",
            ],
            &[&origin_key],
            "timestamp-renew-before",
        ),
        case(
            "seeder timestamp refresh: bad lifetime",
            "seeder",
            &["timestamp", "refresh", "--repo", &repo_s, "--expires", "soon"],
            &[],
            "soon",
        ),
    ];
    let mut clock = case(
        "seeder: unreadable OTAMESH_SEEDER_NOW",
        "seeder",
        &["inspect", "--repo", &repo_s],
        &[],
        "OTAMESH_SEEDER_NOW",
    );
    clock.env.push(("OTAMESH_SEEDER_NOW", "next tuesday".into()));
    cases.push(clock);
    let existing = case(
        "edge: missing trusted root in an existing empty data dir",
        "edge-node",
        &edge_args(&s(&empty), &["--trusted-root", &missing_s]),
        &[],
        "trusted root",
    );
    cases.push(existing);

    let mut failures = Vec::new();
    for case in &cases {
        let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", "off"), ("NO_COLOR", "1")];
        env.extend(case.env.iter().map(|(k, v)| (*k, v.as_str())));
        let out = run_to_exit(&bin(case.binary), &case.args, &env, Duration::from_secs(60));
        let lines: Vec<&str> = out.stderr.lines().collect();
        let mut wrong = Vec::new();
        if out.code != Some(1) {
            wrong.push(format!("exit code {:?}", out.code));
        }
        if lines.len() != 1 || !lines[0].starts_with("error: ") {
            wrong.push(format!("stderr is not one `error:` line: {:?}", out.stderr));
        } else if !lines[0].contains(case.mentions) {
            wrong.push(format!("error line does not mention `{}`: {}", case.mentions, lines[0]));
        }
        for path in &case.must_not_exist {
            if path.exists() {
                wrong.push(format!("left {} behind", path.display()));
                let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
            }
        }
        if std::fs::read_dir(&empty).unwrap().next().is_some() {
            wrong.push(format!("left files in the existing data dir {}", empty.display()));
            for entry in std::fs::read_dir(&empty).unwrap().flatten() {
                let _ = std::fs::remove_dir_all(entry.path()).or_else(|_| std::fs::remove_file(entry.path()));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", case.name, wrong.join("; ")));
        }
    }
    drop(busy);
    assert!(
        failures.is_empty(),
        "{} of {} failed starts misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
