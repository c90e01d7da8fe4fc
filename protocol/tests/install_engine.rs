//! The install engine against a model device: a bootloader with a pending slot and a boot
//! counter, two slots that remember how many chunks of which release they hold, and a
//! persisted record that only changes on `Persist`. Crashes drop the engine and keep only
//! what was persisted, as a kill -9 or power cut would.

use protocol::install::{
    Action, BootInfo, Engine, EngineConfig, ErrorCode, GateDecision, HealthOutcome, Label, Offer, Record, Release,
    Slot, State,
};
use protocol::time::{Duration, Instant};
use protocol::ReleaseId;

const CHUNKS: u32 = 10;

fn label(s: &str) -> Label {
    Label::new(s).unwrap()
}

fn release(tag: u8, version: &str, counter: u64) -> Release {
    Release {
        id: ReleaseId([tag; 32]),
        version: label(version),
        security_counter: counter,
        image_len: 640 * 1024,
        chunk_count: CHUNKS,
    }
}

fn config() -> EngineConfig {
    EngineConfig { trial_deadline: Duration::from_secs(30), ..EngineConfig::new(label("gw-x86")) }
}

/// What one slot holds: the release whose chunks were written and how many.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlotContent {
    release: ReleaseId,
    chunks: u32,
}

/// A device: storage and bootloader survive crashes, the engine does not.
struct Device {
    persisted: Vec<u8>,
    slots: [SlotContent; 2],
    boot_active: Slot,
    boot_pending: Option<Slot>,
    boot_count: u32,
    now: Instant,
    offer: Option<Offer>,
    healthy: bool,
    gate: GateDecision,
    /// The rollout hook's answer before the slot switch.
    switch_gate: GateDecision,
    /// Actions carried out, in order, across crashes.
    log: Vec<Action>,
    /// Slots the bootloader was ever told to try, with what they held at that moment.
    activations: Vec<SlotContent>,
    engine: Option<Engine>,
    downloading: Option<Slot>,
    /// Chunks written into a slot by downloads, across crashes.
    chunks_written: u32,
}

const MAX_BOOT_TRIES: u32 = 2;

impl Device {
    fn new(installed: Release) -> Device {
        let record = Record::factory(Slot::A, installed);
        Device {
            persisted: record.encode().to_vec(),
            slots: [
                SlotContent { release: installed.id, chunks: CHUNKS },
                SlotContent { release: ReleaseId([0; 32]), chunks: 0 },
            ],
            boot_active: Slot::A,
            boot_pending: None,
            boot_count: 0,
            now: Instant(1_000_000),
            offer: None,
            healthy: true,
            gate: GateDecision::Proceed,
            switch_gate: GateDecision::Proceed,
            log: Vec::new(),
            activations: Vec::new(),
            engine: None,
            downloading: None,
            chunks_written: 0,
        }
    }

    /// The bootloader picks a slot, then the agent starts from the persisted record.
    fn boot(&mut self) {
        let booted = match self.boot_pending {
            Some(pending) => {
                self.boot_count += 1;
                if self.boot_count > MAX_BOOT_TRIES {
                    self.boot_pending = None;
                    self.boot_active
                } else {
                    pending
                }
            }
            None => self.boot_active,
        };
        let record = Record::decode(&self.persisted).expect("persisted record decodes");
        let mut engine = Engine::new(config(), record);
        engine.handle_boot(self.now, BootInfo { booted, pending: self.boot_pending });
        self.engine = Some(engine);
    }

    fn booted_slot(&self) -> Slot {
        match self.boot_pending {
            Some(p) if self.boot_count <= MAX_BOOT_TRIES => p,
            _ => self.boot_active,
        }
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("booted")
    }

