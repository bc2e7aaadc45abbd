//! Pacing: finish the queue by a deadline on the cheapest capacity that can.
//!
//! Without a deadline every queued job goes at once to the offer that is cheapest *for it now*,
//! so a 200-job sweep rents 200 GPUs and the last of them cost far more per unit of work than the
//! first (on a real market the cheap machines are few). With a deadline the planner asks how much
//! capacity the remaining work needs: work left (queued jobs plus what our instances are still
//! running) ÷ time left until the deadline = reference GPUs needed. It takes the market's
//! machines from the cheapest rate (dollars per reference GPU-hour) upwards, after the capacity
//! we already hold, until that need is met; the rate where it is met is the **cutoff**. Offers
//! dearer than the cutoff are not rented: their jobs wait for a slot on cheaper capacity, which
//! frees as earlier jobs finish. Recomputed every pass, the cutoff rises by itself when work
//! falls behind (less time left for the same work) and falls when it runs ahead.
//!
//! Two pools share the machines: jobs that must run on demand, and jobs that may be interrupted
//! (whose rate is the cheaper of the bid and on-demand prices). Machines are handed out in one
//! pass over both pools by rate relative to each pool's cheapest, so the cheap machines that
//! both want are not counted twice. A machine both pools could use goes to the pool that gains
//! more from it, judged against each pool's marginal rate for all its work (what we hold counted
//! at its own rate): jobs that must run on demand leave the cheapest bid machines to the
//! checkpointing work unless they are urgent ([`Pacing::bid_side`]). A job always may take an
//! offer within `PlanConfig::pace_slack_pct` of the cheapest rate it can get at all, and a job
//! that would miss the deadline unless it starts now is not held back: it takes the cheapest
//! offer that still finishes in time, whatever the cutoff (see [`Pacing::slowest`]).

use std::collections::{BTreeMap, BTreeSet};

use super::cost::{self, PPM};
use super::pack::{OfferInfo, Usable, expected_wall, interruptible_allowed, speed_of};
use super::types::*;

/// Rate of `price` (nano$/h) spread over `gpus` GPUs of `speed_ppm` each: nano$ per reference
/// GPU-hour, rounded up.
pub(crate) fn rate(price: NanoPerHour, gpus: u32, speed_ppm: i64) -> NanoPerHour {
    let den = i64::from(gpus.max(1)).saturating_mul(speed_ppm.max(1));
    cost::mul_div_ceil(price, PPM, den)
}

/// Pool of a job: 0 = on demand only, 1 = may be interrupted.
pub(crate) fn pool(job: &PlanJob, cfg: &PlanConfig) -> usize {
    usize::from(interruptible_allowed(job, cfg))
}

/// Lowers each pool's best rate by `r` where that pool can use the capacity: any capacity serves
/// jobs that may be interrupted, only on-demand capacity the others.
pub(crate) fn lower_best(best: &mut [NanoPerHour; 2], r: NanoPerHour, interruptible: bool) {
    best[1] = best[1].min(r);
    if !interruptible {
        best[0] = best[0].min(r);
    }
}

/// An instance we hold: its per-GPU speed and its rate.
pub(crate) fn held_rate(input: &PlanInput, h: &HeldInstance) -> (i64, NanoPerHour) {
    let speed = speed_of(input, &h.gpu_name, h.dlperf, h.num_gpus);
    (speed, rate(h.dph, h.num_gpus, speed))
}

/// `x` plus the configured slack.
pub(crate) fn with_slack(cfg: &PlanConfig, x: NanoPerHour) -> NanoPerHour {
    cost::mul_div_ceil(x, 100 + i64::from(cfg.pace_slack_pct), 100)
}

/// Seconds from renting to a job running: boot plus setup.
fn lead_s(cfg: &PlanConfig) -> i64 {
    i64::from(cfg.default_boot_s) + i64::from(cfg.boot_overhead_s)
}

impl Pacing {
    /// Whether `job` (of pacing pool `pool`) is urgent: it would miss `deadline_ms` if it waited
    /// one lead time for a slot under the cutoff and then ran on the slowest GPU pacing counts on.
    pub(crate) fn urgent(
        &self,
        input: &PlanInput,
        job: &PlanJob,
        pool: usize,
        deadline_ms: i64,
    ) -> bool {
        let cfg = &input.config;
        let wall = expected_wall(
            cfg,
            job,
            self.slowest[pool],
            pool == 1,
            cost::rate_ppm(cfg.default_preempt_per_h, 0.0),
        );
        input
            .now_ms
            .saturating_add(wall.saturating_add(2 * lead_s(cfg)).saturating_mul(1000))
            > deadline_ms
    }
}

