//! Ingest of signed status reports that edge nodes forward. Edge nodes are untrusted, so
//! every report is verified again here (`protocol::status::verify`).
//!
//! ```text
//! submit ──bounded──▶ verify pool (N threads) ──bounded──▶ writer thread ──▶ ack
//!                      bad signature, malformed: acked      one transaction per batch
//!                      at once                              (≤ max_batch or batch_wait)
//! ```
//!
//! Reports keep the order they were submitted in: each is numbered at [`Ingestor::submit`],
//! and the writer takes them in that order whichever verify thread finished first (a
//! reorder buffer, bounded by the two queues), so a device's report 2 is never stored
//! before its report 1 and then 1 refused as a replay.
//!
//! The writer owns the only write connection. It takes up to [`IngestConfig::max_batch`]
//! jobs (waiting at most [`IngestConfig::batch_wait`] for more), decides each report in the
//! transaction — unenrolled key: dropped; `seq` not above the device's last: a replay,
//! dropped; otherwise the event is inserted and the device's latest state upserted —
//! commits, and only then acknowledges each job. An [`Outcome::Accepted`] therefore means
//! the report is durable (WAL, `synchronous=FULL`). Both queues are bounded, so a flood
//! blocks [`Ingestor::submit`] rather than growing memory.
//!
//! Cost (`scripts/bench-ingest`, release, 1 M reports from 10,000 devices, 2 cores): about
//! 75 µs of CPU per report against 49 µs for the bare strict ed25519 verification alone —
//! the rest is the JSON (`verify` parses envelope and report; this figure was measured when
//! the rollout fields were parsed a second time, since dropped) and about 10 µs in the writer. So
//! two cores to itself ingest about 25,000 reports/s (23,000 measured on a 1 M run when the
//! machine was quiet). Keeping the signed bytes costs about 7 µs more a report and nine
//! times the disk (~800 MiB per million reports instead of ~80), hence off by default.

use super::db::{params, Param, Value};
use super::{Db, Location};
use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::status::{self, ReportError};

/// How an [`Ingestor`] runs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Threads verifying signatures (default: the machine's cores).
    pub verify_threads: usize,
    /// Most jobs in one transaction.
    pub max_batch: usize,
    /// Longest wait for more jobs once a batch has one (latency of a lone report).
    pub batch_wait: Duration,
    /// Capacity of each of the two queues (submitted, verified).
    pub queue: usize,
    /// Keep each accepted report's signed bytes in `status_events.signed` (about 600 bytes
    /// a report: evidence for an audit, at a cost in disk and throughput).
    pub keep_signed: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            verify_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            max_batch: 1000,
            batch_wait: Duration::from_millis(2),
            queue: 4096,
            keep_signed: false,
        }
    }
}

/// What became of one report. Every report submitted gets exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Stored (committed to disk).
    Accepted,
    /// Its key is not enrolled; dropped.
    Unenrolled,
    /// Its `seq` is not above the last one stored for the device; dropped.
    Replayed {
        /// The device's last stored `seq`.
        last_seq: u64,
    },
    /// The key is invalid or the signature does not verify; dropped.
    BadSignature,
    /// Not a report (shape, size, a field out of range); dropped.
    Malformed,
    /// The database refused the batch (disk full, I/O error): not stored, send it again.
    NotStored,
}

/// Reports per [`Outcome`] since the ingestor started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestCounts {
    /// Stored.
    pub accepted: u64,
    /// From keys that are not enrolled.
    pub unenrolled: u64,
    /// Replays.
    pub replayed: u64,
    /// Bad keys or signatures.
    pub bad_signature: u64,
    /// Malformed.
    pub malformed: u64,
    /// Not stored because the database failed.
    pub not_stored: u64,
}

impl IngestCounts {
    #[cfg(test)]
    /// Every report counted.
    pub fn total(&self) -> u64 {
        self.accepted + self.unenrolled + self.replayed + self.bad_signature + self.malformed + self.not_stored
    }
}

