//! The device's decisions about edges that need no IO: when a slow batch is hedged to
//! another edge, which edges a metadata refresh goes through, and what a failed refresh says
//! about the edge. Pure functions of their inputs (time included), kept apart from the
//! drivers in `fetch.rs`, `agent.rs` and `edges.rs` so they can move into `protocol::device`
//! as they are.

use std::time::Duration;

use protocol::tuf::{Error as TufError, RepositoryError};

/// A batch outstanding this many times longer than the slowest batch that completed in the
/// same round is "much slower than the others".
pub const HEDGE_SLOWER_FACTOR: u32 = 4;
/// Never hedge a batch younger than this: on a fast LAN batches take milliseconds and jitter
/// alone would otherwise double requests.
pub const HEDGE_MIN: Duration = Duration::from_millis(500);

/// How long a batch may be outstanding, once nothing else is left to dispatch, before its
/// chunks are asked of another edge too: [`HEDGE_SLOWER_FACTOR`] × the slowest batch that
/// completed this round, at least [`HEDGE_MIN`], at most half the request timeout (also
/// when no batch completed yet) — so a trickling edge holds its batches for about half a
/// timeout, not a whole one, and never the whole round.
pub fn hedge_after(request_timeout: Duration, slowest_completed: Option<Duration>) -> Duration {
    let cap = request_timeout / 2;
    match slowest_completed {
        Some(slowest) => slowest.saturating_mul(HEDGE_SLOWER_FACTOR).max(HEDGE_MIN.min(cap)).min(cap),
        None => cap,
    }
}

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
        (std::cmp::Reverse(s.claimed_version), s.last_used.map_or(0, |u| u.saturating_add(1)), i)
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

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_slow_batch_is_hedged_well_before_its_timeout() {
        // Nothing completed yet: half the timeout.
        assert_eq!(hedge_after(5 * S, None), 5 * S / 2);
        // Others took 100 ms: 4 × 100 ms is below the floor.
        assert_eq!(hedge_after(5 * S, Some(Duration::from_millis(100))), HEDGE_MIN);
        assert_eq!(hedge_after(30 * S, Some(2 * S)), 8 * S);
        // Never later than half the timeout, however slow the others were.
        assert_eq!(hedge_after(5 * S, Some(2 * S)), 5 * S / 2);
        // A timeout below twice the floor still hedges at half of it.
        assert_eq!(hedge_after(Duration::from_millis(600), Some(Duration::from_millis(1))), Duration::from_millis(300));
    }

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
        let timeout = TufError::Fetch { role: "snapshot".into(), failure: protocol::tuf::FetchError::Failed };
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
