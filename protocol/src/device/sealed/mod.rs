//! A release from seals: what a microcontroller checks, without TUF, before it downloads.
//!
//! An MCU pins a [`TrustAnchor`] and knows its release name and hardware class. It learns
//! what to install from the release's rollout policy — on an MCU a release installs only
//! when a signed policy names it — in four requests to one edge node, each answer checked
//! before the next question:
//!
//! 1. the policy's seal, `rollouts/NAME.policy.sig` ([`policy_seal_path`]);
//! 2. the policy by the content name its seal claims ([`policy_request`]); [`check_policy`]
//!    opens the seal (following key rotations it carries), parses the policy and checks it
//!    names this release name and hardware class;
//! 3. the manifest's seal, `releases/NAME/VERSION.manifest.sig` ([`manifest_seal_path`]);
//! 4. the manifest by content name ([`manifest_request`]); [`check_manifest`] opens the
//!    seal and checks the manifest is the release the policy names, for this hardware class,
//!    not below the device's anti-rollback floor, and within the device's limits; it returns
//!    the install engine's [`Offer`].
//!
//! Asking by content name (the sha256 the seal claims) makes each answer exactly the bytes
//! the seal speaks for: an edge that re-signed its policy in between answers "not found"
//! (ask again later), and bytes that do not match are a lie. Every error here is either the
//! edge's fault (drop it for another) or "nothing to do"; [`SealedError::blames_edge`] says
//! which.
//!
//! Non-goals: the gate's decision (`crate::rollout::Gate`, which the driver asks with the
//! checked policy), persistence of a rotated anchor (the driver's, before it acts on it),
//! and chunks (`crate::codec::open_in_place` verifies each before it is written).

use crate::install::{Label, Offer, Release};
use crate::manifest::ManifestView;
use crate::rollout::policy::PolicyView;
use crate::rollout::RolloutRelease;
use crate::seal::{self, ClaimedSubject, Opened, SealError, SealKind, TrustAnchor};
use crate::ReleaseId;
use sha2::{Digest, Sha256};

/// Longest path this module writes: a content-named manifest path with the longest name and
/// version (`releases/` + 64 + `/` + 64 + `.` + 32 + `.manifest.sig`, with room to spare).
pub const MAX_PATH_BYTES: usize = 256;

/// Why a release could not be taken from what an edge served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedError {
    /// A seal did not open (see the inner error) or sealed another kind of file.
    Seal(SealError),
    /// The policy does not parse.
    Policy,
    /// The policy is for another release name or hardware class.
    PolicyNotForDevice,
    /// The manifest does not decode.
    Manifest,
    /// The manifest is not the release the policy names.
    ManifestNotNamed,
    /// The manifest is bigger than this device can hold (image or chunk count).
    TooBig,
    /// A name does not fit a path buffer.
    PathTooLong,
}

impl SealedError {
    /// Whether the edge that served the bytes lied or served garbage (drop it), as opposed
    /// to the device having nothing to install from this release.
    pub fn blames_edge(&self) -> bool {
        !matches!(self, SealedError::TooBig | SealedError::PathTooLong)
    }
}

impl From<SealError> for SealedError {
    fn from(e: SealError) -> Self {
        SealedError::Seal(e)
    }
}

impl core::fmt::Display for SealedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SealedError::Seal(e) => write!(f, "seal: {e}"),
            SealedError::Policy => f.write_str("the rollout policy does not parse"),
            SealedError::PolicyNotForDevice => f.write_str("the rollout policy is for another release or class"),
            SealedError::Manifest => f.write_str("the manifest does not decode"),
            SealedError::ManifestNotNamed => f.write_str("the manifest is not the release the policy names"),
            SealedError::TooBig => f.write_str("the release is bigger than this device can hold"),
            SealedError::PathTooLong => f.write_str("a release name or version is too long for this device"),
        }
    }
}

/// What the device is: its release name and hardware class, and what it can hold.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits<'a> {
    /// The release name it follows (`releases/NAME/…`, `rollouts/NAME.policy`).
    pub release: &'a str,
    /// Its hardware class.
    pub hw_class: &'a str,
    /// The largest image its update partition holds.
    pub max_image_bytes: u64,
    /// The most chunks its progress record tracks.
    pub max_chunks: u32,
    /// The largest stored chunk its receive buffer holds.
    pub max_stored_chunk_bytes: u32,
}

