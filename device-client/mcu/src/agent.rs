//! The agent: `protocol::install::Engine` — the same engine as the Linux agent — driven over
//! this crate's pieces, from one boot to the point where the device waits or must reset.
//!
//! [`run_once`] opens the agent store (record, pinned anchor, chunk progress), tells the
//! engine what the bootloader booted (from embassy-boot's state), and carries out the
//! engine's actions until it has nothing left to do now:
//!
//! - `FetchMetadata`: [`crate::find::find_release`] on each configured edge in turn, a lying
//!   one skipped; a rotated anchor is persisted before the offer is acted on;
//! - `AskGate` / `AskSwitch`: `protocol::rollout::Gate` over the verified policy;
//! - `Download`: [`crate::download::download`] into DFU, erased once per release, chunk
//!   progress in the store, so a reset resumes without fetching a verified chunk again;
//! - `VerifyImage`: sha256 of the whole DFU image against the manifest before anything is
//!   marked for the bootloader;
//! - `ActivateSlot`: embassy-boot's `mark_updated`; `Reboot`: returned to the caller, who
//!   resets (the bootloader then swaps);
//! - `RunHealthChecks`: the caller's health hook; `Commit`: `mark_booted`. Without it, the
//!   next reset makes embassy-boot revert.
//!
//! Slots: the engine's A/B are logical. embassy-boot always runs ACTIVE; the record's
//! `active` names the committed image and its `inactive()` the one in DFU or on trial.
//! After a reset, embassy's `Swap` state means the new image runs on trial (the bootloader
//! runs at every reset, before the agent), `Revert` that it was rolled back. `Boot` during a
//! trial is ambiguous (a reset between `mark_booted` and the record's commit, or a revert
//! whose marker a power cut lost): the agent store keeps the target image's sha256, and
//! whether ACTIVE holds that image decides.

use embassy_boot::{BlockingFirmwareUpdater, State as BootState};
use embassy_time::Duration;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use protocol::codec::ContentKey;
use protocol::device::sealed::DeviceLimits;
use protocol::install::{
    Action, BootInfo, Engine, EngineConfig, ErrorCode, GateDecision, HealthOutcome, Label, Record, Release, Slot, State,
};
use protocol::rollout::{EdgeHold, Gate};
use protocol::seal::TrustAnchor;
use protocol::status_writer::{write_signed, ReportDraft, RolloutPart};
use protocol::wire::device::{Request, Response};
use sha2::{Digest, Sha256};

use crate::agent_store::{AgentState, AgentStore, InstallMark, ReportState, StoreError};
use crate::boot::{Partitions, SharedFlash};
use crate::download::{download, DownloadError, Progress, UpdateSlot};
use crate::edge_link::{EdgeLink, LinkError};
use crate::find::{find_release, FindBuffers, FindError, Found};
use crate::layout::FlashLayout;
use crate::progress::ChunkProgress;

/// Connections to the configured edge nodes, in order of preference.
#[allow(async_fn_in_trait)]
pub trait Edges {
    /// A connected byte stream (embassy-net's `TcpSocket` on the device) that sends what is
    /// written without a flush, with Nagle's algorithm off (see `edge_link`).
    type Stream<'s>: embedded_io_async::Read + embedded_io_async::Write
    where
        Self: 's;
    /// How many edges are configured.
    fn count(&self) -> usize;
    /// Connects to edge `index`; `None` if it does not answer.
    async fn connect(&mut self, index: usize) -> Option<Self::Stream<'_>>;
}

/// What the device is and what it may assume.
pub struct AgentConfig<'a> {
    /// Release name, hardware class and capacity.
    pub limits: DeviceLimits<'a>,
    /// The fleet content key (chunks are decrypted with it); `None` for plaintext releases.
    pub content_key: Option<ContentKey>,
    /// The device's public key: its place in a rollout's waves, and the key its status
    /// reports are checked against (the public half of `status_key`).
    pub device_id: [u8; 32],
    /// The device's ed25519 signing key for status reports; `None` sends none.
    pub status_key: Option<&'a crate::status_key::StatusKey>,
    /// The anchor provisioned at the factory, used until the store holds one.
    pub provisioned_anchor: TrustAnchor,
    /// The version string of the factory image.
    pub factory_version: &'a str,
    /// Each request's timeout.
    pub request_timeout: Duration,
}

