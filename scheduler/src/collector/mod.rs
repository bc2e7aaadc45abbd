//! The heartbeat collector: the HTTP endpoint agents push heartbeats to.
//!
//! ```text
//! POST /v1/heartbeats   Authorization: Bearer <attempt token>   body: HeartbeatBatch
//!                       → 200 HeartbeatAck { ack_seq, action: continue | stop }
//! GET  /healthz         → 200 "ok"
//! ```
//!
//! Why it looks like this:
//! - **Idempotent by sequence number.** Agents replay their spool after an outage, so the same
//!   heartbeat may arrive twice; the store keeps each (attempt, seq) once and the ack says "all
//!   up to N are safe", which lets the agent forget them.
//! - **Per-attempt bearer tokens, stored hashed.** A token leaked from one instance only speaks
//!   for that attempt; the comparison of hashes is constant-time.
//! - **Fencing.** A heartbeat from an attempt whose fence is no longer the job's (the job was
//!   reclaimed, cancelled or moved on) is stored but answered with `stop`, so an old agent
//!   cannot keep burning a GPU on work nobody wants.
//! - **Batched writes.** Handlers only validate the request and hand it to one writer task over
//!   an mpsc queue; the writer takes everything that arrived within a few milliseconds and
//!   authenticates it with one query and stores it in one transaction. Thousands of agents then
//!   cost a handful of transactions per second instead of thousands.
//! - **A small [`HeartbeatStore`] trait** with the database implementation ([`DbHeartbeatStore`])
//!   and an in-memory one ([`MemoryHeartbeatStore`]), so the deterministic simulation can run the
//!   same collector logic without a database.

mod db;
mod memory;
mod migration;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};

pub use db::DbHeartbeatStore;
pub use memory::MemoryHeartbeatStore;
pub use migration::M0100CollectorHeartbeats;
pub use worker_agent::protocol::{
    Action, HEARTBEATS_PATH, Heartbeat, HeartbeatAck, HeartbeatBatch, PROTOCOL_VERSION,
};

use crate::clock::{EpochMs, SharedClock};

/// Migrations owned by the collector, composed into the store's migrator.
pub fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
    vec![Box::new(M0100CollectorHeartbeats)]
}

/// Mint a per-attempt bearer token: `(plaintext for the agent's spec, sha256 hex to store)`.
/// 32 bytes from the kernel's CSPRNG, hex-encoded.
pub fn mint_token() -> Result<(String, String), CollectorError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| CollectorError::Store(format!("cannot read /dev/urandom for a token: {e}")))?;
    let token = format!("vca_{}", hex::encode(bytes));
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// sha256 hex of a token (the same as `store::attempts::hash_token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Compare without an early exit, so response time does not reveal how many bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What went wrong in the collector.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectorError {
    #[error("heartbeat store failed: {0}")]
    Store(String),
    #[error("collector is shutting down")]
    Closed,
}

impl From<sea_orm::DbErr> for CollectorError {
    fn from(e: sea_orm::DbErr) -> Self {
        CollectorError::Store(e.to_string())
    }
}

/// What the collector needs to know about an attempt to judge its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptAuth {
    /// sha256 hex of its token; `None` means no token was minted (every request is refused).
    pub token_hash: Option<String>,
    /// The fence the attempt was started under.
    pub fence: i64,
    /// The job's fence now; different from `fence` means the attempt is stale.
    pub current_fence: i64,
    /// False once the attempt has ended (its agent should stop).
    pub active: bool,
}

impl AttemptAuth {
    fn wants_stop(&self, heartbeat_fence: i64) -> bool {
        !self.active || self.fence != self.current_fence || heartbeat_fence != self.current_fence
    }
}

/// A heartbeat as stored, with the collector's receive time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHeartbeat {
    pub received_at: EpochMs,
    pub heartbeat: Heartbeat,
}

/// Storage behind the collector. Implementations must store each (attempt, seq) at most once
/// and keep, per attempt, the heartbeat with the highest seq as "latest".
pub trait HeartbeatStore: Send + Sync + 'static {
    /// Look up the attempts named in a batch; unknown ids are simply absent.
    fn attempts<'a>(
        &'a self,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<HashMap<i64, AttemptAuth>, CollectorError>>;

    /// Store heartbeats (duplicates ignored), in one transaction where the backend has them.
    /// Returns, for every attempt in `beats`, the highest seq now stored.
    fn store<'a>(
        &'a self,
        beats: &'a [StoredHeartbeat],
    ) -> BoxFuture<'a, Result<HashMap<i64, u64>, CollectorError>>;

    /// The heartbeat with the highest seq for an attempt.
    fn latest(
        &self,
        attempt: i64,
    ) -> BoxFuture<'_, Result<Option<StoredHeartbeat>, CollectorError>>;
}

