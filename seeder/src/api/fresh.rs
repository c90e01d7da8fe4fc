//! Answers the API computes from the whole fleet (how many devices match a filter, the
//! overview's counts) kept for a few seconds, because at a million devices each costs tens
//! to hundreds of milliseconds of SQLite and the dashboard asks again on every refresh.
//!
//! An answer is exact while the fleet's data version (the newest device and status-report
//! ids, [`crate::fleet::query::data_version`]) has not moved: it is served however old it
//! is. Once the data moved, it is served for [`MAX_AGE`] more and then computed again, so
//! under a steady ingest a figure lags by at most that long and each filter costs one
//! computation per [`MAX_AGE`], whatever the request rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an answer is served after the data under it changed.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// Answers kept at most; past that the oldest half is dropped (filters are the callers'
/// choice, so the map must not grow with them).
const MAX_ENTRIES: usize = 1024;

/// The data version an answer was computed at: `(newest device id, newest report id)`.
pub type Version = (i64, i64);

/// A map from a question to its last answer, the time and the data version it was computed
/// at.
pub struct Fresh<K, V> {
    entries: Mutex<HashMap<K, (V, Instant, Version)>>,
}

impl<K, V> Default for Fresh<K, V> {
    fn default() -> Self {
        Fresh { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Fresh<K, V> {
    /// The answer to `key` at data version `now_version`: the kept one if still good,
    /// otherwise `compute`'s (kept for next time). Two callers that miss at once both
    /// compute; each computation is bounded and the later one wins.
    pub fn get<E>(&self, key: &K, now_version: Version, compute: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some((value, at, version)) = self.lock().get(key) {
            if *version == now_version || at.elapsed() < MAX_AGE {
                return Ok(value.clone());
            }
        }
        let value = compute()?;
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = entries.values().map(|(_, at, _)| *at).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            entries.retain(|_, (_, at, _)| *at > cutoff);
        }
        entries.insert(key.clone(), (value.clone(), Instant::now(), now_version));
        Ok(value)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant, Version)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cache: &Fresh<&'static str, u64>, key: &'static str, version: Version, value: u64) -> u64 {
        cache.get(&key, version, || Ok::<_, ()>(value)).unwrap()
    }

    #[test]
    fn an_answer_is_kept_while_the_data_is_unchanged_and_for_a_while_after() {
        let cache = Fresh::default();
        assert_eq!(answer(&cache, "all", (1, 1), 10), 10);
        assert_eq!(answer(&cache, "all", (1, 1), 11), 10, "same data: the kept answer");
        assert_eq!(answer(&cache, "all", (2, 5), 12), 10, "changed, but younger than MAX_AGE");
        assert_eq!(answer(&cache, "site", (2, 5), 3), 3, "another question is computed");
        // An answer older than MAX_AGE under changed data is computed again.
        cache.lock().get_mut("all").unwrap().1 = Instant::now() - MAX_AGE;
        assert_eq!(answer(&cache, "all", (2, 5), 12), 12);
        // However old, an answer over unchanged data stands.
        cache.lock().get_mut("all").unwrap().1 = Instant::now() - MAX_AGE * 10;
        assert_eq!(answer(&cache, "all", (2, 5), 13), 12);
    }

    #[test]
    fn a_failed_computation_keeps_nothing_and_the_map_stays_bounded() {
        let cache: Fresh<u64, u64> = Fresh::default();
        assert!(cache.get(&1, (0, 0), || Err("no database")).is_err());
        assert!(cache.lock().is_empty());
        for key in 0..(MAX_ENTRIES as u64 * 3) {
            cache.get(&key, (0, 0), || Ok::<_, ()>(key)).unwrap();
        }
        assert!(cache.lock().len() <= MAX_ENTRIES);
    }
}
