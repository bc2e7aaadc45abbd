//! The scheduler's side of the queue: claim with a lease and a fencing token, heartbeat,
//! advance, complete, fail, interrupt.
//!
//! Exclusivity: on PostgreSQL a claim is one statement whose row selection is `FOR UPDATE
//! SKIP LOCKED`, so concurrent claimers skip each other's rows instead of waiting or
//! double-claiming (a row changed by a claimer that committed after our snapshot is re-checked
//! by PostgreSQL before we lock it); the update and the journal entries are part of the same
//! statement, so one round trip claims a batch. On SQLite a claim is a `BEGIN IMMEDIATE`
//! transaction (select, update, journal), which serialises claimers on the write lock.
//!
//! Fencing: each claim increments the job's `fence` and returns it. Every later call about
//! that job must present it and changes nothing if the job has been reclaimed, cancelled or
//! finished since: a late answer from an old attempt cannot overwrite a newer one.
//!
//! Leases: a claim sets `lease_expires_at = now + lease_ms`; [`heartbeat`] extends it. A job
//! whose lease expired is claimable again (its open attempt is marked `lost`) while it has
//! attempts left; with none left, the next claim (or [`reap_expired`]) fails it.
//!
//! Retries: [`fail`] with `retryable` requeues with exponential backoff and deterministic
//! jitter (derived from the job id and attempt, so a simulation replays exactly).

use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::QueueError;
use super::sweep::SplitMix64;
use crate::clock::{Clock, EpochMs};
use crate::store::entity::{attempt, experiment, job};
use crate::store::events::{EntityKind, NewEvent, record_events};
use crate::store::{AttemptState, Backend, JobState, Store};

/// A job handed to a scheduler, with the fencing token to present for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub job: job::Model,
    pub fence: i64,
}

/// How a finished job ended.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub exit_code: Option<i32>,
    pub note: Option<String>,
}

