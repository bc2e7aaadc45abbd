//! The planner's input and output types.
//!
//! These are plain data: the reconciler builds a [`PlanInput`] from the store, the offer searches,
//! the instance listing and the ledger, and gets a [`Plan`] back. Money is integer nano-dollars
//! ([`Nano`]) and hourly prices are nano-dollars per hour ([`NanoPerHour`]) so that two runs on the
//! same input produce the same plan bit for bit and sums are exact. Floating-point inputs
//! (`dlperf`, `reliability`, preemption rates) are converted to integers once, on entry.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;

/// Money in nano-dollars (1e-9 US$), the same unit the store uses.
pub type Nano = i64;
/// An hourly price in nano-dollars per hour.
pub type NanoPerHour = i64;
/// One US dollar in [`Nano`].
pub const NANO_PER_DOLLAR: i64 = 1_000_000_000;

/// The key of a requirement class: jobs that can share one offer search (same GPU query, GPU
/// count, disk and image). The reconciler chooses the string; the planner only compares keys.
pub type ClassKey = String;

/// Converts dollars (as Vast reports them, a float) to [`Nano`], rounding to the nearest nano.
/// Non-finite input gives 0.
pub fn nano_from_dollars(dollars: f64) -> Nano {
    if !dollars.is_finite() {
        return 0;
    }
    // f64 -> i64 `as` saturates, which is the right thing for absurd prices.
    (dollars * NANO_PER_DOLLAR as f64).round() as i64
}

/// Converts a [`rust_decimal::Decimal`] amount of dollars to [`Nano`] (rounded half away from zero).
pub fn nano_from_decimal(dollars: rust_decimal::Decimal) -> Nano {
    use rust_decimal::prelude::ToPrimitive;
    (dollars * rust_decimal::Decimal::from(NANO_PER_DOLLAR))
        .round()
        .to_i64()
        .unwrap_or(if dollars.is_sign_negative() {
            i64::MIN
        } else {
            i64::MAX
        })
}

/// Sums money without overflowing (saturates at the `i64` limits: absurd inputs give absurd
/// but well-defined totals instead of a panic).
pub fn saturating_sum(values: impl IntoIterator<Item = Nano>) -> Nano {
    values.into_iter().fold(0, i64::saturating_add)
}

/// Formats nano-dollars as dollars with 4 decimals, for messages (never for arithmetic).
pub fn fmt_dollars(n: Nano) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let a = (n as i128).unsigned_abs();
    // Round to 1e-4 dollars = 1e5 nano.
    let units = (a + 50_000) / 100_000;
    format!("{sign}${}.{:04}", units / 10_000, units % 10_000)
}

/// Whether a job may run on an interruptible (bid) instance.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum InterruptiblePolicy {
    /// On-demand only.
    Never,
    /// Interruptible only when the job checkpoints (the default): a preemption then costs the work
    /// since the last checkpoint, not the whole run.
    #[default]
    Auto,
    /// Interruptible allowed even without checkpoints (a preemption restarts the job from zero;
    /// the planner prices that in and still picks on-demand when it is cheaper).
    Always,
}

/// One queued job, as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanJob {
    pub id: i64,
    /// The experiment whose budget pays for it.
    pub experiment: String,
    /// The requirement class whose offer list (`PlanInput::offers_by_class`) it may use.
    pub class: ClassKey,
    /// Docker image; jobs share an instance only when the image is the same.
    pub image: String,
    /// GPUs the job needs (at least 1).
    pub gpus: u32,
    /// Disk the job needs, GB.
    pub disk_gb: u32,
    /// Cap on this job's share of the hourly price (nano$/h). For a packed instance the share is
    /// the instance price divided by the jobs it is planned for.
    pub max_dph: Option<NanoPerHour>,
    pub interruptible: InterruptiblePolicy,
    /// The job writes checkpoints it can resume from.
    pub checkpoints: bool,
    /// Seconds of wall time between checkpoints (0: use `PlanConfig::default_checkpoint_interval_s`).
    pub checkpoint_interval_s: u32,
    /// Remaining work in seconds on the reference GPU (`PlanConfig::ref_dlperf_per_gpu` per GPU,
    /// `gpus` of them). For a resumed job pass what is left after its latest checkpoint.
    pub est_runtime_s: u64,
    /// Hard limit on the remaining work in reference seconds (the job's timeout), used for the
    /// worst-case cost; `None` uses `est_runtime_s × runtime_safety_pct / 100`.
    pub max_runtime_s: Option<u64>,
    /// Higher runs first; within a priority, longer jobs first, then by `id`.
    pub priority: i32,
    pub attempts_so_far: u32,
}

