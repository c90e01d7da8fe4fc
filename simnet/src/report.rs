//! report.json: what the run measured, the baselines, the bound, ratios and checker results.
//! Everything in it comes from virtual time and the seed — no wall-clock numbers — so the
//! same seed and code give a byte-identical file.

use serde::Serialize;

use crate::baselines::BaselineOutcome;
use crate::bound::{self, BoundTerms};
use crate::checkers::Violation;
use crate::engine::Micros;
use crate::mesh::{MeshCounters, MeshOutcome};
use crate::release::Release;
use crate::scenario::Scenario;

/// Time until 50 %, 99 % and 100 % of the fleet's devices held the verified image, seconds
/// (`null` if never reached).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Times {
    /// Half the fleet.
    pub p50_s: Option<f64>,
    /// 99 %.
    pub p99_s: Option<f64>,
    /// Everyone.
    pub p100_s: Option<f64>,
}

/// Min, mean and max over sites.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

/// One run's headline numbers (mesh or a baseline).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Download completion times.
    pub time_to: Times,
    /// Devices that finished downloading.
    pub devices_downloaded: u64,
    /// Inbound backhaul bytes per site.
    pub backhaul_bytes_per_site: Spread,
    /// The same as a multiple of the release's bytes.
    pub backhaul_amplification: Spread,
    /// Bytes the origin sent.
    pub origin_egress_bytes: u64,
    /// The same in copies of the release (1 is the least any distribution can send).
    pub origin_egress_copies: f64,
    /// Virtual time when the run ended.
    pub end_s: f64,
}

/// mesh ÷ baseline: below 1 means the mesh did better.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Time to 50 %.
    pub time_to_p50: Option<f64>,
    /// Time to 99 %.
    pub time_to_p99: Option<f64>,
    /// Time to 100 %.
    pub time_to_p100: Option<f64>,
    /// Mean backhaul bytes per site.
    pub backhaul_bytes_per_site: Option<f64>,
    /// Origin egress.
    pub origin_egress: Option<f64>,
}

/// The Kumar–Ross bound in the report.
#[derive(Debug, Clone, Serialize)]
pub struct BoundReport {
    /// How it was adapted to the hierarchy.
    pub adaptation: &'static str,
    /// Terms for 50 %, 99 %, 100 %.
    pub p50: BoundTerms,
    /// 99 %.
    pub p99: BoundTerms,
    /// 100 %.
    pub p100: BoundTerms,
}

/// Mesh details beyond the headline.
#[derive(Debug, Clone, Serialize)]
pub struct MeshDetail {
    /// Devices whose install engines committed the release.
    pub committed: u64,
    /// Devices whose install engines rolled back.
    pub rolled_back: u64,
    /// Devices whose install engines refused the release (wrong hardware class, old security
    /// counter, an image that never verified).
    pub refused: u64,
    /// Every device by how its install engine ended: "committed", "rolled-back (reason)",
    /// "refused (reason)" or "unfinished (engine state)".
    pub device_end_states: std::collections::BTreeMap<String, u64>,
    /// Time until devices' engines finished (committed, rolled back or refused).
    pub time_to_finished: Times,
    /// When edge nodes held the whole release (pre-staging), seconds.
    pub edge_complete_s: Option<Spread>,
    /// Verified backhaul bytes per site as the schedulers counted them.
    pub backhaul_verified_bytes_per_site: Spread,
    /// Inbound backhaul bytes of every site, in site order.
    pub backhaul_bytes_by_site: Vec<u64>,
    /// LAN bytes per site.
    pub lan_bytes_per_site: Spread,
    /// Scheduler and driver counters.
    pub counters: MeshCounters,
}

/// Checker results.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    /// No violation.
    pub passed: bool,
    /// What failed.
    pub violations: Vec<Violation>,
    /// The amplification limit applied.
    pub max_backhaul_amplification: f64,
}

