//! The signed rollout policy: which release rolls out to which share of the fleet, how fast,
//! when devices may switch slots, and whether the rollout runs at all.
//!
//! The policy is a TUF target of the delegated `rollouts` role (`rollouts/<id>.policy`), so
//! devices verify it before reading it. It is binary, like the manifest, because an MCU reads
//! it in place without a heap: [`PolicyView::parse`] checks every field and bound once, after
//! which the accessors cannot fail. [`RolloutPolicy`] (feature `alloc`) is the owned form
//! the seeder's controller edits; its `encode` refuses exactly what `parse` refuses, so the
//! publisher cannot sign a policy devices would reject.
//!
//! Wire layout, format 1, integers little-endian, strings UTF-8 with a u8 length:
//!
//! ```text
//! magic "OTRP" | format u8 = 1 | seq u64
//! rollout_id (1..=64, [A-Za-z0-9._-])
//! release name (1..=64) | version (1..=32) | hw_class (1..=32)
//! state u8 (0 running, 1 paused, 2 halted, 3 aborted, 4 complete)
//!   | halt_code u16 | halt_reason (0..=128)          (code 0 and no text unless halted)
//! current_wave u8 | wave_started_at i64 (unix seconds)
//! max_failure_ppm u32 (<= 1_000_000) | min_reports u32 (>= 1) | max_concurrent_per_site u32
//! wave_count u8 (1..=16)   × { cumulative_ppm u32 | min_soak_secs u32 }
//! canary_count u8 (0..=32) × { ed25519 public key [32] }
//! window_count u8 (0..=16) × { site_pattern (1..=64) | weekdays u8 | start_minute u16
//!                              | end_minute u16 | utc_offset_minutes i16 }
//! ```
//!
//! Nothing may follow the last window: one encoding per policy, so the signature over the
//! bytes pins every field.
//!
//! `seq` grows with every change the publisher signs; whoever caches a policy (edge nodes,
//! devices) keeps the highest and refuses a lower one, so a replayed older policy (say, a
//! `Running` from before a halt) cannot undo a newer decision.
//!
//! Goals: bounded, panic-free parsing of hostile bytes; errors name the field (and index)
//! that was wrong in one line the seeder can print. Non-goals: extensibility inside format 1
//! (a new layout gets a new format byte), the TUF delegation itself.

#[cfg(feature = "alloc")]
mod owned;
mod view;

#[cfg(feature = "alloc")]
pub use owned::{RolloutPolicy, RolloutState};
pub use view::{Canaries, PolicyView, Waves, Windows};

use super::window::Window;

/// The four bytes every policy starts with.
pub const MAGIC: [u8; 4] = *b"OTRP";
/// The only layout this code reads and writes.
pub const FORMAT_VERSION: u8 = 1;

/// Hard limits on a policy; parsing refuses anything beyond them.
pub mod limits {
    /// Longest rollout id.
    pub const MAX_ID_BYTES: usize = 64;
    /// Longest release name (the manifest's limit).
    pub const MAX_NAME_BYTES: usize = 64;
    /// Longest version (the manifest's limit).
    pub const MAX_VERSION_BYTES: usize = 32;
    /// Longest hardware class (the manifest's limit).
    pub const MAX_HW_CLASS_BYTES: usize = 32;
    /// Longest halt reason text.
    pub const MAX_HALT_REASON_BYTES: usize = 128;
    /// Longest site-name pattern of a maintenance window.
    pub const MAX_PATTERN_BYTES: usize = 64;
    /// Most waves.
    pub const MAX_WAVES: usize = 16;
    /// Most canary devices.
    pub const MAX_CANARIES: usize = 32;
    /// Most maintenance windows.
    pub const MAX_WINDOWS: usize = 16;
    /// The whole fleet, in parts per million.
    pub const FULL_PPM: u32 = 1_000_000;
    /// Minutes in a day; window minutes are below it.
    pub const MINUTES_PER_DAY: u16 = 1440;
    /// Furthest UTC offset of a window, either side (14 h: Kiribati is UTC+14).
    pub const MAX_UTC_OFFSET_MINUTES: i16 = 14 * 60;
    /// Longest encoded policy: every field at its limit.
    pub const MAX_POLICY_BYTES: usize = 4
        + 1
        + 8
        + (1 + MAX_ID_BYTES)
        + (1 + MAX_NAME_BYTES)
        + (1 + MAX_VERSION_BYTES)
        + (1 + MAX_HW_CLASS_BYTES)
        + 1
        + 2
        + (1 + MAX_HALT_REASON_BYTES)
        + 1
        + 8
        + 12
        + 1
        + MAX_WAVES * 8
        + 1
        + MAX_CANARIES * 32
        + 1
        + MAX_WINDOWS * (1 + MAX_PATTERN_BYTES + 7);
}

