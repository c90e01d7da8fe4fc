//! The install engine's persisted record: everything a device must remember across a kill or
//! a power cut, in a fixed-size, checksummed byte layout that an MCU can keep in one flash
//! page and a Linux agent in one file (written temp, fsync, rename).
//!
//! Goals: decoding hostile or torn bytes never panics and never yields a half-valid record
//! (the checksum covers every byte); no heap. Non-goals: chunk-level progress. Which chunks
//! already sit verified in the inactive slot is the driver's bitmap; the record carries
//! only counts, so its size does not grow with the image.

use crate::ReleaseId;

/// One of the two A/B slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl Slot {
    /// The slot that is not `self`.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// `"a"` or `"b"`, as configs and env files name slots.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
    /// Parses `"a"`/`"b"` (either case).
    pub fn from_name(name: &str) -> Option<Slot> {
        match name {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
    fn to_byte(self) -> u8 {
        self as u8
    }
    fn from_byte(byte: u8) -> Option<Slot> {
        match byte {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }
}

/// Where the install engine stands. The happy path runs top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Nothing in progress; the active slot runs what `installed` names.
    Idle,
    /// Asking the edge nodes whether a release for this device exists.
    Checking,
    /// Fetching the target's missing chunks into the inactive slot.
    Downloading,
    /// Hashing the whole inactive slot against the manifest.
    Verifying,
    /// Telling the bootloader to try the inactive slot once.
    Installing,
    /// Waiting for the reboot into the new slot.
    PendingReboot,
    /// Running the new slot on probation: health checks decide commit or rollback.
    Trial,
    /// The last install committed; the new slot is now the active one.
    Committed,
    /// The last install was abandoned and the previous slot runs again.
    RolledBack,
    /// The verified image waits in the inactive slot for the rollout gate to allow the
    /// switch (a maintenance window, a site's concurrency budget). Between `Verifying` and
    /// `Installing` on the happy path; last in [`State::ALL`] so its byte (9) is new and
    /// records written before it existed decode unchanged.
    Staged,
}

impl State {
    /// All states, in the order of their record byte (not the happy path's: `Staged` came
    /// later and went last so older records keep their meaning).
    pub const ALL: [State; 10] = [
        State::Idle,
        State::Checking,
        State::Downloading,
        State::Verifying,
        State::Installing,
        State::PendingReboot,
        State::Trial,
        State::Committed,
        State::RolledBack,
        State::Staged,
    ];

    /// Lowercase name, as status reports and logs print it.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Downloading => "downloading",
            State::Verifying => "verifying",
            State::Installing => "installing",
            State::PendingReboot => "pending-reboot",
            State::Trial => "trial",
            State::Committed => "committed",
            State::RolledBack => "rolled-back",
            State::Staged => "staged",
        }
    }
    fn from_byte(byte: u8) -> Option<State> {
        State::ALL.get(byte as usize).copied()
    }
    fn to_byte(self) -> u8 {
        State::ALL.iter().position(|s| *s == self).unwrap_or(0) as u8
    }
}

/// Why the last attempt did not succeed. Codes are stable: they travel in status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No edge node answered, or a transfer failed; the engine retries with backoff.
    Network = 1,
    /// The offered release is for another hardware class.
    WrongHardwareClass = 2,
    /// The offered release's security counter is below the device's anti-rollback floor.
    SecurityCounterTooOld = 3,
    /// The written image's hash did not match the manifest (local storage fault).
    ImageMismatch = 4,
    /// A health check failed during the trial.
    HealthCheckFailed = 5,
    /// The trial's deadline passed before the health checks passed.
    TrialTimeout = 6,
    /// The device restarted during its trial.
    RebootDuringTrial = 7,
    /// The bootloader gave up on the new slot and fell back.
    BootFailed = 8,
    /// The slot could not be written or the bootloader could not be changed.
    Storage = 9,
    /// Metadata did not verify (TUF), or an edge node served stale or wrong data.
    Verification = 10,
}

impl ErrorCode {
    const ALL: [ErrorCode; 10] = [
        ErrorCode::Network,
        ErrorCode::WrongHardwareClass,
        ErrorCode::SecurityCounterTooOld,
        ErrorCode::ImageMismatch,
        ErrorCode::HealthCheckFailed,
        ErrorCode::TrialTimeout,
        ErrorCode::RebootDuringTrial,
        ErrorCode::BootFailed,
        ErrorCode::Storage,
        ErrorCode::Verification,
    ];

    /// Lowercase name for reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Network => "network",
            ErrorCode::WrongHardwareClass => "wrong-hardware-class",
            ErrorCode::SecurityCounterTooOld => "security-counter-too-old",
            ErrorCode::ImageMismatch => "image-mismatch",
            ErrorCode::HealthCheckFailed => "health-check-failed",
            ErrorCode::TrialTimeout => "trial-timeout",
            ErrorCode::RebootDuringTrial => "reboot-during-trial",
            ErrorCode::BootFailed => "boot-failed",
            ErrorCode::Storage => "storage",
            ErrorCode::Verification => "verification",
        }
    }
    fn from_byte(byte: u8) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|e| *e as u8 == byte)
    }
}

