//! The packing planner: [`plan`].
//!
//! Jobs are taken in priority order, the most constrained first within a priority (see
//! [`job_order`]). Each one goes, in this order of preference, to
//! 1. a warm idle instance of ours that satisfies its class and runs its image (no boot, no pull);
//! 2. a free GPU slot of a rental planned earlier in this same plan for its group (packing);
//! 3. a new rental: the offer with the lowest expected cost *for this job*.
//!
//! "Cost for this job" is the offer's hourly price × (boot + the job's runtime on that offer's
//! speed + expected preemption losses) divided by the number of jobs the offer will carry: a
//! multi-GPU offer with `s` slots is assumed to be filled by the group's remaining jobs, so its
//! $/GPU-hour is what counts, and a faster GPU with a higher hourly price wins when it finishes
//! the job for less.
//!
//! Speed: instead of scoring all 20,000 offers for each of 10,000 jobs, the candidates of each
//! group (requirement class + GPUs + disk + image) are sorted once per (kind, slot count) by the
//! cost of the group's mean job. For each job only the first few unused candidates of each list
//! are priced exactly; a cursor skips offers already taken. This is why the plan is fast and why
//! it is a heuristic: a job whose runtime is far from its group's mean may miss an offer further
//! down a list (see `GOOD_PER_LIST`).

use std::collections::BTreeMap;

use super::cost;
use super::pace;
use super::types::*;

/// Candidates priced exactly per list and job once they pass the job's filters.
const GOOD_PER_LIST: u32 = 4;
/// Candidates looked at per list and job at most (filters included).
const SCAN_PER_LIST: u32 = 64;

/// Plans `input`. Pure and deterministic: the same input gives the same plan.
pub fn plan(input: &PlanInput) -> Plan {
    Planner::new(input).run()
}

/// Whether a job may go on an interruptible instance: its policy allows it (`Auto` only when it
/// checkpoints), and it has not already been through `interruptible_max_attempts` attempts — a job
/// that keeps getting interrupted goes on-demand so that it finishes.
pub fn interruptible_allowed(job: &PlanJob, cfg: &PlanConfig) -> bool {
    policy_allows_interruptible(job) && job.attempts_so_far < cfg.interruptible_max_attempts
}

/// The job's policy alone (what the naive baseline follows).
pub(crate) fn policy_allows_interruptible(job: &PlanJob) -> bool {
    match job.interruptible {
        InterruptiblePolicy::Never => false,
        InterruptiblePolicy::Auto => job.checkpoints,
        InterruptiblePolicy::Always => true,
    }
}

/// Job indices in planning order: priority descending; then the most constrained first: more GPUs
/// (fewer machines fit them), then jobs that must run on demand (no bid offers); then the longest
/// estimate first, then id (then input position).
///
/// Constrained first, because a job with more choices loses little when it has to take its second
/// choice, and a constrained one a lot: a checkpointing four-GPU job that took the cheapest
/// four-GPU machine at its bid price (its alternative, a slightly dearer bid) left the four-GPU
/// jobs that must run on demand the next machine, 20 % dearer. Longest-first within that means
/// the jobs that end up sharing a multi-GPU instance have similar runtimes, so few GPUs sit idle
/// waiting for the longest one.
pub fn job_order(jobs: &[PlanJob], cfg: &PlanConfig) -> Vec<usize> {
    order(jobs, Some(cfg))
}

/// The order the naive baseline takes jobs in, as existing tools do: priority, then longest first
/// (then id), however constrained.
pub(crate) fn baseline_order(jobs: &[PlanJob]) -> Vec<usize> {
    order(jobs, None)
}

/// With `constrained`, the most constrained jobs first within a priority ([`job_order`]).
fn order(jobs: &[PlanJob], constrained: Option<&PlanConfig>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    let choices =
        |j: &PlanJob| constrained.map(|cfg| (-i64::from(j.gpus), interruptible_allowed(j, cfg)));
    order.sort_by(|&a, &b| {
        let (ja, jb) = (&jobs[a], &jobs[b]);
        jb.priority
            .cmp(&ja.priority)
            .then(choices(ja).cmp(&choices(jb)))
            .then(jb.est_runtime_s.cmp(&ja.est_runtime_s))
            .then(ja.id.cmp(&jb.id))
            .then(a.cmp(&b))
    });
    order
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usable {
    Ok,
    Blacklisted,
    Unreliable,
}

/// What the planner derives from one offer, once.
#[derive(Clone, Copy)]
pub(crate) struct OfferInfo {
    pub usable: Usable,
    pub speed_ppm: i64,
    pub boot_s: i64,
    /// The bids we may place: exactly `min_bid`, with the offer's own preemption rate, and
    /// `min_bid` plus the margin, which fewer renters beat. Each group takes the one that costs
    /// its jobs less in expectation (the margin pays only where lost work is dear: long
    /// checkpoint intervals on machines that are often taken).
    pub bids: [Option<BidLevel>; 2],
}

impl OfferInfo {
    /// The lowest bid we may place on the offer.
    pub(crate) fn lowest_bid(&self) -> Option<NanoPerHour> {
        self.bids.iter().flatten().map(|l| l.bid).min()
    }
}

/// A bid and the preemption rate (per hour, in millionths) expected at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BidLevel {
    pub bid: NanoPerHour,
    pub rate_ppm: i64,
}

