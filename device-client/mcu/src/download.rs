//! The download over one edge link: every chunk the progress record lacks, one request each,
//! in manifest order; each chunk checked against its id (and decrypted) before a byte of it
//! is written, then marked written, so a power cut costs at most the chunk in flight.
//!
//! The update partition is erased once per release ([`UpdateSlot::prepare`], when the
//! progress record starts a new target): after that every chunk lands in erased flash, in
//! any order and after any number of restarts, and nothing is erased again until the next
//! release. "Busy" answers (the edge is still fetching the chunk) are waited out with the
//! same backoff and stall limit as the Linux agent (`protocol::device::fetch`).

use embassy_time::{Instant as Clock, Timer};
use protocol::codec::{self, ContentKey};
use protocol::device::fetch::{busy_backoff, STALL_LIMIT};
use protocol::manifest::ManifestView;
use protocol::wire::device::{ChunkItems, ChunkRanges, ChunkStatus, Request, Response};
use protocol::wire::ChunkRange;
use protocol::ReleaseId;

use crate::edge_link::{EdgeLink, LinkError};

/// The update partition as the download writes it.
pub trait UpdateSlot {
    /// A flash error.
    type Error: core::fmt::Debug;
    /// Erases the partition for a new image.
    fn prepare(&mut self) -> Result<(), Self::Error>;
    /// Writes `data` at byte `offset` of the image (into erased flash; the implementation
    /// pads a tail shorter than the flash's write size).
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
}

/// Which chunks of which target the update partition holds, persisted power-cut safe.
pub trait Progress {
    /// A flash error.
    type Error: core::fmt::Debug;
    /// The target the record is for, if any.
    fn target(&self) -> Option<ReleaseId>;
    /// Starts a record for `target` with no chunk written (after the slot was prepared).
    fn start(&mut self, target: ReleaseId) -> Result<(), Self::Error>;
    /// Whether chunk `index` is written and verified.
    fn is_written(&self, index: u32) -> bool;
    /// Records chunk `index` as written (after its bytes are in flash).
    fn mark_written(&mut self, index: u32) -> Result<(), Self::Error>;
}

/// What a download did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Chunks fetched and written now.
    pub chunks: u32,
    /// Their stored bytes.
    pub bytes: u64,
    /// Chunks already written before (a resumed download).
    pub already: u32,
}

/// Why a download stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadError<F> {
    /// The link failed.
    Link(LinkError),
    /// The edge does not have a chunk (ask another edge).
    Missing,
    /// The edge answered "busy" for longer than the stall limit.
    Stalled,
    /// A chunk failed verification: the edge lied.
    BadChunk {
        /// Its index in the manifest.
        index: u32,
    },
    /// A chunk is bigger than the device's chunk buffer.
    ChunkTooLarge,
    /// Flash failed.
    Flash(F),
}

impl<F> DownloadError<F> {
    /// Whether the edge lied or broke the protocol (as opposed to lacking a chunk, being
    /// busy, or the network failing): the agent asks it nothing more this run.
    pub fn blames_edge(&self) -> bool {
        match self {
            DownloadError::BadChunk { .. } | DownloadError::ChunkTooLarge => true,
            DownloadError::Link(e) => e.blames_edge(),
            _ => false,
        }
    }
}

impl<F> From<LinkError> for DownloadError<F> {
    fn from(e: LinkError) -> Self {
        DownloadError::Link(e)
    }
}

/// Fetches every chunk of `manifest` that `progress` lacks into `slot`.
pub async fn download<S, U, P>(
    link: &mut EdgeLink<'_, S>,
    manifest: &ManifestView<'_>,
    content_key: Option<&ContentKey>,
    slot: &mut U,
    progress: &mut P,
    chunk: &mut [u8],
) -> Result<Fetched, DownloadError<FlashError<U::Error, P::Error>>>
where
    S: embedded_io_async::Read + embedded_io_async::Write,
    U: UpdateSlot,
    P: Progress,
{
    let target = ReleaseId::of_manifest(manifest.as_bytes());
    if progress.target() != Some(target) {
        slot.prepare().map_err(|e| DownloadError::Flash(FlashError::Slot(e)))?;
        progress.start(target).map_err(|e| DownloadError::Flash(FlashError::Progress(e)))?;
    }
    let mut fetched = Fetched::default();
    for (index, entry) in manifest.chunks().enumerate() {
        let index = index as u32;
        if progress.is_written(index) {
            fetched.already += 1;
            continue;
        }
        let stored = chunk.get_mut(..entry.stored_length as usize).ok_or(DownloadError::ChunkTooLarge)?;
        fetch_chunk(link, index, ChunkRange { id: entry.id, offset: 0, length: 0 }, stored).await?;
        let plaintext =
            codec::open_in_place(&entry, content_key, stored).map_err(|_| DownloadError::BadChunk { index })?;
        let offset = u32::try_from(entry.offset).map_err(|_| DownloadError::ChunkTooLarge)?;
        slot.write(offset, plaintext).map_err(|e| DownloadError::Flash(FlashError::Slot(e)))?;
        progress.mark_written(index).map_err(|e| DownloadError::Flash(FlashError::Progress(e)))?;
        fetched.chunks += 1;
        fetched.bytes += u64::from(entry.stored_length);
    }
    Ok(fetched)
}

/// A flash error of the slot or of the progress record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashError<S, P> {
    /// Writing the update partition.
    Slot(S),
    /// Persisting progress.
    Progress(P),
}

/// Chunk `index`'s stored bytes into `out` (exactly its stored length), waiting out "busy".
async fn fetch_chunk<S, F>(
    link: &mut EdgeLink<'_, S>,
    index: u32,
    range: ChunkRange,
    out: &mut [u8],
) -> Result<(), DownloadError<F>>
where
    S: embedded_io_async::Read + embedded_io_async::Write,
{
    let started = Clock::now();
    let mut busy = 0u32;
    loop {
        let ranges = [range];
        let request = Request::GetChunks { ranges: ChunkRanges::from_slice(&ranges) };
        let items: ChunkItems<'_> = match link.request(&request).await? {
            Response::Chunks { items } => items,
            _ => return Err(DownloadError::Link(LinkError::Unexpected)),
        };
        let mut items = items.iter();
        match items.next().map(|item| (item.id == range.id, item.status)) {
            Some((true, ChunkStatus::Ok(bytes))) if bytes.len() == out.len() => {
                out.copy_from_slice(bytes);
                return Ok(());
            }
            // The chunk asked for, with a stored length the manifest does not sign: it fails
            // verification (the length is the first thing checked), so it is a bad chunk,
            // named by its index like any other.
            Some((true, ChunkStatus::Ok(_))) => return Err(DownloadError::BadChunk { index }),
            // Not the chunk asked for, or no item: an answer to another question.
            Some((false, _)) | None => return Err(DownloadError::Link(LinkError::Unexpected)),
            Some((true, ChunkStatus::NotFound)) => return Err(DownloadError::Missing),
            Some((true, ChunkStatus::Busy)) => {
                busy += 1;
                if Clock::now().duration_since(started).as_micros() > STALL_LIMIT.0 {
                    return Err(DownloadError::Stalled);
                }
                Timer::after_micros(busy_backoff(busy).0.max(1_000)).await;
            }
        }
    }
}
