//! Bad input from an edge: the real `EdgeLink`, `download`, `find_release` and
//! `run_once` over an in-memory stream that answers with frames made by protocol's own
//! encoders and records every request written to it.
//!
//! What each refusal must be: a small error enum naming exactly what was wrong —
//! - the link: a frame longer than its buffer (refused before a body byte is read), a frame
//!   cut short, a body that does not parse, no answer within the timeout, an error answer;
//! - the download: a chunk of the wrong length or with a flipped byte is refused before any
//!   of it is written or marked, a good release lands chunk by chunk at its offsets, a
//!   resumed download asks only for what the progress record lacks;
//! - finding a release: a manifest larger than the device's buffers or limits, or one that
//!   does not match its seal, is refused and nothing further is asked;
//! - the agent: corrupt chunks never get the DFU partition marked for swap, and ACTIVE keeps
//!   its image through the next bootloader step (intact chunks, the control, do).

use std::collections::HashMap;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use embassy_futures::block_on;
use embassy_time::Duration;
use embedded_io_async::{ErrorType, Read, Write};
use otamesh_mcu::agent::{run_once, AgentBuffers, AgentConfig, AgentError, Edges, RunOutcome};
use otamesh_mcu::agent_store::AgentStore;
use otamesh_mcu::boot::{BootOutcome, Partitions, SharedFlash};
use otamesh_mcu::download::{download, DownloadError, Fetched, FlashError, Progress, UpdateSlot, IN_FLIGHT};
use otamesh_mcu::edge_link::{EdgeLink, LinkError};
use otamesh_mcu::find::{find_release, FindBuffers, FindError};
use otamesh_mcu::layout::HOST;
use otamesh_mcu::HostFlash;
use protocol::chunker::Chunking;
use protocol::codec::{self, Codec, ContentKey, AEAD_OVERHEAD_BYTES};
use protocol::device::sealed::{DeviceLimits, SealedError, MAX_PATH_BYTES};
use protocol::install::{ErrorCode as InstallError, Record, State};
use protocol::manifest::{ChunkEntry, ManifestView, ReleaseManifest};
use protocol::rollout::policy::{HealthGate, RolloutPolicy, RolloutState, Wave};
use protocol::rollout::RolloutRelease;
use protocol::seal::{self, KeySet, SealError, SealKind, TrustAnchor};
use protocol::wire::device::{
    split_frame, ChunkItem, ChunkItems, ChunkStatus, ErrorCode, Request, RequestView, Response, WireError,
};
use protocol::{ChunkId, ReleaseId};
use sha2::{Digest, Sha256};

use crate::common::{boot, flash_factory_image, image, read_partition, TempFlash};
use crate::update::app_state;

// ---------------------------------------------------------------------------------------
// The in-memory stream.
// ---------------------------------------------------------------------------------------

/// An edge that answers each request it is sent (the agent test's edges).
struct Server {
    files: HashMap<String, Vec<u8>>,
    chunks: HashMap<ChunkId, Vec<u8>>,
}

impl Server {
    fn answer(&self, request: &Request<'_>) -> Vec<u8> {
        match request {
            Request::GetTarget { path } => match self.files.get(*path) {
                Some(bytes) => Response::Bytes(bytes).to_frame(),
                None => Response::NotFound.to_frame(),
            },
            Request::GetChunks { ranges } => {
                let items: Vec<ChunkItem<'_>> = ranges
                    .iter()
                    .map(|range| ChunkItem {
                        id: range.id,
                        status: match self.chunks.get(&range.id) {
                            Some(bytes) => ChunkStatus::Ok(bytes),
                            None => ChunkStatus::NotFound,
                        },
                    })
                    .collect();
                Response::Chunks { items: ChunkItems::from_slice(&items) }.to_frame()
            }
            Request::ReportStatus { .. } => Response::Ack.to_frame(),
            _ => Response::Error { code: ErrorCode::BAD_REQUEST }.to_frame(),
        }
        .expect("encode a response")
    }
}

/// A byte stream: reads come from `input` (a script of frames, or the server's answers to
/// what was written), writes are recorded.
struct Wire {
    input: Vec<u8>,
    read_at: usize,
    written: Vec<u8>,
    /// Frames of `written` already answered by `server`.
    answered: usize,
    server: Option<Rc<Server>>,
    /// At most this many bytes per read, so the link's reads must loop.
    max_read: usize,
    /// Once `input` is spent, a read waits forever instead of seeing the end of the stream.
    silent: bool,
}

