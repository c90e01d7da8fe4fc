//! The update path through embassy-boot: download into DFU, mark updated, the bootloader
//! step swaps; without a confirmation the next step reverts; with one the image stays.

use std::process::Command;

use embassy_boot::{AlignedBuffer, BlockingFirmwareUpdater, FirmwareUpdaterError, State};
use otamesh_mcu::boot::{BootOutcome, Partitions, SharedFlash};
use otamesh_mcu::layout::HOST;
use otamesh_mcu::HostFlash;

use crate::common::{boot, flash_factory_image, image, read_partition, TempFlash};

/// Runs `f` with the application's updater over `flash`.
pub fn with_updater<R>(
    flash: &SharedFlash<HostFlash>,
    f: impl FnOnce(
        &mut BlockingFirmwareUpdater<'_, otamesh_mcu::boot::Part<'_, HostFlash>, otamesh_mcu::boot::Part<'_, HostFlash>>,
    ) -> R,
) -> R {
    let parts = Partitions::new(&HOST, flash).expect("partitions");
    let mut word = AlignedBuffer([0u8; HOST.write_size_bytes as usize]);
    let mut updater = BlockingFirmwareUpdater::new(parts.updater_config(), &mut word.0);
    f(&mut updater)
}

/// Writes `image` into DFU sequentially, one page at a time, and marks it updated.
pub fn download(flash: &SharedFlash<HostFlash>, image: &[u8]) {
    with_updater(flash, |u| {
        for (i, page) in image.chunks(HOST.erase_size_bytes as usize).enumerate() {
            u.write_firmware(i * HOST.erase_size_bytes as usize, page).expect("write_firmware");
        }
        u.mark_updated().expect("mark_updated");
    });
}

pub fn app_state(flash: &SharedFlash<HostFlash>) -> State {
    with_updater(flash, |u| u.get_state().expect("get_state"))
}

fn mark_booted(flash: &SharedFlash<HostFlash>) {
    with_updater(flash, |u| u.mark_booted().expect("mark_booted"));
}

#[test]
fn swap_then_revert_without_mark_booted() {
    let (v1, v2) = (image(1), image(2));
    let t = TempFlash::new("update-revert");
    let flash = t.open();
    flash_factory_image(&flash, &v1);
    assert_eq!(boot(&flash), Ok(BootOutcome::Boot));
    download(&flash, &v2);
    assert_eq!(app_state(&flash), State::Swap);

    assert_eq!(boot(&flash), Ok(BootOutcome::Swapped));
    assert!(read_partition(&flash, HOST.active) == v2, "ACTIVE holds the new image");
    assert_eq!(app_state(&flash), State::Swap, "on trial until mark_booted");

    // The new image never confirmed itself: the next bootloader run swaps back.
    assert_eq!(boot(&flash), Ok(BootOutcome::Reverted));
    assert!(read_partition(&flash, HOST.active) == v1, "ACTIVE holds the old image again");
    assert_eq!(app_state(&flash), State::Revert);
    assert_eq!(boot(&flash), Ok(BootOutcome::AfterRevert));
    assert!(read_partition(&flash, HOST.active) == v1);
}

#[test]
fn mark_booted_keeps_the_new_image() {
    let (v1, v2, v3) = (image(1), image(2), image(3));
    let t = TempFlash::new("update-confirm");
    let flash = t.open();
    flash_factory_image(&flash, &v1);
    download(&flash, &v2);
    assert_eq!(boot(&flash), Ok(BootOutcome::Swapped));
    mark_booted(&flash);
    for _ in 0..2 {
        assert_eq!(boot(&flash), Ok(BootOutcome::Boot));
        assert!(read_partition(&flash, HOST.active) == v2);
    }
    // A confirmed image can be updated again.
    download(&flash, &v3);
    assert_eq!(boot(&flash), Ok(BootOutcome::Swapped));
    assert!(read_partition(&flash, HOST.active) == v3);
}

#[test]
fn download_is_refused_while_an_image_is_on_trial() {
    let t = TempFlash::new("update-trial");
    let flash = t.open();
    flash_factory_image(&flash, &image(1));
    download(&flash, &image(2));
    assert_eq!(boot(&flash), Ok(BootOutcome::Swapped));
    let refused = with_updater(&flash, |u| u.write_firmware(0, &[0; 4096]));
    assert!(matches!(refused, Err(FirmwareUpdaterError::BadState)));
}

fn run_bootloader_bin(t: &TempFlash) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcu-bootloader")).arg(&t.path).output().expect("spawn mcu-bootloader");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn bootloader_binary_swaps_reverts_and_prints_json() {
    let (v1, v2) = (image(1), image(2));
    let t = TempFlash::new("update-bin");
    {
        let flash = t.open();
        flash_factory_image(&flash, &v1);
    }
    assert_eq!(run_bootloader_bin(&t), (0, "{\"outcome\":\"boot\",\"state\":\"boot\"}\n".into()));
    download(&t.open(), &v2);
    assert_eq!(run_bootloader_bin(&t), (0, "{\"outcome\":\"swapped\",\"state\":\"swap\"}\n".into()));
    assert!(read_partition(&t.open(), HOST.active) == v2);
    assert_eq!(run_bootloader_bin(&t), (0, "{\"outcome\":\"reverted\",\"state\":\"revert\"}\n".into()));
    assert!(read_partition(&t.open(), HOST.active) == v1);
    assert_eq!(run_bootloader_bin(&t), (0, "{\"outcome\":\"after-revert\",\"state\":\"revert\"}\n".into()));
}

#[test]
fn bootloader_binary_refuses_a_missing_file() {
    let t = TempFlash::new("update-missing");
    assert_eq!(run_bootloader_bin(&t).0, 2);
    assert!(!t.path.exists(), "a missing flash file is not created");
}

#[test]
fn misfit_flash_or_buffer_is_an_error_not_a_panic() {
    use otamesh_mcu::boot::{run_bootloader, BootStepError};
    use otamesh_mcu::file_flash::FileFlash;
    use otamesh_mcu::layout::LayoutError;

    // 8-byte writes: the layout says 4, so embassy's partitions must not be built.
    let t = TempFlash::new("update-misfit");
    let other = FileFlash::<8, 4096>::open(&t.path, HOST.flash_size_bytes as usize, false).unwrap();
    let other = embassy_sync::blocking_mutex::Mutex::new(std::cell::RefCell::new(other));
    assert!(matches!(Partitions::new(&HOST, &other), Err(LayoutError::FlashMismatch)));
    let mut buf = [0u8; HOST.boot_buffer_bytes as usize];
    assert_eq!(run_bootloader(&HOST, &other, &mut buf), Err(BootStepError::Layout(LayoutError::FlashMismatch)));

    // A buffer of the wrong length.
    let t2 = TempFlash::new("update-misfit-buf");
    let flash = t2.open();
    let mut short = [0u8; 512];
    assert_eq!(run_bootloader(&HOST, &flash, &mut short), Err(BootStepError::Layout(LayoutError::BootBuffer)));

    // A broken layout.
    let mut broken = HOST;
    broken.dfu.size_bytes = broken.active.size_bytes;
    assert_eq!(run_bootloader(&broken, &flash, &mut buf), Err(BootStepError::Layout(LayoutError::DfuTooSmall)));
}
