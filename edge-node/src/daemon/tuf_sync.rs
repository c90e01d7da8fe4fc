//! TUF over the mesh: the edge node runs the standard client workflow (`protocol::tuf`)
//! with repository files fetched from peers. Any peer may serve them, since every byte is
//! verified against the pinned root, so site-mates can answer while the WAN is down; a body
//! that fails verification sends the request to the next peer and marks its sender
//! ([`SourceOutcomes`]), so one hostile peer cannot stop a refresh.
//!
//! Verified metadata is kept twice: the client's trusted copies (`tuf/<role>.json`) and a
//! standard consistent-snapshot mirror (`repo/metadata/N.<role>.json`, `repo/targets/…`)
//! that the HTTP server exposes to any TUF client.

use anyhow::{anyhow, bail, Context, Result};
use host::tuf_dir::TrustedDir;
use libp2p::PeerId;
use protocol::manifest::ManifestView;
use protocol::tuf::{
    encode_role_name, rollouts_role, Config, Event, FetchError, TargetFile, TrustedMetadataSet, Updater,
};
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

use super::meta_sources::SourceOutcomes;
use chunk_store::repo_files;
use mesh::NetworkClient;

/// Where TUF state lives.
#[derive(Debug, Clone)]
pub struct TufDirs {
    /// The client's trusted copies, one per role.
    pub trusted: TrustedDir,
    /// The mirror served over HTTP and to peers.
    pub mirror: PathBuf,
}

/// A release found in verified targets metadata, with its verified manifest bytes.
#[derive(Debug, Clone)]
pub struct FoundRelease {
    /// TUF target path, e.g. `releases/gw/1.0.0.manifest`.
    pub target_path: String,
    /// The manifest, verified against the target's hashes and decoded once.
    pub manifest: Vec<u8>,
}

impl TufDirs {
    /// Under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        TufDirs { trusted: TrustedDir::new(data_dir.join("tuf")), mirror: data_dir.join("repo") }
    }

    /// Whether a root is pinned already.
    pub fn has_root(&self) -> bool {
        self.trusted.has_root()
    }

    /// Pins `root` (an operator-supplied file, or the origin's on first use) after checking
    /// that it is a self-consistent root.
    pub fn pin_root(&self, root: &[u8], now: i64) -> Result<()> {
        let set = TrustedMetadataSet::new(root, now, None).map_err(|e| anyhow!("trusted root: {e}"))?;
        let version = set.root().common.version;
        self.trusted.pin_root(root)?;
        repo_files::write(&self.mirror, &format!("metadata/{version}.root.json"), root)?;
        repo_files::write(&self.mirror, "metadata/root.json", root)?;
        Ok(())
    }

    /// The last verified state from disk, without the network; `None` if incomplete. Used at
    /// start-up so a node whose WAN is down still knows (and serves) its releases.
    pub fn load_cached(&self, now: i64) -> Option<TrustedMetadataSet> {
        let limits = Config::default();
        let read = |role: &str, max_length| self.trusted.read_role(role, max_length);
        // Expired metadata is still what we last verified; serving it is a local decision,
        // devices re-check expiry themselves.
        let mut set = TrustedMetadataSet::new(&read("root", limits.root_max_length)?, now, None).ok()?;
        set.update_timestamp(&read("timestamp", limits.timestamp_max_length)?).ok()?;
        set.update_snapshot(&read("snapshot", limits.snapshot_max_length)?, true).ok()?;
        set.update_delegated_targets(&read("targets", limits.targets_max_length)?, "targets", "root").ok()?;
        if set.targets("targets").is_some_and(rollouts_role::is_delegated) {
            let role = rollouts_role::ROLE;
            // Without it the node still serves releases; policies come with the next refresh.
            if let Some(bytes) = read(role, limits.targets_max_length) {
                let _ = set.update_delegated_targets(&bytes, role, "targets");
            }
        }
        Some(set)
    }
}

/// How many peers are asked for `timestamp.json` at once. The newest version that verifies
/// wins, so a peer answering with an authentic but older timestamp cannot hold the node back
/// while one of the others has the current one.
const TIMESTAMP_SAMPLE: usize = 3;

/// Asks `peer` for repository file `name`; `None` if it has none, failed, or sent more than
/// `max` bytes (counted as a lie: a correct peer never does).
async fn fetch_one(
    client: &NetworkClient,
    peer: PeerId,
    name: &str,
    max: u64,
    outcomes: &mut SourceOutcomes,
) -> Option<Vec<u8>> {
    match client.request_meta(peer, name).await {
        Ok(resp) => match resp.body {
            Some(body) if body.len() as u64 > max => {
                warn!(%peer, %name, len = body.len(), max, "peer sent an oversized repository file");
                outcomes.lied.push(peer);
                None
            }
            body => body,
        },
        Err(e) => {
            debug!(%peer, %name, %e, "meta request failed");
            None
        }
    }
}

