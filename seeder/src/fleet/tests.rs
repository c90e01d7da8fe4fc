//! The fleet database on its own: enrollment, ingest decisions and counts, what `list`
//! shows, rollouts through the writer.

use super::bench::{device_enrollment, device_key, report, sign_payload, signed_report};
use super::enroll::{self, Enrollment};
use super::ingest::{IngestConfig, IngestCounts, Ingestor, Outcome};
use super::{query, rollouts};
use ed25519_dalek::Signer;
use std::path::PathBuf;

struct TestDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
    location: super::Location,
}

/// A database with made-up devices `0..enrolled` enrolled.
fn db(enrolled: u64) -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let path = super::db_path(dir.path());
    let devices: Vec<Enrollment> = (0..enrolled).map(device_enrollment).collect();
    let location = super::Location::Sqlite(path.clone());
    enroll::enroll(&super::open_write(&location).unwrap(), &devices, 1_800_000_000, |_, _| String::new()).unwrap();
    TestDb { _dir: dir, path, location }
}

fn reader(db: &TestDb) -> super::Db {
    super::open_read(&db.location).unwrap().unwrap()
}

#[test]
fn enrolled_reports_are_stored_and_every_kind_of_bad_one_is_dropped_and_counted() {
    let db = db(2);
    let ingestor = Ingestor::start(&db.location, IngestConfig::default()).unwrap();
    assert_eq!(ingestor.ingest(signed_report(0, 1)), Outcome::Accepted);
    assert_eq!(ingestor.ingest(signed_report(0, 2)), Outcome::Accepted);
    assert_eq!(ingestor.ingest(signed_report(1, 7)), Outcome::Accepted);
    // Device 5 is not enrolled.
    assert_eq!(ingestor.ingest(signed_report(5, 1)), Outcome::Unenrolled);
    // Replays: the same seq again, and an older one.
    assert_eq!(ingestor.ingest(signed_report(0, 2)), Outcome::Replayed { last_seq: 2 });
    assert_eq!(ingestor.ingest(signed_report(1, 3)), Outcome::Replayed { last_seq: 7 });
    // Forged: device 0's report signed by device 1's key; and a tampered one.
    let payload = serde_json::to_string(&report(&device_key(0), 9)).unwrap();
    assert_eq!(ingestor.ingest(sign_payload(&device_key(1), &payload)), Outcome::BadSignature);
    let tampered = String::from_utf8(signed_report(0, 10)).unwrap().replace("1.4.2", "6.6.6");
    assert_eq!(ingestor.ingest(tampered.into_bytes()), Outcome::BadSignature);
    // Malformed: not a report, too large, and a signed report whose rollout field has the
    // wrong type.
    assert_eq!(ingestor.ingest(b"{}".to_vec()), Outcome::Malformed);
    assert_eq!(ingestor.ingest(vec![b' '; 9000]), Outcome::Malformed);
    let mut value = serde_json::to_value(report(&device_key(0), 11)).unwrap();
    value["error_code"] = "E42".into();
    assert_eq!(ingestor.ingest(sign_payload(&device_key(0), &value.to_string())), Outcome::Malformed);

    // Every ingest above returned after its ack, and counts are bumped before the ack.
    assert_eq!(ingestor.counts().total(), 11);
    let counts = ingestor.shutdown();
    assert_eq!(
        counts,
        IngestCounts { accepted: 3, unenrolled: 1, replayed: 2, bad_signature: 2, malformed: 3, not_stored: 0 }
    );
    let conn = reader(&db);
    assert_eq!(query::event_count(&conn).unwrap(), 3);
    assert_eq!(query::event_seqs(&conn, &device_key(0).verifying_key().to_bytes()).unwrap(), vec![1, 2]);
    let rows = query::list_devices(&conn, None).unwrap();
    assert_eq!(rows.len(), 2);
    let state = rows[0].state.as_ref().unwrap();
    assert_eq!((rows[0].id.as_str(), state.last_seq, state.version.as_str()), ("dev-000000", 2, "1.4.2"));
    assert_eq!(state.rollout.as_deref(), Some("gw-1.4.2-r1"));
    assert_eq!(state.result.as_deref(), Some("committed"));
    assert_eq!(rows[1].state.as_ref().unwrap().last_seq, 7);
}

