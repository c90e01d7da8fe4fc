//! The Nucleo-F767ZI bootloader: runs at every reset, before the agent firmware.
//!
//! It runs `otamesh_mcu::boot::run_bootloader` — embassy-boot's `prepare_boot` over
//! [`NUCLEO_F767ZI`], the very layout the app's agent writes — so a swap the agent marked
//! is carried out (or an unconfirmed image reverted), then jumps to ACTIVE. Sharing the
//! layout constant, rather than two memory.x files with `__bootloader_*` symbols, means the
//! app and the bootloader cannot disagree about where STATE, ACTIVE and DFU are.
//!
//! It touches nothing but the flash: no clock setup (the app configures the clocks) and no
//! time driver, so no interrupt is enabled when the app starts.
#![no_std]
#![no_main]

use core::cell::RefCell;

use cortex_m_rt::entry;
use embassy_boot::AlignedBuffer;
use embassy_stm32::flash::{Flash, FLASH_BASE};
use embassy_sync::blocking_mutex::Mutex;
use otamesh_mcu::boot::{run_bootloader, SharedFlash};
use otamesh_mcu::layout::NUCLEO_F767ZI;

/// Where the app's vector table is: ACTIVE's first byte (firmware/app/memory.x links it there).
const ACTIVE_ADDRESS: u32 = FLASH_BASE as u32 + NUCLEO_F767ZI.active.offset;

#[entry]
fn main() -> ! {
    // SAFETY: taken once, here, before anything else runs; nothing else owns peripherals.
    let p = unsafe { embassy_stm32::Peripherals::steal() };
    let flash: SharedFlash<_> = Mutex::new(RefCell::new(Flash::new_blocking(p.FLASH)));
    // embassy-boot copies pages through this buffer; its flash writes need the alignment.
    let mut buf = AlignedBuffer([0u8; NUCLEO_F767ZI.boot_buffer_bytes as usize]);
    if run_bootloader(&NUCLEO_F767ZI, &flash, &mut buf.0).is_err() {
        // A flash error in the middle of a swap: ACTIVE may be half written. Booting it
        // could run a torn image; a reset retries, and embassy-boot resumes the swap from
        // the progress it keeps in STATE.
        cortex_m::peripheral::SCB::sys_reset();
    }
    // SAFETY: ACTIVE_ADDRESS holds a vector table (the app is linked there); the app sets up
    // everything it uses. VTOR must point at it before the jump so its interrupts are its own.
    unsafe { jump(ACTIVE_ADDRESS) }
}

/// Points VTOR at `vector_table` and jumps to its reset handler with its initial stack
/// pointer (what embassy-boot-stm32's `BootLoader::load` does).
unsafe fn jump(vector_table: u32) -> ! {
    let mut core = cortex_m::Peripherals::steal();
    core.SCB.invalidate_icache();
    core.SCB.vtor.write(vector_table);
    cortex_m::asm::bootload(vector_table as *const u32)
}

/// A panic (none is expected: the layout is checked at compile time and errors are values)
/// resets the board, which runs the bootloader again.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    cortex_m::peripheral::SCB::sys_reset()
}