/// Curves for plots, sampled at `t_s`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Series {
    /// Sample times, seconds.
    pub t_s: Vec<f64>,
    /// Fraction of devices downloaded, mesh.
    pub mesh_downloaded: Vec<f64>,
    /// Fraction of devices whose engines finished (committed, rolled back or refused), mesh.
    pub mesh_finished: Vec<f64>,
    /// Fraction downloaded, every device from the origin.
    pub direct_origin_downloaded: Vec<f64>,
    /// Fraction downloaded, one plain cache per site.
    pub plain_cache_downloaded: Vec<f64>,
    /// Origin egress, Gbit/s, mesh.
    pub mesh_origin_gbps: Vec<f64>,
    /// Origin egress, every device from the origin.
    pub direct_origin_origin_gbps: Vec<f64>,
    /// Origin egress, plain caches.
    pub plain_cache_origin_gbps: Vec<f64>,
    /// The lower bound's curve: (seconds, fraction).
    pub lower_bound: Vec<(f64, f64)>,
    /// Per-site inbound backhaul MiB: mesh, direct origin, plain cache.
    pub backhaul_mib_by_site: [Vec<f64>; 3],
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Producer.
    pub simnet_version: &'static str,
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// The seed (replay with `--seed`).
    pub seed: u64,
    /// Release bytes.
    pub release_bytes: u64,
    /// Chunks in the release.
    pub release_chunks: u32,
    /// Sites.
    pub sites: u32,
    /// Edge nodes per site.
    pub edges_per_site: u32,
    /// Devices.
    pub devices: u64,
    /// The mesh.
    pub mesh: RunSummary,
    /// Every device from the origin.
    pub direct_origin: RunSummary,
    /// One plain cache per site.
    pub plain_cache: RunSummary,
    /// The lower bound.
    pub lower_bound: BoundReport,
    /// mesh ÷ direct origin.
    pub mesh_vs_direct_origin: Ratios,
    /// mesh ÷ plain cache.
    pub mesh_vs_plain_cache: Ratios,
    /// mesh ÷ lower bound (≥ 1; 1 is optimal).
    pub mesh_vs_lower_bound: Ratios,
    /// Mesh details.
    pub mesh_detail: MeshDetail,
    /// The staged rollout (`null` when the scenario has none). The baselines ignore it: with
    /// a rollout the mesh's times are paced by waves and windows, not by the network.
    pub rollout: Option<crate::rollout::RolloutReport>,
    /// Checkers.
    pub checks: Checks,
    /// Plot data.
    pub series: Series,
}

/// Copies of the release, as the summary and plots print them: two decimals below 100.
pub fn copies(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn secs(t: Micros) -> f64 {
    round(t as f64 / 1e6, 6)
}

/// Times to 50/99/100 % of `n` from (time, count) events.
fn times(mut events: Vec<(Micros, u64)>, n: u64) -> Times {
    events.sort_unstable();
    let at = |frac: f64| -> Option<f64> {
        let need = ((n as f64) * frac).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (t, c) in &events {
            acc += c;
            if acc >= need {
                return Some(secs(*t));
            }
        }
        None
    };
    if n == 0 {
        return Times { p50_s: Some(0.0), p99_s: Some(0.0), p100_s: Some(0.0) };
    }
    Times { p50_s: at(0.5), p99_s: at(0.99), p100_s: at(1.0) }
}

fn spread(values: impl IntoIterator<Item = f64>) -> Spread {
    let v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return Spread { min: 0.0, mean: 0.0, max: 0.0 };
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Spread { min: round(min, 4), mean: round(mean, 4), max: round(max, 4) }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 4)),
        _ => None,
    }
}

fn summary(
    downloads: Vec<(Micros, u64)>,
    n: u64,
    backhaul: &[f64],
    origin: u64,
    release: f64,
    end: Micros,
) -> RunSummary {
    let downloaded = downloads.iter().map(|(_, c)| c).sum();
    RunSummary {
        time_to: times(downloads, n),
        devices_downloaded: downloaded,
        backhaul_bytes_per_site: spread(backhaul.iter().copied()),
        backhaul_amplification: spread(backhaul.iter().map(|b| b / release)),
        origin_egress_bytes: origin,
        origin_egress_copies: round(origin as f64 / release.max(1.0), 3),
        end_s: secs(end),
    }
}