impl Wire {
    /// A stream that answers with `frames`, in order, then ends.
    fn scripted(frames: &[Vec<u8>]) -> Wire {
        Wire {
            input: frames.concat(),
            read_at: 0,
            written: Vec::new(),
            answered: 0,
            server: None,
            max_read: 7,
            silent: false,
        }
    }

    fn serving(server: Rc<Server>) -> Wire {
        Wire { server: Some(server), ..Wire::scripted(&[]) }
    }

    /// Every request written, in order.
    fn requests(&self) -> Vec<Asked> {
        let mut asked = Vec::new();
        let mut rest = &self.written[..];
        while let Some((body, used)) = split_frame(rest, 1 << 20).expect("a request frame") {
            asked.push(Asked::of(&RequestView::parse(body).expect("a request the link wrote parses")));
            rest = &rest[used..];
        }
        assert!(rest.is_empty(), "a partial request frame was written");
        asked
    }
}

impl ErrorType for Wire {
    type Error = Infallible;
}

impl Read for Wire {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if self.read_at == self.input.len() && self.silent {
            core::future::pending::<()>().await;
        }
        let n = buf.len().min(self.max_read).min(self.input.len() - self.read_at);
        buf[..n].copy_from_slice(&self.input[self.read_at..self.read_at + n]);
        self.read_at += n;
        Ok(n)
    }
}

impl Write for Wire {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.written.extend_from_slice(buf);
        if let Some(server) = &self.server {
            // Answers each complete request frame, as an edge answers in order on one connection.
            while let Some((body, used)) = split_frame(&self.written[self.answered..], 1 << 20).expect("frame") {
                let answer = server.answer(&RequestView::parse(body).expect("request parses"));
                self.input.extend_from_slice(&answer);
                self.answered += used;
            }
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A request as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Target(String),
    /// The ids of a `GetChunks`, each asked whole (offset 0, length 0).
    Chunks(Vec<ChunkId>),
    Other,
}

impl Asked {
    fn of(request: &Request<'_>) -> Asked {
        match request {
            Request::GetTarget { path } => Asked::Target(path.to_string()),
            Request::GetChunks { ranges } => Asked::Chunks(
                ranges
                    .iter()
                    .map(|r| {
                        assert_eq!((r.offset, r.length), (0, 0), "chunks are asked whole");
                        r.id
                    })
                    .collect(),
            ),
            _ => Asked::Other,
        }
    }
}

fn frame(response: Response<'_>) -> Vec<u8> {
    response.to_frame().expect("encode a response")
}

fn chunk_frame(id: ChunkId, stored: &[u8]) -> Vec<u8> {
    frame(Response::Chunks { items: ChunkItems::from_slice(&[ChunkItem { id, status: ChunkStatus::Ok(stored) }]) })
}

const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// A sealed, encrypted release: 3 chunks of 4 KiB.
// ---------------------------------------------------------------------------------------

const CHUNK_BYTES: u32 = 4096;
const STORED_BYTES: u32 = CHUNK_BYTES + AEAD_OVERHEAD_BYTES;

struct Fixture {
    content_key: ContentKey,
    targets: SigningKey,
    rollouts: SigningKey,
    /// The plaintext image.
    image: Vec<u8>,
    /// Each chunk's stored (encrypted) bytes, in manifest order.
    stored: Vec<Vec<u8>>,
    ids: Vec<ChunkId>,
    manifest: Vec<u8>,
    manifest_seal: Vec<u8>,
    policy: Vec<u8>,
    policy_seal: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let content_key = ContentKey([5; 32]);
        let image: Vec<u8> = (0..3 * CHUNK_BYTES).map(|i| (i * 7 + i / 4096) as u8).collect();
        let sealed: Vec<_> = image
            .chunks(CHUNK_BYTES as usize)
            .map(|plain| codec::seal(plain, None, Some(&content_key)).expect("seal a chunk"))
            .collect();
        let manifest = ReleaseManifest {
            name: "sensor".into(),
            version: "2.0.0".into(),
            hw_class: "stm32f7".into(),
            security_counter: 5,
            image_len: image.len() as u64,
            image_blake3: *blake3::hash(&image).as_bytes(),
            image_sha256: Sha256::digest(&image).into(),
            content_key_id: Some(content_key.id()),
            chunking: Chunking::Fixed { size_bytes: CHUNK_BYTES },
            chunks: sealed
                .iter()
                .enumerate()
                .map(|(i, c)| ChunkEntry {
                    offset: i as u64 * u64::from(CHUNK_BYTES),
                    length: CHUNK_BYTES,
                    codec: Codec { zstd: false, encrypted: true },
                    stored_length: c.stored.len() as u32,
                    id: c.id,
                })
                .collect(),
        }
        .encode()
        .expect("encode the manifest");
        let policy = RolloutPolicy {
            id: "sensor-2.0.0".into(),
            release: RolloutRelease { name: "sensor".into(), version: "2.0.0".into(), hw_class: "stm32f7".into() },
            seq: 1,
            waves: vec![Wave { cumulative_ppm: 1_000_000, min_soak_secs: 0 }],
            canaries: Vec::new(),
            health: HealthGate { max_failure_ppm: 50_000, min_reports: 1 },
            windows: Vec::new(),
            max_concurrent_per_site: 0,
            state: RolloutState::Running,
            current_wave: 0,
            wave_started_at: 0,
        }
        .encode()
        .expect("encode the policy");
        let (targets, rollouts) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let manifest_seal = seal::seal(SealKind::Manifest, &manifest, &[], &[&targets]).expect("seal");
        let policy_seal = seal::seal(SealKind::Policy, &policy, &[], &[&rollouts]).expect("seal");
        Fixture {
            content_key,
            targets,
            rollouts,
            image,
            ids: sealed.iter().map(|c| c.id).collect(),
            stored: sealed.into_iter().map(|c| c.stored).collect(),
            manifest,
            manifest_seal,
            policy,
            policy_seal,
        }
    }

