//! Edge nodes as the origin knows them: each mesh peer that forwarded a batch of device
//! status reports, the site it claims, and its last batch. What the dashboard's site view
//! shows under "edge nodes".
//!
//! The site is the peer's identify claim, which nothing verifies (any peer may claim any
//! site); the counts are what this origin received from it. Bounded: past [`MAX_EDGES`]
//! peers, the ones not heard from longest are forgotten, so peers made up in bulk cannot
//! grow the table.

use super::db::{Db, NO_LIMIT};
use anyhow::Result;
use serde::Serialize;

/// Most edge nodes remembered.
pub const MAX_EDGES: i64 = 10_000;
/// Longest peer id or site name stored (a libp2p peer id is about 52 characters; sites
/// are short names).
const MAX_NAME_CHARS: usize = 128;

/// One edge node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeNode {
    /// Its libp2p peer id.
    pub peer: String,
    /// The site it claims (empty if it never said).
    pub site: String,
    /// Its first batch (unix seconds).
    pub first_seen: i64,
    /// Its latest batch (unix seconds).
    pub last_seen: i64,
    /// Batches it forwarded.
    pub batches: u64,
    /// Reports in those batches.
    pub reports: u64,
    /// Of those, how many the origin acknowledged (stored, or refused for good).
    pub stored: u64,
    /// Reports in its latest batch.
    pub last_batch: u64,
    /// Of those, acknowledged.
    pub last_stored: u64,
}

fn bounded(text: &str) -> &str {
    match text.char_indices().nth(MAX_NAME_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Records a batch of `reports` from `peer` (claiming `site`), of which `stored` were
/// acknowledged, at `now`; forgets the longest-silent peers past [`MAX_EDGES`].
pub fn record_batch(conn: &Db, peer: &str, site: &str, reports: u64, stored: u64, now: i64) -> Result<()> {
    record_batch_bounded(conn, peer, site, reports, stored, now, MAX_EDGES)
}

fn record_batch_bounded(
    conn: &Db,
    peer: &str,
    site: &str,
    reports: u64,
    stored: u64,
    now: i64,
    max_edges: i64,
) -> Result<()> {
    let (reports, stored) = (reports.min(i64::MAX as u64) as i64, stored.min(i64::MAX as u64) as i64);
    conn.execute(
        "INSERT INTO edge_nodes (peer, site, first_seen, last_seen, batches, reports, stored, last_batch, last_stored)
         VALUES (?1, ?2, ?3, ?3, 1, ?4, ?5, ?4, ?5)
         ON CONFLICT (peer) DO UPDATE SET
           site = CASE WHEN excluded.site = '' THEN edge_nodes.site ELSE excluded.site END,
           last_seen = excluded.last_seen, batches = edge_nodes.batches + 1,
           reports = edge_nodes.reports + excluded.reports, stored = edge_nodes.stored + excluded.stored,
           last_batch = excluded.last_batch, last_stored = excluded.last_stored",
        &[&bounded(peer), &bounded(site), &now, &reports, &stored],
    )?;
    conn.execute(
        "DELETE FROM edge_nodes WHERE peer IN
           (SELECT peer FROM edge_nodes ORDER BY last_seen DESC, peer LIMIT ?1 OFFSET ?2)",
        &[&NO_LIMIT, &max_edges],
    )?;
    Ok(())
}

/// The edge nodes claiming `site`, by peer id, at most `limit`.
pub fn of_site(conn: &Db, site: &str, limit: u64) -> Result<Vec<EdgeNode>> {
    let count = |v: i64| v.max(0) as u64;
    let sql = "SELECT peer, site, first_seen, last_seen, batches, reports, stored, last_batch, last_stored
               FROM edge_nodes WHERE site = ?1 ORDER BY peer LIMIT ?2";
    conn.query(sql, &[&site, &(limit.min(i64::MAX as u64) as i64)], |row| {
        Ok(EdgeNode {
            peer: row.get(0)?,
            site: row.get(1)?,
            first_seen: row.get(2)?,
            last_seen: row.get(3)?,
            batches: count(row.get(4)?),
            reports: count(row.get(5)?),
            stored: count(row.get(6)?),
            last_batch: count(row.get(7)?),
            last_stored: count(row.get(8)?),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_add_up_per_peer_and_the_table_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::open_write(&super::super::Location::Sqlite(super::super::db_path(dir.path()))).unwrap();
        record_batch(&conn, "peer-a", "plant-1", 10, 10, 100).unwrap();
        record_batch(&conn, "peer-a", "", 5, 3, 160).unwrap();
        record_batch(&conn, "peer-b", "plant-2", 1, 1, 150).unwrap();
        let a = of_site(&conn, "plant-1", 10).unwrap();
        assert_eq!(a.len(), 1);
        let a = &a[0];
        assert_eq!(
            (a.first_seen, a.last_seen, a.batches, a.reports, a.stored, a.last_batch, a.last_stored),
            (100, 160, 2, 15, 13, 5, 3),
            "an empty site claim keeps the known one"
        );
        for i in 0..105 {
            record_batch_bounded(&conn, &format!("made-up-{i:06}"), "plant-x", 1, 1, 1000 + i, 100).unwrap();
        }
        let n: i64 = conn.query_one("SELECT count(*) FROM edge_nodes", &[], |r| r.get(0)).unwrap();
        assert_eq!(n, 100);
        assert!(of_site(&conn, "plant-1", 10).unwrap().is_empty(), "the longest-silent peers went first");
        let long = "x".repeat(1000);
        record_batch(&conn, &long, &long, 1, 1, 1_000_000).unwrap();
        assert_eq!(of_site(&conn, &long[..MAX_NAME_CHARS], 1).unwrap()[0].peer.len(), MAX_NAME_CHARS);
    }
}