pub(crate) fn offer_info(input: &PlanInput, o: &PlanOffer) -> OfferInfo {
    let cfg = &input.config;
    let usable = if input
        .blacklist
        .blocks(o.machine_id, o.host_id, input.now_ms)
    {
        Usable::Blacklisted
    } else if !(o.reliability.is_finite() && o.reliability >= cfg.min_reliability) {
        Usable::Unreliable
    } else {
        Usable::Ok
    };
    OfferInfo {
        usable,
        speed_ppm: speed_of(input, &o.gpu_name, o.dlperf, o.num_gpus),
        boot_s: boot_of(cfg, o.boot_estimate_s),
        bids: bid_levels(o, cfg),
    }
}

/// The bid levels of an offer ([`OfferInfo::bids`]); the margin level only when the caps leave
/// it above the plain bid.
fn bid_levels(o: &PlanOffer, cfg: &PlanConfig) -> [Option<BidLevel>; 2] {
    // The offer's rate is for a bid of exactly `min_bid`; our margin buys a lower one.
    let rate = cost::rate_ppm(o.preempt_per_h, cfg.default_preempt_per_h);
    let plain = cost::bid_at(o.min_bid, o.dph_base, o.num_gpus, 0, cfg).map(|bid| BidLevel {
        bid,
        rate_ppm: rate,
    });
    let margin = cost::bid_for(o.min_bid, o.dph_base, o.num_gpus, cfg)
        .filter(|b| plain.is_none_or(|p| *b > p.bid))
        .map(|bid| BidLevel {
            bid,
            rate_ppm: cost::mul_div_ceil(rate, i64::from(cfg.margin_preempt_pct), 100),
        });
    [plain, margin]
}

pub(crate) fn speed_of(input: &PlanInput, gpu_name: &str, dlperf: f64, num_gpus: u32) -> i64 {
    let cfg = &input.config;
    let prior = cost::prior_speed_ppm(dlperf, num_gpus, cfg.ref_dlperf_per_gpu);
    cost::blended_speed_ppm(
        prior,
        input.throughput.by_gpu.get(gpu_name),
        cfg.throughput_prior_s,
    )
}

pub(crate) fn boot_of(cfg: &PlanConfig, boot_estimate_s: u32) -> i64 {
    let b = if boot_estimate_s == 0 {
        cfg.default_boot_s
    } else {
        boot_estimate_s
    };
    i64::from(b) + i64::from(cfg.boot_overhead_s)
}

/// Slots an offer has for jobs of `gpus` GPUs and `disk_gb` GB each (0: it does not fit).
pub(crate) fn slots_for(o: &PlanOffer, gpus: u32, disk_gb: u32) -> u32 {
    let by_gpu = o.num_gpus.checked_div(gpus).unwrap_or(0);
    let by_disk = o.disk_space_gb.checked_div(disk_gb).unwrap_or(u32::MAX);
    by_gpu.min(by_disk)
}

/// Hourly price of renting `o` with `disk_gb` allocated, on demand or at `bid`.
pub(crate) fn price_of(o: &PlanOffer, bid: Option<NanoPerHour>, disk_gb: u32) -> NanoPerHour {
    let compute = bid.unwrap_or(o.dph_base);
    compute.saturating_add(o.storage_gb_h.saturating_mul(i64::from(disk_gb)))
}

/// Runtime figures of one job on one machine.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    /// Expected wall seconds, preemption losses included (no boot).
    pub expected_s: i64,
    /// Worst-case wall seconds (no boot).
    pub worst_s: i64,
}

/// The job's worst-case work in reference seconds: its limit, or the estimate with the safety
/// factor; never less than the estimate.
pub(crate) fn worst_work_s(cfg: &PlanConfig, job: &PlanJob) -> u64 {
    let w = job.max_runtime_s.unwrap_or_else(|| {
        (u128::from(job.est_runtime_s) * u128::from(cfg.runtime_safety_pct))
            .div_ceil(100)
            .min(u64::MAX as u128) as u64
    });
    w.max(job.est_runtime_s)
}

pub(crate) fn run_of(
    cfg: &PlanConfig,
    job: &PlanJob,
    speed_ppm: i64,
    interruptible: bool,
    rate_ppm: i64,
) -> Run {
    let worst_wall = cost::wall_s(worst_work_s(cfg, job), speed_ppm);
    let expected_s = expected_wall(cfg, job, speed_ppm, interruptible, rate_ppm);
    if !interruptible {
        return Run {
            expected_s,
            worst_s: worst_wall,
        };
    }
    let restart = i64::from(cfg.restart_overhead_s);
    let w = cost::exposure(
        worst_wall,
        rate_ppm,
        checkpoint_of(cfg, job),
        restart,
        cfg.worst_preempt_pct,
    );
    Run {
        expected_s,
        worst_s: worst_wall.saturating_add(w.worst_extra_s),
    }
}

/// Expected wall seconds only (what ranking needs; half the work of [`run_of`]).
pub(crate) fn expected_wall(
    cfg: &PlanConfig,
    job: &PlanJob,
    speed_ppm: i64,
    interruptible: bool,
    rate_ppm: i64,
) -> i64 {
    let wall = cost::wall_s(job.est_runtime_s, speed_ppm);
    if !interruptible {
        return wall;
    }
    let restart = i64::from(cfg.restart_overhead_s);
    let e = cost::exposure(
        wall,
        rate_ppm,
        checkpoint_of(cfg, job),
        restart,
        cfg.worst_preempt_pct,
    );
    wall.saturating_add(e.expected_extra_s)
}

/// The job's checkpoint interval in seconds, `None` when it cannot resume.
fn checkpoint_of(cfg: &PlanConfig, job: &PlanJob) -> Option<i64> {
    job.checkpoints.then(|| {
        let c = if job.checkpoint_interval_s == 0 {
            cfg.default_checkpoint_interval_s
        } else {
            job.checkpoint_interval_s
        };
        i64::from(c)
    })
}