/// Where a rollout stands, without the halt's details (those are
/// [`PolicyView::halt`]'s). Devices install only while `Running` or `Complete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waves advance as the health gate allows.
    Running,
    /// An operator stopped new installs; resumable.
    Paused,
    /// The health gate (or an operator) stopped new installs after failures; resumable.
    Halted,
    /// Stopped for good; a new rollout replaces it.
    Aborted,
    /// Every wave passed: the whole fleet may install.
    Complete,
}

impl Phase {
    fn from_byte(byte: u8) -> Option<Phase> {
        Some(match byte {
            0 => Phase::Running,
            1 => Phase::Paused,
            2 => Phase::Halted,
            3 => Phase::Aborted,
            4 => Phase::Complete,
            _ => return None,
        })
    }
    /// The byte the policy encoding stores.
    pub fn to_byte(self) -> u8 {
        match self {
            Phase::Running => 0,
            Phase::Paused => 1,
            Phase::Halted => 2,
            Phase::Aborted => 3,
            Phase::Complete => 4,
        }
    }
    /// Lowercase name, as the seeder prints it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Halted => "halted",
            Phase::Aborted => "aborted",
            Phase::Complete => "complete",
        }
    }
    /// Whether devices in a current wave may start installs.
    pub fn allows_installs(self) -> bool {
        matches!(self, Phase::Running | Phase::Complete)
    }
}

/// The release a rollout rolls out, as the manifest names it. A device takes an offer from
/// this rollout only if the offer's manifest matches all three ([`RolloutRelease::matches`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RolloutRelease<S> {
    /// Release name.
    pub name: S,
    /// Version.
    pub version: S,
    /// Hardware class.
    pub hw_class: S,
}

impl<S: AsRef<str>> RolloutRelease<S> {
    /// Whether a manifest with these fields is the release this rollout names.
    pub fn matches(&self, name: &str, version: &str, hw_class: &str) -> bool {
        self.name.as_ref() == name && self.version.as_ref() == version && self.hw_class.as_ref() == hw_class
    }
}

/// One wave: the share of the fleet that may install once this wave is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wave {
    /// Cumulative share of the fleet in parts per million: wave `i` holds the devices whose
    /// bucket is below this and at or above the previous wave's.
    pub cumulative_ppm: u32,
    /// Least time the wave must run before the next one starts.
    pub min_soak_secs: u32,
}

/// When the controller may judge a wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HealthGate {
    /// Highest acceptable share of failed installs (rolled back or failed), parts per million.
    pub max_failure_ppm: u32,
    /// Final outcomes a wave needs before it may advance, and before a failure rate is judged.
    pub min_reports: u32,
}

/// Which text field an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    /// The rollout id.
    RolloutId,
    /// The release name.
    ReleaseName,
    /// The release version.
    Version,
    /// The hardware class.
    HwClass,
    /// The halt reason.
    HaltReason,
}

impl PolicyField {
    fn name(self) -> &'static str {
        match self {
            PolicyField::RolloutId => "rollout id",
            PolicyField::ReleaseName => "release name",
            PolicyField::Version => "release version",
            PolicyField::HwClass => "hardware class",
            PolicyField::HaltReason => "halt reason",
        }
    }
}

