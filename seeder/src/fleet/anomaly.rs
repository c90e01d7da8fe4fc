//! Anomaly flags: sites and hardware classes whose install failure rate or install duration
//! stands out against the rest of the fleet. The dashboard, `GET /api/anomalies` and the
//! `otamesh_seeder_anomaly` gauge show the same flags, computed here.
//!
//! What is compared, per device: the *latest* install result it reported (`device_state.
//! result`: committed, rolled-back or failed; installing counts for nothing) and the duration
//! of its last install (`device_state.install_secs`, kept until a report gives another). One
//! value per device, so a device that reports often weighs as much as one that reports
//! rarely.
//!
//! - **Failure rate** ([`failure_rate_flags`]): a group with `n` final results of which `f`
//!   failed (rolled back or failed) is tested against the failure rate `p` of the *rest* of
//!   the fleet (the group's own devices left out, so a large failing group cannot raise its
//!   own baseline): one-sided exact binomial test, `P(X ≥ f)` for `X ~ Binomial(n, p)`
//!   (`protocol::rollout::controller::binomial_upper_tail`, the controller's own test). A
//!   group is flagged when `n ≥` [`MIN_FINALS`], `f ≥` [`MIN_FAILURES`], `f/n > p` and the
//!   p-value is below [`FAILURE_ALPHA`] divided by the number of groups tested (Bonferroni:
//!   with 1,000 sites, chance alone would otherwise flag several).
//! - **Install duration** ([`duration_flags`]): the fleet's median `m` and median absolute
//!   deviation `MAD` of install seconds; a group's median `m_g` gets the robust z-score
//!   `0.6745 · (m_g − m) / MAD` (Iglewicz and Hoaglin's modified z-score, applied to the
//!   group's median). Flagged when `|z| ≥` [`DURATION_Z`] and the group has at least
//!   [`MIN_DURATIONS`] devices with a duration. When the MAD is 0 (most installs take the
//!   same time) the mean absolute deviation scaled by 1.2533 takes its place (`z = (m_g −
//!   m) / (1.2533 · MeanAD)`), as Iglewicz and Hoaglin advise; when that is 0 too, every
//!   install took the same time and nothing is flagged.
//!
//! Medians are exact: the database returns histograms (devices per whole second per group),
//! so memory is bounded by the number of distinct durations, not by devices.

use std::collections::BTreeMap;

use super::Db;
use anyhow::Result;
use serde::Serialize;

/// Fewest final results (committed, rolled back, failed) a group needs to be tested.
pub const MIN_FINALS: u64 = 20;
/// Fewest failures a flagged group has: a couple of failures is not a pattern.
pub const MIN_FAILURES: u64 = 3;
/// Family-wise false-flag rate of the failure test across one grouping's groups.
pub const FAILURE_ALPHA: f64 = 0.01;
/// Fewest devices with an install duration a group needs to be tested.
pub const MIN_DURATIONS: u64 = 10;
/// Robust z-score from which a group's median install duration is flagged.
pub const DURATION_Z: f64 = 3.5;

/// What is anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// More installs failed than the rest of the fleet explains.
    FailureRate,
    /// Installs took much longer (or shorter) than the fleet's.
    InstallDuration,
}

impl Kind {
    /// The name in JSON and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Kind::FailureRate => "failure_rate",
            Kind::InstallDuration => "install_duration",
        }
    }
}

/// How devices are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By site.
    Site,
    /// By hardware class.
    HwClass,
}

impl GroupBy {
    /// The name in JSON and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Site => "site",
            GroupBy::HwClass => "hw_class",
        }
    }
}

/// One flagged group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// What stands out.
    pub kind: Kind,
    /// How the group is formed.
    pub group_by: GroupBy,
    /// The site or hardware class.
    pub group: String,
    /// Devices the statistic is over (final results, or durations).
    pub devices: u64,
    /// The group's value: its failure rate (0 to 1), or its median install seconds.
    pub value: f64,
    /// What it is compared with: the rest of the fleet's failure rate, or the fleet's
    /// median install seconds.
    pub baseline: f64,
    /// The test's result: the p-value (failure rate), or the robust z-score (duration).
    pub score: f64,
    /// One line for people.
    pub summary: String,
}