#[derive(Clone, Copy)]
struct Cand {
    offer: u32,
    slots: u32,
    price: NanoPerHour,
    rank: i64,
    /// The offer's id (the tie-break), kept here so sorting does not chase `input.offers`.
    id: i64,
    /// Interruptible: the bid level chosen for this group (on demand: none).
    level: Option<BidLevel>,
}

struct SlotList {
    slots: u32,
    interruptible: bool,
    cands: Vec<Cand>,
    /// `min_price_from[i]`: the lowest `price` in `cands[i..]` (used or not), so a scan can stop
    /// as soon as no later candidate could pass a price cap.
    min_price_from: Vec<NanoPerHour>,
    /// `min_rate_from[i]`: the lowest price per reference hour (price / speed) in `cands[i..]`, a
    /// lower bound on any later candidate's cost, so a scan can stop at a budget.
    min_rate_from: Vec<i64>,
    cursor: usize,
    /// Paced: `(rentals, limit, cheapest)` when a full scan with `rentals` rentals in the plan
    /// found every candidate dearer than `limit` (the cheapest at `cheapest`). Until the next
    /// rental marks offers used, a job that is not urgent and whose limit is no higher gets the
    /// same answer without scanning: candidates only leave the window, and a candidate's rate
    /// only rises as the group's remaining jobs (its slots' sharers) fall. Most of a paced
    /// plan's jobs wait, and each used to scan the whole window.
    paced_out: Option<(usize, NanoPerHour, NanoPerHour)>,
}

#[derive(Default)]
struct Exclusions {
    listed: u32,
    too_small: u32,
    blacklisted: u32,
    unreliable: u32,
}

struct Group<'a> {
    class: &'a str,
    gpus: u32,
    disk_gb: u32,
    image: &'a str,
    lists: Vec<SlotList>,
    remaining: u32,
    remaining_interruptible: u32,
    /// Rentals of this plan with free slots, oldest first.
    open: Vec<usize>,
    excl: Exclusions,
    /// Cheapest rate (nano$ per reference GPU-hour) this group can get at all, per pacing pool:
    /// from its offers and the instances we hold.
    best_rate: [NanoPerHour; 2],
}

/// A rental being built, with what is needed to add jobs.
struct Building {
    rental: Rental,
    slots: u32,
    free_slots: u32,
    speed_ppm: i64,
    boot_s: i64,
    rate_ppm: i64,
    opener_experiment: usize,
    max_expected_s: i64,
    max_worst_s: i64,
}

impl Building {
    fn refresh_costs(&mut self) {
        let p = self.rental.dph;
        self.rental.expected_cost =
            cost::charge(p, self.boot_s.saturating_add(self.max_expected_s));
        self.rental.worst_case_cost = cost::charge(p, self.boot_s.saturating_add(self.max_worst_s));
    }
}

/// Notes on why a job could not be placed, for the deferral reason.
#[derive(Default)]
struct Notes {
    over_budget: Option<Nano>,
    over_max_dph: Option<NanoPerHour>,
    over_total_dph: bool,
    max_instances: bool,
    /// (cutoff, cheapest rate turned down) when pacing held the job back.
    paced: Option<(NanoPerHour, NanoPerHour)>,
}

impl Notes {
    fn budget(&mut self, needed: Nano) {
        self.over_budget = Some(self.over_budget.map_or(needed, |n| n.min(needed)));
    }
    fn max_dph(&mut self, share: NanoPerHour) {
        self.over_max_dph = Some(self.over_max_dph.map_or(share, |n| n.min(share)));
    }
    fn paced(&mut self, cutoff: NanoPerHour, rate: NanoPerHour) {
        let cheapest = self.paced.map_or(rate, |(_, r)| r.min(rate));
        self.paced = Some((cutoff, cheapest));
    }
}

struct Choice {
    list: usize,
    cand: Cand,
    run: Run,
    cost: Nano,
    reserve: Nano,
    /// Paced and late on this offer: when it would finish (0: in time).
    late_until: i64,
}

