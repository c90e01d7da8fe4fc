//! Cache admission, pinning and least-recently-used eviction by bytes.
//!
//! The edge node's store holds chunk bodies; this decides which ones it may keep. Capacity
//! is in bytes (what an operator provisions). Chunks of pinned releases (the current and
//! previous release of every hardware class the node serves) are never evicted; everything
//! else goes least-recently-used first, where "used" means stored or served.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::chunk_map::ChunkMap;
use crate::ChunkId;

/// A chunk the cache knows: stored, pinned, or both. One map for both, so a chunk stored
/// costs one lookup, and an edge node keeps one table per release's chunks, not two (a
/// separate table of pins was a sixth of an edge node's memory in fleet-1m).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Stored bytes; meaningful while `stored`.
    bytes: u64,
    /// The tick of its last use; meaningful while `stored`.
    last_used: u64,
    /// Pinned releases it belongs to (pins may come before the chunk is stored).
    pins: u32,
    stored: bool,
}

/// Why a chunk was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// Pinned chunks alone fill the capacity: raise `capacity_bytes` or serve fewer classes.
    FullOfPinned,
    /// The chunk is larger than the whole cache.
    TooLarge,
}

/// The byte-bounded LRU with pins.
#[derive(Debug, Clone)]
pub struct ChunkCache {
    capacity_bytes: u64,
    used_bytes: u64,
    clock: u64,
    /// Chunks stored or pinned; an entry neither stored nor pinned is removed.
    entries: ChunkMap<Entry>,
    /// Chunks stored.
    stored: usize,
    /// Stored, unpinned chunks by `last_used` (a tick no two uses share): the eviction order.
    lru: BTreeMap<u64, ChunkId>,
}

