//! `cargo run --release -p tests --bin market-bench -- [--json] [--markets N | --market SEED] [--jobs N] [--deadline-h H|naive]`
//!
//! Runs our scheduler, the naive baseline and the lower bound on N seeded `vast::sim` markets
//! (default 10) with a sweep of 200 jobs, and prints a table (or JSON) with the median.
//!
//! By default ours is paced, market by market, to finish within the naive baseline's own
//! makespan there (`--deadline-h naive`): the targets ask for the least cost with a
//! makespan no worse than the baseline's, so the two are compared at equal makespan, as a user
//! who wants the sweep done no later than existing tools would do it runs `vasticlaude run
//! --finish-within`. `--deadline-h H` paces to a fixed H hours instead (40 is a deadline before
//! every market's naive makespan), and `--deadline-h 0` runs it unpaced.

use anyhow::{Context, bail};
use tests::bench::{Deadline, MarketResult, median, run_market};

struct Args {
    json: bool,
    markets: u64,
    jobs: usize,
    deadline: Deadline,
    only: Option<u64>,
}

/// The value after `flag`, parsed; `what` says what it must be.
fn value<T: std::str::FromStr>(
    it: &mut impl Iterator<Item = String>,
    flag: &str,
    what: &str,
) -> anyhow::Result<T> {
    let v = it.next().with_context(|| format!("{flag} needs {what}"))?;
    v.parse()
        .ok()
        .with_context(|| format!("{flag} must be {what}, got {v:?}"))
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        json: false,
        markets: 10,
        jobs: 200,
        deadline: Deadline::NaiveMakespan,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--json" => a.json = true,
            "--markets" => a.markets = value(&mut it, "--markets", "a positive integer")?,
            "--jobs" => a.jobs = value(&mut it, "--jobs", "a positive integer")?,
            "--market" => a.only = Some(value(&mut it, "--market", "a market seed")?),
            "--deadline-h" => {
                let what = "a non-negative number of hours or \"naive\"";
                let v: String = value(&mut it, "--deadline-h", what)?;
                a.deadline = if v == "naive" {
                    Deadline::NaiveMakespan
                } else {
                    match v.parse::<f64>() {
                        Ok(h) if h.is_finite() && h > 0.0 => Deadline::Hours(h),
                        Ok(0.0) => Deadline::Unpaced,
                        _ => bail!("--deadline-h must be {what}, got {v:?}"),
                    }
                };
            }
            "-h" | "--help" => {
                println!(
                    "usage: market-bench [--json] [--markets N | --market SEED] [--jobs N] [--deadline-h H|naive]"
                );
                std::process::exit(0);
            }
            other => bail!(
                "unknown argument {other:?} (expected --json, --markets N, --market SEED, --jobs N, --deadline-h H|naive)"
            ),
        }
    }
    if a.markets == 0 || a.jobs == 0 {
        bail!("--markets and --jobs must be at least 1");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = match args.only {
        Some(s) => vec![s],
        None => (1..=args.markets).collect(),
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(seeds.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { break };
                    let r = run_market(seed, args.jobs, args.deadline);
                    if !args.json {
                        eprintln!("market {seed} done");
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                }
            });
        }
    });
    let mut results: Vec<MarketResult> = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|r| r.seed);
    let med = |f: &dyn Fn(&MarketResult) -> f64| median(results.iter().map(f).collect());
    let summary = serde_json::json!({
        "markets": results.len(),
        "jobs_per_market": args.jobs,
        "ours_deadline": args.deadline,
        "median": {
            "ours_cost": med(&|r| r.ours.cost),
            "naive_cost": med(&|r| r.naive.cost),
            "lower_bound": med(&|r| r.lower_bound),
            "ours_over_lower_bound": med(&|r| r.ours_over_lower_bound),
            "ours_over_naive": med(&|r| r.ours_over_naive),
            "capacity_bound_at_our_makespan": med(&|r| r.capacity_bound_at_our_makespan),
            "ours_over_capacity_bound": med(&|r| r.ours_over_capacity_bound),
            "capacity_bound_at_naive_makespan": med(&|r| r.capacity_bound_at_naive_makespan),
            "capacity_bound_at_naive_makespan_over_lower_bound": med(&|r| r.capacity_bound_at_naive_makespan_over_lower_bound),
            "ours_cost_at_bids": med(&|r| r.ours.cost_at_bids),
            "ours_on_demand_over_its_bound": med(&|r| r.ours_on_demand_over_its_bound),
            "ours_at_bids_over_its_bound": med(&|r| r.ours_at_bids_over_its_bound),
            "ours_makespan_h": med(&|r| r.ours.makespan_h),
            "naive_makespan_h": med(&|r| r.naive.makespan_h),
            "makespan_ours_over_naive": med(&|r| r.makespan_ours_over_naive),
            "ours_lost_to_preemption": med(&|r| r.ours.lost_to_preemption),
            "naive_lost_to_preemption": med(&|r| r.naive.lost_to_preemption),
            "ours_instances": med(&|r| r.ours.instances as f64),
            "naive_instances": med(&|r| r.naive.instances as f64),
        },
        "targets": {
            "ours_over_lower_bound_at_most": 1.15,
            "ours_over_naive_at_most": 0.75,
            "makespan_ours_over_naive_at_most": 1.0,
        },
        "results": results,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6} {:>9}",
        "market",
        "ours $",
        "naive $",
        "bound $",
        "o/LB",
        "o/naive",
        "ours h",
        "naive h",
        "lost o $",
        "lost n $",
        "inst o",
        "inst n",
        "done o/n"
    );
    let row = |name: String,
               oc: f64,
               nc: f64,
               lb: f64,
               olb: f64,
               on: f64,
               oh: f64,
               nh: f64,
               lo: f64,
               ln: f64,
               io: f64,
               inn: f64,
               done: String| {
        println!(
            "{name:>6} {oc:>10.2} {nc:>10.2} {lb:>10.2} {olb:>7.3} {on:>7.3} {oh:>9.2} {nh:>9.2} {lo:>9.2} {ln:>9.2} {io:>6.0} {inn:>6.0} {done:>9}"
        );
    };
    for r in &results {
        row(
            r.seed.to_string(),
            r.ours.cost,
            r.naive.cost,
            r.lower_bound,
            r.ours_over_lower_bound,
            r.ours_over_naive,
            r.ours.makespan_h,
            r.naive.makespan_h,
            r.ours.lost_to_preemption,
            r.naive.lost_to_preemption,
            r.ours.instances as f64,
            r.naive.instances as f64,
            format!("{}/{}", r.ours.jobs_done, r.naive.jobs_done),
        );
    }
    let m = &summary["median"];
    let g = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    row(
        "median".into(),
        g("ours_cost"),
        g("naive_cost"),
        g("lower_bound"),
        g("ours_over_lower_bound"),
        g("ours_over_naive"),
        g("ours_makespan_h"),
        g("naive_makespan_h"),
        g("ours_lost_to_preemption"),
        g("naive_lost_to_preemption"),
        g("ours_instances"),
        g("naive_instances"),
        String::new(),
    );
    println!(
        "targets: ours/LB <= 1.15 (median {:.3}), ours/naive <= 0.75 (median {:.3}), makespan ours/naive <= 1 (median {:.3}); {} markets x {} jobs in {:.1} s",
        g("ours_over_lower_bound"),
        g("ours_over_naive"),
        g("makespan_ours_over_naive"),
        results.len(),
        args.jobs,
        started.elapsed().as_secs_f64()
    );
    println!(
        "availability-aware bound (machines listed at the start, shared by all jobs, each for at most the makespan): at our makespan median ${:.2}, ours/that {:.3}; at the naive makespan median ${:.2}, that/LB {:.3}",
        g("capacity_bound_at_our_makespan"),
        g("ours_over_capacity_bound"),
        g("capacity_bound_at_naive_makespan"),
        g("capacity_bound_at_naive_makespan_over_lower_bound"),
    );
    println!(
        "per pool, against its part of that bound at our makespan (medians): on demand {:.3}, at bids {:.3} (ours paid ${:.2} at bids)",
        g("ours_on_demand_over_its_bound"),
        g("ours_at_bids_over_its_bound"),
        g("ours_cost_at_bids"),
    );
    Ok(())
}