/// Joins `parts` into `out`; `None` if it does not fit.
fn join<'o>(parts: &[&str], out: &'o mut [u8]) -> Option<&'o str> {
    let mut len = 0;
    for part in parts {
        let end = len + part.len();
        out.get_mut(len..end)?.copy_from_slice(part.as_bytes());
        len = end;
    }
    core::str::from_utf8(&out[..len]).ok()
}

/// `rollouts/NAME.policy`.
fn policy_path<'o>(release: &str, out: &'o mut [u8]) -> Option<&'o str> {
    join(&["rollouts/", release, ".policy"], out)
}

/// Request 1: the policy's seal.
pub fn policy_seal_path<'o>(release: &str, out: &'o mut [u8]) -> Result<&'o str, SealedError> {
    join(&["rollouts/", release, ".policy", seal::SEAL_SUFFIX], out).ok_or(SealedError::PathTooLong)
}

/// Request 2: the policy by the content name `seal` claims.
pub fn policy_request<'o>(release: &str, seal: &[u8], out: &'o mut [u8]) -> Result<&'o str, SealedError> {
    policy_request_for(release, &seal::claimed_subject(seal)?, out)
}

/// [`policy_request`] for a seal already opened ([`open_claimed`]).
pub fn policy_request_for<'o>(
    release: &str,
    claimed: &ClaimedSubject,
    out: &'o mut [u8],
) -> Result<&'o str, SealedError> {
    let mut plain = [0u8; MAX_PATH_BYTES];
    let path = policy_path(release, &mut plain).ok_or(SealedError::PathTooLong)?;
    seal::content_name(path, &claimed.sha256, out).ok_or(SealedError::PathTooLong)
}

/// Opens a seal of `kind` under `anchor` for the subject it claims, before the subject is
/// fetched: so a device can check the seal where it received it (an MCU's one link buffer)
/// and keep only the claim — 36 bytes — instead of the seal. The subject must then match
/// the claim ([`check_policy_claimed`], [`check_manifest_claimed`]); the signatures cover
/// the claim, so the pair checks exactly what [`seal::open`] does.
pub fn open_claimed(
    anchor: &TrustAnchor,
    seal_bytes: &[u8],
    kind: SealKind,
) -> Result<(Opened, ClaimedSubject), SealedError> {
    let claimed = seal::claimed_subject(seal_bytes)?;
    let opened = seal::open_digest(anchor, seal_bytes, kind, claimed.len, &claimed.sha256)?;
    Ok((opened, claimed))
}

/// Whether `subject` is what `claimed` describes.
fn matches_claim(claimed: &ClaimedSubject, subject: &[u8]) -> Result<(), SealedError> {
    let same_len = u32::try_from(subject.len()).is_ok_and(|len| len == claimed.len);
    if !same_len || <[u8; 32]>::from(Sha256::digest(subject)) != claimed.sha256 {
        return Err(SealedError::Seal(seal::SealError::WrongSubject));
    }
    Ok(())
}

/// Checks the policy against its seal under `anchor`, and that it is for this device.
pub fn check_policy<'p>(
    anchor: &TrustAnchor,
    device: &DeviceLimits<'_>,
    seal_bytes: &[u8],
    policy: &'p [u8],
) -> Result<(Opened, PolicyView<'p>), SealedError> {
    let opened = seal::open(anchor, seal_bytes, SealKind::Policy, policy)?;
    Ok((opened, check_policy_claimed_unchecked(device, policy)?))
}

/// [`check_policy`] for a seal opened by [`open_claimed`]: the policy must be the one it
/// claims, and for this device.
pub fn check_policy_claimed<'p>(
    device: &DeviceLimits<'_>,
    claimed: &ClaimedSubject,
    policy: &'p [u8],
) -> Result<PolicyView<'p>, SealedError> {
    matches_claim(claimed, policy)?;
    check_policy_claimed_unchecked(device, policy)
}

/// The policy's own checks, its seal already matched.
fn check_policy_claimed_unchecked<'p>(
    device: &DeviceLimits<'_>,
    policy: &'p [u8],
) -> Result<PolicyView<'p>, SealedError> {
    let view = PolicyView::parse(policy).map_err(|_| SealedError::Policy)?;
    let named = view.release();
    if named.name != device.release || named.hw_class != device.hw_class {
        return Err(SealedError::PolicyNotForDevice);
    }
    Ok(view)
}

