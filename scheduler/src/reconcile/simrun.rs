//! A whole scheduler run on the in-process simulator with real processes: the harness behind
//! `vasticlaude demo` and the end-to-end tests.
//!
//! The simulator's clock follows the wall clock (instances boot in a second or two), the
//! agent and the job commands really run in the simulated instances' folders through the local
//! transport, and faults are injected at chosen moments: a host that goes offline while the
//! first instance boots (a failed boot) and an outbid of an instance whose job has a pulled
//! checkpoint (a preemption that must resume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::clock::{SharedClock, SystemClock};
use crate::market::SharedMarket;
use crate::market::sim::SimMarket;

use super::book::CostSummary;
use super::core::ReconcileConfig;
use super::engine::{Engine, EngineConfig, EngineStats, ExperimentReport, Journal};
use super::model::*;
use super::runner::{AgentRunner, AgentRunnerOptions};

/// The demo's training script (POSIX sh + awk): progress, atomic checkpoints, resume.
pub const DEMO_TRAIN_SH: &str = include_str!("demo_train.sh");

/// Which faults to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Take the host of the first purchased instance offline while it boots.
    pub fail_first_boot: bool,
    /// Outbid the instance of the first job with a pulled checkpoint.
    pub preempt_once: bool,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct SimRunOptions {
    pub home: PathBuf,
    pub seed: u64,
    pub workspace: String,
    pub faults: FaultPlan,
    /// Wall-time limit.
    pub deadline: Duration,
    pub step_interval: Duration,
    pub agent_binary: PathBuf,
    pub reconcile: ReconcileConfig,
    pub heartbeat_interval_ms: u64,
    pub machines: usize,
}

impl SimRunOptions {
    /// Settings that finish a small sweep in well under a minute.
    pub fn fast(home: PathBuf, seed: u64, agent_binary: PathBuf) -> Self {
        let reconcile = ReconcileConfig {
            boot_timeout_ms: 20_000,
            setup_timeout_ms: 20_000,
            heartbeat_interval_ms: 1_000,
            start_timeout_ms: 10_000,
            idle_timeout_ms: 1_500,
            provision_grace_ms: 5_000,
            listing_grace_ms: 5_000,
            destroy_retry_ms: 3_000,
            max_instances: 4,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 5_000,
            outbid_max_wait_ms: 8_000,
            accrual_interval_ms: 1_000,
            ..ReconcileConfig::default()
        };
        Self {
            home,
            seed,
            workspace: "demo".into(),
            faults: FaultPlan {
                fail_first_boot: true,
                preempt_once: true,
            },
            deadline: Duration::from_secs(55),
            step_interval: Duration::from_millis(200),
            agent_binary,
            reconcile,
            heartbeat_interval_ms: 500,
            machines: 48,
        }
    }
}

