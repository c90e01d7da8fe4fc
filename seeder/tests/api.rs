//! The publisher's API as a client sees it: a real `seeder serve --http-listen` over a real
//! repository and fleet database, spoken to over TCP with plain HTTP/1.1 — tokens and scopes,
//! the inventory, rollout actions reaching the signed policy and the database, the event
//! stream, metrics, and bad input answered with a 4xx and a JSON error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use test_procs::Proc;

mod support;
use support::{http, json, repo_with_release, seeder_ok as ok, serve_api, tokens_file, OPERATOR, READ, WAIT};

fn seeder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seeder")).args(args).output().expect("seeder runs")
}

/// An error response: the status and a JSON `error` string.
fn error(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
    expect: u16,
) -> String {
    let (status, bytes) = http(addr, method, path, token, body);
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{method} {path} ({status}): the error is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
    });
    assert_eq!(status, expect, "{method} {path}: {value}");
    value["error"].as_str().unwrap_or_else(|| panic!("no `error` in {value}")).to_string()
}

struct Served {
    _dir: tempfile::TempDir,
    repo: String,
    _serve: Proc,
    http: SocketAddr,
}

/// A repository with release gw 1.4.2 rolling out, six enrolled devices of which three
/// reported, and `seeder serve` with the API on 127.0.0.1.
fn served() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_release(dir.path(), 200_000, 5);
    ok(&["rollout", "start", "--repo", &repo, "gw", "1.4.2", "--waves", "100"]);
    ok(&["fleet-test-ingest", "--repo", &repo, "--devices", "3", "--reports", "30", "--enroll"]);
    for (seed, id) in [(41u8, "gw-never-1"), (42, "gw-never-2"), (43, "gw-never-3")] {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let hex: String = key.verifying_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        ok(&[
            "devices",
            "enroll",
            "--repo",
            &repo,
            "--key",
            &hex,
            "--id",
            id,
            "--site",
            "plant-9",
            "--hw-class",
            "imx8",
        ]);
    }
    let tokens = tokens_file(dir.path(), 0o600);
    let (serve, http) = serve_api(&repo, &tokens);
    Served { _dir: dir, repo, _serve: serve, http }
}

