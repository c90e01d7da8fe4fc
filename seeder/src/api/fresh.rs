//! Answers the API computes from the whole fleet (how many devices match a filter, the
//! overview's counts) kept for a few seconds, because at a million devices each costs tens
//! to hundreds of milliseconds of SQLite and the dashboard asks again on every refresh.
//!
//! An answer is exact while the fleet's data version (the newest device and status-report
//! ids, [`crate::fleet::query::data_version`]) has not moved: it is served however old it
//! is. Once the data moved, an answer that was cheap to compute (under [`CHEAP`]: a small
//! fleet) is computed again at once, so small fleets always see exact figures; a costly one
//! is served for [`MAX_AGE`] more and then computed again, so
//! under a steady ingest a figure lags by at most that long and each filter costs one
//! computation per [`MAX_AGE`], whatever the request rate. [`Fresh::get`] computes again in
//! the request (cheap answers); [`Fresh::get_refreshed_behind`] answers with the old one and
//! computes on a thread of its own (answers that take a second at a million devices), so only
//! the very first caller waits.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a costly answer is served after the data under it changed.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// An answer computed faster than this is computed again whenever the data changed.
pub const CHEAP: Duration = Duration::from_millis(5);

/// Answers kept at most; past that the oldest half is dropped (filters are the callers'
/// choice, so the map must not grow with them).
const MAX_ENTRIES: usize = 1024;

/// The data version an answer was computed at: `(newest device id, newest report id)`.
pub type Version = (i64, i64);

/// An answer, when and at which data version it was computed, and how long that took.
struct Kept<V> {
    value: V,
    at: Instant,
    version: Version,
    took: Duration,
}

impl<V> Kept<V> {
    /// Whether it may be served at data version `now`.
    fn good_at(&self, now: Version) -> bool {
        self.version == now || (self.took >= CHEAP && self.at.elapsed() < MAX_AGE)
    }
}

/// A map from a question to its last answer, the time and the data version it was computed
/// at.
pub struct Fresh<K, V> {
    entries: Mutex<HashMap<K, Kept<V>>>,
    /// Questions a background thread is answering again.
    refreshing: Mutex<std::collections::HashSet<K>>,
}

