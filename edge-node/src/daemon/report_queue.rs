//! The bounded on-disk queue of device status reports awaiting the origin (store and
//! forward): `data_dir/reports/`.
//!
//! Layout: append-only segment files `<first-id, 20 digits>.log` holding records, and an
//! `acked` file naming the position (segment id, byte offset) of the first report the origin
//! has not acknowledged, replaced atomically ([`host::fs::write_atomic`]). A record is a
//! `u32` little-endian body length, the first 4 bytes of the body's SHA-256, then the body
//! (the report as the device signed it). Segments wholly before the acknowledged position are
//! deleted; when everything is acknowledged the active segment is deleted too, so a node whose
//! WAN keeps up holds no report files at all.
//!
//! Crash safety: an append is durable once [`ReportQueue::commit`] returns (written, then
//! `fdatasync`; a new segment's directory entry is synced too), and only then is the device
//! told `Ok`. A crash mid-append leaves a torn record at the end of the last segment; opening
//! the queue finds it (short header, short body or checksum mismatch) and truncates the
//! segment there, so the queue always reads as a sequence of whole records. A crash between
//! writing `acked` and deleting a segment leaves a segment that the next open deletes. The
//! acknowledgement is written before anything is deleted, so the worst a crash does is send
//! an acknowledged batch again (the origin refuses the duplicates as replays and counts them
//! stored): at-least-once, never lost.
//!
//! Bound: the queued (unacknowledged) records' bytes, headers included, never exceed the
//! configured `report_queue_bytes`; a report that does not fit is refused. Disk use is at
//! most that plus one segment of acknowledged records not yet deleted.
//!
//! [`ReportLog`] wraps the queue for the daemon: a writer thread group-commits appends
//! (one fsync for every report that arrived while the previous fsync ran), and a [`Notify`]
//! wakes the forwarder.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, Notify};

use crate::metrics::Metrics;

/// Bytes of a record's header: body length and checksum.
pub const RECORD_HEADER_BYTES: u64 = 8;
/// A segment is closed (and a new one started) once it holds this much.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Largest report body stored (the device wire's and the mesh wire's limit).
const MAX_BODY_BYTES: usize = protocol::status::MAX_REPORT_BYTES;
const ACKED_FILE: &str = "acked";
/// Most appends committed with one fsync.
const MAX_GROUP: usize = 256;

/// Why a report was not queued.
#[derive(Debug)]
pub enum AppendError {
    /// The queue is at `report_queue_bytes` (or the report is over the size limit).
    Full,
    /// Writing or syncing failed; nothing of this append is queued.
    Io(io::Error),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Full => write!(f, "report queue is full"),
            AppendError::Io(e) => write!(f, "report queue write failed: {e}"),
        }
    }
}

/// Where a queued record's body lives.
#[derive(Debug, Clone, Copy)]
struct Record {
    segment: u64,
    /// Offset of the record's header in its segment.
    offset: u64,
    len: u32,
}

impl Record {
    fn frame_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + u64::from(self.len)
    }
}

/// The segment appends go to.
#[derive(Debug)]
struct Active {
    id: u64,
    file: File,
    len: u64,
}

/// The queue itself: synchronous, owned by one thread at a time (the [`ReportLog`]'s mutex).
#[derive(Debug)]
pub struct ReportQueue {
    dir: PathBuf,
    limit_bytes: u64,
    /// Unacknowledged, committed records, oldest first.
    records: VecDeque<Record>,
    /// Frame bytes of `records` plus `staged`.
    queued_bytes: u64,
    /// Pushed, not yet committed: their frames, and where they will live.
    staged: Vec<u8>,
    staged_records: Vec<Record>,
    /// Segment files on disk.
    segments: BTreeSet<u64>,
    active: Option<Active>,
    next_segment: u64,
}

