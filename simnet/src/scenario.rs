//! Scenarios: the fleet, its network and its faults, from TOML.
//!
//! Scenario files may come from anyone (operators share them), so parsing is bounded: the
//! file size is capped before parsing, unknown keys are errors (a typo must not silently
//! fall back to a default), and every number is range-checked with a message naming the key.

use serde::Deserialize;

/// Built-in scenarios: (name, TOML).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("factory-small", include_str!("../scenarios/factory-small.toml")),
    ("fleet-1m", include_str!("../scenarios/fleet-1m.toml")),
    ("flaky-backhaul", include_str!("../scenarios/flaky-backhaul.toml")),
    ("bad-release", include_str!("../scenarios/bad-release.toml")),
    ("windows", include_str!("../scenarios/windows.toml")),
    ("offline-site", include_str!("../scenarios/offline-site.toml")),
];

/// Largest scenario file accepted.
pub const MAX_TOML_BYTES: usize = 256 * 1024;
/// Most devices in one run (memory stays well under 4 GiB).
pub const MAX_DEVICES: u64 = 5_000_000;
/// Most sites.
pub const MAX_SITES: u32 = 100_000;
/// Most scheduled faults of each kind.
pub const MAX_FAULTS: usize = 10_000;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seed when `--seed` is not given.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop (and fail the convergence check) after this much virtual time.
    #[serde(default = "default_max_sim_s")]
    pub max_sim_s: f64,
    /// The release being distributed.
    pub release: ReleaseParams,
    /// The origin (the seeder's mesh origin).
    pub origin: OriginParams,
    /// The sites.
    pub sites: SiteParams,
    /// Edge node settings.
    #[serde(default)]
    pub edge: EdgeParams,
    /// Device behaviour.
    #[serde(default)]
    pub devices: DeviceParams,
    /// Faults.
    #[serde(default)]
    pub faults: FaultParams,
    /// Invariant limits.
    #[serde(default)]
    pub checks: CheckParams,
    /// A staged rollout gating the release (`None`: every device installs at once).
    #[serde(default)]
    pub rollout: Option<RolloutParams>,
    /// Deliberate driver bugs, to prove the checkers catch them. Never in real scenarios.
    #[serde(default)]
    pub plant: PlantParams,
}

fn default_seed() -> u64 {
    1
}
fn default_max_sim_s() -> f64 {
    86_400.0
}

/// The release.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// Stored bytes of the whole release.
    pub bytes: u64,
    /// Average chunk size; sizes vary between a quarter and four times this, as FastCDC's.
    #[serde(default = "default_chunk")]
    pub chunk_avg_bytes: u32,
}
fn default_chunk() -> u32 {
    64 * 1024
}

/// The origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginParams {
    /// Upload capacity.
    pub uplink_mbps: f64,
    /// One-way latency from the origin to the internet core.
    #[serde(default = "default_origin_latency")]
    pub latency_ms: f64,
    /// Sites the origin hands each chunk to at once before answering others `Busy` (they then
    /// take it from each other over the WAN); 0 serves everyone (one copy per site).
    #[serde(default = "default_handout_copies")]
    pub handout_copies: u32,
    /// How long a handout stands before the chunk is handed out again.
    #[serde(default = "default_handout_window")]
    pub handout_window_s: f64,
}
fn default_origin_latency() -> f64 {
    10.0
}
fn default_handout_copies() -> u32 {
    protocol::edge::origin_handout::HandoutConfig::default().copies
}
fn default_handout_window() -> f64 {
    protocol::edge::origin_handout::HandoutConfig::default().window.as_secs_f64()
}

