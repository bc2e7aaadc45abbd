//! Ledger throughput figures (prints them; no assertions).
//!
//! `cargo bench -p ledger --bench ledger`
//!
//! - pure accrual + attribution of one interval across 4 jobs;
//! - `Ledger::record_interval` on a SQLite file (WAL), one transaction per interval;
//! - `Ledger::report` over everything recorded.

use std::time::Instant;

use ledger::{
    AccrualInput, BillingState, GroupBy, JobSpan, Ledger, Owner, Rates, Reason, ReportQuery,
    StateInterval, Usd, accrue_interval, attribute,
};
use rust_decimal_macros::dec;

fn rates() -> Rates {
    Rates {
        compute_per_hour: Usd(dec!(0.4567)),
        bid_per_hour: None,
        disk_gb: dec!(50),
        storage_per_gb_month: Usd(dec!(0.149333)),
        upload_per_gb: Usd(dec!(0.02)),
        download_per_gb: Usd(dec!(0.01)),
    }
}

fn jobs(t: i64, len: i64) -> Vec<JobSpan> {
    (0..4)
        .map(|i| JobSpan {
            job: format!("j{i}"),
            experiment: format!("exp{}", i % 2),
            user: None,
            gpus: 2,
            start_ms: t + i * len / 8,
            end_ms: t + len,
            reason: if i == 3 {
                Reason::LostPreemption
            } else {
                Reason::Work
            },
        })
        .collect()
}

fn main() {
    let owner = Owner {
        experiment: "exp0".into(),
        user: None,
    };
    let n = 100_000;
    let start = Instant::now();
    let mut sink = Usd::ZERO;
    for i in 0..n {
        let t = i * 60_000;
        let iv = StateInterval::new(t, t + 60_000, BillingState::Running)
            .with_bytes(12_345_678, 987_654);
        let cost = accrue_interval(&rates(), &iv).unwrap();
        let parts = attribute(&cost, t, t + 60_000, 8, &owner, &jobs(t, 60_000)).unwrap();
        sink += parts[0].cost.total();
    }
    let el = start.elapsed();
    println!(
        "accrue+attribute (8 GPUs, 4 jobs): {n} intervals in {:.3} s = {:.2} µs/interval (checksum {})",
        el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64,
        sink.round_cents()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
        let l = Ledger::open(&url).await.unwrap();
        let instances = 10;
        let ticks = 500;
        let start = Instant::now();
        for k in 0..ticks {
            for i in 0..instances {
                let t = k * 60_000;
                let input = AccrualInput {
                    instance: format!("inst{i}"),
                    owner: owner.clone(),
                    gpus: 8,
                    rates: rates(),
                    interval: StateInterval::new(t, t + 60_000, BillingState::Running)
                        .with_bytes(1_000_000, 1_000_000),
                    jobs: jobs(t, 60_000),
                };
                l.record_interval(&input, t + 60_000).await.unwrap();
            }
        }
        let el = start.elapsed();
        let n = instances * ticks;
        let entries = l.entries(&Default::default()).await.unwrap().len();
        println!(
            "record_interval on SQLite (WAL): {n} intervals ({entries} entries) in {:.2} s = {:.0} intervals/s",
            el.as_secs_f64(),
            n as f64 / el.as_secs_f64()
        );
        for by in [GroupBy::Experiment, GroupBy::Job, GroupBy::Day] {
            let start = Instant::now();
            let r = l
                .report(
                    &ReportQuery {
                        by,
                        ..Default::default()
                    },
                    &[],
                    ticks * 60_000,
                )
                .await
                .unwrap();
            println!(
                "report by {:?} over {entries} entries: {:.1} ms (total {})",
                by,
                start.elapsed().as_secs_f64() * 1e3,
                r.grand_total
            );
        }
    });
}
