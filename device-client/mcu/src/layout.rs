//! The flash layout as data: where the bootloader's state, the running image, the download
//! area and the agent's own state live, and the rules that make such a layout usable.
//!
//! Why data and not linker symbols: the same layout must drive the MCU build, the host
//! bootloader step (`mcu-bootloader`) and the host tests, and the rules embassy-boot only
//! asserts at boot time (a panic in the bootloader bricks a device) are checked here, once,
//! when the layout is made: [`FlashLayout::check`] returns a [`LayoutError`] instead.
//! [`HOST`], [`HOST_DEVICE`] and [`NUCLEO_F767ZI`] are checked at compile time.

use embedded_storage::nor_flash::NorFlash;

use crate::agent_store::SLOT_BYTES;

/// Largest flash write unit the agent's formats are aligned for (STM32F7: 16, H7: 32).
pub const MAX_WRITE_SIZE: u32 = 32;

/// Names the four partitions, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionName {
    /// embassy-boot's STATE: the swap magic and the swap progress.
    BootloaderState,
    /// The image that runs.
    Active,
    /// Where a new image is downloaded; after a swap it holds the previous image.
    Dfu,
    /// The agent's persisted record, trust anchor and chunk progress.
    Agent,
}

/// A byte range of the flash, relative to the start of the flash device handed to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// First byte.
    pub offset: u32,
    /// Length in bytes.
    pub size_bytes: u32,
}

impl Partition {
    /// One past the last byte, or `None` if that overflows.
    pub const fn end(&self) -> Option<u32> {
        self.offset.checked_add(self.size_bytes)
    }
}

/// Why a layout cannot be used. Every rule embassy-boot would assert, plus the agent's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The write size is zero, above [`MAX_WRITE_SIZE`], or does not divide the erase size.
    WriteSize,
    /// The erase size is zero.
    EraseSize,
    /// The boot buffer must be a non-zero multiple of the write size that divides the erase
    /// size (embassy-boot's `aligned_buf` rules).
    BootBuffer,
    /// A partition has no bytes.
    Empty(PartitionName),
    /// A partition's offset or size is not a multiple of the erase size.
    Misaligned(PartitionName),
    /// A partition ends past the end of the flash.
    OutOfFlash(PartitionName),
    /// Two partitions share bytes.
    Overlap(PartitionName, PartitionName),
    /// DFU must hold ACTIVE plus one spare erase page for the swap.
    DfuTooSmall,
    /// STATE must hold `2 + 4 * ACTIVE pages` write units (embassy-boot's swap progress).
    StateTooSmall,
    /// AGENT must be two equal, erase-aligned slots of at least [`SLOT_BYTES`] each.
    AgentTooSmall,
    /// The flash driver's write size, erase size or capacity differ from the layout's.
    FlashMismatch,
}

/// The whole flash map. Construct it, then call [`FlashLayout::check`] before use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// Bytes of the flash device the offsets are relative to.
    pub flash_size_bytes: u32,
    /// The flash's write unit (`NorFlash::WRITE_SIZE`).
    pub write_size_bytes: u32,
    /// The flash's erase unit (`NorFlash::ERASE_SIZE`); embassy-boot's page size.
    pub erase_size_bytes: u32,
    /// Length of the scratch buffer the bootloader swaps pages through.
    pub boot_buffer_bytes: u32,
    /// embassy-boot's STATE partition.
    pub bootloader_state: Partition,
    /// The running image.
    pub active: Partition,
    /// The download area.
    pub dfu: Partition,
    /// The agent's persisted state (two slots, see [`crate::agent_store`]).
    pub agent: Partition,
}

/// The layout the host tests and `mcu-bootloader` use: 4-byte writes, 4 KiB pages, an 8-page
/// image. It matches [`crate::HostFlash`].
pub const HOST: FlashLayout = FlashLayout {
    flash_size_bytes: 20 * 4096,
    write_size_bytes: 4,
    erase_size_bytes: 4096,
    boot_buffer_bytes: 1024,
    bootloader_state: Partition { offset: 0, size_bytes: 4096 },
    active: Partition { offset: 4096, size_bytes: 8 * 4096 },
    dfu: Partition { offset: 9 * 4096, size_bytes: 9 * 4096 },
    agent: Partition { offset: 18 * 4096, size_bytes: 2 * 4096 },
};

/// The layout `mcu-agent` (the agent's host runs) uses: [`HOST`]'s geometry with room for a
/// 256 KiB image.
pub const HOST_DEVICE: FlashLayout = FlashLayout {
    flash_size_bytes: 132 * 4096,
    write_size_bytes: 4,
    erase_size_bytes: 4096,
    boot_buffer_bytes: 1024,
    bootloader_state: Partition { offset: 0, size_bytes: 4096 },
    active: Partition { offset: 4096, size_bytes: 64 * 4096 },
    dfu: Partition { offset: 65 * 4096, size_bytes: 65 * 4096 },
    agent: Partition { offset: 130 * 4096, size_bytes: 2 * 4096 },
};