/// Every site has the same shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteParams {
    /// How many sites.
    pub count: u32,
    /// Edge nodes per site.
    #[serde(default = "default_edges")]
    pub edges_per_site: u32,
    /// Devices per site.
    pub devices_per_site: u32,
    /// Backhaul, internet → site.
    pub backhaul_down_mbps: f64,
    /// Backhaul, site → internet.
    pub backhaul_up_mbps: f64,
    /// One-way backhaul latency.
    #[serde(default = "default_backhaul_latency")]
    pub backhaul_latency_ms: f64,
    /// Packet loss on the backhaul (0..0.5).
    #[serde(default)]
    pub backhaul_loss: f64,
    /// Site LAN capacity, shared by everything on it.
    pub lan_mbps: f64,
    /// One-way LAN latency.
    #[serde(default = "default_lan_latency")]
    pub lan_latency_ms: f64,
    /// Each device's own link.
    pub device_mbps: f64,
    /// Edge nodes in other sites each edge node is connected to.
    #[serde(default = "default_wan_peers")]
    pub wan_peers: u32,
    /// Region prefixes of the site names: site `i` is named `REGION-site-i` with
    /// `REGION = regions[i % regions.len()]`, so a rollout's window patterns (`eu-*`) can
    /// target regions in different time zones. Empty: sites are named `site-i`.
    #[serde(default)]
    pub regions: Vec<String>,
}

impl SiteParams {
    /// The name of site `site` (what its devices match window patterns against).
    pub fn name(&self, site: u32) -> String {
        match self.regions.is_empty() {
            true => format!("site-{site}"),
            false => format!("{}-site-{site}", self.regions[site as usize % self.regions.len()]),
        }
    }
}
fn default_edges() -> u32 {
    2
}
fn default_backhaul_latency() -> f64 {
    20.0
}
fn default_lan_latency() -> f64 {
    0.5
}
fn default_wan_peers() -> u32 {
    2
}

/// Edge node settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeParams {
    /// Devices served at once by one edge node; others queue.
    pub max_device_sessions: u32,
    /// Cache capacity.
    pub capacity_mib: u64,
    /// The driver's timer resolution (tokio's is 1 ms): wakeups are rounded up to it.
    pub timer_resolution_ms: f64,
    /// How long peers take to notice a crashed node (keep-alive timeout).
    pub crash_detect_ms: f64,
}
impl Default for EdgeParams {
    fn default() -> Self {
        EdgeParams {
            max_device_sessions: 64,
            capacity_mib: 16 * 1024,
            timer_resolution_ms: 1.0,
            crash_detect_ms: 5_000.0,
        }
    }
}

/// Device behaviour: how long the steps the install engine asks for take, and which devices
/// must refuse the release (see `devices`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceParams {
    /// Devices check in uniformly over this window from the release.
    pub checkin_spread_s: f64,
    /// Bytes per device request (a batch of chunks).
    pub batch_bytes: u64,
    /// Most chunks per device request: the agent's 128 by default, at most the device wire
    /// format's 256 ranges. Each request is a LAN flow and a handful of events per device,
    /// so a million devices run in half the time when requests stay at `batch_bytes` with
    /// small chunks.
    #[serde(default = "default_batch_chunks")]
    pub batch_chunks: usize,
    /// Whole-image verification.
    pub verify_s: f64,
    /// Pointing the bootloader at the verified slot (the slot itself is written during the
    /// download).
    pub install_s: f64,
    /// Each reboot (into the new slot, or back after a rollback).
    pub reboot_s: f64,
    /// Health checks in trial.
    pub health_check_s: f64,
    /// Fraction of devices whose health check fails (they roll back).
    pub health_failure_rate: f64,
    /// The install engine's trial deadline: health checks slower than this roll back.
    #[serde(default = "default_trial_deadline")]
    pub trial_deadline_s: f64,
    /// Fraction of devices of another hardware class: their engines must refuse the release.
    #[serde(default)]
    pub wrong_hw_class_fraction: f64,
    /// Fraction of devices already on a release with a higher security counter: their
    /// engines' anti-rollback floor must refuse the release.
    #[serde(default)]
    pub ahead_of_release_fraction: f64,
}
fn default_trial_deadline() -> f64 {
    120.0
}
fn default_batch_chunks() -> usize {
    protocol::device::fetch::BATCH_CHUNKS
}
impl Default for DeviceParams {
    fn default() -> Self {
        DeviceParams {
            checkin_spread_s: 10.0,
            batch_bytes: 4 << 20,
            batch_chunks: default_batch_chunks(),
            verify_s: 0.5,
            install_s: 5.0,
            reboot_s: 20.0,
            health_check_s: 30.0,
            health_failure_rate: 0.0,
            trial_deadline_s: default_trial_deadline(),
            wrong_hw_class_fraction: 0.0,
            ahead_of_release_fraction: 0.0,
        }
    }
}

