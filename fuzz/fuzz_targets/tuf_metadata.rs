//! Untrusted TUF metadata through the client's trusted set (`TrustedMetadataSet`), the
//! entry point every refresh goes through.
//!
//! Random bytes almost never carry a valid signature, which would confine the fuzzer to
//! the JSON envelope. So the first input byte picks a stage, and in the "signed" modes the
//! harness signs the fuzzed `signed` object with the key the trusted root delegates to:
//! the fuzzer then reaches everything after signature verification (type, version, expiry,
//! meta, rollback and hash checks). No input may panic.
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use protocol::tuf::{canonical, TrustedMetadataSet};
use serde_json::{json, Value};

/// The harness's clock: after the fixtures were "issued", before they expire.
const NOW: i64 = 1_800_000_000;
const EXPIRES: &str = "2100-01-01T00:00:00Z";
const KEY_ID: &str = "fuzz-key";

fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[0x7a; 32]))
}

/// Wraps `signed` in a metadata envelope signed by the harness key. `None` when the value
/// has no canonical form (floats), which the parser must refuse on its own.
fn sign(signed: Value) -> Option<Vec<u8>> {
    let bytes = canonical::to_vec(&signed).ok()?;
    let sig = signing_key().sign(&bytes).to_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    serde_json::to_vec(&json!({ "signatures": [{ "keyid": KEY_ID, "sig": hex }], "signed": signed })).ok()
}

/// The harness key as TUF lists it in `keys`.
fn key_entry() -> Value {
    let public: String = signing_key().verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    json!({ "keytype": "ed25519", "scheme": "ed25519", "keyval": { "public": public } })
}

/// Adds the harness key under `KEY_ID` to a fuzzed root's `keys`, so a fuzzed root can
/// verify itself (the fuzzer cannot guess a 64-digit public key).
fn with_harness_key(mut root: Value) -> Value {
    if let Some(keys) = root.get_mut("keys").and_then(Value::as_object_mut) {
        keys.entry(KEY_ID).or_insert_with(key_entry);
    }
    root
}

fn root() -> &'static [u8] {
    static ROOT: OnceLock<Vec<u8>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let role = json!({ "keyids": [KEY_ID], "threshold": 1 });
        sign(json!({
            "_type": "root", "spec_version": "1.0.31", "version": 1, "expires": EXPIRES,
            "consistent_snapshot": true,
            "keys": { KEY_ID: key_entry() },
            "roles": { "root": role, "timestamp": role, "snapshot": role, "targets": role },
        }))
        .expect("the fixture root is canonical")
    })
}

/// A timestamp naming snapshot version 1 without length or hashes, so any fuzzed snapshot
/// of version 1 gets past the timestamp's checks.
fn timestamp() -> Vec<u8> {
    sign(json!({
        "_type": "timestamp", "spec_version": "1.0.31", "version": 1, "expires": EXPIRES,
        "meta": { "snapshot.json": { "version": 1 } },
    }))
    .expect("canonical")
}

/// A snapshot naming targets version 1 without length or hashes.
fn snapshot() -> Vec<u8> {
    sign(json!({
        "_type": "snapshot", "spec_version": "1.0.31", "version": 1, "expires": EXPIRES,
        "meta": { "targets.json": { "version": 1 } },
    }))
    .expect("canonical")
}

fn trusted() -> TrustedMetadataSet {
    TrustedMetadataSet::new(root(), NOW, None).expect("the fixture root verifies")
}

/// The fuzzed bytes as a `signed` object, signed by the trusted key.
fn signed_from(data: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<Value>(data).ok().and_then(sign)
}

/// The fuzzed bytes as a root `signed` object listing the harness key, signed by it.
fn signed_root_from(data: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<Value>(data).ok().map(with_harness_key).and_then(sign)
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else { return };
    match mode % 8 {
        // Raw bytes as the trust anchor.
        0 => {
            let _ = TrustedMetadataSet::new(data, NOW, None);
        }
        // A fuzzed root, validly self-signed, then the fixture timestamp against it.
        1 => {
            if let Some(root) = signed_root_from(data) {
                if let Ok(mut set) = TrustedMetadataSet::new(&root, NOW, None) {
                    let _ = set.update_timestamp(&timestamp());
                }
            }
        }
        // Raw bytes as a new root version (root rotation).
        2 => {
            let _ = trusted().update_root(data);
        }
        // A fuzzed, validly signed new root version.
        3 => {
            if let Some(next) = signed_root_from(data) {
                let _ = trusted().update_root(&next);
            }
        }
        // Raw bytes as timestamp.
        4 => {
            let _ = trusted().update_timestamp(data);
        }
        // A fuzzed, validly signed timestamp, then a second one to exercise rollback checks.
        5 => {
            if let Some(ts) = signed_from(data) {
                let mut set = trusted();
                if set.update_timestamp(&ts).is_ok() {
                    let _ = set.update_timestamp(&timestamp());
                    let _ = set.update_snapshot(&snapshot(), false);
                }
            }
        }
        // A fuzzed, validly signed snapshot after the fixture timestamp.
        6 => {
            if let Some(snap) = signed_from(data) {
                let mut set = trusted();
                set.update_timestamp(&timestamp()).expect("fixture timestamp verifies");
                if set.update_snapshot(&snap, false).is_ok() {
                    let _ = set.update_delegated_targets(&snap, "targets", "root");
                }
            }
        }
        // A fuzzed, validly signed top-level targets after the fixture timestamp and snapshot.
        _ => {
            if let Some(targets) = signed_from(data) {
                let mut set = trusted();
                set.update_timestamp(&timestamp()).expect("fixture timestamp verifies");
                set.update_snapshot(&snapshot(), false).expect("fixture snapshot verifies");
                if set.update_delegated_targets(&targets, "targets", "root").is_ok() {
                    let loaded = set.targets("targets").expect("just loaded");
                    let _ = loaded.delegations.as_ref().map(|d| d.roles_for_target("a/b.bin"));
                }
            }
        }
    }
});
