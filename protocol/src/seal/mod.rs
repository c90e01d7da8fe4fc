//! Seals: detached signatures that let a microcontroller verify a release manifest (and a
//! rollout policy) without TUF, JSON or a heap.
//!
//! A Linux device verifies a manifest through TUF: root, timestamp, snapshot, targets, then
//! the manifest's hash in the targets metadata. An MCU cannot afford that (JSON, several
//! signed files, a key database), so for every release the seeder also publishes a *seal*,
//! `releases/NAME/VERSION.manifest.sig`, a TUF target like any other: the manifest's length
//! and sha256 signed by the top-level `targets` keys, the same keys whose TUF signature
//! makes the release a release. A rollout policy gets one too, `rollouts/NAME.policy.sig`,
//! signed by the `rollouts` role's keys. The MCU pins a [`TrustAnchor`] — the targets keys
//! and threshold, the rollouts keys and threshold, an epoch — compiled in or provisioned in
//! flash, and [`open`] checks a seal against it.
//!
//! This is partial verification (Uptane's term): the MCU knows the publisher signed these
//! bytes, not that they are the newest. Freshness and anti-rollback come from the manifest's
//! security counter, which the install engine compares against its persisted floor; an edge
//! can withhold a release (freeze) but cannot make the device install anything unsigned or
//! older.
//!
//! # Key rotation
//!
//! When the publisher rotates its targets keys (`seeder key rotate targets`) or creates the
//! rollouts delegation, it issues a *trust statement*: the next anchor (epoch + 1), signed by
//! a threshold of the current targets keys AND a threshold of the new ones, as TUF rotates
//! root. Every seal carries the last [`MAX_STATEMENTS`] statements; [`open`] applies, in
//! order, those newer than the pinned epoch, then checks the seal's signatures under the
//! resulting anchor, and hands back the new anchor for the device to persist. A device more
//! than [`MAX_STATEMENTS`] rotations behind cannot follow and must be re-provisioned.
//!
//! # Layouts (format 1, integers little-endian)
//!
//! ```text
//! anchor:    "OTTA" | format u8 = 1 | epoch u32
//!            | targets  { threshold u8 (1..=count) | count u8 (1..=8)  | count × key[32] }
//!            | rollouts { threshold u8 (0..=count) | count u8 (0..=8)  | count × key[32] }
//! statement: "OTTS" | format u8 = 1 | anchor_len u16 | anchor | signatures
//! seal:      "OTSL" | format u8 = 1 | kind u8 (1 manifest, 2 policy)
//!            | subject_len u32 | subject_sha256 [32]
//!            | statement_count u8 (0..=4) × { statement_len u16 | statement }
//!            | signatures
//! signatures: count u8 (1..=8) × { ed25519 public key [32] | signature [64] }
//! ```
//!
//! Keys in a key set are distinct; rollouts threshold 0 (with no keys) means the publisher
//! has no rollouts role yet. Nothing may follow the last field of any layout. The signed
//! messages are domain-separated:
//! `"otamesh trust statement v1\0" | anchor` and
//! `"otamesh seal v1\0" | kind | subject_len | subject_sha256`.
//!
//! Signatures follow TUF's counting: only signatures by keys of the set count, each key at
//! most once, invalid ones are ignored, and at least `threshold` must verify.

use sha2::{Digest, Sha256};

use crate::sig::Ed25519PublicKey;
use crate::wire::{ReadError, Reader};

/// Most keys in one key set.
pub const MAX_KEYS: usize = 8;
/// Most signatures on a statement or seal.
pub const MAX_SIGNATURES: usize = 8;
/// Most trust statements a seal carries.
pub const MAX_STATEMENTS: usize = 4;
/// Longest encoded anchor (full key sets).
pub const MAX_ANCHOR_BYTES: usize = 4 + 1 + 4 + 2 * (2 + MAX_KEYS * 32);
/// Longest encoded signature block.
pub const MAX_SIGNATURES_BYTES: usize = 1 + MAX_SIGNATURES * (32 + 64);
/// Longest encoded trust statement.
pub const MAX_STATEMENT_BYTES: usize = 4 + 1 + 2 + MAX_ANCHOR_BYTES + MAX_SIGNATURES_BYTES;
/// Longest seal: the buffer an MCU needs to read one.
pub const MAX_SEAL_BYTES: usize =
    4 + 1 + 1 + 4 + 32 + 1 + MAX_STATEMENTS * (2 + MAX_STATEMENT_BYTES) + MAX_SIGNATURES_BYTES;