    /// Carries out one queued action; `false` when there is none.
    fn step(&mut self) -> bool {
        let Some(action) = self.engine().poll_action() else { return false };
        self.log.push(action);
        let now = self.now;
        let target = self.engine().record().target;
        match action {
            Action::Persist => self.persisted = self.engine().record().encode().to_vec(),
            Action::FetchMetadata => match self.offer {
                Some(offer) => self.engine().handle_offer(now, offer),
                None => self.engine().handle_no_update(now),
            },
            Action::AskGate => {
                let gate = self.gate;
                self.engine().handle_gate(now, gate)
            }
            Action::AskSwitch => {
                let gate = self.switch_gate;
                self.engine().handle_switch_gate(now, gate)
            }
            Action::ResetProgress => {
                let slot = self.engine().record().inactive();
                self.slots[slot as usize] = SlotContent { release: ReleaseId([0; 32]), chunks: 0 };
            }
            Action::Download { slot } => {
                let target = target.expect("download has a target");
                let content = &mut self.slots[slot as usize];
                if content.release != target.id {
                    *content = SlotContent { release: target.id, chunks: 0 };
                }
                self.downloading = Some(slot);
            }
            Action::VerifyImage { slot } => {
                let target = target.expect("verify has a target");
                let ok = self.slots[slot as usize] == SlotContent { release: target.id, chunks: target.chunk_count };
                self.engine().handle_image_verified(now, ok);
            }
            Action::ActivateSlot { slot } => {
                self.activations.push(self.slots[slot as usize]);
                self.boot_pending = Some(slot);
                self.boot_count = 0;
                self.engine().handle_slot_activated(now);
            }
            Action::Reboot => {
                self.crash();
                self.boot();
            }
            Action::RunHealthChecks { .. } => {
                let outcome = if self.healthy { HealthOutcome::Healthy } else { HealthOutcome::Failed };
                self.engine().handle_health(now, outcome);
            }
            Action::Commit { slot } => {
                assert_eq!(self.booted_slot(), slot, "commit of a slot that is not running");
                self.boot_active = slot;
                self.boot_pending = None;
                self.engine().handle_committed(now);
            }
            Action::RollBack { slot } => {
                assert_eq!(self.boot_active, slot);
                self.boot_pending = None;
            }
            Action::Report => {}
        }
        true
    }

    /// One thing happens: a queued action, or one more chunk of a running download.
    fn tick(&mut self) -> bool {
        if self.step() {
            return true;
        }
        let Some(slot) = self.downloading else { return false };
        let now = self.now;
        let content = &mut self.slots[slot as usize];
        let total = self.engine.as_ref().and_then(|e| e.record().target).map_or(0, |t| t.chunk_count);
        if content.chunks < total {
            content.chunks += 1;
            self.chunks_written += 1;
        }
        let done = content.chunks;
        self.engine().handle_progress(done, done as u64 * 1000, 0);
        if done >= total {
            self.downloading = None;
            self.engine().handle_download_done(now);
        }
        true
    }

    /// Runs until nothing is left to do or `limit` things happened; returns how many did.
    fn run(&mut self, limit: usize) -> usize {
        let mut count = 0;
        while count < limit && self.tick() {
            count += 1;
        }
        count
    }

    /// A kill -9: the engine and any running download vanish; storage and bootloader stay.
    fn crash(&mut self) {
        self.engine = None;
        self.downloading = None;
    }

    fn installed(&self) -> Release {
        Record::decode(&self.persisted).unwrap().installed
    }
}

fn v1() -> Release {
    release(1, "1.0.0", 5)
}

fn v2() -> Release {
    release(2, "2.0.0", 6)
}

fn offer(release: Release) -> Offer {
    Offer { release, hw_class: label("gw-x86") }
}

/// A device on v1 that is offered `release`, booted and asked to check.
fn checking_device(release: Release) -> Device {
    let mut device = Device::new(v1());
    device.offer = Some(offer(release));
    device.boot();
    let now = device.now;
    device.engine().handle_check(now);
    device
}

#[test]
fn install_commits_and_raises_the_anti_rollback_floor() {
    let mut device = checking_device(v2());
    device.run(1000);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(record.state, State::Committed);
    assert_eq!(record.active, Slot::B);
    assert_eq!(record.installed, v2());
    assert_eq!(record.min_security_counter, 6);
    assert_eq!(record.target, None);
    assert_eq!((device.boot_active, device.boot_pending), (Slot::B, None));
    assert_eq!(device.activations, vec![SlotContent { release: v2().id, chunks: CHUNKS }]);
    // The same offer again is "up to date": no gate, no download.
    let before = device.log.len();
    let now = device.now;
    device.engine().handle_check(now);
    device.run(100);
    assert!(!device.log[before..].iter().any(|a| matches!(a, Action::AskGate | Action::Download { .. })));
    assert_eq!(device.engine().state(), State::Committed);
}

#[test]
fn failed_health_check_rolls_back_and_the_release_is_not_retried() {
    let mut device = checking_device(v2());
    device.healthy = false;
    device.run(1000);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(record.state, State::RolledBack);
    assert_eq!(record.active, Slot::A);
    assert_eq!(record.installed, v1());
    assert_eq!(record.last_error, Some(ErrorCode::HealthCheckFailed));
    assert_eq!(record.refused, v2().id);
    assert_eq!(record.min_security_counter, 5, "a rolled-back release must not raise the floor");
    assert_eq!((device.boot_active, device.boot_pending), (Slot::A, None));
    let before = device.log.len();
    let now = device.now;
    device.engine().handle_check(now);
    device.run(100);
    assert!(!device.log[before..].iter().any(|a| matches!(a, Action::Download { .. })), "refused release retried");
}

