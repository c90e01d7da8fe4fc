//! What readers see: devices with their latest state. Readers use their own read-only
//! connections ([`super::open_read`]); WAL lets them read while the writer commits.

use super::db::{params, Db, Row, Value, NO_LIMIT};
use anyhow::Result;
use serde::Serialize;

/// An enrolled device and, once it has reported, its latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// The operator's name for it.
    pub id: String,
    /// Its ed25519 public key, hex.
    pub key: String,
    /// Its site.
    pub site: String,
    /// Its hardware class.
    pub hw_class: String,
    /// When it was enrolled (unix seconds).
    pub enrolled_at: i64,
    /// What it last reported; `None` before its first accepted report.
    pub state: Option<DeviceState>,
}

/// A device's latest accepted report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceState {
    /// The report's `seq`.
    pub last_seq: u64,
    /// Release name followed.
    pub release: String,
    /// Installed version.
    pub version: String,
    /// Installed release id (hex).
    pub installed_id: String,
    /// Install engine state.
    pub state: String,
    /// Rollout the report was about.
    pub rollout: Option<String>,
    /// Result of the rollout's install.
    pub result: Option<String>,
    /// Last error name.
    pub error: Option<String>,
    /// Last error code.
    pub error_code: Option<u16>,
    /// Last health result.
    pub health: Option<String>,
    /// Slot the rollout's install targets.
    pub slot: Option<String>,
    /// When the seeder stored it (unix seconds): the device's last report.
    pub updated_at: i64,
    /// The slot that runs (reports from before the inventory columns: `None`).
    pub active_slot: Option<String>,
    /// The anti-rollback floor (security counter) the device enforces.
    pub security_floor: Option<u64>,
    /// The version being installed, if an install is under way.
    pub target_version: Option<String>,
}

const SELECT_DEVICES: &str = "
    SELECT d.device_id, d.public_key, d.site, d.hw_class, d.enrolled_at,
           s.last_seq, s.release, s.version, s.installed_id, s.state, s.rollout, s.result, s.error,
           s.error_code, s.health, s.slot, s.updated_at, s.active_slot, s.security_floor, s.target_version
    FROM devices d LEFT JOIN device_state s ON s.device = d.id";

fn device_row(row: &Row<'_>) -> Result<DeviceRow> {
    let key: Vec<u8> = row.get(1)?;
    let last_seq: Option<i64> = row.get(5)?;
    let state = match last_seq {
        None => None,
        Some(last_seq) => Some(DeviceState {
            last_seq: last_seq as u64,
            release: row.get(6)?,
            version: row.get(7)?,
            installed_id: row.get(8)?,
            state: row.get(9)?,
            rollout: row.get(10)?,
            result: row.get(11)?,
            error: row.get(12)?,
            error_code: row.get(13)?,
            health: row.get(14)?,
            slot: row.get(15)?,
            updated_at: row.get(16)?,
            active_slot: row.get(17)?,
            security_floor: row.get::<Option<i64>>(18)?.map(|f| f.max(0) as u64),
            target_version: row.get(19)?,
        }),
    };
    Ok(DeviceRow {
        id: row.get(0)?,
        key: protocol::hex::encode(&key),
        site: row.get(2)?,
        hw_class: row.get(3)?,
        enrolled_at: row.get(4)?,
        state,
    })
}

#[cfg(test)]
/// Every enrolled device (of `site`, if given) by device id.
pub fn list_devices(conn: &Db, site: Option<&str>) -> Result<Vec<DeviceRow>> {
    Ok(find_devices(conn, &DeviceFilter { site, ..DeviceFilter::default() })?.devices)
}

