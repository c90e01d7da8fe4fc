//! The edge node's operations HTTP server, and the small client `edge-node status` uses.
//!
//! Routes:
//!
//! - `GET /metadata/{file}` and `GET /targets/{*path}`: the daemon's local TUF mirror
//!   (`mirror_root/metadata/`, `mirror_root/targets/`, a standard TUF repository layout), so
//!   any standard TUF client — python-tuf's ngclient with `metadata_base_url=…/metadata/` and
//!   `target_base_url=…/targets/`, or our own `device-client` — can use the edge node as a
//!   mirror. The mirror holds only signed metadata and ciphertext-bearing manifests and
//!   targets, so serving it needs no authentication: clients verify everything from their
//!   own root of trust.
//! - `GET /metrics`: the Prometheus text exposition of [`Metrics`].
//! - `GET /status`: the daemon's [`EdgeStatus`] as JSON.
//! - `GET /healthz`: `200 ok` while the server runs.
//!
//! Goals: never read a file outside the mirror (names are checked against a strict
//! alphabet on the *raw* request path, and the resolved file must still lie inside the
//! canonical mirror root, so symlinks cannot lead out either); stream large targets instead
//! of buffering them; answer every unknown path with a one-line 404.
//!
//! Non-goals: directory listings, range requests, TLS, and connection admission control
//! (see [`serve`]).

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::{HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt as _, Empty, Limited};
use protocol::edge::status::EdgeStatus;
use serde::Deserialize as _;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::io::ReaderStream;

use crate::metrics::Metrics;

/// Produces the `/status` document. Called once per request on a blocking thread, so it may
/// take locks or read the store; it should still return quickly.
pub type StatusSource = Arc<dyn Fn() -> EdgeStatus + Send + Sync>;

/// Everything the handlers read. Cheap to clone: axum clones it per request.
#[derive(Clone)]
pub struct HttpState {
    /// A standard TUF repository layout (`metadata/`, `targets/`) the daemon keeps current.
    /// Metadata files are stored under the name they have in URLs, so a delegated role
    /// `a/b` is `metadata/1.a%2Fb.json`, exactly the name python-tuf requests.
    pub mirror_root: PathBuf,
    /// The daemon's counters, rendered at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The daemon's status snapshot, served at `/status`.
    pub status: StatusSource,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").field("mirror_root", &self.mirror_root).finish_non_exhaustive()
    }
}

/// Deepest target path served (`releases/NAME/HASH.VERSION.manifest` is 3); deeper paths are
/// refused before touching the file system.
pub const MAX_TARGET_DEPTH: usize = 8;

/// Longest path segment accepted: the usual file-name limit of Linux file systems.
const MAX_SEGMENT_BYTES: usize = 255;

/// Largest `/status` body [`fetch_status`] accepts; a real status document is a few KiB.
pub const STATUS_RESPONSE_LIMIT_BYTES: usize = 1 << 20;

/// How long [`fetch_status`] waits for the whole exchange, connect to last byte.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Prometheus text exposition format version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The operations router over `state`. Exposed (rather than only [`serve`]) so tests and a
/// daemon that merges routes can drive it directly.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metadata/{file}", get(metadata))
        .route("/targets/{*path}", get(target))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { not_found() })
        .method_not_allowed_fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n") })
        .with_state(state)
}

