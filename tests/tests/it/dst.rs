//! Deterministic simulation of the scheduler on many seeds (see `tests::dst`).
//!
//! `VASTICLAUDE_DST_SEEDS=N` runs seeds 1..=N (default 1000); `VASTICLAUDE_DST_SEED=S` runs one
//! seed and prints its trace. A failing seed prints the command that replays it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tests::dst::{DstOptions, RunStats, Sabotage, SeedOutcome, replay_command, run_seed};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a non-negative integer, got {v:?}"),
    }
}

/// Run `seeds` on every core; return the outcomes in seed order.
fn run_many(seeds: Vec<u64>, opts: &DstOptions) -> Vec<SeedOutcome> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(seeds.len().max(1));
    let next = AtomicU64::new(0);
    let out = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    let Some(&seed) = seeds.get(i) else { break };
                    let o = run_seed(seed, opts);
                    out.lock().unwrap_or_else(|p| p.into_inner()).push(o);
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_else(|p| p.into_inner());
    v.sort_by_key(|o| o.seed);
    v
}

fn sum(outs: &[SeedOutcome], f: impl Fn(&RunStats) -> u64) -> u64 {
    outs.iter().map(|o| f(&o.stats)).sum()
}

#[test]
fn seeds_keep_every_invariant() {
    let started = std::time::Instant::now();
    let (seeds, single) = match env_u64("VASTICLAUDE_DST_SEED") {
        Some(s) => (vec![s], true),
        None => {
            let n = env_u64("VASTICLAUDE_DST_SEEDS").unwrap_or(1000);
            ((1..=n).collect::<Vec<u64>>(), false)
        }
    };
    let opts = DstOptions {
        keep_trace: single,
        ..DstOptions::default()
    };
    let outs = run_many(seeds, &opts);
    if single {
        for l in &outs[0].trace {
            println!("{l}");
        }
        println!(
            "stats: {}",
            serde_json::to_string(&outs[0].stats).unwrap_or_default()
        );
    }
    let failed: Vec<&SeedOutcome> = outs.iter().filter(|o| !o.ok()).collect();
    println!(
        "dst: {} seeds in {:.1} s wall: {} steps, {} virtual hours, {} scheduler restarts, {} forced faults, {} API faults, \
         {} purchases, {} attempts ({} interrupted, {} resumed from a checkpoint), jobs {} succeeded / {} failed / {} held by budget",
        outs.len(),
        started.elapsed().as_secs_f64(),
        sum(&outs, |s| s.steps),
        sum(&outs, |s| s.virtual_s as u64) / 3600,
        sum(&outs, |s| s.restarts),
        sum(&outs, |s| s.forced_faults),
        sum(&outs, |s| s.api_faults),
        sum(&outs, |s| s.purchases),
        sum(&outs, |s| s.attempts as u64),
        sum(&outs, |s| s.interrupted_attempts),
        sum(&outs, |s| s.resumed_from_checkpoint),
        sum(&outs, |s| s.succeeded as u64),
        sum(&outs, |s| s.failed as u64),
        sum(&outs, |s| s.budget_held as u64),
    );
    let drift = outs
        .iter()
        .map(|o| o.stats.max_instance_drift)
        .max()
        .unwrap_or_default();
    println!("dst: largest per-instance ledger drift from the market's charges: ${drift}");
    for o in &failed {
        eprintln!("seed {} broke {} invariant(s):", o.seed, o.violations.len());
        for v in o.violations.iter().take(5) {
            eprintln!("  - {v}");
        }
        eprintln!("  replay: {}", replay_command(o.seed));
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds broke invariants (replay commands above)",
        failed.len(),
        outs.len()
    );
}

#[test]
fn one_seed_replays_exactly() {
    let opts = DstOptions {
        keep_trace: true,
        ..DstOptions::default()
    };
    for seed in [7, 1234] {
        let a = run_seed(seed, &opts);
        let b = run_seed(seed, &opts);
        assert!(
            a.trace.len() > 20,
            "seed {seed}: a trace this short proves nothing: {:?}",
            a.trace
        );
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} gave two different traces"
        );
        assert_eq!(a.trace, b.trace);
    }
    let c = run_seed(8, &opts);
    assert_ne!(
        run_seed(7, &opts).trace_hash,
        c.trace_hash,
        "seeds 7 and 8 gave the same trace"
    );
}

/// The checker must be able to fail: each sabotage is caught on some of the first seeds, and
/// those seeds are clean without it.
fn caught(sabotage: Sabotage, expect: &str) {
    let opts = DstOptions {
        sabotage,
        ..DstOptions::default()
    };
    let outs = run_many((1..=30).collect(), &opts);
    let hit: Vec<&SeedOutcome> = outs
        .iter()
        .filter(|o| o.violations.iter().any(|v| v.contains(expect)))
        .collect();
    assert!(!hit.is_empty(), "{sabotage:?} went unnoticed on 30 seeds");
    // The same seed without the sabotage must not show that violation: it came from the sabotage.
    let witness = hit.iter().find(|o| {
        let clean = run_seed(o.seed, &DstOptions::default());
        !clean.violations.iter().any(|v| v.contains(expect))
    });
    let Some(w) = witness else {
        panic!("every seed that caught {sabotage:?} shows the same violation without it");
    };
    println!(
        "{sabotage:?}: caught on {} of 30 seeds, e.g. seed {}: {}",
        hit.len(),
        w.seed,
        w.violations
            .iter()
            .find(|v| v.contains(expect))
            .map(String::as_str)
            .unwrap_or_default()
    );
}

#[test]
fn a_scheduler_that_skips_destroys_is_caught() {
    caught(
        Sabotage {
            swallow_destroys: true,
            ..Sabotage::default()
        },
        "leaked",
    );
}

#[test]
fn work_restarted_from_scratch_is_caught() {
    caught(
        Sabotage {
            ignore_resume: true,
            ..Sabotage::default()
        },
        "was pulled",
    );
}

#[test]
fn a_ledger_that_loses_an_instance_is_caught() {
    caught(
        Sabotage {
            lose_book_on_restart: true,
            force_restart: true,
            ..Sabotage::default()
        },
        "ledger",
    );
}
