//! The planner: which queued jobs go onto which idle instances and which new offers to rent, at
//! what bid, and how many jobs share each.
//!
//! It is a pure function of its input and `now` (no store, no clock, no I/O, no randomness, no
//! hash-map iteration order), so the reconciler can call it every tick, the simulation can replay
//! it, and a benchmark can hold it to 10,000 jobs × 20,000 offers in well under a second.
//!
//! What it optimises is the **expected cost per job**, not the hourly price:
//! runtime scales with the offer's speed (`dlperf`, blended with the measured throughput of
//! earlier attempts on that GPU model), so a faster GPU at a higher hourly price wins when it
//! finishes the job for less; a multi-GPU offer is priced per GPU slot and packed with several
//! jobs when that is cheaper; warm idle instances are reused before anything is rented;
//! interruptible offers are used only for jobs that may be interrupted, with expected lost work
//! (preemptions × (work since the last checkpoint + restart overhead)) added to their cost, and
//! bid at `min_bid`, or `min_bid` plus a margin where the preemptions it saves are worth more
//! than it costs (long checkpoint intervals on often-taken machines). Budgets are reservations of the worst case, so the planner
//! never starts work that could overrun what an experiment has left.
//!
//! Entry points:
//! * [`plan`] — the plan;
//! * [`naive_baseline`] and [`lower_bound`] — the yardsticks the market benchmark compares against;
//! * [`bid_decision`] — raise, wait or move for an outbid instance;
//! * [`reputation::blacklist`] — machines and hosts to avoid, learned from our own failures;
//! * [`PlanOffer::from_vast`] — a search result as the planner needs it;
//! * [`synth::market`] — deterministic synthetic markets (benchmark, tests).
//!
//! How the reconciler builds a [`PlanInput`] each pass:
//! 1. one [`PlanJob`] per queued job, `class` = a key of its search (GPU query, GPU count, disk,
//!    image); `est_runtime_s` = work left after its latest pulled checkpoint, in seconds on one
//!    reference GPU per requested GPU (`PlanConfig::ref_dlperf_per_gpu`);
//! 2. one search per class (cached briefly), the results converted with [`PlanOffer::from_vast`]
//!    into `offers`, their indices into `offers_by_class` (one offer may serve several classes);
//! 3. our agent-up instances with free GPUs as [`IdleInstance`]s, with the classes they satisfy;
//! 4. `budgets` = limit − spent − worst case of running work; `blacklist` from
//!    [`reputation::blacklist`] over the stored failure events; `throughput` from finished
//!    attempts; `config.max_instances` / `max_total_dph` = the headroom left;
//! 5. with a deadline (`vasticlaude run --finish-within`), `pace` = the deadline and every live
//!    instance of ours with the work still on it: the planner then rents only the cheapest
//!    capacity that finishes the queue in time and lets the rest wait (see `pace.rs`), and a
//!    job put on one of our instances is priced by how long it keeps that instance alive.
//!
//! and then executes the [`Plan`]: start `reuse` jobs on their instances, create each `rent`
//! entry (on-demand, or with `price = bid`) and place its jobs there once it is up, and leave
//! `deferred` jobs queued with their reason shown to the user.

mod baseline;
mod bid;
pub mod cost;
mod from_vast;
mod pace;
mod pack;
pub mod reputation;
pub mod synth;
mod types;

#[cfg(test)]
mod tests;

pub use baseline::{LowerBound, lower_bound, naive_baseline};
pub use bid::{Alternative, BidAction, BidDecision, Outbid, bid_decision};
pub use from_vast::OfferConversionError;
pub use pack::{interruptible_allowed, job_order, plan};
pub use types::*;