#[test]
fn trial_deadline_rolls_back() {
    let mut device = checking_device(v2());
    // Run until the health checks are requested, then never answer them.
    while device.engine.as_ref().map(|e| e.state()) != Some(State::Trial) {
        assert!(device.tick(), "stalled before the trial");
    }
    while let Some(action) = device.engine().poll_action() {
        if let Action::Persist = action {
            device.persisted = device.engine().record().encode().to_vec();
        }
    }
    let deadline = device.engine().poll_timeout().expect("trial has a deadline");
    assert_eq!(deadline, device.now + Duration::from_secs(30));
    device.now = deadline;
    device.engine().handle_timeout(deadline);
    device.run(100);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(
        (record.state, record.active, record.last_error),
        (State::RolledBack, Slot::A, Some(ErrorCode::TrialTimeout))
    );
}

#[test]
fn older_security_counter_is_refused() {
    let mut device = Device::new(release(1, "1.0.0", 5));
    device.offer = Some(offer(release(3, "0.9.0", 4)));
    device.boot();
    let now = device.now;
    device.engine().handle_check(now);
    device.run(100);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(record.last_error, Some(ErrorCode::SecurityCounterTooOld));
    assert_eq!(record.state, State::Idle);
    assert!(!device.log.iter().any(|a| matches!(a, Action::AskGate | Action::Download { .. })));
}

#[test]
fn wrong_hardware_class_is_refused() {
    let mut device = Device::new(v1());
    device.offer = Some(Offer { release: v2(), hw_class: label("mcu-stm32") });
    device.boot();
    let now = device.now;
    device.engine().handle_check(now);
    device.run(100);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(record.last_error, Some(ErrorCode::WrongHardwareClass));
    assert!(!device.log.iter().any(|a| matches!(a, Action::Download { .. })));
}

#[test]
fn the_gate_can_hold_a_device_back() {
    let mut device = checking_device(v2());
    let later = device.now + Duration::from_secs(600);
    device.gate = GateDecision::WaitUntil(later);
    device.run(100);
    assert_eq!(device.engine().state(), State::Idle);
    assert_eq!(device.engine().poll_timeout(), Some(later));
    assert!(!device.log.iter().any(|a| matches!(a, Action::Download { .. })));
    device.gate = GateDecision::Proceed;
    device.now = later;
    device.engine().handle_timeout(later);
    device.run(1000);
    assert_eq!(device.installed(), v2());
}

#[test]
fn image_mismatch_downloads_again_then_gives_up() {
    let mut device = checking_device(v2());
    // Corrupt the slot after every download: the verification can never pass.
    let mut restarts = 0;
    for _ in 0..10_000 {
        if let Some(Action::VerifyImage { slot }) = device.engine.as_ref().and_then(peek) {
            device.slots[slot as usize].chunks -= 1;
            restarts += 1;
        }
        if !device.tick() {
            break;
        }
    }
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(restarts, 3);
    assert_eq!((record.state, record.last_error), (State::Idle, Some(ErrorCode::ImageMismatch)));
    assert_eq!(record.refused, v2().id);
    assert!(device.activations.is_empty(), "an unverified slot was activated");
}

/// The next action without taking it.
fn peek(engine: &Engine) -> Option<Action> {
    let mut copy = engine.clone();
    copy.poll_action()
}

/// Kill the agent after every possible number of steps, for a healthy and an unhealthy
/// release: each run ends committed on the new slot or back on the old one, the bootloader
/// never tries a slot that was not whole, and chunks written before a crash are not fetched
/// again.
#[test]
fn a_crash_at_any_point_ends_committed_or_on_the_old_slot() {
    for healthy in [true, false] {
        let mut reference = checking_device(v2());
        reference.healthy = healthy;
        let total_steps = reference.run(100_000);
        assert!(total_steps > 20);
        for crash_at in 0..=total_steps {
            let mut device = checking_device(v2());
            device.healthy = healthy;
            device.run(crash_at);
            device.crash();
            device.boot();
            // After a restart the device checks on its own when idle; make that happen now.
            if let Some(at) = device.engine().poll_timeout() {
                device.now = at;
                device.engine().handle_timeout(at);
            }
            device.run(100_000);
            let record = Record::decode(&device.persisted).unwrap();
            for activated in &device.activations {
                assert_eq!(*activated, SlotContent { release: v2().id, chunks: CHUNKS }, "crash at {crash_at}");
            }
            match (healthy, record.state) {
                (true, State::Committed) => {
                    assert_eq!((record.active, device.boot_active, record.installed), (Slot::B, Slot::B, v2()));
                }
                (_, State::RolledBack) => {
                    assert_eq!((record.active, device.boot_active, record.installed), (Slot::A, Slot::A, v1()));
                    assert_eq!(device.slots[0], SlotContent { release: v1().id, chunks: CHUNKS });
                }
                other => panic!("crash at {crash_at}: ended in {other:?}"),
            }
            assert_eq!(device.boot_pending, None, "crash at {crash_at}");
            assert_eq!(device.chunks_written, CHUNKS, "crash at {crash_at}: chunks fetched twice");
        }
    }
}