/// Feeds one candidate body to the updater. `Ok(true)`: it verified. `Ok(false)`: it did not,
/// the request is still pending, and the next source may answer it (the error is kept in
/// `last`). `peer` is `None` for a body that came by gossip.
fn try_candidate(
    updater: &mut Updater,
    peer: Option<PeerId>,
    bytes: Vec<u8>,
    outcomes: &mut SourceOutcomes,
    last: &mut Option<protocol::tuf::Error>,
) -> Result<bool> {
    match updater.handle_candidate(bytes) {
        Ok(()) => {
            outcomes.verified.extend(peer);
            Ok(true)
        }
        Err(e @ protocol::tuf::Error::Repository(_)) => {
            if e.source_is_behind() {
                debug!(?peer, %e, "peer is behind");
            } else {
                warn!(?peer, %e, "peer served metadata that failed verification; asking another");
                outcomes.lied.extend(peer);
            }
            let over = updater.poll_request().is_none();
            *last = Some(e.clone());
            if over {
                bail!("{e}");
            }
            Ok(false)
        }
        Err(e) => bail!("{e}"),
    }
}

/// Answers the updater's current remote request from `sources`, best first, until a body
/// verifies. When none does, the request ends with the last verification error (something
/// was offered and refused) or NotFound.
async fn answer_remote(
    client: &NetworkClient,
    sources: &[PeerId],
    updater: &mut Updater,
    file_name: &str,
    max: u64,
    announced: Option<Vec<u8>>,
    outcomes: &mut SourceOutcomes,
) -> Result<()> {
    let name = format!("metadata/{file_name}");
    let mut last = None;
    let mut rest = sources;
    if file_name == "timestamp.json" {
        let (sample, others) = sources.split_at(sources.len().min(TIMESTAMP_SAMPLE));
        rest = others;
        let mut candidates: Vec<(Option<PeerId>, Vec<u8>)> = announced.into_iter().map(|b| (None, b)).collect();
        let answers = futures::future::join_all(sample.iter().map(|peer| {
            let mut mine = SourceOutcomes::default();
            let name = name.clone();
            async move {
                let body = fetch_one(client, *peer, &name, max, &mut mine).await;
                (*peer, body, mine)
            }
        }))
        .await;
        for (peer, body, mine) in answers {
            outcomes.lied.extend(mine.lied);
            candidates.extend(body.map(|b| (Some(peer), b)));
        }
        // Highest claimed version first; a forged huge version is refused and costs its
        // sender, then the next is tried.
        candidates.sort_by_key(|(_, b)| std::cmp::Reverse(signed_version(b).unwrap_or(0)));
        for (peer, bytes) in candidates {
            if try_candidate(updater, peer, bytes, outcomes, &mut last)? {
                return Ok(());
            }
        }
    }
    for peer in rest {
        let Some(bytes) = fetch_one(client, *peer, &name, max, outcomes).await else { continue };
        if try_candidate(updater, Some(*peer), bytes, outcomes, &mut last)? {
            return Ok(());
        }
    }
    match last {
        Some(e) => {
            // Something was offered and refused: end the operation with why.
            let _ = updater.handle_response(Err(FetchError::Failed));
            bail!("{e}")
        }
        None => updater.handle_response(Err(FetchError::NotFound)).map_err(|e| anyhow!("{e}")),
    }
}

/// The `signed.version` of a metadata file, unverified (for ordering announcements only).
pub(crate) fn signed_version(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?["signed"]["version"].as_u64()
}

/// Runs one refresh: root chain, timestamp, snapshot, targets, asking `sources` (best first)
/// and falling back to the next whenever a body fails verification. `announced` is a
/// timestamp that arrived by gossip (already checked against the root): it is the first
/// candidate for the timestamp request. How each peer answered lands in `outcomes`.
pub async fn refresh(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    now: i64,
    announced: Option<Vec<u8>>,
    outcomes: &mut SourceOutcomes,
) -> Result<TrustedMetadataSet> {
    let config = Config::default();
    let root = dirs.trusted.read_root(config.root_max_length).context("no pinned root")?;
    let mut updater = Updater::new(&root, now, config).map_err(|e| anyhow!("pinned root: {e}"))?;
    updater.refresh();
    drive(client, sources, dirs, &mut updater, announced, outcomes).await?;
    let Some(targets) = updater.trusted().targets("targets") else {
        bail!("refresh ended without verified targets");
    };
    // A repository that delegates rollouts: load (and mirror) the verified `rollouts`
    // metadata too, so devices can check their policies through this node.
    if rollouts_role::is_delegated(targets) {
        updater.find_target(rollouts_role::INDEX_LOOKUP).map_err(|e| anyhow!("{e}"))?;
        drive(client, sources, dirs, &mut updater, None, outcomes).await?;
    }
    Ok(updater.trusted().clone())
}

