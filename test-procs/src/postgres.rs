//! A real, throwaway PostgreSQL server for integration tests, run from the Debian package's
//! binaries (`/usr/lib/postgresql/<version>/bin`), so the fleet code is tested against the
//! server it meets in production rather than a fake.
//!
//! - It listens on a Unix socket only (`listen_addresses=''`): no TCP port is taken, so any
//!   number of tests run servers side by side without choosing free ports, and nothing outside
//!   the machine can reach a server that trusts every local connection.
//! - The cluster is created with the C locale: text compares byte by byte, as in SQLite, so
//!   an `ORDER BY` on text gives the same order on both databases and on every machine.
//! - initdb and postgres refuse to run as root, and CI runs tests as root: then both run as
//!   the `postgres` system user the package creates (through `setpriv`, which execs, so the
//!   process we hold is the postmaster itself and stays in our process group).
//! - Drop asks for a fast shutdown (SIGINT to the postmaster: backends are ended, nothing is
//!   waited for) and waits until every server process has closed its output, then kills the
//!   process group as the last resort; it runs when a test panics too.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{run_to_exit, Options, Proc};

/// Only names the socket file (`.s.PGSQL.5432`): the server listens on no TCP port, and each
/// server has a socket directory of its own, so every server can use the same number.
const PORT: u16 = 5432;
/// `sun_path` holds 108 bytes with the terminating NUL; postgres refuses a longer socket path.
const MAX_SOCKET_PATH_BYTES: usize = 107;
/// initdb writes and fsyncs a whole cluster: slow on a loaded CI machine.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The system user that runs the server when the tests run as root.
const SERVER_USER: &str = "postgres";
const NOT_INSTALLED: &str = "PostgreSQL is not installed (apt-get install postgresql)";

/// A running PostgreSQL server in a directory of its own; stopped, with every process it
/// started, when dropped.
pub struct Postgres {
    bin: PathBuf,
    socket_dir: PathBuf,
    /// The postmaster (declared before `_tmp_socket_dir`: fields drop in order, and the
    /// directory is removed only after the server is gone).
    server: Proc,
    /// Set when the socket is under /tmp because the caller's directory has too long a path.
    _tmp_socket_dir: Option<RemovedOnDrop>,
}

impl Postgres {
    /// Creates a cluster in `dir/pgdata` (the user `postgres`, trust authentication, C
    /// locale, UTF-8) and starts a server on it that listens only on a Unix socket in
    /// `dir/sock` — or in a directory under /tmp, removed on drop, when that path is too long
    /// for a socket. Returns once the server accepts connections. As root, it also lets the
    /// `postgres` user traverse `dir` and its ancestors below the temp dir (tempfile's 0700).
    pub fn start(dir: &Path) -> Result<Postgres> {
        available().map_err(anyhow::Error::msg)?;
        let bin = bin_dir().context(NOT_INSTALLED)?;
        let run_as = if is_root() { Some(server_user()?) } else { None };

        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        let data_dir = dir.join("pgdata");
        let mut socket_dir = dir.join("sock");
        let mut tmp_socket_dir = None;
        if socket_file(&socket_dir).as_os_str().len() > MAX_SOCKET_PATH_BYTES {
            let tmp = RemovedOnDrop::create_unique()?;
            socket_dir = tmp.0.clone();
            tmp_socket_dir = Some(tmp);
        } else {
            make_private_dir(&socket_dir)?;
        }
        make_private_dir(&data_dir)?;
        if let Some(user) = &run_as {
            open_path_for(&dir, user)?;
            for owned in [&data_dir, &socket_dir] {
                std::os::unix::fs::chown(owned, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("cannot give {} to {SERVER_USER}", owned.display()))?;
            }
        }

        let data_path = data_dir.to_str().context("the data directory's path is not UTF-8")?;
        let socket_path = socket_dir.to_str().context("the socket directory's path is not UTF-8")?;
        let initdb_args = [
            "--pgdata",
            data_path,
            "--auth=trust",
            "--username=postgres",
            "--locale=C",
            "--encoding=UTF8",
            // A throwaway cluster: not waiting for its files to reach the disk saves seconds.
            "--no-sync",
        ];
        let (program, args) = command_as(run_as.as_ref(), &bin.join("initdb"), &initdb_args);
        let initdb = run_to_exit(&program, &args, &[("LC_ALL", "C")], INITDB_TIMEOUT)?;
        ensure!(initdb.code == Some(0), "initdb failed ({:?}):\n{}{}", initdb.code, initdb.stdout, initdb.stderr);

        let port = PORT.to_string();
        let server_args = [
            "-D",
            data_path,
            "-k",
            socket_path,
            "-p",
            &port,
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=100",
        ];
        let (program, args) = command_as(run_as.as_ref(), &bin.join("postgres"), &server_args);
        let options = Options {
            env: vec![("LC_ALL".into(), "C".into())],
            own_group: true,
            max_lines: Options::default().max_lines,
        };
        let server = Proc::spawn_with("postgres", &program, &args, &options)?;
        // From here on, an error return drops `postgres`, which stops the server.
        let postgres = Postgres { bin, socket_dir, server, _tmp_socket_dir: tmp_socket_dir };
        postgres.server.wait_line("ready to accept connections", READY_TIMEOUT, |line| {
            line.contains("database system is ready to accept connections").then_some(())
        })?;
        let ready =
            run_to_exit(&postgres.bin.join("pg_isready"), &postgres.client_args("postgres"), &[], CLIENT_TIMEOUT)?;
        ensure!(ready.code == Some(0), "pg_isready ({:?}): {}{}", ready.code, ready.stdout, ready.stderr);
        Ok(postgres)
    }