/// `releases/NAME/VERSION.manifest`.
fn manifest_path<'o>(named: &RolloutRelease<&str>, out: &'o mut [u8]) -> Option<&'o str> {
    join(&["releases/", named.name, "/", named.version, ".manifest"], out)
}

/// Request 3: the seal of the manifest the policy names.
pub fn manifest_seal_path<'o>(policy: &PolicyView<'_>, out: &'o mut [u8]) -> Result<&'o str, SealedError> {
    let named = policy.release();
    join(&["releases/", named.name, "/", named.version, ".manifest", seal::SEAL_SUFFIX], out)
        .ok_or(SealedError::PathTooLong)
}

/// Request 4: the manifest by the content name `seal` claims.
pub fn manifest_request<'o>(policy: &PolicyView<'_>, seal: &[u8], out: &'o mut [u8]) -> Result<&'o str, SealedError> {
    manifest_request_for(policy, &seal::claimed_subject(seal)?, out)
}

/// [`manifest_request`] for a seal already opened ([`open_claimed`]).
pub fn manifest_request_for<'o>(
    policy: &PolicyView<'_>,
    claimed: &ClaimedSubject,
    out: &'o mut [u8],
) -> Result<&'o str, SealedError> {
    let mut plain = [0u8; MAX_PATH_BYTES];
    let path = manifest_path(&policy.release(), &mut plain).ok_or(SealedError::PathTooLong)?;
    seal::content_name(path, &claimed.sha256, out).ok_or(SealedError::PathTooLong)
}

/// Checks the manifest against its seal under `anchor` (the anchor after the policy's seal),
/// that it is the release `policy` names, and that this device can hold it. The engine
/// still refuses a class mismatch or a counter below its floor, and says so in its record.
pub fn check_manifest<'m>(
    anchor: &TrustAnchor,
    device: &DeviceLimits<'_>,
    policy: &PolicyView<'_>,
    seal_bytes: &[u8],
    manifest: &'m [u8],
) -> Result<(Opened, ManifestView<'m>, Offer), SealedError> {
    let opened = seal::open(anchor, seal_bytes, SealKind::Manifest, manifest)?;
    let (view, offer) = check_manifest_unsealed(device, policy, manifest)?;
    Ok((opened, view, offer))
}

/// [`check_manifest`] for a seal opened by [`open_claimed`]: the manifest must be the one it
/// claims, the release the policy names, and fit this device.
pub fn check_manifest_claimed<'m>(
    device: &DeviceLimits<'_>,
    policy: &PolicyView<'_>,
    claimed: &ClaimedSubject,
    manifest: &'m [u8],
) -> Result<(ManifestView<'m>, Offer), SealedError> {
    matches_claim(claimed, manifest)?;
    check_manifest_unsealed(device, policy, manifest)
}

/// The manifest's own checks, its seal already matched.
fn check_manifest_unsealed<'m>(
    device: &DeviceLimits<'_>,
    policy: &PolicyView<'_>,
    manifest: &'m [u8],
) -> Result<(ManifestView<'m>, Offer), SealedError> {
    let view = ManifestView::new_checked(manifest).map_err(|_| SealedError::Manifest)?;
    if !policy.release().matches(view.name(), view.version(), view.hw_class()) {
        return Err(SealedError::ManifestNotNamed);
    }
    let too_big = view.image_len() > device.max_image_bytes
        || view.chunk_count() > device.max_chunks
        || view.chunks().any(|c| c.stored_length > device.max_stored_chunk_bytes);
    if too_big {
        return Err(SealedError::TooBig);
    }
    let (Some(version), Some(hw_class)) = (Label::new(view.version()), Label::new(view.hw_class())) else {
        return Err(SealedError::Manifest);
    };
    let release = Release {
        id: ReleaseId::of_manifest(manifest),
        version,
        security_counter: view.security_counter(),
        image_len: view.image_len(),
        chunk_count: view.chunk_count(),
    };
    Ok((view, Offer { release, hw_class }))
}

#[cfg(test)]
mod tests;
