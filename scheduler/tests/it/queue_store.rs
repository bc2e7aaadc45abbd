//! The queue and the store on both backends: adding sweeps, duplicates, listing, the
//! permission model, cancel / retry / priority / pause, instances, attempts and the journal.

use scheduler::clock::ManualClock;
use scheduler::queue::{
    self, AddRequest, CancelTarget, JobRef, ListFilter, QueueError, sweep::parse_sweep_arg,
};
use scheduler::store::events::{EntityKind, list_events};
use scheduler::store::instances::{self, InstancePatch, NewInstance};
use scheduler::store::testing::TestDb;
use scheduler::store::users::{self, Role};
use scheduler::store::{InstanceState, JobState, StoreError, attempts};

use crate::both_backends;

fn train_request(experiment: &str) -> AddRequest {
    let mut req = AddRequest::new(
        experiment,
        ["python", "train.py", "--lr", "{lr}", "--seed", "{seed}"]
            .map(String::from)
            .to_vec(),
    );
    req.sweep
        .push_grid(parse_sweep_arg("lr=0.1,0.01").unwrap())
        .unwrap();
    req.sweep
        .push_grid(parse_sweep_arg("seed=0,1,2").unwrap())
        .unwrap();
    req.requirements.gpu_query = Some("gpu_ram>=16".to_string());
    req
}

async fn add_sweep_twice_does_not_duplicate(db: &TestDb) {
    let clock = ManualClock::new(1_000);
    let out = queue::add_jobs(&db.store, &train_request("e1"), "alice", &clock)
        .await
        .unwrap();
    assert_eq!(out.added.len(), 6);
    assert!(out.skipped_duplicates.is_empty());

    let again = queue::add_jobs(&db.store, &train_request("e1"), "alice", &clock)
        .await
        .unwrap();
    assert!(again.added.is_empty());
    assert_eq!(again.skipped_duplicates.len(), 6);

    // A different experiment is a different queue.
    let other = queue::add_jobs(&db.store, &train_request("e2"), "alice", &clock)
        .await
        .unwrap();
    assert_eq!(other.added.len(), 6);

    let mut dup = train_request("e1");
    dup.allow_duplicates = true;
    let forced = queue::add_jobs(&db.store, &dup, "alice", &clock)
        .await
        .unwrap();
    assert_eq!(forced.added.len(), 6);

    let jobs = queue::list(
        &db.store,
        &ListFilter {
            experiment: Some("e1".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(jobs.len(), 12);
    let first = &jobs[0];
    assert_eq!(first.name, "lr=0.1,seed=0");
    assert_eq!(
        first.command,
        ["python", "train.py", "--lr", "0.1", "--seed", "0"]
    );
    assert_eq!(first.env.get("lr").map(String::as_str), Some("0.1"));
    assert_eq!(first.state, "queued");
    assert_eq!(first.owner, "alice");
    assert_eq!(first.gpu_query.as_deref(), Some("gpu_ram>=16"));
    let events = list_events(db.store.db(), EntityKind::Job, first.id)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].to_state, "queued");
    assert_eq!(events[0].actor, "alice");
}

async fn bad_values_write_nothing(db: &TestDb) {
    let clock = ManualClock::new(1_000);
    queue::add_jobs(&db.store, &train_request("e1"), "alice", &clock)
        .await
        .unwrap();

    let mut bad = AddRequest::new("e1", vec!["echo".into(), "{lr}".into(), "{nope}".into()]);
    bad.sweep
        .push_grid(parse_sweep_arg("lr=1,2").unwrap())
        .unwrap();
    let err = queue::add_jobs(&db.store, &bad, "alice", &clock)
        .await
        .unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("{nope}"),
        "{err}"
    );

    let mut bad = train_request("e3");
    bad.requirements.gpu_query = Some("gpu_ram >= ".into());
    let err = queue::add_jobs(&db.store, &bad, "alice", &clock)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--gpu"), "{err}");

    let all = queue::list(&db.store, &ListFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 6, "nothing half-written");
    let exps = queue::list_experiments(&db.store).await.unwrap();
    assert_eq!(
        exps.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["e1"]
    );
    assert_eq!(exps[0].jobs, 6);
    assert_eq!(exps[0].states.get("queued"), Some(&6));
}

