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

fn run(s: &Scenario, seed: u64) -> Report {
    simnet::simulate(s, seed, true)
}

fn violated(r: &Report) -> Vec<&'static str> {
    r.checks.violations.iter().map(|v| v.check).collect()
}

mod scenarios {
    use super::*;

    #[test]
    fn factory_small_converges_with_each_site_fetching_the_release_once() {
        let r = run(&built_in("factory-small"), 1);
        assert!(r.checks.passed, "{:?}", r.checks.violations);
        assert_eq!(r.mesh_detail.committed + r.mesh_detail.rolled_back, 30);
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
