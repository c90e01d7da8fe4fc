//! Enrollment: which device keys belong to the fleet. Reports from any other key are
//! counted and dropped.
//!
//! Bulk files are JSON lines, one device per line:
//! `{"key": "<64 hex digits>", "id": "gw-0001", "site": "plant-3", "hw_class": "imx8"}`
//! (blank lines and lines starting with `#` are skipped). A file is enrolled in one
//! transaction: a bad line is refused naming its line and field, and nothing is enrolled.

use super::Db;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

use protocol::sig::Ed25519PublicKey;

/// Longest device id, site or hardware class accepted.
pub const MAX_NAME_BYTES: usize = 128;

/// One device to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The device's ed25519 public key (what its reports carry, in hex, as `device`).
    pub public_key: [u8; 32],
    /// The operator's name for the device, unique in the fleet.
    pub device_id: String,
    /// The site the device is at.
    pub site: String,
    /// Its hardware class (matches releases' `hw_class`).
    pub hw_class: String,
}

/// A line of a bulk file, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    key: String,
    id: String,
    site: String,
    hw_class: String,
}

/// Parses a public key given as 64 hex digits, or as the name of a file holding them.
/// (Only hex text is read from a file: a 32-byte binary file could be a device's private
/// `device.key`.)
pub fn parse_key_arg(arg: &str) -> Result<[u8; 32]> {
    let arg = arg.trim();
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return parse_key(arg);
    }
    let path = Path::new(arg);
    if !path.is_file() {
        bail!("--key `{arg}` is neither 64 hex digits (a 32-byte ed25519 public key) nor a file holding them");
    }
    let text = std::fs::read(path).with_context(|| format!("cannot read --key file {arg}"))?;
    let text = std::str::from_utf8(&text)
        .map_err(|_| anyhow!("--key file {arg} is not text; it must hold the public key as 64 hex digits"))?;
    parse_key(text.trim()).with_context(|| format!("--key file {arg}"))
}

/// Parses 64 hex digits into a valid ed25519 public key.
pub fn parse_key(hex: &str) -> Result<[u8; 32]> {
    let key = protocol::hex::decode_array::<32>(hex)
        .map_err(|_| anyhow!("key `{hex}` is not 64 hex digits (a 32-byte ed25519 public key)"))?;
    Ed25519PublicKey::from_bytes(&key).map_err(|_| anyhow!("key `{hex}` is not a valid ed25519 public key"))?;
    Ok(key)
}

/// Checks a device id, site or hardware class (`what` names it in the error).
pub fn check_name(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        bail!("{what} is empty");
    }
    if value.len() > MAX_NAME_BYTES {
        bail!("{what} `{value}` is longer than {MAX_NAME_BYTES} bytes");
    }
    if value.chars().any(|c| c.is_control()) {
        bail!("{what} {value:?} contains a control character");
    }
    Ok(())
}

impl Enrollment {
    /// Validates one device given on the command line (key as hex or a file).
    pub fn new(key_arg: &str, device_id: &str, site: &str, hw_class: &str) -> Result<Enrollment> {
        let public_key = parse_key_arg(key_arg)?;
        check_name("--id", device_id)?;
        check_name("--site", site)?;
        check_name("--hw-class", hw_class)?;
        Ok(Enrollment { public_key, device_id: device_id.into(), site: site.into(), hw_class: hw_class.into() })
    }
}

/// Reads and validates a bulk file (JSON lines, see the module doc): every line, and no key
/// or id twice. The first bad line fails it. Each device comes with its line number.
pub fn read_bulk(path: &Path) -> Result<Vec<(usize, Enrollment)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display();
    let mut out = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let line: Line = serde_json::from_str(raw).map_err(|e| {
            // serde_json says "missing field `site` at line 1 column 40": the column is
            // useful, its "line 1" is not (each line is its own document).
            let what = e.to_string();
            let what = what.split(" at line ").next().unwrap_or(&what).to_string();
            anyhow!("{name} line {n}: {what}; each line must be {{\"key\": HEX, \"id\": ID, \"site\": SITE, \"hw_class\": CLASS}}")
        })?;
        let field = |f: &str, r: Result<()>| r.map_err(|e| anyhow!("{name} line {n}: field `{f}`: {e:#}"));
        let public_key = parse_key(line.key.trim()).map_err(|e| anyhow!("{name} line {n}: field `key`: {e:#}"))?;
        field("id", check_name("id", &line.id))?;
        field("site", check_name("site", &line.site))?;
        field("hw_class", check_name("hw_class", &line.hw_class))?;
        if let Some(first) = ids.insert(line.id.clone(), n) {
            bail!("{name} line {n}: field `id`: `{}` is already on line {first}", line.id);
        }
        if let Some(first) = keys.insert(public_key, n) {
            bail!("{name} line {n}: field `key`: the key is already on line {first}");
        }
        out.push((n, Enrollment { public_key, device_id: line.id, site: line.site, hw_class: line.hw_class }));
    }
    if out.is_empty() {
        bail!("{name} names no device; each line must be {{\"key\": HEX, \"id\": ID, \"site\": SITE, \"hw_class\": CLASS}}");
    }
    Ok(out)
}

/// Enrolls `devices` in one transaction at `now` (unix seconds): all of them, or — if any
/// key or id is already enrolled — none. `label(i, field)` names entry `i`'s `field` (`key`
/// or `id`) in that error: its line in a bulk file, or the flag.
pub fn enroll(db: &Db, devices: &[Enrollment], now: i64, label: impl Fn(usize, &str) -> String) -> Result<()> {
    db.transaction(|db| {
        for (i, d) in devices.iter().enumerate() {
            let key = &d.public_key[..];
            let by_key = db.query_opt("SELECT device_id FROM devices WHERE public_key = ?1", &[&key], |row| {
                row.get::<String>(0)
            })?;
            if let Some(existing) = by_key {
                bail!(
                    "{}{} is already enrolled as `{existing}`; nothing was enrolled",
                    label(i, "key"),
                    protocol::hex::encode(&d.public_key)
                );
            }
            if db.query_opt("SELECT 1 FROM devices WHERE device_id = ?1", &[&d.device_id], |_| Ok(()))?.is_some() {
                bail!("{}`{}` is already enrolled; nothing was enrolled", label(i, "id"), d.device_id);
            }
            db.execute(
                "INSERT INTO devices (public_key, device_id, site, hw_class, enrolled_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&key, &d.device_id, &d.site, &d.hw_class, &now],
            )?;
        }
        Ok(())
    })
}