/// One live offer from a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOffer {
    pub id: i64,
    pub machine_id: i64,
    pub host_id: i64,
    pub gpu_name: String,
    pub num_gpus: u32,
    /// On-demand compute price of the whole offer (Vast `dph_base`), nano$/h.
    pub dph_base: NanoPerHour,
    /// Storage price per GB per hour (Vast `storage_cost` / 720), nano$/GB/h.
    pub storage_gb_h: NanoPerHour,
    /// Disk the offer can allocate, GB.
    pub disk_space_gb: u32,
    /// Interruptible floor for the whole offer (Vast `min_bid`); `None` when it cannot be bid on.
    pub min_bid: Option<NanoPerHour>,
    /// Vast `dlperf` of the whole offer (all GPUs).
    pub dlperf: f64,
    /// Vast `reliability`, 0..1.
    pub reliability: f64,
    /// Expected seconds from create until the agent is up (0: `PlanConfig::default_boot_s`).
    pub boot_estimate_s: u32,
    /// Expected preemptions per hour when rented interruptible at about `min_bid` (NaN or
    /// negative: `PlanConfig::default_preempt_per_h`).
    pub preempt_per_h: f64,
    /// Vast `rented`: not all of the offer's GPUs are free now, so renting it takes GPUs from
    /// interruptible renters (or fails when it does not outbid them).
    #[serde(default)]
    pub rented: bool,
}

/// A running instance of ours with free GPUs and a deployed agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleInstance {
    pub id: i64,
    pub machine_id: i64,
    pub host_id: i64,
    pub image: String,
    pub gpu_name: String,
    pub num_gpus: u32,
    pub free_gpus: u32,
    pub disk_free_gb: u32,
    /// What the instance costs per hour now (compute, or the bid, plus storage), nano$/h.
    pub dph: NanoPerHour,
    pub dlperf: f64,
    /// Whether it is an interruptible (bid) instance.
    pub interruptible: bool,
    pub preempt_per_h: f64,
    /// Requirement classes whose query this instance's offer satisfied.
    pub classes: Vec<ClassKey>,
    /// When the jobs already on it are expected to be done (0: nothing runs on it). Pacing
    /// prices a job put on it by how long it keeps the instance alive past this.
    #[serde(default)]
    pub busy_until_ms: EpochMs,
}

/// Measured speed on one GPU model, summed over earlier attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Measured {
    /// Reference-GPU seconds of work done (from progress reports × the job's estimate).
    pub ref_work_s: u64,
    /// Wall seconds it took (per GPU count as the job ran; the ratio is what matters).
    pub wall_s: u64,
}

/// Measured throughput per GPU model (Vast `gpu_name`). Blended with the `dlperf` prior, so a
/// single short attempt does not swing the plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub by_gpu: BTreeMap<String, Measured>,
}

/// Why a machine or host is avoided, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub until_ms: EpochMs,
    pub reason: String,
}

/// Machines and hosts not to rent (see [`super::reputation`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blacklist {
    pub machines: BTreeMap<i64, Ban>,
    pub hosts: BTreeMap<i64, Ban>,
}

impl Blacklist {
    /// Whether a machine (or its host) is banned at `now_ms`.
    pub fn blocks(&self, machine_id: i64, host_id: i64, now_ms: EpochMs) -> bool {
        self.machines
            .get(&machine_id)
            .is_some_and(|b| b.until_ms > now_ms)
            || self
                .hosts
                .get(&host_id)
                .is_some_and(|b| b.until_ms > now_ms)
    }
}