/// The Nucleo-F767ZI board (STM32F767ZI, 2 MiB single-bank flash), as `firmware/app` and
/// `firmware/bootloader` use it. Offsets are relative to `FLASH_BASE` (0x0800_0000), as
/// embassy-stm32's `Flash` takes them.
///
/// Why 256 KiB pages everywhere: `Flash<Blocking>` as one `NorFlash` has `ERASE_SIZE` = its
/// largest sector (256 KiB; sectors 0–3 are 32 KiB, 4 is 128 KiB, 5–11 are 256 KiB), so every
/// partition over it must be 256 KiB aligned. Sectors 0–4 (the first 256 KiB) hold the
/// bootloader and are no partition; sector 11 is spare.
///
/// | partition | offset | size | sectors |
/// | --- | --- | --- | --- |
/// | bootloader (not a partition) | 0 | 256 KiB | 0–4 |
/// | STATE | 256 KiB | 256 KiB | 5 |
/// | ACTIVE (the app is linked at 0x0808_0000) | 512 KiB | 256 KiB | 6 |
/// | DFU (ACTIVE + one page for the swap) | 768 KiB | 512 KiB | 7–8 |
/// | AGENT (two 256 KiB slots) | 1280 KiB | 512 KiB | 9–10 |
/// | spare | 1792 KiB | 256 KiB | 11 |
///
/// Why the agent store's in-place bitmap marks are allowed here: the F7's flash has no ECC,
/// so a 16-byte unit that already holds cleared bits may be programmed again to clear more
/// (NOR only moves bits from 1 to 0). STM32H7 (256-bit words) and L4/G4 (64-bit double words)
/// store ECC per write unit and refuse or corrupt a second program of the same unit; a
/// layout for them would need one write unit per chunk mark.
pub const NUCLEO_F767ZI: FlashLayout = FlashLayout {
    flash_size_bytes: 2048 * 1024,
    write_size_bytes: 16,
    erase_size_bytes: 256 * 1024,
    // A divisor of the page and a multiple of the write size; lives on the bootloader's stack.
    boot_buffer_bytes: 2048,
    bootloader_state: Partition { offset: 256 * 1024, size_bytes: 256 * 1024 },
    active: Partition { offset: 512 * 1024, size_bytes: 256 * 1024 },
    dfu: Partition { offset: 768 * 1024, size_bytes: 512 * 1024 },
    agent: Partition { offset: 1280 * 1024, size_bytes: 512 * 1024 },
};

// A broken built-in layout is a build error, not a boot-time surprise.
const _: () = match HOST.check() {
    Ok(()) => (),
    Err(_) => panic!("layout::HOST breaks a layout rule"),
};
const _: () = match HOST_DEVICE.check() {
    Ok(()) => (),
    Err(_) => panic!("layout::HOST_DEVICE breaks a layout rule"),
};
const _: () = match NUCLEO_F767ZI.check() {
    Ok(()) => (),
    Err(_) => panic!("layout::NUCLEO_F767ZI breaks a layout rule"),
};

impl FlashLayout {
    /// The four partitions with their names, in flash order for [`HOST`].
    pub const fn partitions(&self) -> [(PartitionName, Partition); 4] {
        [
            (PartitionName::BootloaderState, self.bootloader_state),
            (PartitionName::Active, self.active),
            (PartitionName::Dfu, self.dfu),
            (PartitionName::Agent, self.agent),
        ]
    }

    /// Size of one of the agent's two slots.
    pub const fn agent_slot_bytes(&self) -> u32 {
        self.agent.size_bytes / 2
    }

    /// Checks every rule; `Ok` means embassy-boot's asserts and the agent store cannot fire.
    pub const fn check(&self) -> Result<(), LayoutError> {
        let erase = self.erase_size_bytes;
        let write = self.write_size_bytes;
        if erase == 0 {
            return Err(LayoutError::EraseSize);
        }
        if write == 0 || write > MAX_WRITE_SIZE || !erase.is_multiple_of(write) || !MAX_WRITE_SIZE.is_multiple_of(write)
        {
            return Err(LayoutError::WriteSize);
        }
        let buf = self.boot_buffer_bytes;
        if buf == 0 || !buf.is_multiple_of(write) || !erase.is_multiple_of(buf) {
            return Err(LayoutError::BootBuffer);
        }
        let parts = self.partitions();
        let mut i = 0;
        while i < parts.len() {
            let (name, p) = parts[i];
            if p.size_bytes == 0 {
                return Err(LayoutError::Empty(name));
            }
            if p.offset % erase != 0 || p.size_bytes % erase != 0 {
                return Err(LayoutError::Misaligned(name));
            }
            match p.end() {
                Some(end) if end <= self.flash_size_bytes => {}
                _ => return Err(LayoutError::OutOfFlash(name)),
            }
            let mut j = 0;
            while j < i {
                let (other_name, q) = parts[j];
                // Both ends are known not to overflow: checked in earlier iterations.
                if p.offset < q.offset + q.size_bytes && q.offset < p.offset + p.size_bytes {
                    return Err(LayoutError::Overlap(other_name, name));
                }
                j += 1;
            }
            i += 1;
        }
        // u64 here and below: a huge ACTIVE must not wrap around and pass.
        if (self.dfu.size_bytes as u64) < self.active.size_bytes as u64 + erase as u64 {
            return Err(LayoutError::DfuTooSmall);
        }
        let active_pages = self.active.size_bytes / erase;
        if (2 + 4 * active_pages as u64) * write as u64 > self.bootloader_state.size_bytes as u64 {
            return Err(LayoutError::StateTooSmall);
        }
        let slot = self.agent_slot_bytes();
        if !self.agent.size_bytes.is_multiple_of(2) || !slot.is_multiple_of(erase) || (slot as usize) < SLOT_BYTES {
            return Err(LayoutError::AgentTooSmall);
        }
        Ok(())
    }