/// Serves the operations endpoints on `listener` until the task is dropped or aborted.
///
/// Connections are not limited or timed out here: the endpoint belongs on the site's
/// management network, and the daemon bounds its exposure by where it binds the listener.
pub async fn serve(listener: TcpListener, state: HttpState) -> io::Result<()> {
    axum::serve(listener, router(state)).await
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// `GET /metadata/{file}`. Works on the raw (still percent-encoded) path: TUF clients
/// percent-encode role names into one segment, and the mirror stores them under that
/// encoded name, so decoding would only reintroduce `/`.
async fn metadata(State(state): State<HttpState>, uri: Uri) -> Response {
    let Some(name) = uri.path().strip_prefix("/metadata/") else { return not_found() };
    if !metadata_name_ok(name) {
        return not_found();
    }
    let mut response = serve_file(&state.mirror_root, &["metadata", name], "application/json").await;
    if response.status() == StatusCode::OK {
        // timestamp.json and friends change in place; caches must revalidate.
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// `GET /targets/{*path}`, on the raw path for the same reason as [`metadata`]: the target
/// alphabet has no `%`, so anything percent-encoded (an encoded `/` or `.`) is refused.
async fn target(State(state): State<HttpState>, uri: Uri) -> Response {
    let Some(path) = uri.path().strip_prefix("/targets/") else { return not_found() };
    let Some(segments) = target_segments(path) else { return not_found() };
    let mut relative = Vec::with_capacity(segments.len() + 1);
    relative.push("targets");
    relative.extend(segments);
    serve_file(&state.mirror_root, &relative, "application/octet-stream").await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], state.metrics.render()).into_response()
}

async fn status(State(state): State<HttpState>) -> Response {
    let source = state.status.clone();
    // The source may lock or read the store; keep that off the async workers.
    let value = match tokio::task::spawn_blocking(move || source()).await {
        Ok(value) => value,
        Err(error) => {
            tracing::warn!(%error, "status source failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n").into_response();
        }
    };
    match serde_json::to_vec(&value) {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => {
            tracing::warn!(%error, "status document does not serialize");
            (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n").into_response()
        }
    }
}

/// `^[A-Za-z0-9._%+-]+\.json$`, not starting with a dot and without `..`, so the name is a
/// plain file name inside `metadata/` whatever it decodes to.
fn metadata_name_ok(name: &str) -> bool {
    name.len() > ".json".len()
        && name.len() <= MAX_SEGMENT_BYTES
        && name.ends_with(".json")
        && !name.starts_with('.')
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-'))
}

/// Splits a raw target path into at most [`MAX_TARGET_DEPTH`] segments, each
/// `^[A-Za-z0-9._+-]+$` and not starting with a dot (which also rules out `.` and `..`).
fn target_segments(path: &str) -> Option<Vec<&str>> {
    let segments: Vec<&str> = path.split('/').collect();
    let ok = segments.len() <= MAX_TARGET_DEPTH
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && segment.len() <= MAX_SEGMENT_BYTES
                && !segment.starts_with('.')
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        });
    ok.then_some(segments)
}

/// Streams `root/relative…` if it is a regular file inside the canonical `root`.
///
/// The names are already checked, so this is defence in depth against symlinks in the
/// mirror: the canonical path must stay under the canonical root. The body is the opened
/// file capped at the length it had when opened; the daemon replaces files by rename, so an
/// open handle keeps reading the version it was opened on and Content-Length stays true.
async fn serve_file(root: &Path, relative: &[&str], content_type: &'static str) -> Response {
    let requested: PathBuf = relative.iter().fold(root.to_path_buf(), |path, segment| path.join(segment));
    let (canonical_root, canonical) =
        match tokio::try_join!(tokio::fs::canonicalize(root), tokio::fs::canonicalize(&requested)) {
            Ok(paths) => paths,
            Err(error) => return file_error(&requested, error),
        };
    if !canonical.starts_with(&canonical_root) {
        tracing::warn!(path = %requested.display(), "mirror path resolves outside the mirror; refused");
        return not_found();
    }
    let file = match tokio::fs::File::open(&canonical).await {
        Ok(file) => file,
        Err(error) => return file_error(&requested, error),
    };
    let length = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return not_found(),
        Err(error) => return file_error(&requested, error),
    };
    let body = Body::from_stream(ReaderStream::new(file.take(length)));
    ([(CONTENT_TYPE, HeaderValue::from_static(content_type)), (CONTENT_LENGTH, HeaderValue::from(length))], body)
        .into_response()
}

/// Missing files are ordinary 404s; anything else is logged, and still a 404 to the client,
/// which has no use for our file system's troubles.
fn file_error(path: &Path, error: io::Error) -> Response {
    if !matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) {
        tracing::warn!(path = %path.display(), %error, "mirror file unreadable");
    }
    not_found()
}

/// Fetches `/status` from an edge node's operations endpoint at `addr`, for `edge-node status`.
///
/// Plain HTTP/1.1 over hyper's client connection (already in the tree through axum), with the
/// body capped at [`STATUS_RESPONSE_LIMIT_BYTES`] and the whole exchange at [`STATUS_TIMEOUT`],
/// so a wrong address or a confused server cannot hang or flood the CLI.
pub async fn fetch_status(addr: SocketAddr) -> anyhow::Result<Value> {
    tokio::time::timeout(STATUS_TIMEOUT, fetch_status_untimed(addr))
        .await
        .map_err(|_| anyhow!("no complete answer from {addr} within {} s", STATUS_TIMEOUT.as_secs()))?
}

async fn fetch_status_untimed(addr: SocketAddr) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    let request = Request::get("/status")
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .context("building the status request")?;
    // The connection future drives the socket; it ends once `sender` is dropped at the end of
    // `exchange`, so joining the two needs no spawned task to clean up.
    let exchange = async move {
        let response = sender.send_request(request).await.with_context(|| format!("GET /status from {addr}"))?;
        let code = response.status();
        let body = Limited::new(response.into_body(), STATUS_RESPONSE_LIMIT_BYTES)
            .collect()
            .await
            .map_err(|error| anyhow!("reading the status from {addr}: {error}"))?
            .to_bytes();
        if !code.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
            bail!("{addr} answered /status with {code}: {text}");
        }
        serde_json::from_slice::<Value>(&body).with_context(|| format!("status from {addr} is not JSON"))
    };
    let (value, _connection) = tokio::join!(exchange, connection);
    value
}

