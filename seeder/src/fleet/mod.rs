//! Fleet state: which devices are enrolled, what each last reported, every status report
//! received, and rollouts with their state transitions. SQLite in `<repo>/fleet.sqlite`,
//! next to the TUF repository (see `DESIGN.md`, "Control plane").
//!
//! - [`open_write`] / [`open_read`]: the one place that opens the database. Writes use WAL
//!   and `synchronous=FULL`, so a committed transaction survives a kill or a power cut: an
//!   acknowledged report is never lost.
//! - `schema`: the versioned schema (`PRAGMA user_version`), migrated forward on open.
//! - [`enroll`]: devices enter the fleet (one transaction, all or nothing).
//! - [`ingest`]: signed status reports from untrusted edge nodes: verified again on a pool
//!   of threads, then stored by the one writer thread in batched transactions and
//!   acknowledged only once committed. The writer also runs other writes
//!   ([`ingest::Ingestor::write`]), so within a seeder there is one writer.
//! - [`query`]: what readers see (each reader has its own read-only connection): devices
//!   filtered and paged in SQL, a device and its history; [`inventory`] marks stale ones.
//! - [`anomaly`]: sites and hardware classes whose failure rate or install duration stands
//!   out against the fleet (the statistics are in its doc); [`edges`]: the edge nodes that
//!   forwarded reports.
//! - [`rollouts`]: rollouts and their transitions, kept generic (strings and blobs); the
//!   policy itself is `protocol::rollout`'s.
//!
//! Another process (an operator's `seeder devices enroll` while `seeder serve` runs) writes
//! through its own connection; SQLite serializes it with the serve's writer
//! ([`BUSY_TIMEOUT`]).

pub mod anomaly;
pub mod bench;
pub mod edges;
pub mod enroll;
pub mod ingest;
pub mod inventory;
pub mod query;
pub mod rollouts;
mod schema;
#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The database's file name inside the repository directory.
pub const FILE_NAME: &str = "fleet.sqlite";

/// How long a connection waits for another writer (another process) before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet database of the repository at `repo`.
pub fn db_path(repo: &Path) -> PathBuf {
    repo.join(FILE_NAME)
}

/// Fails unless `repo` is a seeder repository, so a mistyped `--repo` does not create a
/// database in the wrong place or list an empty fleet.
pub fn check_repo(repo: &Path) -> Result<()> {
    if !repo.join("metadata").is_dir() {
        bail!("{} is not a seeder repository (no metadata/); pass the directory `seeder init` created", repo.display());
    }
    Ok(())
}

/// Opens (creating if missing) the database for writing: WAL, `synchronous=FULL`, foreign
/// keys on, transactions that take the write lock when they begin, schema migrated to the
/// newest version.
pub fn open_write(path: &Path) -> Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("cannot open the fleet database {}", path.display()))?;
    configure(&conn).with_context(|| format!("cannot configure the fleet database {}", path.display()))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "the fleet database {} cannot use WAL (journal mode `{mode}`); put the repository on a local filesystem",
            path.display()
        );
    }
    // A deferred transaction that reads and then writes fails at once with SQLITE_BUSY
    // (no busy wait) when another process committed in between — `seeder serve` ingesting
    // while `seeder devices enroll` runs. Taking the write lock at BEGIN makes every writer
    // queue on the busy timeout instead.
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    schema::migrate(&mut conn).with_context(|| format!("cannot migrate the fleet database {}", path.display()))?;
    Ok(conn)
}

/// Opens the database read-only; `None` if it does not exist yet (no device was ever
/// enrolled). Fails if its schema is newer than this seeder knows.
pub fn open_read(path: &Path) -> Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open the fleet database {}", path.display()))?;
    configure(&conn)?;
    schema::check_readable(&conn).with_context(|| format!("cannot read the fleet database {}", path.display()))?;
    Ok(Some(conn))
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // FULL: a WAL commit is fsynced before it returns, so an acknowledged write survives.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Removes a database file this command created and its WAL side files, so a failed
/// command leaves nothing behind.
pub fn remove_created(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}