/// A short UTF-8 string (version, hardware class) in a fixed 32-byte buffer, so records and
/// offers need no heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label {
    len: u8,
    bytes: [u8; Label::CAPACITY],
}

impl Label {
    /// Longest label in bytes; the manifest's version and hardware-class limits are the same.
    pub const CAPACITY: usize = 32;

    /// `None` if `text` is longer than [`Label::CAPACITY`] bytes.
    pub fn new(text: &str) -> Option<Label> {
        if text.len() > Self::CAPACITY {
            return None;
        }
        let mut bytes = [0u8; Self::CAPACITY];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Some(Label { len: text.len() as u8, bytes })
    }
    /// The empty label.
    pub const fn empty() -> Label {
        Label { len: 0, bytes: [0; Self::CAPACITY] }
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        // Built only from &str or validated bytes, so this never fails; "" is a safe fallback.
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
    fn from_parts(len: u8, bytes: [u8; Self::CAPACITY]) -> Option<Label> {
        if len as usize > Self::CAPACITY || bytes[len as usize..].iter().any(|b| *b != 0) {
            return None;
        }
        core::str::from_utf8(&bytes[..len as usize]).ok()?;
        Some(Label { len, bytes })
    }
}

impl core::fmt::Debug for Label {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A release as the engine knows it: the manifest's identity and the facts it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// blake3 of the manifest bytes (all zero for an image of unknown origin, such as a
    /// factory flash without a manifest).
    pub id: ReleaseId,
    /// The manifest's version string.
    pub version: Label,
    /// The manifest's anti-rollback counter.
    pub security_counter: u64,
    /// Plaintext image bytes.
    pub image_len: u64,
    /// Chunks in the manifest.
    pub chunk_count: u32,
}

impl Release {
    /// A release with no manifest behind it (what a factory-flashed device runs).
    pub fn unknown(version: Label, security_counter: u64) -> Release {
        Release { id: ReleaseId([0; 32]), version, security_counter, image_len: 0, chunk_count: 0 }
    }
}

/// Bytes of an encoded [`Record`].
pub const RECORD_BYTES: usize = 4 + 1 + RECORD_BODY_BYTES + 16;
const RELEASE_BYTES: usize = 32 + 1 + Label::CAPACITY + 8 + 8 + 4;
const RECORD_BODY_BYTES: usize = 1 + 1 + RELEASE_BYTES + 1 + RELEASE_BYTES + 4 + 8 + 8 + 1 + 1 + 1 + 32 + 8 + 8;
const RECORD_MAGIC: [u8; 4] = *b"OTIR";
const RECORD_LAYOUT: u8 = 1;

/// What the device remembers. The engine changes it and asks the driver to persist it
/// ([`super::Action::Persist`]); after a restart the driver hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Where the last persisted step left off.
    pub state: State,
    /// The slot holding the committed image.
    pub active: Slot,
    /// What the active slot runs.
    pub installed: Release,
    /// The release being installed into the other slot, if any.
    pub target: Option<Release>,
    /// Target chunks verified and written to the inactive slot (fetched or reused).
    pub chunks_done: u32,
    /// Stored bytes fetched from edge nodes for the target.
    pub bytes_fetched: u64,
    /// Plaintext bytes copied from the active slot instead of fetched.
    pub bytes_reused: u64,
    /// Whole-image verification failures for the current target.
    pub verify_failures: u8,
    /// The last attempt's error, cleared when an install commits.
    pub last_error: Option<ErrorCode>,
    /// A release this device installed and rolled back (or could not verify): offered again,
    /// it is skipped, so a bad release does not loop through trial after trial.
    pub refused: ReleaseId,
    /// The anti-rollback floor: no release with a lower security counter is accepted. Raised
    /// on each commit, never lowered.
    pub min_security_counter: u64,
    /// Bumped on every persist, so a driver keeping two copies can take the newer one.
    pub sequence: u64,
}

/// Why stored record bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Not [`RECORD_BYTES`] long.
    Length,
    /// Wrong magic or layout byte.
    Format,
    /// The checksum does not match: a torn or corrupted write.
    Checksum,
    /// A field holds a value no encoder writes.
    Field,
}

impl Record {
    /// The record of a device that has never installed anything through otamesh.
    pub fn factory(active: Slot, installed: Release) -> Record {
        Record {
            state: State::Idle,
            active,
            installed,
            target: None,
            chunks_done: 0,
            bytes_fetched: 0,
            bytes_reused: 0,
            verify_failures: 0,
            last_error: None,
            refused: ReleaseId([0; 32]),
            min_security_counter: installed.security_counter,
            sequence: 0,
        }
    }

    /// The slot the target goes into.
    pub fn inactive(&self) -> Slot {
        self.active.other()
    }

