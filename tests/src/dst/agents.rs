//! The simulated side of the instances: worker agents, job processes, instance disks and the
//! controller's own disk, on the simulator's virtual clock — a [`Runner`] with no processes, no
//! SSH and no sleeping.
//!
//! What a real agent does is modelled where it matters to the scheduler's invariants:
//! - a job process makes progress only while its instance runs (the market's event log says
//!   when an instance was outbid, went offline, exited, was stopped or destroyed: its processes
//!   die at that moment, as the simulator's kill contract says);
//! - progress speed follows the instance's GPU model (dlperf relative to a reference of 100);
//! - checkpointing jobs write a checkpoint to the instance disk every `ckpt_every` of work; the
//!   disk survives an outbid pause and dies with a destroy;
//! - `pull` copies the instance's checkpoint folder over the controller's (a swap, as
//!   `AgentRunner::pull` does), and `start` with `resume_from` copies it back first;
//! - heartbeats are pushed to the collector; the collector's memory (which attempts it accepts)
//!   is lost when the scheduler is killed and rebuilt by `readopt`; an agent whose attempt the
//!   collector does not accept is told to stop on its next push (fencing);
//! - faults: setup/start/pull failures, agents that go silent, lost, duplicated and reordered
//!   heartbeats.
//!
//! Everything is keyed by ids in ordered maps and every random draw comes from one seeded
//! stream in a fixed call order, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use scheduler::clock::EpochMs;
use scheduler::market::Endpoint;
use scheduler::market::sim::SimMarket;
use scheduler::reconcile::runner::{ActiveAttempt, RunnerError, StartRequest};
use scheduler::reconcile::{
    AgentPhase, HeartbeatObs, InstanceKey, JobId, PullKind, Runner, VastId,
};

use super::gate::CrashGate;
use super::rng::Rng;

/// How a job's command behaves, whatever the scheduler does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Never,
    /// The first `n` attempts exit with code 1 halfway through.
    FirstAttempts(u32),
    /// Every attempt exits with code 1 halfway through.
    Always,
}

/// The truth about a job (the scheduler only sees an estimate).
#[derive(Debug, Clone)]
pub struct JobTruth {
    /// Work on a reference GPU (dlperf 100), milliseconds.
    pub work_ms: i64,
    /// Checkpoint every this much work (None: the job does not checkpoint).
    pub ckpt_every_ms: Option<i64>,
    pub fail: FailMode,
}

/// A checkpoint: how much work it holds, when and by which attempt it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ckpt {
    pub work_ms: i64,
    pub at_ms: EpochMs,
    pub attempt: i64,
}

/// Fault rates of the agent side.
#[derive(Debug, Clone)]
pub struct AgentFaults {
    pub setup_fail: f64,
    pub start_fail: f64,
    pub pull_fail: f64,
    /// Probability that an attempt's agent goes silent (its job keeps running) at some point.
    pub silent: f64,
    /// Per delivery: the newest heartbeat is lost (the collector still holds an older one).
    pub hb_lost: f64,
    /// Per delivery: the heartbeat arrives twice.
    pub hb_dup: f64,
    /// Per delivery: an older heartbeat arrives after the newest.
    pub hb_reorder: f64,
}