#[derive(Default)]
struct Counters([AtomicU64; 6]);

impl Counters {
    fn add(&self, outcome: Outcome) {
        let i = match outcome {
            Outcome::Accepted => 0,
            Outcome::Unenrolled => 1,
            Outcome::Replayed { .. } => 2,
            Outcome::BadSignature => 3,
            Outcome::Malformed => 4,
            Outcome::NotStored => 5,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> IngestCounts {
        let v = |i: usize| self.0[i].load(Ordering::Relaxed);
        IngestCounts {
            accepted: v(0),
            unenrolled: v(1),
            replayed: v(2),
            bad_signature: v(3),
            malformed: v(4),
            not_stored: v(5),
        }
    }
}

/// Called once with a report's outcome (after the commit, for reports that reached the
/// writer). Runs on an ingest thread: keep it short (send on a channel, bump a counter), and
/// never submit from it (the queue it would wait on is the one its thread drains).
pub type Ack = Box<dyn FnOnce(Outcome) + Send>;

/// A write run by the writer thread inside its batch transaction (under a savepoint):
/// `run` says whether it succeeded; `done` is told after the commit whether the batch
/// committed (or, if `run` never ran, why).
struct Exec {
    run: Box<dyn FnOnce(&Db) -> bool + Send>,
    done: Done,
}

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Submission {
    number: u64,
    signed: Vec<u8>,
    ack: Ack,
}

enum Job {
    /// Submission `number` verified.
    Report(u64, Box<Checked>, Ack),
    /// Submission `number` was dropped (and acknowledged) by a verify thread.
    Dropped(u64),
    Exec(Exec),
}

/// The ingest pipeline: verify pool plus the one writer. Dropping it (or [`shutdown`])
/// finishes every submitted report first.
///
/// [`shutdown`]: Ingestor::shutdown
pub struct Ingestor {
    /// The input and the next submission number, sent together so numbers arrive in order.
    input: std::sync::Mutex<Option<(Sender<Submission>, u64)>>,
    to_writer: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    counts: Arc<Counters>,
}

/// The ingestor was shut down, or its writer thread ended (see the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fleet database writer has stopped")
    }
}

impl std::error::Error for Closed {}