/// The only layout this code reads and writes.
pub const FORMAT_VERSION: u8 = 1;
const ANCHOR_MAGIC: [u8; 4] = *b"OTTA";
const STATEMENT_MAGIC: [u8; 4] = *b"OTTS";
const SEAL_MAGIC: [u8; 4] = *b"OTSL";
const STATEMENT_DOMAIN: &[u8] = b"otamesh trust statement v1\0";
const SEAL_DOMAIN: &[u8] = b"otamesh seal v1\0";

/// A seal's target path is the sealed file's path with this suffix:
/// `releases/gw/2.0.0.manifest.sig`, `rollouts/gw.policy.sig`.
pub const SEAL_SUFFIX: &str = ".sig";

/// The sealed file's target path if `path` names the seal of a release manifest or of a
/// rollout policy.
#[cfg(feature = "alloc")]
pub fn sealed_target_path(path: &str) -> Option<&str> {
    let sealed = path.strip_suffix(SEAL_SUFFIX)?;
    let is_manifest = crate::device::release::release_name(sealed).is_some();
    let is_policy = crate::tuf::rollouts_role::release_of_policy_path(sealed).is_some();
    (is_manifest || is_policy).then_some(sealed)
}

/// A file's content name, `dir/<sha256 hex>.name` (the consistent-snapshot path that
/// `tuf::hashed_target_path` spells on hosts), written into `out` without a heap: an MCU
/// asks an edge for exactly the bytes a seal names, so a file re-signed meanwhile cannot be
/// mistaken for a lie. `None` if `out` is too short.
pub fn content_name<'o>(target_path: &str, sha256: &[u8; 32], out: &'o mut [u8]) -> Option<&'o str> {
    let (dir, base) = match target_path.rsplit_once('/') {
        Some((dir, base)) => (dir, base),
        None => ("", target_path),
    };
    let dir_len = if dir.is_empty() { 0 } else { dir.len() + 1 };
    let total = dir_len + 64 + 1 + base.len();
    let out = out.get_mut(..total)?;
    if !dir.is_empty() {
        out[..dir.len()].copy_from_slice(dir.as_bytes());
        out[dir.len()] = b'/';
    }
    crate::hex::encode_into(sha256, &mut out[dir_len..dir_len + 64])?;
    out[dir_len + 64] = b'.';
    out[dir_len + 65..].copy_from_slice(base.as_bytes());
    core::str::from_utf8(out).ok()
}

/// What a seal says it seals, read without checking any signature: so a device can ask for
/// the file by its content name (see [`content_name`]) before it verifies anything. Nothing
/// here is trusted until [`open`] succeeds on the bytes that come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedSubject {
    /// The kind byte, if it is a known kind.
    pub kind: Option<SealKind>,
    /// The sealed file's length.
    pub len: u32,
    /// Its sha256.
    pub sha256: [u8; 32],
}

/// The subject a seal claims (its header only; see [`ClaimedSubject`]).
pub fn claimed_subject(seal: &[u8]) -> Result<ClaimedSubject, SealError> {
    let mut r = Reader::new(seal);
    if r.array::<4>("magic")? != SEAL_MAGIC || r.u8("format")? != FORMAT_VERSION {
        return Err(SealError::BadMagic);
    }
    let kind = match r.u8("kind")? {
        1 => Some(SealKind::Manifest),
        2 => Some(SealKind::Policy),
        _ => None,
    };
    Ok(ClaimedSubject { kind, len: r.u32("subject length")?, sha256: r.array("subject sha256")? })
}

/// What a seal vouches for, and so which key set must have signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealKind {
    /// A release manifest: the targets keys.
    Manifest = 1,
    /// A rollout policy: the rollouts keys.
    Policy = 2,
}

