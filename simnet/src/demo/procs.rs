//! Child processes for the live demo, through `test-procs`, the harness the integration
//! tests use: output lines captured (the tail goes into the error if something fails),
//! addresses learnt from the daemons' own log lines, every child killed when its handle
//! drops — on success, on error and on panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use test_procs::{Options, Proc};

/// Most output lines kept per daemon: the tail is what explains a failure, and the demo's
/// daemons run long enough for their logs to matter.
const KEPT_LINES: usize = 5000;
/// Longest a one-shot command (`seeder init`, `seeder release add` on the demo's images)
/// may run before the demo gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Starts a daemon. It stays in the terminal's process group: Ctrl-C ends the demo without
/// running drops, and must reach the daemons too.
pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Proc> {
    let log = std::env::var("DEMO_LOG").unwrap_or_else(|_| "info,libp2p=warn".into());
    let options = Options {
        env: vec![("RUST_LOG".into(), log), ("NO_COLOR".into(), "1".into())],
        own_group: false,
        max_lines: KEPT_LINES,
    };
    Proc::spawn_with(name, program, args, &options)
}

/// Runs a command to completion; its stdout on success, its output in the error otherwise.
pub fn run(program: &Path, args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = test_procs::run_to_exit(program, &args, &[], COMMAND_TIMEOUT)?;
    if out.code != Some(0) {
        bail!("{} {} failed: {}{}", program.display(), args.join(" "), out.stdout, out.stderr);
    }
    Ok(out.stdout)
}

/// Whether `name` is one of the variables cargo sets for the package it runs (not one that
/// configures cargo itself, such as CARGO_HOME or CARGO_TARGET_DIR).
fn is_package_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "OUT_DIR"
        )
}

/// The release binaries of the daemons, built if needed. `cargo run -p simnet -- demo`
/// builds only simnet; the daemons are separate packages, so the demo asks cargo for them
/// (a no-op once built).
pub fn daemon_binaries(bin_dir: Option<&Path>) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("own executable")?;
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => exe.parent().context("executable directory")?.to_path_buf(),
    };
    let names = ["seeder", "edge-node", "device-client"];
    if let (Ok(cargo), None) = (std::env::var("CARGO"), bin_dir) {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("release").to_string();
        let mut args = vec!["build", "-q", "--bins", "-p", "seeder", "-p", "edge-node", "-p", "device-client"];
        if profile == "release" {
            args.push("--release");
        }
        eprintln!("building the daemons (seeder, edge-node, device-client; the first time takes a few minutes)…");
        let mut build = Command::new(cargo);
        build.args(&args);
        // `cargo run` hands simnet the variables describing simnet's own package
        // (CARGO_MANIFEST_DIR, CARGO_PKG_*, …). Passed on, they look to build scripts that
        // watch them (ring's watches CARGO_MANIFEST_DIR) like a changed environment, and the
        // daemons and everything under them were compiled again, for minutes, right after
        // `cargo build --release --workspace --bins`.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_package_variable) {
                build.env_remove(name);
            }
        }
        let status = build.status().context("cannot run cargo")?;
        if !status.success() {
            bail!("building the daemons failed");
        }
    }
    let [seeder, edge, device] = names.map(|n| dir.join(n));
    for path in [&seeder, &edge, &device] {
        if !path.exists() {
            bail!("{} is missing: run `cargo build --release --bins` first", path.display());
        }
    }
    Ok((seeder, edge, device))
}
