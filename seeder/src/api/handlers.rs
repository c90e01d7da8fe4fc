//! The API's handlers: authorization first, input checked and bounded, then the same code
//! the CLI runs, on a blocking thread.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::{ApiState, Scope};
use crate::fleet::{self, inventory, query};
use crate::repo::Repo;
use crate::{rollout, time};

/// Largest page of devices.
const MAX_PAGE: u64 = 1000;
/// Page size when none is asked for.
const DEFAULT_PAGE: u64 = 100;
/// History events in a device's detail.
const HISTORY: u64 = 100;
/// How often the event stream looks for new events.
const EVENT_POLL: Duration = Duration::from_secs(1);
/// Events sent per poll at most (the rest on the next).
const EVENT_BATCH: i64 = 500;

/// A caller with at least read scope (and the scope it has).
pub struct Reader(pub Scope);
/// A caller with operator scope.
pub struct Operator;

fn authorize(parts: &Parts, state: &ApiState, need: Scope) -> ApiResult<Scope> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(scope) = presented.and_then(|token| state.tokens.scope_of(token)) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown token; send `Authorization: Bearer TOKEN` with a token from the seeder's --api-tokens file",
        ));
    };
    if scope < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this needs a token with {} scope; this one is {}", need.name(), scope.name()),
        ));
    }
    Ok(scope)
}

impl FromRequestParts<ApiState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        authorize(parts, state, Scope::Read).map(Reader)
    }
}

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> ApiResult<Self> {
        authorize(parts, state, Scope::Operator).map(|_| Operator)
    }
}

/// Runs `work` on a blocking thread (SQLite, repository files).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(anyhow::anyhow!("task failed: {e}")))?
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", e.body_text()))
}

fn json_error(e: JsonRejection) -> ApiError {
    ApiError::new(e.status(), format!("bad JSON body: {}", e.body_text()))
}

fn duration(flag: &str, text: &str) -> ApiResult<i64> {
    time::parse_duration(text).map_err(|e| ApiError::bad_request(format!("{flag}: {e:#}")))
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// `GET /api/session`: the presented token's scope, so the console can disable what it may
/// not do (the API refuses it anyway).
pub async fn session(Reader(scope): Reader) -> Json<Value> {
    Json(json!({"scope": scope.name()}))
}

/// Anything else.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; /api/openapi.json lists them")
}

/// The device listing's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    site: Option<String>,
    release: Option<String>,
    state: Option<String>,
    hw_class: Option<String>,
    /// Text the device id contains.
    q: Option<String>,
    /// Not heard from within this long (a duration: 2h, 7d).
    stale: Option<String>,
    /// Marks devices stale after this long (default 1d).
    stale_after: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
    /// The page after the one that ended with this device id (the previous page's `next`).
    after: Option<String>,
}

/// What a device count (or a listing's offset anchors) is kept under: the filter, and for a
/// staleness filter the minute its cut-off falls in (staleness moves with the clock, not
/// only with the data).
pub type FilterKey = ([Option<String>; 5], Option<i64>);

/// `GET /api/devices`: one page of the inventory and how many devices match (at most
/// [`super::fresh::MAX_AGE`] old while reports arrive). Pages go by `offset` or, however
/// deep, by `after` (the previous page's `next`).
pub async fn devices(
    _: Reader,
    State(state): State<ApiState>,
    query: Result<Query<DeviceQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(query_error)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let offset = q.offset.unwrap_or(0);
    if offset > i64::MAX as u64 {
        return Err(ApiError::bad_request("offset is out of range"));
    }
    if q.after.is_some() && offset > 0 {
        return Err(ApiError::bad_request("give either offset or after, not both"));
    }
    if q.after.as_ref().is_some_and(|a| a.len() > 256) {
        return Err(ApiError::bad_request("after is too long"));
    }
    let now = time::now_unix();
    let stale_after = duration("stale_after", q.stale_after.as_deref().unwrap_or("1d"))?;
    let stale_before = q.stale.as_deref().map(|d| duration("stale", d)).transpose()?.map(|d| now - d);
    blocking(move || {
        let filter = query::DeviceFilter {
            site: q.site.as_deref(),
            release: q.release.as_deref(),
            state: q.state.as_deref(),
            hw_class: q.hw_class.as_deref(),
            id_contains: q.q.as_deref(),
            stale_before,
            limit,
            offset,
            after: q.after.as_deref(),
        };
        let Some(conn) = fleet::open_read(&fleet::location(&state.repo)).map_err(ApiError::internal)? else {
            return Ok(Json(json!({"total": 0, "offset": offset, "limit": limit, "devices": [], "next": null})));
        };
        let filters = [q.site.clone(), q.release.clone(), q.state.clone(), q.hw_class.clone(), q.q.clone()];
        let key: FilterKey = (filters, stale_before.map(|b| b.div_euclid(60)));
        let version = query::data_version(&conn).map_err(ApiError::internal)?;
        let total = state
            .device_counts
            .get(&key, version, || query::count_devices(&conn, &filter))
            .map_err(ApiError::internal)?;
        // A deep offset over a devices-only filter starts after a cached anchor instead of
        // walking every row it skips (the anchors move only when a device is enrolled).
        let anchors = if offset >= query::ANCHOR_STRIDE && query::on_devices_only(&filter) {
            let key = (key.0.clone(), None);
            Some(
                state
                    .offset_anchors
                    .get(&key, (version.0, 0), || query::offset_anchors(&conn, &filter).map(Arc::new))
                    .map_err(ApiError::internal)?,
            )
        } else {
            None
        };
        let paged = match anchors.as_deref().and_then(|a| query::from_anchor(a, offset)) {
            Some((after, rest)) => query::DeviceFilter { after: Some(after), offset: rest, ..filter },
            None => filter,
        };
        let devices = query::page_of_devices(&conn, &paged).map_err(ApiError::internal)?;
        let next = (devices.len() as u64 == limit).then(|| devices.last().map(|d| d.id.clone())).flatten();
        let listed: Vec<_> = devices.iter().map(|d| inventory::Listed::new(d, now, stale_after)).collect();
        Ok(Json(json!({"total": total, "offset": offset, "limit": limit, "devices": listed, "next": next})))
    })
    .await
}

