//! TUF metadata as parsed from untrusted JSON.
//!
//! Parsing is deliberately as strict as python-tuf's `Metadata.from_bytes` on the fields a
//! client acts on (types, versions, expiry, thresholds), because a client that accepts
//! what the reference rejects is an interoperability and security hazard. Unknown fields
//! are kept: the `signed` object is stored exactly as received, and signatures are
//! verified over its canonical encoding, so fields this client does not understand are
//! still covered by the signature.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};
use sha2::Digest;

use super::{canonical, time, RepositoryError, VerifyHook};

/// The four top-level role names; delegated roles may not reuse them.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// One entry of a metadata file's `signatures` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key id the signer claims; only keys the delegator lists under this id count.
    pub keyid: String,
    /// The decoded signature. `None` when the hex did not decode: such a signature simply
    /// does not count, it does not make otherwise valid metadata invalid.
    pub sig: Option<Vec<u8>>,
}

/// A metadata file split into its signed payload and signatures.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The `signed` object exactly as received (unknown fields included).
    pub signed: Value,
    /// `canonical(signed)`: the bytes every signature covers.
    pub signed_bytes: Vec<u8>,
    /// The signatures, with unique key ids (duplicates are rejected at parse time).
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Parses a metadata file. `role` only labels errors.
    pub fn parse(role: &str, bytes: &[u8]) -> Result<Self, RepositoryError> {
        let bad = |reason| RepositoryError::Malformed { role: role.to_string(), reason };
        let value: Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
        let mut obj = match value {
            Value::Object(obj) => obj,
            _ => return Err(bad("metadata is not an object")),
        };
        let signed = obj.remove("signed").ok_or(bad("missing signed"))?;
        if !signed.is_object() {
            return Err(bad("signed is not an object"));
        }
        let sigs = match obj.remove("signatures") {
            Some(Value::Array(sigs)) => sigs,
            _ => return Err(bad("missing signatures array")),
        };
        let mut signatures = Vec::with_capacity(sigs.len());
        let mut seen = BTreeSet::new();
        for sig in &sigs {
            let keyid = sig.get("keyid").and_then(Value::as_str).ok_or(bad("signature without keyid"))?;
            let text = sig.get("sig").and_then(Value::as_str).ok_or(bad("signature without sig"))?;
            // The specification requires unique key ids in `signatures`; a repeated key id
            // is an attempt (or a bug) to make one key count twice.
            if !seen.insert(keyid) {
                return Err(RepositoryError::DuplicateSignature { role: role.to_string() });
            }
            signatures.push(Signature { keyid: keyid.to_string(), sig: crate::hex::decode(text).ok() });
        }
        let signed_bytes = canonical::to_vec(&signed).map_err(|_| bad("signed has no canonical form"))?;
        Ok(Envelope { signed, signed_bytes, signatures })
    }
}

/// A public key as TUF describes it. Keys of unknown type or scheme are kept (metadata
/// that lists them still loads) but never verify anything unless a [`VerifyHook`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `keytype`, e.g. `ed25519`, `ecdsa`, `rsa`.
    pub keytype: String,
    /// `scheme`, e.g. `ed25519`, `ecdsa-sha2-nistp256`, `rsassa-pss-sha256`.
    pub scheme: String,
    /// `keyval.public`: hex for ed25519, PEM or hex for ECDSA. Empty if absent.
    pub public: String,
}

impl Key {
    /// Whether `sig` is this key's signature of `msg`. Unknown key types fall back to
    /// `hook`, so a host can add algorithms (RSA) without this crate carrying them.
    pub fn verify(&self, msg: &[u8], sig: &[u8], hook: Option<VerifyHook>) -> bool {
        match (self.keytype.as_str(), self.scheme.as_str()) {
            ("ed25519", "ed25519") => {
                let Ok(bytes) = crate::hex::decode_array::<32>(&self.public) else {
                    return false;
                };
                match crate::sig::Ed25519PublicKey::from_bytes(&bytes) {
                    Ok(key) => key.verify(msg, sig).is_ok(),
                    Err(_) => false,
                }
            }
            #[cfg(feature = "std")]
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                crate::sig::verify_ecdsa_p256(&self.public, msg, sig).is_ok()
            }
            _ => hook.is_some_and(|hook| hook(self, msg, sig)),
        }
    }

    fn parse(role: &str, value: &Value) -> Result<Self, RepositoryError> {
        let bad = |reason| RepositoryError::Malformed { role: role.to_string(), reason };
        let keytype = value.get("keytype").and_then(Value::as_str);
        let scheme = value.get("scheme").and_then(Value::as_str);
        let keyval = value.get("keyval").and_then(Value::as_object);
        let (Some(keytype), Some(scheme), Some(keyval)) = (keytype, scheme, keyval) else {
            return Err(bad("key needs keytype, scheme and keyval"));
        };
        Ok(Key {
            keytype: keytype.to_string(),
            scheme: scheme.to_string(),
            public: keyval.get("public").and_then(Value::as_str).unwrap_or("").to_string(),
        })
    }
}

