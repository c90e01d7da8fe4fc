//! The fetch plan: which chunks go in which request to which connection, and what each
//! answer means for the edge that gave it.
//!
//! The driver opens connections to the best-ranked edges ([`STREAMS_PER_EDGE`] requests in
//! flight per edge by default; the plan calls each a connection, whatever carries it), tells
//! the plan about them ([`FetchPlan::add_edge`]), and then follows the sans-IO loop: take
//! every [`FetchPlan::poll_transmit`] and send it, carry out every
//! [`FetchPlan::poll_event`], wait for an answer or until [`FetchPlan::poll_timeout`], feed
//! it back (`handle_*`), and repeat until [`FetchPlan::round_over`]. Rules:
//! - Batches take chunks in manifest order, at most [`FetchConfig::batch_chunks`] chunks and
//!   [`FetchConfig::batch_bytes`] stored bytes (a single larger chunk still goes alone).
//! - A connection that answered is reused first (it is warm); the best edge's connections
//!   are used first at the start of a round.
//! - An edge that says "not found" for a chunk will not have it this round (a stale mirror or
//!   one withholding): it is stopped and demoted. One that answers "busy" for everything is
//!   still fetching: the connection rests a little ([`busy_backoff`], growing) so another
//!   takes the batch first, and after [`FetchConfig::stall_limit`] without any delivery the
//!   edge is given up on for the round.
//! - An edge that served a chunk that failed verification is stopped and penalized; a
//!   request that failed (timeout, connection) stops that connection.
//! - Hedging: once nothing is left to hand out, a batch outstanding longer than
//!   [`hedge_after`] is asked of an idle connection to another edge too; the first verified
//!   answer wins, and when the round ends with the original still out its edge is demoted.
//! - A round ends when every chunk arrived or nothing is in flight; the driver runs at most
//!   [`FetchConfig::rounds`] rounds, each with freshly probed edges.
//!
//! When an output can change: `poll_transmit` and `poll_timeout` after any `handle_*`,
//! `add_edge`, or once `now` passes the last `poll_timeout`; `poll_event` after any
//! `handle_*`, `poll_transmit` (a hedge) or `end_round`.
//!
//! The rules in this file's free functions use no heap; [`FetchPlan`] needs `alloc` (its
//! queue and events are vectors, its batches a run plus a vector ([`Batch`]); their sizes are
//! bounded by the chunk count and the connection count).

use crate::time::{Duration, Instant};

/// Most stored bytes asked for in one request (the device wire format's limit is 8 MiB).
/// [`STREAMS_PER_EDGE`] of them make 8 MiB in flight per edge, as two 4 MiB requests did:
/// on a slow link the requests share it, so what must arrive within one request timeout,
/// and what an edge holds for one device, stay where they were.
pub const BATCH_BYTES: u64 = 2 << 20;
/// Most chunks in one request.
pub const BATCH_CHUNKS: usize = 128;
/// Requests in flight per edge node. With two, a connection sat idle while its batch was
/// verified and written, and the other's answer alone did not keep the link busy: four gave
/// the Linux agent 7–19 % more throughput over QUIC (scripts/bench-agent's install, one edge,
/// in interleaved runs).
/// The agent carries them as streams of one QUIC connection, or over at most
/// [`TCP_CONNECTIONS_PER_EDGE`] TCP connections.
pub const STREAMS_PER_EDGE: usize = 4;
/// TCP connections per edge node: a framed-TCP connection carries one exchange at a time, and
/// more than two added CPU for about 3 % more throughput, not worth a connection each.
pub const TCP_CONNECTIONS_PER_EDGE: usize = 2;
/// How long an edge may answer "busy" for everything before a round gives up on it: an
/// honest edge that is fetching delivers something well within this, a withholding one never.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);
/// Rounds per download: edges that failed transiently get another chance, penalized ones not.
pub const ROUNDS: u32 = 3;
/// A batch outstanding this many times longer than the slowest batch that completed in the
/// same round is "much slower than the others".
pub const HEDGE_SLOWER_FACTOR: u64 = 4;
/// Never hedge a batch younger than this: on a fast LAN batches take milliseconds and jitter
/// alone would otherwise double requests.
pub const HEDGE_MIN: Duration = Duration::from_millis(500);
/// A connection whose edge answered "busy" for everything rests this long per consecutive
/// such answer (in the round) …
pub const BUSY_BACKOFF_STEP: Duration = Duration::from_millis(20);
/// … at most this long.
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A download's knobs; [`FetchConfig::new`] gives the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchConfig {
    /// Most stored bytes per request.
    pub batch_bytes: u64,
    /// Most chunks per request.
    pub batch_chunks: usize,
    /// Most edges used at once.
    pub parallel_edges: usize,
    /// Requests in flight per edge (see [`STREAMS_PER_EDGE`]); the plan counts each as a
    /// connection of its own, whatever carries it.
    pub streams_per_edge: usize,
    /// Rounds before the download gives up.
    pub rounds: u32,
    /// Longest time without a delivery while an edge answers "busy".
    pub stall_limit: Duration,
    /// The request timeout of every connection (hedging waits at most half of it).
    pub request_timeout: Duration,
}