fn checksum(body: &[u8]) -> [u8; 4] {
    let digest = Sha256::digest(body);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl ReportQueue {
    /// Opens (or creates) the queue in `dir`, holding at most `limit_bytes` of records.
    /// Calls `on_report` with every unacknowledged report, oldest first (the daemon replays
    /// them into its rollout guards). A torn or damaged record ends its segment: the segment
    /// is truncated there.
    pub fn open(dir: &Path, limit_bytes: u64, mut on_report: impl FnMut(&[u8])) -> io::Result<ReportQueue> {
        fs::create_dir_all(dir).map_err(|e| context(e, "cannot create", dir))?;
        let (acked_segment, acked_offset) = read_acked(dir);
        let mut segments = BTreeSet::new();
        for entry in fs::read_dir(dir).map_err(|e| context(e, "cannot list", dir))? {
            let name = entry?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if id < acked_segment {
                // Fully acknowledged; its deletion was interrupted.
                let path = segment_path(dir, id);
                fs::remove_file(&path).map_err(|e| context(e, "cannot delete", &path))?;
            } else {
                segments.insert(id);
            }
        }
        let mut queue = ReportQueue {
            dir: dir.to_path_buf(),
            limit_bytes,
            records: VecDeque::new(),
            queued_bytes: 0,
            staged: Vec::new(),
            staged_records: Vec::new(),
            next_segment: segments.last().map_or(acked_segment, |last| last + 1),
            segments,
            active: None,
        };
        let ids: Vec<u64> = queue.segments.iter().copied().collect();
        for id in &ids {
            let path = segment_path(dir, *id);
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| context(e, "cannot read", &path))?;
            let mut at = 0usize;
            while at < bytes.len() {
                let Some(len) = whole_record(&bytes[at..]) else { break };
                let offset = at as u64;
                if *id > acked_segment || offset >= acked_offset {
                    let record = Record { segment: *id, offset, len: len as u32 };
                    queue.queued_bytes += record.frame_bytes();
                    queue.records.push_back(record);
                    on_report(&bytes[at + RECORD_HEADER_BYTES as usize..][..len]);
                }
                at += RECORD_HEADER_BYTES as usize + len;
            }
            if at < bytes.len() {
                tracing::warn!(segment = %path.display(), at, "torn or damaged status report record; truncating");
                let file = OpenOptions::new().write(true).open(&path).map_err(|e| context(e, "cannot open", &path))?;
                file.set_len(at as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| context(e, "cannot truncate", &path))?;
            }
            if Some(id) == ids.last() && (at as u64) < SEGMENT_BYTES {
                let file = OpenOptions::new().append(true).open(&path).map_err(|e| context(e, "cannot open", &path))?;
                queue.active = Some(Active { id: *id, file, len: at as u64 });
            }
        }
        Ok(queue)
    }

    /// Reports queued (committed, not acknowledged).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no report awaits the origin.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes the queued reports take, headers included.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Whether a report of `len` bytes fits now.
    pub fn has_room(&self, len: usize) -> bool {
        len <= MAX_BODY_BYTES && self.queued_bytes + RECORD_HEADER_BYTES + len as u64 <= self.limit_bytes
    }

    /// Stages a report for the next [`ReportQueue::commit`]; refused when it does not fit.
    pub fn push(&mut self, body: &[u8]) -> Result<(), AppendError> {
        if !self.has_room(body.len()) {
            return Err(AppendError::Full);
        }
        if self.active.as_ref().is_none_or(|a| a.len >= SEGMENT_BYTES) && self.staged.is_empty() {
            // Opened lazily by commit; staged records already name it.
            self.active = None;
        }
        let (segment, base) = match &self.active {
            Some(a) => (a.id, a.len),
            None => (self.next_segment, 0),
        };
        let record = Record { segment, offset: base + self.staged.len() as u64, len: body.len() as u32 };
        self.staged.extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.staged.extend_from_slice(&checksum(body));
        self.staged.extend_from_slice(body);
        self.queued_bytes += record.frame_bytes();
        self.staged_records.push(record);
        Ok(())
    }

    /// Makes every staged report durable (one write, one `fdatasync`) and queues it. On
    /// error none of them is queued and the segment is cut back to where it was.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let result = self.write_staged();
        let staged = std::mem::take(&mut self.staged_records);
        self.staged.clear();
        match result {
            Ok(()) => {
                self.records.extend(staged);
                Ok(())
            }
            Err(e) => {
                self.queued_bytes -= staged.iter().map(Record::frame_bytes).sum::<u64>();
                if let Some(active) = &self.active {
                    let _ = active.file.set_len(active.len);
                }
                Err(e)
            }
        }
    }

    fn write_staged(&mut self) -> io::Result<()> {
        if self.active.is_none() {
            let id = self.next_segment;
            let path = segment_path(&self.dir, id);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| context(e, "cannot create", &path))?;
            // An empty leftover of a failed start would shift offsets: start it afresh.
            file.set_len(0).map_err(|e| context(e, "cannot truncate", &path))?;
            host::fs::sync_dir(&self.dir)?;
            self.next_segment = id + 1;
            self.segments.insert(id);
            self.active = Some(Active { id, file, len: 0 });
        }
        let Some(active) = self.active.as_mut() else { return Err(io::Error::other("no active segment")) };
        let path = segment_path(&self.dir, active.id);
        active.file.write_all(&self.staged).map_err(|e| context(e, "cannot append to", &path))?;
        active.file.sync_data().map_err(|e| context(e, "cannot fsync", &path))?;
        active.len += self.staged.len() as u64;
        Ok(())
    }

    /// The oldest queued reports: at most `max_reports`, their bodies adding up to at most
    /// `max_bytes` (always at least one if any is queued and fits alone).
    pub fn peek(&self, max_reports: usize, max_bytes: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut open: Option<(u64, File)> = None;
        for record in self.records.iter().take(max_reports) {
            let len = record.len as usize;
            if total + len > max_bytes {
                break;
            }
            if open.as_ref().is_none_or(|(id, _)| *id != record.segment) {
                let path = segment_path(&self.dir, record.segment);
                open = Some((record.segment, File::open(&path).map_err(|e| context(e, "cannot open", &path))?));
            }
            let Some((_, file)) = &open else { break };
            let mut body = vec![0; len];
            file.read_exact_at(&mut body, record.offset + RECORD_HEADER_BYTES)?;
            total += len;
            out.push(body);
        }
        Ok(out)
    }

    /// Forgets the oldest `n` reports (the origin stored them): records the new position
    /// durably, then deletes segments nothing queued lives in.
    pub fn ack(&mut self, n: usize) -> io::Result<()> {
        let n = n.min(self.records.len());
        if n == 0 {
            return Ok(());
        }
        let acked: Vec<Record> = self.records.drain(..n).collect();
        self.queued_bytes -= acked.iter().map(Record::frame_bytes).sum::<u64>();
        let position = match self.records.front() {
            Some(next) => (next.segment, next.offset),
            // Everything is acknowledged: start the next append in a new segment and delete
            // the rest. (Nothing is staged: the writer stages and commits under one lock.)
            None if self.staged.is_empty() => {
                self.active = None;
                (self.next_segment, 0)
            }
            None => match &self.active {
                Some(a) => (a.id, a.len),
                None => (self.next_segment, 0),
            },
        };
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&position.0.to_le_bytes());
        bytes.extend_from_slice(&position.1.to_le_bytes());
        host::fs::write_atomic(&self.dir.join(ACKED_FILE), &bytes, host::fs::PRIVATE)?;
        let done: Vec<u64> = self.segments.range(..position.0).copied().collect();
        for id in done {
            let path = segment_path(&self.dir, id);
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.segments.remove(&id);
                }
                Err(e) => tracing::warn!(%e, segment = %path.display(), "cannot delete an acknowledged segment"),
            }
        }
        Ok(())
    }
}

