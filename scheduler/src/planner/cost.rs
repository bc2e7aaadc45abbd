//! The cost model, in integers.
//!
//! Speeds are parts-per-million of the reference GPU (1_000_000 = as fast as the GPU that
//! `est_runtime_s` was measured on), preemption rates are millionths of a preemption per hour.
//! Every division rounds up where the result is a cost or a duration we must not under-estimate,
//! and intermediate products are `i128`, so nothing overflows or drifts between runs.

use super::types::{Measured, Nano, NanoPerHour, PlanConfig};

/// One million: the fixed-point scale of speeds and rates.
pub const PPM: i64 = 1_000_000;
const SPEED_MIN: i64 = 1_000; // 0.1 % of the reference: guards against 0 and absurd dlperf
const SPEED_MAX: i64 = 1_000 * PPM; // 1000× the reference

fn ceil_div(a: i128, b: i128) -> i128 {
    debug_assert!(b > 0);
    if a >= 0 { (a + b - 1) / b } else { a / b }
}

/// `ceil(a × b / den)` for `den > 0`: in `i64` when the product fits (the common case, and much
/// faster than `i128` division), else in `i128`, saturating.
fn mul_div_ceil_fast(a: i64, b: i64, den: i64) -> i64 {
    match a.checked_mul(b) {
        Some(p) if p >= 0 => p / den + i64::from(p % den != 0),
        _ => clamp_i64(ceil_div(a as i128 * b as i128, den as i128)),
    }
}

