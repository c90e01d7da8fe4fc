//! The rollout's driver (see `crate::rollout` for what is modelled): the origin's
//! `Controller` polled after every report batch and on a tick, each signed policy carried to
//! the sites over the backhaul, each site's `SiteGuard` fed its devices' reports, and each
//! device's `Gate` asked at `AskGate` and `AskSwitch`. The checkers watch every install that
//! starts and every slot switch.

use std::collections::VecDeque;

use protocol::rollout::{
    Controller, EdgeHold, Gate, GateVerdict, MapSeed, Outcome, Phase, PolicyView, RolloutPolicy, RolloutReport,
    SiteGuard, Window,
};
use protocol::ReleaseId;

use super::*;
use crate::release::HW_CLASS;
use crate::rollout::{self, flags, CutOffSite, WaveReport, ROLLOUT_ID};

/// A report on its way (or waiting at an edge for the WAN): compact, a million devices send
/// several each.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueuedReport {
    device: u32,
    outcome: Outcome,
    at: i64,
}

/// What one site's edge nodes know of the rollout.
struct SiteRollout {
    /// The newest policy they hold (index into `RolloutRun::policies`).
    policy: u16,
    /// Their guard (shared by the site's edge nodes).
    guard: SiteGuard,
    /// Reports not yet forwarded to the origin (bounded while the WAN is down).
    queue: VecDeque<QueuedReport>,
    flush_armed: bool,
    /// A policy was signed while the WAN was down: send the newest on reconnect.
    needs_policy: bool,
    /// The policy `seq` in force when the guard halted the site (see `policy_at`).
    guard_halt_seq: Option<u64>,
    first_local_halt: Option<Micros>,
    policy_halt_at: Option<Micros>,
    /// The policy held when a backhaul partition first cut the site off.
    cut_policy: Option<u16>,
    /// Its devices the gate holds (stopped).
    held: u32,
}

/// The rollout's state in a run.
pub(super) struct RolloutRun {
    gate: Gate,
    /// Each device's id (see `rollout::device_id`), hashed once: every gate question and
    /// every report names it, several times per device.
    device_ids: Vec<[u8; 32]>,
    /// The report the guards and the controller are handed, refilled for each one (no
    /// rollout id copied per report).
    report: RolloutReport,
    start_unix: i64,
    release: ReleaseId,
    controller: Controller,
    /// Every policy signed, encoded once and shared by every reader (0: the initial one).
    policies: Vec<Vec<u8>>,
    sites: Vec<SiteRollout>,
    site_names: Vec<String>,
    windows: Vec<Window<String>>,
    queue_cap: usize,
    flush: Micros,
    tick: Micros,
    rng: Rng,
    /// Keys the controller's and the site guards' device maps.
    map_seed: MapSeed,
    /// The highest wave a signed policy made current: no device of a later wave may start.
    max_wave: usize,
    wave_started: Vec<Option<Micros>>,
    wave_ended: Vec<Option<Micros>>,
    halted_at: Option<Micros>,
    completed_at: Option<Micros>,
    partitioned: Vec<bool>,
    reports_sent: u64,
    reports_at_origin: u64,
    reports_lost: u64,
    out_of_window: u64,
    download_s: f64,
    download_in_window_s: f64,
    downloads_before_window: u64,
    touched_by_site: Vec<u32>,
    held: u64,
}

