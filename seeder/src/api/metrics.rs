//! `GET /metrics`: the fleet and its rollouts in Prometheus' text format, computed from the
//! fleet database at each scrape (grouped queries: the cost does not grow with devices, only
//! with the number of distinct sites, releases and states).
//!
//! - `otamesh_seeder_rollout_controller_leader`: 1 on the replica that runs the rollout
//!   controller (`fleet::lease`), 0 on the others.
//! - `otamesh_seeder_devices{site,release,version,state}`: devices by what they last
//!   reported (`state="never-reported"` for the silent ones).
//! - `otamesh_seeder_rollout_*{rollout}`: current wave, targeted, installing, committed,
//!   rolled back, failed, the failure ratio over final outcomes, the state and the current
//!   wave's gate decision (as a label of a 1-valued series).
//! - `otamesh_seeder_anomaly{kind,group_by,group}`: 1 for each flagged group (`kind`
//!   failure_rate or install_duration, `group_by` site or hw_class; see `fleet::anomaly`);
//!   no series when nothing stands out.
//! - `otamesh_seeder_reports_total{outcome}`: status reports the ingestor decided on since
//!   the seeder started (accepted, unenrolled, replayed, bad-signature, malformed,
//!   not-stored).
//! - `otamesh_seeder_origin_chunks_total{answer}`: chunks edge nodes asked the origin for,
//!   by answer (`handed-out`: a new copy left the origin; `retry`: the same requester again
//!   within its window; `busy`: handed to another site for now; `untracked`: served past the
//!   table's bound), and `otamesh_seeder_origin_handouts_tracked`, chunks in the table now.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::error::{ApiError, ApiResult};
use super::ApiState;
use crate::fleet;
use crate::repo::Repo;

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<ApiState>) -> ApiResult<impl IntoResponse> {
    let counts = state.fleet.counts();
    let text = tokio::task::spawn_blocking(move || render(&state, counts))
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("task failed: {e}")))?
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