/// Which devices a listing shows, and which page of them. Every condition is SQL, so a
/// page of a million-device fleet reads only what it shows (plus the count).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceFilter<'a> {
    /// Only this site.
    pub site: Option<&'a str>,
    /// Only devices following this release name (`gw`), or running this release
    /// (`gw@2.0.0`).
    pub release: Option<&'a str>,
    /// Only devices in this install state (`committed`, `rolled-back`, `trial`, …), or
    /// `never-reported`.
    pub state: Option<&'a str>,
    /// Only devices whose last report is older than this (unix seconds), or that never
    /// reported: the stale ones.
    pub stale_before: Option<i64>,
    /// Only this hardware class.
    pub hw_class: Option<&'a str>,
    /// Devices whose id contains this text (a search box).
    pub id_contains: Option<&'a str>,
    /// Page size; 0 means no limit.
    pub limit: u64,
    /// Devices skipped before the page.
    pub offset: u64,
    /// Only devices whose id sorts after this one: the next page after a page that ended
    /// with it (keyset paging).
    pub after: Option<&'a str>,
}

/// One page of a listing and how many devices match in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePage {
    /// Devices matching the filter, in all pages.
    pub total: u64,
    /// This page, by device id.
    pub devices: Vec<DeviceRow>,
}

/// The devices `filter` selects, by device id: how many in all and the page it asks for.
pub fn find_devices(conn: &Db, filter: &DeviceFilter<'_>) -> Result<DevicePage> {
    Ok(DevicePage { total: count_devices(conn, filter)?, devices: page_of_devices(conn, filter)? })
}

/// A filter as SQL: its `WHERE` (empty for none), its parameters, and whether it needs the
/// devices' latest state (the join), which only some conditions do.
struct Condition {
    sql: String,
    params: Vec<Value>,
    needs_state: bool,
}

fn condition(filter: &DeviceFilter<'_>) -> Condition {
    let mut clauses: Vec<&str> = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    // Conditions on `d` (devices) need no join; those on `s` (latest states) do.
    let mut text = |clause: &'static str, value: &str| {
        params.push(Value::Text(value.to_string()));
        clause
    };
    if let Some(site) = filter.site {
        clauses.push(text("d.site = ?", site));
    }
    if let Some(hw) = filter.hw_class {
        clauses.push(text("d.hw_class = ?", hw));
    }
    match filter.release.map(|r| r.split_once('@')) {
        Some(Some((name, version))) => {
            clauses.push(text("s.release = ?", name));
            clauses.push(text("s.version = ?", version));
        }
        Some(None) => clauses.push(text("s.release = ?", filter.release.unwrap_or_default())),
        None => {}
    }
    match filter.state {
        Some("never-reported") => clauses.push("s.device IS NULL"),
        Some(state) => clauses.push(text("s.state = ?", state)),
        None => {}
    }
    if let Some(needle) = filter.id_contains {
        // instr: no LIKE wildcards to escape.
        clauses.push(text("instr(d.device_id, ?) > 0", needle));
    }
    if let Some(before) = filter.stale_before {
        clauses.push("(s.device IS NULL OR s.updated_at < ?)");
        params.push(Value::Int(before));
    }
    let needs_state = clauses.iter().any(|c| c.starts_with("s.") || c.starts_with("(s."));
    let sql = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
    Condition { sql, params, needs_state }
}

/// How many devices `filter` selects (its paging ignored). Joins the latest states only
/// when a condition is on them: SQLite keeps a `LEFT JOIN` it is not asked for, and over a
/// million devices that join is most of the count's time (0.4 s against 11 ms).
pub fn count_devices(conn: &Db, filter: &DeviceFilter<'_>) -> Result<u64> {
    let Condition { sql, params, needs_state } = condition(filter);
    let join = if needs_state { " LEFT JOIN device_state s ON s.device = d.id" } else { "" };
    let total: i64 =
        conn.query_one(&format!("SELECT count(*) FROM devices d{join}{sql}"), &self::params(&params), |row| {
            row.get(0)
        })?;
    Ok(total.max(0) as u64)
}