/// Backoff for retryable failures: `min(initial · 2^(attempt-1), max)`, of which the last
/// `jitter` fraction is random (deterministic per job and attempt).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial_ms: i64,
    pub max_ms: i64,
    /// 0.0 (no jitter) ..= 1.0 (anywhere between 0 and the full delay).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_ms: 10_000,
            max_ms: 600_000,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` of job `job_id`.
    pub fn delay_ms(&self, job_id: i64, attempt: i32) -> i64 {
        let exp = attempt.clamp(1, 40) - 1;
        let base = (self.initial_ms as f64 * 2f64.powi(exp)).min(self.max_ms as f64);
        let mut rng = SplitMix64::new((job_id as u64).rotate_left(17) ^ attempt as u64 ^ 0x5EED);
        let jitter = self.jitter.clamp(0.0, 1.0);
        (base * (1.0 - jitter) + base * jitter * rng.next_f64()).round() as i64
    }
}

fn leased_states() -> impl Iterator<Item = &'static str> {
    JobState::LEASED.iter().map(|s| s.as_str())
}

fn lock_if_pg<Q: QuerySelect>(q: Q, backend: Backend) -> Q {
    match backend {
        Backend::Postgres => q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked),
        Backend::Sqlite => q,
    }
}

/// Claims up to `n` ready jobs for `owner` with a lease of `lease_ms`, highest priority first.
///
/// Ready means queued with `run_at <= now`, or leased with an expired lease and attempts left,
/// in an experiment that is not paused. Each claimed job moves to `placed` with a new fence.
pub async fn claim(
    store: &Store,
    n: u32,
    owner: &str,
    lease_ms: i64,
    clock: &dyn Clock,
) -> Result<Vec<ClaimedJob>, QueueError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let now = clock.now_ms();
    if store.backend() == Backend::Postgres {
        return claim_pg(store, n, owner, lease_ms, now).await;
    }
    let txn = store.begin_write().await?;
    reap_expired_in(&txn, store.backend(), owner, now).await?;

    let ready = Expr::col(job::Column::State)
        .eq(JobState::Queued.as_str())
        .and(Expr::col(job::Column::RunAt).lte(now))
        .or(Expr::col(job::Column::State)
            .is_in(leased_states())
            .and(Expr::col(job::Column::LeaseExpiresAt).lt(now))
            .and(Expr::col(job::Column::Attempts).lt(Expr::col(job::Column::MaxAttempts))));
    let paused = Query::select()
        .column(experiment::Column::Id)
        .from(experiment::Entity)
        .and_where(Expr::col(experiment::Column::Paused).eq(true))
        .to_owned();
    let q = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .column(job::Column::State)
        .column(job::Column::Fence)
        .column(job::Column::LeaseOwner)
        .filter(ready)
        .filter(job::Column::ExperimentId.not_in_subquery(paused))
        .order_by_desc(job::Column::Priority)
        .order_by_asc(job::Column::RunAt)
        .order_by_asc(job::Column::Id)
        .limit(u64::from(n));
    let picked: Vec<(i64, String, i64, Option<String>)> = lock_if_pg(q, store.backend())
        .into_tuple()
        .all(&txn)
        .await?;
    if picked.is_empty() {
        txn.commit().await?;
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = picked.iter().map(|p| p.0).collect();
    let mut claimed = job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(JobState::Placed.as_str()))
        .col_expr(job::Column::Fence, Expr::col(job::Column::Fence).add(1))
        .col_expr(
            job::Column::Attempts,
            Expr::col(job::Column::Attempts).add(1),
        )
        .col_expr(job::Column::LeaseOwner, Expr::value(owner))
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(now.saturating_add(lease_ms)),
        )
        .col_expr(job::Column::HeartbeatAt, Expr::value(now))
        .col_expr(job::Column::InstanceId, Expr::value(Option::<i64>::None))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.is_in(ids.clone()))
        .exec_with_returning(&txn)
        .await?;
    claimed.sort_by_key(|j| ids.iter().position(|id| *id == j.id));

    let reclaimed: Vec<i64> = picked
        .iter()
        .filter(|p| p.1 != JobState::Queued.as_str())
        .map(|p| p.0)
        .collect();
    if !reclaimed.is_empty() {
        close_open_attempts(
            &txn,
            &reclaimed,
            None,
            AttemptState::Lost,
            "lease expired; job reclaimed",
            now,
        )
        .await?;
    }
    let events = picked
        .iter()
        .map(|(id, from, fence, old_owner)| NewEvent {
            entity: EntityKind::Job,
            entity_id: *id,
            from: Some(from.clone()),
            to: JobState::Placed.as_str().to_string(),
            actor: owner.to_string(),
            reason: if from == JobState::Queued.as_str() {
                format!("claimed (fence {})", fence + 1)
            } else {
                format!(
                    "reclaimed after the lease of {} expired (fence {} -> {})",
                    old_owner.as_deref().unwrap_or("?"),
                    fence,
                    fence + 1
                )
            },
            at: now,
        })
        .collect();
    record_events(&txn, events).await?;
    txn.commit().await?;
    Ok(claimed
        .into_iter()
        .map(|job| ClaimedJob {
            fence: job.fence,
            job,
        })
        .collect())
}

/// The PostgreSQL claim as one statement (one round trip, no explicit transaction): reap
/// exhausted expired leases, pick ready rows `FOR UPDATE SKIP LOCKED`, update them, journal
/// both, and close the attempts whose lease was lost. Same effects as the SQLite path.
const CLAIM_PG: &str = r#"
WITH dead AS (
    SELECT id, state, attempts FROM jobs
    WHERE state IN ('placed', 'starting', 'running') AND lease_expires_at < $1
      AND attempts >= max_attempts
    FOR UPDATE SKIP LOCKED
), reaped AS (
    UPDATE jobs AS j SET state = 'failed', fence = j.fence + 1, lease_owner = NULL,
        lease_expires_at = NULL, last_error = 'lease expired with no attempts left',
        finished_at = $1, updated_at = $1
    FROM dead AS d WHERE j.id = d.id
    RETURNING j.id, d.state AS prev_state, d.attempts AS prev_attempts
), reaped_events AS (
    INSERT INTO events (entity, entity_id, from_state, to_state, actor, reason, at)
    SELECT 'job', id, prev_state, 'failed', $3,
        'lease expired after ' || prev_attempts || ' attempt(s), none left', $1
    FROM reaped
), picked AS (
    SELECT id, state, lease_owner FROM jobs
    WHERE ((state = 'queued' AND run_at <= $1)
        OR (state IN ('placed', 'starting', 'running') AND lease_expires_at < $1
            AND attempts < max_attempts))
      AND experiment_id NOT IN (SELECT id FROM experiments WHERE paused)
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs AS j SET state = 'placed', fence = j.fence + 1, attempts = j.attempts + 1,
        lease_owner = $3, lease_expires_at = $4, heartbeat_at = $1, instance_id = NULL,
        updated_at = $1
    FROM picked AS p WHERE j.id = p.id
    RETURNING j.*, p.state AS prev_state, p.lease_owner AS prev_owner
), claim_events AS (
    INSERT INTO events (entity, entity_id, from_state, to_state, actor, reason, at)
    SELECT 'job', id, prev_state, 'placed', $3,
        CASE WHEN prev_state = 'queued' THEN 'claimed (fence ' || fence || ')'
             ELSE 'reclaimed after the lease of ' || COALESCE(prev_owner, '?')
                  || ' expired (fence ' || (fence - 1) || ' -> ' || fence || ')' END,
        $1
    FROM claimed
), lost AS (
    UPDATE attempts SET state = 'lost', ended_at = $1,
        reason = CASE WHEN job_id IN (SELECT id FROM reaped) THEN 'lease expired'
                      ELSE 'lease expired; job reclaimed' END
    WHERE ended_at IS NULL
      AND (job_id IN (SELECT id FROM reaped)
           OR job_id IN (SELECT id FROM claimed WHERE prev_state <> 'queued'))
)
SELECT * FROM claimed ORDER BY priority DESC, run_at, id
"#;

async fn claim_pg(
    store: &Store,
    n: u32,
    owner: &str,
    lease_ms: i64,
    now: EpochMs,
) -> Result<Vec<ClaimedJob>, QueueError> {
    use sea_orm::{DbBackend, Statement};
    let stmt = Statement::from_sql_and_values(
        DbBackend::Postgres,
        CLAIM_PG,
        [
            now.into(),
            i64::from(n).into(),
            owner.into(),
            now.saturating_add(lease_ms).into(),
        ],
    );
    let rows = job::Entity::find()
        .from_raw_sql(stmt)
        .all(store.db())
        .await?;
    Ok(rows
        .into_iter()
        .map(|job| ClaimedJob {
            fence: job.fence,
            job,
        })
        .collect())
}

/// Fails leased jobs whose lease expired with no attempts left; returns their ids.
pub async fn reap_expired(store: &Store, clock: &dyn Clock) -> Result<Vec<i64>, QueueError> {
    let txn = store.begin_write().await?;
    let ids = reap_expired_in(&txn, store.backend(), "reaper", clock.now_ms()).await?;
    txn.commit().await?;
    Ok(ids)
}

async fn reap_expired_in<C: ConnectionTrait>(
    txn: &C,
    backend: Backend,
    actor: &str,
    now: EpochMs,
) -> Result<Vec<i64>, QueueError> {
    let q = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .column(job::Column::State)
        .column(job::Column::Attempts)
        .filter(job::Column::State.is_in(leased_states()))
        .filter(job::Column::LeaseExpiresAt.lt(now))
        .filter(Expr::col(job::Column::Attempts).gte(Expr::col(job::Column::MaxAttempts)));
    let dead: Vec<(i64, String, i32)> = lock_if_pg(q, backend).into_tuple().all(txn).await?;
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = dead.iter().map(|d| d.0).collect();
    job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(JobState::Failed.as_str()))
        .col_expr(job::Column::Fence, Expr::col(job::Column::Fence).add(1))
        .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            job::Column::LastError,
            Expr::value("lease expired with no attempts left"),
        )
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.is_in(ids.clone()))
        .exec(txn)
        .await?;
    close_open_attempts(txn, &ids, None, AttemptState::Lost, "lease expired", now).await?;
    record_events(
        txn,
        dead.iter()
            .map(|(id, from, attempts)| NewEvent {
                entity: EntityKind::Job,
                entity_id: *id,
                from: Some(from.clone()),
                to: JobState::Failed.as_str().to_string(),
                actor: actor.to_string(),
                reason: format!("lease expired after {attempts} attempt(s), none left"),
                at: now,
            })
            .collect(),
    )
    .await?;
    Ok(ids)
}

async fn close_open_attempts<C: ConnectionTrait>(
    txn: &C,
    job_ids: &[i64],
    fence: Option<i64>,
    state: AttemptState,
    reason: &str,
    now: EpochMs,
) -> Result<(), QueueError> {
    let mut q = attempt::Entity::update_many()
        .col_expr(attempt::Column::State, Expr::value(state.as_str()))
        .col_expr(attempt::Column::EndedAt, Expr::value(now))
        .col_expr(attempt::Column::Reason, Expr::value(reason))
        .filter(attempt::Column::JobId.is_in(job_ids.iter().copied()))
        .filter(attempt::Column::EndedAt.is_null());
    if let Some(f) = fence {
        q = q.filter(attempt::Column::Fence.eq(f));
    }
    q.exec(txn).await?;
    Ok(())
}

/// Extends the lease of a claimed job. [`QueueError::LeaseLost`] means stop working on it.
pub async fn heartbeat(
    store: &Store,
    job_id: i64,
    fence: i64,
    lease_ms: i64,
    clock: &dyn Clock,
) -> Result<(), QueueError> {
    let now = clock.now_ms();
    let res = job::Entity::update_many()
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(now.saturating_add(lease_ms)),
        )
        .col_expr(job::Column::HeartbeatAt, Expr::value(now))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Fence.eq(fence))
        .filter(job::Column::State.is_in(leased_states()))
        .exec(store.db())
        .await?;
    if res.rows_affected == 1 {
        Ok(())
    } else {
        Err(QueueError::LeaseLost { job: job_id, fence })
    }
}

/// Loads the job and checks the fence and that it is leased, inside `txn`.
async fn fenced<C: ConnectionTrait>(
    txn: &C,
    job_id: i64,
    fence: i64,
) -> Result<job::Model, QueueError> {
    let j = job::Entity::find_by_id(job_id)
        .one(txn)
        .await?
        .ok_or(QueueError::LeaseLost { job: job_id, fence })?;
    let leased = j
        .state
        .parse::<JobState>()
        .map(JobState::is_leased)
        .unwrap_or(false);
    if j.fence != fence || !leased {
        return Err(QueueError::LeaseLost { job: job_id, fence });
    }
    Ok(j)
}

fn actor_of(j: &job::Model) -> String {
    j.lease_owner
        .clone()
        .unwrap_or_else(|| "scheduler".to_string())
}

/// Moves a claimed job forward: `placed → starting → running` (optionally recording the
/// instance it is on).
pub async fn advance(
    store: &Store,
    job_id: i64,
    fence: i64,
    to: JobState,
    instance_id: Option<i64>,
    reason: &str,
    clock: &dyn Clock,
) -> Result<job::Model, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    let j = fenced(&txn, job_id, fence).await?;
    let from: JobState = j
        .state
        .parse()
        .map_err(|_| QueueError::LeaseLost { job: job_id, fence })?;
    let ok = matches!(
        (from, to),
        (JobState::Placed, JobState::Starting)
            | (JobState::Placed | JobState::Starting, JobState::Running)
            | (JobState::Starting, JobState::Starting)
            | (JobState::Running, JobState::Running)
    );
    if !ok {
        return Err(QueueError::BadState {
            job: job_id,
            state: j.state,
            why: format!("cannot move to {to}"),
        });
    }
    let mut upd = job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(to.as_str()))
        .col_expr(job::Column::UpdatedAt, Expr::value(now));
    if let Some(i) = instance_id {
        upd = upd.col_expr(job::Column::InstanceId, Expr::value(i));
    }
    let mut rows = upd
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Fence.eq(fence))
        .exec_with_returning(&txn)
        .await?;
    if from != to {
        record_events(
            &txn,
            vec![NewEvent {
                entity: EntityKind::Job,
                entity_id: job_id,
                from: Some(from.as_str().to_string()),
                to: to.as_str().to_string(),
                actor: actor_of(&j),
                reason: reason.to_string(),
                at: now,
            }],
        )
        .await?;
    }
    txn.commit().await?;
    rows.pop()
        .ok_or(QueueError::LeaseLost { job: job_id, fence })
}

/// Marks a claimed job succeeded.
pub async fn complete(
    store: &Store,
    job_id: i64,
    fence: i64,
    done: Completion,
    clock: &dyn Clock,
) -> Result<job::Model, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    let j = fenced(&txn, job_id, fence).await?;
    let mut rows = job::Entity::update_many()
        .col_expr(
            job::Column::State,
            Expr::value(JobState::Succeeded.as_str()),
        )
        .col_expr(job::Column::ExitCode, Expr::value(done.exit_code))
        .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Fence.eq(fence))
        .exec_with_returning(&txn)
        .await?;
    close_open_attempts(
        &txn,
        &[job_id],
        Some(fence),
        AttemptState::Succeeded,
        "job succeeded",
        now,
    )
    .await?;
    record_events(
        &txn,
        vec![NewEvent {
            entity: EntityKind::Job,
            entity_id: job_id,
            from: Some(j.state.clone()),
            to: JobState::Succeeded.as_str().to_string(),
            actor: actor_of(&j),
            reason: done
                .note
                .unwrap_or_else(|| format!("exit code {:?}", done.exit_code)),
            at: now,
        }],
    )
    .await?;
    txn.commit().await?;
    rows.pop()
        .ok_or(QueueError::LeaseLost { job: job_id, fence })
}

/// Records a failure of a claimed job with the default [`RetryPolicy`]: requeued with backoff
/// when `retryable` and attempts are left, else `failed`.
pub async fn fail(
    store: &Store,
    job_id: i64,
    fence: i64,
    reason: &str,
    retryable: bool,
    clock: &dyn Clock,
) -> Result<job::Model, QueueError> {
    fail_with_policy(
        store,
        job_id,
        fence,
        reason,
        retryable,
        &RetryPolicy::default(),
        clock,
    )
    .await
}

/// [`fail`] with an explicit retry policy.
pub async fn fail_with_policy(
    store: &Store,
    job_id: i64,
    fence: i64,
    reason: &str,
    retryable: bool,
    policy: &RetryPolicy,
    clock: &dyn Clock,
) -> Result<job::Model, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    let j = fenced(&txn, job_id, fence).await?;
    let retry = retryable && j.attempts < j.max_attempts;
    let (to, run_at, why) = if retry {
        let delay = policy.delay_ms(job_id, j.attempts);
        (
            JobState::Queued,
            now.saturating_add(delay),
            format!(
                "{reason} (attempt {}/{}; retry in {} s)",
                j.attempts,
                j.max_attempts,
                delay / 1000
            ),
        )
    } else if retryable {
        (
            JobState::Failed,
            j.run_at,
            format!(
                "{reason} (attempt {}/{}; no attempts left)",
                j.attempts, j.max_attempts
            ),
        )
    } else {
        (
            JobState::Failed,
            j.run_at,
            format!("{reason} (not retryable)"),
        )
    };
    let mut upd = job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(to.as_str()))
        .col_expr(job::Column::RunAt, Expr::value(run_at))
        .col_expr(job::Column::LastError, Expr::value(reason))
        .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(job::Column::UpdatedAt, Expr::value(now));
    if to == JobState::Failed {
        upd = upd.col_expr(job::Column::FinishedAt, Expr::value(now));
    }
    let mut rows = upd
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Fence.eq(fence))
        .exec_with_returning(&txn)
        .await?;
    close_open_attempts(
        &txn,
        &[job_id],
        Some(fence),
        AttemptState::Failed,
        reason,
        now,
    )
    .await?;
    record_events(
        &txn,
        vec![NewEvent {
            entity: EntityKind::Job,
            entity_id: job_id,
            from: Some(j.state.clone()),
            to: to.as_str().to_string(),
            actor: actor_of(&j),
            reason: why,
            at: now,
        }],
    )
    .await?;
    txn.commit().await?;
    rows.pop()
        .ok_or(QueueError::LeaseLost { job: job_id, fence })
}

/// The instance went away under a claimed job (preempted, outbid, lost): `→ interrupted →
/// queued` at once, resuming from its checkpoint on the next attempt. Preemption is not the
/// job's fault, so it does not use up an attempt.
pub async fn interrupt(
    store: &Store,
    job_id: i64,
    fence: i64,
    reason: &str,
    clock: &dyn Clock,
) -> Result<job::Model, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    let j = fenced(&txn, job_id, fence).await?;
    let mut rows = job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(JobState::Queued.as_str()))
        .col_expr(
            job::Column::Attempts,
            Expr::value(std::cmp::max(j.attempts - 1, 0)),
        )
        .col_expr(job::Column::RunAt, Expr::value(now))
        .col_expr(job::Column::LastError, Expr::value(reason))
        .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(job::Column::InstanceId, Expr::value(Option::<i64>::None))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Fence.eq(fence))
        .exec_with_returning(&txn)
        .await?;
    close_open_attempts(
        &txn,
        &[job_id],
        Some(fence),
        AttemptState::Interrupted,
        reason,
        now,
    )
    .await?;
    let actor = actor_of(&j);
    record_events(
        &txn,
        vec![
            NewEvent {
                entity: EntityKind::Job,
                entity_id: job_id,
                from: Some(j.state.clone()),
                to: JobState::Interrupted.as_str().to_string(),
                actor: actor.clone(),
                reason: reason.to_string(),
                at: now,
            },
            NewEvent {
                entity: EntityKind::Job,
                entity_id: job_id,
                from: Some(JobState::Interrupted.as_str().to_string()),
                to: JobState::Queued.as_str().to_string(),
                actor,
                reason: "requeued to resume from its checkpoint".to_string(),
                at: now,
            },
        ],
    )
    .await?;
    txn.commit().await?;
    rows.pop()
        .ok_or(QueueError::LeaseLost { job: job_id, fence })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_is_deterministic() {
        let p = RetryPolicy::default();
        let d1 = p.delay_ms(7, 1);
        let d3 = p.delay_ms(7, 3);
        assert!((5_000..=10_000).contains(&d1), "{d1}");
        assert!((20_000..=40_000).contains(&d3), "{d3}");
        assert!(p.delay_ms(7, 30) <= 600_000);
        assert_eq!(p.delay_ms(7, 3), d3);
        let none = RetryPolicy { jitter: 0.0, ..p };
        assert_eq!(none.delay_ms(1, 2), 20_000);
    }
}
