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
    // VASTICLAUDE_BENCH_FRICTION=none: the same machines and prices with no faults, no outbids,
    // no other renters and near-instant boots, to tell what our schedule costs from what the
    // market's friction adds to it (a diagnostic; the figures that count keep the friction).
    if std::env::var("VASTICLAUDE_BENCH_FRICTION").as_deref() == Ok("none") {
        c.faults = vast::sim::SimFaults::none();
        c.boot = vast::sim::BootTimes::fast();
        c.churn.arrivals_per_hour = 0.0;
    }
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
    /// The part of `cost` paid on interruptible (bid) rentals; the rest was on demand.
    pub cost_at_bids: f64,
    pub makespan_h: f64,
    pub lost_to_preemption: f64,
    pub instances: u64,
    pub jobs_done: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MarketResult {
    pub seed: u64,
    pub wall_s: f64,
    /// The deadline ours was paced to, hours from the start (`None`: unpaced).
    pub ours_deadline_h: Option<f64>,
    pub ours: Figures,
    pub naive: Figures,
    pub lower_bound: f64,
    pub ours_over_lower_bound: f64,
    /// [`capacity_bound`] at our makespan: what any schedule finishing as fast as ours must pay.
    pub capacity_bound_at_our_makespan: f64,
    pub ours_over_capacity_bound: f64,
    /// [`capacity_bound`] at the naive baseline's makespan: the least that any schedule meeting
    /// the makespan target (no slower than the baseline) can pay on these machines.
    pub capacity_bound_at_naive_makespan: f64,
    /// That bound over the lower bound: how far above the lower bound availability alone puts
    /// the best possible schedule.
    pub capacity_bound_at_naive_makespan_over_lower_bound: f64,
    /// Where ours is dear, per pool: what ours paid on demand over the on-demand-only jobs' part
    /// of [`capacity_bound`] at our makespan, and what it paid at bids over the checkpointing
    /// jobs' part. (Ours is split by rental, the bound by job; a checkpointing job that ran on an
    /// on-demand rental counts on the on-demand side.)
    pub ours_on_demand_over_its_bound: f64,
    pub ours_at_bids_over_its_bound: f64,
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
/// `hours`, using only the machines listed at the start, each for at most `hours`, shared by all
/// jobs. Work is fractional (a job may be split across machines and time), but a job of `g` GPUs
/// only uses machines with at least `g`, and a job that does not checkpoint only on-demand prices.
/// It is a transportation problem (job classes to machines), solved exactly as a min-cost flow.
/// Boot, preemption and other renters are ignored, so no schedule that finishes within `hours`
/// on these machines pays less; `f64::INFINITY` when they cannot do the work in `hours` at all.
pub fn capacity_bound(jobs: &[BenchJob], m: &vast::sim::Market, hours: f64) -> f64 {
    capacity_bound_by_pool(jobs, m, hours).total()
}

/// A cost split between the jobs that must run on demand and those that checkpoint (and so
/// may run on interruptible rentals).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ByPool {
    pub on_demand: f64,
    pub checkpointing: f64,
}

impl ByPool {
    pub fn total(&self) -> f64 {
        self.on_demand + self.checkpointing
    }
}

/// [`capacity_bound`], with what the optimum spends on each pool's jobs (both `f64::INFINITY`
/// when the machines cannot do the work in `hours`).
pub fn capacity_bound_by_pool(jobs: &[BenchJob], m: &vast::sim::Market, hours: f64) -> ByPool {
    // Job classes: (checkpoints, GPUs) → reference GPU-hours of work.
    let mut classes: BTreeMap<(bool, u32), f64> = BTreeMap::new();
    for j in jobs {
        *classes.entry((j.checkpoints, j.gpus)).or_default() +=
            f64::from(j.gpus) * j.work_s as f64 / 3600.0;
    }
    let classes: Vec<((bool, u32), f64)> = classes.into_iter().collect();
    // machine → (reference GPU-hours it can do in `hours`, $ per reference GPU-hour per class)
    let mut machines: BTreeMap<u64, (f64, Vec<f64>)> = BTreeMap::new();
    for bid in [false, true] {
        for o in offers(m, bid) {
            let (n, speed, rate) = gpus_speed_rate(&o);
            let id = o.get("machine_id").and_then(Value::as_u64).unwrap_or(0);
            let e = machines
                .entry(id)
                .or_insert_with(|| (0.0, vec![f64::INFINITY; classes.len()]));
            e.0 = e.0.max(n * speed * hours);
            for (c, &((ckpt, gpus), _)) in classes.iter().enumerate() {
                if n >= f64::from(gpus) && (ckpt || !bid) {
                    e.1[c] = e.1[c].min(rate);
                }
            }
        }
    }
    let mut flow = MinCostFlow::new(2 + classes.len() + machines.len());
    let (src, sink) = (0, 1);
    let mut demand = 0.0;
    for (c, &(_, work)) in classes.iter().enumerate() {
        flow.edge(src, 2 + c, work, 0.0);
        demand += work;
    }
    for (k, (cap, rates)) in machines.values().enumerate() {
        let node = 2 + classes.len() + k;
        flow.edge(node, sink, *cap, 0.0);
        for (c, &r) in rates.iter().enumerate() {
            if r.is_finite() {
                flow.edge(2 + c, node, f64::INFINITY, r);
            }
        }
    }
    let (sent, _) = flow.run(src, sink);
    if sent < demand * (1.0 - 1e-9) {
        return ByPool {
            on_demand: f64::INFINITY,
            checkpointing: f64::INFINITY,
        };
    }
    let mut split = ByPool::default();
    for (c, &((ckpt, _), _)) in classes.iter().enumerate() {
        let spent = flow.spent_from(2 + c);
        if ckpt {
            split.checkpointing += spent;
        } else {
            split.on_demand += spent;
        }
    }
    split
}

