//! What the API's tests and the console's browser test share: the tokens they call with, a
//! `seeder` run that must succeed, and `seeder serve` with the API on 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_procs::Proc;

pub const READ: &str = "read-token-0123456789abcdef0123456789abcdef";
pub const OPERATOR: &str = "operator-token-0123456789abcdef0123456789ab";
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs `seeder ARGS`, which must succeed; its stdout.
pub fn seeder_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_seeder")).args(args).output().expect("seeder runs");
    assert!(
        out.status.success(),
        "seeder {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A seeder repository at `dir/repo` with release gw 1.4.2 (hardware class imx8) published
/// from an image of `image_bytes` random bytes; the repository's path.
pub fn repo_with_release(dir: &Path, image_bytes: usize, seed: u64) -> String {
    let repo = dir.join("repo").to_str().unwrap().to_string();
    seeder_ok(&["init", "--repo", &repo]);
    let image = dir.join("image.bin");
    std::fs::write(&image, test_procs::random_bytes(image_bytes, seed)).unwrap();
    let image = image.to_str().unwrap();
    let add = ["release", "add", "--repo", &repo, "--image", image, "--name", "gw", "--version", "1.4.2"];
    seeder_ok(&[&add[..], &["--hw-class", "imx8"]].concat());
    repo
}

/// A token file in `dir` with a read and an operator token, with file mode `mode`; its path.
pub fn tokens_file(dir: &Path, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("api-tokens");
    std::fs::write(&path, format!("# who may call\nread {READ}\noperator {OPERATOR}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_string()
}

/// `seeder serve` over `repo` with the API on 127.0.0.1 (tokens from `tokens`), once its API
/// address is printed: the process (killed on drop) and that address.
pub fn serve_api(repo: &str, tokens: &str) -> (Proc, SocketAddr) {
    let args: Vec<String> = [
        "--json",
        "serve",
        "--repo",
        repo,
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--no-mdns",
        "--http-listen",
        "127.0.0.1:0",
        "--api-tokens",
        tokens,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let serve = Proc::spawn("seeder-serve", Path::new(env!("CARGO_BIN_EXE_seeder")), &args).unwrap();
    let http = serve
        .wait_line("the API address", WAIT, |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            v["http"].as_str()?.parse().ok()
        })
        .unwrap();
    (serve, http)
}