    /// Fixed-size bytes with a keyed-free blake3 checksum over everything before it.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        let mut w = Writer { buf: &mut out, at: 0 };
        w.put(&RECORD_MAGIC);
        w.put(&[RECORD_LAYOUT, self.state.to_byte(), self.active.to_byte()]);
        put_release(&mut w, &self.installed);
        w.put(&[self.target.is_some() as u8]);
        put_release(&mut w, &self.target.unwrap_or(Release::unknown(Label::empty(), 0)));
        w.put(&self.chunks_done.to_le_bytes());
        w.put(&self.bytes_fetched.to_le_bytes());
        w.put(&self.bytes_reused.to_le_bytes());
        w.put(&[self.verify_failures, self.last_error.is_some() as u8, self.last_error.map_or(0, |e| e as u8)]);
        w.put(&self.refused.0);
        w.put(&self.min_security_counter.to_le_bytes());
        w.put(&self.sequence.to_le_bytes());
        let at = w.at;
        let sum = blake3::hash(&out[..at]);
        out[at..].copy_from_slice(&sum.as_bytes()[..16]);
        out
    }

    /// Parses bytes written by [`Record::encode`]; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() != RECORD_BYTES {
            return Err(RecordError::Length);
        }
        let body_end = RECORD_BYTES - 16;
        if bytes[..4] != RECORD_MAGIC || bytes[4] != RECORD_LAYOUT {
            return Err(RecordError::Format);
        }
        if blake3::hash(&bytes[..body_end]).as_bytes()[..16] != bytes[body_end..] {
            return Err(RecordError::Checksum);
        }
        let mut r = Reader { buf: &bytes[..body_end], at: 5 };
        let state = State::from_byte(r.u8()).ok_or(RecordError::Field)?;
        let active = Slot::from_byte(r.u8()).ok_or(RecordError::Field)?;
        let installed = get_release(&mut r)?;
        let has_target = r.u8();
        let target = get_release(&mut r)?;
        let target = match has_target {
            0 => None,
            1 => Some(target),
            _ => return Err(RecordError::Field),
        };
        let chunks_done = r.u32();
        let bytes_fetched = r.u64();
        let bytes_reused = r.u64();
        let verify_failures = r.u8();
        let has_error = r.u8();
        let error = r.u8();
        let last_error = match has_error {
            0 => None,
            1 => Some(ErrorCode::from_byte(error).ok_or(RecordError::Field)?),
            _ => return Err(RecordError::Field),
        };
        let refused = ReleaseId(r.array());
        let min_security_counter = r.u64();
        let sequence = r.u64();
        Ok(Record {
            state,
            active,
            installed,
            target,
            chunks_done,
            bytes_fetched,
            bytes_reused,
            verify_failures,
            last_error,
            refused,
            min_security_counter,
            sequence,
        })
    }
}

fn put_release(w: &mut Writer<'_>, release: &Release) {
    w.put(&release.id.0);
    w.put(&[release.version.len]);
    w.put(&release.version.bytes);
    w.put(&release.security_counter.to_le_bytes());
    w.put(&release.image_len.to_le_bytes());
    w.put(&release.chunk_count.to_le_bytes());
}

fn get_release(r: &mut Reader<'_>) -> Result<Release, RecordError> {
    let id = ReleaseId(r.array());
    let len = r.u8();
    let version = Label::from_parts(len, r.array()).ok_or(RecordError::Field)?;
    Ok(Release { id, version, security_counter: r.u64(), image_len: r.u64(), chunk_count: r.u32() })
}

/// Writes into a buffer whose size the layout constants fix; the encoder cannot overrun it.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// Reads a buffer whose length was checked against the layout first, so reads cannot run out.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut record = Record::factory(Slot::B, Release::unknown(Label::new("1.0.0").unwrap(), 3));
        record.state = State::Downloading;
        record.target = Some(Release {
            id: ReleaseId([7; 32]),
            version: Label::new("2.0.0").unwrap(),
            security_counter: 4,
            image_len: 1 << 20,
            chunk_count: 16,
        });
        record.chunks_done = 9;
        record.bytes_fetched = 12345;
        record.last_error = Some(ErrorCode::Network);
        record.sequence = 77;
        record
    }

    #[test]
    fn round_trips() {
        let record = sample();
        assert_eq!(Record::decode(&record.encode()), Ok(record));
    }

    /// Layout 1 did not change when `Staged` arrived: the state bytes of the nine older
    /// states are what they were, so a record persisted by an older agent decodes the same.
    #[test]
    fn state_bytes_are_stable() {
        let names: Vec<_> = State::ALL.iter().map(|s| (s.to_byte(), s.name())).collect();
        assert_eq!(
            names,
            [
                (0, "idle"),
                (1, "checking"),
                (2, "downloading"),
                (3, "verifying"),
                (4, "installing"),
                (5, "pending-reboot"),
                (6, "trial"),
                (7, "committed"),
                (8, "rolled-back"),
                (9, "staged"),
            ]
        );
        let mut record = sample();
        record.state = State::Staged;
        assert_eq!(Record::decode(&record.encode()), Ok(record));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            assert!(Record::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), Err(RecordError::Length));
    }
}
