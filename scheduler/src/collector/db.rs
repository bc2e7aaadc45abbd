//! The [`HeartbeatStore`] on the real store (SQLite or PostgreSQL through sea-orm).
//!
//! One flush = one attempts lookup (`attempts` left-joined to `jobs` for the current fence) and one
//! write transaction with two multi-row statements: `INSERT … ON CONFLICT (attempt_id, seq) DO
//! NOTHING` into the history and an upsert of the newest heartbeat per attempt that only moves
//! forward (`WHERE attempt_progress.last_seq < excluded.last_seq`), then a read of the stored
//! maxima for the acks. Both statements are plain SQL both backends accept.

use std::collections::HashMap;

use futures::future::BoxFuture;
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};

use super::{AttemptAuth, CollectorError, HeartbeatStore, StoredHeartbeat, newest_per_attempt};
use crate::store::{AttemptState, Store};
use worker_agent::protocol::{Heartbeat, JobState};

/// Rows per INSERT statement (7 binds each; well under SQLite's 32,766 and PG's 65,535).
const ROWS_PER_STATEMENT: usize = 1_000;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct DbHeartbeatStore {
    store: Store,
}

impl DbHeartbeatStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn state_str(s: JobState) -> &'static str {
    match s {
        JobState::Starting => "starting",
        JobState::Running => "running",
        JobState::Stopping => "stopping",
        JobState::Exited => "exited",
    }
}

fn seq_i64(hb: &Heartbeat) -> i64 {
    i64::try_from(hb.seq).unwrap_or(i64::MAX)
}

