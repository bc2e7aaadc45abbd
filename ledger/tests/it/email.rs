//! Email through a real SMTP server (aiosmtpd) on loopback.

use chrono::DateTime;
use ledger::email::{Email, SmtpConfig, send};
use ledger::{
    AccrualInput, BillingState, BudgetScope, BudgetSpec, ExperimentProgress, JobSpan, Mailer,
    Owner, Rates, Reason, StateInterval, Usd,
};
use rust_decimal_macros::dec;

use crate::{SmtpServer, sqlite_ledger, subject_of};

fn t(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

#[tokio::test]
async fn sends_multipart_alternative() {
    let Some(server) = SmtpServer::start() else {
        return;
    };
    let cfg = SmtpConfig::from_url(&server.url()).unwrap();
    send(
        &cfg,
        &Email {
            from: "vasticlaude@localhost".into(),
            to: vec!["ops@example.com".into()],
            subject: "vasticlaude test: $0.69".into(),
            text: "plain body 0.68974386".into(),
            html: "<p>html body</p>".into(),
        },
    )
    .await
    .unwrap();
    let msgs = server.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(subject_of(m), "vasticlaude test: $0.69");
    assert!(m.contains("multipart/alternative"), "{m}");
    assert!(m.contains("text/plain"), "{m}");
    assert!(m.contains("text/html"), "{m}");
    assert!(m.contains("plain body 0.68974386"), "{m}");
    assert!(m.contains("<p>html body</p>"), "{m}");
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = SmtpConfig::from_url(&format!("smtp://user:hunter2@127.0.0.1:{port}")).unwrap();
    let err = send(
        &cfg,
        &Email {
            from: "vasticlaude@localhost".into(),
            to: vec!["ops@example.com".into()],
            subject: "x".into(),
            text: "x".into(),
            html: "x".into(),
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// `tick` sends the due report and each budget alert once; a second tick sends nothing.
#[tokio::test]
async fn tick_sends_reports_and_alerts_once() {
    let Some(server) = SmtpServer::start() else {
        return;
    };
    let (l, _dir, _) = sqlite_ledger().await;
    let start = t("2026-11-28T11:00:00Z");
    l.add_schedule("0 0 12 * * *", "ops@example.com", None, start)
        .await
        .unwrap();
    let mut spec = BudgetSpec::new(BudgetScope::Experiment("exp-mail".into()), Usd(dec!(1)));
    spec.warn_percents = vec![50, 100];
    spec.notify_email = Some("owner@example.com".into());
    l.set_budget(&spec, start).await.unwrap();
    // 0.4567 $/h for 5437 s: $0.69 of a $1 budget (crosses 50 %, not 100 %).
    let input = AccrualInput {
        instance: "inst-1".into(),
        owner: Owner {
            experiment: "exp-mail".into(),
            user: None,
        },
        gpus: 1,
        rates: Rates {
            compute_per_hour: Usd(dec!(0.4567)),
            bid_per_hour: None,
            disk_gb: dec!(0),
            storage_per_gb_month: Usd::ZERO,
            upload_per_gb: Usd::ZERO,
            download_per_gb: Usd::ZERO,
        },
        interval: StateInterval::new(start, start + 5_437_000, BillingState::Running),
        jobs: vec![JobSpan {
            job: "job-7".into(),
            experiment: "exp-mail".into(),
            user: None,
            gpus: 1,
            start_ms: start,
            end_ms: start + 5_437_000,
            reason: Reason::Work,
        }],
    };
    l.record_interval(&input, start + 5_437_000).await.unwrap();
    let mailer = Mailer {
        smtp: SmtpConfig::from_url(&server.url()).unwrap(),
        from: "vasticlaude@localhost".into(),
    };
    let progress = vec![ExperimentProgress {
        experiment: "exp-mail".into(),
        jobs_total: 4,
        jobs_done: 1,
        jobs_failed: 0,
        jobs_running: 1,
    }];
    let now = t("2026-11-28T12:00:00Z");
    let out = l.tick(&mailer, &progress, now).await.unwrap();
    assert_eq!(out.reports.len(), 1);
    assert_eq!(out.alerts.len(), 1);
    assert!(out.reports[0].error.is_none(), "{:?}", out.reports[0].error);
    assert!(out.alerts[0].error.is_none(), "{:?}", out.alerts[0].error);
    let again = l.tick(&mailer, &progress, now + 1000).await.unwrap();
    assert!(again.reports.is_empty() && again.alerts.is_empty());

    let msgs = server.messages();
    assert_eq!(msgs.len(), 2);
    let report = msgs
        .iter()
        .find(|m| subject_of(m).starts_with("vasticlaude report"))
        .expect("a report email");
    assert_eq!(
        subject_of(report),
        "vasticlaude report: $0.69 spent across 1 experiment"
    );
    assert!(report.contains("To: ops@example.com"), "{report}");
    assert!(report.contains("exp-mail"), "{report}");
    assert!(report.contains("1/4"), "{report}"); // jobs done of total
    assert!(report.contains("<table"), "{report}");
    let alert = msgs
        .iter()
        .find(|m| subject_of(m).starts_with("vasticlaude budget alert"))
        .expect("an alert email");
    assert!(
        subject_of(alert).contains("experiment exp-mail reached 50%"),
        "{alert}"
    );
    assert!(alert.contains("To: owner@example.com"), "{alert}");
}