/// The buffers one run needs, statically sized by the caller.
pub struct AgentBuffers<'a> {
    /// The edge link's frame buffer (a chunk answer, a seal — opened in place —, a manifest).
    pub link: &'a mut [u8],
    /// One stored chunk while it downloads, the scratch the image hash reads through, and
    /// the status report's scratch at the end of a run: at least the largest stored chunk.
    pub chunk: &'a mut [u8],
    /// The rollout policy.
    pub policy: &'a mut [u8],
    /// The manifest.
    pub manifest: &'a mut [u8],
}

/// Where a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Nothing more to do now; the record's state says where the device stands.
    Resting(State),
    /// Reset the device: the bootloader swaps in the new image (or reverts to the old).
    Reboot,
}

/// Why a run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentError {
    /// The layout does not fit the flash.
    Layout,
    /// A configured name does not fit the record (factory version, hardware class).
    Config,
    /// The agent store failed.
    Store(StoreError),
    /// embassy-boot's state could not be read or written.
    Boot,
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(e)
    }
}

/// One boot's worth of work; see the module doc. `health` is the trial's check, `unix_now`
/// the wall clock the rollout gate reads.
pub async fn run_once<F: NorFlash, E: Edges>(
    flash: &SharedFlash<F>,
    layout: &FlashLayout,
    config: &AgentConfig<'_>,
    edges: &mut E,
    buffers: AgentBuffers<'_>,
    health: impl Fn() -> bool,
    unix_now: impl Fn() -> i64,
) -> Result<RunOutcome, AgentError> {
    let parts = Partitions::new(layout, flash).map_err(|_| AgentError::Layout)?;
    let (mut store, mut state) = open_state(parts.agent.clone(), config)?;
    let mut dfu = parts.dfu.clone();
    let mut word = [0u8; 32];
    let word = word.get_mut(..layout.write_size_bytes as usize).ok_or(AgentError::Layout)?;
    let mut updater = BlockingFirmwareUpdater::new(parts.updater_config(), word);
    let boot_state = updater.get_state().map_err(|_| AgentError::Boot)?;

    let hw_class = Label::new(config.limits.hw_class).ok_or(AgentError::Config)?;
    let mut engine = Engine::new(EngineConfig::new(hw_class), state.record);
    let target = state.record.inactive();
    let installing = matches!(state.record.state, State::Installing | State::PendingReboot | State::Trial);
    let booted = match boot_state {
        BootState::Swap if installing => BootInfo { booted: target, pending: Some(target) },
        // Normal boot in the middle of an install: `mark_booted` ran before a reset (the
        // new image is committed) or a revert lost its marker (the old image runs). What
        // ACTIVE holds decides.
        BootState::Boot if installing && active_holds_target(&mut parts.active.clone(), &state) => {
            BootInfo { booted: target, pending: None }
        }
        _ => BootInfo { booted: state.record.active, pending: None },
    };
    let now = || protocol::time::Instant(embassy_time::Instant::now().as_micros());
    engine.handle_boot(now(), booted);
    if matches!(boot_state, BootState::Swap | BootState::Revert) && state.progress.chunk_count() > 0 {
        // The bootloader exchanged DFU and ACTIVE: the chunks the bitmap marks are no longer
        // in DFU (a retry after a rollback must fetch them again).
        state.progress = ChunkProgress::none();
        store.save(&state)?;
    }
    if matches!(boot_state, BootState::Revert) {
        // Acknowledge the revert so embassy-boot boots normally from now on.
        updater.mark_booted().map_err(|_| AgentError::Boot)?;
    }
    if matches!(engine.state(), State::Idle | State::Committed | State::RolledBack) {
        engine.handle_check(now());
    }

    let AgentBuffers { link: link_buffer, chunk, policy, manifest } = buffers;
    let mut find = FindBuffers { policy, manifest };
    let mut found: Option<(usize, usize, usize)> = None; // (edge, policy len, manifest len)
    let gate = Gate::default();
    let mut report_due = false;
    // Edges caught lying this run (bit i: edge i), asked nothing more until the next run.
    let mut liars = Liars::default();
    while let Some(action) = engine.poll_action() {
        match action {
            Action::Persist => {
                state.record = *engine.record();
                store.save(&state)?;
            }
            Action::FetchMetadata => {
                match find_and_pin(edges, config, &mut store, &mut state, link_buffer, &mut find, &mut liars).await? {
                    Ok(release) => {
                        found = Some((release.edge, release.policy_len, release.manifest_len));
                        engine.handle_offer(now(), release.offer);
                    }
                    Err(FindError::Missing) => engine.handle_no_update(now()),
                    Err(FindError::Sealed(_)) => engine.handle_check_failed(now(), ErrorCode::Verification),
                    Err(FindError::Link(_)) => engine.handle_check_failed(now(), ErrorCode::Network),
                }
            }
            Action::AskGate | Action::AskSwitch => {
                if found.is_none() {
                    // Resumed (a staged image waiting for its window): the gate needs the
                    // current policy, so find the release again.
                    if let Ok(release) =
                        find_and_pin(edges, config, &mut store, &mut state, link_buffer, &mut find, &mut liars).await?
                    {
                        found = Some((release.edge, release.policy_len, release.manifest_len));
                    }
                }
                let policy =
                    found.and_then(|(_, p, _)| protocol::rollout::policy::PolicyView::parse(&find.policy[..p]).ok());
                let decision = match policy {
                    Some(view) => {
                        let verdict = if action == Action::AskGate {
                            gate.download_decision(&view, &config.device_id, unix_now(), EdgeHold::None)
                        } else {
                            gate.switch_decision(&view, &config.device_id, "", unix_now(), EdgeHold::None)
                        };
                        gate.engine_decision(verdict, now(), unix_now())
                    }
                    // No edge serves the policy now: no decision without it; ask again later.
                    None => GateDecision::WaitUntil(now() + protocol::time::Duration::from_secs(60)),
                };
                if action == Action::AskGate {
                    engine.handle_gate(now(), decision);
                } else {
                    engine.handle_switch_gate(now(), decision);
                }
            }
            Action::ResetProgress => state.progress = ChunkProgress::none(),
            Action::Download { .. } => {
                if found.is_none() {
                    // Resuming after a reset: find the release again (the record names it).
                    if let Ok(release) =
                        find_and_pin(edges, config, &mut store, &mut state, link_buffer, &mut find, &mut liars).await?
                    {
                        if Some(release.offer.release.id) == state.record.target.map(|t| t.id) {
                            found = Some((release.edge, release.policy_len, release.manifest_len));
                        }
                    }
                }
                let Some((edge, _, manifest_len)) = found else {
                    engine.handle_download_failed(now(), ErrorCode::Network);
                    continue;
                };
                let Ok(view) = protocol::manifest::ManifestView::new_checked(&find.manifest[..manifest_len]) else {
                    engine.handle_download_failed(now(), ErrorCode::Verification);
                    continue;
                };
                // Saved with the progress record, before the first chunk.
                state.target_sha256 = view.image_sha256();
                mark_install(&mut state, &find, found, unix_now());
                // From the edge that served the release, then the others: chunks are checked
                // against the verified manifest, so any edge may serve them, and the progress
                // record carries over from one to the next.
                let mut result = Err(DownloadError::Link(LinkError::Io));
                let mut lied = false;
                let count = edges.count();
                for at in (0..count).map(|i| (edge + i) % count) {
                    if liars.contains(at) {
                        continue;
                    }
                    let Some(stream) = edges.connect(at).await else { continue };
                    let mut link = EdgeLink::new(stream, &mut *link_buffer, config.request_timeout);
                    let mut slot = DfuSlot { dfu: &mut dfu, write_size: layout.write_size_bytes as usize };
                    let mut progress = StoreProgress { store: &mut store, state: &mut state, target: &view };
                    result =
                        download(&mut link, &view, config.content_key.as_ref(), &mut slot, &mut progress, &mut *chunk)
                            .await;
                    match &result {
                        Ok(_) | Err(DownloadError::Flash(_)) => break,
                        Err(e) if e.blames_edge() => {
                            liars.add(at);
                            lied = true;
                        }
                        Err(_) => {}
                    }
                }
                if lied && result.is_err() && !matches!(result, Err(DownloadError::Flash(_))) {
                    result = Err(DownloadError::BadChunk { index: 0 });
                }
                match result {
                    Ok(fetched) => {
                        engine.handle_progress(view.chunk_count(), fetched.bytes, 0);
                        engine.handle_download_done(now());
                    }
                    Err(DownloadError::BadChunk { .. }) => {
                        engine.handle_download_failed(now(), ErrorCode::Verification)
                    }
                    Err(DownloadError::Flash(_)) => engine.handle_storage_failed(now()),
                    Err(_) => engine.handle_download_failed(now(), ErrorCode::Network),
                }
            }
            Action::VerifyImage { .. } => {
                // Against what the store kept for the target (a resumed run has not fetched
                // the manifest again, and needs not).
                let matches = match state.record.target {
                    Some(target) if state.target_sha256 != [0; 32] => {
                        image_sha256(&mut dfu, target.image_len, chunk) == Some(state.target_sha256)
                    }
                    _ => false,
                };
                engine.handle_image_verified(now(), matches);
            }
            Action::ActivateSlot { .. } => match updater.mark_updated() {
                Ok(()) => engine.handle_slot_activated(now()),
                Err(_) => engine.handle_storage_failed(now()),
            },
            Action::Reboot => {
                state.record = *engine.record();
                store.save(&state)?;
                if report_due || state.report.unsent {
                    let mut reporter = Reporter { edges, config, store: &mut store, state: &mut state, liars };
                    reporter.send(link_buffer, &mut *chunk, &mut *find.policy, unix_now()).await?;
                }
                return Ok(RunOutcome::Reboot);
            }
            Action::RunHealthChecks { .. } => {
                let outcome = if health() { HealthOutcome::Healthy } else { HealthOutcome::Failed };
                engine.handle_health(now(), outcome);
            }
            Action::Commit { .. } => {
                updater.mark_booted().map_err(|_| AgentError::Boot)?;
                engine.handle_committed(now());
            }
            // Not marking the image booted is the rollback: the next reset reverts.
            Action::RollBack { .. } => {}
            // Sent once the run rests or resets: one report of where it ended, not one per
            // step (each costs a flash save for its number).
            Action::Report => report_due = true,
        }
    }
    state.record = *engine.record();
    store.save(&state)?;
    if report_due || state.report.unsent {
        let mut reporter = Reporter { edges, config, store: &mut store, state: &mut state, liars };
        reporter.send(link_buffer, &mut *chunk, &mut *find.policy, unix_now()).await?;
    }
    Ok(RunOutcome::Resting(engine.state()))
}

