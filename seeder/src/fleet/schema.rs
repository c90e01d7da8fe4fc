//! The fleet database's schema, versioned by `PRAGMA user_version`: migration `i` takes the
//! database from version `i` to `i + 1`, each in its own transaction. Never edit a released
//! migration; append one.

use anyhow::{bail, Result};
use rusqlite::{Connection, TransactionBehavior};

/// Migrations in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[
    // v1
    "
    -- Enrolled devices. The ed25519 public key is the identity a report is signed with;
    -- device_id is the operator's name for it.
    CREATE TABLE devices (
        id          INTEGER PRIMARY KEY,
        public_key  BLOB NOT NULL UNIQUE CHECK (length(public_key) = 32),
        device_id   TEXT NOT NULL UNIQUE,
        site        TEXT NOT NULL,
        hw_class    TEXT NOT NULL,
        enrolled_at INTEGER NOT NULL
    );
    CREATE INDEX devices_by_site ON devices (site);

    -- What each device last reported (the report with the highest seq).
    CREATE TABLE device_state (
        device       INTEGER PRIMARY KEY REFERENCES devices (id),
        last_seq     INTEGER NOT NULL,
        release      TEXT NOT NULL,
        version      TEXT NOT NULL,
        installed_id TEXT NOT NULL,
        state        TEXT NOT NULL,
        rollout      TEXT,
        result       TEXT,
        error        TEXT,
        error_code   INTEGER,
        health       TEXT,
        slot         TEXT,
        updated_at   INTEGER NOT NULL
    );

    -- Every accepted report, append-only. `signed` (the report's exact wire bytes) only when
    -- the ingestor is asked to keep it.
    CREATE TABLE status_events (
        id           INTEGER PRIMARY KEY,
        device       INTEGER NOT NULL REFERENCES devices (id),
        seq          INTEGER NOT NULL,
        rollout      TEXT,
        state        TEXT NOT NULL,
        result       TEXT,
        error        TEXT,
        error_code   INTEGER,
        install_secs INTEGER,
        received_at  INTEGER NOT NULL,
        signed       BLOB
    );
    CREATE INDEX status_events_by_rollout ON status_events (rollout, device) WHERE rollout IS NOT NULL;

    CREATE TABLE rollouts (
        id              TEXT PRIMARY KEY,
        release_name    TEXT NOT NULL,
        release_version TEXT NOT NULL,
        hw_class        TEXT NOT NULL,
        state           TEXT NOT NULL,
        current_wave    INTEGER NOT NULL,
        policy_seq      INTEGER NOT NULL,
        policy          BLOB NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );

    CREATE TABLE rollout_transitions (
        id         INTEGER PRIMARY KEY,
        rollout    TEXT NOT NULL REFERENCES rollouts (id),
        from_state TEXT NOT NULL,
        to_state   TEXT NOT NULL,
        reason     TEXT NOT NULL,
        at         INTEGER NOT NULL
    );
    CREATE INDEX rollout_transitions_by_rollout ON rollout_transitions (rollout, id);
    ",
    // 2: the inventory — what runs in which slot, the anti-rollback floor, the release on its
    // way — and indexes for listing by version and staleness and for a device's history.
    "
    ALTER TABLE device_state ADD COLUMN active_slot TEXT;
    ALTER TABLE device_state ADD COLUMN security_floor INTEGER;
    ALTER TABLE device_state ADD COLUMN target_version TEXT;
    CREATE INDEX device_state_by_version ON device_state (release, version);
    CREATE INDEX device_state_by_updated ON device_state (updated_at);
    CREATE INDEX status_events_by_device ON status_events (device, id);
    ",
    // 3: the publisher's console — each device's last install duration (for the anomaly
    // flags: one value per device, so medians are over devices, not over chatty ones'
    // reports), indexes the dashboard's aggregations and filters read instead of scanning,
    // and the edge nodes that forwarded reports.
    "
    ALTER TABLE device_state ADD COLUMN install_secs INTEGER;
    CREATE INDEX device_state_by_state ON device_state (state);
    CREATE INDEX device_state_by_result ON device_state (result);
    CREATE INDEX devices_by_hw_class ON devices (hw_class);

    -- Edge nodes as the origin sees them: the mesh peer that forwarded status report
    -- batches, the site it claims in identify (not verified: any peer may claim any site),
    -- and its last batch. Bounded (see `edges::MAX_EDGES`).
    CREATE TABLE edge_nodes (
        peer           TEXT PRIMARY KEY,
        site           TEXT NOT NULL,
        first_seen     INTEGER NOT NULL,
        last_seen      INTEGER NOT NULL,
        batches        INTEGER NOT NULL,
        reports        INTEGER NOT NULL,
        stored         INTEGER NOT NULL,
        last_batch     INTEGER NOT NULL,
        last_stored    INTEGER NOT NULL
    );
    CREATE INDEX edge_nodes_by_site ON edge_nodes (site, peer);
    CREATE INDEX edge_nodes_by_last_seen ON edge_nodes (last_seen);
    ",
];

/// The schema version this seeder writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn too_new(found: i64) -> anyhow::Error {
    anyhow::anyhow!("its schema is version {found}, newer than this seeder's {VERSION}; upgrade the seeder")
}

/// Runs every migration the database has not had yet. The version is read inside each
/// migration's write transaction, so two processes opening a fresh database at once do not
/// both run the same migration.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = version(&tx)?;
        if found > VERSION {
            return Err(too_new(found));
        }
        let Some(sql) = MIGRATIONS.get(found as usize) else { return Ok(()) };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
    }
}

/// Fails unless a reader of this version understands the database.
pub fn check_readable(conn: &Connection) -> Result<()> {
    match version(conn)? {
        found if found > VERSION => Err(too_new(found)),
        0 => bail!("it has no schema (not created by `seeder devices enroll`)"),
        _ => Ok(()),
    }
}
