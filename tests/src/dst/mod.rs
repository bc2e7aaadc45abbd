//! Deterministic simulation testing of the scheduler (ARCHITECTURE §2).
//!
//! One seed fixes a whole run: the market (machines, prices, boot times, churn, fault rates of
//! `vast::sim`), the sweep (jobs, their true runtimes, checkpoint intervals, which ones fail),
//! the API faults, the agents' faults, the step times, and where the scheduler is killed.
//!
//! What is real: the [`Engine`] shell with the pure reconciler inside, its journal format
//! ([`EngineState`]), its cost book (the ledger's accrual and attribution), and the market model
//! (`vast::sim::Market` through `SimMarket`, i.e. the same JSON bodies the HTTP client sends).
//! What is simulated: the agents, job processes and disks ([`agents`]), the transport (calls
//! that fail when an instance does not run), the collector's memory, the clock (virtual, moved
//! by the driver), and process death ([`gate`]: the engine is dropped at an arbitrary effect
//! and rebuilt from its journal).
//!
//! After every step the invariants are checked; at the end, the ones that need a drained queue.
//! A failing seed prints the one command that replays it.

pub mod agents;
pub mod effects;
pub mod gate;
pub mod rng;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rust_decimal::Decimal;
use scheduler::clock::EpochMs;
use scheduler::market::SharedMarket;
use scheduler::market::sim::SimMarket;
use scheduler::reconcile::{
    Engine, EngineConfig, InstState, JobReq, JobState, JobView, ReconcileConfig, label_prefix,
};
use serde::Serialize;

use agents::{AgentFaults, AgentWorld, FailMode, JobTruth, ProcState, SimRunner};
use effects::{ApiFaults, CrashJournal, FaultyMarket, MarketSabotage};
use gate::CrashGate;
use rng::{Fnv, Rng};

/// The workspace name of every simulated run (labels are `vc-dst-<key>`).
pub const WORKSPACE: &str = "dst";

/// Deliberate breakage, to prove the checker catches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// The market answers "destroyed" without destroying (an engine that skips its destroys).
    pub swallow_destroys: bool,
    /// Attempts start from scratch, whatever checkpoint they were given.
    pub ignore_resume: bool,
    /// On the first restart the journal comes back without the cost book of one instance.
    pub lose_book_on_restart: bool,
    /// Force at least one restart (so `lose_book_on_restart` has something to act on).
    pub force_restart: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DstOptions {
    pub sabotage: Sabotage,
    /// Keep the full trace in the outcome (for the determinism test and replays).
    pub keep_trace: bool,
}

/// Everything a seed draws before the run starts.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub machines: usize,
    pub sim_faults: vast::sim::SimFaults,
    pub api: ApiFaults,
    pub agent: AgentFaults,
    pub jobs: Vec<(JobView, JobTruth)>,
    pub budgets: Vec<(String, Decimal)>,
    /// Per step: probability that the scheduler is killed somewhere in that step.
    pub crash_per_step: f64,
    /// Per step: probability that an instance of ours is hit by a forced fault.
    pub forced_fault_per_step: f64,
    pub gap_ms: (i64, i64),
    /// Pacing: finish by this many hours after the start (`ReconcileConfig::deadline_ms`).
    pub deadline_h: Option<f64>,
}

pub fn reconcile_config() -> ReconcileConfig {
    ReconcileConfig {
        boot_timeout_ms: 300_000,
        setup_timeout_ms: 120_000,
        heartbeat_interval_ms: 30_000,
        start_timeout_ms: 90_000,
        idle_timeout_ms: 90_000,
        provision_grace_ms: 60_000,
        listing_grace_ms: 30_000,
        destroy_retry_ms: 20_000,
        max_instances: 4,
        backoff_initial_ms: 10_000,
        backoff_max_ms: 60_000,
        outbid_max_wait_ms: 120_000,
        accrual_interval_ms: 10_000,
        ..ReconcileConfig::default()
    }
}

/// A job as the queue would hold it.
pub fn job_view(
    id: i64,
    experiment: &str,
    gpus: u32,
    est_runtime_s: u64,
    interruptible: bool,
    checkpoints: bool,
) -> JobView {
    JobView::queued(
        id,
        experiment,
        format!("job-{id}"),
        "python train.py",
        JobReq {
            gpus,
            gpu_name: None,
            min_gpu_ram_gb: None,
            disk_gb: 10.0,
            image: "vastai/base-image:dst".into(),
            max_dph: None,
            interruptible,
            checkpoints,
            est_runtime_s,
        },
    )
}

