//! The device install engine, sans-IO and without a heap, so the Linux agent, the MCU agent
//! and simnet run the same code.
//!
//! ```text
//! Idle/Committed/RolledBack ─check─▶ Checking ─offer ok, gate open─▶ Downloading ─all chunks─▶ Verifying
//!        ▲                              │ refused / nothing new            ▲ retry        │ image hash ok
//!        └──────────────────────────────┘                                  └──────────────┤
//!                                                  Installing ◀─switch gate open─ Staged ◀┘
//!                    (bootloader: try other slot once) │   (staged: waits for a window, across restarts)
//!   Committed ◀─healthy─ Trial ◀─boot into new slot─ PendingReboot
//!                          │ failed check, deadline passed, restart during trial
//!                          ▼
//!                      RolledBack (bootloader back to the old slot, reboot)
//! ```
//!
//! Persistence: [`Record`] is a fixed-size checksummed record; the engine asks for it to be
//! written ([`Action::Persist`]) before the side effect of each step, so
//! [`Engine::handle_boot`] can always tell where it was. Chunk-level progress (which chunks
//! of the inactive slot are already written and verified) belongs to the driver, which makes
//! chunk data durable before it counts it.
//!
//! Non-goals: fetching, verifying chunk bytes, TUF (the driver does them and reports the
//! outcome), rollout policy (the driver answers [`Action::AskGate`] before the download and
//! [`Action::AskSwitch`] before the slot switch, with [`crate::rollout::Gate`]'s verdicts).

mod engine;
mod record;

pub use engine::{Action, BootInfo, Engine, EngineConfig, GateDecision, HealthOutcome, Offer};
pub use record::{ErrorCode, Label, Record, RecordError, Release, Slot, State, RECORD_BYTES};
