//! The store's inventory and recency in sled: which chunks are stored, their lengths, and
//! when each was last stored or served.
//!
//! The chunk store's pack files are the source of truth; this index is what makes a restart
//! remember the least-recently-used order, so the cache evicts the same chunks it would have
//! evicted before the restart. At start-up it is reconciled with the store (entries without
//! a stored body are dropped; bodies without an entry count as oldest). sled batches its own durability
//! (flushes every few hundred milliseconds); losing the newest recency updates to a crash
//! only makes eviction slightly less exact, never unsafe.

use anyhow::{Context, Result};
use protocol::ChunkId;
use std::collections::HashMap;
use std::path::Path;

/// The sled-backed chunk index.
#[derive(Clone)]
pub struct StoreIndex {
    chunks: sled::Tree,
    db: sled::Db,
}

impl std::fmt::Debug for StoreIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreIndex").field("chunks", &self.chunks.len()).finish()
    }
}

fn value(len: u64, last_used: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&len.to_le_bytes());
    v[8..].copy_from_slice(&last_used.to_le_bytes());
    v
}

fn parse_value(v: &[u8]) -> Option<(u64, u64)> {
    let len = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let last_used = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
    Some((len, last_used))
}

/// How long `open` waits for sled's file lock before reporting the data dir as in use.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting briefly if its lock file is still held.
///
/// sled releases its lock from a background thread after the last handle drops, so a
/// restart inside the same process (tests, a supervisor restarting the node) can find it
/// held for a moment. A lock still held after `LOCK_WAIT` means another process really
/// is using the directory, and the error says so.
fn open_with_lock_retry(path: &Path, wait: std::time::Duration) -> Result<sled::Db> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match sled::Config::new().path(path).flush_every_ms(Some(500)).open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_held(&e) && started.elapsed() < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(e) if is_lock_held(&e) => {
                anyhow::bail!(
                    "the store index {} is locked: is another edge-node using this data dir? \
                     Stop it or pass a different --data-dir",
                    path.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open the store index {}", path.display())),
        }
    }
}

fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

impl StoreIndex {
    /// Opens (creating) the index in `data_dir/index.sled`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("index.sled");
        let db = open_with_lock_retry(&path, LOCK_WAIT)?;
        let chunks = db.open_tree("chunks")?;
        Ok(StoreIndex { chunks, db })
    }

    /// Records chunks written to the store at time `now` (any monotonic counter).
    pub fn stored(&self, chunks: &[(ChunkId, u64)], now: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, len) in chunks {
            batch.insert(&id.0[..], &value(*len, now)[..]);
        }
        self.chunks.apply_batch(batch)?;
        Ok(())
    }

    /// Records that chunks were served at `now`.
    pub fn used(&self, ids: &[ChunkId], now: u64) -> Result<()> {
        for id in ids {
            self.chunks
                .fetch_and_update(id.0, |old| old.and_then(parse_value).map(|(len, _)| value(len, now).to_vec()))?;
        }
        Ok(())
    }

    /// Forgets a chunk (evicted or lost).
    pub fn removed(&self, id: &ChunkId) -> Result<()> {
        self.chunks.remove(id.0)?;
        Ok(())
    }

    /// Reconciles with the chunks actually stored: returns them ordered
    /// least-recently-used first, and drops index entries whose body is gone.
    pub fn reconcile(&self, files: Vec<(ChunkId, u64)>) -> Result<Vec<(ChunkId, u64)>> {
        let mut last_used: HashMap<ChunkId, u64> = HashMap::new();
        let mut stale = Vec::new();
        for entry in self.chunks.iter() {
            let (key, v) = entry?;
            let (Ok(id), Some((_, used))) = (<[u8; 32]>::try_from(&key[..]), parse_value(&v)) else {
                stale.push(key);
                continue;
            };
            last_used.insert(ChunkId(id), used);
        }
        let present: std::collections::HashSet<ChunkId> = files.iter().map(|(id, _)| *id).collect();
        for id in last_used.keys().filter(|id| !present.contains(id)) {
            stale.push(sled::IVec::from(&id.0[..]));
        }
        for key in stale {
            self.chunks.remove(key)?;
        }
        let mut ordered = files;
        ordered.sort_by_key(|(id, _)| (last_used.get(id).copied().unwrap_or(0), *id));
        // Files the index did not know get an entry now, as the oldest.
        let unknown: Vec<(ChunkId, u64)> =
            ordered.iter().filter(|(id, _)| !last_used.contains_key(id)).copied().collect();
        self.stored(&unknown, 0)?;
        Ok(ordered)
    }

    /// Flushes pending writes (on clean shutdown and in tests).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_restores_lru_order_and_drops_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
        {
            let index = StoreIndex::open(dir.path()).unwrap();
            index.stored(&[(a, 10), (b, 20), (c, 30)], 1).unwrap();
            index.used(&[a], 5).unwrap(); // a is now the most recently used
            index.flush().unwrap();
        }
        let index = StoreIndex::open(dir.path()).unwrap();
        // c's file is gone; d is a file the index never heard of.
        let d = ChunkId([4; 32]);
        let order = index.reconcile(vec![(a, 10), (b, 20), (d, 40)]).unwrap();
        assert_eq!(order.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![d, b, a]);
        assert!(!index.chunks.contains_key(c.0).unwrap());
        assert!(index.chunks.contains_key(d.0).unwrap());
    }

    #[test]
    fn an_index_held_open_elsewhere_is_reported_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StoreIndex::open(dir.path()).unwrap();
        let path = dir.path().join("index.sled");
        let err = open_with_lock_retry(&path, std::time::Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("another edge-node"), "{err}");
    }
}
