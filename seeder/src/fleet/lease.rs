//! Which `seeder serve` runs the rollout controller: exactly one per fleet database at a
//! time, so two replicas never decide (and sign) the same rollout's next wave.
//!
//! - PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) on a connection
//!   of its own. The server releases it the moment that session ends — the replica was
//!   killed, its host went away (once TCP notices) — so another replica's next try (every
//!   controller tick, one second) takes it: hand-over within a few seconds.
//! - SQLite: an exclusive `flock` on `fleet.leader` next to the database file. One host
//!   only, and the kernel drops the lock with the process.
//!
//! A leader that cannot reach its lock session any more stops leading at once (it may still
//! hold it server-side until the server notices; for that window nobody leads, which is the
//! safe side). Two replicas believing they lead for a moment cannot sign conflicting
//! policies either: signing compares the repository's policy sequence number under the
//! repository lock (`rollout::drive::publish`).

use super::Location;
use std::fs::File;
use std::os::fd::AsRawFd;

/// The advisory lock's key: "otamesh" and a 1, for the rollout controller.
const CONTROLLER_LOCK: i64 = 0x6f74_616d_6573_6802;

/// A claim on leading; [`Lease::hold`] renews or takes it.
pub struct Lease {
    location: Location,
    held: Option<Held>,
}

enum Held {
    Postgres(Box<postgres::Client>),
    /// The descriptor holds the lock for as long as it is open.
    File {
        _locked: File,
    },
}

impl Lease {
    pub fn new(location: Location) -> Lease {
        Lease { location, held: None }
    }

    /// Whether this process leads now: keeps the lock it holds (checking that its session is
    /// alive) or tries to take it. Errors (the server is down) count as not leading.
    pub fn hold(&mut self) -> bool {
        match self.held.take() {
            Some(Held::Postgres(mut client)) => {
                if client.is_valid(std::time::Duration::from_secs(2)).is_ok() {
                    self.held = Some(Held::Postgres(client));
                } else {
                    tracing::warn!("lost the connection that held the rollout controller's lock");
                }
            }
            Some(held @ Held::File { .. }) => self.held = Some(held),
            None => match self.take() {
                Ok(held) => self.held = held,
                Err(e) => tracing::warn!("cannot try for the rollout controller's lock: {e:#}"),
            },
        }
        self.held.is_some()
    }

    fn take(&self) -> anyhow::Result<Option<Held>> {
        match &self.location {
            Location::Postgres(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls)?;
                let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&CONTROLLER_LOCK])?;
                Ok(row.get::<_, bool>(0).then(|| Held::Postgres(Box::new(client))))
            }
            Location::Sqlite(db) => {
                let path = db.with_file_name("fleet.leader");
                let file = File::options().create(true).truncate(false).write(true).open(&path)?;
                // SAFETY: flock on a descriptor this function owns; no memory is involved.
                let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
                Ok(locked.then_some(Held::File { _locked: file }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_per_sqlite_database_and_it_passes_on_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(super::super::db_path(dir.path()));
        let mut first = Lease::new(location.clone());
        let mut second = Lease::new(location.clone());
        assert!(first.hold());
        assert!(!second.hold(), "two leaders");
        assert!(first.hold(), "the leader keeps leading");
        drop(first);
        assert!(second.hold(), "the lease passes on");
    }
}
