//! Durable file writes, the one routine every binary uses: write a temp file beside the
//! target, fsync it, rename it over the target, fsync the directory. A kill or power cut at
//! any point leaves either the old file or the new one, never a torn one, and a returned
//! `Ok` survives a power cut (the rename is only durable once the directory entry is).
//!
//! Batches of many files (chunk bodies) skip the per-file fsync: they write every body,
//! make them durable with one [`sync_filesystem`], then rename.
//!
//! Errors are `io::Error`s that keep their kind and name the path and the step that failed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Permissions of a file anyone on the host may read (metadata, manifests, certificates).
pub const PUBLIC: u32 = 0o644;
/// Permissions of a secret (keys, device identity): the owner only, from the first byte on.
pub const PRIVATE: u32 = 0o600;

/// Atomically and durably replaces `path` with `bytes`, created with Unix permissions `mode`
/// ([`PUBLIC`] or [`PRIVATE`]). Creates the parent directory if it is missing. On error the
/// old file (if any) is untouched and no temp file is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = AtomicFile::create(path, mode)?;
    file.write_all(bytes).map_err(|e| context(e, "cannot write", &file.temp))?;
    file.commit()
}

/// A file being written in place of `path`: `Write` into it, then [`AtomicFile::commit`].
/// Dropped without a commit (an error on the way, a failed verification), it deletes its temp
/// file and `path` keeps what it had. For outputs too large to build in memory first.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    temp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// Starts writing a new version of `path` with permissions `mode`. The temp file is a
    /// hidden name beside `path`, unique per process and call, created exclusively: two
    /// writers never share one, and a temp file left by a crash is never reused with its old
    /// permissions.
    pub fn create(path: &Path, mode: u32) -> io::Result<AtomicFile> {
        let dir = parent_dir(path);
        fs::create_dir_all(&dir).map_err(|e| context(e, "cannot create", &dir))?;
        let temp = temp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| context(e, "cannot create", &temp))?;
        Ok(AtomicFile { file: Some(file), temp, path: path.to_path_buf(), dir })
    }

    /// The path this file replaces when committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the written bytes durable, renames them over the target and makes the rename
    /// durable. On error the target is untouched and the temp file is gone.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("an AtomicFile is committed once");
        file.sync_all().map_err(|e| context(e, "cannot fsync", &self.temp))?;
        drop(file);
        fs::rename(&self.temp, &self.path).map_err(|e| context(e, "cannot rename into", &self.path))?;
        // Renamed: nothing left for `drop` to delete.
        self.temp = PathBuf::new();
        sync_dir(&self.dir)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A hidden temp name beside `path`, unique per process and call
/// (`.NAME.tmp-PID-N`). Batch writers stage files under it before [`sync_filesystem`].
pub fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Makes renames and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| context(e, "cannot fsync", dir))
}

/// Flushes every dirty page of the filesystem holding `path` with one `syncfs(2)`: far
/// cheaper than an fsync per file when a release writes thousands of chunk files.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path).map_err(|e| context(e, "cannot open", path))?;
    // SAFETY: syncfs only reads the descriptor number; `dir` keeps it open for the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(context(io::Error::last_os_error(), "syncfs failed on", path));
    }
    Ok(())
}

/// The directory holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn context(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/record");
        write_atomic(&path, b"one", PUBLIC).unwrap();
        write_atomic(&path, b"two", PUBLIC).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(entries(&dir.path().join("sub")), ["record"]);
    }

    #[test]
    fn mode_is_set_from_the_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node.key");
        let cert = dir.path().join("node.crt");
        write_atomic(&key, b"secret", PRIVATE).unwrap();
        write_atomic(&cert, b"public", PUBLIC).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        // The umask may take group/other write away from 0644, never add to it.
        assert_eq!(mode(&cert) & !0o644, 0);
        assert_ne!(mode(&cert) & 0o400, 0);
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("record")), PathBuf::from("."));
        assert_eq!(parent_dir(Path::new("/data/record")), PathBuf::from("/data"));
    }

    /// The rename fails (the target is a non-empty directory): the target keeps what it had
    /// and no temp file is left beside it.
    #[test]
    fn a_failed_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"old").unwrap();
        let error = write_atomic(&path, b"new content", PUBLIC).unwrap_err();
        assert!(error.to_string().contains("cannot rename into"), "{error}");
        assert_eq!(entries(dir.path()), ["target"]);
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"old");
    }

    /// A streamed write abandoned half way (the caller found the image corrupt) leaves the
    /// old file whole and no temp file.
    #[test]
    fn an_uncommitted_file_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        write_atomic(&path, b"old image", PUBLIC).unwrap();
        {
            let mut file = AtomicFile::create(&path, PUBLIC).unwrap();
            file.write_all(b"half of a new ima").unwrap();
            assert_eq!(entries(dir.path()).len(), 2, "the temp file exists while writing");
        }
        assert_eq!(fs::read(&path).unwrap(), b"old image");
        assert_eq!(entries(dir.path()), ["image"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_that_names_it() {
        let error = sync_filesystem(Path::new("/nonexistent/otamesh")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains("/nonexistent/otamesh"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        sync_filesystem(dir.path()).unwrap();
        sync_dir(dir.path()).unwrap();
    }

    #[test]
    fn temp_names_are_hidden_and_unique() {
        let a = temp_path(Path::new("/d/record"));
        let b = temp_path(Path::new("/d/record"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/d")));
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with(".record.tmp-"));
    }
}
