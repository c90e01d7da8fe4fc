//! Which edges a TUF metadata refresh goes through, and what a failed refresh says about
//! the edge it went through. Needs `alloc` (TUF errors carry strings; the order is a list).

use alloc::vec::Vec;

use crate::tuf::{Error as TufError, RepositoryError};

/// What a failed metadata refresh through one edge says about that edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// Validly signed but older than what the device already trusts (a version rollback),
    /// or expired: the edge has not caught up. It is not used for this refresh and not
    /// treated as a liar — an honest edge that is merely behind must not sit out 10 minutes.
    Behind,
    /// It served what a correct repository never would (bad signature, wrong hash or length,
    /// malformed, mixed versions): it is left out for a while.
    Lied,
    /// The exchange failed (timeout, connection, a file it does not have): nothing was
    /// accepted; try another edge.
    Failed,
}

/// Classifies the error a refresh through one edge ended with.
pub fn refresh_verdict(error: &TufError) -> RefreshVerdict {
    match error {
        TufError::Repository(RepositoryError::Rollback { .. } | RepositoryError::ExpiredMetadata { .. }) => {
            RefreshVerdict::Behind
        }
        TufError::Repository(_) => RefreshVerdict::Lied,
        TufError::Fetch { .. } | TufError::InvalidState(_) => RefreshVerdict::Failed,
    }
}

/// One reachable edge as the metadata choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataSource {
    /// The timestamp version the edge's probe answer claims (unverified), if it parsed.
    pub claimed_version: Option<u64>,
    /// When the device last refreshed through it, as a sequence number (higher is more
    /// recent); `None` if never.
    pub last_used: Option<u64>,
}

/// The order to try refreshing through `sources` (given best-ranked first): the highest
/// claimed timestamp version first, so the freshest edge is asked however slow it is and
/// however many faster stale ones there are; among equal claims the one least recently used
/// for metadata (never used first), so refreshes rotate over equally fresh edges instead of
/// always trusting the fastest; then rank. Unparsable claims come last. A claim is only an
/// ordering hint: whatever an edge serves is verified, and a claim it cannot back up with
/// valid signatures gets it classified as [`RefreshVerdict::Lied`].
pub fn metadata_order(sources: &[MetadataSource]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| {
        let s = sources[i];
        (core::cmp::Reverse(s.claimed_version), s.last_used.map_or(0, |u| u.saturating_add(1)), i)
    });
    order
}

/// Whether an edge claiming `claimed` is still worth a refresh once one verified at
/// `best_verified`: only if it claims to be newer. Before any refresh verified, every edge is.
pub fn worth_refreshing(claimed: Option<u64>, best_verified: Option<u64>) -> bool {
    match (best_verified, claimed) {
        (None, _) => true,
        (Some(best), Some(claimed)) => claimed > best,
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn an_edge_behind_the_device_is_not_a_liar() {
        let rollback = TufError::Repository(RepositoryError::Rollback { role: "timestamp".into(), trusted: 9, got: 7 });
        assert_eq!(refresh_verdict(&rollback), RefreshVerdict::Behind);
        let expired = TufError::Repository(RepositoryError::ExpiredMetadata { role: "timestamp".into() });
        assert_eq!(refresh_verdict(&expired), RefreshVerdict::Behind);
        let forged =
            TufError::Repository(RepositoryError::ThresholdNotMet { role: "timestamp".into(), valid: 0, threshold: 1 });
        assert_eq!(refresh_verdict(&forged), RefreshVerdict::Lied);
        let mixed = TufError::Repository(RepositoryError::LengthOrHashMismatch { role: "snapshot".into() });
        assert_eq!(refresh_verdict(&mixed), RefreshVerdict::Lied);
        let timeout = TufError::Fetch { role: "snapshot".into(), failure: crate::tuf::FetchError::Failed };
        assert_eq!(refresh_verdict(&timeout), RefreshVerdict::Failed);
    }

    #[test]
    fn three_fast_stale_edges_do_not_crowd_out_a_slower_fresh_one() {
        let source = |claimed_version, last_used| MetadataSource { claimed_version, last_used };
        // Ranked fastest first: three stale (version 3), then the fresh one (version 5).
        let sources = [source(Some(3), None), source(Some(3), None), source(Some(3), None), source(Some(5), None)];
        let order = metadata_order(&sources);
        assert_eq!(order[0], 3, "the freshest claim goes first however it ranks");
        assert!(!worth_refreshing(Some(3), Some(5)), "edges behind the verified version are not asked");
        assert!(worth_refreshing(Some(3), None) && worth_refreshing(None, None));
        assert!(!worth_refreshing(None, Some(5)));
        // Equal claims rotate: never used first, then least recently used; rank breaks ties.
        let sources = [source(Some(5), Some(7)), source(Some(5), None), source(Some(5), Some(2)), source(None, None)];
        assert_eq!(metadata_order(&sources), vec![1, 2, 0, 3]);
    }
}
