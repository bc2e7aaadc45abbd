//! Money is conserved: the sum over experiments equals the sum over instances, exactly.

use std::collections::BTreeMap;

use ledger::{
    AccrualInput, BillingState, Component, CostBreakdown, EntryFilter, GroupBy, JobSpan, Owner,
    Rates, Reason, Recorded, ReportQuery, StateInterval, Usd, accrue_interval, attribute,
};
use proptest::prelude::*;
use rust_decimal::Decimal;

const STATES: [BillingState; 6] = [
    BillingState::Created,
    BillingState::Loading,
    BillingState::Running,
    BillingState::Frozen,
    BillingState::Stopped,
    BillingState::Offline,
];
const REASONS: [Reason; 3] = [Reason::Work, Reason::LostPreemption, Reason::LostFailure];

fn money() -> impl Strategy<Value = Usd> {
    (0i64..5_000_000_000, 0u32..10).prop_map(|(m, s)| Usd(Decimal::new(m, s)))
}

fn rates() -> impl Strategy<Value = Rates> {
    (
        money(),
        proptest::option::of(money()),
        1i64..2000,
        money(),
        money(),
        money(),
    )
        .prop_map(|(c, bid, disk, st, up, down)| Rates {
            compute_per_hour: c,
            bid_per_hour: bid,
            disk_gb: Decimal::from(disk),
            storage_per_gb_month: st,
            upload_per_gb: up,
            download_per_gb: down,
        })
}

/// Jobs on a `gpus`-GPU instance over `[0, len)`, never more GPUs in total than the instance
/// has (so any timing is feasible).
fn jobs(gpus: u32, len: i64) -> impl Strategy<Value = Vec<JobSpan>> {
    proptest::collection::vec((1u32..=4, 0..=len, 0..=len, 0usize..3, 0usize..3), 0..6).prop_map(
        move |raw| {
            let mut used = 0;
            let mut out = Vec::new();
            for (i, (g, a, b, e, r)) in raw.into_iter().enumerate() {
                if used + g > gpus {
                    continue;
                }
                used += g;
                out.push(JobSpan {
                    job: format!("j{i}"),
                    experiment: format!("exp{e}"),
                    user: Some(format!("u{e}")),
                    gpus: g,
                    start_ms: a.min(b),
                    end_ms: a.max(b),
                    reason: REASONS[r],
                });
            }
            out
        },
    )
}

/// Prices small enough that no history overflows nano-dollar storage (±9.2e9 USD).
fn small_money() -> impl Strategy<Value = Usd> {
    (0i64..5_000_000, 2u32..10).prop_map(|(m, s)| Usd(Decimal::new(m, s)))
}

fn small_rates() -> impl Strategy<Value = Rates> {
    (
        small_money(),
        proptest::option::of(small_money()),
        1i64..2000,
        small_money(),
        small_money(),
        small_money(),
    )
        .prop_map(|(c, bid, disk, st, up, down)| Rates {
            compute_per_hour: c,
            bid_per_hour: bid,
            disk_gb: Decimal::from(disk),
            storage_per_gb_month: st,
            upload_per_gb: up,
            download_per_gb: down,
        })
}

