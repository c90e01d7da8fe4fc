//! Reading and writing files of a TUF repository tree (`metadata/`, `targets/`) by the
//! names peers ask for. Names come from the network, so each is checked segment by segment
//! before it touches the filesystem: no `..`, no absolute paths, no hidden files.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most path segments in a requested name.
const MAX_SEGMENTS: usize = 10;

/// The path `name` refers to under `root`, if it is a safe repository name: it starts with
/// `metadata/` or `targets/`, and every segment is non-empty, does not start with a dot, and
/// uses only `A-Z a-z 0-9 . _ + - %`.
pub fn resolve(root: &Path, name: &str) -> Option<PathBuf> {
    let mut segments = name.split('/');
    let top = segments.next()?;
    if top != "metadata" && top != "targets" {
        return None;
    }
    let mut path = root.join(top);
    let mut count = 0;
    for segment in segments {
        count += 1;
        let ok = !segment.is_empty()
            && !segment.starts_with('.')
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-%".contains(&b));
        if !ok || count > MAX_SEGMENTS {
            return None;
        }
        path.push(segment);
    }
    (count > 0).then_some(path)
}

/// Reads a repository file of at most `max_bytes`; `None` if absent, unsafe or too large.
pub fn read(root: &Path, name: &str, max_bytes: u64) -> Option<Vec<u8>> {
    let path = resolve(root, name)?;
    let mut bytes = Vec::new();
    fs::File::open(path).ok()?.take(max_bytes + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= max_bytes).then_some(bytes)
}

/// Writes a repository file atomically and durably.
pub fn write(root: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = resolve(root, name).with_context(|| format!("unsafe repository name {name}"))?;
    Ok(host::fs::write_atomic(&path, bytes, host::fs::PUBLIC)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_names_resolve() {
        let root = Path::new("/r");
        assert_eq!(resolve(root, "metadata/3.snapshot.json"), Some(PathBuf::from("/r/metadata/3.snapshot.json")));
        assert!(resolve(root, "targets/releases/gw/ab12.1.0.manifest").is_some());
        for bad in [
            "keys/root.json",
            "metadata/../keys/x",
            "metadata/.hidden",
            "metadata//x",
            "/etc/passwd",
            "metadata",
            "targets/a b",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }
}