/// Tuning knobs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// How long the writer waits for more requests before flushing a batch.
    pub flush_interval: Duration,
    /// Most heartbeats per flush.
    pub max_batch: usize,
    /// Queue depth between handlers and the writer (back-pressure beyond it).
    pub queue_depth: usize,
    /// Most heartbeats in one request.
    pub max_request_heartbeats: usize,
    /// Flushes in flight at once: while one transaction commits, the next batch is gathered
    /// and written. One agent's requests are sequential (it waits for each ack), so batches in
    /// flight never race on one attempt's order; rows are written sorted to avoid deadlocks.
    pub max_concurrent_flushes: usize,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(5),
            max_batch: 2_000,
            queue_depth: 10_000,
            max_request_heartbeats: 500,
            max_concurrent_flushes: 4,
        }
    }
}

/// Counters for the benchmark and `/healthz`-style introspection.
#[derive(Debug, Default)]
pub struct CollectorStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub heartbeats: std::sync::atomic::AtomicU64,
    pub flushes: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
}

struct Work {
    attempt: i64,
    token_hash: String,
    beats: Vec<Heartbeat>,
    reply: oneshot::Sender<Result<HeartbeatAck, Reject>>,
}

#[derive(Debug, Clone)]
enum Reject {
    Unauthorized(String),
    Unavailable(String),
}

/// The collector's shared state: the queue to the writer task, the store, the clock.
#[derive(Clone)]
pub struct Collector {
    tx: mpsc::Sender<Work>,
    store: Arc<dyn HeartbeatStore>,
    config: Arc<CollectorConfig>,
    stats: Arc<CollectorStats>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Start the writer task (needs a tokio runtime). It ends when every `Collector` clone and
    /// router is dropped.
    pub fn new(
        store: Arc<dyn HeartbeatStore>,
        clock: SharedClock,
        config: CollectorConfig,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let stats = Arc::new(CollectorStats::default());
        let config = Arc::new(config);
        tokio::spawn(writer(
            rx,
            store.clone(),
            clock,
            config.clone(),
            stats.clone(),
        ));
        Self {
            tx,
            store,
            config,
            stats,
        }
    }

    /// The latest stored heartbeat of an attempt.
    pub async fn latest(&self, attempt: i64) -> Result<Option<StoredHeartbeat>, CollectorError> {
        self.store.latest(attempt).await
    }

    pub fn stats(&self) -> &CollectorStats {
        &self.stats
    }

    /// Submit a batch as if it came over HTTP (the simulation calls this directly).
    pub async fn submit(
        &self,
        token: &str,
        batch: HeartbeatBatch,
    ) -> Result<HeartbeatAck, SubmitError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.requests.fetch_add(1, Relaxed);
        if batch.heartbeats.len() > self.config.max_request_heartbeats {
            return Err(SubmitError::BadRequest(format!(
                "{} heartbeats in one request, at most {}",
                batch.heartbeats.len(),
                self.config.max_request_heartbeats
            )));
        }
        for hb in &batch.heartbeats {
            if hb.attempt != batch.attempt {
                return Err(SubmitError::BadRequest(format!(
                    "heartbeat seq {} names attempt {} in a batch for attempt {}",
                    hb.seq, hb.attempt, batch.attempt
                )));
            }
            if hb.protocol_version != PROTOCOL_VERSION {
                return Err(SubmitError::BadRequest(format!(
                    "protocol version {} is not supported (collector speaks {PROTOCOL_VERSION})",
                    hb.protocol_version
                )));
            }
        }
        let (reply, rx) = oneshot::channel();
        let work = Work {
            attempt: batch.attempt,
            token_hash: hash_token(token),
            beats: batch.heartbeats,
            reply,
        };
        self.tx
            .send(work)
            .await
            .map_err(|_| SubmitError::Unavailable("collector is shutting down".into()))?;
        match rx.await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(Reject::Unauthorized(why))) => {
                self.stats.rejected.fetch_add(1, Relaxed);
                Err(SubmitError::Unauthorized(why))
            }
            Ok(Err(Reject::Unavailable(why))) => Err(SubmitError::Unavailable(why)),
            Err(_) => Err(SubmitError::Unavailable("collector writer stopped".into())),
        }
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

async fn writer(
    mut rx: mpsc::Receiver<Work>,
    store: Arc<dyn HeartbeatStore>,
    clock: SharedClock,
    config: Arc<CollectorConfig>,
    stats: Arc<CollectorStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        config.max_concurrent_flushes.max(1),
    ));
    loop {
        // Take a flush slot first: while every slot is busy, requests pile up in the queue and
        // the next batch takes them all, so batches grow with the database's latency.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut works = vec![first];
        let mut count = works[0].beats.len();
        let deadline = tokio::time::Instant::now() + config.flush_interval;
        while count < config.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(w)) => {
                    count += w.beats.len();
                    works.push(w);
                }
                Ok(None) | Err(_) => break,
            }
        }
        stats.flushes.fetch_add(1, Relaxed);
        stats.heartbeats.fetch_add(count as u64, Relaxed);
        let (store, clock) = (store.clone(), clock.clone());
        tokio::spawn(async move {
            flush(&*store, &*clock, works).await;
            drop(permit);
        });
    }
}

