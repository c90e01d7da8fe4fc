//! Glue between the layout and embassy-boot: the embassy partitions over one flash, and the
//! bootloader step with its outcome told apart.
//!
//! Why here: embassy's `BlockingPartition::new` and `BootLoader::prepare_boot` panic on a
//! misfit layout or buffer. Everything is checked first ([`FlashLayout::check_flash`]), so
//! these functions return errors instead. The same code runs on the MCU and in the host's
//! `mcu-bootloader` step.

use core::cell::RefCell;

use embassy_boot::{BootError, BootLoader, BootLoaderConfig, FirmwareUpdaterConfig, State};
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embedded_storage::nor_flash::NorFlash;

use crate::layout::{FlashLayout, LayoutError};

/// One flash shared by all partitions. `NoopRawMutex`: the agent and the bootloader are
/// single-threaded, and this needs no critical-section implementation.
pub type SharedFlash<F> = Mutex<NoopRawMutex, RefCell<F>>;

/// A partition of a [`SharedFlash`].
pub type Part<'a, F> = BlockingPartition<'a, NoopRawMutex, F>;

/// The layout's four partitions over one flash.
pub struct Partitions<'a, F: NorFlash> {
    /// embassy-boot's STATE.
    pub bootloader_state: Part<'a, F>,
    /// The running image.
    pub active: Part<'a, F>,
    /// The download area.
    pub dfu: Part<'a, F>,
    /// The agent's own state (for [`crate::agent_store::AgentStore`]).
    pub agent: Part<'a, F>,
}

impl<'a, F: NorFlash> Partitions<'a, F> {
    /// Splits `flash` by `layout`, after checking that the layout fits this flash.
    pub fn new(layout: &FlashLayout, flash: &'a SharedFlash<F>) -> Result<Self, LayoutError> {
        let fits = flash.lock(|cell| match cell.try_borrow() {
            Ok(f) => layout.check_flash(&*f),
            Err(_) => Err(LayoutError::FlashMismatch),
        });
        fits?;
        let part = |p: crate::layout::Partition| BlockingPartition::new(flash, p.offset, p.size_bytes);
        Ok(Partitions {
            bootloader_state: part(layout.bootloader_state),
            active: part(layout.active),
            dfu: part(layout.dfu),
            agent: part(layout.agent),
        })
    }

    /// The application side's view: what `BlockingFirmwareUpdater::new` takes.
    pub fn updater_config(&self) -> FirmwareUpdaterConfig<Part<'a, F>, Part<'a, F>> {
        FirmwareUpdaterConfig { dfu: self.dfu.clone(), state: self.bootloader_state.clone() }
    }
}

/// What one bootloader run did. embassy's `prepare_boot` returns `Swap` both after a swap and
/// after a revert; the state read afterwards tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// Nothing to do: boot ACTIVE as it is.
    Boot,
    /// DFU's image was swapped into ACTIVE; it runs on trial until it marks itself booted.
    Swapped,
    /// The previous image was unconfirmed and has been swapped back.
    Reverted,
    /// An earlier run reverted; the application has not acknowledged it yet.
    AfterRevert,
    /// The application asked to stay in DFU mode.
    DfuDetach,
}

impl BootOutcome {
    /// Lowercase name, as `mcu-bootloader` prints it.
    pub fn name(self) -> &'static str {
        match self {
            BootOutcome::Boot => "boot",
            BootOutcome::Swapped => "swapped",
            BootOutcome::Reverted => "reverted",
            BootOutcome::AfterRevert => "after-revert",
            BootOutcome::DfuDetach => "dfu-detach",
        }
    }
}

/// Why the bootloader step failed.
#[derive(Debug, PartialEq, Eq)]
pub enum BootStepError {
    /// The layout does not fit the flash, or the buffer's length is not the layout's.
    Layout(LayoutError),
    /// embassy-boot failed (a flash error or a bad magic).
    Boot(BootError),
}

/// Runs embassy-boot's `prepare_boot` (swap or revert as STATE asks) and reports what it did.
/// `buf` must be `layout.boot_buffer_bytes` long; on the MCU align it with
/// `embassy_boot::AlignedBuffer`.
pub fn run_bootloader<F: NorFlash>(
    layout: &FlashLayout,
    flash: &SharedFlash<F>,
    buf: &mut [u8],
) -> Result<BootOutcome, BootStepError> {
    if buf.len() != layout.boot_buffer_bytes as usize {
        return Err(BootStepError::Layout(LayoutError::BootBuffer));
    }
    let parts = Partitions::new(layout, flash).map_err(BootStepError::Layout)?;
    let config = BootLoaderConfig { active: parts.active, dfu: parts.dfu, state: parts.bootloader_state };
    let mut loader = BootLoader::new(config);
    let before = loader.prepare_boot(buf).map_err(BootStepError::Boot)?;
    let after = loader.read_state(buf).map_err(BootStepError::Boot)?;
    Ok(match (before, after) {
        (State::Swap, State::Revert) => BootOutcome::Reverted,
        (State::Swap, _) => BootOutcome::Swapped,
        (State::Revert, _) => BootOutcome::AfterRevert,
        (State::DfuDetach, _) => BootOutcome::DfuDetach,
        (State::Boot, _) => BootOutcome::Boot,
    })
}
