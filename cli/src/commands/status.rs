//! `vasticlaude status`: experiments, jobs by state, instances with $/h, spend against budget,
//! and what needs attention — read from the scheduler's journal, so it works while
//! `vasticlaude run` is running and after it stopped.

use std::collections::BTreeMap;

use scheduler::clock::{Clock, SystemClock};
use scheduler::reconcile::{InstState, JobState};

use crate::context::Context;
use crate::output::print_json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (stable schema) instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let state = super::journal::load(ctx).await?;
    let now = SystemClock.now_ms();
    let w = &state.world;
    let costs = state.book.summary(now);
    let mut experiments: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for j in w.jobs.values() {
        *experiments
            .entry(j.experiment.clone())
            .or_default()
            .entry(j.state.as_str())
            .or_default() += 1;
    }
    let instances: Vec<serde_json::Value> = w
        .instances
        .values()
        .filter(|i| i.state != InstState::Gone)
        .map(|i| {
            serde_json::json!({
                "label": i.label, "vast_id": i.vast_id, "state": i.state.as_str(),
                "since_ms": i.state_since_ms, "gpus": i.offer.gpus, "gpu_name": i.offer.gpu_name,
                "dph": i.offer.price().to_string(), "interruptible": i.offer.bid.is_some(),
                "jobs": w.jobs_on(i.key).map(|j| j.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut attention: Vec<String> = Vec::new();
    for j in w.jobs.values() {
        if j.state == JobState::Failed {
            attention.push(format!(
                "job {} ({}) failed: {}",
                j.id,
                j.name,
                j.reason.as_deref().unwrap_or("unknown reason")
            ));
        }
        if j.state == JobState::Queued
            && !j.budget_held
            && let Some(r) = j.reason.as_deref().filter(|r| r.starts_with("waiting"))
        {
            attention.push(format!("job {} ({}) is {r}", j.id, j.name));
        }
        if j.budget_held && j.state == JobState::Queued {
            attention.push(format!(
                "job {} ({}) is held: the budget of {} is spent",
                j.id, j.name, j.experiment
            ));
        }
    }
    for i in w.instances.values() {
        if matches!(i.state, InstState::Paused | InstState::Failed) {
            attention.push(format!(
                "instance {} is {}: {}",
                i.label,
                i.state.as_str(),
                i.reason.as_deref().unwrap_or("")
            ));
        }
    }
    let budgets: BTreeMap<String, serde_json::Value> = w
        .budgets
        .iter()
        .map(|(e, b)| {
            let spent = costs.per_experiment.get(e).copied().unwrap_or_default();
            (
                e.clone(),
                serde_json::json!({"limit": b.limit.to_string(), "spent": spent.round_dp(6).to_string(), "hard_stopped": b.hard_stopped}),
            )
        })
        .collect();
    if args.json {
        return print_json(&serde_json::json!({
            "workspace": w.workspace,
            "experiments": experiments,
            "instances": instances,
            "spend": {
                "per_experiment": costs.per_experiment.iter().map(|(k, v)| (k.clone(), v.round_dp(6).to_string())).collect::<BTreeMap<_, _>>(),
                "total": costs.experiments_total.round_dp(6).to_string(),
            },
            "budgets": budgets,
            "attention": attention,
        }));
    }
    if w.jobs.is_empty() && w.instances.is_empty() {
        println!(
            "nothing has run yet in {} (queue jobs, then `vasticlaude run`)",
            ctx.home.display()
        );
        return Ok(());
    }
    println!("experiments");
    for (e, states) in &experiments {
        let spent = costs.per_experiment.get(e).copied().unwrap_or_default();
        let budget = w
            .budgets
            .get(e)
            .map(|b| format!(" of ${}", b.limit))
            .unwrap_or_default();
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!(
            "  {e:<24} {:<40} ${}{budget}",
            states.join(", "),
            spent.round_dp(4)
        );
    }
    println!("instances");
    if instances.is_empty() {
        println!("  none");
    }
    for i in w.instances.values().filter(|i| i.state != InstState::Gone) {
        let jobs: Vec<String> = w.jobs_on(i.key).map(|j| j.id.to_string()).collect();
        println!(
            "  {:<16} {:<10} {}× {:<12} ${}/h{}  jobs [{}]",
            i.label,
            i.state.as_str(),
            i.offer.gpus,
            i.offer.gpu_name,
            i.offer.price(),
            if i.offer.bid.is_some() { " bid" } else { "" },
            jobs.join(", ")
        );
    }
    println!("spent: ${}", costs.experiments_total.round_dp(4));
    if !attention.is_empty() {
        println!("needs attention");
        for a in attention {
            println!("  {a}");
        }
    }
    Ok(())
}
