//! `vasticlaude demo`: the whole product in under a minute, with nothing to set up.
//!
//! In a fresh temporary home it starts the simulated Vast.ai market, queues a small sweep of a
//! real (tiny, resumable) training script, and runs the scheduler against the simulator with
//! faults — a host that dies while booting and an outbid instance — until the queue drains.
//! Then it prints the cost report and where the outputs are. Exit 0 only when every job
//! succeeded and no instance is left.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context as _;
use scheduler::reconcile::simrun::{SimRunOptions, run_demo};

use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of jobs in the sweep.
    #[arg(long, default_value_t = 6)]
    pub jobs: usize,
    /// Seed of the simulated market.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the outcome as JSON (stable schema) instead of a report.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, _ctx: &Context) -> anyhow::Result<()> {
    if args.jobs == 0 || args.jobs > 40 {
        return Err(UsageError(format!(
            "--jobs must be between 1 and 40, got {}",
            args.jobs
        ))
        .into());
    }
    let agent = crate::context::agent_binary(true)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let home =
        std::env::temp_dir().join(format!("vasticlaude-demo-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let opts = SimRunOptions::fast(home.clone(), args.seed, agent);
    let interactive = std::io::stderr().is_terminal();
    let bar = if interactive {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(120));
        pb.set_message(format!(
            "demo: {} jobs on the simulated market (seed {})",
            args.jobs, args.seed
        ));
        Some(pb)
    } else {
        None
    };
    let quiet = args.json && !interactive;
    let b2 = bar.clone();
    let outcome = run_demo(opts, args.jobs, move |line| {
        if let Some(pb) = &b2 {
            pb.println(format!("  {line}"));
        } else if !quiet {
            eprintln!("  {line}");
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("demo could not start: {e}"))?;
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if args.json {
        print_json(&serde_json::json!({
            "ok": outcome.ok,
            "home": home,
            "wall_s": (outcome.wall_s * 10.0).round() / 10.0,
            "jobs": {
                "total": outcome.jobs_total,
                "succeeded": outcome.jobs_succeeded,
                "failed": outcome.jobs_failed,
                "queued": outcome.jobs_queued,
            },
            "all_jobs_succeeded": outcome.jobs_succeeded == outcome.jobs_total,
            "preemptions_recovered": outcome.preemptions_recovered,
            "failed_boots": outcome.failed_boots,
            "instances_left": outcome.instances_left,
            "costs": {
                "per_experiment": outcome.costs.per_experiment,
                "per_instance": outcome.costs.per_instance,
                "experiments_total": outcome.costs.experiments_total,
                "instances_total": outcome.costs.instances_total,
                "per_experiment_sum_equals_per_instance_sum": outcome.per_experiment_sum_equals_per_instance_sum,
                "lost_to_interruptions": outcome.costs.lost,
                "ledger_total": outcome.ledger_total,
                "market_charged_total": outcome.market_charged_total,
                "market_per_instance": outcome.market_per_instance,
            },
            "stats": outcome.stats,
            "outputs": outcome.outputs,
            "stopped_early": outcome.stopped_early,
        }))?;
    } else {
        println!();
        println!(
            "demo finished in {:.1} s (home {})",
            outcome.wall_s,
            home.display()
        );
        println!(
            "jobs: {} succeeded, {} failed, {} queued of {}",
            outcome.jobs_succeeded, outcome.jobs_failed, outcome.jobs_queued, outcome.jobs_total
        );
        println!(
            "faults survived: {} failed boot(s); {} job(s) finished after a preemption",
            outcome.failed_boots, outcome.preemptions_recovered
        );
        println!("instances left on the account: {}", outcome.instances_left);
        println!();
        println!("cost report");
        for (e, c) in &outcome.costs.per_experiment {
            let lost = outcome.costs.lost.get(e).copied().unwrap_or_default();
            println!(
                "  experiment {e:<20} ${:.6}  (lost to interruptions ${:.6})",
                c, lost
            );
        }
        for (i, c) in &outcome.costs.per_instance {
            println!("  instance   {i:<20} ${c:.6}");
        }
        println!(
            "  total by experiment ${} = total by instance ${}: {}",
            outcome.costs.experiments_total,
            outcome.costs.instances_total,
            if outcome.per_experiment_sum_equals_per_instance_sum {
                "exact"
            } else {
                "MISMATCH"
            }
        );
        println!(
            "  stored in the ledger: ${}",
            outcome.ledger_total.round_dp(9)
        );
        println!(
            "  the market's own charges: ${}",
            outcome.market_charged_total.round_dp(6)
        );
        println!();
        println!(
            "outputs, checkpoints and logs: {}",
            outcome.outputs.display()
        );
    }
    if !outcome.ok {
        anyhow::bail!(
            "demo failed: {} of {} jobs succeeded, {} instance(s) left{}",
            outcome.jobs_succeeded,
            outcome.jobs_total,
            outcome.instances_left,
            outcome
                .stopped_early
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
