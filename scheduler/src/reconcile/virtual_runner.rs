//! A [`Runner`] with no processes, for deterministic simulation on a virtual clock.
//!
//! Jobs are modelled from their environment as the demo script behaves (`STEPS` steps of
//! `STEP_SECONDS`, a checkpoint every `CKPT_EVERY` steps, resuming from the pulled checkpoint),
//! and they die exactly when the simulated market kills an instance's work (stopped, outbid,
//! exited, offline, rebooted, destroyed — read from the market's event log). Everything is a
//! function of the market's clock, so the whole scheduler runs thousands of times faster than
//! real time and a seed replays exactly. It also records every attempt's active span, so a
//! simulation can check that no job ever ran twice at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::clock::{EpochMs, SharedClock};
use crate::market::Endpoint;
use crate::market::sim::SimMarket;

use super::model::*;
use super::runner::{ActiveAttempt, Runner, RunnerError, StartRequest};

#[derive(Debug, Clone)]
struct Attempt {
    job: JobId,
    vast_id: u64,
    started_ms: EpochMs,
    start_step: u64,
    steps: u64,
    step_ms: i64,
    ckpt_every: u64,
    stopped_ms: Option<EpochMs>,
}

#[derive(Debug, Default)]
struct State {
    attempts: BTreeMap<i64, Attempt>,
    /// Checkpoint step on an instance's disk, per (instance, job).
    on_disk: BTreeMap<(u64, JobId), u64>,
    /// Checkpoint step pulled back, per job.
    pulled: BTreeMap<JobId, u64>,
    /// Every attempt's active span: (job, attempt, from, to).
    spans: Vec<(JobId, i64, EpochMs, EpochMs)>,
}

/// See the module docs.
pub struct VirtualRunner {
    sim: SimMarket,
    clock: SharedClock,
    heartbeat_ms: i64,
    state: Mutex<State>,
}

impl std::fmt::Debug for VirtualRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualRunner").finish_non_exhaustive()
    }
}

/// Event kinds after which an instance's processes are gone.
const KILLS: &[&str] = &[
    "stopped",
    "exited",
    "offline",
    "destroyed",
    "rebooting",
    "outbid",
    "taken",
    "preempted",
];

fn env_num(j: &JobView, k: &str, default: f64) -> f64 {
    j.env
        .get(k)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(default)
}

fn vast_id_of(ep: &Endpoint) -> Option<u64> {
    match ep {
        Endpoint::Local { dir } => dir.file_name()?.to_str()?.parse().ok(),
        Endpoint::Ssh { .. } => None,
    }
}

impl VirtualRunner {
    pub fn new(sim: SimMarket, clock: SharedClock, heartbeat_ms: i64) -> Self {
        Self {
            sim,
            clock,
            heartbeat_ms: heartbeat_ms.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the market killed the work of `vast_id` at or after `since` (first time), if it did.
    fn death(&self, vast_id: u64, since: EpochMs) -> Option<EpochMs> {
        let m = self.sim.lock();
        let ev = m
            .events()
            .iter()
            .filter(|e| e.instance == Some(vast_id) && e.at_ms >= since)
            .find(|e| KILLS.iter().any(|k| e.kind.contains(k)))
            .map(|e| e.at_ms);
        ev.or_else(|| m.get(vast_id).is_none().then(|| m.now_ms()))
    }

    /// The checkpoint step pulled back for a job.
    pub fn pulled_step(&self, job: JobId) -> Option<u64> {
        self.lock().pulled.get(&job).copied()
    }

    /// Pairs of attempts of one job whose active spans overlap (must be empty).
    pub fn overlaps(&self) -> Vec<String> {
        let st = self.lock();
        let mut spans = st.spans.clone();
        let now = self.clock.now_ms();
        for (id, a) in &st.attempts {
            let end = self.end_of(a, now);
            spans.push((a.job, *id, a.started_ms, end));
        }
        drop(st);
        let mut out = Vec::new();
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                if a.0 == b.0 && a.2 < b.3 && b.2 < a.3 {
                    out.push(format!("job {}: attempts {} and {} overlap", a.0, a.1, b.1));
                }
            }
        }
        out
    }

    /// When an attempt stops being active: finished, killed, or stopped by us.
    fn end_of(&self, a: &Attempt, now: EpochMs) -> EpochMs {
        let finish = a.started_ms + (a.steps.saturating_sub(a.start_step) as i64) * a.step_ms;
        let mut end = now.min(finish);
        if let Some(d) = self.death(a.vast_id, a.started_ms) {
            end = end.min(d);
        }
        if let Some(s) = a.stopped_ms {
            end = end.min(s);
        }
        end
    }
}