#[test]
fn a_report_without_the_rollout_fields_is_stored_with_them_empty() {
    let db = db(1);
    let key = device_key(0);
    let mut old = report(&key, 1);
    old.error = Some("verify".into());
    (old.rollout, old.result, old.error_code, old.install_secs, old.slot) = (None, None, None, None, None);
    let signed = old.to_signed(|m| key.sign(m).to_bytes());
    let ingestor = Ingestor::start(&db.location, IngestConfig::default()).unwrap();
    assert_eq!(ingestor.ingest(signed), Outcome::Accepted);
    drop(ingestor);
    let rows = query::list_devices(&reader(&db), None).unwrap();
    let state = rows[0].state.as_ref().unwrap();
    assert_eq!((state.rollout.as_ref(), state.error_code, state.error.as_deref()), (None, None, Some("verify")));
}

#[test]
fn a_devices_reports_keep_their_order_through_the_verify_pool() {
    // Many devices' reports in flight at once across 4 verify threads: were one device's
    // report n+1 stored before n, n would be refused as a replay.
    let db = db(20);
    let config = IngestConfig { verify_threads: 4, ..IngestConfig::default() };
    let ingestor = Ingestor::start(&db.location, config).unwrap();
    for seq in 1..=50 {
        for i in 0..20 {
            ingestor.submit(signed_report(i, seq), |_| {}).unwrap();
        }
        // A bad one now and then: its number must not stall the ones after it.
        ingestor.submit(b"not a report".to_vec(), |_| {}).unwrap();
    }
    let counts = ingestor.shutdown();
    assert_eq!((counts.accepted, counts.replayed, counts.malformed), (1000, 0, 50));
    let conn = reader(&db);
    assert_eq!(
        query::event_seqs(&conn, &device_key(3).verifying_key().to_bytes()).unwrap(),
        (1..=50).collect::<Vec<_>>()
    );
}

#[test]
fn enrolling_a_key_or_id_twice_enrolls_nothing() {
    let db = db(2);
    let conn = super::open_write(&db.location).unwrap();
    let fresh = device_enrollment(10);
    let same_id = Enrollment { device_id: "dev-000001".into(), ..device_enrollment(11) };
    let err = enroll::enroll(&conn, &[fresh.clone(), same_id], 0, |i, field| format!("line {} {field}: ", i + 1))
        .unwrap_err();
    assert_eq!(format!("{err:#}"), "line 2 id: `dev-000001` is already enrolled; nothing was enrolled");
    let same_key = Enrollment { device_id: "other".into(), ..device_enrollment(0) };
    let err = enroll::enroll(&conn, &[fresh, same_key], 0, |_, _| String::new()).unwrap_err();
    assert!(format!("{err:#}").contains("is already enrolled as `dev-000000`"), "{err:#}");
    assert_eq!(query::list_devices(&conn, None).unwrap().len(), 2);
}

/// A writer's transaction reads before it writes (enrollment checks for duplicates first). If
/// it only took the write lock at its first write, another process committing in between —
/// `seeder serve` ingesting reports while `seeder devices enroll` runs — would make it fail at
/// once with "database is locked" instead of waiting its turn on the busy timeout.
#[test]
fn a_writers_transaction_holds_the_write_lock_from_its_begin() {
    let db = db(1);
    let writer = super::open_write(&db.location).unwrap();
    let other = rusqlite::Connection::open(&db.path).unwrap();
    other.busy_timeout(std::time::Duration::ZERO).unwrap();
    writer
        .transaction(|tx| {
            let enrolled: i64 = tx.query_one("SELECT count(*) FROM devices", &[], |row| row.get(0))?;
            assert_eq!(enrolled, 1);
            let err = other.execute_batch("BEGIN IMMEDIATE").unwrap_err();
            assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy), "{err}");
            Ok(())
        })
        .unwrap();
    other.execute_batch("BEGIN IMMEDIATE; COMMIT").unwrap();
    // Opening for writing again (which checks the schema version under the write lock) works
    // while the database is in use.
    super::open_write(&db.location).unwrap();
}

#[test]
fn keys_that_are_not_ed25519_public_keys_are_refused() {
    assert!(enroll::parse_key(&"ab".repeat(31)).is_err());
    assert!(enroll::parse_key(&"zz".repeat(32)).is_err());
    let err = enroll::parse_key_arg("no-such-file").unwrap_err();
    assert!(format!("{err:#}").contains("neither 64 hex digits"), "{err:#}");
    let good = protocol::hex::encode(device_key(0).verifying_key().as_bytes());
    assert_eq!(enroll::parse_key(&good).unwrap(), device_key(0).verifying_key().to_bytes());
}