/// Runs `updater`'s current operation to its end: local steps through the trusted
/// directory (every verified role also lands in the mirror), remote requests answered by
/// `sources`.
async fn drive(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    updater: &mut Updater,
    mut announced: Option<Vec<u8>>,
    outcomes: &mut SourceOutcomes,
) -> Result<()> {
    let mirror = |event: &Event| match event {
        Event::Persist { role, bytes } => mirror_metadata(&dirs.mirror, role, bytes),
        _ => Ok(()),
    };
    while let Some(request) = dirs.trusted.next_remote(updater, mirror)? {
        let announced = if request.file_name == "timestamp.json" { announced.take() } else { None };
        answer_remote(client, sources, updater, &request.file_name, request.max_length, announced, outcomes).await?;
    }
    Ok(())
}

/// Keeps the consistent-snapshot mirror in step with the trusted copies: `N.<role>.json`
/// for every verified role, plus the unversioned `root.json` and `timestamp.json` that a
/// TUF client starts from.
fn mirror_metadata(mirror: &Path, role: &str, bytes: &[u8]) -> Result<()> {
    let version = signed_version(bytes).unwrap_or(0);
    match role {
        "timestamp" => repo_files::write(mirror, "metadata/timestamp.json", bytes),
        "root" => {
            repo_files::write(mirror, &format!("metadata/{version}.root.json"), bytes)?;
            repo_files::write(mirror, "metadata/root.json", bytes)
        }
        other => repo_files::write(mirror, &format!("metadata/{version}.{}.json", encode_role_name(other)), bytes),
    }
}

/// Checks a timestamp that arrived by gossip against the pinned `root` (signatures,
/// threshold, expiry at `now`) and returns its version. Announcements are ordered by this
/// verified version only: an unsigned huge version number must not turn push updates off.
pub fn verify_announcement(root: &[u8], timestamp: &[u8], now: i64) -> Result<u64> {
    let mut set = TrustedMetadataSet::new(root, now, None).map_err(|e| anyhow!("pinned root: {e}"))?;
    set.update_timestamp(timestamp).map_err(|e| anyhow!("{e}"))?;
    set.timestamp().map(|t| t.common.version).context("no timestamp")
}

/// Target path of a release manifest → consistent-snapshot file name in the repository.
pub fn target_file_name(target: &TargetFile) -> Option<String> {
    let sha256 = target.hashes.get("sha256")?;
    Some(format!("targets/{}", protocol::tuf::hashed_target_path(&target.path, sha256)))
}

/// Release manifests named by `trusted` that are not in `known`: verified against their
/// target hashes and decoded (see [`fetch_targets`]).
pub async fn new_releases(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    trusted: &TrustedMetadataSet,
    known: &(dyn Fn(&str) -> bool + Sync),
    outcomes: &mut SourceOutcomes,
) -> Vec<FoundRelease> {
    let Some(targets) = trusted.targets("targets") else { return Vec::new() };
    let wanted = targets
        .targets
        .values()
        .filter(|t| t.path.starts_with("releases/") && t.path.ends_with(".manifest") && !known(&t.path));
    let decodes = |bytes: &[u8]| {
        ManifestView::new_checked(bytes).map(|_| ()).map_err(|e| anyhow!("manifest does not decode: {e:?}"))
    };
    fetch_targets(client, sources, dirs, wanted, decodes, outcomes)
        .await
        .into_iter()
        .map(|(target, manifest)| {
            info!(target = %target.path, "new release");
            FoundRelease { target_path: target.path.clone(), manifest }
        })
        .collect()
}

/// A rollout policy found in verified `rollouts` metadata.
#[derive(Debug, Clone)]
pub struct FoundPolicy {
    /// TUF target path, `rollouts/<release>.policy`.
    pub target_path: String,
    /// The policy, verified against its target's hashes.
    pub bytes: Vec<u8>,
    /// Its consistent-snapshot file name in the mirror, and its length.
    pub mirror_file: (String, u64),
}

