//! The map from a device's id to what a rollout remembers of it, for the controller (every
//! device of the fleet) and the site guards (a site's devices).
//!
//! Why a hash map where std is there: the controller's map holds a million devices in a
//! fleet-sized rollout, and each report looks its device up. A B-tree walks ~20 levels of
//! nodes that are cold by the time a device reports again; a hash table touches one group.
//! In `simnet run fleet-1m` the two maps' lookups were 9 % of the run as B-trees.
//!
//! Why std's `RandomState`: device ids are public keys, which a device (or whoever made its
//! key) chooses. A hasher with a fixed seed would let keys ground for collisions slow every
//! report down; a per-map random seed does not. The maps are never iterated in an order that
//! shows in a result: the guard breaks ties by id where it picks one.
//!
//! Without std (`alloc` only) there is no seed to draw, so the map stays a B-tree there:
//! the same code compiles against both, since it uses only what both maps offer.

use crate::id_order::Bytes32;

/// A device's entry by its id: a hash map with std, a B-tree without.
#[cfg(feature = "std")]
pub(crate) type DeviceMap<V> = std::collections::HashMap<Bytes32, V>;

/// A device's entry by its id: a hash map with std, a B-tree without.
#[cfg(not(feature = "std"))]
pub(crate) type DeviceMap<V> = alloc::collections::BTreeMap<Bytes32, V>;
