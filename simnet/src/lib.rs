//! simnet: otamesh's fleet simulator. Discrete events on virtual time, flow-level links, and
//! the real protocol state machines — the edge node's `protocol::edge::FetchScheduler` and
//! every device's `protocol::install::Engine` — at fleet scale, with baselines, the
//! Kumar–Ross lower bound, invariant checkers, report.json and plots.
//!
//! Code map: `engine` (event queue — a radix heap —, flow-level links), `scenario` (TOML), `topology` (links
//! every run shares), `release` (chunks, and the batches the baselines use), `mesh` (the
//! drivers: the edge schedulers, and each device's install engine and download driven as the
//! Linux agent drives them, through `protocol::device`),
//! `devices` (per-device state around the engine — bootloader slots, download slots reused
//! from download to download — and how engines' end states are judged), `baselines`, `bound`,
//! `rollout` (a scenario's staged rollout: the origin's controller, the sites' guards and
//! the devices' gates, all `protocol::rollout`'s, driven by `mesh`), `checkers`, `report`,
//! `plots`, `progress`.

#![deny(missing_docs)]

pub mod baselines;
pub mod bound;
pub mod checkers;
pub mod demo;
pub mod devices;
pub mod engine;
pub mod mesh;
pub mod plots;
pub mod progress;
pub mod release;
pub mod report;
pub mod rng;
pub mod rollout;
pub mod scenario;
pub mod topology;

use baselines::Baseline;
use progress::Progress;
use report::Report;
use scenario::Scenario;

/// Runs the mesh and both baselines for `scenario` with `seed` and builds the report.
/// Progress goes to stderr unless `quiet`.
///
/// The baselines run on a thread of their own while the mesh runs here: each run is
/// independent of the others and deterministic on its own, so the report is the same as
/// running them one after another, and a second core takes the baselines' time (7 s of
/// fleet-1m's 92) off the wall clock.
pub fn simulate(scenario: &Scenario, seed: u64, quiet: bool) -> Report {
    let release = release::Release::new(scenario, seed);
    let n = scenario.device_count();
    let bars = indicatif::MultiProgress::new();
    let (mesh, outcomes) = std::thread::scope(|scope| {
        let baselines = scope.spawn(|| {
            [Baseline::DirectOrigin, Baseline::PlainCache].map(|baseline| {
                let mut bar = Progress::new(baseline.name(), n, quiet, &bars);
                let out = baselines::run(scenario, seed, &release, baseline, &mut |now, done| bar.update(now, done));
                bar.finish(out.end, out.downloaded.iter().map(|(_, c)| c).sum());
                out
            })
        });
        let mut bar = Progress::new("mesh", n, quiet, &bars);
        let mesh = mesh::run(scenario, seed, &release, &mut |now, done| bar.update(now, done));
        bar.finish(mesh.end, mesh.committed + mesh.rolled_back + mesh.refused);
        // A panic in the baselines is a bug in them: re-raised here as it would have been
        // had they run on this thread.
        let outcomes = baselines.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (mesh, outcomes)
    });
    let checkins = topology::checkin_times(scenario, seed);
    let [direct_origin, plain_cache] = &outcomes;
    report::build(scenario, seed, &release, &mesh, direct_origin, plain_cache, &checkins)
}

/// The report as pretty JSON with a trailing newline (what report.json holds).
pub fn report_json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
