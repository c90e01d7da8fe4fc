//! Scale-out on PostgreSQL: a real server from the Debian package (its own cluster, a Unix
//! socket in the test's directory, no TCP), two `seeder serve` replicas on one fleet
//! database and one repository, reports ingested by another process. Both replicas answer
//! with the same fleet; exactly one runs the rollout controller, and when it is killed the
//! other takes over within seconds; when the server drops every session, the replicas
//! connect again and one leads again. Skipped, saying why, where PostgreSQL is not installed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use test_procs::postgres::Postgres;
use test_procs::Proc;

mod support;
use support::{http, json, repo_with_release, seeder_ok as ok, serve_api_with, tokens_file, OPERATOR, READ, WAIT};

/// Whether the replica at `addr` says it runs the rollout controller (its /metrics gauge).
fn leading(addr: SocketAddr) -> Option<bool> {
    let (status, body) = http(addr, "GET", "/metrics", None, None);
    let text = String::from_utf8(body).ok().filter(|_| status == 200)?;
    let line = text.lines().find(|l| l.starts_with("otamesh_seeder_rollout_controller_leader "))?;
    Some(line.ends_with(" 1"))
}

/// Waits until exactly one of `replicas` leads; its index.
fn the_one_leader(replicas: &[SocketAddr]) -> usize {
    test_procs::eventually("exactly one replica to run the rollout controller", WAIT, || {
        let leads: Vec<bool> = replicas.iter().map(|&a| leading(a).unwrap_or(false)).collect();
        (leads.iter().filter(|&&l| l).count() == 1).then(|| leads.iter().position(|&l| l).unwrap())
    })
    .unwrap()
}

#[test]
fn two_replicas_share_one_fleet_and_one_runs_the_controller_handing_over_when_killed() {
    if let Err(why) = test_procs::postgres::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg")).unwrap();
    pg.create_database("fleet").unwrap();
    let url = pg.url("fleet");
    let db = ["--database", url.as_str()];

    let repo = repo_with_release(dir.path(), 50_000, 8);
    // Enough reports asked per wave that the controller does not decide during the test; the
    // id `fleet-test-ingest`'s reports carry.
    let start = ["rollout", "start", "--repo", &repo, "gw", "1.4.2", "--waves", "100", "--min-reports", "1000"];
    ok(&[&db[..], &start[..], &["--id", "gw-1.4.2-r1"]].concat());
    let tokens = tokens_file(dir.path(), 0o600);
    let (a, a_http) = serve_api_with(&repo, &tokens, &db);
    let (b, b_http) = serve_api_with(&repo, &tokens, &db);
    let mut replicas: Vec<Option<Proc>> = vec![Some(a), Some(b)];
    let http = [a_http, b_http];
    let leader = the_one_leader(&http);

    // Another process enrolls devices and stores their reports in the shared database.
    ok(&[&db[..], &["fleet-test-ingest", "--repo", &repo, "--devices", "4", "--reports", "8", "--enroll"]].concat());
    for &addr in &http {
        let devices = json(addr, "GET", "/api/devices?limit=10", Some(READ), 200);
        assert_eq!(devices["total"], 4, "{devices}");
        // Every replica tracks the rollout (the followers too), so each answers from memory.
        test_procs::eventually("each replica's rollout status to count the reports", WAIT, || {
            let status = json(addr, "GET", "/api/rollouts/gw", Some(READ), 200);
            (status["waves"][0]["committed"] == 4).then_some(())
        })
        .unwrap();
    }
    let listed = ok(&[&db[..], &["--json", "devices", "list", "--repo", &repo]].concat());
    assert_eq!(serde_json::from_str::<serde_json::Value>(&listed).unwrap()["total"], 4, "{listed}");

    // An operator's pause through the follower is recorded in the shared database.
    let follower = 1 - leader;
    json(http[follower], "POST", "/api/rollouts/gw/pause", Some(OPERATOR), 200);
    for &addr in &http {
        let status = json(addr, "GET", "/api/rollouts/gw", Some(READ), 200);
        assert_eq!(status["state"], "paused", "{status}");
    }
    let resumed = json(http[leader], "POST", "/api/rollouts/gw/resume", Some(OPERATOR), 200);
    assert_eq!(resumed["state"], "running", "{resumed}");

    // The leader dies without a goodbye; the other takes the lease within seconds.
    let killed = Instant::now();
    replicas[leader].as_mut().unwrap().kill();
    let took_over = test_procs::eventually("the other replica to take over the controller", WAIT, || {
        leading(http[follower]).unwrap_or(false).then(Instant::now)
    })
    .unwrap();
    let handover = took_over - killed;
    eprintln!("controller handed over {:.1} s after the leader was killed", handover.as_secs_f64());
    assert!(handover < Duration::from_secs(10), "hand-over took {handover:?}");

    // The survivor still serves the shared fleet, and a new replica joins as a follower.
    let devices = json(http[follower], "GET", "/api/devices?limit=10", Some(READ), 200);
    assert_eq!(devices["total"], 4, "{devices}");
    let (_c, c_http) = serve_api_with(&repo, &tokens, &db);
    assert_eq!(the_one_leader(&[http[follower], c_http]), 0, "the survivor keeps the lease");

    // The server drops every session (a restart, a fail-over): the lease is taken again by
    // one replica, and both answer from new connections.
    let dropped = pg
        .psql(
            "fleet",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = 'fleet' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    assert!(dropped.trim().parse::<u32>().unwrap() >= 2, "sessions dropped: {dropped}");
    the_one_leader(&[http[follower], c_http]);
    for addr in [http[follower], c_http] {
        let devices = json(addr, "GET", "/api/devices?limit=10", Some(READ), 200);
        assert_eq!(devices["total"], 4, "{devices}");
    }
    drop(replicas);
}