impl FetchConfig {
    /// The agent's defaults with `parallel_edges` and the connections' `request_timeout`.
    pub fn new(parallel_edges: usize, request_timeout: Duration) -> FetchConfig {
        FetchConfig {
            batch_bytes: BATCH_BYTES,
            batch_chunks: BATCH_CHUNKS,
            parallel_edges: parallel_edges.max(1),
            streams_per_edge: STREAMS_PER_EDGE,
            rounds: ROUNDS,
            stall_limit: STALL_LIMIT,
            request_timeout,
        }
    }
}

/// How long a batch may be outstanding, once nothing else is left to dispatch, before its
/// chunks are asked of another edge too: [`HEDGE_SLOWER_FACTOR`] × the slowest batch that
/// completed this round, at least [`HEDGE_MIN`], at most half the request timeout (also
/// when no batch completed yet) — so a trickling edge holds its batches for about half a
/// timeout, not a whole one, and never the whole round.
pub fn hedge_after(request_timeout: Duration, slowest_completed: Option<Duration>) -> Duration {
    let cap = Duration(request_timeout.0 / 2);
    match slowest_completed {
        Some(slowest) => Duration(slowest.0.saturating_mul(HEDGE_SLOWER_FACTOR)).max(HEDGE_MIN.min(cap)).min(cap),
        None => cap,
    }
}

/// How long a connection rests after the `busy_answers`-th consecutive answer that was
/// "busy" for everything: [`BUSY_BACKOFF_STEP`] more each time, at most [`BUSY_BACKOFF_MAX`].
pub fn busy_backoff(busy_answers: u32) -> Duration {
    Duration(BUSY_BACKOFF_STEP.0.saturating_mul(busy_answers as u64).min(BUSY_BACKOFF_MAX.0))
}

/// Whether a chunk of `next_stored_len` bytes still fits a batch that holds `chunks` chunks
/// of `bytes` stored bytes. The first chunk always fits, however large.
pub fn fits_batch(config: &FetchConfig, chunks: usize, bytes: u64, next_stored_len: u32) -> bool {
    chunks == 0 || (chunks < config.batch_chunks && bytes + next_stored_len as u64 <= config.batch_bytes)
}

/// Whether an edge answering "busy" has gone too long without any delivery this round.
pub fn stalled_too_long(config: &FetchConfig, last_delivery: Instant, now: Instant) -> bool {
    now.saturating_since(last_delivery) > config.stall_limit
}

#[cfg(feature = "alloc")]
mod batch;
#[cfg(feature = "alloc")]
mod plan;
#[cfg(feature = "alloc")]
pub use batch::Batch;
#[cfg(feature = "alloc")]
pub use plan::{ConnId, FetchEvent, FetchPlan, Transmit};

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_slow_batch_is_hedged_well_before_its_timeout() {
        let t = |s: u64| Duration::from_secs(s);
        // Nothing completed yet: half the timeout.
        assert_eq!(hedge_after(t(5), None), Duration(t(5).0 / 2));
        // Others took 100 ms: 4 × 100 ms is below the floor.
        assert_eq!(hedge_after(t(5), Some(Duration::from_millis(100))), HEDGE_MIN);
        assert_eq!(hedge_after(t(30), Some(t(2))), t(8));
        // Never later than half the timeout, however slow the others were.
        assert_eq!(hedge_after(t(5), Some(t(2))), Duration(t(5).0 / 2));
        // A timeout below twice the floor still hedges at half of it.
        assert_eq!(hedge_after(Duration::from_millis(600), Some(Duration::from_millis(1))), Duration::from_millis(300));
        let _ = S;
    }

    #[test]
    fn busy_backoff_grows_and_is_capped() {
        assert_eq!(busy_backoff(1), Duration::from_millis(20));
        assert_eq!(busy_backoff(3), Duration::from_millis(60));
        assert_eq!(busy_backoff(1000), BUSY_BACKOFF_MAX);
    }

    #[test]
    fn batches_respect_both_limits_but_a_huge_chunk_goes_alone() {
        let c = FetchConfig { batch_chunks: 2, batch_bytes: 100, ..FetchConfig::new(1, S) };
        assert!(fits_batch(&c, 0, 0, 1000));
        assert!(fits_batch(&c, 1, 50, 50));
        assert!(!fits_batch(&c, 1, 50, 51));
        assert!(!fits_batch(&c, 2, 2, 1));
    }
}
