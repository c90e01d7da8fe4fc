//! [`Batch`]: the chunks of one request, kept as a run plus a list (needs `alloc`).
//!
//! A plan hands out chunks in manifest order, so nearly every request is a run of
//! consecutive units (`first..end`); only chunks asked again (after a failure, or as a
//! hedge) break it. A batch stores that run as two numbers and only the rest one by one:
//! a request of 256 chunks takes 8 bytes instead of a kilobyte (simnet keeps half a million
//! requests out at once), and walking it for the answer touches no list that went cold while
//! the request was out. Its small methods are
//! `#[inline]`: drivers in other crates call them once per unit.

use alloc::vec::Vec;
use core::ops::Range;

/// Units (indices into a plan's chunks) in the order they were added: the leading run of
/// consecutive units, then every other unit one by one. The same sequence always has the
/// same representation, so equal batches compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    run: Range<u32>,
    rest: Vec<u32>,
}

impl Batch {
    /// An empty batch.
    #[inline]
    pub fn new() -> Batch {
        Batch::default()
    }

    /// The batch of exactly the units in `run`, as pushing them one by one would make it.
    pub(super) fn of_run(run: Range<u32>) -> Batch {
        match run.is_empty() {
            true => Batch::new(),
            false => Batch { run, rest: Vec::new() },
        }
    }

    /// Adds `unit` after the units already in the batch.
    #[inline]
    pub fn push(&mut self, unit: u32) {
        // `u32::MAX` cannot end a half-open run: it goes in the list.
        if self.rest.is_empty() && unit < u32::MAX {
            if self.run.is_empty() {
                self.run = unit..unit + 1;
                return;
            }
            if unit == self.run.end {
                self.run.end += 1;
                return;
            }
        }
        self.rest.push(unit);
    }

    /// Empties the batch, keeping the list's allocation.
    #[inline]
    pub fn clear(&mut self) {
        self.run = 0..0;
        self.rest.clear();
    }

    /// How many units.
    #[inline]
    pub fn len(&self) -> usize {
        self.run.len() + self.rest.len()
    }

    /// No units.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.rest.is_empty()
    }

    /// The leading run of consecutive units: empty for an empty batch, and when the first
    /// unit is `u32::MAX` (which no half-open run can end after).
    #[inline]
    pub fn run(&self) -> Range<u32> {
        self.run.clone()
    }

    /// The units after the run, in order.
    #[inline]
    pub fn rest(&self) -> &[u32] {
        &self.rest
    }

    /// Every unit, in order.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.run.clone().chain(self.rest.iter().copied())
    }

    /// Every unit, in order, as a list.
    #[inline]
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// Whether `units` lists exactly this batch's units in its order.
    #[inline]
    pub fn equals(&self, units: &[u32]) -> bool {
        units.len() == self.len() && self.iter().zip(units).all(|(a, b)| a == *b)
    }
}

impl FromIterator<u32> for Batch {
    fn from_iter<I: IntoIterator<Item = u32>>(units: I) -> Batch {
        let mut batch = Batch::new();
        for unit in units {
            batch.push(unit);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn consecutive_units_are_one_run_and_the_rest_keep_their_order() {
        let batch: Batch = [4, 5, 6, 9, 7, 8].into_iter().collect();
        assert_eq!(batch.run(), 4..7);
        assert_eq!(batch.rest(), &[9, 7, 8]);
        assert_eq!(batch.len(), 6);
        assert_eq!(batch.to_vec(), vec![4, 5, 6, 9, 7, 8]);
        assert!(batch.equals(&[4, 5, 6, 9, 7, 8]));
        assert!(!batch.equals(&[4, 5, 6, 9, 8, 7]));
        assert!(!batch.equals(&[4, 5, 6, 9, 7]));
    }

    #[test]
    fn a_unit_repeated_or_going_back_ends_the_run() {
        let batch: Batch = [3, 3, 2].into_iter().collect();
        assert_eq!((batch.run(), batch.rest()), (3..4, &[3, 2][..]));
        let empty = Batch::new();
        assert!(empty.is_empty() && empty.run().is_empty() && empty.to_vec().is_empty());
        assert!(empty.equals(&[]));
    }

    #[test]
    fn a_batch_made_of_a_run_is_the_batch_its_units_pushed_make() {
        assert_eq!(Batch::of_run(3..6), [3, 4, 5].into_iter().collect());
        assert_eq!(Batch::of_run(5..5), Batch::new());
        assert_eq!(Batch::of_run(u32::MAX - 2..u32::MAX), [u32::MAX - 2, u32::MAX - 1].into_iter().collect());
    }

    #[test]
    fn the_last_unit_number_fits_without_overflow() {
        let batch: Batch = [u32::MAX - 1, u32::MAX, 0].into_iter().collect();
        assert_eq!(batch.to_vec(), vec![u32::MAX - 1, u32::MAX, 0]);
        let top: Batch = [u32::MAX, u32::MAX].into_iter().collect();
        assert_eq!(top.to_vec(), vec![u32::MAX, u32::MAX]);
    }

    proptest::proptest! {
        /// Any sequence of runs and single units comes back as it went in; its batch starts
        /// with its leading run.
        #[test]
        fn any_sequence_round_trips(pieces in proptest::collection::vec((0u32..200, 1u32..6), 0..10)) {
            let units: Vec<u32> = pieces.iter().flat_map(|&(start, len)| start..start + len).collect();
            let batch: Batch = units.iter().copied().collect();
            proptest::prop_assert_eq!(batch.to_vec(), units.clone());
            proptest::prop_assert_eq!(batch.len(), units.len());
            proptest::prop_assert!(batch.equals(&units));
            let lead = units.windows(2).take_while(|w| w[1] == w[0] + 1).count() + usize::from(!units.is_empty());
            proptest::prop_assert_eq!(batch.run().len(), lead);
        }

        /// A batch made of a run is the batch its units pushed one by one make, anywhere in
        /// the unit numbers.
        #[test]
        fn a_run_is_its_units_pushed(start in proptest::prop_oneof![0u32..1000, u32::MAX - 1000..=u32::MAX], len in 0u32..300) {
            let end = start.saturating_add(len);
            proptest::prop_assert_eq!(Batch::of_run(start..end), (start..end).collect::<Batch>());
        }
    }
}
