//! Mirror the engine's world into the store, so `vasticlaude queue list`, `status` and the
//! events table show the whole lifecycle (ARCHITECTURE §3, §7) and not only claims and ends.
//!
//! The journal stays the source of truth; the store is a projection of it. [`StoreMirror::sync`]
//! runs after the journal was saved and compares the journaled world with what the store holds,
//! writing only the differences: a crash between the journal write and the mirror write is
//! repaired by the next pass (or the first pass after a restart, whose caches start empty and
//! so compare everything once). Every write is idempotent: an instance row is found by its
//! label, an attempt row by its job and start time, and job moves go through the queue's
//! fenced functions, so a stale or repeated write changes nothing.
//!
//! The mirror never feeds back into the engine's decisions; a failed store write is reported
//! as a warning and retried on the next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::NotSet, ColumnTrait, EntityTrait, QueryFilter, Set};

use crate::clock::{Clock, EpochMs};
use crate::queue::claim::{self, Completion};
use crate::store::entity::{attempt, instance, job};
use crate::store::events::{EntityKind, NewEvent, record_event, record_events};
use crate::store::{self, AttemptState, InstanceState, Store};

use super::engine::job_dir;
use super::model::{InstState, InstanceKey, InstanceView, JobId, JobState, JobView, WorldView};

/// Who the mirror's own events name as their cause.
pub const ACTOR: &str = "scheduler";

/// A clock fixed at the pass's `now`, for the queue functions (times come from the engine).
#[derive(Debug, Clone, Copy)]
struct At(EpochMs);

impl Clock for At {
    fn now_ms(&self) -> EpochMs {
        self.0
    }
}

/// What of a job was last mirrored; a job whose signature did not change is not looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JobSig {
    state: JobState,
    attempt_started: Option<EpochMs>,
    checkpoint_pulled: Option<EpochMs>,
    failures: u32,
    interruptions: u32,
}

fn sig(j: &JobView) -> JobSig {
    JobSig {
        state: j.state,
        attempt_started: j.attempt.as_ref().map(|a| a.started_ms),
        checkpoint_pulled: j.checkpoint_pulled_ms,
        failures: j.failures,
        interruptions: j.interruptions,
    }
}

/// The store side of the engine: jobs' states, instances and attempts.
#[derive(Debug)]
pub struct StoreMirror {
    store: Store,
    /// The claim's fencing token per job (jobs without one are not the store's: not mirrored).
    fences: BTreeMap<JobId, i64>,
    /// Instance key → (row id, mirrored state, mirrored vast id).
    instances: BTreeMap<InstanceKey, (i64, String, Option<i64>)>,
    jobs: BTreeMap<JobId, JobSig>,
    /// Jobs whose end the store has (nothing more to mirror).
    done: BTreeSet<JobId>,
}

