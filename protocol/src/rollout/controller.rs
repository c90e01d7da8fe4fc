//! The publisher's rollout controller: counts verified outcomes per wave and decides when
//! the policy changes — advance a wave, complete, halt — and what operators may change.
//!
//! Sans-IO, like every state machine here: feed [`Controller::handle_report`] and
//! [`Controller::handle_baseline`], then call [`Controller::poll`] with the time; a `Some`
//! is the next policy to sign and publish (its `seq` one higher). `poll`'s answer can only
//! change after an input or when time passes a wave's soak end, so calling it after every
//! input and once a minute is enough.
//!
//! Rules, evaluated in this order while the rollout runs:
//! 1. **Fixed threshold.** Failures are rolled-back or failed installs among final outcomes.
//!    The rollout halts when the current wave's failures, or all waves' together, exceed
//!    `max_failure_ppm` of `max(final outcomes, min_reports)`: once `min_reports` outcomes
//!    are in this is the plain failure rate; before that it halts only when so many failed
//!    already that the wave could not pass even if every outstanding outcome succeeded.
//! 2. **Regression against the previous release.** Given the previous release's figures
//!    ([`Controller::handle_baseline`]), the rollout halts when the new release's failures
//!    are significantly more than the baseline explains: an exact one-sided binomial test,
//!    P(X ≥ failures | n = final outcomes, p = p₀) < [`BASELINE_ALPHA`] (0.1 %), where p₀ is
//!    the upper 99 % Wilson score bound of the baseline's failure rate (so a small or noisy
//!    baseline counts in the new release's favour), with at least [`BASELINE_MIN_OUTCOMES`]
//!    outcomes of the new release. Why this test: it is exact at the small counts that matter
//!    (a canary wave's first dozen outcomes, a baseline with almost no failures), where the
//!    normal approximation of a two-proportion z-test — and the Wilson bound on the new
//!    release's side, which we tried first — halts a release as good as its predecessor
//!    (2 failures in 19 against 2 % is not evidence of anything); and it needs no chosen
//!    alternative rate, which Wald's SPRT would. The controller re-tests after every poll,
//!    which inflates the false-alarm rate of a fixed-α test; the small α and the
//!    conservative p₀ keep it low (the tests check thousands of looks at equal rates), while
//!    a clearly worse release (15 % against 2 %) still halts within a few dozen outcomes.
//! 3. **Advance.** When the current wave has soaked `min_soak_secs` since `wave_started_at`,
//!    has at least `min_reports` final outcomes, and its failure rate is within the limit,
//!    the next wave starts (or, after the last wave, the rollout is complete).
//!
//! A device counts with its latest outcome only (by the report's time, clamped to `now` so a
//! device clock in the future cannot pin a report; same-second reports ordered failures
//! first), so duplicates and reordering change nothing. Which devices are enrolled is the
//! caller's business: pass only reports from enrolled devices whose signature verified.
//!
//! Operators: [`Controller::pause`], [`Controller::resume`] (from paused or halted; the
//! current wave's soak starts again, and after a halt the outcomes counted so far are
//! accepted as known — the gate judges only what arrives after the resume, or the same
//! failures would halt it again at once), [`Controller::abort`].

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::device_map::{device_map, DeviceMap, MapSeed};
use super::policy::{limits, Phase, PolicyError, RolloutPolicy, RolloutState};
use super::report::{Outcome, RolloutReport};
use crate::id_order::Bytes32;

/// Halt codes the controller writes into a policy.
pub mod halt_code {
    /// The failure rate crossed the policy's fixed threshold.
    pub const FAILURE_THRESHOLD: u16 = 1;
    /// The failure rate is significantly worse than the previous release's.
    pub const BASELINE_REGRESSION: u16 = 2;
}

/// Final outcomes of the new release before the baseline comparison may halt it.
pub const BASELINE_MIN_OUTCOMES: u32 = 10;
/// Significance level of the baseline comparison.
pub const BASELINE_ALPHA: f64 = 0.001;
/// The one-sided 99 % normal quantile of the baseline's upper Wilson bound.
const WILSON_Z: f64 = 2.326;

/// Counts of device outcomes (latest per device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Under way.
    pub installing: u32,
    /// Committed.
    pub committed: u32,
    /// Rolled back.
    pub rolled_back: u32,
    /// Failed before the switch.
    pub failed: u32,
}

