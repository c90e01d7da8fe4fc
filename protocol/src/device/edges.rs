//! What a device measured of one edge node, and what follows from it: whether the edge is
//! asked at all right now, and how it ranks against the others.
//!
//! An edge that misbehaved (a chunk or metadata that failed verification) sits out
//! [`PENALTY`]; one that is only slow, unreachable or lacking chunks sits out a short,
//! growing while ([`EdgeRecord::back_off`]) and is never treated as a liar. Among the edges
//! not sitting out, measured throughput wins once known, round-trip time until then. Nothing
//! here is trusted: ranking only decides whom to ask first.
//!
//! No heap: the driver keeps one [`EdgeRecord`] per edge in whatever map suits it.

use core::cmp::Ordering;

use crate::time::{Duration, Instant};

/// How long a misbehaving edge is left out.
pub const PENALTY: Duration = Duration::from_secs(600);
/// First sit-out of an unreachable, slow or lacking edge; doubles per consecutive failure.
pub const BACK_OFF_FIRST: Duration = Duration::from_secs(5);
/// Longest such sit-out.
pub const BACK_OFF_MAX: Duration = Duration::from_secs(300);
/// Weight of the newest batch in the smoothed throughput.
const THROUGHPUT_NEW_WEIGHT: f64 = 0.3;

/// What the device measured of one edge.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EdgeRecord {
    /// Last probe round trip.
    pub rtt: Option<Duration>,
    /// Smoothed throughput of chunk batches, bytes per second.
    pub throughput: Option<f64>,
    /// Until when the edge is left out.
    pub sits_out_until: Option<Instant>,
    /// Consecutive failures (connects, timeouts).
    pub failures: u32,
    /// Stored bytes this device fetched from it.
    pub bytes: u64,
    /// When the device last refreshed metadata through it, as a sequence number the driver
    /// keeps (higher is more recent); `None` if never.
    pub metadata_used: Option<u64>,
}

impl EdgeRecord {
    /// Its probe answered after `rtt`: it is reachable, and its failure streak ends.
    pub fn probe_answered(&mut self, rtt: Duration) {
        self.rtt = Some(rtt);
        self.failures = 0;
    }

    /// It did not answer (or answered too slowly): it sits out 5 s, doubling per consecutive
    /// failure up to 5 min, so a dead or trickling edge does not cost every later step a
    /// full timeout.
    pub fn back_off(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(6);
        let wait = Duration(BACK_OFF_FIRST.0.saturating_mul(1 << doublings).min(BACK_OFF_MAX.0));
        self.sits_out_until = Some(now + wait);
    }

    /// It was much slower than the others, or lacks what was asked: it forgets its measured
    /// throughput (no lead it no longer earns) and backs off. Not a liar: see
    /// [`EdgeRecord::penalize`].
    pub fn demote(&mut self, now: Instant) {
        self.throughput = None;
        self.back_off(now);
    }

    /// It served something that failed verification: it sits out [`PENALTY`].
    pub fn penalize(&mut self, now: Instant) {
        self.sits_out_until = Some(now + PENALTY);
    }

    /// A chunk batch of `bytes` stored bytes took `took`.
    pub fn record_batch(&mut self, bytes: u64, took: Duration) {
        self.bytes = self.bytes.saturating_add(bytes);
        let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
        self.throughput = Some(match self.throughput {
            Some(old) => (1.0 - THROUGHPUT_NEW_WEIGHT) * old + THROUGHPUT_NEW_WEIGHT * rate,
            None => rate,
        });
    }

    /// A request failed (timeout, connection) without a sit-out of its own.
    pub fn record_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Whether it may be asked at `now` (not sitting out).
    pub fn available(&self, now: Instant) -> bool {
        self.sits_out_until.is_none_or(|until| until <= now)
    }

    /// How much longer it sits out after `now`, if it does.
    pub fn sits_out_for(&self, now: Instant) -> Option<Duration> {
        self.sits_out_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Higher is better: throughput when measured, else the inverse round trip, else 0.
    pub fn score(&self) -> f64 {
        match (self.throughput, self.rtt) {
            (Some(t), _) => 1e12 + t,
            (None, Some(rtt)) => 1.0 / rtt.as_secs_f64().max(1e-6),
            (None, None) => 0.0,
        }
    }

    /// Best first: the order in which to use `a` and `b` (either may be unmeasured).
    pub fn rank(a: Option<&EdgeRecord>, b: Option<&EdgeRecord>) -> Ordering {
        let score = |r: Option<&EdgeRecord>| r.map_or(0.0, EdgeRecord::score);
        score(b).total_cmp(&score(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_penalty_lasts_ten_minutes_and_then_expires() {
        let mut edge = EdgeRecord::default();
        let t0 = Instant(50 * S);
        edge.penalize(t0);
        assert!(!edge.available(t0));
        assert!(!edge.available(t0 + Duration::from_secs(599)));
        assert_eq!(edge.sits_out_for(t0 + Duration::from_secs(1)), Some(Duration::from_secs(599)));
        assert!(edge.available(t0 + PENALTY), "the penalty never expires");
        assert_eq!(edge.sits_out_for(t0 + PENALTY), None);
    }

    #[test]
    fn a_slow_edge_backs_off_briefly_doubling_up_to_five_minutes() {
        let mut edge = EdgeRecord::default();
        edge.record_batch(1 << 20, Duration::from_millis(10));
        let t0 = Instant(S);
        edge.demote(t0);
        assert_eq!(edge.throughput, None, "a demoted edge keeps no throughput lead");
        assert_eq!(edge.sits_out_for(t0), Some(BACK_OFF_FIRST));
        assert!(edge.available(t0 + BACK_OFF_FIRST));
        edge.back_off(t0);
        assert_eq!(edge.sits_out_for(t0), Some(Duration::from_secs(10)));
        for _ in 0..20 {
            edge.back_off(t0);
        }
        assert_eq!(edge.sits_out_for(t0), Some(BACK_OFF_MAX));
        edge.probe_answered(Duration::from_millis(3));
        edge.back_off(t0);
        assert_eq!(edge.sits_out_for(t0), Some(BACK_OFF_FIRST), "an answer ends the failure streak");
    }

    #[test]
    fn measured_throughput_outranks_round_trip_time() {
        let mut fast_rtt = EdgeRecord::default();
        fast_rtt.probe_answered(Duration::from_millis(1));
        let mut measured = EdgeRecord::default();
        measured.probe_answered(Duration::from_millis(50));
        measured.record_batch(1000, Duration::from_secs(1));
        assert_eq!(EdgeRecord::rank(Some(&measured), Some(&fast_rtt)), Ordering::Less);
        assert_eq!(EdgeRecord::rank(Some(&fast_rtt), None), Ordering::Less);
        // Smoothing: 0.7 × old + 0.3 × new.
        measured.record_batch(2000, Duration::from_secs(1));
        assert!((measured.throughput.unwrap() - 1300.0).abs() < 1e-9);
        assert_eq!(measured.bytes, 3000);
    }
}
