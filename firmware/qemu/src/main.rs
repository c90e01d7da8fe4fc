//! The board agent's code path on an emulated Cortex-M4 (QEMU netduinoplus2), to measure the
//! stack it needs and to show it works end to end on an MCU core.
//!
//! It runs what the board runs — `otamesh_mcu::agent::run_once` with the board's buffer sizes
//! (`firmware/app/src/sizes.rs`, included here) inside an embassy task — with two stand-ins:
//! the edge is an in-memory device service answering real wire requests from
//! `firmware/fixtures` (the policy and manifest seals, the policy, the manifest, the two
//! encrypted chunks), and the flash is RAM with NOR rules (16-byte writes that may only
//! clear bits, 4 KiB erases). The sequence is one update: run 1 finds the release (two seals
//! opened, one carrying a key rotation, so a trust statement's signatures are checked inside
//! a seal's: the deepest verification there is; `check_manifest`), downloads and decrypts both chunks into DFU, hashes the image,
//! marks it for the bootloader and asks for a reset; the bootloader step
//! (`otamesh_mcu::boot::run_bootloader`) swaps; run 2 runs the trial's health check and
//! commits. ACTIVE must then hold the release's image.
//!
//! The stack is painted before each phase and scanned after it. Async state is static (the
//! task's future is in `.bss`, as on the board), so what is measured is the synchronous
//! depth of the deepest poll. Not measured here: the network runner's poll (embassy-net,
//! smoltcp, the Ethernet driver) and interrupt handlers; `scripts/firmware-size` adds a
//! stated allowance for them.
#![no_std]
#![no_main]

#[path = "../../app/src/sizes.rs"]
#[allow(dead_code)] // the TCP buffer sizes are the app's only
mod sizes;

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::Spawner;
use embassy_sync::blocking_mutex::Mutex;
use embassy_time::Duration;
use embedded_io_async::ErrorKind;
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use otamesh_mcu::agent::{run_once, AgentBuffers, AgentConfig, Edges, RunOutcome};
use otamesh_mcu::boot::{run_bootloader, BootOutcome, SharedFlash};
use otamesh_mcu::layout::{FlashLayout, Partition};
use protocol::codec::ContentKey;
use protocol::device::sealed::{self, DeviceLimits, MAX_PATH_BYTES};
use protocol::manifest::ManifestView;
use protocol::rollout::policy::PolicyView;
use protocol::seal::TrustAnchor;
use protocol::wire::device::{
    ChunkItem, ChunkItems, ChunkStatus, ErrorCode, Request, RequestView, Response, FRAME_HEADER_BYTES,
};
use sha2::{Digest, Sha256};

use sizes::{CHUNK_BYTES, LINK_BYTES, MANIFEST_BYTES, POLICY_BYTES};

// Written by protocol/tests/firmware_fixtures.rs (OTAMESH_REGEN_FIXTURES=1), which also
// fails when they go stale.
static ANCHOR: &[u8] = include_bytes!("../../fixtures/anchor.bin");
static POLICY: &[u8] = include_bytes!("../../fixtures/policy.bin");
static POLICY_SEAL: &[u8] = include_bytes!("../../fixtures/policy.seal");
static MANIFEST: &[u8] = include_bytes!("../../fixtures/manifest.bin");
static MANIFEST_SEAL: &[u8] = include_bytes!("../../fixtures/manifest.seal");
static CHUNKS: &[u8] = include_bytes!("../../fixtures/chunks.bin");
static CONTENT_KEY: &[u8; 32] = include_bytes!("../../fixtures/content.key");

/// The app's default release name and hardware class, which the fixtures are made for.
const RELEASE: &str = "sensor-fw";
const HW_CLASS: &str = "nucleo-f767zi";
/// Any time after the fixture policy's wave started.
const UNIX_NOW: i64 = 1_800_000_000;

const PAGE: u32 = 4096;
/// The board's geometry scaled down to fit QEMU's RAM: its write size (16) and boot buffer
/// (2048), 4 KiB pages instead of 256 KiB ones, an 8 KiB ACTIVE for the 6001-byte fixture.
const LAYOUT: FlashLayout = FlashLayout {
    flash_size_bytes: 8 * PAGE,
    write_size_bytes: 16,
    erase_size_bytes: PAGE,
    boot_buffer_bytes: 2048,
    bootloader_state: Partition { offset: 0, size_bytes: PAGE },
    active: Partition { offset: PAGE, size_bytes: 2 * PAGE },
    dfu: Partition { offset: 3 * PAGE, size_bytes: 3 * PAGE },
    agent: Partition { offset: 6 * PAGE, size_bytes: 2 * PAGE },
};
const _: () = match LAYOUT.check() {
    Ok(()) => (),
    Err(_) => panic!("the QEMU layout breaks a layout rule"),
};
const FLASH_BYTES: usize = LAYOUT.flash_size_bytes as usize;

