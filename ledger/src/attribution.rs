//! Attribution: every cent of every instance belongs to exactly one experiment.
//!
//! An instance interval's cost is split across the jobs that ran on it by **GPUs × time**
//! (a 2-GPU job for 10 minutes weighs as much as a 1-GPU job for 20). GPU-time that no job used
//! (boot, setup, idle, teardown) is **overhead** of the experiment that caused the instance (its
//! owner). A job span tagged as lost (preempted before a checkpoint, failed) keeps its reason so
//! reports can show cost lost to preemption and failures.
//!
//! Conservation is exact: [`allocate`] splits an amount in whole quanta by weight (largest
//! remainder, ties to the earlier party) and hands any sub-quantum rest to the heaviest party,
//! so the parts always add up to the whole, to the last digit.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use crate::accrual::{Component, CostBreakdown};
use crate::money::Usd;

/// Why money was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A job ran and its work counts.
    Work,
    /// Boot, setup, idle or teardown time (no job on those GPUs).
    Overhead,
    /// A job ran but the work was lost to a preemption (no checkpoint covered it).
    LostPreemption,
    /// A job ran but the attempt failed.
    LostFailure,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Work,
        Reason::Overhead,
        Reason::LostPreemption,
        Reason::LostFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Work => "work",
            Reason::Overhead => "overhead",
            Reason::LostPreemption => "lost_preemption",
            Reason::LostFailure => "lost_failure",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who pays for overhead on an instance: the experiment (and user) that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub experiment: String,
    pub user: Option<String>,
}

/// A job's time on an instance: `[start_ms, end_ms)` on `gpus` GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpan {
    pub job: String,
    pub experiment: String,
    pub user: Option<String>,
    pub gpus: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    /// `Work`, `LostPreemption` or `LostFailure` (`Overhead` is treated like `Work` here but
    /// recorded as overhead of the job's experiment).
    pub reason: Reason,
}

/// One party's share of an interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// `None` for overhead.
    pub job: Option<String>,
    pub experiment: String,
    pub user: Option<String>,
    pub reason: Reason,
    pub cost: CostBreakdown,
}

/// Attribution input that cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributionError {
    #[error("instance has 0 GPUs; attribution needs the instance's GPU count")]
    NoGpus,
    #[error(
        "jobs use {used} GPU-milliseconds in [{start_ms}, {end_ms}) but the instance only has {available} ({gpus} GPUs)"
    )]
    Oversubscribed {
        used: u128,
        available: u128,
        gpus: u32,
        start_ms: i64,
        end_ms: i64,
    },
}

/// Splits `amount` by `weights` exactly: whole `quantum`s by largest remainder, and whatever is
/// smaller than a quantum to the heaviest weight. The result sums to `amount` exactly.
///
/// With all weights zero (or no weights) the whole amount goes to index 0 (an empty slice
/// returns an empty vector).
pub fn allocate(amount: Decimal, weights: &[u128], quantum: Decimal) -> Vec<Decimal> {
    if weights.is_empty() {
        return Vec::new();
    }
    let mut out = vec![Decimal::ZERO; weights.len()];
    let total: u128 = weights.iter().sum();
    let heaviest = weights
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    if total == 0 || amount.is_zero() || quantum <= Decimal::ZERO {
        out[heaviest] = amount;
        return out;
    }
    let negative = amount.is_sign_negative();
    let abs = amount.abs();
    let units = (abs / quantum).trunc();
    let Some(units_i) = units.to_u128() else {
        out[heaviest] = amount;
        return out;
    };
    // Exact integer split of `units` by weight; u128 keeps `units × weight` in range for any
    // realistic amount (1e18 nano-dollars × 1e15 GPU-ms would overflow; we fall back then).
    let mut base = vec![0u128; weights.len()];
    let mut rems: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, w) in weights.iter().enumerate() {
        let Some(prod) = units_i.checked_mul(*w) else {
            out[heaviest] = amount;
            return out;
        };
        base[i] = prod / total;
        rems.push((prod % total, i));
        given += base[i];
    }
    let mut left = units_i - given;
    // Largest remainder first; ties go to the earlier party so the result is deterministic.
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if left == 0 {
            break;
        }
        base[i] += 1;
        left -= 1;
    }
    let residual = abs - units * quantum;
    for (i, b) in base.iter().enumerate() {
        out[i] = Decimal::from(*b) * quantum;
    }
    out[heaviest] += residual;
    if negative {
        for v in &mut out {
            *v = -*v;
        }
    }
    out
}

/// Quantum used to split money: one nano-dollar, the database's unit.
pub fn nano_quantum() -> Decimal {
    Decimal::new(1, 9)
}