    fn anchor(&self) -> TrustAnchor {
        TrustAnchor {
            epoch: 1,
            targets: KeySet::new(1, &[self.targets.verifying_key().to_bytes()]).expect("keyset"),
            rollouts: KeySet::new(1, &[self.rollouts.verifying_key().to_bytes()]).expect("keyset"),
        }
    }

    fn view(&self) -> ManifestView<'_> {
        ManifestView::new_checked(&self.manifest).expect("the manifest checks")
    }

    fn plain(&self, index: usize) -> &[u8] {
        &self.image[index * CHUNK_BYTES as usize..(index + 1) * CHUNK_BYTES as usize]
    }

    /// The four paths `find_release` asks for, in order.
    fn find_paths(&self) -> [String; 4] {
        let content = |path: &str, sealed: &[u8]| {
            let mut out = [0u8; MAX_PATH_BYTES];
            seal::content_name(path, &Sha256::digest(sealed).into(), &mut out).expect("fits").to_string()
        };
        [
            "rollouts/sensor.policy.sig".into(),
            content("rollouts/sensor.policy", &self.policy),
            "releases/sensor/2.0.0.manifest.sig".into(),
            content("releases/sensor/2.0.0.manifest", &self.manifest),
        ]
    }

    /// The edge's four answers to `find_release`, with `manifest` in the last.
    fn find_script(&self, manifest: &[u8]) -> Vec<Vec<u8>> {
        vec![
            frame(Response::Bytes(&self.policy_seal)),
            frame(Response::Bytes(&self.policy)),
            frame(Response::Bytes(&self.manifest_seal)),
            frame(Response::Bytes(manifest)),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// 1. The link.
// ---------------------------------------------------------------------------------------

fn get_target(wire: &mut Wire, buffer_bytes: usize, timeout: Duration) -> Result<Option<Vec<u8>>, LinkError> {
    let mut buffer = vec![0u8; buffer_bytes];
    let mut link = EdgeLink::new(&mut *wire, &mut buffer, timeout);
    let mut out = [0u8; 256];
    block_on(link.get_target("releases/sensor/2.0.0.manifest.sig", &mut out)).map(|got| got.map(<[u8]>::to_vec))
}

#[test]
fn link_refuses_a_frame_longer_than_its_buffer_before_reading_its_body() {
    let mut wire = Wire::scripted(&[frame(Response::Bytes(&[0xAB; 100]))]);
    let error = get_target(&mut wire, 64, TIMEOUT).unwrap_err();
    assert_eq!(error, LinkError::TooLarge { len: 105 });
    assert_eq!(wire.read_at, 4, "only the length prefix was read");
    assert!(error.blames_edge());
    assert!(!error.keeps_connection());
}

#[test]
fn link_refuses_a_frame_cut_short_by_the_end_of_the_stream() {
    let mut whole = frame(Response::Bytes(&[0xAB; 40]));
    whole.truncate(4 + 20);
    let mut wire = Wire::scripted(&[whole]);
    let error = get_target(&mut wire, 256, TIMEOUT).unwrap_err();
    assert_eq!(error, LinkError::Io);
    assert_eq!(wire.read_at, 24, "every byte there was was read");
    assert!(!error.blames_edge() && !error.keeps_connection());
}

#[test]
fn link_refuses_a_body_that_does_not_parse() {
    // An unknown kind, and a `Bytes` answer whose inner length overruns the frame.
    let unknown = [1u32.to_le_bytes().as_slice(), &[0x99]].concat();
    let mut wire = Wire::scripted(&[unknown]);
    assert_eq!(get_target(&mut wire, 256, TIMEOUT), Err(LinkError::Malformed(WireError::UnknownKind(0x99))));

    let mut lying = frame(Response::Bytes(&[0xAB; 10]));
    lying[5..9].copy_from_slice(&11u32.to_le_bytes());
    let mut wire = Wire::scripted(&[lying]);
    let error = get_target(&mut wire, 256, TIMEOUT).unwrap_err();
    assert_eq!(error, LinkError::Malformed(WireError::Truncated));
    assert!(error.blames_edge());
}

#[test]
fn link_gives_up_on_a_silent_edge_after_its_timeout() {
    let mut wire = Wire::scripted(&[]);
    wire.silent = true;
    let started = Instant::now();
    let error = get_target(&mut wire, 256, Duration::from_millis(50)).unwrap_err();
    let waited = started.elapsed();
    assert_eq!(error, LinkError::Timeout);
    assert!(waited >= std::time::Duration::from_millis(50), "gave up early: {waited:?}");
    assert!(waited < std::time::Duration::from_secs(2), "gave up late: {waited:?}");
    assert_eq!(wire.requests().len(), 1, "the request went out before the wait");
}

#[test]
fn link_passes_an_edge_error_on_and_keeps_the_connection() {
    let mut wire = Wire::scripted(&[frame(Response::Error { code: ErrorCode::BUSY }), frame(Response::NotFound)]);
    let mut buffer = [0u8; 256];
    let mut link = EdgeLink::new(&mut wire, &mut buffer, TIMEOUT);
    let mut out = [0u8; 16];
    let error = block_on(link.get_target("rollouts/sensor.policy.sig", &mut out)).unwrap_err();
    assert_eq!(error, LinkError::Edge(ErrorCode::BUSY));
    assert!(error.keeps_connection() && !error.blames_edge());
    // The connection is still in step: the next answer belongs to the next request.
    assert_eq!(block_on(link.get_target("rollouts/sensor.policy.sig", &mut out)), Ok(None));
    assert_eq!(wire.requests().len(), 2);
}

#[test]
fn link_refuses_an_answer_of_the_wrong_kind() {
    let mut wire = Wire::scripted(&[chunk_frame(ChunkId([1; 32]), b"abc")]);
    let error = get_target(&mut wire, 256, TIMEOUT).unwrap_err();
    assert_eq!(error, LinkError::Unexpected);
    assert!(error.blames_edge());
}

// ---------------------------------------------------------------------------------------
// 2. The download.
// ---------------------------------------------------------------------------------------

/// The update partition as a log of what was done to it.
#[derive(Default)]
struct SlotLog {
    prepared: u32,
    writes: Vec<(u32, Vec<u8>)>,
}

impl UpdateSlot for SlotLog {
    type Error = ();

    fn prepare(&mut self) -> Result<(), ()> {
        self.prepared += 1;
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
        self.writes.push((offset, data.to_vec()));
        Ok(())
    }
}

/// A progress record in memory, with the order chunks were marked in.
#[derive(Default)]
struct ProgressLog {
    target: Option<ReleaseId>,
    marks: Vec<u32>,
}

impl Progress for ProgressLog {
    type Error = ();

    fn target(&self) -> Option<ReleaseId> {
        self.target
    }

    fn start(&mut self, target: ReleaseId) -> Result<(), ()> {
        self.target = Some(target);
        self.marks.clear();
        Ok(())
    }

    fn is_written(&self, index: u32) -> bool {
        self.marks.contains(&index)
    }

    fn mark_written(&mut self, index: u32) -> Result<(), ()> {
        self.marks.push(index);
        Ok(())
    }
}

type Outcome = Result<Fetched, DownloadError<FlashError<(), ()>>>;

/// Runs `download` of the fixture's release against `wire`.
fn run_download(
    f: &Fixture,
    wire: &mut Wire,
    slot: &mut SlotLog,
    progress: &mut ProgressLog,
    chunk_bytes: usize,
) -> Outcome {
    let mut buffer = vec![0u8; 8 * 1024];
    let mut chunk = vec![0u8; chunk_bytes];
    let mut link = EdgeLink::new(&mut *wire, &mut buffer, TIMEOUT);
    block_on(download(&mut link, &f.view(), Some(&f.content_key), slot, progress, &mut chunk))
}

fn asked_chunks(f: &Fixture, indices: &[usize]) -> Vec<Asked> {
    indices.iter().map(|&i| Asked::Chunks(vec![f.ids[i]])).collect()
}

#[test]
fn download_writes_every_verified_chunk_once_at_its_offset() {
    let f = Fixture::new();
    let mut wire = Wire::scripted(&(0..3).map(|i| chunk_frame(f.ids[i], &f.stored[i])).collect::<Vec<_>>());
    let (mut slot, mut progress) = (SlotLog::default(), ProgressLog::default());
    let fetched = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize);
    assert_eq!(fetched, Ok(Fetched { chunks: 3, bytes: 3 * u64::from(STORED_BYTES), already: 0 }));
    assert_eq!(slot.prepared, 1);
    let expected: Vec<(u32, Vec<u8>)> = (0..3).map(|i| (i as u32 * CHUNK_BYTES, f.plain(i).to_vec())).collect();
    assert!(slot.writes == expected, "the decrypted chunks, in order, at their offsets");
    assert_eq!(progress.marks, [0, 1, 2]);
    assert_eq!(progress.target, Some(ReleaseId::of_manifest(&f.manifest)));
    assert_eq!(wire.requests(), asked_chunks(&f, &[0, 1, 2]));
}

#[test]
fn download_refuses_a_chunk_of_the_wrong_length_before_writing_it() {
    let f = Fixture::new();
    for stored_len in [STORED_BYTES as usize - 1, STORED_BYTES as usize + 1] {
        let mut wrong = f.stored[1].clone();
        wrong.resize(stored_len, 0);
        let mut wire = Wire::scripted(&[chunk_frame(f.ids[0], &f.stored[0]), chunk_frame(f.ids[1], &wrong)]);
        let (mut slot, mut progress) = (SlotLog::default(), ProgressLog::default());
        let error = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize).unwrap_err();
        assert_eq!(error, DownloadError::BadChunk { index: 1 }, "stored length {stored_len}");
        assert!(error.blames_edge());
        assert_eq!(slot.writes.len(), 1, "only chunk 0 was written");
        assert_eq!(slot.writes[0].0, 0);
        assert_eq!(progress.marks, [0], "chunk 1 is not marked");
        // Chunk 2 was asked for while chunk 1 was on its way (IN_FLIGHT); nothing after that.
        let asked: Vec<usize> = (0..(1 + IN_FLIGHT).min(3)).collect();
        assert_eq!(wire.requests(), asked_chunks(&f, &asked), "asked for more after the bad chunk");
    }
}

