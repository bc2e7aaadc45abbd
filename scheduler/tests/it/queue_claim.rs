//! The claim API on both backends: exclusivity under concurrency, leases under an injected
//! clock, fencing, retries with backoff, interruption.

use std::collections::HashSet;
use std::sync::Arc;

use scheduler::clock::{Clock, ManualClock};
use scheduler::queue::{self, AddRequest, Completion, QueueError, sweep::parse_sweep_arg};
use scheduler::store::testing::TestDb;
use scheduler::store::{JobState, attempts};

use crate::both_backends;

async fn add_n(db: &TestDb, experiment: &str, n: usize, clock: &dyn Clock) -> Vec<i64> {
    let mut req = AddRequest::new(experiment, vec!["run".into(), "{i}".into()]);
    req.sweep
        .push_grid(parse_sweep_arg(&format!("i=0..{n}")).unwrap())
        .unwrap();
    queue::add_jobs(&db.store, &req, "alice", clock)
        .await
        .unwrap()
        .added
}

/// 8 claimers over 2,000 jobs: every job claimed exactly once.
async fn eight_claimers_claim_each_job_once(db: &TestDb) {
    let clock = Arc::new(ManualClock::new(1_000));
    let ids = add_n(db, "conc", 2_000, clock.as_ref()).await;
    assert_eq!(ids.len(), 2_000);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = db.store.clone();
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                // Mix batch sizes so claimers interleave differently.
                let n = 1 + (w % 4) as u32 * 3;
                let got = queue::claim(&store, n, &format!("w{w}"), 600_000, clock.as_ref())
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|c| (c.job.id, c.fence)));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        per_worker.push(mine.len());
        all.extend(mine);
    }
    assert_eq!(all.len(), 2_000, "claims per worker: {per_worker:?}");
    let distinct: HashSet<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct, ids.iter().copied().collect::<HashSet<_>>());
    assert!(all.iter().all(|(_, fence)| *fence == 1));
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() >= 2,
        "the claims really were concurrent: {per_worker:?}"
    );
}

/// A lease that expires under the injected clock is reclaimed with a new fence; the old
/// holder's heartbeat, completion and failure all change nothing.
async fn expired_lease_is_reclaimed_and_stale_fence_is_refused(db: &TestDb) {
    let clock = ManualClock::new(10_000);
    add_n(db, "lease", 1, &clock).await;
    let first = queue::claim(&db.store, 1, "old", 30_000, &clock)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.fence, 1);
    queue::advance(
        &db.store,
        first.job.id,
        first.fence,
        JobState::Running,
        None,
        "started",
        &clock,
    )
    .await
    .unwrap();
    let attempt = attempts::start_attempt(
        db.store.db(),
        attempts::NewAttempt {
            job_id: first.job.id,
            fence: first.fence,
            ..Default::default()
        },
        "old",
        clock.now_ms(),
    )
    .await
    .unwrap();

    // Within the lease: nobody else gets it; a heartbeat extends it.
    clock.advance(20_000);
    assert!(
        queue::claim(&db.store, 1, "new", 30_000, &clock)
            .await
            .unwrap()
            .is_empty()
    );
    queue::heartbeat(&db.store, first.job.id, first.fence, 30_000, &clock)
        .await
        .unwrap();
    clock.advance(20_000);
    assert!(
        queue::claim(&db.store, 1, "new", 30_000, &clock)
            .await
            .unwrap()
            .is_empty()
    );

    // Silence past the lease: reclaimed.
    clock.advance(40_000);
    let second = queue::claim(&db.store, 1, "new", 30_000, &clock)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.job.id, first.job.id);
    assert_eq!(second.fence, 2);
    assert_eq!(second.job.attempts, 2);
    assert_eq!(second.job.lease_owner.as_deref(), Some("new"));
    let lost = attempts::get_attempt(db.store.db(), attempt.id)
        .await
        .unwrap();
    assert_eq!(
        (lost.state.as_str(), lost.ended_at),
        ("lost", Some(clock.now_ms()))
    );

    // The old holder is fenced out of everything.
    let stale = [
        queue::heartbeat(&db.store, first.job.id, first.fence, 30_000, &clock)
            .await
            .err(),
        queue::complete(
            &db.store,
            first.job.id,
            first.fence,
            Completion::default(),
            &clock,
        )
        .await
        .err(),
        queue::fail(&db.store, first.job.id, first.fence, "late", true, &clock)
            .await
            .err(),
        queue::interrupt(&db.store, first.job.id, first.fence, "late", &clock)
            .await
            .err(),
    ];
    for e in stale {
        assert!(
            matches!(e, Some(QueueError::LeaseLost { fence: 1, .. })),
            "{e:?}"
        );
    }
    let now = queue::show(&db.store, &queue::JobRef::Id(first.job.id))
        .await
        .unwrap();
    assert_eq!(now.job.state, "placed");
    assert_eq!(now.job.fence, 2);
    assert!(now.events.iter().any(|e| {
        e.reason
            .contains("reclaimed after the lease of old expired")
    }));

    // The new holder completes.
    let done = queue::complete(
        &db.store,
        second.job.id,
        second.fence,
        Completion {
            exit_code: Some(0),
            note: None,
        },
        &clock,
    )
    .await
    .unwrap();
    assert_eq!(done.state, "succeeded");
    assert!(
        queue::heartbeat(&db.store, second.job.id, second.fence, 1, &clock)
            .await
            .is_err()
    );
}

