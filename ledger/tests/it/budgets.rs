//! Budgets, reservations, hard stops and alerts on SQLite and PostgreSQL.

use ledger::{
    AccrualInput, BillingState, BudgetScope, BudgetSpec, JobSpan, Ledger, LedgerError, Owner,
    Rates, Reason, ReservationState, ReserveRequest, StateInterval, Usd,
};
use rust_decimal_macros::dec;

use crate::{PgDb, sqlite_ledger};

const H: i64 = 3_600_000;

/// $1/h compute, nothing else, on a 1-GPU instance.
fn dollar_an_hour() -> Rates {
    Rates {
        compute_per_hour: Usd(dec!(1)),
        bid_per_hour: None,
        disk_gb: dec!(0),
        storage_per_gb_month: Usd::ZERO,
        upload_per_gb: Usd::ZERO,
        download_per_gb: Usd::ZERO,
    }
}

async fn run_hours(
    l: &Ledger,
    instance: &str,
    exp: &str,
    user: &str,
    job: &str,
    from_h: i64,
    hours: i64,
) {
    let input = AccrualInput {
        instance: instance.into(),
        owner: Owner {
            experiment: exp.into(),
            user: Some(user.into()),
        },
        gpus: 1,
        rates: dollar_an_hour(),
        interval: StateInterval::new(from_h * H, (from_h + hours) * H, BillingState::Running),
        jobs: vec![JobSpan {
            job: job.into(),
            experiment: exp.into(),
            user: Some(user.into()),
            gpus: 1,
            start_ms: from_h * H,
            end_ms: (from_h + hours) * H,
            reason: Reason::Work,
        }],
    };
    l.record_interval(&input, (from_h + hours) * H)
        .await
        .unwrap();
}