impl Scenario {
    pub fn from_seed(seed: u64) -> Self {
        let mut r = Rng::stream(seed, 0x5CE);
        let sim_faults = vast::sim::SimFaults {
            stuck_created: if r.chance(0.5) {
                r.range(0.0, 0.15)
            } else {
                0.0
            },
            exited: r.range(0.0, 0.1),
            offline: r.range(0.0, 0.1),
            slow_loading: r.range(0.0, 0.2),
            slow_loading_factor: 5.0,
            fault_after_mean_h: 0.3,
            outbid_per_hour: if r.chance(0.7) {
                r.range(0.0, 3.0)
            } else {
                0.0
            },
            outbid_hold_mean_h: 0.05,
            gpu_taken_on_stop: 0.0,
            gpu_taken_hold_mean_h: 0.2,
            http_429: 0.0,
            http_5xx: 0.0,
        };
        let api = ApiFaults {
            rate_limited: r.range(0.0, 0.08),
            server_error: r.range(0.0, 0.05),
            create_answer_lost: r.range(0.0, 0.1),
        };
        let agent = AgentFaults {
            setup_fail: r.range(0.0, 0.1),
            start_fail: r.range(0.0, 0.1),
            pull_fail: r.range(0.0, 0.1),
            silent: r.range(0.0, 0.15),
            hb_lost: r.range(0.0, 0.2),
            hb_dup: r.range(0.0, 0.1),
            hb_reorder: r.range(0.0, 0.1),
        };
        let n = r.int(2, 6);
        let two_exps = r.chance(0.4);
        let mut jobs = Vec::new();
        for i in 0..n {
            let exp = if two_exps && i % 2 == 1 {
                "exp-b"
            } else {
                "exp-a"
            };
            let gpus = if r.chance(0.2) { 2 } else { 1 };
            let est = r.int(60, 400) as u64;
            let ckpt = r.chance(0.5);
            let interruptible = ckpt || r.chance(0.1);
            let work_ms = (est as f64 * 1000.0 * r.range(0.7, 1.5)) as i64;
            let ckpt_every_ms = ckpt.then(|| (work_ms / r.int(3, 8)).max(1000));
            let fail = match r.int(0, 99) {
                0..=7 => FailMode::Always,
                8..=19 => FailMode::FirstAttempts(1),
                _ => FailMode::Never,
            };
            jobs.push((
                job_view(i + 1, exp, gpus, est, interruptible, ckpt),
                JobTruth {
                    work_ms,
                    ckpt_every_ms,
                    fail,
                },
            ));
        }
        let budgets = if r.chance(0.25) {
            let cents = r.int(1, 40);
            vec![("exp-a".to_string(), Decimal::new(cents, 3))]
        } else {
            Vec::new()
        };
        Scenario {
            seed,
            machines: r.int(24, 48) as usize,
            sim_faults,
            api,
            agent,
            jobs,
            budgets,
            crash_per_step: if r.chance(0.8) {
                r.range(0.0, 0.02)
            } else {
                0.0
            },
            forced_fault_per_step: r.range(0.0, 0.01),
            gap_ms: (2_000, 30_000),
            // Drawn last, so that adding it changed no other draw of existing seeds.
            deadline_h: r.chance(0.3).then(|| r.range(0.05, 2.0)),
        }
    }
}

/// Counts of what a run went through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    pub steps: u64,
    pub virtual_s: i64,
    pub restarts: u64,
    pub forced_faults: u64,
    pub api_faults: u64,
    pub purchases: u64,
    pub jobs: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub budget_held: usize,
    pub attempts: usize,
    pub interrupted_attempts: u64,
    pub resumed_from_checkpoint: u64,
    pub zombie_overlap_ms: i64,
    pub cost: Decimal,
    pub market_charged: Decimal,
    /// Largest |ledger − market| of one instance.
    pub max_instance_drift: Decimal,
}

#[derive(Debug, Clone)]
pub struct SeedOutcome {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub stats: RunStats,
}

