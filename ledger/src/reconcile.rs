//! Reconciliation: the ledger's per-instance totals against Vast's charges feed.
//!
//! The caller turns Vast's `/api/v0/charges/` contracts into plain [`InstanceCharges`]
//! (`gpu`, `disk`, `bwu`, `bwd` item amounts per instance, for the same window as the ledger
//! totals); this module compares. Drift is always reported, per instance, per component and in
//! total, never hidden or corrected. Vast rounds each item to 3 decimals, so a drift within
//! half a mill per item present is flagged as rounding.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::accrual::CostBreakdown;
use crate::money::Usd;
use crate::store::InstanceTotal;

/// Vast's charges for one instance, by item type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCharges {
    pub instance: String,
    pub gpu: Usd,
    pub disk: Usd,
    /// Upload bandwidth (`bwu`).
    pub bwu: Usd,
    /// Download bandwidth (`bwd`).
    pub bwd: Usd,
}

impl InstanceCharges {
    /// As compute / storage / bandwidth.
    pub fn as_breakdown(&self) -> CostBreakdown {
        CostBreakdown {
            compute: self.gpu,
            storage: self.disk,
            bandwidth: self.bwu + self.bwd,
        }
    }
}

/// One instance's comparison. `drift = ledger − vast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDrift {
    pub instance: String,
    /// `None`: the ledger has nothing for this instance.
    pub ledger: Option<CostBreakdown>,
    /// `None`: Vast reported nothing for this instance.
    pub vast: Option<CostBreakdown>,
    pub drift: CostBreakdown,
    pub drift_total: Usd,
    /// |drift| of every component within Vast's 3-decimal rounding (0.0005 per item; 0.001 for
    /// bandwidth, which is two items).
    pub within_rounding: bool,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub instances: Vec<InstanceDrift>,
    pub ledger_total: Usd,
    pub vast_total: Usd,
    pub drift_total: Usd,
    pub all_within_rounding: bool,
}

/// Compares per-instance ledger totals with Vast's charges; instances on only one side are
/// listed too (with the whole amount as drift).
pub fn reconcile(ledger: &[InstanceTotal], vast: &[InstanceCharges]) -> Reconciliation {
    use std::collections::BTreeMap;
    let mut map: BTreeMap<&str, (Option<CostBreakdown>, Option<CostBreakdown>)> = BTreeMap::new();
    for l in ledger {
        let e = map.entry(l.instance.as_str()).or_default();
        e.0 = Some(e.0.unwrap_or_default() + l.cost);
    }
    for v in vast {
        let e = map.entry(v.instance.as_str()).or_default();
        e.1 = Some(e.1.unwrap_or_default() + v.as_breakdown());
    }
    let half_mill = Usd(Decimal::new(5, 4));
    let mut out = Vec::new();
    let (mut lt, mut vt) = (Usd::ZERO, Usd::ZERO);
    for (instance, (l, v)) in map {
        let lc = l.unwrap_or_default();
        let vc = v.unwrap_or_default();
        let drift = CostBreakdown {
            compute: lc.compute - vc.compute,
            storage: lc.storage - vc.storage,
            bandwidth: lc.bandwidth - vc.bandwidth,
        };
        let within = drift.compute.0.abs() <= half_mill.0
            && drift.storage.0.abs() <= half_mill.0
            && drift.bandwidth.0.abs() <= half_mill.0 * Decimal::TWO;
        lt += lc.total();
        vt += vc.total();
        out.push(InstanceDrift {
            instance: instance.to_string(),
            ledger: l,
            vast: v,
            drift_total: drift.total(),
            drift,
            within_rounding: within,
        });
    }
    Reconciliation {
        all_within_rounding: out.iter().all(|d| d.within_rounding),
        instances: out,
        ledger_total: lt,
        vast_total: vt,
        drift_total: lt - vt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn drift_is_reported_per_instance_and_in_total() {
        let ledger = vec![
            InstanceTotal {
                instance: "a".into(),
                cost: CostBreakdown {
                    compute: Usd(dec!(37.3441)),
                    storage: Usd(dec!(0.5)),
                    bandwidth: Usd(dec!(0.0204)),
                },
            },
            InstanceTotal {
                instance: "only-ledger".into(),
                cost: CostBreakdown {
                    compute: Usd(dec!(1)),
                    ..CostBreakdown::ZERO
                },
            },
        ];
        let vast = vec![
            InstanceCharges {
                instance: "a".into(),
                gpu: Usd(dec!(37.344)),
                disk: Usd(dec!(0.5)),
                bwu: Usd(dec!(0.010)),
                bwd: Usd(dec!(0.010)),
            },
            InstanceCharges {
                instance: "only-vast".into(),
                gpu: Usd(dec!(2)),
                ..Default::default()
            },
        ];
        let r = reconcile(&ledger, &vast);
        assert_eq!(r.instances.len(), 3);
        let a = &r.instances[0];
        assert_eq!(a.instance, "a");
        assert_eq!(a.drift.compute, Usd(dec!(0.0001)));
        assert_eq!(a.drift.bandwidth, Usd(dec!(0.0004)));
        assert!(a.within_rounding);
        let ol = r
            .instances
            .iter()
            .find(|d| d.instance == "only-ledger")
            .unwrap();
        assert!(ol.vast.is_none());
        assert!(!ol.within_rounding);
        assert_eq!(r.drift_total, Usd(dec!(-0.9995)));
        assert!(!r.all_within_rounding);
    }
}
