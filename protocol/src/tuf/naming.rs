//! Where a repository keeps a target file under TUF's consistent snapshots (specification
//! 5.7.3): the target path with its hash prefixed to the last segment,
//! `releases/gw/1.0.manifest` → `releases/gw/<hash>.1.0.manifest`. The seeder writes files
//! under this name, edge nodes serve and mirror them by it, HTTP clients download by it;
//! one function derives it so they cannot disagree.

use alloc::format;
use alloc::string::String;

/// The consistent-snapshot path of `target_path` under the hex digest `hash_hex`, relative to
/// the repository's targets directory.
pub fn hashed_target_path(target_path: &str, hash_hex: &str) -> String {
    match target_path.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{hash_hex}.{base}"),
        None => format!("{hash_hex}.{target_path}"),
    }
}

/// The hash prefix and the target's own file name of a consistent-snapshot file name
/// (`<hash>.<name>`, no directory); `None` without a non-empty prefix and name.
pub fn split_hashed_file_name(file_name: &str) -> Option<(&str, &str)> {
    let (hash, name) = file_name.split_once('.')?;
    (!hash.is_empty() && !name.is_empty()).then_some((hash, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_prefixes_the_last_segment_only() {
        assert_eq!(hashed_target_path("releases/gw/1.0.manifest", "ab12"), "releases/gw/ab12.1.0.manifest");
        assert_eq!(hashed_target_path("file.txt", "ab12"), "ab12.file.txt");
        assert_eq!(hashed_target_path("a/b", "00"), "a/00.b");
    }

    #[test]
    fn a_hashed_name_splits_back() {
        let path = hashed_target_path("releases/gw/1.0.manifest", "ab12");
        let file_name = path.rsplit('/').next().unwrap();
        assert_eq!(split_hashed_file_name(file_name), Some(("ab12", "1.0.manifest")));
        assert_eq!(split_hashed_file_name("nohash"), None);
        assert_eq!(split_hashed_file_name(".hidden"), None);
        assert_eq!(split_hashed_file_name("ab12."), None);
    }
}
