//! Crash-safe file writes: write a temp file beside the target, fsync it, rename it over the
//! target, fsync the directory. A kill or power cut at any point leaves either the old file
//! or the new one, never a torn one.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Atomically replaces `path` with `bytes`. `mode` sets Unix permissions (0600 for keys).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("path has no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A hidden temp name next to `path`, unique per process and call.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot fsync {}", dir.display()))
}

/// Flushes every dirty page of the filesystem holding `path` with one `syncfs(2)`: far cheaper
/// than an fsync per chunk when a release writes thousands of chunk files.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: syncfs only reads the descriptor number; `dir` keeps it open for the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("syncfs failed");
    }
    Ok(())
}
