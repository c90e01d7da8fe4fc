//! TUF through an edge node's device service, and the signed targets the device's release
//! choice (`protocol::device::release`) is made among.
//!
//! The edge node is untrusted: it relays metadata and manifests, and the sans-IO updater in
//! `protocol::tuf` verifies them against the root pinned in the agent's data directory. A
//! stale timestamp, a replayed older snapshot or a manifest whose hash does not match its
//! signed target fails here, and the agent moves on to another edge node. Errors keep the
//! TUF error whole so the agent can tell an edge that lied from one that is merely behind
//! (`protocol::device::metadata::refresh_verdict`), and a manifest that failed verification from one the edge
//! does not have.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use edge_client::DeviceClient;
use host::tuf_dir::{DriveError, TrustedDir};
use protocol::device::release::{self, choose_release as choose_release_among, DeviceIdentity, Refusal};
use protocol::device::{ReleaseCandidate, ReleaseChoice};
use protocol::manifest::ManifestView;
use protocol::rollout::RolloutRelease;
use protocol::tuf::{rollouts_role, Event, FetchError, TargetFile, TrustedMetadataSet, Updater};

use crate::tuf_http::unix_now;

/// Where the agent keeps verified metadata: `metadata_dir/root.json` is the pinned root.
#[derive(Debug, Clone)]
pub struct MetadataDir(pub TrustedDir);

impl MetadataDir {
    /// Metadata under `dir`.
    pub fn new(dir: PathBuf) -> MetadataDir {
        MetadataDir(TrustedDir::new(dir))
    }

    /// Whether a root is pinned already (a device that has started before).
    pub fn has_root(&self) -> bool {
        self.0.has_root()
    }

    /// Reads and checks the configured root without writing anything, so a bad
    /// `trusted_root` fails the start before the data directory exists.
    pub fn read_trusted_root(root: &Path) -> Result<Vec<u8>> {
        let limit = crate::tuf_config().root_max_length;
        let bytes = host::tuf_dir::read_capped(root, limit).with_context(|| {
            format!("cannot read trusted root {}; set trusted_root to the fleet's root.json", root.display())
        })?;
        Updater::new(&bytes, unix_now(), crate::tuf_config()).map_err(|e| {
            anyhow!("trusted root {} is invalid ({e}); set trusted_root to the fleet's root.json", root.display())
        })?;
        Ok(bytes)
    }

    /// Pins `root` (checked by [`MetadataDir::read_trusted_root`]) on a device's first start.
    pub fn pin_root(&self, root: &[u8]) -> Result<()> {
        Ok(self.0.pin_root(root)?)
    }
}

/// Why a refresh through one edge stopped.
#[derive(Debug)]
pub enum RefreshError {
    /// What the edge served did not verify, or a fetch from it failed; the TUF error says
    /// which (see `protocol::device::metadata::refresh_verdict`).
    Metadata(protocol::tuf::Error),
    /// The edge's answer did not parse as a response at all (it lied).
    Malformed(edge_client::ClientError),
    /// The device's own side: the pinned root or the metadata directory.
    Local(anyhow::Error),
}

impl std::fmt::Display for RefreshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshError::Metadata(e) => write!(f, "{e}"),
            RefreshError::Malformed(e) => write!(f, "{e}"),
            RefreshError::Local(e) => write!(f, "{e:#}"),
        }
    }
}

/// What a refresh verified: the top-level metadata, and — when the repository delegates
/// rollouts — the signed target of the policy for the release this device follows (`None`
/// if no rollout of it was ever started).
pub struct Refreshed {
    /// Root, timestamp, snapshot, targets (and the `rollouts` role when delegated).
    pub trusted: TrustedMetadataSet,
    /// Whether the repository delegates rollouts: then the device installs only what a
    /// verified policy names.
    pub rollouts: bool,
    /// The policy's target, when there is one.
    pub policy: Option<TargetFile>,
}

/// One full TUF refresh (root chain, timestamp, snapshot, targets, and the rollout policy of
/// `release` through the `rollouts` delegation) through `edge`.
pub async fn refresh(edge: &mut DeviceClient, dir: &MetadataDir, release: &str) -> Result<Refreshed, RefreshError> {
    let root = dir
        .0
        .read_root(crate::tuf_config().root_max_length)
        .context("no pinned root in the metadata directory")
        .map_err(RefreshError::Local)?;
    let mut updater = Updater::new(&root, unix_now(), crate::tuf_config())
        .map_err(|e| RefreshError::Local(anyhow!("pinned root: {e}")))?;
    updater.refresh();
    drive(edge, dir, &mut updater, &mut |_| Ok(())).await?;
    let Some(targets) = updater.trusted().targets("targets") else {
        return Err(RefreshError::Local(anyhow!("refresh ended without verified targets")));
    };
    let rollouts = rollouts_role::is_delegated(targets);
    let mut policy = None;
    if rollouts {
        updater.find_target(&rollouts_role::policy_target_path(release)).map_err(RefreshError::Metadata)?;
        drive(edge, dir, &mut updater, &mut |event| {
            if let Event::TargetFound(target) = event {
                policy = Some(target.clone());
            }
            Ok(())
        })
        .await?;
    }
    Ok(Refreshed { trusted: updater.trusted().clone(), rollouts, policy })
}