struct Planner<'a> {
    input: &'a PlanInput,
    info: Vec<OfferInfo>,
    used: Vec<bool>,
    /// Offer indices per machine.
    by_machine: BTreeMap<i64, Vec<usize>>,
    /// GPUs free per machine: its largest listed offer that is not `rented`, less what this
    /// plan rents there.
    machine_free: BTreeMap<i64, u32>,
    groups: Vec<Group<'a>>,
    job_group: Vec<usize>,
    /// Experiment names, and remaining budget per experiment (`None`: unlimited).
    experiments: Vec<&'a str>,
    budget: Vec<Option<Nano>>,
    job_exp: Vec<usize>,
    idle_by_class: BTreeMap<&'a str, Vec<usize>>,
    idle_free_gpus: Vec<u32>,
    idle_free_disk: Vec<u32>,
    idle_speed: Vec<i64>,
    idle_ok: Vec<bool>,
    building: Vec<Building>,
    new_dph: NanoPerHour,
    /// Pacing per pool ([`pace::cutoffs`]); `need` shrinks as this plan rents.
    pacing: pace::Pacing,
    /// Paced, and the queue has fewer GPUs of work than our instances have free.
    tail: bool,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn new(input: &'a PlanInput) -> Self {
        let cfg = &input.config;
        let info: Vec<OfferInfo> = input.offers.iter().map(|o| offer_info(input, o)).collect();

        // Experiments and budgets, indexed.
        let mut exp_index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut experiments = Vec::new();
        let mut job_exp = Vec::with_capacity(input.jobs.len());
        for j in &input.jobs {
            let next = experiments.len();
            let i = *exp_index.entry(j.experiment.as_str()).or_insert_with(|| {
                experiments.push(j.experiment.as_str());
                next
            });
            job_exp.push(i);
        }
        let budget = experiments
            .iter()
            .map(|e| input.budgets.get(*e).copied())
            .collect();

        // Groups: jobs that can share an offer list and an instance.
        let mut group_index: BTreeMap<(&str, u32, u32, &str), usize> = BTreeMap::new();
        let mut groups: Vec<Group<'a>> = Vec::new();
        let mut job_group = Vec::with_capacity(input.jobs.len());
        let mut sums: Vec<(u128, u64, u128, u64)> = Vec::new(); // (runtime sum, n, ckpt sum, n ckpt)
        for j in &input.jobs {
            let key = (j.class.as_str(), j.gpus, j.disk_gb, j.image.as_str());
            let next = groups.len();
            let g = *group_index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    class: key.0,
                    gpus: key.1,
                    disk_gb: key.2,
                    image: key.3,
                    lists: Vec::new(),
                    remaining: 0,
                    remaining_interruptible: 0,
                    open: Vec::new(),
                    excl: Exclusions::default(),
                    best_rate: [NanoPerHour::MAX; 2],
                });
                sums.push((0, 0, 0, 0));
                next
            });
            job_group.push(g);
            groups[g].remaining += 1;
            let s = &mut sums[g];
            s.0 += u128::from(j.est_runtime_s);
            s.1 += 1;
            if interruptible_allowed(j, cfg) {
                groups[g].remaining_interruptible += 1;
                if j.checkpoints {
                    let c = if j.checkpoint_interval_s == 0 {
                        cfg.default_checkpoint_interval_s
                    } else {
                        j.checkpoint_interval_s
                    };
                    s.2 += u128::from(c);
                    s.3 += 1;
                }
            }
        }

        // Candidate lists per group, sorted once by the cost of the group's mean job.
        for (gi, g) in groups.iter_mut().enumerate() {
            let (rt_sum, n, ck_sum, n_ck) = sums[gi];
            let rep = PlanJob {
                id: 0,
                experiment: String::new(),
                class: String::new(),
                image: String::new(),
                gpus: g.gpus,
                disk_gb: g.disk_gb,
                max_dph: None,
                interruptible: InterruptiblePolicy::Always,
                checkpoints: n_ck > 0,
                checkpoint_interval_s: if n_ck > 0 {
                    (ck_sum / u128::from(n_ck)) as u32
                } else {
                    0
                },
                est_runtime_s: (rt_sum / u128::from(n.max(1))) as u64,
                max_runtime_s: None,
                priority: 0,
                attempts_so_far: 0,
            };
            let want_interruptible = g.remaining_interruptible > 0;
            let mut by_key: BTreeMap<(bool, u32), Vec<Cand>> = BTreeMap::new();
            let listed = input
                .offers_by_class
                .get(g.class)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for &oi in listed {
                let Some(o) = input.offers.get(oi) else {
                    continue;
                };
                g.excl.listed += 1;
                let slots = slots_for(o, g.gpus, g.disk_gb);
                if slots == 0 {
                    g.excl.too_small += 1;
                    continue;
                }
                let inf = &info[oi];
                match inf.usable {
                    Usable::Blacklisted => {
                        g.excl.blacklisted += 1;
                        continue;
                    }
                    Usable::Unreliable => {
                        g.excl.unreliable += 1;
                        continue;
                    }
                    Usable::Ok => {}
                }
                let disk = g.disk_gb.saturating_mul(slots);
                let price = price_of(o, None, disk);
                let wall = expected_wall(cfg, &rep, inf.speed_ppm, false, 0);
                let rank = cost::charge(price, inf.boot_s.saturating_add(wall)) / i64::from(slots);
                by_key.entry((false, slots)).or_default().push(Cand {
                    offer: oi as u32,
                    slots,
                    price,
                    rank,
                    id: o.id,
                    level: None,
                });
                if !want_interruptible {
                    continue;
                }
                // The cheaper bid level for the group's mean job (the plain bid on a tie).
                let best = inf
                    .bids
                    .iter()
                    .flatten()
                    .map(|&l| {
                        let price = price_of(o, Some(l.bid), disk);
                        let wall = expected_wall(cfg, &rep, inf.speed_ppm, true, l.rate_ppm);
                        let rank =
                            cost::charge(price, inf.boot_s.saturating_add(wall)) / i64::from(slots);
                        (rank, price, l)
                    })
                    .min_by_key(|&(rank, price, _)| (rank, price));
                if let Some((rank, price, l)) = best {
                    by_key.entry((true, slots)).or_default().push(Cand {
                        offer: oi as u32,
                        slots,
                        price,
                        rank,
                        id: o.id,
                        level: Some(l),
                    });
                }
            }
            for ((interruptible, slots), mut cands) in by_key {
                cands.sort_unstable_by_key(|c| (c.rank, c.id, c.offer));
                let mut min_price_from = vec![i64::MAX; cands.len() + 1];
                let mut min_rate_from = vec![i64::MAX; cands.len() + 1];
                for (i, c) in cands.iter().enumerate().rev() {
                    let speed = info[c.offer as usize].speed_ppm;
                    let rate = cost::mul_div_floor(c.price, cost::PPM, speed);
                    min_price_from[i] = min_price_from[i + 1].min(c.price);
                    min_rate_from[i] = min_rate_from[i + 1].min(rate);
                }
                g.lists.push(SlotList {
                    slots,
                    interruptible,
                    cands,
                    min_price_from,
                    min_rate_from,
                    cursor: 0,
                    paced_out: None,
                });
            }
        }

        // The cheapest rate each group can get, for pacing.
        if input.pace.is_some() {
            for g in &mut groups {
                for list in &g.lists {
                    for c in &list.cands {
                        let speed = info[c.offer as usize].speed_ppm;
                        let r = pace::rate(c.price, c.slots.saturating_mul(g.gpus), speed);
                        pace::lower_best(&mut g.best_rate, r, list.interruptible);
                    }
                }
                for h in input.pace.iter().flat_map(|p| &p.held) {
                    if h.num_gpus < g.gpus || !h.classes.iter().any(|c| c == g.class) {
                        continue;
                    }
                    let (_, r) = pace::held_rate(input, h);
                    pace::lower_best(&mut g.best_rate, r, h.interruptible);
                }
            }
        }
        let pacing = pace::cutoffs(input, &info);
        let queued_gpus: u64 = input.jobs.iter().map(|j| u64::from(j.gpus)).sum();
        let free_gpus: u64 = input
            .idle
            .iter()
            .map(|i| u64::from(i.free_gpus.min(i.num_gpus)))
            .sum();
        let tail = input.pace.is_some() && queued_gpus < free_gpus;
        let mut by_machine: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        let mut machine_free: BTreeMap<i64, u32> = BTreeMap::new();
        for (i, o) in input.offers.iter().enumerate() {
            by_machine.entry(o.machine_id).or_default().push(i);
            let free = machine_free.entry(o.machine_id).or_default();
            if !o.rented {
                *free = (*free).max(o.num_gpus);
            }
        }

        // Idle instances by class.
        let mut idle_by_class: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, inst) in input.idle.iter().enumerate() {
            for c in &inst.classes {
                idle_by_class.entry(c.as_str()).or_default().push(i);
            }
        }
        for v in idle_by_class.values_mut() {
            v.sort_unstable_by_key(|&i| (input.idle[i].id, i));
            v.dedup();
        }

        Planner {
            input,
            used: vec![false; input.offers.len()],
            by_machine,
            machine_free,
            info,
            groups,
            job_group,
            experiments,
            budget,
            job_exp,
            idle_by_class,
            idle_free_gpus: input
                .idle
                .iter()
                .map(|i| i.free_gpus.min(i.num_gpus))
                .collect(),
            idle_free_disk: input.idle.iter().map(|i| i.disk_free_gb).collect(),
            idle_speed: input
                .idle
                .iter()
                .map(|i| speed_of(input, &i.gpu_name, i.dlperf, i.num_gpus))
                .collect(),
            idle_ok: input
                .idle
                .iter()
                .map(|i| {
                    !input
                        .blacklist
                        .blocks(i.machine_id, i.host_id, input.now_ms)
                })
                .collect(),
            building: Vec::new(),
            new_dph: 0,
            pacing,
            tail,
            plan: Plan::default(),
        }
    }

    fn run(mut self) -> Plan {
        let input = self.input;
        for ji in job_order(&input.jobs, &input.config) {
            let job = &input.jobs[ji];
            let gi = self.job_group[ji];
            if let Some(reason) = self.place(ji) {
                self.plan.deferred.push(Deferred {
                    job_id: job.id,
                    reason,
                });
            }
            let g = &mut self.groups[gi];
            g.remaining -= 1;
            if interruptible_allowed(job, &input.config) {
                g.remaining_interruptible -= 1;
            }
        }
        self.plan.rent = self.building.into_iter().map(|b| b.rental).collect();
        self.plan
    }

    /// The dearest rate (nano$ per reference GPU-hour) pacing lets this job rent or reuse now:
    /// the cutoff while the plan still lacks capacity, then only rates near the best this job
    /// can get. `None`: not paced.
    fn pace_limit(&self, ji: usize) -> Option<NanoPerHour> {
        let cfg = &self.input.config;
        let pool = pace::pool(&self.input.jobs[ji], cfg);
        let best = self.groups[self.job_group[ji]].best_rate[pool];
        let near_best = pace::with_slack(cfg, best);
        self.pacing.cut[pool].map(|c| {
            if self.pacing.need[pool] > 0 {
                c.max(near_best)
            } else {
                near_best
            }
        })
    }

    fn fits_budget(&self, exp: usize, amount: Nano) -> bool {
        self.budget[exp].is_none_or(|left| amount <= left)
    }

    fn spend(&mut self, exp: usize, amount: Nano) {
        if let Some(left) = &mut self.budget[exp] {
            *left -= amount;
        }
    }

    /// Places job `ji`, or says why not.
    fn place(&mut self, ji: usize) -> Option<DeferReason> {
        let input = self.input;
        let job = &input.jobs[ji];
        if job.gpus == 0 {
            return Some(DeferReason::Invalid {
                detail: format!("job {} asks for 0 GPUs", job.id),
            });
        }
        let mut notes = Notes::default();
        if self.try_reuse(ji, &mut notes, true)
            || self.try_join(ji, &mut notes)
            || self.try_rent(ji, &mut notes)
            || (self.tail && self.try_reuse(ji, &mut notes, false))
        {
            return None;
        }
        Some(self.reason(ji, notes))
    }

    /// Puts the job on a warm instance of ours. Paced and `strict`, a job on a busy instance (or
    /// on any instance in the tail, when the queue has too few GPUs to fill what we hold) is
    /// priced by how long it keeps the instance alive past the work already on it, and an
    /// instance is passed over when a fresh rental at the rate pacing allows would cost less;
    /// `strict == false` prices every instance by its share and takes it anyway (after renting
    /// failed).
    fn try_reuse(&mut self, ji: usize, notes: &mut Notes, strict: bool) -> bool {
        let input = self.input;
        let cfg = &input.config;
        let job = &input.jobs[ji];
        let exp = self.job_exp[ji];
        let tail = strict && self.tail;
        let limit = if strict { self.pace_limit(ji) } else { None };
        // What the job would cost on a fresh rental at the dearest rate pacing allows.
        let alternative = limit.map(|l| {
            let work = i64::try_from(job.est_runtime_s)
                .unwrap_or(i64::MAX)
                .saturating_add(i64::from(cfg.default_boot_s));
            cost::charge(l.saturating_mul(i64::from(job.gpus)), work)
        });
        let allowed = interruptible_allowed(job, &input.config);
        let Some(cands) = self.idle_by_class.get(job.class.as_str()) else {
            return false;
        };
        let mut best: Option<(Nano, i64, usize, Run, Nano)> = None;
        for &ii in cands {
            let inst = &input.idle[ii];
            if !self.idle_ok[ii]
                || inst.image != job.image
                || self.idle_free_gpus[ii] < job.gpus
                || self.idle_free_disk[ii] < job.disk_gb
                || (inst.interruptible && !allowed)
            {
                continue;
            }
            let share = cost::mul_div_ceil(
                inst.dph,
                i64::from(job.gpus),
                i64::from(inst.num_gpus.max(1)),
            );
            if let Some(cap) = job.max_dph
                && share > cap
            {
                notes.max_dph(share);
                continue;
            }
            let rate = cost::rate_ppm(inst.preempt_per_h, cfg.default_preempt_per_h);
            let run = run_of(cfg, job, self.idle_speed[ii], inst.interruptible, rate);
            let reserve = cost::charge(share, run.worst_s);
            if !self.fits_budget(exp, reserve) {
                notes.budget(reserve);
                continue;
            }
            // Paced, a job is priced by what it adds: the GPUs of a busy instance are paid for
            // until its current work ends, so a job on them costs only how long it keeps the
            // instance alive past that; an empty instance costs its share (or, in the tail, the
            // whole instance). A slot dearer than a fresh rental at the rate pacing allows is
            // left alone (a job that may be interrupted does not take an empty on-demand
            // instance while bids are far cheaper, for one).
            let busy = inst.busy_until_ms > input.now_ms;
            let c = if alternative.is_some() && (busy || tail) {
                let end = input
                    .now_ms
                    .saturating_add(run.expected_s.saturating_mul(1000));
                let extends_s = (end - inst.busy_until_ms.max(input.now_ms)).max(0) / 1000;
                cost::charge(inst.dph, extends_s)
            } else {
                cost::charge(share, run.expected_s)
            };
            if alternative.is_some_and(|alt| c > alt) {
                continue;
            }
            if best.as_ref().is_none_or(|b| (c, inst.id) < (b.0, b.1)) {
                best = Some((c, inst.id, ii, run, reserve));
            }
        }
        let Some((c, id, ii, run, reserve)) = best else {
            return false;
        };
        self.idle_free_gpus[ii] -= job.gpus;
        self.idle_free_disk[ii] -= job.disk_gb;
        self.spend(exp, reserve);
        self.plan.reuse.push(Reuse {
            instance_id: id,
            job: PlacedJob {
                job_id: job.id,
                gpus: job.gpus,
                expected_runtime_s: run.expected_s,
                expected_cost: c,
                reserved: reserve,
            },
        });
        true
    }

    /// Reservation for a job joining a rental: the extension of the rental's worst case it
    /// causes, plus its GPU share when it belongs to another experiment than the one that opened
    /// the rental (whose reservation already covers the whole instance for its own duration).
    fn join_reserve(&self, b: &Building, exp: usize, share: NanoPerHour, run: Run) -> Nano {
        let ext = cost::charge(b.rental.dph, (run.worst_s - b.max_worst_s).max(0));
        if exp == b.opener_experiment {
            ext
        } else {
            ext.saturating_add(cost::charge(share, b.boot_s.saturating_add(run.worst_s)))
        }
    }

    fn try_join(&mut self, ji: usize, notes: &mut Notes) -> bool {
        let input = self.input;
        let job = &input.jobs[ji];
        let exp = self.job_exp[ji];
        let gi = self.job_group[ji];
        let allowed = interruptible_allowed(job, &input.config);
        let mut chosen = None;
        for (pos, &bi) in self.groups[gi].open.iter().enumerate() {
            let b = &self.building[bi];
            let interruptible = matches!(b.rental.kind, RentalKind::Interruptible { .. });
            if interruptible && !allowed {
                continue;
            }
            let share = cost::mul_div_ceil(b.rental.dph, 1, i64::from(b.slots));
            if let Some(cap) = job.max_dph
                && share > cap
            {
                notes.max_dph(share);
                continue;
            }
            let run = run_of(&input.config, job, b.speed_ppm, interruptible, b.rate_ppm);
            let reserve = self.join_reserve(b, exp, share, run);
            if !self.fits_budget(exp, reserve) {
                notes.budget(reserve);
                continue;
            }
            chosen = Some((pos, bi, share, run, reserve));
            break;
        }
        let Some((pos, bi, share, run, reserve)) = chosen else {
            return false;
        };
        self.spend(exp, reserve);
        let b = &mut self.building[bi];
        b.rental.jobs.push(PlacedJob {
            job_id: job.id,
            gpus: job.gpus,
            expected_runtime_s: run.expected_s,
            expected_cost: cost::charge(share, b.boot_s.saturating_add(run.expected_s)),
            reserved: reserve,
        });
        b.max_expected_s = b.max_expected_s.max(run.expected_s);
        b.max_worst_s = b.max_worst_s.max(run.worst_s);
        b.refresh_costs();
        b.free_slots -= 1;
        if b.free_slots == 0 {
            self.groups[gi].open.remove(pos);
        }
        true
    }

    fn try_rent(&mut self, ji: usize, notes: &mut Notes) -> bool {
        let input = self.input;
        let cfg = &input.config;
        if self.building.len() >= cfg.max_instances as usize {
            notes.max_instances = true;
            return false;
        }
        let job = &input.jobs[ji];
        let exp = self.job_exp[ji];
        let gi = self.job_group[ji];
        let allowed = interruptible_allowed(job, &input.config);
        let worst_work = worst_work_s(cfg, job);
        let mut best: Option<Choice> = None;
        let pool = pace::pool(job, cfg);
        let pace_limit = self.pace_limit(ji);
        let rentals = self.building.len();
        let group = &mut self.groups[gi];
        let deadline = input.pace.as_ref().map_or(i64::MAX, |p| p.deadline_ms);
        let urgent = pace_limit.is_some() && self.pacing.urgent(input, job, pool, deadline);
        for (li, list) in group.lists.iter_mut().enumerate() {
            if list.interruptible && !allowed {
                continue;
            }
            while list.cursor < list.cands.len()
                && self.used[list.cands[list.cursor].offer as usize]
            {
                list.cursor += 1;
            }
            let remaining = if list.interruptible {
                group.remaining_interruptible
            } else {
                group.remaining
            };
            let k = list.slots.min(remaining.max(1));
            if !urgent
                && let (Some(limit), Some((at, l, cheapest))) = (pace_limit, list.paced_out)
                && at == rentals
                && limit <= l
            {
                notes.paced(limit, cheapest);
                continue;
            }
            // Whether every candidate examined was turned down by the cutoff alone, and the
            // cheapest of them (for `paced_out`).
            let (mut all_over, mut cheapest, mut cut_short) = (true, NanoPerHour::MAX, false);
            let (mut examined, mut good) = (0, 0);
            for (i, c) in list.cands.iter().enumerate().skip(list.cursor) {
                if examined >= SCAN_PER_LIST || good >= GOOD_PER_LIST {
                    break;
                }
                if self.used[c.offer as usize] {
                    continue;
                }
                // Stop early when nothing from here on can pass a cap.
                let min_price = list.min_price_from[i];
                if let Some(cap) = job.max_dph
                    && min_price > cap.saturating_mul(i64::from(k))
                {
                    notes.max_dph(cost::mul_div_ceil(min_price, 1, i64::from(k)));
                    cut_short = true;
                    break;
                }
                if let Some(cap) = cfg.max_total_dph
                    && self.new_dph.saturating_add(min_price) > cap
                {
                    notes.over_total_dph = true;
                    cut_short = true;
                    break;
                }
                if let Some(left) = self.budget[exp] {
                    let work = i64::try_from(worst_work).unwrap_or(i64::MAX);
                    let at_least = cost::mul_div_floor(list.min_rate_from[i], work, 3600);
                    if at_least > left {
                        notes.budget(at_least);
                        cut_short = true;
                        break;
                    }
                }
                examined += 1;
                let share = cost::mul_div_ceil(c.price, 1, i64::from(k));
                if let Some(cap) = job.max_dph
                    && share > cap
                {
                    notes.max_dph(share);
                    all_over = false;
                    continue;
                }
                if let Some(cap) = cfg.max_total_dph
                    && self.new_dph.saturating_add(c.price) > cap
                {
                    notes.over_total_dph = true;
                    all_over = false;
                    continue;
                }
                let inf = &self.info[c.offer as usize];
                let rate = c.level.map_or(0, |l| l.rate_ppm);
                let run = run_of(cfg, job, inf.speed_ppm, list.interruptible, rate);
                // Paced: 0 for an offer on which the job finishes by the deadline, else when it
                // would finish (only an urgent job looks at those, and prefers the earliest).
                let mut late_until = 0;
                // Paced, on a machine kept for checkpointing work (`pace::Pacing::bid_side`): what
                // an urgent on-demand job is charged on top of the price for taking it.
                let mut kept = 0;
                if let Some(limit) = pace_limit {
                    let r = pace::rate(c.price, k.saturating_mul(job.gpus), inf.speed_ppm);
                    let done_by = input.now_ms.saturating_add(
                        inf.boot_s
                            .saturating_add(run.expected_s)
                            .saturating_mul(1000),
                    );
                    let late = done_by > deadline;
                    if r > limit {
                        cheapest = cheapest.min(r);
                    } else {
                        all_over = false;
                    }
                    let gain = if pool == 0 {
                        self.pacing
                            .bid_side
                            .get(&input.offers[c.offer as usize].machine_id)
                    } else {
                        None
                    };
                    // Not urgent: only offers under the cutoff on which it finishes in time (a
                    // slower one would make it late; it can wait for a better slot), and not on
                    // a machine kept for checkpointing work. Urgent: any offer, those that
                    // finish in time first.
                    if !urgent && (r > limit || late || gain.is_some()) {
                        notes.paced(limit, r);
                        continue;
                    }
                    if let Some(&gain) = gain {
                        kept = cost::mul_div_ceil(
                            gain,
                            i64::from(job.gpus).saturating_mul(inf.speed_ppm),
                            cost::PPM,
                        );
                    }
                    if late {
                        late_until = done_by;
                    }
                }
                let reserve = cost::charge(c.price, inf.boot_s.saturating_add(run.worst_s));
                if self.budget[exp].is_some_and(|left| reserve > left) {
                    notes.budget(reserve);
                    continue;
                }
                if late_until == 0 {
                    good += 1;
                }
                let secs = inf.boot_s.saturating_add(run.expected_s);
                let total = cost::charge(c.price, secs);
                let per_job = cost::mul_div_ceil(total, 1, i64::from(k))
                    .saturating_add(cost::charge(kept, secs));
                let better = best.as_ref().is_none_or(|b| {
                    (late_until, per_job, input.offers[c.offer as usize].id)
                        < (b.late_until, b.cost, input.offers[b.cand.offer as usize].id)
                });
                if better {
                    best = Some(Choice {
                        list: li,
                        cand: *c,
                        run,
                        cost: per_job,
                        reserve,
                        late_until,
                    });
                }
            }
            if let Some(limit) = pace_limit
                && !urgent
                && all_over
                && !cut_short
                && examined > 0
            {
                list.paced_out = Some((rentals, limit, cheapest));
            }
        }
        let Some(ch) = best else { return false };
        let capacity = i128::from(input.offers[ch.cand.offer as usize].num_gpus)
            * i128::from(self.info[ch.cand.offer as usize].speed_ppm);
        self.pacing.need[pool] -= capacity;
        let list = &group.lists[ch.list];
        let o = &input.offers[ch.cand.offer as usize];
        let inf = self.info[ch.cand.offer as usize];
        // Vast lists a machine once per split (8, 4, 2, 1 GPUs…), all views of the same GPUs:
        // after this rental only splits that fit the GPUs still free stay usable, and none that
        // would take GPUs from interruptible renters (the lowest bid there may be ours).
        let free = self.machine_free.entry(o.machine_id).or_default();
        *free = free.saturating_sub(o.num_gpus);
        let free = *free;
        for &oi in self.by_machine.get(&o.machine_id).into_iter().flatten() {
            let x = &input.offers[oi];
            if x.rented || x.num_gpus > free {
                self.used[oi] = true;
            }
        }
        self.used[ch.cand.offer as usize] = true;
        self.new_dph = self.new_dph.saturating_add(ch.cand.price);
        let kind = match ch.cand.level {
            Some(l) if list.interruptible => RentalKind::Interruptible { bid: l.bid },
            _ => RentalKind::OnDemand,
        };
        let share = cost::mul_div_ceil(ch.cand.price, 1, i64::from(ch.cand.slots));
        let mut b = Building {
            rental: Rental {
                offer_id: o.id,
                machine_id: o.machine_id,
                class: group.class.to_string(),
                image: group.image.to_string(),
                kind,
                // Room for a job on every GPU (not only this group's slots), so that smaller
                // jobs can fill GPUs the group's jobs leave free.
                disk_gb: group.disk_gb.saturating_mul(ch.cand.slots).max(
                    group
                        .disk_gb
                        .saturating_mul(o.num_gpus)
                        .min(o.disk_space_gb),
                ),
                num_gpus: o.num_gpus,
                dph: ch.cand.price,
                jobs: vec![PlacedJob {
                    job_id: job.id,
                    gpus: job.gpus,
                    expected_runtime_s: ch.run.expected_s,
                    expected_cost: cost::charge(
                        share,
                        inf.boot_s.saturating_add(ch.run.expected_s),
                    ),
                    reserved: ch.reserve,
                }],
                expected_cost: 0,
                worst_case_cost: 0,
            },
            slots: ch.cand.slots,
            free_slots: ch.cand.slots - 1,
            speed_ppm: inf.speed_ppm,
            boot_s: inf.boot_s,
            rate_ppm: ch.cand.level.map_or(0, |l| l.rate_ppm),
            opener_experiment: exp,
            max_expected_s: ch.run.expected_s,
            max_worst_s: ch.run.worst_s,
        };
        b.refresh_costs();
        let bi = self.building.len();
        if b.free_slots > 0 {
            group.open.push(bi);
        }
        self.building.push(b);
        self.spend(exp, ch.reserve);
        true
    }

    fn reason(&self, ji: usize, notes: Notes) -> DeferReason {
        let job = &self.input.jobs[ji];
        let g = &self.groups[self.job_group[ji]];
        if let Some(needed) = notes.over_budget {
            let exp = self.job_exp[ji];
            return DeferReason::OverBudget {
                experiment: self.experiments[exp].to_string(),
                needed,
                remaining: self.budget[exp].unwrap_or(0),
            };
        }
        if let (Some(cheapest), Some(cap)) = (notes.over_max_dph, job.max_dph) {
            return DeferReason::OverMaxDph { cheapest, cap };
        }
        let allowed = interruptible_allowed(job, &self.input.config);
        let has_candidates = g.lists.iter().any(|l| !l.interruptible || allowed);
        if !has_candidates {
            let e = &g.excl;
            if e.listed == 0 {
                return DeferReason::NoOfferFits {
                    class: g.class.to_string(),
                    detail: "the offer search returned no offers".into(),
                };
            }
            if e.blacklisted + e.unreliable > 0 {
                return DeferReason::BlacklistedOnly {
                    class: g.class.to_string(),
                    blacklisted: e.blacklisted,
                    unreliable: e.unreliable,
                };
            }
            return DeferReason::NoOfferFits {
                class: g.class.to_string(),
                detail: format!(
                    "none of {} offers has {} GPU(s) and {} GB of disk",
                    e.listed, job.gpus, job.disk_gb
                ),
            };
        }
        if let Some((cutoff, cheapest)) = notes.paced {
            return DeferReason::Paced { cutoff, cheapest };
        }
        if notes.over_total_dph
            && let Some(limit) = self.input.config.max_total_dph
        {
            return DeferReason::MaxTotalDph { limit };
        }
        if notes.max_instances {
            return DeferReason::MaxInstances {
                limit: self.input.config.max_instances,
            };
        }
        DeferReason::OffersExhausted {
            class: g.class.to_string(),
        }
    }
}
