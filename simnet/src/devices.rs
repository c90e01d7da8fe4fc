//! Devices: each one runs the protocol's install engine (`protocol::install::Engine`), the
//! same state machine the Linux agent (device-client/src/agent.rs) drives, and simnet is only
//! its driver (in `mesh`): it carries out the engine's actions in simulated time and feeds
//! back what happened. This module holds the per-device state the driver keeps around the
//! engine — a two-slot bootloader, the download's progress — and the
//! fixed facts every device is offered (the release, the metadata's size).
//!
//! What the driver models and what the engine decides:
//! - `FetchMetadata`: a metadata round trip to a live edge node of the device's site (sized
//!   messages on the device's link); `protocol::device::choose_release` picks among the
//!   published releases (the scenario's one), which is offered as an `Offer`; the engine
//!   refuses a wrong hardware class or an old security counter. No live edge node:
//!   `handle_check_failed` after the keep-alive timeout, and the engine's backoff retries.
//! - `AskGate` and `AskSwitch`: `Proceed` without a rollout; with one, the device's
//!   `protocol::rollout::Gate` on the policy its edge holds (see `crate::rollout`).
//! - `Download`: `protocol::device::FetchPlan` (the agent's fetch plan, with one connection to
//!   one edge node at a time and the scenario's `batch_bytes`) decides each request, and the
//!   device's `EdgeRecord`s rank its site's edge nodes; requests are LAN flows from the chosen
//!   edge node. A batch with a chunk that fails verification makes the plan stop and
//!   penalize that edge (the device cannot tell a tampering edge from damage on the way); an
//!   edge that dies fails its request and the round goes on elsewhere. `handle_download_done`,
//!   or `handle_download_failed` when the plan runs out of rounds, and the engine's retry
//!   timer starts the next attempt (the plan keeps what arrived).
//! - `VerifyImage`, `ActivateSlot`, `Reboot`, `RunHealthChecks`: timed steps (`verify_s`,
//!   `install_s`, `reboot_s`, `health_check_s`); a reboot builds a new engine from the
//!   persisted record and calls `handle_boot` with what the bootloader booted, exactly as the
//!   agent starts after a real reboot. (Nothing changes the record between the engine's last
//!   `Persist` and its `Reboot`, so that record is the old engine's; only debug builds keep a
//!   copy, to check it.)
//! - `Commit`, `RollBack`: the bootloader's slots; `Report`: counted, and with a rollout
//!   sent to the edge as a rollout outcome when it is one (`crate::rollout::outcome`).
//!
//! Memory: a device is its engine (fixed size, no heap) and a few dozen bytes of driver
//! state. A download's state (fetch plan, edge records, the request out) lives in a slot of
//! [`Downloads`] while it runs, and the slot goes to the next download when it ends.

use std::sync::Arc;

use protocol::device::fetch::{Batch, FetchConfig};
use protocol::device::{EdgeRecord, FetchPlan, ReleaseCandidate};
use protocol::edge::ChunkSpec;
use protocol::install::{Engine, EngineConfig, ErrorCode, Label, Offer, Release, Slot, State};
use protocol::time::Duration;
use protocol::ReleaseId;

use crate::engine::{secs, FlowId, Micros};
use crate::release::{self, HW_CLASS};
use crate::scenario::DeviceParams;

/// The release name devices follow (`releases/NAME/…` among the signed targets).
pub const RELEASE_NAME: &str = "sim";
/// The request timeout the plan's hedging is capped by (the agent's default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Version the fleet runs before the update.
pub const FACTORY_VERSION: &str = "1.0.0";
/// Anti-rollback counter of the factory image.
pub const FACTORY_COUNTER: u64 = 1;
/// Version of the release being distributed.
pub const RELEASE_VERSION: &str = "2.0.0";
/// Its anti-rollback counter.
pub const RELEASE_COUNTER: u64 = 2;
/// What a device that is ahead of the release already runs (it must refuse the release).
pub const AHEAD_VERSION: &str = "3.0.0";
/// Hardware class of devices planted in the wrong class.
pub const OTHER_HW_CLASS: &str = "sim-other-gateway";