/// Virtual time: a timer that is awaited makes the clock jump to its deadline (nothing else
/// runs here), so a run never waits in real time.
struct VirtualClock {
    now: critical_section::Mutex<Cell<u64>>,
}

impl embassy_time_driver::Driver for VirtualClock {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.now.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let now = self.now.borrow(cs);
            now.set(now.get().max(at));
        });
        waker.wake_by_ref();
    }
}

embassy_time_driver::time_driver_impl!(static CLOCK: VirtualClock = VirtualClock {
    now: critical_section::Mutex::new(Cell::new(0)),
});

/// RAM with NOR flash rules: writes are aligned to 16 bytes and may only clear bits, erases
/// are whole 4 KiB pages.
struct RamFlash {
    bytes: [u8; FLASH_BYTES],
}

impl ErrorType for RamFlash {
    type Error = NorFlashErrorKind;
}

impl RamFlash {
    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, NorFlashErrorKind> {
        let start = offset as usize;
        let end = start.checked_add(len).filter(|end| *end <= FLASH_BYTES).ok_or(NorFlashErrorKind::OutOfBounds)?;
        Ok(start..end)
    }
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let range = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        FLASH_BYTES
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 16;
    const ERASE_SIZE: usize = PAGE as usize;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if !from.is_multiple_of(PAGE) || !to.is_multiple_of(PAGE) || to < from {
            return Err(NorFlashErrorKind::NotAligned);
        }
        let range = self.range(from, (to - from) as usize)?;
        self.bytes[range].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !(offset as usize).is_multiple_of(Self::WRITE_SIZE) || !bytes.len().is_multiple_of(Self::WRITE_SIZE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        let range = self.range(offset, bytes.len())?;
        let cells = &mut self.bytes[range];
        if cells.iter().zip(bytes).any(|(old, new)| new & !old != 0) {
            return Err(NorFlashErrorKind::Other); // NOR cannot set a bit without an erase
        }
        cells.copy_from_slice(bytes);
        Ok(())
    }
}

/// What the in-memory edge serves: the four sealed-metadata files under the paths the agent
/// asks for (computed with the same `protocol::device::sealed` functions), and the chunks.
struct Served {
    paths: [([u8; MAX_PATH_BYTES], usize); 4],
    /// Status reports taken.
    reports: Cell<u32>,
}

impl Served {
    fn new() -> Option<Served> {
        let mut paths = [([0u8; MAX_PATH_BYTES], 0usize); 4];
        let policy = PolicyView::parse(POLICY).ok()?;
        paths[0].1 = sealed::policy_seal_path(RELEASE, &mut paths[0].0).ok()?.len();
        paths[1].1 = sealed::policy_request(RELEASE, POLICY_SEAL, &mut paths[1].0).ok()?.len();
        paths[2].1 = sealed::manifest_seal_path(&policy, &mut paths[2].0).ok()?.len();
        paths[3].1 = sealed::manifest_request(&policy, MANIFEST_SEAL, &mut paths[3].0).ok()?.len();
        Some(Served { paths, reports: Cell::new(0) })
    }

