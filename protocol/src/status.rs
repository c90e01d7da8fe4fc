//! Device status reports: what a device says about itself (installed release, install state,
//! progress, last error, health), signed with the device's ed25519 key, sent to an edge node
//! and from there upstream.
//!
//! Wire form (JSON, at most [`MAX_REPORT_BYTES`]):
//! `{"signed": "<the report as a JSON string>", "signature": "<128 hex>"}`. The signature
//! covers exactly the bytes of the `signed` string, so a verifier never depends on how a JSON
//! library re-serializes an object. [`StatusReport`] is the one typed shape shared by the
//! device that writes a report and every node that reads one.
//!
//! A report proves only that the holder of a device key wrote it. Which keys belong to the
//! fleet (enrollment) is the control plane's business; what an edge node can decide alone is
//! in [`ReportGate`]: reject replays (each device numbers its reports, [`StatusReport::seq`],
//! and only a higher number is accepted), and bound what one client address can make it hold
//! or do (a token bucket per address, a quota of device keys per address, a cap on devices
//! overall), so nobody can forge reports for made-up devices fast enough to evict real ones.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

pub use crate::rollout::InstallResult;
use crate::sig::{Ed25519PublicKey, SigError};
use crate::time::{Duration, Instant};

/// Largest signed report accepted (the device wire's status limit is larger; reports are a
/// few hundred bytes).
pub const MAX_REPORT_BYTES: usize = 8 * 1024;

/// What a device reports. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The device's ed25519 public key, hex: its identity.
    pub device: String,
    /// Report number, strictly increasing per device across restarts: replays of an older
    /// report are rejected.
    pub seq: u64,
    /// The release name the device follows.
    pub release: String,
    /// Installed version.
    pub version: String,
    /// Installed release id (hex).
    pub installed_id: String,
    /// Active slot name.
    pub active_slot: String,
    /// Install engine state name.
    pub state: String,
    /// The release being installed, if any.
    pub target: Option<ReportTarget>,
    /// Download progress.
    pub progress: ReportProgress,
    /// Last install error name, if any.
    pub error: Option<String>,
    /// Last health-check result, if any.
    pub health: Option<String>,
    /// Anti-rollback floor (security counter).
    pub security_floor: u64,
    /// The device's clock (unix seconds) when it wrote the report; informational.
    pub time: i64,
    // Rollout fields (all optional and defaulted, so reports from devices that predate
    // rollouts still parse, and skipped when empty, so such devices' reports stay as small).
    /// The rollout id the device installs under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Where the install under `rollout` stands, as the rollout controller counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<InstallResult>,
    /// The install engine's error code ([`crate::install::ErrorCode`]) for a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u16>,
    /// Seconds from the download's start to the commit or rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_secs: Option<u64>,
    /// The slot the install targets (`"a"` or `"b"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// The release a device is moving to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportTarget {
    /// Version.
    pub version: String,
    /// Release id (hex).
    pub id: String,
}

/// Chunk-level progress of the current or last download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportProgress {
    /// Chunks in the slot and verified.
    pub chunks_done: u32,
    /// Chunks in the release.
    pub chunk_count: u32,
    /// Bytes fetched from edges.
    pub bytes_fetched: u64,
    /// Bytes reused from the active slot.
    pub bytes_reused: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope<S> {
    signed: S,
    signature: S,
}

/// Why a report was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// Longer than [`MAX_REPORT_BYTES`].
    TooLarge,
    /// Not the envelope or not a report.
    Malformed,
    /// The device key is not a valid ed25519 key.
    BadKey,
    /// The signature does not verify under the report's device key.
    BadSignature,
    /// A report with this or a higher `seq` was already accepted from the device.
    Replay {
        /// The highest accepted.
        last_seq: u64,
    },
    /// The client address sends reports faster than its allowance.
    RateLimited,
    /// The client address already speaks for as many devices as it may.
    TooManyDevices,
}