/// Expired leases with no attempts left fail instead of running forever.
async fn exhausted_leases_fail(db: &TestDb) {
    let clock = ManualClock::new(0);
    let mut req = AddRequest::new("reap", vec!["true".into()]);
    req.max_attempts = 1;
    let id = queue::add_jobs(&db.store, &req, "alice", &clock)
        .await
        .unwrap()
        .added[0];
    queue::claim(&db.store, 1, "s", 1_000, &clock)
        .await
        .unwrap();
    clock.advance(5_000);
    assert!(
        queue::claim(&db.store, 1, "s2", 1_000, &clock)
            .await
            .unwrap()
            .is_empty()
    );
    let j = queue::show(&db.store, &queue::JobRef::Id(id))
        .await
        .unwrap()
        .job;
    assert_eq!(j.state, "failed");
    assert!(j.last_error.unwrap().contains("lease expired"));
}

/// Retryable failures come back after a backoff; the last one fails the job.
async fn retries_back_off_then_fail(db: &TestDb) {
    let clock = ManualClock::new(0);
    let mut req = AddRequest::new("retry", vec!["true".into()]);
    req.max_attempts = 2;
    let id = queue::add_jobs(&db.store, &req, "alice", &clock)
        .await
        .unwrap()
        .added[0];
    let c = queue::claim(&db.store, 1, "s", 60_000, &clock)
        .await
        .unwrap()
        .remove(0);
    let j = queue::fail(&db.store, id, c.fence, "CUDA error", true, &clock)
        .await
        .unwrap();
    assert_eq!(j.state, "queued");
    let delay = j.run_at;
    assert!((5_000..=10_000).contains(&delay), "{delay}");
    assert!(
        queue::claim(&db.store, 1, "s", 60_000, &clock)
            .await
            .unwrap()
            .is_empty(),
        "backing off"
    );
    clock.set(delay);
    let c2 = queue::claim(&db.store, 1, "s", 60_000, &clock)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c2.fence, 2);
    let j = queue::fail(&db.store, id, c2.fence, "CUDA error", true, &clock)
        .await
        .unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.last_error.as_deref(), Some("CUDA error"));

    // Not retryable: fails at once.
    let id2 = queue::add_jobs(
        &db.store,
        &AddRequest::new("retry", vec!["false".into()]),
        "alice",
        &clock,
    )
    .await
    .unwrap()
    .added[0];
    let c = queue::claim(&db.store, 1, "s", 60_000, &clock)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.job.id, id2);
    assert_eq!(
        queue::fail(&db.store, id2, c.fence, "exit 1", false, &clock)
            .await
            .unwrap()
            .state,
        "failed"
    );
}

/// Preemption: interrupted → queued without using up an attempt; priority orders claims.
async fn interrupt_requeues_and_priority_orders(db: &TestDb) {
    let clock = ManualClock::new(0);
    let low = add_n(db, "order", 3, &clock).await;
    let mut urgent = AddRequest::new("order", vec!["urgent".into()]);
    urgent.priority = 10;
    let hi = queue::add_jobs(&db.store, &urgent, "alice", &clock)
        .await
        .unwrap()
        .added[0];
    let got = queue::claim(&db.store, 2, "s", 60_000, &clock)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [hi, low[0]]
    );

    let c = &got[0];
    queue::advance(
        &db.store,
        c.job.id,
        c.fence,
        JobState::Running,
        None,
        "up",
        &clock,
    )
    .await
    .unwrap();
    let j = queue::interrupt(&db.store, c.job.id, c.fence, "outbid", &clock)
        .await
        .unwrap();
    assert_eq!((j.state.as_str(), j.attempts), ("queued", 0));
    let states: Vec<String> = queue::show(&db.store, &queue::JobRef::Id(hi))
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.to_state)
        .collect();
    assert_eq!(
        states,
        ["queued", "placed", "running", "interrupted", "queued"]
    );
    let again = queue::claim(&db.store, 1, "s", 60_000, &clock)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((again.job.id, again.fence), (hi, 2));

    // Cancelling a claimed job fences its holder out.
    let c = &got[1];
    queue::cancel(
        &db.store,
        "alice",
        &queue::CancelTarget::Jobs(vec![queue::JobRef::Id(c.job.id)]),
        &clock,
    )
    .await
    .unwrap();
    assert!(matches!(
        queue::heartbeat(&db.store, c.job.id, c.fence, 1_000, &clock).await,
        Err(QueueError::LeaseLost { .. })
    ));
}

both_backends!(
    eight_claimers_claim_each_job_once,
    expired_lease_is_reclaimed_and_stale_fence_is_refused,
    exhausted_leases_fail,
    retries_back_off_then_fail,
    interrupt_requeues_and_priority_orders,
);
