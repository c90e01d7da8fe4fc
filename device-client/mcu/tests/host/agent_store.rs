//! The agent store: round trips, a power cut at every operation, erase-free chunk marks,
//! and flash contents treated as untrusted.

use otamesh_mcu::agent_store::{parse_slot, AgentState, AgentStore, StoreError, SLOT_BYTES};
use otamesh_mcu::boot::{Part, Partitions, SharedFlash};
use otamesh_mcu::file_flash::CutMode;
use otamesh_mcu::layout::HOST;
use otamesh_mcu::progress::ChunkOutOfRange;
use otamesh_mcu::HostFlash;

use crate::common::{state, with_flash, TempFlash};

fn agent(flash: &SharedFlash<HostFlash>) -> Part<'_, HostFlash> {
    Partitions::new(&HOST, flash).expect("partitions").agent
}

fn open(flash: &SharedFlash<HostFlash>) -> (AgentStore<Part<'_, HostFlash>>, Option<AgentState>) {
    AgentStore::open(agent(flash)).expect("open store")
}

#[test]
fn fresh_partition_has_no_state() {
    let t = TempFlash::new("store-fresh");
    let flash = t.open();
    assert!(open(&flash).1.is_none());
}

#[test]
fn round_trip_survives_restart_and_alternates_slots() {
    let t = TempFlash::new("store-roundtrip");
    for n in 0..5u8 {
        let flash = t.open();
        let (mut store, loaded) = open(&flash);
        assert_eq!(loaded, n.checked_sub(1).map(state));
        store.save(&state(n)).unwrap();
        // Both slots are used: after two saves both hold a valid state.
        let (_, again) = open(&flash);
        assert_eq!(again, Some(state(n)));
    }
}

/// Saves `old`, then `new` with a power cut after `k` operations, then restarts.
fn cut_save(t: &TempFlash, history: &[AgentState], new: &AgentState, k: u64, mode: CutMode) -> (bool, AgentState) {
    let _ = std::fs::remove_file(&t.path);
    let flash = t.open();
    let (mut store, _) = open(&flash);
    for s in history {
        store.save(s).unwrap();
    }
    with_flash(&flash, |f| f.cut_power_after(k, mode));
    let finished = store.save(new).is_ok();
    drop(flash);
    let flash = t.open();
    let (_, loaded) = open(&flash);
    (finished, loaded.expect("a power cut must never lose the old state"))
}

#[test]
fn power_cut_at_every_operation_of_a_save_leaves_old_or_new() {
    let t = TempFlash::new("store-cut");
    // First save after one, then after two (both slots valid: the older one is erased).
    for history in [vec![state(1)], vec![state(1), state(2)], vec![state(0), state(1), state(2)]] {
        let old = *history.last().unwrap();
        let new = state(3);
        for mode in [CutMode::Clean, CutMode::Torn] {
            let mut k = 0;
            loop {
                let (finished, loaded) = cut_save(&t, &history, &new, k, mode);
                assert!(loaded == old || loaded == new, "cut at op {k} ({mode:?}) gave a third state");
                if finished {
                    assert_eq!(loaded, new, "a finished save must be what opens");
                    break;
                }
                k += 1;
                assert!(k < 16, "a save takes a handful of operations");
            }
            // erase, body, bitmap, commit: every one was cut at least once.
            assert_eq!(k, 4, "{mode:?}");
        }
    }
}

#[test]
fn chunk_marks_survive_restart_and_need_no_erase() {
    let t = TempFlash::new("store-marks");
    let flash = t.open();
    let (mut store, _) = open(&flash);
    let mut s = state(1);
    store.save(&s).unwrap();
    let (erases, ops) = with_flash(&flash, |f| (f.erases(), f.ops()));
    for i in [1, 3, 39, 40, 5] {
        store.mark_chunk(&mut s, i).unwrap();
    }
    // 3 and 39 were already done in state(1) (every 3rd chunk): only the 3 new marks write.
    let (erases_after, ops_after) = with_flash(&flash, |f| (f.erases(), f.ops()));
    assert_eq!(erases_after, erases, "marking a chunk must not erase");
    assert_eq!(ops_after - ops, 3);
    assert_eq!(store.mark_chunk(&mut s, 41), Err(StoreError::Chunk(ChunkOutOfRange { index: 41, limit: 41 })));
    let (_, loaded) = open(&flash);
    assert_eq!(loaded, Some(s));
    assert!([1, 3, 39, 40, 5].iter().all(|&i| s.progress.is_done(i)));
}

