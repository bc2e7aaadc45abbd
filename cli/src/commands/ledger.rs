//! `vasticlaude ledger report`: spend per experiment, job, instance or day, as a table, JSON or
//! CSV, or by email.
//!
//! Also home to what `budget` and `report` share: opening the ledger on the configured
//! database, reading job progress from the scheduler's tables, parsing times.

use std::collections::BTreeMap;

use anyhow::Context as _;
use ledger::sea_orm::{ConnectionTrait, DbBackend, Statement};
use ledger::{ExperimentProgress, GroupBy, Ledger, LedgerError, ReportQuery};

use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Spend report: jobs done, spent, budget, left, burn rate, forecast, cost per job, cost
    /// lost to preemption and failures, and the compute/storage/bandwidth split.
    Report(ReportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Experiment,
    Job,
    Instance,
    Day,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Only this experiment.
    #[arg(long, short = 'e')]
    pub experiment: Option<String>,
    /// Start of the window: RFC 3339 (2026-11-28T12:00:00Z), a date (2026-11-28, UTC), epoch
    /// milliseconds, or an age such as 90m, 24h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// End of the window (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// How to group the breakdown.
    #[arg(long, value_enum, default_value = "experiment")]
    pub by: By,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Send the report to this address instead of printing it (SMTP from
    /// VASTICLAUDE_SMTP_URL, sender VASTICLAUDE_EMAIL_FROM).
    #[arg(long, value_name = "ADDR")]
    pub email: Option<String>,
}

pub async fn run(cmd: Command, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        Command::Report(a) => report(a, ctx).await,
    }
}

async fn report(a: ReportArgs, ctx: &Context) -> anyhow::Result<()> {
    let now = now_ms();
    let since = a
        .since
        .as_deref()
        .map(|s| parse_time("--since", s, now))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse_time("--until", s, now))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(UsageError(format!("--since {s} is not before --until {u}")).into());
    }
    // Check the email setup before touching the database, so a typo fails fast.
    let mailer = match &a.email {
        Some(addr) => {
            ledger::email::parse_address(addr).map_err(|e| UsageError(e.to_string()))?;
            Some(ledger::Mailer::from_env().map_err(|e| UsageError(e.to_string()))?)
        }
        None => None,
    };
    let l = open_ledger(ctx).await?;
    let progress = read_progress(&l).await;
    let q = ReportQuery {
        experiment: a.experiment.clone(),
        since_ms: since,
        until_ms: until,
        by: match a.by {
            By::Experiment => GroupBy::Experiment,
            By::Job => GroupBy::Job,
            By::Instance => GroupBy::Instance,
            By::Day => GroupBy::Day,
        },
    };
    let r = l.report(&q, &progress, now).await.map_err(ledger_err)?;
    if let (Some(mailer), Some(addr)) = (mailer, &a.email) {
        mailer
            .send(
                std::slice::from_ref(addr),
                &r.email_subject(),
                &r.to_text(),
                &r.to_html(),
            )
            .await
            .context("sending the report")?;
        println!("report emailed to {addr}: {}", r.email_subject());
        return Ok(());
    }
    match if a.json { Format::Json } else { a.format } {
        Format::Json => print_json(&r)?,
        Format::Csv => print!("{}", r.to_csv()),
        Format::Table => print!("{}", r.to_text()),
    }
    Ok(())
}

/// Epoch milliseconds now (the CLI's wall clock).
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Opens the configured database (migrating it, ledger tables included) as a ledger.
pub(crate) async fn open_ledger(ctx: &Context) -> anyhow::Result<Ledger> {
    let store = scheduler::store::connect(&ctx.effective_database_url()).await?;
    store.migrate().await?;
    Ok(Ledger::new(store.db().clone()))
}

/// Bad input from the ledger becomes a usage error (exit 2); the rest stays as it is.
pub(crate) fn ledger_err(e: LedgerError) -> anyhow::Error {
    match &e {
        LedgerError::Invalid { .. }
        | LedgerError::Money(_)
        | LedgerError::Email(ledger::EmailError::BadAddress { .. })
        | LedgerError::Email(ledger::EmailError::BadUrl(_)) => UsageError(e.to_string()).into(),
        _ => e.into(),
    }
}

/// Jobs done/total per experiment from the scheduler's `experiments`/`jobs` tables; empty when
/// they do not exist (a database only the ledger has touched).
pub(crate) async fn read_progress(l: &Ledger) -> Vec<ExperimentProgress> {
    let db = l.connection();
    let sql = "SELECT e.name AS experiment, \
        CAST(COUNT(j.id) AS BIGINT) AS total, \
        CAST(COALESCE(SUM(CASE WHEN j.state = 'succeeded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS done, \
        CAST(COALESCE(SUM(CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT) AS failed, \
        CAST(COALESCE(SUM(CASE WHEN j.state IN ('starting', 'running') THEN 1 ELSE 0 END), 0) AS BIGINT) AS running, \
        CAST(COALESCE(SUM(CASE WHEN j.state = 'cancelled' THEN 1 ELSE 0 END), 0) AS BIGINT) AS cancelled \
        FROM experiments e LEFT JOIN jobs j ON j.experiment_id = e.id GROUP BY e.name";
    let backend: DbBackend = db.get_database_backend();
    let rows = match db.query_all_raw(Statement::from_string(backend, sql)).await {
        Ok(rows) => rows,
        Err(_) => return Vec::new(),
    };
    let mut out: BTreeMap<String, ExperimentProgress> = BTreeMap::new();
    for r in rows {
        let get = |c: &str| r.try_get::<i64>("", c).unwrap_or(0).max(0) as u64;
        let Ok(name) = r.try_get::<String>("", "experiment") else {
            continue;
        };
        out.insert(
            name.clone(),
            ExperimentProgress {
                experiment: name,
                // Cancelled jobs are not part of the work to finish.
                jobs_total: get("total").saturating_sub(get("cancelled")),
                jobs_done: get("done"),
                jobs_failed: get("failed"),
                jobs_running: get("running"),
            },
        );
    }
    out.into_values().collect()
}

/// Parses a time for `flag`: RFC 3339, a UTC date, epoch milliseconds, or an age (`90m`,
/// `24h`, `7d`, `30s`) before `now`.
pub(crate) fn parse_time(flag: &str, s: &str, now: i64) -> anyhow::Result<i64> {
    let t = s.trim();
    let bad = || {
        UsageError(format!(
            "{flag} {s:?} is not a time: use 2026-11-28T12:00:00Z, 2026-11-28, epoch milliseconds, or an age like 24h or 7d"
        ))
    };
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|dt| dt.and_utc().timestamp_millis())
            .ok_or_else(|| bad().into());
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let per = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad().into()),
    };
    Ok(now - n.saturating_mul(per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_time("--since", "24h", now).unwrap(), now - 86_400_000);
        assert_eq!(
            parse_time("--since", "2026-11-28", now).unwrap(),
            parse_time("--since", "2026-11-28T00:00:00Z", now).unwrap()
        );
        assert_eq!(parse_time("--since", "1234", now).unwrap(), 1234);
        let err = parse_time("--since", "yesterday", now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--since") && err.contains("yesterday"),
            "{err}"
        );
    }
}