/// Tunables. `Default` gives sensible values; every field is documented with its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// Jobs with this many attempts behind them are no longer put on interruptible instances.
    pub interruptible_max_attempts: u32,
    /// A bid may carry this many percent over `min_bid`: for each group of jobs the planner
    /// prices both bids (the margin one with `margin_preempt_pct` of the preemptions) and takes
    /// the one with the lower expected cost, so the margin is bought only where lost work is dear.
    /// 0: always `min_bid`.
    pub bid_margin_pct: u32,
    /// Preemption rate when bidding with the margin, as a percentage of the offer's
    /// `preempt_per_h` (which is the rate at exactly `min_bid`). An assumption until the
    /// simulator or our own history calibrates it.
    pub margin_preempt_pct: u32,
    /// Never bid above this percentage of the offer's on-demand compute price (above it,
    /// on-demand is the better deal).
    pub bid_cap_pct_of_on_demand: u32,
    /// Never bid above this per GPU of the offer, nano$/h.
    pub bid_cap_per_gpu: Option<NanoPerHour>,
    /// Bids are whole multiples of this, nano$/h (Vast: $0.001 = 1_000_000).
    pub bid_tick: NanoPerHour,
    /// New rentals this plan may create (the reconciler passes the headroom left).
    pub max_instances: u32,
    /// Cap on the summed hourly price of the new rentals (headroom left), nano$/h.
    pub max_total_dph: Option<NanoPerHour>,
    /// Boot time for offers that report none, seconds.
    pub default_boot_s: u32,
    /// Added to every boot (agent deploy, image pull), seconds.
    pub boot_overhead_s: u32,
    /// Time to get going again after a preemption (reboot/replace, reload checkpoint), seconds.
    pub restart_overhead_s: u32,
    /// Checkpoint interval for jobs that checkpoint but did not say how often, seconds.
    pub default_checkpoint_interval_s: u32,
    /// Preemptions per hour for offers that report no rate.
    pub default_preempt_per_h: f64,
    /// Worst case runtime = estimate × this / 100 (when the job has no `max_runtime_s`).
    pub runtime_safety_pct: u32,
    /// Worst case preemption count = expected × this / 100, plus one.
    pub worst_preempt_pct: u32,
    /// Offers with lower Vast reliability are not used.
    pub min_reliability: f64,
    /// `dlperf` of one reference GPU: `est_runtime_s` is measured against it. The default, 40, is
    /// one RTX 4090 in Vast's (and `vast::sim`'s) terms.
    pub ref_dlperf_per_gpu: f64,
    /// Weight of the `dlperf` prior against measurements, in wall seconds of evidence.
    pub throughput_prior_s: u64,
    /// How long an outbid instance may stay paused before its job moves elsewhere, seconds
    /// (lengthened by the extra work moving would lose; see [`super::bid_decision`]).
    pub outbid_max_wait_s: u32,
    /// How soon to look again at a paused instance we decided to wait for, seconds.
    pub outbid_recheck_s: u32,
    /// Pacing: offers up to this many percent above the pacing cutoff (and above the cheapest
    /// rate a job can get) may still be rented.
    pub pace_slack_pct: u32,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            interruptible_max_attempts: 3,
            bid_margin_pct: 10,
            margin_preempt_pct: 50,
            bid_cap_pct_of_on_demand: 90,
            bid_cap_per_gpu: None,
            bid_tick: 1_000_000,
            max_instances: 64,
            max_total_dph: None,
            default_boot_s: 180,
            boot_overhead_s: 60,
            restart_overhead_s: 300,
            default_checkpoint_interval_s: 1800,
            default_preempt_per_h: 0.05,
            runtime_safety_pct: 150,
            worst_preempt_pct: 300,
            min_reliability: 0.90,
            ref_dlperf_per_gpu: 40.0,
            throughput_prior_s: 3600,
            outbid_max_wait_s: 900,
            outbid_recheck_s: 60,
            pace_slack_pct: 5,
        }
    }
}

/// Everything the planner looks at. `now_ms` is the only notion of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    pub now_ms: EpochMs,
    pub jobs: Vec<PlanJob>,
    pub offers: Vec<PlanOffer>,
    /// For each requirement class, indices into `offers` that satisfy its query (the search is
    /// done by Vast or the simulator; the planner never parses queries). An offer may appear
    /// under several classes; the planner rents it at most once.
    pub offers_by_class: BTreeMap<ClassKey, Vec<usize>>,
    pub idle: Vec<IdleInstance>,
    pub throughput: Throughput,
    /// Remaining budget per experiment, nano$: the limit minus what was spent minus what running
    /// work may still cost (its worst case). Each placed job reserves its worst case against it
    /// (`PlacedJob::reserved`). An experiment without an entry has no budget cap.
    pub budgets: BTreeMap<String, Nano>,
    pub blacklist: Blacklist,
    pub config: PlanConfig,
    /// Finish by a deadline on the cheapest capacity that can (see [`super::pace`]); `None`:
    /// every job goes to its cheapest offer now, however many are rented.
    #[serde(default)]
    pub pace: Option<Pace>,
}

