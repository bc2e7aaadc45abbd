//! The two yardsticks the market benchmark compares the planner against.
//!
//! * [`naive_baseline`]: what existing tools do. Each job on its own instance, the cheapest hourly
//!   price that fits (on-demand, or exactly `min_bid` for jobs that may be interrupted), no reuse of
//!   warm instances, no packing, no notion of GPU speed, no budgets, no blacklist. Its expected and
//!   worst-case figures use the same cost model as [`super::plan`], so totals compare fairly.
//! * [`lower_bound`]: each job's runtime on its cheapest feasible GPU-hour (per-GPU share of an
//!   offer or idle instance, `min_bid` where the job may be interrupted), with no boot, no lost
//!   work and no availability limits. No plan's expected cost for a job can be below it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cost::{self, PPM};
use super::pack::{
    Usable, baseline_order, interruptible_allowed, offer_info, policy_allows_interruptible, run_of,
    slots_for, speed_of,
};
use super::types::*;

/// The naive plan (see the module docs). Honors `max_instances` and the job's `max_dph` as a cap
/// on the instance's hourly price (as SkyPilot's `max_hourly_cost` and dstack's `max_price` do).
pub fn naive_baseline(input: &PlanInput) -> Plan {
    let cfg = &input.config;
    let info: Vec<_> = input.offers.iter().map(|o| offer_info(input, o)).collect();
    // Per (class, gpus, disk, interruptible): fitting offers sorted by hourly price.
    type Key<'a> = (&'a str, u32, u32, bool);
    /// (price, offer id, offer index) sorted, and a cursor past the used ones.
    type Sorted = (Vec<(NanoPerHour, i64, usize)>, usize);
    let mut lists: BTreeMap<Key<'_>, Sorted> = BTreeMap::new();
    for j in &input.jobs {
        let key = (
            j.class.as_str(),
            j.gpus,
            j.disk_gb,
            policy_allows_interruptible(j),
        );
        lists.entry(key).or_insert_with(|| {
            let mut v = Vec::new();
            for &oi in input
                .offers_by_class
                .get(&j.class)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let Some(o) = input.offers.get(oi) else {
                    continue;
                };
                if j.gpus == 0 || o.num_gpus < j.gpus || o.disk_space_gb < j.disk_gb {
                    continue;
                }
                let compute = if key.3 { o.min_bid } else { Some(o.dph_base) };
                if let Some(c) = compute.filter(|c| *c > 0) {
                    let price =
                        c.saturating_add(o.storage_gb_h.saturating_mul(i64::from(j.disk_gb)));
                    v.push((price, o.id, oi));
                }
            }
            v.sort_unstable();
            (v, 0)
        });
    }
    let mut used = vec![false; input.offers.len()];
    let mut plan = Plan::default();
    for ji in baseline_order(&input.jobs) {
        let j = &input.jobs[ji];
        let interruptible = policy_allows_interruptible(j);
        let (list, cursor) = lists
            .get_mut(&(j.class.as_str(), j.gpus, j.disk_gb, interruptible))
            .expect("built above");
        while *cursor < list.len() && used[list[*cursor].2] {
            *cursor += 1;
        }
        let defer = |reason| Deferred {
            job_id: j.id,
            reason,
        };
        if j.gpus == 0 {
            plan.deferred.push(defer(DeferReason::Invalid {
                detail: format!("job {} asks for 0 GPUs", j.id),
            }));
            continue;
        }
        let Some(&(price, _, oi)) = list.get(*cursor) else {
            plan.deferred.push(defer(DeferReason::OffersExhausted {
                class: j.class.clone(),
            }));
            continue;
        };
        if let Some(cap) = j.max_dph
            && price > cap
        {
            plan.deferred.push(defer(DeferReason::OverMaxDph {
                cheapest: price,
                cap,
            }));
            continue;
        }
        if plan.rent.len() >= cfg.max_instances as usize {
            plan.deferred.push(defer(DeferReason::MaxInstances {
                limit: cfg.max_instances,
            }));
            continue;
        }
        used[oi] = true;
        let o = &input.offers[oi];
        let inf = &info[oi];
        // Bidding exactly `min_bid` means the offer's full preemption rate.
        let rate = cost::rate_ppm(o.preempt_per_h, cfg.default_preempt_per_h);
        let run = run_of(cfg, j, inf.speed_ppm, interruptible, rate);
        let expected = cost::charge(price, inf.boot_s.saturating_add(run.expected_s));
        let worst = cost::charge(price, inf.boot_s.saturating_add(run.worst_s));
        plan.rent.push(Rental {
            offer_id: o.id,
            machine_id: o.machine_id,
            class: j.class.clone(),
            image: j.image.clone(),
            kind: if interruptible {
                RentalKind::Interruptible {
                    bid: o.min_bid.unwrap_or(o.dph_base),
                }
            } else {
                RentalKind::OnDemand
            },
            disk_gb: j.disk_gb,
            num_gpus: o.num_gpus,
            dph: price,
            jobs: vec![PlacedJob {
                job_id: j.id,
                gpus: j.gpus,
                expected_runtime_s: run.expected_s,
                expected_cost: expected,
                reserved: worst,
            }],
            expected_cost: expected,
            worst_case_cost: worst,
        });
    }
    plan
}