    /// Creates the database `name` (owned by `postgres`); only `[a-z0-9_]+` names, which need
    /// no quoting anywhere.
    pub fn create_database(&self, name: &str) -> Result<()> {
        ensure!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?} is not [a-z0-9_]+"
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(())
    }

    /// A connection string for `database` that the `postgres` (0.19) and `tokio-postgres`
    /// (0.7) crates, and libpq, accept: `postgresql://postgres@%2Fpath%2Fto%2Fsock:5432/db`.
    /// tokio-postgres' `Config` docs: "Unix socket paths in the host section of the URL should
    /// be percent-encoded, as the path component of the URL specifies the database name";
    /// a host that decodes to a path starting with `/` is the directory holding the socket.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@{}:{PORT}/{}", percent_encode(self.socket_dir.as_os_str()), database)
    }

    /// The directory holding the server's socket (libpq's and psql's `-h`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The number in the socket's name (psql's `-p`); no TCP port is open.
    pub fn port(&self) -> u16 {
        PORT
    }

    /// Runs `sql` in `database` with psql (no psqlrc, stop at the first error); its output
    /// unaligned and without headers.
    /// Runs `sql` in `database` as `postgres` with psql; its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut args = self.client_args(database);
        args.extend(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql].map(String::from));
        let out = run_to_exit(&self.bin.join("psql"), &args, &[], CLIENT_TIMEOUT)?;
        ensure!(out.code == Some(0), "psql -c {sql:?} failed ({:?}): {}", out.code, out.stderr);
        Ok(out.stdout)
    }

    /// `-h <socket dir> -p <port> -U postgres -d <database>`, as psql and pg_isready take them.
    fn client_args(&self, database: &str) -> Vec<String> {
        let host = self.socket_dir.to_string_lossy().into_owned();
        ["-h", &host, "-p", &PORT.to_string(), "-U", "postgres", "-d", database].map(String::from).to_vec()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is postgres' fast shutdown: it ends the backends and exits without waiting
        // for clients (SIGTERM would wait for them). The postmaster is not reaped yet, so its
        // pid cannot have been reused.
        // SAFETY: kill only reads its arguments.
        unsafe { libc::kill(self.server.pid() as libc::pid_t, libc::SIGINT) };
        // Every server process shares the postmaster's stdout and stderr: both pipes close once
        // all of them have exited. No line matches; the wait ends on that close or the timeout.
        let start = Instant::now();
        let _ = self.server.wait_line("the server to exit", SHUTDOWN_TIMEOUT, |_| None::<()>);
        if start.elapsed() >= SHUTDOWN_TIMEOUT {
            eprintln!("postgres did not shut down within {SHUTDOWN_TIMEOUT:?}; killing its process group");
        }
        // SIGKILL to the group (only the exited postmaster remains after a clean shutdown) and
        // reap; Proc's own drop would do the same.
        self.server.kill();
    }
}

