//! Reports against a worked scenario, and reconciliation with Vast-style charges.

use chrono::DateTime;
use ledger::{
    AccrualInput, BillingState, BudgetScope, BudgetSpec, EntryFilter, ExperimentProgress, GroupBy,
    InstanceCharges, JobSpan, Ledger, Owner, Rates, Reason, ReportQuery, StateInterval, Usd,
    reconcile,
};
use rust_decimal_macros::dec;

use crate::{PgDb, sqlite_ledger};

const MIN: i64 = 60_000;

fn t0() -> i64 {
    DateTime::parse_from_rfc3339("2026-11-28T00:00:00Z")
        .unwrap()
        .timestamp_millis()
}

fn span(job: &str, exp: &str, from: i64, to: i64, reason: Reason) -> JobSpan {
    JobSpan {
        job: job.into(),
        experiment: exp.into(),
        user: None,
        gpus: 1,
        start_ms: t0() + from * MIN,
        end_ms: t0() + to * MIN,
        reason,
    }
}

/// A 2-GPU instance of exp-a at $2/h compute, 100 GB × $0.72/GB/month ($0.10/h storage),
/// $0.10/GB upload:
/// - 0–10 min loading (free);
/// - 10–70 running: a1 (exp-a) the whole hour, b1 (exp-b) for 30 min, 1 GB uploaded;
/// - 70–100 running: a2 (exp-a) preempted, its work lost; the other GPU idle;
/// - 100–160 stopped (storage only).
async fn scenario(l: &Ledger) {
    let rates = Rates {
        compute_per_hour: Usd(dec!(2)),
        bid_per_hour: None,
        disk_gb: dec!(100),
        storage_per_gb_month: Usd(dec!(0.72)),
        upload_per_gb: Usd(dec!(0.1)),
        download_per_gb: Usd::ZERO,
    };
    let steps: Vec<(i64, i64, BillingState, u64, Vec<JobSpan>)> = vec![
        (0, 10, BillingState::Loading, 0, vec![]),
        (
            10,
            70,
            BillingState::Running,
            1_000_000_000,
            vec![
                span("a1", "exp-a", 10, 70, Reason::Work),
                span("b1", "exp-b", 10, 40, Reason::Work),
            ],
        ),
        (
            70,
            100,
            BillingState::Running,
            0,
            vec![span("a2", "exp-a", 70, 100, Reason::LostPreemption)],
        ),
        (100, 160, BillingState::Stopped, 0, vec![]),
    ];
    for (from, to, state, up, jobs) in steps {
        let input = AccrualInput {
            instance: "inst-1".into(),
            owner: Owner {
                experiment: "exp-a".into(),
                user: None,
            },
            gpus: 2,
            rates: rates.clone(),
            interval: StateInterval::new(t0() + from * MIN, t0() + to * MIN, state)
                .with_bytes(up, 0),
            jobs,
        };
        l.record_interval(&input, t0() + to * MIN).await.unwrap();
    }
    l.set_budget(
        &BudgetSpec::new(BudgetScope::Experiment("exp-a".into()), Usd(dec!(10))),
        t0(),
    )
    .await
    .unwrap();
}

fn progress() -> Vec<ExperimentProgress> {
    vec![
        ExperimentProgress {
            experiment: "exp-a".into(),
            jobs_total: 4,
            jobs_done: 1,
            jobs_failed: 0,
            jobs_running: 1,
        },
        ExperimentProgress {
            experiment: "exp-b".into(),
            jobs_total: 1,
            jobs_done: 1,
            jobs_failed: 0,
            jobs_running: 0,
        },
    ]
}

#[tokio::test]
async fn report_matches_the_worked_scenario_sqlite() {
    let (l, _dir, _) = sqlite_ledger().await;
    report_matches_the_worked_scenario(&l).await;
}

#[tokio::test]
async fn report_matches_the_worked_scenario_postgres() {
    let Some(pg) = PgDb::create().await else {
        return;
    };
    let l = Ledger::open(&pg.url).await.unwrap();
    report_matches_the_worked_scenario(&l).await;
    l.connection().clone().close().await.unwrap();
    pg.drop_db().await;
}

