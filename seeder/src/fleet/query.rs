//! What readers see: devices with their latest state. Readers use their own read-only
//! connections ([`super::open_read`]); WAL lets them read while the writer commits.

use anyhow::Result;
use rusqlite::{Connection, Row};
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
    /// Slot named by the report.
    pub slot: Option<String>,
    /// When the seeder stored it (unix seconds).
    pub updated_at: i64,
}

const SELECT_DEVICES: &str = "
    SELECT d.device_id, d.public_key, d.site, d.hw_class, d.enrolled_at,
           s.last_seq, s.release, s.version, s.installed_id, s.state, s.rollout, s.result, s.error,
           s.error_code, s.health, s.slot, s.updated_at
    FROM devices d LEFT JOIN device_state s ON s.device = d.id";

fn device_row(row: &Row<'_>) -> rusqlite::Result<DeviceRow> {
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

/// Every enrolled device (of `site`, if given) by device id.
pub fn list_devices(conn: &Connection, site: Option<&str>) -> Result<Vec<DeviceRow>> {
    let rows = match site {
        Some(site) => {
            let mut stmt = conn.prepare(&format!("{SELECT_DEVICES} WHERE d.site = ?1 ORDER BY d.device_id"))?;
            let rows = stmt.query_map([site], device_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        }
        None => {
            let mut stmt = conn.prepare(&format!("{SELECT_DEVICES} ORDER BY d.device_id"))?;
            let rows = stmt.query_map([], device_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        }
    };
    Ok(rows)
}

/// Status events stored for the device with this public key, as `seq`s in order.
pub fn event_seqs(conn: &Connection, public_key: &[u8; 32]) -> Result<Vec<u64>> {
    let mut stmt = conn.prepare(
        "SELECT e.seq FROM status_events e JOIN devices d ON d.id = e.device WHERE d.public_key = ?1 ORDER BY e.seq",
    )?;
    let seqs = stmt.query_map([&public_key[..]], |row| row.get::<_, i64>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(seqs.into_iter().map(|s| s as u64).collect())
}

/// Status events stored in all.
pub fn event_count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT count(*) FROM status_events", [], |row| row.get::<_, i64>(0))? as u64)
}
