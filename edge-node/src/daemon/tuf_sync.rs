//! TUF over the mesh: the edge node runs the standard client workflow (`protocol::tuf`)
//! with repository files fetched from peers. Any peer may serve them, since every byte is
//! verified against the pinned root, so site-mates can answer while the WAN is down.
//!
//! Verified metadata is kept twice: the client's trusted copies (`tuf/<role>.json`) and a
//! standard consistent-snapshot mirror (`repo/metadata/N.<role>.json`, `repo/targets/…`)
//! that the HTTP server exposes to any TUF client.

use anyhow::{anyhow, bail, Context, Result};
use libp2p::PeerId;
use protocol::manifest::ManifestView;
use protocol::tuf::{encode_role_name, Config, Event, FetchError, Source, TargetFile, TrustedMetadataSet, Updater};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

use crate::network::NetworkClient;
use crate::repo_files;

/// Where TUF state lives.
#[derive(Debug, Clone)]
pub struct TufDirs {
    /// The client's trusted copies, one per role.
    pub trusted: PathBuf,
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
        TufDirs { trusted: data_dir.join("tuf"), mirror: data_dir.join("repo") }
    }

    /// Whether a root is pinned already.
    pub fn has_root(&self) -> bool {
        self.trusted.join("root.json").exists()
    }

    /// Pins `root` (an operator-supplied file, or the origin's on first use) after checking
    /// that it is a self-consistent root.
    pub fn pin_root(&self, root: &[u8], now: i64) -> Result<()> {
        let set = TrustedMetadataSet::new(root, now, None).map_err(|e| anyhow!("trusted root: {e}"))?;
        let version = set.root().common.version;
        fs::create_dir_all(&self.trusted)?;
        write_atomic(&self.trusted.join("root.json"), root)?;
        repo_files::write(&self.mirror, &format!("metadata/{version}.root.json"), root)?;
        repo_files::write(&self.mirror, "metadata/root.json", root)?;
        Ok(())
    }

    /// The last verified state from disk, without the network; `None` if incomplete. Used at
    /// start-up so a node whose WAN is down still knows (and serves) its releases.
    pub fn load_cached(&self, now: i64) -> Option<TrustedMetadataSet> {
        let read = |role: &str| fs::read(self.trusted.join(format!("{}.json", encode_role_name(role)))).ok();
        // Expired metadata is still what we last verified; serving it is a local decision,
        // devices re-check expiry themselves.
        let mut set = TrustedMetadataSet::new(&read("root")?, now, None).ok()?;
        set.update_timestamp(&read("timestamp")?).ok()?;
        set.update_snapshot(&read("snapshot")?, true).ok()?;
        set.update_delegated_targets(&read("targets")?, "targets", "root").ok()?;
        Some(set)
    }
}

/// Fetches `name` from the first of `sources` that has it.
async fn fetch(client: &NetworkClient, sources: &[PeerId], name: &str, max: u64) -> Result<Vec<u8>, FetchError> {
    let mut failed = false;
    for peer in sources {
        match client.request_meta(*peer, name).await {
            Ok(resp) => match resp.body {
                Some(body) if body.len() as u64 > max => return Err(FetchError::TooLarge),
                Some(body) => return Ok(body),
                None => {}
            },
            Err(e) => {
                debug!(%peer, %name, %e, "meta request failed");
                failed = true;
            }
        }
    }
    Err(if failed { FetchError::Failed } else { FetchError::NotFound })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("no parent")?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("f")));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The `signed.version` of a metadata file, unverified (for ordering announcements only).
pub(crate) fn signed_version(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?["signed"]["version"].as_u64()
}