/// What pacing needs besides the queue: the deadline and the capacity we already hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pace {
    /// The queue (placed and running work included) should be done by then.
    pub deadline_ms: EpochMs,
    /// Every live instance of ours (busy or not), with the work still to do on it.
    pub held: Vec<HeldInstance>,
}

/// A live instance of ours as pacing sees it: capacity and the work it still has to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldInstance {
    pub gpu_name: String,
    /// Vast `dlperf` of the whole instance.
    pub dlperf: f64,
    pub num_gpus: u32,
    /// What it costs per hour (compute or bid, plus storage), nano$/h.
    pub dph: NanoPerHour,
    pub interruptible: bool,
    /// Reference GPU-seconds of work the jobs on it still have to do.
    pub work_left_ref_gpu_s: u64,
    /// Requirement classes it can serve.
    pub classes: Vec<ClassKey>,
}

/// On-demand or interruptible at a bid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RentalKind {
    OnDemand,
    /// `bid` is for the whole offer, compute only (storage is billed on top), nano$/h.
    Interruptible {
        bid: NanoPerHour,
    },
}

/// A job placed on a rental or an idle instance, with its own money figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedJob {
    pub job_id: i64,
    pub gpus: u32,
    /// Expected wall seconds on this machine (preemption losses included).
    pub expected_runtime_s: i64,
    /// This job's expected share of the cost.
    pub expected_cost: Nano,
    /// What was reserved against its experiment's budget (worst case).
    pub reserved: Nano,
}

/// A job put on an existing idle instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reuse {
    pub instance_id: i64,
    pub job: PlacedJob,
}

/// A new instance to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rental {
    pub offer_id: i64,
    pub machine_id: i64,
    pub class: ClassKey,
    pub image: String,
    pub kind: RentalKind,
    /// Disk to allocate, GB (room for a job on every GPU slot, so later jobs can reuse it).
    pub disk_gb: u32,
    pub num_gpus: u32,
    /// What it will cost per hour (compute or bid, plus storage), nano$/h.
    pub dph: NanoPerHour,
    /// Jobs to start on it now; together they use at most `num_gpus` GPUs.
    pub jobs: Vec<PlacedJob>,
    /// Boot plus the longest expected job.
    pub expected_cost: Nano,
    /// Boot plus the longest worst-case job.
    pub worst_case_cost: Nano,
}

/// Why a job was not placed now. `Display` gives a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DeferReason {
    /// No offer of the class could ever hold the job.
    NoOfferFits { class: ClassKey, detail: String },
    /// Offers fit, but all of them are blacklisted (or below the reliability floor).
    BlacklistedOnly {
        class: ClassKey,
        blacklisted: u32,
        unreliable: u32,
    },
    /// Every fitting offer is already used by this plan.
    OffersExhausted { class: ClassKey },
    /// The cheapest fitting share is above the job's `max_dph`.
    OverMaxDph {
        cheapest: NanoPerHour,
        cap: NanoPerHour,
    },
    /// Its worst-case cost does not fit in what is left of the experiment's budget.
    OverBudget {
        experiment: String,
        needed: Nano,
        remaining: Nano,
    },
    /// `PlanConfig::max_instances` new rentals are already planned.
    MaxInstances { limit: u32 },
    /// Renting more would pass `PlanConfig::max_total_dph`.
    MaxTotalDph { limit: NanoPerHour },
    /// Pacing: the deadline is met without offers this dear; the job waits for a cheaper slot.
    Paced {
        /// The dearest rate pacing allows now, nano$ per reference GPU-hour.
        cutoff: NanoPerHour,
        /// The cheapest rate among the offers it turned down, same unit.
        cheapest: NanoPerHour,
    },
    /// The job's numbers cannot be planned (0 GPUs).
    Invalid { detail: String },
}

