//! Waiting on conditions that send no event.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often [`eventually`] looks again: it bounds the load a wait puts on what it polls (a
/// status endpoint, a directory), not correctness — the deadline decides failure.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Some`; an error naming `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Waits until `path` exists (a daemon writing a file it announces nowhere else).
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<()> {
    eventually(&format!("{} to appear", path.display()), timeout, || path.exists().then_some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_never_holds_fails_at_the_deadline() {
        let start = Instant::now();
        let error = eventually("never", Duration::from_millis(250), || None::<()>).unwrap_err();
        assert!(error.to_string().contains("waiting for never"), "{error}");
        assert!(start.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn a_file_that_appears_ends_the_wait() {
        let dir = std::env::temp_dir().join(format!("test-procs-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ready");
        std::fs::write(&file, b"").unwrap();
        wait_for_file(&file, Duration::from_secs(1)).unwrap();
        assert!(wait_for_file(&dir.join("absent"), Duration::from_millis(100)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