/// `GET /api/devices/{id}`: a device (by id or public key) and its update history.
pub async fn device(_: Reader, State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if id.len() > 256 {
        return Err(ApiError::bad_request("device id is too long"));
    }
    let now = time::now_unix();
    blocking(move || {
        let conn = fleet::open_read(&fleet::location(&state.repo)).map_err(ApiError::internal)?;
        let found = match conn {
            Some(conn) => query::show_device(&conn, &id, HISTORY).map_err(ApiError::internal)?,
            None => None,
        };
        let (row, history) = found.ok_or_else(|| ApiError::not_found(format!("no device `{id}` is enrolled")))?;
        Ok(Json(json!({"device": inventory::Listed::new(&row, now, 86_400), "history": history})))
    })
    .await
}

/// `GET /api/releases`.
pub async fn releases(_: Reader, State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let current = Repo::at(&state.repo).current().map_err(ApiError::internal)?;
        Ok(Json(json!({"releases": crate::inspect::releases(&current)})))
    })
    .await
}

/// `GET /api/rollouts`: every rollout's status, waves and sites (the controller loop's
/// counts, at most a tick old: `rollout::board`).
pub async fn rollouts(_: Reader, State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let all = state.rollouts.status(&Repo::at(&state.repo), None).map_err(ApiError::internal)?;
        Ok(Json(json!({"rollouts": all})))
    })
    .await
}

/// `GET /api/rollouts/{name}`: the rollout of release `name`.
pub async fn rollout(_: Reader, State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    check_name(&name)?;
    blocking(move || {
        let mut all = state
            .rollouts
            .status(&Repo::at(&state.repo), Some(&name))
            .map_err(|e| ApiError::not_found(format!("{e:#}")))?;
        Ok(Json(serde_json::to_value(all.remove(0)).map_err(|e| ApiError::internal(e.into()))?))
    })
    .await
}

/// Release names are path segments: the same alphabet `seeder release add` allows.
fn check_name(name: &str) -> ApiResult<()> {
    crate::release::check_segment("release name", name, 64).map_err(|e| ApiError::bad_request(format!("{e:#}")))
}

/// `POST /api/rollouts`'s body: `seeder rollout start`'s flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    release: String,
    version: String,
    waves: Option<String>,
    #[serde(default)]
    canaries: Vec<String>,
    soak: Option<String>,
    max_failure_rate: Option<String>,
    min_reports: Option<u32>,
    #[serde(default)]
    windows: Vec<String>,
    max_concurrent_per_site: Option<u32>,
    id: Option<String>,
}

