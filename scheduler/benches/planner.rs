//! Planner benchmark: 10,000 jobs × 20,000 offers (deterministic synthetic market from a seed),
//! timed on one thread. Target: under 200 ms per plan.
//!
//! Run: `cargo bench -p scheduler --bench planner`
//! Knobs (environment): PLANNER_BENCH_SEED (default 42), PLANNER_BENCH_JOBS (10000),
//! PLANNER_BENCH_OFFERS (20000), PLANNER_BENCH_RUNS (9).
//!
//! It also prints the plan's expected cost against the naive baseline and the lower bound on the
//! same market, per placed job, so a change that makes the planner faster but worse shows up.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use scheduler::planner::synth::{Shape, market};
use scheduler::planner::{
    DeferReason, HeldInstance, Pace, Plan, PlanInput, fmt_dollars, lower_bound, naive_baseline,
    plan,
};

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("error: {name}={v:?} is not a whole number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn time<T>(runs: u64, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut out = f(); // warm-up
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        out = black_box(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times[0], times[times.len() / 2], out)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn summary(name: &str, p: &Plan, lb_of: &BTreeMap<i64, i64>) {
    let placed = p.placed_job_ids();
    let lb: i64 = placed.iter().filter_map(|id| lb_of.get(id)).sum();
    let exp = p.expected_cost();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &p.deferred {
        let k = match d.reason {
            DeferReason::NoOfferFits { .. } => "no offer fits",
            DeferReason::BlacklistedOnly { .. } => "blacklisted only",
            DeferReason::OffersExhausted { .. } => "offers exhausted",
            DeferReason::OverMaxDph { .. } => "over max-dph",
            DeferReason::OverBudget { .. } => "over budget",
            DeferReason::MaxInstances { .. } => "max instances",
            DeferReason::MaxTotalDph { .. } => "max total dph",
            DeferReason::Paced { .. } => "paced",
            DeferReason::Invalid { .. } => "invalid",
        };
        *reasons.entry(k).or_default() += 1;
    }
    let per_job = |c: i64| {
        if placed.is_empty() {
            "-".to_string()
        } else {
            fmt_dollars(c / placed.len() as i64)
        }
    };
    println!(
        "  {name:<9} placed {:>5} (reuse {:>3}, rentals {:>5}), expected {} = {}/job, lower bound of those {} = {}/job, ratio {:.3}",
        placed.len(),
        p.reuse.len(),
        p.rent.len(),
        fmt_dollars(exp),
        per_job(exp),
        fmt_dollars(lb),
        per_job(lb),
        if lb > 0 {
            exp as f64 / lb as f64
        } else {
            f64::NAN
        },
    );
    println!("            deferred {:?}", reasons);
}

fn main() {
    let seed = env_or("PLANNER_BENCH_SEED", 42);
    let jobs = env_or("PLANNER_BENCH_JOBS", 10_000) as usize;
    let offers = env_or("PLANNER_BENCH_OFFERS", 20_000) as usize;
    let runs = env_or("PLANNER_BENCH_RUNS", 9);
    let shape = Shape {
        jobs,
        offers,
        classes: 40,
        experiments: 20,
        idle: jobs / 100,
    };

    let t = Instant::now();
    let input: PlanInput = market(seed, shape);
    let listed: usize = input.offers_by_class.values().map(Vec::len).sum();
    println!(
        "planner bench: seed {seed}, {jobs} jobs, {offers} offers ({listed} class-offer pairs, 40 classes), {} idle; generated in {}",
        input.idle.len(),
        ms(t.elapsed())
    );

    let (min, med, p) = time(runs, || plan(&input));
    println!(
        "plan:          min {}, median {} over {runs} runs (target < 200 ms)",
        ms(min),
        ms(med)
    );
    // The same plan paced to a deadline two days out (every idle instance held, nothing on it).
    let mut paced = input.clone();
    paced.pace = Some(Pace {
        deadline_ms: paced.now_ms + 48 * 3_600_000,
        held: paced
            .idle
            .iter()
            .map(|i| HeldInstance {
                gpu_name: i.gpu_name.clone(),
                dlperf: i.dlperf,
                num_gpus: i.num_gpus,
                dph: i.dph,
                interruptible: i.interruptible,
                work_left_ref_gpu_s: 0,
                classes: i.classes.clone(),
            })
            .collect(),
    });
    let (pmin, pmed, pp) = time(runs, || plan(&paced));
    println!(
        "plan, paced:   min {}, median {} ({} rentals instead of {})",
        ms(pmin),
        ms(pmed),
        pp.rent.len(),
        p.rent.len()
    );
    let (bmin, bmed, b) = time(runs, || naive_baseline(&input));
    println!("naive baseline: min {}, median {}", ms(bmin), ms(bmed));
    let (lmin, lmed, lb) = time(runs, || lower_bound(&input));
    println!("lower bound:   min {}, median {}", ms(lmin), ms(lmed));
    assert_eq!(p, plan(&input), "the plan must be deterministic");

    let lb_of: BTreeMap<i64, i64> = lb.per_job.iter().copied().collect();
    println!("same market (budgets, max-dph, blacklist and caps as generated):");
    summary("planner", &p, &lb_of);
    summary("baseline", &b, &lb_of);

    // Without budgets and caps both place (nearly) everything, so the totals compare directly.
    let mut open = input.clone();
    open.budgets.clear();
    open.config.max_total_dph = None;
    for j in &mut open.jobs {
        j.max_dph = None;
    }
    let p = plan(&open);
    let b = naive_baseline(&open);
    println!("same market without budgets and max-dph:");
    summary("planner", &p, &lb_of);
    summary("baseline", &b, &lb_of);
}