/// `floor(a × b / den)` for `a, b >= 0`, `den > 0`, with the same fast path.
pub fn mul_div_floor(a: i64, b: i64, den: i64) -> i64 {
    match a.checked_mul(b) {
        Some(p) => p / den.max(1),
        None => (a as i128 * b as i128 / den.max(1) as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64,
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Cost of `secs` seconds at `price` nano$/h, rounded up to a whole nano-dollar.
pub fn charge(price: NanoPerHour, secs: i64) -> Nano {
    mul_div_ceil_fast(price, secs.max(0), 3600)
}

/// `a × num / den`, rounded up, saturating.
pub fn mul_div_ceil(a: i64, num: i64, den: i64) -> i64 {
    mul_div_ceil_fast(a, num, den.max(1))
}

/// Per-GPU speed implied by Vast's `dlperf` (which is for the whole offer).
pub fn prior_speed_ppm(dlperf: f64, num_gpus: u32, ref_dlperf_per_gpu: f64) -> i64 {
    if !(dlperf.is_finite()
        && dlperf > 0.0
        && ref_dlperf_per_gpu.is_finite()
        && ref_dlperf_per_gpu > 0.0)
    {
        return PPM; // unknown: assume the reference
    }
    let per_gpu = dlperf / f64::from(num_gpus.max(1));
    ((per_gpu / ref_dlperf_per_gpu) * PPM as f64)
        .round()
        .clamp(SPEED_MIN as f64, SPEED_MAX as f64) as i64
}

/// Measured throughput blended with the prior: `prior_s` seconds of "evidence" at the prior speed
/// plus what was measured. With no measurement this is the prior.
pub fn blended_speed_ppm(prior_ppm: i64, measured: Option<&Measured>, prior_s: u64) -> i64 {
    let Some(m) = measured.filter(|m| m.wall_s > 0) else {
        return prior_ppm;
    };
    let num = prior_ppm as i128 * prior_s as i128 + PPM as i128 * m.ref_work_s as i128;
    let den = prior_s as i128 + m.wall_s as i128;
    clamp_i64(num / den).clamp(SPEED_MIN, SPEED_MAX)
}

/// Wall seconds to do `work_ref_s` reference seconds at `speed_ppm`.
pub fn wall_s(work_ref_s: u64, speed_ppm: i64) -> i64 {
    let work = i64::try_from(work_ref_s).unwrap_or(i64::MAX);
    mul_div_ceil_fast(work, PPM, speed_ppm.max(1))
}

/// A per-hour float rate as millionths per hour (negative or NaN: `default`).
pub fn rate_ppm(per_h: f64, default: f64) -> i64 {
    let r = if per_h.is_finite() && per_h >= 0.0 {
        per_h
    } else {
        default
    };
    let r = if r.is_finite() && r >= 0.0 { r } else { 0.0 };
    (r * PPM as f64).round().min(1e15) as i64
}

/// Seconds a preemptible run adds on top of its clean wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    /// Expected preemptions × (expected work lost since the last checkpoint + restart overhead).
    pub expected_extra_s: i64,
    /// (Expected preemptions × `worst_preempt_pct`/100 + 1) × (a full checkpoint interval lost
    /// + restart overhead): what the budget reserves.
    pub worst_extra_s: i64,
}

/// Lost-work risk of running `wall` seconds interruptibly. `checkpoint_s` is `None` for a job that
/// cannot resume (a preemption loses everything done so far).
pub fn exposure(
    wall: i64,
    rate_ppm_h: i64,
    checkpoint_s: Option<i64>,
    restart_s: i64,
    worst_pct: u32,
) -> Exposure {
    let wall = wall.max(0);
    let restart_s = restart_s.max(0);
    let window = checkpoint_s.map_or(wall, |c| c.clamp(0, wall));
    // Work since the last checkpoint is uniform over the window: half of it on average.
    let lost_avg = (window / 2).saturating_add(restart_s);
    let lost_worst = window.saturating_add(restart_s);
    // Expected preemptions, in millionths.
    let n_ppm = mul_div_ceil_fast(rate_ppm_h.max(0), wall, 3600);
    let worst_ppm = mul_div_ceil_fast(n_ppm, i64::from(worst_pct), 100).saturating_add(PPM);
    Exposure {
        expected_extra_s: mul_div_ceil_fast(n_ppm, lost_avg, PPM),
        worst_extra_s: mul_div_ceil_fast(worst_ppm, lost_worst, PPM),
    }
}

/// The bid for an offer: `min_bid` plus the margin, capped by the configured ceilings. `None` when
/// the cap is below `min_bid` (the bid could not win) or the offer has no `min_bid`.
pub fn bid_for(
    min_bid: Option<NanoPerHour>,
    dph_base: NanoPerHour,
    num_gpus: u32,
    cfg: &PlanConfig,
) -> Option<NanoPerHour> {
    bid_at(min_bid, dph_base, num_gpus, cfg.bid_margin_pct, cfg)
}

/// The bid for an offer `margin_pct` percent over `min_bid`, capped and rounded as [`bid_for`].
pub fn bid_at(
    min_bid: Option<NanoPerHour>,
    dph_base: NanoPerHour,
    num_gpus: u32,
    margin_pct: u32,
    cfg: &PlanConfig,
) -> Option<NanoPerHour> {
    let min_bid = min_bid.filter(|b| *b > 0)?;
    let target = mul_div_ceil(min_bid, 100 + i64::from(margin_pct), 100);
    let cap = (dph_base as i128 * i128::from(cfg.bid_cap_pct_of_on_demand) / 100) as i64;
    let abs_cap = cfg
        .bid_cap_per_gpu
        .map_or(i64::MAX, |c| c.saturating_mul(i64::from(num_gpus.max(1))));
    let cap = cap.min(abs_cap);
    let bid = target.min(cap);
    // Vast takes bids in whole ticks ($0.001): round up to one, or down when up would pass the cap.
    let tick = cfg.bid_tick.max(1);
    let up = mul_div_ceil_fast(bid, 1, tick).saturating_mul(tick);
    let bid = if up <= cap { up } else { bid / tick * tick };
    (bid >= min_bid).then_some(bid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_rounds_up_and_is_exact() {
        // $0.36/h for 10 s = $0.001.
        assert_eq!(charge(360_000_000, 10), 1_000_000);
        assert_eq!(charge(1, 1), 1);
        assert_eq!(charge(1_000, -5), 0);
        assert_eq!(charge(i64::MAX, i64::MAX), i64::MAX);
        assert_eq!(
            charge(-7, 3600),
            -7,
            "negative products take the exact path"
        );
        assert_eq!(mul_div_ceil(i64::MAX / 2, 4, 8), i64::MAX / 4 + 1);
        assert_eq!(wall_s(u64::MAX, PPM), i64::MAX);
    }

    #[test]
    fn speeds_scale_with_dlperf_and_blend_with_measurements() {
        assert_eq!(prior_speed_ppm(60.0, 2, 30.0), PPM);
        assert_eq!(prior_speed_ppm(60.0, 1, 30.0), 2 * PPM);
        assert_eq!(prior_speed_ppm(f64::NAN, 1, 30.0), PPM);
        assert_eq!(blended_speed_ppm(PPM, None, 3600), PPM);
        // An hour of evidence at half speed against an hour of prior at full speed: 0.75.
        let m = Measured {
            ref_work_s: 1800,
            wall_s: 3600,
        };
        assert_eq!(blended_speed_ppm(PPM, Some(&m), 3600), 750_000);
        // Lots of evidence dominates.
        let m = Measured {
            ref_work_s: 1_800_000,
            wall_s: 3_600_000,
        };
        assert_eq!(blended_speed_ppm(PPM, Some(&m), 3600), 500_499);
        assert_eq!(wall_s(3600, 2 * PPM), 1800);
        assert_eq!(wall_s(1, 3 * PPM), 1);
    }

    #[test]
    fn exposure_prices_checkpoint_interval() {
        // 10 h run, 0.1 preemptions/h: 1 expected preemption.
        let ck = exposure(36_000, 100_000, Some(1800), 300, 300);
        assert_eq!(ck.expected_extra_s, 900 + 300);
        assert_eq!(ck.worst_extra_s, 4 * (1800 + 300));
        let none = exposure(36_000, 100_000, None, 300, 300);
        assert_eq!(none.expected_extra_s, 18_000 + 300);
        assert!(none.worst_extra_s > ck.worst_extra_s);
        let zero = exposure(36_000, 0, Some(1800), 300, 300);
        assert_eq!(zero.expected_extra_s, 0);
        assert_eq!(
            zero.worst_extra_s, 2100,
            "the worst case always allows one preemption"
        );
    }

    #[test]
    fn bid_is_margin_over_min_bid_within_caps() {
        let cfg = PlanConfig {
            bid_tick: 1,
            ..PlanConfig::default()
        };
        assert_eq!(bid_for(Some(100), 1_000, 1, &cfg), Some(110));
        // Capped at 90 % of on-demand.
        assert_eq!(bid_for(Some(850), 1_000, 1, &cfg), Some(900));
        // min_bid above the cap: not biddable.
        assert_eq!(bid_for(Some(950), 1_000, 1, &cfg), None);
        assert_eq!(bid_for(None, 1_000, 1, &cfg), None);
        let cfg = PlanConfig {
            bid_cap_per_gpu: Some(105),
            bid_tick: 1,
            ..PlanConfig::default()
        };
        assert_eq!(bid_for(Some(100), 1_000, 1, &cfg), Some(105));
        // The absolute cap is per GPU.
        assert_eq!(bid_for(Some(200), 2_000, 2, &cfg), Some(210));
        // Default tick: $0.001. $0.123 + 10 % = $0.1353 -> $0.136.
        let cfg = PlanConfig::default();
        assert_eq!(
            bid_for(Some(123_000_000), 1_000_000_000, 1, &cfg),
            Some(136_000_000)
        );
        // Rounding up would pass the 90 % cap ($0.0999): round down instead.
        assert_eq!(
            bid_for(Some(95_000_000), 111_000_000, 1, &cfg),
            Some(99_000_000)
        );
    }
}