/// The page of devices `filter` asks for, by device id. The page's devices are found first
/// from the `devices (device_id)` index alone (joined with the latest states only when a
/// condition is on them), then only those are joined: rows an `offset` skips cost an index
/// step each rather than a join. With `after`, the page starts past that device id: one
/// index seek, however deep into the fleet.
pub fn page_of_devices(conn: &Db, filter: &DeviceFilter<'_>) -> Result<Vec<DeviceRow>> {
    let Condition { mut sql, mut params, needs_state } = condition(filter);
    if let Some(after) = filter.after {
        sql.push_str(if sql.is_empty() { " WHERE d.device_id > ?" } else { " AND d.device_id > ?" });
        params.push(Value::Text(after.to_string()));
    }
    params.push(Value::Int(if filter.limit == 0 { NO_LIMIT } else { filter.limit.min(i64::MAX as u64) as i64 }));
    params.push(Value::Int(filter.offset.min(i64::MAX as u64) as i64));
    let join = if needs_state { " LEFT JOIN device_state s ON s.device = d.id" } else { "" };
    let sql = format!(
        "{SELECT_DEVICES} WHERE d.id IN
           (SELECT d.id FROM devices d{join}{sql} ORDER BY d.device_id LIMIT ? OFFSET ?)
         ORDER BY d.device_id"
    );
    conn.query(&sql, &self::params(&params), device_row)
}

/// Devices an offset anchor stands for: see [`offset_anchors`].
pub const ANCHOR_STRIDE: u64 = 1000;

/// Whether `filter`'s devices are decided by the devices table alone (site, hardware class,
/// id text): such a listing changes only when a device is enrolled.
pub fn on_devices_only(filter: &DeviceFilter<'_>) -> bool {
    !condition(filter).needs_state
}

/// Every [`ANCHOR_STRIDE`]th device id of `filter`'s listing (its paging ignored): entry
/// `i` is the id at position `(i + 1) * ANCHOR_STRIDE - 1`, so a page at offset `k` can
/// start after an anchor and skip fewer than a stride of rows. One walk of the
/// `devices (device_id)` index; only for [`on_devices_only`] filters (a listing that moves
/// with every report would need new anchors for every page).
pub fn offset_anchors(conn: &Db, filter: &DeviceFilter<'_>) -> Result<Vec<String>> {
    let Condition { sql, params, needs_state } = condition(filter);
    anyhow::ensure!(!needs_state, "offset anchors are only for filters on the devices table");
    let (mut anchors, mut position) = (Vec::new(), 0u64);
    let sql = format!("SELECT d.device_id FROM devices d{sql} ORDER BY d.device_id");
    conn.query(&sql, &self::params(&params), |row| {
        position += 1;
        if position % ANCHOR_STRIDE == 0 {
            anchors.push(row.get(0)?);
        }
        Ok(())
    })?;
    Ok(anchors)
}

/// `offset` as a start after an anchor and the rows left to skip (`None`: no anchor
/// applies).
pub fn from_anchor(anchors: &[String], offset: u64) -> Option<(&str, u64)> {
    let passed = (offset / ANCHOR_STRIDE).min(anchors.len() as u64);
    let anchor = anchors.get(passed.checked_sub(1)? as usize)?;
    Some((anchor, offset - passed * ANCHOR_STRIDE))
}