impl Ingestor {
    /// Opens the database at `db` for writing (creating and migrating it) and starts the
    /// threads.
    pub fn start(db: &Location, config: IngestConfig) -> Result<Ingestor> {
        let conn = super::open_write(db)?;
        let location = db.clone();
        let counts = Arc::new(Counters::default());
        let (input, submissions) = bounded::<Submission>(config.queue.max(1));
        let (to_writer, jobs) = bounded::<Job>(config.queue.max(1));
        let mut threads = Vec::new();
        {
            let counts = Arc::clone(&counts);
            let config = config.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("fleet-writer".into())
                    .spawn(move || writer_loop(conn, &location, &jobs, &config, &counts))
                    .context("cannot start the fleet writer thread")?,
            );
        }
        for i in 0..config.verify_threads.max(1) {
            let submissions = submissions.clone();
            let to_writer = to_writer.clone();
            let counts = Arc::clone(&counts);
            let keep_signed = config.keep_signed;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fleet-verify-{i}"))
                    .spawn(move || verify_loop(&submissions, &to_writer, &counts, keep_signed))
                    .context("cannot start a report verification thread")?,
            );
        }
        Ok(Ingestor { input: std::sync::Mutex::new(Some((input, 0))), to_writer: Some(to_writer), threads, counts })
    }

    /// Queues a signed report (its wire bytes, as an edge node forwarded them); `ack` is
    /// called with its outcome. Blocks while the queue is full.
    pub fn submit(&self, signed: Vec<u8>, ack: impl FnOnce(Outcome) + Send + 'static) -> Result<(), Closed> {
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        let (sender, next) = input.as_mut().ok_or(Closed)?;
        sender.send(Submission { number: *next, signed, ack: Box::new(ack) }).map_err(|_| Closed)?;
        *next += 1;
        Ok(())
    }

    #[cfg(test)]
    /// Submits a report and waits for its outcome.
    pub fn ingest(&self, signed: Vec<u8>) -> Outcome {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self
            .submit(signed, move |outcome| {
                let _ = tx.send(outcome);
            })
            .is_err()
        {
            return Outcome::NotStored;
        }
        rx.recv().unwrap_or(Outcome::NotStored)
    }

    /// Runs `write` on the writer thread, inside its current batch transaction (under a
    /// savepoint: if `write` fails, only its changes are undone), and returns its result
    /// once the batch committed. For the rollout controller: `rollouts::create` and
    /// `rollouts::transition` take the `&Db` given here.
    pub fn write<T: Send + 'static>(&self, write: impl FnOnce(&Db) -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T>>(1);
        let slot = Arc::new(std::sync::Mutex::new(None::<Result<T>>));
        let written = Arc::clone(&slot);
        let exec = Exec {
            run: Box::new(move |conn| {
                let result = write(conn);
                let ok = result.is_ok();
                *written.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                ok
            }),
            done: Box::new(move |commit| {
                let result = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                let _ = tx.send(match (commit, result) {
                    (Ok(()), Some(result)) => result,
                    (Ok(()), None) => Err(anyhow!("the write did not run")),
                    (Err(e), _) => Err(anyhow!("the fleet database did not commit: {e}")),
                });
            }),
        };
        self.to_writer.as_ref().ok_or(Closed)?.send(Job::Exec(exec)).map_err(|_| Closed)?;
        rx.recv().map_err(|_| anyhow!(Closed))?
    }

    /// Reports counted so far (acknowledged ones).
    pub fn counts(&self) -> IngestCounts {
        self.counts.snapshot()
    }

    /// Finishes every submitted report, stops the threads and returns the final counts.
    pub fn shutdown(mut self) -> IngestCounts {
        self.stop();
        self.counts.snapshot()
    }

    fn stop(&mut self) {
        // Closing the input ends the verify threads once it is drained; their senders to the
        // writer go with them, and ours here, so the writer ends after the last batch.
        *self.input.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.to_writer = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Ingestor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A report that verified, reduced to what is stored.
struct Checked {
    device: [u8; 32],
    seq: i64,
    release: String,
    version: String,
    installed_id: String,
    state: String,
    error: Option<String>,
    health: Option<String>,
    active_slot: String,
    security_floor: i64,
    target_version: Option<String>,
    rollout: Option<String>,
    result: Option<&'static str>,
    error_code: Option<u16>,
    install_secs: Option<i64>,
    slot: Option<String>,
    signed: Option<Vec<u8>>,
}

/// Verifies a report and extracts what is stored, or says why it is dropped.
fn check(bytes: &[u8], keep_signed: bool) -> Result<Checked, Outcome> {
    let verified = status::verify(bytes).map_err(|e| match e {
        ReportError::BadKey | ReportError::BadSignature => Outcome::BadSignature,
        _ => Outcome::Malformed,
    })?;
    let report = verified.report;
    // SQLite integers are i64: a seq, floor or duration past that is no real device's.
    let seq = i64::try_from(report.seq).map_err(|_| Outcome::Malformed)?;
    let security_floor = i64::try_from(report.security_floor).map_err(|_| Outcome::Malformed)?;
    let install_secs = report.install_secs.map(i64::try_from).transpose().map_err(|_| Outcome::Malformed)?;
    Ok(Checked {
        device: verified.device,
        seq,
        release: report.release,
        version: report.version,
        installed_id: report.installed_id,
        state: report.state,
        error: report.error,
        health: report.health,
        active_slot: report.active_slot,
        security_floor,
        target_version: report.target.map(|t| t.version),
        rollout: report.rollout,
        result: report.result.map(|r| r.name()),
        error_code: report.error_code,
        install_secs,
        slot: report.slot,
        signed: keep_signed.then(|| bytes.to_vec()),
    })
}

fn verify_loop(submissions: &Receiver<Submission>, to_writer: &Sender<Job>, counts: &Counters, keep_signed: bool) {
    for Submission { number, signed, ack } in submissions {
        match check(&signed, keep_signed) {
            Ok(checked) => {
                if let Err(crossbeam_channel::SendError(Job::Report(_, _, ack))) =
                    to_writer.send(Job::Report(number, Box::new(checked), ack))
                {
                    counts.add(Outcome::NotStored);
                    ack(Outcome::NotStored);
                }
            }
            Err(outcome) => {
                counts.add(outcome);
                ack(outcome);
                // The writer waits for every number in turn.
                let _ = to_writer.send(Job::Dropped(number));
            }
        }
    }
}

fn writer_loop(mut db: Db, location: &Location, jobs: &Receiver<Job>, config: &IngestConfig, counts: &Counters) {
    let max_batch = config.max_batch.max(1);
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut order = Reorder::default();
    loop {
        // Block until something is ready to write, then gather more until the batch is full
        // or `batch_wait` has passed.
        while batch.is_empty() {
            match jobs.recv() {
                Ok(job) => order.push(job, &mut batch),
                Err(_) => {
                    order.abandon(counts);
                    return;
                }
            }
        }
        let deadline = Instant::now() + config.batch_wait;
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => order.push(job, &mut batch),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match jobs.recv_deadline(deadline) {
                    Ok(job) => order.push(job, &mut batch),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            }
        }
        let now = crate::time::now_unix();
        let mut decided = Vec::with_capacity(batch.len());
        let committed = write_batch(&db, &mut batch, &mut decided, now).map_err(|e| {
            tracing::error!("fleet database: a batch of {} writes was not stored: {e:#}", decided.len() + batch.len());
            format!("{e:#}")
        });
        if db.is_broken() {
            // The server restarted or dropped the session: connect again for the next batch
            // (the failed one's reports are refused, and their senders retry).
            match super::open_write(location) {
                Ok(fresh) => db = fresh,
                Err(e) => tracing::error!("fleet database: cannot connect again: {e:#}"),
            }
        }
        // Acknowledge only now: an ack after the commit returned means the data is on disk.
        for decision in decided {
            match decision {
                Decided::Report(outcome, ack) => {
                    let outcome = if committed.is_ok() { outcome } else { Outcome::NotStored };
                    counts.add(outcome);
                    ack(outcome);
                }
                Decided::Exec(done) => done(committed.clone()),
            }
        }
        // Jobs the failed batch never reached.
        for job in batch.drain(..) {
            match job {
                Job::Report(_, _, ack) => {
                    counts.add(Outcome::NotStored);
                    ack(Outcome::NotStored);
                }
                Job::Dropped(_) => {}
                Job::Exec(exec) => (exec.done)(Err("the batch it was in failed before it ran".into())),
            }
        }
    }
}

