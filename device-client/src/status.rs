//! The device's status: a JSON document the agent keeps in its data directory (for
//! `device-client status`) and sends, signed with the device's ed25519 key, to an edge node
//! so it can flow up to the seeder. The signature lets a fleet tell a device's own report
//! from one an edge node made up.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use protocol::install::Record;
use protocol::status::{ReportProgress, ReportTarget, StatusReport};

use crate::fetch::Counts;

/// The device's signing key, created on first start (`data_dir/device.key`, 0600).
pub fn load_or_create_key(data_dir: &Path) -> Result<SigningKey> {
    let path = data_dir.join("device.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let Ok(seed) = protocol::hex::decode_array::<32>(text.trim()) else {
            bail!("{} must hold a 32-byte hex seed; delete it to make a new device identity", path.display());
        };
        return Ok(SigningKey::from_bytes(&seed));
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).context("no randomness for a device key")?;
    write_private(&path, protocol::hex::encode(&seed).as_bytes())?;
    Ok(SigningKey::from_bytes(&seed))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(host::fs::write_atomic(path, bytes, host::fs::PRIVATE)?)
}

/// The next report number: one more than the last one sent, persisted before it is used so
/// that edge nodes, which reject a report number they have seen (replays), accept this
/// device's reports across restarts.
pub fn next_seq(data_dir: &Path) -> Result<u64> {
    let path = data_dir.join("status.seq");
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().with_context(|| format!("{} is damaged; delete it", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let next = last + 1;
    write_private(&path, next.to_string().as_bytes())?;
    Ok(next)
}

/// The device's status report (unsigned).
pub fn report(
    device: &SigningKey,
    seq: u64,
    release: &str,
    record: &Record,
    counts: Option<Counts>,
    health: Option<&str>,
    unix_time: i64,
) -> StatusReport {
    StatusReport {
        device: protocol::hex::encode(device.verifying_key().as_bytes()),
        seq,
        release: release.to_string(),
        version: record.installed.version.as_str().to_string(),
        installed_id: record.installed.id.to_hex(),
        active_slot: record.active.name().to_string(),
        state: record.state.name().to_string(),
        target: record.target.map(|t| ReportTarget { version: t.version.as_str().to_string(), id: t.id.to_hex() }),
        progress: ReportProgress {
            chunks_done: counts.map_or(record.chunks_done, |c| c.chunks_done),
            chunk_count: counts.map_or(record.target.map_or(0, |t| t.chunk_count), |c| c.chunk_count),
            bytes_fetched: counts.map_or(record.bytes_fetched, |c| c.bytes_fetched),
            bytes_reused: counts.map_or(record.bytes_reused, |c| c.bytes_reused),
        },
        error: record.last_error.map(|e| e.name().to_string()),
        health: health.map(str::to_string),
        security_floor: record.min_security_counter,
        time: unix_time,
        // The agent reports rollout outcomes once it drives the rollout gate.
        rollout: None,
        result: None,
        error_code: None,
        install_secs: None,
        slot: None,
    }
}

/// The signed wire form ([`protocol::status`]).
pub fn sign(device: &SigningKey, report: &StatusReport) -> Vec<u8> {
    report.to_signed(|message| device.sign(message).to_bytes())
}

/// Checks a signed report; returns it. For tests and for whoever collects reports.
pub fn verify(bytes: &[u8]) -> Result<StatusReport> {
    protocol::status::verify(bytes).map(|v| v.report).map_err(|e| anyhow::anyhow!("{e}"))
}