/// A metadata request (TUF timestamp probe and manifest request), bytes.
pub const METADATA_REQUEST_BYTES: u64 = 512;
/// TUF metadata in a metadata response (timestamp, snapshot, targets), bytes.
pub const TUF_METADATA_BYTES: u64 = 4096;
/// Manifest header and signature, bytes.
pub const MANIFEST_FIXED_BYTES: u64 = 256 + 64;

/// Bytes of the metadata round trip for a release of `chunks` chunks (both directions).
pub fn metadata_bytes(chunks: u32) -> u64 {
    let entries = chunks as u64 * protocol::manifest::limits::ENTRY_BYTES as u64;
    METADATA_REQUEST_BYTES + TUF_METADATA_BYTES + MANIFEST_FIXED_BYTES + entries
}

/// Where each of `chunks` starts in the release's stored bytes, and their total last: the
/// bytes of a run of chunks `a..b` are `offsets[b] - offsets[a]`.
pub fn stored_offsets(chunks: &[ChunkSpec]) -> Vec<u64> {
    let mut offsets = Vec::with_capacity(chunks.len() + 1);
    let mut at = 0u64;
    offsets.push(at);
    for chunk in chunks {
        at += chunk.stored_len as u64;
        offsets.push(at);
    }
    offsets
}

/// The releases the simulated signed targets list: the scenario's one, as
/// `protocol::device::choose_release` reads it.
pub fn published() -> [ReleaseCandidate<'static>; 1] {
    [ReleaseCandidate {
        name: RELEASE_NAME,
        hw_class: HW_CLASS,
        security_counter: RELEASE_COUNTER,
        version: RELEASE_VERSION,
    }]
}

/// The agent's fetch plan as simnet's devices run it: one edge node at a time over one
/// connection (the device link is the bottleneck either way; more would multiply flows),
/// and the scenario's `batch_bytes` and `batch_chunks`.
pub fn fetch_config(params: &DeviceParams) -> FetchConfig {
    FetchConfig {
        batch_bytes: params.batch_bytes,
        batch_chunks: params.batch_chunks,
        streams_per_edge: 1,
        ..FetchConfig::new(1, REQUEST_TIMEOUT)
    }
}

/// A device's download in progress (only while it downloads: a million devices do not hold
/// one each): the plan, what the device measured of each edge node of its site, the edges
/// that answered this round's probe (worst first), and the request out.
#[derive(Debug)]
pub struct DeviceFetch {
    /// The plan; unit `i` is chunk `i` of the release (their stored lengths shared by every
    /// device's plan).
    pub plan: FetchPlan<u8, Arc<[u32]>>,
    /// Per edge node of the site (by slot).
    pub edges: Vec<EdgeRecord>,
    /// Edges that answered this round's probe and are not in use, worst first.
    pub spares: Vec<u8>,
    /// The plan's connection to the current edge.
    pub conn: usize,
    /// Waiting in the edge node's session queue.
    pub queued: bool,
    /// The request out: its chunks and when it was sent.
    pub current: Batch,
    /// Their stored bytes, summed when the edge node served them (the batch's flow): the
    /// answer then counts them without walking the chunks again.
    pub current_bytes: u64,
    /// When it was sent.
    pub sent: Micros,
    /// When the download's first attempt started.
    pub started: Micros,
}

impl DeviceFetch {
    /// A download about to start its first round.
    pub fn new(plan: FetchPlan<u8, Arc<[u32]>>, edges: Vec<EdgeRecord>, started: Micros) -> DeviceFetch {
        DeviceFetch {
            plan,
            edges,
            spares: Vec::new(),
            conn: 0,
            queued: false,
            current: Batch::new(),
            current_bytes: 0,
            sent: 0,
            started,
        }
    }
}