impl ChunkCache {
    /// An empty cache of `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        ChunkCache {
            capacity_bytes,
            used_bytes: 0,
            clock: 0,
            entries: ChunkMap::default(),
            stored: 0,
            lru: BTreeMap::new(),
        }
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }
    /// Configured capacity.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
    /// Chunks held.
    pub fn len(&self) -> usize {
        self.stored
    }
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.stored == 0
    }
    /// Whether `id` is held.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.entries.get(id).is_some_and(|e| e.stored)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Admits a verified chunk of `bytes`, returning the chunks evicted to make room (the
    /// caller deletes them). On error nothing changes and the chunk must not be stored.
    pub fn admit(&mut self, id: ChunkId, bytes: u64) -> Result<Vec<ChunkId>, AdmitError> {
        if self.contains(&id) {
            self.touch(&id);
            return Ok(Vec::new());
        }
        if bytes > self.capacity_bytes {
            return Err(AdmitError::TooLarge);
        }
        // Plan the evictions first so a refusal leaves the cache untouched.
        let mut victims = Vec::new();
        let mut freed = 0u64;
        let need = (self.used_bytes + bytes).saturating_sub(self.capacity_bytes);
        for victim in self.lru.values() {
            if freed >= need {
                break;
            }
            freed += self.entries[victim].bytes;
            victims.push(*victim);
        }
        if freed < need {
            return Err(AdmitError::FullOfPinned);
        }
        for victim in &victims {
            self.remove(victim);
        }
        let last_used = self.tick();
        let entry = self.entries.entry(id).or_insert(Entry { bytes, last_used, pins: 0, stored: false });
        *entry = Entry { bytes, last_used, stored: true, ..*entry };
        if entry.pins == 0 {
            self.lru.insert(last_used, id);
        }
        self.stored += 1;
        self.used_bytes += bytes;
        Ok(victims)
    }

    /// Records a use (a device or peer was served the chunk).
    pub fn touch(&mut self, id: &ChunkId) {
        let now = self.tick();
        if let Some(entry) = self.entries.get_mut(id).filter(|e| e.stored) {
            if entry.pins == 0 {
                self.lru.remove(&entry.last_used);
                self.lru.insert(now, *id);
            }
            entry.last_used = now;
        }
    }

    /// Drops a chunk (the store found it damaged, or it was evicted). Its pins stay, for
    /// when it is stored again.
    pub fn remove(&mut self, id: &ChunkId) -> bool {
        let Some(entry) = self.entries.get_mut(id).filter(|e| e.stored) else { return false };
        entry.stored = false;
        let Entry { bytes, last_used, pins, .. } = *entry;
        if pins == 0 {
            self.lru.remove(&last_used);
            self.entries.remove(id);
        }
        self.stored -= 1;
        self.used_bytes -= bytes;
        true
    }

    /// Adds a pin to each chunk (a release became pinned). Chunks may be pinned before
    /// they are stored.
    pub fn pin(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            let entry = self.entries.entry(id).or_insert(Entry { bytes: 0, last_used: 0, pins: 0, stored: false });
            if entry.stored && entry.pins == 0 {
                self.lru.remove(&entry.last_used);
            }
            entry.pins += 1;
        }
    }

    /// Removes a pin from each chunk (a release stopped being pinned).
    pub fn unpin(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            let Some(entry) = self.entries.get_mut(&id).filter(|e| e.pins > 0) else { continue };
            entry.pins -= 1;
            match (entry.pins, entry.stored) {
                (0, true) => {
                    self.lru.insert(entry.last_used, id);
                }
                (0, false) => {
                    self.entries.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// Evicts unpinned chunks until usage fits `capacity_bytes` (after a capacity change).
    pub fn set_capacity(&mut self, capacity_bytes: u64) -> Vec<ChunkId> {
        self.capacity_bytes = capacity_bytes;
        let mut victims = Vec::new();
        while self.used_bytes > self.capacity_bytes {
            let Some((_, &victim)) = self.lru.first_key_value() else { break };
            self.remove(&victim);
            victims.push(victim);
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> ChunkId {
        ChunkId([i; 32])
    }

    #[test]
    fn evicts_least_recently_used_unpinned_first() {
        let mut cache = ChunkCache::new(300);
        for i in 1..=3 {
            assert_eq!(cache.admit(id(i), 100).unwrap(), []);
        }
        cache.touch(&id(1));
        assert_eq!(cache.admit(id(4), 100).unwrap(), [id(2)]);
        cache.pin([id(3)]);
        assert_eq!(cache.admit(id(5), 150).unwrap(), [id(1), id(4)]);
        assert!(cache.contains(&id(3)) && cache.used_bytes() == 250);
    }

    #[test]
    fn pinned_chunks_are_never_evicted_and_refusal_changes_nothing() {
        let mut cache = ChunkCache::new(200);
        cache.pin([id(1), id(2)]);
        cache.admit(id(1), 100).unwrap();
        cache.admit(id(2), 100).unwrap();
        assert_eq!(cache.admit(id(3), 10), Err(AdmitError::FullOfPinned));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.admit(id(9), 1000), Err(AdmitError::TooLarge));
        cache.unpin([id(1)]);
        assert_eq!(cache.admit(id(3), 10).unwrap(), [id(1)]);
    }

    /// A pin outlives the chunk's loss and its absence: stored again, the chunk is still
    /// pinned; unpinned while absent, it is forgotten.
    #[test]
    fn pins_stay_with_a_chunk_that_is_lost_and_stored_again() {
        let mut cache = ChunkCache::new(200);
        cache.pin([id(1), id(2)]);
        cache.admit(id(1), 100).unwrap();
        assert!(cache.remove(&id(1)) && !cache.contains(&id(1)) && cache.is_empty());
        cache.admit(id(1), 100).unwrap();
        cache.admit(id(3), 100).unwrap();
        assert_eq!(cache.admit(id(4), 100).unwrap(), [id(3)], "id 1 is still pinned");
        // Unpinned while absent (twice, and a chunk never pinned): nothing left to keep.
        cache.unpin([id(2)]);
        cache.unpin([id(2), id(9)]);
        assert_eq!(cache.admit(id(2), 100).unwrap(), [id(4)]);
        cache.unpin([id(1)]);
        assert_eq!(cache.admit(id(5), 100).unwrap(), [id(1)], "unpinned and least recently used");
        assert_eq!((cache.len(), cache.used_bytes()), (2, 200));
        assert!(cache.contains(&id(2)) && cache.contains(&id(5)));
    }

    #[test]
    fn shrinking_capacity_evicts() {
        let mut cache = ChunkCache::new(1000);
        for i in 0..10 {
            cache.admit(id(i), 100).unwrap();
        }
        assert_eq!(cache.set_capacity(500).len(), 5);
        assert_eq!(cache.used_bytes(), 500);
    }
}