/// Remembers that the download about to start belongs to the verified policy's rollout, so
/// reports name it through resets (kept when it is the same install resumed).
fn mark_install(state: &mut AgentState, find: &FindBuffers<'_>, found: Option<(usize, usize, usize)>, unix_now: i64) {
    let Some(target) = state.record.target else { return };
    if state.report.install.is_some_and(|m| m.release == target.id) {
        return;
    }
    let policy = found.and_then(|(_, p, _)| protocol::rollout::policy::PolicyView::parse(&find.policy[..p]).ok());
    state.report.install = policy.and_then(|view| InstallMark::new(view.id(), target.id, unix_now));
}

/// Sends the device's status report to the first edge that acknowledges it.
struct Reporter<'r, 'c, E, F> {
    edges: &'r mut E,
    config: &'r AgentConfig<'c>,
    store: &'r mut AgentStore<F>,
    state: &'r mut AgentState,
    liars: Liars,
}

impl<E: Edges, F: NorFlash> Reporter<'_, '_, E, F> {
    /// Numbers the report (persisted first: an edge refuses a number it has seen), signs it
    /// and offers it to each edge in turn; one that is not acknowledged is sent again, with
    /// a new number, on the next run. `scratch` and `out` hold the report and its wire form
    /// (`run_once` lends the chunk and policy buffers, free once the run's work is done).
    async fn send(
        &mut self,
        link_buffer: &mut [u8],
        scratch: &mut [u8],
        out: &mut [u8],
        unix_now: i64,
    ) -> Result<(), AgentError> {
        let Some(key) = self.config.status_key else { return Ok(()) };
        self.state.report.seq += 1;
        self.state.report.unsent = true;
        self.store.save(self.state)?;
        let record = &self.state.record;
        let rollout = self.state.report.install.and_then(|mark| {
            let result = protocol::rollout::install_result(record, &mark.release)?;
            Some((mark, result))
        });
        let draft = ReportDraft {
            device: self.config.device_id,
            seq: self.state.report.seq,
            release: self.config.limits.release,
            record,
            health: None,
            time: unix_now,
            rollout: rollout.as_ref().map(|(mark, result)| RolloutPart {
                id: mark.rollout(),
                result: *result,
                install_secs: unix_now.saturating_sub(mark.started_unix).max(0) as u64,
            }),
        };
        let Ok(len) = write_signed(&draft, |m| key.sign(m), scratch, out) else {
            // Cannot happen with the buffers run_once passes; nothing to send then.
            return Ok(());
        };
        let mut delivered = false;
        for edge in 0..self.edges.count() {
            if self.liars.contains(edge) {
                continue;
            }
            let Some(stream) = self.edges.connect(edge).await else { continue };
            let mut link = EdgeLink::new(stream, &mut *link_buffer, self.config.request_timeout);
            if matches!(link.request(&Request::ReportStatus { body: &out[..len] }).await, Ok(Response::Ack)) {
                delivered = true;
                break;
            }
        }
        if delivered {
            self.state.report.unsent = false;
            self.store.save(self.state)?;
        }
        Ok(())
    }
}

