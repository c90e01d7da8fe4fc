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
//! - Reads go to SQLite on blocking threads, each with its own read-only connection (WAL:
//!   readers never wait for the ingest writer). Listings are paged and filtered in SQL.

pub mod auth;
mod error;
mod handlers;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::fleet::ingest::Ingestor;

pub use auth::{Scope, Tokens};

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
        .route("/api/events", get(handlers::events))
        .route("/metrics", get(metrics::metrics))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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