/// What pacing allows in one plan, per pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pacing {
    /// The cutoff rate (slack included); `None`: no pacing for that pool (no deadline, the
    /// deadline is too close, or even the whole market cannot meet it).
    pub cut: [Option<NanoPerHour>; 2],
    /// Capacity still to rent to meet the deadline, millionths of a reference GPU. Once the
    /// plan's rentals cover it, only offers near the best rate are rented.
    pub need: [i128; 2],
    /// The slowest per-GPU speed (millionths of the reference) among the capacity pacing counts
    /// on, per pool. A job that would miss the deadline on such a GPU if it waited is *urgent*:
    /// waiting for a slot under the cutoff would make it late, so it takes the cheapest offer
    /// that finishes in time instead. Without this a slow, dear offer on which a job is late
    /// anyway looked like the only one pacing let it take.
    pub slowest: [i64; 2],
    /// Machines kept for checkpointing work: their bid rate is under the interruptible pool's
    /// marginal rate, and they gain that pool more (its marginal rate less the bid rate) than
    /// they gain the on-demand pool (its marginal rate less the on-demand rate, negative when
    /// over it). Jobs that must run on demand leave them alone unless urgent. Otherwise the most
    /// constrained jobs, which choose first, take the cheapest bid machines on demand for a few
    /// cents less than elsewhere, and the checkpointing work pays far more than that on dearer
    /// bids. With each, that gain (nano$ per reference GPU-hour): what an urgent on-demand job
    /// that takes the machine anyway is charged on top of its price when it chooses.
    pub bid_side: BTreeMap<i64, NanoPerHour>,
}