fn ratios(mesh: &RunSummary, other: &RunSummary) -> Ratios {
    Ratios {
        time_to_p50: ratio(mesh.time_to.p50_s, other.time_to.p50_s),
        time_to_p99: ratio(mesh.time_to.p99_s, other.time_to.p99_s),
        time_to_p100: ratio(mesh.time_to.p100_s, other.time_to.p100_s),
        backhaul_bytes_per_site: ratio(
            Some(mesh.backhaul_bytes_per_site.mean),
            Some(other.backhaul_bytes_per_site.mean),
        ),
        origin_egress: ratio(Some(mesh.origin_egress_bytes as f64), Some(other.origin_egress_bytes as f64)),
    }
}

/// Origin egress in Gbit/s, averaged over the interval ending at each sample time (the first
/// sample covers everything before it); each transfer is spread evenly over its duration.
fn egress_series(flows: &[(Micros, Micros, u64)], t: &[Micros]) -> Vec<f64> {
    let mut out = vec![0.0; t.len()];
    for &(start, end, bytes) in flows {
        let end = end.max(start + 1);
        let rate = bytes as f64 / (end - start) as f64; // bytes per µs
        let first = t.partition_point(|x| *x <= start);
        for i in first..t.len() {
            let lo = if i == 0 { 0 } else { t[i - 1] }.max(start);
            let hi = t[i].min(end);
            if hi > lo {
                out[i] += rate * (hi - lo) as f64;
            }
            if t[i] >= end {
                break;
            }
        }
    }
    (0..t.len())
        .map(|i| {
            let width = (t[i] - if i == 0 { 0 } else { t[i - 1] }).max(1) as f64 / 1e6;
            round(out[i] * 8.0 / 1e9 / width, 6)
        })
        .collect()
}

fn fraction_series(events: &[(Micros, u64)], n: u64, t: &[Micros]) -> Vec<f64> {
    let mut sorted = events.to_vec();
    sorted.sort_unstable();
    let mut acc = 0u64;
    let mut i = 0;
    t.iter()
        .map(|&at| {
            while i < sorted.len() && sorted[i].0 <= at {
                acc += sorted[i].1;
                i += 1;
            }
            if n == 0 {
                1.0
            } else {
                round(acc as f64 / n as f64, 6)
            }
        })
        .collect()
}

fn origin_bytes(flows: &[(Micros, Micros, u64)]) -> u64 {
    flows.iter().map(|f| f.2).sum()
}