/// The lower bound on expected cost (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowerBound {
    /// Sum over the feasible jobs.
    pub total: Nano,
    /// `(job id, bound)` for every job with a feasible offer or instance, by job id.
    pub per_job: Vec<(i64, Nano)>,
    /// Jobs with nothing feasible, by id.
    pub infeasible: Vec<i64>,
}

/// Price per hour for one job's share (floored, so the bound stays below every real charge) and
/// the per-GPU speed it runs at.
#[derive(Clone, Copy)]
struct Rate {
    price: NanoPerHour,
    speed_ppm: i64,
}

impl Rate {
    /// Whether `self` costs less per unit of work than `other` (price / speed, cross-multiplied).
    fn cheaper_than(&self, other: &Rate) -> bool {
        (self.price as i128) * (other.speed_ppm as i128)
            < (other.price as i128) * (self.speed_ppm as i128)
    }
    /// Real-valued cost of `work` reference seconds, floored.
    fn cost(&self, work: u64) -> Nano {
        let Some(num) = (self.price.max(0) as i128 * work as i128).checked_mul(PPM as i128) else {
            return i64::MAX;
        };
        let den = self.speed_ppm.max(1) as i128 * 3600;
        (num / den).min(i64::MAX as i128) as i64
    }
}

/// Computes the lower bound: for each job, `min over feasible machines of (share price / speed)`
/// × its work, ignoring boot, preemption and availability. Offers on blacklisted machines or below
/// the reliability floor are not feasible; idle instances of ours are, at their current price.
pub fn lower_bound(input: &PlanInput) -> LowerBound {
    let cfg = &input.config;
    let info: Vec<_> = input.offers.iter().map(|o| offer_info(input, o)).collect();
    // Best rate per (class, gpus, disk, image, interruptible allowed).
    type Key<'a> = (&'a str, u32, u32, &'a str, bool);
    let mut best: BTreeMap<Key<'_>, Option<Rate>> = BTreeMap::new();
    let mut out = LowerBound::default();
    let mut rows = Vec::with_capacity(input.jobs.len());
    for j in &input.jobs {
        let allowed = interruptible_allowed(j, cfg);
        let key = (
            j.class.as_str(),
            j.gpus,
            j.disk_gb,
            j.image.as_str(),
            allowed,
        );
        let rate = *best.entry(key).or_insert_with(|| {
            let mut b: Option<Rate> = None;
            let mut consider = |r: Rate| {
                if b.as_ref().is_none_or(|x| r.cheaper_than(x)) {
                    b = Some(r);
                }
            };
            if j.gpus == 0 {
                return None;
            }
            for &oi in input
                .offers_by_class
                .get(&j.class)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let Some(o) = input.offers.get(oi) else {
                    continue;
                };
                if slots_for(o, j.gpus, j.disk_gb) == 0 || info[oi].usable != Usable::Ok {
                    continue;
                }
                let storage = o.storage_gb_h.saturating_mul(i64::from(j.disk_gb));
                let share = |compute: NanoPerHour| {
                    let c = (compute as i128 * i128::from(j.gpus) / i128::from(o.num_gpus.max(1)))
                        as i64;
                    c.saturating_add(storage)
                };
                consider(Rate {
                    price: share(o.dph_base),
                    speed_ppm: info[oi].speed_ppm,
                });
                if allowed && let Some(mb) = o.min_bid.filter(|b| *b > 0) {
                    consider(Rate {
                        price: share(mb),
                        speed_ppm: info[oi].speed_ppm,
                    });
                }
            }
            for inst in &input.idle {
                if inst.image != j.image
                    || inst.num_gpus < j.gpus
                    || (inst.interruptible && !allowed)
                    || !inst.classes.contains(&j.class)
                    || input
                        .blacklist
                        .blocks(inst.machine_id, inst.host_id, input.now_ms)
                {
                    continue;
                }
                let price = (inst.dph as i128 * i128::from(j.gpus)
                    / i128::from(inst.num_gpus.max(1))) as i64;
                consider(Rate {
                    price,
                    speed_ppm: speed_of(input, &inst.gpu_name, inst.dlperf, inst.num_gpus),
                });
            }
            b
        });
        match rate {
            Some(r) => rows.push((j.id, r.cost(j.est_runtime_s))),
            None => out.infeasible.push(j.id),
        }
    }
    rows.sort_unstable();
    out.total = saturating_sum(rows.iter().map(|r| r.1));
    out.per_job = rows;
    out.infeasible.sort_unstable();
    out
}
