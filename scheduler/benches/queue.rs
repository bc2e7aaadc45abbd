//! Queue benchmark, on SQLite (a WAL file) and PostgreSQL:
//! - adding a 10,000-job sweep (`a=0..100 × b=0..100`) in one `add_jobs` call
//!   (target: under 1 s on both backends);
//! - claim throughput with 8 concurrent claimers, one job per claim and ten per claim
//!   (target: 2,000 jobs/s on PostgreSQL).
//!
//! Run: `cargo bench -p scheduler --bench queue`
//! Knobs (environment): QUEUE_BENCH_RUNS (3), QUEUE_BENCH_CLAIM_JOBS (4000),
//! VASTICLAUDE_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/test).
//! A fresh database is created for each measurement and dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduler::clock::{Clock, ManualClock};
use scheduler::queue::{self, AddRequest, sweep::parse_sweep_arg};
use scheduler::store::testing::{self, TestDb};

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("error: {name}={v:?} is not a whole number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn sweep_request(experiment: &str, a: u64, b: u64) -> AddRequest {
    let mut req = AddRequest::new(
        experiment,
        ["python", "train.py", "--a", "{a}", "--b", "{b}"]
            .map(String::from)
            .to_vec(),
    );
    req.requirements.gpu_query = Some("gpu_ram>=16 num_gpus=1".to_string());
    req.sweep
        .push_grid(parse_sweep_arg(&format!("a=0..{a}")).unwrap())
        .unwrap();
    req.sweep
        .push_grid(parse_sweep_arg(&format!("b=0..{b}")).unwrap())
        .unwrap();
    req
}

async fn fresh(backend: &str) -> Option<TestDb> {
    match backend {
        "sqlite" => Some(testing::sqlite().await.expect("temp SQLite database")),
        _ => match testing::postgres().await {
            Ok(db) => Some(db),
            Err(why) => {
                eprintln!("skipped: PostgreSQL is missing: {why}");
                None
            }
        },
    }
}

async fn bench_add(backend: &str, runs: u64) -> Option<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let db = fresh(backend).await?;
        let clock = ManualClock::new(1_000);
        let req = sweep_request("bench", 100, 100);
        let t0 = Instant::now();
        let out = queue::add_jobs(&db.store, &req, "bench", &clock)
            .await
            .expect("add");
        times.push(t0.elapsed());
        assert_eq!(out.added.len(), 10_000);
        // The same sweep again: the duplicate check over 10,000 existing jobs.
        let t1 = Instant::now();
        let again = queue::add_jobs(&db.store, &req, "bench", &clock)
            .await
            .expect("re-add");
        assert_eq!(again.skipped_duplicates.len(), 10_000);
        eprintln!(
            "  {backend}: re-adding the identical sweep (all skipped) took {:.0} ms",
            t1.elapsed().as_secs_f64() * 1e3
        );
    }
    times.sort();
    Some(times)
}

async fn bench_claim(backend: &str, jobs: u64, batch: u32) -> Option<(Duration, f64)> {
    let db = fresh(backend).await?;
    let clock = Arc::new(ManualClock::new(1_000));
    let req = sweep_request("claims", jobs / 100, 100);
    queue::add_jobs(&db.store, &req, "bench", clock.as_ref())
        .await
        .expect("add");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = db.store.clone();
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let got = queue::claim(
                    &store,
                    batch,
                    &format!("w{w}"),
                    600_000,
                    clock.as_ref() as &dyn Clock,
                )
                .await
                .expect("claim");
                if got.is_empty() {
                    return n;
                }
                n += got.len();
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("claimer");
    }
    let took = t0.elapsed();
    assert_eq!(
        total as u64,
        jobs / 100 * 100,
        "each job claimed exactly once"
    );
    Some((took, total as f64 / took.as_secs_f64()))
}

fn main() {
    let runs = env_or("QUEUE_BENCH_RUNS", 3).max(1);
    let claim_jobs = env_or("QUEUE_BENCH_CLAIM_JOBS", 4_000).max(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("queue benchmark ({runs} run(s) per add figure, {claim_jobs} jobs per claim figure)");
    for backend in ["sqlite", "postgres"] {
        rt.block_on(async {
            if let Some(times) = bench_add(backend, runs).await {
                let ms: Vec<String> = times.iter().map(|t| format!("{:.0}", t.as_secs_f64() * 1e3)).collect();
                println!(
                    "{backend:8} add 10,000-job sweep: best {:.0} ms, median {:.0} ms (runs: {} ms; target < 1000 ms)",
                    times[0].as_secs_f64() * 1e3,
                    times[times.len() / 2].as_secs_f64() * 1e3,
                    ms.join(", ")
                );
            }
            for batch in [1u32, 10] {
                if let Some((took, rate)) = bench_claim(backend, claim_jobs, batch).await {
                    println!(
                        "{backend:8} claim, 8 claimers, {batch:2} job(s) per claim: {rate:.0} jobs/s ({claim_jobs} jobs in {:.0} ms){}",
                        took.as_secs_f64() * 1e3,
                        if backend == "postgres" { "; target 2,000 jobs/s" } else { "" }
                    );
                }
            }
        });
    }
}
