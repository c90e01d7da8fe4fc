//! `simnet demo`: the live demo with real daemons on loopback and no configuration.
//!
//! A seeder publishes into a TUF repository and serves it to the mesh; two sites of two edge
//! nodes each pre-stage every release; 24 Linux device agents (file-backed A/B slots, the
//! file bootloader, restart-as-reboot) install v1, are enrolled in the fleet, and then get
//! v2 — a few percent of the image changed — as a staged rollout: a canary wave, then the
//! rest, advanced by the seeder's controller from the devices' signed reports. Then v3, whose
//! health check fails on every device, is rolled out the same way and halts itself after its
//! canary wave: the devices it touched roll back, the others never install it. The demo ends
//! with a table of final states, each rollout's waves, and bytes: from the origin, over each
//! site's backhaul against the naive figure (every device from the origin), saved by chunk
//! reuse.
//!
//! Everything runs in a temporary directory that is removed at the end (`--keep` keeps it),
//! and every process is killed when the demo ends, fails or is interrupted.

mod hold;
mod images;
mod procs;
mod rollouts;
mod summary;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use protocol::edge::status::EdgeStatus;
pub use summary::Summary;
use test_procs::{http_get, Proc};

/// Demo settings; the defaults are what `simnet demo` runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Sites.
    pub sites: usize,
    /// Edge nodes per site.
    pub edges_per_site: usize,
    /// Device agents in all.
    pub devices: usize,
    /// Image size in MiB.
    pub image_mib: usize,
    /// Keep the working directory.
    pub keep: bool,
    /// After the summary, keep the mesh up with an MCU release for `mcu-agent` (edge device
    /// services on every interface) until Ctrl-C.
    pub hold: bool,
    /// Where the daemon binaries are; `None`: next to this executable, built by cargo first.
    pub bin_dir: Option<PathBuf>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { sites: 2, edges_per_site: 2, devices: 24, image_mib: 32, keep: false, hold: false, bin_dir: None }
    }
}

struct Edge {
    _proc: Proc,
    site: usize,
    p2p: String,
    http: SocketAddr,
    device_quic: SocketAddr,
    device_tcp: SocketAddr,
}

struct Device {
    dir: PathBuf,
    site: usize,
    proc: Proc,
}

/// The release whose health check fails on every device.
const BAD_VERSION: &str = "3.0.0";
/// Waves of both rollouts: the canary plus a quarter of the fleet, then everyone.
const WAVES: &str = "25,100";
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs the demo and prints its summary.
pub fn run(config: &DemoConfig) -> Result<Summary> {
    let (seeder, edge_bin, device_bin) = procs::daemon_binaries(config.bin_dir.as_deref())?;
    let work = tempfile::Builder::new().prefix("otamesh-demo-").tempdir().context("temp dir")?;
    let dir = work.path().to_path_buf();
    let result = run_in(config, &dir, &seeder, &edge_bin, &device_bin);
    if config.keep {
        let kept = work.keep();
        eprintln!("kept {}", kept.display());
    }
    result
}

fn say(text: &str) {
    eprintln!("\x1b[1m== {text}\x1b[0m");
}

