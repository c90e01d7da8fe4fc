//! Device behaviour, kept in one small module until the protocol's install engine
//! (`protocol::install`) lands; then each device drives that engine and this module shrinks
//! to the glue. Until then the lifecycle is a fixed sequence of timed steps — Checking,
//! Downloading, Verifying, Installing, PendingReboot, Trial, then Committed or RolledBack —
//! with the download itself simulated by the mesh (sessions, batches, verification).
//!
//! Per-device state is a few bytes: a million devices must fit comfortably in memory.

use crate::engine::{secs, FlowId, Micros};
use crate::rng::Rng;
use crate::scenario::DeviceParams;

/// Where a device is in its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum DeviceState {
    /// Not yet checked in.
    Idle,
    /// Fetching metadata from an edge node.
    Checking,
    /// Fetching batches.
    Downloading,
    /// Hashing the whole image.
    Verifying,
    /// Writing the inactive slot.
    Installing,
    /// Waiting for the reboot into the new slot.
    PendingReboot,
    /// Running health checks on the new slot.
    Trial,
    /// Done: the new slot is committed.
    Committed,
    /// Done: the health check failed and the previous slot is back.
    RolledBack,
}

impl DeviceState {
    /// Committed or rolled back.
    pub fn is_terminal(self) -> bool {
        matches!(self, DeviceState::Committed | DeviceState::RolledBack)
    }
    /// Lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            DeviceState::Idle => "idle",
            DeviceState::Checking => "checking",
            DeviceState::Downloading => "downloading",
            DeviceState::Verifying => "verifying",
            DeviceState::Installing => "installing",
            DeviceState::PendingReboot => "pending-reboot",
            DeviceState::Trial => "trial",
            DeviceState::Committed => "committed",
            DeviceState::RolledBack => "rolled-back",
        }
    }
}

/// One device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Lifecycle state.
    pub state: DeviceState,
    /// Which edge node of its site it downloads from.
    pub edge_slot: u8,
    /// It holds a download session at that edge node.
    pub in_session: bool,
    /// It accepted bytes that do not match the manifest (only possible with a planted bug).
    pub tainted: bool,
    /// Next batch to fetch.
    pub batch: u32,
    /// The batch transfer in progress.
    pub flow: Option<FlowId>,
}

impl Default for Device {
    fn default() -> Self {
        Device { state: DeviceState::Idle, edge_slot: 0, in_session: false, tainted: false, batch: 0, flow: None }
    }
}

/// The step after `state` once its work is done, and how long that step takes. `None` when
/// `state` is terminal or is not a timed step.
pub fn next_step(state: DeviceState, params: &DeviceParams, rng: &mut Rng) -> Option<(DeviceState, Micros)> {
    use DeviceState::*;
    Some(match state {
        Downloading => (Verifying, secs(params.verify_s)),
        Verifying => (Installing, secs(params.install_s)),
        Installing => (PendingReboot, secs(params.reboot_s)),
        PendingReboot => (Trial, secs(params.health_check_s)),
        Trial => (if rng.chance(params.health_failure_rate) { RolledBack } else { Committed }, 0),
        _ => return None,
    })
}