/// Assembles the report.
pub fn build(
    scenario: &Scenario,
    seed: u64,
    release: &Release,
    mesh: &MeshOutcome,
    direct: &BaselineOutcome,
    cache: &BaselineOutcome,
    checkins: &[Micros],
) -> Report {
    let n = scenario.device_count();
    let rb = release.bytes as f64;
    let as_events = |times: &[Micros]| -> Vec<(Micros, u64)> {
        times.iter().filter(|t| **t != Micros::MAX).map(|t| (*t, 1)).collect()
    };
    let mesh_dl = as_events(&mesh.downloaded_at);
    let mesh_fin = as_events(&mesh.finished_at);
    let mesh_summary =
        summary(mesh_dl.clone(), n, &mesh.backhaul_bytes, origin_bytes(&mesh.origin_flows), rb, mesh.end);
    let direct_summary = summary(
        direct.downloaded.clone(),
        n,
        &direct.backhaul_bytes,
        origin_bytes(&direct.origin_flows),
        rb,
        direct.end,
    );
    let cache_summary =
        summary(cache.downloaded.clone(), n, &cache.backhaul_bytes, origin_bytes(&cache.origin_flows), rb, cache.end);

    let mut sorted_checkins: Vec<f64> = checkins.iter().map(|t| *t as f64 / 1e6).collect();
    sorted_checkins.sort_by(f64::total_cmp);
    let need = |frac: f64| ((n as f64) * frac).ceil().max(1.0) as u64;
    let kr = |frac: f64| bound::kumar_ross(scenario, release.bytes, need(frac), &sorted_checkins);
    let lower = BoundReport { adaptation: bound::ADAPTATION, p50: kr(0.5), p99: kr(0.99), p100: kr(1.0) };
    let bound_summary =
        Times { p50_s: Some(lower.p50.bound_s), p99_s: Some(lower.p99.bound_s), p100_s: Some(lower.p100.bound_s) };
    let vs_bound = Ratios {
        time_to_p50: ratio(mesh_summary.time_to.p50_s, bound_summary.p50_s),
        time_to_p99: ratio(mesh_summary.time_to.p99_s, bound_summary.p99_s),
        time_to_p100: ratio(mesh_summary.time_to.p100_s, bound_summary.p100_s),
        backhaul_bytes_per_site: ratio(Some(mesh_summary.backhaul_bytes_per_site.mean), Some(rb)),
        origin_egress: ratio(Some(mesh_summary.origin_egress_bytes as f64), Some(rb)),
    };

    // Plot series: 240 samples, log-spaced (runs differ by orders of magnitude) from a
    // tenth of the first bound to the longest run's end.
    let end = mesh.end.max(direct.end).max(cache.end).max(1);
    let samples = 240usize;
    let first = ((kr(1.0 / n.max(1) as f64).bound_s * 1e6 / 10.0) as Micros).clamp(1_000, end.max(1_001) - 1);
    let ratio = (end as f64 / first as f64).ln();
    let t: Vec<Micros> =
        (0..=samples).map(|i| (first as f64 * (ratio * i as f64 / samples as f64).exp()).round() as Micros).collect();
    let lb_curve: Vec<(f64, f64)> = (1..=50)
        .map(|i| {
            let frac = i as f64 / 50.0;
            (round(kr(frac).bound_s, 6), frac)
        })
        .collect();
    let mib = |v: &[f64]| v.iter().map(|b| round(b / 1048576.0, 4)).collect::<Vec<_>>();
    let series = Series {
        t_s: t.iter().map(|x| secs(*x)).collect(),
        mesh_downloaded: fraction_series(&mesh_dl, n, &t),
        mesh_finished: fraction_series(&mesh_fin, n, &t),
        direct_origin_downloaded: fraction_series(&direct.downloaded, n, &t),
        plain_cache_downloaded: fraction_series(&cache.downloaded, n, &t),
        mesh_origin_gbps: egress_series(&mesh.origin_flows, &t),
        direct_origin_origin_gbps: egress_series(&direct.origin_flows, &t),
        plain_cache_origin_gbps: egress_series(&cache.origin_flows, &t),
        lower_bound: lb_curve,
        backhaul_mib_by_site: [mib(&mesh.backhaul_bytes), mib(&direct.backhaul_bytes), mib(&cache.backhaul_bytes)],
    };

    let complete: Vec<f64> = mesh.edge_complete_at.iter().flatten().map(|t| secs(*t)).collect();
    Report {
        simnet_version: env!("CARGO_PKG_VERSION"),
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed,
        release_bytes: release.bytes,
        release_chunks: release.chunk_count(),
        sites: scenario.sites.count,
        edges_per_site: scenario.sites.edges_per_site,
        devices: n,
        mesh_vs_direct_origin: ratios(&mesh_summary, &direct_summary),
        mesh_vs_plain_cache: ratios(&mesh_summary, &cache_summary),
        mesh_vs_lower_bound: vs_bound,
        mesh: mesh_summary,
        direct_origin: direct_summary,
        plain_cache: cache_summary,
        lower_bound: lower,
        mesh_detail: MeshDetail {
            committed: mesh.committed,
            rolled_back: mesh.rolled_back,
            refused: mesh.refused,
            device_end_states: mesh.end_states.clone(),
            time_to_finished: times(mesh_fin, n),
            edge_complete_s: (!complete.is_empty()).then(|| spread(complete)),
            backhaul_verified_bytes_per_site: spread(mesh.backhaul_verified_bytes.iter().map(|b| *b as f64)),
            backhaul_bytes_by_site: mesh.backhaul_bytes.iter().map(|b| b.round() as u64).collect(),
            lan_bytes_per_site: spread(mesh.lan_bytes.iter().copied()),
            counters: mesh.counters.clone(),
        },
        rollout: mesh.rollout.clone(),
        checks: Checks {
            passed: mesh.violations.is_empty(),
            violations: mesh.violations.clone(),
            max_backhaul_amplification: scenario.checks.max_backhaul_amplification,
        },
        series,
    }
}