/// Faults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultParams {
    /// Random backhaul flaps.
    #[serde(default)]
    pub flaps: Option<FlapParams>,
    /// Edge node crashes.
    #[serde(default)]
    pub crash: Vec<CrashParams>,
    /// Partitions.
    #[serde(default)]
    pub partition: Vec<PartitionParams>,
    /// Hostile nodes that claim every chunk and serve garbage.
    #[serde(default)]
    pub liar: Vec<LiarParams>,
    /// Probability that a batch reaches a device corrupted (a hostile LAN, bad memory);
    /// devices must catch it and fetch the batch again.
    #[serde(default)]
    pub device_batch_corruption: f64,
    /// Probability that a finished download's image fails the whole-image hash (a storage
    /// fault after the chunk checks); the install engine downloads again, up to its limit.
    #[serde(default)]
    pub device_image_corruption: f64,
}

/// Backhaul flaps: each affected site's backhaul alternates up and down, exponentially.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapParams {
    /// Fraction of sites whose backhaul flaps.
    pub site_fraction: f64,
    /// Mean time up.
    pub mean_up_s: f64,
    /// Mean time down.
    pub mean_down_s: f64,
}

/// One edge node crash (and optional restart; the store survives, memory does not).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashParams {
    /// When.
    pub at_s: f64,
    /// Which site.
    pub site: u32,
    /// Which edge node of the site.
    pub edge: u32,
    /// Restart after this long; never if absent.
    #[serde(default)]
    pub restart_after_s: Option<f64>,
}

/// What a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// The sites lose their backhaul (origin and other sites unreachable).
    Backhaul,
    /// The edge nodes of each listed site cannot reach each other (devices still reach them).
    SiteLan,
}

/// A partition window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionParams {
    /// When it starts.
    pub at_s: f64,
    /// How long it lasts.
    pub duration_s: f64,
    /// Sites affected.
    pub sites: Vec<u32>,
    /// What is cut.
    pub kind: PartitionKind,
}

/// A hostile node planted in a site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiarParams {
    /// Its site.
    pub site: u32,
}

/// A staged rollout of the release (see `crate::rollout`): the origin's
/// `protocol::rollout::Controller` starts at wave 0, running, from the policy these build.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutParams {
    /// Cumulative share of the fleet per wave, percent; the last must be 100.
    #[serde(default = "default_waves")]
    pub waves_percent: Vec<f64>,
    /// Least time each wave runs before the next may start.
    #[serde(default = "default_soak")]
    pub soak_s: u32,
    /// Failure rate (rolled back or failed, of final outcomes) that halts the rollout.
    #[serde(default = "default_max_failure_rate")]
    pub max_failure_rate: f64,
    /// Final outcomes a wave needs before it may advance.
    #[serde(default = "default_min_reports")]
    pub min_reports: u32,
    /// Devices named as canaries (wave 0 whatever their bucket): devices 0, n/k, 2n/k, …
    #[serde(default)]
    pub canaries: u32,
    /// Most devices of one site installing at once (0: no limit). The edge's
    /// `SiteGuard::hold` counts a site's devices on every question, so keep this 0 in
    /// scenarios with thousands of devices per site.
    #[serde(default)]
    pub max_concurrent_per_site: u32,
    /// The wall clock when the simulation starts, unix seconds (windows and soak times are
    /// evaluated on it). Default: 2026-01-05 00:00 UTC, a Monday.
    #[serde(default = "default_start_unix")]
    pub start_unix: i64,
    /// Maintenance windows; none: slot switches at any time.
    #[serde(default)]
    pub windows: Vec<WindowParams>,
    /// Reports an edge node keeps while its site's WAN is down; more are lost (counted).
    #[serde(default = "default_report_queue")]
    pub edge_report_queue: u32,
    /// An edge node forwards the reports it collected at most this often, in one batch (each
    /// batch is an event at the origin and a controller poll: fleet-1m took 123 s of CPU
    /// with 1 s batches, 108 s with 5 s).
    #[serde(default = "default_report_flush")]
    pub report_flush_s: f64,
    /// The origin polls its controller this often, besides after every report batch.
    #[serde(default = "default_controller_tick")]
    pub controller_tick_s: f64,
}
fn default_waves() -> Vec<f64> {
    vec![1.0, 10.0, 50.0, 100.0]
}
fn default_soak() -> u32 {
    600
}
fn default_max_failure_rate() -> f64 {
    0.05
}
fn default_min_reports() -> u32 {
    20
}
fn default_start_unix() -> i64 {
    1_767_571_200
}
fn default_report_queue() -> u32 {
    4096
}
fn default_report_flush() -> f64 {
    5.0
}
fn default_controller_tick() -> f64 {
    60.0
}