impl RolloutRun {
    /// The rollout for `sc`, if it has one; each device's wave goes into `devices`.
    pub(super) fn new(sc: &Scenario, seed: u64, release: ReleaseId, devices: &mut [Device]) -> Option<Box<Self>> {
        let params = sc.rollout.as_ref()?;
        // `Scenario::validate` built and encoded this policy already.
        let policy = rollout::initial_policy(sc).ok()?;
        let bytes = policy.encode().ok()?;
        let view = PolicyView::parse(&bytes).ok()?;
        let device_ids: Vec<[u8; 32]> = (0..devices.len() as u32).map(rollout::device_id).collect();
        for (dev, id) in devices.iter_mut().zip(&device_ids) {
            let wave = protocol::rollout::wave_of(&view, id);
            dev.wave = wave.map_or(u8::MAX, |w| w as u8);
        }
        // Simulated devices choose no ids to collide: any seed keys the maps, this one keeps
        // runs reproducible.
        let mut map_seed = [0u8; 16];
        map_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let map_seed = MapSeed(map_seed);
        let sites = (0..sc.sites.count)
            .map(|_| SiteRollout {
                policy: 0,
                guard: SiteGuard::new(&view, map_seed),
                queue: VecDeque::new(),
                flush_armed: false,
                needs_policy: false,
                guard_halt_seq: None,
                first_local_halt: None,
                policy_halt_at: None,
                cut_policy: None,
                held: 0,
            })
            .collect();
        let mut partitioned = vec![false; sc.sites.count as usize];
        for p in sc.faults.partition.iter().filter(|p| p.kind == PartitionKind::Backhaul) {
            for s in &p.sites {
                partitioned[*s as usize] = true;
            }
        }
        let waves = policy.waves.len();
        let mut wave_started = vec![None; waves];
        wave_started[0] = Some(0);
        let controller = Controller::new(policy.clone(), map_seed).ok()?;
        Some(Box::new(RolloutRun {
            gate: Gate::default(),
            device_ids,
            report: RolloutReport {
                device_id: [0; 32],
                rollout_id: ROLLOUT_ID.into(),
                outcome: Outcome::Installing,
                at: 0,
            },
            start_unix: params.start_unix,
            release,
            controller,
            policies: vec![bytes],
            sites,
            site_names: (0..sc.sites.count).map(|s| sc.sites.name(s)).collect(),
            windows: policy.windows.clone(),
            queue_cap: params.edge_report_queue as usize,
            flush: secs(params.report_flush_s).max(1),
            tick: secs(params.controller_tick_s).max(1),
            rng: Rng::stream(seed, 0x7011_0a7e),
            map_seed,
            max_wave: 0,
            wave_started,
            wave_ended: vec![None; waves],
            halted_at: None,
            completed_at: None,
            partitioned,
            reports_sent: 0,
            reports_at_origin: 0,
            reports_lost: 0,
            out_of_window: 0,
            download_s: 0.0,
            download_in_window_s: 0.0,
            downloads_before_window: 0,
            touched_by_site: vec![0; sc.sites.count as usize],
            held: 0,
        }))
    }

    /// The wall clock at virtual time `now`, unix seconds.
    fn unix(&self, now: Micros) -> i64 {
        self.start_unix.saturating_add((now / SECOND) as i64)
    }

    fn unix_f(&self, now: Micros) -> f64 {
        self.start_unix as f64 + now as f64 / 1e6
    }

    fn view(&self, version: u16) -> Option<PolicyView<'_>> {
        PolicyView::parse(&self.policies[version as usize]).ok()
    }

    /// Whether the site's edge nodes know of a halt: their policy stops installs, or their
    /// guard halted the site.
    fn halt_known(&self, site: usize) -> bool {
        let s = &self.sites[site];
        s.guard.is_halted() || self.view(s.policy).is_none_or(|v| !v.phase().allows_installs())
    }

    /// `q` as the report its device signed.
    fn fill_report(report: &mut RolloutReport, device_ids: &[[u8; 32]], q: &QueuedReport) {
        report.device_id = device_ids[q.device as usize];
        report.outcome = q.outcome;
        report.at = q.at;
    }
}