/// Runs one refresh: root chain, timestamp, snapshot, targets. `announced` is a timestamp
/// that arrived by gossip: it answers the timestamp request without a round trip (it is
/// verified like any other copy).
pub async fn refresh(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    now: i64,
    mut announced: Option<Vec<u8>>,
) -> Result<TrustedMetadataSet> {
    let root = fs::read(dirs.trusted.join("root.json")).context("no pinned root")?;
    let mut updater = Updater::new(&root, now, Config::default()).map_err(|e| anyhow!("pinned root: {e}"))?;
    updater.refresh();
    loop {
        while let Some(event) = updater.poll_event() {
            if let Event::Persist { role, bytes } = event {
                write_atomic(&dirs.trusted.join(format!("{}.json", encode_role_name(&role))), &bytes)?;
                let version = signed_version(&bytes).unwrap_or(0);
                match role.as_str() {
                    "timestamp" => repo_files::write(&dirs.mirror, "metadata/timestamp.json", &bytes)?,
                    "root" => {
                        repo_files::write(&dirs.mirror, &format!("metadata/{version}.root.json"), &bytes)?;
                        repo_files::write(&dirs.mirror, "metadata/root.json", &bytes)?;
                    }
                    other => repo_files::write(
                        &dirs.mirror,
                        &format!("metadata/{version}.{}.json", encode_role_name(other)),
                        &bytes,
                    )?,
                }
            }
        }
        let Some(request) = updater.poll_request() else { break };
        let response = match request.source {
            Source::Cache => {
                let path = dirs.trusted.join(&request.file_name);
                let mut bytes = Vec::new();
                match fs::File::open(&path).and_then(|f| f.take(request.max_length + 1).read_to_end(&mut bytes)) {
                    Ok(_) if bytes.len() as u64 <= request.max_length => Ok(bytes),
                    _ => Err(FetchError::NotFound),
                }
            }
            Source::Remote if request.file_name == "timestamp.json" && announced.is_some() => {
                Ok(announced.take().unwrap_or_default())
            }
            Source::Remote => {
                fetch(client, sources, &format!("metadata/{}", request.file_name), request.max_length).await
            }
        };
        updater.handle_response(response).map_err(|e| anyhow!("{e}"))?;
    }
    if updater.trusted().targets("targets").is_none() {
        bail!("refresh ended without verified targets");
    }
    Ok(updater.trusted().clone())
}

/// Target path of a release manifest → consistent-snapshot file name in the repository.
pub fn target_file_name(target: &TargetFile) -> Option<String> {
    let sha256 = target.hashes.get("sha256")?;
    let (dir, base) = target.path.rsplit_once('/').unwrap_or(("", &target.path));
    Some(if dir.is_empty() { format!("targets/{sha256}.{base}") } else { format!("targets/{dir}/{sha256}.{base}") })
}

/// Release manifests named by `trusted` that are not in `known`: fetched from the mirror or
/// from peers, verified against their target hashes, decoded, and written to the mirror.
pub async fn new_releases(
    client: &NetworkClient,
    sources: &[PeerId],
    dirs: &TufDirs,
    trusted: &TrustedMetadataSet,
    known: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<FoundRelease> {
    let Some(targets) = trusted.targets("targets") else { return Vec::new() };
    let mut found = Vec::new();
    for target in targets.targets.values() {
        if !target.path.starts_with("releases/") || !target.path.ends_with(".manifest") || known(&target.path) {
            continue;
        }
        let Some(name) = target_file_name(target) else { continue };
        let bytes = match repo_files::read(&dirs.mirror, &name, target.length) {
            Some(bytes) => Ok(bytes),
            None => fetch(client, sources, &name, target.length).await,
        };
        let Ok(bytes) = bytes else {
            warn!(target = %target.path, "manifest not available from any peer yet");
            continue;
        };
        if let Err(e) = target.verify(&bytes) {
            warn!(target = %target.path, %e, "manifest failed verification");
            continue;
        }
        if let Err(e) = ManifestView::new_checked(&bytes) {
            warn!(target = %target.path, %e, "manifest does not decode");
            continue;
        }
        if let Err(e) = repo_files::write(&dirs.mirror, &name, &bytes) {
            warn!(%e, "cannot write manifest to the mirror");
        }
        info!(target = %target.path, "new release");
        found.push(FoundRelease { target_path: target.path.clone(), manifest: bytes });
    }
    found
}