/// One group's final install results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finals {
    /// The site or hardware class.
    pub group: String,
    /// Devices whose latest result is final (committed, rolled back, failed).
    pub finals: u64,
    /// Of those, rolled back or failed.
    pub failures: u64,
}

/// Devices per whole second of install duration.
pub type Histogram = BTreeMap<i64, u64>;

/// Every flag, with the fleet-wide figures they were measured against.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Anomalies {
    /// Failed over final results, fleet-wide (`None` before any final result).
    pub fleet_failure_rate: Option<f64>,
    /// The fleet's median install seconds (`None` before any duration).
    pub fleet_median_install_secs: Option<f64>,
    /// The fleet's median absolute deviation of install seconds.
    pub fleet_mad_install_secs: Option<f64>,
    /// Flagged groups: by kind, grouping, then most significant first.
    pub flags: Vec<Anomaly>,
}

/// Flags the groups whose failure rate the rest of the fleet does not explain (see the
/// module doc for the test).
pub fn failure_rate_flags(group_by: GroupBy, groups: &[Finals]) -> Vec<Anomaly> {
    let (all_finals, all_failures) =
        groups.iter().fold((0u64, 0u64), |(n, f), g| (n + g.finals, f + g.failures.min(g.finals)));
    let tested = groups.iter().filter(|g| g.finals >= MIN_FINALS).count().max(1);
    let alpha = FAILURE_ALPHA / tested as f64;
    let mut flags = Vec::new();
    for g in groups {
        let failures = g.failures.min(g.finals);
        let (rest_finals, rest_failures) = (all_finals - g.finals, all_failures - failures);
        if g.finals < MIN_FINALS || failures < MIN_FAILURES || rest_finals == 0 {
            continue;
        }
        let rate = failures as f64 / g.finals as f64;
        let baseline = rest_failures as f64 / rest_finals as f64;
        if rate <= baseline {
            continue;
        }
        let p_value = protocol::rollout::controller::binomial_upper_tail(failures, g.finals, baseline);
        if p_value < alpha {
            flags.push(Anomaly {
                kind: Kind::FailureRate,
                group_by,
                group: g.group.clone(),
                devices: g.finals,
                value: rate,
                baseline,
                score: p_value,
                summary: format!(
                    "{} {}: {failures} of {} installs failed ({:.1} %), the rest of the fleet {:.1} % ({})",
                    group_by.name(),
                    g.group,
                    g.finals,
                    rate * 100.0,
                    baseline * 100.0,
                    if p_value < 1e-12 { "p < 1e-12".to_string() } else { format!("p = {p_value:.1e}") }
                ),
            });
        }
    }
    flags.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.group.cmp(&b.group)));
    flags
}

/// The median of a histogram (the mean of the two middle values for an even count);
/// `None` if it is empty.
pub fn median(histogram: &Histogram) -> Option<f64> {
    let n: u64 = histogram.values().sum();
    if n == 0 {
        return None;
    }
    // The values at ranks (n-1)/2 and n/2 (0-based).
    let (lo_rank, hi_rank) = ((n - 1) / 2, n / 2);
    let (mut lo, mut seen) = (None, 0u64);
    for (&value, &count) in histogram {
        seen += count;
        if lo.is_none() && seen > lo_rank {
            lo = Some(value as f64);
        }
        if seen > hi_rank {
            return Some((lo.unwrap_or(value as f64) + value as f64) / 2.0);
        }
    }
    None
}

/// Median and mean of `|x − center|` over a histogram.
fn deviations(histogram: &Histogram, center: f64) -> (f64, f64) {
    let mut spread: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut sum, mut n) = (0.0, 0u64);
    for (&value, &count) in histogram {
        let d = (value as f64 - center).abs();
        // Deviations from a median are whole or half seconds: kept exactly as halves.
        *spread.entry((d * 2.0).round() as u64).or_default() += count;
        sum += d * count as f64;
        n += count;
    }
    let halves: Histogram = spread.into_iter().map(|(h, c)| (h as i64, c)).collect();
    (median(&halves).unwrap_or(0.0) / 2.0, if n == 0 { 0.0 } else { sum / n as f64 })
}