/// simnet keeps one engine per device for a million devices: keep the engine small.
#[test]
fn the_engine_stays_small() {
    let size = std::mem::size_of::<Engine>();
    assert!(size <= 600, "Engine is {size} bytes");
    assert_eq!(std::mem::size_of::<Action>(), 16);
}

/// A verified image waits in the inactive slot while the switch gate says "not yet" (a
/// maintenance window): the bootloader is not touched, and the record says `Staged`.
#[test]
fn the_switch_waits_for_the_gate_with_the_image_staged() {
    let mut device = checking_device(v2());
    let window = device.now + Duration::from_secs(3 * 3600);
    device.switch_gate = GateDecision::WaitUntil(window);
    device.run(1000);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!(record.state, State::Staged);
    assert_eq!(record.target, Some(v2()));
    assert!(device.activations.is_empty(), "switched before the window");
    assert_eq!((device.boot_active, device.boot_pending), (Slot::A, None));
    assert_eq!(device.slots[1], SlotContent { release: v2().id, chunks: CHUNKS });
    assert_eq!(device.engine().poll_timeout(), Some(window));
    // An early timer does nothing; a check while staged is ignored.
    let early = device.now + Duration::from_secs(60);
    device.engine().handle_timeout(early);
    device.engine().handle_check(early);
    assert_eq!(device.run(100), 0);
    // At the window the engine asks again; still closed: it waits again.
    device.now = window;
    device.engine().handle_timeout(window);
    let later = window + Duration::from_secs(600);
    device.switch_gate = GateDecision::WaitUntil(later);
    device.run(100);
    assert_eq!(device.log.iter().filter(|a| **a == Action::AskSwitch).count(), 2);
    assert!(device.activations.is_empty());
    // Open: it switches, reboots, commits.
    device.now = later;
    device.switch_gate = GateDecision::Proceed;
    device.engine().handle_timeout(later);
    device.run(1000);
    assert_eq!(device.installed(), v2());
    assert_eq!(device.activations, vec![SlotContent { release: v2().id, chunks: CHUNKS }]);
    assert_eq!(device.chunks_written, CHUNKS, "the staged image was downloaded once");
}

/// A restart while staged keeps the verified image: the engine asks the switch gate again
/// at boot, and neither downloads nor verifies again.
#[test]
fn a_staged_image_survives_a_restart() {
    let mut device = checking_device(v2());
    device.switch_gate = GateDecision::WaitUntil(device.now + Duration::from_secs(3600));
    device.run(1000);
    assert_eq!(Record::decode(&device.persisted).unwrap().state, State::Staged);
    let before = device.log.len();
    device.crash();
    device.boot();
    assert_eq!(device.engine().state(), State::Staged);
    device.switch_gate = GateDecision::Proceed;
    device.run(1000);
    let after = &device.log[before..];
    assert_eq!(after.first(), Some(&Action::AskSwitch), "boot asks the switch gate first");
    assert!(!after.iter().any(|a| matches!(a, Action::Download { .. } | Action::VerifyImage { .. })));
    assert_eq!(device.installed(), v2());
    assert_eq!(device.chunks_written, CHUNKS);
}

/// The switch is the last point a storage failure can abandon the target: a staged image
/// whose slot cannot be activated is dropped, and the device settles on the old slot.
#[test]
fn a_storage_failure_while_staged_abandons_the_target() {
    let mut device = checking_device(v2());
    device.switch_gate = GateDecision::WaitUntil(device.now + Duration::from_secs(3600));
    device.run(1000);
    let now = device.now;
    device.engine().handle_storage_failed(now);
    device.run(100);
    let record = Record::decode(&device.persisted).unwrap();
    assert_eq!((record.state, record.target, record.last_error), (State::Idle, None, Some(ErrorCode::Storage)));
    assert!(device.activations.is_empty());
}
