//! Untrusted device status reports (what any LAN client can send an edge node): the parser
//! never panics and stays within its size limit, a report that verifies round-trips through
//! its typed form, and the edge node's admission gate accepts it once and then refuses its
//! replay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::status::{verify, ReportError, ReportGate, ReportLimits, StatusReport, MAX_REPORT_BYTES};
use protocol::time::Instant;

fuzz_target!(|data: &[u8]| {
    let verified = verify(data);
    if data.len() > MAX_REPORT_BYTES {
        assert_eq!(verified, Err(ReportError::TooLarge));
    }
    // The typed form alone (what a collector reads after verification).
    if let Ok(report) = serde_json::from_slice::<StatusReport>(data) {
        let text = serde_json::to_string(&report).expect("a parsed report serializes");
        assert_eq!(serde_json::from_str::<StatusReport>(&text).expect("and parses again"), report);
    }
    if let Ok(report) = verified {
        let mut gate = ReportGate::new(ReportLimits::default());
        let seq = report.report.seq;
        assert_eq!(gate.admit(Instant(0), 1u8, report.clone()), Ok(()));
        assert_eq!(gate.admit(Instant(1), 1u8, report), Err(ReportError::Replay { last_seq: seq }));
    }
});
