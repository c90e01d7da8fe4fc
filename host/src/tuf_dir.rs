//! The one driver of the sans-IO TUF updater's *local* side: where trusted metadata lives on
//! disk, how a cached copy is read back (capped at the length the updater allows), and how
//! newly verified metadata is persisted (temp, fsync, rename, fsync dir).
//!
//! Every TUF client in otamesh — the edge node over the mesh, the Linux agent through an edge
//! node, the conformance client over HTTP — differs only in where *remote* bytes come from.
//! They all run the same loop: [`TrustedDir::next_remote`] carries out every event and every
//! cache request and hands back the next remote request; the caller answers it its own way
//! (one peer after another, one edge, one HTTP GET) with `Updater::handle_response` or
//! `handle_candidate`, and calls `next_remote` again until it returns `None`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use protocol::tuf::{encode_role_name, Event, FetchError, Request, Source, Updater};

/// A directory of trusted TUF metadata: `<dir>/<encoded role>.json`, `root.json` the pinned root.
#[derive(Debug, Clone)]
pub struct TrustedDir {
    dir: PathBuf,
}

/// Why driving the updater's local side stopped.
#[derive(Debug)]
pub enum DriveError {
    /// The device's or node's own disk (persisting verified metadata failed), or the
    /// caller's own handling of an event.
    Local(anyhow::Error),
    /// Metadata did not verify. Kept whole, so a caller can tell a source that lied from one
    /// that is merely behind.
    Metadata(protocol::tuf::Error),
}

impl std::fmt::Display for DriveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveError::Local(e) => write!(f, "{e:#}"),
            DriveError::Metadata(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DriveError {}

impl TrustedDir {
    /// Metadata under `dir` (created when something is first persisted).
    pub fn new(dir: impl Into<PathBuf>) -> TrustedDir {
        TrustedDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether a root is pinned already.
    pub fn has_root(&self) -> bool {
        self.dir.join("root.json").exists()
    }

    /// The pinned root, at most `max_length` bytes.
    pub fn read_root(&self, max_length: u64) -> io::Result<Vec<u8>> {
        read_capped(&self.dir.join("root.json"), max_length)
    }

    /// The trusted copy of `role`, if there is one of at most `max_length` bytes.
    pub fn read_role(&self, role: &str, max_length: u64) -> Option<Vec<u8>> {
        read_capped(&self.role_path(role), max_length).ok()
    }

    /// Pins `root` as the trusted root. The caller has checked it is a self-consistent root.
    pub fn pin_root(&self, root: &[u8]) -> io::Result<()> {
        self.persist("root", root)
    }

    /// Writes `bytes` durably as the trusted copy of `role`.
    pub fn persist(&self, role: &str, bytes: &[u8]) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        crate::fs::write_atomic(&self.role_path(role), bytes, crate::fs::PUBLIC)
    }

    fn role_path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", encode_role_name(role)))
    }

    /// Answers a cache request: the file the updater names, at most its `max_length`.
    pub fn read_cached(&self, request: &Request) -> Result<Vec<u8>, FetchError> {
        read_capped(&self.dir.join(&request.file_name), request.max_length).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FetchError::NotFound,
            io::ErrorKind::FileTooLarge => FetchError::TooLarge,
            _ => FetchError::Failed,
        })
    }

    /// Runs `updater`'s local side until it needs remote bytes: persists every verified
    /// role (then shows the event to `on_event`, which also sees `Refreshed` and the target
    /// lookups' results) and answers every cache request. Returns the remote request to
    /// answer next, or `None` when the operation is over.
    pub fn next_remote(
        &self,
        updater: &mut Updater,
        mut on_event: impl FnMut(&Event) -> anyhow::Result<()>,
    ) -> Result<Option<Request>, DriveError> {
        loop {
            while let Some(event) = updater.poll_event() {
                if let Event::Persist { role, bytes } = &event {
                    self.persist(role, bytes).map_err(|e| DriveError::Local(e.into()))?;
                }
                on_event(&event).map_err(DriveError::Local)?;
            }
            let Some(request) = updater.poll_request() else { return Ok(None) };
            match request.source {
                Source::Remote => return Ok(Some(request)),
                Source::Cache => {
                    let response = self.read_cached(&request);
                    updater.handle_response(response).map_err(DriveError::Metadata)?;
                }
            }
        }
    }
}

/// Reads `path`, refusing (with `FileTooLarge`) a file longer than `max_length` after reading
/// at most one byte more.
pub fn read_capped(path: &Path, max_length: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(max_length.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_length {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{} is larger than {max_length} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_longer_than_allowed_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = TrustedDir::new(dir.path());
        trusted.persist("timestamp", b"0123456789").unwrap();
        let cached = |role: &str, max_length| Request {
            role: role.into(),
            version: None,
            max_length,
            source: Source::Cache,
            file_name: format!("{role}.json"),
        };
        let request = |max_length| cached("timestamp", max_length);
        assert_eq!(trusted.read_cached(&request(10)).unwrap(), b"0123456789");
        assert_eq!(trusted.read_cached(&request(9)), Err(FetchError::TooLarge));
        assert_eq!(trusted.read_cached(&cached("snapshot", 10)), Err(FetchError::NotFound));
        assert_eq!(trusted.read_role("timestamp", 10).as_deref(), Some(&b"0123456789"[..]));
        assert!(trusted.read_role("timestamp", 3).is_none());
    }

    #[test]
    fn delegated_role_names_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = TrustedDir::new(dir.path().join("tuf"));
        trusted.persist("../../etc/evil", b"x").unwrap();
        let written: Vec<_> = fs::read_dir(trusted.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(written.len(), 1);
        assert!(!dir.path().join("etc").exists());
    }
}
