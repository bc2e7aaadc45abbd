//! Per-second accrual from instance state intervals, following Vast.ai's billing rules.
//!
//! The scheduler turns Vast's instance states into [`BillingState`]s and feeds the ledger
//! [`StateInterval`]s; this module knows nothing of Vast's types. The rules (Vast docs,
//! "billing" and "instance pricing"):
//!
//! - **compute** at the hourly price for every second the instance is `Running` or `Frozen`; an
//!   interruptible instance pays its bid, not the on-demand price;
//! - **storage** at `disk GB × $/GB/month ÷ 720` per hour from creation until destroy, in every
//!   state except `Loading` and `Offline` (a stopped instance still pays storage);
//! - **bandwidth** for every byte up or down, in any state, at the host's $/GB (GB = 10⁹ bytes).
//!
//! Each component is `price × milliseconds` divided once, so the only rounding is Decimal's
//! own at 28 significant digits (a second at 0.4567 $/h is 0.000126861111…, non-terminating),
//! far below the nano-dollar the database keeps.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::Usd;

const MS_PER_HOUR: i64 = 3_600_000;
/// Vast's storage prices are per GB per month of 720 hours (30 days).
const HOURS_PER_MONTH: i64 = 720;
const BYTES_PER_GB: i64 = 1_000_000_000;

/// What an instance is doing, as far as billing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingState {
    /// Created (scheduling / waiting for the host) but not yet loading: storage is billed from
    /// creation.
    Created,
    /// Pulling the image / starting: nothing is billed.
    Loading,
    /// Running: compute and storage.
    Running,
    /// Frozen by the host or the platform: still compute and storage.
    Frozen,
    /// Stopped or exited (also an outbid interruptible instance): storage only.
    Stopped,
    /// The host is offline: nothing is billed.
    Offline,
}

impl BillingState {
    pub fn bills_compute(self) -> bool {
        matches!(self, BillingState::Running | BillingState::Frozen)
    }

    pub fn bills_storage(self) -> bool {
        !matches!(self, BillingState::Loading | BillingState::Offline)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BillingState::Created => "created",
            BillingState::Loading => "loading",
            BillingState::Running => "running",
            BillingState::Frozen => "frozen",
            BillingState::Stopped => "stopped",
            BillingState::Offline => "offline",
        }
    }
}

/// The prices of one instance, in dollars. Fixed for a contract (an interruptible bid can be
/// changed; feed intervals with the bid that applied to them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// On-demand compute price per hour, **without** storage (Vast's `dph_base`, not
    /// `dph_total`, which already includes the storage price).
    pub compute_per_hour: Usd,
    /// For an interruptible instance: the bid per hour, which replaces `compute_per_hour`.
    pub bid_per_hour: Option<Usd>,
    /// Allocated disk in GB.
    pub disk_gb: Decimal,
    /// Storage price per GB per month (Vast's `storage_cost`).
    pub storage_per_gb_month: Usd,
    /// Upload price per GB (Vast's `inet_up_cost`).
    pub upload_per_gb: Usd,
    /// Download price per GB (Vast's `inet_down_cost`).
    pub download_per_gb: Usd,
}

impl Rates {
    /// The compute price that applies: the bid for interruptible instances.
    pub fn effective_compute_per_hour(&self) -> Usd {
        self.bid_per_hour.unwrap_or(self.compute_per_hour)
    }

    /// Storage per hour: `disk_gb × storage_per_gb_month ÷ 720` (exact, not rounded).
    pub fn storage_per_hour(&self) -> Usd {
        Usd(self.disk_gb * self.storage_per_gb_month.0 / Decimal::from(HOURS_PER_MONTH))
    }
}