/// Splits the cost of the instance interval `[start_ms, end_ms)` across `jobs` by GPUs × time;
/// the unused GPU-time is overhead of `owner`. Each component is split separately, and the
/// allocations of each component sum exactly to it.
///
/// Allocations with the same (job, experiment, reason) are merged; zero allocations are dropped
/// except that an all-zero cost yields an empty vector.
pub fn attribute(
    cost: &CostBreakdown,
    start_ms: i64,
    end_ms: i64,
    instance_gpus: u32,
    owner: &Owner,
    jobs: &[JobSpan],
) -> Result<Vec<Allocation>, AttributionError> {
    if instance_gpus == 0 {
        return Err(AttributionError::NoGpus);
    }
    let dur = u128::try_from((end_ms - start_ms).max(0)).unwrap_or(0);
    let available = u128::from(instance_gpus) * dur;
    // Party 0 is the overhead of the owner; parties 1.. are the jobs.
    let mut weights: Vec<u128> = Vec::with_capacity(jobs.len() + 1);
    weights.push(0);
    let mut used: u128 = 0;
    for j in jobs {
        let s = j.start_ms.max(start_ms);
        let e = j.end_ms.min(end_ms);
        let overlap = u128::try_from((e - s).max(0)).unwrap_or(0);
        let w = u128::from(j.gpus) * overlap;
        used += w;
        weights.push(w);
    }
    if used > available {
        return Err(AttributionError::Oversubscribed {
            used,
            available,
            gpus: instance_gpus,
            start_ms,
            end_ms,
        });
    }
    weights[0] = available - used;
    if available == 0 {
        // A zero-length interval (e.g. bandwidth only): all to the owner's overhead.
        weights[0] = 1;
    }

    type Key = (Option<String>, String, Reason);
    let mut merged: BTreeMap<Key, (Option<String>, CostBreakdown)> = BTreeMap::new();
    let q = nano_quantum();
    for c in Component::ALL {
        let parts = allocate(cost.get(c).0, &weights, q);
        for (i, part) in parts.into_iter().enumerate() {
            let (key, user) = if i == 0 {
                (
                    (None, owner.experiment.clone(), Reason::Overhead),
                    owner.user.clone(),
                )
            } else {
                let j = &jobs[i - 1];
                (
                    (Some(j.job.clone()), j.experiment.clone(), j.reason),
                    j.user.clone(),
                )
            };
            let entry = merged.entry(key).or_insert((user, CostBreakdown::ZERO));
            *entry.1.get_mut(c) += Usd(part);
        }
    }
    Ok(merged
        .into_iter()
        .map(|((job, experiment, reason), (user, cost))| Allocation {
            job,
            experiment,
            user,
            reason,
            cost,
        })
        .filter(|a| a.cost != CostBreakdown::ZERO)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn allocate_splits_by_weight_with_largest_remainder() {
        let parts = allocate(dec!(1), &[1, 1, 1], dec!(0.01));
        assert_eq!(parts, vec![dec!(0.34), dec!(0.33), dec!(0.33)]);
        let parts = allocate(dec!(0.0000000015), &[1, 3], nano_quantum());
        assert_eq!(parts.iter().sum::<Decimal>(), dec!(0.0000000015));
        assert_eq!(parts[0], dec!(0.000000000)); // 1 unit × 1/4 rounds down
        assert_eq!(parts[1], dec!(0.0000000015));
    }

    #[test]
    fn allocate_handles_zero_weights_and_negative_amounts() {
        assert_eq!(allocate(dec!(5), &[0, 0], dec!(1)), vec![dec!(5), dec!(0)]);
        let parts = allocate(dec!(-1), &[1, 2], dec!(0.01));
        assert_eq!(parts, vec![dec!(-0.33), dec!(-0.67)]);
    }

    #[test]
    fn idle_gpu_time_is_owner_overhead() {
        let owner = Owner {
            experiment: "exp-a".into(),
            user: Some("ann".into()),
        };
        let jobs = vec![JobSpan {
            job: "j1".into(),
            experiment: "exp-b".into(),
            user: Some("bob".into()),
            gpus: 1,
            start_ms: 0,
            end_ms: 1000,
            reason: Reason::Work,
        }];
        let cost = CostBreakdown {
            compute: Usd(dec!(4)),
            ..CostBreakdown::ZERO
        };
        // 2 GPUs for 1 s; the job used 1 GPU for 1 s → half is overhead.
        let a = attribute(&cost, 0, 1000, 2, &owner, &jobs).unwrap();
        assert_eq!(a.len(), 2);
        let job = a.iter().find(|x| x.job.as_deref() == Some("j1")).unwrap();
        assert_eq!(job.cost.compute, Usd(dec!(2)));
        assert_eq!(job.experiment, "exp-b");
        let ovh = a.iter().find(|x| x.reason == Reason::Overhead).unwrap();
        assert_eq!(ovh.experiment, "exp-a");
        assert_eq!(ovh.cost.compute, Usd(dec!(2)));
    }

    #[test]
    fn oversubscription_is_an_error() {
        let owner = Owner {
            experiment: "e".into(),
            user: None,
        };
        let jobs = vec![JobSpan {
            job: "j".into(),
            experiment: "e".into(),
            user: None,
            gpus: 4,
            start_ms: 0,
            end_ms: 10,
            reason: Reason::Work,
        }];
        let err = attribute(&CostBreakdown::ZERO, 0, 10, 2, &owner, &jobs).unwrap_err();
        assert!(err.to_string().contains("2 GPUs"), "{err}");
    }
}