#[test]
fn tokens_scopes_and_the_inventory() {
    let s = served();
    let a = s.http;
    // No token, an unknown one: 401, with a JSON error that says what to send.
    let e = error(a, "GET", "/api/devices", None, None, 401);
    assert!(e.contains("Authorization: Bearer"), "{e}");
    error(a, "GET", "/api/devices", Some("not-a-token-not-a-token-not-a-token"), None, 401);
    error(a, "GET", "/api/rollouts", Some(&READ[..READ.len() - 1]), None, 401);

    let page = json(a, "GET", "/api/devices", Some(READ), 200);
    assert_eq!(page["total"], 6, "{page}");
    let devices = page["devices"].as_array().unwrap();
    assert_eq!(devices.iter().filter(|d| d["stale"] == true).count(), 3, "the never-reported are stale: {page}");
    let reported = devices.iter().find(|d| !d["state"].is_null()).unwrap();
    assert_eq!(reported["state"]["version"], "1.4.2");
    let page = json(a, "GET", "/api/devices?site=plant-9&limit=2&offset=1", Some(READ), 200);
    assert_eq!((page["total"].as_u64(), page["devices"].as_array().unwrap().len()), (Some(3), 2), "{page}");
    assert_eq!(page["devices"][0]["id"], "gw-never-2");
    let page = json(a, "GET", "/api/devices?state=never-reported", Some(OPERATOR), 200);
    assert_eq!(page["total"], 3);
    let page = json(a, "GET", "/api/devices?q=never-3", Some(READ), 200);
    assert_eq!(page["total"], 1);
    // Keyset paging: `next` is where a full page ended; the page after it continues there.
    let first = json(a, "GET", "/api/devices?limit=4", Some(READ), 200);
    let next = first["next"].as_str().expect("a full page has a next").to_string();
    assert_eq!(first["devices"][3]["id"], next.as_str());
    let rest = json(a, "GET", &format!("/api/devices?limit=4&after={next}"), Some(READ), 200);
    assert_eq!((rest["total"].as_u64(), rest["devices"].as_array().unwrap().len()), (Some(6), 2), "{rest}");
    assert!(rest["next"].is_null(), "the last page has no next: {rest}");
    let by_offset = json(a, "GET", "/api/devices?limit=4&offset=4", Some(READ), 200);
    assert_eq!(rest["devices"], by_offset["devices"]);

    let id = reported["id"].as_str().unwrap();
    let detail = json(a, "GET", &format!("/api/devices/{id}"), Some(READ), 200);
    assert_eq!(detail["device"]["id"], id);
    assert_eq!(detail["history"].as_array().unwrap().len(), 10, "{detail}");
    assert_eq!(detail["history"][0]["seq"], 10, "newest first");
    error(a, "GET", "/api/devices/gw-404", Some(READ), None, 404);
    // Path tricks are only a device id nobody enrolled.
    error(a, "GET", "/api/devices/..%2F..%2Fkeys", Some(READ), None, 404);
    error(a, "GET", "/api/../keys/targets.json", Some(READ), None, 404);

    let releases = json(a, "GET", "/api/releases", Some(READ), 200);
    assert!(releases["releases"].as_array().unwrap().iter().any(|r| r["version"] == "1.4.2"), "{releases}");
    let sites = json(a, "GET", "/api/sites", Some(READ), 200);
    let plant9 = sites["sites"].as_array().unwrap().iter().find(|s| s["site"] == "plant-9").unwrap();
    assert_eq!((plant9["devices"].as_u64(), plant9["never_reported"].as_u64()), (Some(3), Some(3)), "{sites}");

    // Bad paging and unknown parameters: 400 with a JSON error, never a panic.
    let too_long = "x".repeat(300);
    for query in ["limit=0", "limit=5000", "offset=-1", "limit=ten", "colour=blue", "stale=soon", "offset=2&after=gw"]
        .into_iter()
        .map(String::from)
        .chain([format!("after={too_long}")])
    {
        error(a, "GET", &format!("/api/devices?{query}"), Some(READ), None, 400);
    }
    error(a, "GET", "/api/nothing-here", Some(READ), None, 404);

    // Public: the OpenAPI document and the metrics.
    let spec = json(a, "GET", "/api/openapi.json", None, 200);
    assert!(spec["paths"]["/api/devices"].is_object() && spec["openapi"].is_string());
    let (status, metrics) = http(a, "GET", "/metrics", None, None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"otamesh_seeder_devices{site="plant-9",release="",version="",state="never-reported"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"otamesh_seeder_rollout_info{rollout="gw-1.4.2""#), "{metrics}");
    assert!(metrics.contains("otamesh_seeder_reports_total{outcome=\"accepted\"}"), "{metrics}");
}

#[test]
fn operators_act_on_rollouts_and_readers_cannot() {
    let s = served();
    let a = s.http;
    let status_in_db = || -> Value {
        let out = ok(&["--json", "rollout", "status", "--repo", &s.repo, "gw"]);
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    // The event stream, opened before anything happens.
    let mut events = TcpStream::connect(a).unwrap();
    events.set_read_timeout(Some(WAIT)).unwrap();
    write!(events, "GET /api/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {READ}\r\n\r\n").unwrap();
    let mut events = BufReader::new(events);
    let mut line = String::new();
    events.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");

    // A read-only token cannot pause: 403, and nothing changed.
    let e = error(a, "POST", "/api/rollouts/gw/pause", Some(READ), None, 403);
    assert!(e.contains("operator"), "{e}");
    assert_eq!(status_in_db()["state"], "running");
    let paused = json(a, "POST", "/api/rollouts/gw/pause", Some(OPERATOR), 200);
    assert_eq!(paused["state"], "paused");
    assert_eq!(status_in_db()["state"], "paused", "the signed policy and the database say paused");
    error(a, "POST", "/api/rollouts/gw/pause", Some(OPERATOR), None, 409);
    error(a, "POST", "/api/rollouts/gw/explode", Some(OPERATOR), None, 404);
    error(a, "POST", "/api/rollouts/nope/pause", Some(OPERATOR), None, 404);

    // The pause arrives on the stream as a rollout transition.
    let deadline = Instant::now() + WAIT;
    let mut seen = String::new();
    while !seen.contains("event: rollout") || !seen.contains("\"to\":\"paused\"") {
        assert!(Instant::now() < deadline, "no rollout event: {seen}");
        let mut line = String::new();
        if events.read_line(&mut line).unwrap() == 0 {
            panic!("the event stream ended: {seen}");
        }
        seen += &line;
    }

    // Starting: bad bodies are 4xx with a JSON error; a second rollout of gw conflicts.
    let start = |body: &[u8], content_type: &str, token: &str, expect: u16| {
        error(a, "POST", "/api/rollouts", Some(token), Some((content_type, body)), expect)
    };
    start(br#"{"release": "gw", "version": "1.4.2"}"#, "application/json", READ, 403);
    start(b"{not json", "application/json", OPERATOR, 400);
    start(br#"{"release": "gw", "version": "1.4.2", "colour": "blue"}"#, "application/json", OPERATOR, 422);
    start(br#"{"release": "gw"}"#, "application/json", OPERATOR, 422);
    start(br#"{"release": "gw", "version": "1.4.2"}"#, "text/plain", OPERATOR, 415);
    start(&vec![b' '; 200_000], "application/json", OPERATOR, 413);
    start(br#"{"release": "../keys", "version": "1"}"#, "application/json", OPERATOR, 400);
    let e = start(br#"{"release": "gw", "version": "1.4.2"}"#, "application/json", OPERATOR, 409);
    assert!(e.contains("abort it first"), "{e}");
    start(br#"{"release": "gw", "version": "9.9.9", "waves": "100"}"#, "application/json", OPERATOR, 404);
    assert_eq!(status_in_db()["state"], "paused", "a refused start changed the rollout");

    json(a, "POST", "/api/rollouts/gw/abort", Some(OPERATOR), 200);
    let (status, body) = http(
        a,
        "POST",
        "/api/rollouts",
        Some(OPERATOR),
        Some(("application/json", br#"{"release": "gw", "version": "1.4.2", "waves": "10,100", "id": "gw-again"}"#)),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let started = status_in_db();
    assert_eq!((started["id"].as_str(), started["state"].as_str()), (Some("gw-again"), Some("running")));
}

#[test]
fn the_console_and_its_endpoints() {
    let s = served();
    let a = s.http;
    // The console's shell needs no token and carries a strict policy; its files are embedded.
    let (status, page) = http(a, "GET", "/", None, None);
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#), "{page}");
    for file in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
        assert_eq!(http(a, "GET", file, None, None).0, 200, "{file}");
    }
    error(a, "GET", "/ui/../keys", None, None, 404);
    error(a, "GET", "/ui/nothing.js", None, None, 404);
    let mut stream = TcpStream::connect(a).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut head = String::new();
    stream.read_to_string(&mut head).unwrap();
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");

    assert_eq!(json(a, "GET", "/api/session", Some(READ), 200)["scope"], "read");
    assert_eq!(json(a, "GET", "/api/session", Some(OPERATOR), 200)["scope"], "operator");
    error(a, "GET", "/api/session", None, None, 401);

    let overview = json(a, "GET", "/api/overview", Some(READ), 200);
    assert_eq!((overview["devices"].as_u64(), overview["never_reported"].as_u64()), (Some(6), Some(3)), "{overview}");
    assert_eq!(overview["states"]["never-reported"], 3, "{overview}");
    assert_eq!(overview["versions"]["gw@1.4.2"], 3, "{overview}");
    assert_eq!(overview["hw_classes"]["imx8"], 6, "{overview}");

    // Sites paged in SQL: every site without a limit (as before), one page with one.
    let all = json(a, "GET", "/api/sites", Some(READ), 200);
    let total = all["total"].as_u64().unwrap();
    assert_eq!(all["sites"].as_array().unwrap().len() as u64, total);
    let page = json(a, "GET", "/api/sites?limit=1&offset=1", Some(READ), 200);
    assert_eq!(page["sites"].as_array().unwrap().len(), 1);
    assert_eq!(page["sites"][0]["site"], all["sites"][1]["site"]);
    let found = json(a, "GET", "/api/sites?q=plant", Some(READ), 200);
    assert_eq!((found["total"].as_u64(), found["sites"][0]["site"].as_str()), (Some(1), Some("plant-9")));
    for query in ["limit=0", "limit=1001", "offset=-1", "colour=red"] {
        error(a, "GET", &format!("/api/sites?{query}"), Some(READ), None, 400);
    }
    let site = json(a, "GET", "/api/sites/plant-9", Some(READ), 200);
    assert_eq!(site["site"]["devices"], 3, "{site}");
    assert_eq!(site["site"]["hw_classes"]["imx8"], 3, "{site}");
    assert!(site["edges"].as_array().unwrap().is_empty() && site["anomalies"].as_array().unwrap().is_empty());
    error(a, "GET", "/api/sites/nowhere", Some(READ), None, 404);
    error(a, "GET", &format!("/api/sites/{}", "x".repeat(300)), Some(READ), None, 400);
    error(a, "GET", "/api/sites/plant-9", None, None, 401);

    let anomalies = json(a, "GET", "/api/anomalies", Some(READ), 200);
    assert!(anomalies["flags"].as_array().unwrap().is_empty(), "three healthy devices: {anomalies}");
    assert!(anomalies["fleet_median_install_secs"].as_f64().is_some(), "{anomalies}");
    let spec = json(a, "GET", "/api/openapi.json", None, 200);
    for path in ["/api/overview", "/api/anomalies", "/api/sites/{site}", "/api/session", "/"] {
        assert!(spec["paths"][path].is_object(), "{path} is not in the OpenAPI document");
    }
}

/// The API answers a rollout's status from the controller loop's counts (no replay of
/// every outcome per request): reports stored while the seeder serves show up within a
/// few ticks and agree with `seeder rollout status` (which replays the database), and an
/// operator's pause shows at once, with the counts kept.
#[test]
fn a_rollouts_status_follows_the_reports_and_a_pause_shows_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_release(dir.path(), 50_000, 6);
    // Enough reports asked per wave that the controller does not decide during the test; the
    // id `fleet-test-ingest`'s reports carry.
    ok(&[
        "rollout",
        "start",
        "--repo",
        &repo,
        "gw",
        "1.4.2",
        "--waves",
        "100",
        "--min-reports",
        "1000",
        "--id",
        "gw-1.4.2-r1",
    ]);
    let tokens = tokens_file(dir.path(), 0o600);
    let (_serve, a) = serve_api(&repo, &tokens);
    let status = json(a, "GET", "/api/rollouts/gw", Some(READ), 200);
    assert_eq!((status["state"].as_str(), status["waves"][0]["committed"].as_u64()), (Some("running"), Some(0)));

    // Four devices enroll and report while the seeder serves (another process writes).
    ok(&["fleet-test-ingest", "--repo", &repo, "--devices", "4", "--reports", "8", "--enroll"]);
    let live = test_procs::eventually("the API's rollout status to count the reports", WAIT, || {
        let status = json(a, "GET", "/api/rollouts/gw", Some(READ), 200);
        let wave = &status["waves"][0];
        (wave["committed"] == 4 && wave["targeted"] == 4).then_some(status)
    })
    .unwrap();
    let replayed = ok(&["--json", "rollout", "status", "--repo", &repo, "gw"]);
    let replayed = serde_json::from_str::<Value>(&replayed).unwrap()[0].clone();
    assert_eq!(live["waves"], replayed["waves"], "the loop's counts and the database's replay agree");
    assert_eq!(live["sites"], replayed["sites"]);
    let site_targets: u64 = live["sites"].as_array().unwrap().iter().map(|s| s["targeted"].as_u64().unwrap()).sum();
    assert_eq!(site_targets, 4, "{live}");
    let listed = json(a, "GET", "/api/rollouts", Some(READ), 200);
    assert_eq!(listed["rollouts"][0]["waves"], live["waves"]);

    // A pause is in the very next answer, before the loop's next pass, and keeps the counts.
    json(a, "POST", "/api/rollouts/gw/pause", Some(OPERATOR), 200);
    let paused = json(a, "GET", "/api/rollouts/gw", Some(READ), 200);
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["waves"][0]["committed"], 4, "{paused}");
    assert_eq!(paused["sites"], live["sites"]);
}

#[test]
fn a_token_file_others_can_read_stops_the_seeder_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_str().unwrap().to_string();
    ok(&["init", "--repo", &repo]);
    let tokens = tokens_file(dir.path(), 0o644);
    let out = seeder(&[
        "serve",
        "--repo",
        &repo,
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--no-mdns",
        "--http-listen",
        "127.0.0.1:0",
        "--api-tokens",
        &tokens,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("readable by other users") && stderr.contains("chmod 600"), "{stderr}");
    let out = seeder(&["serve", "--repo", &repo, "--http-listen", "127.0.0.1:0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--api-tokens"));
}

/// Every `otamesh_seeder_*` metric the committed Grafana dashboard queries is one a real
/// seeder exports (the edge node's names are checked in edge-node/src/metrics.rs).
#[test]
fn the_grafana_dashboard_uses_only_metrics_the_seeder_exports() {
    let s = served();
    let (status, metrics) = http(s.http, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    let exported: std::collections::BTreeSet<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/grafana/otamesh.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut used = std::collections::BTreeSet::new();
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if let (true, Some(mut rest)) =
                        (matches!(key.as_str(), "expr" | "query" | "definition"), v.as_str())
                    {
                        while let Some(at) = rest.find("otamesh_") {
                            let len = rest[at..]
                                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                .unwrap_or(rest.len() - at);
                            used.insert(rest[at..at + len].to_string());
                            rest = &rest[at + len..];
                        }
                    }
                    stack.push(v);
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    let seeder: Vec<&String> = used.iter().filter(|n| n.starts_with("otamesh_seeder_")).collect();
    assert!(seeder.len() >= 8, "the dashboard shows the seeder: {used:?}");
    for name in seeder {
        assert!(
            exported.contains(name.as_str()),
            "{} queries {name}, which the seeder does not export: {exported:?}",
            path.display()
        );
    }
}