fn render(state: &ApiState, counts: fleet::ingest::IngestCounts) -> anyhow::Result<String> {
    let mut out = String::new();
    let (handout, tracked) = crate::origin::handout_figures(&state.handout);
    out += "# HELP otamesh_seeder_origin_chunks_total Chunks edge nodes asked the origin for, by answer.\n";
    out += "# TYPE otamesh_seeder_origin_chunks_total counter\n";
    for (answer, n) in [
        ("handed-out", handout.handed_out),
        ("retry", handout.retries),
        ("busy", handout.deferred),
        ("untracked", handout.untracked),
    ] {
        let _ = writeln!(out, "otamesh_seeder_origin_chunks_total{{answer=\"{answer}\"}} {n}");
    }
    out += "# HELP otamesh_seeder_origin_handouts_tracked Chunks the origin's handout table holds now.\n";
    out += "# TYPE otamesh_seeder_origin_handouts_tracked gauge\n";
    let _ = writeln!(out, "otamesh_seeder_origin_handouts_tracked {tracked}");
    out += "# HELP otamesh_seeder_rollout_controller_leader 1 if this replica runs the rollout controller (holds the lease), else 0.\n";
    out += "# TYPE otamesh_seeder_rollout_controller_leader gauge\n";
    let _ = writeln!(out, "otamesh_seeder_rollout_controller_leader {}", u8::from(state.rollouts.leading()));
    out += "# HELP otamesh_seeder_devices Enrolled devices by what they last reported.\n";
    out += "# TYPE otamesh_seeder_devices gauge\n";
    if let Some(conn) = fleet::open_read(&fleet::location(&state.repo))? {
        let rows = conn.query(
            "SELECT d.site, coalesce(s.release, ''), coalesce(s.version, ''), coalesce(s.state, 'never-reported'),
                    count(*)
             FROM devices d LEFT JOIN device_state s ON s.device = d.id
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            &[],
            |row| {
                Ok((
                    row.get::<String>(0)?,
                    row.get::<String>(1)?,
                    row.get::<String>(2)?,
                    row.get::<String>(3)?,
                    row.get::<i64>(4)?,
                ))
            },
        )?;
        for (site, release, version, st, n) in rows {
            let _ = writeln!(
                out,
                "otamesh_seeder_devices{{site=\"{}\",release=\"{}\",version=\"{}\",state=\"{}\"}} {n}",
                label(&site),
                label(&release),
                label(&version),
                label(&st)
            );
        }
    }
    // From the controller loop's board (a replay of every outcome per scrape takes seconds at a
    // million devices).
    let rollouts = state.rollouts.status(&Repo::at(&state.repo), None)?;
    for (name, help) in [
        ("current_wave", "Index of the wave the rollout is in."),
        ("targeted", "Enrolled devices the rollout's current waves target."),
        ("installing", "Devices whose latest outcome is installing."),
        ("committed", "Devices that committed the release."),
        ("rolled_back", "Devices that rolled the release back."),
        ("failed", "Devices whose install failed before the switch."),
        ("failure_ratio", "Failures over final outcomes (0 before any)."),
    ] {
        let _ =
            writeln!(out, "# HELP otamesh_seeder_rollout_{name} {help}\n# TYPE otamesh_seeder_rollout_{name} gauge");
        for r in &rollouts {
            let totals = r.sites.iter().fold((0u32, 0u32, 0u32, 0u32, 0u32), |t, s| {
                let c = &s.counts;
                (t.0 + s.targeted, t.1 + c.installing, t.2 + c.committed, t.3 + c.rolled_back, t.4 + c.failed)
            });
            let finals = totals.2 + totals.3 + totals.4;
            let value = match name {
                "current_wave" => r.current_wave as f64,
                "targeted" => totals.0 as f64,
                "installing" => totals.1 as f64,
                "committed" => totals.2 as f64,
                "rolled_back" => totals.3 as f64,
                "failed" => totals.4 as f64,
                _ if finals == 0 => 0.0,
                _ => (totals.3 + totals.4) as f64 / finals as f64,
            };
            let _ = writeln!(out, "otamesh_seeder_rollout_{name}{{rollout=\"{}\"}} {value}", label(&r.id));
        }
    }
    out += "# HELP otamesh_seeder_rollout_info The rollout's state and its current wave's gate decision.\n";
    out += "# TYPE otamesh_seeder_rollout_info gauge\n";
    for r in &rollouts {
        let gate = r.waves.get(r.current_wave).map_or("", |w| w.gate.as_str());
        let _ = writeln!(
            out,
            "otamesh_seeder_rollout_info{{rollout=\"{}\",release=\"{}\",version=\"{}\",state=\"{}\",gate=\"{}\"}} 1",
            label(&r.id),
            label(&r.release),
            label(&r.version),
            label(&r.state),
            label(gate)
        );
    }
    out += "# HELP otamesh_seeder_anomaly A site or hardware class whose failure rate or install duration stands out (1).\n";
    out += "# TYPE otamesh_seeder_anomaly gauge\n";
    for a in &state.anomalies.get(&fleet::location(&state.repo))?.flags {
        let _ = writeln!(
            out,
            "otamesh_seeder_anomaly{{kind=\"{}\",group_by=\"{}\",group=\"{}\"}} 1",
            a.kind.name(),
            a.group_by.name(),
            label(&a.group)
        );
    }
    out += "# HELP otamesh_seeder_reports_total Status reports decided by the ingestor since start.\n";
    out += "# TYPE otamesh_seeder_reports_total counter\n";
    for (outcome, n) in [
        ("accepted", counts.accepted),
        ("unenrolled", counts.unenrolled),
        ("replayed", counts.replayed),
        ("bad-signature", counts.bad_signature),
        ("malformed", counts.malformed),
        ("not-stored", counts.not_stored),
    ] {
        let _ = writeln!(out, "otamesh_seeder_reports_total{{outcome=\"{outcome}\"}} {n}");
    }
    Ok(out)
}
