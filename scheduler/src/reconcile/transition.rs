//! How an action changes the [`WorldView`]: one pure function used three ways.
//!
//! - The reconciler applies each action it emits with [`Outcome::Planned`] to its working copy,
//!   so later decisions in the same pass see earlier ones (a slot taken, an offer claimed).
//! - The shell applies it with the real outcome after executing the effect, and journals it.
//! - The deterministic simulation does the same with the simulated market's answers.

use crate::clock::EpochMs;
use crate::planner::reputation::{FailureEvent, ReputationConfig};

use super::model::*;

/// What executing an action produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The reconciler's own working copy: assume the action is underway.
    Planned,
    /// Done; nothing more to report.
    Done,
    /// The market accepted the purchase.
    Provisioned { vast_id: VastId },
    /// The attempt was claimed and started.
    AttemptStarted { attempt_id: i64, token: i64 },
    /// A pull finished; `checkpoint`: a checkpoint came back with it.
    Pulled { checkpoint: bool },
    /// The effect failed (the action is retried on a later pass where that makes sense).
    Failed(String),
}

/// Apply `action` with `outcome` at `now`.
pub fn apply(w: &mut WorldView, action: &Action, outcome: &Outcome, now: EpochMs) {
    let failed = matches!(outcome, Outcome::Failed(_));
    match action {
        Action::Provision {
            key,
            label,
            offer,
            experiment,
        } => {
            let inst = w.instances.entry(*key).or_insert_with(|| InstanceView {
                key: *key,
                label: label.clone(),
                vast_id: None,
                state: InstState::Requested,
                offer: offer.clone(),
                experiment: experiment.clone(),
                created_ms: now,
                state_since_ms: now,
                idle_since_ms: None,
                setup_failures: 0,
                reason: None,
            });
            match outcome {
                Outcome::Provisioned { vast_id } => {
                    inst.vast_id = Some(*vast_id);
                    set_state(inst, InstState::Booting, None, now);
                }
                Outcome::Failed(e) => {
                    set_state(
                        inst,
                        InstState::Failed,
                        Some(format!("purchase failed: {e}")),
                        now,
                    );
                    release_jobs(w, *key, now);
                }
                _ => {}
            }
        }
        Action::Adopt { key, vast_id } => {
            if let Some(inst) = w.instances.get_mut(key) {
                inst.vast_id = Some(*vast_id);
                if inst.state == InstState::Requested {
                    set_state(inst, InstState::Booting, Some("adopted".into()), now);
                }
            }
        }
        Action::DestroyOrphan { .. } => {}
        Action::MarkInstance { key, state, reason } => {
            if let Some(inst) = w.instances.get_mut(key) {
                set_state(inst, *state, reason.clone(), now);
                if *state == InstState::Up && inst.idle_since_ms.is_none() {
                    inst.idle_since_ms = Some(now);
                }
            }
            if matches!(
                state,
                InstState::Failed | InstState::Gone | InstState::Destroying | InstState::Paused
            ) {
                release_placed(w, *key, now);
            }
            if matches!(
                state,
                InstState::Failed | InstState::Gone | InstState::Destroying
            ) {
                release_jobs(w, *key, now);
            }
        }
        Action::Setup { key } => {
            if let Some(inst) = w.instances.get_mut(key) {
                match outcome {
                    Outcome::Done => {
                        set_state(inst, InstState::Up, None, now);
                        inst.idle_since_ms = Some(now);
                    }
                    Outcome::Failed(e) => {
                        inst.setup_failures += 1;
                        inst.reason = Some(format!("setup failed: {e}"));
                    }
                    _ => {}
                }
            }
        }
        Action::ChangeBid { key, bid, .. } => {
            if !failed
                && outcome != &Outcome::Planned
                && let Some(inst) = w.instances.get_mut(key)
            {
                inst.offer.bid = Some(*bid);
            }
        }
        Action::Destroy { key, reason, .. } => {
            if !failed {
                if let Some(inst) = w.instances.get_mut(key)
                    && inst.state != InstState::Gone
                {
                    set_state(inst, InstState::Destroying, Some(reason.clone()), now);
                }
                release_jobs(w, *key, now);
            }
        }
        Action::MachineFailed {
            machine_id, kind, ..
        } => {
            // Failures too old to change any ban are dropped.
            let keep = ReputationConfig::default().memory_ms();
            w.machine_failures.retain(|e| now - e.at_ms < keep);
            w.machine_failures.push(FailureEvent {
                at_ms: now,
                machine_id: *machine_id,
                host_id: 0,
                kind: *kind,
            });
        }
        Action::Place { job, key } => {
            if let Some(j) = w.jobs.get_mut(job) {
                j.state = JobState::Placed;
                j.instance = Some(*key);
                j.budget_held = false;
                if j.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("waiting"))
                {
                    j.reason = None;
                }
            }
            if let Some(inst) = w.instances.get_mut(key) {
                inst.idle_since_ms = None;
            }
        }
        Action::StartAttempt { job, key, .. } => {
            let Some(j) = w.jobs.get_mut(job) else { return };
            match outcome {
                Outcome::AttemptStarted { attempt_id, token } => {
                    j.state = JobState::Starting;
                    j.instance = Some(*key);
                    j.attempt = Some(AttemptView {
                        id: *attempt_id,
                        token: *token,
                        instance: *key,
                        started_ms: now,
                        last_heartbeat_ms: None,
                        last_seq: 0,
                        phase: None,
                        progress: None,
                        token_hash: None,
                        gpus: Vec::new(),
                    });
                }
                Outcome::Planned => j.state = JobState::Starting,
                Outcome::Failed(e) => {
                    j.state = JobState::Queued;
                    j.instance = None;
                    j.attempt = None;
                    j.reason = Some(format!("could not start: {e}"));
                    j.interruptions += 1;
                    if let Some(inst) = w.instances.get_mut(key) {
                        inst.setup_failures += 1;
                    }
                    mark_idle_if_empty(w, *key, now);
                }
                Outcome::Done | Outcome::Provisioned { .. } | Outcome::Pulled { .. } => {}
            }
        }
        Action::Heartbeat(hb) => {
            let Some(j) = w.jobs.get_mut(&hb.job) else {
                return;
            };
            let Some(a) = j.attempt.as_mut() else { return };
            if a.token != hb.token || (hb.seq <= a.last_seq && a.phase.is_some()) {
                return;
            }
            a.last_seq = hb.seq;
            a.last_heartbeat_ms = Some(hb.at_ms);
            a.phase = Some(hb.phase.clone());
            if hb.progress.is_some() {
                a.progress = hb.progress;
            }
            if hb.checkpoint_ms > j.checkpoint_reported_ms {
                j.checkpoint_reported_ms = hb.checkpoint_ms;
            }
            if j.state == JobState::Starting {
                j.state = JobState::Running;
            }
        }
        Action::Pull { job, .. } => {
            if let Outcome::Pulled { checkpoint } = outcome
                && let Some(j) = w.jobs.get_mut(job)
            {
                if j.checkpoint_reported_ms > j.checkpoint_pulled_ms {
                    j.checkpoint_pulled_ms = j.checkpoint_reported_ms;
                } else if j.checkpoint_pulled_ms.is_none() && *checkpoint {
                    // A checkpoint no heartbeat told us of came back (its heartbeats were lost,
                    // or the attempt ended before one arrived): it is on our disk now, so the
                    // next attempt resumes from it instead of starting over.
                    j.checkpoint_pulled_ms = Some(now);
                }
            }
        }
        Action::StopAttempt { .. } => {}
        Action::Note { job, reason } => {
            if let Some(j) = w.jobs.get_mut(job) {
                j.reason = Some(reason.clone());
            }
        }
        Action::EndAttempt {
            job,
            end,
            requeue_at,
            hold,
        } => {
            let Some(j) = w.jobs.get_mut(job) else { return };
            let key = j.instance;
            j.attempt = None;
            match end {
                AttemptEnd::Succeeded => {
                    j.state = JobState::Succeeded;
                    j.reason = None;
                }
                AttemptEnd::Failed { reason, disk_full } => {
                    j.failures += 1;
                    if *disk_full {
                        j.disk_factor = j.disk_factor.max(1) * 2;
                    }
                    j.reason = Some(reason.clone());
                    j.state = if requeue_at.is_some() {
                        JobState::Queued
                    } else {
                        JobState::Failed
                    };
                }
                AttemptEnd::Interrupted { reason } => {
                    j.interruptions += 1;
                    j.reason = Some(reason.clone());
                    j.state = if *hold {
                        JobState::Interrupted
                    } else if requeue_at.is_some() {
                        JobState::Queued
                    } else {
                        JobState::Failed
                    };
                }
                AttemptEnd::BudgetStopped => {
                    j.reason = Some("budget hard stop".into());
                    j.budget_held = true;
                    j.state = JobState::Queued;
                }
            }
            if let Some(t) = requeue_at {
                j.not_before_ms = *t;
            }
            if j.state != JobState::Interrupted {
                j.instance = None;
                // Work written on the old instance but not pulled is lost with it.
                if j.state == JobState::Queued {
                    j.checkpoint_reported_ms = j.checkpoint_pulled_ms;
                }
            }
            if let Some(k) = key {
                mark_idle_if_empty(w, k, now);
            }
        }
        Action::BudgetWarn { experiment, .. } => {
            if let Some(b) = w.budgets.get_mut(experiment) {
                b.warned = true;
            }
        }
        Action::BudgetHardStop { experiment, .. } => {
            if let Some(b) = w.budgets.get_mut(experiment) {
                b.hard_stopped = true;
            }
        }
        Action::Accrue => {
            if !matches!(outcome, Outcome::Failed(_)) {
                w.last_accrual_ms = Some(now);
            }
        }
        Action::FinalReport { experiment } => {
            if !failed {
                w.reported.insert(experiment.clone());
            }
        }
    }
}

