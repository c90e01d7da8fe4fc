//! The chunks devices asked for last, kept in memory up to a byte budget and served without
//! touching the disk or a blocking thread.
//!
//! Why: a device service answer from the store costs two hops to tokio's blocking pool (the
//! stat that sizes the answer, then the read) and a file open — about 130 µs per chunk on the
//! reference VM, which is what an MCU waiting on one 4 KiB chunk at a time sees as its
//! download rate (`scripts/bench-mcu`: the agent sat 80 % of its download waiting for the
//! edge). The devices of a site install the same release, so after the first device every
//! chunk is a hit and an answer is a hash lookup.
//!
//! What it holds is what the store returned to a device read: verified bytes, content
//! addressed, so a hit is as trustworthy as the store's own answer. A chunk the store evicts
//! or finds damaged later may still be served from here until it ages out; the bytes are
//! the ones whose hash names them, which is all a device checks.
//!
//! Least recently used first out, by byte budget (`device_hot_cache_bytes`; 0 disables it).
//! A hand-written two-map LRU: the crates that do this would pull a second `hashbrown` into
//! the edge node's build and break the workspace's one-feature-set build (see
//! `scripts/check-no-rebuild`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use protocol::ChunkId;

/// Recently served chunks within a byte budget.
#[derive(Debug)]
pub struct HotChunks {
    budget: usize,
    inner: Mutex<Lru>,
}

#[derive(Debug, Default)]
struct Lru {
    /// Chunk → its bytes and the tick of its last use.
    entries: HashMap<ChunkId, (Bytes, u64)>,
    /// Tick of last use → chunk: the oldest first.
    by_use: BTreeMap<u64, ChunkId>,
    bytes: usize,
    tick: u64,
}

impl HotChunks {
    /// A cache of at most `budget` bytes of chunk bodies (0: keeps nothing).
    pub fn new(budget: usize) -> Self {
        HotChunks { budget, inner: Mutex::new(Lru::default()) }
    }

    /// `id`'s bytes if they are here (now the most recently used).
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut lru = self.inner.lock().ok()?;
        let tick = lru.next_tick();
        let Lru { entries, by_use, .. } = &mut *lru;
        let (bytes, used) = entries.get_mut(id)?;
        by_use.remove(used);
        by_use.insert(tick, *id);
        *used = tick;
        Some(bytes.clone())
    }

    /// The stored length of `id` if it is here (without touching its recency).
    pub fn len_of(&self, id: &ChunkId) -> Option<u64> {
        let lru = self.inner.lock().ok()?;
        lru.entries.get(id).map(|(bytes, _)| bytes.len() as u64)
    }

    /// Keeps `bytes` as `id`'s (verified) body, evicting the least recently used beyond the
    /// budget. A chunk bigger than a quarter of the budget is not kept: one would push out
    /// the many small ones a fleet of MCUs shares.
    pub fn insert(&self, id: ChunkId, bytes: Bytes) {
        if bytes.len() > self.budget / 4 {
            return;
        }
        let Ok(mut lru) = self.inner.lock() else { return };
        let tick = lru.next_tick();
        let len = bytes.len();
        if let Some((old, used)) = lru.entries.insert(id, (bytes, tick)) {
            lru.bytes -= old.len();
            lru.by_use.remove(&used);
        }
        lru.by_use.insert(tick, id);
        lru.bytes += len;
        while lru.bytes > self.budget {
            let Some((_, oldest)) = lru.by_use.pop_first() else { break };
            if let Some((evicted, _)) = lru.entries.remove(&oldest) {
                lru.bytes -= evicted.len();
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map_or(0, |lru| lru.bytes)
    }
}

impl Lru {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn body(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        let hot = HotChunks::new(400);
        hot.insert(id(1), body(100));
        hot.insert(id(2), body(100));
        hot.insert(id(3), body(100));
        assert!(hot.get(&id(1)).is_some(), "1 is now the most recent");
        hot.insert(id(4), body(100));
        hot.insert(id(5), body(100));
        assert!(hot.get(&id(2)).is_none(), "2 was the least recently used");
        for n in [1, 3, 4, 5] {
            assert_eq!(hot.get(&id(n)).map(|b| b.len()), Some(100), "chunk {n}");
        }
        assert_eq!(hot.bytes(), 400);
        assert_eq!(hot.len_of(&id(4)), Some(100));
        assert_eq!(hot.len_of(&id(2)), None);
    }

    #[test]
    fn replacing_an_entry_counts_its_bytes_once() {
        let hot = HotChunks::new(1000);
        hot.insert(id(1), body(200));
        hot.insert(id(1), body(100));
        assert_eq!(hot.bytes(), 100);
        hot.insert(id(2), body(250));
        hot.insert(id(3), body(250));
        hot.insert(id(4), body(250));
        hot.insert(id(5), body(250));
        assert!(hot.bytes() <= 1000);
        assert!(hot.get(&id(1)).is_none(), "the oldest left to make room");
    }

    #[test]
    fn a_zero_budget_or_an_outsized_chunk_keeps_nothing() {
        let off = HotChunks::new(0);
        off.insert(id(1), body(1));
        assert!(off.get(&id(1)).is_none());
        let hot = HotChunks::new(1000);
        hot.insert(id(1), body(251));
        assert!(hot.get(&id(1)).is_none());
        assert_eq!(hot.bytes(), 0);
    }
}