/// A sweep of the demo script: `n` jobs over learning rates, in `experiment`.
pub fn demo_jobs(experiment: &str, n: usize, first_id: JobId, steps: u32) -> Vec<JobView> {
    (0..n)
        .map(|i| {
            let lr = format!("0.{:02}", 5 + 5 * (i % 19));
            let mut env = BTreeMap::new();
            env.insert("STEPS".to_string(), steps.to_string());
            env.insert("CKPT_EVERY".to_string(), "3".to_string());
            env.insert("STEP_SECONDS".to_string(), "0.25".to_string());
            env.insert("LR".to_string(), lr.clone());
            let mut j = JobView::queued(
                first_id + i as i64,
                experiment,
                format!("lr={lr}"),
                "sh ./train.sh",
                JobReq {
                    gpus: 1,
                    gpu_name: None,
                    min_gpu_ram_gb: None,
                    disk_gb: 10.0,
                    image: "vastai/base-image:demo".into(),
                    max_dph: None,
                    interruptible: true,
                    checkpoints: true,
                    est_runtime_s: 120,
                },
            );
            j.env = env;
            j
        })
        .collect()
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct SimRunOutcome {
    pub ok: bool,
    pub wall_s: f64,
    pub jobs_total: usize,
    pub jobs_succeeded: usize,
    pub jobs_failed: usize,
    pub jobs_queued: usize,
    /// Jobs that were interrupted and then finished after resuming from a checkpoint.
    pub preemptions_recovered: usize,
    pub failed_boots: u64,
    /// Our instances still on the account.
    pub instances_left: usize,
    pub costs: CostSummary,
    /// What the store-backed ledger holds for the experiments (whole nano-dollars, rounded
    /// down per instance with the rest carried).
    pub ledger_total: Decimal,
    /// The simulator's own exact charges (sum over every instance).
    pub market_charged_total: Decimal,
    /// The simulator's own exact charges per instance label.
    pub market_per_instance: BTreeMap<String, Decimal>,
    pub per_experiment_sum_equals_per_instance_sum: bool,
    pub stats: EngineStats,
    pub reports: Vec<ExperimentReport>,
    pub outputs: PathBuf,
    pub events: Vec<String>,
    pub stopped_early: Option<String>,
}

/// Build the simulator, the runner (collector on loopback) and an engine over `journal`.
pub async fn build(
    opts: &SimRunOptions,
    journal: Arc<dyn Journal>,
    sim: Option<SimMarket>,
) -> Result<(Engine, SimMarket, SharedClock), String> {
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = match sim {
        Some(s) => s,
        None => {
            let mut cfg = vast::sim::SimConfig::with_seed(opts.seed);
            cfg.machines = opts.machines;
            cfg.start_ms = Some(clock.now_ms());
            cfg.root_dir = Some(opts.home.join("sim"));
            cfg.boot = vast::sim::BootTimes::fast();
            cfg.faults = vast::sim::SimFaults::none();
            SimMarket::new(vast::sim::Market::new(cfg))
        }
    };
    let code = opts.home.join("code");
    std::fs::create_dir_all(&code).map_err(|e| format!("cannot create {}: {e}", code.display()))?;
    std::fs::write(code.join("train.sh"), DEMO_TRAIN_SH)
        .map_err(|e| format!("cannot write the demo script: {e}"))?;
    let runner = AgentRunner::start(
        AgentRunnerOptions {
            agent_binary: opts.agent_binary.clone(),
            heartbeat_interval_ms: opts.heartbeat_interval_ms,
            dead_man_timeout_ms: 60_000,
            ssh: None,
            code_dir: Some(code),
            listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        },
        clock.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut cfg = EngineConfig::new(opts.workspace.clone(), opts.home.clone());
    cfg.reconcile = opts.reconcile.clone();
    cfg.offer_ttl_ms = 5_000;
    let market: SharedMarket = Arc::new(sim.clone());
    let ledger_url = format!(
        "sqlite://{}?mode=rwc",
        opts.home.join("ledger.db").display()
    );
    let ledger = ledger::Ledger::open(&ledger_url)
        .await
        .map_err(|e| e.to_string())?;
    let engine = Engine::new(cfg, market, runner, journal)
        .await
        .map_err(|e| e.to_string())?
        .with_ledger(ledger);
    Ok((engine, sim, clock))
}

/// Inject the planned faults when their moment has come. Returns what it did.
pub fn inject_faults(
    engine: &Engine,
    sim: &SimMarket,
    plan: &FaultPlan,
    done: &mut (bool, bool),
) -> Vec<String> {
    let mut out = Vec::new();
    let w = engine.world();
    if plan.fail_first_boot
        && !done.0
        && let Some(inst) = w
            .instances
            .values()
            .find(|i| i.state == InstState::Booting && i.vast_id.is_some())
    {
        let id = inst.vast_id.unwrap_or_default();
        if sim.lock().force_offline(id as u64).is_ok() {
            out.push(format!(
                "fault: host of {} (Vast {id}) went offline during boot",
                inst.label
            ));
            done.0 = true;
        }
    }
    if plan.preempt_once && !done.1 {
        let victim = w.jobs.values().find(|j| {
            j.state == JobState::Running
                && j.checkpoint_pulled_ms.is_some()
                && j.instance
                    .and_then(|k| w.instances.get(&k))
                    .is_some_and(|i| i.offer.bid.is_some() && i.state == InstState::Up)
        });
        if let Some(j) = victim {
            let inst = &w.instances[&j.instance.unwrap_or_default()];
            let id = inst.vast_id.unwrap_or_default();
            if sim.lock().force_outbid(id as u64).is_ok() {
                out.push(format!(
                    "fault: {} (Vast {id}) outbid while running job {}",
                    inst.label, j.id
                ));
                done.1 = true;
            }
        }
    }
    out
}

/// Summarize a finished (or stopped) run.
pub async fn outcome(
    engine: &mut Engine,
    sim: &SimMarket,
    started: Instant,
    now: i64,
    events: Vec<String>,
    stopped_early: Option<String>,
) -> SimRunOutcome {
    let _ = engine.accrue_to_ledger(now).await;
    let ledger_total = match engine.ledger() {
        Some(l) => {
            let mut t = Decimal::ZERO;
            for e in engine
                .world()
                .jobs
                .values()
                .map(|j| j.experiment.clone())
                .collect::<std::collections::BTreeSet<_>>()
            {
                if let Ok(u) = l.spent(&ledger::store::BudgetScope::Experiment(e)).await {
                    t += u.0;
                }
            }
            t
        }
        None => Decimal::ZERO,
    };
    let w = engine.world().clone();
    let count = |s: JobState| w.jobs.values().filter(|j| j.state == s).count();
    let prefix = label_prefix(&w.workspace);
    let instances_left = sim.live_with_prefix(&prefix).len();
    let costs = engine.costs(now);
    let charges = sim.charges();
    let market_charged_total = charges.iter().map(|(_, c)| *c).sum();
    let labels: BTreeMap<i64, String> = w
        .instances
        .values()
        .filter_map(|i| i.vast_id.map(|v| (v, i.label.clone())))
        .collect();
    let market_per_instance: BTreeMap<String, Decimal> = charges
        .iter()
        .map(|(id, c)| {
            (
                labels
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("vast-{id}")),
                *c,
            )
        })
        .collect();
    let equal = costs.instances_total == costs.experiments_total;
    let recovered = w
        .jobs
        .values()
        .filter(|j| j.state == JobState::Succeeded && j.interruptions > 0)
        .count();
    let succeeded = count(JobState::Succeeded);
    let outputs = engine.cfg.home.join("experiments");
    let reports = engine.drain_reports();
    SimRunOutcome {
        ok: succeeded == w.jobs.len() && instances_left == 0 && equal && stopped_early.is_none(),
        wall_s: started.elapsed().as_secs_f64(),
        jobs_total: w.jobs.len(),
        jobs_succeeded: succeeded,
        jobs_failed: count(JobState::Failed),
        jobs_queued: count(JobState::Queued),
        preemptions_recovered: recovered,
        failed_boots: engine.stats.boot_failures,
        instances_left,
        costs,
        ledger_total,
        market_charged_total,
        market_per_instance,
        per_experiment_sum_equals_per_instance_sum: equal,
        stats: engine.stats.clone(),
        reports,
        outputs,
        events,
        stopped_early,
    }
}

/// Run `engine` until drained (or stuck, or the deadline), injecting faults.
/// `on_event` sees every engine event as it happens (progress display).
pub async fn drive(
    engine: &mut Engine,
    sim: &SimMarket,
    clock: &SharedClock,
    opts: &SimRunOptions,
    mut on_event: impl FnMut(&str),
    mut stop_after: impl FnMut(&Engine) -> bool,
) -> (Vec<String>, Option<String>) {
    let started = Instant::now();
    let mut done = (false, false);
    let mut log = Vec::new();
    loop {
        let now = clock.now_ms();
        let r = match engine.step(now).await {
            Ok(r) => r,
            Err(e) => return (log, Some(format!("journal: {e}"))),
        };
        for e in engine.drain_events() {
            let line = format!("{}: {}", e.kind, e.detail);
            on_event(&line);
            log.push(line);
        }
        for f in inject_faults(engine, sim, &opts.faults, &mut done) {
            on_event(&f);
            log.push(f);
        }
        if r.drained {
            return (log, None);
        }
        if engine.is_stuck() {
            return (
                log,
                Some("nothing left that can run (budget held or no offers)".into()),
            );
        }
        if stop_after(engine) {
            return (log, Some("stopped".into()));
        }
        if started.elapsed() > opts.deadline {
            return (
                log,
                Some(format!("deadline of {} s reached", opts.deadline.as_secs())),
            );
        }
        tokio::time::sleep(opts.step_interval).await;
    }
}

/// The demo: a fresh sweep of `jobs` jobs on the simulator with faults, to the end.
pub async fn run_demo(
    opts: SimRunOptions,
    jobs: usize,
    on_event: impl FnMut(&str),
) -> Result<SimRunOutcome, String> {
    let started = Instant::now();
    let journal: Arc<dyn Journal> = Arc::new(super::engine::FileJournal::in_home(&opts.home));
    let (mut engine, sim, clock) = build(&opts, journal, None).await?;
    engine
        .add_jobs(demo_jobs("demo-sweep", jobs, 1, 12))
        .await
        .map_err(|e| e.to_string())?;
    let (events, stopped) = drive(&mut engine, &sim, &clock, &opts, on_event, |_| false).await;
    if stopped.is_some() {
        // Leave nothing rented behind, whatever happened.
        let _ = engine.teardown(clock.now_ms()).await;
    }
    let now = clock.now_ms();
    Ok(outcome(&mut engine, &sim, started, now, events, stopped).await)
}

/// The outputs of a job, where `pull` put them.
pub fn job_outputs(home: &Path, experiment: &str, job: JobId) -> PathBuf {
    super::engine::job_dir(home, experiment, job).join("outputs")
}

/// What a virtual-clock run found.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualOutcome {
    pub seed: u64,
    pub steps: u64,
    pub virtual_hours: f64,
    pub jobs_succeeded: usize,
    pub jobs_failed: usize,
    pub stats: EngineStats,
    pub costs: CostSummary,
    pub market_charged_total: Decimal,
    /// Broken invariants (empty when the run is sound).
    pub violations: Vec<String>,
}

