//! `vasticlaude pull JOB | --experiment E`: where a job's outputs, checkpoints and logs are.
//!
//! The scheduler pulls them itself (checkpoints as they are written, everything when an attempt
//! ends) into `$VASTICLAUDE_HOME/experiments/<experiment>/jobs/<job>/`; this lists what arrived.

use scheduler::reconcile::engine::job_dir;

use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job id.
    pub job: Option<i64>,
    /// Every job of an experiment.
    #[arg(long)]
    pub experiment: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let state = super::journal::load(ctx).await?;
    let jobs: Vec<_> = match (&args.job, &args.experiment) {
        (Some(id), None) => vec![
            state
                .world
                .jobs
                .get(id)
                .ok_or_else(|| UsageError(format!("no job {id} in {}", ctx.home.display())))?,
        ],
        (None, Some(e)) => {
            let v: Vec<_> = state
                .world
                .jobs
                .values()
                .filter(|j| &j.experiment == e)
                .collect();
            if v.is_empty() {
                return Err(
                    UsageError(format!("no experiment {e:?} in {}", ctx.home.display())).into(),
                );
            }
            v
        }
        _ => return Err(UsageError("give a JOB id or --experiment NAME (not both)".into()).into()),
    };
    let rows: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            let d = job_dir(&ctx.home, &j.experiment, j.id);
            serde_json::json!({
                "job": j.id, "experiment": j.experiment, "state": j.state.as_str(), "folder": d,
                "outputs": d.join("outputs").is_dir(), "checkpoints": d.join("checkpoints").is_dir(),
                "logs": d.join("logs").is_dir(),
            })
        })
        .collect();
    if args.json {
        return print_json(&rows);
    }
    for r in rows {
        println!(
            "job {} ({}): {}{}",
            r["job"],
            r["state"].as_str().unwrap_or(""),
            r["folder"].as_str().unwrap_or(""),
            if r["outputs"].as_bool() == Some(true) {
                ""
            } else {
                "  (no outputs yet)"
            }
        );
    }
    Ok(())
}