fn run_in(config: &DemoConfig, dir: &Path, seeder: &Path, edge_bin: &Path, device_bin: &Path) -> Result<Summary> {
    let repo = dir.join("repo");
    let repo_s = repo.to_str().context("path")?.to_string();
    say("seeder init: a TUF repository with ed25519 keys for every role and a fleet content key");
    procs::run(seeder, &["init", "--repo", &repo_s])?;
    let (v1, v2) = images::write(dir, config.image_mib)?;
    let v3 = images::write_v3(dir, &v2)?;

    say("seeder serve: the origin joins the mesh");
    let origin = procs::spawn(
        "origin",
        seeder,
        &strings(&["--json", "serve", "--repo", &repo_s, "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns"]),
    )?;
    let origin_addr = test_procs::origin_addr(&origin, Duration::from_secs(30))?;

    say(&format!("{} sites × {} edge nodes", config.sites, config.edges_per_site));
    let mut edges: Vec<Edge> = Vec::new();
    for site in 0..config.sites {
        for member in 0..config.edges_per_site {
            let mut boot = vec![origin_addr.clone()];
            if member > 0 {
                boot.push(edges[edges.len() - member].p2p.clone());
            }
            let data_dir = dir.join(format!("edge-{site}-{member}"));
            edges.push(start_edge(edge_bin, &data_dir, site, &boot, config.hold)?);
        }
    }
    wait_until("edge nodes to see their peers", Duration::from_secs(60), || {
        edges.iter().all(|e| peer_count(e) >= config.edges_per_site)
    })?;

    say(&format!("publish v1.0.0 ({} MiB image)", config.image_mib));
    let stored_v1 = publish(seeder, &repo_s, &v1, "1.0.0", 1)?;
    wait_until("every edge node to pre-stage v1", PHASE_TIMEOUT, || edges.iter().all(|e| has_release(e, "1.0.0")))?;

    let per_site = config.devices / config.sites.max(1);
    say(&format!("{} device agents ({per_site} per site) install v1 from their site's edge nodes", config.devices));
    let mut devices = Vec::new();
    for i in 0..config.devices {
        let site = (i / per_site.max(1)).min(config.sites - 1);
        let site_edges: Vec<String> =
            edges.iter().filter(|e| e.site == site).map(|e| format!("quic://{}", e.device_quic)).collect();
        devices.push(start_device(device_bin, &dir.join(format!("device-{i:02}")), &repo, &site_edges, site)?);
    }
    let v1_started = Instant::now();
    wait_devices(&devices, "v1", PHASE_TIMEOUT, |s| s.state == "committed" && s.version == "1.0.0")?;
    let v1_time = v1_started.elapsed();
    let after_v1 = edge_counters(&edges);

    say("seeder devices enroll: the fleet's device keys, each with its site (only enrolled devices' reports count)");
    enroll(seeder, &repo_s, dir, &devices)?;

    say(&format!(
        "publish v2.0.0 (a few percent of the image changed) and roll it out: waves {WAVES}%, device-00 the canary"
    ));
    let stored_v2 = publish(seeder, &repo_s, &v2, "2.0.0", 2)?;
    let v2_started = Instant::now();
    start_rollout(seeder, &repo_s, "2.0.0")?;
    let mut v2_rollout = rollouts::Watch::new(seeder, &repo_s, "gw-2.0.0");
    wait_devices_watching(&devices, "v2", PHASE_TIMEOUT, &mut v2_rollout, |s| {
        s.state == "committed" && s.version == "2.0.0"
    })?;
    let v2_time = v2_started.elapsed();
    // The last wave's reports reach the origin a moment after the devices commit, and the
    // controller may complete the rollout (its last gate passed) before every one has: the
    // summary waits for all of them.
    wait_until("the v2 rollout to complete with every device's report counted", PHASE_TIMEOUT, || {
        v2_rollout.poll();
        v2_rollout.state() == "complete" && v2_rollout.committed() == devices.len() as u64
    })
    .with_context(|| format!("the rollout as last seen: {:?}", v2_rollout.seen()))?;
    let v2_line = v2_rollout.finish();
    let after_v2 = edge_counters(&edges);
    let v2_statuses: Vec<DeviceStatus> = devices.iter().map(|d| read_status(&d.dir)).collect();
    let v2_bytes: (u64, u64) =
        (v2_statuses.iter().map(|s| s.bytes_reused).sum(), v2_statuses.iter().map(|s| s.bytes_fetched).sum());

    say("publish v3.0.0, whose health check fails on every device, and roll it out the same way");
    publish(seeder, &repo_s, &v3, BAD_VERSION, 3)?;
    start_rollout(seeder, &repo_s, BAD_VERSION)?;
    let mut v3_rollout = rollouts::Watch::new(seeder, &repo_s, "gw-3.0.0");
    // Settled: the rollout halted and no device is between a download and its outcome.
    let settled = |s: &DeviceStatus| {
        s.version == "2.0.0" && matches!(s.state.as_str(), "committed" | "rolled-back" | "idle" | "staged")
    };
    wait_until("the v3 rollout to halt", PHASE_TIMEOUT, || {
        v3_rollout.poll();
        v3_rollout.state() == "halted"
    })?;
    wait_devices_watching(&devices, "v3", PHASE_TIMEOUT, &mut v3_rollout, settled)?;

    let statuses: Vec<DeviceStatus> = devices.iter().map(|d| read_status(&d.dir)).collect();
    let mut states = BTreeMap::new();
    for s in &statuses {
        let key = match s.error.as_deref() {
            Some(e) if s.state == "rolled-back" => format!("rolled back to {} ({e})", s.version),
            _ => format!("{} {}", s.state, s.version),
        };
        *states.entry(key).or_insert(0usize) += 1;
    }
    let mut sites = Vec::new();
    for site in 0..config.sites {
        let in_site = devices.iter().filter(|d| d.site == site).count() as u64;
        let backhaul = |c: &BTreeMap<usize, (u64, u64, u64)>| {
            c.iter().filter(|(i, _)| edges[**i].site == site).map(|(_, (_, wan, origin))| wan + origin).sum::<u64>()
        };
        let v1_bytes = backhaul(&after_v1);
        sites.push(summary::SiteBytes {
            site: format!("site-{site}"),
            devices: in_site,
            backhaul_v1: v1_bytes,
            backhaul_v2: backhaul(&after_v2) - v1_bytes,
            naive_v1: in_site * stored_v1,
            naive_v2: in_site * stored_v2,
        });
    }
    let origin_v1: u64 = after_v1.values().map(|(_, _, o)| o).sum();
    let origin_v2: u64 = after_v2.values().map(|(_, _, o)| o).sum::<u64>() - origin_v1;
    let summary = Summary {
        devices: config.devices,
        states,
        stored_v1,
        stored_v2,
        image_bytes: (config.image_mib as u64) << 20,
        origin_v1,
        origin_v2,
        sites,
        reused_v2: v2_bytes.0,
        fetched_v2: v2_bytes.1,
        v1_time,
        v2_time,
        rollouts: vec![v2_line, v3_rollout.finish()],
    };
    if config.hold {
        print!("{}", summary.render());
        let ports: Vec<u16> = edges.iter().map(|e| e.device_tcp.port()).collect();
        let seen =
            |id: &str| edges.iter().all(|e| edge_status(e).is_some_and(|s| s.rollouts.iter().any(|r| r.rollout == id)));
        hold::serve_mcu(seeder, &repo_s, dir, &ports, seen)?;
    }
    drop(devices);
    drop(edges);
    drop(origin);
    Ok(summary)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// An edge node on loopback; `tcp_everywhere` puts its framed-TCP device service on every
/// interface instead (for `--hold`: the MCU agent's host build arrives over a TAP link).
fn start_edge(bin: &Path, data_dir: &Path, site: usize, bootstrap: &[String], tcp_everywhere: bool) -> Result<Edge> {
    let bootstrap: Vec<&str> = bootstrap.iter().map(String::as_str).collect();
    let mut args =
        test_procs::edge_run_args(data_dir, &format!("site-{site}"), &bootstrap, &test_procs::LOOPBACK_LAN_FLAGS)?;
    if tcp_everywhere {
        if let Some(at) = args.iter().position(|a| a == "--device-tcp-listen") {
            args[at + 1] = "0.0.0.0:0".into();
        }
    }
    let name = data_dir.file_name().and_then(|n| n.to_str()).unwrap_or("edge").to_string();
    let proc = procs::spawn(&name, bin, &args)?;
    let addrs = test_procs::edge_addrs(&proc, Duration::from_secs(30))?;
    Ok(Edge {
        _proc: proc,
        site,
        p2p: addrs.p2p,
        http: addrs.http,
        device_quic: addrs.device_quic,
        device_tcp: addrs.device_tcp,
    })
}

fn start_device(bin: &Path, dir: &Path, repo: &Path, edges: &[String], site: usize) -> Result<Device> {
    std::fs::create_dir_all(dir)?;
    let mut config = format!(
        "data_dir = {data:?}\nrelease = \"gw\"\nhw_class = \"imx8-gw\"\nsite = \"site-{site}\"\ntrusted_root = {root:?}\n\
         content_key = {key:?}\nedges = {edges:?}\nslot_a = {a:?}\nslot_b = {b:?}\n\
         check_interval_secs = 1\ntrial_deadline_secs = 30\nrequest_timeout_secs = 10\nmdns = false\n\n[bootloader]\nkind = \"file\"\n",
        data = dir.join("data"),
        root = repo.join("metadata/1.root.json"),
        key = repo.join("keys/content.key"),
        a = dir.join("slot-a.img"),
        b = dir.join("slot-b.img"),
    );
    // The application does not start on v3: its trial must roll back.
    config.push_str(&format!(
        "\n[[health_check]]\nname = \"app\"\ncommand = [\"sh\", \"-c\", \"test \\\"$OTAMESH_VERSION\\\" != {BAD_VERSION}\"]\ntimeout_secs = 10\n"
    ));
    let path = dir.join("agent.toml");
    std::fs::write(&path, config)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("device").to_string();
    let proc = procs::spawn(&name, bin, &strings(&["run", "--config", path.to_str().context("path")?]))?;
    Ok(Device { dir: dir.into(), site, proc })
}

/// Enrolls every device (its key from its first status report) in one bulk file.
fn enroll(seeder: &Path, repo: &str, dir: &Path, devices: &[Device]) -> Result<()> {
    let mut lines = String::new();
    for (i, device) in devices.iter().enumerate() {
        let status: Value = serde_json::from_slice(&std::fs::read(device.dir.join("data/status.json"))?)?;
        let key = status["device"].as_str().context("a status without a device key")?;
        let line = serde_json::json!({"key": key, "id": format!("device-{i:02}"), "site": format!("site-{}", device.site), "hw_class": "imx8-gw"});
        lines.push_str(&format!("{line}\n"));
    }
    let file = dir.join("fleet.jsonl");
    std::fs::write(&file, lines)?;
    procs::run(seeder, &["devices", "enroll", "--repo", repo, "--from", file.to_str().context("path")?])?;
    Ok(())
}

/// Starts the rollout of `version`: device-00 the canary, no soak (the demo is short), a
/// wave judged from its first outcome (a demo wave has a handful of devices), halted above
/// 10 % failures.
fn start_rollout(seeder: &Path, repo: &str, version: &str) -> Result<()> {
    procs::run(
        seeder,
        &[
            "rollout",
            "start",
            "--repo",
            repo,
            "gw",
            version,
            "--waves",
            WAVES,
            "--canary",
            "device-00",
            "--soak",
            "0",
            "--min-reports",
            "1",
            "--max-failure-rate",
            "10",
        ],
    )?;
    Ok(())
}

fn publish(seeder: &Path, repo: &str, image: &Path, version: &str, counter: u64) -> Result<u64> {
    let out = procs::run(
        seeder,
        &[
            "--json",
            "release",
            "add",
            "--repo",
            repo,
            "--image",
            image.to_str().context("path")?,
            "--name",
            "gw",
            "--version",
            version,
            "--hw-class",
            "imx8-gw",
            "--security-counter",
            &counter.to_string(),
        ],
    )?;
    let report: Value = serde_json::from_str(&out).context("seeder --json output")?;
    report["stored_bytes"].as_u64().context("seeder reported no stored_bytes")
}

/// The edge node's `/status`, read as the one typed document the daemon serves; `None`
/// while it does not answer.
fn edge_status(edge: &Edge) -> Option<EdgeStatus> {
    http_get(edge.http, "/status").and_then(|body| serde_json::from_slice(&body).ok())
}

fn peer_count(edge: &Edge) -> usize {
    edge_status(edge).map_or(0, |s| s.peers.len())
}

fn has_release(edge: &Edge, version: &str) -> bool {
    edge_status(edge).is_some_and(|s| s.releases.iter().any(|r| r.version == version && r.complete))
}

/// Edge index → (site, wan, origin) bytes in.
fn edge_counters(edges: &[Edge]) -> BTreeMap<usize, (u64, u64, u64)> {
    edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let b = edge_status(e).unwrap_or_default().bytes_in;
            (i, (b.site, b.wan, b.origin))
        })
        .collect()
}