/// Successive shortest paths (Bellman-Ford) on real capacities: small graphs only.
struct MinCostFlow {
    /// (to, capacity left, cost per unit, index of the reverse edge in `adj[to]`)
    adj: Vec<Vec<(usize, f64, f64, usize)>>,
}

impl MinCostFlow {
    fn new(nodes: usize) -> Self {
        Self {
            adj: vec![Vec::new(); nodes],
        }
    }

    fn edge(&mut self, from: usize, to: usize, cap: f64, cost: f64) {
        let (rf, rt) = (self.adj[to].len(), self.adj[from].len());
        self.adj[from].push((to, cap, cost, rf));
        self.adj[to].push((from, 0.0, -cost, rt));
    }

    /// What the flow sent out of `node` cost (after [`MinCostFlow::run`]): the flow on each
    /// edge is what its reverse edge can send back.
    fn spent_from(&self, node: usize) -> f64 {
        self.adj[node]
            .iter()
            .filter(|e| e.2 > 0.0)
            .map(|&(to, _, cost, rev)| self.adj[to][rev].1 * cost)
            .sum()
    }

    /// Sends as much as fits from `s` to `t` at least cost: (amount, cost).
    fn run(&mut self, s: usize, t: usize) -> (f64, f64) {
        const EPS: f64 = 1e-9;
        let n = self.adj.len();
        let (mut sent, mut total) = (0.0, 0.0);
        loop {
            let mut dist = vec![f64::INFINITY; n];
            let mut prev: Vec<Option<(usize, usize)>> = vec![None; n];
            dist[s] = 0.0;
            for _ in 0..n {
                let mut changed = false;
                for u in 0..n {
                    if !dist[u].is_finite() {
                        continue;
                    }
                    for (i, &(v, cap, cost, _)) in self.adj[u].iter().enumerate() {
                        if cap > EPS && dist[u] + cost < dist[v] - EPS {
                            dist[v] = dist[u] + cost;
                            prev[v] = Some((u, i));
                            changed = true;
                        }
                    }
                }
                if !changed {
                    break;
                }
            }
            if !dist[t].is_finite() {
                return (sent, total);
            }
            let mut push = f64::INFINITY;
            let mut v = t;
            while let Some((u, i)) = prev[v] {
                push = push.min(self.adj[u][i].1);
                v = u;
            }
            let mut v = t;
            while let Some((u, i)) = prev[v] {
                self.adj[u][i].1 -= push;
                let r = self.adj[u][i].3;
                self.adj[v][r].1 += push;
                v = u;
            }
            sent += push;
            total += push * dist[t];
        }
    }
}

/// Every offer, interruptible first, cheapest per reference GPU-hour first, one per line.
fn print_offers(m: &vast::sim::Market) {
    for bid in [true, false] {
        let mut lines: Vec<(f64, String)> = offers(m, bid)
            .iter()
            .map(|o| {
                let (n, speed, rate) = gpus_speed_rate(o);
                let line = format!(
                    "offer bid={bid} m{} {n}x {} speed {speed:.2} rate {rate:.4} dph {:.4} \
                     reliability {:.3} verified {} rented {} disk {:.0}",
                    o.get("machine_id").and_then(Value::as_u64).unwrap_or(0),
                    o.get("gpu_name").and_then(Value::as_str).unwrap_or(""),
                    num(o, "dph_total"),
                    num(o, "reliability2"),
                    o.get("verification").and_then(Value::as_str) == Some("verified"),
                    o.get("rented").and_then(Value::as_bool).unwrap_or(false),
                    num(o, "disk_space"),
                );
                (rate, line)
            })
            .collect();
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, l) in lines {
            eprintln!("{l}");
        }
    }
}