impl Tally {
    /// Final outcomes (committed, rolled back, failed).
    pub fn finals(&self) -> u32 {
        self.committed + self.rolled_back + self.failed
    }
    /// Failures (rolled back or failed).
    pub fn failures(&self) -> u32 {
        self.rolled_back + self.failed
    }
    /// Failure rate in ppm of final outcomes; `None` before any.
    pub fn failure_ppm(&self) -> Option<u32> {
        let finals = self.finals();
        (finals > 0).then(|| (self.failures() as u64 * limits::FULL_PPM as u64 / finals as u64) as u32)
    }
    pub(crate) fn count(&mut self, outcome: Outcome, add: bool) {
        let field = match outcome {
            Outcome::Installing => &mut self.installing,
            Outcome::Committed => &mut self.committed,
            Outcome::RolledBack => &mut self.rolled_back,
            Outcome::Failed(_) => &mut self.failed,
        };
        *field = if add { field.saturating_add(1) } else { field.saturating_sub(1) };
    }
    pub(crate) fn saturating_sub(&self, other: &Tally) -> Tally {
        Tally {
            installing: self.installing.saturating_sub(other.installing),
            committed: self.committed.saturating_sub(other.committed),
            rolled_back: self.rolled_back.saturating_sub(other.rolled_back),
            failed: self.failed.saturating_sub(other.failed),
        }
    }
    fn plus(&self, other: &Tally) -> Tally {
        Tally {
            installing: self.installing.saturating_add(other.installing),
            committed: self.committed.saturating_add(other.committed),
            rolled_back: self.rolled_back.saturating_add(other.rolled_back),
            failed: self.failed.saturating_add(other.failed),
        }
    }
}

/// One wave as `seeder rollout status` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSummary {
    /// Wave index.
    pub index: usize,
    /// Cumulative share of the fleet, ppm.
    pub cumulative_ppm: u32,
    /// Devices of this wave by latest outcome (all reports, including those accepted by a
    /// resume).
    pub tally: Tally,
    /// `tally`'s failure rate, ppm of final outcomes.
    pub failure_ppm: Option<u32>,
    /// What the gate says about this wave, one line.
    pub gate: String,
}

/// An operator command that does not apply in the rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandError {
    /// The command (`"pause"`, `"resume"`, `"abort"`).
    pub command: &'static str,
    /// The state it was refused in.
    pub phase: Phase,
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cannot {} a rollout that is {}", self.command, self.phase.name())
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CommandError {}

#[derive(Debug, Clone, Copy)]
struct DeviceEntry {
    wave: usize,
    outcome: Outcome,
    at: i64,
}

/// The publisher's controller for one rollout.
#[derive(Debug, Clone)]
pub struct Controller {
    policy: RolloutPolicy,
    devices: DeviceMap<DeviceEntry>,
    tallies: Vec<Tally>,
    /// Counts accepted by an operator's resume after a halt; the gate judges above them.
    accepted: Vec<Tally>,
    /// The previous release's committed and failed installs.
    baseline: Option<(u64, u64)>,
    /// Devices each wave targets, when the publisher knows its fleet: a wave with fewer
    /// devices than `min_reports` advances once all of them reported (an empty wave after its
    /// soak), instead of waiting for reports that cannot come.
    targeted: Option<Vec<u32>>,
}

impl Controller {
    /// A controller for `policy` (validated first); `seed` keys its device map (see
    /// [`MapSeed`]: a secret from a random source wherever device ids are not the caller's).
    pub fn new(policy: RolloutPolicy, seed: MapSeed) -> Result<Controller, PolicyError> {
        policy.validate()?;
        let waves = policy.waves.len();
        Ok(Controller {
            policy,
            devices: device_map(seed),
            tallies: vec![Tally::default(); waves],
            accepted: vec![Tally::default(); waves],
            baseline: None,
            targeted: None,
        })
    }

    /// The policy as last decided (what was last returned to sign, or the initial one).
    pub fn policy(&self) -> &RolloutPolicy {
        &self.policy
    }

    /// The latest outcome the controller counts for `device`, if it reported one: what a
    /// per-site view must un-count when a newer report supersedes it.
    pub fn outcome_of(&self, device: &[u8; 32]) -> Option<Outcome> {
        self.devices.get(&Bytes32(*device)).map(|entry| entry.outcome)
    }

