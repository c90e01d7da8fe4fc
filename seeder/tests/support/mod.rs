//! What the API's tests and the console's browser test share: the tokens they call with, a
//! `seeder` run that must succeed, and `seeder serve` with the API on 127.0.0.1.

// Each test file uses part of this.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    serve_api_with(repo, tokens, &[])
}

/// [`serve_api`] with `extra` global options first (`--database URL`).
pub fn serve_api_with(repo: &str, tokens: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let args: Vec<String> = extra
        .iter()
        .chain(&[
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
        ])
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

/// One HTTP/1.1 exchange (`Connection: close`): status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(token) = token {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    if let Some((content_type, bytes)) = body {
        request += &format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", bytes.len());
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    if let Some((_, bytes)) = body {
        // The server may answer (413) and close before reading all of a large body.
        let _ = stream.write_all(bytes);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        raw = &raw[eol + 2 + len + 2..];
    }
}

pub fn json(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, expect: u16) -> Value {
    let (status, body) = http(addr, method, path, token, None);
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    assert_eq!(status, expect, "{method} {path}: {value}");
    value
}