/// The length of the whole, intact record at the start of `bytes`, if there is one.
fn whole_record(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..RECORD_HEADER_BYTES as usize)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_BODY_BYTES {
        return None;
    }
    let body = bytes.get(RECORD_HEADER_BYTES as usize..)?.get(..len)?;
    (checksum(body) == header[4..8]).then_some(len)
}

/// The acknowledged position; a missing or malformed file reads as "nothing acknowledged"
/// (reports are then sent again, which the origin tolerates).
fn read_acked(dir: &Path) -> (u64, u64) {
    let path = dir.join(ACKED_FILE);
    match fs::read(&path) {
        Ok(bytes) if bytes.len() == 16 => {
            let (segment, offset) = bytes.split_at(8);
            (
                u64::from_le_bytes(segment.try_into().unwrap_or_default()),
                u64::from_le_bytes(offset.try_into().unwrap_or_default()),
            )
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "malformed acknowledgement file; queued reports will be sent again");
            (0, 0)
        }
        Err(_) => (0, 0),
    }
}

type AppendJob = (Vec<u8>, oneshot::Sender<Result<(), AppendError>>);

/// The daemon's handle on the queue: durable appends (group-committed on a writer thread),
/// batches for the forwarder, acknowledgements.
pub struct ReportLog {
    queue: Arc<Mutex<ReportQueue>>,
    appends: std_mpsc::SyncSender<AppendJob>,
    /// Woken after every commit that queued something.
    pub added: Arc<Notify>,
    /// Queued bytes as of the last commit or ack, for the lock-free admission check.
    queued_bytes: Arc<AtomicU64>,
    limit_bytes: u64,
    metrics: Arc<Metrics>,
}