impl SeedOutcome {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The command that replays one seed exactly.
pub fn replay_command(seed: u64) -> String {
    format!("VASTICLAUDE_DST_SEED={seed} cargo test -p tests --test it dst::seeds -- --nocapture")
}

struct Rig {
    gate: Arc<CrashGate>,
    agents: Arc<Mutex<AgentWorld>>,
    market: Arc<FaultyMarket>,
    journal: Arc<CrashJournal>,
    cfg: EngineConfig,
}

impl Rig {
    async fn engine(&self) -> Engine {
        let runner = Arc::new(SimRunner::new(self.agents.clone(), self.gate.clone()));
        let market: SharedMarket = self.market.clone();
        // A journal that cannot be read is a bug in the simulation itself.
        Engine::new(self.cfg.clone(), market, runner, self.journal.clone())
            .await
            .expect("the in-memory journal loads")
    }
    fn agents(&self) -> std::sync::MutexGuard<'_, AgentWorld> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A scratch folder for the engine's home. The engine fsyncs its status snapshots; on tmpfs
/// that costs nothing, so use `/dev/shm` where there is one.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("vc-dst-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("a temporary folder")
}

/// Run one seed to the end (drained, stuck on a budget, or the virtual deadline).
pub fn run_seed(seed: u64, opts: &DstOptions) -> SeedOutcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(run_seed_async(seed, opts))
}