/// Rollout policies named by `trusted`'s `rollouts` role whose current version (by file
/// name, which carries its hash) is not in `known`.
pub async fn new_policies(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    trusted: &TrustedMetadataSet,
    known: &(dyn Fn(&str) -> bool + Sync),
    outcomes: &mut SourceOutcomes,
) -> Vec<FoundPolicy> {
    let Some(role) = trusted.targets(rollouts_role::ROLE) else { return Vec::new() };
    let wanted = role.targets.values().filter(|t| {
        rollouts_role::release_of_policy_path(&t.path).is_some() && !target_file_name(t).is_some_and(|n| known(&n))
    });
    // The policy's own checks are the device's business (it evaluates the policy); the node
    // only relays bytes whose hash the rollouts role signed.
    fetch_targets(client, sources, dirs, wanted, |_| Ok(()), outcomes)
        .await
        .into_iter()
        .filter_map(|(target, bytes)| {
            let file = target_file_name(target)?;
            info!(target = %target.path, "new rollout policy");
            Some(FoundPolicy { target_path: target.path.clone(), bytes, mirror_file: (file, target.length) })
        })
        .collect()
}

/// A seal (`protocol::seal`) named by verified metadata: relayed to microcontrollers as it
/// is (they check its signatures), its bytes checked against the signed hash like any target.
#[derive(Debug, Clone)]
pub struct FoundSeal {
    /// TUF target path, `releases/NAME/VERSION.manifest.sig` or `rollouts/NAME.policy.sig`.
    pub target_path: String,
    /// Its consistent-snapshot file name in the mirror, and its length.
    pub mirror_file: (String, u64),
}

/// Seals of releases and policies named by `trusted` (the targets and rollouts roles) whose
/// current version (by file name) is not in `known`.
pub async fn new_seals(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    trusted: &TrustedMetadataSet,
    known: &(dyn Fn(&str) -> bool + Sync),
    outcomes: &mut SourceOutcomes,
) -> Vec<FoundSeal> {
    let roles = [trusted.targets("targets"), trusted.targets(rollouts_role::ROLE)];
    let wanted = roles.into_iter().flatten().flat_map(|role| role.targets.values()).filter(|t| {
        protocol::seal::sealed_target_path(&t.path).is_some() && !target_file_name(t).is_some_and(|n| known(&n))
    });
    let bounded = |bytes: &[u8]| {
        if bytes.len() > protocol::seal::MAX_SEAL_BYTES {
            return Err(anyhow!("seal longer than any device reads"));
        }
        Ok(())
    };
    fetch_targets(client, sources, dirs, wanted, bounded, outcomes)
        .await
        .into_iter()
        .filter_map(|(target, _)| {
            Some(FoundSeal {
                target_path: target.path.clone(),
                mirror_file: (target_file_name(target)?, target.length),
            })
        })
        .collect()
}

/// Target files from the mirror or from peers (the next one when a body fails
/// verification, its sender marked), verified against their signed hashes and `check`,
/// and written to the mirror. Targets no peer has yet are left for the next refresh.
async fn fetch_targets<'t>(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    wanted: impl Iterator<Item = &'t TargetFile>,
    check: impl Fn(&[u8]) -> Result<()>,
    outcomes: &mut SourceOutcomes,
) -> Vec<(&'t TargetFile, Vec<u8>)> {
    let mut found = Vec::new();
    for target in wanted {
        let Some(name) = target_file_name(target) else { continue };
        let verify = |bytes: &[u8]| -> Result<()> {
            target.verify(bytes).map_err(|e| anyhow!("{e}"))?;
            check(bytes)
        };
        let mut bytes = repo_files::read(&dirs.mirror, &name, target.length).filter(|b| verify(b).is_ok());
        for peer in sources {
            if bytes.is_some() {
                break;
            }
            let Some(body) = fetch_one(client, *peer, &name, target.length, outcomes).await else { continue };
            match verify(&body) {
                Ok(()) => bytes = Some(body),
                Err(e) => {
                    warn!(%peer, target = %target.path, %e, "peer served a target file that failed verification");
                    outcomes.lied.push(*peer);
                }
            }
        }
        let Some(bytes) = bytes else {
            warn!(target = %target.path, "target file not available from any peer yet");
            continue;
        };
        if let Err(e) = repo_files::write(&dirs.mirror, &name, &bytes) {
            warn!(%e, "cannot write a target file to the mirror");
        }
        found.push((target, bytes));
    }
    found
}
