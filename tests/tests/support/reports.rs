//! Signed device status reports made by tests, as a device would sign them.

use ed25519_dalek::{Signer, SigningKey};
use protocol::status::{ReportProgress, StatusReport};

/// A report from `key` numbered `seq` in install state `state`, with no rollout fields.
pub fn report(key: &SigningKey, seq: u64, state: &str) -> StatusReport {
    StatusReport {
        device: protocol::hex::encode(key.verifying_key().as_bytes()),
        seq,
        release: "gw".into(),
        version: "1.0.0".into(),
        installed_id: "00".repeat(32),
        active_slot: "a".into(),
        state: state.into(),
        target: None,
        progress: ReportProgress::default(),
        error: None,
        health: None,
        security_floor: 1,
        time: 1_800_000_000,
        rollout: None,
        result: None,
        error_code: None,
        install_secs: None,
        slot: None,
    }
}

/// Its signed wire form.
pub fn signed(key: &SigningKey, report: &StatusReport) -> Vec<u8> {
    report.to_signed(|m| key.sign(m).to_bytes())
}
