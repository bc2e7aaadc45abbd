//! Figures for `vast::sim`: how fast the market answers the calls a scheduler simulation makes
//! on every tick (search, list, advance). Run: `cargo bench -p vast --bench sim`.

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;
use vast::sim::{Market, SimConfig};

fn time<T>(label: &str, iters: u32, mut f: impl FnMut() -> T) {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    let per = start.elapsed() / iters;
    println!("{label:<58} {per:>12.2?} per call ({iters} calls)");
}

fn main() {
    let mut config = SimConfig::with_seed(1);
    config.faults.outbid_per_hour = 0.2;
    let start = Instant::now();
    let mut m = Market::new(config.clone());
    println!(
        "{:<58} {:>12.2?}",
        "Market::new (240 machines)",
        start.elapsed()
    );
    let all = m.search(&json!({})).map(|v| v.len()).unwrap_or(0);
    println!("{:<58} {all:>12}", "offers listed");

    let cli_query = json!({"verified": {"eq": true}, "external": {"eq": false}, "rentable": {"eq": true},
        "gpu_ram": {"gte": 24000.0}, "num_gpus": {"eq": "1"}, "dph_total": {"lt": "2"},
        "order": [["dph_total", "asc"]], "type": "on-demand", "allocated_storage": 5.0});
    time("search 'gpu_ram>=24 num_gpus=1 dph<2' -o dph", 200, || {
        m.search(&cli_query)
    });
    time("search with limit 20 (bid view)", 200, || {
        m.search(&json!({"type": "bid", "limit": 20, "order": [["dph_total", "asc"]]}))
    });

    let offers = m
        .search(&json!({"num_gpus": {"eq": 1}, "limit": 100}))
        .unwrap_or_default();
    for (i, o) in offers.iter().enumerate() {
        let body = if i % 3 == 0 {
            json!({"image": "img", "price": o["min_bid"].as_f64().unwrap_or(0.1) * 1.2})
        } else {
            json!({"image": "img"})
        };
        let _ = m.create(o["id"].as_u64().unwrap_or(0), &body);
    }
    let now = m.now_ms();
    m.advance_to(now + 3_600_000);
    time("list(None) with 100 instances", 200, || m.list(None));
    time("total_charged() with 100 instances", 200, || {
        m.total_charged()
    });
    let mut t = m.now_ms();
    time(
        "advance_to(+10 s) with 100 instances and churn",
        2000,
        || {
            t += 10_000;
            m.advance_to(t);
        },
    );
    let big = SimConfig {
        machines: 5_000,
        ..config
    };
    let start = Instant::now();
    let m = Market::new(big);
    println!(
        "{:<58} {:>12.2?}",
        "Market::new (5000 machines)",
        start.elapsed()
    );
    time("search on 5000 machines, limit 50", 20, || {
        m.search(&json!({"num_gpus": {"eq": "1"}, "limit": 50, "order": [["dph_total", "asc"]]}))
    });
}
