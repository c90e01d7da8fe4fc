//! A map keyed by [`ChunkId`], for the edge node's per-chunk bookkeeping (the cache's
//! entries, stored or pinned, and where each chunk of a release sits).
//!
//! Why a hash map where std is there: an edge node looks a chunk up several times for every
//! chunk it stores (admission, pins, which releases hold it). In `simnet run fleet-1m` those
//! lookups in B-trees, ~10 comparisons of 32-byte keys over nodes gone cold between two
//! chunks, were a sixth of the edge nodes' fetch phase; a hash table touches one group.
//!
//! Why the id's own bytes as the hash: a chunk id is a BLAKE3 digest, already uniform. Ids
//! reach these maps only from releases whose metadata the publisher signed and from chunks
//! whose bytes hashed to them; nobody else can choose them, and the publisher, who could
//! grind ids into one bucket, could as well sign a release too large to fetch.
//!
//! Without std (`alloc` only) the map stays a B-tree, like the rollout's device maps: the
//! code uses only what both maps offer, and never iterates them.

use crate::ChunkId;

/// Hashes a chunk id to its first eight bytes.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Default)]
pub(crate) struct ChunkIdHasher(u64);

#[cfg(feature = "std")]
impl core::hash::Hasher for ChunkIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `ChunkId` hashes as its 32 bytes (after their length, which `write_usize` drops).
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _length: usize) {}
}

/// A chunk's entry by its id: a hash map with std, a B-tree without.
#[cfg(feature = "std")]
pub(crate) type ChunkMap<V> = std::collections::HashMap<ChunkId, V, core::hash::BuildHasherDefault<ChunkIdHasher>>;

/// A chunk's entry by its id: a hash map with std, a B-tree without.
#[cfg(not(feature = "std"))]
pub(crate) type ChunkMap<V> = alloc::collections::BTreeMap<ChunkId, V>;

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use core::hash::BuildHasher;

    /// Ids that differ only after their first eight bytes share a bucket but stay distinct
    /// keys; ids that differ early hash apart.
    #[test]
    fn ids_hash_by_their_leading_bytes_and_stay_distinct_keys() {
        let hash = |id: &ChunkId| core::hash::BuildHasherDefault::<ChunkIdHasher>::default().hash_one(id);
        let mut a = [7u8; 32];
        let b = a;
        a[31] = 8;
        let (a, b) = (ChunkId(a), ChunkId(b));
        assert_eq!(hash(&a), hash(&b));
        let mut c = [7u8; 32];
        c[0] = 9;
        assert_ne!(hash(&a), hash(&ChunkId(c)));
        let mut map: ChunkMap<u32> = ChunkMap::default();
        map.insert(a, 1);
        map.insert(b, 2);
        assert_eq!((map.get(&a), map.get(&b), map.len()), (Some(&1), Some(&2), 2));
    }
}
