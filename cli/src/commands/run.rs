//! `vasticlaude run`: the scheduler loop.
//!
//! Claims queued jobs from the store (with the queue's fencing), hands them to the engine,
//! and mirrors every state change back to the store (jobs through `placed → starting →
//! running → succeeded|failed`, instances, attempts, events). The engine's journal is a row in the same
//! database (SQLite or PostgreSQL); a restart resumes from it, adopting what is ours on
//! the account and destroying orphans. Ctrl-C saves a consistent journal and, with
//! `--teardown`, destroys what it rented.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rust_decimal::Decimal;
use scheduler::clock::{SharedClock, SystemClock};
use scheduler::market::SharedMarket;
use scheduler::market::VastMarket;
use scheduler::market::sim::SimMarket;
use scheduler::reconcile::engine::{Engine, EngineConfig, write_atomic};
use scheduler::reconcile::mirror::StoreMirror;
use scheduler::reconcile::runner::SshKeys;
use scheduler::reconcile::{
    AgentRunner, AgentRunnerOptions, DbJournal, JobReq, JobState, JobView, Journal,
};

use crate::context::Context;
use crate::output::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One reconcile pass, then exit.
    #[arg(long)]
    pub once: bool,
    /// Where to rent: the real Vast.ai API, or the built-in simulator.
    #[arg(long, default_value = "vast", value_parser = ["vast", "sim"])]
    pub provider: String,
    /// Seed of the simulated market (`--provider sim`).
    #[arg(long, default_value_t = 1)]
    pub sim_seed: u64,
    /// Most instances at once.
    #[arg(long, default_value_t = 8)]
    pub max_instances: usize,
    /// Most $/h for all instances together.
    #[arg(long)]
    pub max_dph: Option<String>,
    /// Destroy everything rented when stopping (Ctrl-C) or when done.
    #[arg(long)]
    pub teardown: bool,
    /// Finish the queue within this long (e.g. 36h, 2d) on the cheapest capacity that can,
    /// instead of renting for every queued job at once; counted from this start of `run`.
    #[arg(long, value_name = "DURATION", conflicts_with = "finish_by")]
    pub finish_within: Option<String>,
    /// Like --finish-within, with a fixed time (RFC 3339, e.g. 2026-12-01T09:00:00Z): a
    /// restarted `run` keeps the same deadline.
    #[arg(long, value_name = "TIME")]
    pub finish_by: Option<String>,
}