impl core::fmt::Display for ReportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReportError::TooLarge => write!(f, "status report larger than {MAX_REPORT_BYTES} bytes"),
            ReportError::Malformed => f.write_str("status report is malformed"),
            ReportError::BadKey => f.write_str("status report's device key is invalid"),
            ReportError::BadSignature => f.write_str("status report's signature does not verify"),
            ReportError::Replay { last_seq } => write!(f, "status report replayed (seq <= {last_seq})"),
            ReportError::RateLimited => f.write_str("too many status reports from this address"),
            ReportError::TooManyDevices => f.write_str("too many devices reporting from this address"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ReportError {}

/// A report whose signature verified, with its device key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReport {
    /// The device key that signed it.
    pub device: [u8; 32],
    /// The report.
    pub report: StatusReport,
}

impl StatusReport {
    /// The signed wire form. `sign` is the device's ed25519 signing function (the key stays
    /// with the caller; this crate only verifies).
    pub fn to_signed(&self, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> Vec<u8> {
        let signed = serde_json::to_string(self).unwrap_or_default();
        let signature = crate::hex::encode(&sign(signed.as_bytes()));
        serde_json::to_vec(&Envelope { signed, signature }).unwrap_or_default()
    }
}

/// Checks a signed report: size, shape, device key and signature. Replay and rate decisions
/// are [`ReportGate`]'s.
pub fn verify(bytes: &[u8]) -> Result<VerifiedReport, ReportError> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge);
    }
    let envelope: Envelope<String> = serde_json::from_slice(bytes).map_err(|_| ReportError::Malformed)?;
    let report: StatusReport = serde_json::from_str(&envelope.signed).map_err(|_| ReportError::Malformed)?;
    let device = crate::hex::decode_array::<32>(&report.device).map_err(|_| ReportError::BadKey)?;
    let signature = crate::hex::decode_array::<64>(&envelope.signature).map_err(|_| ReportError::BadSignature)?;
    let key = Ed25519PublicKey::from_bytes(&device).map_err(|_| ReportError::BadKey)?;
    key.verify(envelope.signed.as_bytes(), &signature).map_err(|e| match e {
        SigError::BadKey => ReportError::BadKey,
        _ => ReportError::BadSignature,
    })?;
    Ok(VerifiedReport { device, report })
}

/// Bounds of a [`ReportGate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Devices remembered (their newest report and sequence number). Past it the device heard
    /// from longest ago is forgotten.
    pub max_devices: usize,
    /// Client addresses with a rate allowance. Past it the address heard from longest ago is
    /// forgotten (it starts again with a full bucket).
    pub max_clients: usize,
    /// Distinct device keys one client address may report for: devices on a LAN each have
    /// their own address, so a few suffice (a gateway reporting for devices behind it needs
    /// more; configurable).
    pub devices_per_client: usize,
    /// Sustained reports per second per client address.
    pub reports_per_sec_per_client: u32,
    /// Burst of reports per client address.
    pub burst_per_client: u32,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            max_devices: 16_384,
            max_clients: 4_096,
            devices_per_client: 16,
            reports_per_sec_per_client: 2,
            burst_per_client: 20,
        }
    }
}

#[derive(Debug, Clone)]
struct DeviceEntry<C> {
    client: C,
    last_seen: Instant,
    report: StatusReport,
}

#[derive(Debug, Clone)]
struct ClientEntry {
    /// Tokens times one million (micro-tokens), refilled continuously.
    micro_tokens: u64,
    refilled: Instant,
    devices: usize,
}

/// Admission of verified reports at an edge node, keyed by client address `C`: replay
/// rejection by per-device sequence numbers, a token bucket per client address, a device
/// quota per address, and a bounded memory of devices. Sans-IO: time is an input.
#[derive(Debug, Clone)]
pub struct ReportGate<C: Ord + Clone> {
    limits: ReportLimits,
    devices: BTreeMap<[u8; 32], DeviceEntry<C>>,
    clients: BTreeMap<C, ClientEntry>,
}

impl<C: Ord + Clone> ReportGate<C> {
    /// An empty gate.
    pub fn new(limits: ReportLimits) -> Self {
        ReportGate { limits, devices: BTreeMap::new(), clients: BTreeMap::new() }
    }

