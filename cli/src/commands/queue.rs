//! `vasticlaude queue`: add jobs and sweeps, and manage the queue.
//!
//! The clap structs here are turned into `scheduler::queue` requests; every rule (validation,
//! duplicates, who may cancel what) lives in the scheduler crate so a team-shared PostgreSQL
//! queue enforces it for every client. Sweep syntax: `scheduler::queue::sweep`.

use std::path::PathBuf;

use anyhow::Context as _;
use prettytable::{Table, format, row};
use scheduler::clock::SystemClock;
use scheduler::queue::{
    self, AddRequest, CancelTarget, JobRef, ListFilter, QueueError, Requirements, sweep,
};
use scheduler::store::users::{self, Role};
use scheduler::store::{Interruptible, JobState, Store};

use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Queue a command, or a sweep of it (one job per parameter combination).
    ///
    /// Sweeps: `--sweep lr=0.1,0.01` (list), `seed=0..10` (0..9), `seed=0..=9`,
    /// `x=0..1:step:0.25`, `lr=1e-4..1e-1:log:4`, `x=0..1:lin:5`; repeated flags make the
    /// Cartesian product. `{key}` in the command is replaced by the value, which is also
    /// exported as the environment variable `key`.
    Add(Box<AddArgs>),
    /// List jobs.
    List {
        #[arg(long)]
        experiment: Option<String>,
        /// queued, placed, starting, running, interrupted, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one job (by id, or EXPERIMENT/NAME) with its attempts and history.
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel jobs (yours, or any if you are an admin).
    Cancel {
        /// Job ids or EXPERIMENT/NAME.
        #[arg(required_unless_present = "experiment", conflicts_with = "experiment")]
        jobs: Vec<String>,
        /// Cancel your jobs in this experiment (every job, for an admin).
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put a failed or cancelled job back in the queue.
    Retry {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a job's priority (higher runs first).
    Priority {
        job: String,
        #[arg(allow_negative_numbers = true)]
        priority: i32,
        #[arg(long)]
        json: bool,
    },
    /// Stop starting an experiment's queued jobs (running ones continue).
    Pause {
        #[arg(long)]
        experiment: String,
    },
    /// Start an experiment's queued jobs again.
    Resume {
        #[arg(long)]
        experiment: String,
    },
    /// Make a user admin or member (admins only; on a database without an admin, the first
    /// user to make themselves admin becomes one).
    SetRole {
        user: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Member,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InterruptibleArg {
    Auto,
    Never,
    Always,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Experiment to add the jobs to (created when new).
    #[arg(long, default_value = queue::DEFAULT_EXPERIMENT)]
    experiment: String,
    /// Offer query in the vastai query language, e.g. 'gpu_ram>=16 num_gpus=1'.
    #[arg(long)]
    gpu: Option<String>,
    /// GPUs per job.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Docker image.
    #[arg(long)]
    image: Option<String>,
    /// Disk in GB.
    #[arg(long)]
    disk: Option<u32>,
    /// Where the job writes checkpoints (pulled back, and resumed from after a preemption).
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// Whether the job may run on interruptible (bid) instances.
    #[arg(long, value_enum, default_value = "auto")]
    interruptible: InterruptibleArg,
    /// Highest price per hour, in dollars.
    #[arg(long)]
    max_dph: Option<String>,
    /// Estimated runtime on a reference GPU, e.g. 90m, 2h, 1h30m.
    #[arg(long)]
    est_runtime: Option<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Tries before a job is failed.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Environment variable K=V (repeatable; `{key}` placeholders allowed in V).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Sweep parameter KEY=VALUES (repeatable: Cartesian product).
    #[arg(long = "sweep", value_name = "KEY=VALUES")]
    sweep: Vec<String>,
    /// TOML sweep file with [grid], [random] and [fixed] sections.
    #[arg(long)]
    sweep_file: Option<PathBuf>,
    /// Draw N points (random search, or a random subset of a grid).
    #[arg(long)]
    sample: Option<usize>,
    /// Seed for --sample (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the jobs that would be queued; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
    /// Add jobs even if identical ones are already in the experiment.
    #[arg(long)]
    allow_duplicates: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Bad input becomes a [`UsageError`] (exit 2); everything else keeps its cause.
fn q(e: QueueError) -> anyhow::Error {
    if e.is_usage() {
        anyhow::Error::new(UsageError(e.to_string()))
    } else {
        anyhow::Error::new(e)
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Connects to the configured database and brings its schema up to date.
pub async fn open_store(ctx: &Context) -> anyhow::Result<Store> {
    let store = scheduler::store::connect(&ctx.effective_database_url()).await?;
    store.migrate().await?;
    Ok(store)
}

fn job_ref(s: &str) -> anyhow::Result<JobRef> {
    s.parse::<JobRef>().map_err(q)
}

impl AddArgs {
    fn into_request(self) -> anyhow::Result<AddRequest> {
        let mut spec = sweep::SweepSpec::default();
        for s in &self.sweep {
            spec.push_grid(sweep::parse_sweep_arg(s).map_err(|e| q(e.into()))?)
                .map_err(|e| q(e.into()))?;
        }
        if let Some(path) = &self.sweep_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read sweep file {}: {e}", path.display())))?;
            let file = sweep::parse_sweep_file(&text, &path.display().to_string())
                .map_err(|e| q(e.into()))?;
            spec.merge(file).map_err(|e| q(e.into()))?;
        }
        if let Some(n) = self.sample {
            spec.sample = Some(n);
        }
        if let Some(s) = self.seed {
            spec.seed = s;
        }
        let mut env = Vec::with_capacity(self.env.len());
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| usage(format!("invalid --env {kv:?}: expected K=V")))?;
            env.push((k.to_string(), v.to_string()));
        }
        let max_dph = self
            .max_dph
            .as_deref()
            .map(queue::parse_dollars)
            .transpose()
            .map_err(|e| {
                q(match e {
                    QueueError::Invalid { value, why, .. } => QueueError::Invalid {
                        field: "--max-dph",
                        value,
                        why,
                    },
                    other => other,
                })
            })?;
        let est_runtime_ms = self
            .est_runtime
            .as_deref()
            .map(queue::parse_duration)
            .transpose()
            .map_err(|e| {
                q(match e {
                    QueueError::Invalid { value, why, .. } => QueueError::Invalid {
                        field: "--est-runtime",
                        value,
                        why,
                    },
                    other => other,
                })
            })?;
        Ok(AddRequest {
            experiment: self.experiment,
            command: self.command,
            env,
            requirements: Requirements {
                gpu_query: self.gpu,
                gpus: self.gpus,
                image: self.image,
                disk_gb: self.disk,
                checkpoint_dir: self.checkpoint_dir,
                interruptible: match self.interruptible {
                    InterruptibleArg::Auto => Interruptible::Auto,
                    InterruptibleArg::Never => Interruptible::Never,
                    InterruptibleArg::Always => Interruptible::Always,
                },
                max_dph,
                est_runtime_ms,
            },
            priority: self.priority,
            max_attempts: self.max_attempts,
            sweep: spec,
            allow_duplicates: self.allow_duplicates,
        })
    }
}

pub async fn run(cmd: Command, ctx: &Context) -> anyhow::Result<()> {
    let clock = SystemClock;
    match cmd {
        Command::Add(args) => {
            let dry_run = args.dry_run;
            let json = args.json;
            let req = (*args).into_request()?;
            if dry_run {
                let planned = queue::plan_jobs(&req).map_err(q)?;
                if json {
                    return print_json(&serde_json::json!({
                        "dry_run": true,
                        "experiment": req.experiment,
                        "jobs": planned,
                    }));
                }
                let mut t = Table::new();
                t.set_format(*format::consts::FORMAT_CLEAN);
                t.set_titles(row!["name", "command"]);
                for p in &planned {
                    t.add_row(row![p.name, p.command_line]);
                }
                t.printstd();
                println!(
                    "dry run: {} job(s) would be queued in experiment {}; nothing was written",
                    planned.len(),
                    req.experiment
                );
                return Ok(());
            }
            let store = open_store(ctx).await?;
            let out = queue::add_jobs(&store, &req, &ctx.user, &clock)
                .await
                .map_err(q)?;
            if json {
                return print_json(&out);
            }
            if !out.added.is_empty() {
                println!(
                    "queued {} job(s) in experiment {} (ids {}..={})",
                    out.added.len(),
                    out.experiment,
                    out.added.first().copied().unwrap_or_default(),
                    out.added.last().copied().unwrap_or_default()
                );
            }
            if !out.skipped_duplicates.is_empty() {
                println!(
                    "skipped {} job(s) already in experiment {} with the same command, environment and requirements; pass --allow-duplicates to add them again",
                    out.skipped_duplicates.len(),
                    out.experiment
                );
            }
            Ok(())
        }
        Command::List {
            experiment,
            state,
            json,
        } => {
            let state = state
                .as_deref()
                .map(|s| {
                    s.parse::<JobState>()
                        .map_err(|e| usage(format!("invalid --state: {e}")))
                })
                .transpose()?;
            let store = open_store(ctx).await?;
            let jobs = queue::list(
                &store,
                &ListFilter {
                    experiment,
                    state,
                    ..Default::default()
                },
            )
            .await
            .map_err(q)?;
            if json {
                return print_json(&jobs);
            }
            if jobs.is_empty() {
                println!("no jobs");
                return Ok(());
            }
            let mut t = Table::new();
            t.set_format(*format::consts::FORMAT_CLEAN);
            t.set_titles(row![
                "id",
                "experiment",
                "name",
                "state",
                "owner",
                "pri",
                "tries",
                "command"
            ]);
            for j in &jobs {
                t.add_row(row![
                    j.id,
                    j.experiment,
                    j.name,
                    j.state,
                    j.owner,
                    j.priority,
                    format!("{}/{}", j.attempts, j.max_attempts),
                    truncate(&j.command_line, 60)
                ]);
            }
            t.printstd();
            Ok(())
        }
        Command::Show { job, json } => {
            let r = job_ref(&job)?;
            let store = open_store(ctx).await?;
            let d = queue::show(&store, &r).await.map_err(q)?;
            if json {
                return print_json(&d);
            }
            let j = &d.job;
            let mut t = Table::new();
            t.set_format(*format::consts::FORMAT_CLEAN);
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            t.add_row(row!["id", j.id]);
            t.add_row(row!["experiment", j.experiment]);
            t.add_row(row!["name", j.name]);
            t.add_row(row!["state", j.state]);
            t.add_row(row!["owner", j.owner]);
            t.add_row(row!["priority", j.priority]);
            t.add_row(row!["command", j.command_line]);
            t.add_row(row!["gpu", format!("{} x {}", j.gpus, opt(&j.gpu_query))]);
            t.add_row(row!["image", opt(&j.image)]);
            t.add_row(row!["max $/h", opt(&j.max_dph)]);
            t.add_row(row!["interruptible", j.interruptible]);
            t.add_row(row!["checkpoint dir", opt(&j.checkpoint_dir)]);
            t.add_row(row![
                "attempts",
                format!("{}/{}", j.attempts, j.max_attempts)
            ]);
            t.add_row(row!["last error", opt(&j.last_error)]);
            t.add_row(row!["created", time(j.created_at)]);
            t.printstd();
            if !d.attempts.is_empty() {
                println!("\nattempts:");
                for a in &d.attempts {
                    println!(
                        "  #{} fence {} instance {} {} {} → {}{}",
                        a.id,
                        a.fence,
                        a.instance_id.map_or_else(|| "-".into(), |i| i.to_string()),
                        a.state,
                        time(a.started_at),
                        a.ended_at.map_or_else(|| "…".into(), time),
                        a.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
                }
            }
            println!("\nhistory:");
            for e in &d.events {
                println!(
                    "  {} {} → {} by {}: {}",
                    time(e.at),
                    e.from_state.as_deref().unwrap_or("-"),
                    e.to_state,
                    e.actor,
                    e.reason
                );
            }
            Ok(())
        }
        Command::Cancel {
            jobs,
            experiment,
            json,
        } => {
            let target = match experiment {
                Some(e) => CancelTarget::Experiment(e),
                None => CancelTarget::Jobs(
                    jobs.iter()
                        .map(|s| job_ref(s))
                        .collect::<anyhow::Result<_>>()?,
                ),
            };
            let store = open_store(ctx).await?;
            let out = queue::cancel(&store, &ctx.user, &target, &clock)
                .await
                .map_err(q)?;
            if json {
                return print_json(&out);
            }
            println!("cancelled {} job(s)", out.cancelled.len());
            if !out.already_final.is_empty() {
                println!("{} job(s) had already finished", out.already_final.len());
            }
            if !out.skipped_not_owner.is_empty() {
                println!(
                    "left {} job(s) owned by others alone (only their owners or an admin may cancel them)",
                    out.skipped_not_owner.len()
                );
            }
            Ok(())
        }
        Command::Retry { job, json } => {
            let r = job_ref(&job)?;
            let store = open_store(ctx).await?;
            let v = queue::retry(&store, &ctx.user, &r, &clock)
                .await
                .map_err(q)?;
            if json {
                return print_json(&v);
            }
            println!("job {} ({}) is queued again", v.id, v.name);
            Ok(())
        }
        Command::Priority {
            job,
            priority,
            json,
        } => {
            let r = job_ref(&job)?;
            let store = open_store(ctx).await?;
            let v = queue::set_priority(&store, &ctx.user, &r, priority, &clock)
                .await
                .map_err(q)?;
            if json {
                return print_json(&v);
            }
            println!("job {} ({}) now has priority {}", v.id, v.name, v.priority);
            Ok(())
        }
        Command::Pause { experiment } => {
            let store = open_store(ctx).await?;
            queue::pause(&store, &ctx.user, &experiment, &clock)
                .await
                .map_err(q)?;
            println!("experiment {experiment} paused: its queued jobs will not start");
            Ok(())
        }
        Command::Resume { experiment } => {
            let store = open_store(ctx).await?;
            queue::resume(&store, &ctx.user, &experiment, &clock)
                .await
                .map_err(q)?;
            println!("experiment {experiment} resumed");
            Ok(())
        }
        Command::SetRole { user, role } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Member => Role::Member,
            };
            let store = open_store(ctx).await?;
            let now = scheduler::clock::Clock::now_ms(&clock);
            users::set_role(store.db(), &ctx.user, &user, role, now)
                .await
                .map_err(|e| q(e.into()))
                .with_context(|| format!("setting the role of {user}"))?;
            println!("{user} is now {}", role.as_str());
            Ok(())
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Epoch milliseconds as UTC time.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}