    fn file(&self, path: &str) -> Option<&'static [u8]> {
        let files = [POLICY_SEAL, POLICY, MANIFEST_SEAL, MANIFEST];
        let at = self.paths.iter().position(|(bytes, len)| &bytes[..*len] == path.as_bytes())?;
        Some(files[at])
    }

    fn chunk(&self, id: &protocol::ChunkId) -> Option<&'static [u8]> {
        let view = ManifestView::new_checked(MANIFEST).ok()?;
        let mut at = 0usize;
        for entry in view.chunks() {
            let len = entry.stored_length as usize;
            if entry.id == *id {
                return CHUNKS.get(at..at + len);
            }
            at += len;
        }
        None
    }

    /// The whole response frame to the request `body`, into `out`.
    fn answer(&self, body: &[u8], out: &mut [u8]) -> Option<usize> {
        let response = match RequestView::parse(body) {
            Ok(Request::GetTarget { path }) => match self.file(path) {
                Some(bytes) => Response::Bytes(bytes),
                None => Response::NotFound,
            },
            Ok(Request::GetChunks { ranges }) => {
                // The agent asks for one chunk per request.
                let range = ranges.iter().next()?;
                let status = match self.chunk(&range.id) {
                    Some(bytes) => ChunkStatus::Ok(bytes),
                    None => ChunkStatus::NotFound,
                };
                let items = [ChunkItem { id: range.id, status }];
                return Response::Chunks { items: ChunkItems::from_slice(&items) }.emit(out).ok();
            }
            // A signed status report (the agent's last step of each run): counted and taken.
            Ok(Request::ReportStatus { body }) if body.starts_with(b"{\"signed\":") => {
                self.reports.set(self.reports.get() + 1);
                Response::Ack
            }
            _ => Response::Error { code: ErrorCode::BAD_REQUEST },
        };
        response.emit(out).ok()
    }
}

/// One connection to the in-memory edge: bytes written are requests, each answered once
/// whole; answers are read in order.
struct EdgeStream<'a> {
    served: &'a Served,
    request: &'a mut [u8],
    request_len: usize,
    response: &'a mut [u8],
    response_at: usize,
    response_len: usize,
    requests: &'a Cell<u32>,
}

impl embedded_io_async::ErrorType for EdgeStream<'_> {
    type Error = ErrorKind;
}

impl embedded_io_async::Write for EdgeStream<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let end = self.request_len + buf.len();
        self.request.get_mut(self.request_len..end).ok_or(ErrorKind::OutOfMemory)?.copy_from_slice(buf);
        self.request_len = end;
        if end >= FRAME_HEADER_BYTES {
            let mut header = [0u8; FRAME_HEADER_BYTES];
            header.copy_from_slice(&self.request[..FRAME_HEADER_BYTES]);
            let body_len = u32::from_le_bytes(header) as usize;
            if end == FRAME_HEADER_BYTES + body_len {
                // Answers queue behind those not yet read, in order, as a TCP edge's do (the
                // agent keeps chunk requests in flight).
                self.response.copy_within(self.response_at..self.response_len, 0);
                self.response_len -= self.response_at;
                self.response_at = 0;
                let body = &self.request[FRAME_HEADER_BYTES..end];
                let free = &mut self.response[self.response_len..];
                self.response_len += self.served.answer(body, free).ok_or(ErrorKind::InvalidData)?;
                self.request_len = 0;
                self.requests.set(self.requests.get() + 1);
            }
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

impl embedded_io_async::Read for EdgeStream<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let n = buf.len().min(self.response_len - self.response_at);
        buf[..n].copy_from_slice(&self.response[self.response_at..self.response_at + n]);
        self.response_at += n;
        Ok(n) // 0 once the answer is read: end of stream, as a closed socket
    }
}

/// One edge, in memory.
struct FixtureEdges<'a> {
    served: &'a Served,
    request: &'a mut [u8],
    response: &'a mut [u8],
    requests: &'a Cell<u32>,
}

impl Edges for FixtureEdges<'_> {
    type Stream<'s>
        = EdgeStream<'s>
    where
        Self: 's;

    fn count(&self) -> usize {
        1
    }

    async fn connect(&mut self, index: usize) -> Option<EdgeStream<'_>> {
        if index != 0 {
            return None;
        }
        Some(EdgeStream {
            served: self.served,
            request: &mut *self.request,
            request_len: 0,
            response: &mut *self.response,
            response_at: 0,
            response_len: 0,
            requests: self.requests,
        })
    }
}

mod stack {
    //! Stack painting: every word between the end of the statics and (a margin below) the
    //! current stack pointer gets a pattern; after a phase, the lowest word that lost it is
    //! the deepest the stack went.

    extern "C" {
        /// End of `.bss`/`.uninit` (cortex-m-rt's link.x): the stack may grow down to here.
        static __sheap: u32;
        /// Initial stack pointer: the top of RAM.
        static _stack_start: u32;
    }

    const PAINT: u32 = 0x5A5A_A5A5;

    fn bottom() -> usize {
        core::ptr::addr_of!(__sheap) as usize
    }

    fn top() -> usize {
        core::ptr::addr_of!(_stack_start) as usize
    }