#[test]
fn rollouts_change_state_through_the_writer_by_compare_and_set() {
    let db = db(0);
    let ingestor = Ingestor::start(&db.location, IngestConfig::default()).unwrap();
    let new = rollouts::NewRollout {
        id: "r1".into(),
        release_name: "gw".into(),
        release_version: "1.4.2".into(),
        hw_class: "imx8".into(),
        state: "pending".into(),
        policy_seq: 1,
        policy: b"{policy}".to_vec(),
    };
    let create = new.clone();
    ingestor.write(move |conn| rollouts::create(conn, &create, 100)).unwrap();
    assert!(ingestor.write(move |conn| rollouts::create(conn, &new, 100)).is_err());
    ingestor
        .write(|conn| {
            let change = rollouts::Change {
                from: "pending",
                to: "wave",
                wave: 1,
                policy: Some((2, b"{p2}")),
                reason: "started",
            };
            rollouts::transition(conn, "r1", &change, 200)
        })
        .unwrap();
    // Not in `pending` any more: refused, and nothing of it is kept.
    let stale = ingestor.write(|conn| {
        let change = rollouts::Change { from: "pending", to: "halted", wave: 0, policy: None, reason: "x" };
        rollouts::transition(conn, "r1", &change, 300)
    });
    assert!(format!("{:#}", stale.unwrap_err()).contains("is `wave`, not `pending`"));
    drop(ingestor);
    let conn = reader(&db);
    let r = rollouts::get(&conn, "r1").unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.current_wave, r.policy_seq, r.policy.as_slice()), ("wave", 1, 2, &b"{p2}"[..]));
    let t = rollouts::transitions(&conn, "r1").unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from.as_str(), t[0].to.as_str(), t[0].at), ("pending", "wave", 200));
}

#[test]
fn a_database_from_a_newer_seeder_is_refused() {
    let db = db(0);
    super::open_write(&db.location).unwrap().as_sqlite().unwrap().pragma_update(None, "user_version", 99).unwrap();
    let err = super::open_write(&db.location).unwrap_err();
    assert!(format!("{err:#}").contains("newer than this seeder"), "{err:#}");
    assert!(super::open_read(&db.location).is_err());
}