fn case() -> impl Strategy<Value = (Rates, u32, i64, usize, u64, u64, Vec<JobSpan>)> {
    (
        rates(),
        1u32..=8,
        0i64..10_000_000,
        0usize..6,
        0u64..10_000_000_000,
        0u64..10_000_000_000,
    )
        .prop_flat_map(|(r, g, len, s, up, down)| {
            (
                Just(r),
                Just(g),
                Just(len),
                Just(s),
                Just(up),
                Just(down),
                jobs(g, len),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Pure attribution of exact Decimal costs: parts sum to the whole, per component.
    #[test]
    fn attribution_conserves_every_component(
        (rates, gpus, len, state, up, down, jobs) in case()
    ) {
        let iv = StateInterval::new(0, len, STATES[state]).with_bytes(up, down);
        let cost = accrue_interval(&rates, &iv).unwrap();
        let owner = Owner { experiment: "owner".into(), user: Some("u-owner".into()) };
        let parts = attribute(&cost, 0, len, gpus, &owner, &jobs).unwrap();
        for c in Component::ALL {
            let sum: Usd = parts.iter().map(|a| a.cost.get(c)).sum();
            prop_assert_eq!(sum, cost.get(c), "component {:?}", c);
        }
        // Grouped by experiment, per component (a cross-component total of 28-digit values can
        // round in Decimal's last digit depending on the order of addition; the store sums
        // integers and has no such limit).
        let mut per_exp: BTreeMap<String, CostBreakdown> = BTreeMap::new();
        for a in &parts {
            for c in Component::ALL {
                prop_assert!(!a.cost.get(c).is_negative());
            }
            *per_exp.entry(a.experiment.clone()).or_default() += a.cost;
        }
        for c in Component::ALL {
            let sum: Usd = per_exp.values().map(|b| b.get(c)).sum();
            prop_assert_eq!(sum, cost.get(c), "component {:?} over experiments", c);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Through the store: random instance histories; per-experiment totals (the report) equal
    /// per-instance totals exactly, and each instance's stored total is within one nano-dollar
    /// per component of its exact cost.
    #[test]
    fn stored_ledger_conserves_money(
        histories in proptest::collection::vec(
            (small_rates(), 1u32..=8, proptest::collection::vec(
                (1i64..5_000_000, 0usize..6, 0u64..5_000_000_000, 0u64..5_000_000_000), 1..12)),
            1..4)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = ledger::Ledger::open("sqlite::memory:").await.unwrap();
            let mut exact_per_instance: BTreeMap<String, CostBreakdown> = BTreeMap::new();
            for (i, (rates, gpus, ivs)) in histories.iter().enumerate() {
                let instance = format!("inst{i}");
                let mut t = 1_000_000;
                for (k, (len, state, up, down)) in ivs.iter().enumerate() {
                    let iv = StateInterval::new(t, t + len, STATES[*state]).with_bytes(*up, *down);
                    let jobs = vec![JobSpan {
                        job: format!("{instance}-j{k}"),
                        experiment: format!("exp{}", k % 3),
                        user: None,
                        gpus: 1,
                        start_ms: t + len / 4,
                        end_ms: t + len,
                        reason: REASONS[k % 3],
                    }];
                    let input = AccrualInput {
                        instance: instance.clone(),
                        owner: Owner { experiment: format!("exp{i}"), user: None },
                        gpus: *gpus,
                        rates: rates.clone(),
                        interval: iv,
                        jobs,
                    };
                    let rec = l.record_interval(&input, t + len).await.unwrap();
                    let Recorded::Recorded { exact, stored, allocations } = rec else {
                        panic!("fresh interval reported as a replay");
                    };
                    let alloc_sum: CostBreakdown = allocations.iter().map(|a| a.cost).sum();
                    assert_eq!(alloc_sum, stored);
                    *exact_per_instance.entry(instance.clone()).or_default() += exact;
                    // A replay changes nothing.
                    let again = l.record_interval(&input, t + len).await.unwrap();
                    assert!(matches!(again, Recorded::AlreadyAccrued { .. }));
                    t += len;
                }
            }
            let per_instance = l.instance_totals(&EntryFilter::default()).await.unwrap();
            let inst_sum: Usd = per_instance.iter().map(|i| i.cost.total()).sum();
            let report = l.report(
                &ReportQuery { by: GroupBy::Experiment, ..Default::default() }, &[], 0,
            ).await.unwrap();
            let exp_sum: Usd = report.experiments.iter().map(|e| e.spent).sum();
            assert_eq!(exp_sum, inst_sum);
            assert_eq!(report.grand_total, inst_sum);
            // Stored = exact floored to the nano-dollar. "Exact" is a Decimal sum: a
            // non-terminating division (5476.29 $/h × 1861523 ms / 3600000) is rounded in its
            // 28th digit, so a total that lands exactly on a nano-dollar boundary may be stored
            // one nano-dollar low (the remainder stays carried). Allow that noise, no more.
            let nano = Usd(Decimal::new(1, 9));
            let atto = Usd(Decimal::new(1, 18));
            for it in &per_instance {
                let exact = exact_per_instance[&it.instance];
                for c in Component::ALL {
                    let d = exact.get(c) - it.cost.get(c);
                    assert!(d > -atto && d < nano + atto,
                        "{} {:?}: exact {} stored {}", it.instance, c,
                        exact.get(c).amount(), it.cost.get(c).amount());
                }
            }
        });
    }
}

/// The per-second example through the store in 100 ticks of 54.37 s: the sub-nano remainders
/// are carried, so the stored total is the exact total floored to the nano-dollar
/// (0.68974386111… → 0.689743861), not 100 separately floored ticks.
async fn carried_remainders(l: &ledger::Ledger) {
    let rates = Rates {
        compute_per_hour: Usd(Decimal::new(4567, 4)),
        bid_per_hour: None,
        disk_gb: Decimal::ZERO,
        storage_per_gb_month: Usd::ZERO,
        upload_per_gb: Usd::ZERO,
        download_per_gb: Usd::ZERO,
    };
    for k in 0..100 {
        let input = AccrualInput {
            instance: "i-carry".into(),
            owner: Owner {
                experiment: "exp".into(),
                user: None,
            },
            gpus: 1,
            rates: rates.clone(),
            interval: StateInterval::new(k * 54_370, (k + 1) * 54_370, BillingState::Running),
            jobs: vec![],
        };
        l.record_interval(&input, (k + 1) * 54_370).await.unwrap();
    }
    let totals = l.instance_totals(&EntryFilter::default()).await.unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].cost.compute, Usd(Decimal::new(689_743_861, 9)));
    let spent = l
        .spent(&ledger::BudgetScope::Experiment("exp".into()))
        .await
        .unwrap();
    assert_eq!(spent.to_string(), "$0.69");
}

#[tokio::test]
async fn carried_remainders_sqlite() {
    let (l, _dir, _) = crate::sqlite_ledger().await;
    carried_remainders(&l).await;
}

#[tokio::test]
async fn carried_remainders_postgres() {
    let Some(pg) = crate::PgDb::create().await else {
        return;
    };
    let l = ledger::Ledger::open(&pg.url).await.unwrap();
    carried_remainders(&l).await;
    l.connection().clone().close().await.unwrap();
    pg.drop_db().await;
}

/// The same interval recorded by four concurrent callers (a retried tick, two schedulers for
/// a moment): it is accrued once.
async fn concurrent_replays_accrue_once(l: &ledger::Ledger) {
    let input = AccrualInput {
        instance: "i-race".into(),
        owner: Owner {
            experiment: "exp".into(),
            user: None,
        },
        gpus: 1,
        rates: Rates {
            compute_per_hour: Usd(Decimal::from(3)),
            bid_per_hour: None,
            disk_gb: Decimal::ZERO,
            storage_per_gb_month: Usd::ZERO,
            upload_per_gb: Usd::ZERO,
            download_per_gb: Usd::ZERO,
        },
        interval: StateInterval::new(0, 3_600_000, BillingState::Running),
        jobs: vec![],
    };
    let mut handles = Vec::new();
    for _ in 0..4 {
        let l = l.clone();
        let input = input.clone();
        handles.push(tokio::spawn(async move {
            l.record_interval(&input, 3_600_000).await.unwrap()
        }));
    }
    let mut recorded = 0;
    for h in handles {
        if matches!(h.await.unwrap(), Recorded::Recorded { .. }) {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 1);
    let totals = l.instance_totals(&EntryFilter::default()).await.unwrap();
    assert_eq!(totals[0].cost.compute, Usd(Decimal::from(3)));
    // An interval that overlaps what is accrued is refused, naming the instance.
    let mut overlapping = input.clone();
    overlapping.interval = StateInterval::new(1_800_000, 5_400_000, BillingState::Running);
    let err = l
        .record_interval(&overlapping, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("i-race") && err.contains("overlaps"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_accrue_once_sqlite() {
    let (l, _dir, _) = crate::sqlite_ledger().await;
    concurrent_replays_accrue_once(&l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_accrue_once_postgres() {
    let Some(pg) = crate::PgDb::create().await else {
        return;
    };
    let l = ledger::Ledger::open(&pg.url).await.unwrap();
    concurrent_replays_accrue_once(&l).await;
    l.connection().clone().close().await.unwrap();
    pg.drop_db().await;
}