    /// Paints the unused stack. Nothing runs meanwhile (no interrupt is enabled here).
    #[inline(never)]
    pub fn paint() {
        // Stay clear of this function's own frame.
        let limit = cortex_m::register::msp::read() as usize - 256;
        let mut addr = bottom();
        while addr < limit {
            // SAFETY: a word-aligned address between the end of the statics and below the
            // live stack: unused memory, which nothing else reads or writes now.
            unsafe { core::ptr::write_volatile(addr as *mut u32, PAINT) };
            addr += 4;
        }
    }

    /// Bytes from the top of RAM to the deepest word written since [`paint`].
    pub fn peak_bytes() -> usize {
        let mut addr = bottom();
        // SAFETY: as in `paint`, reads of RAM between the statics and the stack's top.
        while addr < top() && unsafe { core::ptr::read_volatile(addr as *const u32) } == PAINT {
            addr += 4;
        }
        top() - addr
    }
}

/// The flash, initialised in place (a 32 KiB temporary on the stack would count as stack).
/// `static mut`: `NoopRawMutex` is not `Sync`; only `main` touches it.
static mut FLASH: SharedFlash<RamFlash> = Mutex::new(RefCell::new(RamFlash { bytes: [0xFF; FLASH_BYTES] }));
static mut BUFFERS: ([u8; LINK_BYTES], [u8; CHUNK_BYTES], [u8; POLICY_BYTES], [u8; MANIFEST_BYTES]) =
    ([0; LINK_BYTES], [0; CHUNK_BYTES], [0; POLICY_BYTES], [0; MANIFEST_BYTES]);
/// The in-memory edge's request and response frames.
static mut EDGE_REQUEST: [u8; 2048] = [0; 2048];
/// Room for the answers to every request the agent keeps in flight (and the one it reads).
static mut EDGE_RESPONSE: [u8; (otamesh_mcu::download::IN_FLIGHT + 1) * (LINK_BYTES + FRAME_HEADER_BYTES)] =
    [0; (otamesh_mcu::download::IN_FLIGHT + 1) * (LINK_BYTES + FRAME_HEADER_BYTES)];

fn fail(what: &str) -> ! {
    hprintln!("otamesh agent under QEMU: FAILED: {}", what);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

fn outcome_name(outcome: &Result<RunOutcome, otamesh_mcu::agent::AgentError>) -> &'static str {
    match outcome {
        Ok(RunOutcome::Reboot) => "reboot",
        Ok(RunOutcome::Resting(state)) => state.name(),
        Err(_) => "error",
    }
}

/// After the update: ACTIVE holds the release's image, and the store the rotated anchor
/// (the seals carried a key rotation to epoch 2). Out of line, so that its temporaries do
/// not enlarge the frame of `main`'s poll, which the measured runs share with it.
#[inline(never)]
fn check_installed(flash: &SharedFlash<RamFlash>) -> Result<(), &'static str> {
    let view = ManifestView::new_checked(MANIFEST).map_err(|_| "the fixture manifest does not parse")?;
    let image_len = view.image_len() as usize;
    let active = flash.lock(|cell| {
        let flash = cell.borrow();
        let start = LAYOUT.active.offset as usize;
        <[u8; 32]>::from(Sha256::digest(&flash.bytes[start..start + image_len]))
    });
    if active != view.image_sha256() {
        return Err("ACTIVE does not hold the release after the swap");
    }
    let stored = otamesh_mcu::boot::Partitions::new(&LAYOUT, flash)
        .ok()
        .and_then(|parts| otamesh_mcu::agent_store::AgentStore::open(parts.agent).ok())
        .and_then(|(_, state)| state);
    if stored.and_then(|s| s.anchor).map(|a| a.epoch) != Some(2) {
        return Err("the rotated anchor was not persisted");
    }
    Ok(())
}

/// The bootloader's work, with its page buffer on the stack as in `firmware/bootloader`.
#[inline(never)]
fn bootloader_step(flash: &SharedFlash<RamFlash>) -> Result<BootOutcome, otamesh_mcu::boot::BootStepError> {
    let mut buffer = [0u8; LAYOUT.boot_buffer_bytes as usize];
    run_bootloader(&LAYOUT, flash, &mut buffer)
}