/// The inventory: filters and paging in SQL, the inventory columns, a device's history.
#[test]
fn the_inventory_filters_pages_and_shows_history() {
    let db = db(8); // sites site-0..site-3, two devices each
    let ingestor = Ingestor::start(&db.location, IngestConfig::default()).unwrap();
    let sign = |i: u64, r: &protocol::status::StatusReport| r.to_signed(|m| device_key(i).sign(m).to_bytes());
    for seq in 1..=3 {
        assert_eq!(ingestor.ingest(sign(0, &report(&device_key(0), seq))), Outcome::Accepted);
    }
    let mut rolled_back = report(&device_key(1), 5);
    rolled_back.state = "rolled-back".into();
    rolled_back.version = "1.4.1".into();
    rolled_back.error = Some("health-check-failed".into());
    rolled_back.target = Some(protocol::status::ReportTarget { version: "1.4.2".into(), id: "ab".repeat(32) });
    assert_eq!(ingestor.ingest(sign(1, &rolled_back)), Outcome::Accepted);
    assert_eq!(ingestor.ingest(sign(2, &report(&device_key(2), 1))), Outcome::Accepted);
    ingestor.shutdown();
    let conn = reader(&db);
    let find = |f: query::DeviceFilter<'_>| {
        let page = query::find_devices(&conn, &f).unwrap();
        (page.total, page.devices.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
    };
    let all = query::DeviceFilter::default();
    assert_eq!(find(all).0, 8);
    assert_eq!(
        find(query::DeviceFilter { site: Some("site-1"), ..all }),
        (2, vec!["dev-000001".into(), "dev-000005".into()])
    );
    assert_eq!(
        find(query::DeviceFilter { release: Some("gw@1.4.2"), ..all }),
        (2, vec!["dev-000000".into(), "dev-000002".into()])
    );
    assert_eq!(find(query::DeviceFilter { release: Some("gw"), ..all }).0, 3);
    assert_eq!(find(query::DeviceFilter { state: Some("rolled-back"), ..all }), (1, vec!["dev-000001".into()]));
    assert_eq!(find(query::DeviceFilter { state: Some("never-reported"), ..all }).0, 5);
    assert_eq!(find(query::DeviceFilter { id_contains: Some("0000_"), ..all }).0, 0, "no LIKE wildcards");
    assert_eq!(find(query::DeviceFilter { id_contains: Some("-00000"), ..all }).0, 8);
    // Staleness: nothing reported before an hour ago, so only the never-reported are stale;
    // a cut in the future makes every device stale.
    let now = crate::time::now_unix();
    assert_eq!(find(query::DeviceFilter { stale_before: Some(now - 3600), ..all }).0, 5);
    assert_eq!(find(query::DeviceFilter { stale_before: Some(now + 60), ..all }).0, 8);
    // Paging: the total is all matches; pages are in id order and do not overlap.
    let page = |offset| find(query::DeviceFilter { limit: 3, offset, ..all });
    assert_eq!(page(0), (8, vec!["dev-000000".into(), "dev-000001".into(), "dev-000002".into()]));
    assert_eq!(page(6), (8, vec!["dev-000006".into(), "dev-000007".into()]));
    assert_eq!(page(100), (8, vec![]));
    // Keyset paging: each page starts past the id the previous one ended with; with a
    // filter, the pages hold exactly the filtered devices, in order.
    for filter in [all, query::DeviceFilter { state: Some("never-reported"), ..all }] {
        let (total, every) = find(filter);
        let (mut walked, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = find(query::DeviceFilter { limit: 2, after: after.as_deref(), ..filter });
            assert_eq!(page.0, total, "the total ignores paging");
            if page.1.is_empty() {
                break;
            }
            after = page.1.last().cloned();
            walked.extend(page.1);
        }
        assert_eq!(walked, every);
    }
    assert_eq!(find(query::DeviceFilter { after: Some("dev-000006"), ..all }).1, vec!["dev-000007".to_string()]);
    // The count joins the latest states only when a condition needs them, and agrees.
    assert_eq!(query::count_devices(&conn, &query::DeviceFilter { site: Some("site-1"), ..all }).unwrap(), 2);
    assert_eq!(query::count_devices(&conn, &query::DeviceFilter { state: Some("never-reported"), ..all }).unwrap(), 5);

    let (row, history) = query::show_device(&conn, "dev-000001", 10).unwrap().unwrap();
    let state = row.state.unwrap();
    assert_eq!(
        (state.active_slot.as_deref(), state.security_floor, state.target_version.as_deref(), state.error.as_deref()),
        (Some("b"), Some(3), Some("1.4.2"), Some("health-check-failed"))
    );
    let (by_key, history0) =
        query::show_device(&conn, &protocol::hex::encode(device_key(0).verifying_key().as_bytes()), 2)
            .unwrap()
            .unwrap();
    assert_eq!(by_key.id, "dev-000000");
    assert_eq!(history0.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2], "newest first, limited");
    assert_eq!(history.len(), 1);
    assert!(query::show_device(&conn, "no-such-device", 10).unwrap().is_none());
    // Staleness as the inventory marks it.
    let listed = super::inventory::Listed::new(&by_key, now, 3600);
    assert!(!listed.stale && listed.last_report_age_secs.is_some_and(|a| a < 3600));
    let never =
        query::find_devices(&conn, &query::DeviceFilter { state: Some("never-reported"), limit: 1, ..all }).unwrap();
    assert!(super::inventory::Listed::new(&never.devices[0], now, 3600).stale);
}

