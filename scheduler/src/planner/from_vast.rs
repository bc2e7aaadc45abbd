//! Building a [`PlanOffer`] from an offer as Vast (or `vast::sim`) returns it, so every caller
//! converts units the same way: dollars to nano-dollars, storage from $/GB/month to $/GB/hour
//! (÷ 720, as Vast's own `storage_total_cost` does).

use super::types::{PlanOffer, nano_from_dollars};

/// An offer that cannot be planned with, and which field is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offer {offer_id} cannot be planned: {problem}")]
pub struct OfferConversionError {
    pub offer_id: u64,
    pub problem: String,
}

impl PlanOffer {
    /// Converts a search result. `boot_estimate_s` and `preempt_per_h` are ours, not Vast's (from
    /// our history of that machine or model; pass 0 and `f64::NAN` for the configured defaults).
    /// A missing `host_id` becomes `-machine_id`, so one unknown host never bans another.
    pub fn from_vast(
        o: &vast::types::OfferFields,
        boot_estimate_s: u32,
        preempt_per_h: f64,
    ) -> Result<PlanOffer, OfferConversionError> {
        let err = |problem: String| OfferConversionError {
            offer_id: o.id,
            problem,
        };
        let id = i64::try_from(o.id).map_err(|_| err(format!("id {} is out of range", o.id)))?;
        let machine_id = o
            .machine_id
            .and_then(|m| i64::try_from(m).ok())
            .ok_or_else(|| err(format!("machine_id is {:?}", o.machine_id)))?;
        let host_id = o
            .host_id
            .and_then(|h| i64::try_from(h).ok())
            .unwrap_or(-machine_id);
        let num_gpus = o
            .num_gpus
            .filter(|n| *n > 0)
            .ok_or_else(|| err(format!("num_gpus is {:?}", o.num_gpus)))?;
        let storage_gb_month = o
            .storage_cost
            .filter(|c| c.is_finite() && *c >= 0.0)
            .unwrap_or(0.0);
        // dph_base is the compute price; older answers only carry dph_total (with storage).
        let dph_base = match (o.dph_base, o.dph_total, o.storage_total_cost) {
            (Some(b), _, _) => b,
            (None, Some(t), s) => t - s.unwrap_or(0.0),
            (None, None, _) => return Err(err("it has neither dph_base nor dph_total".into())),
        };
        if !(dph_base.is_finite() && dph_base >= 0.0) {
            return Err(err(format!("dph_base is {dph_base}")));
        }
        Ok(PlanOffer {
            id,
            machine_id,
            host_id,
            gpu_name: o.gpu_name.clone().unwrap_or_default(),
            num_gpus,
            dph_base: nano_from_dollars(dph_base),
            storage_gb_h: nano_from_dollars(storage_gb_month / 720.0),
            disk_space_gb: o
                .disk_space
                .filter(|d| d.is_finite() && *d > 0.0)
                .map_or(0, |d| d.floor().min(f64::from(u32::MAX)) as u32),
            min_bid: o
                .min_bid
                .filter(|b| b.is_finite() && *b > 0.0)
                .map(nano_from_dollars),
            dlperf: o.dlperf.unwrap_or(f64::NAN),
            reliability: o.reliability.unwrap_or(0.0),
            boot_estimate_s,
            preempt_per_h,
            rented: o.rented.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: serde_json::Value) -> vast::types::OfferFields {
        serde_json::from_value(v).expect("offer fields")
    }

    #[test]
    fn converts_units_like_vast_does() {
        let o = fields(serde_json::json!({
            "id": 4242, "machine_id": 77, "host_id": 9, "num_gpus": 2, "gpu_name": "RTX 4090",
            "dph_base": 0.5, "dph_total": 0.5020741, "storage_cost": 0.149333, "min_bid": 0.21,
            "disk_space": 120.7, "dlperf": 80.5, "reliability": 0.993
        }));
        let p = PlanOffer::from_vast(&o, 0, f64::NAN).unwrap();
        assert_eq!(
            (p.id, p.machine_id, p.host_id, p.num_gpus),
            (4242, 77, 9, 2)
        );
        assert_eq!(p.dph_base, 500_000_000);
        // 0.149333 $/GB/month / 720 = 0.000207407 $/GB/h.
        assert_eq!(p.storage_gb_h, 207_407);
        assert_eq!(p.min_bid, Some(210_000_000));
        assert_eq!(p.disk_space_gb, 120);
        assert_eq!(p.gpu_name, "RTX 4090");
    }

    #[test]
    fn falls_back_to_dph_total_and_names_what_is_missing() {
        let o = fields(serde_json::json!({
            "id": 1, "machine_id": 5, "num_gpus": 1, "dph_total": 0.3, "storage_total_cost": 0.1
        }));
        let p = PlanOffer::from_vast(&o, 90, 0.1).unwrap();
        assert_eq!(p.dph_base, 200_000_000);
        assert_eq!(p.host_id, -5);
        assert_eq!(p.min_bid, None);
        let o = fields(serde_json::json!({"id": 3, "machine_id": 5, "dph_base": 0.3}));
        assert_eq!(
            PlanOffer::from_vast(&o, 0, 0.0).unwrap_err().to_string(),
            "offer 3 cannot be planned: num_gpus is None"
        );
        let o = fields(serde_json::json!({"id": 4, "num_gpus": 1, "dph_base": 0.3}));
        assert!(
            PlanOffer::from_vast(&o, 0, 0.0)
                .unwrap_err()
                .to_string()
                .contains("machine_id")
        );
    }
}