/// Puts reports back in submission order: a report waits here until every lower number has
/// arrived. At most the two queues' capacity plus the verify threads are ever held.
#[derive(Default)]
struct Reorder {
    next: u64,
    waiting: std::collections::BTreeMap<u64, Job>,
}

impl Reorder {
    /// Takes `job` and moves every job now in order to `ready` (writes run at once).
    fn push(&mut self, job: Job, ready: &mut Vec<Job>) {
        let number = match &job {
            Job::Report(n, ..) | Job::Dropped(n) => *n,
            Job::Exec(_) => return ready.push(job),
        };
        self.waiting.insert(number, job);
        while let Some(job) = self.waiting.remove(&self.next) {
            self.next += 1;
            if !matches!(job, Job::Dropped(_)) {
                ready.push(job);
            }
        }
    }

    /// At shutdown: reports still waiting for a number that never came (a verify thread
    /// panicked) are not stored.
    fn abandon(&mut self, counts: &Counters) {
        for (_, job) in std::mem::take(&mut self.waiting) {
            if let Job::Report(_, _, ack) = job {
                counts.add(Outcome::NotStored);
                ack(Outcome::NotStored);
            }
        }
    }
}

enum Decided {
    Report(Outcome, Ack),
    Exec(Done),
}

/// Decides and writes every job of `batch` in one transaction, moving each into `decided`
/// with its outcome. On an error the jobs not yet decided stay in `batch`.
///
/// Reports are written a run at a time (the reports between two other writes): one lookup of
/// all their devices, then multi-row inserts, a few statements for hundreds of reports. On
/// PostgreSQL each statement is a round trip to the server, and one statement per report
/// capped ingest at about 2,900 reports/s on this machine (`scripts/bench-api --postgres`).
fn write_batch(db: &Db, batch: &mut Vec<Job>, decided: &mut Vec<Decided>, now: i64) -> Result<()> {
    db.transaction(|db| {
        let mut jobs = std::mem::take(batch).into_iter();
        let mut run: Vec<(u64, Box<Checked>, Ack)> = Vec::new();
        loop {
            let next = jobs.next();
            if matches!(next, Some(Job::Exec(_)) | None) && !run.is_empty() {
                if let Err(e) = store_run(db, &run, now).map(|outcomes| {
                    for ((_, _, ack), outcome) in run.drain(..).zip(outcomes) {
                        decided.push(Decided::Report(outcome, ack));
                    }
                }) {
                    batch.extend(run.drain(..).map(|(n, r, ack)| Job::Report(n, r, ack)));
                    batch.extend(next);
                    batch.extend(jobs);
                    return Err(e);
                }
            }
            match next {
                None => return Ok(()),
                Some(Job::Dropped(_)) => {}
                Some(Job::Report(number, r, ack)) => run.push((number, r, ack)),
                Some(Job::Exec(exec)) => {
                    let ran = run_exec(db, exec.run);
                    // Told after the commit either way; a failed savepoint fails the batch.
                    decided.push(Decided::Exec(exec.done));
                    if let Err(e) = ran {
                        batch.extend(jobs);
                        return Err(e);
                    }
                }
            }
        }
    })
}