/// Why a seal, statement or anchor was refused; small enough for an MCU's error path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The bytes ended inside a field.
    Truncated,
    /// Bytes followed the last field.
    Trailing,
    /// Not this format: wrong magic or format byte.
    BadMagic,
    /// A count, threshold or length is out of its bounds, or a key repeats.
    Bounds,
    /// A seal of the other kind (a policy's seal offered for a manifest, or the reverse).
    WrongKind,
    /// The seal is for other bytes (length or sha256 differ).
    WrongSubject,
    /// A statement does not follow the anchor it must extend (its epoch skips one), or the
    /// device is more rotations behind than the seal carries.
    EpochGap,
    /// Fewer valid signatures than the key set's threshold (or no key set to check them).
    Threshold,
}

impl core::fmt::Display for SealError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SealError::Truncated => "truncated",
            SealError::Trailing => "bytes after the last field",
            SealError::BadMagic => "not a format-1 seal, statement or anchor",
            SealError::Bounds => "a count, threshold or length is out of bounds, or a key repeats",
            SealError::WrongKind => "a seal for another kind of file",
            SealError::WrongSubject => "a seal for other bytes",
            SealError::EpochGap => "the trust statements do not continue the pinned keys (re-provision the device)",
            SealError::Threshold => "not enough valid signatures by the pinned keys",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SealError {}

impl ReadError for SealError {
    fn truncated(_field: &'static str) -> Self {
        SealError::Truncated
    }
    fn trailing(_left: usize) -> Self {
        SealError::Trailing
    }
}

/// Distinct ed25519 public keys and how many of them must sign.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySet {
    threshold: u8,
    count: u8,
    keys: [[u8; 32]; MAX_KEYS],
}

impl core::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeySet({} of {})", self.threshold, self.count)
    }
}

impl KeySet {
    /// No keys: nothing verifies under it.
    pub const EMPTY: KeySet = KeySet { threshold: 0, count: 0, keys: [[0; 32]; MAX_KEYS] };

    /// `threshold` of `keys`; refuses more than [`MAX_KEYS`] keys, a repeated key, and a
    /// threshold above the key count or of 0 with keys present.
    pub fn new(threshold: u8, keys: &[[u8; 32]]) -> Result<KeySet, SealError> {
        let count = keys.len();
        let threshold_ok = if count == 0 { threshold == 0 } else { (1..=count).contains(&(threshold as usize)) };
        if count > MAX_KEYS || !threshold_ok {
            return Err(SealError::Bounds);
        }
        let mut set = KeySet { threshold, count: count as u8, ..KeySet::EMPTY };
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].contains(key) {
                return Err(SealError::Bounds);
            }
            set.keys[i] = *key;
        }
        Ok(set)
    }

    /// The keys.
    pub fn keys(&self) -> &[[u8; 32]] {
        &self.keys[..self.count as usize]
    }

    /// How many must sign.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// Whether the set has no keys.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn read(r: &mut Reader<'_, SealError>) -> Result<KeySet, SealError> {
        let threshold = r.u8("threshold")?;
        let count = r.u8("key count")? as usize;
        if count > MAX_KEYS {
            return Err(SealError::Bounds);
        }
        let mut keys = [[0u8; 32]; MAX_KEYS];
        for key in keys.iter_mut().take(count) {
            *key = r.array("key")?;
        }
        KeySet::new(threshold, &keys[..count])
    }

    fn write(&self, out: &mut Writer<'_>) {
        out.put(&[self.threshold, self.count]);
        for key in self.keys() {
            out.put(key);
        }
    }

    /// Whether at least `threshold` distinct keys of the set signed `message` in `block`
    /// (an encoded signature block, already length-checked). An empty set never passes.
    fn signed(&self, message: &[u8], block: &Signatures<'_>) -> bool {
        if self.is_empty() {
            return false;
        }
        let mut counted = [false; MAX_KEYS];
        let mut valid = 0u8;
        for (key, signature) in block.iter() {
            let Some(index) = self.keys().iter().position(|k| k == key) else { continue };
            if counted[index] {
                continue;
            }
            let verified = Ed25519PublicKey::from_bytes(key).and_then(|k| k.verify(message, signature)).is_ok();
            if verified {
                counted[index] = true;
                valid += 1;
                if valid >= self.threshold {
                    return true;
                }
            }
        }
        false
    }
}

/// What a device pins: the keys whose signatures it accepts, and the epoch of that choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustAnchor {
    /// Grows by one with every trust statement.
    pub epoch: u32,
    /// Sign release manifests (the TUF top-level targets keys).
    pub targets: KeySet,
    /// Sign rollout policies (the TUF `rollouts` role's keys); empty before the publisher
    /// delegates rollouts.
    pub rollouts: KeySet,
}

