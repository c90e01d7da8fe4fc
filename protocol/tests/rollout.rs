//! `protocol::rollout`: the policy format under random and hostile bytes, device selection,
//! maintenance windows, the device gate (a hostile edge cannot push), the publisher's
//! controller (advance, halt on threshold, halt on regression against the baseline, and not
//! on noise), the edge's site guard, and the status report's rollout fields.

use proptest::prelude::*;
use protocol::install::GateDecision;
use protocol::rollout::controller::{halt_code, BASELINE_MIN_OUTCOMES};
use protocol::rollout::policy::limits;
use protocol::rollout::site_guard::{PolicyUpdate, MAX_DEVICES};
use protocol::rollout::{
    bucket, is_eligible, wave_of, window, Controller, EdgeHold, Gate, GateVerdict, HealthGate, MapSeed, Outcome, Phase,
    PolicyError, PolicyView, RolloutPolicy, RolloutRelease, RolloutReport, RolloutState, SiteGuard, StopReason, Wave,
    Window,
};
use protocol::status::{InstallResult, StatusReport};
use protocol::time::{Duration, Instant};

/// 2024-01-01 00:00 UTC, a Monday.
const MONDAY: i64 = 1_704_067_200;
const HOUR: i64 = 3600;
/// Device ids here are not an adversary's: any seed keys the maps.
const SEED: MapSeed = MapSeed([0x5e; 16]);

