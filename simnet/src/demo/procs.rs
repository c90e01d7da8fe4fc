//! Child processes for the live demo: output lines captured (and kept for the error message
//! if something fails), addresses learnt from the daemons' own log lines, and every child
//! killed when its handle drops — on success, on error and on panic.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A running daemon.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    notify: mpsc::Receiver<()>,
}

impl Proc {
    /// Starts `program` with `args`, capturing stdout and stderr line by line.
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", std::env::var("DEMO_LOG").unwrap_or_else(|_| "info,libp2p=warn".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, notify) = mpsc::channel();
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().context("stdout")?), Box::new(child.stderr.take().context("stderr")?)];
        for stream in streams {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        // Keep memory bounded for chatty daemons: the tail is what explains a failure.
                        if l.len() > 5000 {
                            l.drain(..2500);
                        }
                        l.push(line);
                    }
                    let _ = tx.send(());
                }
            });
        }
        Ok(Proc { name: name.into(), child, lines, notify })
    }

    /// Waits until an output line yields a value.
    pub fn wait_line<T>(&self, what: &str, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.lines.lock().map_err(|_| anyhow!("output lock"))?;
                for line in lines.iter().skip(seen) {
                    if let Some(v) = find(line) {
                        return Ok(v);
                    }
                }
                seen = lines.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: no {what} within {timeout:?}; last output:\n{}", self.name, self.tail(15));
            }
            // Either a new line arrives or the deadline passes.
            let _ = self.notify.recv_timeout(left);
        }
    }

    /// The last `n` output lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a tracing line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

/// Runs a command to completion; its stdout on success, its output in the error otherwise.
pub fn run(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The release binaries of the daemons, built if needed. `cargo run -p simnet -- demo`
/// builds only simnet; the daemons are separate packages, so the demo asks cargo for them
/// (a no-op once built).
pub fn daemon_binaries(bin_dir: Option<&Path>) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("own executable")?;
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => exe.parent().context("executable directory")?.to_path_buf(),
    };
    let names = ["seeder", "edge-node", "device-client"];
    if let (Ok(cargo), None) = (std::env::var("CARGO"), bin_dir) {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("release").to_string();
        let mut args = vec!["build", "-q", "--bins", "-p", "seeder", "-p", "edge-node", "-p", "device-client"];
        if profile == "release" {
            args.push("--release");
        }
        eprintln!("building the daemons (seeder, edge-node, device-client; the first time takes a few minutes)…");
        let status = Command::new(cargo).args(&args).status().context("cannot run cargo")?;
        if !status.success() {
            bail!("building the daemons failed");
        }
    }
    let [seeder, edge, device] = names.map(|n| dir.join(n));
    for path in [&seeder, &edge, &device] {
        if !path.exists() {
            bail!("{} is missing: run `cargo build --release --bins` first", path.display());
        }
    }
    Ok((seeder, edge, device))
}

/// One HTTP/1.0 GET on 127.0.0.1 (the edge nodes' /status), body as JSON.
pub fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    serde_json::from_slice(&response[split + 4..]).ok()
}