async fn report_matches_the_worked_scenario(l: &Ledger) {
    scenario(l).await;
    let now = t0() + 100 * MIN;
    let r = l
        .report(&ReportQuery::default(), &progress(), now)
        .await
        .unwrap();
    assert_eq!(r.grand_total, Usd(dec!(3.35)));
    assert_eq!(r.experiments.len(), 2);
    let a = &r.experiments[0];
    assert_eq!(a.experiment, "exp-a");
    assert_eq!(a.spent, Usd(dec!(2.8)));
    assert_eq!(a.split.compute, Usd(dec!(2.5)));
    assert_eq!(a.split.storage, Usd(dec!(0.225)));
    assert_eq!(a.split.bandwidth, Usd(dec!(0.075)));
    assert_eq!(a.lost_preemption, Usd(dec!(0.525)));
    assert_eq!(a.lost_failure, Usd::ZERO);
    assert_eq!(a.overhead, Usd(dec!(1.175)));
    assert_eq!(a.budget, Some(Usd(dec!(10))));
    assert_eq!(a.left, Some(Usd(dec!(7.2))));
    // Last hour (40–100 min): half of the 10–70 entries plus all of 70–100.
    assert_eq!(a.burn_rate_per_hour, Usd(dec!(1.875)));
    assert_eq!(a.cost_per_completed_job, Some(Usd(dec!(2.8))));
    assert_eq!(a.forecast_total, Some(Usd(dec!(11.2))));
    assert_eq!(a.forecast_hours, Some(dec!(4.48)));
    let b = &r.experiments[1];
    assert_eq!(b.spent, Usd(dec!(0.55)));
    assert_eq!(b.forecast_total, Some(Usd(dec!(0.55))));
    assert_eq!(b.forecast_hours, Some(dec!(0)));

    let text = r.to_text();
    for want in [
        "exp-a",
        "1/4",
        "$2.80",
        "$10.00 hard",
        "$7.20",
        "$1.88/h",
        "4.48 h",
        "$0.53",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let csv = r.to_csv();
    assert!(
        csv.lines().any(|l| l
            == "exp-a,4,1,0,1,2.8,2.8,10,7.2,1.875,2.8,11.2,4.48,0.525,0,1.175,2.5,0.225,0.075"),
        "{csv}"
    );
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["experiments"][0]["spent"], "2.8");
    assert_eq!(json["grand_total"], "3.35");
    assert!(r.to_html().contains("<td>exp-b</td>"));
}

#[tokio::test]
async fn groupings_and_windows() {
    let (l, _dir, _) = sqlite_ledger().await;
    scenario(&l).await;
    let now = t0() + 200 * MIN;
    let by = |by| ReportQuery {
        by,
        ..Default::default()
    };
    let r = l.report(&by(GroupBy::Job), &[], now).await.unwrap();
    let keys: Vec<_> = r.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(
        keys,
        vec!["exp-a/(overhead)", "exp-a/a1", "exp-a/a2", "exp-b/b1"]
    );
    assert_eq!(r.groups[1].total, Usd(dec!(1.1)));
    let r = l.report(&by(GroupBy::Instance), &[], now).await.unwrap();
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].key, "inst-1");
    assert_eq!(r.groups[0].total, Usd(dec!(3.35)));
    let r = l.report(&by(GroupBy::Day), &[], now).await.unwrap();
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].key, "2026-11-28");
    assert!(
        r.to_csv()
            .starts_with("day,compute,storage,bandwidth,total\n2026-11-28,3,0.25,0.1,3.35")
    );

    // Window (70 min, ∞) and one experiment.
    let q = ReportQuery {
        experiment: Some("exp-a".into()),
        since_ms: Some(t0() + 70 * MIN),
        until_ms: None,
        by: GroupBy::Experiment,
    };
    let r = l.report(&q, &progress(), now).await.unwrap();
    assert_eq!(r.experiments.len(), 1);
    assert_eq!(r.experiments[0].spent, Usd(dec!(1.15)));
    assert_eq!(r.experiments[0].spent_all_time, Usd(dec!(2.8)));
    assert_eq!(
        r.email_subject(),
        "vasticlaude report for exp-a: $1.15 spent"
    );

    let bad = ReportQuery {
        since_ms: Some(5),
        until_ms: Some(5),
        ..Default::default()
    };
    let err = l.report(&bad, &[], now).await.unwrap_err().to_string();
    assert!(err.contains("since"), "{err}");
}

#[tokio::test]
async fn reconciles_with_vast_charges() {
    let (l, _dir, _) = sqlite_ledger().await;
    scenario(&l).await;
    let totals = l.instance_totals(&EntryFilter::default()).await.unwrap();
    // Vast's feed, rounded to 3 decimals per item.
    let vast = vec![InstanceCharges {
        instance: "inst-1".into(),
        gpu: Usd(dec!(3.000)),
        disk: Usd(dec!(0.250)),
        bwu: Usd(dec!(0.100)),
        bwd: Usd(dec!(0.000)),
    }];
    let rec = reconcile(&totals, &vast);
    assert_eq!(rec.drift_total, Usd::ZERO);
    assert!(rec.all_within_rounding);
    // A disagreement is shown, not hidden.
    let off = vec![InstanceCharges {
        gpu: Usd(dec!(3.010)),
        ..vast[0].clone()
    }];
    let rec = reconcile(&totals, &off);
    assert_eq!(rec.drift_total, Usd(dec!(-0.01)));
    assert_eq!(rec.instances[0].drift.compute, Usd(dec!(-0.01)));
    assert!(!rec.all_within_rounding);
}
