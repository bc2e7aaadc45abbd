//! Accrual against worked examples.

use ledger::{BillingState, CostBreakdown, Rates, StateInterval, Usd, accrue, accrue_interval};
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;

fn rates() -> Rates {
    Rates {
        compute_per_hour: Usd(dec!(0.4567)),
        bid_per_hour: None,
        disk_gb: dec!(10),
        storage_per_gb_month: Usd(dec!(0.149333)),
        upload_per_gb: Usd(dec!(0.05)),
        download_per_gb: Usd(dec!(0.02)),
    }
}

#[test]
fn documented_storage_example() {
    // Vast docs: 0.149333 $/GB/month × 10 GB = 0.0020741 $/h.
    let per_hour = rates().storage_per_hour();
    assert_eq!(
        per_hour
            .amount()
            .round_dp_with_strategy(7, RoundingStrategy::MidpointAwayFromZero),
        dec!(0.0020741)
    );
    // Exactly 1.49333 / 720.
    assert_eq!(per_hour.amount(), dec!(1.49333) / dec!(720));
    // A stopped hour pays exactly that, and no compute.
    let c = accrue_interval(
        &rates(),
        &StateInterval::new(0, 3_600_000, BillingState::Stopped),
    )
    .unwrap();
    assert_eq!(c.compute, Usd::ZERO);
    assert_eq!(c.storage, per_hour);
}

#[test]
fn per_second_compute_example() {
    // 0.4567 $/h × 5437 s = 0.68974386111…, shown as $0.69.
    let c = accrue_interval(
        &rates(),
        &StateInterval::new(1_000, 1_000 + 5_437_000, BillingState::Running),
    )
    .unwrap();
    assert_eq!(c.compute.amount(), dec!(0.4567) * dec!(5437) / dec!(3600));
    assert!(
        c.compute
            .amount()
            .to_string()
            .starts_with("0.689743861111111"),
        "{}",
        c.compute.amount()
    );
    assert_eq!(c.compute.round_cents(), dec!(0.69));
    assert_eq!(c.compute.to_string(), "$0.69");
}

#[test]
fn a_lifecycle_bills_each_state_as_vast_does() {
    // created 60 s → loading 120 s → running 1 h → frozen 60 s → stopped 1 h → offline 1 h,
    // with 2 GB up and 5 GB down during the run.
    let h = 3_600_000;
    let ivs = [
        StateInterval::new(0, 60_000, BillingState::Created),
        StateInterval::new(60_000, 180_000, BillingState::Loading),
        StateInterval::new(180_000, 180_000 + h, BillingState::Running)
            .with_bytes(2_000_000_000, 5_000_000_000),
        StateInterval::new(180_000 + h, 240_000 + h, BillingState::Frozen),
        StateInterval::new(240_000 + h, 240_000 + 2 * h, BillingState::Stopped),
        StateInterval::new(240_000 + 2 * h, 240_000 + 3 * h, BillingState::Offline),
    ];
    let c = accrue(&rates(), &ivs).unwrap();
    // compute: running 1 h + frozen 60 s.
    assert_eq!(c.compute.amount(), dec!(0.4567) * dec!(3660) / dec!(3600));
    // storage: created 60 s + running 3600 s + frozen 60 s + stopped 3600 s = 7320 s.
    let storage_per_s = dec!(1.49333) / dec!(720) / dec!(3600);
    let diff = c.storage.amount() - storage_per_s * dec!(7320);
    assert!(diff.abs() < dec!(0.000000000000000000001), "{diff}");
    // bandwidth: 2 GB × 0.05 + 5 GB × 0.02.
    assert_eq!(c.bandwidth, Usd(dec!(0.2)));
    assert_eq!(c.total(), c.compute + c.storage + c.bandwidth);
}

#[test]
fn interruptible_pays_its_bid_while_running_and_storage_when_outbid() {
    let mut r = rates();
    r.bid_per_hour = Some(Usd(dec!(0.25)));
    let c = accrue(
        &r,
        &[
            StateInterval::new(0, 1_800_000, BillingState::Running),
            // Outbid: Vast stops it; storage continues.
            StateInterval::new(1_800_000, 3_600_000, BillingState::Stopped),
        ],
    )
    .unwrap();
    assert_eq!(c.compute, Usd(dec!(0.125)));
    assert_eq!(c.storage.amount(), dec!(1.49333) / dec!(720));
}

#[test]
fn sums_are_exact_over_many_ticks() {
    // 3600 one-second ticks equal one one-hour interval to Decimal's 28 digits: a second at
    // 0.4567 $/h is 0.000126861111… (non-terminating), so each tick can differ in the 28th
    // digit, far below the nano-dollar the database keeps.
    let r = rates();
    let mut total = CostBreakdown::ZERO;
    for i in 0..3600 {
        total += accrue_interval(
            &r,
            &StateInterval::new(i * 1000, (i + 1) * 1000, BillingState::Running),
        )
        .unwrap();
    }
    let d = (total.compute.amount() - dec!(0.4567)).abs();
    assert!(d < dec!(0.0000000000000000001), "{d}");
    assert_eq!(
        total.compute.to_nano().unwrap(),
        Usd(dec!(0.4567)).to_nano().unwrap()
    );
    let one =
        accrue_interval(&r, &StateInterval::new(0, 3_600_000, BillingState::Running)).unwrap();
    let d: Decimal = (total.storage - one.storage).amount().abs();
    assert!(d < dec!(0.0000000000000000001), "{d}");
}
