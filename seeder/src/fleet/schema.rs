//! The fleet database's schema, versioned (SQLite: `PRAGMA user_version`; PostgreSQL: the
//! `fleet_schema` table): migration `i` takes the database from version `i` to `i + 1`,
//! each in its own transaction; each engine has its own DDL for the same migrations. Never edit a released
//! migration; append one.

use super::db::Db;
use anyhow::{bail, Result};

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

/// The same schema in PostgreSQL's DDL, migration for migration: integers are BIGINT (the
/// fleet code binds i64), ids are identity columns, blobs BYTEA, and the text the API orders
/// and pages by is collated "C" so PostgreSQL orders it byte by byte as SQLite does. `rowid`
/// on rollouts stands in for SQLite's implicit one (the order rollouts were created in), and
/// `instr` is defined so text search is the same SQL on both.
const POSTGRES_MIGRATIONS: &[&str] = &[
    // v1
    r#"
    CREATE FUNCTION instr(text, text) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT strpos($1, $2)';
    CREATE TABLE devices (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        public_key  BYTEA NOT NULL UNIQUE CHECK (length(public_key) = 32),
        device_id   TEXT COLLATE "C" NOT NULL UNIQUE,
        site        TEXT COLLATE "C" NOT NULL,
        hw_class    TEXT COLLATE "C" NOT NULL,
        enrolled_at BIGINT NOT NULL
    );
    CREATE INDEX devices_by_site ON devices (site);
    CREATE TABLE device_state (
        device       BIGINT PRIMARY KEY REFERENCES devices (id),
        last_seq     BIGINT NOT NULL,
        release      TEXT COLLATE "C" NOT NULL,
        version      TEXT COLLATE "C" NOT NULL,
        installed_id TEXT NOT NULL,
        state        TEXT COLLATE "C" NOT NULL,
        rollout      TEXT COLLATE "C",
        result       TEXT COLLATE "C",
        error        TEXT,
        error_code   BIGINT,
        health       TEXT,
        slot         TEXT,
        updated_at   BIGINT NOT NULL
    );
    CREATE TABLE status_events (
        id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        device       BIGINT NOT NULL REFERENCES devices (id),
        seq          BIGINT NOT NULL,
        rollout      TEXT COLLATE "C",
        state        TEXT NOT NULL,
        result       TEXT,
        error        TEXT,
        error_code   BIGINT,
        install_secs BIGINT,
        received_at  BIGINT NOT NULL,
        signed       BYTEA
    );
    CREATE INDEX status_events_by_rollout ON status_events (rollout, device) WHERE rollout IS NOT NULL;
    CREATE TABLE rollouts (
        id              TEXT COLLATE "C" PRIMARY KEY,
        release_name    TEXT COLLATE "C" NOT NULL,
        release_version TEXT NOT NULL,
        hw_class        TEXT NOT NULL,
        state           TEXT NOT NULL,
        current_wave    BIGINT NOT NULL,
        policy_seq      BIGINT NOT NULL,
        policy          BYTEA NOT NULL,
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        rowid           BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE TABLE rollout_transitions (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        rollout    TEXT COLLATE "C" NOT NULL REFERENCES rollouts (id),
        from_state TEXT NOT NULL,
        to_state   TEXT NOT NULL,
        reason     TEXT NOT NULL,
        at         BIGINT NOT NULL
    );
    CREATE INDEX rollout_transitions_by_rollout ON rollout_transitions (rollout, id);
    "#,
    // v2
    "
    ALTER TABLE device_state ADD COLUMN active_slot TEXT;
    ALTER TABLE device_state ADD COLUMN security_floor BIGINT;
    ALTER TABLE device_state ADD COLUMN target_version TEXT;
    CREATE INDEX device_state_by_version ON device_state (release, version);
    CREATE INDEX device_state_by_updated ON device_state (updated_at);
    CREATE INDEX status_events_by_device ON status_events (device, id);
    ",
    // v3
    r#"
    ALTER TABLE device_state ADD COLUMN install_secs BIGINT;
    CREATE INDEX device_state_by_state ON device_state (state);
    CREATE INDEX device_state_by_result ON device_state (result);
    CREATE INDEX devices_by_hw_class ON devices (hw_class);
    CREATE TABLE edge_nodes (
        peer           TEXT COLLATE "C" PRIMARY KEY,
        site           TEXT COLLATE "C" NOT NULL,
        first_seen     BIGINT NOT NULL,
        last_seen      BIGINT NOT NULL,
        batches        BIGINT NOT NULL,
        reports        BIGINT NOT NULL,
        stored         BIGINT NOT NULL,
        last_batch     BIGINT NOT NULL,
        last_stored    BIGINT NOT NULL
    );
    CREATE INDEX edge_nodes_by_site ON edge_nodes (site, peer);
    CREATE INDEX edge_nodes_by_last_seen ON edge_nodes (last_seen);
    "#,
];

/// The schema version this seeder writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;
const _: () = assert!(MIGRATIONS.len() == POSTGRES_MIGRATIONS.len(), "a migration for each engine");

/// Serializes migrations between seeders on one PostgreSQL database (an advisory lock held
/// for the migration's transaction).
const POSTGRES_MIGRATION_LOCK: i64 = 0x6f74_616d_6573_6801;

/// The schema version: SQLite's `user_version`; on PostgreSQL the row of `fleet_schema`
/// (0 before the first migration).
fn version(db: &Db) -> Result<i64> {
    if !db.is_postgres() {
        return db.query_one("PRAGMA user_version", &[], |row| row.get(0));
    }
    let exists = db.query_one("SELECT CAST(count(*) AS BIGINT) FROM pg_tables WHERE tablename = 'fleet_schema' AND schemaname = current_schema()", &[], |row| row.get::<i64>(0))?;
    if exists == 0 {
        return Ok(0);
    }
    Ok(db.query_opt("SELECT version FROM fleet_schema", &[], |row| row.get(0))?.unwrap_or(0))
}

fn set_version(db: &Db, version: i64) -> Result<()> {
    if db.is_postgres() {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS fleet_schema (version BIGINT NOT NULL); DELETE FROM fleet_schema",
        )?;
        db.execute("INSERT INTO fleet_schema (version) VALUES (?1)", &[&version])?;
    } else {
        db.execute_batch(&format!("PRAGMA user_version = {version}"))?;
    }
    Ok(())
}

