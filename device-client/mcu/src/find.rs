//! Finding what to install: the four checked requests of `protocol::device::sealed` over one
//! edge link — the rollout policy's seal, the policy by content name, the manifest's seal,
//! the manifest by content name — each answer verified before the next question.

use protocol::device::sealed::{self, DeviceLimits, SealedError, MAX_PATH_BYTES};
use protocol::install::Offer;
use protocol::manifest::ManifestView;
use protocol::rollout::policy::PolicyView;
use protocol::seal::TrustAnchor;

use crate::edge_link::{EdgeLink, LinkError};

/// Where the four answers go: the seal buffer is reused for both seals, the policy and the
/// manifest stay (the gate reads the policy, the download the manifest).
pub struct FindBuffers<'a> {
    /// At least `protocol::seal::MAX_SEAL_BYTES` to take any seal.
    pub seal: &'a mut [u8],
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
    let FindBuffers { seal, policy, manifest } = buffers;
    let mut path = [0u8; MAX_PATH_BYTES];

    let asked = sealed::policy_seal_path(device.release, &mut path)?;
    let policy_seal_len = link.get_target(asked, seal).await?.ok_or(FindError::Missing)?.len();
    let asked = sealed::policy_request(device.release, &seal[..policy_seal_len], &mut path)?;
    let policy_len = link.get_target(asked, policy).await?.ok_or(FindError::Missing)?.len();
    let policy: &'a [u8] = &policy[..policy_len];
    let (opened, policy_view) = sealed::check_policy(anchor, device, &seal[..policy_seal_len], policy)?;

    let asked = sealed::manifest_seal_path(&policy_view, &mut path)?;
    let manifest_seal_len = link.get_target(asked, seal).await?.ok_or(FindError::Missing)?.len();
    let asked = sealed::manifest_request(&policy_view, &seal[..manifest_seal_len], &mut path)?;
    let manifest_len = link.get_target(asked, manifest).await?.ok_or(FindError::Missing)?.len();
    let manifest: &'a [u8] = &manifest[..manifest_len];
    let (opened, manifest_view, offer) =
        sealed::check_manifest(&opened.anchor, device, &policy_view, &seal[..manifest_seal_len], manifest)?;
    let rotated = opened.anchor != *anchor;
    if rotated {
        *anchor = opened.anchor;
    }
    Ok(Found { rotated, policy: policy_view, manifest: manifest_view, offer })
}
