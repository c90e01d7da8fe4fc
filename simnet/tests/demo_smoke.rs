//! The live demo, small: real daemons (the debug builds `cargo test --workspace` made), 6
//! devices and a 4 MiB image. It must end with every device committed on v2 except the
//! rigged one, rolled back, and with each site's backhaul carrying v2 about once.

use std::path::PathBuf;

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

#[test]
fn small_demo_commits_all_but_the_rigged_device_and_crosses_each_backhaul_once() {
    let dir = bin_dir();
    for name in ["seeder", "edge-node", "device-client"] {
        assert!(dir.join(name).exists(), "{name} not built: run `cargo test --workspace`");
    }
    let config = simnet::demo::DemoConfig { devices: 6, image_mib: 4, bin_dir: Some(dir), ..Default::default() };
    let summary = simnet::demo::run(&config).expect("demo runs");
    print!("{}", summary.render());
    assert_eq!(summary.states.get("committed 2.0.0"), Some(&5), "{:?}", summary.states);
    assert_eq!(summary.states.get("rolled back to 1.0.0 (health-check-failed)"), Some(&1), "{:?}", summary.states);
    for site in &summary.sites {
        // Each release crosses each site's backhaul about once, whatever the device count.
        assert!(site.backhaul_v1 as f64 <= 1.02 * summary.stored_v1 as f64, "{site:?}");
        assert!(site.backhaul_v2 <= summary.stored_v2, "{site:?}");
    }
    assert!(summary.reused_v2 > summary.fetched_v2, "chunk reuse did not happen");
}
