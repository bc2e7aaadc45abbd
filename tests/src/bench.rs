//! The market benchmark: our scheduler against the naive baseline and a lower bound, on the
//! same seeded `vast::sim` markets (ARCHITECTURE §4).
//!
//! Each market is a fresh `vast::sim::Market` built from one seed (240 machines, realistic
//! prices, boot times with slow pulls, other renters coming and going, outbids of interruptible
//! rentals, some hosts that exit or go offline). The sweep is 200 jobs: 1, 2 or 4 GPUs,
//! runtimes from minutes to hours (log-uniform), half of them checkpointing (and so allowed on
//! interruptible rentals).
//!
//! - **Ours**: the real [`Engine`] (reconciler, planner of the core, cost book) on the virtual
//!   clock, stepping every minute, with the simulated agents of [`crate::dst::agents`] (no agent
//!   faults, no API faults: the market's own faults only), optionally paced to a deadline
//!   (`ReconcileConfig::deadline_ms`, what `vasticlaude run --finish-within` sets).
//! - **Naive**: what existing tools do, driven through its own copy of the same market: each
//!   job on its own instance, the cheapest hourly offer that fits (on-demand; `min_bid` exactly
//!   for checkpointing jobs), no reuse, no packing; an outbid or a dead instance is the end of
//!   that run: destroy it and start from scratch on a new instance.
//! - **Lower bound**: each job's runtime on its cheapest feasible GPU-hour of the market at the
//!   start (interruptible price for checkpointing jobs), with no boot, no lost work and no
//!   availability limits.
//!
//! Costs are the market's own exact charges (the simulator's billing), not our ledger's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use scheduler::clock::EpochMs;
use scheduler::market::SharedMarket;
use scheduler::market::sim::SimMarket;
use scheduler::reconcile::engine::JournalError;
use scheduler::reconcile::{Engine, EngineConfig, EngineState, JobState, Journal, ReconcileConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::dst::agents::{AgentFaults, AgentWorld, FailMode, JobTruth, SimRunner};
use crate::dst::effects::{ApiFaults, FaultyMarket};
use crate::dst::gate::CrashGate;
use crate::dst::rng::Rng;
use crate::dst::{job_view, scratch_dir};

pub const STEP_MS: i64 = 60_000;
const HORIZON_MS: i64 = 72 * 3_600_000;

/// One job of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct BenchJob {
    pub id: i64,
    pub gpus: u32,
    /// Runtime on a reference GPU (dlperf 100), seconds.
    pub work_s: u64,
    pub checkpoints: bool,
}

/// The 200-job sweep of a seed.
pub fn sweep(seed: u64, n: usize) -> Vec<BenchJob> {
    let mut r = Rng::stream(seed, 0x5EE9);
    (0..n)
        .map(|i| {
            let gpus = match r.int(0, 9) {
                0..=6 => 1,
                7..=8 => 2,
                _ => 4,
            };
            // Log-uniform between 5 minutes and 4 hours.
            let work_s = (300.0 * (48.0f64).powf(r.unit())).round() as u64;
            BenchJob {
                id: i as i64 + 1,
                gpus,
                work_s,
                checkpoints: i % 2 == 0,
            }
        })
        .collect()
}

/// The market of a seed.
pub fn market_config(seed: u64, root: &std::path::Path) -> vast::sim::SimConfig {
    let mut r = Rng::stream(seed, 0x3A7);
    let mut c = vast::sim::SimConfig::with_seed(seed);
    c.machines = 240;
    c.start_ms = Some(vast::sim::DEFAULT_START_MS);
    c.root_dir = Some(root.to_path_buf());
    c.boot = vast::sim::BootTimes::default();
    c.faults = vast::sim::SimFaults {
        stuck_created: r.range(0.0, 0.04),
        exited: r.range(0.0, 0.03),
        offline: r.range(0.0, 0.03),
        slow_loading: r.range(0.02, 0.1),
        slow_loading_factor: 5.0,
        fault_after_mean_h: 3.0,
        outbid_per_hour: r.range(0.05, 0.4),
        outbid_hold_mean_h: 0.5,
        ..vast::sim::SimFaults::none()
    };
    c.bandwidth = vast::sim::Bandwidth {
        up_bytes_per_s: (0, 0),
        down_bytes_per_s: (0, 0),
    };
    c.initial_credit = 1_000_000.0;
    c
}

