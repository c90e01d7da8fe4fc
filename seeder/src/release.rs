//! `seeder release add` and `seeder release extract`.

use anyhow::{bail, Context, Result};
use protocol::chunker::{self, Chunking};
use protocol::codec::{self, ContentKey};
use protocol::manifest::{ChunkEntry, ManifestView, ReleaseManifest};
use protocol::reassemble::ImageVerifier;
use protocol::tuf::ReleaseTarget;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::keys;
use crate::repo::{ExtraSigners, Repo};
use crate::trusted;

/// zstd level for chunk compression: fast enough to keep up with hashing, and stable across
/// releases so unchanged chunks compress to the same bytes.
pub const ZSTD_LEVEL: i32 = 3;

/// What `release add` was asked to publish.
pub struct AddRequest<'a> {
    /// The image file.
    pub image: &'a Path,
    /// Release name.
    pub name: &'a str,
    /// Release version.
    pub version: &'a str,
    /// Hardware class.
    pub hw_class: &'a str,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Chunking, or `None` for the chunking this name's releases already use (see
    /// [`parse_chunking`]).
    pub chunking: Option<Chunking>,
    /// zstd level, or none.
    pub zstd_level: Option<i32>,
    /// Encrypt with the repository's content key.
    pub encrypt: bool,
    /// Draw a progress bar.
    pub progress: bool,
}

/// What `release add` did.
#[derive(Debug, Serialize)]
pub struct AddReport {
    /// The TUF target path of the manifest.
    pub target: String,
    /// False when the same content was already published (a no-op).
    pub published: bool,
    /// Plaintext image bytes.
    pub image_bytes: u64,
    /// Chunks in the manifest.
    pub chunks: usize,
    /// Chunks that were not in the store before.
    pub new_chunks: usize,
    /// Sum of stored chunk bytes.
    pub stored_bytes: u64,
    /// Stored bytes of the new chunks: what this release adds to the store.
    pub new_stored_bytes: u64,
    /// Manifest length.
    pub manifest_bytes: usize,
    /// How the image was cut, as `--chunking` spells it.
    pub chunking: String,
}

/// The TUF target path of a release's manifest.
pub fn target_path(name: &str, version: &str) -> String {
    format!("releases/{name}/{version}.manifest")
}

/// Names and versions become path segments and URL parts, so keep them to a safe alphabet.
pub fn check_segment(what: &str, text: &str, max: usize) -> Result<()> {
    let ok = !text.is_empty()
        && text.len() <= max
        && !text.starts_with('.')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !ok {
        bail!("{what} `{text}` must be 1-{max} characters of A-Z a-z 0-9 . _ + - and not start with a dot");
    }
    Ok(())
}

/// Parses `auto` (`None`), `cdc`, `sbox-cdc` or `fixed:BYTES` (BYTES may end in K or M, powers
/// of 1024).
pub fn parse_chunking(text: &str) -> Result<Option<Chunking>> {
    let chunking = match text {
        "auto" => return Ok(None),
        "cdc" => Chunking::DEFAULT_CDC,
        "sbox-cdc" => Chunking::DEFAULT_SBOX_CDC,
        _ => {
            let size = text.strip_prefix("fixed:").with_context(|| {
                format!(
                    "chunking `{text}` must be `auto`, `cdc`, `sbox-cdc` or `fixed:BYTES` (e.g. fixed:4096, fixed:64K)"
                )
            })?;
            let (digits, scale) = match size.as_bytes().last() {
                Some(b'K' | b'k') => (&size[..size.len() - 1], 1024),
                Some(b'M' | b'm') => (&size[..size.len() - 1], 1024 * 1024),
                _ => (size, 1),
            };
            let n: u32 = digits.parse().with_context(|| format!("`{size}` is not a chunk size"))?;
            Chunking::Fixed { size_bytes: n.checked_mul(scale).context("chunk size too large")? }
        }
    };
    chunking.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(chunking))
}