/// Which keys may sign for a role, and how many of them must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKeys {
    /// Authorized key ids, unique.
    pub keyids: Vec<String>,
    /// Distinct authorized keys that must sign; at least 1.
    pub threshold: u32,
}

/// Fields every role's `signed` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// Monotonic version, at least 1.
    pub version: u64,
    /// Expiry in unix seconds.
    pub expires: i64,
}

impl Common {
    /// Whether the metadata is expired at `now` (python-tuf: `now >= expires`).
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires
    }
}

/// Root metadata: the keys and thresholds of the top-level roles.
#[derive(Debug, Clone)]
pub struct Root {
    /// Version and expiry.
    pub common: Common,
    /// Whether the repository publishes versioned metadata and hash-prefixed targets.
    pub consistent_snapshot: bool,
    /// Keys by key id.
    pub keys: BTreeMap<String, Key>,
    /// Exactly the four top-level roles.
    pub roles: BTreeMap<String, RoleKeys>,
    /// The envelope this was parsed from.
    pub envelope: Envelope,
}

/// A `meta` entry: what the timestamp says about snapshot, or snapshot about targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFile {
    /// The version the referenced metadata must have.
    pub version: u64,
    /// Exact length in bytes, if the repository chose to publish it.
    pub length: Option<u64>,
    /// Hex digests by algorithm name, if published.
    pub hashes: BTreeMap<String, String>,
}

/// Timestamp metadata.
#[derive(Debug, Clone)]
pub struct Timestamp {
    /// Version and expiry.
    pub common: Common,
    /// The current snapshot.
    pub snapshot_meta: MetaFile,
}

/// Snapshot metadata.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Version and expiry.
    pub common: Common,
    /// Targets roles by file name (`targets.json`, `<role>.json`).
    pub meta: BTreeMap<String, MetaFile>,
}

/// One target: what the bytes at `path` must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFile {
    /// The target path, as the delegation tree names it.
    pub path: String,
    /// Exact length in bytes.
    pub length: u64,
    /// Hex digests by algorithm name; never empty.
    pub hashes: BTreeMap<String, String>,
    /// The `custom` object, if any, for applications to interpret.
    pub custom: Option<Value>,
}

impl TargetFile {
    /// Checks `bytes` against the length and every supported hash. At least one hash must
    /// be of a supported algorithm: otherwise nothing ties the bytes to the signature.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), RepositoryError> {
        verify_length_and_hashes(&self.path, Some(self.length), &self.hashes, bytes)
    }
}

/// Hash algorithms this client can check.
pub const SUPPORTED_HASHES: [&str; 4] = ["sha224", "sha256", "sha384", "sha512"];

fn digest_hex(algorithm: &str, bytes: &[u8]) -> Option<String> {
    Some(match algorithm {
        "sha224" => crate::hex::encode(&sha2::Sha224::digest(bytes)),
        "sha256" => crate::hex::encode(&sha2::Sha256::digest(bytes)),
        "sha384" => crate::hex::encode(&sha2::Sha384::digest(bytes)),
        "sha512" => crate::hex::encode(&sha2::Sha512::digest(bytes)),
        _ => return None,
    })
}

/// Checks length (if given) and hashes. With `hashes` empty only the length is checked
/// (metadata may omit hashes); otherwise at least one must be supported and all supported
/// ones must match.
pub(crate) fn verify_length_and_hashes(
    role: &str,
    length: Option<u64>,
    hashes: &BTreeMap<String, String>,
    bytes: &[u8],
) -> Result<(), RepositoryError> {
    let mismatch = || RepositoryError::LengthOrHashMismatch { role: role.to_string() };
    if length.is_some_and(|len| len != bytes.len() as u64) {
        return Err(mismatch());
    }
    let mut checked = 0;
    for (algorithm, expected) in hashes {
        if let Some(got) = digest_hex(algorithm, bytes) {
            if &got != expected {
                return Err(mismatch());
            }
            checked += 1;
        }
    }
    if !hashes.is_empty() && checked == 0 {
        return Err(RepositoryError::NoSupportedHash { role: role.to_string() });
    }
    Ok(())
}

