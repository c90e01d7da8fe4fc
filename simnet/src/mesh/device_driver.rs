//! Each device's driver: the install engine's actions carried out in simulated time, as the
//! Linux agent carries them out, and its download driven through `protocol::device`: the
//! fetch plan decides which chunks go in each request and what an answer means for the edge
//! (rounds, a liar stopped and penalized, a failed request), the device's `EdgeRecord`s rank
//! its site's edge nodes and keep penalties on simulated time, and `choose_release` decides
//! which release a metadata check offers. The driver only moves bytes: a request is a LAN
//! flow from the chosen edge node once it holds every chunk asked for.

use protocol::device::fetch::FetchEvent;
use protocol::device::release::{choose_release, DeviceIdentity, ReleaseChoice};
use protocol::device::{EdgeRecord, FetchPlan};

use super::*;
use crate::devices::{DeviceFetch, NO_FETCH};

impl World<'_> {
    pub(super) fn edge_of(&self, d: u32) -> u32 {
        let site = d / self.sc.sites.devices_per_site;
        site * self.per_site + self.devices[d as usize].edge_slot as u32
    }

    /// The device's engine, counting the input about to be fed to it.
    pub(super) fn engine(&mut self, d: u32) -> &mut Engine {
        self.out.counters.engine_inputs += 1;
        &mut self.engines[d as usize]
    }

    /// Check-in: the device's agent starts — boot, then an update check at once, as the
    /// agent's `run` does.
    pub(super) fn device_start(&mut self, d: u32) {
        let now = Instant(self.now);
        let dev = &self.devices[d as usize];
        let boot = BootInfo { booted: dev.booted(), pending: dev.boot_pending };
        self.engine(d).handle_boot(now, boot);
        self.run_actions(d);
        if self.devices[d as usize].op == Op::None && devices::is_resting(self.engines[d as usize].state()) {
            self.engine(d).handle_check(now);
        }
        self.drive(d);
    }

    /// After an input: carry out the engine's actions in order (the agent's `drain`), note
    /// whether the device finished, and arm its timer at `poll_timeout`.
    pub(super) fn drive(&mut self, d: u32) {
        self.run_actions(d);
        let now = self.now;
        let dev = &mut self.devices[d as usize];
        let engine = &self.engines[d as usize];
        if !dev.finished && dev.op == Op::None && devices::end_state(engine, &self.rel.id).is_finished() {
            dev.finished = true;
            self.terminal += 1;
            self.out.finished_at[d as usize] = now;
        }
        // A finished engine's next timer is its hourly re-check, a no-op for this release
        // (installed, refused, or the wrong class again): not armed, so a million finished
        // devices do not sit in the queue. A rebooting device has no engine to wake.
        let at = match dev.finished || dev.op == Op::Boot {
            true => None,
            false => engine.poll_timeout().map(|t| t.0),
        };
        match at {
            None => dev.timer_at = Micros::MAX,
            Some(at) if at != dev.timer_at => {
                dev.timer_at = at;
                self.q.push(at.max(now), Ev::DeviceTimer { d, at });
            }
            Some(_) => {}
        }
    }

    pub(super) fn run_actions(&mut self, d: u32) {
        while let Some(action) = self.engines[d as usize].poll_action() {
            self.execute(d, action);
            if self.devices[d as usize].op == Op::Boot {
                // Whatever the engine still had queued dies with the reboot.
                return;
            }
        }
    }

    /// Carries out one action, as the agent's `execute` does, in simulated time.
    pub(super) fn execute(&mut self, d: u32, action: Action) {
        let now = Instant(self.now);
        let p = &self.sc.devices;
        let (verify, install, reboot, health) =
            (secs(p.verify_s), secs(p.install_s), secs(p.reboot_s), secs(p.health_check_s));
        match action {
            Action::Persist => {
                #[cfg(debug_assertions)]
                {
                    self.persisted[d as usize] = *self.engines[d as usize].record();
                }
                self.out.counters.device_persists += 1;
            }
            Action::FetchMetadata => {
                // Any live edge node of the site answers (the LAN reaches them all); the
                // request and the metadata (TUF roles and the manifest) cross the device's link.
                let site = d / self.sc.sites.devices_per_site;
                let live = (0..self.per_site).any(|s| self.edges[(site * self.per_site + s) as usize].sched.is_some());
                if live {
                    let bytes = devices::metadata_bytes(self.rel.chunk_count()) as f64;
                    let delay = 2 * self.topo.lan_latency + secs(bytes / self.topo.device_rate);
                    self.start_op(d, Op::Metadata, delay);
                } else {
                    self.start_op(d, Op::MetadataFailed, self.detect);
                }
            }
            Action::AskGate => {
                let decision = self.rollout_gate(d, false);
                self.engine(d).handle_gate(now, decision);
            }
            Action::AskSwitch => {
                let decision = self.rollout_gate(d, true);
                self.engine(d).handle_switch_gate(now, decision);
            }
            Action::ResetProgress => {
                let dev = &mut self.devices[d as usize];
                dev.downloaded = false;
                dev.image_bad = false;
                let slot = std::mem::replace(&mut dev.fetch, NO_FETCH);
                self.downloads.give_back(slot);
            }
            Action::Download { .. } => self.download_start(d),
            Action::VerifyImage { .. } => self.start_op(d, Op::Verify, verify),
            Action::ActivateSlot { .. } => {
                let bad = self.devices[d as usize].image_bad;
                self.checkers.device_activates(self.now, d as u64, bad);
                self.rollout_switches(d);
                self.start_op(d, Op::Activate, install);
            }
            Action::Reboot => {
                self.out.counters.device_reboots += 1;
                self.start_op(d, Op::Boot, reboot);
            }
            Action::RunHealthChecks { .. } => self.start_op(d, Op::Health, health),
            Action::Commit { slot } => {
                let dev = &mut self.devices[d as usize];
                dev.boot_active = slot;
                dev.boot_pending = None;
                self.engine(d).handle_committed(now);
            }
            Action::RollBack { slot } => {
                let dev = &mut self.devices[d as usize];
                dev.boot_active = slot;
                dev.boot_pending = None;
            }
            Action::Report => {
                self.out.counters.device_reports += 1;
                self.rollout_report(d);
            }
        }
    }

    /// Starts a timed step; its completion comes back as `Ev::DeviceOp`.
    pub(super) fn start_op(&mut self, d: u32, op: Op, after: Micros) {
        let dev = &mut self.devices[d as usize];
        dev.op = op;
        dev.op_gen = dev.op_gen.wrapping_add(1);
        let gen = dev.op_gen;
        self.q.push(self.now + after, Ev::DeviceOp { d, gen });
    }

    /// A timed step finished: tell the engine what happened.
    pub(super) fn device_op_done(&mut self, d: u32, gen: u8) {
        let dev = &mut self.devices[d as usize];
        if dev.op_gen != gen {
            return;
        }
        let op = std::mem::replace(&mut dev.op, Op::None);
        let now = Instant(self.now);
        match op {
            Op::None => return,
            Op::Metadata => {
                // The release choice runs over what the (simulated) signed targets list; a
                // release this device must refuse is offered all the same, as the agent
                // does, so the engine records why.
                let engine = &self.engines[d as usize];
                let device = DeviceIdentity {
                    release: devices::RELEASE_NAME,
                    hw_class: engine.config().hw_class.as_str(),
                    security_floor: engine.record().min_security_counter,
                };
                match choose_release(self.published, &device) {
                    ReleaseChoice::Nothing => self.engine(d).handle_no_update(now),
                    ReleaseChoice::Install(_) | ReleaseChoice::Refuse { .. } => {
                        let offer = self.offer;
                        self.engine(d).handle_offer(now, offer);
                    }
                }
            }
            Op::MetadataFailed => {
                self.out.counters.device_check_failures += 1;
                self.engine(d).handle_check_failed(now, ErrorCode::Network);
            }
            Op::DownloadFailed => {
                self.out.counters.device_download_failures += 1;
                self.engine(d).handle_download_failed(now, ErrorCode::Network);
            }
            Op::Verify => {
                // The planted bug reports every image as matching without hashing it.
                let matches = !dev.image_bad || self.sc.plant.device_skips_verification;
                if !matches {
                    self.out.counters.device_image_mismatches += 1;
                    self.out.downloaded_at[d as usize] = Micros::MAX;
                }
                self.engine(d).handle_image_verified(now, matches);
            }
            Op::Activate => {
                dev.boot_pending = Some(self.engines[d as usize].record().inactive());
                self.engine(d).handle_slot_activated(now);
            }
            Op::Boot => {
                // A new agent process: a fresh engine from the persisted record (the old
                // engine's: see `persisted`), told what the bootloader booted.
                let boot = BootInfo { booted: dev.booted(), pending: dev.boot_pending };
                let (config, record) = (*self.engines[d as usize].config(), *self.engines[d as usize].record());
                #[cfg(debug_assertions)]
                assert_eq!(record, self.persisted[d as usize], "device {d} rebooted with a record it did not persist");
                self.engines[d as usize] = Engine::new(config, record);
                self.engine(d).handle_boot(now, boot);
            }
            Op::Health => {
                let failed = self.rng.chance(self.sc.devices.health_failure_rate);
                let outcome = if failed { HealthOutcome::Failed } else { HealthOutcome::Healthy };
                self.engine(d).handle_health(now, outcome);
            }
        }
        self.drive(d);
    }

    /// The engine's `Download`: a new plan over every chunk (or, after a failed attempt, the
    /// same plan with its rounds reset: what arrived stays), then the first round.
    pub(super) fn download_start(&mut self, d: u32) {
        self.devices[d as usize].downloading = true;
        if self.devices[d as usize].downloaded {
            self.download_done(d);
            return;
        }
        match self.downloads.get_mut(self.devices[d as usize].fetch) {
            Some(fetch) => fetch.plan.new_attempt(),
            None => {
                let (config, lens, per_site) = (self.fetch_config, &self.chunk_lens, self.per_site as usize);
                self.devices[d as usize].fetch = self.downloads.take_slot(self.now, || {
                    let plan = FetchPlan::new(config, lens.clone());
                    DeviceFetch::new(plan, vec![EdgeRecord::default(); per_site], 0)
                });
            }
        }
        self.next_round(d);
    }

    /// Starts the plan's next round with the site's edge nodes ranked as the agent ranks the
    /// ones that answer its probe; with none to ask the round ends at once, and when the plan
    /// has no round left the download failed.
    fn next_round(&mut self, d: u32) {
        let now = Instant(self.now);
        let site = d / self.sc.sites.devices_per_site;
        let preferred = d % self.per_site;
        loop {
            let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) else { return };
            if !fetch.plan.start_round(now) {
                self.fail_download(d);
                return;
            }
            // The probe: every edge not sitting out is asked, starting with the device's own;
            // a dead one backs off, the rest rank by what the device measured.
            let mut answered: Vec<u8> = Vec::new();
            for k in 0..self.per_site {
                let slot = (preferred + k) % self.per_site;
                let record = &mut fetch.edges[slot as usize];
                if !record.available(now) {
                    continue;
                }
                if self.edges[(site * self.per_site + slot) as usize].sched.is_some() {
                    record.probe_answered(protocol::time::Duration(2 * self.topo.lan_latency));
                    answered.push(slot as u8);
                } else {
                    record.back_off(now);
                }
            }
            answered.sort_by(|a, b| EdgeRecord::rank(Some(&fetch.edges[*a as usize]), Some(&fetch.edges[*b as usize])));
            answered.reverse();
            fetch.spares = answered;
            if self.add_spare(d) {
                return;
            }
        }
    }

    /// While the plan wants another edge, takes the best spare and asks it for a session.
    /// Returns whether one was added.
    fn add_spare(&mut self, d: u32) -> bool {
        let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) else { return false };
        if !fetch.plan.wants_edge() {
            return false;
        }
        // Spares are kept worst first, so the best is popped.
        let Some(slot) = fetch.spares.pop() else { return false };
        let streams = fetch.plan.config().streams_per_edge;
        fetch.conn = fetch.plan.add_edge(slot, streams).start;
        self.drop_session(d);
        self.devices[d as usize].edge_slot = slot;
        self.request_session(d);
        true
    }

    /// Asks the device's edge node for a download session (the edge admits
    /// `max_device_sessions` at once and queues the rest).
    fn request_session(&mut self, d: u32) {
        let e = self.edge_of(d);
        let edge = &mut self.edges[e as usize];
        if edge.sessions < self.sc.edge.max_device_sessions {
            edge.sessions += 1;
            self.devices[d as usize].in_session = true;
            self.pump_device(d);
        } else {
            edge.queue.push_back(d);
            if let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) {
                fetch.queued = true;
            }
        }
    }

    /// After an input to the plan, as the agent's coordinator does: apply what it decided,
    /// replace a stopped edge with the next spare, send what it asks, and end the round when
    /// it is over. (simnet's edge nodes hold a request until they have every chunk in it
    /// instead of answering "busy", and each device uses one edge at a time, so the plan
    /// never asks for a wakeup: `poll_timeout` stays `None`.)
    pub(super) fn pump_device(&mut self, d: u32) {
        let now = Instant(self.now);
        self.apply_fetch_events(d);
        if self.add_spare(d) {
            return;
        }
        let in_session = self.devices[d as usize].in_session;
        let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) else { return };
        if in_session {
            fetch.queued = false;
            if let Some(transmit) = fetch.plan.poll_transmit(now) {
                fetch.current = transmit.units;
                fetch.current_bytes = 0;
                fetch.sent = self.now;
                self.serve_batch(d, true);
            }
        }
        self.apply_fetch_events(d);
        let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) else { return };
        if fetch.plan.round_over() && !fetch.queued {
            fetch.plan.end_round();
            self.apply_fetch_events(d);
            self.drop_session(d);
            if self.downloads.get(self.devices[d as usize].fetch).is_some_and(|f| f.plan.is_complete()) {
                self.download_done(d);
            } else {
                self.next_round(d);
            }
        }
    }

    /// Carries out the plan's decisions about the device's edges.
    fn apply_fetch_events(&mut self, d: u32) {
        let now = Instant(self.now);
        let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) else { return };
        while let Some(event) = fetch.plan.poll_event() {
            match event {
                FetchEvent::Batch { edge, bytes, took } => fetch.edges[edge as usize].record_batch(bytes, took),
                FetchEvent::Lied { edge } => fetch.edges[edge as usize].penalize(now),
                FetchEvent::LacksChunks { edge, .. } | FetchEvent::TooSlow { edge } => {
                    fetch.edges[edge as usize].demote(now)
                }
                FetchEvent::Stalled { edge } | FetchEvent::Failed { edge } => {
                    fetch.edges[edge as usize].record_failure()
                }
                FetchEvent::Hedged { .. } | FetchEvent::Close { .. } => {}
            }
        }
    }

    /// The request out: served as one LAN flow once the edge node holds every chunk in it;
    /// until then the device waits on the first chunk missing (the node fetches what devices
    /// ask for).
    /// On the first look (`first`) at a request the node lacks, the request is demand for the
    /// release, as the device service reports it.
    pub(super) fn serve_batch(&mut self, d: u32, first: bool) {
        let e = self.edge_of(d);
        let Some(fetch) = self.downloads.get(self.devices[d as usize].fetch) else { return };
        let edge = &self.edges[e as usize];
        // The run a word of bits at a time, then the rest: the first chunk the node lacks.
        let (run, rest) = (fetch.current.run(), fetch.current.rest());
        let missing = edge.stored.missing(run).next().or_else(|| rest.iter().copied().find(|&u| !edge.stored.get(u)));
        if let Some(missing) = missing {
            self.devices[d as usize].awaiting = true;
            self.edges[e as usize].waiting.entry(missing).or_default().push(d);
            if !first {
                return;
            }
            // A device asking for what the node lacks is demand (a no-op while pre-staging).
            let (now, rid) = (self.now, self.rel.id);
            if let Some(s) = self.edges[e as usize].sched.as_mut() {
                if !s.is_complete(&rid) {
                    s.handle_demand(Instant(now), &rid);
                    self.out.counters.scheduler_inputs += 1;
                    self.pump(e);
                }
            }
            return;
        }
        self.devices[d as usize].awaiting = false;
        let unverified = match edge.tainted.is_empty() {
            true => 0,
            false => fetch.current.iter().filter(|u| edge.tainted.contains(u)).count(),
        };
        let run = fetch.current.run();
        let offsets = &self.stored_offsets;
        let bytes = offsets[run.end as usize] - offsets[run.start as usize]
            + fetch.current.rest().iter().map(|&u| self.chunk_lens[u as usize] as u64).sum::<u64>();
        let (site, slot) = (edge.site, edge.slot);
        if let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) {
            fetch.current_bytes = bytes;
        }
        self.checkers.edge_serves(self.now, site, slot, unverified);
        let lan = [self.topo.lan[site as usize]];
        match self.net.start(self.now, &lan, self.topo.device_rate, 1, bytes, Tag::Device(d)) {
            Ok(f) => self.devices[d as usize].flow = Some(f),
            Err(_) => self.request_failed(d),
        }
    }

    /// The edge node stored `chunk`: devices waiting on it look again.
    pub(super) fn chunk_stored(&mut self, e: u32, chunk: u32) {
        let Some(waiting) = self.edges[e as usize].waiting.remove(&chunk) else { return };
        for d in waiting {
            let dev = &self.devices[d as usize];
            if dev.awaiting && dev.in_session && dev.flow.is_none() && self.edge_of(d) == e {
                self.serve_batch(d, false);
            }
        }
    }

    /// The device's request or its connection failed (a flow cut, the edge node died): the
    /// plan hears of it, and the round goes on without that edge.
    pub(super) fn request_failed(&mut self, d: u32) {
        if !self.devices[d as usize].downloading {
            return;
        }
        if let Some(f) = self.devices[d as usize].flow.take() {
            let _ = self.net.cancel(self.now, f);
        }
        self.devices[d as usize].awaiting = false;
        if let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) {
            // Its connection to that edge: a request out failed (the plan counts a failure),
            // or a queued session will never start.
            fetch.queued = false;
            fetch.plan.handle_failed(fetch.conn);
            fetch.plan.handle_closed(fetch.conn);
        }
        self.drop_session(d);
        self.pump_device(d);
    }

    /// The download stopped short (the plan ran out of rounds): the driver gives up on it
    /// now, and the engine hears of it after the keep-alive timeout (then retries on its own
    /// timer, and the plan keeps what arrived).
    pub(super) fn fail_download(&mut self, d: u32) {
        if !self.devices[d as usize].downloading {
            return;
        }
        if let Some(f) = self.devices[d as usize].flow.take() {
            let _ = self.net.cancel(self.now, f);
        }
        self.drop_session(d);
        self.devices[d as usize].downloading = false;
        self.start_op(d, Op::DownloadFailed, self.detect);
    }

    /// Every chunk is in the slot: `handle_download_done` (the caller drives the engine).
    pub(super) fn download_done(&mut self, d: u32) {
        self.drop_session(d);
        let slot = std::mem::replace(&mut self.devices[d as usize].fetch, NO_FETCH);
        if let Some(started) = self.downloads.give_back(slot) {
            self.rollout_downloaded(d, started);
        }
        let corrupt = self.sc.faults.device_image_corruption;
        let flipped = corrupt > 0.0 && self.rng.chance(corrupt);
        let dev = &mut self.devices[d as usize];
        dev.downloading = false;
        dev.downloaded = true;
        dev.image_bad |= flipped;
        let now = self.now;
        self.out.downloaded_at[d as usize] = now;
        self.engine(d).handle_download_done(Instant(now));
    }

    /// Gives up the device's session (if any) and lets the next queued device in.
    pub(super) fn drop_session(&mut self, d: u32) {
        if !std::mem::replace(&mut self.devices[d as usize].in_session, false) {
            return;
        }
        self.devices[d as usize].awaiting = false;
        let e = self.edge_of(d);
        let edge = &mut self.edges[e as usize];
        edge.sessions = edge.sessions.saturating_sub(1);
        if edge.sched.is_none() {
            return;
        }
        while let Some(next) = self.edges[e as usize].queue.pop_front() {
            let dev = &self.devices[next as usize];
            if dev.downloading && !dev.in_session && self.edge_of(next) == e {
                self.edges[e as usize].sessions += 1;
                self.devices[next as usize].in_session = true;
                self.pump_device(next);
                break;
            }
        }
    }

    /// A request's bytes arrived: the device checks every chunk (a tampered one fails, as
    /// `codec::open` would) and the plan hears what verified.
    pub(super) fn batch_done(&mut self, d: u32) {
        let dev = &self.devices[d as usize];
        if !dev.in_session || !dev.downloading {
            return;
        }
        let e = self.edge_of(d);
        let Some(fetch) = self.downloads.get_mut(self.devices[d as usize].fetch) else { return };
        // The request this driver kept is the one the plan has out on the connection: an
        // answer in full names no units.
        debug_assert_eq!(fetch.plan.in_flight(fetch.conn), Some(&fetch.current), "device {d}'s request");
        let tainted = &self.edges[e as usize].tainted;
        let from_edge = !tainted.is_empty() && fetch.current.iter().any(|u| tainted.contains(&u));
        fetch.current.clear();
        let on_the_way = self.rng.chance(self.sc.faults.device_batch_corruption);
        let now = Instant(self.now);
        let took = protocol::time::Duration(self.now.saturating_sub(fetch.sent));
        // Its flow started when the edge node served it, which summed the bytes.
        let bytes = fetch.current_bytes;
        if (from_edge || on_the_way) && !self.sc.plant.device_skips_verification {
            // A chunk failed verification: the edge is a liar as far as the device can tell
            // (it cannot tell a tampering edge from bytes damaged on the way).
            self.out.counters.device_refetches += 1;
            fetch.plan.handle_lied(fetch.conn, &[]);
        } else {
            if from_edge || on_the_way {
                self.devices[d as usize].image_bad = true;
            }
            fetch.plan.handle_done_in_full(now, fetch.conn, bytes, took);
            // Durable in the slot: progress (absolute figures).
            let done = self.rel.chunk_count() - fetch.plan.remaining() as u32;
            let fetched = self.engines[d as usize].record().bytes_fetched + bytes;
            self.engine(d).handle_progress(done, fetched, 0);
        }
        self.pump_device(d);
        self.drive(d);
    }
}