fn device(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

/// 1 % → 10 % → 100 %, one hour of soak each, 5 % failure limit over 10 reports, nightly
/// windows 01:00–03:00 UTC for `site-*`.
fn sample() -> RolloutPolicy {
    RolloutPolicy {
        id: "gw-2.0.0.r1".into(),
        release: RolloutRelease { name: "gateway-os".into(), version: "2.0.0".into(), hw_class: "gw-x86".into() },
        seq: 1,
        waves: vec![
            Wave { cumulative_ppm: 10_000, min_soak_secs: 3600 },
            Wave { cumulative_ppm: 100_000, min_soak_secs: 3600 },
            Wave { cumulative_ppm: 1_000_000, min_soak_secs: 3600 },
        ],
        canaries: vec![device(1_000_000)],
        health: HealthGate { max_failure_ppm: 50_000, min_reports: 10 },
        windows: vec![Window {
            site_pattern: "site-*".into(),
            weekdays: 0x7f,
            start_minute: 60,
            end_minute: 180,
            utc_offset_minutes: 0,
        }],
        max_concurrent_per_site: 2,
        state: RolloutState::Running,
        current_wave: 0,
        wave_started_at: MONDAY,
    }
}

/// A device of `wave` in `policy` (searching device numbers from `from`).
fn device_in_wave(policy: &RolloutPolicy, wave: usize, from: u64) -> [u8; 32] {
    (from..).map(device).find(|d| policy.wave_of(d) == Some(wave)).unwrap()
}

mod policy {
    use super::*;

    #[test]
    fn encode_then_parse_is_the_identity() {
        let policy = sample();
        let bytes = policy.encode().unwrap();
        let view = PolicyView::parse(&bytes).unwrap();
        assert_eq!(view.id(), "gw-2.0.0.r1");
        assert_eq!(view.release(), RolloutRelease { name: "gateway-os", version: "2.0.0", hw_class: "gw-x86" });
        assert_eq!(view.waves().len(), 3);
        assert!(view.is_canary(&device(1_000_000)));
        assert_eq!(view.windows().next().unwrap().site_pattern, "site-*");
        assert_eq!(RolloutPolicy::decode(&bytes), Ok(policy));
        let halted = RolloutPolicy { state: RolloutState::Halted { code: 7, reason: "too many".into() }, ..sample() };
        let bytes = halted.encode().unwrap();
        assert_eq!(PolicyView::parse(&bytes).unwrap().halt(), Some((7, "too many")));
        assert_eq!(RolloutPolicy::decode(&bytes), Ok(halted));
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases: Vec<(RolloutPolicy, PolicyError)> = vec![
            (
                RolloutPolicy { id: String::new(), ..sample() },
                PolicyError::FieldLength(protocol::rollout::PolicyField::RolloutId),
            ),
            (RolloutPolicy { id: "a/b".into(), ..sample() }, PolicyError::IdCharacter),
            (
                RolloutPolicy { id: "x".repeat(65), ..sample() },
                PolicyError::FieldLength(protocol::rollout::PolicyField::RolloutId),
            ),
            (
                RolloutPolicy {
                    waves: vec![
                        Wave { cumulative_ppm: 100_000, min_soak_secs: 0 },
                        Wave { cumulative_ppm: 100_000, min_soak_secs: 0 },
                        Wave { cumulative_ppm: 1_000_000, min_soak_secs: 0 },
                    ],
                    ..sample()
                },
                PolicyError::WavesNotIncreasing { index: 1 },
            ),
            (
                RolloutPolicy { waves: vec![Wave { cumulative_ppm: 999_999, min_soak_secs: 0 }], ..sample() },
                PolicyError::LastWaveNotFullFleet,
            ),
            (RolloutPolicy { waves: vec![], ..sample() }, PolicyError::WaveCount(0)),
            (RolloutPolicy { current_wave: 3, ..sample() }, PolicyError::CurrentWave { current: 3, waves: 3 }),
            (RolloutPolicy { state: RolloutState::Complete, ..sample() }, PolicyError::CompleteBeforeLastWave),
            (
                RolloutPolicy { canaries: vec![device(1), device(1)], ..sample() },
                PolicyError::DuplicateCanary { index: 1 },
            ),
            (
                RolloutPolicy { health: HealthGate { max_failure_ppm: 1_000_001, min_reports: 1 }, ..sample() },
                PolicyError::FailureRate(1_000_001),
            ),
            (
                RolloutPolicy { health: HealthGate { max_failure_ppm: 1, min_reports: 0 }, ..sample() },
                PolicyError::MinReports,
            ),
        ];
        for (policy, expected) in cases {
            assert_eq!(policy.validate(), Err(expected), "{expected}");
            assert_eq!(policy.encode(), Err(expected));
        }
        let window = |w: Window<String>| RolloutPolicy { windows: vec![sample().windows[0].clone(), w], ..sample() };
        let base = sample().windows[0].clone();
        assert_eq!(
            window(Window { start_minute: 60, end_minute: 60, ..base.clone() }).validate(),
            Err(PolicyError::WindowNeverOpens { index: 1 })
        );
        assert_eq!(
            window(Window { weekdays: 0, ..base.clone() }).validate(),
            Err(PolicyError::WindowWeekdays { index: 1 })
        );
        assert_eq!(
            window(Window { end_minute: 1440, ..base.clone() }).validate(),
            Err(PolicyError::WindowMinute { index: 1 })
        );
        assert_eq!(
            window(Window { utc_offset_minutes: 841, ..base.clone() }).validate(),
            Err(PolicyError::WindowOffset { index: 1 })
        );
        assert_eq!(
            window(Window { site_pattern: String::new(), ..base }).validate(),
            Err(PolicyError::WindowPattern { index: 1 })
        );
        // The seeder prints the error as one line naming the field.
        let text = PolicyError::WavesNotIncreasing { index: 1 }.to_string();
        assert!(text.contains("waves[1]") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(PolicyView::parse(&bytes[..len]).is_err(), "truncated to {len} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(PolicyView::parse(&longer).err(), Some(PolicyError::TrailingBytes));
        let mut other_format = bytes;
        other_format[4] = 2;
        assert_eq!(PolicyView::parse(&other_format).err(), Some(PolicyError::UnsupportedFormat(2)));
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{max}}}")).unwrap()
    }

    fn window_strategy() -> impl Strategy<Value = Window<String>> {
        (text(64), 1u8..=0x7f, 0u16..1440, 1u16..1440, -840i16..=840).prop_map(|(p, weekdays, start, delta, offset)| {
            Window {
                site_pattern: p,
                weekdays,
                start_minute: start,
                end_minute: (start + delta) % 1440,
                utc_offset_minutes: offset,
            }
        })
    }

    prop_compose! {
        /// Valid policies across the whole space the format allows.
        fn valid_policy()(
            id in text(64), name in text(64), version in text(32), hw in text(32), seq in any::<u64>(),
            cuts in proptest::collection::btree_set(1u32..1_000_000, 0..16),
            soaks in proptest::collection::vec(any::<u32>(), 16),
            canaries in proptest::collection::btree_set(any::<[u8; 32]>(), 0..=32),
            windows in proptest::collection::vec(window_strategy(), 0..=16),
            max_failure_ppm in 0u32..=1_000_000, min_reports in 1u32.., max_concurrent in any::<u32>(),
            state in 0u8..5, code in any::<u16>(), reason in "[ -~]{0,128}", current in any::<usize>(),
            started in any::<i64>(),
        ) -> RolloutPolicy {
            let mut cumulative: Vec<u32> = cuts.into_iter().collect();
            cumulative.push(1_000_000);
            let waves: Vec<Wave> = cumulative.iter().zip(soaks).map(|(c, s)| Wave { cumulative_ppm: *c, min_soak_secs: s }).collect();
            let state = match state {
                0 => RolloutState::Running,
                1 => RolloutState::Paused,
                2 => RolloutState::Halted { code, reason },
                3 => RolloutState::Aborted,
                _ => RolloutState::Complete,
            };
            let current_wave = if state == RolloutState::Complete { waves.len() - 1 } else { current % waves.len() };
            RolloutPolicy {
                id, release: RolloutRelease { name, version, hw_class: hw }, seq, waves,
                canaries: canaries.into_iter().collect(), health: HealthGate { max_failure_ppm, min_reports },
                windows, max_concurrent_per_site: max_concurrent, state, current_wave, wave_started_at: started,
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(view) = PolicyView::parse(&bytes) {
                let owned = RolloutPolicy::from_view(&view);
                prop_assert_eq!(owned.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn valid_policies_round_trip(policy in valid_policy()) {
            let bytes = policy.encode().unwrap();
            prop_assert!(bytes.len() <= limits::MAX_POLICY_BYTES);
            prop_assert_eq!(RolloutPolicy::decode(&bytes).unwrap(), policy);
        }

        #[test]
        fn corrupted_policies_never_panic(policy in valid_policy(), at in any::<usize>(), flip in 1u8..) {
            let mut bytes = policy.encode().unwrap();
            let at = at % bytes.len();
            bytes[at] ^= flip;
            if let Ok(view) = PolicyView::parse(&bytes) {
                prop_assert_eq!(RolloutPolicy::from_view(&view).encode().unwrap(), bytes);
            }
        }
    }
}

mod select {
    use super::*;

    #[test]
    fn buckets_are_uniform_and_a_one_percent_wave_gets_about_one_percent() {
        let policy = sample();
        let bytes = policy.encode().unwrap();
        let view = PolicyView::parse(&bytes).unwrap();
        let n = 100_000u64;
        let mut deciles = [0u32; 10];
        let mut first_wave = 0u32;
        for i in 0..n {
            let d = device(i);
            let b = bucket(view.id(), &d);
            assert!(b < 1_000_000);
            deciles[(b / 100_000) as usize] += 1;
            if wave_of(&view, &d) == Some(0) {
                first_wave += 1;
            }
        }
        assert!((700..=1300).contains(&first_wave), "wave 0 got {first_wave} of {n}");
        for count in deciles {
            assert!((9_400..=10_600).contains(&count), "decile {count}");
        }
    }

    #[test]
    fn canaries_are_wave_zero_and_buckets_depend_on_the_rollout() {
        let policy = sample();
        let bytes = policy.encode().unwrap();
        let view = PolicyView::parse(&bytes).unwrap();
        let canary = device(1_000_000);
        assert_eq!(wave_of(&view, &canary), Some(0));
        assert_eq!(policy.wave_of(&canary), Some(0));
        let differ = (0..100).filter(|i| bucket("a", &device(*i)) != bucket("b", &device(*i))).count();
        assert!(differ > 95);
        assert_eq!(bucket("a", &device(5)), bucket("a", &device(5)));
        let late = device_in_wave(&policy, 2, 0);
        assert!(!is_eligible(&view, &late));
        assert!(is_eligible(&view, &canary));
        let paused = RolloutPolicy { state: RolloutState::Paused, ..sample() }.encode().unwrap();
        assert!(!is_eligible(&PolicyView::parse(&paused).unwrap(), &canary));
    }
}

mod windows {
    use super::*;

    fn window_strategy() -> impl Strategy<Value = Window<String>> {
        (prop_oneof![Just("*"), Just("site-*"), Just("other")], 1u8..=0x7f, 0u16..1440, 1u16..1440, -840i16..=840)
            .prop_map(|(p, weekdays, start, delta, offset)| Window {
                site_pattern: p.into(),
                weekdays,
                start_minute: start,
                end_minute: (start + delta) % 1440,
                utc_offset_minutes: offset,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn next_open_is_open_and_nothing_before_it_is(
            windows in proptest::collection::vec(window_strategy(), 0..4),
            now in MONDAY - 400 * 86_400..MONDAY + 400 * 86_400,
        ) {
            let borrowed = || windows.iter().map(Window::as_str);
            let next = window::next_open(borrowed(), "site-1", now).expect("valid windows open within a week");
            prop_assert!(next >= now && next - now <= 8 * 86_400);
            prop_assert!(window::is_open(borrowed(), "site-1", next));
            // Minute granularity: windows open and close on whole minutes.
            let mut t = now;
            while t < next {
                prop_assert!(!window::is_open(borrowed(), "site-1", t), "open at {} before {}", t, next);
                t = (t.div_euclid(60) + 1) * 60;
            }
        }
    }
}

mod gate {
    use super::*;

    fn view_of(policy: &RolloutPolicy) -> Vec<u8> {
        policy.encode().unwrap()
    }

    /// 12:00 Monday: outside the 01:00–03:00 window.
    const NOON: i64 = MONDAY + 12 * HOUR;
    const IN_WINDOW: i64 = MONDAY + 2 * HOUR;

    #[test]
    fn downloads_pre_stage_outside_the_window_but_switches_wait_for_it() {
        let policy = sample();
        let bytes = view_of(&policy);
        let view = PolicyView::parse(&bytes).unwrap();
        let d = device_in_wave(&policy, 0, 0);
        let gate = Gate::default();
        assert_eq!(gate.download_decision(&view, &d, NOON, EdgeHold::None), GateVerdict::Proceed);
        assert_eq!(
            gate.switch_decision(&view, &d, "site-1", NOON, EdgeHold::None),
            GateVerdict::WaitUntil(MONDAY + 86_400 + HOUR)
        );
        assert_eq!(gate.switch_decision(&view, &d, "site-1", IN_WINDOW, EdgeHold::None), GateVerdict::Proceed);
        // A site no window names is unrestricted.
        assert_eq!(gate.switch_decision(&view, &d, "depot-1", NOON, EdgeHold::None), GateVerdict::Proceed);
    }

    #[test]
    fn a_hostile_edge_cannot_push_a_device_outside_its_wave_or_window() {
        let policy = sample();
        let bytes = view_of(&policy);
        let view = PolicyView::parse(&bytes).unwrap();
        let gate = Gate::default();
        let late = device_in_wave(&policy, 2, 0);
        // The edge says "no hold" — the device's own evaluation still says no.
        for at in [NOON, IN_WINDOW] {
            assert!(matches!(
                gate.download_decision(&view, &late, at, EdgeHold::None),
                GateVerdict::NotInRolloutYet { .. }
            ));
            assert!(matches!(
                gate.switch_decision(&view, &late, "site-1", at, EdgeHold::None),
                GateVerdict::NotInRolloutYet { .. }
            ));
        }
        let current = device_in_wave(&policy, 0, 0);
        assert!(matches!(
            gate.switch_decision(&view, &current, "site-1", NOON, EdgeHold::None),
            GateVerdict::WaitUntil(_)
        ));
        // An edge's concurrency hold with a retry time in the past cannot make it earlier.
        assert_eq!(
            gate.switch_decision(&view, &current, "site-1", NOON, EdgeHold::ConcurrencyFull { retry_at: 0 }),
            GateVerdict::WaitUntil(MONDAY + 86_400 + HOUR)
        );
        // But the edge can hold back.
        assert_eq!(
            gate.download_decision(&view, &current, NOON, EdgeHold::ConcurrencyFull { retry_at: NOON + 300 }),
            GateVerdict::WaitUntil(NOON + 300)
        );
        assert_eq!(
            gate.download_decision(&view, &current, NOON, EdgeHold::SiteHalted),
            GateVerdict::Stopped(StopReason::SiteHalted)
        );
    }

    #[test]
    fn stopped_rollouts_start_nothing() {
        let d = device(1_000_000);
        let gate = Gate::default();
        for (state, reason) in [
            (RolloutState::Paused, StopReason::Paused),
            (RolloutState::Halted { code: 1, reason: "x".into() }, StopReason::Halted { code: 1 }),
            (RolloutState::Aborted, StopReason::Aborted),
        ] {
            let bytes = view_of(&RolloutPolicy { state, ..sample() });
            let view = PolicyView::parse(&bytes).unwrap();
            assert_eq!(gate.download_decision(&view, &d, IN_WINDOW, EdgeHold::None), GateVerdict::Stopped(reason));
            assert_eq!(
                gate.switch_decision(&view, &d, "site-1", IN_WINDOW, EdgeHold::None),
                GateVerdict::Stopped(reason)
            );
        }
        let complete = RolloutPolicy { state: RolloutState::Complete, current_wave: 2, ..sample() };
        let bytes = view_of(&complete);
        let view = PolicyView::parse(&bytes).unwrap();
        assert_eq!(gate.switch_decision(&view, &device(3), "site-1", IN_WINDOW, EdgeHold::None), GateVerdict::Proceed);
    }

    #[test]
    fn verdicts_map_onto_the_engine_with_bounded_waits() {
        let gate = Gate::default();
        let now = Instant(5_000_000);
        assert_eq!(gate.engine_decision(GateVerdict::Proceed, now, NOON), GateDecision::Proceed);
        assert_eq!(
            gate.engine_decision(GateVerdict::WaitUntil(NOON + 60), now, NOON),
            GateDecision::WaitUntil(now + Duration::from_secs(60))
        );
        let capped = GateDecision::WaitUntil(now + Duration::from_secs(3600));
        assert_eq!(gate.engine_decision(GateVerdict::WaitUntil(i64::MAX), now, NOON), capped);
        assert_eq!(gate.engine_decision(GateVerdict::NotInRolloutYet { recheck_at: NOON + 86_400 }, now, NOON), capped);
        assert_eq!(gate.engine_decision(GateVerdict::Stopped(StopReason::Aborted), now, NOON), capped);
        assert_eq!(
            gate.engine_decision(GateVerdict::WaitUntil(i64::MIN), now, NOON),
            GateDecision::WaitUntil(now + Duration::from_secs(1))
        );
    }
}

mod controller {
    use super::*;

    fn report(d: [u8; 32], outcome: Outcome, at: i64) -> RolloutReport {
        RolloutReport { device_id: d, rollout_id: "gw-2.0.0.r1".into(), outcome, at }
    }

    /// Devices of `wave`, distinct, starting the search at `from`.
    fn devices_in_wave(policy: &RolloutPolicy, wave: usize, count: usize, from: u64) -> Vec<[u8; 32]> {
        (from..).map(device).filter(|d| policy.wave_of(d) == Some(wave)).take(count).collect()
    }

    #[test]
    fn waves_advance_after_soak_and_enough_reports_then_complete() {
        let policy = sample();
        let mut c = Controller::new(policy.clone(), SEED).unwrap();
        let at = MONDAY + 10;
        for d in devices_in_wave(&policy, 0, 9, 0) {
            assert!(c.handle_report(&report(d, Outcome::Committed, at), at));
        }
        assert_eq!(c.poll(MONDAY + 2 * HOUR), None, "9 of 10 reports");
        let tenth = devices_in_wave(&policy, 0, 10, 0)[9];
        assert_eq!(c.outcome_of(&tenth), None, "not reported yet");
        c.handle_report(&report(tenth, Outcome::Installing, at - 5), at);
        assert_eq!(c.outcome_of(&tenth), Some(Outcome::Installing));
        c.handle_report(&report(tenth, Outcome::Committed, at), at);
        assert_eq!(c.outcome_of(&tenth), Some(Outcome::Committed), "the newer outcome supersedes");
        assert_eq!(c.poll(MONDAY + HOUR - 1), None, "still soaking");
        let next = c.poll(MONDAY + HOUR).expect("advances");
        assert_eq!((next.seq, next.current_wave, next.wave_started_at), (2, 1, MONDAY + HOUR));
        assert_eq!(next.state, RolloutState::Running);
        assert_eq!(c.poll(MONDAY + HOUR), None, "one change per decision");
        for wave in [1, 2] {
            for d in devices_in_wave(&policy, wave, 10, 0) {
                c.handle_report(&report(d, Outcome::Committed, at), at);
            }
            let started = c.policy().wave_started_at;
            assert!(c.poll(started + HOUR).is_some());
        }
        assert_eq!(c.policy().state, RolloutState::Complete);
        assert_eq!(c.policy().seq, 4);
        assert!(PolicyView::parse(&c.policy().encode().unwrap()).is_ok());
        let summaries = c.wave_summaries(MONDAY + 10 * HOUR);
        assert!(summaries.iter().all(|s| s.gate == "passed" && s.tally.committed == 10), "{summaries:?}");
    }

    #[test]
    fn the_failure_threshold_halts_and_duplicates_are_idempotent() {
        let policy = sample();
        let mut c = Controller::new(policy.clone(), SEED).unwrap();
        let devices = devices_in_wave(&policy, 0, 10, 0);
        // 0 of 10 allowed failures at 5 % of min 10 → the first failure is 10 % of 10: halt.
        // But first: the same report twice counts once, and an older one is ignored.
        c.handle_report(&report(devices[0], Outcome::Installing, MONDAY + 5), MONDAY + 5);
        assert!(!c.handle_report(&report(devices[0], Outcome::Installing, MONDAY + 5), MONDAY + 5));
        c.handle_report(&report(devices[0], Outcome::Committed, MONDAY + 9), MONDAY + 9);
        assert!(!c.handle_report(&report(devices[0], Outcome::Failed(4), MONDAY + 6), MONDAY + 9), "older report");
        assert_eq!(c.wave_summaries(MONDAY + 9)[0].tally.committed, 1);
        assert_eq!(c.poll(MONDAY + 9), None);
        c.handle_report(&report(devices[1], Outcome::RolledBack, MONDAY + 10), MONDAY + 10);
        let halted = c.poll(MONDAY + 10).expect("halts");
        match &halted.state {
            RolloutState::Halted { code, reason } => {
                assert_eq!(*code, halt_code::FAILURE_THRESHOLD);
                assert!(reason.contains("1 of 2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(halted.encode().is_ok());
        assert_eq!(c.poll(MONDAY + 11), None, "halted stays halted");
        // Operators: resume accepts what was counted, pause, abort.
        let resumed = c.resume(MONDAY + 20).unwrap();
        assert_eq!(
            (resumed.state.clone(), resumed.seq, resumed.wave_started_at),
            (RolloutState::Running, 3, MONDAY + 20)
        );
        assert_eq!(c.poll(MONDAY + 21), None, "the accepted failure does not halt again");
        assert_eq!(c.pause().unwrap().state, RolloutState::Paused);
        assert!(c.pause().is_err());
        assert_eq!(c.abort().unwrap().state, RolloutState::Aborted);
        assert_eq!(c.resume(MONDAY + 30).unwrap_err().to_string(), "cannot resume a rollout that is aborted");
    }

    #[test]
    fn reports_of_other_rollouts_and_future_clocks_do_not_count() {
        let policy = sample();
        let mut c = Controller::new(policy.clone(), SEED).unwrap();
        let d = devices_in_wave(&policy, 0, 1, 0)[0];
        let other = RolloutReport { rollout_id: "other".into(), ..report(d, Outcome::Failed(1), MONDAY) };
        assert!(!c.handle_report(&other, MONDAY));
        // A device clock a year ahead is clamped to now, so the real next report still wins.
        c.handle_report(&report(d, Outcome::Installing, MONDAY + 365 * 86_400), MONDAY);
        c.handle_report(&report(d, Outcome::Committed, MONDAY + 1), MONDAY + 1);
        assert_eq!(c.wave_summaries(MONDAY + 1)[0].tally.committed, 1);
    }

    /// A deterministic stream of outcomes with failure probability `p_ppm`.
    fn outcomes(seed: u64, p_ppm: u64) -> impl Iterator<Item = Outcome> {
        (0u64..).map(move |i| {
            let h = blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
            let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) % 1_000_000;
            if x < p_ppm {
                Outcome::RolledBack
            } else {
                Outcome::Committed
            }
        })
    }

    /// A policy whose fixed threshold (20 %) stays out of the way, so only the baseline
    /// comparison can halt; one wave so every device counts.
    fn baseline_policy() -> RolloutPolicy {
        RolloutPolicy {
            waves: vec![Wave { cumulative_ppm: 1_000_000, min_soak_secs: u32::MAX }],
            health: HealthGate { max_failure_ppm: 200_000, min_reports: 10 },
            canaries: vec![],
            ..sample()
        }
    }

    #[test]
    fn a_release_as_good_as_the_baseline_is_not_halted() {
        for seed in 0..5 {
            let mut c = Controller::new(baseline_policy(), SEED).unwrap();
            c.handle_baseline(9_800, 200); // 2 % failures
            for (i, outcome) in outcomes(seed, 20_000).take(3_000).enumerate() {
                c.handle_report(&report(device(i as u64), outcome, MONDAY), MONDAY);
                // The controller re-tests after every report: the harshest schedule.
                assert_eq!(c.poll(MONDAY + 1), None, "seed {seed}: halted after {} reports", i + 1);
            }
        }
    }

    #[test]
    fn a_clearly_worse_release_is_halted_with_few_reports() {
        let mut c = Controller::new(baseline_policy(), SEED).unwrap();
        c.handle_baseline(9_800, 200);
        let mut halted_after = None;
        for (i, outcome) in outcomes(7, 150_000).take(1_000).enumerate() {
            c.handle_report(&report(device(i as u64), outcome, MONDAY), MONDAY);
            if let Some(p) = c.poll(MONDAY + 1) {
                assert!(matches!(p.state, RolloutState::Halted { code: halt_code::BASELINE_REGRESSION, .. }), "{p:?}");
                halted_after = Some(i + 1);
                break;
            }
        }
        let n = halted_after.expect("a 15 % release against a 2 % baseline halts");
        assert!(n >= BASELINE_MIN_OUTCOMES as usize && n <= 100, "halted after {n} reports");
    }

    #[test]
    fn summaries_say_what_the_gate_waits_for() {
        let policy = sample();
        let mut c = Controller::new(policy.clone(), SEED).unwrap();
        let s = c.wave_summaries(MONDAY + 10);
        assert!(s[0].gate.starts_with("soaking until"), "{}", s[0].gate);
        assert_eq!(s[1].gate, "not started");
        for d in devices_in_wave(&policy, 0, 3, 0) {
            c.handle_report(&report(d, Outcome::Committed, MONDAY), MONDAY);
        }
        let s = c.wave_summaries(MONDAY + 2 * HOUR);
        assert_eq!(s[0].gate, "waiting for reports (3 of 10)");
        assert_eq!(s[0].failure_ppm, Some(0));
        assert_eq!(s[0].cumulative_ppm, 10_000);
    }
}

mod site_guard {
    use super::*;

    fn report(d: [u8; 32], outcome: Outcome, at: i64) -> RolloutReport {
        RolloutReport { device_id: d, rollout_id: "gw-2.0.0.r1".into(), outcome, at }
    }

    #[test]
    fn a_site_halts_itself_after_few_failures_and_stays_halted() {
        let policy = sample();
        let bytes = policy.encode().unwrap();
        let mut guard = SiteGuard::new(&PolicyView::parse(&bytes).unwrap(), SEED);
        guard.handle_report(&report(device(1), Outcome::Committed, MONDAY), MONDAY);
        guard.handle_report(&report(device(2), Outcome::Committed, MONDAY), MONDAY);
        assert_eq!(guard.hold(&device(9), MONDAY), EdgeHold::None);
        guard.handle_report(&report(device(3), Outcome::RolledBack, MONDAY + 1), MONDAY + 1);
        assert!(!guard.is_halted(), "one unlucky device does not halt a site");
        guard.handle_report(&report(device(5), Outcome::RolledBack, MONDAY + 1), MONDAY + 1);
        assert!(!guard.is_halted(), "2 of 4 at a 5 % limit: p ≈ 0.014, not yet significant");
        guard.handle_report(&report(device(7), Outcome::RolledBack, MONDAY + 1), MONDAY + 1);
        assert!(guard.is_halted(), "3 of 5: p ≈ 0.0012");
        assert_eq!(guard.hold(&device(9), MONDAY + 2), EdgeHold::SiteHalted);
        // The same policy again, or a replayed older one, does not lift it; a newer paused one
        // neither.
        let same = PolicyView::parse(&bytes).unwrap();
        assert_eq!(guard.handle_policy(&same), PolicyUpdate::Stale);
        let paused = RolloutPolicy { seq: 2, state: RolloutState::Paused, ..sample() }.encode().unwrap();
        assert_eq!(guard.handle_policy(&PolicyView::parse(&paused).unwrap()), PolicyUpdate::Accepted);
        assert!(guard.is_halted());
        let old_running = RolloutPolicy { seq: 1, ..sample() }.encode().unwrap();
        assert_eq!(guard.handle_policy(&PolicyView::parse(&old_running).unwrap()), PolicyUpdate::Stale);
        assert!(guard.is_halted());
        // A newer Running policy (the publisher resumed) lifts it, and the site judges afresh.
        let resumed = RolloutPolicy { seq: 3, ..sample() }.encode().unwrap();
        assert_eq!(guard.handle_policy(&PolicyView::parse(&resumed).unwrap()), PolicyUpdate::Resumed);
        assert_eq!(guard.hold(&device(9), MONDAY + 3), EdgeHold::None);
        guard.handle_report(&report(device(4), Outcome::Failed(4), MONDAY + 4), MONDAY + 4);
        guard.handle_report(&report(device(6), Outcome::Failed(4), MONDAY + 4), MONDAY + 4);
        assert!(guard.is_halted(), "new failures halt it again");
        let other = RolloutPolicy { id: "other".into(), seq: 9, ..sample() }.encode().unwrap();
        assert_eq!(guard.handle_policy(&PolicyView::parse(&other).unwrap()), PolicyUpdate::OtherRollout);
    }

    #[test]
    fn two_failures_halt_an_offline_site_but_rare_ones_never_do() {
        let bytes = sample().encode().unwrap();
        let mut guard = SiteGuard::new(&PolicyView::parse(&bytes).unwrap(), SEED);
        guard.handle_report(&report(device(1), Outcome::RolledBack, MONDAY), MONDAY);
        assert_eq!(guard.hold(&device(9), MONDAY), EdgeHold::None, "one failure is bad luck");
        guard.handle_report(&report(device(2), Outcome::RolledBack, MONDAY), MONDAY);
        assert_eq!(guard.hold(&device(9), MONDAY), EdgeHold::SiteHalted, "a release failing everywhere");
        // 2 failures in 200 outcomes (1 %) under a 5 % limit: not a reason to stop a site.
        let mut guard = SiteGuard::new(&PolicyView::parse(&bytes).unwrap(), SEED);
        for i in 0..200u32 {
            let outcome = if i % 100 == 50 { Outcome::RolledBack } else { Outcome::Committed };
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            guard.handle_report(&report(id, outcome, MONDAY), MONDAY);
        }
        assert!(!guard.is_halted());
    }

    #[test]
    fn concurrent_installs_are_capped_per_site() {
        let bytes = sample().encode().unwrap(); // two at once
        let mut guard = SiteGuard::new(&PolicyView::parse(&bytes).unwrap(), SEED);
        assert_eq!(guard.hold(&device(1), MONDAY), EdgeHold::None);
        assert_eq!(guard.hold(&device(2), MONDAY), EdgeHold::None);
        assert_eq!(guard.hold(&device(3), MONDAY), EdgeHold::ConcurrencyFull { retry_at: MONDAY + 300 });
        // Asking again does not count a device twice.
        assert_eq!(guard.hold(&device(1), MONDAY + 1), EdgeHold::None);
        guard.handle_report(&report(device(1), Outcome::Installing, MONDAY + 5), MONDAY + 5);
        guard.handle_report(&report(device(2), Outcome::Committed, MONDAY + 6), MONDAY + 6);
        assert_eq!(guard.hold(&device(3), MONDAY + 7), EdgeHold::None, "device 2 finished");
        assert!(matches!(guard.hold(&device(4), MONDAY + 8), EdgeHold::ConcurrencyFull { .. }));
        // A device silent for hours no longer holds its place.
        assert_eq!(guard.hold(&device(4), MONDAY + 3 * HOUR), EdgeHold::None);
    }

    /// A guard remembers at most `MAX_DEVICES`; a new device past that makes it forget the
    /// one heard from longest ago, and of several heard from at the same second the one with
    /// the smallest id, whatever order they reported in (the map's own order must not leak
    /// into which device is forgotten: it differs between builds).
    #[test]
    fn a_full_guard_forgets_the_device_heard_from_longest_ago_smallest_id_first() {
        let bytes = sample().encode().unwrap();
        let mut guard = SiteGuard::new(&PolicyView::parse(&bytes).unwrap(), SEED);
        let id = |i: u32| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        };
        let (smaller, larger) = (id(5), id(9));
        assert!(guard.handle_report(&report(larger, Outcome::Committed, MONDAY), MONDAY));
        assert!(guard.handle_report(&report(smaller, Outcome::Committed, MONDAY), MONDAY));
        for i in 100..100 + MAX_DEVICES as u32 - 2 {
            assert!(guard.handle_report(&report(id(i), Outcome::Committed, MONDAY + 1), MONDAY + 1));
        }
        assert_eq!(guard.tally().finals(), MAX_DEVICES as u32);
        // One more device: `smaller` is forgotten, its final outcome no longer counted.
        assert!(guard.handle_report(&report(id(1), Outcome::Committed, MONDAY + 2), MONDAY + 2));
        assert_eq!(guard.tally().finals(), MAX_DEVICES as u32);
        // `larger` is still remembered: the same report again changes nothing ...
        assert!(!guard.handle_report(&report(larger, Outcome::Committed, MONDAY), MONDAY + 3));
        // ... while `smaller` counts afresh (and `larger`, now the oldest, makes room).
        assert!(guard.handle_report(&report(smaller, Outcome::Committed, MONDAY), MONDAY + 3));
        assert!(guard.handle_report(&report(larger, Outcome::Committed, MONDAY), MONDAY + 3));
    }
}

mod status {
    use super::*;

    const OLD_REPORT: &str = r#"{"device":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,
        "release":"gw","version":"1.0.0","installed_id":"00","active_slot":"a","state":"idle","target":null,
        "progress":{"chunks_done":0,"chunk_count":0,"bytes_fetched":0,"bytes_reused":0},"error":null,
        "health":null,"security_floor":1,"time":5}"#;

    #[test]
    fn reports_without_rollout_fields_still_parse_and_carry_no_outcome() {
        let report: StatusReport = serde_json::from_str(OLD_REPORT).unwrap();
        assert_eq!((report.rollout.clone(), report.result, report.error_code), (None, None, None));
        assert_eq!(RolloutReport::from_status(&report), None);
        // And they serialize without the new keys.
        assert!(!serde_json::to_string(&report).unwrap().contains("rollout"));
    }

    #[test]
    fn a_rollout_report_comes_from_the_status_fields() {
        let mut report: StatusReport = serde_json::from_str(OLD_REPORT).unwrap();
        report.rollout = Some("gw-2.0.0.r1".into());
        report.result = Some(InstallResult::Failed);
        report.error_code = Some(4);
        report.install_secs = Some(30);
        report.slot = Some("b".into());
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains(r#""result":"failed""#), "{text}");
        let back: StatusReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            RolloutReport::from_status(&back),
            Some(RolloutReport {
                device_id: [0; 32],
                rollout_id: "gw-2.0.0.r1".into(),
                outcome: Outcome::Failed(4),
                at: 5
            })
        );
        report.result = Some(InstallResult::RolledBack);
        assert_eq!(RolloutReport::from_status(&report).unwrap().outcome, Outcome::RolledBack);
        assert_eq!(Phase::Halted.name(), "halted");
    }
}

/// The fuzz target's committed seed is a valid policy (regenerate it with
/// `OTAMESH_WRITE_SEEDS=1 cargo test -p protocol --test rollout fuzz_seed`).
#[test]
fn fuzz_seed_is_a_valid_policy() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/rollout_policy/sample.bin");
    let bytes = sample().encode().unwrap();
    if std::env::var_os("OTAMESH_WRITE_SEEDS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "{} is stale", path.display());
}
