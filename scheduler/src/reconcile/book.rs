//! The engine's cost book: exact per-instance billing intervals and per-job GPU spans, turned
//! into per-instance and per-experiment costs with the ledger's accrual and attribution.
//!
//! Every cent of an instance goes to exactly one experiment (jobs by GPUs × time, idle and
//! boot time to the experiment that caused the rental), so the per-experiment sums equal the
//! per-instance sums exactly, by construction of [`ledger::attribute`].

use std::collections::BTreeMap;

use ledger::{BillingState, JobSpan, Owner, Rates, Reason, StateInterval, Usd};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;

use super::model::*;

/// Billing state of a listed instance, by Vast's rules.
pub fn billing_state(actual_status: Option<&str>) -> BillingState {
    match actual_status.unwrap_or("") {
        "running" => BillingState::Running,
        "frozen" => BillingState::Frozen,
        "loading" => BillingState::Loading,
        "offline" => BillingState::Offline,
        "stopped" | "exited" | "unknown" => BillingState::Stopped,
        _ => BillingState::Created,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceBook {
    pub vast_id: VastId,
    pub label: String,
    pub experiment: String,
    pub gpus: u32,
    pub rates: Rates,
    pub intervals: Vec<StateInterval>,
    /// The interval in progress: (state, since).
    pub open: Option<(BillingState, EpochMs)>,
    pub spans: Vec<JobSpan>,
    /// Job spans in progress: job → (experiment, gpus, since).
    pub open_spans: BTreeMap<JobId, (String, u32, EpochMs)>,
    pub closed: bool,
    /// Accrued into the store-backed ledger up to here.
    #[serde(default)]
    pub ledger_until_ms: Option<EpochMs>,
}

/// Costs so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    pub per_instance: BTreeMap<String, Decimal>,
    pub per_experiment: BTreeMap<String, Decimal>,
    /// Cost of work lost to preemption and failures, per experiment.
    pub lost: BTreeMap<String, Decimal>,
    pub instances_total: Decimal,
    pub experiments_total: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostBook {
    pub instances: BTreeMap<InstanceKey, InstanceBook>,
}

fn usd(d: Decimal) -> Usd {
    Usd(d)
}

impl CostBook {
    /// Start the book of a bought instance.
    pub fn open_instance(&mut self, inst: &InstanceView, vast_id: VastId, now: EpochMs) {
        let o = &inst.offer;
        self.instances
            .entry(inst.key)
            .or_insert_with(|| InstanceBook {
                vast_id,
                label: inst.label.clone(),
                experiment: inst.experiment.clone(),
                gpus: o.gpus.max(1),
                rates: Rates {
                    compute_per_hour: usd(o.dph_base),
                    bid_per_hour: o.bid.map(usd),
                    disk_gb: Decimal::from_f64_retain(o.disk_gb)
                        .unwrap_or_default()
                        .round_dp(3),
                    storage_per_gb_month: usd(o.storage_cost),
                    upload_per_gb: Usd::ZERO,
                    download_per_gb: Usd::ZERO,
                },
                intervals: Vec::new(),
                open: Some((BillingState::Created, now)),
                spans: Vec::new(),
                open_spans: BTreeMap::new(),
                closed: false,
                ledger_until_ms: None,
            });
    }

    /// The listing says the instance is in `state` now.
    pub fn observe(&mut self, key: InstanceKey, state: BillingState, now: EpochMs) {
        let Some(b) = self.instances.get_mut(&key) else {
            return;
        };
        if b.closed {
            return;
        }
        match b.open {
            Some((s, _)) if s == state => {}
            Some((s, since)) => {
                if now > since {
                    b.intervals.push(StateInterval::new(since, now, s));
                }
                b.open = Some((state, now.max(since)));
            }
            None => b.open = Some((state, now)),
        }
    }

    /// A new bid applies from now: what ran so far is kept as a closed segment at the old
    /// price, and the live book continues at the new one.
    pub fn change_bid(&mut self, key: InstanceKey, bid: Decimal, now: EpochMs) {
        let segments = self.instances.keys().filter(|k| **k < 0).count() as i64;
        let Some(b) = self.instances.get_mut(&key) else {
            return;
        };
        if b.closed {
            return;
        }
        let mut old = b.clone();
        if let Some((s, since)) = old.open.take()
            && now > since
        {
            old.intervals.push(StateInterval::new(since, now, s));
        }
        for (job, (exp, gpus, since)) in std::mem::take(&mut old.open_spans) {
            if now > since {
                old.spans.push(JobSpan {
                    job: job.to_string(),
                    experiment: exp,
                    user: None,
                    gpus,
                    start_ms: since,
                    end_ms: now,
                    reason: Reason::Work,
                });
            }
        }
        old.closed = true;
        b.intervals.clear();
        b.spans.clear();
        if let Some((s, since)) = b.open {
            b.open = Some((s, now.max(since)));
        }
        for v in b.open_spans.values_mut() {
            v.2 = v.2.max(now);
        }
        b.rates.bid_per_hour = Some(usd(bid));
        b.ledger_until_ms = Some(b.ledger_until_ms.unwrap_or(now).max(now));
        self.instances.insert(-(segments + 1), old);
    }

    /// The instance is gone: nothing more is billed.
    pub fn close_instance(&mut self, key: InstanceKey, now: EpochMs) {
        let Some(b) = self.instances.get_mut(&key) else {
            return;
        };
        if b.closed {
            return;
        }
        if let Some((s, since)) = b.open.take()
            && now > since
        {
            b.intervals.push(StateInterval::new(since, now, s));
        }
        let open: Vec<JobId> = b.open_spans.keys().copied().collect();
        for j in open {
            end_span(b, j, Reason::LostPreemption, now);
        }
        b.closed = true;
    }

    pub fn start_span(
        &mut self,
        key: InstanceKey,
        job: JobId,
        experiment: &str,
        gpus: u32,
        now: EpochMs,
    ) {
        if let Some(b) = self.instances.get_mut(&key) {
            b.open_spans
                .insert(job, (experiment.to_string(), gpus, now));
        }
    }

    pub fn end_span(&mut self, key: InstanceKey, job: JobId, reason: Reason, now: EpochMs) {
        self.end_span_kept(key, job, reason, None, now);
    }

    /// Ends a job's span; the part up to `kept_until` (a checkpoint the next attempt resumes
    /// from) is work, the rest is `reason`.
    pub fn end_span_kept(
        &mut self,
        key: InstanceKey,
        job: JobId,
        reason: Reason,
        kept_until: Option<EpochMs>,
        now: EpochMs,
    ) {
        let Some(b) = self.instances.get_mut(&key) else {
            return;
        };
        if let Some(kept) = kept_until
            && let Some((exp, gpus, since)) = b.open_spans.get(&job).cloned()
            && kept > since
            && kept < now
        {
            end_span(b, job, Reason::Work, kept);
            b.open_spans.insert(job, (exp, gpus, kept));
        }
        end_span(b, job, reason, now);
    }

    /// The pieces of every instance's intervals not yet given to the store-backed ledger, up
    /// to `now`, with the job spans inside them; [`CostBook::mark_accrued`] records that they
    /// were stored. Old-price segments come first (their keys are negative), so each
    /// instance's pieces arrive in time order.
    pub fn accrual_inputs(
        &self,
        now: EpochMs,
    ) -> Vec<(InstanceKey, EpochMs, ledger::AccrualInput)> {
        let mut out = Vec::new();
        for (key, b) in &self.instances {
            let (intervals, spans) = b.until(now);
            let from = b.ledger_until_ms.unwrap_or(i64::MIN);
            let mut last = from;
            for iv in intervals {
                let start = iv.start_ms.max(from);
                if iv.end_ms <= start {
                    continue;
                }
                let piece = StateInterval::new(start, iv.end_ms, iv.state);
                let jobs: Vec<JobSpan> = spans
                    .iter()
                    .filter(|sp| sp.start_ms < piece.end_ms && sp.end_ms > piece.start_ms)
                    .map(|sp| JobSpan {
                        start_ms: sp.start_ms.max(piece.start_ms),
                        end_ms: sp.end_ms.min(piece.end_ms),
                        ..sp.clone()
                    })
                    .collect();
                last = last.max(piece.end_ms);
                out.push((
                    *key,
                    last,
                    ledger::AccrualInput {
                        instance: b.label.clone(),
                        owner: Owner {
                            experiment: b.experiment.clone(),
                            user: None,
                        },
                        gpus: b.gpus,
                        rates: b.rates.clone(),
                        interval: piece,
                        jobs,
                    },
                ));
            }
        }
        out
    }

    /// The ledger has stored `key`'s intervals up to `until`.
    pub fn mark_accrued(&mut self, key: InstanceKey, until: EpochMs) {
        if let Some(b) = self.instances.get_mut(&key) {
            b.ledger_until_ms = Some(b.ledger_until_ms.unwrap_or(until).max(until));
        }
    }

    /// Costs up to `now` (open intervals and spans counted up to `now`).
    pub fn summary(&self, now: EpochMs) -> CostSummary {
        let mut s = CostSummary::default();
        for b in self.instances.values() {
            let (intervals, spans) = b.until(now);
            let owner = Owner {
                experiment: b.experiment.clone(),
                user: None,
            };
            let mut inst_total = Decimal::ZERO;
            for iv in &intervals {
                let Ok(cost) = ledger::accrue_interval(&b.rates, iv) else {
                    continue;
                };
                inst_total += cost.total().0;
                let clipped: Vec<JobSpan> = spans
                    .iter()
                    .filter(|sp| sp.start_ms < iv.end_ms && sp.end_ms > iv.start_ms)
                    .map(|sp| JobSpan {
                        start_ms: sp.start_ms.max(iv.start_ms),
                        end_ms: sp.end_ms.min(iv.end_ms),
                        ..sp.clone()
                    })
                    .collect();
                match ledger::attribute(&cost, iv.start_ms, iv.end_ms, b.gpus, &owner, &clipped) {
                    Ok(allocs) => {
                        for a in allocs {
                            let t = a.cost.total().0;
                            *s.per_experiment.entry(a.experiment.clone()).or_default() += t;
                            if matches!(a.reason, Reason::LostPreemption | Reason::LostFailure) {
                                *s.lost.entry(a.experiment).or_default() += t;
                            }
                        }
                    }
                    Err(_) => {
                        *s.per_experiment.entry(b.experiment.clone()).or_default() +=
                            cost.total().0;
                    }
                }
            }
            *s.per_instance.entry(b.label.clone()).or_default() += inst_total;
        }
        s.instances_total = s.per_instance.values().copied().sum();
        s.experiments_total = s.per_experiment.values().copied().sum();
        s
    }
}

impl InstanceBook {
    /// Intervals and job spans, the open ones counted up to `now`.
    fn until(&self, now: EpochMs) -> (Vec<StateInterval>, Vec<JobSpan>) {
        let mut intervals = self.intervals.clone();
        if let Some((st, since)) = self.open
            && now > since
        {
            intervals.push(StateInterval::new(since, now, st));
        }
        let mut spans = self.spans.clone();
        for (job, (exp, gpus, since)) in &self.open_spans {
            if now > *since {
                spans.push(JobSpan {
                    job: job.to_string(),
                    experiment: exp.clone(),
                    user: None,
                    gpus: *gpus,
                    start_ms: *since,
                    end_ms: now,
                    reason: Reason::Work,
                });
            }
        }
        (intervals, spans)
    }
}

fn end_span(b: &mut InstanceBook, job: JobId, reason: Reason, now: EpochMs) {
    if let Some((exp, gpus, since)) = b.open_spans.remove(&job)
        && now > since
    {
        b.spans.push(JobSpan {
            job: job.to_string(),
            experiment: exp,
            user: None,
            gpus,
            start_ms: since,
            end_ms: now,
            reason,
        });
    }
}