impl AgentFaults {
    pub fn none() -> Self {
        Self {
            setup_fail: 0.0,
            start_fail: 0.0,
            pull_fail: 0.0,
            silent: 0.0,
            hb_lost: 0.0,
            hb_dup: 0.0,
            hb_reorder: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    Exited {
        code: i32,
        at: EpochMs,
    },
    /// The process (and its agent) died: instance lost, stopped by us, or told to stop.
    Killed {
        at: EpochMs,
    },
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub job: JobId,
    pub attempt: i64,
    pub fence: i64,
    pub vast_id: VastId,
    pub started_ms: EpochMs,
    pub start_work_ms: i64,
    pub work_ms: i64,
    pub total_ms: i64,
    /// Work per virtual millisecond, in millionths.
    pub speed_ppm: i64,
    pub last_ms: EpochMs,
    pub state: ProcState,
    pub silent_after: Option<EpochMs>,
    pub ckpt_every_ms: Option<i64>,
    pub fail_at_ms: Option<i64>,
    pub last_ckpt_ms: Option<EpochMs>,
    seq: u64,
    report: Option<HeartbeatObs>,
    delivered: Vec<HeartbeatObs>,
}

impl Proc {
    /// Is a job process of this attempt alive on its instance (running, or its agent still up
    /// reporting an exit)?
    pub fn alive(&self) -> bool {
        !matches!(self.state, ProcState::Killed { .. })
    }
    pub fn running(&self) -> bool {
        self.state == ProcState::Running
    }
}

/// The agents, the instance disks and the controller's disk.
pub struct AgentWorld {
    sim: SimMarket,
    gate: Arc<CrashGate>,
    rng: Rng,
    pub faults: AgentFaults,
    pub heartbeat_interval_ms: i64,
    events_seen: usize,
    pub truth: BTreeMap<JobId, JobTruth>,
    pub procs: BTreeMap<i64, Proc>,
    /// Checkpoint folders on instance disks.
    pub disk: BTreeMap<(VastId, JobId), Ckpt>,
    /// Finished outputs on instance disks: the attempt that completed the job.
    pub disk_out: BTreeMap<(VastId, JobId), i64>,
    /// Instances with the agent installed.
    pub setup_done: BTreeSet<VastId>,
    /// `$VASTICLAUDE_HOME`: pulled checkpoints (the controller's disk survives its crashes).
    pub home: BTreeMap<JobId, Ckpt>,
    /// Pulled final outputs: the attempt that produced them.
    pub outputs: BTreeMap<JobId, i64>,
    /// The collector's memory: attempts whose heartbeats it accepts. Lost on a crash.
    pub accepted: BTreeSet<i64>,
    attempts_per_job: BTreeMap<JobId, u32>,
    /// Invariant violations seen from the agent side (resume from an old checkpoint, a second
    /// accepted attempt).
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// Sabotage for the checker's own test: start every attempt from scratch.
    pub ignore_resume: bool,
    /// Virtual milliseconds during which a fenced-off (zombie) process ran beside an accepted
    /// attempt of the same job before it was told to stop.
    pub zombie_overlap_ms: i64,
}

fn gpu_speed_ppm(gpu_name: &str) -> i64 {
    let dlperf = vast::sim::GPU_MODELS
        .iter()
        .find(|g| g.name == gpu_name)
        .map(|g| g.dlperf)
        .unwrap_or(20.0);
    (dlperf * 10_000.0).round() as i64
}

/// The Vast id of a simulated instance: its folder is `<root>/instances/<id>`.
pub fn vast_of(ep: &Endpoint) -> Result<VastId, RunnerError> {
    match ep {
        Endpoint::Local { dir } => dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<VastId>().ok())
            .ok_or_else(|| RunnerError {
                op: "connect",
                msg: format!("not a simulated instance folder: {}", dir.display()),
            }),
        Endpoint::Ssh { host, port } => Err(RunnerError {
            op: "connect",
            msg: format!("the simulated runner cannot reach {host}:{port}"),
        }),
    }
}

fn err(op: &'static str, msg: impl Into<String>) -> RunnerError {
    RunnerError {
        op,
        msg: msg.into(),
    }
}

impl AgentWorld {
    pub fn new(
        sim: SimMarket,
        gate: Arc<CrashGate>,
        seed: u64,
        faults: AgentFaults,
        heartbeat_interval_ms: i64,
    ) -> Self {
        Self {
            sim,
            gate,
            rng: Rng::stream(seed, 0xA6E7),
            faults,
            heartbeat_interval_ms,
            events_seen: 0,
            truth: BTreeMap::new(),
            procs: BTreeMap::new(),
            disk: BTreeMap::new(),
            disk_out: BTreeMap::new(),
            setup_done: BTreeSet::new(),
            home: BTreeMap::new(),
            outputs: BTreeMap::new(),
            accepted: BTreeSet::new(),
            attempts_per_job: BTreeMap::new(),
            violations: Vec::new(),
            trace: Vec::new(),
            ignore_resume: false,
            zombie_overlap_ms: 0,
        }
    }

    fn running_on_market(&self, vast: VastId) -> bool {
        let Ok(id) = u64::try_from(vast) else {
            return false;
        };
        self.sim
            .lock()
            .get(id)
            .is_some_and(|v| v.get("actual_status").and_then(|s| s.as_str()) == Some("running"))
    }