impl ReportLog {
    /// Starts the writer thread for `queue`.
    pub fn start(queue: ReportQueue, metrics: Arc<Metrics>) -> io::Result<Arc<ReportLog>> {
        let limit_bytes = queue.limit_bytes;
        metrics.status_reports_queued.store(queue.len() as u64, Relaxed);
        let queued_bytes = Arc::new(AtomicU64::new(queue.queued_bytes()));
        let queue = Arc::new(Mutex::new(queue));
        let added = Arc::new(Notify::new());
        if !queue.lock().map(|q| q.is_empty()).unwrap_or(true) {
            added.notify_one();
        }
        let (appends, jobs) = std_mpsc::sync_channel::<AppendJob>(4 * MAX_GROUP);
        let (q, n, b, m) = (queue.clone(), added.clone(), queued_bytes.clone(), metrics.clone());
        std::thread::Builder::new().name("report-queue".into()).spawn(move || writer(q, jobs, n, b, m))?;
        Ok(Arc::new(ReportLog { queue, appends, added, queued_bytes, limit_bytes, metrics }))
    }

    /// Whether a report of `len` bytes would fit now (a hint: checked again on append).
    pub fn has_room(&self, len: usize) -> bool {
        len <= MAX_BODY_BYTES && self.queued_bytes.load(Relaxed) + RECORD_HEADER_BYTES + len as u64 <= self.limit_bytes
    }

    /// Appends a report; returns once it is durable.
    pub async fn append(&self, body: Vec<u8>) -> Result<(), AppendError> {
        let (tx, rx) = oneshot::channel();
        let job = (body, tx);
        // The channel is bounded; a full one means the disk cannot keep up: refuse.
        self.appends.try_send(job).map_err(|_| AppendError::Full)?;
        rx.await.map_err(|_| AppendError::Io(io::Error::other("report queue writer stopped")))?
    }

    /// The oldest queued reports, within the mesh batch limits.
    pub async fn peek(&self) -> io::Result<Vec<Vec<u8>>> {
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || {
            let queue = queue.lock().map_err(|_| io::Error::other("report queue poisoned"))?;
            queue.peek(mesh::MAX_STATUS_REPORTS, mesh::MAX_STATUS_BATCH_BYTES)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Forgets the oldest `n` reports.
    pub async fn ack(&self, n: usize) -> io::Result<()> {
        let (queue, bytes, metrics) = (self.queue.clone(), self.queued_bytes.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let mut queue = queue.lock().map_err(|_| io::Error::other("report queue poisoned"))?;
            let result = queue.ack(n);
            bytes.store(queue.queued_bytes(), Relaxed);
            metrics.status_reports_queued.store(queue.len() as u64, Relaxed);
            result
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Whether no report awaits the origin.
    pub fn is_empty(&self) -> bool {
        self.metrics.status_reports_queued.load(Relaxed) == 0
    }
}

/// The writer thread: takes every append waiting, stages them, commits with one fsync,
/// answers each.
fn writer(
    queue: Arc<Mutex<ReportQueue>>,
    jobs: std_mpsc::Receiver<AppendJob>,
    added: Arc<Notify>,
    queued_bytes: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let Ok(mut q) = queue.lock() else { return };
        let pushed: Vec<Result<(), AppendError>> = group.iter().map(|(body, _)| q.push(body)).collect();
        let committed = q.commit();
        queued_bytes.store(q.queued_bytes(), Relaxed);
        metrics.status_reports_queued.store(q.len() as u64, Relaxed);
        drop(q);
        let mut any = false;
        for ((_, reply), pushed) in group.into_iter().zip(pushed) {
            let answer = match (pushed, &committed) {
                (Err(e), _) => Err(e),
                (Ok(()), Ok(())) => {
                    any = true;
                    Ok(())
                }
                (Ok(()), Err(e)) => Err(AppendError::Io(io::Error::new(e.kind(), e.to_string()))),
            };
            let _ = reply.send(answer);
        }
        if let Err(e) = committed {
            tracing::error!(%e, "cannot store device status reports");
        }
        if any {
            added.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(i: usize) -> Vec<u8> {
        format!("{{\"report\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50)).into_bytes()
    }

    fn open(dir: &Path, limit: u64) -> (ReportQueue, Vec<Vec<u8>>) {
        let mut seen = Vec::new();
        let q = ReportQueue::open(dir, limit, |b| seen.push(b.to_vec())).unwrap();
        (q, seen)
    }

    fn append(q: &mut ReportQueue, range: std::ops::Range<usize>) {
        for i in range {
            q.push(&report(i)).unwrap();
        }
        q.commit().unwrap();
    }

    #[test]
    fn appended_reports_survive_a_reopen_and_an_acked_prefix_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, seen) = open(dir.path(), 1 << 20);
        assert!(seen.is_empty() && q.is_empty());
        append(&mut q, 0..10);
        assert_eq!(q.peek(4, usize::MAX).unwrap(), (0..4).map(report).collect::<Vec<_>>());
        q.ack(3).unwrap();
        append(&mut q, 10..12);
        drop(q);
        let (mut q, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen, (3..12).map(report).collect::<Vec<_>>());
        assert_eq!(q.len(), 9);
        assert_eq!(q.peek(100, usize::MAX).unwrap(), seen);
        // The byte limit of a batch is honoured.
        let first_two = report(3).len() + report(4).len();
        assert_eq!(q.peek(100, first_two).unwrap().len(), 2);
        q.ack(9).unwrap();
        assert!(q.is_empty() && q.queued_bytes() == 0);
        // Fully acknowledged: no segment is left on disk.
        let logs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
            .count();
        assert_eq!(logs, 0);
        append(&mut q, 20..21);
        drop(q);
        let (_, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen, vec![report(20)]);
    }

    #[test]
    fn a_torn_tail_is_truncated_on_open_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), 1 << 20);
        append(&mut q, 0..5);
        drop(q);
        let segment = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .unwrap();
        let whole = fs::metadata(&segment).unwrap().len();
        // A crash mid-append: the header and half the body of a sixth record.
        let mut torn = Vec::new();
        let body = report(5);
        torn.extend_from_slice(&(body.len() as u32).to_le_bytes());
        torn.extend_from_slice(&checksum(&body));
        torn.extend_from_slice(&body[..body.len() / 2]);
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(&torn).unwrap();
        let (mut q, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen, (0..5).map(report).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&segment).unwrap().len(), whole, "the torn record is cut off");
        append(&mut q, 6..8);
        drop(q);
        let (_, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen, [0, 1, 2, 3, 4, 6, 7].map(report).to_vec());

        // A flipped bit in the last record's body: its checksum fails, it is cut off too.
        let len = fs::metadata(&segment).unwrap().len();
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        file.write_all_at(b"#", len - 2).unwrap();
        let (_, seen) = open(dir.path(), 1 << 20);
        assert_eq!(seen, [0, 1, 2, 3, 4, 6].map(report).to_vec());
    }