async fn permissions_are_enforced_in_the_store(db: &TestDb) {
    let clock = ManualClock::new(1_000);
    let a = queue::add_jobs(&db.store, &train_request("shared"), "alice", &clock)
        .await
        .unwrap();
    let mut bobs = AddRequest::new("shared", vec!["echo".into(), "bob".into()]);
    bobs.priority = 1;
    let b = queue::add_jobs(&db.store, &bobs, "bob", &clock)
        .await
        .unwrap();
    let alice_job = JobRef::Id(a.added[0]);
    let bob_job = JobRef::Id(b.added[0]);

    // Bob may not touch Alice's job.
    let err = queue::cancel(
        &db.store,
        "bob",
        &CancelTarget::Jobs(vec![alice_job.clone(), bob_job.clone()]),
        &clock,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, QueueError::Store(StoreError::PermissionDenied { actor, owner, .. }) if actor == "bob" && owner == "alice"),
        "{err}"
    );
    let err = queue::set_priority(&db.store, "bob", &alice_job, 9, &clock)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = queue::pause(&db.store, "bob", "shared", &clock)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("experiment shared"), "{err}");
    // Nothing changed: the all-or-nothing cancel left bob's job queued too.
    let shown = queue::show(&db.store, &bob_job).await.unwrap();
    assert_eq!(shown.job.state, "queued");

    // Cancelling the experiment as bob takes only bob's job.
    let out = queue::cancel(
        &db.store,
        "bob",
        &CancelTarget::Experiment("shared".into()),
        &clock,
    )
    .await
    .unwrap();
    assert_eq!(out.cancelled, vec![b.added[0]]);
    assert_eq!(out.skipped_not_owner.len(), 6);

    // An admin may; only an admin (or the first one, bootstrapping) grants the role.
    let err = users::set_role(db.store.db(), "bob", "bob", Role::Admin, 2_000).await;
    assert!(
        err.is_ok(),
        "bootstrap: the first admin on a database without one: {err:?}"
    );
    let err = users::set_role(db.store.db(), "carol", "carol", Role::Admin, 2_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    let v = queue::set_priority(&db.store, "bob", &alice_job, 9, &clock)
        .await
        .unwrap();
    assert_eq!(v.priority, 9);
    let err = users::set_role(db.store.db(), "bob", "bob", Role::Member, 2_000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("last admin"), "{err}");
    assert_eq!(
        users::role_of(db.store.db(), "alice").await.unwrap(),
        Role::Member
    );

    // Owner retry of a cancelled job; retry of a queued job is refused.
    let err = queue::retry(&db.store, "alice", &alice_job, &clock)
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::BadState { .. }), "{err}");
    let out = queue::cancel(
        &db.store,
        "alice",
        &CancelTarget::Jobs(vec![alice_job.clone()]),
        &clock,
    )
    .await
    .unwrap();
    assert_eq!(out.cancelled.len(), 1);
    let again = queue::cancel(
        &db.store,
        "alice",
        &CancelTarget::Jobs(vec![alice_job.clone()]),
        &clock,
    )
    .await
    .unwrap();
    assert_eq!(again.already_final.len(), 1);
    let v = queue::retry(&db.store, "alice", &alice_job, &clock)
        .await
        .unwrap();
    assert_eq!(v.state, "queued");
    let journal: Vec<(Option<String>, String, String)> = queue::show(&db.store, &alice_job)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| (e.from_state, e.to_state, e.actor))
        .collect();
    assert_eq!(
        journal,
        [
            (None, "queued".to_string(), "alice".to_string()),
            (Some("queued".into()), "queued".into(), "bob".into()),
            (Some("queued".into()), "cancelled".into(), "alice".into()),
            (Some("cancelled".into()), "queued".into(), "alice".into()),
        ]
    );
}

