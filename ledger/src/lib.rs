//! Decimal-exact money, per-second accrual, attribution, budgets, reconciliation and reports
//! for vasticlaude.
//!
//! The ledger knows nothing of Vast.ai: the scheduler turns Vast prices and instance states
//! into [`Rates`] and [`StateInterval`]s, and Vast's charges feed into [`InstanceCharges`].
//!
//! # Money
//! [`Usd`] wraps `rust_decimal::Decimal` (exact arithmetic); [`NanoUsd`] is the `i64` count of
//! 10⁻⁹ dollars stored in the database (sea-orm reads `DECIMAL` through `f64` on SQLite, which
//! loses cents). **Nothing is rounded until it is shown**: `Display` and
//! [`Usd::round_cents`] round *half away from zero* to cents (0.125 → $0.13); JSON and CSV carry
//! the exact decimals. The store keeps each instance's sub-nano remainder and carries it into
//! the next interval, so stored totals stay within one nano-dollar of the exact sum.
//!
//! # Accrual and attribution
//! [`accrue`] applies Vast's billing rules per second: compute while `Running`/`Frozen` (at the
//! bid for interruptible instances), storage (`disk GB × $/GB/month ÷ 720` per hour) in every
//! state but `Loading`/`Offline`, bandwidth per byte. [`attribute`] splits an instance
//! interval across its jobs by GPUs × time, with unused GPU-time as overhead of the owner
//! experiment; [`allocate`] makes the parts add up to the whole exactly.
//!
//! ```
//! use ledger::{accrue, attribute, BillingState, JobSpan, Owner, Rates, Reason, StateInterval, Usd};
//! use rust_decimal::Decimal;
//! use std::str::FromStr;
//!
//! let d = |s: &str| Decimal::from_str(s).unwrap();
//! let rates = Rates {
//!     compute_per_hour: Usd(d("0.4567")),
//!     bid_per_hour: None,
//!     disk_gb: d("10"),
//!     storage_per_gb_month: Usd(d("0.149333")),
//!     upload_per_gb: Usd(d("0.02")),
//!     download_per_gb: Usd(d("0.01")),
//! };
//! // 5437 s running: compute = 0.4567 × 5437 / 3600, exactly.
//! let iv = StateInterval::new(0, 5_437_000, BillingState::Running);
//! let cost = accrue(&rates, &[iv]).unwrap();
//! assert!(cost.compute.amount().to_string().starts_with("0.68974386111"));
//! assert_eq!(cost.compute.to_string(), "$0.69"); // shown: half away from zero, cents
//!
//! // One 1-GPU job for the whole interval on a 2-GPU instance: half is overhead.
//! let owner = Owner { experiment: "exp-a".into(), user: None };
//! let job = JobSpan { job: "j1".into(), experiment: "exp-a".into(), user: None, gpus: 1,
//!                     start_ms: 0, end_ms: 5_437_000, reason: Reason::Work };
//! let parts = attribute(&cost, 0, 5_437_000, 2, &owner, &[job]).unwrap();
//! let sum: Usd = parts.iter().map(|a| a.cost.total()).sum();
//! assert_eq!(sum, cost.total()); // exact conservation
//! ```
//!
//! # The store-backed [`Ledger`]
//! - [`Ledger::record_interval`] accrues and attributes one instance interval and stores entries
//!   per instance / job / experiment / user with a component and a reason (`work`, `overhead`,
//!   `lost_preemption`, `lost_failure`); replays are skipped.
//! - Budgets per experiment, user and workspace ([`Ledger::set_budget`],
//!   [`Ledger::budget_status`]); [`Ledger::reserve`] / [`Ledger::release`] / [`Ledger::settle`]
//!   hold worst-case cost before the scheduler commits money; [`Ledger::over_hard_budgets`]
//!   names the experiments to checkpoint, pull and destroy.
//! - [`Ledger::report`] builds a [`Report`] (table, text, HTML, CSV, JSON);
//!   [`Ledger::add_schedule`] / [`Ledger::tick`] send cron-scheduled reports and budget alerts
//!   by email ([`email::send`]), each exactly once across restarts.
//! - [`reconcile()`] compares [`Ledger::instance_totals`] with Vast's charges and reports drift.
//!
//! Tables come from [`migration::migrations`] (composed by the scheduler's store) or
//! [`migration::Migrator`] (standalone, used by [`Ledger::open`]). Time is always a parameter
//! (`now_ms`, epoch milliseconds), never the database's clock.

pub mod accrual;
pub mod attribution;
pub mod email;
pub mod migration;
pub mod money;
pub mod reconcile;
pub mod report;
pub mod schedule;
pub mod store;

pub use accrual::{
    AccrualError, BillingState, Component, CostBreakdown, Rates, StateInterval, accrue,
    accrue_interval,
};
pub use attribution::{
    Allocation, AttributionError, JobSpan, Owner, Reason, allocate, attribute, nano_quantum,
};
pub use email::{Email, EmailError, Mailer, SmtpConfig};
pub use money::{MoneyError, NANOS_PER_USD, NanoUsd, Usd};
pub use reconcile::{InstanceCharges, InstanceDrift, Reconciliation, reconcile};
pub use report::{
    ExperimentProgress, ExperimentSummary, GroupBy, GroupRow, Report, ReportQuery, render_table,
};
pub use schedule::{Alert, ClaimedFiring, CronExpr, Firing, Schedule, SendOutcome, TickOutcome};
pub use store::{
    AccrualInput, Budget, BudgetDenied, BudgetScope, BudgetSpec, BudgetStatus,
    DEFAULT_WARN_PERCENTS, Entry, EntryFilter, HardStop, InstanceTotal, Ledger, LedgerError,
    Recorded, Reservation, ReservationState, ReserveRequest, parse_warn_percents,
};

/// Re-exported so callers can hold a connection without naming sea-orm themselves.
pub use sea_orm;