impl MetaFile {
    /// Checks `bytes` against this entry's length and hashes (whichever are present).
    pub fn verify(&self, role: &str, bytes: &[u8]) -> Result<(), RepositoryError> {
        verify_length_and_hashes(role, self.length, &self.hashes, bytes)
    }
}

/// A delegation from a targets role to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegatedRole {
    /// The delegated role's name.
    pub name: String,
    /// Keys and threshold for the delegated role.
    pub keys: RoleKeys,
    /// Stop the search after this role if it matched the path.
    pub terminating: bool,
    /// Shell-style patterns matched per `/`-separated segment.
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of sha256(target path).
    pub path_hash_prefixes: Option<Vec<String>>,
}

impl DelegatedRole {
    /// Whether this delegation covers `target_path`.
    pub fn is_delegated_path(&self, target_path: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| path_matches(p, target_path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let hash = crate::hex::encode(&sha2::Sha256::digest(target_path.as_bytes()));
            return prefixes.iter().any(|p| hash.starts_with(p.as_str()));
        }
        false
    }
}

/// Succinct hash-bin delegations (TAP 15): `2^bit_length` bins named
/// `<name_prefix>-<hex bin>`, all sharing one key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccinctRoles {
    /// Keys and threshold shared by every bin.
    pub keys: RoleKeys,
    /// Number of leading bits of sha256(path) that select the bin, 1..=32.
    pub bit_length: u32,
    /// Bin name prefix.
    pub name_prefix: String,
}

impl SuccinctRoles {
    fn suffix_len(&self) -> usize {
        let max = (1u64 << self.bit_length) - 1;
        alloc::format!("{max:x}").len()
    }

    /// The bin responsible for `target_path`.
    pub fn role_for_target(&self, target_path: &str) -> String {
        let hash = sha2::Sha256::digest(target_path.as_bytes());
        let first = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
        let bin = u64::from(first) >> (32 - self.bit_length);
        alloc::format!("{}-{:0width$x}", self.name_prefix, bin, width = self.suffix_len())
    }

    /// Whether `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let Some(suffix) = name.strip_prefix(self.name_prefix.as_str()).and_then(|s| s.strip_prefix('-')) else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && u64::from_str_radix(suffix, 16).is_ok_and(|bin| bin < (1u64 << self.bit_length))
            && suffix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

/// A targets role's `delegations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegations {
    /// Keys by key id for all delegated roles.
    pub keys: BTreeMap<String, Key>,
    /// Ordered delegations (order is priority).
    pub roles: Vec<DelegatedRole>,
    /// Hash-bin delegations, used instead of `roles`.
    pub succinct_roles: Option<SuccinctRoles>,
}

impl Delegations {
    /// The roles that may hold `target_path`, in priority order, with their terminating
    /// flag (succinct bins are terminating).
    pub fn roles_for_target(&self, target_path: &str) -> Vec<(String, bool)> {
        if let Some(succinct) = &self.succinct_roles {
            return alloc::vec![(succinct.role_for_target(target_path), true)];
        }
        self.roles
            .iter()
            .filter(|r| r.is_delegated_path(target_path))
            .map(|r| (r.name.clone(), r.terminating))
            .collect()
    }

    /// Keys and threshold for delegated role `name`, if this delegates to it.
    pub fn role_keys(&self, name: &str) -> Option<&RoleKeys> {
        if let Some(succinct) = &self.succinct_roles {
            return succinct.is_bin(name).then_some(&succinct.keys);
        }
        self.roles.iter().find(|r| r.name == name).map(|r| &r.keys)
    }
}

/// Targets metadata (top-level or delegated).
#[derive(Debug, Clone)]
pub struct Targets {
    /// Version and expiry.
    pub common: Common,
    /// Targets by path.
    pub targets: BTreeMap<String, TargetFile>,
    /// Delegations, if any.
    pub delegations: Option<Delegations>,
}

