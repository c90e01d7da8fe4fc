//! A power cut at every flash operation of the bootloader's swap and revert: after the
//! bootloader runs again to completion, ACTIVE holds a whole image, never a mix.

use otamesh_mcu::boot::BootOutcome;
use otamesh_mcu::file_flash::CutMode;
use otamesh_mcu::layout::HOST;

use crate::common::{boot, flash_factory_image, image, read_partition, with_flash, TempFlash};
use crate::update::{app_state, download};

/// Fresh flash: `old` in ACTIVE, `new` downloaded and marked updated.
fn prepare(t: &TempFlash, old: &[u8], new: &[u8]) {
    let _ = std::fs::remove_file(&t.path);
    let flash = t.open();
    flash_factory_image(&flash, old);
    download(&flash, new);
}

/// Runs the bootloader with a cut after `k` operations, then once more after a second cut
/// at `second` (a cut during recovery), then to completion. Returns the final outcome.
/// Also says whether ACTIVE was a mix of both images right after the first cut (so the
/// test is known to reach the middle of the copy, not only its ends).
fn boot_with_cuts(t: &TempFlash, k: u64, second: u64, mode: CutMode, ends: [&[u8]; 2]) -> (BootOutcome, bool) {
    let mixed = {
        let flash = t.open();
        with_flash(&flash, |f| f.cut_power_after(k, mode));
        assert!(boot(&flash).is_err(), "cut at {k} must interrupt the run");
        drop(flash);
        let active = read_partition(&t.open(), HOST.active);
        !ends.contains(&active.as_slice())
    };
    (boot_to_end(t, second, mode), mixed)
}

/// The recovery: one run cut at `second`, then one uninterrupted run if still needed.
fn boot_to_end(t: &TempFlash, second: u64, mode: CutMode) -> BootOutcome {
    {
        let flash = t.open();
        with_flash(&flash, |f| f.cut_power_after(second, mode));
        if let Ok(outcome) = boot(&flash) {
            return outcome;
        }
    }
    boot(&t.open()).expect("an uninterrupted run completes")
}

/// Operations a clean bootloader run takes from the prepared state.
fn ops_of_one_run(t: &TempFlash) -> u64 {
    let flash = t.open();
    let before = with_flash(&flash, |f| f.ops());
    boot(&flash).expect("clean run");
    with_flash(&flash, |f| f.ops()) - before
}

#[test]
fn power_cut_at_every_operation_of_the_swap() {
    let (old, new) = (image(1), image(2));
    let t = TempFlash::new("cut-swap");
    prepare(&t, &old, &new);
    let total = ops_of_one_run(&t);
    assert!(total > 30, "a swap of 8 pages takes many operations, got {total}");
    eprintln!("swap: cutting power at each of {total} operations");
    for mode in [CutMode::Clean, CutMode::Torn] {
        let mut mixed_after_cut = 0;
        for k in 0..total {
            prepare(&t, &old, &new);
            let (outcome, mixed) = boot_with_cuts(&t, k, (k * 7 + 3) % total, mode, [&old, &new]);
            mixed_after_cut += mixed as u32;
            let flash = t.open();
            let active = read_partition(&flash, HOST.active);
            assert!(active == new || active == old, "cut at {k} ({mode:?}): ACTIVE is a mix");
            // embassy-boot resumes an interrupted swap, so it always ends on the new image.
            assert!(active == new, "cut at {k} ({mode:?}): swap did not resume");
            assert_eq!(outcome, BootOutcome::Swapped, "cut at {k} ({mode:?})");
            assert_eq!(app_state(&flash), embassy_boot::State::Swap);
        }
        assert!(mixed_after_cut > total as u32 / 2, "{mode:?}: cuts must land mid-copy, {mixed_after_cut}");
    }
}

#[test]
fn power_cut_at_every_operation_of_the_revert() {
    let (old, new) = (image(1), image(2));
    let t = TempFlash::new("cut-revert");
    let swapped = |t: &TempFlash| {
        prepare(t, &old, &new);
        assert_eq!(boot(&t.open()), Ok(BootOutcome::Swapped));
    };
    swapped(&t);
    let total = ops_of_one_run(&t);
    assert!(total > 30, "a revert of 8 pages takes many operations, got {total}");
    eprintln!("revert: cutting power at each of {total} operations");
    for mode in [CutMode::Clean, CutMode::Torn] {
        let mut mixed_after_cut = 0;
        let mut outcomes = Vec::new();
        for k in 0..total {
            swapped(&t);
            let (outcome, mixed) = boot_with_cuts(&t, k, (k * 5 + 1) % total, mode, [&old, &new]);
            mixed_after_cut += mixed as u32;
            let seen = (outcome, app_state(&t.open()));
            if !outcomes.contains(&seen) {
                outcomes.push(seen);
            }
            let flash = t.open();
            let active = read_partition(&flash, HOST.active);
            assert!(active == new || active == old, "cut at {k} ({mode:?}): ACTIVE is a mix");
            assert!(active == old, "cut at {k} ({mode:?}): revert did not resume");
            // A cut after the revert finished its copy but before STATE says so can leave
            // "swap" behind, with the copy progress complete: the next run finishes it.
            assert!(
                matches!(outcome, BootOutcome::Reverted | BootOutcome::AfterRevert | BootOutcome::Boot),
                "cut at {k} ({mode:?}): {outcome:?}"
            );
        }
        eprintln!("revert {mode:?}: (outcome, state) seen after recovery: {outcomes:?}");
        assert!(mixed_after_cut > total as u32 / 2, "{mode:?}: cuts must land mid-copy, {mixed_after_cut}");
    }
}

/// embassy-boot ends a revert with "erase STATE, then write the REVERT magic". A cut between
/// the two leaves an erased STATE, which reads as `Boot`: the old image runs, whole, but
/// nothing in STATE says a rollback happened. The agent must therefore learn of a rollback
/// from its own record (a trial whose image is not the one running), not from `get_state`.
#[test]
fn regression_cut_before_the_revert_magic_reads_as_plain_boot() {
    let (old, new) = (image(1), image(2));
    let t = TempFlash::new("cut-revert-magic");
    prepare(&t, &old, &new);
    assert_eq!(boot(&t.open()), Ok(BootOutcome::Swapped));
    let total = ops_of_one_run(&t);
    prepare(&t, &old, &new);
    assert_eq!(boot(&t.open()), Ok(BootOutcome::Swapped));
    {
        let flash = t.open();
        with_flash(&flash, |f| f.cut_power_after(total - 1, CutMode::Clean));
        assert!(boot(&flash).is_err());
    }
    let flash = t.open();
    assert_eq!(boot(&flash), Ok(BootOutcome::Boot));
    assert_eq!(app_state(&flash), embassy_boot::State::Boot);
    assert!(read_partition(&flash, HOST.active) == old);
}
