//! Real processes for integration tests: spawn the binaries, learn their addresses from their
//! own output, wait on conditions with deadlines (never fixed sleeps), and kill everything on
//! drop — also when a test panics.

#![allow(dead_code)]

pub mod device;
pub mod hostile;
pub mod netns;
pub mod reports;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A workspace binary built by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build -p {name}` (or `cargo test --workspace`)", path.display());
    path
}

// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use test_procs::{field, http_get, random_bytes, Exited, Proc};

/// [`test_procs::run_to_exit`], panicking with its error: a command still running after
/// `timeout` (one expected to fail that starts instead) fails the test.
pub fn run_to_exit(program: &Path, args: &[String], env: &[(&str, &str)], timeout: Duration) -> Exited {
    test_procs::run_to_exit(program, args, env, timeout).unwrap_or_else(|e| panic!("{}: {e:#}", program.display()))
}

/// [`test_procs::eventually`], failing the test at the deadline.
pub fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    test_procs::eventually(what, timeout, check).unwrap_or_else(|e| panic!("{e}"))
}

/// `/status` of an edge node as JSON.
pub fn status(addr: SocketAddr) -> Option<Value> {
    serde_json::from_slice(&http_get(addr, "/status")?).ok()
}

/// Runs the seeder to completion, panicking with its output on failure.
pub fn seeder(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = Command::new(bin("seeder")).args(&all).output().expect("seeder runs");
    assert!(
        out.status.success(),
        "seeder {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// A seeder repository served as the mesh origin.
pub struct Origin {
    pub proc: Proc,
    pub repo: PathBuf,
    pub addr: String,
}

impl Origin {
    pub fn start(dir: &Path) -> Origin {
        Origin::serve(&Origin::init(dir), &[])
    }

    /// A new repository in `dir`, not served yet.
    pub fn init(dir: &Path) -> PathBuf {
        let repo = dir.join("repo");
        seeder(&["init", "--repo", repo.to_str().unwrap()]);
        repo
    }

    /// Serves `repo` with extra `seeder serve` flags (e.g. renewal margins).
    pub fn serve(repo: &Path, extra: &[&str]) -> Origin {
        let repo = repo.to_path_buf();
        let mut args: Vec<String> = [
            "--json",
            "serve",
            "--repo",
            repo.to_str().unwrap(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--no-mdns",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Origin::from_proc(Proc::spawn("origin", &bin("seeder"), &args).unwrap(), repo)
    }

    /// A started `seeder serve` for `repo`, once it has printed its addresses.
    pub fn from_proc(proc: Proc, repo: PathBuf) -> Origin {
        let addr = test_procs::origin_addr(&proc, Duration::from_secs(30)).unwrap();
        Origin { proc, repo, addr }
    }

    /// Publishes an image as release `gw` `version`; returns its stored bytes.
    pub fn publish(&self, image: &Path, version: &str) -> u64 {
        self.publish_with(image, version, &[])
    }

    /// `publish` with extra `seeder release add` flags (e.g. `--chunking fixed:4K`).
    pub fn publish_with(&self, image: &Path, version: &str, extra: &[&str]) -> u64 {
        let mut args = vec![
            "release",
            "add",
            "--repo",
            self.repo.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--name",
            "gw",
            "--version",
            version,
            "--hw-class",
            "imx8",
        ];
        args.extend_from_slice(extra);
        let report = seeder(&args);
        report["stored_bytes"].as_u64().unwrap()
    }
}

/// A running edge node and the addresses it reported.
pub struct Edge {
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub site: String,
    pub p2p: String,
    pub http: SocketAddr,
    pub device_quic: SocketAddr,
    pub device_tcp: SocketAddr,
}

impl Edge {
    pub fn start(name: &str, data_dir: &Path, site: &str, bootstrap: &[&str]) -> Edge {
        Edge::start_with(name, data_dir, site, bootstrap, &test_procs::LOOPBACK_LAN_FLAGS)
    }

    /// `start` with extra `edge-node run` flags instead of the test defaults.
    pub fn start_with(name: &str, data_dir: &Path, site: &str, bootstrap: &[&str], extra: &[&str]) -> Edge {
        let args = test_procs::edge_run_args(data_dir, site, bootstrap, extra).unwrap();
        Edge::from_proc(Proc::spawn(name, &bin("edge-node"), &args).unwrap(), data_dir, site)
    }

    /// A started edge node, once its log has named its addresses.
    pub fn from_proc(proc: Proc, data_dir: &Path, site: &str) -> Edge {
        let addrs = test_procs::edge_addrs(&proc, Duration::from_secs(30)).unwrap();
        let test_procs::EdgeAddrs { p2p, http, device_quic, device_tcp } = addrs;
        Edge { proc, data_dir: data_dir.into(), site: site.into(), p2p, http, device_quic, device_tcp }
    }

    pub fn status(&self) -> Option<Value> {
        status(self.http)
    }

    /// True once `/status` says the release `version` is complete.
    pub fn has_release(&self, version: &str) -> bool {
        self.status().is_some_and(|s| {
            s["releases"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["version"] == version && r["complete"] == true))
        })
    }

    /// Bytes that entered this node from outside its site (wan + origin).
    pub fn backhaul_bytes(&self) -> u64 {
        let s = self.status().unwrap_or_default();
        s["bytes_in"]["wan"].as_u64().unwrap_or(0) + s["bytes_in"]["origin"].as_u64().unwrap_or(0)
    }

    /// Verified bytes this node took from the origin.
    pub fn origin_bytes(&self) -> u64 {
        self.status().and_then(|s| s["bytes_in"]["origin"].as_u64()).unwrap_or(0)
    }

    pub fn peer_count(&self) -> usize {
        self.status().and_then(|s| s["peers"].as_array().map(Vec::len)).unwrap_or(0)
    }
}

/// The chunk store under a directory, opened only to look: an edge node's packs (the node
/// may be running) or a repository's chunk files.
fn look_at_store(data_dir: &Path) -> chunk_store::ChunkStore {
    if data_dir.join("packs").is_dir() {
        chunk_store::ChunkStore::inspect(data_dir).expect("an edge node's packs to read")
    } else {
        chunk_store::ChunkStore::open_read_only(data_dir)
    }
}

/// Chunk ids stored under a directory (an edge node's data dir, a repository).
pub fn stored_chunks(data_dir: &Path) -> Vec<protocol::ChunkId> {
    look_at_store(data_dir).scan().into_iter().map(|(id, _)| id).collect()
}

/// Every stored body hashes to its id: what a node could serve is intact. Returns the count
/// and where each damaged body lies.
pub fn store_is_intact(data_dir: &Path) -> (usize, Vec<String>) {
    use std::os::unix::fs::FileExt;
    let store = look_at_store(data_dir);
    let mut count = 0;
    let mut bad = Vec::new();
    for (id, _) in store.scan() {
        // Evicted since the listing: nothing left to check.
        let Some(body) = store.body_on_disk(&id) else { continue };
        count += 1;
        // A pack the node deleted since the listing held nothing live.
        let Ok(file) = std::fs::File::open(&body.path) else { continue };
        let mut bytes = vec![0u8; body.len as usize];
        if file.read_exact_at(&mut bytes, body.offset).is_err() || !id.matches(&bytes) {
            bad.push(format!("{id} at {} offset {}", body.path.display(), body.offset));
        }
    }
    (count, bad)
}