#[test]
fn a_deep_offset_from_an_anchor_is_the_same_page_as_walking_there() {
    let db = db(0);
    super::bench::populate(&db.location, 3, 1100, 1, "gw-1.4.2", "gw-1.4.1").unwrap();
    let conn = reader(&db);
    for filter in
        [query::DeviceFilter::default(), query::DeviceFilter { site: Some("site-0001"), ..Default::default() }]
    {
        let anchors = query::offset_anchors(&conn, &filter).unwrap();
        let total = query::count_devices(&conn, &filter).unwrap();
        assert_eq!(anchors.len() as u64, total / query::ANCHOR_STRIDE);
        for offset in [0, 1, 999, 1000, 1001, 1099, 1100, 1999, 2000, 3000, 3299, 3300, 5000] {
            let walked = query::page_of_devices(&conn, &query::DeviceFilter { limit: 7, offset, ..filter }).unwrap();
            let anchored = match query::from_anchor(&anchors, offset) {
                Some((after, rest)) => query::DeviceFilter { limit: 7, offset: rest, after: Some(after), ..filter },
                None => query::DeviceFilter { limit: 7, offset, ..filter },
            };
            assert_eq!(query::page_of_devices(&conn, &anchored).unwrap(), walked, "offset {offset}");
        }
    }
    assert!(
        query::offset_anchors(&conn, &query::DeviceFilter { state: Some("committed"), ..Default::default() }).is_err()
    );
    let anchors = ["a".to_string(), "b".to_string()];
    assert_eq!(query::from_anchor(&anchors, 999), None);
    assert_eq!(query::from_anchor(&anchors, 1000), Some(("a", 0)));
    assert_eq!(query::from_anchor(&anchors, 2500), Some(("b", 500)));
    assert_eq!(query::from_anchor(&anchors, 5000), Some(("b", 3000)), "past the last anchor: skip the rest");
    assert_eq!(query::from_anchor(&[], 5000), None);
}