/// Flags the groups whose median install duration is far from the fleet's (see the module
/// doc); `fleet` is the whole fleet's histogram, `groups` each group's.
pub fn duration_flags(group_by: GroupBy, fleet: &Histogram, groups: &BTreeMap<String, Histogram>) -> Vec<Anomaly> {
    let Some(center) = median(fleet) else { return Vec::new() };
    let (mad, mean_ad) = deviations(fleet, center);
    // z = (m_g − m) / scale.
    let scale = if mad > 0.0 {
        mad / 0.6745
    } else if mean_ad > 0.0 {
        1.253_314 * mean_ad
    } else {
        return Vec::new();
    };
    let mut flags = Vec::new();
    for (group, histogram) in groups {
        let devices: u64 = histogram.values().sum();
        let Some(group_median) = median(histogram) else { continue };
        if devices < MIN_DURATIONS {
            continue;
        }
        let z = (group_median - center) / scale;
        if z.abs() >= DURATION_Z {
            flags.push(Anomaly {
                kind: Kind::InstallDuration,
                group_by,
                group: group.clone(),
                devices,
                value: group_median,
                baseline: center,
                score: z,
                summary: format!(
                    "{} {group}: median install {group_median:.0} s against the fleet's {center:.0} s (robust z = {z:.1}, {devices} devices)",
                    group_by.name()
                ),
            });
        }
    }
    flags.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()).then_with(|| a.group.cmp(&b.group)));
    flags
}

