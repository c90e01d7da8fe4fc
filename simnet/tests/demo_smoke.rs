//! The live demo, small: real daemons (the debug builds `cargo test --workspace` made), 6
//! devices and a 4 MiB image. v2's rollout must complete on every device and cross each
//! site's backhaul about once; v3's (its health check fails everywhere) must halt after its
//! canary wave, with every device it touched rolled back to v2 and the rest never on v3.

use std::path::PathBuf;

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

#[test]
fn small_demo_rolls_v2_out_in_waves_and_halts_the_bad_v3_after_its_canary_wave() {
    let dir = bin_dir();
    for name in ["seeder", "edge-node", "device-client"] {
        assert!(dir.join(name).exists(), "{name} not built: run `cargo test --workspace`");
    }
    let config = simnet::demo::DemoConfig { devices: 6, image_mib: 4, bin_dir: Some(dir), ..Default::default() };
    let summary = simnet::demo::run(&config).expect("demo runs");
    print!("{}", summary.render());
    let [v2, v3] = &summary.rollouts[..] else { panic!("two rollouts: {:?}", summary.rollouts) };
    assert_eq!(v2.state, "complete", "{v2:?}");
    assert!(v2.waves.iter().all(|w| w.started_s.is_some()), "{v2:?}");
    assert_eq!(v2.waves.iter().map(|w| w.committed).sum::<u64>(), 6, "{v2:?}");
    assert_eq!(v3.state, "halted", "{v3:?}");
    assert!(v3.waves[1].started_s.is_none(), "v3 went past its canary wave: {v3:?}");
    // Every device touched by v3 rolled back to v2; every other one stayed on v2.
    let rolled_back = summary.states.get("rolled back to 2.0.0 (health-check-failed)").copied().unwrap_or(0);
    assert!(rolled_back >= 1 && rolled_back as u64 <= v3.waves[0].targeted.max(1), "{:?} {v3:?}", summary.states);
    for state in summary.states.keys() {
        assert!(state.ends_with("2.0.0") || state.starts_with("rolled back to 2.0.0"), "a device ended on {state}");
    }
    for site in &summary.sites {
        // Each release crosses each site's backhaul about once, whatever the device count.
        assert!(site.backhaul_v1 as f64 <= 1.02 * summary.stored_v1 as f64, "{site:?}");
        assert!(site.backhaul_v2 <= summary.stored_v2, "{site:?}");
    }
    assert!(summary.reused_v2 > summary.fetched_v2, "chunk reuse did not happen");
}