impl StoreMirror {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            fences: BTreeMap::new(),
            instances: BTreeMap::new(),
            jobs: BTreeMap::new(),
            done: BTreeSet::new(),
        }
    }

    /// The fencing token of `job`'s claim (a new claim replaces the old one).
    pub fn set_fence(&mut self, job: JobId, fence: i64) {
        if self.fences.insert(job, fence) != Some(fence) {
            self.jobs.remove(&job);
            self.done.remove(&job);
        }
    }

    pub fn fences(&self) -> &BTreeMap<JobId, i64> {
        &self.fences
    }

    /// Bring the store in line with `world` (call after the journal was saved). Returns one
    /// line per failed write; those are retried on the next call.
    pub async fn sync(&mut self, world: &WorldView, home: &Path, now: EpochMs) -> Vec<String> {
        let mut errors = Vec::new();
        for inst in world.instances.values() {
            if let Err(e) = self.sync_instance(world, inst, now).await {
                errors.push(format!("store mirror: instance {}: {e}", inst.label));
            }
        }
        for j in world.jobs.values() {
            if self.done.contains(&j.id) || !self.fences.contains_key(&j.id) {
                continue;
            }
            let s = sig(j);
            if self.jobs.get(&j.id) == Some(&s) {
                continue;
            }
            match self.sync_job(world, j, home, now).await {
                Ok(()) => {
                    self.jobs.insert(j.id, s);
                }
                Err(e) => errors.push(format!("store mirror: job {}: {e}", j.id)),
            }
        }
        errors
    }

    fn wanted_instance_state(world: &WorldView, inst: &InstanceView) -> InstanceState {
        match inst.state {
            InstState::Requested => InstanceState::Requested,
            InstState::Booting => InstanceState::Booting,
            InstState::Ready => InstanceState::Ready,
            InstState::Up => {
                let busy = world.jobs.values().any(|j| {
                    j.instance == Some(inst.key)
                        && matches!(j.state, JobState::Starting | JobState::Running)
                });
                if busy {
                    InstanceState::Busy
                } else {
                    InstanceState::Idle
                }
            }
            InstState::Paused => InstanceState::Paused,
            InstState::Destroying => InstanceState::Destroying,
            InstState::Gone => InstanceState::Gone,
            InstState::Failed => InstanceState::Failed,
        }
    }

    async fn sync_instance(
        &mut self,
        world: &WorldView,
        inst: &InstanceView,
        now: EpochMs,
    ) -> Result<(), String> {
        let want = Self::wanted_instance_state(world, inst);
        if let Some((_, st, vid)) = self.instances.get(&inst.key)
            && st == want.as_str()
            && *vid == inst.vast_id
        {
            return Ok(());
        }
        let db = self.store.db();
        let row = match store::instances::find_instance_by_label(db, &inst.label)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(r) => r,
            None => {
                // Inserted directly (not `create_instance`, which names rows by their id):
                // the row carries the engine's label, so it is found again after a crash.
                let txn = self.store.begin_write().await.map_err(|e| e.to_string())?;
                let r = instance::ActiveModel {
                    id: NotSet,
                    label: Set(inst.label.clone()),
                    vast_id: Set(inst.vast_id),
                    offer_id: Set(Some(inst.offer.offer_id)),
                    machine_id: Set(Some(inst.offer.machine_id)),
                    state: Set(InstanceState::Requested.as_str().to_string()),
                    dph_nusd: Set(store::nusd_from_decimal(inst.offer.dph)),
                    bid_nusd: Set(inst.offer.bid.and_then(store::nusd_from_decimal)),
                    gpu_name: Set(Some(inst.offer.gpu_name.clone())),
                    num_gpus: Set(i32::try_from(inst.offer.gpus).ok()),
                    ssh_host: Set(None),
                    ssh_port: Set(None),
                    meta: Set(serde_json::json!({
                        "engine_key": inst.key,
                        "experiment": inst.experiment,
                    })
                    .to_string()),
                    last_error: Set(None),
                    created_at: Set(inst.created_ms),
                    updated_at: Set(now),
                    destroyed_at: Set(None),
                }
                .insert(&txn)
                .await
                .map_err(|e| e.to_string())?;
                record_event(
                    &txn,
                    EntityKind::Instance,
                    r.id,
                    None,
                    InstanceState::Requested.as_str(),
                    ACTOR,
                    &format!(
                        "buying offer {} on machine {} at ${}/h for {}",
                        inst.offer.offer_id, inst.offer.machine_id, inst.offer.dph, inst.experiment
                    ),
                    inst.created_ms,
                )
                .await
                .map_err(|e| e.to_string())?;
                txn.commit().await.map_err(|e| e.to_string())?;
                r
            }
        };
        let mut vast_id = row.vast_id;
        if inst.vast_id.is_some() && row.vast_id != inst.vast_id {
            let patch = store::instances::InstancePatch {
                vast_id: inst.vast_id,
                last_error: inst.reason.clone(),
                ..Default::default()
            };
            store::instances::update_instance(db, row.id, patch, now)
                .await
                .map_err(|e| e.to_string())?;
            vast_id = inst.vast_id;
        }
        let mut state = row.state.clone();
        if state != want.as_str() {
            let reason = match &inst.reason {
                Some(r)
                    if matches!(
                        want,
                        InstanceState::Failed
                            | InstanceState::Destroying
                            | InstanceState::Gone
                            | InstanceState::Paused
                    ) =>
                {
                    r.clone()
                }
                _ => format!("engine: instance {}", inst.state.as_str()),
            };
            let r = store::instances::set_instance_state(db, row.id, want, ACTOR, &reason, now)
                .await
                .map_err(|e| e.to_string())?;
            state = r.state;
        }
        self.instances.insert(inst.key, (row.id, state, vast_id));
        Ok(())
    }

    fn instance_id(&self, key: Option<InstanceKey>) -> Option<i64> {
        key.and_then(|k| self.instances.get(&k).map(|(id, _, _)| *id))
    }

    async fn sync_job(
        &mut self,
        world: &WorldView,
        j: &JobView,
        home: &Path,
        now: EpochMs,
    ) -> Result<(), String> {
        let fence = self.fences[&j.id];
        let db = self.store.db();
        let Some(row) = job::Entity::find_by_id(j.id)
            .one(db)
            .await
            .map_err(|e| e.to_string())?
        else {
            self.done.insert(j.id);
            return Ok(());
        };
        let stored: store::JobState = row.state.parse().map_err(|e| format!("{e}"))?;
        if stored.is_final() || row.fence != fence {
            // Ended, cancelled by a user, or claimed again elsewhere: not ours to move.
            self.done.insert(j.id);
            return Ok(());
        }
        let clock = At(now);
        let inst_id = self.instance_id(j.instance);

        // Attempts: the engine's current one exists in the store, the others are closed.
        let rows = store::attempts::attempts_for_job(db, j.id)
            .await
            .map_err(|e| e.to_string())?;
        let current = j.attempt.as_ref().map(|a| a.started_ms);
        let failed_rows = rows.iter().filter(|r| r.state == "failed").count();
        // Why an attempt ended: the job's reason once it is final; while it waits again its
        // reason already speaks of the next placement, so the instance's (outbid, preempted,
        // died) says more.
        let mut end_reason = j.reason.clone();
        for r in rows.iter().filter(|r| r.ended_at.is_none()) {
            if Some(r.started_at) == current {
                continue;
            }
            if !j.state.is_terminal() {
                let inst_reason = self
                    .instances
                    .iter()
                    .find(|(_, (id, _, _))| Some(*id) == r.instance_id)
                    .and_then(|(k, _)| world.instances.get(k))
                    .and_then(|i| i.reason.clone());
                end_reason = Some(match inst_reason {
                    Some(why) => {
                        format!("taken off instance {}: {why}", r.instance_id.unwrap_or(0))
                    }
                    None => format!(
                        "attempt ended ({} failure(s), {} interruption(s) so far)",
                        j.failures, j.interruptions
                    ),
                });
            }
            let (st, exit) = match j.state {
                JobState::Succeeded => (AttemptState::Succeeded, Some(0)),
                JobState::Failed => (AttemptState::Failed, None),
                JobState::Cancelled => (AttemptState::Cancelled, None),
                _ if (j.failures as usize) > failed_rows => (AttemptState::Failed, None),
                _ => (AttemptState::Interrupted, None),
            };
            store::attempts::end_attempt(db, r.id, st, exit, end_reason.as_deref(), ACTOR, now)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut attempt_row = rows.iter().max_by_key(|r| r.id).map(|r| r.id);
        if let Some(a) = &j.attempt
            && !rows.iter().any(|r| r.started_at == a.started_ms)
        {
            // Inserted directly: the runner minted the token and we only know its hash.
            let txn = self.store.begin_write().await.map_err(|e| e.to_string())?;
            let r = attempt::ActiveModel {
                id: NotSet,
                job_id: Set(j.id),
                instance_id: Set(self.instance_id(Some(a.instance))),
                fence: Set(fence),
                token_hash: Set(a.token_hash.clone()),
                state: Set(AttemptState::Running.as_str().to_string()),
                started_at: Set(a.started_ms),
                ended_at: Set(None),
                exit_status: Set(None),
                checkpoint_path: Set(None),
                reason: Set(None),
            }
            .insert(&txn)
            .await
            .map_err(|e| e.to_string())?;
            record_event(
                &txn,
                EntityKind::Attempt,
                r.id,
                None,
                AttemptState::Running.as_str(),
                ACTOR,
                &format!("job {} attempt {} on instance {}", j.id, a.id, a.instance),
                a.started_ms,
            )
            .await
            .map_err(|e| e.to_string())?;
            txn.commit().await.map_err(|e| e.to_string())?;
            attempt_row = Some(r.id);
        }
        if j.checkpoint_pulled_ms.is_some()
            && let Some(id) = attempt_row
        {
            let path = job_dir(home, &j.experiment, j.id).join("checkpoints");
            let path = path.display().to_string();
            let has = rows
                .iter()
                .any(|r| r.id == id && r.checkpoint_path.as_deref() == Some(path.as_str()));
            if !has {
                store::attempts::set_checkpoint(db, id, &path)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }

        // The job's state, through the queue's fenced moves.
        let reason = j.reason.clone();
        let advance = |to: store::JobState, why: &'static str| {
            let reason = reason.clone();
            let store = &self.store;
            async move {
                claim::advance(
                    store,
                    j.id,
                    fence,
                    to,
                    inst_id,
                    reason.as_deref().unwrap_or(why),
                    &clock,
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string())
            }
        };
        let mut at = stored;
        let ran = matches!(
            j.state,
            JobState::Starting | JobState::Running | JobState::Succeeded
        );
        if ran && at == store::JobState::Placed {
            advance(store::JobState::Starting, "attempt started on the instance").await?;
            at = store::JobState::Starting;
        }
        if matches!(j.state, JobState::Running | JobState::Succeeded)
            && at == store::JobState::Starting
        {
            advance(
                store::JobState::Running,
                "the agent reports the job running",
            )
            .await?;
        }
        match j.state {
            JobState::Succeeded => {
                claim::complete(
                    &self.store,
                    j.id,
                    fence,
                    Completion {
                        exit_code: Some(0),
                        note: Some("exit code 0; outputs pulled".into()),
                    },
                    &clock,
                )
                .await
                .map_err(|e| e.to_string())?;
                self.done.insert(j.id);
            }
            JobState::Failed | JobState::Cancelled => {
                let why = j.reason.as_deref().unwrap_or(j.state.as_str());
                claim::fail(&self.store, j.id, fence, why, false, &clock)
                    .await
                    .map_err(|e| e.to_string())?;
                self.done.insert(j.id);
            }
            JobState::Queued | JobState::Placed | JobState::Interrupted
                if matches!(at, store::JobState::Starting | store::JobState::Running) =>
            {
                let why = end_reason.unwrap_or_else(|| "taken off its instance".into());
                self.requeue(
                    j.id,
                    fence,
                    at,
                    (j.failures as usize) > failed_rows,
                    &why,
                    now,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The engine took the job off its instance (interrupted, or failed and retried) but keeps
    /// its claim: back to `placed` under the same fence, with the intermediate states in the
    /// events. (`queue::interrupt` would release the claim to any claimer, while the engine
    /// goes on owning the job.)
    async fn requeue(
        &self,
        job_id: JobId,
        fence: i64,
        from: store::JobState,
        failed: bool,
        reason: &str,
        now: EpochMs,
    ) -> Result<(), String> {
        let reason = reason.to_string();
        let txn = self.store.begin_write().await.map_err(|e| e.to_string())?;
        let res = job::Entity::update_many()
            .col_expr(
                job::Column::State,
                Expr::value(store::JobState::Placed.as_str()),
            )
            .col_expr(job::Column::InstanceId, Expr::value(Option::<i64>::None))
            .col_expr(job::Column::LastError, Expr::value(reason.clone()))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(job_id))
            .filter(job::Column::Fence.eq(fence))
            .filter(job::Column::State.eq(from.as_str()))
            .exec(&txn)
            .await
            .map_err(|e| e.to_string())?;
        if res.rows_affected != 1 {
            return Err(format!("job {job_id} changed under fence {fence}"));
        }
        let ev = |f: store::JobState, t: store::JobState, why: String| NewEvent {
            entity: EntityKind::Job,
            entity_id: job_id,
            from: Some(f.as_str().to_string()),
            to: t.as_str().to_string(),
            actor: ACTOR.to_string(),
            reason: why,
            at: now,
        };
        let mut events = Vec::new();
        let mut f = from;
        if !failed {
            events.push(ev(f, store::JobState::Interrupted, reason.clone()));
            f = store::JobState::Interrupted;
        }
        events.push(ev(f, store::JobState::Queued, reason));
        events.push(ev(
            store::JobState::Queued,
            store::JobState::Placed,
            "kept by the scheduler for its next attempt".into(),
        ));
        record_events(&txn, events)
            .await
            .map_err(|e| e.to_string())?;
        txn.commit().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
