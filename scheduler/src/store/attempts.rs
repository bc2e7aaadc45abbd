//! Attempts: one try of a job on one instance, under the fencing token the claim handed out.

use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ColumnTrait, ConnectionTrait, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set,
};
use sha2::Digest;

use super::entity::{attempt, job};
use super::events::{EntityKind, record_event};
use super::{AttemptState, StoreError};
use crate::clock::EpochMs;

/// sha256 (hex) of an agent's bearer token; only the hash is stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A new attempt.
#[derive(Clone, Default)]
pub struct NewAttempt {
    pub job_id: i64,
    pub instance_id: Option<i64>,
    /// The fence from the claim; the attempt is refused if the job has moved on.
    pub fence: i64,
    /// The agent's bearer token; stored only as its sha256.
    pub token: Option<String>,
    pub checkpoint_path: Option<String>,
}

impl std::fmt::Debug for NewAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAttempt")
            .field("job_id", &self.job_id)
            .field("instance_id", &self.instance_id)
            .field("fence", &self.fence)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("checkpoint_path", &self.checkpoint_path)
            .finish()
    }
}

/// Starts an attempt (state `running`), refusing with [`StoreError::Conflict`] when the job's
/// fence is no longer `new.fence`.
pub async fn start_attempt<C: ConnectionTrait>(
    db: &C,
    new: NewAttempt,
    actor: &str,
    now: EpochMs,
) -> Result<attempt::Model, StoreError> {
    let job = job::Entity::find_by_id(new.job_id)
        .one(db)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "job",
            key: new.job_id.to_string(),
        })?;
    if job.fence != new.fence {
        return Err(StoreError::Conflict(format!(
            "stale fence {} for job {} (now {})",
            new.fence, new.job_id, job.fence
        )));
    }
    let row = attempt::ActiveModel {
        id: NotSet,
        job_id: Set(new.job_id),
        instance_id: Set(new.instance_id),
        fence: Set(new.fence),
        token_hash: Set(new.token.as_deref().map(hash_token)),
        state: Set(AttemptState::Running.as_str().to_string()),
        started_at: Set(now),
        ended_at: Set(None),
        exit_status: Set(None),
        checkpoint_path: Set(new.checkpoint_path),
        reason: Set(None),
    }
    .insert(db)
    .await?;
    record_event(
        db,
        EntityKind::Attempt,
        row.id,
        None,
        AttemptState::Running.as_str(),
        actor,
        &format!(
            "job {} fence {} on instance {:?}",
            row.job_id, row.fence, row.instance_id
        ),
        now,
    )
    .await?;
    Ok(row)
}

/// Ends an attempt (no-op if it already ended).
pub async fn end_attempt<C: ConnectionTrait>(
    db: &C,
    attempt_id: i64,
    state: AttemptState,
    exit_status: Option<i32>,
    reason: Option<&str>,
    actor: &str,
    now: EpochMs,
) -> Result<attempt::Model, StoreError> {
    let row = get_attempt(db, attempt_id).await?;
    if row.ended_at.is_some() {
        return Ok(row);
    }
    let from = row.state.clone();
    let mut am = row.into_active_model();
    am.state = Set(state.as_str().to_string());
    am.ended_at = Set(Some(now));
    am.exit_status = Set(exit_status);
    am.reason = Set(reason.map(str::to_string));
    let row = am.update(db).await?;
    record_event(
        db,
        EntityKind::Attempt,
        attempt_id,
        Some(&from),
        state.as_str(),
        actor,
        reason.unwrap_or(""),
        now,
    )
    .await?;
    Ok(row)
}

/// Records the latest checkpoint pulled back for an attempt.
pub async fn set_checkpoint<C: ConnectionTrait>(
    db: &C,
    attempt_id: i64,
    path: &str,
) -> Result<attempt::Model, StoreError> {
    let mut am = get_attempt(db, attempt_id).await?.into_active_model();
    am.checkpoint_path = Set(Some(path.to_string()));
    Ok(am.update(db).await?)
}

pub async fn get_attempt<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<attempt::Model, StoreError> {
    attempt::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "attempt",
            key: id.to_string(),
        })
}

/// A job's attempts, oldest first.
pub async fn attempts_for_job<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
) -> Result<Vec<attempt::Model>, StoreError> {
    Ok(attempt::Entity::find()
        .filter(attempt::Column::JobId.eq(job_id))
        .order_by_asc(attempt::Column::Id)
        .all(db)
        .await?)
}

/// The attempt an agent's bearer token belongs to, if it is still open.
pub async fn find_open_attempt_by_token<C: ConnectionTrait>(
    db: &C,
    token: &str,
) -> Result<Option<attempt::Model>, StoreError> {
    Ok(attempt::Entity::find()
        .filter(attempt::Column::TokenHash.eq(hash_token(token)))
        .filter(attempt::Column::EndedAt.is_null())
        .one(db)
        .await?)
}

/// The latest checkpoint recorded for any attempt of a job (to resume from).
pub async fn latest_checkpoint<C: ConnectionTrait>(
    db: &C,
    job_id: i64,
) -> Result<Option<String>, StoreError> {
    Ok(attempt::Entity::find()
        .filter(attempt::Column::JobId.eq(job_id))
        .filter(attempt::Column::CheckpointPath.is_not_null())
        .order_by_desc(attempt::Column::Id)
        .one(db)
        .await?
        .and_then(|a| a.checkpoint_path))
}