    /// Counts a verified report from an enrolled device. Reports for another rollout, and
    /// reports older than the device's latest, change nothing; returns whether it counted.
    pub fn handle_report(&mut self, report: &RolloutReport, now_unix: i64) -> bool {
        if report.rollout_id != self.policy.id {
            return false;
        }
        let (at, device) = (report.at.min(now_unix), Bytes32(report.device_id));
        // A device's wave comes from a hash over its id, computed at its first report only:
        // the waves, the canaries and the rollout id never change within one rollout. A
        // device reporting again is updated in place: one probe of a map of the whole fleet,
        // whose entries are cold by the time a device reports again.
        if let Some(previous) = self.devices.get_mut(&device) {
            if !report.supersedes_at(at, previous.outcome, previous.at) {
                return false;
            }
            let wave = previous.wave;
            debug_assert_eq!(self.policy.wave_of(&report.device_id), Some(wave), "a device's wave changed");
            self.tallies[wave].count(previous.outcome, false);
            self.tallies[wave].count(report.outcome, true);
            *previous = DeviceEntry { wave, outcome: report.outcome, at };
            return true;
        }
        let Some(wave) = self.policy.wave_of(&report.device_id) else { return false };
        self.tallies[wave].count(report.outcome, true);
        self.devices.insert(device, DeviceEntry { wave, outcome: report.outcome, at });
        true
    }

    /// The previous release's figures over a comparable population: installs committed and
    /// installs that failed or rolled back.
    pub fn handle_baseline(&mut self, committed: u64, failed: u64) {
        self.baseline = Some((committed, failed));
    }

    /// How many devices each wave targets (enrolled devices of the release's hardware class,
    /// by wave, not cumulative). A wave needs `min(min_reports, targeted)` final outcomes.
    pub fn handle_targeted(&mut self, per_wave: &[u32]) {
        self.targeted = Some(per_wave.to_vec());
    }

    /// The next policy to sign, if the rollout's state changes at `now_unix`.
    pub fn poll(&mut self, now_unix: i64) -> Option<RolloutPolicy> {
        if self.policy.state != RolloutState::Running {
            return None;
        }
        let next = match self.judge(now_unix) {
            Judgement::Halt { code, reason } => self.policy.next(RolloutState::Halted { code, reason }),
            Judgement::Advance if self.policy.current_wave + 1 == self.policy.waves.len() => {
                self.policy.next(RolloutState::Complete)
            }
            Judgement::Advance => RolloutPolicy {
                current_wave: self.policy.current_wave + 1,
                wave_started_at: now_unix,
                ..self.policy.next(RolloutState::Running)
            },
            Judgement::Wait(_) => return None,
        };
        self.policy = next.clone();
        Some(next)
    }

    /// Operator: stop new installs for now.
    pub fn pause(&mut self) -> Result<RolloutPolicy, CommandError> {
        self.command("pause", &[Phase::Running], RolloutState::Paused)
    }

    /// Operator: run again after a pause or a halt. The current wave's soak starts at
    /// `now_unix`; after a halt, the outcomes counted so far are accepted (see module doc).
    pub fn resume(&mut self, now_unix: i64) -> Result<RolloutPolicy, CommandError> {
        let was_halted = self.policy.state.phase() == Phase::Halted;
        let next = self.command("resume", &[Phase::Paused, Phase::Halted], RolloutState::Running)?;
        if was_halted {
            self.accepted = self.tallies.clone();
        }
        self.policy.wave_started_at = now_unix;
        Ok(RolloutPolicy { wave_started_at: now_unix, ..next })
    }

    /// Operator: stop for good.
    pub fn abort(&mut self) -> Result<RolloutPolicy, CommandError> {
        self.command("abort", &[Phase::Running, Phase::Paused, Phase::Halted], RolloutState::Aborted)
    }

    /// Per-wave counts and gate text for `seeder rollout status`.
    pub fn wave_summaries(&self, now_unix: i64) -> Vec<WaveSummary> {
        let current = self.policy.current_wave;
        let judgement = self.judge(now_unix);
        self.policy
            .waves
            .iter()
            .enumerate()
            .map(|(index, wave)| {
                let tally = self.tallies[index];
                let gate = match (index.cmp(&current), &self.policy.state) {
                    (core::cmp::Ordering::Less, _) | (_, RolloutState::Complete) => "passed".into(),
                    (core::cmp::Ordering::Greater, _) => "not started".into(),
                    (_, RolloutState::Paused) => "paused".into(),
                    (_, RolloutState::Aborted) => "aborted".into(),
                    (_, RolloutState::Halted { reason, .. }) => format!("halted: {reason}"),
                    (_, RolloutState::Running) => match &judgement {
                        Judgement::Halt { reason, .. } => format!("halting: {reason}"),
                        Judgement::Advance => "passes the gate".into(),
                        Judgement::Wait(why) => why.clone(),
                    },
                };
                WaveSummary {
                    index,
                    cumulative_ppm: wave.cumulative_ppm,
                    tally,
                    failure_ppm: tally.failure_ppm(),
                    gate,
                }
            })
            .collect()
    }

