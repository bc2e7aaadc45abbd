//! Collector throughput on loopback: many simulated agents POST heartbeats (one per request, as
//! the agent does) to the real router, backed by the real database store.
//!
//! ```text
//! cargo bench -p scheduler --bench collector                      # PostgreSQL (VASTICLAUDE_TEST_PG_URL)
//! VC_BENCH_BACKEND=sqlite cargo bench -p scheduler --bench collector
//! VC_BENCH_AGENTS=1000 VC_BENCH_SECONDS=20 cargo bench -p scheduler --bench collector
//! ```
//!
//! `VC_BENCH_MODE=direct` skips HTTP and calls `Collector::submit` (the batching writer and the
//! database only). Prints heartbeats/s stored, flushes, the mean heartbeats per flush, and the
//! CPU seconds this process used (clients and collector; PostgreSQL's own CPU not included),
//! which is a fairer figure than wall time on a loaded machine.
//! Target: 5,000 heartbeats/s into PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scheduler::clock::{Clock, SystemClock};
use scheduler::collector::{
    Collector, CollectorConfig, DbHeartbeatStore, Heartbeat, HeartbeatAck, HeartbeatBatch,
    mint_token,
};
use worker_agent::protocol::{JobState, LogOffsets, PROTOCOL_VERSION, Progress};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let agents = env_num("VC_BENCH_AGENTS", 400);
    let seconds = env_num("VC_BENCH_SECONDS", 10);
    let backend = std::env::var("VC_BENCH_BACKEND").unwrap_or_else(|_| "postgres".into());
    let db = if backend == "sqlite" {
        scheduler::store::testing::sqlite().await.expect("sqlite")
    } else {
        match scheduler::store::testing::postgres().await {
            Ok(db) => db,
            Err(why) => {
                eprintln!(
                    "skipped: PostgreSQL is missing: {why} (set VC_BENCH_BACKEND=sqlite to run on SQLite)"
                );
                return;
            }
        }
    };
    let store = db.store.clone();

    // One job with `agents` attempts, each with its own token.
    use scheduler::queue::{AddRequest, add_jobs};
    use scheduler::store::attempts::{NewAttempt, start_attempt};
    use scheduler::store::entity::job;
    use sea_orm::EntityTrait;
    let clock = SystemClock;
    let out = add_jobs(
        &store,
        &AddRequest::new("bench", vec!["true".into()]),
        "bench",
        &clock,
    )
    .await
    .unwrap();
    let job = job::Entity::find_by_id(out.added[0])
        .one(store.db())
        .await
        .unwrap()
        .unwrap();
    let mut creds = Vec::new();
    for _ in 0..agents {
        let (token, _) = mint_token().unwrap();
        let new = NewAttempt {
            job_id: job.id,
            instance_id: None,
            fence: job.fence,
            token: Some(token.clone()),
            checkpoint_path: None,
        };
        let a = start_attempt(store.db(), new, "bench", clock.now_ms())
            .await
            .unwrap();
        creds.push((a.id, token));
    }

    let collector = Collector::new(
        Arc::new(DbHeartbeatStore::new(store.clone())),
        Arc::new(SystemClock),
        CollectorConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/heartbeats", listener.local_addr().unwrap());
    let c = collector.clone();
    tokio::spawn(
        async move { scheduler::collector::serve(listener, c, std::future::pending()).await },
    );

    let direct = std::env::var("VC_BENCH_MODE").is_ok_and(|m| m == "direct");
    let cpu0 = cpu_seconds();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(agents as usize)
        .build()
        .unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (attempt, token) in creds {
        let (http, url, acked, collector) =
            (http.clone(), url.clone(), acked.clone(), collector.clone());
        let fence = job.fence;
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let hb = Heartbeat {
                    protocol_version: PROTOCOL_VERSION,
                    job_id: 1,
                    attempt,
                    fence,
                    seq,
                    time_ms: 0,
                    state: JobState::Running,
                    progress: Progress {
                        step: Some(seq),
                        total: Some(1_000_000),
                        metrics: [("loss".to_string(), 0.25)].into(),
                    },
                    gpus: vec![],
                    gpu_error: None,
                    last_checkpoint: None,
                    logs: LogOffsets {
                        stdout: seq * 100,
                        stderr: 0,
                    },
                    exit: None,
                };
                let body = HeartbeatBatch {
                    attempt,
                    heartbeats: vec![hb],
                };
                if direct {
                    let ack = collector.submit(&token, body).await.unwrap();
                    assert_eq!(ack.ack_seq, seq);
                    acked.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let r = http.post(&url).bearer_auth(&token).json(&body).send().await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let ack: HeartbeatAck = r.json().await.unwrap();
                        assert_eq!(ack.ack_seq, seq);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("collector answered {}", r.status()),
                    Err(e) => panic!("request failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    let stats = collector.stats();
    let flushes = stats.flushes.load(Ordering::Relaxed).max(1);
    let cpu = cpu_seconds() - cpu0;
    let mode = if direct { "direct" } else { "http" };
    println!("collector bench: backend={backend} mode={mode} agents={agents} seconds={elapsed:.1}");
    println!(
        "  heartbeats stored and acked: {n} ({:.0}/s)",
        n as f64 / elapsed
    );
    println!(
        "  flushes: {flushes} (mean {:.1} heartbeats per transaction)",
        n as f64 / flushes as f64
    );
    println!(
        "  this process used {cpu:.1} CPU s: {:.0} heartbeats per CPU second",
        n as f64 / cpu.max(0.001)
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "  load average during the run: {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = s.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}
