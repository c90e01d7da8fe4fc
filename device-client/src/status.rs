//! The device's status: a JSON document the agent keeps in its data directory (for
//! `device-client status`) and sends, signed with the device's ed25519 key, to an edge node
//! so it can flow up to the seeder. The signature lets a fleet tell a device's own report
//! from one an edge node made up.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use protocol::install::Record;
use serde_json::{json, Value};

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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The status document (unsigned part).
pub fn document(
    device: &SigningKey,
    release: &str,
    record: &Record,
    counts: Option<Counts>,
    health: Option<&str>,
    unix_time: i64,
) -> Value {
    let target = record.target.map(|t| json!({"version": t.version.as_str(), "id": protocol::hex::encode(&t.id)}));
    json!({
        "device": protocol::hex::encode(device.verifying_key().as_bytes()),
        "release": release,
        "version": record.installed.version.as_str(),
        "installed_id": protocol::hex::encode(&record.installed.id),
        "active_slot": record.active.name(),
        "state": record.state.name(),
        "target": target,
        "progress": {
            "chunks_done": counts.map_or(record.chunks_done, |c| c.chunks_done),
            "chunk_count": counts.map_or(record.target.map_or(0, |t| t.chunk_count), |c| c.chunk_count),
            "bytes_fetched": counts.map_or(record.bytes_fetched, |c| c.bytes_fetched),
            "bytes_reused": counts.map_or(record.bytes_reused, |c| c.bytes_reused),
        },
        "error": record.last_error.map(|e| e.name()),
        "health": health,
        "security_floor": record.min_security_counter,
        "time": unix_time,
    })
}

/// `{"signed": doc, "signature": hex}`: the signature covers serde_json's bytes of `signed`,
/// whose keys are sorted, so a verifier re-serializing the parsed object gets the same bytes.
pub fn sign(device: &SigningKey, doc: &Value) -> Vec<u8> {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let signature = device.sign(&bytes);
    serde_json::to_vec(&json!({"signed": doc, "signature": protocol::hex::encode(&signature.to_bytes())}))
        .unwrap_or_default()
}

/// Checks a signed report; returns the document. For tests and for whoever collects reports.
pub fn verify(report: &[u8]) -> Result<Value> {
    let outer: Value = serde_json::from_slice(report).context("report is not JSON")?;
    let doc = outer["signed"].clone();
    let key = protocol::hex::decode_array::<32>(doc["device"].as_str().context("no device key")?)
        .map_err(|_| anyhow::anyhow!("device key is not 32 hex bytes"))?;
    let sig = protocol::hex::decode_array::<64>(outer["signature"].as_str().context("no signature")?)
        .map_err(|_| anyhow::anyhow!("signature is not 64 hex bytes"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    key.verify_strict(&serde_json::to_vec(&doc)?, &sig).context("signature does not verify")?;
    Ok(doc)
}