impl World<'_> {
    fn site_of_device(&self, d: u32) -> usize {
        (d / self.sc.sites.devices_per_site) as usize
    }

    pub(super) fn rollout_start(&mut self) {
        if let Some(r) = &self.rollout {
            self.q.push(r.tick, Ev::RolloutTick);
        }
    }

    /// The device's gate before downloading (`switch = false`) or before switching slots,
    /// on the policy its edge holds and its edge's hold.
    pub(super) fn rollout_gate(&mut self, d: u32, switch: bool) -> GateDecision {
        let now = self.now;
        let site = self.site_of_device(d);
        let ignore = self.sc.plant.devices_ignore_rollout;
        let Some(r) = self.rollout.as_deref_mut() else { return GateDecision::Proceed };
        let unix = r.unix(now);
        let verdict = {
            let RolloutRun { gate, policies, sites, site_names, device_ids, release: _, .. } = &mut *r;
            let id = device_ids[d as usize];
            let s = &mut sites[site];
            match PolicyView::parse(&policies[s.policy as usize]) {
                Ok(view) if view.release().matches(devices::RELEASE_NAME, devices::RELEASE_VERSION, HW_CLASS) => {
                    let name = site_names[site].as_str();
                    let ask = |hold: EdgeHold| match switch {
                        true => gate.switch_decision(&view, &id, name, unix, hold),
                        false => gate.download_decision(&view, &id, unix, hold),
                    };
                    let own = ask(EdgeHold::None);
                    // The edge is asked only when the device would go: `hold` reserves a
                    // place in the site's concurrency budget for whoever it admits.
                    let hold = match (s.guard.is_halted(), own) {
                        (true, _) => EdgeHold::SiteHalted,
                        (false, GateVerdict::Proceed) => s.guard.hold(&id, unix),
                        _ => EdgeHold::None,
                    };
                    if hold == EdgeHold::None {
                        own
                    } else {
                        ask(hold)
                    }
                }
                // No policy for this release (or one that does not parse): wait for another.
                _ => GateVerdict::WaitUntil(unix.saturating_add(gate.max_wait_secs as i64)),
            }
        };
        let verdict = if ignore { GateVerdict::Proceed } else { verdict };
        let decision = r.gate.engine_decision(verdict, Instant(now), unix);
        let held = self.devices[d as usize].rollout & flags::HELD != 0;
        match verdict {
            GateVerdict::Stopped(_) if !held => {
                self.devices[d as usize].rollout |= flags::HELD;
                r.held += 1;
                r.sites[site].held += 1;
                self.terminal += 1;
            }
            GateVerdict::Proceed => {
                if held {
                    self.devices[d as usize].rollout &= !flags::HELD;
                    r.held -= 1;
                    r.sites[site].held -= 1;
                    self.terminal -= 1;
                }
                // The checkers judge from what the origin signed and what the site knows.
                let wave = self.devices[d as usize].wave;
                let (max_wave, halt_known) = (r.max_wave, r.halt_known(site));
                let what = if switch { "switches slots" } else { "starts installing" };
                self.checkers.rollout_wave(now, d as u64, wave as usize, max_wave);
                self.checkers.rollout_halt(now, d as u64, site as u32, halt_known, what);
                if !switch && !r.windows.is_empty() {
                    let name = r.site_names[site].as_str();
                    let open = protocol::rollout::window::is_open(r.windows.iter().map(|w| w.as_str()), name, unix);
                    r.downloads_before_window += u64::from(!open);
                }
            }
            _ => {}
        }
        decision
    }

    /// The device points its bootloader at the new slot: touched, and inside its window?
    pub(super) fn rollout_switches(&mut self, d: u32) {
        let now = self.now;
        let site = self.site_of_device(d);
        let Some(r) = self.rollout.as_deref_mut() else { return };
        self.devices[d as usize].rollout |= flags::TOUCHED;
        r.touched_by_site[site] += 1;
        let name = r.site_names[site].as_str();
        let open = protocol::rollout::window::is_open(r.windows.iter().map(|w| w.as_str()), name, r.unix(now));
        if !open {
            r.out_of_window += 1;
        }
        self.checkers.rollout_window(now, d as u64, name, open);
    }

    /// A download (all its attempts) took `[started, now)`: how much of it ran inside the
    /// device's window.
    pub(super) fn rollout_downloaded(&mut self, d: u32, started: Micros) {
        let now = self.now;
        let site = self.site_of_device(d);
        let Some(r) = self.rollout.as_deref_mut() else { return };
        if r.windows.is_empty() {
            return;
        }
        let (from, to) = (r.unix_f(started), r.unix_f(now));
        r.download_s += to - from;
        r.download_in_window_s += rollout::seconds_in_window(&r.windows, &r.site_names[site], from, to);
    }

    /// The engine asked for a status report: if it carries a rollout outcome, it leaves for
    /// the device's edge.
    pub(super) fn rollout_report(&mut self, d: u32) {
        let now = self.now;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let Some(outcome) = rollout::outcome(&self.engines[d as usize], &r.release) else { return };
        let dev = &mut self.devices[d as usize];
        if outcome.is_final() {
            if dev.rollout & flags::FINAL_REPORTED != 0 {
                return;
            }
            dev.rollout |= flags::FINAL_REPORTED;
        }
        r.reports_sent += 1;
        let at = r.unix(now);
        self.q.push(now + self.topo.lan_latency, Ev::ReportAtEdge(QueuedReport { device: d, outcome, at }));
    }

    /// A report reached the device's site: its guard counts it, and it waits for the next
    /// batch to the origin.
    pub(super) fn rollout_report_at_edge(&mut self, q: QueuedReport) {
        let now = self.now;
        let site = self.site_of_device(q.device);
        let wan_down = self.backhaul_down[site] > 0;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let unix = r.unix(now);
        RolloutRun::fill_report(&mut r.report, &r.device_ids, &q);
        let s = &mut r.sites[site];
        let was_halted = s.guard.is_halted();
        s.guard.handle_report(&r.report, unix);
        if !was_halted && s.guard.is_halted() {
            let version = s.policy;
            let seq = r.view(version).map_or(0, |v| v.seq());
            let s = &mut r.sites[site];
            s.guard_halt_seq = Some(seq);
            s.first_local_halt.get_or_insert(now);
        }
        let s = &mut r.sites[site];
        if wan_down && s.queue.len() >= r.queue_cap {
            r.reports_lost += 1;
            return;
        }
        s.queue.push_back(q);
        if !s.flush_armed && !wan_down {
            s.flush_armed = true;
            self.q.push(now + r.flush, Ev::ReportFlush { site: site as u32 });
        }
    }

    /// The site's edge forwards what it collected, if its WAN is up.
    pub(super) fn rollout_flush(&mut self, site: u32) {
        let now = self.now;
        let down = self.backhaul_down[site as usize] > 0;
        let latency = self.topo.from_origin(site).1;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let s = &mut r.sites[site as usize];
        s.flush_armed = false;
        if down || s.queue.is_empty() {
            return;
        }
        let batch: Vec<QueuedReport> = s.queue.drain(..).collect();
        let delay = self.topo.message_delay(self.topo.backhaul_loss, latency, &mut r.rng);
        self.q.push(now + delay, Ev::ReportsAtOrigin(batch));
    }

    /// A batch reached the origin: the controller counts it and is polled.
    pub(super) fn rollout_reports_at_origin(&mut self, batch: Vec<QueuedReport>) {
        let now = self.now;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let unix = r.unix(now);
        for q in &batch {
            RolloutRun::fill_report(&mut r.report, &r.device_ids, q);
            r.controller.handle_report(&r.report, unix);
        }
        r.reports_at_origin += batch.len() as u64;
        self.rollout_poll();
    }

    pub(super) fn rollout_tick(&mut self) {
        self.rollout_poll();
        if let Some(r) = &self.rollout {
            if r.controller.policy().state == protocol::rollout::RolloutState::Running {
                self.q.push(self.now + r.tick, Ev::RolloutTick);
            }
        }
    }

    /// Polls the controller; a new policy is signed (encoded once) and sent to every site
    /// whose WAN is up.
    fn rollout_poll(&mut self) {
        let now = self.now;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let unix = r.unix(now);
        let Some(policy) = r.controller.poll(unix) else { return };
        let Ok(bytes) = policy.encode() else { return };
        let previous = r.max_wave;
        r.policies.push(bytes);
        note_policy(r, &policy, previous, now);
        let version = (r.policies.len() - 1) as u16;
        for site in 0..r.sites.len() {
            if self.backhaul_down[site] > 0 {
                r.sites[site].needs_policy = true;
                continue;
            }
            let latency = self.topo.from_origin(site as u32).1;
            let delay = self.topo.message_delay(self.topo.backhaul_loss, latency, &mut r.rng);
            self.q.push(now + delay, Ev::PolicyAt { site: site as u32, version });
        }
    }

    /// A signed policy reached a site's edge nodes.
    pub(super) fn rollout_policy_at(&mut self, site: u32, version: u16) {
        let now = self.now;
        let down = self.backhaul_down[site as usize] > 0;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let map_seed = r.map_seed;
        let s = &mut r.sites[site as usize];
        if down {
            s.needs_policy = true;
            return;
        }
        if version <= s.policy {
            return;
        }
        s.policy = version;
        let Ok(view) = PolicyView::parse(&r.policies[version as usize]) else { return };
        s.guard.handle_policy(&view);
        // Workaround (protocol::rollout::SiteGuard): a site's halt lifts only on a newer
        // *running* policy, so a site that halted itself during the last wave stayed halted
        // after the publisher completed the rollout. A newer `Complete` is the same decision
        // as an advance; the guard starts over from it, counting only later outcomes.
        if view.phase() == Phase::Complete && s.guard.is_halted() && s.guard_halt_seq.is_some_and(|h| view.seq() > h) {
            s.guard = SiteGuard::new(&view, map_seed);
            s.guard_halt_seq = None;
        }
        if !s.guard.is_halted() {
            s.guard_halt_seq = None;
        }
        if !view.phase().allows_installs() {
            s.policy_halt_at.get_or_insert(now);
        }
    }

    /// The site's WAN went down or came back: a cut-off site's policy is noted; on reconnect
    /// the newest policy and the queued reports go out.
    pub(super) fn rollout_backhaul(&mut self, site: u32, down: bool) {
        let now = self.now;
        let Some(r) = self.rollout.as_deref_mut() else { return };
        let s = &mut r.sites[site as usize];
        if down {
            if r.partitioned[site as usize] && s.cut_policy.is_none() {
                s.cut_policy = Some(s.policy);
            }
            return;
        }
        if std::mem::take(&mut s.needs_policy) {
            let version = (r.policies.len() - 1) as u16;
            let latency = self.topo.from_origin(site).1;
            let delay = self.topo.message_delay(self.topo.backhaul_loss, latency, &mut r.rng);
            self.q.push(now + delay, Ev::PolicyAt { site, version });
        }
        if !s.queue.is_empty() && !s.flush_armed {
            s.flush_armed = true;
            self.q.push(now + RECONNECT, Ev::ReportFlush { site });
        }
    }

    /// Whether the run must go on although every device finished or is held: reports are
    /// still on their way to the origin (not lost, not waiting behind a WAN that is down), so
    /// the controller's counts would miss the last outcomes; or held devices may still be let
    /// go — the rollout runs (its next policy may lift a site's halt), or a site holding
    /// devices no longer knows of a halt (they go at their next question) or has a newer
    /// policy on its way.
    pub(super) fn rollout_blocks_end(&self) -> bool {
        let Some(r) = self.rollout.as_deref() else { return false };
        let latest = (r.policies.len() - 1) as u16;
        let running = r.controller.policy().state.phase() == Phase::Running;
        let mut waiting = 0u64;
        for (site, s) in r.sites.iter().enumerate() {
            let wan_up = self.backhaul_down[site] == 0;
            if !wan_up {
                waiting += s.queue.len() as u64;
            }
            if s.held > 0 && (running || !r.halt_known(site) || (wan_up && s.policy != latest)) {
                return true;
            }
        }
        r.reports_sent > r.reports_at_origin + r.reports_lost + waiting
    }

    /// Whether a device the gate held at the end was held rightly: the rollout or its site
    /// stopped installs.
    pub(super) fn rollout_hold_is_settled(&self, d: u32) -> bool {
        let Some(r) = self.rollout.as_deref() else { return false };
        let stopped = !r.controller.policy().state.phase().allows_installs();
        self.devices[d as usize].rollout & flags::HELD != 0 && (stopped || r.halt_known(self.site_of_device(d)))
    }

    /// The report's `rollout` object.
    pub(super) fn rollout_outcome(&self) -> Option<rollout::RolloutReport> {
        let r = self.rollout.as_deref()?;
        let n = self.devices.len() as u64;
        let mut touched = 0u64;
        let mut touched_rolled_back = 0u64;
        for (d, dev) in self.devices.iter().enumerate() {
            if dev.rollout & flags::TOUCHED != 0 {
                touched += 1;
                if matches!(devices::end_state(&self.engines[d], &self.rel.id), devices::EndState::RolledBack(_)) {
                    touched_rolled_back += 1;
                }
            }
        }
        let policy = r.controller.policy();
        let halt_reason = match &policy.state {
            protocol::rollout::RolloutState::Halted { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let s = |t: Option<Micros>| t.map(|t| (t as f64 / 1e6 * 1e3).round() / 1e3);
        let halt_known_at_all_sites_s = match r.halted_at {
            Some(_) => s(r.sites.iter().filter_map(|x| x.policy_halt_at).max()),
            None => None,
        };
        let unix = r.unix(self.now);
        let waves = r
            .controller
            .wave_summaries(unix)
            .iter()
            .map(|w| WaveReport {
                fraction: w.cumulative_ppm as f64 / 1e6,
                started_s: s(r.wave_started[w.index]),
                ended_s: s(r.wave_ended[w.index]),
                committed: w.tally.committed,
                rolled_back: w.tally.rolled_back,
                failed: w.tally.failed,
            })
            .collect();
        let per = self.sc.sites.devices_per_site as usize;
        let cut_off_sites = (0..r.sites.len())
            .filter(|site| r.partitioned[*site])
            .map(|site| {
                let x = &r.sites[site];
                let eligible = x.cut_policy.and_then(|v| r.view(v)).map_or(0, |v| {
                    let current = if v.phase().allows_installs() { v.current_wave() as i64 } else { -1 };
                    self.devices[site * per..(site + 1) * per].iter().filter(|d| (d.wave as i64) <= current).count()
                        as u64
                });
                CutOffSite {
                    site: site as u32,
                    name: r.site_names[site].clone(),
                    touched: r.touched_by_site[site] as u64,
                    eligible_when_cut: eligible,
                    local_halt_s: s(x.first_local_halt),
                    policy_halt_s: s(x.policy_halt_at),
                }
            })
            .collect();
        let frac = |a: u64, b: u64| if b == 0 { 0.0 } else { (a as f64 / b as f64 * 1e6).round() / 1e6 };
        let windows = !r.windows.is_empty();
        Some(rollout::RolloutReport {
            halted: policy.state.phase() == Phase::Halted,
            halt_reason,
            halted_at_s: s(r.halted_at),
            halt_known_at_all_sites_s,
            completed_at_s: s(r.completed_at),
            final_phase: policy.state.phase().name(),
            touched_fraction: frac(touched, n),
            touched,
            touched_rolled_back_fraction: frac(touched_rolled_back, touched),
            out_of_window_switches: r.out_of_window,
            local_site_halts: r.sites.iter().filter(|x| x.first_local_halt.is_some()).count() as u64,
            held_devices: r.held,
            download_in_window_fraction: windows.then(|| {
                if r.download_s > 0.0 {
                    (r.download_in_window_s / r.download_s * 1e6).round() / 1e6
                } else {
                    0.0
                }
            }),
            downloads_before_window: windows.then_some(r.downloads_before_window),
            reports_sent: r.reports_sent,
            reports_at_origin: r.reports_at_origin,
            reports_lost: r.reports_lost,
            policies_signed: r.policies.len() as u64 - 1,
            waves,
            cut_off_sites,
        })
    }
}

/// Wave timing from a newly signed policy.
fn note_policy(r: &mut RolloutRun, policy: &RolloutPolicy, previous: usize, now: Micros) {
    use protocol::rollout::RolloutState;
    match &policy.state {
        RolloutState::Running if policy.current_wave > previous => {
            r.wave_ended[previous] = Some(now);
            r.wave_started[policy.current_wave] = Some(now);
            r.max_wave = policy.current_wave;
        }
        RolloutState::Complete => {
            r.wave_ended[policy.current_wave].get_or_insert(now);
            r.completed_at = Some(now);
            r.max_wave = policy.current_wave;
        }
        RolloutState::Halted { .. } | RolloutState::Aborted => {
            r.wave_ended[policy.current_wave].get_or_insert(now);
            r.halted_at.get_or_insert(now);
        }
        _ => {}
    }
}