fn set_state(inst: &mut InstanceView, state: InstState, reason: Option<String>, now: EpochMs) {
    if inst.state != state {
        inst.state = state;
        inst.state_since_ms = now;
    }
    if reason.is_some() {
        inst.reason = reason;
    }
}

/// Jobs placed on (not yet started on) an instance that will not take them go back to the queue.
fn release_placed(w: &mut WorldView, key: InstanceKey, _now: EpochMs) {
    for j in w.jobs.values_mut() {
        if j.instance == Some(key) && j.state == JobState::Placed {
            j.state = JobState::Queued;
            j.instance = None;
        }
    }
}

/// Jobs placed on or held for an instance that is going away go back to the queue (their
/// running attempts were ended by the reconciler before).
fn release_jobs(w: &mut WorldView, key: InstanceKey, _now: EpochMs) {
    for j in w.jobs.values_mut() {
        if j.instance == Some(key) && matches!(j.state, JobState::Placed | JobState::Interrupted) {
            j.state = JobState::Queued;
            j.instance = None;
            j.checkpoint_reported_ms = j.checkpoint_pulled_ms;
        }
    }
}

fn mark_idle_if_empty(w: &mut WorldView, key: InstanceKey, now: EpochMs) {
    let empty = w.jobs_on(key).next().is_none();
    if let Some(inst) = w.instances.get_mut(&key)
        && empty
        && inst.idle_since_ms.is_none()
    {
        inst.idle_since_ms = Some(now);
    }
}
