//! The device's download decisions, as the Linux agent, simnet's devices and (later) the MCU
//! agent all make them: which edges to ask and in what order, which chunks go in which
//! request to which connection, what a failed, short, busy or slow answer means for the
//! edge that gave it, when the download gives up, and which signed release this device
//! should run.
//!
//! Goals: one implementation of every such decision, driven and not copied, so simnet's
//! device-side figures describe the real agent; time is an input (`now`), never read.
//! Non-goals: sockets, timers, files, verification of chunk bytes (the codec does that; the
//! driver only reports what verified), and the install lifecycle (`crate::install::Engine`).
//!
//! [`sealed`] is the MCU's way to a release without TUF: the rollout policy and the manifest
//! from their seals (`crate::seal`), each fetched by content name and checked before the
//! next request.
//!
//! Heap: [`edges`] (ranking, penalties), [`release`] (release choice), [`sealed`] and the pure rules of
//! [`fetch`] (batch limits, hedge delay, busy backoff, stall limit) use no heap and build
//! for an MCU. [`fetch::FetchPlan`] (the queue of chunks and the connections' batches) and
//! [`metadata`] (which edges a TUF refresh asks; its verdicts classify TUF errors) need
//! `alloc`.

pub mod edges;
pub mod fetch;
#[cfg(feature = "alloc")]
pub mod metadata;
pub mod release;
pub mod sealed;

pub use edges::EdgeRecord;
pub use fetch::FetchConfig;
#[cfg(feature = "alloc")]
pub use fetch::FetchPlan;
pub use release::{choose_release, ReleaseCandidate, ReleaseChoice};
