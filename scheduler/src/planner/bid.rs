//! What to do with an interruptible instance that was outbid (Vast pauses it; it is not gone).
//!
//! Both anchor tools treat the pause as death. We have three moves, and price each:
//! * **raise** the bid to the new winning price plus our margin, within the caps — the job then
//!   redoes only the work since the checkpoint on the instance's own disk;
//! * **wait** for the pause to end — it costs storage only, but time passes;
//! * **move** to another offer — it pays a boot and redoes the work since the latest checkpoint we
//!   pulled off the instance (a paused instance cannot be reached to pull a newer one).
//!
//! A stale pulled checkpoint makes moving expensive, so we wait longer before moving; a fresh one
//! makes moving cheap.

use serde::{Deserialize, Serialize};

use super::cost::{self, PPM};
use super::types::{NanoPerHour, PlanConfig};
use crate::clock::EpochMs;

/// Where a paused job could go instead (the best offer the planner found for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alternative {
    /// Hourly price there (bid or on-demand, plus storage), nano$/h.
    pub dph: NanoPerHour,
    /// Seconds until the job runs there.
    pub boot_s: i64,
    /// Its speed relative to the paused instance, parts per million (2_000_000: twice as fast).
    pub relative_speed_ppm: i64,
}

/// The situation of one outbid instance and its job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbid {
    pub now_ms: EpochMs,
    pub paused_since_ms: EpochMs,
    /// Our current bid (whole instance, compute), nano$/h.
    pub our_bid: NanoPerHour,
    /// The price that wins this machine now (Vast's `min_bid` after the outbid), nano$/h.
    pub winning_bid: NanoPerHour,
    /// The offer's on-demand compute price, for the bid cap, nano$/h.
    pub on_demand_dph: NanoPerHour,
    /// GPUs of the instance (the absolute bid cap is per GPU).
    pub num_gpus: u32,
    /// Storage, billed while paused too, nano$/h.
    pub storage_dph: NanoPerHour,
    /// Wall seconds of work left on this instance after the checkpoint on its disk.
    pub remaining_s: i64,
    /// Whether the job checkpoints at all.
    pub checkpoints: bool,
    /// Wall seconds done in this attempt (lost entirely when the job cannot resume).
    pub done_s: i64,
    /// Wall seconds of work since the checkpoint on the instance's disk.
    pub local_checkpoint_age_s: i64,
    /// Wall seconds of work since the latest checkpoint we hold off the instance (`None`: none).
    pub pulled_checkpoint_age_s: Option<i64>,
    pub alternative: Option<Alternative>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BidAction {
    /// `PUT /instances/bid_price/{id}` with this bid (whole instance), nano$/h.
    Raise { bid: NanoPerHour },
    /// Leave it paused and look again after this many seconds.
    Wait { recheck_after_s: u32 },
    /// Destroy it and requeue the job from its latest pulled checkpoint.
    Move,
}

/// The decision and a sentence saying why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidDecision {
    pub action: BidAction,
    pub why: String,
}