impl fmt::Display for DeferReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoOfferFits { class, detail } => {
                write!(f, "no offer fits class {class:?}: {detail}")
            }
            Self::BlacklistedOnly {
                class,
                blacklisted,
                unreliable,
            } => write!(
                f,
                "every offer of class {class:?} is excluded: {blacklisted} on blacklisted machines/hosts, \
                 {unreliable} below the reliability floor"
            ),
            Self::OffersExhausted { class } => {
                write!(
                    f,
                    "all fitting offers of class {class:?} are taken by this plan; waiting"
                )
            }
            Self::OverMaxDph { cheapest, cap } => write!(
                f,
                "over max-dph: the cheapest fitting share is {}/h, the cap is {}/h",
                fmt_dollars(*cheapest),
                fmt_dollars(*cap)
            ),
            Self::OverBudget {
                experiment,
                needed,
                remaining,
            } => write!(
                f,
                "over budget: experiment {experiment:?} has {} left, the worst case needs at least {}",
                fmt_dollars(*remaining),
                fmt_dollars(*needed)
            ),
            Self::MaxInstances { limit } => {
                write!(f, "waiting: the limit of {limit} new instances is reached")
            }
            Self::MaxTotalDph { limit } => write!(
                f,
                "waiting: renting more would pass the total cap of {}/h",
                fmt_dollars(*limit)
            ),
            Self::Paced { cutoff, cheapest } => write!(
                f,
                "paced: the deadline is met on capacity up to {}/h per reference GPU; the cheapest \
                 free offer costs {}/h; waiting for a cheaper slot",
                fmt_dollars(*cutoff),
                fmt_dollars(*cheapest)
            ),
            Self::Invalid { detail } => write!(f, "invalid job: {detail}"),
        }
    }
}

/// A job not placed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferred {
    pub job_id: i64,
    pub reason: DeferReason,
}

/// The planner's answer. All lists are in a deterministic order: jobs by priority then id,
/// rentals in the order they were decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub reuse: Vec<Reuse>,
    pub rent: Vec<Rental>,
    pub deferred: Vec<Deferred>,
}

impl Plan {
    /// Expected cost of everything planned (rentals whole, plus reused shares).
    pub fn expected_cost(&self) -> Nano {
        saturating_sum(
            (self.rent.iter().map(|r| r.expected_cost))
                .chain(self.reuse.iter().map(|r| r.job.expected_cost)),
        )
    }
    /// Worst-case cost of everything planned.
    pub fn worst_case_cost(&self) -> Nano {
        saturating_sum(
            (self.rent.iter().map(|r| r.worst_case_cost))
                .chain(self.reuse.iter().map(|r| r.job.reserved)),
        )
    }
    /// Summed hourly price of the new rentals.
    pub fn new_dph(&self) -> NanoPerHour {
        saturating_sum(self.rent.iter().map(|r| r.dph))
    }
    /// Ids of every placed job (reused or rented), in plan order.
    pub fn placed_job_ids(&self) -> Vec<i64> {
        self.reuse
            .iter()
            .map(|r| r.job.job_id)
            .chain(
                self.rent
                    .iter()
                    .flat_map(|r| r.jobs.iter().map(|j| j.job_id)),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_round_trip_and_format() {
        assert_eq!(nano_from_dollars(0.24), 240_000_000);
        assert_eq!(nano_from_dollars(f64::NAN), 0);
        assert_eq!(
            nano_from_decimal(rust_decimal::Decimal::new(10_020_741, 7)),
            1_002_074_100
        );
        assert_eq!(fmt_dollars(1_002_074_100), "$1.0021");
        assert_eq!(fmt_dollars(-50_000), "-$0.0001");
        assert_eq!(fmt_dollars(0), "$0.0000");
    }

    #[test]
    fn blacklist_blocks_until_expiry() {
        let mut b = Blacklist::default();
        b.machines.insert(
            7,
            Ban {
                until_ms: 1_000,
                reason: "boot".into(),
            },
        );
        b.hosts.insert(
            9,
            Ban {
                until_ms: 2_000,
                reason: "host".into(),
            },
        );
        assert!(b.blocks(7, 1, 999));
        assert!(!b.blocks(7, 1, 1_000));
        assert!(b.blocks(1, 9, 1_999));
        assert!(!b.blocks(1, 1, 0));
    }

    #[test]
    fn reasons_read_like_sentences() {
        let r = DeferReason::OverBudget {
            experiment: "lr-sweep".into(),
            needed: 2 * NANO_PER_DOLLAR,
            remaining: NANO_PER_DOLLAR / 2,
        };
        assert_eq!(
            r.to_string(),
            "over budget: experiment \"lr-sweep\" has $0.5000 left, the worst case needs at least $2.0000"
        );
    }
}
