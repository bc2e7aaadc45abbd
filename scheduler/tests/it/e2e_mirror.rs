//! The store mirrors the engine: a sweep claimed from the queue and run on the simulator (with
//! a failed boot and a preemption) leaves the whole lifecycle in the store — jobs succeeded,
//! every intermediate state in the events table, instance rows destroyed, attempt rows ended.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scheduler::clock::SystemClock;
use scheduler::queue::{self, AddRequest};
use scheduler::reconcile::mirror::StoreMirror;
use scheduler::reconcile::simrun::{self, SimRunOptions, demo_jobs};
use scheduler::reconcile::{Journal, MemoryJournal};
use scheduler::store::events::{EntityKind, list_events};
use scheduler::store::testing::TestDb;

use crate::agent_e2e::agent_or_skip;

async fn sweep_is_mirrored(db: &TestDb, agent: PathBuf) {
    let store = &db.store;
    let clock = SystemClock;
    for i in 0..4 {
        let mut req = AddRequest::new("mirrored", vec!["sh".into(), "./train.sh".into()]);
        req.env.push(("LR".into(), format!("0.{i}")));
        queue::add_jobs(store, &req, "tester", &clock)
            .await
            .unwrap();
    }
    let claimed = queue::claim::claim(store, 100, "scheduler", 3_600_000, &clock)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);

    let home = tempfile::tempdir().unwrap();
    let mut o = SimRunOptions::fast(home.path().to_path_buf(), 7, agent);
    o.deadline = Duration::from_secs(90);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::default());
    let (engine, sim, wall) = simrun::build(&o, journal, None).await.unwrap();
    let mut mirror = StoreMirror::new(store.clone());
    let mut jobs = demo_jobs("mirrored", claimed.len(), 1, 12);
    for (j, c) in jobs.iter_mut().zip(&claimed) {
        j.id = c.job.id;
        mirror.set_fence(c.job.id, c.fence);
    }
    let mut engine = engine.with_mirror(mirror);
    engine.add_jobs(jobs).await.unwrap();
    let (log, stopped) = simrun::drive(&mut engine, &sim, &wall, &o, |_| {}, |_| false).await;
    assert!(stopped.is_none(), "{stopped:?}\n{log:#?}");
    let mirror_warnings: Vec<_> = log.iter().filter(|l| l.contains("store mirror")).collect();
    assert!(mirror_warnings.is_empty(), "{mirror_warnings:#?}");
    assert!(engine.stats.preemptions >= 1, "{log:#?}");

    for c in &claimed {
        let id = c.job.id;
        let row = queue::find_job(store.db(), &queue::JobRef::Id(id))
            .await
            .unwrap();
        assert_eq!(row.state, "succeeded", "job {id}");
        let events = list_events(store.db(), EntityKind::Job, id).await.unwrap();
        let to: Vec<&str> = events.iter().map(|e| e.to_state.as_str()).collect();
        for want in ["placed", "starting", "running", "succeeded"] {
            assert!(to.contains(&want), "job {id}: no {want} event in {to:?}");
        }
        let pos = |s: &str| to.iter().rposition(|t| *t == s).unwrap();
        assert!(pos("starting") < pos("running") && pos("running") < pos("succeeded"));
        let attempts = scheduler::store::attempts::attempts_for_job(store.db(), id)
            .await
            .unwrap();
        assert!(!attempts.is_empty(), "job {id} has no attempt rows");
        assert!(
            attempts.iter().all(|a| a.ended_at.is_some()),
            "{attempts:#?}"
        );
        assert!(
            attempts.iter().all(|a| a.instance_id.is_some()),
            "{attempts:#?}"
        );
        assert_eq!(
            attempts.last().unwrap().state,
            "succeeded",
            "job {id}: {attempts:#?}"
        );
    }
    // The preempted job went running → interrupted → queued → placed and ran again.
    let mut interrupted = 0;
    for c in &claimed {
        let events = list_events(store.db(), EntityKind::Job, c.job.id)
            .await
            .unwrap();
        if events.iter().any(|e| e.to_state == "interrupted") {
            interrupted += 1;
            let attempts = scheduler::store::attempts::attempts_for_job(store.db(), c.job.id)
                .await
                .unwrap();
            assert!(attempts.len() >= 2, "{attempts:#?}");
            assert!(
                attempts.iter().any(|a| a.state == "interrupted"),
                "{attempts:#?}"
            );
        }
    }
    assert!(interrupted >= 1, "no job shows its interruption");
    let checkpoints = scheduler::store::attempts::latest_checkpoint(store.db(), claimed[0].job.id)
        .await
        .unwrap();
    assert!(checkpoints.is_some(), "no pulled checkpoint recorded");

    let instances = scheduler::store::instances::list_instances(store.db(), &[])
        .await
        .unwrap();
    assert_eq!(instances.len(), engine.world().instances.len());
    assert!(instances.len() >= 2, "{instances:#?}");
    let by_label: BTreeMap<&str, _> = instances.iter().map(|i| (i.label.as_str(), i)).collect();
    for inst in engine.world().instances.values() {
        let row = by_label[inst.label.as_str()];
        assert_eq!(row.state, "gone", "{row:#?}");
        assert!(row.destroyed_at.is_some(), "{row:#?}");
        assert_eq!(row.offer_id, Some(inst.offer.offer_id));
        assert!(row.dph_nusd.unwrap_or(0) > 0, "{row:#?}");
        let ev = list_events(store.db(), EntityKind::Instance, row.id)
            .await
            .unwrap();
        assert_eq!(ev.first().map(|e| e.to_state.as_str()), Some("requested"));
        assert_eq!(ev.last().map(|e| e.to_state.as_str()), Some("gone"));
    }
    assert!(
        scheduler::store::instances::list_live_instances(store.db())
            .await
            .unwrap()
            .is_empty()
    );

    // A restarted scheduler's mirror starts with empty caches and compares everything once:
    // with the store already in line it writes nothing (no duplicate rows or events).
    let counts = || async {
        use scheduler::store::entity::{attempt, event, instance};
        use sea_orm::{EntityTrait, PaginatorTrait};
        (
            event::Entity::find().count(store.db()).await.unwrap(),
            attempt::Entity::find().count(store.db()).await.unwrap(),
            instance::Entity::find().count(store.db()).await.unwrap(),
        )
    };
    let before = counts().await;
    let mut again = StoreMirror::new(store.clone());
    for c in &claimed {
        again.set_fence(c.job.id, c.fence);
    }
    let errors = again.sync(engine.world(), home.path(), wall.now_ms()).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(counts().await, before);

    // A store that missed the whole run (a crash right after each journal write, or a store
    // outage) catches up from the journal in one pass: the same claims in a fresh database.
    let late = crate::store_common::sqlite().await;
    for i in 0..4 {
        let mut req = AddRequest::new("mirrored", vec!["sh".into(), "./train.sh".into()]);
        req.env.push(("LR".into(), format!("0.{i}")));
        queue::add_jobs(&late.store, &req, "tester", &clock)
            .await
            .unwrap();
    }
    let late_claims = queue::claim::claim(&late.store, 100, "scheduler", 3_600_000, &clock)
        .await
        .unwrap();
    let mut catch_up = StoreMirror::new(late.store.clone());
    for c in &late_claims {
        catch_up.set_fence(c.job.id, c.fence);
    }
    let errors = catch_up
        .sync(engine.world(), home.path(), wall.now_ms())
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    for c in &late_claims {
        let id = c.job.id;
        let row = queue::find_job(late.store.db(), &queue::JobRef::Id(id))
            .await
            .unwrap();
        assert_eq!(row.state, "succeeded", "job {id}");
        let to: Vec<String> = list_events(late.store.db(), EntityKind::Job, id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.to_state)
            .collect();
        assert_eq!(to, ["queued", "placed", "starting", "running", "succeeded"]);
    }
    let late_instances = scheduler::store::instances::list_instances(late.store.db(), &[])
        .await
        .unwrap();
    assert_eq!(late_instances.len(), engine.world().instances.len());
    assert!(
        late_instances
            .iter()
            .all(|i| i.state == "gone" && i.destroyed_at.is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_lifecycle_is_mirrored_into_sqlite() {
    let Some(agent) = agent_or_skip() else { return };
    let db = crate::store_common::sqlite().await;
    sweep_is_mirrored(&db, agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_lifecycle_is_mirrored_into_postgres() {
    let Some(agent) = agent_or_skip() else { return };
    let Some(db) = crate::store_common::postgres().await else {
        return;
    };
    sweep_is_mirrored(&db, agent).await;
}
