//! The owned policy the seeder's controller edits, signs and hosts decode.

use alloc::string::String;
use alloc::vec::Vec;

use super::{
    check_canaries, check_health, check_id, check_progress, check_release, check_state, check_waves, check_window,
    check_window_count, HealthGate, Phase, PolicyError, PolicyView, RolloutRelease, Wave, FORMAT_VERSION, MAGIC,
};
use crate::rollout::window::Window;

/// Where a rollout stands, with the halt's details.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RolloutState {
    /// Waves advance as the health gate allows.
    Running,
    /// An operator stopped new installs.
    Paused,
    /// Stopped after failures.
    Halted {
        /// Machine-readable reason (see [`crate::rollout::controller::halt_code`]).
        code: u16,
        /// One line for operators, at most 128 bytes.
        reason: String,
    },
    /// Stopped for good.
    Aborted,
    /// Every wave passed.
    Complete,
}

impl RolloutState {
    /// The state without the halt's details.
    pub fn phase(&self) -> Phase {
        match self {
            RolloutState::Running => Phase::Running,
            RolloutState::Paused => Phase::Paused,
            RolloutState::Halted { .. } => Phase::Halted,
            RolloutState::Aborted => Phase::Aborted,
            RolloutState::Complete => Phase::Complete,
        }
    }
}

/// A rollout policy with owned fields. `encode` then [`PolicyView::parse`] round-trips, and
/// `encode` refuses exactly what `parse` refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// The rollout's id, 1 to 64 bytes of `[A-Za-z0-9._-]`.
    pub id: String,
    /// The release it rolls out.
    pub release: RolloutRelease<String>,
    /// Sequence number, one higher with every signed change.
    pub seq: u64,
    /// 1 to 16 waves, cumulative shares strictly increasing, the last at 1,000,000 ppm.
    pub waves: Vec<Wave>,
    /// Up to 32 canary device keys (ed25519 public keys), all in wave 0.
    pub canaries: Vec<[u8; 32]>,
    /// When a wave may advance, and when failures halt the rollout.
    pub health: HealthGate,
    /// Up to 16 maintenance windows; none means slot switches may happen any time.
    pub windows: Vec<Window<String>>,
    /// Most devices of one site installing at once; 0 means no limit.
    pub max_concurrent_per_site: u32,
    /// Where the rollout stands.
    pub state: RolloutState,
    /// Index of the current wave.
    pub current_wave: usize,
    /// When the current wave started, unix seconds.
    pub wave_started_at: i64,
}

impl RolloutPolicy {
    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, PolicyError> {
        Ok(Self::from_view(&PolicyView::parse(bytes)?))
    }

    /// Copies a checked view into owned fields.
    pub fn from_view(view: &PolicyView<'_>) -> Self {
        let release = view.release();
        let state = match view.phase() {
            Phase::Running => RolloutState::Running,
            Phase::Paused => RolloutState::Paused,
            Phase::Halted => {
                let (code, reason) = view.halt().unwrap_or((0, ""));
                RolloutState::Halted { code, reason: reason.into() }
            }
            Phase::Aborted => RolloutState::Aborted,
            Phase::Complete => RolloutState::Complete,
        };
        RolloutPolicy {
            id: view.id().into(),
            release: RolloutRelease {
                name: release.name.into(),
                version: release.version.into(),
                hw_class: release.hw_class.into(),
            },
            seq: view.seq(),
            waves: view.waves().collect(),
            canaries: view.canaries().copied().collect(),
            health: view.health(),
            windows: view.windows().map(|w| w.to_owned()).collect(),
            max_concurrent_per_site: view.max_concurrent_per_site(),
            state,
            current_wave: view.current_wave(),
            wave_started_at: view.wave_started_at(),
        }
    }

    /// Checks every rule devices apply; the error names the first bad field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_id(&self.id)?;
        check_release(&self.release.as_str())?;
        let (code, reason) = self.halt_parts();
        check_state(self.state.phase(), code, reason)?;
        check_health(self.health)?;
        check_waves(self.waves.iter().copied())?;
        check_progress(self.state.phase(), self.current_wave, self.waves.len())?;
        check_canaries(self.canaries.iter())?;
        check_window_count(self.windows.len())?;
        for (index, window) in self.windows.iter().enumerate() {
            check_window(index, &window.as_str())?;
        }
        Ok(())
    }

    /// The signed form. Validates first, so a policy that encodes is one devices accept.
    pub fn encode(&self) -> Result<Vec<u8>, PolicyError> {
        self.validate()?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.seq.to_le_bytes());
        // Every length below was checked by `validate` to fit its u8 prefix.
        put_text(&mut out, &self.id);
        put_text(&mut out, &self.release.name);
        put_text(&mut out, &self.release.version);
        put_text(&mut out, &self.release.hw_class);
        let (code, reason) = self.halt_parts();
        out.push(self.state.phase().to_byte());
        out.extend_from_slice(&code.to_le_bytes());
        put_text(&mut out, reason);
        out.push(self.current_wave as u8);
        out.extend_from_slice(&self.wave_started_at.to_le_bytes());
        out.extend_from_slice(&self.health.max_failure_ppm.to_le_bytes());
        out.extend_from_slice(&self.health.min_reports.to_le_bytes());
        out.extend_from_slice(&self.max_concurrent_per_site.to_le_bytes());
        out.push(self.waves.len() as u8);
        for wave in &self.waves {
            out.extend_from_slice(&wave.cumulative_ppm.to_le_bytes());
            out.extend_from_slice(&wave.min_soak_secs.to_le_bytes());
        }
        out.push(self.canaries.len() as u8);
        for key in &self.canaries {
            out.extend_from_slice(key);
        }
        out.push(self.windows.len() as u8);
        for window in &self.windows {
            put_text(&mut out, &window.site_pattern);
            out.push(window.weekdays);
            out.extend_from_slice(&window.start_minute.to_le_bytes());
            out.extend_from_slice(&window.end_minute.to_le_bytes());
            out.extend_from_slice(&window.utc_offset_minutes.to_le_bytes());
        }
        Ok(out)
    }

    /// The wave `device_id` belongs to (see [`crate::rollout::select::wave_of`]).
    pub fn wave_of(&self, device_id: &[u8; 32]) -> Option<usize> {
        crate::rollout::select::wave_of_parts(
            &self.id,
            self.canaries.iter().any(|c| c == device_id),
            self.waves.iter().copied(),
            device_id,
        )
    }

    /// The same policy at the next sequence number in `state`: what the controller signs
    /// for every change.
    pub(crate) fn next(&self, state: RolloutState) -> RolloutPolicy {
        RolloutPolicy { seq: self.seq.saturating_add(1), state, ..self.clone() }
    }

    fn halt_parts(&self) -> (u16, &str) {
        match &self.state {
            RolloutState::Halted { code, reason } => (*code, reason.as_str()),
            _ => (0, ""),
        }
    }
}

impl RolloutRelease<String> {
    /// Borrowed form.
    pub fn as_str(&self) -> RolloutRelease<&str> {
        RolloutRelease { name: &self.name, version: &self.version, hw_class: &self.hw_class }
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}
