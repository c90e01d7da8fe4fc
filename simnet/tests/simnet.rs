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
        let r = run(&small_with("[[faults.crash]]\nat_s = 2.0\nsite = 0\nedge = 0"), 1);
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
        let extra = "[[faults.crash]]\nat_s = 2.0\nsite = 0\nedge = 0\nrestart_after_s = 40.0\n\
                     [[faults.crash]]\nat_s = 2.0\nsite = 0\nedge = 1\nrestart_after_s = 40.0";
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