/// The cutoffs and the capacity still needed, per pool.
pub(crate) fn cutoffs(input: &PlanInput, info: &[OfferInfo]) -> Pacing {
    let none = Pacing::default();
    let Some(pace) = &input.pace else {
        return none;
    };
    let cfg = &input.config;
    let left_s = (pace.deadline_ms - input.now_ms) / 1000 - lead_s(cfg);
    if left_s <= 0 {
        return none;
    }
    let mut work = [0u128; 2];
    for j in &input.jobs {
        work[pool(j, cfg)] += u128::from(j.gpus) * u128::from(j.est_runtime_s);
    }
    let mut held = [0i128; 2];
    let mut best = [NanoPerHour::MAX; 2];
    let mut slowest = [i64::MAX; 2];
    for h in &pace.held {
        let p = usize::from(h.interruptible);
        work[p] += u128::from(h.work_left_ref_gpu_s);
        let (speed, r) = held_rate(input, h);
        held[p] += i128::from(h.num_gpus) * i128::from(speed);
        slowest[p] = slowest[p].min(speed);
        lower_best(&mut best, r, h.interruptible);
    }
    // One entry per machine and pool: its largest offer (Vast lists a machine once per split).
    let mut machines: BTreeMap<(i64, usize), (u32, NanoPerHour, i64)> = BTreeMap::new();
    for (o, inf) in input.offers.iter().zip(info) {
        if inf.usable != Usable::Ok || o.num_gpus == 0 {
            continue;
        }
        let od = rate(o.dph_base, o.num_gpus, inf.speed_ppm);
        let bid = inf
            .lowest_bid()
            .map_or(od, |b| rate(b, o.num_gpus, inf.speed_ppm).min(od));
        for (p, r) in [(0, od), (1, bid)] {
            best[p] = best[p].min(r);
            let e = machines
                .entry((o.machine_id, p))
                .or_insert((0, r, inf.speed_ppm));
            if o.num_gpus > e.0 {
                *e = (o.num_gpus, r, inf.speed_ppm);
            }
        }
    }
    // Reference GPUs still needed beyond what we hold, in millionths.
    let left = i128::from(left_s);
    let total = [0, 1].map(|p| (work[p] as i128 * i128::from(PPM) + left - 1) / left);
    let need0 = [0, 1].map(|p| total[p] - held[p]);
    let rates: BTreeMap<(i64, usize), NanoPerHour> =
        machines.iter().map(|(k, v)| (*k, v.1)).collect();
    let relative =
        |p: usize, r: NanoPerHour| i128::from(r) * i128::from(PPM) / i128::from(best[p].max(1));
    let mut entries: Vec<Entry> = machines
        .into_iter()
        .filter(|((_, p), _)| best[*p] != NanoPerHour::MAX)
        .map(|((m, p), (gpus, r, speed))| (relative(p, r), m, p, gpus, speed, r))
        .collect();
    entries.sort_unstable();
    let (cut, slowest_offered) = fill(&entries, need0, best);
    for p in 0..2 {
        slowest[p] = slowest[p].min(slowest_offered[p]);
    }
    // What each pool's capacity is worth at the margin, with what we hold counted at its own
    // rate rather than as already paid for: the cutoff of all its work over the held and listed
    // capacity together. A machine both pools can use under these goes to the one that gains more
    // from it. (With `cut` alone, once the interruptible pool held enough its cutoff fell to its
    // best rate, and the next pass gave the rest of the cheapest bid machine to on-demand jobs.)
    let mut all = entries;
    for (i, h) in pace.held.iter().enumerate() {
        // (Its own rate already lowered its pool's best: `best[p]` is finite.)
        let p = usize::from(h.interruptible);
        let (speed, r) = held_rate(input, h);
        all.push((relative(p, r), -1 - i as i64, p, h.num_gpus, speed, r));
    }
    all.sort_unstable();
    // Only work that can start counts here: a queued job whose experiment cannot afford it even
    // at its pool's best rate would keep machines for nobody.
    let mut can_start = [false; 2];
    let mut blocked = [0u128; 2];
    for j in &input.jobs {
        let p = pool(j, cfg);
        let ref_gpu_s = u64::from(j.gpus).saturating_mul(j.est_runtime_s);
        let least =
            cost::mul_div_floor(best[p], i64::try_from(ref_gpu_s).unwrap_or(i64::MAX), 3600);
        if input.budgets.get(&j.experiment).is_none_or(|&b| b >= least) {
            can_start[p] = true;
        } else {
            blocked[p] += u128::from(ref_gpu_s);
        }
    }
    let startable = [0, 1].map(|p| total[p] - blocked[p] as i128 * i128::from(PPM) / left);
    let (value, _) = fill(&all, startable, best);
    let mut bid_side = BTreeMap::new();
    if can_start[1]
        && let [Some(c0), Some(c1)] = value.map(|c| c.map(|c| with_slack(cfg, c)))
    {
        for (&(m, p), &r1) in &rates {
            if p != 1 || r1 > c1 {
                continue;
            }
            let r0 = rates.get(&(m, 0)).copied().unwrap_or(NanoPerHour::MAX);
            if r1 < r0 && c1 - r1 > c0.saturating_sub(r0) {
                bid_side.insert(m, c1 - r1);
            }
        }
    }
    Pacing {
        bid_side,
        cut: cut.map(|c| c.map(|c| with_slack(cfg, c))),
        need: need0,
        slowest: slowest.map(|s| if s == i64::MAX { PPM } else { s }),
    }
}

/// A machine (or an instance we hold) as pacing counts it: (rate relative to its pool's best,
/// machine id, pool, GPUs, per-GPU speed, rate).
type Entry = (i128, i64, usize, u32, i64, NanoPerHour);

/// Takes `entries` (sorted) from the cheapest relative rate up, each machine for one pool, until
/// each pool's `need` is met: the cutoff rate where it was met (a pool that needs nothing: its
/// `best`), and the slowest per-GPU speed taken, per pool.
fn fill(
    entries: &[Entry],
    mut need: [i128; 2],
    best: [NanoPerHour; 2],
) -> ([Option<NanoPerHour>; 2], [i64; 2]) {
    let mut cut = [None; 2];
    let mut slowest = [i64::MAX; 2];
    for p in 0..2 {
        if need[p] <= 0 && best[p] != NanoPerHour::MAX {
            cut[p] = Some(best[p]);
        }
    }
    let mut taken = BTreeSet::new();
    for &(_, m, p, gpus, speed, r) in entries {
        if cut[p].is_some() || !taken.insert(m) {
            continue;
        }
        need[p] -= i128::from(gpus) * i128::from(speed);
        slowest[p] = slowest[p].min(speed);
        if need[p] <= 0 {
            cut[p] = Some(r);
        }
    }
    (cut, slowest)
}
