//! Which wave a device is in: a stable bucket from a hash of (rollout id, device id).
//!
//! Every party computes the same bucket from public inputs — the device for itself, the
//! edge node and the controller for counting — so nobody has to be told a device's wave, and
//! nobody can lie about it. The rollout id is part of the hash so that each rollout picks a
//! different first 1% (the same unlucky devices are not always the guinea pigs), while a
//! device keeps its bucket for the whole of one rollout.

use super::policy::{limits, PolicyView, Wave};

/// blake3 `derive_key` context: a bucket hash can never equal any other hash otamesh makes.
const BUCKET_CONTEXT: &str = "otamesh 2024 rollout bucket v1";

/// The device's bucket in `0..1_000_000` for this rollout. The encoding hashed is
/// `len(rollout_id) u8 | rollout_id | device_id`, so no two (id, device) pairs collide by
/// concatenation.
pub fn bucket(rollout_id: &str, device_id: &[u8; 32]) -> u32 {
    let mut hasher = blake3::Hasher::new_derive_key(BUCKET_CONTEXT);
    // Validated rollout ids are at most 64 bytes, so the length fits its byte.
    hasher.update(&[rollout_id.len().min(255) as u8]);
    hasher.update(rollout_id.as_bytes());
    hasher.update(device_id);
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    // Multiply-shift instead of modulo: maps the 64-bit value onto 0..1e6 with no bias worth
    // the name (at most one part in 2^44) and no division.
    ((u64::from_le_bytes(first) as u128 * limits::FULL_PPM as u128) >> 64) as u32
}

/// The wave `device_id` belongs to in `policy`: 0 for a canary, else the first wave whose
/// cumulative share is above the device's bucket. Always `Some` for a validated policy (the
/// last wave reaches 1,000,000); `None` only if waves stop short of the whole fleet.
pub fn wave_of(policy: &PolicyView<'_>, device_id: &[u8; 32]) -> Option<usize> {
    wave_of_parts(policy.id(), policy.is_canary(device_id), policy.waves(), device_id)
}

/// Whether `device_id` may install under `policy` now: its wave has started and the
/// rollout is running or complete. (Windows and edge holds are the gate's.)
pub fn is_eligible(policy: &PolicyView<'_>, device_id: &[u8; 32]) -> bool {
    policy.phase().allows_installs() && wave_of(policy, device_id).is_some_and(|w| w <= policy.current_wave())
}

/// [`wave_of`] over the parts, shared by the view and the owned policy.
pub(crate) fn wave_of_parts(
    rollout_id: &str,
    is_canary: bool,
    waves: impl Iterator<Item = Wave>,
    device_id: &[u8; 32],
) -> Option<usize> {
    if is_canary {
        return Some(0);
    }
    let bucket = bucket(rollout_id, device_id);
    waves.enumerate().find(|(_, w)| w.cumulative_ppm > bucket).map(|(i, _)| i)
}