fn convert(j: &scheduler::store::entity::job::Model, experiment: &str) -> JobView {
    let command: Vec<String> = serde_json::from_str(&j.command).unwrap_or_default();
    let env: BTreeMap<String, String> = serde_json::from_str(&j.env).unwrap_or_default();
    let mut view = JobView::queued(
        j.id,
        experiment,
        j.name.clone(),
        scheduler::queue::shell_join(&command),
        JobReq {
            gpus: u32::try_from(j.gpus).unwrap_or(1).max(1),
            gpu_name: None,
            min_gpu_ram_gb: None,
            disk_gb: f64::from(j.disk_gb.unwrap_or(20)),
            image: j
                .image
                .clone()
                .unwrap_or_else(|| "pytorch/pytorch:latest".into()),
            max_dph: j.max_dph_nusd.map(scheduler::store::decimal_from_nusd),
            interruptible: j.interruptible != "never"
                && (j.interruptible == "always" || j.checkpoint_dir.is_some()),
            checkpoints: j.checkpoint_dir.is_some(),
            est_runtime_s: u64::try_from(j.est_runtime_ms.unwrap_or(3_600_000) / 1000)
                .unwrap_or(3600),
        },
    );
    view.env = env;
    view.max_attempts = u32::try_from(j.max_attempts).unwrap_or(3).max(1);
    view
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let max_dph = match &args.max_dph {
        Some(s) => Some(
            Decimal::from_str(s.trim_start_matches('$'))
                .ok()
                .filter(|d| *d > Decimal::ZERO)
                .ok_or_else(|| {
                    UsageError(format!(
                        "--max-dph must be a positive number of $/h, got {s:?}"
                    ))
                })?,
        ),
        None => None,
    };
    if args.max_instances == 0 {
        return Err(UsageError("--max-instances must be at least 1".into()).into());
    }
    let finish_by_ms = match &args.finish_by {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    UsageError(format!(
                        "--finish-by must be a time such as 2026-12-01T09:00:00Z, got {s:?}: {e}"
                    ))
                })?,
        ),
        None => None,
    };
    let finish_within_ms = match &args.finish_within {
        Some(s) => Some(
            scheduler::queue::parse_duration(s)
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    UsageError(format!(
                        "--finish-within must be a positive duration such as 36h or 2d, got {s:?}"
                    ))
                })?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&ctx.home)
        .with_context(|| format!("cannot create {}", ctx.home.display()))?;
    let store = scheduler::store::connect(&ctx.effective_database_url()).await?;
    store.migrate().await?;
    let clock: SharedClock = Arc::new(SystemClock);
    let agent = worker_agent::locate_agent_binary().ok_or_else(|| {
        anyhow::anyhow!("cannot find the vasticlaude-agent binary (set VASTICLAUDE_AGENT or run scripts/build-agent)")
    })?;
    // Our own key pair, never the user's.
    let key_path = ctx.home.join("ssh").join("id_ed25519");
    scheduler::transport::ssh::ensure_keypair(&key_path).await?;
    let pubkey = std::fs::read_to_string(key_path.with_extension("pub")).ok();
    let (market, sim): (SharedMarket, Option<SimMarket>) = match args.provider.as_str() {
        "sim" => {
            // The in-process market does not outlive this process: what an earlier run left
            // in its folders is killed (as the market itself would have) and removed.
            let root = ctx.home.join("sim");
            clean_old_sim(&root);
            let mut cfg = vast::sim::SimConfig::with_seed(args.sim_seed);
            cfg.start_ms = Some(clock.now_ms());
            cfg.root_dir = Some(root);
            cfg.boot = vast::sim::BootTimes::fast();
            let s = SimMarket::new(vast::sim::Market::new(cfg));
            (Arc::new(s.clone()), Some(s))
        }
        _ => (
            Arc::new(VastMarket::new(vast::client::VastClient::from_env()?)),
            None,
        ),
    };
    let runner = AgentRunner::start(
        AgentRunnerOptions {
            agent_binary: agent,
            heartbeat_interval_ms: 10_000,
            dead_man_timeout_ms: 30 * 60 * 1000,
            ssh: Some(SshKeys {
                key_path: key_path.clone(),
                state_root: ctx.home.join("ssh").join("hosts"),
            }),
            code_dir: None,
            listen: "127.0.0.1:0".parse()?,
        },
        clock.clone(),
    )
    .await?;
    let mut cfg = EngineConfig::new(workspace(ctx), ctx.home.clone());
    cfg.reconcile.max_instances = args.max_instances;
    cfg.reconcile.max_total_dph = max_dph;
    cfg.reconcile.deadline_ms =
        finish_by_ms.or(finish_within_ms.map(|ms| clock.now_ms().saturating_add(ms)));
    cfg.ssh_public_key = pubkey;
    cfg.report_to = std::env::var("VASTICLAUDE_REPORT_TO")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if sim.is_some() {
        cfg.reconcile.heartbeat_interval_ms = 10_000;
        cfg.reconcile.idle_timeout_ms = 10_000;
    }
    let journal: Arc<dyn Journal> =
        Arc::new(DbJournal::open(store.clone(), &workspace(ctx)).await?);
    let fences_path = ctx.home.join("engine").join("store_fences.json");
    let mut fences: BTreeMap<i64, i64> = std::fs::read(&fences_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // Every state change of the engine shows in the store (jobs, instances, attempts,
    // events); the journal stays the source of truth and the mirror catches up from it.
    let mut mirror = StoreMirror::new(store.clone());
    for (job, fence) in &fences {
        mirror.set_fence(*job, *fence);
    }
    let mut engine = Engine::new(cfg, market, runner, journal)
        .await?
        .with_ledger(ledger::Ledger::new(store.db().clone()))
        .with_mirror(mirror);
    let owner = format!("vasticlaude-run-{}", std::process::id());
    let interactive = std::io::stderr().is_terminal();
    let bar = interactive.then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(150));
        pb
    });
    loop {
        // New work from the queue, claimed under a long lease (the engine owns it now).
        let claimed =
            scheduler::queue::claim::claim(&store, 100, &owner, 7 * 24 * 3_600_000, &*clock)
                .await?;
        if !claimed.is_empty() {
            let names = experiment_names(&store).await?;
            let mut jobs = Vec::new();
            for c in &claimed {
                let exp = names
                    .get(&c.job.experiment_id)
                    .cloned()
                    .unwrap_or_else(|| c.job.experiment_id.to_string());
                fences.insert(c.job.id, c.fence);
                if let Some(m) = engine.mirror_mut() {
                    m.set_fence(c.job.id, c.fence);
                }
                jobs.push(convert(&c.job, &exp));
            }
            write_atomic(&fences_path, &serde_json::to_vec(&fences)?)?;
            engine.add_jobs(jobs).await?;
        }
        let now = clock.now_ms();
        let step = engine.step(now).await?;
        for e in engine.drain_events() {
            let line = format!("{}: {}", e.kind, e.detail);
            match &bar {
                Some(pb) => pb.println(line),
                // Structured logs when not on a terminal: one JSON object per line.
                None => eprintln!(
                    "{}",
                    serde_json::json!({"at_ms": e.at_ms, "kind": e.kind, "detail": e.detail})
                ),
            }
        }
        for r in engine.drain_reports() {
            let line = format!(
                "experiment {} finished: {:?}, cost ${} (lost to interruptions ${}); outputs in {}",
                r.experiment,
                r.jobs,
                r.cost.round_dp(4),
                r.lost_to_interruptions.round_dp(4),
                r.folder.display()
            );
            match &bar {
                Some(pb) => pb.println(line),
                None => println!("{line}"),
            }
        }
        if let Some(pb) = &bar {
            let w = engine.world();
            let count = |s: JobState| w.jobs.values().filter(|j| j.state == s).count();
            pb.set_message(format!(
                "{} running, {} queued, {} done, {} instance(s), ${} spent",
                count(JobState::Running) + count(JobState::Starting),
                count(JobState::Queued) + count(JobState::Placed),
                count(JobState::Succeeded) + count(JobState::Failed),
                w.instances.values().filter(|i| i.state.is_live()).count(),
                engine.costs(now).experiments_total.round_dp(4)
            ));
        }
        if args.once || (step.drained && claimed.is_empty() && sim.is_some()) {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                if let Some(pb) = &bar { pb.finish_and_clear(); }
                eprintln!("stopping: the journal is saved");
                if args.teardown {
                    let n = engine.teardown(clock.now_ms()).await.map_err(|e| anyhow::anyhow!(e))?;
                    eprintln!("destroyed {n} instance(s)");
                }
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    if args.teardown {
        let n = engine
            .teardown(clock.now_ms())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        eprintln!("destroyed {n} instance(s)");
    }
    Ok(())
}

async fn experiment_names(
    store: &scheduler::store::Store,
) -> anyhow::Result<BTreeMap<i64, String>> {
    Ok(scheduler::queue::list_experiments(store)
        .await?
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect())
}

/// Kill the process groups an earlier simulator registered (`<root>/instances/*/pids/<pgid>`)
/// and remove its folders.
fn clean_old_sim(root: &std::path::Path) {
    let Ok(instances) = std::fs::read_dir(root.join("instances")) else {
        return;
    };
    for inst in instances.flatten() {
        let Ok(pids) = std::fs::read_dir(inst.path().join("pids")) else {
            continue;
        };
        for p in pids.flatten() {
            if let Ok(pgid) = p.file_name().to_string_lossy().parse::<i32>()
                && pgid > 1
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

/// The workspace name in labels: `$VASTICLAUDE_WORKSPACE`, else the user.
pub fn workspace(ctx: &Context) -> String {
    std::env::var("VASTICLAUDE_WORKSPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ctx.user.clone())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                'x'
            }
        })
        .collect()
}