/// The same fleet written to SQLite and to a real PostgreSQL server (Debian's, started for
/// the test) reads the same through every query the CLI, the API and the controller use:
/// the one SQL text means the same on both engines. Skipped, saying why, without PostgreSQL.
#[test]
fn the_same_fleet_reads_the_same_on_sqlite_and_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_pg, postgres)) = postgres_fleet(dir.path()) else { return };
    let engines = [super::Location::Sqlite(super::db_path(dir.path())), postgres];
    let now = 1_800_000_000;
    let mut seen: Option<Vec<serde_json::Value>> = None;
    for location in &engines {
        // 1,200 devices (anchors every 1,000), 5 % never reported, one failing site.
        super::bench::populate_at(location, (4, 300, 2), "gw-1.4.2-r1", "gw-1.4.1-r1", now).unwrap();
        let extra: Vec<Enrollment> = (0..3).map(device_enrollment).collect();
        let conn = super::open_write(location).unwrap();
        enroll::enroll(&conn, &extra, now, |_, _| String::new()).unwrap();
        let dup = enroll::enroll(&conn, &extra[..1], now, |_, _| String::new()).unwrap_err();
        super::edges::record_batch(&conn, "peer-a", "site-0001", 5, 4, now).unwrap();
        super::edges::record_batch(&conn, "peer-a", "", 2, 2, now + 1).unwrap();
        drop(conn);
        let ingestor = Ingestor::start(location, IngestConfig::default()).unwrap();
        let outcomes = [
            ingestor.ingest(signed_report(0, 1)),
            ingestor.ingest(signed_report(0, 2)),
            ingestor.ingest(signed_report(0, 2)),
            ingestor.ingest(signed_report(9, 1)),
            ingestor.ingest(signed_report(1, 5)),
        ];
        let create = rollouts::NewRollout {
            id: "r1".into(),
            release_name: "gw".into(),
            release_version: "1.4.2".into(),
            hw_class: "imx8".into(),
            state: "running".into(),
            policy_seq: 1,
            policy: vec![1, 2, 3],
        };
        ingestor.write(move |conn| rollouts::create(conn, &create, 100)).unwrap();
        let change = rollouts::Change { from: "running", to: "paused", wave: 1, policy: None, reason: "operator" };
        ingestor.write(move |conn| rollouts::transition(conn, "r1", &change, 200)).unwrap();
        let stale = ingestor.write(move |conn| rollouts::transition(conn, "r1", &change, 300)).unwrap_err();
        ingestor.shutdown();
        // The ingestor stamps reports with the real clock; pin them so both engines match.
        let conn = super::open_write(location).unwrap();
        let ingested = "SELECT id FROM devices WHERE device_id LIKE 'dev-%'";
        conn.execute(&format!("UPDATE status_events SET received_at = ?1 WHERE device IN ({ingested})"), &[&now])
            .unwrap();
        conn.execute(&format!("UPDATE device_state SET updated_at = ?1 WHERE device IN ({ingested})"), &[&now])
            .unwrap();
        drop(conn);

        let conn = reader(&db_of(location));
        let all = query::DeviceFilter { limit: 25, ..Default::default() };
        let filters = [
            all,
            query::DeviceFilter { site: Some("site-0002"), ..all },
            query::DeviceFilter { release: Some("gw"), offset: 40, ..all },
            query::DeviceFilter { release: Some("gw@1.4.1"), ..all },
            query::DeviceFilter { state: Some("committed"), hw_class: Some("rpi4"), ..all },
            query::DeviceFilter { state: Some("never-reported"), ..all },
            query::DeviceFilter { stale_before: Some(now - 86_400), ..all },
            query::DeviceFilter { id_contains: Some("dev-01"), ..all },
            query::DeviceFilter { after: Some("site-0001-dev-0290"), ..all },
            query::DeviceFilter { offset: 1_190, ..all },
        ];
        let mut answers: Vec<serde_json::Value> =
            filters.iter().map(|f| serde_json::to_value(query::find_devices(&conn, f).unwrap()).unwrap()).collect();
        let anchors = query::offset_anchors(&conn, &query::DeviceFilter::default()).unwrap();
        assert_eq!(anchors.len(), 1, "{anchors:?}");
        let sites =
            |f: query::SiteFilter<'_>| serde_json::to_value(query::site_summaries(&conn, now - 3600, &f).unwrap());
        answers.extend([
            serde_json::to_value(&anchors).unwrap(),
            sites(query::SiteFilter::default()).unwrap(),
            sites(query::SiteFilter { name_contains: Some("0003"), limit: 1, ..Default::default() }).unwrap(),
            sites(query::SiteFilter { limit: 2, offset: 1, ..Default::default() }).unwrap(),
            serde_json::to_value(query::overview(&conn, now - 3600).unwrap()).unwrap(),
            serde_json::to_value(super::anomaly::find(&conn).unwrap()).unwrap(),
            serde_json::to_value(query::show_device(&conn, "site-0001-dev-0007", 5).unwrap()).unwrap(),
            serde_json::to_value(query::show_device(&conn, "dev-000000", 5).unwrap()).unwrap(),
            serde_json::to_value(super::edges::of_site(&conn, "site-0001", 10).unwrap()).unwrap(),
            serde_json::to_value(rollouts::get(&conn, "r1").unwrap()).unwrap(),
            serde_json::to_value(rollouts::transitions(&conn, "r1").unwrap()).unwrap(),
            serde_json::json!([format!("{outcomes:?}"), format!("{dup:#}"), format!("{stale:#}")]),
            serde_json::to_value(query::events_after(location, (0, 0), 5).unwrap()).unwrap(),
            serde_json::to_value(query::data_version(&conn).unwrap()).unwrap(),
        ]);
        // Not vacuous: the filters select something, and not everything (the total is
        // before paging, `after` included).
        for (i, page) in answers[..filters.len()].iter().enumerate() {
            let total = page["total"].as_u64().unwrap();
            assert!(total > 0 && (total < 1203 || [0, 8, 9].contains(&i)), "filter {i} selects {total}");
        }
        match &seen {
            None => seen = Some(answers),
            Some(sqlite) => {
                for (i, (a, b)) in sqlite.iter().zip(&answers).enumerate() {
                    assert_eq!(a, b, "answer {i} differs between SQLite and PostgreSQL");
                }
            }
        }
    }
}

fn db_of(location: &super::Location) -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    TestDb { path: super::db_path(dir.path()), _dir: dir, location: location.clone() }
}

/// A PostgreSQL server started in `dir` with an empty database `fleet`; `None` (and why, on
/// stderr) where PostgreSQL is not installed.
fn postgres_fleet(dir: &std::path::Path) -> Option<(test_procs::postgres::Postgres, super::Location)> {
    if let Err(why) = test_procs::postgres::available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let pg = test_procs::postgres::Postgres::start(&dir.join("pg")).unwrap();
    pg.create_database("fleet").unwrap();
    let url = pg.url("fleet");
    Some((pg, super::Location::Postgres(url)))
}

