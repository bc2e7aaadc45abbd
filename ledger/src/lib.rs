//! Decimal-exact money, per-second accrual, attribution, budgets, reconciliation and reports
//! for vasticlaude. (Work in progress: store, reports and email follow.)

pub mod accrual;
pub mod attribution;
pub mod migration;
pub mod money;

pub use accrual::{
    AccrualError, BillingState, Component, CostBreakdown, Rates, StateInterval, accrue,
    accrue_interval,
};
pub use attribution::{
    Allocation, AttributionError, JobSpan, Owner, Reason, allocate, attribute,
};
pub use money::{MoneyError, NANOS_PER_USD, NanoUsd, Usd};

/// Re-exported so callers can hold a connection without naming sea-orm themselves.
pub use sea_orm;
