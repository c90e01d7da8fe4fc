//! The publisher's API on `seeder serve --http-listen ADDR --api-tokens FILE`: the fleet's
//! inventory, releases, rollouts (and the operator's actions on them), sites, a stream of
//! events, and Prometheus metrics. JSON in and out; every error is a 4xx or 5xx with a JSON
//! body `{"error": "..."}`; the OpenAPI document is at `/api/openapi.json`.
//!
//! - Authentication ([`auth`]): `Authorization: Bearer TOKEN`; no or an unknown token is
//!   401, a read-only token on an operator action 403. `/metrics` and the OpenAPI document
//!   need no token (what they show is not secret, and scrapers carry none).
//! - What the API may sign: a rollout's policies, with the rollouts key, exactly as `seeder
//!   rollout start|pause|resume|abort` do. It never loads a targets (release) key: starting
//!   a rollout before the rollouts role is delegated — which the targets key signs — is
//!   refused (409) with what to run instead.
//! - The console ([`ui`]): a dashboard at `/` with its script and style under `/ui/`, all
//!   compiled into the binary; no token needed to load it (it holds no data), every API call
//!   it makes carries the token the user pastes. Every response carries a strict
//!   Content-Security-Policy (scripts and styles from this origin only, no inline script).
//! - Anomaly flags (`/api/anomalies`, the site view, `/metrics`) come from
//!   [`crate::fleet::anomaly`], computed at most every [`ANOMALY_MAX_AGE`] and shared.
//! - Reads go to SQLite on blocking threads, each with its own read-only connection (WAL:
//!   readers never wait for the ingest writer). Listings are paged and filtered in SQL.

pub mod auth;
mod error;
mod fresh;
mod handlers;
mod metrics;
mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::fleet::ingest::Ingestor;

pub use auth::{Scope, Tokens};
pub use handlers::warm_overview;

/// Largest request body: a rollout's parameters are a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler sees.
#[derive(Clone)]
pub struct ApiState {
    /// The repository directory (its `fleet.sqlite` next to it).
    pub repo: PathBuf,
    /// Who may call.
    pub tokens: Arc<Tokens>,
    /// The fleet database's ingestor: its counts feed `/metrics`.
    pub fleet: Arc<Ingestor>,
    /// The anomaly flags last computed.
    pub anomalies: Arc<AnomalyCache>,
    /// How many devices each recent listing filter matched.
    pub device_counts: Arc<fresh::Fresh<handlers::FilterKey, u64>>,
    /// Every thousandth device id of recent devices-only listings, for deep offsets.
    pub offset_anchors: Arc<fresh::Fresh<handlers::FilterKey, Arc<Vec<String>>>>,
    /// The overview last computed (by the minute of its staleness cut-off).
    pub overviews: Arc<fresh::Fresh<i64, Arc<serde_json::Value>>>,
    /// The rollouts' statuses as the controller loop last computed them.
    pub rollouts: Arc<crate::rollout::board::Board>,
    /// The origin's chunk handouts, for `/metrics`.
    pub handout: crate::origin::SharedHandout,
}

/// How old the anomaly flags shown may be before a request starts computing them again:
/// computing them reads every device's latest state (two grouped queries, about 2 s for a
/// million devices), too much for each dashboard refresh and scrape.
pub const ANOMALY_MAX_AGE: Duration = Duration::from_secs(10);

/// The anomaly flags last computed. Once there are some, a caller always gets them at once:
/// when they are older than [`ANOMALY_MAX_AGE`] a background thread computes new ones
/// (one at a time) for later callers. Only the first callers wait (for one computation).
#[derive(Default)]
pub struct AnomalyCache {
    last: Mutex<CacheState>,
    /// Held while computing, so concurrent first callers compute once.
    computing: Mutex<()>,
}

#[derive(Default)]
struct CacheState {
    flags: Option<(Instant, Arc<crate::fleet::anomaly::Anomalies>)>,
    refreshing: bool,
}

impl AnomalyCache {
    /// The flags of the fleet database at `db` (empty without one).
    pub fn get(self: &Arc<Self>, db: &crate::fleet::Location) -> Result<Arc<crate::fleet::anomaly::Anomalies>> {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let stale = last.flags.as_ref().map(|(at, _)| at.elapsed() >= ANOMALY_MAX_AGE);
            if let Some(stale) = stale {
                if stale && !last.refreshing {
                    last.refreshing = true;
                    let (cache, db) = (Arc::clone(self), db.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = cache.compute(&db) {
                            tracing::warn!("anomaly flags not computed: {e:#}");
                        }
                        cache.last.lock().unwrap_or_else(|p| p.into_inner()).refreshing = false;
                    });
                }
                return Ok(last.flags.as_ref().map(|(_, f)| Arc::clone(f)).unwrap_or_default());
            }
        }
        self.compute(db)
    }

    /// Starts computing the flags in the background (at serve start, so the first dashboard
    /// does not wait).
    pub fn warm(self: &Arc<Self>, db: &crate::fleet::Location) {
        let (cache, db) = (Arc::clone(self), db.clone());
        std::thread::spawn(move || {
            if let Err(e) = cache.get(&db) {
                tracing::warn!("anomaly flags not computed: {e:#}");
            }
        });
    }

    fn compute(&self, db: &crate::fleet::Location) -> Result<Arc<crate::fleet::anomaly::Anomalies>> {
        let _one = self.computing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, flags)) = &self.last.lock().unwrap_or_else(|p| p.into_inner()).flags {
            if at.elapsed() < ANOMALY_MAX_AGE {
                return Ok(Arc::clone(flags));
            }
        }
        let Some(conn) = crate::fleet::open_read(db)? else { return Ok(Arc::default()) };
        let flags = Arc::new(crate::fleet::anomaly::find(&conn)?);
        self.last.lock().unwrap_or_else(|p| p.into_inner()).flags = Some((Instant::now(), Arc::clone(&flags)));
        Ok(flags)
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/openapi.json", get(handlers::openapi))
        .route("/api/devices", get(handlers::devices))
        .route("/api/devices/{id}", get(handlers::device))
        .route("/api/releases", get(handlers::releases))
        .route("/api/rollouts", get(handlers::rollouts).post(handlers::start_rollout))
        .route("/api/rollouts/{name}", get(handlers::rollout))
        .route("/api/rollouts/{name}/{action}", post(handlers::rollout_action))
        .route("/api/sites", get(handlers::sites))
        .route("/api/sites/{site}", get(handlers::site))
        .route("/api/overview", get(handlers::overview))
        .route("/api/session", get(handlers::session))
        .route("/api/anomalies", get(handlers::anomalies))
        .route("/api/events", get(handlers::events))
        .route("/metrics", get(metrics::metrics))
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(ui::security_headers))
        .with_state(state)
}

/// Binds `addr` and serves the API until the task is dropped; returns the bound address.
pub async fn serve(addr: SocketAddr, state: ApiState) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = router(state);
    let served = async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the API server stopped: {e}");
        }
    };
    Ok((bound, served))
}
