//! Fleet state: which devices are enrolled, what each last reported, every status report
//! received, and rollouts with their state transitions. SQLite in `<repo>/fleet.sqlite`,
//! next to the TUF repository (see `DESIGN.md`, "Control plane"), or a PostgreSQL database
//! (`seeder --database postgres://…`) that several `seeder serve` replicas share.
//!
//! - [`open_write`] / [`open_read`]: the one place that opens the database ([`Location`]),
//!   as a [`Db`] (`db`: the same SQL on either engine). SQLite writes use WAL and
//!   `synchronous=FULL`, so a committed transaction survives a kill or a power cut: an
//!   acknowledged report is never lost; PostgreSQL commits durably by default.
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
pub mod db;
pub mod edges;
pub mod enroll;
pub mod ingest;
pub mod inventory;
pub mod lease;
pub mod query;
pub mod rollouts;
mod schema;
#[cfg(test)]
mod tests;

use anyhow::{bail, Context, Result};
pub use db::Db;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The database's file name inside the repository directory.
pub const FILE_NAME: &str = "fleet.sqlite";

/// How long a connection waits for another writer (another process) before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet database's file inside the repository at `repo` (the SQLite default).
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

/// Where the fleet database is: a SQLite file in the repository, or a PostgreSQL server
/// several `seeder serve` replicas share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    /// For messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => db::redact(url),
        }
    }
}

/// The PostgreSQL URL `--database` gave for this process, if any.
static DATABASE: OnceLock<String> = OnceLock::new();

/// Makes every fleet command of this process use the PostgreSQL database at `url` instead
/// of the repository's SQLite file. Fails on anything but a `postgres://` or
/// `postgresql://` URL.
pub fn use_database(url: &str) -> Result<()> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) || url.len() > 4096 {
        bail!("--database must be a postgres:// or postgresql:// URL (the default is the repository's {FILE_NAME})");
    }
    DATABASE.set(url.to_string()).map_err(|_| anyhow::anyhow!("--database was given twice"))
}

/// The fleet database of the repository at `repo`: `--database` if given, else its file.
pub fn location(repo: &Path) -> Location {
    match DATABASE.get() {
        Some(url) => Location::Postgres(url.clone()),
        None => Location::Sqlite(db_path(repo)),
    }
}

/// Opens (creating if missing) the database for writing, its schema migrated to the
/// newest version. SQLite: WAL, `synchronous=FULL`, foreign keys on.
pub fn open_write(location: &Location) -> Result<Db> {
    let db = match location {
        Location::Sqlite(path) => Db::sqlite(open_sqlite_write(path)?),
        Location::Postgres(url) => Db::postgres(url)?,
    };
    schema::migrate(&db).with_context(|| format!("cannot migrate the fleet database {}", location.describe()))?;
    Ok(db)
}

fn open_sqlite_write(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open the fleet database {}", path.display()))?;
    configure(&conn).with_context(|| format!("cannot configure the fleet database {}", path.display()))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "the fleet database {} cannot use WAL (journal mode `{mode}`); put the repository on a local filesystem",
            path.display()
        );
    }
    Ok(conn)
}

/// Opens the database for reading; `None` if it does not exist yet (no device was ever
/// enrolled). Fails if its schema is newer than this seeder knows.
pub fn open_read(location: &Location) -> Result<Option<Db>> {
    let db = match location {
        Location::Sqlite(path) => {
            if !path.exists() {
                return Ok(None);
            }
            let conn =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .with_context(|| format!("cannot open the fleet database {}", path.display()))?;
            configure(&conn)?;
            Db::sqlite(conn)
        }
        Location::Postgres(url) => Db::postgres(url)?,
    };
    let readable = schema::check_readable(&db)
        .with_context(|| format!("cannot read the fleet database {}", location.describe()))?;
    Ok(readable.then_some(db))
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
