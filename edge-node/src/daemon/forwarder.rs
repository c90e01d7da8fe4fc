//! Store and forward of device status reports: a task that, whenever the on-disk queue
//! ([`super::report_queue`]) holds reports, sends the oldest as one `StatusBatch` to an
//! origin and drops exactly the prefix the origin's `StatusAck` says it stored.
//!
//! Whom: the connected peers [`super::meta_sources::MetaSources::acts_as_origin`] accepts
//! (configured origins first, then proven ones), which the main loop publishes on a watch
//! channel whenever a peer comes or goes or a refresh proves one. One batch is in flight at a
//! time; the origins are tried in order until one stores something.
//!
//! When: at once when a report is queued or an origin connects; after a failure (no origin,
//! a send error, an origin that stored nothing) with exponential backoff up to
//! [`MAX_BACKOFF`], cut short when the set of connected origins changes. While the WAN is
//! down the reports simply stay on disk.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use mesh::{NetworkClient, StatusBatch};
use tokio::sync::watch;

use super::report_queue::ReportLog;
use crate::metrics::Metrics;

/// First retry delay after a failed round.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between rounds while origins are connected but not storing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs until the daemon drops the origins channel.
pub async fn run(
    log: Arc<ReportLog>,
    client: NetworkClient,
    mut origins: watch::Receiver<Vec<PeerId>>,
    metrics: Arc<Metrics>,
) {
    let mut failures = 0u32;
    loop {
        if log.is_empty() {
            // A permit is stored if a report was queued since the last wait: no lost wakeup.
            tokio::select! {
                _ = log.added.notified() => {}
                changed = origins.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let targets = origins.borrow_and_update().clone();
        if targets.is_empty() {
            if origins.changed().await.is_err() {
                return;
            }
            continue;
        }
        let batch = match log.peek().await {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(%e, "cannot read queued status reports");
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        let mut stored = 0;
        for peer in targets {
            match client.send_status(peer, StatusBatch { reports: batch.clone() }).await {
                Ok(ack) => {
                    stored = (ack.stored as usize).min(batch.len());
                    if stored > 0 {
                        break;
                    }
                    tracing::debug!(%peer, "origin stored none of a status batch");
                }
                Err(e) => tracing::debug!(%peer, %e, "sending status reports failed"),
            }
        }
        if stored > 0 {
            match log.ack(stored).await {
                Ok(()) => {
                    Metrics::add(&metrics.status_reports_forwarded, stored as u64);
                    failures = 0;
                    continue;
                }
                // Stored upstream but still queued here: they are sent again (the origin
                // refuses them as replays and acknowledges them), never lost.
                Err(e) => tracing::error!(%e, "cannot record acknowledged status reports"),
            }
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff(failures)) => {}
            changed = origins.changed() => if changed.is_err() { return },
        }
    }
}

fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        assert_eq!(backoff(1), MIN_BACKOFF);
        assert_eq!(backoff(2), MIN_BACKOFF * 2);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
