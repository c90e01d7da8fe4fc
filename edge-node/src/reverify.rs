//! Background re-verification of the chunk store: every file is hashed again, one after
//! another, at a bounded number of bytes per second, so a chunk altered on disk after it was
//! verified (bit rot, an operator's mistake, an attacker with disk access) is found and
//! deleted within one pass instead of being served until the next restart.
//!
//! Why paced rather than a full scan at start or on a timer: hashing competes with serving
//! devices for the disk and the two cores; a fixed rate (`reverify_bytes_per_sec`) makes its
//! cost predictable and a pass take `stored bytes / rate` (16 GiB at 16 MiB/s: 17 minutes).
//! Pacing is by bytes read: by time `t` after start no more than `rate × t` plus one chunk
//! has been read.

use std::sync::Arc;
use std::time::Duration;

use protocol::ChunkId;
use tokio::time::Instant;

use crate::metrics::Metrics;
use chunk_store::{Check, ChunkStore};

/// How long an empty store waits before it is listed again.
const EMPTY_STORE_RETRY: Duration = Duration::from_secs(10);

/// Paces work to `bytes_per_sec`: [`Pace::admit`] returns when `bytes` more may be spent.
#[derive(Debug)]
pub struct Pace {
    started: Instant,
    bytes_per_sec: u64,
    spent_bytes: u64,
}

impl Pace {
    /// A pace of `bytes_per_sec` (at least 1) starting now.
    pub fn new(bytes_per_sec: u64) -> Self {
        Pace { started: Instant::now(), bytes_per_sec: bytes_per_sec.max(1), spent_bytes: 0 }
    }

    /// Waits until the bytes spent so far are paid for at the rate, then spends `bytes`:
    /// by any time `t`, at most `rate × t + bytes` of the last call have been admitted.
    pub async fn admit(&mut self, bytes: u64) {
        let paid_at = Duration::from_secs_f64(self.spent_bytes as f64 / self.bytes_per_sec as f64);
        tokio::time::sleep_until(self.started + paid_at).await;
        self.spent_bytes = self.spent_bytes.saturating_add(bytes);
    }
}

/// Re-verifies `store` forever at `bytes_per_sec`, counting bytes in
/// `metrics.reverified_bytes` (damaged files are counted by the store itself) and handing the
/// ids of damaged, now deleted, files to `on_damaged` so the cache forgets them. Spawn it;
/// abort the task to stop. `bytes_per_sec == 0` returns at once (disabled).
pub async fn run(store: ChunkStore, bytes_per_sec: u64, metrics: Arc<Metrics>, on_damaged: impl Fn(ChunkId)) {
    if bytes_per_sec == 0 {
        return;
    }
    let max_len = u64::from(protocol::manifest::limits::MAX_STORED_CHUNK_BYTES);
    let mut pace = Pace::new(bytes_per_sec);
    loop {
        let listing = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.scan()).await.unwrap_or_default()
        };
        if listing.is_empty() {
            tokio::time::sleep(EMPTY_STORE_RETRY).await;
            continue;
        }
        for (id, len) in listing {
            // Charged at the listed length (a file longer than a chunk may be is read only up
            // to the limit and then deleted).
            pace.admit(len.min(max_len + 1)).await;
            let check = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.check(&id, max_len)).await
            };
            match check {
                Ok(Check::Intact { len }) => Metrics::add(&metrics.reverified_bytes, len),
                Ok(Check::Damaged { len }) => {
                    Metrics::add(&metrics.reverified_bytes, len);
                    on_damaged(id);
                }
                Ok(Check::Missing) | Err(_) => {}
            }
        }
        Metrics::add(&metrics.reverify_passes, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Mutex;

    fn store_with(dir: &std::path::Path, count: usize, len: usize) -> (ChunkStore, Arc<Metrics>, Vec<ChunkId>) {
        let metrics = Arc::new(Metrics::default());
        let store = ChunkStore::open(dir).unwrap().with_on_damage(metrics.clone());
        let mut ids = Vec::new();
        for i in 0..count {
            let body: Vec<u8> = (0..len).map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8)).collect();
            let id = ChunkId::of(&body);
            store.put_batch(&[(id, &body)]).unwrap();
            ids.push(id);
        }
        (store, metrics, ids)
    }

    /// Polls `done` until it holds or `timeout` passes; the poll interval bounds CPU only.
    async fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    /// A body altered on disk after this process verified it (and so trusted by `get`) is found by
    /// the background pass: counted, deleted, reported to the cache, never served again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_tampered_after_it_was_verified_is_found_by_background_reverification() {
        let dir = tempfile::tempdir().unwrap();
        let (store, metrics, ids) = store_with(dir.path(), 4, 4096);
        // Verified by this process (written by it, and read once).
        assert!(store.get(&ids[2], 1 << 20).is_ok());
        let bytes = chunk_store::testing::flip_stored_byte(&store, &ids[2], 100);
        // Before re-verification, the verified set trusts the body on disk: this is the hole.
        assert_eq!(store.get(&ids[2], 1 << 20).unwrap().as_ref(), &bytes[..]);

        let found = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(store.clone(), 1 << 30, metrics.clone(), {
            let found = found.clone();
            move |id| found.lock().unwrap().push(id)
        }));
        let passed = eventually(Duration::from_secs(20), || metrics.reverify_passes.load(Relaxed) >= 1).await;
        task.abort();
        assert!(passed, "no re-verification pass completed");
        assert_eq!(metrics.corrupt_chunks.load(Relaxed), 1);
        assert_eq!(*found.lock().unwrap(), vec![ids[2]]);
        assert_eq!(store.body_on_disk(&ids[2]), None);
        assert_eq!(store.get(&ids[2], 1 << 20), Err(chunk_store::ReadError::Missing));
        for id in [ids[0], ids[1], ids[3]] {
            assert!(store.get(&id, 1 << 20).is_ok());
        }
    }

    /// At 256 KiB/s over 512 KiB of chunks, a pass takes at least (512 - 32) / 256 = 1.875 s,
    /// and at every moment the bytes hashed stay within the rate plus one chunk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reverification_reads_no_faster_than_its_configured_rate() {
        const RATE: u64 = 256 << 10;
        const CHUNK: u64 = 32 << 10;
        let dir = tempfile::tempdir().unwrap();
        let (store, metrics, _) = store_with(dir.path(), 16, CHUNK as usize);
        let started = Instant::now();
        let task = tokio::spawn(run(store, RATE, metrics.clone(), |_| {}));
        let mut worst_excess = 0i64;
        let passed = eventually(Duration::from_secs(30), || {
            let bytes = metrics.reverified_bytes.load(Relaxed);
            let allowed = (started.elapsed().as_secs_f64() * RATE as f64) as u64 + CHUNK;
            worst_excess = worst_excess.max(bytes as i64 - allowed as i64);
            metrics.reverify_passes.load(Relaxed) >= 1
        })
        .await;
        let elapsed = started.elapsed();
        task.abort();
        assert!(passed, "no pass within the deadline");
        assert!(worst_excess <= 0, "read {worst_excess} bytes more than the rate allows");
        assert!(elapsed >= Duration::from_millis(1850), "a 512 KiB pass at 256 KiB/s took only {elapsed:?}");
        assert_eq!(metrics.corrupt_chunks.load(Relaxed), 0);
    }
}