    fn command(
        &mut self,
        command: &'static str,
        from: &[Phase],
        state: RolloutState,
    ) -> Result<RolloutPolicy, CommandError> {
        let phase = self.policy.state.phase();
        if !from.contains(&phase) {
            return Err(CommandError { command, phase });
        }
        self.policy = self.policy.next(state);
        Ok(self.policy.clone())
    }

    /// What the gate says about the current wave at `now_unix` (for a running rollout).
    fn judge(&self, now_unix: i64) -> Judgement {
        let current = self.policy.current_wave;
        let health = self.policy.health;
        let judged = |w: usize| self.tallies[w].saturating_sub(&self.accepted[w]);
        let wave = judged(current);
        let all = (0..self.tallies.len()).map(judged).fold(Tally::default(), |a, t| a.plus(&t));

        for (scope, tally) in [("wave", wave), ("rollout", all)] {
            let denominator = tally.finals().max(health.min_reports) as u64;
            if tally.failures() as u64 * limits::FULL_PPM as u64 > health.max_failure_ppm as u64 * denominator {
                let scope = if scope == "wave" { format!("wave {current}") } else { String::from("all waves") };
                return Judgement::Halt {
                    code: halt_code::FAILURE_THRESHOLD,
                    reason: reason(format!(
                        "{scope}: {} of {} installs failed, above the {} limit",
                        tally.failures(),
                        tally.finals(),
                        percent(health.max_failure_ppm)
                    )),
                };
            }
        }
        if let Some((base_ok, base_failed)) = self.baseline {
            let base_n = base_ok.saturating_add(base_failed);
            if all.finals() >= BASELINE_MIN_OUTCOMES && base_n > 0 {
                let base_high = wilson(base_failed as f64, base_n as f64).1;
                let p_value = binomial_upper_tail(all.failures() as u64, all.finals() as u64, base_high);
                if p_value < BASELINE_ALPHA {
                    return Judgement::Halt {
                        code: halt_code::BASELINE_REGRESSION,
                        reason: reason(format!(
                            "{} of {} installs failed, significantly worse than the previous release's {} of {}",
                            all.failures(),
                            all.finals(),
                            base_failed,
                            base_n
                        )),
                    };
                }
            }
        }
        let soak = self.policy.waves.get(current).map_or(0, |w| w.min_soak_secs as i64);
        let soak_end = self.policy.wave_started_at.saturating_add(soak);
        if now_unix < soak_end {
            return Judgement::Wait(format!("soaking until {soak_end} (unix)"));
        }
        let needed = match self.targeted.as_ref().and_then(|t| t.get(current)) {
            Some(&targeted) => health.min_reports.min(targeted),
            None => health.min_reports,
        };
        if wave.finals() < needed {
            return Judgement::Wait(format!("waiting for reports ({} of {})", wave.finals(), needed));
        }
        Judgement::Advance
    }
}

enum Judgement {
    Halt { code: u16, reason: String },
    Advance,
    Wait(String),
}