/// Why policy bytes (or an owned policy) were refused. Indexes are 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyError {
    /// The bytes end before a field that starts at this offset.
    Truncated {
        /// Offset of the field that did not fit.
        offset: usize,
    },
    /// Does not start with `OTRP`.
    BadMagic,
    /// A format this code does not read.
    UnsupportedFormat(u8),
    /// Bytes after the last window.
    TrailingBytes,
    /// A text field is too long, or empty where it must not be.
    FieldLength(PolicyField),
    /// A text field is not UTF-8.
    NotUtf8(PolicyField),
    /// The rollout id has a character outside `[A-Za-z0-9._-]`.
    IdCharacter,
    /// An unknown state byte.
    UnknownState(u8),
    /// A halt code or reason on a policy that is not halted.
    HaltOutsideHalted,
    /// No waves, or more than [`limits::MAX_WAVES`].
    WaveCount(usize),
    /// A wave's cumulative share is not above the previous wave's (or is zero).
    WavesNotIncreasing {
        /// The wave.
        index: usize,
    },
    /// A wave's cumulative share is above 1,000,000 ppm.
    WaveOverFullFleet {
        /// The wave.
        index: usize,
    },
    /// The last wave does not reach the whole fleet (1,000,000 ppm).
    LastWaveNotFullFleet,
    /// The current wave is not one of the waves.
    CurrentWave {
        /// The current wave index.
        current: usize,
        /// How many waves there are.
        waves: usize,
    },
    /// Complete while an earlier wave is current.
    CompleteBeforeLastWave,
    /// More than [`limits::MAX_CANARIES`] canaries.
    CanaryCount(usize),
    /// A canary key listed twice.
    DuplicateCanary {
        /// The second occurrence.
        index: usize,
    },
    /// The failure threshold is above 1,000,000 ppm.
    FailureRate(u32),
    /// `min_reports` is zero: the gate would judge a wave on no outcome at all.
    MinReports,
    /// More than [`limits::MAX_WINDOWS`] windows.
    WindowCount(usize),
    /// A window's site pattern is empty, too long, or not UTF-8.
    WindowPattern {
        /// The window.
        index: usize,
    },
    /// A window's weekday mask is empty (never opens) or has bits above Sunday.
    WindowWeekdays {
        /// The window.
        index: usize,
    },
    /// A window's start or end minute is not below 1440.
    WindowMinute {
        /// The window.
        index: usize,
    },
    /// A window starts and ends at the same minute: it never opens.
    WindowNeverOpens {
        /// The window.
        index: usize,
    },
    /// A window's UTC offset is beyond ±14 h.
    WindowOffset {
        /// The window.
        index: usize,
    },
}