/// Polls `done` every 200 ms until it holds or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
struct DeviceStatus {
    state: String,
    version: String,
    error: Option<String>,
    bytes_fetched: u64,
    bytes_reused: u64,
}

fn read_status(dir: &Path) -> DeviceStatus {
    let Some(v) =
        std::fs::read(dir.join("data/status.json")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return DeviceStatus { state: "starting".into(), ..DeviceStatus::default() };
    };
    DeviceStatus {
        state: v["state"].as_str().unwrap_or("?").into(),
        version: v["version"].as_str().unwrap_or("?").into(),
        error: v["error"].as_str().map(String::from),
        bytes_fetched: v["progress"]["bytes_fetched"].as_u64().unwrap_or(0),
        bytes_reused: v["progress"]["bytes_reused"].as_u64().unwrap_or(0),
    }
}

/// Waits until every device satisfies `done`, printing the fleet's states as they change.
fn wait_devices(
    devices: &[Device],
    phase: &str,
    timeout: Duration,
    done: impl Fn(&DeviceStatus) -> bool,
) -> Result<()> {
    wait_devices_then(devices, phase, timeout, done, || {})
}

/// [`wait_devices`] while following a rollout (its waves' times).
fn wait_devices_watching(
    devices: &[Device],
    phase: &str,
    timeout: Duration,
    watch: &mut rollouts::Watch,
    done: impl Fn(&DeviceStatus) -> bool,
) -> Result<()> {
    wait_devices_then(devices, phase, timeout, done, || watch.poll())
}