/// A journal that keeps nothing: the benchmark never restarts the engine.
struct NullJournal;

impl Journal for NullJournal {
    fn load(&self) -> BoxFuture<'_, Result<Option<EngineState>, JournalError>> {
        Box::pin(async { Ok(None) })
    }
    fn save<'a>(&'a self, _state: &'a EngineState) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Figures of one strategy on one market.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub cost: f64,
    pub makespan_h: f64,
    pub lost_to_preemption: f64,
    pub instances: u64,
    pub jobs_done: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MarketResult {
    pub seed: u64,
    pub wall_s: f64,
    pub ours: Figures,
    pub naive: Figures,
    pub lower_bound: f64,
    pub ours_over_lower_bound: f64,
    /// [`capacity_bound`] at our makespan: what any schedule finishing as fast as ours must pay.
    pub capacity_bound_at_our_makespan: f64,
    pub ours_over_capacity_bound: f64,
    pub ours_over_naive: f64,
    pub makespan_ours_over_naive: f64,
}

fn f(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

fn speed_of(gpu_name: &str) -> f64 {
    vast::sim::GPU_MODELS
        .iter()
        .find(|g| g.name == gpu_name)
        .map(|g| g.dlperf / 100.0)
        .unwrap_or(0.2)
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Offers of the market now, as search returns them (all of them).
fn offers(m: &vast::sim::Market, bid: bool) -> Vec<Value> {
    let body = json!({
        "num_gpus": {"gte": 1},
        "type": if bid { "bid" } else { "on-demand" },
        "allocated_storage": 10.0,
        "order": [["dph_total", "asc"]],
    });
    m.search(&body).unwrap_or_default()
}

/// An offer's GPU count, per-GPU speed (the reference GPU = 1) and price per reference GPU-hour.
fn gpus_speed_rate(o: &Value) -> (f64, f64, f64) {
    let n = num(o, "num_gpus");
    let speed = speed_of(o.get("gpu_name").and_then(Value::as_str).unwrap_or(""));
    (n, speed, num(o, "dph_total") / n / speed)
}

/// Each job on its cheapest feasible GPU-hour, nothing else.
pub fn lower_bound(jobs: &[BenchJob], m: &vast::sim::Market) -> f64 {
    let ondemand = offers(m, false);
    let bid = offers(m, true);
    let mut total = 0.0;
    for j in jobs {
        let mut best = f64::INFINITY;
        for (list, allowed) in [(&ondemand, true), (&bid, j.checkpoints)] {
            if !allowed {
                continue;
            }
            for o in list.iter() {
                let (n, _, rate) = gpus_speed_rate(o);
                if n < f64::from(j.gpus) {
                    continue;
                }
                best = best.min(rate * f64::from(j.gpus) * j.work_s as f64 / 3600.0);
            }
        }
        if best.is_finite() {
            total += best;
        }
    }
    total
}

/// A second yardstick that respects availability: the cheapest way to do the sweep's work within
/// `hours`, using only the machines listed at the start, each for at most `hours`. Work is
/// fractional (a job may be split across machines) and each pool (checkpointing jobs at bid
/// prices or on demand; the rest on demand) may use every machine as if the other pool did not
/// exist, so this is a lower bound on any schedule that finishes in `hours` on that market
/// (boot, preemption and other renters ignored).
pub fn capacity_bound(jobs: &[BenchJob], m: &vast::sim::Market, hours: f64) -> f64 {
    let machines = |bid: bool| {
        // machine → (GPUs, reference GPUs, $ per reference GPU-hour) of its largest offer
        let mut best: BTreeMap<u64, (f64, f64, f64)> = BTreeMap::new();
        for o in offers(m, bid) {
            let (n, speed, rate) = gpus_speed_rate(&o);
            let id = o.get("machine_id").and_then(Value::as_u64).unwrap_or(0);
            let e = best.entry(id).or_insert((0.0, 0.0, 0.0));
            if n > e.0 {
                *e = (n, n * speed, rate);
            }
        }
        best
    };
    let od = machines(false);
    let bid = machines(true);
    let mut total = 0.0;
    for ckpt in [false, true] {
        // machine → (rate per reference GPU-hour, reference GPU-hours it can do in `hours`)
        let lists: &[&BTreeMap<u64, (f64, f64, f64)>] = if ckpt { &[&od, &bid] } else { &[&od] };
        let mut by_machine: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for list in lists {
            for (id, &(_, ref_gpus, rate)) in list.iter() {
                let e = by_machine
                    .entry(*id)
                    .or_insert((f64::INFINITY, ref_gpus * hours));
                e.0 = e.0.min(rate);
            }
        }
        let mut supply: Vec<(f64, f64)> = by_machine.into_values().collect();
        supply.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut work: f64 = jobs
            .iter()
            .filter(|j| j.checkpoints == ckpt)
            .map(|j| f64::from(j.gpus) * j.work_s as f64 / 3600.0)
            .sum();
        for (rate, cap) in supply {
            if work <= 0.0 {
                break;
            }
            let w = work.min(cap);
            total += w * rate;
            work -= w;
        }
        if work > 0.0 {
            return f64::INFINITY;
        }
    }
    total
}

/// Our scheduler: the real engine on the virtual clock.
pub async fn run_ours(seed: u64, jobs: &[BenchJob], deadline_h: Option<f64>) -> (Figures, f64) {
    let dir = scratch_dir();
    let sim = SimMarket::new(vast::sim::Market::new(market_config(
        seed,
        &dir.path().join("sim"),
    )));
    let lb = lower_bound(jobs, &sim.lock());
    let gate = Arc::new(CrashGate::new());
    let mut world = AgentWorld::new(sim.clone(), gate.clone(), seed, AgentFaults::none(), 60_000);
    for j in jobs {
        world.truth.insert(
            j.id,
            JobTruth {
                work_ms: j.work_s as i64 * 1000,
                ckpt_every_ms: j.checkpoints.then_some(600_000),
                fail: FailMode::Never,
            },
        );
    }
    let agents = Arc::new(Mutex::new(world));
    let market: SharedMarket = Arc::new(FaultyMarket::new(
        sim.clone(),
        agents.clone(),
        gate.clone(),
        seed,
        ApiFaults::none(),
    ));
    // Nothing crashes here: keep no copy of the state (a copy per effect is most of the cost).
    let journal = Arc::new(NullJournal);
    let mut cfg = EngineConfig::new("bench", dir.path().join("home"));
    cfg.reconcile = ReconcileConfig {
        heartbeat_interval_ms: 60_000,
        max_instances: 200,
        deadline_ms: deadline_h
            .map(|h| vast::sim::DEFAULT_START_MS + (h * 3_600_000.0).round() as i64),
        ..ReconcileConfig::default()
    };
    cfg.offer_limit = 400;
    cfg.offer_ttl_ms = 60_000;
    let runner = Arc::new(SimRunner::new(agents.clone(), gate.clone()));
    let mut engine = Engine::new(cfg, market, runner, journal)
        .await
        .expect("the in-memory journal loads");
    engine
        .add_jobs(
            jobs.iter()
                .map(|j| job_view(j.id, "sweep", j.gpus, j.work_s, j.checkpoints))
                .collect(),
        )
        .await
        .expect("the in-memory journal saves");
    let start = vast::sim::DEFAULT_START_MS;
    let mut now = start;
    let mut last_done = start;
    let mut purchases = 0;
    // VASTICLAUDE_BENCH_DEBUG=1: what went wrong, what was rented, how busy it was.
    let debug = std::env::var_os("VASTICLAUDE_BENCH_DEBUG").is_some();
    loop {
        now += STEP_MS;
        let _ = engine.step(now).await;
        purchases += engine.stats.purchases;
        engine.stats.purchases = 0;
        for e in engine.drain_events() {
            if debug && matches!(e.kind.as_str(), "warn" | "error" | "effect") {
                eprintln!("event {} {}: {}", e.at_ms, e.kind, e.detail);
            }
        }
        let w = engine.world();
        if w.jobs.values().any(|j| j.state == JobState::Succeeded) {
            let done = w.jobs.values().filter(|j| j.state.is_terminal()).count();
            if done == w.jobs.len() && last_done == start {
                last_done = now;
            }
        }
        if w.is_drained() || now - start > HORIZON_MS {
            break;
        }
    }
    let w = engine.world();
    let costs = engine.costs(now);
    if debug {
        eprintln!("stats: {:?}", engine.stats);
        for i in w.instances.values() {
            let b = engine.book().instances.get(&i.key);
            let busy: i64 = b
                .map(|b| {
                    b.spans
                        .iter()
                        .map(|s| (s.end_ms - s.start_ms) * i64::from(s.gpus))
                        .sum()
                })
                .unwrap_or(0);
            let life: i64 = b
                .map(|b| b.intervals.iter().map(|iv| iv.end_ms - iv.start_ms).sum())
                .unwrap_or(0);
            eprintln!(
                "{} {}x {} ${}/h bid {:?} dlperf {} cost {} life {:.2} h, GPU use {:.0}%",
                i.label,
                i.offer.gpus,
                i.offer.gpu_name,
                i.offer.dph,
                i.offer.bid,
                i.offer.dlperf,
                costs
                    .per_instance
                    .get(&i.label)
                    .map(|d| d.round_dp(2))
                    .unwrap_or_default(),
                life as f64 / 3.6e6,
                100.0 * busy as f64 / (life.max(1) * i64::from(i.offer.gpus)) as f64,
            );
            if std::env::var_os("VASTICLAUDE_BENCH_SPANS").is_some()
                && let Some(b) = b
            {
                for s in &b.spans {
                    eprintln!(
                        "  span {} {}g {:.2}-{:.2} h {:?}",
                        s.job,
                        s.gpus,
                        (s.start_ms - start) as f64 / 3.6e6,
                        (s.end_ms - start) as f64 / 3.6e6,
                        s.reason
                    );
                }
                for iv in &b.intervals {
                    eprintln!(
                        "  state {:?} {:.2}-{:.2} h",
                        iv.state,
                        (iv.start_ms - start) as f64 / 3.6e6,
                        (iv.end_ms - start) as f64 / 3.6e6
                    );
                }
            }
        }
    }
    let lost: Decimal = costs.lost.values().copied().sum();
    let done = w
        .jobs
        .values()
        .filter(|j| j.state == JobState::Succeeded)
        .count();
    if last_done == start {
        last_done = now;
    }
    let fig = Figures {
        cost: f(sim.lock().total_charged()),
        makespan_h: (last_done - start) as f64 / 3_600_000.0,
        lost_to_preemption: f(lost),
        instances: purchases,
        jobs_done: done,
    };
    (fig, lb)
}

#[derive(Debug, Clone)]
enum NaiveState {
    Waiting,
    Booting {
        id: u64,
        since: EpochMs,
    },
    Running {
        id: u64,
        since: EpochMs,
        runtime_ms: i64,
    },
    Done,
}

/// The naive baseline through its own copy of the market.
pub fn run_naive(seed: u64, jobs: &[BenchJob]) -> Figures {
    let dir = scratch_dir();
    let mut m = vast::sim::Market::new(market_config(seed, &dir.path().join("sim")));
    let start = vast::sim::DEFAULT_START_MS;
    let mut now = start;
    let mut state: BTreeMap<i64, NaiveState> =
        jobs.iter().map(|j| (j.id, NaiveState::Waiting)).collect();
    let mut lost = Decimal::ZERO;
    let mut rented = 0u64;
    let mut last_done = start;
    let status = |m: &vast::sim::Market, id: u64| -> Option<String> {
        m.get(id).and_then(|v| {
            v.get("actual_status")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    };
    // Like a tool's offer cache: searched again every ten minutes (a search is expensive).
    let mut ondemand: Option<Vec<Value>> = None;
    let mut bids: Option<Vec<Value>> = None;
    let mut searched = start;
    loop {
        now += STEP_MS;
        m.advance_to(now);
        if now - searched >= 10 * 60_000 {
            ondemand = None;
            bids = None;
            searched = now;
        }
        for j in jobs {
            let st = state.get(&j.id).cloned().unwrap_or(NaiveState::Done);
            let next = match st {
                NaiveState::Waiting => {
                    let list = if j.checkpoints {
                        bids.get_or_insert_with(|| offers(&m, true))
                    } else {
                        ondemand.get_or_insert_with(|| offers(&m, false))
                    };
                    // Cheapest hourly price that fits (the list is sorted by dph_total).
                    let pick = list
                        .iter()
                        .position(|o| num(o, "num_gpus") >= f64::from(j.gpus));
                    match pick {
                        Some(i) => {
                            let o = list.remove(i);
                            let offer_id = o.get("id").and_then(Value::as_u64).unwrap_or(0);
                            let mut body = json!({"image": "vastai/base-image:naive", "disk": 10, "label": format!("naive-{}", j.id), "cancel_unavail": true});
                            if j.checkpoints {
                                body["price"] = json!(num(&o, "min_bid"));
                            }
                            match m.create(offer_id, &body) {
                                Ok(r) if r.success => {
                                    rented += 1;
                                    NaiveState::Booting {
                                        id: r.new_contract,
                                        since: now,
                                    }
                                }
                                Ok(r) => {
                                    let _ = m.destroy(r.new_contract);
                                    NaiveState::Waiting
                                }
                                Err(_) => NaiveState::Waiting,
                            }
                        }
                        None => NaiveState::Waiting,
                    }
                }
                NaiveState::Booting { id, since } => match status(&m, id).as_deref() {
                    Some("running") => {
                        let gpu = m
                            .get(id)
                            .and_then(|v| {
                                v.get("gpu_name")
                                    .and_then(Value::as_str)
                                    .map(str::to_string)
                            })
                            .unwrap_or_default();
                        let runtime_ms = (j.work_s as f64 * 1000.0 / speed_of(&gpu)).ceil() as i64;
                        NaiveState::Running {
                            id,
                            since: now,
                            runtime_ms,
                        }
                    }
                    Some("exited" | "offline" | "stopped") | None => {
                        lost += m.charges(id).map(|c| c.total).unwrap_or_default();
                        let _ = m.destroy(id);
                        NaiveState::Waiting
                    }
                    _ if now - since > 20 * 60_000 => {
                        lost += m.charges(id).map(|c| c.total).unwrap_or_default();
                        let _ = m.destroy(id);
                        NaiveState::Waiting
                    }
                    _ => NaiveState::Booting { id, since },
                },
                NaiveState::Running {
                    id,
                    since,
                    runtime_ms,
                } => {
                    if status(&m, id).as_deref() != Some("running") {
                        // Outbid or dead: the run is lost, start over from scratch.
                        lost += m.charges(id).map(|c| c.total).unwrap_or_default();
                        let _ = m.destroy(id);
                        NaiveState::Waiting
                    } else if now - since >= runtime_ms {
                        let _ = m.destroy(id);
                        last_done = now;
                        NaiveState::Done
                    } else {
                        NaiveState::Running {
                            id,
                            since,
                            runtime_ms,
                        }
                    }
                }
                NaiveState::Done => NaiveState::Done,
            };
            state.insert(j.id, next);
        }
        let done = state
            .values()
            .filter(|s| matches!(s, NaiveState::Done))
            .count();
        if done == jobs.len() || now - start > HORIZON_MS {
            break;
        }
    }
    let done = state
        .values()
        .filter(|s| matches!(s, NaiveState::Done))
        .count();
    Figures {
        cost: f(m.total_charged()),
        makespan_h: (last_done - start) as f64 / 3_600_000.0,
        lost_to_preemption: f(lost),
        instances: rented,
        jobs_done: done,
    }
}

/// One market: ours, naive, lower bound.
pub fn run_market(seed: u64, n_jobs: usize, deadline_h: Option<f64>) -> MarketResult {
    let started = std::time::Instant::now();
    let jobs = sweep(seed, n_jobs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    let (ours, lb) = rt.block_on(run_ours(seed, &jobs, deadline_h));
    let naive = run_naive(seed, &jobs);
    let dir = scratch_dir();
    let at_start = vast::sim::Market::new(market_config(seed, &dir.path().join("sim")));
    let cb = capacity_bound(&jobs, &at_start, ours.makespan_h);
    MarketResult {
        seed,
        wall_s: started.elapsed().as_secs_f64(),
        ours_over_lower_bound: ours.cost / lb,
        capacity_bound_at_our_makespan: cb,
        ours_over_capacity_bound: ours.cost / cb,
        ours_over_naive: ours.cost / naive.cost,
        makespan_ours_over_naive: ours.makespan_h / naive.makespan_h,
        ours,
        naive,
        lower_bound: lb,
    }
}

/// The median of some numbers (mean of the two middle ones for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