/// One maintenance window: sites matching `sites` may switch slots from `start` to `end`
/// local time (`end` before `start`: the next day) on `days`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowParams {
    /// Site-name pattern; `*` matches any run of characters.
    pub sites: String,
    /// Days the window opens: `mon` … `sun`, or `*` for every day.
    #[serde(default = "default_days")]
    pub days: Vec<String>,
    /// Opening, local `HH:MM`.
    pub start: String,
    /// Closing, local `HH:MM`.
    pub end: String,
    /// Local time minus UTC, minutes.
    #[serde(default)]
    pub utc_offset_minutes: i16,
}
fn default_days() -> Vec<String> {
    vec!["*".into()]
}

/// Invariant limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    /// Largest backhaul bytes per site, as a multiple of the release's bytes.
    pub max_backhaul_amplification: f64,
}
impl Default for CheckParams {
    fn default() -> Self {
        CheckParams { max_backhaul_amplification: 1.05 }
    }
}

/// Deliberate bugs in simnet's own drivers, each violating one invariant, so the tests can
/// show the matching checker fails the run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantParams {
    /// Edge 0 of site 0 stores chunks without verifying them.
    #[serde(default)]
    pub edge_skips_verification: bool,
    /// Devices skip their chunk checks and report every whole-image hash as matching.
    #[serde(default)]
    pub device_skips_verification: bool,
    /// Device 0 never checks in.
    #[serde(default)]
    pub device_never_checks_in: bool,
    /// Edge nodes are never told about their site-mates.
    #[serde(default)]
    pub edges_ignore_site_mates: bool,
    /// Devices skip the rollout gate: they install at once, whatever their wave, the
    /// windows or a halt.
    #[serde(default)]
    pub devices_ignore_rollout: bool,
}

/// Loads a built-in scenario by name, or a TOML file by path.
pub fn load(name_or_path: &str) -> Result<Scenario, String> {
    if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
        return parse(text);
    }
    let path = std::path::Path::new(name_or_path);
    let meta = std::fs::metadata(path).map_err(|e| {
        let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
        format!("`{name_or_path}` is neither a built-in scenario ({}) nor a readable file: {e}", names.join(", "))
    })?;
    if meta.len() > MAX_TOML_BYTES as u64 {
        return Err(format!("{name_or_path}: {} bytes, more than the {MAX_TOML_BYTES} allowed", meta.len()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name_or_path}: {e}"))?;
    parse(&text).map_err(|e| format!("{name_or_path}: {e}"))
}

/// Parses and validates a scenario.
pub fn parse(text: &str) -> Result<Scenario, String> {
    if text.len() > MAX_TOML_BYTES {
        return Err(format!("scenario is {} bytes, more than the {MAX_TOML_BYTES} allowed", text.len()));
    }
    let scenario: Scenario = toml::from_str(text).map_err(|e| format!("invalid scenario: {e}"))?;
    scenario.validate()?;
    Ok(scenario)
}

fn range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(format!("{key} = {v} is out of range [{lo}, {hi}]"))
    }
}

fn range_u(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key} = {v} is out of range [{lo}, {hi}]"))
    }
}

