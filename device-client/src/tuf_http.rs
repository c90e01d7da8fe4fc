//! A blocking HTTP driver for the sans-IO TUF updater in `protocol::tuf`.
//!
//! All IO lives here: metadata comes from `<metadata dir>/<encoded role>.json` (cache) and
//! `<metadata url>/<file name>` (repository); every read is capped at the length the
//! updater allows, so a hostile server cannot stream forever; verified metadata and
//! targets are written to a temporary file, synced and renamed, so a crash never leaves a
//! half-written trusted file. The clock is read here, once per client.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use host::tuf_dir::TrustedDir;
use protocol::tuf::{encode_role_name, Config, Event, FetchError, TargetFile, Updater};

/// How long one HTTP request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A TUF client bound to one local metadata directory and one repository.
pub struct TufHttpClient {
    updater: Updater,
    agent: ureq::Agent,
    metadata: TrustedDir,
    metadata_url: String,
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// Seconds since the unix epoch from the system clock (the only clock read).
pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// GETs `url`, reading at most `max_length + 1` bytes so an endless response costs at most
/// one byte more than the cap.
pub fn fetch_capped(agent: &ureq::Agent, url: &str, max_length: u64) -> std::result::Result<Vec<u8>, FetchError> {
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(403 | 404, _)) => return Err(FetchError::NotFound),
        Err(_) => return Err(FetchError::Failed),
    };
    let mut body = Vec::new();
    response.into_reader().take(max_length.saturating_add(1)).read_to_end(&mut body).map_err(|_| FetchError::Failed)?;
    if body.len() as u64 > max_length {
        return Err(FetchError::TooLarge);
    }
    Ok(body)
}

/// Where a verified target is stored: one stable name per target path, percent-encoded
/// so paths cannot escape `target_dir`.
pub fn target_file_path(target_dir: &Path, target: &TargetFile) -> PathBuf {
    target_dir.join(encode_role_name(&target.path))
}

impl TufHttpClient {
    /// Loads the trusted root from `metadata_dir/root.json` with the default limits.
    pub fn new(metadata_dir: &Path, metadata_url: &str, config: Config) -> Result<Self> {
        let metadata = TrustedDir::new(metadata_dir);
        let root = metadata
            .read_root(config.root_max_length)
            .with_context(|| format!("reading {}", metadata_dir.join("root.json").display()))?;
        let updater = Updater::new(&root, unix_now(), config).map_err(|e| anyhow!("trusted root is invalid: {e}"))?;
        Ok(TufHttpClient {
            updater,
            agent: ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build(),
            metadata,
            metadata_url: with_slash(metadata_url),
        })
    }

    /// The sans-IO updater (for inspecting trusted metadata).
    pub fn updater(&self) -> &Updater {
        &self.updater
    }

    /// Runs the updater until it has no request; returns the lookup result, if any.
    fn drive(&mut self) -> Result<Option<Option<TargetFile>>> {
        let mut found = None;
        let mut remember = |event: &Event| {
            match event {
                Event::TargetFound(t) => found = Some(Some(t.clone())),
                Event::TargetNotFound { .. } => found = Some(None),
                Event::Persist { .. } | Event::Refreshed => {}
            }
            Ok(())
        };
        while let Some(request) = self.metadata.next_remote(&mut self.updater, &mut remember)? {
            let url = format!("{}{}", self.metadata_url, request.file_name);
            let response = fetch_capped(&self.agent, &url, request.max_length);
            self.updater.handle_response(response).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(found)
    }

    /// Updates top-level metadata (TUF spec 5.3–5.6).
    pub fn refresh(&mut self) -> Result<()> {
        self.updater.refresh();
        self.drive().map(|_| ())
    }

    /// Finds `path` in the delegation tree, refreshing first if needed.
    pub fn find_target(&mut self, path: &str) -> Result<Option<TargetFile>> {
        self.updater.find_target(path).map_err(|e| anyhow!("{e}"))?;
        self.drive()?.ok_or_else(|| anyhow!("target search for {path} did not finish"))
    }

    /// The local copy of `target` if it exists and verifies.
    pub fn cached_target(target_dir: &Path, target: &TargetFile) -> Option<PathBuf> {
        let path = target_file_path(target_dir, target);
        let bytes = host::tuf_dir::read_capped(&path, target.length).ok()?;
        target.verify(&bytes).ok().map(|_| path)
    }

    /// Downloads, verifies and stores `target` under `target_dir`.
    pub fn download_target(&self, target: &TargetFile, target_base_url: &str, target_dir: &Path) -> Result<PathBuf> {
        let mut url_path = target.path.clone();
        if self.updater.trusted().root().consistent_snapshot {
            let Some(hash) = target.hashes.values().next() else {
                bail!("target {} has no hashes", target.path);
            };
            url_path = protocol::tuf::hashed_target_path(&target.path, hash);
        }
        let url = format!("{}{url_path}", with_slash(target_base_url));
        let bytes = fetch_capped(&self.agent, &url, target.length).map_err(|e| anyhow!("downloading {url}: {e:?}"))?;
        target.verify(&bytes).map_err(|e| anyhow!("target {}: {e}", target.path))?;
        let path = target_dir.join(encode_role_name(&target.path));
        host::fs::write_atomic(&path, &bytes, host::fs::PUBLIC)?;
        Ok(path)
    }
}