/// `Ok` if a PostgreSQL server can be run here; else one line saying why, for a test to print
/// when it skips.
pub fn available() -> Result<(), String> {
    let bin = bin_dir().ok_or(NOT_INSTALLED)?;
    for client in ["psql", "pg_isready"] {
        if !bin.join(client).is_file() {
            return Err(format!("{} is missing (apt-get install postgresql-client)", bin.join(client).display()));
        }
    }
    if is_root() {
        server_user().map_err(|e| format!("running as root, so the server must run as `{SERVER_USER}`: {e:#}"))?;
        if !in_path("setpriv") {
            return Err("running as root, and setpriv is missing to run the server as postgres (util-linux)".into());
        }
    }
    Ok(())
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has initdb and postgres.
fn bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> =
                entry.file_name().to_str()?.split('.').map(|part| part.parse().ok()).collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

struct User {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// The `postgres` user's ids (getpwnam_r: tests look it up from several threads at once).
fn server_user() -> Result<User> {
    let name = CString::new(SERVER_USER)?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r writes it and its strings into `buf`, whose
    // length it is given, and sets `found` to null or to `&mut entry`.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let error = unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if error != 0 {
        bail!("cannot look up user {SERVER_USER}: {}", std::io::Error::from_raw_os_error(error));
    }
    if found.is_null() {
        bail!("there is no user {SERVER_USER}");
    }
    Ok(User { uid: entry.pw_uid, gid: entry.pw_gid })
}

/// `program args`, prefixed with `setpriv` to run as `user` when there is one. setpriv execs
/// the program (runuser and su fork and wait), so the child's pid is the program's own.
fn command_as(user: Option<&User>, program: &Path, args: &[&str]) -> (PathBuf, Vec<String>) {
    let args = args.iter().map(|arg| arg.to_string());
    match user {
        None => (program.to_path_buf(), args.collect()),
        Some(user) => {
            let switch = [
                format!("--reuid={}", user.uid),
                format!("--regid={}", user.gid),
                "--clear-groups".into(),
                "--".into(),
                program.to_string_lossy().into_owned(),
            ];
            (PathBuf::from("setpriv"), switch.into_iter().chain(args).collect())
        }
    }
}

/// Lets `user` traverse (not list) `dir` and its ancestors, which tempfile makes private to
/// us (0700): only `dir` itself and directories below the system temp dir are changed; any
/// other closed ancestor is an error, not opened.
fn open_path_for(dir: &Path, user: &User) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let temp = std::env::temp_dir().canonicalize().unwrap_or_else(|_| std::env::temp_dir());
    for ancestor in dir.ancestors() {
        let meta = std::fs::metadata(ancestor).with_context(|| format!("cannot stat {}", ancestor.display()))?;
        let mode = meta.mode();
        let traversable = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if traversable {
            continue;
        }
        ensure!(
            ancestor == dir || (ancestor.starts_with(&temp) && ancestor != temp),
            "{SERVER_USER} cannot reach {} through {}: put the directory under {}",
            dir.display(),
            ancestor.display(),
            temp.display()
        );
        std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o001))
            .with_context(|| format!("cannot open {} for {SERVER_USER}", ancestor.display()))?;
    }
    Ok(())
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn socket_file(socket_dir: &Path) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.{PORT}"))
}

/// Creates `path` (not its parents) readable only by its owner, as postgres wants its data
/// directory; an error if it exists, so two servers never share one.
fn make_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// A directory of our own under /tmp (short enough for a socket path), removed on drop.
struct RemovedOnDrop(PathBuf);