fn too_new(found: i64) -> anyhow::Error {
    anyhow::anyhow!("its schema is version {found}, newer than this seeder's {VERSION}; upgrade the seeder")
}

/// Runs every migration the database has not had yet, each in its own write transaction.
/// The version is read inside that transaction (under PostgreSQL, under an advisory lock),
/// so two seeders opening a fresh database at once do not both run the same migration.
pub fn migrate(db: &Db) -> Result<()> {
    let migrations = if db.is_postgres() { POSTGRES_MIGRATIONS } else { MIGRATIONS };
    loop {
        let done = db.transaction(|db| {
            if db.is_postgres() {
                db.execute("SELECT pg_advisory_xact_lock(?1)", &[&POSTGRES_MIGRATION_LOCK])?;
            }
            let found = version(db)?;
            if found > VERSION {
                return Err(too_new(found));
            }
            let Some(sql) = migrations.get(found as usize) else { return Ok(true) };
            db.execute_batch(sql)?;
            set_version(db, found + 1)?;
            Ok(false)
        })?;
        if done {
            return Ok(());
        }
    }
}

/// Fails unless a reader of this version understands the database; `Ok(false)` if it has
/// no schema yet (PostgreSQL before the first `seeder devices enroll`).
pub fn check_readable(db: &Db) -> Result<bool> {
    match version(db)? {
        found if found > VERSION => Err(too_new(found)),
        0 if db.is_postgres() => Ok(false),
        0 => bail!("it has no schema (not created by `seeder devices enroll`)"),
        _ => Ok(true),
    }
}
