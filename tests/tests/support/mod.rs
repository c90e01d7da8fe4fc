//! Real processes for integration tests: spawn the binaries, learn their addresses from their
//! own output, wait on conditions with deadlines (never fixed sleeps), and kill everything on
//! drop — also when a test panics.

#![allow(dead_code)]

pub mod device;
pub mod hostile;
pub mod netns;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A workspace binary built by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build -p {name}` (or `cargo test --workspace`)", path.display());
    path
}

/// A child process whose output lines are collected; killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    notify: mpsc::Receiver<()>,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info,libp2p=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, notify) = mpsc::channel();
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                    let _ = tx.send(());
                }
            });
        }
        Proc { name: name.into(), child, lines, notify }
    }

    /// Waits until an output line satisfies `find`, returning what it extracted.
    pub fn wait_line<T>(&self, what: &str, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                for line in &lines[seen..] {
                    if let Some(found) = find(line) {
                        return found;
                    }
                }
                seen = lines.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no line with {what} within {timeout:?}; output:\n{}",
                self.name,
                self.output()
            );
            let _ = self.notify.recv_timeout(left);
        }
    }

    /// The process id (to read `/proc/PID/status`, or to send a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGKILL, as a power cut or OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a process that ran to its end printed.
pub struct Exited {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` to its exit with `env` set (stdin closed); kills it and panics if it is
/// still running after `timeout` — a command expected to fail that starts instead.
pub fn run_to_exit(program: &Path, args: &[String], env: &[(&str, &str)], timeout: Duration) -> Exited {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let readers: Vec<_> =
        [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
            .into_iter()
            .map(|mut stream| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = stream.read_to_string(&mut text);
                    text
                })
            })
            .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} still running after {timeout:?}", program.display());
        }
        // Polling for the exit of a process that has no other event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut texts = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Exited { code: status.code(), stdout: texts.next().unwrap_or_default(), stderr: texts.next().unwrap_or_default() }
}

/// Extracts the value of `key=` (tracing's field format) from a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    Some(line[start..].split_whitespace().next()?.trim_matches('"'))
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        // Polling a status endpoint: the interval bounds load, not correctness.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `path` from an HTTP/1.1 server; body on 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(response[split + 4..].to_vec())
}

/// `/status` of an edge node as JSON.
pub fn status(addr: SocketAddr) -> Option<Value> {
    serde_json::from_slice(&http_get(addr, "/status")?).ok()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
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
        let proc = Proc::spawn("origin", &bin("seeder"), &args);
        let addr = proc.wait_line("origin addrs", Duration::from_secs(30), |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            Some(v["addrs"][0].as_str()?.to_string())
        });
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
        // Every test device connects and reports from 127.0.0.1, and killed agents leave QUIC
        // connections open until the idle timeout: the per-address caps are for real LANs.
        let loopback_lan = [
            "--max-connections-per-client",
            "512",
            "--report-devices-per-client",
            "1024",
            "--reports-per-sec-per-client",
            "100",
        ];
        Edge::start_with(name, data_dir, site, bootstrap, &loopback_lan)
    }

    /// `start` with extra `edge-node run` flags instead of the test defaults.
    pub fn start_with(name: &str, data_dir: &Path, site: &str, bootstrap: &[&str], extra: &[&str]) -> Edge {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--data-dir".into(),
            data_dir.to_str().unwrap().into(),
            "--site".into(),
            site.into(),
            "--listen".into(),
            "/ip4/127.0.0.1/udp/0/quic-v1".into(),
            "--no-mdns".into(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--device-quic-listen".into(),
            "127.0.0.1:0".into(),
            "--device-tcp-listen".into(),
            "127.0.0.1:0".into(),
        ];
        for b in bootstrap {
            args.push("--bootstrap".into());
            args.push(b.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Edge::from_proc(Proc::spawn(name, &bin("edge-node"), &args), data_dir, site)
    }

    /// A started edge node, once its log has named its addresses.
    pub fn from_proc(proc: Proc, data_dir: &Path, site: &str) -> Edge {
        let p2p = proc.wait_line("p2p address", Duration::from_secs(30), |l| {
            (l.contains("listening") && l.contains("/p2p/")).then(|| field(l, "addr").map(String::from)).flatten()
        });
        let http = proc.wait_line("http address", Duration::from_secs(30), |l| {
            l.contains("ops HTTP listening").then(|| field(l, "addr")?.parse().ok()).flatten()
        });
        let device = |key: &'static str| {
            move |l: &str| {
                let v = field(l, key)?;
                l.contains("device service listening")
                    .then(|| v.trim_start_matches("Some(").trim_end_matches(')').parse().ok())
                    .flatten()
            }
        };
        let device_quic = proc.wait_line("device QUIC address", Duration::from_secs(30), device("quic"));
        let device_tcp = proc.wait_line("device TCP address", Duration::from_secs(30), device("tcp"));
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

    pub fn peer_count(&self) -> usize {
        self.status().and_then(|s| s["peers"].as_array().map(Vec::len)).unwrap_or(0)
    }
}

/// Every chunk file in a store hashes to its name: what a node could serve is intact.
pub fn store_is_intact(data_dir: &Path) -> (usize, Vec<PathBuf>) {
    let mut count = 0;
    let mut bad = Vec::new();
    for fanout in std::fs::read_dir(data_dir.join("chunks")).unwrap().flatten() {
        for file in std::fs::read_dir(fanout.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            count += 1;
            let bytes = std::fs::read(file.path()).unwrap();
            if blake3::hash(&bytes).to_hex().as_str() != name {
                bad.push(file.path());
            }
        }
    }
    (count, bad)
}