    /// Admits `report` from `client` at `now`, keeping it as the device's newest, or says why
    /// not. A rejected report changes nothing but the client's rate allowance.
    pub fn admit(&mut self, now: Instant, client: C, report: VerifiedReport) -> Result<(), ReportError> {
        self.take_token(now, &client)?;
        match self.devices.get_mut(&report.device) {
            Some(entry) if report.report.seq <= entry.report.seq => {
                return Err(ReportError::Replay { last_seq: entry.report.seq })
            }
            Some(entry) => {
                if entry.client != client {
                    // The device moved (new address): charge its slot to the new address.
                    if self.clients.get(&client).is_some_and(|c| c.devices >= self.limits.devices_per_client) {
                        return Err(ReportError::TooManyDevices);
                    }
                    let old = core::mem::replace(&mut entry.client, client.clone());
                    Self::release_device(&mut self.clients, &old);
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.devices += 1;
                    }
                }
                entry.last_seen = now;
                entry.report = report.report;
            }
            None => {
                if self.clients.get(&client).is_some_and(|c| c.devices >= self.limits.devices_per_client) {
                    return Err(ReportError::TooManyDevices);
                }
                if self.devices.len() >= self.limits.max_devices.max(1) {
                    self.forget_oldest_device();
                }
                if let Some(c) = self.clients.get_mut(&client) {
                    c.devices += 1;
                }
                self.devices.insert(report.device, DeviceEntry { client, last_seen: now, report: report.report });
            }
        }
        Ok(())
    }

    /// The newest accepted report of every remembered device.
    pub fn reports(&self) -> impl Iterator<Item = (&[u8; 32], &StatusReport)> {
        self.devices.iter().map(|(k, e)| (k, &e.report))
    }

    /// Devices remembered.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn take_token(&mut self, now: Instant, client: &C) -> Result<(), ReportError> {
        const MICRO: u64 = 1_000_000;
        let burst = u64::from(self.limits.burst_per_client.max(1)) * MICRO;
        if !self.clients.contains_key(client) {
            if self.clients.len() >= self.limits.max_clients.max(1) {
                self.forget_idlest_client();
            }
            self.clients.insert(client.clone(), ClientEntry { micro_tokens: burst, refilled: now, devices: 0 });
        }
        let rate = u64::from(self.limits.reports_per_sec_per_client);
        let entry = self.clients.get_mut(client).ok_or(ReportError::RateLimited)?;
        let elapsed: Duration = now.saturating_since(entry.refilled);
        // micro-tokens gained = elapsed µs × rate per second.
        entry.micro_tokens = entry.micro_tokens.saturating_add(elapsed.as_micros().saturating_mul(rate)).min(burst);
        entry.refilled = now;
        if entry.micro_tokens < MICRO {
            return Err(ReportError::RateLimited);
        }
        entry.micro_tokens -= MICRO;
        Ok(())
    }

    fn release_device(clients: &mut BTreeMap<C, ClientEntry>, client: &C) {
        if let Some(c) = clients.get_mut(client) {
            c.devices = c.devices.saturating_sub(1);
        }
    }

    fn forget_oldest_device(&mut self) {
        let oldest = self.devices.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, e)| (*k, e.client.clone()));
        if let Some((key, client)) = oldest {
            self.devices.remove(&key);
            Self::release_device(&mut self.clients, &client);
        }
    }

    fn forget_idlest_client(&mut self) {
        // Addresses that speak for no remembered device go first, then the least recently
        // refilled; a forgotten address keeps its devices (their count restarts at zero).
        let victim = self.clients.iter().min_by_key(|(_, c)| (c.devices > 0, c.refilled)).map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.clients.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn report(key: &SigningKey, seq: u64) -> Vec<u8> {
        StatusReport {
            device: crate::hex::encode(key.verifying_key().as_bytes()),
            seq,
            release: "gw".into(),
            version: "1.0.0".into(),
            installed_id: "00".into(),
            active_slot: "a".into(),
            state: "committed".into(),
            target: None,
            progress: ReportProgress::default(),
            error: None,
            health: Some("ok".into()),
            security_floor: 1,
            time: 1_800_000_000,
            rollout: None,
            result: None,
            error_code: None,
            install_secs: None,
            slot: None,
        }
        .to_signed(|m| key.sign(m).to_bytes())
    }

    fn secs(s: u64) -> Instant {
        Instant(s * 1_000_000)
    }

    #[test]
    fn a_signed_report_verifies_and_a_tampered_one_does_not() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let bytes = report(&key, 1);
        let verified = verify(&bytes).unwrap();
        assert_eq!(verified.device, *key.verifying_key().as_bytes());
        assert_eq!(verified.report.seq, 1);
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replace("committed", "rolled-back");
        assert_eq!(verify(tampered.as_bytes()), Err(ReportError::BadSignature));
        // Another key's signature over the same report.
        let other = SigningKey::from_bytes(&[8; 32]);
        let forged = StatusReport { ..verify(text.as_bytes()).unwrap().report }.to_signed(|m| other.sign(m).to_bytes());
        assert_eq!(verify(&forged), Err(ReportError::BadSignature));
        assert_eq!(verify(&[b' '; MAX_REPORT_BYTES + 1]), Err(ReportError::TooLarge));
        assert_eq!(verify(b"{}"), Err(ReportError::Malformed));
    }

    #[test]
    fn a_replayed_report_is_rejected_and_a_newer_one_accepted() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut gate = ReportGate::new(ReportLimits::default());
        gate.admit(secs(1), 1u32, verify(&report(&key, 5)).unwrap()).unwrap();
        assert_eq!(gate.admit(secs(2), 1, verify(&report(&key, 5)).unwrap()), Err(ReportError::Replay { last_seq: 5 }));
        assert_eq!(gate.admit(secs(3), 2, verify(&report(&key, 4)).unwrap()), Err(ReportError::Replay { last_seq: 5 }));
        gate.admit(secs(4), 1, verify(&report(&key, 6)).unwrap()).unwrap();
        assert_eq!(gate.reports().next().unwrap().1.seq, 6);
    }

    #[test]
    fn one_address_flooding_made_up_devices_cannot_evict_real_ones() {
        let limits = ReportLimits { max_devices: 64, ..ReportLimits::default() };
        let mut gate = ReportGate::new(limits);
        let real: Vec<SigningKey> = (0..40u8).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        for (i, key) in real.iter().enumerate() {
            gate.admit(secs(1), 1000 + i as u32, verify(&report(key, 1)).unwrap()).unwrap();
        }
        // The attacker's address: 10,000 made-up devices over a long time, so the rate limit
        // alone would let them all through.
        let mut accepted = 0;
        for i in 0..10_000u32 {
            let key = SigningKey::from_bytes(&{
                let mut seed = [0xa5; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                seed
            });
            if gate.admit(secs(10 + u64::from(i)), 7, verify(&report(&key, 1)).unwrap()).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, limits.devices_per_client);
        let kept = real.iter().filter(|k| gate.devices.contains_key(k.verifying_key().as_bytes())).count();
        assert_eq!(kept, 40, "real devices were evicted by one address's made-up ones");
    }

    #[test]
    fn reports_faster_than_the_allowance_are_rate_limited() {
        let limits = ReportLimits::default();
        let mut gate = ReportGate::new(limits);
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut accepted = 0;
        // 1,000 reports within one second from one address.
        for seq in 1..=1000u64 {
            if gate.admit(Instant(seq * 1000), 1u32, verify(&report(&key, seq)).unwrap()).is_ok() {
                accepted += 1;
            }
        }
        assert!(accepted <= limits.burst_per_client + limits.reports_per_sec_per_client, "{accepted}");
        assert!(accepted >= limits.burst_per_client);
        // After a quiet while the address may report again.
        assert!(gate.admit(secs(60), 1, verify(&report(&key, 5000)).unwrap()).is_ok());
    }

    #[test]
    fn memory_is_bounded_by_max_devices_and_max_clients() {
        let limits = ReportLimits { max_devices: 10, max_clients: 5, ..ReportLimits::default() };
        let mut gate = ReportGate::new(limits);
        for i in 0..100u32 {
            let key = SigningKey::from_bytes(&[i as u8; 32]);
            let _ = gate.admit(secs(u64::from(i)), i, verify(&report(&key, 1)).unwrap());
            assert!(gate.device_count() <= 10 && gate.clients.len() <= 5);
        }
    }
}
