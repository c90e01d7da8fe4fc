//! The zero-copy, validate-once view over policy bytes: what a device (MCU included) reads.

use super::{
    check_canaries, check_health, check_id, check_progress, check_release, check_state, check_waves, check_window,
    check_window_count, limits, HealthGate, Phase, PolicyError, PolicyField, RolloutRelease, Wave, FORMAT_VERSION,
    MAGIC,
};
use crate::rollout::window::Window;

/// Bytes of one wave entry.
const WAVE_BYTES: usize = 8;
/// Bytes of one canary entry.
const CANARY_BYTES: usize = 32;

/// Reads fields from the front of a byte slice, tracking the offset for errors.
#[derive(Clone)]
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], PolicyError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(PolicyError::Truncated { offset: self.offset })?;
        let out = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PolicyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, PolicyError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, PolicyError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn i16(&mut self) -> Result<i16, PolicyError> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, PolicyError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, PolicyError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, PolicyError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// A u8-length-prefixed UTF-8 string; limits are checked by the caller's rule.
    fn text(&mut self, field: PolicyField) -> Result<&'a str, PolicyError> {
        let len = self.u8()? as usize;
        core::str::from_utf8(self.take(len)?).map_err(|_| PolicyError::NotUtf8(field))
    }
    fn window(&mut self, index: usize) -> Result<Window<&'a str>, PolicyError> {
        let len = self.u8()? as usize;
        let site_pattern = core::str::from_utf8(self.take(len)?).map_err(|_| PolicyError::WindowPattern { index })?;
        Ok(Window {
            site_pattern,
            weekdays: self.u8()?,
            start_minute: self.u16()?,
            end_minute: self.u16()?,
            utc_offset_minutes: self.i16()?,
        })
    }
}

/// A checked view over policy bytes. [`PolicyView::parse`] validates everything; the
/// accessors then only read. No heap: this is what an MCU evaluates.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    bytes: &'a [u8],
    seq: u64,
    id: &'a str,
    release: (&'a str, &'a str, &'a str),
    phase: Phase,
    halt_code: u16,
    halt_reason: &'a str,
    current_wave: u8,
    wave_started_at: i64,
    health: HealthGate,
    max_concurrent_per_site: u32,
    waves: &'a [u8],
    canaries: &'a [u8],
    windows: &'a [u8],
    window_count: u8,
}