/// The store and the state it holds, or the factory state on a fresh store. Out of line:
/// inlined into [`run_once`]'s poll, its copies of the ~1 KiB state would sit in the frame
/// of every poll of it, under the signature checks (the deepest stack an MCU sees).
#[inline(never)]
fn open_state<F: NorFlash>(partition: F, config: &AgentConfig<'_>) -> Result<(AgentStore<F>, AgentState), AgentError> {
    let (store, saved) = AgentStore::open(partition)?;
    let state = match saved {
        Some(state) => state,
        None => {
            let factory = Release::unknown(Label::new(config.factory_version).ok_or(AgentError::Config)?, 0);
            AgentState {
                record: Record::factory(Slot::A, factory),
                anchor: Some(config.provisioned_anchor),
                progress: ChunkProgress::none(),
                target_sha256: [0; 32],
                report: ReportState::default(),
            }
        }
    };
    Ok((store, state))
}

/// [`find_on_edges`] under the pinned anchor; a rotation the seals carried is persisted
/// before anything acts on the release (a newer anchor is signed by the one it replaces, so
/// keeping it is safe whatever happens next).
async fn find_and_pin<E: Edges, F: NorFlash>(
    edges: &mut E,
    config: &AgentConfig<'_>,
    store: &mut AgentStore<F>,
    state: &mut AgentState,
    link_buffer: &mut [u8],
    buffers: &mut FindBuffers<'_>,
    liars: &mut Liars,
) -> Result<Result<FoundAt, FindError>, AgentError> {
    // Advanced in place (no copy of the 520-byte anchor in this future): `find_release`
    // changes it only when it returns a verified release.
    let wanted = Wanted::of(&state.record);
    let anchor = state.anchor.get_or_insert(config.provisioned_anchor);
    let found = find_on_edges(edges, config, anchor, wanted, link_buffer, buffers, liars).await;
    if let Ok(release) = &found {
        if release.rotated {
            store.save(state)?;
        }
    }
    Ok(found)
}

