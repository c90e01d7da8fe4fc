//! Each device's driver: the install engine's actions carried out in simulated time, as the
//! Linux agent carries them out.

use super::*;

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
        if !dev.finished && dev.op == Op::None && devices::end_state(engine, &self.rel.id.0).is_finished() {
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
                self.persisted[d as usize] = *self.engines[d as usize].record();
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
            Action::AskGate => self.engine(d).handle_gate(now, GateDecision::Proceed),
            Action::ResetProgress => {
                let dev = &mut self.devices[d as usize];
                dev.batch = 0;
                dev.image_bad = false;
            }
            Action::Download { .. } => {
                self.devices[d as usize].downloading = true;
                if self.devices[d as usize].batch as usize >= self.rel.batches.len() {
                    self.download_done(d);
                } else {
                    self.acquire(d);
                }
            }
            Action::VerifyImage { .. } => self.start_op(d, Op::Verify, verify),
            Action::ActivateSlot { .. } => {
                let bad = self.devices[d as usize].image_bad;
                self.checkers.device_activates(self.now, d as u64, bad);
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
            Action::Report => self.out.counters.device_reports += 1,
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
                let offer = self.offer;
                self.engine(d).handle_offer(now, offer);
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
                // A new agent process: a fresh engine from the persisted record, told what the
                // bootloader booted.
                let boot = BootInfo { booted: dev.booted(), pending: dev.boot_pending };
                let config = *self.engines[d as usize].config();
                self.engines[d as usize] = Engine::new(config, self.persisted[d as usize]);
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

    /// The download stopped short: the driver gives up on it now, and the engine hears of it
    /// after the keep-alive timeout (then retries on its own timer).
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

    /// Every batch is in the slot: `handle_download_done` (the caller drives the engine).
    pub(super) fn download_done(&mut self, d: u32) {
        self.drop_session(d);
        let corrupt = self.sc.faults.device_image_corruption;
        let flipped = corrupt > 0.0 && self.rng.chance(corrupt);
        let dev = &mut self.devices[d as usize];
        dev.downloading = false;
        dev.image_bad |= flipped;
        let now = self.now;
        self.out.downloaded_at[d as usize] = now;
        self.engine(d).handle_download_done(Instant(now));
    }

    /// Finds a live edge node in the device's site and asks it for a session.
    pub(super) fn acquire(&mut self, d: u32) {
        let site = d / self.sc.sites.devices_per_site;
        let preferred = self.devices[d as usize].edge_slot as u32;
        let Some(slot) = (0..self.per_site)
            .map(|k| (preferred + k) % self.per_site)
            .find(|s| self.edges[(site * self.per_site + s) as usize].sched.is_some())
        else {
            self.fail_download(d);
            return;
        };
        self.devices[d as usize].edge_slot = slot as u8;
        let e = site * self.per_site + slot;
        let edge = &mut self.edges[e as usize];
        if edge.sessions < self.sc.edge.max_device_sessions {
            edge.sessions += 1;
            self.devices[d as usize].in_session = true;
            self.start_batch(d);
        } else {
            edge.queue.push_back(d);
        }
    }

    pub(super) fn start_batch(&mut self, d: u32) {
        let e = self.edge_of(d);
        let b = self.devices[d as usize].batch;
        let batch = self.rel.batches[b as usize];
        let edge = &mut self.edges[e as usize];
        if edge.batch_have[b as usize] < batch.end - batch.first {
            edge.waiters.push((d, b));
            // A device asking for what the node lacks is demand (a no-op while pre-staging).
            let (now, rid) = (self.now, self.rel.id);
            if let Some(s) = edge.sched.as_mut() {
                if !s.is_complete(&rid) {
                    s.handle_demand(Instant(now), &rid);
                    self.out.counters.scheduler_inputs += 1;
                    self.pump(e);
                }
            }
            return;
        }
        let site = self.edges[e as usize].site;
        let unverified = self.edges[e as usize].tainted.range(batch.first..batch.end).count();
        let slot = self.edges[e as usize].slot;
        self.checkers.edge_serves(self.now, site, slot, unverified);
        let lan = [self.topo.lan[site as usize]];
        match self.net.start(self.now, &lan, self.topo.device_rate, 1, batch.bytes, Tag::Device(d)) {
            Ok(f) => self.devices[d as usize].flow = Some(f),
            Err(_) => self.fail_download(d),
        }
    }

    pub(super) fn wake_waiters(&mut self, e: u32, b: u32) {
        let waiting = std::mem::take(&mut self.edges[e as usize].waiters);
        let (ready, still): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(_, wb)| *wb == b);
        self.edges[e as usize].waiters = still;
        for (d, _) in ready {
            if self.devices[d as usize].in_session && self.edge_of(d) == e {
                self.start_batch(d);
            }
        }
    }

    /// Gives up the device's session (if any) and lets the next queued device in.
    pub(super) fn drop_session(&mut self, d: u32) {
        if !std::mem::replace(&mut self.devices[d as usize].in_session, false) {
            return;
        }
        let e = self.edge_of(d);
        let edge = &mut self.edges[e as usize];
        edge.sessions = edge.sessions.saturating_sub(1);
        edge.waiters.retain(|(w, _)| *w != d);
        if edge.sched.is_none() {
            return;
        }
        while let Some(next) = self.edges[e as usize].queue.pop_front() {
            let dev = &self.devices[next as usize];
            if dev.downloading && !dev.in_session && self.edge_of(next) == e {
                self.edges[e as usize].sessions += 1;
                self.devices[next as usize].in_session = true;
                self.start_batch(next);
                break;
            }
        }
    }

    pub(super) fn batch_done(&mut self, d: u32) {
        let dev = &self.devices[d as usize];
        if !dev.in_session || !dev.downloading {
            return;
        }
        let e = self.edge_of(d);
        let b = dev.batch;
        let batch = self.rel.batches[b as usize];
        let from_edge = self.edges[e as usize].tainted.range(batch.first..batch.end).next().is_some();
        let on_the_way = self.rng.chance(self.sc.faults.device_batch_corruption);
        if from_edge || on_the_way {
            if !self.sc.plant.device_skips_verification {
                // The device's chunk check fails: drop the batch and fetch it again, from the
                // other edge node if this one served the bad bytes.
                self.out.counters.device_refetches += 1;
                if from_edge {
                    self.drop_session(d);
                    let dev = &mut self.devices[d as usize];
                    dev.edge_slot = ((dev.edge_slot as u32 + 1) % self.per_site) as u8;
                    self.q.push(self.now + 2 * self.topo.lan_latency, Ev::DeviceReady(d));
                } else {
                    self.start_batch(d);
                }
                return;
            }
            self.devices[d as usize].image_bad = true;
        }
        // The batch is durable in the slot: progress (absolute figures), then the next batch.
        self.devices[d as usize].batch += 1;
        let fetched = self.engines[d as usize].record().bytes_fetched + batch.bytes;
        self.engine(d).handle_progress(batch.end, fetched, 0);
        if ((b + 1) as usize) < self.rel.batches.len() {
            self.start_batch(d);
        } else {
            self.download_done(d);
        }
        self.drive(d);
    }
}