/// fnmatch-style match of one pattern against one path, segment by segment, as python-tuf
/// does: both are split on `/`, segment counts must agree, and `*` never crosses a `/`.
pub fn path_matches(pattern: &str, target_path: &str) -> bool {
    let pattern_parts: Vec<&str> = pattern.split('/').collect();
    let target_parts: Vec<&str> = target_path.split('/').collect();
    pattern_parts.len() == target_parts.len()
        && pattern_parts.iter().zip(&target_parts).all(|(p, t)| fnmatch(p.as_bytes(), t.as_bytes()))
}

/// Python's `fnmatch`: `*`, `?`, `[seq]`, `[!seq]`; no escaping. Iterative backtracking
/// over `*` keeps it linear-ish and bounded on hostile patterns.
fn fnmatch(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unclosed `[` is literal, as in Python.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == b'['`. Returns whether it
/// matched and the index after the class, or `None` if the class is unclosed.
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'!');
    if negate {
        i += 1;
    }
    let first = i;
    let mut matched = false;
    loop {
        let &pc = pattern.get(i)?;
        if pc == b']' && i > first {
            return Some((matched != negate, i + 1));
        }
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let hi = pattern[i + 2];
            if pc <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if pc == c {
                matched = true;
            }
            i += 1;
        }
    }
}

// ---- parsing of `signed` ----

fn malformed(role: &str, reason: &'static str) -> RepositoryError {
    RepositoryError::Malformed { role: role.to_string(), reason }
}

fn obj<'a>(role: &str, v: &'a Value, reason: &'static str) -> Result<&'a Map<String, Value>, RepositoryError> {
    v.as_object().ok_or_else(|| malformed(role, reason))
}

fn positive(role: &str, v: Option<&Value>, reason: &'static str) -> Result<u64, RepositoryError> {
    match v.and_then(Value::as_u64) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(malformed(role, reason)),
    }
}

/// Checks `_type`, `spec_version`, `version` and `expires`.
pub fn parse_common(role: &str, signed: &Value, expected_type: &str) -> Result<Common, RepositoryError> {
    match signed.get("_type").and_then(Value::as_str) {
        Some(t) if t == expected_type => {}
        _ => return Err(RepositoryError::WrongType { role: role.to_string() }),
    }
    let spec =
        signed.get("spec_version").and_then(Value::as_str).ok_or_else(|| malformed(role, "missing spec_version"))?;
    let parts: Vec<&str> = spec.split('.').collect();
    if !(2..=3).contains(&parts.len()) || parts[0] != "1" {
        return Err(malformed(role, "unsupported spec_version"));
    }
    let version = positive(role, signed.get("version"), "version must be an integer >= 1")?;
    let expires = signed
        .get("expires")
        .and_then(Value::as_str)
        .and_then(time::parse_expiry)
        .ok_or_else(|| malformed(role, "expires is not YYYY-MM-DDTHH:MM:SSZ"))?;
    Ok(Common { version, expires })
}

fn parse_keys(role: &str, v: Option<&Value>) -> Result<BTreeMap<String, Key>, RepositoryError> {
    let map = obj(role, v.unwrap_or(&Value::Null), "keys must be an object")?;
    map.iter().map(|(id, k)| Ok((id.clone(), Key::parse(role, k)?))).collect()
}

fn parse_role_keys(role: &str, v: &Value) -> Result<RoleKeys, RepositoryError> {
    let ids = v.get("keyids").and_then(Value::as_array).ok_or_else(|| malformed(role, "role without keyids"))?;
    let mut keyids = Vec::with_capacity(ids.len());
    let mut seen = BTreeSet::new();
    for id in ids {
        let id = id.as_str().ok_or_else(|| malformed(role, "keyid is not a string"))?;
        if !seen.insert(id) {
            return Err(malformed(role, "duplicate keyid in role"));
        }
        keyids.push(id.to_string());
    }
    let threshold = positive(role, v.get("threshold"), "threshold must be >= 1")?;
    let threshold = u32::try_from(threshold).map_err(|_| malformed(role, "threshold too large"))?;
    Ok(RoleKeys { keyids, threshold })
}

fn parse_hashes(role: &str, v: &Value) -> Result<BTreeMap<String, String>, RepositoryError> {
    let map = obj(role, v, "hashes must be an object")?;
    if map.is_empty() {
        return Err(malformed(role, "hashes must not be empty"));
    }
    map.iter()
        .map(|(alg, h)| {
            h.as_str().map(|h| (alg.clone(), h.to_string())).ok_or_else(|| malformed(role, "hash is not a string"))
        })
        .collect()
}

fn parse_meta_file(role: &str, v: &Value) -> Result<MetaFile, RepositoryError> {
    obj(role, v, "meta entry must be an object")?;
    let version = positive(role, v.get("version"), "meta version must be >= 1")?;
    let length = match v.get("length") {
        None => None,
        Some(l) => Some(l.as_u64().ok_or_else(|| malformed(role, "length must be a non-negative integer"))?),
    };
    let hashes = match v.get("hashes") {
        None => BTreeMap::new(),
        Some(h) => parse_hashes(role, h)?,
    };
    Ok(MetaFile { version, length, hashes })
}

impl Root {
    /// Parses root metadata (signatures are checked by the caller).
    pub fn parse(envelope: Envelope) -> Result<Self, RepositoryError> {
        let role = "root";
        let s = &envelope.signed;
        let common = parse_common(role, s, "root")?;
        let consistent_snapshot = match s.get("consistent_snapshot") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(malformed(role, "consistent_snapshot must be a boolean")),
        };
        let keys = parse_keys(role, s.get("keys"))?;
        let roles_obj = obj(role, s.get("roles").unwrap_or(&Value::Null), "roles must be an object")?;
        if roles_obj.len() != TOP_LEVEL_ROLES.len() || !TOP_LEVEL_ROLES.iter().all(|r| roles_obj.contains_key(*r)) {
            return Err(malformed(role, "roles must be exactly the top-level roles"));
        }
        let mut roles = BTreeMap::new();
        for (name, v) in roles_obj {
            roles.insert(name.clone(), parse_role_keys(role, v)?);
        }
        Ok(Root { common, consistent_snapshot, keys, roles, envelope })
    }
}

impl Timestamp {
    /// Parses timestamp metadata (signatures are checked by the caller).
    pub fn parse(envelope: &Envelope) -> Result<Self, RepositoryError> {
        let role = "timestamp";
        let s = &envelope.signed;
        let common = parse_common(role, s, "timestamp")?;
        let snapshot = s
            .get("meta")
            .and_then(|m| m.get("snapshot.json"))
            .ok_or_else(|| malformed(role, "meta lacks snapshot.json"))?;
        Ok(Timestamp { common, snapshot_meta: parse_meta_file(role, snapshot)? })
    }
}

impl Snapshot {
    /// Parses snapshot metadata (signatures are checked by the caller).
    pub fn parse(envelope: &Envelope) -> Result<Self, RepositoryError> {
        let role = "snapshot";
        let s = &envelope.signed;
        let common = parse_common(role, s, "snapshot")?;
        let meta = obj(role, s.get("meta").unwrap_or(&Value::Null), "meta must be an object")?;
        let meta = meta
            .iter()
            .map(|(name, v)| Ok((name.clone(), parse_meta_file(role, v)?)))
            .collect::<Result<_, RepositoryError>>()?;
        Ok(Snapshot { common, meta })
    }
}

impl Targets {
    /// Parses targets metadata for role `role` (signatures are checked by the caller).
    pub fn parse(role: &str, envelope: &Envelope) -> Result<Self, RepositoryError> {
        let s = &envelope.signed;
        let common = parse_common(role, s, "targets")?;
        let targets_obj = obj(role, s.get("targets").unwrap_or(&Value::Null), "targets must be an object")?;
        let mut targets = BTreeMap::new();
        for (path, v) in targets_obj {
            obj(role, v, "target must be an object")?;
            let length = v
                .get("length")
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed(role, "target length must be a non-negative integer"))?;
            let hashes = parse_hashes(role, v.get("hashes").ok_or_else(|| malformed(role, "target without hashes"))?)?;
            targets.insert(
                path.clone(),
                TargetFile { path: path.clone(), length, hashes, custom: v.get("custom").cloned() },
            );
        }
        let delegations = match s.get("delegations") {
            None => None,
            Some(d) => Some(parse_delegations(role, d)?),
        };
        Ok(Targets { common, targets, delegations })
    }
}

fn string_list(role: &str, v: &Value, reason: &'static str) -> Result<Vec<String>, RepositoryError> {
    v.as_array()
        .ok_or_else(|| malformed(role, reason))?
        .iter()
        .map(|s| s.as_str().map(str::to_string).ok_or_else(|| malformed(role, reason)))
        .collect()
}

fn parse_delegations(role: &str, d: &Value) -> Result<Delegations, RepositoryError> {
    obj(role, d, "delegations must be an object")?;
    let keys = parse_keys(role, d.get("keys"))?;
    let mut roles = Vec::new();
    let mut succinct_roles = None;
    match (d.get("roles"), d.get("succinct_roles")) {
        (Some(list), None) => {
            let list = list.as_array().ok_or_else(|| malformed(role, "delegated roles must be a list"))?;
            let mut names = BTreeSet::new();
            for r in list {
                let name = r
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed(role, "delegated role without name"))?;
                if TOP_LEVEL_ROLES.contains(&name) {
                    return Err(malformed(role, "delegation reuses a top-level role name"));
                }
                if !names.insert(name) {
                    return Err(malformed(role, "duplicate delegated role name"));
                }
                let terminating = r
                    .get("terminating")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| malformed(role, "terminating must be a boolean"))?;
                let paths = match r.get("paths") {
                    None => None,
                    Some(p) => Some(string_list(role, p, "paths must be strings")?),
                };
                let path_hash_prefixes = match r.get("path_hash_prefixes") {
                    None => None,
                    Some(p) => Some(string_list(role, p, "path_hash_prefixes must be strings")?),
                };
                if paths.is_some() && path_hash_prefixes.is_some() {
                    return Err(malformed(role, "both paths and path_hash_prefixes"));
                }
                roles.push(DelegatedRole {
                    name: name.to_string(),
                    keys: parse_role_keys(role, r)?,
                    terminating,
                    paths,
                    path_hash_prefixes,
                });
            }
        }
        (None, Some(s)) => {
            let bit_length = s
                .get("bit_length")
                .and_then(Value::as_u64)
                .filter(|b| (1..=32).contains(b))
                .ok_or_else(|| malformed(role, "bit_length must be 1..=32"))?;
            let name_prefix = s
                .get("name_prefix")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(role, "succinct roles without name_prefix"))?;
            succinct_roles = Some(SuccinctRoles {
                keys: parse_role_keys(role, s)?,
                bit_length: bit_length as u32,
                name_prefix: name_prefix.to_string(),
            });
        }
        _ => return Err(malformed(role, "delegations need exactly one of roles and succinct_roles")),
    }
    Ok(Delegations { keys, roles, succinct_roles })
}

/// Counts distinct authorized keys whose signature over `envelope.signed_bytes` verifies
/// and fails unless they reach the threshold. Key ids are unique in both the role and the
/// signatures, so every counted signature is a different key id.
pub fn verify_threshold(
    role: &str,
    keys: &BTreeMap<String, Key>,
    role_keys: &RoleKeys,
    envelope: &Envelope,
    hook: Option<VerifyHook>,
) -> Result<(), RepositoryError> {
    let mut valid: BTreeSet<&str> = BTreeSet::new();
    for keyid in &role_keys.keyids {
        let Some(key) = keys.get(keyid) else { continue };
        let Some(sig) = envelope.signatures.iter().find(|s| &s.keyid == keyid) else {
            continue;
        };
        let Some(sig_bytes) = &sig.sig else { continue };
        if key.verify(&envelope.signed_bytes, sig_bytes, hook) {
            valid.insert(keyid);
        }
    }
    let valid = valid.len() as u32;
    if valid < role_keys.threshold {
        return Err(RepositoryError::ThresholdNotMet { role: role.to_string(), valid, threshold: role_keys.threshold });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        assert!(path_matches("*", "file.txt"));
        assert!(!path_matches("*", "dir/file.txt"));
        assert!(path_matches("dir/*", "dir/file.txt"));
        assert!(path_matches("dir/*.tx?", "dir/file.txt"));
        assert!(path_matches("f[a-c]le", "fble"));
        assert!(!path_matches("f[!a-c]le", "fble"));
        assert!(path_matches("a*b*c", "aXXbYYc"));
        assert!(!path_matches("a*b*c", "aXXbYY"));
        assert!(path_matches("[", "["));
    }

    #[test]
    fn succinct_bins() {
        let s = SuccinctRoles {
            keys: RoleKeys { keyids: Vec::new(), threshold: 1 },
            bit_length: 8,
            name_prefix: "bin".into(),
        };
        let bin = s.role_for_target("x");
        assert!(bin.starts_with("bin-") && bin.len() == 6 && s.is_bin(&bin));
        assert!(!s.is_bin("bin-100") && !s.is_bin("bin-g0"));
    }
}
