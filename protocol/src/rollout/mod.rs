//! Staged rollouts that halt themselves.
//!
//! A rollout is a signed policy ([`RolloutPolicy`], read in place by [`PolicyView`]) naming
//! one release, the waves of the fleet that may install it, canaries, a health gate,
//! maintenance windows and a per-site install budget. Everything that decides about a
//! rollout lives here, sans-IO and deterministic (time is an input, in unix seconds):
//!
//! - [`policy`]: the binary format, its bounded parser and its validation rules;
//! - [`select`]: a device's stable bucket and wave;
//! - [`window`]: maintenance windows, open now and next opening;
//! - [`gate`]: the device's own decision before downloading and before switching slots (no
//!   heap; an edge node's answer can only hold it back);
//! - [`result`]: where an install stands under a rollout, as a status report says it;
//! - [`report`] (alloc): the rollout-relevant part of a signed status report;
//! - [`controller`] (alloc): the publisher's state machine — advance waves after soak and
//!   enough healthy outcomes, halt on a failure threshold or a significant regression
//!   against the previous release;
//! - [`site_guard`] (alloc): an edge node's local halt and concurrency budget for its site.
//!
//! Non-goals: signing and distributing the policy (the `rollouts` TUF role), storing fleet
//! state, verifying report signatures ([`crate::status::verify`] does).

pub mod gate;
pub mod policy;
pub mod result;
pub mod select;
pub mod window;

#[cfg(feature = "alloc")]
pub mod controller;
#[cfg(feature = "alloc")]
mod device_map;
#[cfg(feature = "alloc")]
pub mod report;
#[cfg(feature = "alloc")]
pub mod site_guard;

pub use gate::{EdgeHold, Gate, GateVerdict, StopReason};
pub use policy::{HealthGate, Phase, PolicyError, PolicyField, PolicyView, RolloutRelease, Wave};
pub use result::{install_result, InstallResult};
pub use select::{bucket, is_eligible, wave_of};
pub use window::Window;

#[cfg(feature = "alloc")]
pub use controller::{Controller, WaveSummary};
#[cfg(feature = "alloc")]
pub use device_map::MapSeed;
#[cfg(feature = "alloc")]
pub use policy::{RolloutPolicy, RolloutState};
#[cfg(feature = "alloc")]
pub use report::{Outcome, RolloutReport};
#[cfg(feature = "alloc")]
pub use site_guard::SiteGuard;