/// A halt reason within the policy's limit (ASCII, so any cut is a char boundary).
fn reason(mut text: String) -> String {
    let mut cut = limits::MAX_HALT_REASON_BYTES.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

fn percent(ppm: u32) -> String {
    format!("{}.{}%", ppm / 10_000, (ppm % 10_000) / 1_000)
}

/// Wilson score interval (lower, upper) for `x` successes of `n` at [`WILSON_Z`].
fn wilson(x: f64, n: f64) -> (f64, f64) {
    let z2 = WILSON_Z * WILSON_Z;
    let p = x / n;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = WILSON_Z * sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denominator;
    (center - half, center + half)
}

/// P(X ≥ x) for X ~ Binomial(n, p). Terms are summed relative to the mode's, walking
/// outward until they stop mattering: no `exp`/`ln` (they need std) and no underflow of
/// `(1 − p)^n` for large n. Below or at the mode the answer is reported as 1 (never
/// significant), which is all the callers need (the controller's halt, the site guard, the
/// seeder's anomaly flags).
pub fn binomial_upper_tail(x: u64, n: u64, p: f64) -> f64 {
    if x == 0 || p >= 1.0 {
        return 1.0;
    }
    if x > n || p <= 0.0 {
        return 0.0;
    }
    let q = 1.0 - p;
    let mode = (((n + 1) as f64 * p) as u64).min(n);
    if x <= mode {
        return 1.0;
    }
    const NEGLIGIBLE: f64 = 1e-18;
    let mut total = 1.0;
    let (mut term, mut k) = (1.0, mode);
    while k > 0 {
        term *= k as f64 / (n - k + 1) as f64 * (q / p);
        k -= 1;
        total += term;
        if term < total * NEGLIGIBLE {
            break;
        }
    }
    let (mut term, mut k, mut tail) = (1.0, mode, 0.0);
    while k < n {
        term *= (n - k) as f64 / (k + 1) as f64 * (p / q);
        k += 1;
        total += term;
        if k >= x {
            tail += term;
        }
        if term < total * NEGLIGIBLE {
            break;
        }
    }
    tail / total
}

/// Square root by Newton's method: `f64::sqrt` needs std, and this crate's alloc-only build
/// has none. Inputs here are in [0, 1]; 60 iterations reach full precision from any start.
fn sqrt(x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let mut guess = if x < 1.0 { 1.0 } else { x };
    for _ in 0..60 {
        let next = 0.5 * (guess + x / guess);
        if next == guess {
            break;
        }
        guess = next;
    }
    guess
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newton_sqrt_matches() {
        for x in [1e-12, 1e-6, 0.01, 0.25, 0.5, 0.99, 1.0, 2.0, 1e6] {
            assert!((sqrt(x) - x.sqrt()).abs() <= 1e-12 * x.max(1.0), "{x}");
        }
        assert_eq!(sqrt(0.0), 0.0);
    }

    #[test]
    fn wilson_bounds_bracket_the_rate() {
        let (low, high) = wilson(5.0, 10.0);
        assert!(low > 0.2 && low < 0.21, "{low}");
        assert!(high > 0.79 && high < 0.8, "{high}");
        let (low, high) = wilson(0.0, 10_000.0);
        assert!(low.abs() < 1e-12 && high < 0.001);
    }

    #[test]
    fn a_wave_smaller_than_min_reports_advances_once_all_its_devices_reported() {
        let policy = RolloutPolicy {
            id: "r".into(),
            release: crate::rollout::RolloutRelease { name: "gw".into(), version: "2".into(), hw_class: "x".into() },
            seq: 1,
            waves: vec![
                crate::rollout::Wave { cumulative_ppm: 500_000, min_soak_secs: 0 },
                crate::rollout::Wave { cumulative_ppm: 1_000_000, min_soak_secs: 0 },
            ],
            canaries: Vec::new(),
            health: crate::rollout::HealthGate { max_failure_ppm: 50_000, min_reports: 10 },
            windows: Vec::new(),
            max_concurrent_per_site: 0,
            state: RolloutState::Running,
            current_wave: 0,
            wave_started_at: 0,
        };
        let mut controller = Controller::new(policy, MapSeed([0; 16])).unwrap();
        assert_eq!(controller.poll(100), None, "10 reports needed, none known");
        // The fleet has no device in wave 0 and 3 in wave 1: wave 0 passes at once.
        controller.handle_targeted(&[0, 3]);
        let next = controller.poll(100).expect("an empty wave advances");
        assert_eq!(next.current_wave, 1);
        assert_eq!(controller.poll(101), None, "wave 1 waits for its 3 devices");
    }

    #[test]
    fn binomial_tail_matches_exact_values() {
        // P(X >= 2 | 19, 0.02) = 1 - 0.98^19 - 19 * 0.02 * 0.98^18.
        let exact = 1.0 - 0.98f64.powi(19) - 19.0 * 0.02 * 0.98f64.powi(18);
        assert!((binomial_upper_tail(2, 19, 0.02) - exact).abs() < 1e-12);
        // P(X >= 10 | 10, 0.5) = 2^-10.
        assert!((binomial_upper_tail(10, 10, 0.5) - 1.0 / 1024.0).abs() < 1e-15);
        assert_eq!(binomial_upper_tail(0, 10, 0.5), 1.0);
        assert_eq!(binomial_upper_tail(11, 10, 0.5), 0.0);
        // Large n does not underflow: 5 % of a million, 6 % observed, is far out in the tail.
        let tail = binomial_upper_tail(60_000, 1_000_000, 0.05);
        assert!((0.0..1e-100).contains(&tail), "{tail}");
        let near = binomial_upper_tail(50_300, 1_000_000, 0.05);
        assert!(near > 0.05 && near < 0.1, "{near}");
    }

    #[test]
    fn reasons_fit_the_policy() {
        assert_eq!(reason("x".repeat(500)).len(), limits::MAX_HALT_REASON_BYTES);
        assert_eq!(percent(50_000), "5.0%");
        assert_eq!(percent(12_345), "1.2%");
    }
}