    fn gpu_of(&self, vast: VastId) -> String {
        let Ok(id) = u64::try_from(vast) else {
            return String::new();
        };
        self.sim
            .lock()
            .get(id)
            .and_then(|v| {
                v.get("gpu_name")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    /// Bring every process up to the market's clock: apply the market's events (deaths) in
    /// time order, advance work, write checkpoints, exit, push heartbeats.
    pub fn sync(&mut self) {
        let (now, events) = {
            let m = self.sim.lock();
            let ev = m.events();
            let new: Vec<vast::sim::SimEvent> =
                ev.get(self.events_seen..).unwrap_or_default().to_vec();
            self.events_seen = ev.len();
            (m.now_ms(), new)
        };
        for e in events {
            self.advance(e.at_ms);
            let Some(id) = e.instance.and_then(|i| VastId::try_from(i).ok()) else {
                continue;
            };
            let kills = matches!(
                e.kind.as_str(),
                "outbid" | "offline" | "exited" | "destroyed" | "stopped" | "rebooting"
            );
            if kills {
                let victims: Vec<i64> = self
                    .procs
                    .values()
                    .filter(|p| p.vast_id == id && p.alive())
                    .map(|p| p.attempt)
                    .collect();
                for a in victims {
                    self.kill(a, e.at_ms, &e.kind);
                }
            }
            if e.kind == "destroyed" {
                self.disk.retain(|(v, _), _| *v != id);
                self.disk_out.retain(|(v, _), _| *v != id);
                self.setup_done.remove(&id);
            }
        }
        self.advance(now);
        // Fencing: an agent whose attempt the (running) collector does not accept is told to
        // stop on its next push.
        if !self.gate.crashed() {
            let zombies: Vec<i64> = self
                .procs
                .values()
                .filter(|p| p.alive() && !self.accepted.contains(&p.attempt))
                .map(|p| p.attempt)
                .collect();
            for a in zombies {
                let Some(p) = self.procs.get(&a) else {
                    continue;
                };
                // Time it ran beside an accepted attempt of the same job.
                let overlap_from = self
                    .procs
                    .values()
                    .filter(|o| {
                        o.job == p.job
                            && o.attempt != a
                            && o.alive()
                            && self.accepted.contains(&o.attempt)
                    })
                    .map(|o| o.started_ms.max(p.started_ms))
                    .min();
                if let Some(from) = overlap_from {
                    self.zombie_overlap_ms += (now - from).max(0);
                }
                self.kill(
                    a,
                    now,
                    "told to stop: attempt not accepted by the collector",
                );
            }
        }
    }

    fn kill(&mut self, attempt: i64, at: EpochMs, why: &str) {
        if let Some(p) = self.procs.get_mut(&attempt)
            && p.alive()
        {
            p.state = ProcState::Killed { at };
            self.trace.push(format!(
                "{at} agent: attempt {attempt} of job {} killed: {why}",
                p.job
            ));
        }
    }

    fn advance(&mut self, t: EpochMs) {
        let hb = self.heartbeat_interval_ms.max(1);
        let attempts: Vec<i64> = self.procs.keys().copied().collect();
        for a in attempts {
            let Some(p) = self.procs.get_mut(&a) else {
                continue;
            };
            if t <= p.last_ms || !p.alive() {
                continue;
            }
            if p.running() {
                loop {
                    let next_ckpt = p.ckpt_every_ms.map(|c| (p.work_ms / c + 1) * c);
                    let mut target = p.total_ms;
                    let mut kind = 0u8; // 0 done, 1 fail, 2 checkpoint
                    if let Some(f) = p.fail_at_ms.filter(|f| *f > p.work_ms && *f < target) {
                        target = f;
                        kind = 1;
                    }
                    if let Some(c) = next_ckpt.filter(|c| *c < target) {
                        target = c;
                        kind = 2;
                    }
                    let need = target - p.work_ms;
                    let t_x = p.last_ms + (need * 1_000_000 + p.speed_ppm - 1) / p.speed_ppm.max(1);
                    if t_x > t {
                        p.work_ms += (t - p.last_ms) * p.speed_ppm / 1_000_000;
                        p.work_ms = p.work_ms.min(target);
                        p.last_ms = t;
                        break;
                    }
                    p.work_ms = target;
                    p.last_ms = t_x;
                    match kind {
                        0 => {
                            p.state = ProcState::Exited { code: 0, at: t_x };
                            self.disk_out.insert((p.vast_id, p.job), p.attempt);
                            self.trace.push(format!(
                                "{t_x} agent: attempt {a} of job {} finished",
                                p.job
                            ));
                            break;
                        }
                        1 => {
                            p.state = ProcState::Exited { code: 1, at: t_x };
                            self.trace.push(format!(
                                "{t_x} agent: attempt {a} of job {} exited 1",
                                p.job
                            ));
                            break;
                        }
                        _ => {
                            self.disk.insert(
                                (p.vast_id, p.job),
                                Ckpt {
                                    work_ms: p.work_ms,
                                    at_ms: t_x,
                                    attempt: a,
                                },
                            );
                            p.last_ckpt_ms = Some(t_x);
                        }
                    }
                }
            }
            p.last_ms = p.last_ms.max(t);
            // The newest heartbeat pushed by now: one per interval, one at once on exit.
            let silent = p.silent_after.is_some_and(|s| t >= s);
            if !silent {
                let tick = p.started_ms + (t - p.started_ms) / hb * hb;
                let at = match p.state {
                    ProcState::Exited { at, .. } => at.max(tick),
                    _ => tick,
                };
                let phase = match p.state {
                    ProcState::Exited { code, .. } => AgentPhase::Exited {
                        code,
                        disk_full: false,
                    },
                    _ => AgentPhase::Running,
                };
                let changed = p
                    .report
                    .as_ref()
                    .is_none_or(|r| r.at_ms != at || r.phase != phase);
                if changed {
                    p.seq += 1;
                    p.report = Some(HeartbeatObs {
                        job: p.job,
                        token: p.fence,
                        seq: p.seq,
                        at_ms: at,
                        phase,
                        progress: Some(((p.work_ms / 1000) as u64, (p.total_ms / 1000) as u64)),
                        checkpoint_ms: p.last_ckpt_ms,
                    });
                }
            }
        }
    }

    /// Attempts the collector accepts whose job process is alive, per job.
    pub fn live_accepted_by_job(&self) -> BTreeMap<JobId, Vec<i64>> {
        let mut out: BTreeMap<JobId, Vec<i64>> = BTreeMap::new();
        for p in self.procs.values() {
            if p.running() && self.accepted.contains(&p.attempt) {
                out.entry(p.job).or_default().push(p.attempt);
            }
        }
        out
    }

    /// The controller restarted: its collector remembers nothing.
    pub fn controller_restarted(&mut self) {
        self.accepted.clear();
    }
}

/// The [`Runner`] the engine gets: the collector half lives in `AgentWorld::accepted`.
#[derive(Clone)]
pub struct SimRunner {
    world: Arc<Mutex<AgentWorld>>,
    gate: Arc<CrashGate>,
}

impl SimRunner {
    pub fn new(world: Arc<Mutex<AgentWorld>>, gate: Arc<CrashGate>) -> Self {
        Self { world, gate }
    }
    fn w(&self) -> MutexGuard<'_, AgentWorld> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn do_setup(&self, ep: &Endpoint) -> Result<(), RunnerError> {
        let vast = vast_of(ep)?;
        let mut w = self.w();
        w.sync();
        if !self.gate.tick() {
            return Err(err("setup", "the scheduler process is dead"));
        }
        if !w.running_on_market(vast) {
            return Err(err("setup", format!("instance {vast} does not answer")));
        }
        let p = w.faults.setup_fail;
        if w.rng.chance(p) {
            return Err(err("copy the agent", "connection reset by peer"));
        }
        w.setup_done.insert(vast);
        Ok(())
    }

    fn do_start(&self, req: &StartRequest) -> Result<String, RunnerError> {
        let vast = vast_of(&req.endpoint)?;
        let mut w = self.w();
        w.sync();
        if !self.gate.tick() {
            return Err(err("start the agent", "the scheduler process is dead"));
        }
        if !w.running_on_market(vast) {
            return Err(err(
                "start the agent",
                format!("instance {vast} does not answer"),
            ));
        }
        if !w.setup_done.contains(&vast) {
            return Err(err(
                "start the agent",
                format!("no agent on instance {vast}"),
            ));
        }
        let p = w.faults.start_fail;
        if w.rng.chance(p) {
            return Err(err("start the agent", "ssh: connection timed out"));
        }
        let job = req.job.id;
        let now = self.sim_now(&w);
        if req.resume_from.is_some()
            && !w.ignore_resume
            && let Some(c) = w.home.get(&job).copied()
        {
            w.disk.insert((vast, job), c);
        }
        if w.ignore_resume {
            w.disk.remove(&(vast, job));
        }
        let start_work = w.disk.get(&(vast, job)).map(|c| c.work_ms).unwrap_or(0);
        if let Some(h) = w.home.get(&job)
            && start_work < h.work_ms
        {
            let msg = format!(
                "job {job} attempt {} started from {} ms of work but a checkpoint with {} ms was pulled (resume={})",
                req.attempt_id,
                start_work,
                h.work_ms,
                req.resume_from.is_some()
            );
            w.violations.push(msg);
        }
        let others: Vec<i64> = w
            .procs
            .values()
            .filter(|p| p.job == job && p.running() && w.accepted.contains(&p.attempt))
            .map(|p| p.attempt)
            .collect();
        if !others.is_empty() {
            let msg = format!(
                "job {job} attempt {} started while attempt(s) {others:?} still run and are accepted",
                req.attempt_id
            );
            w.violations.push(msg);
        }
        let truth = w.truth.get(&job).cloned().unwrap_or(JobTruth {
            work_ms: 60_000,
            ckpt_every_ms: None,
            fail: FailMode::Never,
        });
        let n = {
            let c = w.attempts_per_job.entry(job).or_default();
            *c += 1;
            *c
        };
        let fails = match truth.fail {
            FailMode::Never => false,
            FailMode::FirstAttempts(k) => n <= k,
            FailMode::Always => true,
        };
        let silent = w.faults.silent;
        let silent_after = if w.rng.chance(silent) {
            Some(now + w.rng.int(5_000, 600_000))
        } else {
            None
        };
        let speed = gpu_speed_ppm(&w.gpu_of(vast));
        w.trace.push(format!(
            "{now} agent: attempt {} of job {job} starts on {vast} at {start_work}/{} ms{}",
            req.attempt_id,
            truth.work_ms,
            if silent_after.is_some() {
                " (its agent will go silent)"
            } else {
                ""
            }
        ));
        w.procs.insert(
            req.attempt_id,
            Proc {
                job,
                attempt: req.attempt_id,
                fence: req.fence,
                vast_id: vast,
                started_ms: now,
                start_work_ms: start_work,
                work_ms: start_work.min(truth.work_ms),
                total_ms: truth.work_ms,
                speed_ppm: speed.max(1),
                last_ms: now,
                state: ProcState::Running,
                silent_after,
                ckpt_every_ms: truth.ckpt_every_ms,
                fail_at_ms: fails
                    .then_some(truth.work_ms / 2)
                    .filter(|f| *f > start_work),
                last_ckpt_ms: None,
                seq: 0,
                report: None,
                delivered: Vec::new(),
            },
        );
        w.accepted.insert(req.attempt_id);
        w.advance(now);
        drop(w);
        if !self.gate.tick() {
            // Started, but the scheduler died before it heard so.
            return Err(err("start the agent", "the scheduler process died"));
        }
        Ok(format!("sim-{}", req.attempt_id))
    }

    fn sim_now(&self, w: &AgentWorld) -> EpochMs {
        w.sim.lock().now_ms()
    }

    fn do_heartbeats(&self, active: &[ActiveAttempt]) -> Vec<HeartbeatObs> {
        let mut w = self.w();
        if self.gate.crashed() {
            return Vec::new();
        }
        w.sync();
        let mut out = Vec::new();
        for a in active {
            if !w.accepted.contains(&a.attempt_id) {
                continue;
            }
            let (lost, dup, reorder) = {
                let f = w.faults.clone();
                (
                    w.rng.chance(f.hb_lost),
                    w.rng.chance(f.hb_dup),
                    w.rng.chance(f.hb_reorder),
                )
            };
            let Some(p) = w.procs.get_mut(&a.attempt_id) else {
                continue;
            };
            let Some(newest) = p.report.clone() else {
                continue;
            };
            let hb = if lost {
                p.delivered.last().cloned()
            } else {
                Some(newest)
            };
            let Some(hb) = hb else { continue };
            if reorder && let Some(old) = p.delivered.first().cloned() {
                out.push(old);
            }
            out.push(hb.clone());
            if dup {
                out.push(hb.clone());
            }
            if p.delivered.last() != Some(&hb) {
                p.delivered.push(hb);
                if p.delivered.len() > 4 {
                    p.delivered.remove(0);
                }
            }
        }
        out
    }

    fn do_pull(&self, ep: &Endpoint, job: JobId, kind: PullKind) -> Result<bool, RunnerError> {
        let vast = vast_of(ep)?;
        let mut w = self.w();
        w.sync();
        if !self.gate.tick() {
            return Err(err("pull the checkpoints", "the scheduler process is dead"));
        }
        if !w.running_on_market(vast) {
            return Err(err(
                "pull the checkpoints",
                format!("instance {vast} does not answer"),
            ));
        }
        let p = w.faults.pull_fail;
        if w.rng.chance(p) {
            return Err(err(
                "pull the checkpoints",
                "rsync: connection unexpectedly closed",
            ));
        }
        // A swap of the whole folder, as AgentRunner::pull does.
        let on_disk = w.disk.get(&(vast, job)).copied();
        match on_disk {
            Some(c) => {
                w.home.insert(job, c);
            }
            None => {
                w.home.remove(&job);
            }
        }
        if kind == PullKind::Final
            && let Some(a) = w.disk_out.get(&(vast, job)).copied()
        {
            w.outputs.insert(job, a);
        }
        Ok(on_disk.is_some())
    }

    fn do_stop(&self, ep: &Endpoint, attempt: i64) -> Result<(), RunnerError> {
        let vast = vast_of(ep)?;
        let mut w = self.w();
        if self.gate.crashed() {
            return Err(err("stop the attempt", "the scheduler process is dead"));
        }
        w.accepted.remove(&attempt);
        w.sync();
        if !self.gate.tick() {
            return Err(err("stop the attempt", "the scheduler process is dead"));
        }
        if !w.running_on_market(vast) {
            return Err(err(
                "stop the attempt",
                format!("instance {vast} does not answer"),
            ));
        }
        let now = self.sim_now(&w);
        w.kill(attempt, now, "stopped by the scheduler");
        Ok(())
    }
}

impl Runner for SimRunner {
    fn setup<'a>(
        &'a self,
        _key: InstanceKey,
        ep: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), RunnerError>> {
        let r = self.do_setup(ep);
        Box::pin(async move { r })
    }

    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<String, RunnerError>> {
        let r = self.do_start(req);
        Box::pin(async move { r })
    }

    fn readopt(&self, _job: JobId, attempt_id: i64, _fence: i64, _token_hash: Option<&str>) {
        if !self.gate.crashed() {
            self.w().accepted.insert(attempt_id);
        }
    }

    fn heartbeats<'a>(&'a self, active: &'a [ActiveAttempt]) -> BoxFuture<'a, Vec<HeartbeatObs>> {
        let r = self.do_heartbeats(active);
        Box::pin(async move { r })
    }

    fn pull<'a>(
        &'a self,
        ep: &'a Endpoint,
        job: JobId,
        _attempt_id: Option<i64>,
        kind: PullKind,
        _dest: &'a Path,
    ) -> BoxFuture<'a, Result<bool, RunnerError>> {
        let r = self.do_pull(ep, job, kind);
        Box::pin(async move { r })
    }

    fn stop<'a>(
        &'a self,
        ep: &'a Endpoint,
        _job: JobId,
        attempt_id: i64,
    ) -> BoxFuture<'a, Result<(), RunnerError>> {
        let r = self.do_stop(ep, attempt_id);
        Box::pin(async move { r })
    }

    fn forget(&self, attempt_id: i64) {
        if !self.gate.crashed() {
            self.w().accepted.remove(&attempt_id);
        }
    }
}
