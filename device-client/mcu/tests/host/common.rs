//! Shared fixtures: temporary flash files, images, agent states.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use embassy_boot::AlignedBuffer;
use embassy_sync::blocking_mutex::Mutex;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use otamesh_mcu::agent_store::AgentState;
use otamesh_mcu::boot::{run_bootloader, BootOutcome, BootStepError, SharedFlash};
use otamesh_mcu::layout::{Partition, HOST};
use otamesh_mcu::progress::ChunkProgress;
use otamesh_mcu::HostFlash;
use protocol::install::{Label, Record, Release, Slot, State};
use protocol::seal::{KeySet, TrustAnchor};
use protocol::ReleaseId;

/// A path in the temp dir, removed on drop.
pub struct TempFlash {
    pub path: PathBuf,
}

impl TempFlash {
    pub fn new(name: &str) -> TempFlash {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("otamesh-mcu-{}-{n}-{name}.flash", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFlash { path }
    }

    /// Opens (creating erased) the HOST-sized flash, shared for partitions.
    pub fn open(&self) -> SharedFlash<HostFlash> {
        Mutex::new(RefCell::new(open_host(&self.path)))
    }
}

impl Drop for TempFlash {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn open_host(path: &Path) -> HostFlash {
    HostFlash::open(path, HOST.flash_size_bytes as usize, false).expect("open flash file")
}

/// Runs `f` on the flash inside a shared flash.
pub fn with_flash<R>(flash: &SharedFlash<HostFlash>, f: impl FnOnce(&mut HostFlash) -> R) -> R {
    flash.lock(|cell| f(&mut cell.borrow_mut()))
}

/// A deterministic image filling ACTIVE: distinct per seed and per page.
pub fn image(seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed).wrapping_mul(0x85EB_CA6B);
    (0..HOST.active.size_bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Bytes of one partition as the flash holds them.
pub fn read_partition(flash: &SharedFlash<HostFlash>, p: Partition) -> Vec<u8> {
    let mut out = vec![0; p.size_bytes as usize];
    with_flash(flash, |f| f.read(p.offset, &mut out)).expect("read partition");
    out
}

/// Puts `image` into ACTIVE directly, as the factory does.
pub fn flash_factory_image(flash: &SharedFlash<HostFlash>, image: &[u8]) {
    let a = HOST.active;
    with_flash(flash, |f| {
        f.erase(a.offset, a.offset + a.size_bytes)?;
        f.write(a.offset, image)
    })
    .expect("factory image");
}

/// One bootloader step in-process.
pub fn boot(flash: &SharedFlash<HostFlash>) -> Result<BootOutcome, BootStepError> {
    let mut buf = AlignedBuffer([0u8; HOST.boot_buffer_bytes as usize]);
    run_bootloader(&HOST, flash, &mut buf.0)
}

pub fn anchor(epoch: u32) -> TrustAnchor {
    TrustAnchor {
        epoch,
        targets: KeySet::new(1, &[[7; 32], [8; 32]]).expect("keyset"),
        rollouts: KeySet::new(1, &[[9; 32]]).expect("keyset"),
    }
}

/// A state that differs from `state(m)` for every `n != m` in every part.
pub fn state(n: u8) -> AgentState {
    let installed = Release::unknown(Label::new("1.0.0").expect("label"), u64::from(n));
    let mut record = Record::factory(Slot::A, installed);
    record.state = State::Downloading;
    record.target = Some(Release {
        id: ReleaseId([n; 32]),
        version: Label::new("2.0.0").expect("label"),
        security_counter: 2,
        image_len: 40_000,
        chunk_count: 40,
    });
    record.sequence = u64::from(n);
    let mut progress = ChunkProgress::new(40 + u32::from(n)).expect("progress");
    for i in (0..40).step_by(usize::from(n % 5) + 2) {
        progress.mark(i).expect("mark");
    }
    AgentState {
        record,
        anchor: if n == 0 { None } else { Some(anchor(u32::from(n))) },
        progress,
        target_sha256: [n; 32],
        report: Default::default(),
    }
}