/// A number that changes whenever a device is enrolled or a report is stored, read from
/// two primary keys (no scan): what a cached count is checked against.
pub fn data_version(conn: &Db) -> Result<(i64, i64)> {
    conn.query_one(
        "SELECT (SELECT coalesce(max(id), 0) FROM devices), (SELECT coalesce(max(id), 0) FROM status_events)",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// One stored status report of a device: its update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEvent {
    /// The report's `seq`.
    pub seq: u64,
    /// When the seeder stored it (unix seconds).
    pub received_at: i64,
    /// Install engine state.
    pub state: String,
    /// Rollout it was about.
    pub rollout: Option<String>,
    /// Result under the rollout.
    pub result: Option<String>,
    /// Error name.
    pub error: Option<String>,
    /// Error code.
    pub error_code: Option<u16>,
    /// Seconds the install had taken.
    pub install_secs: Option<u64>,
}

/// A device and its newest `limit` history events, newest first; `None` if no device has
/// this id (or public key, hex).
pub fn show_device(conn: &Db, id_or_key: &str, limit: u64) -> Result<Option<(DeviceRow, Vec<HistoryEvent>)>> {
    let key = protocol::hex::decode_array::<32>(id_or_key).ok();
    let device = match key {
        Some(key) => conn.query_opt(&format!("{SELECT_DEVICES} WHERE d.public_key = ?1"), &[&&key[..]], device_row)?,
        None => conn.query_opt(&format!("{SELECT_DEVICES} WHERE d.device_id = ?1"), &[&id_or_key], device_row)?,
    };
    let Some(device) = device else { return Ok(None) };
    let limit = limit.min(i64::MAX as u64) as i64;
    let history = conn.query(
        "SELECT e.seq, e.received_at, e.state, e.rollout, e.result, e.error, e.error_code, e.install_secs
         FROM status_events e JOIN devices d ON d.id = e.device
         WHERE d.device_id = ?1 ORDER BY e.id DESC LIMIT ?2",
        &[&device.id, &limit],
        |row| {
            Ok(HistoryEvent {
                seq: row.get::<i64>(0)?.max(0) as u64,
                received_at: row.get(1)?,
                state: row.get(2)?,
                rollout: row.get(3)?,
                result: row.get(4)?,
                error: row.get(5)?,
                error_code: row.get(6)?,
                install_secs: row.get::<Option<i64>>(7)?.map(|s| s.max(0) as u64),
            })
        },
    )?;
    Ok(Some((device, history)))
}

#[cfg(test)]
/// Status events stored for the device with this public key, as `seq`s in order.
pub fn event_seqs(conn: &Db, public_key: &[u8; 32]) -> Result<Vec<u64>> {
    conn.query(
        "SELECT e.seq FROM status_events e JOIN devices d ON d.id = e.device WHERE d.public_key = ?1 ORDER BY e.seq",
        &[public_key],
        |row| Ok(row.get::<i64>(0)? as u64),
    )
}

#[cfg(test)]
/// Status events stored in all.
pub fn event_count(conn: &Db) -> Result<u64> {
    Ok(conn.query_one("SELECT count(*) FROM status_events", &[], |row| row.get::<i64>(0))? as u64)
}

/// One site's devices, aggregated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteSummary {
    /// The site.
    pub site: String,
    /// Enrolled devices.
    pub devices: u64,
    /// Devices that never reported.
    pub never_reported: u64,
    /// Devices whose last report is older than the staleness cut.
    pub stale: u64,
    /// Devices by `release@version` they run.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Devices by install state.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Devices by hardware class.
    pub hw_classes: std::collections::BTreeMap<String, u64>,
}

/// Which sites a summary covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SiteFilter<'a> {
    /// Only this site.
    pub site: Option<&'a str>,
    /// Sites whose name contains this text.
    pub name_contains: Option<&'a str>,
    /// Page size in sites; 0 means every site.
    pub limit: u64,
    /// Sites skipped before the page.
    pub offset: u64,
}

/// One page of site summaries and how many sites match in all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SitePage {
    /// Sites matching the filter, in all pages.
    pub total: u64,
    /// This page, by site name.
    pub sites: Vec<SiteSummary>,
}