impl core::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use PolicyError::*;
        match self {
            Truncated { offset } => write!(f, "rollout policy truncated at byte {offset}"),
            BadMagic => f.write_str("not an otamesh rollout policy (bad magic)"),
            UnsupportedFormat(v) => write!(f, "rollout policy format {v} is not supported"),
            TrailingBytes => f.write_str("rollout policy has bytes after its last window"),
            FieldLength(field) => write!(f, "rollout policy {}: empty or too long", field.name()),
            NotUtf8(field) => write!(f, "rollout policy {}: not UTF-8", field.name()),
            IdCharacter => f.write_str("rollout policy rollout id: only A-Z a-z 0-9 . _ - are allowed"),
            UnknownState(s) => write!(f, "rollout policy state: unknown value {s}"),
            HaltOutsideHalted => f.write_str("rollout policy state: a halt code or reason without the halted state"),
            WaveCount(n) => write!(f, "rollout policy waves: {n} given, 1 to {} allowed", limits::MAX_WAVES),
            WavesNotIncreasing { index } => {
                write!(
                    f,
                    "rollout policy waves[{index}]: cumulative fraction must be above the previous wave's and above 0"
                )
            }
            WaveOverFullFleet { index } => {
                write!(f, "rollout policy waves[{index}]: cumulative fraction is above 1000000 ppm")
            }
            LastWaveNotFullFleet => f.write_str("rollout policy waves: the last wave must reach 1000000 ppm"),
            CurrentWave { current, waves } => {
                write!(f, "rollout policy current wave: {current} is not one of the {waves} waves")
            }
            CompleteBeforeLastWave => f.write_str("rollout policy state: complete before the last wave"),
            CanaryCount(n) => write!(f, "rollout policy canaries: {n} given, at most {}", limits::MAX_CANARIES),
            DuplicateCanary { index } => write!(f, "rollout policy canaries[{index}]: listed twice"),
            FailureRate(v) => write!(f, "rollout policy health gate: max failure rate {v} ppm is above 1000000"),
            MinReports => f.write_str("rollout policy health gate: min reports must be at least 1"),
            WindowCount(n) => write!(f, "rollout policy windows: {n} given, at most {}", limits::MAX_WINDOWS),
            WindowPattern { index } => write!(
                f,
                "rollout policy windows[{index}]: site pattern must be 1 to {} bytes of UTF-8",
                limits::MAX_PATTERN_BYTES
            ),
            WindowWeekdays { index } => {
                write!(f, "rollout policy windows[{index}]: weekday mask must name at least one day and only bits 0-6")
            }
            WindowMinute { index } => {
                write!(f, "rollout policy windows[{index}]: start and end minute must be below 1440")
            }
            WindowNeverOpens { index } => {
                write!(f, "rollout policy windows[{index}]: start equals end, the window never opens")
            }
            WindowOffset { index } => write!(f, "rollout policy windows[{index}]: UTC offset beyond ±14 h"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PolicyError {}

// The rules below are the one definition of a valid policy: the view applies them while it
// parses, the owned policy before it encodes.

fn check_text(text: &str, field: PolicyField, min: usize, max: usize) -> Result<(), PolicyError> {
    if text.len() < min || text.len() > max {
        return Err(PolicyError::FieldLength(field));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), PolicyError> {
    check_text(id, PolicyField::RolloutId, 1, limits::MAX_ID_BYTES)?;
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(PolicyError::IdCharacter);
    }
    Ok(())
}

fn check_release(release: &RolloutRelease<&str>) -> Result<(), PolicyError> {
    check_text(release.name, PolicyField::ReleaseName, 1, limits::MAX_NAME_BYTES)?;
    check_text(release.version, PolicyField::Version, 1, limits::MAX_VERSION_BYTES)?;
    check_text(release.hw_class, PolicyField::HwClass, 1, limits::MAX_HW_CLASS_BYTES)
}

fn check_state(phase: Phase, halt_code: u16, halt_reason: &str) -> Result<(), PolicyError> {
    check_text(halt_reason, PolicyField::HaltReason, 0, limits::MAX_HALT_REASON_BYTES)?;
    if phase != Phase::Halted && (halt_code != 0 || !halt_reason.is_empty()) {
        return Err(PolicyError::HaltOutsideHalted);
    }
    Ok(())
}

fn check_waves(waves: impl ExactSizeIterator<Item = Wave>) -> Result<(), PolicyError> {
    let count = waves.len();
    if count == 0 || count > limits::MAX_WAVES {
        return Err(PolicyError::WaveCount(count));
    }
    let mut previous = 0u32;
    for (index, wave) in waves.enumerate() {
        if wave.cumulative_ppm > limits::FULL_PPM {
            return Err(PolicyError::WaveOverFullFleet { index });
        }
        if wave.cumulative_ppm <= previous {
            return Err(PolicyError::WavesNotIncreasing { index });
        }
        previous = wave.cumulative_ppm;
    }
    if previous != limits::FULL_PPM {
        return Err(PolicyError::LastWaveNotFullFleet);
    }
    Ok(())
}

fn check_progress(phase: Phase, current: usize, waves: usize) -> Result<(), PolicyError> {
    if current >= waves {
        return Err(PolicyError::CurrentWave { current, waves });
    }
    if phase == Phase::Complete && current + 1 != waves {
        return Err(PolicyError::CompleteBeforeLastWave);
    }
    Ok(())
}

fn check_health(health: HealthGate) -> Result<(), PolicyError> {
    if health.max_failure_ppm > limits::FULL_PPM {
        return Err(PolicyError::FailureRate(health.max_failure_ppm));
    }
    if health.min_reports == 0 {
        return Err(PolicyError::MinReports);
    }
    Ok(())
}

/// Canary keys: at most 32, none twice. Quadratic, but 32 × 32 comparisons of 32 bytes.
fn check_canaries<'k>(canaries: impl ExactSizeIterator<Item = &'k [u8; 32]> + Clone) -> Result<(), PolicyError> {
    let count = canaries.len();
    if count > limits::MAX_CANARIES {
        return Err(PolicyError::CanaryCount(count));
    }
    for (index, key) in canaries.clone().enumerate() {
        if canaries.clone().take(index).any(|earlier| earlier == key) {
            return Err(PolicyError::DuplicateCanary { index });
        }
    }
    Ok(())
}

fn check_window(index: usize, window: &Window<&str>) -> Result<(), PolicyError> {
    if window.site_pattern.is_empty() || window.site_pattern.len() > limits::MAX_PATTERN_BYTES {
        return Err(PolicyError::WindowPattern { index });
    }
    if window.weekdays == 0 || window.weekdays & 0x80 != 0 {
        return Err(PolicyError::WindowWeekdays { index });
    }
    if window.start_minute >= limits::MINUTES_PER_DAY || window.end_minute >= limits::MINUTES_PER_DAY {
        return Err(PolicyError::WindowMinute { index });
    }
    if window.start_minute == window.end_minute {
        return Err(PolicyError::WindowNeverOpens { index });
    }
    if window.utc_offset_minutes.unsigned_abs() > limits::MAX_UTC_OFFSET_MINUTES as u16 {
        return Err(PolicyError::WindowOffset { index });
    }
    // Any UTF-8 pattern is a valid glob: `*` is the only special character.
    Ok(())
}

fn check_window_count(count: usize) -> Result<(), PolicyError> {
    if count > limits::MAX_WINDOWS {
        return Err(PolicyError::WindowCount(count));
    }
    Ok(())
}
