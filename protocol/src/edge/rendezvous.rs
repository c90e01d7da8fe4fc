//! Rendezvous (highest-random-weight) hashing: which live member of a site brings a chunk
//! over the site's backhaul.
//!
//! Every member computes the same answer from the same member list without coordination,
//! and when a member leaves only the chunks it was responsible for move — to the member with
//! the next-highest weight — which is what keeps backhaul amplification at 1.00 through churn.

use super::NodeId;
use crate::ChunkId;

/// The weight of `member` for `chunk`: the first 8 bytes of blake3(member | chunk).
pub fn weight(member: &NodeId, chunk: &ChunkId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&member.0);
    hasher.update(&chunk.0);
    let mut w = [0u8; 8];
    w.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(w)
}

/// The member with the highest weight for `chunk` (ties broken by id), or `None` if empty.
pub fn responsible<'a>(members: impl IntoIterator<Item = &'a NodeId>, chunk: &ChunkId) -> Option<&'a NodeId> {
    members.into_iter().max_by_key(|m| (weight(m, chunk), **m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    #[test]
    fn balanced_and_minimal_movement() {
        let members: Vec<NodeId> = (1..=4).map(node).collect();
        let chunks: Vec<ChunkId> = (0..4000u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        let before: Vec<NodeId> = chunks.iter().map(|c| *responsible(&members, c).unwrap()).collect();
        for m in &members {
            let share = before.iter().filter(|r| *r == m).count();
            assert!((800..1200).contains(&share), "member share {share} of 4000");
        }
        // Member 3 leaves: only its chunks move.
        let survivors: Vec<NodeId> = members.iter().copied().filter(|m| *m != node(3)).collect();
        for (c, owner) in chunks.iter().zip(&before) {
            let now = *responsible(&survivors, c).unwrap();
            if *owner != node(3) {
                assert_eq!(now, *owner);
            }
        }
    }
}