/// Our scheduler: the real engine on the virtual clock.
pub async fn run_ours(seed: u64, jobs: &[BenchJob], deadline_h: Option<f64>) -> (Figures, f64) {
    let dir = scratch_dir();
    let sim = SimMarket::new(vast::sim::Market::new(market_config(
        seed,
        &dir.path().join("sim"),
    )));
    let lb = lower_bound(jobs, &sim.lock());
    // VASTICLAUDE_BENCH_OFFERS=1: the market at the start, to compare with where our rentals
    // went (the debug lines name each rental's machine).
    if std::env::var_os("VASTICLAUDE_BENCH_OFFERS").is_some() {
        print_offers(&sim.lock());
    }
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
        // VASTICLAUDE_BENCH_MARGIN=0.1: the most margin a bid may carry over `min_bid` (a
        // diagnostic; the planner adds it only where it pays).
        bid_margin: std::env::var("VASTICLAUDE_BENCH_MARGIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ReconcileConfig::default().bid_margin),
        ..ReconcileConfig::default()
    };
    // The sweep takes any machine, as the lower bound and the naive baseline do (the default
    // query would leave out unverified machines and those under 0.9 reliability, among them some
    // of the market's cheapest), so all three draw from the same market.
    cfg.offer_query = "verified=any num_gpus>=1".into();
    cfg.offer_limit = 400;
    cfg.offer_ttl_ms = 60_000;
    let runner = Arc::new(SimRunner::new(agents.clone(), gate.clone()));
    let mut engine = Engine::new(cfg, market, runner, journal)
        .await
        .expect("the in-memory journal loads");
    engine
        .add_jobs(
            jobs.iter()
                .map(|j| {
                    job_view(
                        j.id,
                        "sweep",
                        j.gpus,
                        j.work_s,
                        j.checkpoints,
                        j.checkpoints,
                    )
                })
                .collect(),
        )
        .await
        .expect("the in-memory journal saves");
    let start = vast::sim::DEFAULT_START_MS;
    let mut now = start;
    let mut last_done = start;
    let mut purchases = 0;
    // VASTICLAUDE_BENCH_DEBUG=1: what went wrong, what was rented, how busy it was; with
    // VASTICLAUDE_BENCH_EVENTS=1 every event of the engine (rentals, starts, waits and why).
    let debug = std::env::var_os("VASTICLAUDE_BENCH_DEBUG").is_some();
    let all_events = std::env::var_os("VASTICLAUDE_BENCH_EVENTS").is_some();
    loop {
        now += STEP_MS;
        let _ = engine.step(now).await;
        purchases += engine.stats.purchases;
        engine.stats.purchases = 0;
        for e in engine.drain_events() {
            if debug && (all_events || matches!(e.kind.as_str(), "warn" | "error" | "effect")) {
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
                "{} m{} {}x {} ${}/h bid {:?} dlperf {} cost {} life {:.2} h, GPU use {:.0}%",
                i.label,
                i.offer.machine_id,
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
    let (cost, cost_at_bids) = {
        let m = sim.lock();
        (f(m.total_charged()), f(m.total_charged_at_bids()))
    };
    let fig = Figures {
        cost,
        cost_at_bids,
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
        cost_at_bids: f(m.total_charged_at_bids()),
        makespan_h: (last_done - start) as f64 / 3_600_000.0,
        lost_to_preemption: f(lost),
        instances: rented,
        jobs_done: done,
    }
}

/// One market: ours, naive, lower bound.
/// When ours must finish.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Deadline {
    /// No deadline: every queued job is rented for at once.
    Unpaced,
    /// Paced to finish within this many hours of the start.
    Hours(f64),
    /// Paced to finish within the naive baseline's makespan on the same market: cost compared at
    /// equal makespan (the target allows no later finish than the baseline's).
    NaiveMakespan,
}

pub fn run_market(seed: u64, n_jobs: usize, deadline: Deadline) -> MarketResult {
    let started = std::time::Instant::now();
    let jobs = sweep(seed, n_jobs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    let naive = run_naive(seed, &jobs);
    let deadline_h = match deadline {
        Deadline::Unpaced => None,
        Deadline::Hours(h) => Some(h),
        Deadline::NaiveMakespan => Some(naive.makespan_h),
    };
    let (ours, lb) = rt.block_on(run_ours(seed, &jobs, deadline_h));
    let dir = scratch_dir();
    let at_start = vast::sim::Market::new(market_config(seed, &dir.path().join("sim")));
    let by_pool = capacity_bound_by_pool(&jobs, &at_start, ours.makespan_h);
    let cb = by_pool.total();
    let cb_naive = capacity_bound(&jobs, &at_start, naive.makespan_h);
    MarketResult {
        seed,
        wall_s: started.elapsed().as_secs_f64(),
        ours_deadline_h: deadline_h,
        ours_over_lower_bound: ours.cost / lb,
        capacity_bound_at_our_makespan: cb,
        ours_over_capacity_bound: ours.cost / cb,
        capacity_bound_at_naive_makespan: cb_naive,
        capacity_bound_at_naive_makespan_over_lower_bound: cb_naive / lb,
        ours_on_demand_over_its_bound: (ours.cost - ours.cost_at_bids) / by_pool.on_demand,
        ours_at_bids_over_its_bound: ours.cost_at_bids / by_pool.checkpointing,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_gives_each_machine_to_the_class_that_needs_it_most() {
        // Class a: 10 units on machine x at $1 or y at $2. Class b: 10 units on x at $3 or y at
        // $10. Cheapest-first would give x to a ($10) and y to b ($100); the optimum swaps them:
        // a on y ($20), b on x ($30).
        let mut f = MinCostFlow::new(6);
        let (s, t, a, b, x, y) = (0, 1, 2, 3, 4, 5);
        f.edge(s, a, 10.0, 0.0);
        f.edge(s, b, 10.0, 0.0);
        f.edge(x, t, 10.0, 0.0);
        f.edge(y, t, 10.0, 0.0);
        f.edge(a, x, f64::INFINITY, 1.0);
        f.edge(a, y, f64::INFINITY, 2.0);
        f.edge(b, x, f64::INFINITY, 3.0);
        f.edge(b, y, f64::INFINITY, 10.0);
        let (sent, cost) = f.run(s, t);
        assert!((sent - 20.0).abs() < 1e-9, "{sent}");
        assert!((cost - 50.0).abs() < 1e-9, "{cost}");
        assert!((f.spent_from(a) - 20.0).abs() < 1e-9, "{}", f.spent_from(a));
        assert!((f.spent_from(b) - 30.0).abs() < 1e-9, "{}", f.spent_from(b));
    }

    #[test]
    fn the_capacity_bound_is_above_the_lower_bound_and_falls_with_time() {
        let dir = scratch_dir();
        let m = vast::sim::Market::new(market_config(5, &dir.path().join("sim")));
        let jobs = sweep(5, 200);
        let lb = lower_bound(&jobs, &m);
        let at = |h: f64| capacity_bound(&jobs, &m, h);
        assert!(lb > 0.0);
        // Too little time for the work on every machine listed: no schedule exists.
        assert!(at(0.5).is_infinite());
        let (b40, b80) = (at(40.0), at(80.0));
        assert!(b40.is_finite() && b40 >= b80, "{b40} {b80}");
        assert!(b80 >= lb * (1.0 - 1e-9), "{b80} {lb}");
        // The split adds up, and each pool gets its own share: the checkpointing jobs' share is
        // at least what they cost at their cheapest (interruptible) rate.
        let split = capacity_bound_by_pool(&jobs, &m, 40.0);
        assert!((split.total() - b40).abs() < 1e-6 * b40, "{split:?} {b40}");
        let ckpt: Vec<BenchJob> = jobs.iter().filter(|j| j.checkpoints).cloned().collect();
        let lb_ckpt = lower_bound(&ckpt, &m);
        assert!(
            split.checkpointing >= lb_ckpt * (1.0 - 1e-9),
            "{split:?} {lb_ckpt}"
        );
        assert!(
            split.on_demand >= (lb - lb_ckpt) * (1.0 - 1e-9),
            "{split:?} {lb}"
        );
        // Given all the time in the world it comes down to the lower bound (each class on its
        // cheapest machine), except that one machine's time is shared by its classes.
        assert!(at(1e6) <= lb * (1.0 + 1e-6), "{} {lb}", at(1e6));
    }

    #[test]
    fn paced_to_the_naive_makespan_ours_finishes_no_later_than_naive() {
        let r = run_market(3, 4, Deadline::NaiveMakespan);
        assert_eq!(r.ours_deadline_h, Some(r.naive.makespan_h));
        assert_eq!(r.ours.jobs_done, 4, "{r:?}");
        assert!(r.ours.makespan_h <= r.naive.makespan_h, "{r:?}");
        assert!(r.ours.cost > 0.0, "{r:?}");
    }
}