impl RemovedOnDrop {
    fn create_unique() -> Result<RemovedOnDrop> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        loop {
            let path =
                PathBuf::from(format!("/tmp/pg-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            match make_private_dir(&path) {
                Ok(()) => return Ok(RemovedOnDrop(path)),
                // Left behind by an earlier process with our pid that was killed: try the next.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Percent-encodes every byte but URL-unreserved ones (`/` too: this is a URL's host part).
fn percent_encode(s: &OsStr) -> String {
    s.as_bytes()
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system temp dir made like tempfile makes one (mode 0700, so the
    /// root path must open it for the server user); removed on drop, also after a panic.
    fn test_dir(name: &str) -> RemovedOnDrop {
        let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
        make_private_dir(&path).unwrap();
        RemovedOnDrop(path)
    }

    /// Pids of live processes whose command line names `data_dir` (the postmaster) or whose
    /// working directory is it (every server process: postgres works in its data directory).
    fn processes_of(data_dir: &Path) -> Vec<String> {
        let needle = data_dir.as_os_str().as_bytes();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let in_cmdline = cmdline.windows(needle.len()).any(|w| w == needle);
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok();
            if in_cmdline || cwd.as_deref() == Some(data_dir) {
                found.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            }
        }
        found
    }

    #[test]
    fn a_server_answers_in_a_database_of_its_own_and_is_gone_after_drop() {
        if let Err(why) = available() {
            eprintln!("skipping: {why}");
            return;
        }
        let dir = test_dir("test-procs-postgres");
        let postgres = Postgres::start(&dir.0).unwrap();
        let data_dir = dir.0.canonicalize().unwrap().join("pgdata");
        assert!(postgres.url("fleet").ends_with(":5432/fleet"), "{}", postgres.url("fleet"));

        postgres.create_database("fleet_1").unwrap();
        assert!(postgres.create_database("Fleet-1").is_err());
        assert_eq!(postgres.psql("fleet_1", "select 1").unwrap().trim(), "1");
        assert_eq!(postgres.psql("fleet_1", "select current_database()").unwrap().trim(), "fleet_1");
        // The C locale: byte order, upper case before `_` before lower case.
        let sorted = "select string_agg(x, ',' order by x) from (values ('a'), ('_'), ('B'), ('é')) v(x)";
        assert_eq!(postgres.psql("fleet_1", sorted).unwrap().trim(), "B,_,a,é");
        assert_eq!(postgres.psql("fleet_1", "show listen_addresses").unwrap().trim(), "");
        // libpq takes the URL too (the Rust client's form is checked by its own parser).
        let by_url = run_to_exit(
            &postgres.bin.join("psql"),
            &[
                "-X".into(),
                "-A".into(),
                "-t".into(),
                "-d".into(),
                postgres.url("fleet_1"),
                "-c".into(),
                "select 2".into(),
            ],
            &[],
            CLIENT_TIMEOUT,
        )
        .unwrap();
        assert_eq!((by_url.code, by_url.stdout.trim()), (Some(0), "2"), "{}", by_url.stderr);
        assert!(!processes_of(&data_dir).is_empty(), "the check below would see nothing");

        drop(postgres);
        assert_eq!(processes_of(&data_dir), Vec::<String>::new());
    }

    #[test]
    fn a_long_directory_gets_its_socket_under_tmp() {
        if let Err(why) = available() {
            eprintln!("skipping: {why}");
            return;
        }
        let dir = test_dir("test-procs-postgres");
        let deep = dir.0.join("a-directory-name-long-enough-that-a-unix-socket-path-in-it-would-not-fit-in-sun_path");
        let postgres = Postgres::start(&deep).unwrap();
        let socket_dir = postgres.socket_dir().to_path_buf();
        assert!(socket_dir.starts_with("/tmp"), "{}", socket_dir.display());
        assert!(socket_file(&socket_dir).exists());
        postgres.create_database("fleet").unwrap();
        drop(postgres);
        assert!(!socket_dir.exists(), "{} is left behind", socket_dir.display());
        assert_eq!(processes_of(&deep.canonicalize().unwrap().join("pgdata")), Vec::<String>::new());
    }
}