impl Runner for VirtualRunner {
    fn setup<'a>(
        &'a self,
        _key: InstanceKey,
        ep: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), RunnerError>> {
        let ok = vast_id_of(ep).is_some_and(|id| self.sim.lock().get(id).is_some());
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(RunnerError {
                    op: "setup",
                    msg: "instance not reachable".into(),
                })
            }
        })
    }

    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<String, RunnerError>> {
        let res = (|| {
            let vast_id = vast_id_of(&req.endpoint).ok_or(RunnerError {
                op: "start",
                msg: "not a simulated instance".into(),
            })?;
            let now = self.clock.now_ms();
            if self.death(vast_id, now).is_some_and(|d| d <= now) {
                return Err(RunnerError {
                    op: "start",
                    msg: format!("instance {vast_id} is not running"),
                });
            }
            let j = &req.job;
            let mut st = self.lock();
            let start_step = if req.resume_from.is_some() {
                st.pulled.get(&j.id).copied().unwrap_or(0)
            } else {
                0
            };
            let a = Attempt {
                job: j.id,
                vast_id,
                started_ms: now,
                start_step,
                steps: env_num(j, "STEPS", 20.0) as u64,
                step_ms: ((env_num(j, "STEP_SECONDS", 1.0) * 1000.0) as i64).max(1),
                ckpt_every: env_num(j, "CKPT_EVERY", 5.0) as u64,
                stopped_ms: None,
            };
            st.on_disk.insert((vast_id, j.id), start_step);
            st.attempts.insert(req.attempt_id, a);
            Ok("virtual".to_string())
        })();
        Box::pin(async move { res })
    }

    fn readopt(&self, _job: JobId, _attempt_id: i64, _fence: i64, _token_hash: Option<&str>) {}

    fn heartbeats<'a>(&'a self, active: &'a [ActiveAttempt]) -> BoxFuture<'a, Vec<HeartbeatObs>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for act in active {
            let Some(a) = self.lock().attempts.get(&act.attempt_id).cloned() else {
                continue;
            };
            let end = self.end_of(&a, now);
            let ran = ((end - a.started_ms) / a.step_ms).max(0) as u64;
            let step = (a.start_step + ran).min(a.steps);
            let finished = step >= a.steps
                && end == a.started_ms + (a.steps.saturating_sub(a.start_step) as i64) * a.step_ms;
            let ckpt_step = step
                .checked_div(a.ckpt_every)
                .map_or(a.start_step, |n| (n * a.ckpt_every).max(a.start_step));
            let ckpt_step = if finished { a.steps } else { ckpt_step };
            let checkpoint_ms = (ckpt_step > a.start_step)
                .then(|| a.started_ms + (ckpt_step - a.start_step) as i64 * a.step_ms);
            self.lock().on_disk.insert((a.vast_id, a.job), ckpt_step);
            let seq = ((end - a.started_ms) / self.heartbeat_ms) as u64 + 1 + u64::from(finished);
            out.push(HeartbeatObs {
                job: act.job,
                token: act.fence,
                seq,
                at_ms: end,
                phase: if finished {
                    AgentPhase::Exited {
                        code: 0,
                        disk_full: false,
                    }
                } else {
                    AgentPhase::Running
                },
                progress: Some((step, a.steps)),
                checkpoint_ms,
            });
        }
        Box::pin(async move { out })
    }

    fn pull<'a>(
        &'a self,
        ep: &'a Endpoint,
        job: JobId,
        _attempt_id: Option<i64>,
        _kind: PullKind,
        _dest: &'a Path,
    ) -> BoxFuture<'a, Result<bool, RunnerError>> {
        let res = match vast_id_of(ep) {
            Some(id) if self.sim.lock().get(id).is_some() => {
                let mut st = self.lock();
                let on_disk = st.on_disk.get(&(id, job)).copied();
                if let Some(s) = on_disk {
                    let p = st.pulled.entry(job).or_insert(0);
                    *p = (*p).max(s);
                }
                Ok(on_disk.is_some())
            }
            _ => Err(RunnerError {
                op: "pull",
                msg: "instance not reachable".into(),
            }),
        };
        Box::pin(async move { res })
    }

    fn stop<'a>(
        &'a self,
        _ep: &'a Endpoint,
        _job: JobId,
        attempt_id: i64,
    ) -> BoxFuture<'a, Result<(), RunnerError>> {
        let now = self.clock.now_ms();
        if let Some(a) = self.lock().attempts.get_mut(&attempt_id) {
            a.stopped_ms = Some(a.stopped_ms.unwrap_or(now).min(now));
        }
        self.forget(attempt_id);
        Box::pin(async { Ok(()) })
    }

    fn forget(&self, attempt_id: i64) {
        let now = self.clock.now_ms();
        let removed = self.lock().attempts.remove(&attempt_id);
        if let Some(a) = removed {
            let end = self.end_of(&a, now);
            self.lock()
                .spans
                .push((a.job, attempt_id, a.started_ms, end));
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_virtual_sweep_drains_with_every_invariant_and_replays() {
        let a = super::super::simrun::run_virtual(3, 6, 10_000, 14 * 24 * 3_600_000).await;
        eprintln!(
            "steps {} hours {:.1} stats {:?} succeeded {} failed {}",
            a.steps, a.virtual_hours, a.stats, a.jobs_succeeded, a.jobs_failed
        );
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!(a.jobs_succeeded + a.jobs_failed, 6);
        let b = super::super::simrun::run_virtual(3, 6, 10_000, 14 * 24 * 3_600_000).await;
        assert_eq!((a.steps, &a.costs), (b.steps, &b.costs));
    }
}