fn wait_devices_then(
    devices: &[Device],
    phase: &str,
    timeout: Duration,
    done: impl Fn(&DeviceStatus) -> bool,
    mut each_look: impl FnMut(),
) -> Result<()> {
    let started = Instant::now();
    let mut last_line = String::new();
    loop {
        each_look();
        let statuses: Vec<DeviceStatus> = devices.iter().map(|d| read_status(&d.dir)).collect();
        let finished = statuses.iter().filter(|s| done(s)).count();
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        for s in &statuses {
            *by_state.entry(format!("{} {}", s.state, s.version)).or_default() += 1;
        }
        let line = format!(
            "{phase}: {finished}/{} done after {:.1} s — {}",
            devices.len(),
            started.elapsed().as_secs_f64(),
            by_state.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
        );
        if line.split(" after ").next() != last_line.split(" after ").next() || line.ends_with("done") {
            eprintln!("   {line}");
            last_line = line;
        }
        if finished == devices.len() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            let stuck: Vec<String> = statuses
                .iter()
                .zip(devices)
                .filter(|(s, _)| !done(s))
                .map(|(s, d)| {
                    format!("{}: {} {} {:?}\n{}", d.dir.display(), s.state, s.version, s.error, d.proc.tail(40))
                })
                .collect();
            bail!("{phase} did not finish within {timeout:?}; not done:\n{}", stuck.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