/// Decides between raising the bid, waiting and moving (see the module docs). Pure.
pub fn bid_decision(s: &Outbid, cfg: &PlanConfig) -> BidDecision {
    use super::types::fmt_dollars as d;
    let restart = i64::from(cfg.restart_overhead_s);
    let remaining = s.remaining_s.max(0);
    let redo_here = if s.checkpoints {
        s.local_checkpoint_age_s
    } else {
        s.done_s
    }
    .max(0);
    let redo_move = if s.checkpoints {
        s.pulled_checkpoint_age_s.unwrap_or(s.done_s)
    } else {
        s.done_s
    }
    .max(0);
    let paused_s = ((s.now_ms - s.paused_since_ms) / 1000).max(0);

    let stay_cost = |bid: NanoPerHour| {
        cost::charge(
            bid.saturating_add(s.storage_dph),
            remaining.saturating_add(redo_here).saturating_add(restart),
        )
    };
    let move_cost = s.alternative.map(|a| {
        let wall = cost::mul_div_ceil(
            remaining.saturating_add(redo_move),
            PPM,
            a.relative_speed_ppm.max(1),
        );
        cost::charge(
            a.dph,
            a.boot_s.max(0).saturating_add(wall).saturating_add(restart),
        )
    });

    // A bid only helps if the pause is about price: on-demand renters win regardless of bids.
    let price_problem = s.winning_bid > s.our_bid;
    let target = if price_problem {
        cost::bid_for(Some(s.winning_bid), s.on_demand_dph, s.num_gpus, cfg)
    } else {
        None
    };
    if let Some(bid) = target {
        let stay = stay_cost(bid);
        return match move_cost {
            Some(mv) if mv < stay => BidDecision {
                action: BidAction::Move,
                why: format!(
                    "moving costs {} against {} for raising the bid to {}/h",
                    d(mv),
                    d(stay),
                    d(bid)
                ),
            },
            _ => BidDecision {
                action: BidAction::Raise { bid },
                why: format!(
                    "raising the bid to {}/h ({}% over the winning {}/h) costs {} to finish{}",
                    d(bid),
                    cfg.bid_margin_pct,
                    d(s.winning_bid),
                    d(stay),
                    move_cost
                        .map(|m| format!(", moving would cost {}", d(m)))
                        .unwrap_or_default()
                ),
            },
        };
    }

    let why_stuck = if price_problem {
        format!("the winning bid {}/h is above our cap", d(s.winning_bid))
    } else {
        "the pause is not about our bid (an on-demand renter or the host)".to_string()
    };
    let Some(mv) = move_cost else {
        return BidDecision {
            action: BidAction::Wait {
                recheck_after_s: cfg.outbid_recheck_s,
            },
            why: format!("{why_stuck} and there is nowhere to move; waiting"),
        };
    };
    // Wait longer when moving would throw away more work than resuming here.
    let extra_loss = (redo_move - redo_here).max(0);
    let base = i64::from(cfg.outbid_max_wait_s);
    let limit = base.saturating_add(extra_loss).min(base.saturating_mul(4));
    if paused_s >= limit || redo_move <= redo_here {
        BidDecision {
            action: BidAction::Move,
            why: format!(
                "{why_stuck}; paused {paused_s} s (limit {limit} s), moving redoes {redo_move} s of work and costs {}",
                d(mv)
            ),
        }
    } else {
        let left = u32::try_from(limit - paused_s).unwrap_or(u32::MAX);
        BidDecision {
            action: BidAction::Wait {
                recheck_after_s: cfg.outbid_recheck_s.min(left).max(1),
            },
            why: format!(
                "{why_stuck}; paused {paused_s} s of {limit} s allowed, because moving would redo {redo_move} s of \
                 work against {redo_here} s here"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOLLAR: i64 = super::super::types::NANO_PER_DOLLAR;

    fn base() -> Outbid {
        Outbid {
            now_ms: 1_000_000,
            paused_since_ms: 1_000_000 - 60_000,
            our_bid: DOLLAR / 10,
            winning_bid: DOLLAR * 12 / 100,
            on_demand_dph: DOLLAR / 4,
            num_gpus: 1,
            storage_dph: DOLLAR / 1000,
            remaining_s: 3 * 3600,
            checkpoints: true,
            done_s: 3600,
            local_checkpoint_age_s: 300,
            pulled_checkpoint_age_s: Some(1200),
            alternative: Some(Alternative {
                dph: DOLLAR / 4,
                boot_s: 300,
                relative_speed_ppm: PPM,
            }),
        }
    }

    #[test]
    fn raises_within_the_cap_when_cheaper_than_moving() {
        let d = bid_decision(&base(), &PlanConfig::default());
        assert_eq!(
            d.action,
            BidAction::Raise {
                bid: DOLLAR * 132 / 1000
            },
            "{}",
            d.why
        );
        assert!(d.why.contains("raising"), "{}", d.why);
    }

    #[test]
    fn moves_when_an_alternative_is_much_cheaper() {
        let mut s = base();
        s.alternative = Some(Alternative {
            dph: DOLLAR / 20,
            boot_s: 120,
            relative_speed_ppm: 2 * PPM,
        });
        assert_eq!(
            bid_decision(&s, &PlanConfig::default()).action,
            BidAction::Move
        );
    }

    #[test]
    fn waits_when_over_the_cap_and_the_pulled_checkpoint_is_stale() {
        let mut s = base();
        s.winning_bid = DOLLAR * 24 / 100; // above 90 % of on-demand
        let d = bid_decision(&s, &PlanConfig::default());
        assert!(matches!(d.action, BidAction::Wait { .. }), "{d:?}");
        // After the (lengthened) limit it moves.
        s.paused_since_ms = s.now_ms - 3_600_000;
        assert_eq!(
            bid_decision(&s, &PlanConfig::default()).action,
            BidAction::Move
        );
        // A freshly pulled checkpoint makes moving free of extra loss: move at once.
        let mut s = base();
        s.winning_bid = DOLLAR * 24 / 100;
        s.pulled_checkpoint_age_s = Some(300);
        assert_eq!(
            bid_decision(&s, &PlanConfig::default()).action,
            BidAction::Move
        );
    }

    #[test]
    fn never_raises_when_the_pause_is_not_about_price_and_waits_without_alternative() {
        let mut s = base();
        s.winning_bid = s.our_bid;
        s.alternative = None;
        let d = bid_decision(&s, &PlanConfig::default());
        assert_eq!(
            d.action,
            BidAction::Wait {
                recheck_after_s: 60
            }
        );
        assert!(d.why.contains("not about our bid"), "{}", d.why);
    }

    #[test]
    fn a_job_without_checkpoints_counts_all_its_work() {
        let mut s = base();
        s.checkpoints = false;
        s.done_s = 10 * 3600;
        s.winning_bid = DOLLAR * 24 / 100;
        // Both staying and moving redo everything; nothing to gain by waiting on work: move.
        assert_eq!(
            bid_decision(&s, &PlanConfig::default()).action,
            BidAction::Move
        );
    }
}