#[test]
fn download_refuses_a_chunk_with_a_flipped_byte_before_writing_it() {
    let f = Fixture::new();
    for index in 0..3 {
        let mut script: Vec<Vec<u8>> = (0..index).map(|i| chunk_frame(f.ids[i], &f.stored[i])).collect();
        let mut flipped = f.stored[index].clone();
        flipped[100] ^= 0x01;
        script.push(chunk_frame(f.ids[index], &flipped));
        let mut wire = Wire::scripted(&script);
        let (mut slot, mut progress) = (SlotLog::default(), ProgressLog::default());
        let error = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize).unwrap_err();
        assert_eq!(error, DownloadError::BadChunk { index: index as u32 });
        let offsets: Vec<u32> = slot.writes.iter().map(|(offset, _)| *offset).collect();
        let good: Vec<u32> = (0..index as u32).map(|i| i * CHUNK_BYTES).collect();
        assert_eq!(offsets, good, "nothing of chunk {index} was written");
        assert_eq!(progress.marks, (0..index as u32).collect::<Vec<_>>());
    }
}

#[test]
fn download_refuses_a_chunk_other_than_the_one_asked_for() {
    let f = Fixture::new();
    // Chunk 1's valid bytes in answer to a request for chunk 0.
    let mut wire = Wire::scripted(&[chunk_frame(f.ids[1], &f.stored[1])]);
    let (mut slot, mut progress) = (SlotLog::default(), ProgressLog::default());
    let error = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize).unwrap_err();
    assert_eq!(error, DownloadError::Link(LinkError::Unexpected));
    assert!(slot.writes.is_empty() && progress.marks.is_empty());
}

