//! The order of the 32-byte ids ([`ChunkId`](crate::ChunkId), [`ReleaseId`](crate::ReleaseId),
//! [`NodeId`](crate::edge::NodeId)): their bytes' lexicographic order, as derived, but
//! compared as two big-endian 128-bit halves in registers. The derived order calls `memcmp`
//! for each comparison, and the edge scheduler's maps keyed by these ids (a request being
//! built per peer and release, a chunk in flight per release and index) compare them a few
//! times per chunk per scheduling pass: `memcmp` was 7.7 % of a fleet-1m simulation.

use core::cmp::Ordering;

/// `a.cmp(b)` for 32-byte arrays, without a call to `memcmp`.
#[inline]
pub(crate) fn cmp_bytes32(a: &[u8; 32], b: &[u8; 32]) -> Ordering {
    halves(a).cmp(&halves(b))
}

#[inline]
fn halves(bytes: &[u8; 32]) -> (u128, u128) {
    let (mut high, mut low) = ([0u8; 16], [0u8; 16]);
    high.copy_from_slice(&bytes[..16]);
    low.copy_from_slice(&bytes[16..]);
    (u128::from_be_bytes(high), u128::from_be_bytes(low))
}

/// `PartialOrd` and `Ord` for a newtype over `[u8; 32]`, by [`cmp_bytes32`].
macro_rules! order_by_bytes32 {
    ($id:ty) => {
        impl PartialOrd for $id {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $id {
            #[inline]
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                crate::id_order::cmp_bytes32(&self.0, &other.0)
            }
        }
    };
}
pub(crate) use order_by_bytes32;

/// A 32-byte key (a device's public key) for the rollout's device maps: ordered in the
/// bytes' order (B-trees, ties), hashed as its bytes (hash maps).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Bytes32(pub [u8; 32]);

#[cfg(feature = "alloc")]
order_by_bytes32!(Bytes32);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two ids that share a prefix of `shared` bytes (where the orders could part ways).
    fn pair() -> impl Strategy<Value = ([u8; 32], [u8; 32])> {
        (any::<[u8; 32]>(), any::<[u8; 32]>(), 0usize..=32).prop_map(|(a, mut b, shared)| {
            b[..shared].copy_from_slice(&a[..shared]);
            (a, b)
        })
    }

    proptest! {
        #[test]
        fn orders_as_the_bytes_do((a, b) in pair()) {
            prop_assert_eq!(cmp_bytes32(&a, &b), a.cmp(&b));
            prop_assert_eq!(crate::ChunkId(a).cmp(&crate::ChunkId(b)), a.cmp(&b));
            prop_assert_eq!(crate::ReleaseId(a).partial_cmp(&crate::ReleaseId(b)), Some(a.cmp(&b)));
        }
    }

    #[test]
    fn the_first_differing_byte_decides() {
        let mut a = [0xffu8; 32];
        let b = [0xffu8; 32];
        a[31] = 0;
        assert_eq!(cmp_bytes32(&a, &b), Ordering::Less);
        a[0] = 0;
        a[31] = 0xff;
        let mut c = [0u8; 32];
        c[1] = 1;
        assert_eq!(cmp_bytes32(&a, &c), Ordering::Greater);
        assert_eq!(cmp_bytes32(&b, &b), Ordering::Equal);
    }
}