#[embassy_executor::main]
async fn main(_spawner: Spawner) {
    // SAFETY: main runs once; these statics are borrowed here and nowhere else.
    let (flash, (link, chunk, policy, manifest), request, response) = unsafe {
        (
            &*core::ptr::addr_of!(FLASH),
            &mut *core::ptr::addr_of_mut!(BUFFERS),
            &mut *core::ptr::addr_of_mut!(EDGE_REQUEST),
            &mut *core::ptr::addr_of_mut!(EDGE_RESPONSE),
        )
    };
    let Some(served) = Served::new() else { fail("the fixtures do not parse") };
    let Ok(anchor) = TrustAnchor::decode(ANCHOR) else { fail("the fixture anchor does not decode") };
    let requests = Cell::new(0);
    // Reports are signed and sent as on a board with a provisioned key: their signing and
    // writing are part of the stack measured.
    let status_key = otamesh_mcu::status_key::StatusKey::from_seed(&[0x42; 32]);
    let mut edges =
        FixtureEdges { served: &served, request: &mut request[..], response: &mut response[..], requests: &requests };
    let config = AgentConfig {
        limits: DeviceLimits {
            release: RELEASE,
            hw_class: HW_CLASS,
            max_image_bytes: u64::from(LAYOUT.active.size_bytes),
            max_chunks: sizes::MAX_CHUNKS,
            max_stored_chunk_bytes: CHUNK_BYTES as u32,
        },
        content_key: Some(ContentKey(*CONTENT_KEY)),
        device_id: status_key.public(),
        status_key: Some(&status_key),
        provisioned_anchor: anchor,
        factory_version: "factory",
        request_timeout: Duration::from_secs(10),
    };

    // Run 1: find, download, verify, mark for the bootloader.
    stack::paint();
    // Awaited in place, as on the board (a `let` of the future first would add a copy of it
    // to this poll's stack frame). Its size is the app's `__embassy_main::POOL` static.
    let first = run_once(
        flash,
        &LAYOUT,
        &config,
        &mut edges,
        AgentBuffers {
            link: &mut link[..],
            chunk: &mut chunk[..],
            policy: &mut policy[..],
            manifest: &mut manifest[..],
        },
        || true,
        || UNIX_NOW,
    )
    .await;
    let run1_peak = stack::peak_bytes();
    if first != Ok(RunOutcome::Reboot) {
        fail(outcome_name(&first));
    }

    // The reset: the bootloader swaps DFU into ACTIVE.
    stack::paint();
    let booted = bootloader_step(flash);
    let boot_peak = stack::peak_bytes();
    if booted != Ok(BootOutcome::Swapped) {
        fail("the bootloader did not swap");
    }

    // Run 2: the trial, its health check, the commit.
    stack::paint();
    let second = run_once(
        flash,
        &LAYOUT,
        &config,
        &mut edges,
        AgentBuffers {
            link: &mut link[..],
            chunk: &mut chunk[..],
            policy: &mut policy[..],
            manifest: &mut manifest[..],
        },
        || true,
        || UNIX_NOW,
    )
    .await;
    let run2_peak = stack::peak_bytes();
    if second != Ok(RunOutcome::Resting(protocol::install::State::Committed)) {
        fail(outcome_name(&second));
    }

    if let Err(what) = check_installed(flash) {
        fail(what);
    }
    if served.reports.get() != 2 {
        fail("a run ended without its status report");
    }

    hprintln!(
        "otamesh agent under QEMU: VERIFIED (run 1 {}, {} requests; bootloader swapped; run 2 {}; ACTIVE holds the release; rotated anchor persisted; 2 signed status reports)",
        outcome_name(&first),
        requests.get(),
        outcome_name(&second)
    );
    hprintln!("stack high-water mark, agent run 1 (find, download, verify, activate): {} bytes", run1_peak);
    hprintln!("stack high-water mark, bootloader step (swap): {} bytes", boot_peak);
    hprintln!("stack high-water mark, agent run 2 (trial, health check, commit): {} bytes", run2_peak);
    hprintln!("agent stack peak: {} bytes", run1_peak.max(run2_peak));
    debug::exit(debug::EXIT_SUCCESS);
}

extern "C" {
    /// cortex-m-rt's handler for any interrupt without one of its own.
    fn DefaultHandler();
}

/// The interrupt vectors (STM32F405: 82) that a device crate provides when cortex-m-rt's
/// `device` feature is on — and it is, in this workspace, by embassy-stm32 for the board.
/// No interrupt is enabled here, so all are the default handler.
#[link_section = ".vector_table.interrupts"]
#[no_mangle]
static __INTERRUPTS: [unsafe extern "C" fn(); 82] = [DefaultHandler; 82];

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("otamesh agent under QEMU: PANIC: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