impl TrustAnchor {
    /// Parses an encoded anchor (as provisioned in flash or carried in a statement).
    pub fn decode(bytes: &[u8]) -> Result<TrustAnchor, SealError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>("magic")? != ANCHOR_MAGIC || r.u8("format")? != FORMAT_VERSION {
            return Err(SealError::BadMagic);
        }
        let epoch = r.u32("epoch")?;
        let targets = KeySet::read(&mut r)?;
        if targets.is_empty() {
            return Err(SealError::Bounds);
        }
        let rollouts = KeySet::read(&mut r)?;
        r.finish()?;
        Ok(TrustAnchor { epoch, targets, rollouts })
    }

    /// The encoding, in `out`; returns its length.
    pub fn encode(&self, out: &mut [u8; MAX_ANCHOR_BYTES]) -> usize {
        let mut w = Writer { out, len: 0 };
        w.put(&ANCHOR_MAGIC);
        w.put(&[FORMAT_VERSION]);
        w.put(&self.epoch.to_le_bytes());
        self.targets.write(&mut w);
        self.rollouts.write(&mut w);
        w.len
    }

    /// The encoding as a vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut out = [0u8; MAX_ANCHOR_BYTES];
        let len = self.encode(&mut out);
        out[..len].to_vec()
    }

    fn keys_for(&self, kind: SealKind) -> &KeySet {
        match kind {
            SealKind::Manifest => &self.targets,
            SealKind::Policy => &self.rollouts,
        }
    }

    /// The anchor `statement` establishes, if it is the next epoch and both the current
    /// targets keys and the new ones signed it (threshold each).
    pub fn apply(&self, statement: &[u8]) -> Result<TrustAnchor, SealError> {
        let (anchor_bytes, next, signatures) = parse_statement(statement)?;
        let anchor_len = anchor_bytes.len();
        if self.epoch.checked_add(1) != Some(next.epoch) {
            return Err(SealError::EpochGap);
        }
        let mut message = [0u8; STATEMENT_DOMAIN.len() + MAX_ANCHOR_BYTES];
        message[..STATEMENT_DOMAIN.len()].copy_from_slice(STATEMENT_DOMAIN);
        message[STATEMENT_DOMAIN.len()..][..anchor_len].copy_from_slice(anchor_bytes);
        let message = &message[..STATEMENT_DOMAIN.len() + anchor_len];
        if !self.targets.signed(message, &signatures) || !next.targets.signed(message, &signatures) {
            return Err(SealError::Threshold);
        }
        Ok(next)
    }
}

/// A statement's parts: the encoded anchor, that anchor, its signatures.
fn parse_statement(statement: &[u8]) -> Result<(&[u8], TrustAnchor, Signatures<'_>), SealError> {
    let mut r = Reader::new(statement);
    if r.array::<4>("magic")? != STATEMENT_MAGIC || r.u8("format")? != FORMAT_VERSION {
        return Err(SealError::BadMagic);
    }
    let anchor_len = r.u16("anchor length")? as usize;
    if anchor_len > MAX_ANCHOR_BYTES {
        return Err(SealError::Bounds);
    }
    let anchor_bytes = r.take(anchor_len, "anchor")?;
    let anchor = TrustAnchor::decode(anchor_bytes)?;
    let signatures = Signatures::read(&mut r)?;
    r.finish()?;
    Ok((anchor_bytes, anchor, signatures))
}

/// The anchor a statement establishes, without checking its signatures: for the publisher
/// reading its own chain, never for a device deciding whom to trust.
pub fn statement_anchor(statement: &[u8]) -> Result<TrustAnchor, SealError> {
    parse_statement(statement).map(|(_, anchor, _)| anchor)
}

/// A seal that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The anchor after the seal's statements: persist it if `rotated`.
    pub anchor: TrustAnchor,
    /// Whether a statement moved the anchor past the pinned one.
    pub rotated: bool,
}