/// Every flag in the fleet database: by site and by hardware class, both kinds. Two grouped
/// queries over each device's latest state (about 2 s for a million devices on one core),
/// which is why the API keeps the result for a while (`api::AnomalyCache`).
pub fn find(conn: &Db) -> Result<Anomalies> {
    let mut finals: [BTreeMap<String, (u64, u64)>; 2] = Default::default();
    let rows = conn.query(
        "SELECT d.site, d.hw_class, count(*),
                CAST(sum(CASE WHEN s.result IN ('rolled-back', 'failed') THEN 1 ELSE 0 END) AS BIGINT)
         FROM device_state s JOIN devices d ON d.id = s.device
         WHERE s.result IN ('committed', 'rolled-back', 'failed')
         GROUP BY d.site, d.hw_class",
        &[],
        |row| Ok((row.get::<String>(0)?, row.get::<String>(1)?, row.get::<i64>(2)?, row.get::<Option<i64>>(3)?)),
    )?;
    let (mut fleet_finals, mut fleet_failures) = (0u64, 0u64);
    for (site, hw_class, n, failed) in rows {
        let (n, failed) = (n.max(0) as u64, failed.unwrap_or(0).max(0) as u64);
        fleet_finals += n;
        fleet_failures += failed;
        for (map, key) in finals.iter_mut().zip([site, hw_class]) {
            let entry = map.entry(key).or_default();
            entry.0 += n;
            entry.1 += failed;
        }
    }
    let mut durations: [BTreeMap<String, Histogram>; 2] = Default::default();
    let mut fleet = Histogram::new();
    let rows = conn.query(
        "SELECT d.site, d.hw_class, s.install_secs, count(*)
         FROM device_state s JOIN devices d ON d.id = s.device
         WHERE s.install_secs IS NOT NULL
         GROUP BY d.site, d.hw_class, s.install_secs",
        &[],
        |row| Ok((row.get::<String>(0)?, row.get::<String>(1)?, row.get::<i64>(2)?, row.get::<i64>(3)?)),
    )?;
    for (site, hw_class, secs, n) in rows {
        let n = n.max(0) as u64;
        *fleet.entry(secs).or_default() += n;
        for (map, key) in durations.iter_mut().zip([site, hw_class]) {
            *map.entry(key).or_default().entry(secs).or_default() += n;
        }
    }
    let mut flags = Vec::new();
    for ((group_by, finals), durations) in [GroupBy::Site, GroupBy::HwClass].into_iter().zip(finals).zip(&durations) {
        let groups: Vec<Finals> =
            finals.into_iter().map(|(group, (finals, failures))| Finals { group, finals, failures }).collect();
        flags.extend(failure_rate_flags(group_by, &groups));
        flags.extend(duration_flags(group_by, &fleet, durations));
    }
    flags.sort_by_key(|a| (a.kind, a.group_by));
    let center = median(&fleet);
    Ok(Anomalies {
        fleet_failure_rate: (fleet_finals > 0).then(|| fleet_failures as f64 / fleet_finals as f64),
        fleet_median_install_secs: center,
        fleet_mad_install_secs: center.map(|m| deviations(&fleet, m).0),
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finals(group: &str, finals: u64, failures: u64) -> Finals {
        Finals { group: group.into(), finals, failures }
    }

    fn flagged(flags: &[Anomaly]) -> Vec<&str> {
        flags.iter().map(|a| a.group.as_str()).collect()
    }

    #[test]
    fn a_failing_site_is_flagged_and_normal_ones_are_not() {
        // 200 sites with about 2 % failures (1 to 3 of 100 each), one with 15 of 100.
        let mut groups: Vec<Finals> = (0..200).map(|i| finals(&format!("site-{i:03}"), 100, 1 + i % 3)).collect();
        groups.push(finals("site-bad", 100, 15));
        // Small groups are not tested, however bad they look.
        groups.push(finals("site-tiny", 10, 9));
        let flags = failure_rate_flags(GroupBy::Site, &groups);
        assert_eq!(flagged(&flags), ["site-bad"], "{flags:#?}");
        let bad = &flags[0];
        assert_eq!((bad.kind, bad.group_by, bad.devices), (Kind::FailureRate, GroupBy::Site, 100));
        assert!((bad.value - 0.15).abs() < 1e-9 && bad.baseline < 0.025 && bad.score < 1e-6, "{bad:?}");
    }

    #[test]
    fn chance_alone_flags_nothing_and_a_uniformly_bad_fleet_flags_nothing() {
        // Every site at 3 of 100 except natural spread up to 6: below the corrected alpha.
        let groups: Vec<Finals> = (0..1000).map(|i| finals(&format!("s{i}"), 100, 1 + i % 6)).collect();
        assert!(failure_rate_flags(GroupBy::Site, &groups).is_empty());
        // A release failing everywhere alike: the rest of the fleet explains each site.
        let groups: Vec<Finals> = (0..50).map(|i| finals(&format!("s{i}"), 100, 40)).collect();
        assert!(failure_rate_flags(GroupBy::Site, &groups).is_empty());
        // One group only: nothing to compare with.
        assert!(failure_rate_flags(GroupBy::HwClass, &[finals("imx8", 1000, 900)]).is_empty());
    }

    #[test]
    fn failures_where_the_rest_of_the_fleet_has_none_are_flagged() {
        let groups = [finals("rpi4", 50, 6), finals("imx8", 5000, 0), finals("stm32", 800, 0)];
        let flags = failure_rate_flags(GroupBy::HwClass, &groups);
        assert_eq!(flagged(&flags), ["rpi4"]);
        assert_eq!(flags[0].baseline, 0.0);
    }

    fn histogram(values: impl IntoIterator<Item = (i64, u64)>) -> Histogram {
        values.into_iter().collect()
    }

    #[test]
    fn medians_of_histograms() {
        assert_eq!(median(&Histogram::new()), None);
        assert_eq!(median(&histogram([(5, 1)])), Some(5.0));
        assert_eq!(median(&histogram([(1, 1), (3, 1)])), Some(2.0));
        assert_eq!(median(&histogram([(1, 2), (3, 1)])), Some(1.0));
        assert_eq!(median(&histogram([(1, 1), (2, 1), (10, 2)])), Some(6.0));
        // MAD of 1,2,3,4,100 around 3: deviations 2,1,0,1,97 → 1.
        let h = histogram([(1, 1), (2, 1), (3, 1), (4, 1), (100, 1)]);
        assert_eq!(deviations(&h, 3.0).0, 1.0);
    }

    #[test]
    fn a_slow_hardware_class_is_flagged_and_normal_ones_are_not() {
        // Installs take 40 to 59 s across the fleet; class `slow` takes 150 to 169 s.
        let mut groups = BTreeMap::new();
        for class in ["imx8", "rpi4", "stm32"] {
            groups.insert(class.to_string(), histogram((40..60).map(|s| (s, 30))));
        }
        groups.insert("slow".to_string(), histogram((150..170).map(|s| (s, 2))));
        // Too few to judge.
        groups.insert("rare".to_string(), histogram([(900, 3)]));
        let mut fleet = Histogram::new();
        for h in groups.values() {
            for (&s, &n) in h {
                *fleet.entry(s).or_default() += n;
            }
        }
        let flags = duration_flags(GroupBy::HwClass, &fleet, &groups);
        assert_eq!(flagged(&flags), ["slow"], "{flags:#?}");
        assert_eq!(flags[0].kind, Kind::InstallDuration);
        assert!(flags[0].score > DURATION_Z && flags[0].value > 150.0, "{:?}", flags[0]);
    }

    #[test]
    fn identical_durations_use_the_mean_deviation_or_flag_nothing() {
        // 95 % of installs take exactly 60 s (MAD 0); a group at 300 s still stands out.
        let mut groups = BTreeMap::new();
        groups.insert("a".to_string(), histogram([(60, 950)]));
        groups.insert("b".to_string(), histogram([(300, 50)]));
        let fleet = histogram([(60, 950), (300, 50)]);
        assert_eq!(flagged(&duration_flags(GroupBy::Site, &fleet, &groups)), ["b"]);
        let same = histogram([(60, 100)]);
        let groups: BTreeMap<String, Histogram> = [("a".to_string(), same.clone())].into();
        assert!(duration_flags(GroupBy::Site, &same, &groups).is_empty());
    }

    #[test]
    fn flags_come_from_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let location = super::super::Location::Sqlite(super::super::db_path(dir.path()));
        let mut conn = super::super::open_write(&location).unwrap().into_sqlite().unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..600i64 {
            // A tenth of every site is of the slow class.
            let (site, class) = (format!("site-{}", i % 6), if (i / 6) % 10 == 0 { "slow" } else { "imx8" });
            tx.execute(
                "INSERT INTO devices (id, public_key, device_id, site, hw_class, enrolled_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                rusqlite::params![
                    i + 1,
                    blake3::hash(&i.to_le_bytes()).as_bytes().to_vec(),
                    format!("d{i}"),
                    site,
                    class
                ],
            )
            .unwrap();
            // site-5 fails a third of its installs, the rest about 1 %.
            let failed = if i % 6 == 5 { (i / 6) % 3 == 0 } else { i % 97 == 0 };
            let secs = if class == "slow" { 400 } else { 50 + i % 7 };
            tx.execute(
                "INSERT INTO device_state (device, last_seq, release, version, installed_id, state, result,
                                           updated_at, install_secs)
                 VALUES (?1, 1, 'gw', '1', '', 'committed', ?2, 0, ?3)",
                rusqlite::params![i + 1, if failed { "rolled-back" } else { "committed" }, secs],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let found = find(&super::super::Db::sqlite(conn)).unwrap();
        let summary: Vec<(Kind, GroupBy, &str)> =
            found.flags.iter().map(|a| (a.kind, a.group_by, a.group.as_str())).collect();
        assert_eq!(
            summary,
            [(Kind::FailureRate, GroupBy::Site, "site-5"), (Kind::InstallDuration, GroupBy::HwClass, "slow")],
            "{found:#?}"
        );
        assert_eq!(found.fleet_median_install_secs, Some(53.0));
    }
}