#[test]
fn download_refuses_a_chunk_larger_than_its_buffer_without_asking() {
    let f = Fixture::new();
    let mut wire = Wire::scripted(&[]);
    let (mut slot, mut progress) = (SlotLog::default(), ProgressLog::default());
    let error = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize - 1).unwrap_err();
    assert_eq!(error, DownloadError::ChunkTooLarge);
    assert!(wire.requests().is_empty() && slot.writes.is_empty() && progress.marks.is_empty());
}

#[test]
fn download_refuses_a_chunk_answer_longer_than_the_link_buffer() {
    let f = Fixture::new();
    let huge = vec![0u8; 9 * 1024];
    let mut wire = Wire::scripted(&[chunk_frame(f.ids[0], &huge)]);
    let (mut slot, mut progress) = (SlotLog::default(), ProgressLog::default());
    let error = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize).unwrap_err();
    let len = (huge.len() + 3 + 32 + 1 + 4) as u32;
    assert_eq!(error, DownloadError::Link(LinkError::TooLarge { len }));
    assert_eq!(wire.read_at, 4);
    assert!(slot.writes.is_empty() && progress.marks.is_empty());
}

#[test]
fn resumed_download_asks_only_for_the_chunks_not_yet_written() {
    let f = Fixture::new();
    let mut wire = Wire::scripted(&(1..3).map(|i| chunk_frame(f.ids[i], &f.stored[i])).collect::<Vec<_>>());
    let mut slot = SlotLog::default();
    let mut progress = ProgressLog { target: Some(ReleaseId::of_manifest(&f.manifest)), marks: vec![0] };
    let fetched = run_download(&f, &mut wire, &mut slot, &mut progress, STORED_BYTES as usize);
    assert_eq!(fetched, Ok(Fetched { chunks: 2, bytes: 2 * u64::from(STORED_BYTES), already: 1 }));
    assert_eq!(slot.prepared, 0, "the partition is not erased again for the same release");
    assert_eq!(wire.requests(), asked_chunks(&f, &[1, 2]));
    let expected: Vec<(u32, Vec<u8>)> = (1..3).map(|i| (i as u32 * CHUNK_BYTES, f.plain(i).to_vec())).collect();
    assert!(slot.writes == expected);
    assert_eq!(progress.marks, [0, 1, 2]);
}