/// [`Device::fetch`] of a device with no download state.
pub const NO_FETCH: u32 = u32::MAX;

/// The download state of the devices downloading now, in slots: a device takes one when its
/// download starts and gives it back when the download completes or its progress is reset (a
/// failed attempt keeps it for the retry), and the next download resets it and keeps its
/// buffers. A million downloads then cost as many allocations as the most at
/// once (a few hundred thousand in fleet-1m), and a device's state is one index away from
/// its `Device` instead of behind a pointer per device.
#[derive(Debug, Default)]
pub struct Downloads {
    slots: Vec<DeviceFetch>,
    /// Slots given back, reused last first (a reset slot is a new one, so the order changes
    /// no outcome).
    free: Vec<u32>,
    /// Which slots are free, to catch a slot given back twice (two devices would share it).
    #[cfg(debug_assertions)]
    is_free: Vec<bool>,
}

impl Downloads {
    /// The download in `slot`, if it names one.
    pub fn get(&self, slot: u32) -> Option<&DeviceFetch> {
        self.slots.get(slot as usize)
    }

    /// The download in `slot`, if it names one.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut DeviceFetch> {
        self.slots.get_mut(slot as usize)
    }

    /// A slot for a download starting at `started`: one given back, reset, or a new one
    /// `make` builds (it is then reset too, so both start alike).
    pub fn take_slot(&mut self, started: Micros, make: impl FnOnce() -> DeviceFetch) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(make());
                #[cfg(debug_assertions)]
                self.is_free.push(false);
                (self.slots.len() - 1) as u32
            }
        };
        #[cfg(debug_assertions)]
        {
            self.is_free[slot as usize] = false;
        }
        self.slots[slot as usize].reset(started);
        slot
    }

    /// Gives `slot` back (nothing for [`NO_FETCH`]); returns when its download started. The
    /// caller has already cleared the device's `fetch`.
    pub fn give_back(&mut self, slot: u32) -> Option<Micros> {
        let started = self.slots.get(slot as usize)?.started;
        #[cfg(debug_assertions)]
        {
            assert!(!self.is_free[slot as usize], "download slot {slot} given back twice");
            self.is_free[slot as usize] = true;
        }
        self.free.push(slot);
        Some(started)
    }
}

impl DeviceFetch {
    /// Back to what [`DeviceFetch::new`] builds for a download starting at `started` (the
    /// same release and site), keeping the buffers.
    pub fn reset(&mut self, started: Micros) {
        // Every field named: a field added later must be reset here too, or this fails to build.
        let DeviceFetch { plan, edges, spares, conn, queued, current, current_bytes, sent, started: at } = self;
        plan.reset();
        edges.fill(EdgeRecord::default());
        spares.clear();
        *conn = 0;
        *queued = false;
        current.clear();
        *current_bytes = 0;
        *sent = 0;
        *at = started;
    }
}

/// The offer every device's metadata check returns: the scenario's release.
pub fn offer(release: &release::Release) -> Offer {
    Offer {
        release: Release {
            id: release.id,
            version: label(RELEASE_VERSION),
            security_counter: RELEASE_COUNTER,
            image_len: release.bytes,
            chunk_count: release.chunk_count(),
        },
        hw_class: label(HW_CLASS),
    }
}

fn label(text: &str) -> Label {
    Label::new(text).unwrap_or(Label::empty())
}

/// The engine's policy for a device: its hardware class, and the trial deadline from the
/// scenario; everything else is the engine's default.
pub fn engine_config(params: &DeviceParams, wrong_class: bool) -> EngineConfig {
    let hw = if wrong_class { OTHER_HW_CLASS } else { HW_CLASS };
    EngineConfig { trial_deadline: Duration(secs(params.trial_deadline_s).max(1)), ..EngineConfig::new(label(hw)) }
}