/// `chunking` as `--chunking` spells it, or its parameters when no spelling gives them.
pub fn chunking_name(chunking: &Chunking) -> String {
    match *chunking {
        c if c == Chunking::DEFAULT_CDC => "cdc".into(),
        c if c == Chunking::DEFAULT_SBOX_CDC => "sbox-cdc".into(),
        Chunking::Fixed { size_bytes } => format!("fixed:{size_bytes}"),
        Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } => format!("FastCDC {min_bytes}/{avg_bytes}/{max_bytes}"),
        Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes } => {
            format!("S-box CDC {min_bytes}/{avg_bytes}/{max_bytes}")
        }
    }
}

/// The chunking for a release of `name` for `hw_class` when none was asked for: that of the
/// release this name's devices of this class would install now (`choose_release`, the
/// devices' own choice: counter, then version), since a device reuses only chunks whose ids
/// its installed release shares and releases cut differently share none. With no release
/// for the class, that of the name's best release of any class; FastCDC for a new name.
/// So after a publisher switches a name's chunking once, later releases keep the new one.
fn chunking_of_name(targets: &serde_json::Map<String, Value>, name: &str, hw_class: &str) -> Result<Chunking> {
    use protocol::device::release::{choose_release, release_name, DeviceIdentity};
    use protocol::device::{ReleaseCandidate, ReleaseChoice};
    let mut releases = Vec::new();
    for (path, entry) in targets {
        if release_name(path) != Some(name) {
            continue;
        }
        let release = ReleaseTarget::from_custom(entry.get("custom"))
            .map_err(|e| anyhow::anyhow!("published target {path} has unreadable release details: {e}"))?;
        releases.push(release);
    }
    let candidates = releases.iter().map(|r| ReleaseCandidate {
        name,
        hw_class: &r.hw_class,
        security_counter: r.security_counter,
        version: &r.version,
    });
    let device = DeviceIdentity { release: name, hw_class, security_floor: 0 };
    Ok(match choose_release(candidates, &device) {
        ReleaseChoice::Nothing => Chunking::DEFAULT_CDC,
        ReleaseChoice::Install(index) | ReleaseChoice::Refuse { index, .. } => releases[index].chunking,
    })
}