    /// Checks that a flash driver matches this layout (and the layout itself), so building
    /// embassy partitions over it cannot panic.
    pub fn check_flash<F: NorFlash>(&self, flash: &F) -> Result<(), LayoutError> {
        self.check()?;
        if F::WRITE_SIZE as u32 != self.write_size_bytes
            || F::ERASE_SIZE as u32 != self.erase_size_bytes
            || !self.erase_size_bytes.is_multiple_of(F::READ_SIZE as u32)
            || (flash.capacity() as u64) < self.flash_size_bytes as u64
        {
            return Err(LayoutError::FlashMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleo_layout_keeps_clear_of_the_bootloader_and_the_spare_sector() {
        // Sectors 0-4 (the first 256 KiB) are the bootloader's, sector 11 (the last 256 KiB)
        // is spare: no partition may touch either.
        for (name, p) in NUCLEO_F767ZI.partitions() {
            assert!(p.offset >= 256 * 1024, "{name:?} overlaps the bootloader");
            assert!(p.end().unwrap() <= 1792 * 1024, "{name:?} reaches the spare sector");
        }
        // The app is linked at FLASH_BASE + ACTIVE's offset (firmware/app/memory.x).
        assert_eq!(0x0800_0000 + NUCLEO_F767ZI.active.offset, 0x0808_0000);
    }

    #[test]
    fn host_layout_is_valid() {
        assert_eq!(HOST.check(), Ok(()));
    }

    #[test]
    fn each_rule_has_its_error() {
        let mut l = HOST;
        l.dfu.size_bytes = l.active.size_bytes;
        assert_eq!(l.check(), Err(LayoutError::DfuTooSmall));

        let mut l = HOST;
        l.active.offset += 4;
        assert_eq!(l.check(), Err(LayoutError::Misaligned(PartitionName::Active)));

        let mut l = HOST;
        l.agent.offset = l.dfu.offset;
        assert_eq!(l.check(), Err(LayoutError::Overlap(PartitionName::Dfu, PartitionName::Agent)));

        let mut l = HOST;
        l.flash_size_bytes -= 4096;
        assert_eq!(l.check(), Err(LayoutError::OutOfFlash(PartitionName::Agent)));

        let mut l = HOST;
        l.write_size_bytes = 64;
        assert_eq!(l.check(), Err(LayoutError::WriteSize));

        let mut l = HOST;
        l.boot_buffer_bytes = 3000;
        assert_eq!(l.check(), Err(LayoutError::BootBuffer));

        let mut l = HOST;
        l.agent.size_bytes = 4096;
        assert_eq!(l.check(), Err(LayoutError::AgentTooSmall));

        let mut l = HOST;
        l.bootloader_state.size_bytes = 0;
        assert_eq!(l.check(), Err(LayoutError::Empty(PartitionName::BootloaderState)));

        let mut l = HOST;
        l.agent.offset = u32::MAX - 4095;
        assert_eq!(l.check(), Err(LayoutError::OutOfFlash(PartitionName::Agent)));
    }

    #[test]
    fn state_too_small_for_many_active_pages() {
        // 4 KiB of STATE in 32-byte writes is 128 units: room for 2 + 4 * 31 pages, not 40.
        let mut l = HOST;
        l.write_size_bytes = 32;
        l.flash_size_bytes = 200 * 4096;
        l.active = Partition { offset: 4096, size_bytes: 40 * 4096 };
        l.dfu = Partition { offset: 41 * 4096, size_bytes: 41 * 4096 };
        l.agent = Partition { offset: 82 * 4096, size_bytes: 2 * 4096 };
        assert_eq!(l.check(), Err(LayoutError::StateTooSmall));
        l.active.size_bytes = 31 * 4096;
        assert_eq!(l.check(), Ok(()));
    }
}
