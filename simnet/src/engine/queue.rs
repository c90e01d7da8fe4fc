//! The event queue: events ordered by virtual time, ties broken by insertion order, so the
//! same inputs always pop in the same order.
//!
//! A radix heap, not a binary heap. A simulation's queue is monotone: nothing is scheduled
//! before the event being handled. A radix heap exploits that: events sit in buckets by the
//! highest bit in which their key differs from the last one popped, and a pop only splits
//! the lowest non-empty bucket, walking it front to back; each bucket's smallest key is kept,
//! so the next event's time is known without a walk. fleet-1m keeps millions of events
//! waiting, and `BinaryHeap::pop`'s sift through them was 13 % of its run, mostly cache
//! misses. The order is exactly the binary heap's: by (time, insertion number).

/// Virtual time in microseconds (the unit of `protocol::time::Instant`).
pub type Micros = u64;

/// Buckets of a radix heap over 128-bit keys: one for "equal to the last popped key", one
/// per differing bit.
const BUCKETS: usize = 129;

/// Entries an emptied bucket keeps room for.
const RETAINED_ENTRIES: usize = 4096;

struct Entry<E> {
    /// (time << 64) | insertion number: unique, and ordered as the events must pop.
    key: u128,
    event: E,
}

/// A min-queue of timed events. Events must not be scheduled before the last popped one
/// (a simulation cannot schedule into its past); one that is goes off at that time.
pub struct EventQueue<E> {
    buckets: Vec<Vec<Entry<E>>>,
    /// Each bucket's smallest key (`u128::MAX` when empty). Exact at all times: a bucket only
    /// loses entries all at once (split or popped), so a push or a split's landing keeps it.
    mins: Vec<u128>,
    /// Which buckets hold entries, one bit each: the lowest is found without a scan.
    occupied: [u64; BUCKETS.div_ceil(64)],
    /// The key of the last popped event: every waiting key is greater.
    last: u128,
    len: usize,
    seq: u64,
    popped: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            mins: vec![u128::MAX; BUCKETS],
            occupied: [0; BUCKETS.div_ceil(64)],
            last: 0,
            len: 0,
            seq: 0,
            popped: 0,
        }
    }
}

fn key(at: Micros, seq: u64) -> u128 {
    (u128::from(at) << 64) | u128::from(seq)
}

fn time_of(key: u128) -> Micros {
    (key >> 64) as Micros
}

/// The bucket of `key` while `last` is the floor: 0 when equal, else one plus the index of
/// the highest bit in which they differ.
fn bucket_of(key: u128, last: u128) -> usize {
    (u128::BITS - (key ^ last).leading_zeros()) as usize
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Micros, event: E) {
        let floor = time_of(self.last);
        debug_assert!(at >= floor, "event scheduled at {at} µs, before the current {floor} µs");
        self.seq += 1;
        let key = key(at.max(floor), self.seq);
        self.put(bucket_of(key, self.last), Entry { key, event });
        self.len += 1;
    }

    fn put(&mut self, bucket: usize, entry: Entry<E>) {
        self.mins[bucket] = self.mins[bucket].min(entry.key);
        self.occupied[bucket / 64] |= 1 << (bucket % 64);
        self.buckets[bucket].push(entry);
    }

    /// Empties `bucket`'s bookkeeping (its entries were taken).
    fn vacate(&mut self, bucket: usize) {
        self.mins[bucket] = u128::MAX;
        self.occupied[bucket / 64] &= !(1 << (bucket % 64));
    }

    /// The lowest bucket holding entries: the one with the smallest key.
    fn lowest(&self) -> Option<usize> {
        let (word, bits) = self.occupied.iter().enumerate().find(|(_, bits)| **bits != 0)?;
        Some(word * 64 + bits.trailing_zeros() as usize)
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(Micros, E)> {
        let lowest = self.lowest()?;
        if lowest != 0 {
            // Split the lowest bucket around its smallest key: that key becomes the floor,
            // and every entry of the bucket lands in a lower one (the smallest in 0).
            let min = self.mins[lowest];
            self.last = min;
            let mut split = std::mem::take(&mut self.buckets[lowest]);
            self.vacate(lowest);
            for entry in split.drain(..) {
                self.put(bucket_of(entry.key, min), entry);
            }
            // Keep a small emptied bucket's allocation for the entries that will fall into it;
            // give a large one back (fleet-1m's hour-long waits fill buckets of a million
            // entries once, and kept, they added 0.4 GiB to its peak).
            if split.capacity() <= RETAINED_ENTRIES {
                self.buckets[lowest] = split;
            }
        }
        // Keys are unique, so bucket 0 holds exactly the smallest.
        let entry = self.buckets[0].pop()?;
        self.vacate(0);
        self.len -= 1;
        self.popped += 1;
        Some((time_of(entry.key), entry.event))
    }

    /// When the earliest event is due.
    pub fn peek_time(&self) -> Option<Micros> {
        self.lowest().map(|bucket| time_of(self.mins[bucket]))
    }

    /// Events handled so far (including stale ones the caller ignored).
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn earliest_first_then_insertion_order() {
        let mut q = EventQueue::default();
        q.push(5, 'a');
        q.push(1, 'b');
        q.push(5, 'c');
        q.push(1, 'd');
        let order: Vec<char> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, vec!['b', 'd', 'a', 'c']);
    }

    #[test]
    fn times_at_the_ends_of_the_range_keep_their_order() {
        let mut q = EventQueue::default();
        q.push(u64::MAX, 1);
        q.push(0, 2);
        q.push(u64::MAX, 3);
        assert_eq!(q.peek_time(), Some(0));
        assert_eq!(q.pop(), Some((0, 2)));
        assert_eq!(q.pop(), Some((u64::MAX, 1)));
        assert_eq!(q.pop(), Some((u64::MAX, 3)));
        assert_eq!(q.pop(), None);
        assert_eq!(q.peek_time(), None);
    }

    /// One step of a simulation: pop the earliest, or schedule `delay` after the current time.
    #[derive(Debug, Clone)]
    enum Step {
        Pop,
        Peek,
        Push(u64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let delay = prop_oneof![Just(0u64), 0u64..4, 0u64..1_000, 0u64..(1 << 40), Just(u64::MAX >> 1)];
        prop::collection::vec(
            prop_oneof![2 => Just(Step::Pop), 1 => Just(Step::Peek), 3 => delay.prop_map(Step::Push)],
            0..400,
        )
    }

    proptest! {
        /// Against the binary heap it replaced, under the simulation's contract (nothing
        /// scheduled before the event being handled): the same events in the same order.
        #[test]
        fn pops_in_the_binary_heaps_order(steps in steps()) {
            let mut q = EventQueue::default();
            let mut reference = BinaryHeap::new();
            let (mut now, mut seq) = (0u64, 0u64);
            for step in steps {
                match step {
                    Step::Push(delay) => {
                        seq += 1;
                        let at = now.saturating_add(delay);
                        q.push(at, seq);
                        reference.push(Reverse((at, seq)));
                    }
                    Step::Peek => {
                        prop_assert_eq!(q.peek_time(), reference.peek().map(|Reverse((at, _))| *at));
                    }
                    Step::Pop => {
                        let expected = reference.pop().map(|Reverse(e)| e);
                        prop_assert_eq!(q.pop(), expected);
                        if let Some((at, _)) = expected {
                            now = at;
                        }
                    }
                }
                prop_assert_eq!(q.len(), reference.len());
            }
            while let Some(Reverse(expected)) = reference.pop() {
                prop_assert_eq!(q.pop(), Some(expected));
            }
            prop_assert!(q.is_empty());
        }
    }
}
