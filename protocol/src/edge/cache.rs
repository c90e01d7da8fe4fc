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

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    last_used: u64,
    pins: u32,
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
    entries: ChunkMap<Entry>,
    /// Unpinned chunks by `last_used` (a tick no two uses share): the eviction order.
    lru: BTreeMap<u64, ChunkId>,
    /// Pins requested for chunks not (yet) stored, applied on admission.
    pending_pins: ChunkMap<u32>,
}

impl ChunkCache {
    /// An empty cache of `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        ChunkCache {
            capacity_bytes,
            used_bytes: 0,
            clock: 0,
            entries: ChunkMap::default(),
            lru: BTreeMap::new(),
            pending_pins: ChunkMap::default(),
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
        self.entries.len()
    }
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Whether `id` is held.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.entries.contains_key(id)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Admits a verified chunk of `bytes`, returning the chunks evicted to make room (the
    /// caller deletes them). On error nothing changes and the chunk must not be stored.
    pub fn admit(&mut self, id: ChunkId, bytes: u64) -> Result<Vec<ChunkId>, AdmitError> {
        if self.entries.contains_key(&id) {
            self.touch(&id);
            return Ok(Vec::new());
        }
        if bytes > self.capacity_bytes {
            return Err(AdmitError::TooLarge);
        }
        let pins = self.pending_pins.get(&id).copied().unwrap_or(0);
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
        self.entries.insert(id, Entry { bytes, last_used, pins });
        if pins == 0 {
            self.lru.insert(last_used, id);
        }
        self.used_bytes += bytes;
        Ok(victims)
    }

    /// Records a use (a device or peer was served the chunk).
    pub fn touch(&mut self, id: &ChunkId) {
        let now = self.tick();
        if let Some(entry) = self.entries.get_mut(id) {
            if entry.pins == 0 {
                self.lru.remove(&entry.last_used);
                self.lru.insert(now, *id);
            }
            entry.last_used = now;
        }
    }

    /// Drops a chunk (the store found it damaged, or it was evicted).
    pub fn remove(&mut self, id: &ChunkId) -> bool {
        match self.entries.remove(id) {
            Some(entry) => {
                self.lru.remove(&entry.last_used);
                self.used_bytes -= entry.bytes;
                true
            }
            None => false,
        }
    }

    /// Adds a pin to each chunk (a release became pinned). Chunks may be pinned before
    /// they are stored.
    pub fn pin(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            *self.pending_pins.entry(id).or_insert(0) += 1;
            if let Some(entry) = self.entries.get_mut(&id) {
                if entry.pins == 0 {
                    self.lru.remove(&entry.last_used);
                }
                entry.pins += 1;
            }
        }
    }

    /// Removes a pin from each chunk (a release stopped being pinned).
    pub fn unpin(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            if let Some(count) = self.pending_pins.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    self.pending_pins.remove(&id);
                }
            }
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.pins = entry.pins.saturating_sub(1);
                if entry.pins == 0 {
                    self.lru.insert(entry.last_used, id);
                }
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
