//! `seeder serve`: the origin ([`crate::origin`]: the repository joined to the mesh,
//! announcing every new `timestamp.json`) plus the renewal loop that keeps the repository
//! fresh, so a repository nobody publishes to does not freeze the fleet, plus the rollout
//! controller (`rollout::drive`) fed by the status reports the origin stores.

use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::fleet::ingest::{IngestConfig, Ingestor};
use crate::freshness::{self, Policy};
use crate::repo::Repo;
use crate::time;

/// Longest sleep between looks at the repository even when nothing is due for days: a
/// suspended host, a stepped clock or another command that shortened a lifetime (`seeder
/// timestamp refresh --expires 2h`) is noticed within this.
const MAX_SLEEP_SECS: i64 = 600;
/// Wait after a failed renewal (missing key, full disk) before trying again.
const RETRY_SECS: u64 = 60;

/// Runs the origin, the renewal loop and the rollout controller until one fails. The fleet
/// database's ingestor is opened first: a repository whose database cannot be opened (a
/// newer schema, a full disk) does not serve.
pub async fn run(
    origin: crate::origin::OriginConfig,
    policy: Policy,
    api: Option<(std::net::SocketAddr, crate::api::Tokens)>,
    on_ready: impl FnOnce(&crate::origin::OriginHandle, Option<std::net::SocketAddr>),
) -> Result<()> {
    let repo = origin.repo.clone();
    // Opening may connect to PostgreSQL, whose blocking client must not run on the runtime.
    let location = crate::fleet::location(&repo);
    let fleet =
        Arc::new(tokio::task::spawn_blocking(move || Ingestor::start(&location, IngestConfig::default())).await??);
    let board = Arc::new(crate::rollout::board::Board::default());
    // The API listens before the origin reports ready, so its address is in the ready line.
    let (http, api_server) = match api {
        Some((addr, tokens)) => {
            let state = crate::api::ApiState {
                repo: repo.clone(),
                tokens: Arc::new(tokens),
                fleet: Arc::clone(&fleet),
                anomalies: Arc::default(),
                device_counts: Arc::default(),
                offset_anchors: Arc::default(),
                overviews: Arc::default(),
                rollouts: Arc::clone(&board),
                handout: Arc::clone(&origin.handout),
            };
            state.anomalies.warm(&crate::fleet::location(&repo));
            crate::api::warm_overview(&state);
            let (bound, served) = crate::api::serve(addr, state).await?;
            (Some(bound), Some(served))
        }
        None => (None, None),
    };
    if let Some(served) = api_server {
        tokio::spawn(served);
    }
    let controller_repo = repo.clone();
    let controller_fleet = Arc::clone(&fleet);
    // Renewals start once the origin listens: a start that fails writes nothing.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let on_ready = move |handle: &crate::origin::OriginHandle| {
        on_ready(handle, http);
        let _ = ready_tx.send(());
    };
    let renewals = async move {
        match ready_rx.await {
            Ok(()) => {
                tokio::spawn(crate::rollout::drive::run_forever(controller_repo, controller_fleet, board));
                renew_forever(repo, policy).await
            }
            // The origin failed to start; its error ends `run`.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = crate::origin::run(origin, fleet, on_ready) => result,
        never = renewals => match never {},
    }
}

/// Renews what is due, then sleeps until the next renewal is due (at most 10 minutes); the
/// origin announces each new timestamp when it sees `timestamp.json` change.
async fn renew_forever(repo: PathBuf, policy: Policy) -> std::convert::Infallible {
    loop {
        let dir = repo.clone();
        let outcome =
            tokio::task::spawn_blocking(move || freshness::renew_if_due(&Repo::at(&dir), &policy, false)).await;
        let sleep_secs = match outcome {
            Ok(Ok(renewal)) => {
                if renewal.renewed_timestamp {
                    tracing::info!(
                        snapshot_version = renewal.snapshot_version,
                        snapshot_expires = %renewal.snapshot_expires,
                        timestamp_version = renewal.timestamp_version,
                        timestamp_expires = %renewal.timestamp_expires,
                        renewed_snapshot = renewal.renewed_snapshot,
                        "renewed expiring metadata"
                    );
                }
                let wait = renewal.next_due_unix - time::now_unix();
                tracing::debug!(next_due = %time::format_expiry(renewal.next_due_unix), "next renewal");
                wait.clamp(1, MAX_SLEEP_SECS) as u64
            }
            Ok(Err(e)) => {
                tracing::error!("cannot renew the repository's metadata (devices freeze when it expires): {e:#}");
                RETRY_SECS
            }
            Err(e) => {
                tracing::error!("the renewal task failed: {e}");
                RETRY_SECS
            }
        };
        tokio::time::sleep(Duration::from_secs(sleep_secs)).await;
    }
}