    #[test]
    fn a_full_queue_refuses_new_reports_until_some_are_acked() {
        let dir = tempfile::tempdir().unwrap();
        let frame = RECORD_HEADER_BYTES + report(0).len() as u64;
        let (mut q, _) = open(dir.path(), 3 * frame);
        for _ in 0..3 {
            q.push(&report(0)).unwrap();
        }
        q.commit().unwrap();
        assert!(matches!(q.push(&report(0)), Err(AppendError::Full)));
        assert!(!q.has_room(report(0).len()));
        q.ack(1).unwrap();
        q.push(&report(0)).unwrap();
        q.commit().unwrap();
        assert_eq!(q.len(), 3);
        assert!(matches!(q.push(&vec![0; MAX_BODY_BYTES + 1]), Err(AppendError::Full)));
    }

    #[test]
    fn segments_roll_and_fully_acked_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), 64 << 20);
        let body = vec![7u8; MAX_BODY_BYTES];
        let per_segment = (SEGMENT_BYTES / (RECORD_HEADER_BYTES + body.len() as u64)) as usize + 1;
        for _ in 0..(2 * per_segment + 3) {
            q.push(&body).unwrap();
            q.commit().unwrap();
        }
        assert_eq!(q.segments.len(), 3);
        q.ack(per_segment + 1).unwrap();
        assert_eq!(q.segments.len(), 2);
        drop(q);
        let (q, seen) = open(dir.path(), 64 << 20);
        assert_eq!(seen.len(), per_segment + 2);
        assert_eq!(q.len(), per_segment + 2);
    }

    /// Group commit: concurrent appends through the writer thread are all durable when
    /// answered, and the forwarder is woken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_through_the_log_are_durable_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (q, _) = open(dir.path(), 1 << 20);
        let log = ReportLog::start(q, metrics.clone()).unwrap();
        let started = std::time::Instant::now();
        let n = 400;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(report(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let elapsed = started.elapsed();
        eprintln!("{n} concurrent appends in {elapsed:?} ({:?} per report)", elapsed / n as u32);
        log.added.notified().await;
        assert_eq!(metrics.status_reports_queued.load(Relaxed), n as u64);

        // One at a time (a fsync each): the figure to compare with a site's report rate.
        let started = std::time::Instant::now();
        for i in 0..50 {
            log.append(report(i)).await.unwrap();
        }
        eprintln!("50 sequential appends: {:?} per report", started.elapsed() / 50);
        let batch = log.peek().await.unwrap();
        assert_eq!(batch.len(), n + 50);
        log.ack(n + 50).await.unwrap();
        assert!(log.is_empty());
        let (_, seen) = open(dir.path(), 1 << 20);
        assert!(seen.is_empty());
    }
}
