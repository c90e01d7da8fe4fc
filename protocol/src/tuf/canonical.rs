//! Canonical JSON as TUF signs it (the OLPC form securesystemslib implements): object keys
//! sorted by code point, no insignificant whitespace, strings escaping only `\` and `"`,
//! integers only. Signatures cover `canonical(signed)`, so the bytes here must match
//! python-tuf's byte for byte.

use alloc::vec::Vec;
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalError {
    /// Canonical JSON has no floats.
    Float,
}

impl core::fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("canonical JSON cannot encode a non-integer number")
    }
}

/// Encodes `value` canonically.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

/// Appends the canonical encoding of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(alloc::format!("{i}").as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(alloc::format!("{u}").as_bytes());
            } else {
                return Err(CanonicalError::Float);
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map may preserve insertion order if any crate in
            // the build enables `preserve_order`.
            let mut entries: Vec<(&alloc::string::String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_securesystemslib() {
        let v = json!({"b": [1, -2, true, null], "a": {"z": "q\"\\\n", "é": 0}, "A": 18446744073709551615u64});
        let got = to_vec(&v).unwrap();
        assert_eq!(
            core::str::from_utf8(&got).unwrap(),
            "{\"A\":18446744073709551615,\"a\":{\"z\":\"q\\\"\\\\\n\",\"é\":0},\"b\":[1,-2,true,null]}"
        );
        assert_eq!(to_vec(&json!({"x": 1.5})), Err(CanonicalError::Float));
    }
}