// ---------------------------------------------------------------------------------------
// 3. Finding a release.
// ---------------------------------------------------------------------------------------

const DEVICE: DeviceLimits<'static> = DeviceLimits {
    release: "sensor",
    hw_class: "stm32f7",
    max_image_bytes: 3 * CHUNK_BYTES as u64,
    max_chunks: 3,
    max_stored_chunk_bytes: STORED_BYTES,
};

/// Runs `find_release` against `wire`; the offered release's id on success.
fn run_find(
    f: &Fixture,
    wire: &mut Wire,
    device: &DeviceLimits<'_>,
    link_bytes: usize,
    manifest_bytes: usize,
) -> Result<ReleaseId, FindError> {
    let mut buffer = vec![0u8; link_bytes];
    let (mut policy, mut manifest) = (vec![0u8; 2048], vec![0u8; manifest_bytes]);
    let buffers = FindBuffers { policy: &mut policy, manifest: &mut manifest };
    let mut link = EdgeLink::new(&mut *wire, &mut buffer, TIMEOUT);
    block_on(find_release(&mut link, &mut f.anchor(), device, buffers)).map(|found| found.offer.release.id)
}

fn targets(paths: &[String]) -> Vec<Asked> {
    paths.iter().cloned().map(Asked::Target).collect()
}

#[test]
fn find_takes_a_release_that_checks_out() {
    let f = Fixture::new();
    let mut wire = Wire::scripted(&f.find_script(&f.manifest));
    let found = run_find(&f, &mut wire, &DEVICE, 4096, 4096);
    assert_eq!(found, Ok(ReleaseId::of_manifest(&f.manifest)));
    assert_eq!(wire.requests(), targets(&f.find_paths()));
}

