//! The collector over real HTTP: authentication, idempotency by sequence number, fencing, and
//! the database store on SQLite and PostgreSQL.

use std::sync::Arc;

use scheduler::clock::{Clock, SystemClock};
use scheduler::collector::{
    Action, AttemptAuth, Collector, CollectorConfig, DbHeartbeatStore, Heartbeat, HeartbeatAck,
    HeartbeatBatch, HeartbeatStore, MemoryHeartbeatStore, SubmitError, mint_token,
};
use scheduler::store::Store;
use worker_agent::protocol::{JobState, LogOffsets, PROTOCOL_VERSION, Progress};

pub fn heartbeat(attempt: i64, fence: i64, seq: u64) -> Heartbeat {
    Heartbeat {
        protocol_version: PROTOCOL_VERSION,
        job_id: 1,
        attempt,
        fence,
        seq,
        time_ms: 1_000 + seq as i64,
        state: JobState::Running,
        progress: Progress {
            step: Some(seq),
            total: Some(100),
            metrics: [("loss".to_string(), 0.5)].into(),
        },
        gpus: vec![],
        gpu_error: Some("nvidia-smi not found".into()),
        last_checkpoint: None,
        logs: LogOffsets::default(),
        exit: None,
    }
}

fn batch(attempt: i64, fence: i64, seqs: std::ops::RangeInclusive<u64>) -> HeartbeatBatch {
    HeartbeatBatch {
        attempt,
        heartbeats: seqs.map(|s| heartbeat(attempt, fence, s)).collect(),
    }
}

