//! Bearer tokens for the publisher's API, from a file only its owner may read.
//!
//! File format, one token per line (blank lines and `#` comments skipped):
//!
//! ```text
//! read      <token>   # may look: devices, releases, rollouts, sites, events
//! operator  <token>   # may also act: start, pause, resume, abort rollouts
//! ```
//!
//! Tokens are kept only as blake3 hashes and a presented token is hashed and compared with
//! `blake3::Hash`'s constant-time equality, so neither the memory of the process nor the
//! timing of a refusal gives a token away. Each token must be at least
//! [`MIN_TOKEN_CHARS`] characters.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Reading only.
    Read,
    /// Reading and operating rollouts.
    Operator,
}

impl Scope {
    /// The scope's name in the token file and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operator => "operator",
        }
    }
}

/// Shortest token accepted: about 128 bits as hex, or more.
pub const MIN_TOKEN_CHARS: usize = 32;
/// Largest token file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The loaded tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    hashes: Vec<(blake3::Hash, Scope)>,
}

impl Tokens {
    /// Reads `path`, refusing a file other users can read (the tokens are secrets) and any
    /// malformed line (the error names it).
    pub fn load(path: &Path) -> Result<Tokens> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read the API tokens {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
        }
        if meta.len() > MAX_FILE_BYTES {
            bail!("{} is larger than {MAX_FILE_BYTES} bytes; it should hold a few tokens", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Tokens::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut hashes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(scope), Some(token), None) = (words.next(), words.next(), words.next()) else {
                bail!("line {}: expected `read TOKEN` or `operator TOKEN`", n + 1);
            };
            let scope = match scope {
                "read" => Scope::Read,
                "operator" => Scope::Operator,
                other => bail!("line {}: unknown scope `{other}`; use read or operator", n + 1),
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                bail!("line {}: a token must have at least {MIN_TOKEN_CHARS} characters", n + 1);
            }
            hashes.push((blake3::hash(token.as_bytes()), scope));
        }
        if hashes.is_empty() {
            bail!("no tokens; add lines like `operator <32+ random characters>`");
        }
        Ok(Tokens { hashes })
    }

    /// The scope of `presented`, if it is one of the tokens. Every stored hash is compared
    /// (constant time each), whichever matches.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let hash = blake3::hash(presented.as_bytes());
        let mut found = None;
        for (stored, scope) in &self.hashes {
            if *stored == hash {
                found = found.max(Some(*scope));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "r0000000000000000000000000000000000000000";
    const OPERATOR: &str = "o0000000000000000000000000000000000000000";

    #[test]
    fn tokens_have_scopes_and_unknown_ones_none() {
        let tokens = Tokens::parse(&format!("# tokens\nread {READ}\n\noperator {OPERATOR}  # ops\n")).unwrap();
        assert_eq!(tokens.scope_of(READ), Some(Scope::Read));
        assert_eq!(tokens.scope_of(OPERATOR), Some(Scope::Operator));
        assert_eq!(tokens.scope_of(&READ[..READ.len() - 1]), None);
        assert_eq!(tokens.scope_of(""), None);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, says) in [
            ("read", "line 1: expected"),
            (&format!("\nroot {READ}") as &str, "line 2: unknown scope `root`"),
            ("read short", "line 1: a token must have at least 32"),
            (&format!("read {READ} extra"), "line 1: expected"),
            ("# nothing\n", "no tokens"),
        ] {
            let e = format!("{:#}", Tokens::parse(text).unwrap_err());
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("read {READ}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", Tokens::load(&path).unwrap_err());
        assert!(e.contains("readable by other users") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Tokens::load(&path).is_ok());
    }
}
