//! The install engine: one device's update lifecycle as a state machine.
//!
//! The driver feeds what happened (`handle_*`) and carries out what the engine asks
//! ([`Engine::poll_action`]) in order, then sleeps until [`Engine::poll_timeout`]. Every
//! decision that matters for safety is here, so the Linux agent, the MCU agent and simnet
//! cannot disagree about it:
//! - an offer is refused unless its hardware class matches and its security counter is at
//!   least the anti-rollback floor;
//! - the bootloader is only ever pointed at the inactive slot after the whole image verified,
//!   and only when the rollout hook allows the switch ([`Action::AskSwitch`]: maintenance
//!   windows); until then the verified image waits, staged, across restarts;
//! - the new slot runs on probation, and only passing health checks before the deadline
//!   commit it; a failed check, a timeout, or a restart during the trial rolls back;
//! - each step is persisted before its side effect, so after a kill or power cut
//!   [`Engine::handle_boot`] resumes from the last step instead of starting over.

use super::record::{ErrorCode, Label, Record, Release, Slot, State};
use crate::time::{Duration, Instant};

/// How an engine behaves; all of it is the device's own policy.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// The hardware class this device is; offers for any other are refused.
    pub hw_class: Label,
    /// Time between update checks once idle.
    pub check_interval: Duration,
    /// First retry delay after a network failure; doubles up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How long the new slot may take to pass its health checks.
    pub trial_deadline: Duration,
    /// Whole-image verification failures before a target is refused (each one restarts the
    /// download from nothing).
    pub max_verify_failures: u8,
}

impl EngineConfig {
    /// Defaults for a device of `hw_class`: check hourly, retry from 1 s up to 5 min, a 2 min
    /// trial, 3 verification attempts.
    pub fn new(hw_class: Label) -> EngineConfig {
        EngineConfig {
            hw_class,
            check_interval: Duration::from_secs(3600),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            trial_deadline: Duration::from_secs(120),
            max_verify_failures: 3,
        }
    }
}

/// A release offered by an edge node, after the driver verified its TUF metadata and its
/// manifest: the engine decides whether this device takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The release (manifest id, version, counter, sizes).
    pub release: Release,
    /// The manifest's hardware class.
    pub hw_class: Label,
}

/// What the rollout hook says about an accepted offer ([`Action::AskGate`]) or a staged image
/// ([`Action::AskSwitch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    /// Install now.
    Proceed,
    /// Not yet: ask again at this time (a later wave, a maintenance window).
    WaitUntil(Instant),
}

/// What the bootloader says at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// The slot that is running.
    pub booted: Slot,
    /// The slot marked to be tried on (or being tried since) the last boot, not yet committed.
    pub pending: Option<Slot>,
}

/// The health checks' verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthOutcome {
    /// Every check passed.
    Healthy,
    /// A check failed.
    Failed,
}

/// What the engine asks the driver to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write [`Engine::record`] durably before doing anything that follows.
    Persist,
    /// Refresh TUF metadata and the manifest through an edge node; answer with
    /// [`Engine::handle_offer`], [`Engine::handle_no_update`] or [`Engine::handle_check_failed`].
    FetchMetadata,
    /// Ask the rollout hook whether to install the release [`Engine::pending_offer`] names
    /// now; answer with [`Engine::handle_gate`]. (No payload: every action stays 16 bytes, and
    /// simnet keeps a million engines in memory.)
    AskGate,
    /// Forget which chunks of the inactive slot were written: a new target, or a failed
    /// verification.
    ResetProgress,
    /// Fetch (or copy from the active slot) every target chunk not yet written into `slot`;
    /// report [`Engine::handle_progress`], then [`Engine::handle_download_done`] or
    /// [`Engine::handle_download_failed`].
    Download {
        /// The inactive slot.
        slot: Slot,
    },
    /// Hash the whole slot against the manifest; answer [`Engine::handle_image_verified`].
    VerifyImage {
        /// The inactive slot.
        slot: Slot,
    },
    /// The verified image waits in the inactive slot: ask the rollout hook whether to switch
    /// to it now (maintenance window, site concurrency); answer with
    /// [`Engine::handle_switch_gate`]. No payload, like [`Action::AskGate`].
    AskSwitch,
    /// Tell the bootloader to try `slot` on the next boot (once, uncommitted); answer
    /// [`Engine::handle_slot_activated`].
    ActivateSlot {
        /// The verified slot.
        slot: Slot,
    },
    /// Reboot the device (the demo restarts the agent).
    Reboot,
    /// Run the health checks; answer [`Engine::handle_health`] before `deadline`.
    RunHealthChecks {
        /// When the trial fails by timeout.
        deadline: Instant,
    },
    /// Make `slot` the bootloader's permanent choice; answer [`Engine::handle_committed`].
    Commit {
        /// The slot on trial.
        slot: Slot,
    },
    /// Point the bootloader back at `slot` (drop the pending one); a [`Action::Reboot`] follows.
    RollBack {
        /// The previous, committed slot.
        slot: Slot,
    },
    /// The status changed: send a signed report if the driver has a way to.
    Report,
}