/// A few lines for the terminal.
pub fn summary_text(r: &Report) -> String {
    let t = |x: Option<f64>| x.map_or("never".to_string(), |v| format!("{v:.1} s"));
    let x = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}x"));
    let gib = |b: f64| format!("{:.2} GiB", b / (1u64 << 30) as f64);
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "scenario {} (seed {}): {} sites x {} edge nodes, {} devices, release {:.1} MiB in {} chunks",
        r.scenario,
        r.seed,
        r.sites,
        r.edges_per_site,
        r.devices,
        r.release_bytes as f64 / 1048576.0,
        r.release_chunks
    );
    let _ = writeln!(
        s,
        "{:<16} {:>10} {:>10} {:>10} {:>16} {:>14} {:>10}",
        "", "50%", "99%", "100%", "backhaul/site", "origin egress", "copies"
    );
    for (name, run) in [("mesh", &r.mesh), ("direct origin", &r.direct_origin), ("plain cache", &r.plain_cache)] {
        let _ = writeln!(
            s,
            "{:<16} {:>10} {:>10} {:>10} {:>15.3}x {:>14} {:>10}",
            name,
            t(run.time_to.p50_s),
            t(run.time_to.p99_s),
            t(run.time_to.p100_s),
            run.backhaul_amplification.mean,
            gib(run.origin_egress_bytes as f64),
            copies(run.origin_egress_copies)
        );
    }
    let b = &r.lower_bound;
    let _ = writeln!(
        s,
        "{:<16} {:>10} {:>10} {:>10}",
        "lower bound",
        t(Some(b.p50.bound_s)),
        t(Some(b.p99.bound_s)),
        t(Some(b.p100.bound_s))
    );
    for (name, q) in [
        ("mesh/direct", &r.mesh_vs_direct_origin),
        ("mesh/cache", &r.mesh_vs_plain_cache),
        ("mesh/bound", &r.mesh_vs_lower_bound),
    ] {
        let _ = writeln!(
            s,
            "{:<16} {:>10} {:>10} {:>10} {:>16} {:>14}",
            name,
            x(q.time_to_p50),
            x(q.time_to_p99),
            x(q.time_to_p100),
            x(q.backhaul_bytes_per_site),
            x(q.origin_egress)
        );
    }
    let d = &r.mesh_detail;
    let _ = writeln!(
        s,
        "mesh: {} committed, {} rolled back, {} refused; backhaul amplification max {:.3}x; origin answered Busy for {} chunks; {} scheduler wakeups ({} immediate)",
        d.committed,
        d.rolled_back,
        d.refused,
        r.mesh.backhaul_amplification.max,
        d.counters.origin_busy_chunks,
        d.counters.scheduler_wakeups,
        d.counters.immediate_wakeups
    );
    if let Some(rollout) = &r.rollout {
        s.push_str(&rollout.summary_text());
    }
    if r.checks.passed {
        let _ = writeln!(s, "checks: passed");
    } else {
        for v in &r.checks.violations {
            let _ = writeln!(s, "CHECK FAILED: {v}");
        }
    }
    s
}