#[test]
fn power_cut_during_a_mark_loses_at_most_that_mark() {
    let t = TempFlash::new("store-markcut");
    for mode in [CutMode::Clean, CutMode::Torn] {
        let _ = std::fs::remove_file(&t.path);
        let flash = t.open();
        let (mut store, _) = open(&flash);
        let mut s = state(1);
        store.save(&s).unwrap();
        let before = s;
        with_flash(&flash, |f| f.cut_power_after(0, mode));
        assert!(store.mark_chunk(&mut s, 2).is_err());
        drop(flash);
        let flash = t.open();
        let (_, loaded) = open(&flash);
        assert_eq!(loaded, Some(before));
    }
}

#[test]
fn mark_needs_a_saved_state_with_the_same_chunk_count() {
    let t = TempFlash::new("store-markrules");
    let flash = t.open();
    let (mut store, _) = open(&flash);
    let mut s = state(1);
    assert_eq!(store.mark_chunk(&mut s, 0), Err(StoreError::NothingSaved));
    store.save(&s).unwrap();
    let mut other = state(2);
    assert_eq!(store.mark_chunk(&mut other, 0), Err(StoreError::ProgressMismatch));
}

#[test]
fn a_corrupt_newest_slot_falls_back_to_the_older() {
    let t = TempFlash::new("store-corrupt");
    let flash = t.open();
    let (mut store, _) = open(&flash);
    store.save(&state(1)).unwrap();
    store.save(&state(2)).unwrap(); // slot 1
                                    // Clear one bit of slot 1's sequence number (a 1 -> 0 change NOR allows): the commit
                                    // hash no longer matches.
    let at = HOST.agent.offset + HOST.agent_slot_bytes() + 8;
    with_flash(&flash, |f| {
        let mut word = [0u8; 4];
        embedded_storage::nor_flash::ReadNorFlash::read(f, at, &mut word).unwrap();
        let i = word.iter().position(|&b| b != 0).unwrap();
        word[i] &= word[i] - 1; // clear the lowest set bit
        embedded_storage::nor_flash::NorFlash::write(f, at, &word).unwrap();
    });
    assert_eq!(open(&flash).1, Some(state(1)));
}

#[test]
fn hostile_slot_bytes_never_panic() {
    // Erased, all zero, and pseudo-random slots, and valid slots with each byte changed.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    assert!(parse_slot(&[0xFF; SLOT_BYTES]).is_err());
    assert!(parse_slot(&[0; SLOT_BYTES]).is_err());
    for _ in 0..200 {
        let mut buf = [0u8; SLOT_BYTES];
        buf.iter_mut().for_each(|b| *b = next() as u8);
        buf[..4].copy_from_slice(b"OTAS");
        buf[4] = 1;
        assert!(parse_slot(&buf).is_err());
    }
    let t = TempFlash::new("store-hostile");
    let flash = t.open();
    let (mut store, _) = open(&flash);
    store.save(&state(4)).unwrap();
    let mut valid = [0u8; SLOT_BYTES];
    let base = HOST.agent.offset as usize;
    with_flash(&flash, |f| valid.copy_from_slice(&f.contents()[base..base + SLOT_BYTES]));
    assert_eq!(parse_slot(&valid), Ok((1, state(4))));
    for i in 0..SLOT_BYTES {
        let mut buf = valid;
        buf[i] ^= 1 << (next() % 8);
        // Body and commit bytes break the checksum; bitmap bytes only change progress.
        let _ = parse_slot(&buf);
    }
}

#[test]
fn report_state_survives_a_restart() {
    use otamesh_mcu::agent_store::{InstallMark, ReportState};
    let t = TempFlash::new("store-report");
    let mut saved = state(3);
    let mark = InstallMark::new("gw-2.0.0", protocol::ReleaseId([5; 32]), 1_790_000_000).unwrap();
    saved.report = ReportState { seq: 41, unsent: true, install: Some(mark) };
    {
        let flash = t.open();
        open(&flash).0.save(&saved).unwrap();
    }
    let flash = t.open();
    let loaded = open(&flash).1.unwrap();
    assert_eq!(loaded, saved);
    assert_eq!(loaded.report.install.unwrap().rollout(), "gw-2.0.0");
    assert!(InstallMark::new("", protocol::ReleaseId([5; 32]), 0).is_none());
    assert!(InstallMark::new(&"x".repeat(65), protocol::ReleaseId([5; 32]), 0).is_none());
}