/// A stretch of time `[start_ms, end_ms)` (epoch milliseconds) in one billing state, with the
/// bytes transferred during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInterval {
    pub start_ms: i64,
    pub end_ms: i64,
    pub state: BillingState,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl StateInterval {
    pub fn new(start_ms: i64, end_ms: i64, state: BillingState) -> Self {
        StateInterval {
            start_ms,
            end_ms,
            state,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    pub fn with_bytes(mut self, up: u64, down: u64) -> Self {
        self.bytes_up = up;
        self.bytes_down = down;
        self
    }

    pub fn duration_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// Cost split by component. All amounts exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostBreakdown {
    pub compute: Usd,
    pub storage: Usd,
    pub bandwidth: Usd,
}

impl CostBreakdown {
    pub const ZERO: CostBreakdown = CostBreakdown {
        compute: Usd::ZERO,
        storage: Usd::ZERO,
        bandwidth: Usd::ZERO,
    };

    pub fn total(&self) -> Usd {
        self.compute + self.storage + self.bandwidth
    }

    pub fn get(&self, c: Component) -> Usd {
        match c {
            Component::Compute => self.compute,
            Component::Storage => self.storage,
            Component::Bandwidth => self.bandwidth,
        }
    }

    pub fn get_mut(&mut self, c: Component) -> &mut Usd {
        match c {
            Component::Compute => &mut self.compute,
            Component::Storage => &mut self.storage,
            Component::Bandwidth => &mut self.bandwidth,
        }
    }
}

impl std::ops::Add for CostBreakdown {
    type Output = CostBreakdown;
    fn add(self, r: CostBreakdown) -> CostBreakdown {
        CostBreakdown {
            compute: self.compute + r.compute,
            storage: self.storage + r.storage,
            bandwidth: self.bandwidth + r.bandwidth,
        }
    }
}

impl std::ops::AddAssign for CostBreakdown {
    fn add_assign(&mut self, r: CostBreakdown) {
        *self = *self + r;
    }
}

impl std::iter::Sum for CostBreakdown {
    fn sum<I: Iterator<Item = CostBreakdown>>(iter: I) -> Self {
        iter.fold(CostBreakdown::ZERO, |a, b| a + b)
    }
}

/// The three things Vast charges for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Compute,
    Storage,
    Bandwidth,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::Compute, Component::Storage, Component::Bandwidth];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Compute => "compute",
            Component::Storage => "storage",
            Component::Bandwidth => "bandwidth",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A bad accrual input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccrualError {
    #[error("state interval ends before it starts: start_ms={start_ms}, end_ms={end_ms}")]
    NegativeInterval { start_ms: i64, end_ms: i64 },
}

/// The cost of one interval.
pub fn accrue_interval(rates: &Rates, iv: &StateInterval) -> Result<CostBreakdown, AccrualError> {
    if iv.end_ms < iv.start_ms {
        return Err(AccrualError::NegativeInterval {
            start_ms: iv.start_ms,
            end_ms: iv.end_ms,
        });
    }
    let ms = Decimal::from(iv.duration_ms());
    let hour = Decimal::from(MS_PER_HOUR);
    let compute = if iv.state.bills_compute() {
        Usd(rates.effective_compute_per_hour().0 * ms / hour)
    } else {
        Usd::ZERO
    };
    let storage = if iv.state.bills_storage() {
        Usd(rates.disk_gb * rates.storage_per_gb_month.0 * ms
            / Decimal::from(HOURS_PER_MONTH * MS_PER_HOUR))
    } else {
        Usd::ZERO
    };
    let gb = Decimal::from(BYTES_PER_GB);
    let bandwidth = Usd((rates.upload_per_gb.0 * Decimal::from(iv.bytes_up)
        + rates.download_per_gb.0 * Decimal::from(iv.bytes_down))
        / gb);
    Ok(CostBreakdown {
        compute,
        storage,
        bandwidth,
    })
}

/// The cost of a sequence of intervals (they need not be contiguous; gaps cost nothing).
pub fn accrue(rates: &Rates, intervals: &[StateInterval]) -> Result<CostBreakdown, AccrualError> {
    let mut total = CostBreakdown::ZERO;
    for iv in intervals {
        total += accrue_interval(rates, iv)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn rates() -> Rates {
        Rates {
            compute_per_hour: Usd(dec!(0.4567)),
            bid_per_hour: None,
            disk_gb: dec!(10),
            storage_per_gb_month: Usd(dec!(0.149333)),
            upload_per_gb: Usd(dec!(0.02)),
            download_per_gb: Usd(dec!(0.01)),
        }
    }

    #[test]
    fn states_bill_what_vast_bills() {
        use BillingState::*;
        let compute: Vec<_> = [Created, Loading, Running, Frozen, Stopped, Offline]
            .into_iter()
            .filter(|s| s.bills_compute())
            .collect();
        assert_eq!(compute, vec![Running, Frozen]);
        let storage: Vec<_> = [Created, Loading, Running, Frozen, Stopped, Offline]
            .into_iter()
            .filter(|s| s.bills_storage())
            .collect();
        assert_eq!(storage, vec![Created, Running, Frozen, Stopped]);
    }

    #[test]
    fn negative_interval_is_rejected() {
        let err = accrue_interval(&rates(), &StateInterval::new(10, 5, BillingState::Running))
            .unwrap_err();
        assert!(err.to_string().contains("start_ms=10"), "{err}");
    }

    #[test]
    fn bid_replaces_on_demand_price() {
        let mut r = rates();
        r.bid_per_hour = Some(Usd(dec!(0.2)));
        let c =
            accrue_interval(&r, &StateInterval::new(0, 3_600_000, BillingState::Running)).unwrap();
        assert_eq!(c.compute, Usd(dec!(0.2)));
    }
}