/// What the active slot runs when the simulation starts.
pub fn factory_release(ahead: bool) -> Release {
    if ahead {
        Release::unknown(label(AHEAD_VERSION), RELEASE_COUNTER + 1)
    } else {
        Release::unknown(label(FACTORY_VERSION), FACTORY_COUNTER)
    }
}

/// The timed step a device's driver is carrying out (one at a time; a reboot ends any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Nothing timed in progress.
    None,
    /// A metadata round trip that will be answered with the offer.
    Metadata,
    /// A metadata attempt that will fail (no live edge node in the site).
    MetadataFailed,
    /// The download failed; the engine hears of it after the keep-alive timeout.
    DownloadFailed,
    /// Hashing the whole slot.
    Verify,
    /// Pointing the bootloader at the new slot.
    Activate,
    /// Rebooting; the engine is gone until the boot.
    Boot,
    /// Running the health checks.
    Health,
}

/// What a device's driver keeps around its install engine (the engine lives in an array of
/// its own, so this stays a few bytes).
#[derive(Debug, Clone)]
pub struct Device {
    /// The bootloader's committed slot.
    pub boot_active: Slot,
    /// The bootloader's slot on trial, not yet committed.
    pub boot_pending: Option<Slot>,
    /// Which edge node of its site it downloads from.
    pub edge_slot: u8,
    /// It holds a download session at that edge node.
    pub in_session: bool,
    /// A `Download` action is being carried out.
    pub downloading: bool,
    /// The inactive slot holds bytes that do not match the manifest (a storage fault, or a
    /// planted driver bug that skipped chunk checks).
    pub image_bad: bool,
    /// Counted as finished (see [`end_state`]).
    pub finished: bool,
    /// The timed step in progress, and its generation (stale completions are ignored).
    pub op: Op,
    /// Bumped whenever a timed step starts.
    pub op_gen: u8,
    /// Every chunk of the target is in the slot (reset by `ResetProgress`).
    pub downloaded: bool,
    /// Its request waits for the edge node to hold every chunk in it.
    pub awaiting: bool,
    /// The batch transfer in progress.
    pub flow: Option<FlowId>,
    /// When the engine's timer is armed (`Micros::MAX`: not armed).
    pub timer_at: Micros,
    /// Its rollout wave (`u8::MAX`: none, or no rollout).
    pub wave: u8,
    /// Rollout flags (`crate::rollout::flags`).
    pub rollout: u8,
    /// Its download's slot in [`Downloads`] ([`NO_FETCH`]: no download state: none started,
    /// or it finished or its progress was reset; a failed attempt keeps its slot for the retry).
    pub fetch: u32,
}

impl Device {
    /// A factory-fresh device's driver state: slot A committed, nothing pending.
    pub fn new(edge_slot: u8) -> Device {
        Device {
            boot_active: Slot::A,
            boot_pending: None,
            edge_slot,
            in_session: false,
            downloading: false,
            image_bad: false,
            finished: false,
            op: Op::None,
            op_gen: 0,
            downloaded: false,
            awaiting: false,
            flow: None,
            timer_at: Micros::MAX,
            wave: u8::MAX,
            rollout: 0,
            fetch: NO_FETCH,
        }
    }

    /// What the bootloader boots: the pending slot (on trial) if any, else the committed one.
    pub fn booted(&self) -> Slot {
        self.boot_pending.unwrap_or(self.boot_active)
    }
}

/// How a device's update ended, judged from its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndState {
    /// The release runs, committed.
    Committed,
    /// The release was tried and the previous slot runs again.
    RolledBack(ErrorCode),
    /// The engine refused the release (wrong hardware class, old security counter, or an
    /// image that never verified).
    Refused(ErrorCode),
    /// Anything else: still working on it.
    Unfinished(State),
}

impl EndState {
    /// Committed, rolled back or refused.
    pub fn is_finished(self) -> bool {
        !matches!(self, EndState::Unfinished(_))
    }