impl<K, V> Default for Fresh<K, V> {
    fn default() -> Self {
        Fresh { entries: Mutex::new(HashMap::new()), refreshing: Mutex::default() }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Fresh<K, V> {
    /// The answer to `key` at data version `now_version`: the kept one if still good,
    /// otherwise `compute`'s (kept for next time). Two callers that miss at once both
    /// compute; each computation is bounded and the later one wins.
    pub fn get<E>(&self, key: &K, now_version: Version, compute: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some(kept) = self.lock().get(key) {
            if kept.good_at(now_version) {
                return Ok(kept.value.clone());
            }
        }
        self.compute_and_keep(key, now_version, compute)
    }

    fn compute_and_keep<E>(&self, key: &K, version: Version, compute: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        let started = Instant::now();
        let value = compute()?;
        let kept = Kept { value: value.clone(), at: Instant::now(), version, took: started.elapsed() };
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = entries.values().map(|k| k.at).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            entries.retain(|_, k| k.at > cutoff);
        }
        entries.insert(key.clone(), kept);
        Ok(value)
    }

    /// Like [`Fresh::get`], but an answer past its time is still returned, while one
    /// background thread per question computes the next (`compute` reads through its own
    /// connection). Only a question never answered, or a cheap one, is computed in the caller.
    pub fn get_refreshed_behind(
        self: &std::sync::Arc<Self>,
        key: &K,
        now_version: Version,
        compute: impl FnOnce() -> anyhow::Result<V> + Send + 'static,
    ) -> anyhow::Result<V>
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let kept = self.lock().get(key).map(|k| (k.value.clone(), k.good_at(now_version), k.took < CHEAP));
        match kept {
            Some((value, true, _)) => Ok(value),
            Some((value, false, false)) => {
                if self.refreshing.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
                    let (cache, key) = (std::sync::Arc::clone(self), key.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = cache.compute_and_keep(&key, now_version, compute) {
                            tracing::warn!("a fleet figure was not computed again: {e:#}");
                        }
                        cache.refreshing.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    });
                }
                Ok(value)
            }
            // Never answered, or cheap: computed now.
            _ => self.compute_and_keep(key, now_version, compute),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Kept<V>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cache: &Fresh<&'static str, u64>, key: &'static str, version: Version, value: u64) -> u64 {
        cache.get(&key, version, || Ok::<_, ()>(value)).unwrap()
    }

    /// Makes the kept answer to `key` look computed `ago`, in `took`.
    fn pretend<K: Hash + Eq + Clone, V: Clone>(cache: &Fresh<K, V>, key: &K, ago: Duration, took: Duration) {
        let mut entries = cache.lock();
        let kept = entries.get_mut(key).unwrap();
        kept.at = Instant::now() - ago;
        kept.took = took;
    }

    #[test]
    fn a_costly_answer_is_kept_while_the_data_is_unchanged_and_for_a_while_after() {
        let cache = Fresh::default();
        assert_eq!(answer(&cache, "all", (1, 1), 10), 10);
        pretend(&cache, &"all", Duration::ZERO, CHEAP * 2);
        assert_eq!(answer(&cache, "all", (1, 1), 11), 10, "same data: the kept answer");
        assert_eq!(answer(&cache, "all", (2, 5), 12), 10, "changed, but younger than MAX_AGE");
        assert_eq!(answer(&cache, "site", (2, 5), 3), 3, "another question is computed");
        // An answer older than MAX_AGE under changed data is computed again.
        pretend(&cache, &"all", MAX_AGE, CHEAP * 2);
        assert_eq!(answer(&cache, "all", (2, 5), 12), 12);
        // However old, an answer over unchanged data stands.
        pretend(&cache, &"all", MAX_AGE * 10, CHEAP * 2);
        assert_eq!(answer(&cache, "all", (2, 5), 13), 12);
    }

    #[test]
    fn a_cheap_answer_is_computed_again_as_soon_as_the_data_changed() {
        let cache = Fresh::default();
        assert_eq!(answer(&cache, "all", (1, 1), 10), 10);
        pretend(&cache, &"all", Duration::ZERO, Duration::ZERO);
        assert_eq!(answer(&cache, "all", (1, 1), 11), 10, "same data: the kept answer");
        assert_eq!(answer(&cache, "all", (1, 2), 12), 12, "changed: exact at once");
        let behind: std::sync::Arc<Fresh<u8, u64>> = std::sync::Arc::default();
        behind.get_refreshed_behind(&0, (1, 1), || Ok(1)).unwrap();
        pretend(&behind, &0, Duration::ZERO, Duration::ZERO);
        assert_eq!(behind.get_refreshed_behind(&0, (1, 2), || Ok(2)).unwrap(), 2, "no waiting for a thread");
    }

    #[test]
    fn a_costly_answer_past_its_time_is_served_while_a_thread_computes_the_next() {
        let cache: std::sync::Arc<Fresh<u8, u64>> = std::sync::Arc::default();
        assert_eq!(cache.get_refreshed_behind(&0, (1, 1), || Ok(1)).unwrap(), 1, "the first caller computes");
        pretend(&cache, &0, Duration::ZERO, CHEAP * 2);
        assert_eq!(cache.get_refreshed_behind(&0, (2, 2), || Ok(2)).unwrap(), 1, "young enough");
        pretend(&cache, &0, MAX_AGE, CHEAP * 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let served = cache
            .get_refreshed_behind(&0, (2, 2), move || {
                tx.send(()).unwrap();
                Ok(2)
            })
            .unwrap();
        assert_eq!(served, 1, "the old answer at once");
        rx.recv_timeout(Duration::from_secs(10)).expect("the next answer is computed behind");
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.get_refreshed_behind(&0, (2, 2), || Ok(3)).unwrap() != 2 {
            assert!(Instant::now() < deadline, "the computed answer was never kept");
            std::thread::yield_now();
        }
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
