//! One active scheduler per database, and failover to a standby, on both backends.

use std::time::Duration;

use scheduler::clock::ManualClock;
use scheduler::store::leader::{LeaderLock, current_leader};
use scheduler::store::testing::TestDb;

use crate::both_backends;

async fn leader_failover(db: &TestDb) {
    let clock = ManualClock::new(1_000);
    // A second Store on the same database, as a second scheduler process would have.
    let other = scheduler::store::connect(&db.url).await.unwrap();

    let mut leader = LeaderLock::try_acquire(&db.store, "sched-a", 1_000)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(leader.epoch(), 1);
    leader.check().await.unwrap();
    assert!(
        LeaderLock::try_acquire(&other, "sched-b", 1_000)
            .await
            .unwrap()
            .is_none()
    );

    // The standby waits; the leader dies (its lock is dropped without a goodbye).
    let standby = {
        let other = other.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            LeaderLock::acquire(&other, "sched-b", &clock, Duration::from_millis(50)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !standby.is_finished(),
        "standby must wait while the leader lives"
    );
    drop(leader);
    let b = tokio::time::timeout(Duration::from_secs(20), standby)
        .await
        .expect("standby took over within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(b.epoch(), 2);
    assert_eq!(
        current_leader(&db.store).await.unwrap().unwrap().holder,
        "sched-b"
    );

    // A clean release lets the first one back at once.
    b.release().await.unwrap();
    let a = LeaderLock::try_acquire(&db.store, "sched-a", 2_000)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(a.epoch(), 3);
    a.release().await.unwrap();
}

both_backends!(leader_failover);