impl Scenario {
    /// Checks every bound; the simulator relies on these.
    pub fn validate(&self) -> Result<(), String> {
        range_u("name length", self.name.len() as u64, 1, 64)?;
        range("max_sim_s", self.max_sim_s, 1.0, 30.0 * 86_400.0)?;
        let r = &self.release;
        range_u("release.bytes", r.bytes, 1, protocol::manifest::limits::MAX_IMAGE_BYTES.min(64 << 30))?;
        range_u("release.chunk_avg_bytes", r.chunk_avg_bytes as u64, 4096, 1 << 20)?;
        let chunks = r.bytes.div_ceil(r.chunk_avg_bytes as u64);
        range_u("release chunk count (bytes / chunk_avg_bytes)", chunks, 1, 1 << 18)?;
        range("origin.uplink_mbps", self.origin.uplink_mbps, 0.01, 1e7)?;
        range("origin.handout_copies", f64::from(self.origin.handout_copies), 0.0, 1000.0)?;
        range("origin.handout_window_s", self.origin.handout_window_s, 0.1, 3600.0)?;
        range("origin.latency_ms", self.origin.latency_ms, 0.0, 10_000.0)?;
        let s = &self.sites;
        range_u("sites.count", s.count as u64, 1, MAX_SITES as u64)?;
        range_u("sites.edges_per_site", s.edges_per_site as u64, 1, 16)?;
        range_u("sites.devices_per_site", s.devices_per_site as u64, 0, 1_000_000)?;
        range_u("total devices", s.count as u64 * s.devices_per_site as u64, 0, MAX_DEVICES)?;
        range("sites.backhaul_down_mbps", s.backhaul_down_mbps, 0.01, 1e6)?;
        range("sites.backhaul_up_mbps", s.backhaul_up_mbps, 0.01, 1e6)?;
        range("sites.backhaul_latency_ms", s.backhaul_latency_ms, 0.0, 10_000.0)?;
        range("sites.backhaul_loss", s.backhaul_loss, 0.0, 0.5)?;
        range("sites.lan_mbps", s.lan_mbps, 0.01, 1e6)?;
        range("sites.lan_latency_ms", s.lan_latency_ms, 0.0, 1_000.0)?;
        range("sites.device_mbps", s.device_mbps, 0.001, 1e6)?;
        range_u("sites.wan_peers", s.wan_peers as u64, 0, 16)?;
        let e = &self.edge;
        range_u("edge.max_device_sessions", e.max_device_sessions as u64, 1, 100_000)?;
        range_u("edge.capacity_mib", e.capacity_mib, 1, 1 << 30)?;
        range("edge.timer_resolution_ms", e.timer_resolution_ms, 0.001, 1_000.0)?;
        range("edge.crash_detect_ms", e.crash_detect_ms, 0.0, 600_000.0)?;
        let d = &self.devices;
        range("devices.checkin_spread_s", d.checkin_spread_s, 0.0, 30.0 * 86_400.0)?;
        range_u("devices.batch_bytes", d.batch_bytes, 4096, 1 << 30)?;
        let max_ranges = protocol::wire::device::limits::MAX_RANGES as u64;
        range_u("devices.batch_chunks", d.batch_chunks as u64, 1, max_ranges)?;
        for (k, v) in [
            ("verify_s", d.verify_s),
            ("install_s", d.install_s),
            ("reboot_s", d.reboot_s),
            ("health_check_s", d.health_check_s),
        ] {
            range(&format!("devices.{k}"), v, 0.0, 86_400.0)?;
        }
        range("devices.health_failure_rate", d.health_failure_rate, 0.0, 1.0)?;
        range("devices.trial_deadline_s", d.trial_deadline_s, 1.0, 86_400.0)?;
        range("devices.wrong_hw_class_fraction", d.wrong_hw_class_fraction, 0.0, 1.0)?;
        range("devices.ahead_of_release_fraction", d.ahead_of_release_fraction, 0.0, 1.0)?;
        let f = &self.faults;
        if let Some(flaps) = &f.flaps {
            range("faults.flaps.site_fraction", flaps.site_fraction, 0.0, 1.0)?;
            range("faults.flaps.mean_up_s", flaps.mean_up_s, 0.1, 1e6)?;
            range("faults.flaps.mean_down_s", flaps.mean_down_s, 0.01, 1e6)?;
        }
        range_u("number of faults.crash", f.crash.len() as u64, 0, MAX_FAULTS as u64)?;
        range_u("number of faults.partition", f.partition.len() as u64, 0, MAX_FAULTS as u64)?;
        range("faults.device_batch_corruption", f.device_batch_corruption, 0.0, 0.5)?;
        range("faults.device_image_corruption", f.device_image_corruption, 0.0, 1.0)?;
        range_u("number of faults.liar", f.liar.len() as u64, 0, 1_000)?;
        for c in &f.crash {
            range_u("faults.crash.site", c.site as u64, 0, s.count as u64 - 1)?;
            range_u("faults.crash.edge", c.edge as u64, 0, s.edges_per_site as u64 - 1)?;
            range("faults.crash.at_s", c.at_s, 0.0, self.max_sim_s)?;
            if let Some(r) = c.restart_after_s {
                range("faults.crash.restart_after_s", r, 0.0, self.max_sim_s)?;
            }
        }
        for p in &f.partition {
            range("faults.partition.at_s", p.at_s, 0.0, self.max_sim_s)?;
            range("faults.partition.duration_s", p.duration_s, 0.0, self.max_sim_s)?;
            range_u("faults.partition.sites length", p.sites.len() as u64, 1, s.count as u64)?;
            for site in &p.sites {
                range_u("faults.partition.sites", *site as u64, 0, s.count as u64 - 1)?;
            }
        }
        for l in &f.liar {
            range_u("faults.liar.site", l.site as u64, 0, s.count as u64 - 1)?;
        }
        range("checks.max_backhaul_amplification", self.checks.max_backhaul_amplification, 1.0, 1e6)?;
        range_u("sites.regions length", s.regions.len() as u64, 0, 64)?;
        for region in &s.regions {
            let ok = (1..=24).contains(&region.len())
                && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!("sites.regions: `{region}` must be 1 to 24 of a-z 0-9 -"));
            }
        }
        if let Some(r) = &self.rollout {
            range("rollout.report_flush_s", r.report_flush_s, 0.001, 3_600.0)?;
            range("rollout.controller_tick_s", r.controller_tick_s, 0.1, 86_400.0)?;
            range_u("rollout.edge_report_queue", r.edge_report_queue as u64, 0, 1 << 20)?;
            range_u("rollout.canaries", r.canaries as u64, 0, self.device_count().min(32))?;
            range_u("rollout.start_unix", r.start_unix.max(0) as u64, 0, 1 << 40)?;
            // The protocol's own rules, with their one-line errors.
            crate::rollout::initial_policy(self)?;
        }
        Ok(())
    }

    /// Devices in the fleet.
    pub fn device_count(&self) -> u64 {
        self.sites.count as u64 * self.sites.devices_per_site as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_parse() {
        for (name, text) in BUILT_IN {
            let s = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, *name);
        }
    }

    #[test]
    fn bad_input_gives_clear_errors() {
        let base = BUILT_IN[0].1;
        let typo = base.replace("lan_mbps", "lan_mbsp");
        assert!(parse(&typo).unwrap_err().contains("lan_mbsp"));
        let neg = base.replace("count = 3", "count = 0");
        assert!(parse(&neg).unwrap_err().contains("sites.count"));
        assert!(parse("not toml [").is_err());
        assert!(parse(&"#".repeat(MAX_TOML_BYTES + 1)).unwrap_err().contains("allowed"));
        assert!(load("no-such-scenario").unwrap_err().contains("factory-small"));
        // More chunks per request than the device wire format's 256 ranges.
        let wide = base.replace("batch_bytes = 4_194_304", "batch_bytes = 4_194_304\nbatch_chunks = 257");
        assert!(parse(&wide).unwrap_err().contains("devices.batch_chunks"));
        let within = base.replace("batch_bytes = 4_194_304", "batch_bytes = 4_194_304\nbatch_chunks = 256");
        assert_eq!(parse(&within).unwrap().devices.batch_chunks, 256);
    }
}