/// The shared scenario, run on each backend.
async fn budget_scenario(l: &Ledger) {
    let e = BudgetScope::Experiment("exp-a".into());
    // Set, list, replace.
    let b = l
        .set_budget(&BudgetSpec::new(e.clone(), Usd(dec!(10))), 1)
        .await
        .unwrap();
    assert_eq!(b.amount, Usd(dec!(10)));
    assert_eq!(b.warn_percents, vec![50, 80, 100]);
    assert!(b.hard);
    let mut spec = BudgetSpec::new(e.clone(), Usd(dec!(5)));
    spec.warn_percents = vec![80, 50];
    l.set_budget(&spec, 2).await.unwrap();
    let user_spec = BudgetSpec {
        hard: false,
        ..BudgetSpec::new(BudgetScope::User("ann".into()), Usd(dec!(100)))
    };
    l.set_budget(&user_spec, 3).await.unwrap();
    let all = l.budgets().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].scope, BudgetScope::User("ann".into()));
    assert_eq!(all[1].amount, Usd(dec!(5)));
    assert_eq!(all[1].warn_percents, vec![50, 80]);

    // Reserve: 5 − 0 spent; 3 fits, then 3 more does not.
    let req = |w: &str, job: Option<&str>| ReserveRequest {
        experiment: "exp-a".into(),
        user: Some("ann".into()),
        job: job.map(str::to_string),
        worst_case: w.parse().unwrap(),
    };
    let r1 = l.reserve(&req("3", Some("j1")), 10).await.unwrap();
    assert_eq!(r1.state, ReservationState::Open);
    let denied = l.reserve(&req("3", None), 11).await.unwrap_err();
    let LedgerError::BudgetDenied(d) = &denied else {
        panic!("expected BudgetDenied, got {denied}");
    };
    assert_eq!(d.reserved, Usd(dec!(3)));
    assert_eq!(d.requested, Usd(dec!(3)));
    assert!(denied.to_string().contains("experiment exp-a"), "{denied}");
    // A soft budget never denies: other experiments of ann are fine beyond $100? No: ann's is
    // soft, so even $1000 passes for another experiment.
    let big = ReserveRequest {
        experiment: "exp-b".into(),
        user: Some("ann".into()),
        job: None,
        worst_case: Usd(dec!(1000)),
    };
    let rb = l.reserve(&big, 12).await.unwrap();
    l.release(rb.id, 13).await.unwrap();
    assert!(
        l.release(rb.id, 14)
            .await
            .unwrap_err()
            .to_string()
            .contains("already released")
    );

    // j1 runs 2 h ($2): its reservation shrinks to $1, so $2 more fits (2 + 1 + 2 = 5).
    run_hours(l, "i1", "exp-a", "ann", "j1", 1, 2).await;
    let st = l.budget_status().await.unwrap();
    let ea = st.iter().find(|s| s.budget.scope == e).unwrap();
    assert_eq!(ea.spent, Usd(dec!(2)));
    assert_eq!(ea.reserved, Usd(dec!(1)));
    assert_eq!(ea.left, Usd(dec!(2)));
    assert_eq!(ea.crossed, Vec::<u32>::new());
    let r2 = l.reserve(&req("2", None), 4 * H).await.unwrap();
    assert!(l.reserve(&req("0.01", None), 4 * H).await.is_err());
    let settled = l.settle(r1.id, 4 * H).await.unwrap();
    assert_eq!(settled.state, ReservationState::Settled);
    assert_eq!(settled.consumed, Some(Usd(dec!(2))));
    l.release(r2.id, 4 * H).await.unwrap();
    assert!(l.open_reservations().await.unwrap().is_empty());

    // Alerts: $3 spent of $5 crosses 50 % once; $5 crosses 80 % and reaches the budget.
    run_hours(l, "i1", "exp-a", "ann", "j2", 3, 1).await;
    let a1 = l
        .claim_alerts(&["ops@example.com".into()], 5 * H)
        .await
        .unwrap();
    assert_eq!(a1.len(), 1);
    assert_eq!(a1[0].threshold_percent, 50);
    assert_eq!(a1[0].recipients, vec!["ops@example.com".to_string()]);
    assert!(l.claim_alerts(&[], 5 * H).await.unwrap().is_empty());
    assert!(l.over_hard_budgets().await.unwrap().is_empty());
    run_hours(l, "i1", "exp-a", "ann", "j2", 4, 2).await;
    let a2 = l.claim_alerts(&[], 6 * H).await.unwrap();
    assert_eq!(
        a2.iter().map(|a| a.threshold_percent).collect::<Vec<_>>(),
        vec![80]
    );
    let stops = l.over_hard_budgets().await.unwrap();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].experiment, "exp-a");
    assert_eq!(stops[0].spent, Usd(dec!(5)));
    assert!(l.claim_alerts(&[], 7 * H).await.unwrap().is_empty());
    assert_eq!(l.alert_count().await.unwrap(), 2);

    // A hard workspace budget stops every experiment that has spent.
    run_hours(l, "i2", "exp-c", "bob", "k1", 0, 1).await;
    l.set_budget(
        &BudgetSpec::new(BudgetScope::Workspace, Usd(dec!(6))),
        8 * H,
    )
    .await
    .unwrap();
    let stops = l.over_hard_budgets().await.unwrap();
    assert_eq!(
        stops
            .iter()
            .map(|s| s.experiment.as_str())
            .collect::<Vec<_>>(),
        vec!["exp-a", "exp-c"]
    );
    // Raising the experiment's budget re-arms its thresholds; removing works once.
    l.set_budget(&BudgetSpec::new(e.clone(), Usd(dec!(8))), 9 * H)
        .await
        .unwrap();
    let a3 = l.claim_alerts(&[], 9 * H).await.unwrap();
    assert!(a3.iter().any(|a| a.scope == e && a.threshold_percent == 50));
    l.remove_budget(&BudgetScope::Workspace).await.unwrap();
    assert!(matches!(
        l.remove_budget(&BudgetScope::Workspace).await,
        Err(LedgerError::NotFound { .. })
    ));

    // Bad input is refused with the value named.
    let err = l
        .set_budget(&BudgetSpec::new(e.clone(), Usd(dec!(-1))), 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("-1"), "{err}");
    let err = l
        .reserve(
            &ReserveRequest {
                worst_case: Usd(dec!(-2)),
                ..req("1", None)
            },
            0,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("-2"), "{err}");
}

/// Two reservations racing for the last room: exactly one wins.
async fn concurrent_reservations(l: &Ledger) {
    l.set_budget(
        &BudgetSpec::new(BudgetScope::Experiment("race".into()), Usd(dec!(10))),
        0,
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let l = l.clone();
        handles.push(tokio::spawn(async move {
            l.reserve(
                &ReserveRequest {
                    experiment: "race".into(),
                    user: None,
                    job: Some(format!("j{i}")),
                    worst_case: Usd(dec!(4)),
                },
                1,
            )
            .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LedgerError::BudgetDenied(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(ok, 2, "two $4 reservations fit in $10, not {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_on_sqlite() {
    let (l, _dir, _) = sqlite_ledger().await;
    budget_scenario(&l).await;
    let (l, _dir2, _) = sqlite_ledger().await;
    concurrent_reservations(&l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_on_postgres() {
    let Some(pg) = PgDb::create().await else {
        return;
    };
    let l = Ledger::open(&pg.url).await.unwrap();
    budget_scenario(&l).await;
    concurrent_reservations(&l).await;
    l.connection().clone().close().await.unwrap();
    pg.drop_db().await;
}
