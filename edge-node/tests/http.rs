//! The operations HTTP server: the TUF mirror routes, /metrics, /status, /healthz, the
//! status client, and python-tuf's ngclient using the edge node as a mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edge_node::http::{fetch_status, print_status, router, serve, HttpState};
use edge_node::metrics::Metrics;
use protocol::edge::status::EdgeStatus;
use serde_json::{json, Value};
use test_procs::random_bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Marks every file outside the mirror; no response may ever contain it.
const SECRET: &[u8] = b"SECRET-SIGNING-KEY-do-not-serve";

/// A temp dir holding `mirror/` (the mirror root) with secrets planted where traversal would
/// reach: `keys/x` inside the mirror root but outside `metadata/` and `targets/` (where the
/// seeder keeps its keys), and `root.json`, `keys/x`, `secret` beside the mirror root.
struct Mirror {
    dir: tempfile::TempDir,
    root_json: Vec<u8>,
    manifest: Vec<u8>,
}

const MANIFEST_PATH: &str = "releases/gw/0123abcd.1.0.0.manifest";

impl Mirror {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("mirror");
        for sub in ["metadata", "targets/releases/gw", "keys"] {
            std::fs::create_dir_all(mirror.join(sub)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        for secret in
            [mirror.join("keys/x"), dir.path().join("keys/x"), dir.path().join("root.json"), dir.path().join("secret")]
        {
            std::fs::write(secret, SECRET).unwrap();
        }
        let root_json = br#"{"signed":{"_type":"root","version":1},"signatures":[]}"#.to_vec();
        std::fs::write(mirror.join("metadata/1.root.json"), &root_json).unwrap();
        std::fs::write(mirror.join("metadata/3.a%2Fb.json"), b"{\"delegated\":true}").unwrap();
        // Larger than one read buffer, so the body really arrives as a stream of pieces.
        let manifest = random_bytes(300 * 1024 + 7, 1);
        std::fs::write(mirror.join("targets").join(MANIFEST_PATH), &manifest).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), mirror.join("targets/escape")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), mirror.join("metadata/escape.json")).unwrap();
        Mirror { dir, root_json, manifest }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("mirror")
    }
}

/// A small status document: the typed one the daemon serves.
fn sample_status() -> EdgeStatus {
    EdgeStatus { node_id: "12D3KooWtest".into(), site: "hall-a".into(), ..EdgeStatus::default() }
}

fn state(mirror_root: PathBuf) -> HttpState {
    let metrics = Arc::new(Metrics::default());
    metrics.bytes_in[2].store(42, Relaxed);
    HttpState { mirror_root, metrics, status: Arc::new(sample_status) }
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    content_length: Option<u64>,
    body: Vec<u8>,
}

/// One request through the router, no socket.
async fn oneshot(state: HttpState, uri: &str) -> Reply {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = router(state).oneshot(request).await.unwrap();
    let header = |name| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let content_type = header("content-type");
    let content_length = header("content-length").map(|v| v.parse().unwrap());
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 << 20).await.unwrap().to_vec();
    Reply { status, content_type, content_length, body }
}

async fn start(state: HttpState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state));
    addr
}

/// One request over a real socket with the path sent exactly as given: HTTP client libraries
/// normalize `..` away, attackers do not.
async fn raw_get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete header block");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap();
    let status = StatusCode::from_u16(status_line.split(' ').nth(1).unwrap().parse().unwrap()).unwrap();
    let mut content_type = None;
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.trim().to_string()),
            "content-length" => content_length = Some(value.trim().parse().unwrap()),
            "transfer-encoding" => panic!("{path}: expected a Content-Length body, got {line}"),
            _ => {}
        }
    }
    Reply { status, content_type, content_length, body }
}

fn assert_not_found(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{what}");
    assert_eq!(reply.body, b"not found\n", "{what}");
    assert!(!reply.body.windows(SECRET.len()).any(|w| w == SECRET), "{what} leaked a file outside the mirror");
}

mod mirror {
    use super::*;