async fn run_seed_async(seed: u64, opts: &DstOptions) -> SeedOutcome {
    let sc = Scenario::from_seed(seed);
    let home = scratch_dir();
    let start: EpochMs = vast::sim::DEFAULT_START_MS;
    let mut simcfg = vast::sim::SimConfig::with_seed(seed);
    simcfg.machines = sc.machines;
    simcfg.start_ms = Some(start);
    simcfg.root_dir = Some(home.path().join("sim"));
    simcfg.boot = vast::sim::BootTimes {
        created_s: (2.0, 10.0),
        loading_min_s: 5.0,
        loading_median_s: 40.0,
        loading_max_s: 300.0,
        restart_s: (5.0, 30.0),
    };
    simcfg.faults = sc.sim_faults.clone();
    // The engine's book does not price bandwidth; keep it out so the ledger can be compared.
    simcfg.bandwidth = vast::sim::Bandwidth {
        up_bytes_per_s: (0, 0),
        down_bytes_per_s: (0, 0),
    };
    let sim = SimMarket::new(vast::sim::Market::new(simcfg));
    let gate = Arc::new(CrashGate::new());
    let rcfg = reconcile_config();
    let mut world = AgentWorld::new(
        sim.clone(),
        gate.clone(),
        seed,
        sc.agent.clone(),
        rcfg.heartbeat_interval_ms,
    );
    world.ignore_resume = opts.sabotage.ignore_resume;
    for (j, t) in &sc.jobs {
        world.truth.insert(j.id, t.clone());
    }
    let agents = Arc::new(Mutex::new(world));
    let mut market = FaultyMarket::new(
        sim.clone(),
        agents.clone(),
        gate.clone(),
        seed,
        sc.api.clone(),
    );
    market.sabotage = MarketSabotage {
        swallow_destroys: opts.sabotage.swallow_destroys,
    };
    let market = Arc::new(market);
    let journal = Arc::new(CrashJournal::new(gate.clone()));
    let mut cfg = EngineConfig::new(WORKSPACE, home.path().join("home"));
    cfg.reconcile = rcfg.clone();
    cfg.reconcile.deadline_ms = sc
        .deadline_h
        .map(|h| start + (h * 3_600_000.0).round() as i64);
    cfg.offer_query = "num_gpus>=1".into();
    cfg.offer_ttl_ms = 30_000;
    let rig = Rig {
        gate: gate.clone(),
        agents,
        market,
        journal,
        cfg,
    };

    let mut trace: Vec<String> = Vec::new();
    let mut fnv = Fnv::default();
    let mut push = |trace: &mut Vec<String>, line: String, keep: bool| {
        fnv.write(line.as_bytes());
        if keep {
            trace.push(line);
        }
    };
    let keep = opts.keep_trace;
    let mut violations: Vec<String> = Vec::new();
    let mut stats = RunStats {
        jobs: sc.jobs.len(),
        ..RunStats::default()
    };

    let mut engine = rig.engine().await;
    engine
        .add_jobs(sc.jobs.iter().map(|(j, _)| j.clone()).collect())
        .await
        .expect("the journal accepts the jobs");
    for (exp, limit) in &sc.budgets {
        engine
            .set_budget(exp, *limit, Decimal::new(8, 1))
            .await
            .expect("the journal accepts the budget");
    }
    let mut r = Rng::stream(seed, 0xD21F);
    let mut now = start;
    let deadline = start + 24 * 3_600_000;
    let mut max_gap = 0i64;
    let mut prev_state: BTreeMap<i64, JobState> = BTreeMap::new();
    let mut budget_peak: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    let mut forced_restart_done = false;
    let mut quiet: (EpochMs, Vec<(i64, JobState, u32, u32)>) = (now, Vec::new());
    let mut queue_drained_at: Option<EpochMs> = None;
    push(
        &mut trace,
        format!(
            "scenario: {} machines, jobs {:?}, budgets {:?}, crash/step {:.4}, sim faults {:?}, api {:?}, agents {:?}",
            sc.machines,
            sc.jobs
                .iter()
                .map(|(j, t)| (
                    j.id,
                    j.experiment.clone(),
                    j.req.gpus,
                    j.req.est_runtime_s,
                    j.req.interruptible,
                    t.work_ms,
                    t.ckpt_every_ms,
                    t.fail
                ))
                .collect::<Vec<_>>(),
            sc.budgets,
            sc.crash_per_step,
            sc.sim_faults,
            sc.api,
            sc.agent
        ),
        keep,
    );
    let mut engine_purchases = 0u64;
    let mut interrupted = 0u64;
    let mut resumed = 0u64;
    loop {
        // A forced fault on one of our live instances, at the market's current time.
        if r.chance(sc.forced_fault_per_step) {
            let live = sim.live_with_prefix(&label_prefix(WORKSPACE));
            if !live.is_empty() {
                let id = live[r.int(0, live.len() as i64 - 1) as usize] as u64;
                let kind = r.int(0, 2);
                let res = {
                    let mut m = sim.lock();
                    match kind {
                        0 => m.force_outbid(id).map(|_| "outbid"),
                        1 => m.force_offline(id).map(|_| "offline"),
                        _ => m.force_exit(id).map(|_| "exit"),
                    }
                };
                if let Ok(what) = res {
                    stats.forced_faults += 1;
                    push(
                        &mut trace,
                        format!("{now} fault: forced {what} of Vast {id}"),
                        keep,
                    );
                }
                rig.agents().sync();
            }
        }
        let gap = r.int(sc.gap_ms.0, sc.gap_ms.1);
        max_gap = max_gap.max(gap);
        now += gap;
        let crash_here = r.chance(sc.crash_per_step)
            || (opts.sabotage.force_restart && !forced_restart_done && stats.steps == 40);
        if crash_here {
            let at = r.int(1, 12);
            gate.arm(at);
        }
        let report = engine.step(now).await;
        stats.steps += 1;
        engine_purchases += engine.stats.purchases;
        interrupted += engine.stats.attempts_interrupted;
        resumed += engine.stats.resumed_from_checkpoint;
        engine.stats = Default::default();
        let line = match &report {
            Ok(rep) => format!(
                "{now} step {}: {} actions, {} errors",
                stats.steps,
                rep.actions,
                rep.errors.len()
            ),
            Err(e) => format!("{now} step {}: journal: {e}", stats.steps),
        };
        push(&mut trace, line, keep);
        for e in engine.drain_events() {
            push(
                &mut trace,
                format!("{} {}: {}", e.at_ms, e.kind, e.detail),
                keep,
            );
        }
        for l in rig.market.drain_log() {
            stats.api_faults += 1;
            push(&mut trace, l, keep);
        }
        for l in std::mem::take(&mut rig.agents().trace) {
            push(&mut trace, l, keep);
        }
        if gate.crashed() {
            stats.restarts += 1;
            forced_restart_done = true;
            drop(engine);
            gate.restart();
            rig.agents().controller_restarted();
            if opts.sabotage.lose_book_on_restart {
                rig.journal.tamper_next_load(Box::new(|st| {
                    let first = st.book.instances.keys().next().copied();
                    if let Some(k) = first {
                        st.book.instances.remove(&k);
                    }
                }));
            }
            engine = rig.engine().await;
            push(
                &mut trace,
                format!(
                    "{now} crash: the scheduler was killed after {} effects and restarted from its journal",
                    gate.ticks()
                ),
                keep,
            );
        } else {
            gate.disarm();
        }

        // ---- invariants after every step
        let w = engine.world();
        for (j, _) in &sc.jobs {
            match w.jobs.get(&j.id) {
                None => violations.push(format!("job {} vanished from the journal", j.id)),
                Some(v) => {
                    if let Some(prev) = prev_state.get(&j.id)
                        && prev.is_terminal()
                        && *prev != v.state
                    {
                        violations.push(format!(
                            "job {} went from {} back to {}",
                            j.id,
                            prev.as_str(),
                            v.state.as_str()
                        ));
                    }
                    prev_state.insert(j.id, v.state);
                }
            }
        }
        {
            let a = rig.agents();
            for (job, atts) in a.live_accepted_by_job() {
                if atts.len() > 1 {
                    violations.push(format!("job {job} runs twice at once: attempts {atts:?}"));
                }
                if w.jobs.get(&job).is_some_and(|j| j.state.is_terminal()) {
                    violations.push(format!(
                        "job {job} is terminal but attempts {atts:?} still run"
                    ));
                }
            }
        }
        let costs = engine.costs(now);
        if costs.instances_total != costs.experiments_total {
            violations.push(format!(
                "money not conserved at {now}: per-instance sum {} != per-experiment sum {}",
                costs.instances_total, costs.experiments_total
            ));
        }
        for (exp, limit) in &sc.budgets {
            let spent = costs.per_experiment.get(exp).copied().unwrap_or_default();
            // What this experiment's live instances cost per hour right now.
            let rate: Decimal = w
                .instances
                .values()
                .filter(|i| i.state != InstState::Gone && i.experiment == *exp)
                .map(|i| i.offer.dph)
                .sum();
            let e = budget_peak
                .entry(exp.clone())
                .or_insert((Decimal::ZERO, Decimal::ZERO));
            if spent <= *limit {
                e.1 = e.1.max(rate);
            }
            e.0 = e.0.max(spent);
        }
        {
            let mut a = rig.agents();
            violations.append(&mut a.violations);
        }
        if violations.len() > 20 {
            break;
        }
        if w.is_drained() || engine.is_stuck() {
            break;
        }
        // Nothing rented and nothing moved for 30 virtual minutes: what is still queued waits
        // for something outside the run (a budget raise); stop here and judge it below.
        let fingerprint: Vec<(i64, JobState, u32, u32)> = w
            .jobs
            .values()
            .map(|j| (j.id, j.state, j.failures, j.interruptions))
            .collect();
        let nothing_live = w.instances.values().all(|i| i.state == InstState::Gone);
        if !nothing_live || fingerprint != quiet.1 {
            quiet = (now, fingerprint);
        } else if now - quiet.0 >= 1_800_000 {
            push(
                &mut trace,
                format!("{now} idle: nothing rented and nothing changed for 30 minutes"),
                keep,
            );
            break;
        }
        // The queue drained (every job terminal or held): an hour later nothing may be left.
        let drained_queue = w
            .jobs
            .values()
            .all(|j| j.state.is_terminal() || j.budget_held);
        match (drained_queue, queue_drained_at) {
            (true, None) => queue_drained_at = Some(now),
            (false, _) => queue_drained_at = None,
            (true, Some(t)) if now - t >= 3_600_000 => {
                push(
                    &mut trace,
                    format!("{now} the queue drained an hour ago; judging what is left"),
                    keep,
                );
                break;
            }
            _ => {}
        }
        if now >= deadline {
            violations.push(format!(
                "the queue did not drain within {} virtual hours: {}",
                (deadline - start) / 3_600_000,
                w.jobs
                    .values()
                    .map(|j| format!("job {} {}", j.id, j.state.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            break;
        }
    }

    // ---- invariants at the end
    let w = engine.world().clone();
    let costs = engine.costs(now);
    let cfg = reconcile_config();
    {
        let a = rig.agents();
        for (j, truth) in &sc.jobs {
            let Some(v) = w.jobs.get(&j.id) else { continue };
            match v.state {
                JobState::Succeeded => match a.outputs.get(&j.id) {
                    None => {
                        violations.push(format!("job {} succeeded but no output was pulled", j.id))
                    }
                    Some(att) => {
                        let done = a.procs.get(att).is_some_and(|p| {
                            p.work_ms >= p.total_ms
                                && matches!(
                                    p.state,
                                    ProcState::Exited { code: 0, .. } | ProcState::Killed { .. }
                                )
                        });
                        if !done {
                            violations.push(format!("job {} succeeded with the output of attempt {att}, which never finished", j.id));
                        }
                        if truth.fail == FailMode::Always {
                            violations.push(format!(
                                "job {} always fails but was marked succeeded",
                                j.id
                            ));
                        }
                    }
                },
                JobState::Failed => {
                    if v.reason.is_none() {
                        violations.push(format!("job {} failed without a reason", j.id));
                    }
                    let healthy = match truth.fail {
                        FailMode::Never => true,
                        FailMode::FirstAttempts(k) => k < v.max_attempts,
                        FailMode::Always => false,
                    };
                    if healthy && v.interruptions < cfg.max_interruptions {
                        violations.push(format!(
                            "job {} failed ({}) although its command succeeds and it was interrupted only {} times",
                            j.id,
                            v.reason.clone().unwrap_or_default(),
                            v.interruptions
                        ));
                    }
                }
                JobState::Cancelled => {}
                _ if v.budget_held => {}
                // Queued work that the budget's reservation does not admit waits for a raise.
                JobState::Queued if w.budgets.contains_key(&v.experiment) => {}
                s => violations.push(format!(
                    "job {} ended the run {} (not terminal, not held by a budget)",
                    j.id,
                    s.as_str()
                )),
            }
        }
        stats.attempts = a.procs.len();
        stats.zombie_overlap_ms = a.zombie_overlap_ms;
    }
    let leaked = sim.live_with_prefix(&label_prefix(WORKSPACE));
    if !leaked.is_empty() {
        violations.push(format!(
            "instances leaked on the account after the run: {leaked:?}"
        ));
    }
    // Ledger against the market's own charges, per instance. Every instance on the simulated
    // account is ours; one the journal never learned of (an orphan) is booked at zero.
    let (charges, events) = {
        let m = sim.lock();
        let out: Vec<(u64, Option<vast::sim::Charges>)> = m
            .all_instance_ids()
            .into_iter()
            .map(|id| (id, m.charges(id)))
            .collect();
        (out, m.events().to_vec())
    };
    let mut market_total = Decimal::ZERO;
    for (id, ch) in &charges {
        let Some(ch) = ch else { continue };
        market_total += ch.total;
        let inst = w.instances.values().find(|i| i.vast_id == Some(*id as i64));
        let label = inst
            .map(|i| i.label.clone())
            .unwrap_or_else(|| format!("(orphan {id})"));
        let booked = inst
            .and_then(|i| costs.per_instance.get(&i.label))
            .copied()
            .unwrap_or_default();
        let drift = (booked - ch.total).abs();
        stats.max_instance_drift = stats.max_instance_drift.max(drift);
        // The book sees state changes when it polls: each change may be up to a step late.
        let changes = events.iter().filter(|e| e.instance == Some(*id)).count() as i64;
        let rate = inst
            .map(|i| i.offer.dph.max(i.offer.price()))
            .unwrap_or(Decimal::ONE);
        let allowed = Decimal::new(5, 4)
            + rate * Decimal::from((changes * 2 + 2) * max_gap) / Decimal::from(3_600_000);
        if drift > allowed {
            violations.push(format!(
                "ledger {booked} != market {} for {label} (Vast {id}): drift {drift} exceeds {allowed}",
                ch.total
            ));
        }
    }
    for (exp, limit) in &sc.budgets {
        let (peak, rate) = budget_peak.get(exp).copied().unwrap_or_default();
        // One accrual tick (plus one step of polling) of what was running when the limit hit.
        let tick = Decimal::from(cfg.accrual_interval_ms + 2 * max_gap) / Decimal::from(3_600_000);
        let allowed = *limit + rate * tick + Decimal::new(5, 4);
        if peak > allowed {
            violations.push(format!(
                "budget of {exp} overrun: spent {peak} against {limit} (allowed up to {allowed})"
            ));
        }
    }
    stats.virtual_s = (now - start) / 1000;
    stats.purchases = engine_purchases;
    stats.interrupted_attempts = interrupted;
    stats.resumed_from_checkpoint = resumed;
    stats.succeeded = w
        .jobs
        .values()
        .filter(|j| j.state == JobState::Succeeded)
        .count();
    stats.failed = w
        .jobs
        .values()
        .filter(|j| j.state == JobState::Failed)
        .count();
    stats.budget_held = w
        .jobs
        .values()
        .filter(|j| j.budget_held && !j.state.is_terminal())
        .count();
    stats.cost = costs.instances_total;
    stats.market_charged = market_total;
    let summary = serde_json::to_string(&w).unwrap_or_default();
    push(&mut trace, summary, keep);
    push(&mut trace, format!("costs {:?}", costs), keep);
    push(&mut trace, format!("market events {}", events.len()), keep);
    drop(engine);
    drop(rig);
    SeedOutcome {
        seed,
        violations,
        trace_hash: fnv.finish(),
        trace,
        stats,
    }
}