/// `POST /api/rollouts` (operator): starts a rollout, signing its first policy with the
/// rollouts key.
pub async fn start_rollout(
    _: Operator,
    State(state): State<ApiState>,
    body: Result<Json<StartBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(b) = body.map_err(json_error)?;
    check_name(&b.release)?;
    if b.canaries.len() > 1000 || b.windows.len() > 100 {
        return Err(ApiError::bad_request("too many canaries or windows"));
    }
    let defaults = rollout::defaults::WAVES;
    let args = rollout::StartArgs {
        repo: state.repo.clone(),
        name: b.release,
        version: b.version,
        waves: b.waves.unwrap_or_else(|| defaults.into()),
        canaries: b.canaries,
        soak: b.soak.unwrap_or_else(|| rollout::defaults::SOAK.into()),
        max_failure_rate: b.max_failure_rate.unwrap_or_else(|| rollout::defaults::MAX_FAILURE_RATE.into()),
        min_reports: b.min_reports.unwrap_or(rollout::defaults::MIN_REPORTS),
        windows: b.windows,
        max_concurrent_per_site: b.max_concurrent_per_site.unwrap_or(0),
        id: b.id,
    };
    blocking(move || match rollout::start_delegated(&args) {
        Ok(status) => {
            Ok((StatusCode::CREATED, Json(serde_json::to_value(status).map_err(|e| ApiError::internal(e.into()))?)))
        }
        Err(e) => Err(start_error(e)),
    })
    .await
}

/// Which status a refused start gets: a conflict with the rollout already running or with
/// the repository's setup, or a bad request.
fn start_error(e: anyhow::Error) -> ApiError {
    let message = format!("{e:#}");
    if message.contains("abort it first") || message.contains("not delegated") {
        ApiError::new(StatusCode::CONFLICT, message)
    } else if message.contains("is not published") {
        ApiError::not_found(message)
    } else {
        ApiError::bad_request(message)
    }
}

/// `POST /api/rollouts/{name}/{pause|resume|abort}` (operator).
pub async fn rollout_action(
    _: Operator,
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_name(&name)?;
    let command = match action.as_str() {
        "pause" => rollout::Command::Pause,
        "resume" => rollout::Command::Resume,
        "abort" => rollout::Command::Abort,
        _ => return Err(ApiError::not_found("no such action; use pause, resume or abort")),
    };
    blocking(move || match rollout::command(&Repo::at(&state.repo), &name, command) {
        Ok(status) => Ok(Json(serde_json::to_value(status).map_err(|e| ApiError::internal(e.into()))?)),
        Err(e) => {
            let message = format!("{e:#}");
            let status = if message.contains("no rollout of") { StatusCode::NOT_FOUND } else { StatusCode::CONFLICT };
            Err(ApiError::new(status, message))
        }
    })
    .await
}

/// Largest page of sites.
const MAX_SITE_PAGE: u64 = 1000;
/// Edge nodes listed in a site's detail.
const SITE_EDGES: u64 = 100;
/// Longest site name or search text accepted.
const MAX_SITE_CHARS: usize = 256;

/// The site listing's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteQuery {
    /// Text the site name contains.
    q: Option<String>,
    /// Page size (no limit when absent: every site).
    limit: Option<u64>,
    offset: Option<u64>,
}

/// `GET /api/sites`: per site, its devices by release and version, by state and by hardware
/// class, and how many are stale — aggregated in SQL, paged by site.
pub async fn sites(
    _: Reader,
    State(state): State<ApiState>,
    query: Result<Query<SiteQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(query_error)?;
    let limit = q.limit.unwrap_or(0);
    if q.limit.is_some() && !(1..=MAX_SITE_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_SITE_PAGE}")));
    }
    let offset = q.offset.unwrap_or(0);
    if q.q.as_ref().is_some_and(|t| t.len() > MAX_SITE_CHARS) {
        return Err(ApiError::bad_request("q is too long"));
    }
    let now = time::now_unix();
    blocking(move || {
        let Some(conn) = fleet::open_read(&fleet::location(&state.repo)).map_err(ApiError::internal)? else {
            return Ok(Json(json!({"total": 0, "offset": offset, "limit": limit, "sites": []})));
        };
        let filter = query::SiteFilter { site: None, name_contains: q.q.as_deref(), limit, offset };
        let page = query::site_summaries(&conn, now - 86_400, &filter).map_err(ApiError::internal)?;
        Ok(Json(json!({"total": page.total, "offset": offset, "limit": limit, "sites": page.sites})))
    })
    .await
}

/// `GET /api/sites/{site}`: one site's summary, the edge nodes that forwarded its reports,
/// and its anomaly flags.
pub async fn site(_: Reader, State(state): State<ApiState>, Path(site): Path<String>) -> ApiResult<Json<Value>> {
    if site.len() > MAX_SITE_CHARS {
        return Err(ApiError::bad_request("site name is too long"));
    }
    let now = time::now_unix();
    blocking(move || {
        let missing = || ApiError::not_found(format!("no device is enrolled at site `{site}`"));
        let conn = fleet::open_read(&fleet::location(&state.repo)).map_err(ApiError::internal)?.ok_or_else(missing)?;
        let filter = query::SiteFilter { site: Some(&site), name_contains: None, limit: 1, offset: 0 };
        let mut page = query::site_summaries(&conn, now - 86_400, &filter).map_err(ApiError::internal)?;
        let summary = page.sites.pop().ok_or_else(missing)?;
        let edges = fleet::edges::of_site(&conn, &site, SITE_EDGES).map_err(ApiError::internal)?;
        let anomalies = state.anomalies.get(&fleet::location(&state.repo)).map_err(ApiError::internal)?;
        let flags: Vec<_> =
            anomalies.flags.iter().filter(|a| a.group_by == fleet::anomaly::GroupBy::Site && a.group == site).collect();
        Ok(Json(json!({"site": summary, "edges": edges, "anomalies": flags})))
    })
    .await
}