/// The summaries of the sites `filter` selects, by site; devices whose last report is before
/// `stale_before` (unix seconds) count as stale. The page's site names come from the
/// `devices (site)` index; the aggregation then reads only the devices of the page's sites
/// (they are contiguous in site order), so a page of 50 sites of a million-device fleet
/// reads 50 sites' devices.
pub fn site_summaries(conn: &Db, stale_before: i64, filter: &SiteFilter<'_>) -> Result<SitePage> {
    use std::collections::BTreeMap;
    let mut condition = String::from(" WHERE TRUE");
    let mut params: Vec<Value> = Vec::new();
    if let Some(site) = filter.site {
        condition += " AND d.site = ?";
        params.push(Value::Text(site.to_string()));
    }
    if let Some(needle) = filter.name_contains {
        condition += " AND instr(d.site, ?) > 0";
        params.push(Value::Text(needle.to_string()));
    }
    let total: i64 = conn.query_one(
        &format!("SELECT count(DISTINCT d.site) FROM devices d{condition}"),
        &self::params(&params),
        |row| row.get(0),
    )?;
    let mut page = params.clone();
    page.push(Value::Int(if filter.limit == 0 { NO_LIMIT } else { filter.limit.min(i64::MAX as u64) as i64 }));
    page.push(Value::Int(filter.offset.min(i64::MAX as u64) as i64));
    let names: Vec<String> = conn.query(
        &format!("SELECT d.site FROM devices d{condition} GROUP BY d.site ORDER BY d.site LIMIT ? OFFSET ?"),
        &self::params(&page),
        |row| row.get(0),
    )?;
    let (Some(first), Some(last)) = (names.first().cloned(), names.last().cloned()) else {
        return Ok(SitePage { total: total.max(0) as u64, sites: Vec::new() });
    };
    let mut sites: BTreeMap<String, SiteSummary> = names
        .into_iter()
        .map(|site| {
            let summary = SiteSummary {
                site: site.clone(),
                devices: 0,
                never_reported: 0,
                stale: 0,
                versions: BTreeMap::new(),
                states: BTreeMap::new(),
                hw_classes: BTreeMap::new(),
            };
            (site, summary)
        })
        .collect();
    let count = |n: Option<i64>| n.unwrap_or(0).max(0) as u64;
    // Sites in the range but outside the filter (a `name_contains` page) are read and
    // dropped below: the range is what the index can seek.
    let rows = conn.query(
        "SELECT d.site, d.hw_class, count(*), CAST(sum(CASE WHEN s.device IS NULL THEN 1 ELSE 0 END) AS BIGINT),
                CAST(sum(CASE WHEN s.updated_at < ?3 THEN 1 ELSE 0 END) AS BIGINT)
         FROM devices d LEFT JOIN device_state s ON s.device = d.id
         WHERE d.site BETWEEN ?1 AND ?2 GROUP BY d.site, d.hw_class",
        &[&first, &last, &stale_before],
        |row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<String>(1)?,
                row.get::<i64>(2)?,
                row.get::<Option<i64>>(3)?,
                row.get::<Option<i64>>(4)?,
            ))
        },
    )?;
    for (site, hw_class, devices, never, stale) in rows {
        if let Some(summary) = sites.get_mut(&site) {
            summary.devices += devices.max(0) as u64;
            summary.never_reported += count(never);
            summary.stale += count(stale);
            *summary.hw_classes.entry(hw_class).or_default() += devices.max(0) as u64;
        }
    }
    let rows = conn.query(
        "SELECT d.site, s.release, s.version, s.state, count(*)
         FROM devices d JOIN device_state s ON s.device = d.id
         WHERE d.site BETWEEN ?1 AND ?2 GROUP BY d.site, s.release, s.version, s.state",
        &[&first, &last],
        |row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<String>(1)?,
                row.get::<String>(2)?,
                row.get::<String>(3)?,
                row.get::<i64>(4)?,
            ))
        },
    )?;
    for (site, release, version, state, n) in rows {
        if let Some(summary) = sites.get_mut(&site) {
            *summary.versions.entry(format!("{release}@{version}")).or_default() += n.max(0) as u64;
            *summary.states.entry(state).or_default() += n.max(0) as u64;
        }
    }
    Ok(SitePage { total: total.max(0) as u64, sites: sites.into_values().collect() })
}

/// The whole fleet in a few numbers: what the dashboard's overview shows first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetOverview {
    /// Enrolled devices.
    pub devices: u64,
    /// Sites with at least one device.
    pub sites: u64,
    /// Devices that never reported.
    pub never_reported: u64,
    /// Devices whose last report is older than the staleness cut (never-reported ones not
    /// included).
    pub stale: u64,
    /// Devices by install state, `never-reported` included.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Devices by `release@version` they run.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Devices by hardware class.
    pub hw_classes: std::collections::BTreeMap<String, u64>,
}

