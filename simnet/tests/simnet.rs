//! simnet's integration tests: small scenarios end to end, determinism, and one test per
//! checker proving it catches a violation planted on purpose (and a control run proving the
//! same scenario passes without the plant).

use simnet::checkers::names;
use simnet::report::Report;
use simnet::scenario::{self, Scenario};

fn built_in(name: &str) -> Scenario {
    scenario::load(name).expect("built-in scenario")
}

/// factory-small with extra TOML appended (plants, faults).
fn small_with(extra: &str) -> Scenario {
    let text = format!("{}\n{extra}\n", scenario::BUILT_IN[0].1);
    scenario::parse(&text).expect("test scenario parses")
}

/// factory-small with extra keys in its `[devices]` table (keys it does not set already).
fn small_devices(keys: &str) -> Scenario {
    let text = scenario::BUILT_IN[0].1.replacen("[devices]\n", &format!("[devices]\n{keys}\n"), 1);
    scenario::parse(&text).expect("test scenario parses")
}

fn run(s: &Scenario, seed: u64) -> Report {
    simnet::simulate(s, seed, true)
}

fn violated(r: &Report) -> Vec<&'static str> {
    r.checks.violations.iter().map(|v| v.check).collect()
}

fn ends(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

mod scenarios {
    use super::*;

    #[test]
    fn factory_small_converges_with_each_site_fetching_the_release_once() {
        let r = run(&built_in("factory-small"), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        // Every device's install engine committed, after exactly one reboot into the new slot.
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("committed", 30)]));
        assert_eq!(r.mesh_detail.counters.device_reboots, 30);
        let amp = r.mesh.backhaul_amplification;
        assert!((amp.min - 1.0).abs() < 1e-9 && (amp.max - 1.0).abs() < 1e-9, "{amp:?}");
        // The mesh beats every device fetching from the origin, and no run beats the bound.
        assert!(r.mesh_vs_direct_origin.time_to_p100.unwrap() < 1.0);
        assert!(r.mesh_vs_direct_origin.origin_egress.unwrap() < 0.2);
        // The sites trade what the origin hands out: about one copy leaves it, not one per site.
        assert!(r.mesh.origin_egress_copies <= 1.3, "{} copies", r.mesh.origin_egress_copies);
        assert!((r.plain_cache.origin_egress_copies - 3.0).abs() < 0.01, "{}", r.plain_cache.origin_egress_copies);
        for ratio in [r.mesh_vs_lower_bound.time_to_p50, r.mesh_vs_lower_bound.time_to_p100] {
            assert!(ratio.unwrap() >= 1.0, "mesh faster than the lower bound: {ratio:?}");
        }
    }

    #[test]
    fn flaky_backhaul_converges_despite_loss_flaps_and_a_crash() {
        let r = run(&built_in("flaky-backhaul"), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        assert_eq!(r.mesh_detail.committed + r.mesh_detail.rolled_back, 120);
        assert!(r.mesh_detail.rolled_back > 0, "5% health failures should roll some devices back");
        assert!(r.mesh.backhaul_amplification.max <= 2.0);
    }

    #[test]
    fn a_liar_in_a_site_is_caught_and_the_release_arrives_whole() {
        let r = run(&small_with("[[faults.liar]]\nsite = 0"), 3);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        assert!(r.mesh_detail.counters.corrupt_chunks > 0, "nobody asked the liar");
        assert!(r.mesh_detail.counters.liar_disconnects > 0);
    }

    #[test]
    fn install_engines_refuse_a_wrong_hardware_class_and_an_old_security_counter() {
        let r = run(&small_devices("wrong_hw_class_fraction = 0.2\nahead_of_release_fraction = 0.2"), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let d = &r.mesh_detail;
        let wrong = d.device_end_states.get("refused (wrong-hardware-class)").copied().unwrap_or(0);
        let old = d.device_end_states.get("refused (security-counter-too-old)").copied().unwrap_or(0);
        assert!(wrong > 0 && old > 0, "{:?}", d.device_end_states);
        assert_eq!(d.refused, wrong + old);
        assert_eq!(d.committed + d.refused, 30);
        // Refusing devices fetch nothing.
        assert_eq!(r.mesh.devices_downloaded, d.committed);
    }

    #[test]
    fn health_checks_slower_than_the_trial_deadline_roll_back() {
        let text = scenario::BUILT_IN[0].1.replace("health_check_s = 30.0", "health_check_s = 60.0");
        let s = scenario::parse(&text.replacen("[devices]\n", "[devices]\ntrial_deadline_s = 45.0\n", 1)).unwrap();
        let r = run(&s, 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("rolled-back (trial-timeout)", 30)]));
        // Into the new slot, and back.
        assert_eq!(r.mesh_detail.counters.device_reboots, 60);
    }

    #[test]
    fn an_edge_crashing_mid_download_costs_no_download_its_fetch_plans_go_on_with_the_other() {
        // The agent's fetch plan (protocol::device) fails a dead edge's request over to the
        // next edge that answers, within the round: no download fails, nobody retries.
        // The crash lands while the site is still pre-staging (its chunks come from the other
        // sites, not all from the origin: about 2.3 s here), so the batches the node had in
        // flight cross the backhaul again: amplification, not downloads, pays for it.
        let r = run(
            &small_with("[[faults.crash]]\nat_s = 2.0\nsite = 0\nedge = 0\n[checks]\nmax_backhaul_amplification = 1.5"),
            1,
        );
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let c = &r.mesh_detail.counters;
        assert_eq!(c.device_download_failures, 0, "{c:?}");
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("committed", 30)]));
    }

    #[test]
    fn devices_penalize_an_edge_serving_chunks_that_fail_verification_and_fetch_elsewhere() {
        // Every batch damaged with probability 0.3: each damaged batch stops and penalizes its
        // edge for 10 minutes (the device cannot tell damage on the way from a liar), so some
        // devices run out of edges, fail the download, and finish only after the penalties
        // expire.
        let r = run(&small_with("[faults]\ndevice_batch_corruption = 0.3"), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let c = &r.mesh_detail.counters;
        assert!(c.device_refetches > 0 && c.device_download_failures > 0, "{c:?}");
        assert!(r.mesh_detail.time_to_finished.p100_s.unwrap() > 600.0, "{:?}", r.mesh_detail.time_to_finished);
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("committed", 30)]));
    }

    #[test]
    fn a_site_without_edge_nodes_for_a_while_fails_checks_and_downloads_then_recovers() {
        // Both crash mid pre-staging: what they had in flight is fetched again (see above).
        let extra = "[[faults.crash]]\nat_s = 2.0\nsite = 0\nedge = 0\nrestart_after_s = 40.0\n\
                     [[faults.crash]]\nat_s = 2.0\nsite = 0\nedge = 1\nrestart_after_s = 40.0\n\
                     [checks]\nmax_backhaul_amplification = 1.5";
        let r = run(&small_with(extra), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let c = &r.mesh_detail.counters;
        assert!(c.device_check_failures > 0 && c.device_download_failures > 0, "{c:?}");
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("committed", 30)]));
    }

    #[test]
    fn an_image_failing_its_hash_is_downloaded_again_up_to_the_engines_limit() {
        let r = run(&small_with("[faults]\ndevice_image_corruption = 0.5"), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let d = &r.mesh_detail;
        assert!(d.counters.device_image_mismatches > 0);
        let refused = d.device_end_states.get("refused (image-mismatch)").copied().unwrap_or(0);
        // Three failed hashes in a row and the engine refuses the release.
        assert!(refused > 0 && d.counters.device_image_mismatches >= 3 * refused, "{:?}", d.device_end_states);
        assert_eq!(d.committed + refused, 30, "{:?}", d.device_end_states);
    }

    #[test]
    fn a_site_lan_partition_costs_amplification_not_liveness() {
        let extra = "[[faults.partition]]\nat_s = 0.0\nduration_s = 600.0\nsites = [1]\nkind = \"site-lan\"\n\
                     [checks]\nmax_backhaul_amplification = 2.5";
        let r = run(&small_with(extra), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        // Site 1's edge nodes cannot see each other: each fetches what it needs itself.
        let by_site = &r.mesh_detail.backhaul_bytes_by_site;
        assert!(by_site[1] > by_site[0], "{by_site:?}");
    }
}

mod determinism {
    use super::*;

    #[test]
    fn same_seed_same_report_bytes() {
        let s = built_in("flaky-backhaul");
        let a = simnet::report_json(&run(&s, 7));
        let b = simnet::report_json(&run(&s, 7));
        assert_eq!(a, b);
        let c = simnet::report_json(&run(&s, 8));
        assert_ne!(a, c, "the seed changes nothing?");
    }
}

mod checkers {
    use super::*;

    #[test]
    fn catches_an_edge_node_serving_chunks_it_never_verified() {
        let r = run(&small_with("[[faults.liar]]\nsite = 0\n[plant]\nedge_skips_verification = true"), 3);
        assert!(violated(&r).contains(&names::SERVED_UNVERIFIED), "{:?}", r.checks.violations);
    }

    #[test]
    fn catches_a_device_installing_bytes_that_do_not_match_the_manifest() {
        let corrupt = "[faults]\ndevice_batch_corruption = 0.3";
        let control = run(&small_with(corrupt), 1);
        assert!(control.checks.passed, "{:?}", control.checks.violations);
        assert!(control.mesh_detail.counters.device_refetches > 0);
        let r = run(&small_with(&format!("{corrupt}\n[plant]\ndevice_skips_verification = true")), 1);
        assert_eq!(violated(&r), vec![names::INSTALLED_UNVERIFIED], "{:?}", r.checks.violations);
    }

    #[test]
    fn catches_a_device_activating_an_image_that_failed_storage() {
        // The engine re-downloads an image whose hash fails; a driver that reports every hash
        // as matching lets it reach the bootloader.
        let corrupt = "[faults]\ndevice_image_corruption = 0.3";
        let r = run(&small_with(&format!("{corrupt}\n[plant]\ndevice_skips_verification = true")), 1);
        assert_eq!(violated(&r), vec![names::INSTALLED_UNVERIFIED], "{:?}", r.checks.violations);
        assert!(r.checks.violations[0].detail.contains("activated a slot"));
    }

    #[test]
    fn catches_a_device_that_never_converges() {
        let r = run(&small_with("[plant]\ndevice_never_checks_in = true"), 1);
        assert_eq!(violated(&r), vec![names::NOT_CONVERGED], "{:?}", r.checks.violations);
        assert!(r.checks.violations[0].detail.contains("0 (idle)"));
    }

    #[test]
    fn catches_backhaul_amplification() {
        let r = run(&small_with("[plant]\nedges_ignore_site_mates = true"), 1);
        assert!(violated(&r).contains(&names::AMPLIFICATION), "{:?}", r.checks.violations);
    }
}

/// Small versions of the rollout scenarios (the built-ins with fewer devices), asserting on
/// report.json's `rollout` object.
mod rollout {
    use super::*;

    /// A built-in scenario's text with replacements applied (each must match).
    fn edited(name: &str, edits: &[(&str, &str)]) -> Scenario {
        let mut text = scenario::BUILT_IN.iter().find(|(n, _)| *n == name).expect("built-in").1.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "{name} has no `{from}`");
            text = text.replacen(from, to, 1);
        }
        scenario::parse(&text).expect("test scenario parses")
    }

    fn small_bad_release(edits: &[(&str, &str)]) -> Scenario {
        let mut all = vec![("count = 20", "count = 8"), ("devices_per_site = 500", "devices_per_site = 250")];
        all.extend_from_slice(edits);
        edited("bad-release", &all)
    }

    #[test]
    fn a_bad_release_halts_in_the_first_wave_and_every_touched_device_rolls_back() {
        let r = run(&small_bad_release(&[]), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let ro = r.rollout.as_ref().expect("rollout object");
        assert!(ro.halted && ro.final_phase == "halted", "{ro:?}");
        assert!(ro.halt_reason.as_deref().unwrap_or("").contains("wave 0"), "{ro:?}");
        assert!(ro.touched > 0 && ro.touched_fraction <= 0.01, "{ro:?}");
        assert_eq!(ro.touched_rolled_back_fraction, 1.0);
        assert!(ro.local_site_halts > 0, "{ro:?}");
        assert!(ro.waves[0].ended_s.is_some() && ro.waves[1].started_s.is_none(), "{:?}", ro.waves);
        assert_eq!(ro.waves[0].rolled_back as u64, ro.touched, "the controller heard every rollback");
        // Nobody else installs: the rest of the fleet is held by the halted policy.
        let d = &r.mesh_detail;
        assert_eq!(d.rolled_back, ro.touched);
        assert_eq!(d.committed, 0);
        assert_eq!(ro.held_devices + ro.touched, 2000, "{:?}", d.device_end_states);
    }

    #[test]
    fn windows_pre_stage_downloads_and_switch_only_inside_each_sites_window() {
        let r = run(&edited("windows", &[("devices_per_site = 50", "devices_per_site = 20")]), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let ro = r.rollout.as_ref().expect("rollout object");
        assert_eq!(ro.out_of_window_switches, 0);
        assert_eq!(ro.final_phase, "complete");
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("committed", 120)]));
        // Every download started, and ran, while its site's window was closed.
        assert_eq!(ro.downloads_before_window, Some(120));
        assert_eq!(ro.download_in_window_fraction, Some(0.0));
        // The last region (us, 07:00 UTC on Monday) switches 19 hours after the start.
        let finished = r.mesh_detail.time_to_finished.p100_s.unwrap();
        assert!(finished > 19.0 * 3600.0 && finished < 19.5 * 3600.0, "{finished}");
    }

    #[test]
    fn a_site_cut_off_during_a_bad_rollout_halts_itself() {
        let s = edited("offline-site", &[("count = 8", "count = 4")]);
        let r = run(&s, 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let ro = r.rollout.as_ref().expect("rollout object");
        assert!(ro.halted, "{ro:?}");
        let cut = &ro.cut_off_sites[0];
        assert_eq!(cut.site, 0);
        // The site halted itself long before the halted policy could reach it (after the
        // WAN came back at 10,810 s), and fewer devices were touched than its policy allowed.
        let local = cut.local_halt_s.expect("the site halted itself");
        assert!(local < 300.0 && cut.policy_halt_s.unwrap() >= 10_810.0, "{cut:?}");
        assert!(cut.touched >= 1 && cut.touched < cut.eligible_when_cut, "{cut:?}");
        // Its reports waited in the edge's queue and reached the origin after the WAN was back.
        assert_eq!((ro.reports_lost, ro.reports_at_origin), (0, ro.reports_sent));
        assert_eq!(ro.touched_rolled_back_fraction, 1.0);
    }

    #[test]
    fn reports_beyond_the_edge_queue_are_lost_and_counted() {
        let s = edited(
            "offline-site",
            &[("count = 8", "count = 4"), ("min_reports = 20", "min_reports = 20\nedge_report_queue = 1")],
        );
        let r = run(&s, 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let ro = r.rollout.as_ref().unwrap();
        assert!(ro.reports_lost > 0, "{ro:?}");
        assert_eq!(ro.reports_at_origin + ro.reports_lost, ro.reports_sent);
    }

    #[test]
    fn a_good_release_passes_every_wave() {
        let extra = "[rollout]\nwaves_percent = [10.0, 100.0]\nsoak_s = 60\nmin_reports = 2";
        let r = run(&small_with(extra), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        let ro = r.rollout.as_ref().unwrap();
        assert_eq!(ro.final_phase, "complete");
        assert!(ro.waves.iter().all(|w| w.started_s.is_some() && w.ended_s.is_some()), "{:?}", ro.waves);
        assert_eq!(ro.touched_fraction, 1.0);
        assert_eq!(r.mesh_detail.device_end_states, ends(&[("committed", 30)]));
        // Without a rollout the report says so.
        assert!(run(&built_in("factory-small"), 1).rollout.is_none());
    }

    #[test]
    fn bad_rollout_keys_are_refused_with_the_key_named() {
        for (extra, key) in [
            ("[rollout]\nwaves_percent = [10.0, 50.0]", "last wave"),
            ("[rollout]\nwaves_percent = [10.0, 0.0, 100.0]", "waves_percent"),
            ("[rollout]\n[[rollout.windows]]\nsites = \"*\"\nstart = \"25:00\"\nend = \"01:00\"", "rollout.windows.start"),
            ("[rollout]\n[[rollout.windows]]\nsites = \"*\"\ndays = [\"someday\"]\nstart = \"01:00\"\nend = \"02:00\"", "days"),
        ] {
            let text = format!("{}\n{extra}\n", scenario::BUILT_IN[0].1);
            let err = scenario::parse(&text).unwrap_err();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn the_checkers_catch_devices_that_ignore_the_gate() {
        // Outside their wave …
        let r = run(&small_bad_release(&[("[rollout]", "[plant]\ndevices_ignore_rollout = true\n[rollout]")]), 1);
        assert_eq!(violated(&r), vec![names::OUTSIDE_WAVE], "{:?}", r.checks.violations);
        // … after a halt (one wave: everyone is in it) …
        let edits = [
            ("[rollout]", "[plant]\ndevices_ignore_rollout = true\n[rollout]"),
            ("waves_percent = [1.0, 10.0, 50.0, 100.0]", "waves_percent = [100.0]"),
        ];
        let r = run(&small_bad_release(&edits), 1);
        assert_eq!(violated(&r), vec![names::AFTER_HALT], "{:?}", r.checks.violations);
        // … and outside a window.
        let s = edited("windows", &[("[rollout]", "[plant]\ndevices_ignore_rollout = true\n[rollout]")]);
        let r = run(&s, 1);
        assert_eq!(violated(&r), vec![names::OUTSIDE_WINDOW], "{:?}", r.checks.violations);
    }
}