/// What the driver's next timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Check,
    DownloadRetry,
    SwitchGate,
    TrialDeadline,
}

const OUTBOX: usize = 8;

/// One device's install engine. No heap: it is the same code on an MCU.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    record: Record,
    offer: Option<Release>,
    timer: Option<(Instant, Timer)>,
    network_failures: u32,
    /// The state to settle in after a check finds nothing to do.
    resting: State,
    outbox: [Option<Action>; OUTBOX],
    outbox_head: usize,
    outbox_len: usize,
}

impl Engine {
    /// An engine resuming from `record` (a fresh device passes [`Record::factory`]). Nothing
    /// happens until [`Engine::handle_boot`].
    pub fn new(config: EngineConfig, record: Record) -> Engine {
        let resting = match record.state {
            State::Committed | State::RolledBack => record.state,
            _ => State::Idle,
        };
        Engine {
            config,
            record,
            offer: None,
            timer: None,
            network_failures: 0,
            resting,
            outbox: [None; OUTBOX],
            outbox_head: 0,
            outbox_len: 0,
        }
    }

    /// The current record (what [`Action::Persist`] writes).
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.record.state
    }

    /// The release waiting for the rollout gate's answer, if any.
    pub fn pending_offer(&self) -> Option<&Release> {
        self.offer.as_ref()
    }

    /// The engine's policy.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Start-up: reconcile the record with what the bootloader actually booted, and resume.
    pub fn handle_boot(&mut self, now: Instant, boot: BootInfo) {
        let target_slot = self.record.inactive();
        let on_target = boot.booted == target_slot;
        let target_pending = boot.pending == Some(target_slot);
        match self.record.state {
            State::Installing | State::PendingReboot => {
                if on_target && target_pending {
                    self.begin_trial(now);
                } else if on_target {
                    // The bootloader already made the new slot permanent.
                    self.finish_commit();
                } else if target_pending {
                    // Activated, but the reboot never happened.
                    self.set_state(State::PendingReboot);
                    self.push(Action::Persist);
                    self.push(Action::Reboot);
                } else if self.record.state == State::Installing {
                    self.push(Action::ActivateSlot { slot: target_slot });
                } else {
                    // Pending reboot, running the old slot, nothing pending: the bootloader
                    // tried the new slot and gave up on it.
                    self.finish_rollback(now, ErrorCode::BootFailed);
                }
            }
            State::Trial => {
                if on_target && target_pending {
                    self.roll_back(now, ErrorCode::RebootDuringTrial);
                } else if on_target {
                    self.finish_commit();
                } else {
                    self.finish_rollback(now, ErrorCode::BootFailed);
                }
            }
            State::RolledBack if self.record.target.is_some() => {
                if on_target {
                    // The rollback's reboot did not happen yet.
                    self.push(Action::RollBack { slot: self.record.active });
                    self.push(Action::Reboot);
                } else {
                    let error = self.record.last_error.unwrap_or(ErrorCode::HealthCheckFailed);
                    self.finish_rollback(now, error);
                }
            }
            State::Downloading => self.push(Action::Download { slot: target_slot }),
            State::Verifying => self.push(Action::VerifyImage { slot: target_slot }),
            // The image verified before the restart and the slot is untouched since (only a
            // switch changes it): ask again whether to switch now.
            State::Staged => self.push(Action::AskSwitch),
            State::Checking => {
                self.set_state(self.resting);
                self.push(Action::Persist);
                self.arm(now, Timer::Check);
            }
            State::Idle | State::Committed | State::RolledBack => {
                if boot.booted != self.record.active {
                    // Someone else switched slots behind our back: what runs is unknown.
                    self.record.active = boot.booted;
                    self.record.installed = Release::unknown(Label::new("unknown").unwrap_or(Label::empty()), 0);
                    self.record.target = None;
                    self.set_state(State::Idle);
                    self.resting = State::Idle;
                    self.push(Action::Persist);
                }
                self.arm(now, Timer::Check);
            }
        }
    }

    /// Check for an update now (the timer does this on its own; `device-client check` asks).
    /// Ignored while an install is under way.
    pub fn handle_check(&mut self, _now: Instant) {
        if matches!(self.record.state, State::Idle | State::Committed | State::RolledBack) {
            self.resting = self.record.state;
            self.timer = None;
            self.set_state(State::Checking);
            self.push(Action::FetchMetadata);
        }
    }

    /// A verified offer arrived. The engine refuses it, finds it already installed, or asks
    /// the rollout hook.
    pub fn handle_offer(&mut self, now: Instant, offer: Offer) {
        if self.record.state != State::Checking {
            return;
        }
        self.network_failures = 0;
        let release = offer.release;
        if offer.hw_class != self.config.hw_class {
            return self.settle(now, Some(ErrorCode::WrongHardwareClass));
        }
        if release.security_counter < self.record.min_security_counter {
            return self.settle(now, Some(ErrorCode::SecurityCounterTooOld));
        }
        if release.id == self.record.installed.id || release.id == self.record.refused {
            return self.settle(now, None);
        }
        self.offer = Some(release);
        self.push(Action::AskGate);
    }

    /// The edge nodes have nothing newer for this device.
    pub fn handle_no_update(&mut self, now: Instant) {
        if self.record.state == State::Checking {
            self.network_failures = 0;
            self.settle(now, None);
        }
    }

    /// No edge node could be reached, or metadata failed verification; retry with backoff.
    pub fn handle_check_failed(&mut self, now: Instant, error: ErrorCode) {
        if self.record.state == State::Checking {
            self.network_failures = self.network_failures.saturating_add(1);
            self.record.last_error = Some(error);
            self.set_state(self.resting);
            self.push(Action::Report);
            self.arm(now, Timer::DownloadRetry);
        }
    }

    /// The rollout hook's answer for the pending offer.
    pub fn handle_gate(&mut self, now: Instant, decision: GateDecision) {
        let Some(offer) = self.offer.take() else { return };
        if self.record.state != State::Checking {
            return;
        }
        match decision {
            GateDecision::WaitUntil(at) => {
                self.set_state(self.resting);
                self.push(Action::Report);
                self.timer = Some((at.max(now), Timer::Check));
            }
            GateDecision::Proceed => {
                let same_target = self.record.target.map(|t| t.id) == Some(offer.id);
                if !same_target {
                    self.record.target = Some(offer);
                    self.record.chunks_done = 0;
                    self.record.bytes_fetched = 0;
                    self.record.bytes_reused = 0;
                    self.record.verify_failures = 0;
                    self.push(Action::ResetProgress);
                }
                self.record.last_error = None;
                self.set_state(State::Downloading);
                self.push(Action::Persist);
                self.push(Action::Report);
                self.push(Action::Download { slot: self.record.inactive() });
            }
        }
    }

    /// Progress so far (absolute figures, so repeating a report is harmless). The driver calls
    /// this after the chunks it counts are durable in the slot.
    pub fn handle_progress(&mut self, chunks_done: u32, bytes_fetched: u64, bytes_reused: u64) {
        if self.record.state == State::Downloading {
            self.record.chunks_done = chunks_done;
            self.record.bytes_fetched = bytes_fetched;
            self.record.bytes_reused = bytes_reused;
            self.push(Action::Persist);
        }
    }

    /// Every chunk is written and durable.
    pub fn handle_download_done(&mut self, _now: Instant) {
        if self.record.state == State::Downloading {
            self.network_failures = 0;
            self.record.last_error = None;
            self.set_state(State::Verifying);
            self.push(Action::Persist);
            self.push(Action::VerifyImage { slot: self.record.inactive() });
        }
    }

    /// The download stopped short (no edge node could serve, a transfer failed); the written
    /// chunks stay, and the engine retries with backoff.
    pub fn handle_download_failed(&mut self, now: Instant, error: ErrorCode) {
        if self.record.state == State::Downloading {
            self.network_failures = self.network_failures.saturating_add(1);
            self.record.last_error = Some(error);
            self.push(Action::Persist);
            self.push(Action::Report);
            self.arm(now, Timer::DownloadRetry);
        }
    }

    /// The whole-image hash result.
    pub fn handle_image_verified(&mut self, now: Instant, matches: bool) {
        if self.record.state != State::Verifying {
            return;
        }
        let slot = self.record.inactive();
        if matches {
            self.set_state(State::Staged);
            self.push(Action::Persist);
            self.push(Action::Report);
            self.push(Action::AskSwitch);
            return;
        }
        self.record.verify_failures = self.record.verify_failures.saturating_add(1);
        self.record.last_error = Some(ErrorCode::ImageMismatch);
        if self.record.verify_failures >= self.config.max_verify_failures {
            if let Some(target) = self.record.target.take() {
                self.record.refused = target.id;
            }
            self.settle(now, Some(ErrorCode::ImageMismatch));
        } else {
            self.record.chunks_done = 0;
            self.set_state(State::Downloading);
            self.push(Action::ResetProgress);
            self.push(Action::Persist);
            self.push(Action::Download { slot });
        }
    }

    /// The rollout hook's answer for the staged image: switch now, or keep it staged and ask
    /// again at the given time.
    pub fn handle_switch_gate(&mut self, now: Instant, decision: GateDecision) {
        if self.record.state != State::Staged {
            return;
        }
        match decision {
            GateDecision::WaitUntil(at) => self.timer = Some((at.max(now), Timer::SwitchGate)),
            GateDecision::Proceed => {
                self.timer = None;
                self.set_state(State::Installing);
                self.push(Action::Persist);
                self.push(Action::ActivateSlot { slot: self.record.inactive() });
            }
        }
    }

    /// The bootloader will try the new slot on the next boot.
    pub fn handle_slot_activated(&mut self, _now: Instant) {
        if self.record.state == State::Installing {
            self.set_state(State::PendingReboot);
            self.push(Action::Persist);
            self.push(Action::Report);
            self.push(Action::Reboot);
        }
    }

    /// Changing the slot or the bootloader failed: give up on this target for now.
    pub fn handle_storage_failed(&mut self, now: Instant) {
        if matches!(self.record.state, State::Downloading | State::Verifying | State::Staged | State::Installing) {
            self.record.target = None;
            self.push(Action::ResetProgress);
            self.settle(now, Some(ErrorCode::Storage));
        }
    }

    /// The health checks' verdict during the trial.
    pub fn handle_health(&mut self, now: Instant, outcome: HealthOutcome) {
        if self.record.state != State::Trial {
            return;
        }
        match outcome {
            HealthOutcome::Healthy => {
                self.timer = None;
                self.push(Action::Commit { slot: self.record.inactive() });
            }
            HealthOutcome::Failed => self.roll_back(now, ErrorCode::HealthCheckFailed),
        }
    }

    /// The bootloader made the new slot permanent.
    pub fn handle_committed(&mut self, now: Instant) {
        if self.record.state == State::Trial {
            self.finish_commit();
            self.arm(now, Timer::Check);
        }
    }

    /// Call when [`Engine::poll_timeout`]'s time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, timer)) = self.timer else { return };
        if now < at {
            return;
        }
        self.timer = None;
        match timer {
            Timer::Check => self.handle_check(now),
            Timer::DownloadRetry => match self.record.state {
                State::Downloading => self.push(Action::Download { slot: self.record.inactive() }),
                _ => self.handle_check(now),
            },
            Timer::SwitchGate => {
                if self.record.state == State::Staged {
                    self.push(Action::AskSwitch);
                }
            }
            Timer::TrialDeadline => {
                if self.record.state == State::Trial {
                    self.roll_back(now, ErrorCode::TrialTimeout);
                }
            }
        }
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.outbox_len == 0 {
            return None;
        }
        let action = self.outbox[self.outbox_head].take();
        self.outbox_head = (self.outbox_head + 1) % OUTBOX;
        self.outbox_len -= 1;
        action
    }

    /// When to call [`Engine::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer.map(|(at, _)| at)
    }

    fn begin_trial(&mut self, now: Instant) {
        self.set_state(State::Trial);
        let deadline = now + self.config.trial_deadline;
        self.timer = Some((deadline, Timer::TrialDeadline));
        self.push(Action::Persist);
        self.push(Action::Report);
        self.push(Action::RunHealthChecks { deadline });
    }

    fn roll_back(&mut self, _now: Instant, error: ErrorCode) {
        self.timer = None;
        self.record.last_error = Some(error);
        self.set_state(State::RolledBack);
        self.push(Action::Persist);
        self.push(Action::RollBack { slot: self.record.active });
        self.push(Action::Reboot);
    }

    fn finish_rollback(&mut self, now: Instant, error: ErrorCode) {
        if let Some(target) = self.record.target.take() {
            self.record.refused = target.id;
        }
        self.record.last_error = Some(error);
        self.set_state(State::RolledBack);
        self.resting = State::RolledBack;
        self.push(Action::ResetProgress);
        self.push(Action::Persist);
        self.push(Action::Report);
        self.arm(now, Timer::Check);
    }

    fn finish_commit(&mut self) {
        if let Some(target) = self.record.target.take() {
            self.record.installed = target;
            self.record.min_security_counter = self.record.min_security_counter.max(target.security_counter);
        }
        self.record.active = self.record.active.other();
        self.record.last_error = None;
        self.record.verify_failures = 0;
        self.set_state(State::Committed);
        self.resting = State::Committed;
        self.timer = None;
        self.push(Action::Persist);
        self.push(Action::Report);
    }

    /// Ends a check (or an abandoned attempt) in the resting state.
    fn settle(&mut self, now: Instant, error: Option<ErrorCode>) {
        self.offer = None;
        if error.is_some() {
            self.record.last_error = error;
        }
        self.set_state(self.resting);
        self.push(Action::Persist);
        self.push(Action::Report);
        self.arm(now, Timer::Check);
    }

    fn arm(&mut self, now: Instant, timer: Timer) {
        let delay = match timer {
            Timer::Check => self.config.check_interval,
            Timer::DownloadRetry => {
                let shift = self.network_failures.saturating_sub(1).min(16);
                Duration(self.config.base_backoff.0.saturating_mul(1 << shift).min(self.config.max_backoff.0))
            }
            Timer::TrialDeadline => self.config.trial_deadline,
            // Armed only with the gate's own time (`handle_switch_gate`).
            Timer::SwitchGate => self.config.check_interval,
        };
        self.timer = Some((now + delay, timer));
    }

    fn set_state(&mut self, state: State) {
        self.record.state = state;
    }

    /// Queues an action; the same action twice in a row is queued once (two persists in a row
    /// are one persist). The outbox cannot overflow: no input queues more than it holds
    /// and drivers drain it after each input.
    fn push(&mut self, action: Action) {
        if action == Action::Persist {
            self.record.sequence = self.record.sequence.wrapping_add(1);
        }
        let last = (self.outbox_head + self.outbox_len + OUTBOX - 1) % OUTBOX;
        if self.outbox_len > 0 && self.outbox[last] == Some(action) {
            return;
        }
        if self.outbox_len == OUTBOX {
            debug_assert!(false, "install engine outbox overflow; drain it after every input");
            return;
        }
        self.outbox[(self.outbox_head + self.outbox_len) % OUTBOX] = Some(action);
        self.outbox_len += 1;
    }
}