async fn jobs_by_name_and_pause(db: &TestDb) {
    let clock = ManualClock::new(1_000);
    queue::add_jobs(&db.store, &train_request("e1"), "alice", &clock)
        .await
        .unwrap();
    let r: JobRef = "e1/lr=0.01,seed=2".parse().unwrap();
    let detail = queue::show(&db.store, &r).await.unwrap();
    assert_eq!(detail.job.command[3], "0.01");
    let missing: JobRef = "e1/lr=9".parse().unwrap();
    let err = queue::show(&db.store, &missing).await.unwrap_err();
    assert!(err.to_string().contains("e1/lr=9 not found"), "{err}");

    queue::pause(&db.store, "alice", "e1", &clock)
        .await
        .unwrap();
    assert!(
        queue::claim(&db.store, 10, "s1", 60_000, &clock)
            .await
            .unwrap()
            .is_empty()
    );
    let exps = queue::list_experiments(&db.store).await.unwrap();
    assert!(exps[0].paused);
    queue::resume(&db.store, "alice", "e1", &clock)
        .await
        .unwrap();
    assert_eq!(
        queue::claim(&db.store, 10, "s1", 60_000, &clock)
            .await
            .unwrap()
            .len(),
        6
    );
    let placed = queue::list(
        &db.store,
        &ListFilter {
            state: Some(JobState::Placed),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(placed.len(), 6);
}

async fn instances_attempts_and_events(db: &TestDb) {
    let clock = ManualClock::new(5_000);
    let out = queue::add_jobs(
        &db.store,
        &AddRequest::new("e1", vec!["true".into()]),
        "alice",
        &clock,
    )
    .await
    .unwrap();
    let c = queue::claim(&db.store, 1, "sched", 60_000, &clock)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.job.id, out.added[0]);

    let inst = instances::create_instance(
        db.store.db(),
        NewInstance {
            workspace: "ws".into(),
            offer_id: Some(42),
            dph_nusd: Some(450_000_000),
            ..Default::default()
        },
        "reconciler",
        5_000,
    )
    .await
    .unwrap();
    assert_eq!(inst.label, format!("vc-ws-{}", inst.id));
    assert_eq!(inst.state, "requested");
    let inst = instances::update_instance(
        db.store.db(),
        inst.id,
        InstancePatch {
            vast_id: Some(777),
            ssh_port: Some(2222),
            ..Default::default()
        },
        5_100,
    )
    .await
    .unwrap();
    assert_eq!(inst.vast_id, Some(777));
    instances::set_instance_state(
        db.store.db(),
        inst.id,
        InstanceState::Booting,
        "reconciler",
        "created",
        5_200,
    )
    .await
    .unwrap();
    assert_eq!(
        instances::find_instance_by_label(db.store.db(), &inst.label)
            .await
            .unwrap()
            .unwrap()
            .state,
        "booting"
    );

    // An attempt under a stale fence is refused; the current one is accepted.
    let stale = attempts::NewAttempt {
        job_id: c.job.id,
        instance_id: Some(inst.id),
        fence: c.fence - 1,
        token: Some("t0k3n".into()),
        checkpoint_path: None,
    };
    assert!(matches!(
        attempts::start_attempt(db.store.db(), stale.clone(), "reconciler", 5_300).await,
        Err(StoreError::Conflict(_))
    ));
    let a = attempts::start_attempt(
        db.store.db(),
        attempts::NewAttempt {
            fence: c.fence,
            ..stale
        },
        "reconciler",
        5_300,
    )
    .await
    .unwrap();
    assert_ne!(a.token_hash.as_deref(), Some("t0k3n"));
    assert_eq!(
        attempts::find_open_attempt_by_token(db.store.db(), "t0k3n")
            .await
            .unwrap()
            .map(|x| x.id),
        Some(a.id)
    );
    attempts::set_checkpoint(db.store.db(), a.id, "/ckpt/step-100")
        .await
        .unwrap();
    queue::advance(
        &db.store,
        c.job.id,
        c.fence,
        JobState::Running,
        Some(inst.id),
        "agent up",
        &clock,
    )
    .await
    .unwrap();
    queue::complete(
        &db.store,
        c.job.id,
        c.fence,
        queue::Completion {
            exit_code: Some(0),
            note: None,
        },
        &clock,
    )
    .await
    .unwrap();
    let a = attempts::get_attempt(db.store.db(), a.id).await.unwrap();
    assert_eq!(a.state, "succeeded");
    assert_eq!(
        attempts::latest_checkpoint(db.store.db(), c.job.id)
            .await
            .unwrap()
            .as_deref(),
        Some("/ckpt/step-100")
    );
    let gone = instances::set_instance_state(
        db.store.db(),
        inst.id,
        InstanceState::Gone,
        "reconciler",
        "destroyed",
        9_000,
    )
    .await
    .unwrap();
    assert_eq!(gone.destroyed_at, Some(9_000));
    assert!(
        instances::list_live_instances(db.store.db())
            .await
            .unwrap()
            .is_empty()
    );
    let ev: Vec<String> = list_events(db.store.db(), EntityKind::Instance, inst.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.to_state)
        .collect();
    assert_eq!(ev, ["requested", "booting", "gone"]);
    let job_ev: Vec<String> = list_events(db.store.db(), EntityKind::Job, c.job.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.to_state)
        .collect();
    assert_eq!(job_ev, ["queued", "placed", "running", "succeeded"]);
}

async fn migrations_are_idempotent(db: &TestDb) {
    db.store.migrate().await.unwrap();
    db.store.migrate().await.unwrap();
    let clock = ManualClock::new(1);
    queue::add_jobs(
        &db.store,
        &AddRequest::new("e1", vec!["true".into()]),
        "alice",
        &clock,
    )
    .await
    .unwrap();
    assert_eq!(
        queue::list(&db.store, &ListFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

both_backends!(
    add_sweep_twice_does_not_duplicate,
    bad_values_write_nothing,
    permissions_are_enforced_in_the_store,
    jobs_by_name_and_pause,
    instances_attempts_and_events,
    migrations_are_idempotent,
);

/// Two identical adds racing each other: the jobs exist once, and the loser either sees them
/// (SQLite serialises the two transactions) or is refused by the unique index (PostgreSQL),
/// writing nothing in both cases.
async fn racing_identical_adds_do_not_duplicate(db: &TestDb) {
    let clock = ManualClock::new(1_000);
    // The experiment exists already, so the two adds do not queue behind its creation.
    queue::add_jobs(
        &db.store,
        &AddRequest::new("race", vec!["true".into()]),
        "alice",
        &clock,
    )
    .await
    .unwrap();
    // Big enough that one add is still writing when the other has checked for duplicates.
    let mut req = AddRequest::new("race", vec!["run".into(), "{i}".into()]);
    req.sweep
        .push_grid(parse_sweep_arg("i=0..3000").unwrap())
        .unwrap();
    let (a, b) = tokio::join!(
        queue::add_jobs(&db.store, &req, "alice", &clock),
        queue::add_jobs(&db.store, &req, "bob", &clock),
    );
    let added: usize = [&a, &b]
        .iter()
        .map(|r| r.as_ref().map(|o| o.added.len()).unwrap_or(0))
        .sum();
    assert_eq!(added, 3000);
    for r in [&a, &b] {
        match r {
            Ok(o) => assert!(o.added.len() == 3000 || o.skipped_duplicates.len() == 3000),
            Err(e) => assert!(e.to_string().contains("ran at the same time"), "{e}"),
        }
    }
    let jobs = queue::list(
        &db.store,
        &ListFilter {
            experiment: Some("race".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(jobs.len(), 3001);
}

both_backends!(racing_identical_adds_do_not_duplicate);
