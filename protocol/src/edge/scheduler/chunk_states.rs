//! Each chunk's fetch state in one release, with two sets kept beside it: the chunks in
//! flight and the chunks waiting out a retry delay.
//!
//! A scheduling pass and the next-deadline question run after every input a node gets, and
//! each used to read the state of every chunk the node does not hold yet: one cold load per
//! chunk, most of them for chunks that were in flight or had nothing due. With the sets, both
//! combine bitfields a word at a time (what is missing, who holds what, who is responsible)
//! and read states only for the chunks that can matter. Every change of state goes through
//! [`ChunkStates::set`], which keeps the sets true.

use alloc::vec::Vec;

use crate::edge::Bitfield;
use crate::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    Idle { attempts: u32, retry_at: Instant },
    Inflight { attempts: u32, since: Instant, duplicated: bool },
}

#[derive(Debug, Clone)]
pub(super) struct ChunkStates {
    states: Vec<ChunkState>,
    /// The chunks whose state is `Inflight`.
    inflight: Bitfield,
    /// The idle chunks whose retry time was ahead when it was set: every idle chunk whose
    /// retry time is still ahead is in it (time only moves forward), and some that are due
    /// by now, until their next change of state (a due chunk left to a site-mate may stay
    /// for a while; each costs a read of its state). Readers check the state.
    backing_off: Bitfield,
}

impl ChunkStates {
    /// `len` chunks, idle and due at `now`.
    pub(super) fn new(len: u32, now: Instant) -> Self {
        ChunkStates {
            states: alloc::vec![ChunkState::Idle { attempts: 0, retry_at: now }; len as usize],
            inflight: Bitfield::new(len),
            backing_off: Bitfield::new(len),
        }
    }

    /// Chunk `index`'s state; `None` past the release's end.
    pub(super) fn get(&self, index: u32) -> Option<ChunkState> {
        self.states.get(index as usize).copied()
    }

    /// Sets chunk `index`'s state at `now` (indices past the end are ignored).
    pub(super) fn set(&mut self, index: u32, state: ChunkState, now: Instant) {
        let Some(slot) = self.states.get_mut(index as usize) else { return };
        *slot = state;
        match state {
            ChunkState::Inflight { .. } => {
                self.inflight.set(index);
                self.backing_off.clear(index);
            }
            ChunkState::Idle { retry_at, .. } => {
                self.inflight.clear(index);
                if retry_at > now {
                    self.backing_off.set(index);
                } else {
                    self.backing_off.clear(index);
                }
            }
        }
    }

    /// The chunks in flight.
    pub(super) fn inflight(&self) -> &Bitfield {
        &self.inflight
    }

    /// The idle chunks that may still wait out a retry delay (see the field).
    pub(super) fn backing_off(&self) -> &Bitfield {
        &self.backing_off
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::bitfield::xorshift;
    use crate::time::Duration;

    /// After any sequence of changes, the two sets say what the states say: in flight exactly
    /// when `Inflight`, and every idle chunk whose retry time is ahead of the time of asking
    /// is backing off.
    #[test]
    fn the_sets_follow_every_change_of_state() {
        let mut next = xorshift(0x1234_5678);
        let len = 130;
        let mut now = Instant(1_000);
        let mut chunks = ChunkStates::new(len, now);
        for _ in 0..5_000 {
            now = now + Duration(u64::from(next() % 50));
            let index = next() % (len + 3); // some past the end
            let state = match next() % 3 {
                0 => ChunkState::Inflight { attempts: next() % 4, since: now, duplicated: next().is_multiple_of(2) },
                1 => ChunkState::Idle { attempts: next() % 4, retry_at: now },
                _ => ChunkState::Idle { attempts: next() % 4, retry_at: now + Duration(u64::from(next() % 200)) },
            };
            chunks.set(index, state, now);
            assert_eq!(chunks.get(index), (index < len).then_some(state));
            for i in 0..len {
                let s = chunks.get(i).unwrap();
                assert_eq!(chunks.inflight().get(i), matches!(s, ChunkState::Inflight { .. }), "chunk {i}");
                if matches!(s, ChunkState::Idle { retry_at, .. } if retry_at > now) {
                    assert!(chunks.backing_off().get(i), "chunk {i} waits but is not backing off");
                }
                if chunks.backing_off().get(i) {
                    assert!(matches!(s, ChunkState::Idle { .. }), "chunk {i} in flight and backing off");
                }
            }
        }
        assert!(chunks.inflight().count() > 0 && chunks.backing_off().count() > 0);
    }
}
