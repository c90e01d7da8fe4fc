//! The map from a device's id to what a rollout remembers of it, for the controller (every
//! device of the fleet) and the site guards (a site's devices).
//!
//! Why a hash map where std is there: the controller's map holds a million devices in a
//! fleet-sized rollout, and each report looks its device up. A B-tree makes ~20 key
//! comparisons over 6–8 levels of nodes that are cold by the time a device reports again; a
//! hash table touches one group. In `simnet run fleet-1m` the two maps' lookups were 9 % of
//! the run as B-trees.
//!
//! Why keyed by a secret seed ([`MapSeed`]): device ids are public keys, which a device (or
//! whoever made its key) chooses. With a hash anyone can compute, keys ground for
//! collisions would slow every report down. The seed is an input, as all randomness in this
//! crate is: a daemon draws it from the OS (`host::random::map_seed`), simnet from its
//! scenario's seed. The maps are never iterated in an order that shows in a result: the
//! guard breaks ties by id where it picks one.
//!
//! Without std (`alloc` only) the map stays a B-tree (the seed goes unused): the same code
//! compiles against both, since it uses only what both maps offer.

use crate::id_order::Bytes32;

/// The secret that keys a rollout's device maps. Draw it from a random source the devices
/// cannot predict; a fixed seed is fine where nobody chooses device ids (simulations, tests).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MapSeed(pub [u8; 16]);

impl core::fmt::Debug for MapSeed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // A secret: never in logs.
        f.write_str("MapSeed(..)")
    }
}

/// Builds keyed SipHash-1-3 hashers from a [`MapSeed`].
#[cfg(feature = "std")]
#[derive(Clone)]
pub(crate) struct SeededHasher(MapSeed);

#[cfg(feature = "std")]
impl std::hash::BuildHasher for SeededHasher {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_key(&self.0 .0)
    }
}

/// A device's entry by its id: a keyed hash map with std, a B-tree without.
#[cfg(feature = "std")]
pub(crate) type DeviceMap<V> = std::collections::HashMap<Bytes32, V, SeededHasher>;

/// A device's entry by its id: a keyed hash map with std, a B-tree without.
#[cfg(not(feature = "std"))]
pub(crate) type DeviceMap<V> = alloc::collections::BTreeMap<Bytes32, V>;

/// An empty [`DeviceMap`] keyed by `seed`.
#[cfg(feature = "std")]
pub(crate) fn device_map<V>(seed: MapSeed) -> DeviceMap<V> {
    std::collections::HashMap::with_hasher(SeededHasher(seed))
}

/// An empty [`DeviceMap`] (a B-tree needs no seed).
#[cfg(not(feature = "std"))]
pub(crate) fn device_map<V>(_seed: MapSeed) -> DeviceMap<V> {
    alloc::collections::BTreeMap::new()
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Different seeds hash the same id differently (what keeps ground ids from colliding
    /// in every map), the same seed the same way.
    #[test]
    fn the_seed_keys_the_hash() {
        let id = Bytes32([7; 32]);
        let hash = |seed: [u8; 16]| SeededHasher(MapSeed(seed)).hash_one(id);
        assert_eq!(hash([1; 16]), hash([1; 16]));
        assert_ne!(hash([1; 16]), hash([2; 16]));
        assert_eq!(format!("{:?}", MapSeed([9; 16])), "MapSeed(..)");
    }
}
