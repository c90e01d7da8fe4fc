//! Undo for a failed start: whatever a start-up created under the data directory is removed
//! again if the start fails, so `edge-node run` with a bad setting leaves the disk as it found
//! it (no node key, chunk directories or index an operator must find and delete).
//!
//! Start-up checks its inputs and binds its ports before it creates anything; this covers
//! what can still fail after that (a device-service port in use, a full disk).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// Remembers what existed at `dir` before a start-up; on drop, unless [`NewPaths::keep`] was
/// called, removes what did not.
pub struct NewPaths {
    dir: PathBuf,
    /// The outermost directory of `dir`'s path that did not exist: removed whole.
    created_root: Option<PathBuf>,
    /// Entries of `dir` that existed before (when `dir` existed).
    existing: HashSet<OsString>,
    armed: bool,
}

impl NewPaths {
    /// Records the state of `dir` before anything is created in it.
    pub fn before_creating(dir: &Path) -> NewPaths {
        let existing = match fs::read_dir(dir) {
            Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
            Err(_) => HashSet::new(),
        };
        let created_root = if dir.exists() {
            None
        } else {
            // Walk up to the last missing ancestor: `create_dir_all` creates from there down.
            let mut outermost = dir.to_path_buf();
            while let Some(parent) = outermost.parent() {
                if parent.as_os_str().is_empty() || parent.exists() {
                    break;
                }
                outermost = parent.to_path_buf();
            }
            Some(outermost)
        };
        NewPaths { dir: dir.to_path_buf(), created_root, existing, armed: true }
    }

    /// The start succeeded: keep everything.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for NewPaths {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(root) = &self.created_root {
            let _ = fs::remove_dir_all(root);
            return;
        }
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if self.existing.contains(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_removes_the_directories_it_created_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        let guard = NewPaths::before_creating(&dir);
        fs::create_dir_all(dir.join("chunks/00")).unwrap();
        drop(guard);
        assert!(!tmp.path().join("a").exists());

        let dir = tmp.path().join("data");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("node.key"), b"old").unwrap();
        let guard = NewPaths::before_creating(&dir);
        fs::create_dir_all(dir.join("chunks/00")).unwrap();
        fs::write(dir.join("index"), b"new").unwrap();
        drop(guard);
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![OsString::from("node.key")]);

        let guard = NewPaths::before_creating(&dir);
        fs::write(dir.join("index"), b"new").unwrap();
        guard.keep();
        assert!(dir.join("index").exists());
    }
}
