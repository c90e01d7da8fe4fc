//! The device half of an otamesh update on a Cortex-M4F, on embedded fixtures.
//!
//! This binary exists to prove two things in CI: that `protocol` builds `no_std` without
//! its `alloc`/`std` features for a real MCU target, and how much flash and RAM the
//! verification path and the install engine cost (see `scripts/firmware-size`). It runs
//! exactly what an MCU does for each release: the install engine (`protocol::install`, the
//! same state machine the Linux agent runs) takes the offer, and the download step checks
//! the manifest, its signature against a pinned key, then for each chunk the hash, decrypts
//! in place and feeds the image verifier; the engine then activates the slot, "reboots"
//! (a new engine from the persisted record), runs the trial and commits.
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
use protocol::install::{
    Action, BootInfo, Engine, EngineConfig, GateDecision, HealthOutcome, Label, Offer, Record, Release, Slot, State,
    RECORD_BYTES,
};
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
    /// The install engine did not end committed.
    Install = 8,
}

/// A bootloader with one pending slot, as embassy-boot keeps it in its state partition.
struct Boot {
    active: Slot,
    pending: Option<Slot>,
}

/// Carries out the engine's actions until it waits; `page` is the flash page the record is
/// persisted to. Returns true when the engine asked for a reboot.
fn drive(engine: &mut Engine, boot: &mut Boot, page: &mut [u8; RECORD_BYTES]) -> Result<bool, Failure> {
    let now = protocol::time::Instant(0);
    while let Some(action) = engine.poll_action() {
        match action {
            Action::Persist => *page = engine.record().encode(),
            Action::AskGate => engine.handle_gate(now, GateDecision::Proceed),
            Action::AskSwitch => engine.handle_switch_gate(now, GateDecision::Proceed),
            Action::Download { .. } => {
                verify_release()?;
                engine.handle_download_done(now);
            }
            // The image verifier already checked the whole image while the chunks streamed in.
            Action::VerifyImage { .. } => engine.handle_image_verified(now, true),
            Action::ActivateSlot { slot } => {
                boot.pending = Some(slot);
                engine.handle_slot_activated(now);
            }
            Action::Reboot => return Ok(true),
            Action::RunHealthChecks { .. } => engine.handle_health(now, HealthOutcome::Healthy),
            Action::Commit { slot } => {
                boot.active = slot;
                boot.pending = None;
                engine.handle_committed(now);
            }
            Action::RollBack { slot } => {
                boot.active = slot;
                boot.pending = None;
            }
            Action::FetchMetadata | Action::ResetProgress | Action::Report => {}
        }
    }
    Ok(false)
}

/// One update through the install engine: offer, download (the verification pipeline),
/// activation, reboot, trial, commit.
fn install_release() -> Result<(), Failure> {
    let view = ManifestView::new_checked(black_box(MANIFEST)).map_err(|_| Failure::Manifest)?;
    let hw_class = Label::new(HW_CLASS).ok_or(Failure::HwClass)?;
    let config = EngineConfig::new(hw_class);
    let factory = Release::unknown(Label::new("factory").ok_or(Failure::Install)?, 0);
    let mut page = Record::factory(Slot::A, factory).encode();
    let mut boot = Boot { active: Slot::A, pending: None };
    let now = protocol::time::Instant(0);
    let mut engine = Engine::new(config, Record::decode(&page).map_err(|_| Failure::Install)?);
    engine.handle_boot(now, BootInfo { booted: boot.active, pending: None });
    engine.handle_check(now);
    drive(&mut engine, &mut boot, &mut page)?;
    let offer = Offer {
        release: Release {
            id: protocol::ReleaseId::of_manifest(view.as_bytes()),
            version: Label::new(view.version()).ok_or(Failure::Manifest)?,
            security_counter: view.security_counter(),
            image_len: view.image_len(),
            chunk_count: view.chunk_count(),
        },
        hw_class: Label::new(view.hw_class()).ok_or(Failure::HwClass)?,
    };
    engine.handle_offer(now, offer);
    if !drive(&mut engine, &mut boot, &mut page)? {
        return Err(Failure::Install);
    }
    // The reboot: the bootloader runs the pending slot; a new engine starts from flash.
    let mut engine = Engine::new(config, Record::decode(&page).map_err(|_| Failure::Install)?);
    engine.handle_boot(now, BootInfo { booted: boot.pending.unwrap_or(boot.active), pending: boot.pending });
    drive(&mut engine, &mut boot, &mut page)?;
    match (engine.state(), boot.pending) {
        (State::Committed, None) if boot.active == Slot::B => Ok(()),
        _ => Err(Failure::Install),
    }
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
    let code = match install_release() {
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