    /// The report's key: the engine's state name, with the reason for a rollback or refusal.
    pub fn name(self) -> String {
        match self {
            EndState::Committed => State::Committed.name().to_string(),
            EndState::RolledBack(e) => format!("{} ({})", State::RolledBack.name(), e.name()),
            EndState::Refused(e) => format!("refused ({})", e.name()),
            EndState::Unfinished(s) => format!("unfinished ({})", s.name()),
        }
    }
}

/// Idle, committed or rolled back: nothing in progress (the agent checks for an update from
/// these on start-up).
pub fn is_resting(state: State) -> bool {
    matches!(state, State::Idle | State::Committed | State::RolledBack)
}

/// Where `engine` stands with the release `release_id`.
pub fn end_state(engine: &Engine, release_id: &ReleaseId) -> EndState {
    let record = engine.record();
    if !is_resting(record.state) || record.target.is_some() {
        return EndState::Unfinished(record.state);
    }
    let error = record.last_error;
    match record.state {
        State::Committed if &record.installed.id == release_id => EndState::Committed,
        State::RolledBack if &record.refused == release_id => {
            EndState::RolledBack(error.unwrap_or(ErrorCode::HealthCheckFailed))
        }
        _ => match error {
            Some(e @ (ErrorCode::WrongHardwareClass | ErrorCode::SecurityCounterTooOld)) => EndState::Refused(e),
            Some(ErrorCode::ImageMismatch) if &record.refused == release_id => {
                EndState::Refused(ErrorCode::ImageMismatch)
            }
            _ => EndState::Unfinished(record.state),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_stays_small() {
        let engine = std::mem::size_of::<Engine>();
        let device = std::mem::size_of::<Device>() + engine;
        use protocol::install::{Action, Record};
        eprintln!(
            "size_of Engine = {engine}, Record = {}, Device = {device}, Action = {}, Offer = {}, EngineConfig = {}",
            std::mem::size_of::<Record>(),
            std::mem::size_of::<Action>(),
            std::mem::size_of::<Option<Offer>>(),
            std::mem::size_of::<EngineConfig>()
        );
        assert!(device <= 2048, "{device} bytes per device");
        // Only a downloading device holds a fetch plan; with its per-chunk byte that is about
        // a kilobyte more for fleet-1m's ~1,000 chunks.
        let fetch = std::mem::size_of::<DeviceFetch>();
        eprintln!("size_of DeviceFetch = {fetch}");
        assert!(fetch <= 512, "{fetch} bytes per downloading device, before its vectors");
    }

    fn used_download(started: Micros) -> DeviceFetch {
        let config = FetchConfig { batch_chunks: 2, ..FetchConfig::new(1, Duration::from_secs(10)) };
        let lens: Arc<[u32]> = vec![100; 5].into();
        DeviceFetch::new(FetchPlan::new(config, lens), vec![EdgeRecord::default(); 2], started)
    }

    /// A slot handed to the next download is what a new one would be: plan, edge records,
    /// the request out and the start time.
    #[test]
    fn a_reused_download_slot_starts_like_a_new_one() {
        let mut downloads = Downloads::default();
        let slot = downloads.take_slot(10, || used_download(0));
        let fetch = downloads.get_mut(slot).unwrap();
        assert!(fetch.plan.start_round(protocol::time::Instant(20)));
        fetch.plan.add_edge(0, 1);
        fetch.current = fetch.plan.poll_transmit(protocol::time::Instant(20)).unwrap().units;
        fetch.edges[1].record_failure();
        fetch.spares.push(1);
        (fetch.conn, fetch.queued, fetch.current_bytes, fetch.sent) = (3, true, 200, 20);
        assert_eq!(downloads.give_back(slot), Some(10));
        assert_eq!(downloads.take_slot(30, || unreachable!("a slot was free")), slot);
        assert_eq!(format!("{:?}", downloads.get(slot).unwrap()), format!("{:?}", used_download(30)));
        assert!(downloads.get(NO_FETCH).is_none());
    }
}