impl<'a> PolicyView<'a> {
    /// Validates `bytes` as a format-1 policy. Never panics, never allocates; reads at most
    /// the bytes given and refuses anything longer than [`limits::MAX_POLICY_BYTES`] implies.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PolicyError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>()? != MAGIC {
            return Err(PolicyError::BadMagic);
        }
        let format = r.u8()?;
        if format != FORMAT_VERSION {
            return Err(PolicyError::UnsupportedFormat(format));
        }
        let seq = r.u64()?;
        let id = r.text(PolicyField::RolloutId)?;
        check_id(id)?;
        let release = RolloutRelease {
            name: r.text(PolicyField::ReleaseName)?,
            version: r.text(PolicyField::Version)?,
            hw_class: r.text(PolicyField::HwClass)?,
        };
        check_release(&release)?;
        let state = r.u8()?;
        let phase = Phase::from_byte(state).ok_or(PolicyError::UnknownState(state))?;
        let halt_code = r.u16()?;
        let halt_reason = r.text(PolicyField::HaltReason)?;
        check_state(phase, halt_code, halt_reason)?;
        let current_wave = r.u8()?;
        let wave_started_at = r.i64()?;
        let health = HealthGate { max_failure_ppm: r.u32()?, min_reports: r.u32()? };
        check_health(health)?;
        let max_concurrent_per_site = r.u32()?;

        let wave_count = r.u8()? as usize;
        if wave_count == 0 || wave_count > limits::MAX_WAVES {
            return Err(PolicyError::WaveCount(wave_count));
        }
        let waves = r.take(wave_count * WAVE_BYTES)?;
        check_waves(Waves { raw: waves })?;
        check_progress(phase, current_wave as usize, wave_count)?;

        let canary_count = r.u8()? as usize;
        if canary_count > limits::MAX_CANARIES {
            return Err(PolicyError::CanaryCount(canary_count));
        }
        let canaries = r.take(canary_count * CANARY_BYTES)?;
        check_canaries(Canaries { raw: canaries })?;

        let window_count = r.u8()?;
        check_window_count(window_count as usize)?;
        let windows_start = r.offset;
        for index in 0..window_count as usize {
            check_window(index, &r.window(index)?)?;
        }
        let windows = &bytes[windows_start..r.offset];
        if r.offset != bytes.len() {
            return Err(PolicyError::TrailingBytes);
        }
        Ok(PolicyView {
            bytes,
            seq,
            id,
            release: (release.name, release.version, release.hw_class),
            phase,
            halt_code,
            halt_reason,
            current_wave,
            wave_started_at,
            health,
            max_concurrent_per_site,
            waves,
            canaries,
            windows,
            window_count,
        })
    }

    /// The bytes this view was checked over.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Sequence number: higher is newer; caches refuse a lower one.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The rollout's id (its TUF target is `rollouts/<id>.policy`).
    pub fn id(&self) -> &'a str {
        self.id
    }
    /// The release this rollout rolls out.
    pub fn release(&self) -> RolloutRelease<&'a str> {
        RolloutRelease { name: self.release.0, version: self.release.1, hw_class: self.release.2 }
    }
    /// Where the rollout stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// The halt's code and reason text, when halted.
    pub fn halt(&self) -> Option<(u16, &'a str)> {
        (self.phase == Phase::Halted).then_some((self.halt_code, self.halt_reason))
    }
    /// Index of the current wave (always a valid wave).
    pub fn current_wave(&self) -> usize {
        self.current_wave as usize
    }
    /// When the current wave started, unix seconds.
    pub fn wave_started_at(&self) -> i64 {
        self.wave_started_at
    }
    /// The health gate.
    pub fn health(&self) -> HealthGate {
        self.health
    }
    /// Most devices of one site installing at once; 0 means no limit.
    pub fn max_concurrent_per_site(&self) -> u32 {
        self.max_concurrent_per_site
    }
    /// The waves, in order (at least one; the last reaches the whole fleet).
    pub fn waves(&self) -> Waves<'a> {
        Waves { raw: self.waves }
    }
    /// The wave at `index`.
    pub fn wave(&self, index: usize) -> Option<Wave> {
        self.waves().nth(index)
    }
    /// Canary device keys (wave 0 regardless of their bucket).
    pub fn canaries(&self) -> Canaries<'a> {
        Canaries { raw: self.canaries }
    }
    /// Whether `device_id` is a canary.
    pub fn is_canary(&self, device_id: &[u8; 32]) -> bool {
        self.canaries().any(|c| c == device_id)
    }
    /// Maintenance windows, in order.
    pub fn windows(&self) -> Windows<'a> {
        Windows { reader: Reader::new(self.windows), left: self.window_count as usize }
    }
}

/// The waves of a [`PolicyView`].
#[derive(Debug, Clone)]
pub struct Waves<'a> {
    raw: &'a [u8],
}

impl Iterator for Waves<'_> {
    type Item = Wave;
    fn next(&mut self) -> Option<Wave> {
        let (entry, rest) = self.raw.split_first_chunk::<WAVE_BYTES>()?;
        self.raw = rest;
        let (ppm, soak) = entry.split_at(4);
        Some(Wave {
            cumulative_ppm: u32::from_le_bytes(ppm.try_into().ok()?),
            min_soak_secs: u32::from_le_bytes(soak.try_into().ok()?),
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.raw.len() / WAVE_BYTES;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Waves<'_> {}

/// The canary keys of a [`PolicyView`].
#[derive(Debug, Clone)]
pub struct Canaries<'a> {
    raw: &'a [u8],
}

impl<'a> Iterator for Canaries<'a> {
    type Item = &'a [u8; 32];
    fn next(&mut self) -> Option<&'a [u8; 32]> {
        let (key, rest) = self.raw.split_first_chunk::<CANARY_BYTES>()?;
        self.raw = rest;
        Some(key)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.raw.len() / CANARY_BYTES;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Canaries<'_> {}

/// The maintenance windows of a [`PolicyView`].
#[derive(Clone)]
pub struct Windows<'a> {
    reader: Reader<'a>,
    left: usize,
}

impl core::fmt::Debug for Windows<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl<'a> Iterator for Windows<'a> {
    type Item = Window<&'a str>;
    fn next(&mut self) -> Option<Window<&'a str>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked by `parse`, so this cannot fail; a failure would end the iteration early.
        self.reader.window(0).ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Windows<'_> {}