/// Runs `updater`'s current operation to its end, remote files from `edge`.
async fn drive(
    edge: &mut DeviceClient,
    dir: &MetadataDir,
    updater: &mut Updater,
    on_event: &mut dyn FnMut(&Event) -> anyhow::Result<()>,
) -> Result<(), RefreshError> {
    while let Some(request) = dir.0.next_remote(updater, &mut *on_event).map_err(|e| match e {
        DriveError::Metadata(e) => RefreshError::Metadata(e),
        DriveError::Local(e) => RefreshError::Local(e),
    })? {
        let response = match edge.get_metadata(&request.file_name).await {
            Ok(Some(bytes)) if bytes.len() as u64 <= request.max_length => Ok(bytes),
            Ok(Some(_)) => Err(FetchError::TooLarge),
            Ok(None) => Err(FetchError::NotFound),
            Err(e @ (edge_client::ClientError::Malformed(_) | edge_client::ClientError::Unexpected(_))) => {
                return Err(RefreshError::Malformed(e));
            }
            Err(e) => {
                tracing::debug!(%e, file = %request.file_name, "metadata fetch failed");
                Err(FetchError::Failed)
            }
        };
        updater.handle_response(response).map_err(RefreshError::Metadata)?;
    }
    Ok(())
}

/// Why a manifest could not be had from one edge.
#[derive(Debug)]
pub enum ManifestError {
    /// The edge does not have it (it is behind) or did not answer: ask another, no blame.
    Unavailable(String),
    /// What it served does not match the signed target: it lied.
    Invalid(String),
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestError::Unavailable(why) | ManifestError::Invalid(why) => f.write_str(why),
        }
    }
}

/// The release a device should run among the signed targets `releases/<release>/*.manifest`,
/// chosen by `protocol::device::choose_release` (hardware class, then the highest security
/// counter, then the highest version), with the reason the device must refuse it if it
/// must (none for its hardware class, or below its anti-rollback floor). `None` if nothing
/// is published under its release name.
///
/// With `rollout` (the release a verified rollout policy names), only that release is a
/// candidate: the top-level targets role must have signed it, and the policy only picks
/// among what it signed.
pub fn choose_release<'a>(
    trusted: &'a TrustedMetadataSet,
    device: &DeviceIdentity<'_>,
    rollout: Option<&RolloutRelease<&str>>,
) -> Option<(&'a TargetFile, Option<Refusal>)> {
    let targets = trusted.targets("targets")?;
    // A target without valid release metadata matches no hardware class and ranks lowest.
    let releases: Vec<(&TargetFile, &str, Option<protocol::tuf::ReleaseTarget>)> = targets
        .targets
        .values()
        .filter_map(|t| Some((t, release::release_name(&t.path)?, t.release().ok())))
        .filter(|(_, name, meta)| {
            rollout.is_none_or(|r| meta.as_ref().is_some_and(|m| r.matches(name, &m.version, &m.hw_class)))
        })
        .collect();
    let candidates: Vec<ReleaseCandidate<'_>> = releases
        .iter()
        .map(|(_, name, meta)| ReleaseCandidate {
            name,
            hw_class: meta.as_ref().map_or("", |m| m.hw_class.as_str()),
            security_counter: meta.as_ref().map_or(0, |m| m.security_counter),
            version: meta.as_ref().map_or("", |m| m.version.as_str()),
        })
        .collect();
    match choose_release_among(candidates.iter().copied(), device) {
        ReleaseChoice::Nothing => None,
        ReleaseChoice::Install(i) => Some((releases[i].0, None)),
        ReleaseChoice::Refuse { index, reason } => Some((releases[index].0, Some(reason))),
    }
}

/// Downloads the manifest of `target` through `edge` and checks it against the signed
/// length and hashes, then decodes it.
pub async fn fetch_manifest(edge: &mut DeviceClient, target: &TargetFile) -> Result<Vec<u8>, ManifestError> {
    let bytes = fetch_target(edge, target).await?;
    ManifestView::new_checked(&bytes)
        .map_err(|e| ManifestError::Invalid(format!("manifest {} does not decode: {e}", target.path)))?;
    Ok(bytes)
}

/// Downloads the rollout policy `target` through `edge`, checked against its signed hashes
/// and parsed (a policy devices would refuse is refused here).
pub async fn fetch_policy(edge: &mut DeviceClient, target: &TargetFile) -> Result<Vec<u8>, ManifestError> {
    let bytes = fetch_target(edge, target).await?;
    protocol::rollout::PolicyView::parse(&bytes)
        .map_err(|e| ManifestError::Invalid(format!("rollout policy {} does not parse: {e}", target.path)))?;
    Ok(bytes)
}

/// A target file through `edge`, checked against the signed length and hashes.
///
/// Asked for by its content name (the consistent-snapshot path under its sha256) when the
/// metadata gives one: a file such as a rollout policy changes under its plain path whenever
/// the publisher re-signs it, and an honest edge that updated between this device's metadata
/// refresh and this request would otherwise serve the newer bytes and be taken for a liar.
/// By content name, bytes that do not verify are a lie; a version the edge no longer (or
/// not yet) holds is "not found".
async fn fetch_target(edge: &mut DeviceClient, target: &TargetFile) -> Result<Vec<u8>, ManifestError> {
    let invalid = |why: String| ManifestError::Invalid(why);
    let asked = match target.hashes.get("sha256") {
        Some(sha256) => protocol::tuf::hashed_target_path(&target.path, sha256),
        None => target.path.clone(),
    };
    let bytes = match edge.get_target(&asked).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(ManifestError::Unavailable(format!("edge node does not have {}", target.path))),
        Err(e @ (edge_client::ClientError::Malformed(_) | edge_client::ClientError::Unexpected(_))) => {
            return Err(invalid(format!("fetching {}: {e}", target.path)))
        }
        Err(e) => return Err(ManifestError::Unavailable(format!("fetching {}: {e}", target.path))),
    };
    target.verify(&bytes).map_err(|e| invalid(format!("{} did not verify: {e}", target.path)))?;
    Ok(bytes)
}