/// `GET /api/overview`: the fleet in a few numbers (devices by state, version and hardware
/// class; sites; stale), each one grouped query on an index; kept as [`super::fresh`] says
/// and computed again behind the callers (a million devices take about a second to count).
pub async fn overview(_: Reader, State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    let now = time::now_unix();
    blocking(move || {
        let Some(conn) = fleet::open_read(&fleet::location(&state.repo)).map_err(ApiError::internal)? else {
            return Ok(Json(json!({"devices": 0, "sites": 0, "never_reported": 0, "stale": 0,
                                  "states": {}, "versions": {}, "hw_classes": {}})));
        };
        let stale_before = now - 86_400;
        let version = query::data_version(&conn).map_err(ApiError::internal)?;
        let db = fleet::location(&state.repo);
        let overview = state
            .overviews
            .get_refreshed_behind(&stale_before.div_euclid(60), version, move || overview_of(&db, stale_before))
            .map_err(ApiError::internal)?;
        Ok(Json(Value::clone(&overview)))
    })
    .await
}

/// Computes the overview on a thread of its own (at serve start, so the first dashboard at
/// a million devices does not wait for it).
pub fn warm_overview(state: &ApiState) {
    let (overviews, db) = (Arc::clone(&state.overviews), fleet::location(&state.repo));
    std::thread::spawn(move || {
        let stale_before = time::now_unix() - 86_400;
        let warmed = fleet::open_read(&db).and_then(|conn| {
            let Some(conn) = conn else { return Ok(()) };
            let version = query::data_version(&conn)?;
            overviews
                .get_refreshed_behind(&stale_before.div_euclid(60), version, move || overview_of(&db, stale_before))?;
            Ok(())
        });
        if let Err(e) = warmed {
            tracing::warn!("the fleet overview was not computed at start: {e:#}");
        }
    });
}

/// The overview of the fleet database at `db`, as JSON.
fn overview_of(db: &fleet::Location, stale_before: i64) -> anyhow::Result<Arc<Value>> {
    let conn = fleet::open_read(db)?.ok_or_else(|| anyhow::anyhow!("the fleet database is gone"))?;
    Ok(Arc::new(serde_json::to_value(query::overview(&conn, stale_before)?)?))
}

/// `GET /api/anomalies`: sites and hardware classes whose failure rate or install duration
/// stands out (`fleet::anomaly` states the tests), at most [`super::ANOMALY_MAX_AGE`] old.
pub async fn anomalies(_: Reader, State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    blocking(move || {
        let found = state.anomalies.get(&fleet::location(&state.repo)).map_err(ApiError::internal)?;
        Ok(Json(serde_json::to_value(&*found).map_err(|e| ApiError::internal(e.into()))?))
    })
    .await
}

/// `GET /api/events`: server-sent events, `status` for each stored status report and
/// `rollout` for each rollout transition, from now on (or after `Last-Event-ID`).
pub async fn events(_: Reader, State(state): State<ApiState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('/'))
        .and_then(|(s, r)| Some((s.parse::<i64>().ok()?, r.parse::<i64>().ok()?)));
    let repo = state.repo.clone();
    let start = match resume {
        Some(ids) => Some(ids),
        None => tokio::task::spawn_blocking(move || query::event_cursor(&fleet::location(&repo)).ok().flatten())
            .await
            .ok()
            .flatten(),
    };
    let stream = futures_util::stream::unfold(
        (state.repo.clone(), start.unwrap_or((0, 0)), std::collections::VecDeque::new()),
        |(repo, mut cursor, mut pending): (std::path::PathBuf, (i64, i64), std::collections::VecDeque<Event>)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok::<Event, Infallible>(event), (repo, cursor, pending)));
                }
                tokio::time::sleep(EVENT_POLL).await;
                let dir = repo.clone();
                let read = tokio::task::spawn_blocking(move || {
                    query::events_after(&fleet::location(&dir), cursor, EVENT_BATCH)
                })
                .await;
                if let Ok(Ok(batch)) = read {
                    for (kind, ids, data) in batch {
                        cursor = ids;
                        pending.push_back(
                            Event::default().event(kind).id(format!("{}/{}", ids.0, ids.1)).data(data.to_string()),
                        );
                    }
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