async fn serve(store: Arc<dyn HeartbeatStore>) -> (Collector, String) {
    let collector = Collector::new(store, Arc::new(SystemClock), CollectorConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let c = collector.clone();
    tokio::spawn(
        async move { scheduler::collector::serve(listener, c, std::future::pending()).await },
    );
    (collector, url)
}

#[tokio::test]
async fn http_auth_idempotency_and_fencing_in_memory() {
    let store = Arc::new(MemoryHeartbeatStore::new());
    let (token, hash) = mint_token().unwrap();
    store.put_attempt(
        7,
        AttemptAuth {
            token_hash: Some(hash),
            fence: 3,
            current_fence: 3,
            active: true,
        },
    );
    let (collector, url) = serve(store.clone()).await;
    let http = reqwest::Client::new();
    let post = |b: &HeartbeatBatch, tok: Option<&str>| {
        let mut r = http.post(format!("{url}/v1/heartbeats")).json(b);
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    assert_eq!(post(&batch(7, 3, 1..=3), None).await.unwrap().status(), 401);
    assert_eq!(
        post(&batch(7, 3, 1..=3), Some("vca_wrong"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(&batch(8, 3, 1..=3), Some(&token))
            .await
            .unwrap()
            .status(),
        401,
        "unknown attempt"
    );
    assert!(
        store.heartbeats(7).is_empty(),
        "nothing stored from refused requests"
    );

    let r = post(&batch(7, 3, 1..=3), Some(&token)).await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: HeartbeatAck = r.json().await.unwrap();
    assert_eq!((ack.ack_seq, ack.action), (3, Action::Continue));

    // A replay overlapping what is stored: stored once, acked up to the newest.
    let ack: HeartbeatAck = post(&batch(7, 3, 2..=5), Some(&token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ack.ack_seq, 5);
    assert_eq!(store.arrival_order(7), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.duplicates(), 2);

    // Malformed requests say what was wrong.
    let mut mixed = batch(7, 3, 6..=6);
    mixed.heartbeats[0].attempt = 9;
    let r = post(&mixed, Some(&token)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("attempt 9"));
    let mut old = batch(7, 3, 6..=6);
    old.heartbeats[0].protocol_version = 99;
    let r = post(&old, Some(&token)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("99"));
    let r = http
        .post(format!("{url}/v1/heartbeats"))
        .bearer_auth(&token)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The job moved on: heartbeats are still stored, the answer is stop.
    store.set_current_fence(7, 4);
    let ack: HeartbeatAck = post(&batch(7, 3, 6..=6), Some(&token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((ack.ack_seq, ack.action), (6, Action::Stop));
    let latest = collector.latest(7).await.unwrap().unwrap();
    assert_eq!(latest.heartbeat.seq, 6);
    assert!(latest.received_at > 0);
}

#[tokio::test]
async fn ended_attempts_are_told_to_stop() {
    let store = Arc::new(MemoryHeartbeatStore::new());
    let (token, hash) = mint_token().unwrap();
    store.put_attempt(
        1,
        AttemptAuth {
            token_hash: Some(hash),
            fence: 1,
            current_fence: 1,
            active: true,
        },
    );
    let collector = Collector::new(
        store.clone(),
        Arc::new(SystemClock),
        CollectorConfig::default(),
    );
    assert_eq!(
        collector
            .submit(&token, batch(1, 1, 1..=1))
            .await
            .unwrap()
            .action,
        Action::Continue
    );
    store.end_attempt(1);
    assert_eq!(
        collector
            .submit(&token, batch(1, 1, 2..=2))
            .await
            .unwrap()
            .action,
        Action::Stop
    );
    // An attempt without a token hash accepts nobody.
    store.put_attempt(
        2,
        AttemptAuth {
            token_hash: None,
            fence: 1,
            current_fence: 1,
            active: true,
        },
    );
    assert!(matches!(
        collector.submit(&token, batch(2, 1, 1..=1)).await,
        Err(SubmitError::Unauthorized(_))
    ));
}

/// A job and a running attempt with a fresh token, through the store's own API.
async fn job_and_attempt(store: &Store) -> (i64, i64, i64, String) {
    use scheduler::queue::{AddRequest, add_jobs};
    use scheduler::store::attempts::{NewAttempt, start_attempt};
    use scheduler::store::entity::job;
    use sea_orm::EntityTrait;
    let clock = SystemClock;
    let req = AddRequest::new(
        format!("exp-{}", scheduler::store::testing::unique_suffix()),
        vec!["true".into()],
    );
    let out = add_jobs(store, &req, "tester", &clock).await.unwrap();
    let job_id = out.added[0];
    let job = job::Entity::find_by_id(job_id)
        .one(store.db())
        .await
        .unwrap()
        .unwrap();
    let (token, _) = mint_token().unwrap();
    let new = NewAttempt {
        job_id,
        instance_id: None,
        fence: job.fence,
        token: Some(token.clone()),
        checkpoint_path: None,
    };
    let attempt = start_attempt(store.db(), new, "tester", clock.now_ms())
        .await
        .unwrap();
    (job_id, attempt.id, job.fence, token)
}

async fn db_store_contract(store: Store) {
    use scheduler::store::entity::job;
    use sea_orm::{
        ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Set, Statement,
    };

    let (job_id, attempt, fence, token) = job_and_attempt(&store).await;
    let hs: Arc<dyn HeartbeatStore> = Arc::new(DbHeartbeatStore::new(store.clone()));
    let collector = Collector::new(hs, Arc::new(SystemClock), CollectorConfig::default());

    assert!(matches!(
        collector
            .submit("vca_nope", batch(attempt, fence, 1..=1))
            .await,
        Err(SubmitError::Unauthorized(_))
    ));
    let ack = collector
        .submit(&token, batch(attempt, fence, 1..=3))
        .await
        .unwrap();
    assert_eq!((ack.ack_seq, ack.action), (3, Action::Continue));
    let ack = collector
        .submit(&token, batch(attempt, fence, 1..=5))
        .await
        .unwrap();
    assert_eq!(ack.ack_seq, 5);
    // An old one arriving late changes neither the ack nor "latest".
    let ack = collector
        .submit(&token, batch(attempt, fence, 2..=2))
        .await
        .unwrap();
    assert_eq!(ack.ack_seq, 5);
    let latest = collector.latest(attempt).await.unwrap().unwrap();
    assert_eq!(latest.heartbeat.seq, 5);
    assert_eq!(latest.heartbeat.progress.step, Some(5));

    let count = |sql: String| {
        let db = store.db().clone();
        async move {
            let row = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM agent_heartbeats WHERE attempt_id = {attempt}"
        ))
        .await,
        5
    );
    assert_eq!(
        count(format!(
            "SELECT last_seq FROM attempt_progress WHERE attempt_id = {attempt}"
        ))
        .await,
        5
    );

    // Many agents at once: every request gets its own correct ack from the batched writer.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (_, a, f, t) = job_and_attempt(&store).await;
        let c = collector.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for s in 1..=4u64 {
                acks.push(c.submit(&t, batch(a, f, s..=s)).await.unwrap().ack_seq);
            }
            acks
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), vec![1, 2, 3, 4]);
    }

    // The job was reclaimed (fence moved on): stop.
    let mut am = job::Entity::find_by_id(job_id)
        .one(store.db())
        .await
        .unwrap()
        .unwrap()
        .into_active_model();
    am.fence = Set(fence + 1);
    am.update(store.db()).await.unwrap();
    let ack = collector
        .submit(&token, batch(attempt, fence, 6..=6))
        .await
        .unwrap();
    assert_eq!((ack.ack_seq, ack.action), (6, Action::Stop));
}

#[tokio::test]
async fn db_store_on_sqlite() {
    let db = scheduler::store::testing::sqlite().await.unwrap();
    db_store_contract(db.store.clone()).await;
}

#[tokio::test]
async fn db_store_on_postgres() {
    match scheduler::store::testing::postgres().await {
        Ok(db) => db_store_contract(db.store.clone()).await,
        Err(why) => {
            crate::require("PostgreSQL", false, &why);
        }
    }
}