/// Chunks, seals and stores the image, then publishes its manifest as a TUF target.
pub fn add(repo: &Repo, req: &AddRequest<'_>) -> Result<AddReport> {
    check_segment("name", req.name, protocol::manifest::limits::MAX_NAME_BYTES)?;
    check_segment("version", req.version, protocol::manifest::limits::MAX_VERSION_BYTES)?;
    check_segment("hardware class", req.hw_class, protocol::manifest::limits::MAX_HW_CLASS_BYTES)?;
    // Held to the end: a renewal by `seeder serve` must not sign a snapshot in between.
    let _lock = repo.lock()?;
    let current = repo.current()?;
    // Fail before the long part if the keys to publish are missing.
    for role in ["targets", "snapshot", "timestamp"] {
        repo.signers(&current, role)?;
    }
    let key = if req.encrypt { Some(keys::load_content_key(&keys::content_key_path(&repo.keys_dir()))?) } else { None };
    let chunking = match req.chunking {
        Some(chunking) => chunking,
        None => {
            let targets = current.targets["targets"].as_object().cloned().unwrap_or_default();
            chunking_of_name(&targets, req.name, req.hw_class)?
        }
    };

    let file = File::open(req.image).with_context(|| format!("cannot open image {}", req.image.display()))?;
    let image_len = file.metadata()?.len();
    let bar = progress_bar(req.progress, image_len);
    prepare_chunk_dirs(repo)?;

    let mut blake3 = blake3::Hasher::new();
    let mut sha256 = sha2::Sha256::new();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let sealed = seal_in_parallel(repo, workers, req, chunking, key.as_ref(), &bar, file, |data| {
        blake3.update(data);
        sha256.update(data);
    })?;
    bar.finish_and_clear();
    let SealOutput { entries, staged, new_stored_bytes } = sealed;

    let manifest = ReleaseManifest {
        name: req.name.into(),
        version: req.version.into(),
        hw_class: req.hw_class.into(),
        security_counter: req.security_counter,
        image_len,
        image_blake3: *blake3.finalize().as_bytes(),
        image_sha256: sha256.finalize().into(),
        content_key_id: key.as_ref().map(ContentKey::id),
        chunking,
        chunks: entries,
    };
    let manifest_bytes = manifest.encode().map_err(|e| anyhow::anyhow!("cannot build the manifest: {e}"))?;
    let target = target_path(req.name, req.version);
    let mut report = AddReport {
        target: target.clone(),
        published: true,
        image_bytes: image_len,
        chunks: manifest.chunks.len(),
        new_chunks: staged.len(),
        stored_bytes: manifest.stored_bytes(),
        new_stored_bytes,
        manifest_bytes: manifest_bytes.len(),
        chunking: chunking_name(&chunking),
    };

    let mut targets_map = current.targets["targets"].as_object().cloned().unwrap_or_default();
    if let Some(existing) = targets_map.get(&target) {
        for (path, _) in &staged {
            let _ = fs::remove_file(path);
        }
        let published = ReleaseTarget::from_custom(existing.get("custom")).ok().filter(|r| {
            r.image_blake3 == manifest.image_blake3
                && r.hw_class == req.hw_class
                && r.security_counter == req.security_counter
        });
        let Some(published) = published else {
            bail!(
                "{} {} is already published with other content; publish it under a new version",
                req.name,
                req.version
            );
        };
        report.published = false;
        report.chunking = chunking_name(&published.chunking);
        report.new_chunks = 0;
        report.new_stored_bytes = 0;
        return Ok(report);
    }

    // Chunk bodies become durable before they get their final names, and before any
    // metadata names them: one syncfs for the batch instead of an fsync per chunk.
    host::fs::sync_filesystem(&repo.chunks_dir())?;
    for (staged_path, final_path) in &staged {
        fs::rename(staged_path, final_path)
            .with_context(|| format!("cannot move chunk into {}", final_path.display()))?;
    }
    host::fs::sync_filesystem(&repo.chunks_dir())?;

    let sha256_hex = protocol::hex::encode(&sha2::Sha256::digest(&manifest_bytes));
    host::fs::write_atomic(&repo.target_file_path(&target, &sha256_hex), &manifest_bytes, host::fs::PUBLIC)?;
    // The seal MCUs verify the manifest with, signed by the same targets keys.
    crate::mcu_trust::sync(repo, &current)?;
    let signers = repo.signers(&current, "targets")?;
    let (seal_path, seal_entry) =
        crate::mcu_trust::seal_target(repo, protocol::seal::SealKind::Manifest, &target, &manifest_bytes, &signers)?;
    targets_map.insert(seal_path, seal_entry);
    targets_map.insert(target, target_entry(&manifest, &manifest_bytes, &sha256_hex));
    repo.publish_targets(&current, targets_map, &ExtraSigners::default())?;
    Ok(report)
}

/// What sealing produced: manifest entries in image order and the new chunk files staged.
struct SealOutput {
    entries: Vec<ChunkEntry>,
    staged: Vec<(PathBuf, PathBuf)>,
    new_stored_bytes: u64,
}