#[test]
fn find_refuses_a_manifest_longer_than_its_buffers() {
    let f = Fixture::new();
    let len = f.manifest.len();
    let others = [f.policy_seal.len(), f.policy.len(), f.manifest_seal.len()];
    assert!(others.iter().all(|&n| n + 5 <= len), "the link buffer below takes every other answer");

    // Longer than the manifest buffer: the link took the frame, the copy does not fit.
    let mut wire = Wire::scripted(&f.find_script(&f.manifest));
    let error = run_find(&f, &mut wire, &DEVICE, 4096, len - 1).unwrap_err();
    assert_eq!(error, FindError::Link(LinkError::TooLarge { len: len as u32 }));
    assert_eq!(wire.requests(), targets(&f.find_paths()));

    // Longer than the link buffer: refused at the frame's length prefix.
    let mut wire = Wire::scripted(&f.find_script(&f.manifest));
    let error = run_find(&f, &mut wire, &DEVICE, len, 4096).unwrap_err();
    assert_eq!(error, FindError::Link(LinkError::TooLarge { len: len as u32 + 5 }));
    assert!(error.blames_edge());
    assert_eq!(wire.read_at, wire.input.len() - (len + 5), "the manifest's body was not read");
}

#[test]
fn find_refuses_a_manifest_over_the_device_limits() {
    let f = Fixture::new();
    let smaller = [
        DeviceLimits { max_image_bytes: 3 * u64::from(CHUNK_BYTES) - 1, ..DEVICE },
        DeviceLimits { max_chunks: 2, ..DEVICE },
        DeviceLimits { max_stored_chunk_bytes: STORED_BYTES - 1, ..DEVICE },
    ];
    for device in smaller {
        let mut wire = Wire::scripted(&f.find_script(&f.manifest));
        let error = run_find(&f, &mut wire, &device, 4096, 4096).unwrap_err();
        assert_eq!(error, FindError::Sealed(SealedError::TooBig), "{device:?}");
        assert!(!error.blames_edge(), "a release too big for the device is not the edge's lie");
        assert_eq!(wire.requests(), targets(&f.find_paths()));
    }
}

#[test]
fn find_refuses_a_manifest_that_does_not_match_its_seal() {
    let f = Fixture::new();
    let mut forged = f.manifest.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01; // the last chunk id: still a well-formed manifest
    assert!(ManifestView::new_checked(&forged).is_ok());
    let mut wire = Wire::scripted(&f.find_script(&forged));
    let error = run_find(&f, &mut wire, &DEVICE, 4096, 4096).unwrap_err();
    assert_eq!(error, FindError::Sealed(SealedError::Seal(SealError::WrongSubject)));
    assert!(error.blames_edge());
    assert_eq!(wire.requests(), targets(&f.find_paths()), "no chunk asked for");
}

#[test]
fn find_asks_nothing_more_after_a_policy_that_does_not_match_its_seal() {
    let f = Fixture::new();
    let mut script = f.find_script(&f.manifest);
    let mut forged = f.policy.clone();
    forged[10] ^= 0x01;
    script[1] = frame(Response::Bytes(&forged));
    let mut wire = Wire::scripted(&script);
    let error = run_find(&f, &mut wire, &DEVICE, 4096, 4096).unwrap_err();
    assert_eq!(error, FindError::Sealed(SealedError::Seal(SealError::WrongSubject)));
    assert_eq!(wire.requests(), targets(&f.find_paths()[..2]), "the manifest's seal is never asked for");
}

// ---------------------------------------------------------------------------------------
// 4. The agent.
// ---------------------------------------------------------------------------------------

/// Edges that answer from a `Server` each; every connection's stream is kept for inspection.
struct MemEdges {
    servers: Vec<Rc<Server>>,
    /// (edge, stream) per connection, in order.
    connections: Vec<(usize, Wire)>,
}

impl Edges for MemEdges {
    type Stream<'s> = &'s mut Wire;

    fn count(&self) -> usize {
        self.servers.len()
    }

    async fn connect(&mut self, index: usize) -> Option<Self::Stream<'_>> {
        let server = self.servers.get(index)?.clone();
        self.connections.push((index, Wire::serving(server)));
        self.connections.last_mut().map(|(_, wire)| wire)
    }
}

impl MemEdges {
    fn chunks_asked(&self) -> Vec<ChunkId> {
        let asked = self.connections.iter().flat_map(|(_, wire)| wire.requests());
        asked.filter_map(|a| if let Asked::Chunks(ids) = a { Some(ids) } else { None }).flatten().collect()
    }
}