/// What [`find_on_edges`] found, without borrowing the buffers it lies in (views are parsed
/// again from them where needed: cheap, and the bytes are the ones just verified).
#[derive(Clone, Copy)]
struct FoundAt {
    edge: usize,
    /// The anchor passed to [`find_on_edges`] was advanced by a rotation.
    rotated: bool,
    offer: protocol::install::Offer,
    policy_len: usize,
    manifest_len: usize,
}

/// [`find_release`] on each edge in turn: the first that serves a verified release this
/// device could install wins (and advances `anchor` if its seals rotate it). One that lies is skipped and remembered in `liars`; one that
/// lacks the files is skipped; one whose release is what the device runs, below its
/// anti-rollback floor, or already refused (a stale mirror, or a replay of an old, validly
/// signed release) is skipped too, so it cannot hide a newer release another edge serves.
/// When no edge has anything new, the answer is "missing": no update.
async fn find_on_edges<E: Edges>(
    edges: &mut E,
    config: &AgentConfig<'_>,
    anchor: &mut TrustAnchor,
    wanted: Wanted,
    link_buffer: &mut [u8],
    buffers: &mut FindBuffers<'_>,
    liars: &mut Liars,
) -> Result<FoundAt, FindError> {
    let mut last = FindError::Link(LinkError::Io);
    let mut rotated_before = false;
    for edge in 0..edges.count() {
        if liars.contains(edge) {
            continue;
        }
        let Some(stream) = edges.connect(edge).await else { continue };
        let mut link = EdgeLink::new(stream, &mut *link_buffer, config.request_timeout);
        let reborrowed = FindBuffers { policy: &mut *buffers.policy, manifest: &mut *buffers.manifest };
        match find_release(&mut link, anchor, &config.limits, reborrowed).await {
            Ok(Found { offer, rotated, .. }) if !wanted.accepts(&offer.release) => {
                // Its seals may still have advanced the anchor (validly): say so with the
                // release found next, so that the advance is saved.
                rotated_before |= rotated;
                last = FindError::Missing;
            }
            Ok(Found { rotated, policy, manifest, offer }) => {
                let (policy_len, manifest_len) = (policy.as_bytes().len(), manifest.as_bytes().len());
                return Ok(FoundAt { edge, rotated: rotated || rotated_before, offer, policy_len, manifest_len });
            }
            Err(e) => {
                if e.blames_edge() {
                    liars.add(edge);
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// What a found release must be for the device to take it: new to it, not refused, not
/// below its anti-rollback floor. (Three fields, not the ~100-byte record, in the find's
/// future and poll frame.)
#[derive(Clone, Copy)]
struct Wanted {
    floor: u64,
    refused: protocol::ReleaseId,
    installed: protocol::ReleaseId,
}

impl Wanted {
    fn of(record: &Record) -> Wanted {
        Wanted { floor: record.min_security_counter, refused: record.refused, installed: record.installed.id }
    }

    fn accepts(&self, release: &Release) -> bool {
        release.security_counter >= self.floor && release.id != self.refused && release.id != self.installed
    }
}

/// Edges caught lying during one run, by index (the first 32 configured edges).
#[derive(Debug, Clone, Copy, Default)]
struct Liars(u32);

impl Liars {
    fn add(&mut self, edge: usize) {
        if edge < 32 {
            self.0 |= 1 << edge;
        }
    }

    fn contains(&self, edge: usize) -> bool {
        edge < 32 && self.0 & (1 << edge) != 0
    }
}

/// The DFU partition as the download writes it: erased once per release, each chunk's
/// plaintext written at its image offset, a short tail padded with the erased value.
struct DfuSlot<'d, D> {
    dfu: &'d mut D,
    write_size: usize,
}

impl<D: NorFlash> UpdateSlot for DfuSlot<'_, D> {
    type Error = D::Error;

    fn prepare(&mut self) -> Result<(), D::Error> {
        let size = self.dfu.capacity() as u32;
        self.dfu.erase(0, size)
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), D::Error> {
        let whole = data.len() - data.len() % self.write_size;
        self.dfu.write(offset, &data[..whole])?;
        if whole < data.len() {
            let mut tail = [0xFFu8; 32];
            let tail = &mut tail[..self.write_size];
            tail[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.dfu.write(offset + whole as u32, tail)?;
        }
        Ok(())
    }
}

/// Chunk progress in the agent store, for the target `target`.
struct StoreProgress<'s, 'm, F: NorFlash> {
    store: &'s mut AgentStore<F>,
    state: &'s mut AgentState,
    target: &'s protocol::manifest::ManifestView<'m>,
}

impl<F: NorFlash> Progress for StoreProgress<'_, '_, F> {
    type Error = StoreError;

    fn target(&self) -> Option<protocol::ReleaseId> {
        let id = self.state.record.target.map(|t| t.id)?;
        let same = self.state.progress.chunk_count() == self.target.chunk_count()
            && id == protocol::ReleaseId::of_manifest(self.target.as_bytes());
        same.then_some(id)
    }

    fn start(&mut self, _target: protocol::ReleaseId) -> Result<(), StoreError> {
        self.state.progress = ChunkProgress::new(self.target.chunk_count())?;
        self.store.save(self.state)
    }

    fn is_written(&self, index: u32) -> bool {
        self.state.progress.is_done(index)
    }

    fn mark_written(&mut self, index: u32) -> Result<(), StoreError> {
        self.store.mark_chunk(self.state, index)
    }
}

/// Whether ACTIVE holds the record's target image (its length and the sha256 the store kept).
fn active_holds_target<A: ReadNorFlash>(active: &mut A, state: &AgentState) -> bool {
    let Some(target) = state.record.target else { return false };
    let mut scratch = [0u8; 1024];
    state.target_sha256 != [0; 32] && image_sha256(active, target.image_len, &mut scratch) == Some(state.target_sha256)
}

/// sha256 of the first `len` bytes of `dfu`, read through `scratch`.
fn image_sha256<D: ReadNorFlash>(dfu: &mut D, len: u64, scratch: &mut [u8]) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(scratch.len() as u64) as usize;
        dfu.read(at as u32, &mut scratch[..n]).ok()?;
        hasher.update(&scratch[..n]);
        at += n as u64;
    }
    Some(hasher.finalize().into())
}
