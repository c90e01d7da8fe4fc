//! Canonical JSON (what TUF signatures cover) over arbitrary JSON: encoding must not panic,
//! and must be a fixed point — parsing the canonical bytes and encoding again gives the same
//! bytes and the same value. A signer and a verifier that disagree here would reject each
//! other's valid metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::tuf::canonical;
use serde_json::Value;

/// OLPC canonical JSON escapes only `"` and `\`, so a control character inside a string is
/// emitted raw and the output is no longer strict JSON (serde_json refuses it). That is the
/// format securesystemslib signs, not a bug; such values are checked for the encoder's
/// determinism only.
fn has_control_chars(value: &Value) -> bool {
    let raw = |s: &str| s.chars().any(|c| c < ' ');
    match value {
        Value::String(s) => raw(s),
        Value::Array(items) => items.iter().any(has_control_chars),
        Value::Object(map) => map.iter().any(|(k, v)| raw(k) || has_control_chars(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Ok(first) = canonical::to_vec(&value) else { return };
    assert_eq!(canonical::to_vec(&value).as_ref(), Ok(&first), "encoding is not deterministic");
    match serde_json::from_slice::<Value>(&first) {
        Ok(reparsed) => {
            assert_eq!(reparsed, value, "canonical bytes parse to a different value");
            let second = canonical::to_vec(&reparsed).expect("an encodable value stays encodable");
            assert_eq!(second, first, "canonical encoding is not a fixed point");
        }
        Err(e) => assert!(has_control_chars(&value), "canonical output is not JSON: {e}"),
    }
});