/// Checks `seal` for `subject` (the manifest or policy bytes) under `anchor`.
pub fn open(anchor: &TrustAnchor, seal: &[u8], kind: SealKind, subject: &[u8]) -> Result<Opened, SealError> {
    let len = u32::try_from(subject.len()).map_err(|_| SealError::WrongSubject)?;
    open_digest(anchor, seal, kind, len, &Sha256::digest(subject).into())
}

/// [`open`] for a subject already hashed (one streamed to flash): its length and sha256.
pub fn open_digest(
    anchor: &TrustAnchor,
    seal: &[u8],
    kind: SealKind,
    subject_len: u32,
    subject_sha256: &[u8; 32],
) -> Result<Opened, SealError> {
    if seal.len() > MAX_SEAL_BYTES {
        return Err(SealError::Bounds);
    }
    let mut r = Reader::new(seal);
    if r.array::<4>("magic")? != SEAL_MAGIC || r.u8("format")? != FORMAT_VERSION {
        return Err(SealError::BadMagic);
    }
    let sealed_kind = r.u8("kind")?;
    let sealed_len = r.u32("subject length")?;
    let sealed_sha256 = r.array::<32>("subject sha256")?;
    let statements = r.u8("statement count")? as usize;
    if statements > MAX_STATEMENTS {
        return Err(SealError::Bounds);
    }
    let mut current = *anchor;
    for _ in 0..statements {
        let len = r.u16("statement length")? as usize;
        if len > MAX_STATEMENT_BYTES {
            return Err(SealError::Bounds);
        }
        let statement = r.take(len, "statement")?;
        match statement_epoch(statement)? {
            epoch if epoch <= current.epoch => continue,
            _ => current = current.apply(statement)?,
        }
    }
    let signatures = Signatures::read(&mut r)?;
    r.finish()?;
    if sealed_kind != kind as u8 {
        return Err(SealError::WrongKind);
    }
    if sealed_len != subject_len || &sealed_sha256 != subject_sha256 {
        return Err(SealError::WrongSubject);
    }
    let message = seal_message(kind, subject_len, subject_sha256);
    if !current.keys_for(kind).signed(&message, &signatures) {
        return Err(SealError::Threshold);
    }
    Ok(Opened { anchor: current, rotated: current != *anchor })
}

/// The epoch a statement claims, read before any signature is checked (so statements the
/// device is already past cost nothing).
fn statement_epoch(statement: &[u8]) -> Result<u32, SealError> {
    const EPOCH_AT: usize = 4 + 1 + 2 + 4 + 1;
    let bytes = statement.get(EPOCH_AT..EPOCH_AT + 4).ok_or(SealError::Truncated)?;
    let mut epoch = [0u8; 4];
    epoch.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(epoch))
}

fn seal_message(kind: SealKind, subject_len: u32, subject_sha256: &[u8; 32]) -> [u8; SEAL_DOMAIN.len() + 1 + 4 + 32] {
    let mut message = [0u8; SEAL_DOMAIN.len() + 1 + 4 + 32];
    let (domain, rest) = message.split_at_mut(SEAL_DOMAIN.len());
    domain.copy_from_slice(SEAL_DOMAIN);
    rest[0] = kind as u8;
    rest[1..5].copy_from_slice(&subject_len.to_le_bytes());
    rest[5..].copy_from_slice(subject_sha256);
    message
}

/// A parsed signature block: `count` entries of key and signature, borrowed.
struct Signatures<'a> {
    entries: &'a [u8],
}

impl<'a> Signatures<'a> {
    const ENTRY: usize = 32 + 64;

    fn read(r: &mut Reader<'a, SealError>) -> Result<Signatures<'a>, SealError> {
        let count = r.u8("signature count")? as usize;
        if count == 0 || count > MAX_SIGNATURES {
            return Err(SealError::Bounds);
        }
        Ok(Signatures { entries: r.take(count * Self::ENTRY, "signatures")? })
    }

    fn iter(&self) -> impl Iterator<Item = (&'a [u8; 32], &'a [u8])> {
        self.entries.chunks_exact(Self::ENTRY).filter_map(|entry| {
            let (key, signature) = entry.split_at(32);
            Some((key.try_into().ok()?, signature))
        })
    }
}

/// Appends to a fixed buffer that the callers sized for the largest encoding.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

#[cfg(feature = "alloc")]
mod build;
#[cfg(feature = "alloc")]
pub use build::{seal, statement};

#[cfg(test)]
mod tests;
