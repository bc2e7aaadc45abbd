//! `vasticlaude report`: scheduled email reports and `report tick`, which sends whatever is
//! due (reports and budget alerts), each exactly once.

use crate::commands::ledger::{ledger_err, now_ms, open_ledger, read_progress};
use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Report schedules (cron, UTC).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Send every report that is due now and every new budget alert.
    Tick(TickArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: `report schedule add '0 9 * * 1-5' --email ops@example.com`.
    /// Five fields (min hour day month weekday) or six with seconds first; UTC.
    Add(AddArgs),
    /// List schedules and when each fires next.
    List(ListArgs),
    /// Remove a schedule by id.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The cron expression (quote it).
    pub cron: String,
    /// Where to send the report.
    #[arg(long, value_name = "ADDR")]
    pub email: String,
    /// Only this experiment.
    #[arg(long, short = 'e')]
    pub experiment: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    pub id: i64,
}

#[derive(Debug, clap::Args)]
pub struct TickArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: Command, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        Command::Schedule(ScheduleCommand::Add(a)) => add(a, ctx).await,
        Command::Schedule(ScheduleCommand::List(a)) => list(a, ctx).await,
        Command::Schedule(ScheduleCommand::Remove(a)) => remove(a, ctx).await,
        Command::Tick(a) => tick(a, ctx).await,
    }
}

fn fmt_ms(ms: i64) -> String {
    if ms == i64::MAX {
        return "never".into();
    }
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

async fn add(a: AddArgs, ctx: &Context) -> anyhow::Result<()> {
    // Validate before opening the database.
    ledger::CronExpr::parse(&a.cron).map_err(ledger_err)?;
    ledger::email::parse_address(&a.email).map_err(|e| UsageError(e.to_string()))?;
    let l = open_ledger(ctx).await?;
    let s = l
        .add_schedule(&a.cron, &a.email, a.experiment.as_deref(), now_ms())
        .await
        .map_err(ledger_err)?;
    if a.json {
        return print_json(&s);
    }
    println!(
        "schedule {} added: '{}' to {}{}; next at {}",
        s.id,
        s.cron,
        s.email,
        s.experiment
            .as_deref()
            .map(|e| format!(" (experiment {e})"))
            .unwrap_or_default(),
        fmt_ms(s.next_fire_ms)
    );
    Ok(())
}

async fn list(a: ListArgs, ctx: &Context) -> anyhow::Result<()> {
    let l = open_ledger(ctx).await?;
    let schedules = l.schedules().await.map_err(ledger_err)?;
    if a.json {
        return print_json(&schedules);
    }
    if schedules.is_empty() {
        println!(
            "No report schedules. Add one with: vasticlaude report schedule add '0 9 * * *' --email ADDR"
        );
        return Ok(());
    }
    let firings = l.firings(None).await.map_err(ledger_err)?;
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            let last = firings.iter().rev().find(|f| f.schedule_id == s.id);
            vec![
                s.id.to_string(),
                s.cron.clone(),
                s.email.clone(),
                s.experiment.clone().unwrap_or_else(|| "(all)".into()),
                fmt_ms(s.next_fire_ms),
                match last {
                    None => "-".into(),
                    Some(f) => match (&f.sent_ms, &f.error) {
                        (Some(t), _) => format!("sent {}", fmt_ms(*t)),
                        (None, Some(e)) => format!("failed: {e}"),
                        (None, None) => format!("claimed {}, not confirmed", fmt_ms(f.claimed_ms)),
                    },
                },
            ]
        })
        .collect();
    print!(
        "{}",
        ledger::render_table(
            &["Id", "Cron (UTC)", "Email", "Experiment", "Next", "Last"],
            &rows
        )
    );
    Ok(())
}

async fn remove(a: RemoveArgs, ctx: &Context) -> anyhow::Result<()> {
    let l = open_ledger(ctx).await?;
    l.remove_schedule(a.id).await.map_err(ledger_err)?;
    println!("schedule {} removed", a.id);
    Ok(())
}

async fn tick(a: TickArgs, ctx: &Context) -> anyhow::Result<()> {
    let mailer = ledger::Mailer::from_env().map_err(|e| UsageError(e.to_string()))?;
    let l = open_ledger(ctx).await?;
    let progress = read_progress(&l).await;
    let out = l
        .tick(&mailer, &progress, now_ms())
        .await
        .map_err(ledger_err)?;
    if a.json {
        return print_json(&out);
    }
    if out.reports.is_empty() && out.alerts.is_empty() {
        println!("nothing due");
    }
    let mut failed = 0;
    for (kind, o) in out
        .reports
        .iter()
        .map(|o| ("report", o))
        .chain(out.alerts.iter().map(|o| ("alert", o)))
    {
        match &o.error {
            None => println!("sent {kind} to {}: {}", o.to.join(", "), o.subject),
            Some(e) => {
                failed += 1;
                println!("{kind} not sent ({}): {e}", o.subject);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} email(s) could not be sent (recorded; they will not be retried)");
    }
    Ok(())
}
