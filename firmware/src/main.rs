//! The device half of an otamesh update on a Cortex-M4F, on embedded fixtures.
//!
//! This binary exists to prove two things in CI: that `protocol` builds `no_std` without
//! its `alloc`/`std` features for a real MCU target, and how much flash and RAM the
//! verification path costs (see `scripts/firmware-size`). It runs exactly what an MCU does
//! for each release: check the manifest, check its signature against a pinned key, then for
//! each chunk check the hash, decrypt in place and feed the image verifier.
//!
//! Every fixture is read through `black_box` and the outcome is stored to an exported
//! static, so the optimizer can neither precompute the work from constant inputs nor drop
//! it as unused: the size measured is the size of real verification code.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m_rt::entry;
use panic_halt as _;
use protocol::codec::{self, ContentKey};
use protocol::manifest::ManifestView;
use protocol::reassemble::ImageVerifier;
use protocol::sig::Ed25519PublicKey;

// Written by protocol/tests/firmware_fixtures.rs (OTAMESH_REGEN_FIXTURES=1), which also
// fails when these files go stale.
static MANIFEST: &[u8; 199] = include_bytes!("../fixtures/manifest.bin");
static MANIFEST_SIG: &[u8; 64] = include_bytes!("../fixtures/manifest.sig");
static CHUNK: &[u8; 1064] = include_bytes!("../fixtures/chunk.bin");
static PINNED_KEY: &[u8; 32] = include_bytes!("../fixtures/pubkey.bin");
static CONTENT_KEY: &[u8; 32] = include_bytes!("../fixtures/content.key");

/// The hardware class this build accepts; a manifest for another board is refused.
const HW_CLASS: &str = "stm32f4-demo";

/// What the last run concluded; a debugger (or a test harness over SWD) reads it by name.
/// `0` means not finished, [`VERIFIED`] success, anything else a [`Failure`] code.
#[no_mangle]
pub static OTAMESH_RESULT: AtomicU32 = AtomicU32::new(0);

/// The result code for a fully verified image.
const VERIFIED: u32 = 0x600D;

/// Where the pipeline stopped; the discriminant is what lands in [`OTAMESH_RESULT`].
#[derive(Clone, Copy)]
#[repr(u32)]
enum Failure {
    Manifest = 1,
    Key = 2,
    Signature = 3,
    HwClass = 4,
    MissingChunk = 5,
    Chunk = 6,
    Image = 7,
}

fn verify_release() -> Result<(), Failure> {
    let manifest_bytes: &[u8] = black_box(MANIFEST);
    let view = ManifestView::new_checked(manifest_bytes).map_err(|_| Failure::Manifest)?;
    let key = Ed25519PublicKey::from_bytes(black_box(PINNED_KEY)).map_err(|_| Failure::Key)?;
    key.verify(manifest_bytes, black_box(MANIFEST_SIG)).map_err(|_| Failure::Signature)?;
    if view.hw_class() != HW_CLASS {
        return Err(Failure::HwClass);
    }
    let content_key = ContentKey(*black_box(CONTENT_KEY));
    let mut verifier = ImageVerifier::new();
    // One chunk buffer, as on a device that streams chunks from the network into flash.
    let mut buffer = [0u8; CHUNK.len()];
    for entry in view.chunks() {
        // The fixtures hold one chunk; a real device would receive each one here.
        let stored = buffer.get_mut(..entry.stored_length as usize).ok_or(Failure::MissingChunk)?;
        stored.copy_from_slice(black_box(CHUNK).get(..stored.len()).ok_or(Failure::MissingChunk)?);
        let plaintext = codec::open_in_place(&entry, Some(&content_key), stored).map_err(|_| Failure::Chunk)?;
        verifier.update(&entry, plaintext).map_err(|_| Failure::Image)?;
    }
    verifier.finish(&view).map_err(|_| Failure::Image)
}

#[entry]
fn main() -> ! {
    let code = match verify_release() {
        Ok(()) => VERIFIED,
        Err(failure) => failure as u32,
    };
    OTAMESH_RESULT.store(code, Ordering::SeqCst);
    #[cfg(feature = "qemu")]
    qemu::report_and_exit(code);
    loop {
        // Nothing left to do; stay here so a debugger can read the result.
        core::hint::spin_loop();
    }
}

/// Test-harness support for `scripts/firmware-qemu`: never in the size-measured build.
#[cfg(feature = "qemu")]
mod qemu {
    use cortex_m_semihosting::{debug, hprintln};

    extern "C" {
        /// End of `.bss` (cortex-m-rt's link.x): the stack may grow down to here.
        static __ebss: u32;
        /// Initial stack pointer: the top of RAM.
        static _stack_start: u32;
    }

    /// Bytes of stack that were ever written, found as the lowest non-zero word between the
    /// end of `.bss` and the top of RAM. QEMU starts RAM zeroed, so this is the high-water
    /// mark (a slight underestimate only if the deepest frame's lowest words stayed zero).
    fn stack_high_water_bytes() -> usize {
        let bottom = core::ptr::addr_of!(__ebss) as usize;
        let top = core::ptr::addr_of!(_stack_start) as usize;
        let mut addr = bottom.next_multiple_of(4);
        while addr < top {
            // SAFETY: `addr` is a word-aligned address inside RAM, between the statics and
            // the top of the stack; reading it has no side effects.
            if unsafe { core::ptr::read_volatile(addr as *const u32) } != 0 {
                break;
            }
            addr += 4;
        }
        top - addr
    }

    /// Prints the outcome and asks the emulator to exit with it (a no-op on real hardware
    /// without a debugger, where `main` then idles as usual).
    pub fn report_and_exit(code: u32) {
        let verified = code == super::VERIFIED;
        hprintln!("otamesh firmware: {} (result {:#x})", if verified { "VERIFIED" } else { "FAILED" }, code);
        hprintln!("stack high-water mark: {} bytes", stack_high_water_bytes());
        debug::exit(if verified { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    }
}