/// Renders a `/status` document for people: a summary with peer and release tables, or
/// pretty JSON when `json` is set or the document is not an [`EdgeStatus`] (a node of
/// another version, or not an edge node at all). `fetch_status` keeps the document as JSON
/// so `--json` prints exactly what the node said.
pub fn print_status(value: &Value, json: bool) -> String {
    let known = value.get("node_id").is_some_and(Value::is_string);
    let status = known.then(|| EdgeStatus::deserialize(value).ok()).flatten();
    let Some(status) = status.filter(|_| !json) else {
        let mut out = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        out.push('\n');
        return out;
    };
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", cell(&status.node_id));
    let _ = writeln!(out, "site      {}", cell(&status.site));

    let store = &status.store;
    let capacity =
        if store.capacity_bytes > 0 { format!(" of {}", human_bytes(store.capacity_bytes)) } else { String::new() };
    let _ = writeln!(out, "store     {} chunks, {}{capacity}", store.chunks, human_bytes(store.bytes));
    let bytes_in = &status.bytes_in;
    let by_class = [bytes_in.site, bytes_in.wan, bytes_in.origin];
    let sources: Vec<String> = crate::metrics::SOURCE_CLASSES
        .iter()
        .zip(by_class)
        .map(|(class, amount)| format!("{class} {}", human_bytes(amount)))
        .collect();
    let _ = writeln!(out, "bytes in  {}", sources.join(", "));
    let reports = &status.reports;
    let _ = writeln!(
        out,
        "reports   {} queued, {} forwarded, {} dropped",
        reports.queued, reports.forwarded, reports.dropped
    );

    let _ = writeln!(out, "\npeers ({})", status.peers.len());
    if !status.peers.is_empty() {
        let rows: Vec<Vec<String>> = status.peers.iter().map(|peer| vec![cell(&peer.peer), cell(&peer.site)]).collect();
        out.push_str(&table(&["PEER", "SITE"], &rows));
    }

    let _ = writeln!(out, "\nreleases ({})", status.releases.len());
    if !status.releases.is_empty() {
        let rows: Vec<Vec<String>> = status
            .releases
            .iter()
            .map(|r| {
                let complete = if r.complete { "yes" } else { "no" };
                vec![
                    cell(&r.name),
                    cell(&r.version),
                    cell(&r.hw_class),
                    r.chunks.to_string(),
                    r.have.to_string(),
                    complete.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["NAME", "VERSION", "HW CLASS", "CHUNKS", "HAVE", "COMPLETE"], &rows));
    }

    let _ = writeln!(out, "\nrollouts ({})", status.rollouts.len());
    if !status.rollouts.is_empty() {
        let rows: Vec<Vec<String>> = status
            .rollouts
            .iter()
            .map(|r| {
                let hold = if r.site_halted { "site halted" } else { "none" };
                vec![
                    cell(&r.rollout),
                    format!("{} (v{})", cell(&r.state), r.policy_seq),
                    hold.to_string(),
                    r.installing.to_string(),
                    r.committed.to_string(),
                    r.rolled_back.to_string(),
                    r.failed.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ROLLOUT", "POLICY", "LOCAL HOLD", "INSTALLING", "COMMITTED", "ROLLED BACK", "FAILED"],
            &rows,
        ));
    }
    out
}

/// One text cell: an absent (empty) value as `-`.
fn cell(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// Left-aligned columns two spaces apart, indented under their heading.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Bytes in binary units with one decimal (`1.5 MiB`); exact below 1 KiB.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names() {
        for good in ["root.json", "1.root.json", "timestamp.json", "3.a%2Fb.json", "x+y-z_w.json"] {
            assert!(metadata_name_ok(good), "{good}");
        }
        for bad in ["", ".json", ".root.json", "..%2Froot.json", "a..json", "root", "a/b.json", "r\u{e9}.json"] {
            assert!(!metadata_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn target_paths() {
        assert_eq!(target_segments("releases/gw/ab.1.0.0.manifest"), Some(vec!["releases", "gw", "ab.1.0.0.manifest"]));
        assert!(target_segments("a/b/c/d/e/f/g/h").is_some());
        for bad in ["a/b/c/d/e/f/g/h/i", "", "a//b", "a/", "../x", "a/./b", ".hidden", "a%2Fb", "a b", "a\\b"] {
            assert_eq!(target_segments(bad), None, "{bad}");
        }
    }

    #[test]
    fn byte_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
    }
}