/// One `run_once` from a fresh flash with `factory` in ACTIVE, against one edge serving the
/// fixture's release with chunk `corrupt` (if any) carrying a flipped byte.
fn run_agent(
    f: &Fixture,
    t: &TempFlash,
    factory: &[u8],
    corrupt: Option<usize>,
) -> (SharedFlash<HostFlash>, MemEdges, Result<RunOutcome, AgentError>) {
    let flash = t.open();
    flash_factory_image(&flash, factory);
    assert_eq!(boot(&flash), Ok(BootOutcome::Boot));

    let mut files = HashMap::new();
    for (path, bytes) in f.find_paths().into_iter().zip([&f.policy_seal, &f.policy, &f.manifest_seal, &f.manifest]) {
        files.insert(path, bytes.clone());
    }
    let mut chunks: HashMap<ChunkId, Vec<u8>> = f.ids.iter().copied().zip(f.stored.iter().cloned()).collect();
    if let Some(index) = corrupt {
        chunks.get_mut(&f.ids[index]).expect("a chunk of the release")[100] ^= 0x01;
    }
    let mut edges = MemEdges { servers: vec![Rc::new(Server { files, chunks })], connections: Vec::new() };

    let config = AgentConfig {
        limits: DeviceLimits { max_image_bytes: u64::from(HOST.active.size_bytes), max_chunks: 64, ..DEVICE },
        content_key: Some(f.content_key.clone()),
        device_id: [3; 32],
        status_key: None,
        provisioned_anchor: f.anchor(),
        factory_version: "1.0.0",
        request_timeout: TIMEOUT,
    };
    let (mut link, mut chunk, mut policy, mut manifest) =
        (vec![0u8; 16 * 1024], vec![0u8; STORED_BYTES as usize], vec![0u8; 2048], vec![0u8; 4096]);
    let buffers = AgentBuffers { link: &mut link, chunk: &mut chunk, policy: &mut policy, manifest: &mut manifest };
    let outcome = block_on(run_once(&flash, &HOST, &config, &mut edges, buffers, || true, || 1_800_000_000));
    (flash, edges, outcome)
}

fn saved_record(flash: &SharedFlash<HostFlash>) -> Record {
    let parts = Partitions::new(&HOST, flash).expect("partitions");
    let (_, state) = AgentStore::open(parts.agent.clone()).expect("open the agent store");
    state.expect("a saved agent state").record
}

#[test]
fn agent_never_marks_dfu_for_swap_when_a_chunk_is_corrupt() {
    let f = Fixture::new();
    let factory = image(1);
    let t = TempFlash::new("bad-input-agent");
    let (flash, edges, outcome) = run_agent(&f, &t, &factory, Some(1));

    // Resting mid-download (the engine retries later, from another edge or this one next run).
    assert_eq!(outcome, Ok(RunOutcome::Resting(State::Downloading)), "no reset asked for");
    assert_eq!(app_state(&flash), embassy_boot::State::Boot, "DFU is not marked for swap");
    // The chunks in flight when chunk 1 failed (IN_FLIGHT ahead of it), nothing more.
    assert_eq!(edges.chunks_asked(), f.ids[..(1 + IN_FLIGHT).min(3)], "asked for more after its bad chunk");
    assert_eq!(saved_record(&flash).last_error, Some(InstallError::Verification));

    // The bootloader's next step boots the factory image, untouched.
    assert!(read_partition(&flash, HOST.active) == factory, "ACTIVE is unchanged");
    assert_eq!(boot(&flash), Ok(BootOutcome::Boot));
    assert!(read_partition(&flash, HOST.active) == factory, "ACTIVE is unchanged after the bootloader step");
}

/// The control for the test above: the same run with every chunk intact does mark DFU, so
/// the harness can tell the difference.
#[test]
fn agent_marks_dfu_for_swap_once_every_chunk_verified() {
    let f = Fixture::new();
    let t = TempFlash::new("bad-input-agent-good");
    let (flash, edges, outcome) = run_agent(&f, &t, &image(1), None);

    assert_eq!(outcome, Ok(RunOutcome::Reboot));
    assert_eq!(app_state(&flash), embassy_boot::State::Swap);
    assert_eq!(edges.chunks_asked(), f.ids);
    assert_eq!(boot(&flash), Ok(BootOutcome::Swapped));
    assert!(read_partition(&flash, HOST.active)[..f.image.len()] == f.image[..], "ACTIVE holds the new image");
}