/// The fleet's overview. Each figure is one grouped query on an index (`devices (site)`,
/// `devices (hw_class)`, `device_state (state)`, `(release, version)`, `(updated_at)`):
/// no join and no table scan, so a million devices cost a few index scans.
pub fn overview(conn: &Db, stale_before: i64) -> Result<FleetOverview> {
    use std::collections::BTreeMap;
    let one = |sql: &str| -> Result<u64> { conn.query_one(sql, &[], |r| r.get::<i64>(0)).map(|n| n.max(0) as u64) };
    let grouped = |sql: &str| -> Result<BTreeMap<String, u64>> {
        let rows = conn.query(sql, &[], |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for (key, n) in rows {
            *out.entry(key).or_default() += n.max(0) as u64;
        }
        Ok(out)
    };
    let devices = one("SELECT count(*) FROM devices")?;
    let reported = one("SELECT count(*) FROM device_state")?;
    let sites = one("SELECT count(DISTINCT site) FROM devices")?;
    let stale = conn
        .query_one("SELECT count(*) FROM device_state WHERE updated_at < ?1", &[&stale_before], |r| r.get::<i64>(0))?
        .max(0) as u64;
    let mut states = grouped("SELECT state, count(*) FROM device_state GROUP BY state")?;
    let never_reported = devices.saturating_sub(reported);
    if never_reported > 0 {
        states.insert("never-reported".into(), never_reported);
    }
    let versions = grouped("SELECT release || '@' || version, count(*) FROM device_state GROUP BY release, version")?;
    let hw_classes = grouped("SELECT hw_class, count(*) FROM devices GROUP BY hw_class")?;
    Ok(FleetOverview { devices, sites, never_reported, stale, states, versions, hw_classes })
}

/// Where an event stream starts: the newest status event and rollout transition now, or
/// `None` without a database.
pub fn event_cursor(db: &super::Location) -> Result<Option<(i64, i64)>> {
    let Some(conn) = super::open_read(db)? else { return Ok(None) };
    let status: i64 = conn.query_one("SELECT coalesce(max(id), 0) FROM status_events", &[], |r| r.get(0))?;
    let transitions: i64 = conn.query_one("SELECT coalesce(max(id), 0) FROM rollout_transitions", &[], |r| r.get(0))?;
    Ok(Some((status, transitions)))
}

/// One event for the API's stream: its kind (`status` or `rollout`), the cursor after it
/// (status event id, transition id), and its JSON.
pub type StreamEvent = (&'static str, (i64, i64), serde_json::Value);

/// Status events and rollout transitions after `cursor` (status event id, transition id), at
/// most `limit` of each, oldest first: `(kind, cursor after it, JSON)`.
pub fn events_after(db: &super::Location, cursor: (i64, i64), limit: i64) -> Result<Vec<StreamEvent>> {
    let Some(conn) = super::open_read(db)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut at = cursor;
    let rows = conn.query(
        "SELECT e.id, d.device_id, d.site, e.seq, e.state, e.rollout, e.result, e.error, e.received_at
         FROM status_events e JOIN devices d ON d.id = e.device WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
        &[&cursor.0, &limit],
        |row| {
            Ok((
                row.get::<i64>(0)?,
                serde_json::json!({
                    "device": row.get::<String>(1)?,
                    "site": row.get::<String>(2)?,
                    "seq": row.get::<i64>(3)?,
                    "state": row.get::<String>(4)?,
                    "rollout": row.get::<Option<String>>(5)?,
                    "result": row.get::<Option<String>>(6)?,
                    "error": row.get::<Option<String>>(7)?,
                    "received_at": row.get::<i64>(8)?,
                }),
            ))
        },
    )?;
    for (id, data) in rows {
        at.0 = id;
        out.push(("status", at, data));
    }
    let rows = conn.query(
        "SELECT id, rollout, from_state, to_state, reason, at FROM rollout_transitions
         WHERE id > ?1 ORDER BY id LIMIT ?2",
        &[&cursor.1, &limit],
        |row| {
            Ok((
                row.get::<i64>(0)?,
                serde_json::json!({
                    "rollout": row.get::<String>(1)?,
                    "from": row.get::<String>(2)?,
                    "to": row.get::<String>(3)?,
                    "reason": row.get::<String>(4)?,
                    "at": row.get::<i64>(5)?,
                }),
            ))
        },
    )?;
    for (id, data) in rows {
        at.1 = id;
        out.push(("rollout", at, data));
    }
    Ok(out)
}
