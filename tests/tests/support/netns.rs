//! Two network namespaces joined by a veth pair, for tests that need a LAN with multicast
//! (mDNS does not work on plain loopback): `edge` (10.77.0.1/24) and `device` (10.77.0.2/24).
//! Processes run inside with `ip netns exec`, which execs the program, so a [`Proc`]'s pid is
//! the program itself and killing it on drop works as usual. The namespaces (and with them
//! the veth pair) are deleted on drop, also when a test panics; declare the [`NetPair`]
//! before the processes so they are killed first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::device::{run_check, CheckRun, Device};
use super::{bin, seeder, Edge, Origin, Proc};

/// The edge side's address on the veth pair.
pub const EDGE_IP: &str = "10.77.0.1";
/// The device side's address on the veth pair.
pub const DEVICE_IP: &str = "10.77.0.2";

/// Two namespaces, `edge` and `device`, joined by a veth pair; deleted on drop.
pub struct NetPair {
    pub edge: String,
    pub device: String,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetPair {
    /// Creates the namespaces (names unique per process and call). `Err` says why network
    /// namespaces are unavailable here (not root, no iproute2), for the caller to skip.
    pub fn create(tag: &str) -> Result<NetPair, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("otamesh-{tag}-{}-{n}", std::process::id());
        let pair = NetPair { edge: format!("{base}-e"), device: format!("{base}-d") };
        // On an early return, drop deletes whatever was created.
        let p = &pair;
        ip(&["netns", "add", &p.edge])?;
        ip(&["netns", "add", &p.device])?;
        ip(&["link", "add", "om-e", "netns", &p.edge, "type", "veth", "peer", "name", "om-d", "netns", &p.device])?;
        for (ns, dev, addr) in [(&p.edge, "om-e", EDGE_IP), (&p.device, "om-d", DEVICE_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            let link = ip(&["-n", ns, "link", "show", dev])?;
            if !link.contains("MULTICAST") {
                return Err(format!("{dev} in {ns} has no MULTICAST flag: {link}"));
            }
        }
        Ok(pair)
    }

    /// Starts `program args` inside namespace `ns`.
    pub fn spawn(&self, ns: &str, name: &str, program: &Path, args: &[String]) -> Proc {
        let mut all: Vec<String> = vec!["netns".into(), "exec".into(), ns.into(), program.to_str().unwrap().into()];
        all.extend_from_slice(args);
        Proc::spawn(name, Path::new("ip"), &all).unwrap()
    }

    /// A seeder repository in `dir` served as the mesh origin inside the edge namespace (on
    /// its loopback; edge nodes there reach it, devices need not).
    pub fn origin(&self, dir: &Path) -> Origin {
        self.origin_listening(dir, "/ip4/127.0.0.1/udp/0/quic-v1")
    }

    /// Like [`NetPair::origin`], listening on `listen`: on [`EDGE_IP`] it is reachable from
    /// both namespaces.
    pub fn origin_listening(&self, dir: &Path, listen: &str) -> Origin {
        let repo = dir.join("repo");
        seeder(&["init", "--repo", repo.to_str().unwrap()]);
        let args: Vec<String> = ["--json", "serve", "--repo", repo.to_str().unwrap(), "--listen", listen, "--no-mdns"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Origin::from_proc(self.spawn(&self.edge, "origin", &bin("seeder"), &args), repo)
    }

    /// An edge node inside the edge namespace with mDNS on and its device service on
    /// `device_listen` (e.g. `0.0.0.0:0` or `10.77.0.1:0`) for both QUIC and TCP. Its ops
    /// HTTP is on the namespace's loopback, out of the test's reach: wait on its log lines.
    pub fn edge(&self, name: &str, data_dir: &Path, site: &str, device_listen: &str, bootstrap: &str) -> Edge {
        self.edge_with(name, data_dir, site, device_listen, bootstrap, &[])
    }

    /// [`NetPair::edge`] with `extra` flags for `edge-node run`.
    pub fn edge_with(
        &self,
        name: &str,
        data_dir: &Path,
        site: &str,
        device_listen: &str,
        bootstrap: &str,
        extra: &[&str],
    ) -> Edge {
        let mut args: Vec<String> = [
            "run",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--site",
            site,
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--http-listen",
            "127.0.0.1:0",
            "--device-quic-listen",
            device_listen,
            "--device-tcp-listen",
            device_listen,
            "--bootstrap",
            bootstrap,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = self.spawn(&self.edge, name, &bin("edge-node"), &args);
        Edge::from_proc(proc, data_dir, site)
    }

    /// Runs `device-client check --config … extra` inside the device namespace to its end;
    /// kills it and panics after `timeout`.
    pub fn check(&self, device: &Device, extra: &[&str], timeout: Duration) -> CheckRun {
        run_check(&device.check_argv(&["ip", "netns", "exec", &self.device], extra), timeout)
    }
}

/// Runs `f` on a thread moved into namespace `ns`, so the sockets it opens live there (e.g.
/// to reach an ops HTTP bound to the namespace's loopback). `setns` moves only the calling
/// thread, which ends when `f` returns; the test's other threads stay where they are.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    let handle = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: `handle` is an open namespace file for the whole call; setns changes
            // only this thread's network namespace.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(rc == 0, "setns into {ns}: {}", std::io::Error::last_os_error());
            f()
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.edge, &self.device] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