/// Rows per multi-row statement: within both engines' limits on parameters (17 columns).
const ROWS_PER_STATEMENT: usize = 500;

/// Decides each report of `run` in order — unenrolled, a replay of a `seq` already stored
/// (or earlier in the run), or accepted — and stores the accepted ones: every event, and
/// each device's latest state once. The outcomes, in `run`'s order.
fn store_run(db: &Db, run: &[(u64, Box<Checked>, Ack)], now: i64) -> Result<Vec<Outcome>> {
    // Each device in the run: its row id and the newest seq stored so far.
    let mut devices: HashMap<[u8; 32], (i64, Option<i64>)> = HashMap::new();
    let keys: Vec<[u8; 32]> = {
        let mut keys: Vec<[u8; 32]> = run.iter().map(|(_, r, _)| r.device).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT d.public_key, d.id, s.last_seq FROM devices d LEFT JOIN device_state s ON s.device = d.id
             WHERE d.public_key IN ({})",
            placeholders(chunk.len(), 1, 0)
        );
        let params: Vec<&dyn Param> = chunk.iter().map(|k| k as &dyn Param).collect();
        for (key, id, last) in
            db.query(&sql, &params, |row| Ok((row.get::<Vec<u8>>(0)?, row.get::<i64>(1)?, row.get::<Option<i64>>(2)?)))?
        {
            if let Ok(key) = <[u8; 32]>::try_from(key) {
                devices.insert(key, (id, last));
            }
        }
    }
    let mut outcomes = Vec::with_capacity(run.len());
    let mut accepted: Vec<(i64, &Checked)> = Vec::new();
    // Per device, its newest accepted report and the last install duration among them.
    let mut latest: HashMap<i64, (&Checked, Option<i64>)> = HashMap::new();
    for (_, r, _) in run {
        let outcome = match devices.get_mut(&r.device) {
            None => Outcome::Unenrolled,
            Some((_, Some(last))) if r.seq <= *last => Outcome::Replayed { last_seq: *last as u64 },
            Some((id, last)) => {
                *last = Some(r.seq);
                accepted.push((*id, r));
                let install_secs = r.install_secs.or(latest.get(id).and_then(|(_, secs)| *secs));
                latest.insert(*id, (r, install_secs));
                Outcome::Accepted
            }
        };
        outcomes.push(outcome);
    }
    for chunk in accepted.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO status_events
               (device, seq, rollout, state, result, error, error_code, install_secs, received_at, signed)
             VALUES {}",
            placeholders(10, chunk.len(), 10)
        );
        let mut values = Vec::with_capacity(chunk.len() * 10);
        for (device, r) in chunk {
            values.extend([
                Value::Int(*device),
                r.seq.value(),
                r.rollout.value(),
                r.state.value(),
                r.result.value(),
                r.error.value(),
                r.error_code.value(),
                r.install_secs.value(),
                Value::Int(now),
                r.signed.value(),
            ]);
        }
        db.execute(&sql, &params(&values))?;
    }
    let mut states: Vec<(i64, (&Checked, Option<i64>))> = latest.into_iter().collect();
    // One order for every writer: two transactions never wait on each other's rows crosswise.
    states.sort_unstable_by_key(|(device, _)| *device);
    for chunk in states.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO device_state
               (device, last_seq, release, version, installed_id, state, rollout, result, error, error_code,
                health, slot, updated_at, active_slot, security_floor, target_version, install_secs)
             VALUES {}
             ON CONFLICT (device) DO UPDATE SET
               last_seq = excluded.last_seq, release = excluded.release, version = excluded.version,
               installed_id = excluded.installed_id, state = excluded.state, rollout = excluded.rollout,
               result = excluded.result, error = excluded.error, error_code = excluded.error_code,
               health = excluded.health, slot = excluded.slot, updated_at = excluded.updated_at,
               active_slot = excluded.active_slot, security_floor = excluded.security_floor,
               target_version = excluded.target_version,
               -- The last install's duration stays until a report gives another.
               install_secs = coalesce(excluded.install_secs, device_state.install_secs)",
            placeholders(17, chunk.len(), 17)
        );
        let mut values = Vec::with_capacity(chunk.len() * 17);
        for (device, (r, install_secs)) in chunk {
            values.extend([
                Value::Int(*device),
                r.seq.value(),
                r.release.value(),
                r.version.value(),
                r.installed_id.value(),
                r.state.value(),
                r.rollout.value(),
                r.result.value(),
                r.error.value(),
                r.error_code.value(),
                r.health.value(),
                r.slot.value(),
                Value::Int(now),
                r.active_slot.value(),
                r.security_floor.value(),
                r.target_version.value(),
                install_secs.value(),
            ]);
        }
        db.execute(&sql, &params(&values))?;
    }
    Ok(outcomes)
}

/// `rows` groups of `width` numbered placeholders, `(?1, ?2), (?3, ?4)`; a single group
/// without parentheses when `rows` is 1 and `step` is 0 (an `IN (…)` list of `width`).
fn placeholders(width: usize, rows: usize, step: usize) -> String {
    if step == 0 {
        return (1..=width).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    }
    (0..rows)
        .map(|row| {
            let group: Vec<String> = (1..=width).map(|col| format!("?{}", row * step + col)).collect();
            format!("({})", group.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a write under a savepoint; a failed write's changes are rolled back to it.
fn run_exec(db: &Db, run: Box<dyn FnOnce(&Db) -> bool + Send>) -> Result<()> {
    db.execute_batch("SAVEPOINT fleet_exec").context("cannot start a savepoint")?;
    let ok = run(db);
    let end = if ok { "RELEASE fleet_exec" } else { "ROLLBACK TO fleet_exec; RELEASE fleet_exec" };
    db.execute_batch(end).context("cannot end a savepoint")?;
    Ok(())
}
