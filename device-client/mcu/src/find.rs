//! Finding what to install: the four checked requests of `protocol::device::sealed` over one
//! edge link — the rollout policy's seal, the policy by content name, the manifest's seal,
//! the manifest by content name — each answer verified before the next question.
//!
//! A seal (up to 5,954 bytes) is opened where it arrived, in the link's buffer, and only its
//! claim (length and sha256 of its subject) is kept: an MCU needs no buffer for seals.

use protocol::device::sealed::{self, DeviceLimits, SealedError, MAX_PATH_BYTES};
use protocol::install::Offer;
use protocol::manifest::ManifestView;
use protocol::rollout::policy::PolicyView;
use protocol::seal::TrustAnchor;
use protocol::seal::{ClaimedSubject, SealKind};
use protocol::wire::device::{Request, Response};

use crate::edge_link::{EdgeLink, LinkError};

/// Where the policy and the manifest go (the gate reads the policy, the download the
/// manifest); seals stay in the link's buffer, which must hold any seal answer
/// (`protocol::seal::MAX_SEAL_BYTES` and the response's 5-byte head).
pub struct FindBuffers<'a> {
    /// At least `protocol::rollout::policy::limits::MAX_POLICY_BYTES`.
    pub policy: &'a mut [u8],
    /// The largest manifest the device takes.
    pub manifest: &'a mut [u8],
}

/// A release the pinned keys vouch for, named by a policy for this device.
pub struct Found<'a> {
    /// The seals carried a key rotation: the anchor [`find_release`] was given now holds
    /// the new one; persist it before acting on the release.
    pub rotated: bool,
    /// The verified policy.
    pub policy: PolicyView<'a>,
    /// The verified manifest.
    pub manifest: ManifestView<'a>,
    /// What to offer the install engine.
    pub offer: Offer,
}

/// Why no release came from this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindError {
    /// The link failed; see [`LinkError::blames_edge`].
    Link(LinkError),
    /// The edge lacks a file (no rollout for this release yet, or the edge is behind or
    /// ahead of the seal it served): ask again later or elsewhere.
    Missing,
    /// What the edge served did not check out; see [`SealedError::blames_edge`].
    Sealed(SealedError),
}

impl From<LinkError> for FindError {
    fn from(e: LinkError) -> Self {
        FindError::Link(e)
    }
}

impl From<SealedError> for FindError {
    fn from(e: SealedError) -> Self {
        FindError::Sealed(e)
    }
}

impl FindError {
    /// Whether the edge lied or broke the protocol: drop it for another.
    pub fn blames_edge(&self) -> bool {
        match self {
            FindError::Link(e) => e.blames_edge(),
            FindError::Missing => false,
            FindError::Sealed(e) => e.blames_edge(),
        }
    }
}

/// Asks `link` for the release a verified rollout policy names for `device`.
///
/// `anchor` is the pinned anchor; on success it is advanced to the anchor the seals'
/// statements lead to (see [`Found::rotated`]), on an error it is untouched. In and out by
/// reference rather than returned: an anchor is 520 bytes, and every copy of it in an
/// async function is MCU stack or a bigger future.
pub async fn find_release<'a, S>(
    link: &mut EdgeLink<'_, S>,
    anchor: &mut TrustAnchor,
    device: &DeviceLimits<'_>,
    buffers: FindBuffers<'a>,
) -> Result<Found<'a>, FindError>
where
    S: embedded_io_async::Read + embedded_io_async::Write,
{
    let FindBuffers { policy, manifest } = buffers;
    let mut path = [0u8; MAX_PATH_BYTES];

    // The anchor the seals' statements lead to; the caller's changes only on success.
    let mut working = *anchor;
    let asked = sealed::policy_seal_path(device.release, &mut path)?;
    let claimed = match link.request(&Request::GetTarget { path: asked }).await? {
        Response::Bytes(seal) => open_in_place(&mut working, seal, SealKind::Policy)?,
        Response::NotFound => return Err(FindError::Missing),
        _ => return Err(FindError::Link(LinkError::Unexpected)),
    };
    let asked = sealed::policy_request_for(device.release, &claimed, &mut path)?;
    let policy_len = link.get_target(asked, policy).await?.ok_or(FindError::Missing)?.len();
    let policy: &'a [u8] = &policy[..policy_len];
    let policy_view = sealed::check_policy_claimed(device, &claimed, policy)?;

    let asked = sealed::manifest_seal_path(&policy_view, &mut path)?;
    let claimed = match link.request(&Request::GetTarget { path: asked }).await? {
        Response::Bytes(seal) => open_in_place(&mut working, seal, SealKind::Manifest)?,
        Response::NotFound => return Err(FindError::Missing),
        _ => return Err(FindError::Link(LinkError::Unexpected)),
    };
    let asked = sealed::manifest_request_for(&policy_view, &claimed, &mut path)?;
    let manifest_len = link.get_target(asked, manifest).await?.ok_or(FindError::Missing)?.len();
    let manifest: &'a [u8] = &manifest[..manifest_len];
    let (manifest_view, offer) = sealed::check_manifest_claimed(device, &policy_view, &claimed, manifest)?;
    let rotated = working != *anchor;
    if rotated {
        *anchor = working;
    }
    Ok(Found { rotated, policy: policy_view, manifest: manifest_view, offer })
}

/// Opens `seal` (still in the link's buffer) under `anchor` and advances `anchor` by its
/// statements; returns what it claims. Out of line and in place, so that no copy of the
/// 520-byte anchor rides in the async frames above the signature checks.
#[inline(never)]
fn open_in_place(anchor: &mut TrustAnchor, seal: &[u8], kind: SealKind) -> Result<ClaimedSubject, FindError> {
    let (opened, claimed) = sealed::open_claimed(anchor, seal, kind)?;
    *anchor = opened.anchor;
    Ok(claimed)
}