    #[tokio::test]
    async fn metadata_and_targets_are_served_byte_identical() {
        let m = Mirror::new();
        let addr = start(state(m.root())).await;

        let reply = raw_get(addr, "/metadata/1.root.json").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        assert_eq!(reply.content_length, Some(m.root_json.len() as u64));
        assert_eq!(reply.body, m.root_json);

        let reply = raw_get(addr, &format!("/targets/{MANIFEST_PATH}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(reply.content_length, Some(m.manifest.len() as u64));
        assert!(reply.body == m.manifest, "target body differs from the file");
    }

    #[tokio::test]
    async fn delegated_role_names_stay_percent_encoded() {
        let m = Mirror::new();
        let reply = oneshot(state(m.root()), "/metadata/3.a%2Fb.json").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, b"{\"delegated\":true}");
    }

    #[tokio::test]
    async fn missing_files_directories_and_unknown_routes_are_404() {
        let m = Mirror::new();
        for uri in [
            "/metadata/2.root.json",
            "/metadata/root",
            "/metadata/",
            "/targets/releases/gw/nope.manifest",
            "/targets/releases",
            "/targets/releases/gw/0123abcd.1.0.0.manifest/more",
            "/targets/",
            "/",
            "/nothing",
            "/metrics/extra",
        ] {
            assert_not_found(&oneshot(state(m.root()), uri).await, uri);
        }
    }

    const ESCAPES: [&str; 16] = [
        "/metadata/..%2Froot.json",
        "/metadata/..%2F..%2Froot.json",
        "/metadata/%2E%2E%2F..%2Froot.json",
        "/metadata/../../root.json",
        "/metadata/.root.json",
        "/metadata/escape.json",
        "/targets/../keys/x",
        "/targets/../../keys/x",
        "/targets/..%2Fkeys%2Fx",
        "/targets/releases%2Fgw%2F0123abcd.1.0.0.manifest",
        "/targets/%2E%2E/keys/x",
        "/targets/.hidden",
        "/targets/releases/./gw/0123abcd.1.0.0.manifest",
        "/targets/releases//gw/0123abcd.1.0.0.manifest",
        "/targets/escape",
        "/targets/a/b/c/d/e/f/g/h/i",
    ];

    #[tokio::test]
    async fn traversal_never_leaves_the_mirror_through_the_router() {
        let m = Mirror::new();
        std::fs::write(m.root().join("targets/.hidden"), SECRET).unwrap();
        for uri in ESCAPES {
            assert_not_found(&oneshot(state(m.root()), uri).await, uri);
        }
    }

    #[tokio::test]
    async fn traversal_never_leaves_the_mirror_over_a_socket() {
        let m = Mirror::new();
        std::fs::write(m.root().join("targets/.hidden"), SECRET).unwrap();
        let addr = start(state(m.root())).await;
        for uri in ESCAPES {
            assert_not_found(&raw_get(addr, uri).await, uri);
        }
        // The server is still healthy afterwards.
        assert_eq!(raw_get(addr, "/healthz").await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn python_tuf_ngclient_uses_the_edge_node_as_a_mirror() {
        let exe = std::env::current_exe().unwrap();
        // target/debug/deps/http-HASH -> target/debug/seeder
        let seeder = exe.parent().and_then(Path::parent).unwrap().join("seeder");
        assert!(
            seeder.is_file(),
            "{} is missing: run `cargo build -p seeder` before the edge-node tests",
            seeder.display()
        );
        let work = tempfile::tempdir().unwrap();
        let repo = work.path().join("repo");
        let image = work.path().join("gw.img");
        std::fs::write(&image, random_bytes(256 * 1024, 7)).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(&seeder).args(args).output().expect("seeder runs");
            assert!(
                out.status.success(),
                "seeder {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let repo_arg = repo.to_str().unwrap();
        run(&["init", "--repo", repo_arg]);
        run(&[
            "release",
            "add",
            "--repo",
            repo_arg,
            "--image",
            image.to_str().unwrap(),
            "--name",
            "gw",
            "--version",
            "1.0.0",
            "--hw-class",
            "x",
        ]);

        let addr = start(state(repo.clone())).await;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/ngclient_mirror.py");
        let trusted_root = repo.join("metadata/1.root.json");
        let out_file = work.path().join("manifest.dl");
        let args = [
            script.to_str().unwrap().to_string(),
            format!("http://{addr}"),
            trusted_root.to_str().unwrap().to_string(),
            "releases/gw/1.0.0.manifest".to_string(),
            out_file.to_str().unwrap().to_string(),
        ];
        // Blocking child process; the server keeps running on the other worker.
        let out =
            tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output().expect("python3 runs"))
                .await
                .unwrap();
        assert!(
            out.status.success(),
            "python-tuf through the mirror failed (is tests/python/requirements.txt installed?): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // Consistent snapshots store the manifest as HASH.1.0.0.manifest.
        let served: Vec<PathBuf> = std::fs::read_dir(repo.join("targets/releases/gw"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.to_str().unwrap().ends_with(".1.0.0.manifest"))
            .collect();
        assert!(!served.is_empty(), "the seeder wrote no manifest target");
        let downloaded = std::fs::read(&out_file).unwrap();
        for path in served {
            assert_eq!(downloaded, std::fs::read(&path).unwrap(), "{} differs from the download", path.display());
        }
    }
}

mod ops {
    use super::*;

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let m = Mirror::new();
        let reply = oneshot(state(m.root()), "/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type.as_deref(), Some("text/plain; version=0.0.4"));
        let text = String::from_utf8(reply.body).unwrap();
        assert!(text.contains("otamesh_edge_bytes_in_total{source=\"origin\"} 42\n"), "{text}");
    }

    #[tokio::test]
    async fn status_and_healthz() {
        let m = Mirror::new();
        let reply = oneshot(state(m.root()), "/status").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        let value: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(value, serde_json::to_value(sample_status()).unwrap());
        assert_eq!((value["node_id"].as_str(), value["site"].as_str()), (Some("12D3KooWtest"), Some("hall-a")));

        let reply = oneshot(state(m.root()), "/healthz").await;
        assert_eq!((reply.status, reply.body.as_slice()), (StatusCode::OK, b"ok".as_slice()));
    }

    #[tokio::test]
    async fn other_methods_are_refused() {
        let m = Mirror::new();
        let request = Request::post("/metadata/1.root.json").body(Body::empty()).unwrap();
        let response = router(state(m.root())).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}

mod client {
    use super::*;

    /// The typed document the daemon serves, built from the JSON a node sends: what
    /// `edge-node status` renders.
    fn full_status() -> EdgeStatus {
        serde_json::from_value(full_status_json()).unwrap()
    }

    fn full_status_json() -> Value {
        json!({
            "node_id": "12D3KooWnode",
            "site": "hall-a",
            "peers": [{"peer": "12D3KooWpeerone", "site": "hall-a"}, {"peer": "12D3KooWpeertwo", "site": "hall-b"}],
            "releases": [
                {"name": "gw", "version": "1.0.0", "hw_class": "imx8", "chunks": 40, "have": 40, "complete": true},
                {"name": "gw", "version": "1.1.0", "hw_class": "imx8", "chunks": 42, "have": 3, "complete": false}
            ],
            "store": {"chunks": 43, "bytes": 3 * 1024 * 1024 / 2, "capacity_bytes": 10u64 << 30},
            "bytes_in": {"site": 0, "wan": 2048, "origin": 1u64 << 20}
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_status_round_trips_through_a_real_listener() {
        let m = Mirror::new();
        let mut s = state(m.root());
        s.status = Arc::new(full_status);
        let addr = start(s).await;
        assert_eq!(fetch_status(addr).await.unwrap(), serde_json::to_value(full_status()).unwrap());
    }

    #[tokio::test]
    async fn fetch_status_refuses_an_oversized_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let size = 2 << 20;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b' '; size]).await;
        });
        let error = fetch_status(addr).await.unwrap_err();
        assert!(format!("{error:#}").contains("length limit"), "{error:#}");
    }

    #[tokio::test]
    async fn fetch_status_reports_http_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A server without /status: the client reports the 404 instead of parsing it.
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let error = fetch_status(addr).await.unwrap_err();
        assert!(format!("{error:#}").contains("404"), "{error:#}");
    }

    #[test]
    fn print_status_renders_the_known_shape() {
        let text = print_status(&full_status_json(), false);
        assert_eq!(print_status(&serde_json::to_value(full_status()).unwrap(), false), text);
        let expected = "\
node      12D3KooWnode
site      hall-a
store     43 chunks, 1.5 MiB of 10.0 GiB
bytes in  site 0 B, wan 2.0 KiB, origin 1.0 MiB
reports   0 queued, 0 forwarded, 0 dropped

peers (2)
  PEER             SITE
  12D3KooWpeerone  hall-a
  12D3KooWpeertwo  hall-b

releases (2)
  NAME  VERSION  HW CLASS  CHUNKS  HAVE  COMPLETE
  gw    1.0.0    imx8      40      40    yes
  gw    1.1.0    imx8      42      3     no

rollouts (0)
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn print_status_falls_back_to_pretty_json() {
        let odd = json!({"something": ["else"]});
        let pretty = format!("{}\n", serde_json::to_string_pretty(&odd).unwrap());
        assert_eq!(print_status(&odd, false), pretty);
        let full = serde_json::to_value(full_status()).unwrap();
        assert_eq!(print_status(&full, true), format!("{}\n", serde_json::to_string_pretty(&full).unwrap()));
        // Known shape with parts missing still renders, with placeholders.
        let sparse = print_status(&json!({"node_id": "n"}), false);
        assert!(sparse.starts_with("node      n\nsite      -\n"), "{sparse}");
    }
}
