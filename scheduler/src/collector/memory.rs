//! An in-memory [`HeartbeatStore`] for the deterministic simulation and tests. Attempts are
//! registered by the caller (there is no attempts table), and every heartbeat stored for the
//! first time is also kept in arrival order so tests can check "each once, in order".

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::{AttemptAuth, CollectorError, HeartbeatStore, StoredHeartbeat};

#[derive(Debug, Default)]
struct Inner {
    attempts: HashMap<i64, AttemptAuth>,
    /// attempt → seq → heartbeat
    beats: HashMap<i64, BTreeMap<u64, StoredHeartbeat>>,
    /// (attempt, seq) in the order they were first stored.
    arrivals: Vec<(i64, u64)>,
    duplicates: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryHeartbeatStore {
    inner: Mutex<Inner>,
}

impl MemoryHeartbeatStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register (or replace) an attempt the collector should accept.
    pub fn put_attempt(&self, attempt: i64, auth: AttemptAuth) {
        self.lock().attempts.insert(attempt, auth);
    }

    /// Move the job's fence on (the attempt becomes stale).
    pub fn set_current_fence(&self, attempt: i64, fence: i64) {
        if let Some(a) = self.lock().attempts.get_mut(&attempt) {
            a.current_fence = fence;
        }
    }

    /// Mark an attempt ended (its agent gets "stop").
    pub fn end_attempt(&self, attempt: i64) {
        if let Some(a) = self.lock().attempts.get_mut(&attempt) {
            a.active = false;
        }
    }

    /// Stored heartbeats of an attempt, by seq.
    pub fn heartbeats(&self, attempt: i64) -> Vec<StoredHeartbeat> {
        self.lock()
            .beats
            .get(&attempt)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The newest stored heartbeat of an attempt (synchronous twin of `latest`).
    pub fn latest_heartbeat(&self, attempt: i64) -> Option<worker_agent::protocol::Heartbeat> {
        self.lock()
            .beats
            .get(&attempt)
            .and_then(|m| m.values().next_back())
            .map(|b| b.heartbeat.clone())
    }

    /// Seqs of an attempt in the order they were first stored.
    pub fn arrival_order(&self, attempt: i64) -> Vec<u64> {
        self.lock()
            .arrivals
            .iter()
            .filter(|(a, _)| *a == attempt)
            .map(|(_, s)| *s)
            .collect()
    }

    /// How many heartbeats arrived again after being stored.
    pub fn duplicates(&self) -> u64 {
        self.lock().duplicates
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HeartbeatStore for MemoryHeartbeatStore {
    fn attempts<'a>(
        &'a self,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<HashMap<i64, AttemptAuth>, CollectorError>> {
        let inner = self.lock();
        let out = ids
            .iter()
            .filter_map(|id| inner.attempts.get(id).map(|a| (*id, a.clone())))
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn store<'a>(
        &'a self,
        beats: &'a [StoredHeartbeat],
    ) -> BoxFuture<'a, Result<HashMap<i64, u64>, CollectorError>> {
        let mut inner = self.lock();
        let mut touched = Vec::new();
        for b in beats {
            let (attempt, seq) = (b.heartbeat.attempt, b.heartbeat.seq);
            touched.push(attempt);
            match inner.beats.entry(attempt).or_default().entry(seq) {
                std::collections::btree_map::Entry::Occupied(_) => inner.duplicates += 1,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(b.clone());
                    inner.arrivals.push((attempt, seq));
                }
            }
        }
        let out = touched
            .into_iter()
            .map(|a| {
                let max = inner
                    .beats
                    .get(&a)
                    .and_then(|m| m.keys().next_back().copied())
                    .unwrap_or(0);
                (a, max)
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn latest(
        &self,
        attempt: i64,
    ) -> BoxFuture<'_, Result<Option<StoredHeartbeat>, CollectorError>> {
        let out = self
            .lock()
            .beats
            .get(&attempt)
            .and_then(|m| m.values().next_back().cloned());
        Box::pin(async move { Ok(out) })
    }
}
