//! TUF through an edge node's device service, and the choice of release for this device.
//!
//! The edge node is untrusted: it relays metadata and manifests, and the sans-IO updater in
//! `protocol::tuf` verifies them against the root pinned in the agent's data directory. A
//! stale timestamp, a replayed older snapshot or a manifest whose hash does not match its
//! signed target fails here, and the agent moves on to another edge node. Errors keep the
//! TUF error whole so the agent can tell an edge that lied from one that is merely behind
//! (`policy::refresh_verdict`), and a manifest that failed verification from one the edge
//! does not have.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use edge_client::DeviceClient;
use protocol::manifest::ManifestView;
use protocol::tuf::{encode_role_name, Event, FetchError, Request, Source, TargetFile, TrustedMetadataSet, Updater};

use crate::tuf_http::unix_now;

/// Where the agent keeps verified metadata: `metadata_dir/root.json` is the pinned root.
#[derive(Debug, Clone)]
pub struct MetadataDir(pub PathBuf);

impl MetadataDir {
    /// Whether a root is pinned already (a device that has started before).
    pub fn has_root(&self) -> bool {
        self.0.join("root.json").exists()
    }

    /// Reads and checks the configured root without writing anything, so a bad
    /// `trusted_root` fails the start before the data directory exists.
    pub fn read_trusted_root(root: &Path) -> Result<Vec<u8>> {
        let limit = crate::tuf_config().root_max_length;
        let mut bytes = Vec::new();
        fs::File::open(root).and_then(|file| file.take(limit + 1).read_to_end(&mut bytes)).with_context(|| {
            format!("cannot read trusted root {}; set trusted_root to the fleet's root.json", root.display())
        })?;
        if bytes.len() as u64 > limit {
            bail!(
                "trusted root {} is larger than {limit} bytes; set trusted_root to the fleet's root.json",
                root.display()
            );
        }
        Updater::new(&bytes, unix_now(), crate::tuf_config()).map_err(|e| {
            anyhow!("trusted root {} is invalid ({e}); set trusted_root to the fleet's root.json", root.display())
        })?;
        Ok(bytes)
    }

    /// Pins `root` (checked by [`MetadataDir::read_trusted_root`]) on a device's first start.
    pub fn pin_root(&self, root: &[u8]) -> Result<()> {
        Ok(host::fs::write_atomic(&self.0.join("root.json"), root, host::fs::PUBLIC)?)
    }

    fn read_cached(&self, request: &Request) -> std::result::Result<Vec<u8>, FetchError> {
        let file = fs::File::open(self.0.join(&request.file_name)).map_err(|_| FetchError::NotFound)?;
        let mut bytes = Vec::new();
        file.take(request.max_length + 1).read_to_end(&mut bytes).map_err(|_| FetchError::Failed)?;
        if bytes.len() as u64 > request.max_length {
            return Err(FetchError::TooLarge);
        }
        Ok(bytes)
    }
}

/// Why a refresh through one edge stopped.
#[derive(Debug)]
pub enum RefreshError {
    /// What the edge served did not verify, or a fetch from it failed; the TUF error says
    /// which (see `policy::refresh_verdict`).
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

/// One full TUF refresh (root chain, timestamp, snapshot, targets) through `edge`.
pub async fn refresh(edge: &mut DeviceClient, dir: &MetadataDir) -> Result<TrustedMetadataSet, RefreshError> {
    let root = fs::read(dir.0.join("root.json"))
        .context("no pinned root in the metadata directory")
        .map_err(RefreshError::Local)?;
    let mut updater = Updater::new(&root, unix_now(), crate::tuf_config())
        .map_err(|e| RefreshError::Local(anyhow!("pinned root: {e}")))?;
    updater.refresh();
    loop {
        while let Some(event) = updater.poll_event() {
            if let Event::Persist { role, bytes } = event {
                host::fs::write_atomic(
                    &dir.0.join(format!("{}.json", encode_role_name(&role))),
                    &bytes,
                    host::fs::PUBLIC,
                )
                .map_err(|e| RefreshError::Local(e.into()))?;
            }
        }
        let Some(request) = updater.poll_request() else { break };
        let response = match request.source {
            Source::Cache => dir.read_cached(&request),
            Source::Remote => match edge.get_metadata(&request.file_name).await {
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
            },
        };
        updater.handle_response(response).map_err(RefreshError::Metadata)?;
    }
    if updater.trusted().targets("targets").is_none() {
        return Err(RefreshError::Local(anyhow!("refresh ended without verified targets")));
    }
    Ok(updater.trusted().clone())
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

/// The release a device of `hw_class` following `release` should run: among the signed
/// targets `releases/<release>/*.manifest`, the highest security counter, then the highest
/// version. Targets for other hardware classes are only returned when none match, so the
/// engine can say why it refused.
pub fn choose_release<'a>(trusted: &'a TrustedMetadataSet, release: &str, hw_class: &str) -> Option<&'a TargetFile> {
    let targets = trusted.targets("targets")?;
    let prefix = format!("releases/{release}/");
    let candidates: Vec<&TargetFile> =
        targets.targets.values().filter(|t| t.path.starts_with(&prefix) && t.path.ends_with(".manifest")).collect();
    // A target without valid release metadata ranks lowest and matches no hardware class.
    let rank = |t: &&&TargetFile| {
        let release = t.release().ok();
        let counter = release.as_ref().map_or(0, |r| r.security_counter);
        (counter, VersionKey(release.map(|r| r.version).unwrap_or_default()))
    };
    let matching = candidates.iter().filter(|t| t.release().is_ok_and(|r| r.hw_class == hw_class));
    matching.max_by_key(rank).or_else(|| candidates.iter().max_by_key(rank)).copied()
}

/// Downloads the manifest of `target` through `edge` and checks it against the signed
/// length and hashes, then decodes it.
pub async fn fetch_manifest(edge: &mut DeviceClient, target: &TargetFile) -> Result<Vec<u8>, ManifestError> {
    let invalid = |why: String| ManifestError::Invalid(why);
    let bytes = match edge.get_target(&target.path).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(ManifestError::Unavailable(format!("edge node does not have {}", target.path))),
        Err(e @ (edge_client::ClientError::Malformed(_) | edge_client::ClientError::Unexpected(_))) => {
            return Err(invalid(format!("fetching {}: {e}", target.path)))
        }
        Err(e) => return Err(ManifestError::Unavailable(format!("fetching {}: {e}", target.path))),
    };
    target.verify(&bytes).map_err(|e| invalid(format!("manifest {} did not verify: {e}", target.path)))?;
    ManifestView::new_checked(&bytes).map_err(|e| invalid(format!("manifest {} does not decode: {e}", target.path)))?;
    Ok(bytes)
}

/// Orders versions like `1.10.0` after `1.9.0`: digit runs compare as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VersionKey(String);

impl Ord for VersionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn parts(s: &str) -> Vec<(u64, String)> {
            let mut out = Vec::new();
            let mut rest = s;
            while !rest.is_empty() {
                let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                let (num, tail) = rest.split_at(digits);
                let text_end = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
                let (text, next) = tail.split_at(text_end);
                out.push((num.parse().unwrap_or(0), text.to_string()));
                rest = next;
            }
            out
        }
        parts(&self.0).cmp(&parts(&other.0))
    }
}

impl PartialOrd for VersionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::VersionKey;

    #[test]
    fn versions_compare_numerically() {
        let v = |s: &str| VersionKey(s.into());
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("1.0.0-rc2") > v("1.0.0-rc1"));
    }
}