impl HeartbeatStore for DbHeartbeatStore {
    fn attempts<'a>(
        &'a self,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<HashMap<i64, AttemptAuth>, CollectorError>> {
        Box::pin(async move {
            // One round trip, only the columns needed (the job row is wide).
            let mut q = Query::select();
            q.column(("attempts", "id"))
                .column(("attempts", "token_hash"))
                .column(("attempts", "fence"))
                .column(("attempts", "state"))
                .column(("attempts", "ended_at"))
                .expr_as(Expr::col(("jobs", "fence")), "current_fence")
                .from("attempts")
                .left_join(
                    "jobs",
                    Expr::col(("jobs", "id")).equals(("attempts", "job_id")),
                )
                .and_where(Expr::col(("attempts", "id")).is_in(ids.iter().copied()));
            let rows = self.store.db().query_all(&q).await?;
            let mut out = HashMap::with_capacity(rows.len());
            for r in rows {
                let id: i64 = r.try_get("", "id")?;
                let state: String = r.try_get("", "state")?;
                let ended_at: Option<i64> = r.try_get("", "ended_at")?;
                let auth = AttemptAuth {
                    token_hash: r.try_get("", "token_hash")?,
                    fence: r.try_get("", "fence")?,
                    // A missing job cannot have this attempt current.
                    current_fence: r
                        .try_get::<Option<i64>>("", "current_fence")?
                        .unwrap_or(i64::MIN),
                    active: ended_at.is_none() && state == AttemptState::Running.as_str(),
                };
                out.insert(id, auth);
            }
            Ok(out)
        })
    }

    fn store<'a>(
        &'a self,
        beats: &'a [StoredHeartbeat],
    ) -> BoxFuture<'a, Result<HashMap<i64, u64>, CollectorError>> {
        Box::pin(async move {
            let txn = self
                .store
                .begin_write()
                .await
                .map_err(|e| CollectorError::Store(e.to_string()))?;
            for chunk in beats.chunks(ROWS_PER_STATEMENT) {
                let mut q = Query::insert();
                q.into_table("agent_heartbeats").columns([
                    "attempt_id",
                    "seq",
                    "job_id",
                    "sent_at",
                    "received_at",
                    "state",
                    "body",
                ]);
                for b in chunk {
                    let hb = &b.heartbeat;
                    let body = serde_json::to_string(hb)
                        .map_err(|e| CollectorError::Store(e.to_string()))?;
                    q.values_panic([
                        hb.attempt.into(),
                        seq_i64(hb).into(),
                        hb.job_id.into(),
                        hb.time_ms.into(),
                        b.received_at.into(),
                        state_str(hb.state).into(),
                        body.into(),
                    ]);
                }
                q.on_conflict(
                    OnConflict::columns(["attempt_id", "seq"])
                        .do_nothing()
                        .to_owned(),
                );
                txn.execute(&q).await?;
            }

            let newest = newest_per_attempt(beats);
            let newest: Vec<&StoredHeartbeat> = newest.values().copied().collect();
            for chunk in newest.chunks(ROWS_PER_STATEMENT / 2) {
                let mut q = Query::insert();
                q.into_table("attempt_progress").columns([
                    "attempt_id",
                    "job_id",
                    "last_seq",
                    "sent_at",
                    "received_at",
                    "state",
                    "step",
                    "total",
                    "metrics",
                    "last_checkpoint",
                    "exit_code",
                    "body",
                ]);
                for b in chunk {
                    let hb = &b.heartbeat;
                    let body = serde_json::to_string(hb)
                        .map_err(|e| CollectorError::Store(e.to_string()))?;
                    let metrics = (!hb.progress.metrics.is_empty())
                        .then(|| serde_json::to_string(&hb.progress.metrics).unwrap_or_default());
                    q.values_panic([
                        hb.attempt.into(),
                        hb.job_id.into(),
                        seq_i64(hb).into(),
                        hb.time_ms.into(),
                        b.received_at.into(),
                        state_str(hb.state).into(),
                        hb.progress
                            .step
                            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
                            .into(),
                        hb.progress
                            .total
                            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
                            .into(),
                        metrics.into(),
                        hb.last_checkpoint.as_ref().map(|c| c.path.clone()).into(),
                        hb.exit.as_ref().and_then(|e| e.code).into(),
                        body.into(),
                    ]);
                }
                q.on_conflict(
                    OnConflict::column("attempt_id")
                        .update_columns([
                            "job_id",
                            "last_seq",
                            "sent_at",
                            "received_at",
                            "state",
                            "step",
                            "total",
                            "metrics",
                            "last_checkpoint",
                            "exit_code",
                            "body",
                        ])
                        .action_and_where(
                            Expr::col(("attempt_progress", "last_seq"))
                                .lt(Expr::col(("excluded", "last_seq"))),
                        )
                        .to_owned(),
                );
                txn.execute(&q).await?;
            }

            let ids: Vec<i64> = newest.iter().map(|b| b.heartbeat.attempt).collect();
            let mut sel = Query::select();
            sel.columns(["attempt_id", "last_seq"])
                .from("attempt_progress")
                .and_where(Expr::col("attempt_id").is_in(ids));
            let rows = txn.query_all(&sel).await?;
            let mut out = HashMap::with_capacity(rows.len());
            for r in rows {
                let a: i64 = r.try_get("", "attempt_id")?;
                let s: i64 = r.try_get("", "last_seq")?;
                out.insert(a, u64::try_from(s).unwrap_or(0));
            }
            txn.commit().await?;
            Ok(out)
        })
    }

    fn latest(
        &self,
        attempt: i64,
    ) -> BoxFuture<'_, Result<Option<StoredHeartbeat>, CollectorError>> {
        Box::pin(async move {
            let mut sel = Query::select();
            sel.columns(["received_at", "body"])
                .from("attempt_progress")
                .and_where(Expr::col("attempt_id").eq(attempt));
            let Some(row) = self.store.db().query_one(&sel).await? else {
                return Ok(None);
            };
            let received_at: i64 = row.try_get("", "received_at")?;
            let body: String = row.try_get("", "body")?;
            let heartbeat = serde_json::from_str(&body).map_err(|e| {
                CollectorError::Store(format!(
                    "stored heartbeat of attempt {attempt} is unreadable: {e}"
                ))
            })?;
            Ok(Some(StoredHeartbeat {
                received_at,
                heartbeat,
            }))
        })
    }
}