/// The whole scheduler on the simulator's virtual clock with the market's own random faults
/// (outbids, exits, hosts offline, slow boots) and no processes: a [`VirtualRunner`] models the
/// jobs. Deterministic for a seed; checks the invariants of ARCHITECTURE §2 at the end.
pub async fn run_virtual(
    seed: u64,
    jobs: usize,
    step_ms: i64,
    max_virtual_ms: i64,
) -> VirtualOutcome {
    use crate::clock::{Clock, ManualClock};
    let mut cfg = vast::sim::SimConfig::with_seed(seed);
    cfg.machines = 40;
    // Faults far more often than on the real market, so a short sweep meets all of them.
    cfg.faults = vast::sim::SimFaults {
        stuck_created: 0.1,
        exited: 0.1,
        offline: 0.05,
        slow_loading: 0.1,
        fault_after_mean_h: 0.5,
        outbid_per_hour: 1.0,
        outbid_hold_mean_h: 0.3,
        ..vast::sim::SimFaults::none()
    };
    let start = cfg.start_ms.unwrap_or(vast::sim::DEFAULT_START_MS);
    let root = std::env::temp_dir().join(format!("vc-virtual-{}-{seed}", std::process::id()));
    cfg.root_dir = Some(root.clone());
    let sim = SimMarket::new(vast::sim::Market::new(cfg));
    let clock = ManualClock::new(start);
    let shared: SharedClock = Arc::new(clock.clone());
    let runner = Arc::new(super::virtual_runner::VirtualRunner::new(
        sim.clone(),
        shared.clone(),
        10_000,
    ));
    let mut ecfg = EngineConfig::new("dst", root.join("home"));
    ecfg.snapshots = false;
    ecfg.reconcile.idle_timeout_ms = 60_000;
    ecfg.reconcile.max_instances = 6;
    let journal: Arc<dyn Journal> = Arc::new(super::engine::MemoryJournal::default());
    let market: SharedMarket = Arc::new(sim.clone());
    let mut engine = match Engine::new(ecfg, market, runner.clone(), journal).await {
        Ok(e) => e,
        Err(e) => panic!("engine: {e}"),
    };
    let mut sweep = demo_jobs("dst", jobs, 1, 120);
    for (i, j) in sweep.iter_mut().enumerate() {
        j.env.insert("STEP_SECONDS".into(), "30".into());
        j.env.insert("CKPT_EVERY".into(), "10".into());
        j.req.est_runtime_s = 3_600;
        j.req.interruptible = i % 2 == 0;
    }
    let _ = engine.add_jobs(sweep).await;
    let mut steps = 0;
    let mut violations = Vec::new();
    loop {
        let now = clock.now_ms();
        match engine.step(now).await {
            Ok(r) if r.drained => break,
            Ok(_) => {}
            Err(e) => {
                violations.push(format!("journal: {e}"));
                break;
            }
        }
        steps += 1;
        if now - start > max_virtual_ms {
            violations.push(format!(
                "not drained after {} virtual hours",
                max_virtual_ms / 3_600_000
            ));
            break;
        }
        clock.advance(step_ms);
    }
    let now = clock.now_ms();
    let w = engine.world().clone();
    for j in w.jobs.values() {
        if !j.state.is_terminal() {
            violations.push(format!("job {} lost in state {}", j.id, j.state.as_str()));
        }
        if j.state == JobState::Failed && j.reason.is_none() {
            violations.push(format!("job {} failed without a reason", j.id));
        }
    }
    violations.extend(runner.overlaps());
    let left = sim.live_with_prefix(&label_prefix("dst"));
    if !left.is_empty() {
        violations.push(format!("instances leaked: {left:?}"));
    }
    let costs = engine.costs(now);
    if costs.instances_total != costs.experiments_total {
        violations.push(format!(
            "money not conserved: instances {} vs experiments {}",
            costs.instances_total, costs.experiments_total
        ));
    }
    let market_charged_total = sim.charges().iter().map(|(_, c)| *c).sum();
    let _ = std::fs::remove_dir_all(&root);
    VirtualOutcome {
        seed,
        steps,
        virtual_hours: (now - start) as f64 / 3_600_000.0,
        jobs_succeeded: w
            .jobs
            .values()
            .filter(|j| j.state == JobState::Succeeded)
            .count(),
        jobs_failed: w
            .jobs
            .values()
            .filter(|j| j.state == JobState::Failed)
            .count(),
        stats: engine.stats.clone(),
        costs,
        market_charged_total,
        violations,
    }
}