/// Two replicas' ingestors on one PostgreSQL database, each given every report of the same
/// devices at once (an edge forwarding again after a fail-over), while a reader follows the
/// events by id as the rollout controller and the event stream do: every report is stored
/// once, each device ends at its newest, and the reader misses none.
#[test]
fn two_ingestors_on_one_postgresql_store_each_report_once_and_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_pg, location)) = postgres_fleet(dir.path()) else { return };
    const DEVICES: u64 = 20;
    const SEQS: u64 = 30;
    let devices: Vec<Enrollment> = (0..DEVICES).map(device_enrollment).collect();
    enroll::enroll(&super::open_write(&location).unwrap(), &devices, 0, |_, _| String::new()).unwrap();
    let reports: Vec<Vec<u8>> = (1..=SEQS).flat_map(|seq| (0..DEVICES).map(move |i| signed_report(i, seq))).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (outcomes, followed) = std::thread::scope(|scope| {
        let follower = scope.spawn(|| {
            let (mut cursor, mut seen) = ((0, 0), Vec::new());
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = query::events_after(&location, cursor, 50).unwrap();
                // Once the writers are done, read on to the end: a reader that lagged by more
                // than a page when they finished has pages left, not missed events.
                if finished && page.is_empty() {
                    return seen;
                }
                for (_, at, _) in page {
                    cursor = at;
                    seen.push(at.0);
                }
            }
        });
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let (location, reports) = (&location, &reports);
                scope.spawn(move || {
                    let ingestor =
                        Ingestor::start(location, IngestConfig { max_batch: 16, ..Default::default() }).unwrap();
                    let (tx, rx) = std::sync::mpsc::channel();
                    for signed in reports {
                        let tx = tx.clone();
                        ingestor.submit(signed.clone(), move |outcome| tx.send(outcome).unwrap()).unwrap();
                    }
                    drop(tx);
                    ingestor.shutdown();
                    rx.iter().collect::<Vec<Outcome>>()
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = replicas.into_iter().flat_map(|r| r.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (outcomes, follower.join().unwrap())
    });
    let accepted = outcomes.iter().filter(|o| **o == Outcome::Accepted).count() as u64;
    let replayed = outcomes.iter().filter(|o| matches!(o, Outcome::Replayed { .. })).count() as u64;
    assert_eq!((accepted, replayed), (DEVICES * SEQS, DEVICES * SEQS), "each report stored by one replica");
    let conn = super::open_read(&location).unwrap().unwrap();
    let stored: (i64, i64) = conn
        .query_one("SELECT count(*), count(DISTINCT (device, seq)) FROM status_events", &[], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(stored, ((DEVICES * SEQS) as i64, (DEVICES * SEQS) as i64));
    let newest: Vec<i64> = conn.query("SELECT last_seq FROM device_state", &[], |r| r.get(0)).unwrap();
    assert_eq!(newest, vec![SEQS as i64; DEVICES as usize], "every device at its newest report");
    assert_eq!(followed.len() as u64, DEVICES * SEQS, "the reader following by id missed events");
}

/// The server drops every session (a restart, a fail-over, an administrator): the ingestor
/// refuses what was in flight and stores the next reports over a new connection.
#[test]
fn the_ingestor_connects_again_after_postgresql_drops_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_pg, location)) = postgres_fleet(dir.path()) else { return };
    let devices: Vec<Enrollment> = (0..2).map(device_enrollment).collect();
    enroll::enroll(&super::open_write(&location).unwrap(), &devices, 0, |_, _| String::new()).unwrap();
    let ingestor = Ingestor::start(&location, IngestConfig::default()).unwrap();
    assert_eq!(ingestor.ingest(signed_report(0, 1)), Outcome::Accepted);
    let admin = super::open_write(&location).unwrap();
    let dropped = admin
        .query_one(
            "SELECT CAST(count(pg_terminate_backend(pid)) AS BIGINT) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
            |r| r.get::<i64>(0),
        )
        .unwrap();
    assert!(dropped >= 1, "the ingestor's session was not found");
    let first = ingestor.ingest(signed_report(0, 2));
    assert!(matches!(first, Outcome::Accepted | Outcome::NotStored), "{first:?}");
    assert_eq!(ingestor.ingest(signed_report(0, 3)), Outcome::Accepted, "stored over a new connection");
    assert_eq!(ingestor.ingest(signed_report(1, 1)), Outcome::Accepted);
    drop(admin);
    ingestor.shutdown();
    let conn = super::open_read(&location).unwrap().unwrap();
    let expected = if first == Outcome::Accepted { vec![1, 2, 3] } else { vec![1, 3] };
    assert_eq!(query::event_seqs(&conn, &device_key(0).verifying_key().to_bytes()).unwrap(), expected);
}