async fn flush(store: &dyn HeartbeatStore, clock: &dyn crate::clock::Clock, works: Vec<Work>) {
    let mut ids: Vec<i64> = works.iter().map(|w| w.attempt).collect();
    ids.sort_unstable();
    ids.dedup();
    let auths = match store.attempts(&ids).await {
        Ok(a) => a,
        Err(e) => {
            for w in works {
                let _ = w.reply.send(Err(Reject::Unavailable(e.to_string())));
            }
            return;
        }
    };
    let now = clock.now_ms();
    let mut accepted: Vec<(Work, bool)> = Vec::with_capacity(works.len());
    let mut rows = Vec::new();
    for w in works {
        let ok = auths.get(&w.attempt).and_then(|a| {
            let stored = a.token_hash.as_deref()?;
            constant_time_eq(stored.as_bytes(), w.token_hash.as_bytes()).then_some(a)
        });
        let Some(auth) = ok else {
            // Same answer for "unknown attempt" and "wrong token": no probing for ids.
            let why = format!("no valid token for attempt {}", w.attempt);
            let _ = w.reply.send(Err(Reject::Unauthorized(why)));
            continue;
        };
        let stop = w.beats.iter().any(|h| auth.wants_stop(h.fence))
            || (w.beats.is_empty() && auth.wants_stop(auth.fence));
        rows.extend(w.beats.iter().map(|h| StoredHeartbeat {
            received_at: now,
            heartbeat: h.clone(),
        }));
        accepted.push((w, stop));
    }
    if accepted.is_empty() {
        return;
    }
    rows.sort_by_key(|r| (r.heartbeat.attempt, r.heartbeat.seq));
    let maxes = if rows.is_empty() {
        Ok(HashMap::new())
    } else {
        store.store(&rows).await
    };
    let maxes = match maxes {
        Ok(m) => m,
        Err(e) => {
            for (w, _) in accepted {
                let _ = w.reply.send(Err(Reject::Unavailable(e.to_string())));
            }
            return;
        }
    };
    for (w, stop) in accepted {
        let ack = HeartbeatAck {
            protocol_version: PROTOCOL_VERSION,
            attempt: w.attempt,
            ack_seq: maxes.get(&w.attempt).copied().unwrap_or(0),
            action: if stop { Action::Stop } else { Action::Continue },
        };
        let _ = w.reply.send(Ok(ack));
    }
}

/// Group heartbeats by attempt and pick the one with the highest seq of each (helper for stores).
pub fn newest_per_attempt(beats: &[StoredHeartbeat]) -> BTreeMap<i64, &StoredHeartbeat> {
    let mut out: BTreeMap<i64, &StoredHeartbeat> = BTreeMap::new();
    for b in beats {
        let e = out.entry(b.heartbeat.attempt).or_insert(b);
        if b.heartbeat.seq > e.heartbeat.seq {
            *e = b;
        }
    }
    out
}

fn error_response(status: StatusCode, msg: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn post_heartbeats(
    State(c): State<Collector>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return error_response(StatusCode::UNAUTHORIZED, "missing bearer token".into());
    };
    let batch: HeartbeatBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("body is not a heartbeat batch: {e}"),
            );
        }
    };
    match c.submit(token, batch).await {
        Ok(ack) => axum::Json(ack).into_response(),
        Err(SubmitError::BadRequest(m)) => error_response(StatusCode::BAD_REQUEST, m),
        Err(SubmitError::Unauthorized(m)) => error_response(StatusCode::UNAUTHORIZED, m),
        Err(SubmitError::Unavailable(m)) => error_response(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// The collector's routes.
pub fn router(state: Collector) -> Router {
    Router::new()
        .route(HEARTBEATS_PATH, post(post_heartbeats))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(state)
}

/// Serve the collector on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Collector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_hash_and_differ() {
        let (t1, h1) = mint_token().unwrap();
        let (t2, _) = mint_token().unwrap();
        assert_ne!(t1, t2);
        assert_eq!(hash_token(&t1), h1);
        assert_eq!(h1.len(), 64);
        assert!(!h1.contains(&t1[4..]));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn stop_when_stale_or_ended() {
        let a = AttemptAuth {
            token_hash: None,
            fence: 3,
            current_fence: 3,
            active: true,
        };
        assert!(!a.wants_stop(3));
        assert!(a.wants_stop(2));
        assert!(
            AttemptAuth {
                current_fence: 4,
                ..a.clone()
            }
            .wants_stop(3)
        );
        assert!(AttemptAuth { active: false, ..a }.wants_stop(3));
    }
}