/// Streams the image through the chunker on this thread, its scan for cut points on
/// `workers` threads (feeding `hash_plaintext` in image order), while `workers` threads
/// compress, encrypt, hash and stage chunks. Creating one file per chunk costs far more
/// system time than the crypto costs CPU, so spreading it over every core is what makes
/// `release add` fast. Memory stays bounded: the job queue holds at most `2 × workers`
/// chunks, the chunker one 8 MiB block and one maximum-size chunk.
#[allow(clippy::too_many_arguments)]
fn seal_in_parallel(
    repo: &Repo,
    workers: usize,
    req: &AddRequest<'_>,
    chunking: Chunking,
    key: Option<&ContentKey>,
    bar: &indicatif::ProgressBar,
    image: File,
    mut hash_plaintext: impl FnMut(&[u8]),
) -> Result<SealOutput> {
    use std::sync::mpsc;
    use std::sync::Mutex;

    type Sealed = (usize, ChunkEntry, Option<(PathBuf, PathBuf, u64)>);
    let (job_tx, job_rx) = mpsc::sync_channel::<(usize, chunker::StreamChunk)>(2 * workers);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<Result<Sealed>>();
    let seen = Mutex::new(HashSet::new());
    // Without a nudge the kernel holds a whole GiB of new chunk files dirty until the final
    // syncfs, then writes it while we wait. Flushing every FLUSH_EVERY_BYTES from a side
    // thread overlaps disk writes with chunking; the final syncfs then has little left.
    const FLUSH_EVERY_BYTES: u64 = 128 << 20;
    let written = std::sync::atomic::AtomicU64::new(0);
    let (flush_tx, flush_rx) = mpsc::sync_channel::<()>(1);
    let chunks_dir = repo.chunks_dir();

    std::thread::scope(|scope| -> Result<SealOutput> {
        scope.spawn(move || {
            while flush_rx.recv().is_ok() {
                let _ = host::fs::sync_filesystem(&chunks_dir);
            }
        });
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (job_rx, seen, written) = (&job_rx, &seen, &written);
            scope.spawn(move || loop {
                let job = job_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                let Ok((index, chunk)) = job else { return };
                let result = (|| -> Result<Sealed> {
                    let sealed = codec::seal(&chunk.data, req.zstd_level, key)?;
                    let entry = ChunkEntry {
                        offset: chunk.span.offset,
                        length: chunk.span.length,
                        codec: sealed.codec,
                        stored_length: sealed.stored.len() as u32,
                        id: sealed.id,
                    };
                    let first = seen.lock().map(|mut s| s.insert(sealed.id)).unwrap_or(false);
                    let final_path = repo.chunk_path(&sealed.id);
                    if !first || chunk_is_stored(&final_path, &sealed.id) {
                        return Ok((index, entry, None));
                    }
                    // Staged beside its final name: creates spread over 256 directories instead
                    // of contending for one directory's lock, and the rename stays in-directory.
                    let staged_path = staged_name(&final_path);
                    fs::write(&staged_path, &sealed.stored)
                        .with_context(|| format!("cannot write {}", staged_path.display()))?;
                    written.fetch_add(sealed.stored.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Ok((index, entry, Some((staged_path, final_path, sealed.stored.len() as u64))))
                })();
                if done_tx.send(result).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);

        let mut index = 0usize;
        let mut flushed_at = 0u64;
        let streamed = chunker::stream_chunks_with::<_, anyhow::Error>(
            BufReader::with_capacity(1 << 20, image),
            chunking,
            workers,
            scan_on_threads,
            |chunk| {
                hash_plaintext(&chunk.data);
                bar.inc(chunk.span.length as u64);
                job_tx.send((index, chunk)).map_err(|_| anyhow::anyhow!("a sealing worker stopped"))?;
                index += 1;
                let now_written = written.load(std::sync::atomic::Ordering::Relaxed);
                if now_written - flushed_at >= FLUSH_EVERY_BYTES && flush_tx.try_send(()).is_ok() {
                    flushed_at = now_written;
                }
                Ok(())
            },
        );
        drop(job_tx);
        drop(flush_tx);

        let mut out = SealOutput { entries: Vec::with_capacity(index), staged: Vec::new(), new_stored_bytes: 0 };
        let mut sealed: Vec<Sealed> = Vec::with_capacity(index);
        let mut first_error = None;
        for result in done_rx {
            match result {
                Ok(item) => sealed.push(item),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        streamed?;
        if let Some(e) = first_error {
            return Err(e);
        }
        sealed.sort_by_key(|(i, _, _)| *i);
        for (_, entry, staged) in sealed {
            if let Some((staged_path, final_path, bytes)) = staged {
                out.staged.push((staged_path, final_path));
                out.new_stored_bytes += bytes;
            }
            out.entries.push(entry);
        }
        Ok(out)
    })
}

/// Runs the chunker's scan pieces (one per worker) on threads: the scan for cut points is
/// most of chunking's cost and, unlike the walk from cut to cut, it splits.
fn scan_on_threads(pieces: Vec<chunker::ScanPiece<'_>>) -> Vec<chunker::CutCandidates> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = pieces.into_iter().map(|piece| scope.spawn(move || piece.scan())).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// The hidden name a chunk is written under before it is durable; `seeder verify` and the
/// store ignore such work files, and the next `release add` removes leftovers.
fn staged_name(final_path: &Path) -> PathBuf {
    chunk_store::layout::work_path(final_path, STAGED)
}

/// Suffix of a chunk staged by `release add`.
const STAGED: &str = "staged";

/// Creates the 256 fan-out directories and removes chunks a killed run left staged (and
/// only those: the origin may be reading, another writer is excluded by the lock).
fn prepare_chunk_dirs(repo: &Repo) -> Result<()> {
    chunk_store::layout::prepare(&repo.chunks_dir(), |name| name.ends_with(&format!(".{STAGED}")))
}

fn chunk_is_stored(path: &Path, id: &protocol::ChunkId) -> bool {
    // An existing file is reused only if it still hashes to its name: a damaged chunk is
    // rewritten rather than trusted.
    fs::read(path).map(|bytes| id.matches(&bytes)).unwrap_or(false)
}

fn target_entry(manifest: &ReleaseManifest, bytes: &[u8], sha256_hex: &str) -> Value {
    let release = ReleaseTarget {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        hw_class: manifest.hw_class.clone(),
        security_counter: manifest.security_counter,
        image_length: manifest.image_len,
        image_blake3: manifest.image_blake3,
        image_sha256: manifest.image_sha256,
        chunk_count: manifest.chunks.len() as u64,
        stored_bytes: manifest.stored_bytes(),
        encrypted: manifest.content_key_id.is_some(),
        chunking: manifest.chunking,
    };
    json!({
        "length": bytes.len(),
        "hashes": {"sha256": sha256_hex},
        "custom": release.to_custom(),
    })
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} chunking {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// What `release extract` wrote.
#[derive(Debug, Serialize)]
pub struct ExtractReport {
    /// The output file.
    pub out: String,
    /// Bytes written.
    pub image_bytes: u64,
    /// Chunks read and verified.
    pub chunks: u32,
    /// blake3 of the image, hex.
    pub image_blake3: String,
}

/// Rebuilds a release's image, verifying metadata through TUF from the repository's first
/// root, the manifest against its target hashes, every chunk against its id, and the whole
/// image against its signed hashes. Writes to a temp file renamed into place only on success.
pub fn extract(repo: &Repo, name: &str, version: &str, out: &Path) -> Result<ExtractReport> {
    check_segment("name", name, protocol::manifest::limits::MAX_NAME_BYTES)?;
    check_segment("version", version, protocol::manifest::limits::MAX_VERSION_BYTES)?;
    let verified = trusted::load(repo, None, crate::time::now_unix())?;
    let target = target_path(name, version);
    let manifest_bytes = verified.read_target(repo, "targets", &target)?.with_context(|| {
        format!("{name} {version} is not published in {}; see `seeder inspect`", repo.dir.display())
    })?;
    let view =
        ManifestView::new_checked(&manifest_bytes).map_err(|e| anyhow::anyhow!("manifest of {name} {version}: {e}"))?;
    let key = match view.content_key_id() {
        None => None,
        Some(id) => {
            let key = keys::load_content_key(&keys::content_key_path(&repo.keys_dir()))?;
            if key.id() != id {
                bail!("{name} {version} was encrypted under another content key than {}", repo.keys_dir().display());
            }
            Some(key)
        }
    };

    // Dropped without a commit (a chunk missing or corrupt), the temp file goes and `out`
    // keeps what it had.
    let mut file = host::fs::AtomicFile::create(out, host::fs::PUBLIC)?;
    let mut verifier = ImageVerifier::new();
    for (index, entry) in view.chunks().enumerate() {
        let path = repo.chunk_path(&entry.id);
        let mut stored = Vec::with_capacity(entry.stored_length as usize);
        File::open(&path)
            .with_context(|| format!("chunk {index} is missing: {}", path.display()))?
            .take(entry.stored_length as u64 + 1)
            .read_to_end(&mut stored)?;
        let plain = codec::open(&entry, key.as_ref(), stored)
            .map_err(|e| anyhow::anyhow!("chunk {index} ({}): {e}", path.display()))?;
        verifier.update(&entry, &plain).map_err(|e| anyhow::anyhow!("{e}"))?;
        file.write_all(&plain).with_context(|| format!("cannot write {}", out.display()))?;
    }
    verifier.finish(&view).map_err(|e| anyhow::anyhow!("{name} {version}: {e}"))?;
    file.commit()?;
    Ok(ExtractReport {
        out: out.display().to_string(),
        image_bytes: view.image_len(),
        chunks: view.chunk_count(),
        image_blake3: protocol::hex::encode(&view.image_blake3()),
    })
}
