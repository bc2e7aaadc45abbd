//! Report schedules fire exactly once, across a simulated restart, on both backends.

use chrono::DateTime;
use ledger::{Ledger, LedgerError};

use crate::{PgDb, sqlite_ledger};

fn t(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

/// `open` reopens the same database, like a restarted process.
async fn fires_once_across_restart<F, Fut>(first: Ledger, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Ledger>,
{
    let s = first
        .add_schedule(
            "*/5 * * * *",
            "ops@example.com",
            Some("exp-a"),
            t("2026-11-28T12:01:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(s.cron, "0 */5 * * * *");
    assert_eq!(s.next_fire_ms, t("2026-11-28T12:05:00Z"));
    assert!(
        first
            .claim_due_reports(t("2026-11-28T12:04:59Z"))
            .await
            .unwrap()
            .is_empty()
    );
    let c = first
        .claim_due_reports(t("2026-11-28T12:05:00Z"))
        .await
        .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].due_ms, t("2026-11-28T12:05:00Z"));
    assert_eq!(c[0].schedule.next_fire_ms, t("2026-11-28T12:10:00Z"));
    // The same instant again, and a little later: nothing.
    assert!(
        first
            .claim_due_reports(t("2026-11-28T12:05:00Z"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        first
            .claim_due_reports(t("2026-11-28T12:07:00Z"))
            .await
            .unwrap()
            .is_empty()
    );
    first
        .finish_firing(c[0].firing_id, Ok(()), t("2026-11-28T12:05:01Z"))
        .await
        .unwrap();
    drop(first);

    // "Restart": a new process on the same database.
    let second = open().await;
    assert!(
        second
            .claim_due_reports(t("2026-11-28T12:08:00Z"))
            .await
            .unwrap()
            .is_empty()
    );
    let c2 = second
        .claim_due_reports(t("2026-11-28T12:10:00Z"))
        .await
        .unwrap();
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].due_ms, t("2026-11-28T12:10:00Z"));
    // Down for a while: the missed firings coalesce into one, and the next is after now.
    let c3 = second
        .claim_due_reports(t("2026-11-28T12:31:00Z"))
        .await
        .unwrap();
    assert_eq!(c3.len(), 1);
    assert_eq!(c3[0].due_ms, t("2026-11-28T12:15:00Z"));
    assert_eq!(c3[0].schedule.next_fire_ms, t("2026-11-28T12:35:00Z"));
    let firings = second.firings(Some(s.id)).await.unwrap();
    assert_eq!(firings.len(), 3);
    assert_eq!(firings[0].sent_ms, Some(t("2026-11-28T12:05:01Z")));
    assert_eq!(firings[1].sent_ms, None);

    // Listing and removal.
    assert_eq!(second.schedules().await.unwrap().len(), 1);
    second.remove_schedule(s.id).await.unwrap();
    assert!(matches!(
        second.remove_schedule(s.id).await,
        Err(LedgerError::NotFound { .. })
    ));
    // Bad input names the value.
    let err = second
        .add_schedule("every day", "ops@example.com", None, 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("every day"), "{err}");
    let err = second
        .add_schedule("0 9 * * *", "not an address", None, 0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not an address"), "{err}");
}

#[tokio::test]
async fn schedule_fires_once_across_restart_sqlite() {
    let (l, _dir, url) = sqlite_ledger().await;
    fires_once_across_restart(l, || async { Ledger::open(&url).await.unwrap() }).await;
}

#[tokio::test]
async fn schedule_fires_once_across_restart_postgres() {
    let Some(pg) = PgDb::create().await else {
        return;
    };
    let url = pg.url.clone();
    let l = Ledger::open(&url).await.unwrap();
    fires_once_across_restart(l, || async { Ledger::open(&url).await.unwrap() }).await;
    pg.drop_db().await;
}

/// Two claimers at the same instant (two processes): exactly one gets the firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_fire_once() {
    let (l, _dir, url) = sqlite_ledger().await;
    l.add_schedule(
        "0 * * * *",
        "ops@example.com",
        None,
        t("2026-11-28T11:59:00Z"),
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let other = Ledger::open(&url).await.unwrap();
            other
                .claim_due_reports(t("2026-11-28T12:00:00Z"))
                .await
                .unwrap()
                .len()
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    assert_eq!(total, 1);
}
