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
    /// Compare each instance's ledger total with Vast's charges feed (gpu, disk, bwu, bwd) and
    /// show the drift per instance and in total. Vast rounds each item to 3 decimals.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Start of the window (same forms as `ledger report --since`; default 7d). Vast itemises
    /// charges by day, so use whole UTC days for a like-for-like comparison.
    #[arg(long)]
    pub since: Option<String>,
    /// End of the window (default now).
    #[arg(long)]
    pub until: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
        Command::Reconcile(a) => reconcile(a, ctx).await,
    }
}

/// Vast's charges as plain per-instance amounts, keyed by the ledger's instance key: the Vast
/// id itself, or the scheduler's label for that id (`instances.label`). Amounts come as f64
/// rounded to 3 decimals; their shortest decimal form is the amount Vast meant.
pub(crate) fn charges_to_ledger(
    charges: &[vast::types::Charge],
    labels: &BTreeMap<u64, String>,
) -> Vec<ledger::InstanceCharges> {
    let usd = |x: f64| {
        ledger::Usd(
            x.to_string()
                .parse::<rust_decimal::Decimal>()
                .unwrap_or_default(),
        )
    };
    charges
        .iter()
        .filter(|c| c.kind.as_deref().is_none_or(|k| k == "instance"))
        .filter_map(|c| {
            let id = c.instance_id()?;
            Some(ledger::InstanceCharges {
                instance: labels.get(&id).cloned().unwrap_or_else(|| id.to_string()),
                gpu: usd(c.item_amount("gpu")),
                disk: usd(c.item_amount("disk")),
                bwu: usd(c.item_amount("bwu")),
                bwd: usd(c.item_amount("bwd")),
            })
        })
        .collect()
}

/// `vast_id → label` from the scheduler's instances table (empty when it does not exist).
async fn instance_labels(l: &Ledger) -> BTreeMap<u64, String> {
    let db = l.connection();
    let stmt = Statement::from_string(
        db.get_database_backend(),
        "SELECT label, vast_id FROM instances WHERE vast_id IS NOT NULL",
    );
    let Ok(rows) = db.query_all_raw(stmt).await else {
        return BTreeMap::new();
    };
    rows.iter()
        .filter_map(|r| {
            let label = r.try_get::<String>("", "label").ok()?;
            let id = r.try_get::<i64>("", "vast_id").ok()?;
            Some((u64::try_from(id).ok()?, label))
        })
        .collect()
}

async fn reconcile(a: ReconcileArgs, ctx: &Context) -> anyhow::Result<()> {
    let now = now_ms();
    let since = match &a.since {
        Some(s) => parse_time("--since", s, now)?,
        None => now - 7 * 86_400_000,
    };
    let until = match &a.until {
        Some(s) => parse_time("--until", s, now)?,
        None => now,
    };
    if since >= until {
        return Err(UsageError(format!("--since {since} is not before --until {until}")).into());
    }
    let client = vast::client::VastClient::from_env()?;
    let l = open_ledger(ctx).await?;
    let charges = client
        .charges(since.div_euclid(1000), (until + 999).div_euclid(1000))
        .await
        .context("reading Vast's charges feed")?;
    let labels = instance_labels(&l).await;
    let vast_side = charges_to_ledger(&charges, &labels);
    let ledger_side = l
        .instance_totals(&ledger::EntryFilter {
            experiment: None,
            since_ms: Some(since),
            until_ms: Some(until),
        })
        .await
        .map_err(ledger_err)?;
    let r = ledger::reconcile(&ledger_side, &vast_side);
    if a.json {
        return print_json(&r);
    }
    // Drift is shown to the tenth of a cent: Vast's own rounding is half a mill per item.
    let mills = |u: ledger::Usd| {
        format!(
            "{}",
            u.0.round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
        )
    };
    let rows: Vec<Vec<String>> = r
        .instances
        .iter()
        .map(|d| {
            vec![
                d.instance.clone(),
                d.ledger.map_or_else(|| "-".into(), |c| mills(c.total())),
                d.vast.map_or_else(|| "-".into(), |c| mills(c.total())),
                mills(d.drift.compute),
                mills(d.drift.storage),
                mills(d.drift.bandwidth),
                mills(d.drift_total),
                if d.within_rounding { "yes" } else { "NO" }.into(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No instance charges in the ledger or from Vast in this window.");
    } else {
        print!(
            "{}",
            ledger::render_table(
                &[
                    "Instance",
                    "Ledger $",
                    "Vast $",
                    "Drift compute",
                    "Drift storage",
                    "Drift bandwidth",
                    "Drift total",
                    "Within rounding",
                ],
                &rows
            )
        );
    }
    println!(
        "Total: ledger {} vs Vast {}: drift {} ({})",
        mills(r.ledger_total),
        mills(r.vast_total),
        mills(r.drift_total),
        if r.all_within_rounding {
            "within Vast's 3-decimal rounding"
        } else {
            "beyond Vast's rounding; see the instances marked NO"
        }
    );
    Ok(())
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
    fn charges_map_to_ledger_keys() {
        let charges: Vec<vast::types::Charge> = serde_json::from_value(serde_json::json!([
            {"type": "instance", "source": "instance-42", "amount": 38.421, "metadata": {},
             "items": [{"type": "gpu", "amount": 37.344, "metadata": {}},
                       {"type": "disk", "amount": 1.057, "metadata": {}},
                       {"type": "bwu", "amount": 0.01, "metadata": {}},
                       {"type": "bwd", "amount": 0.01, "metadata": {}}]},
            {"type": "instance", "source": "instance-7", "amount": 1.0, "metadata": {},
             "items": [{"type": "gpu", "amount": 1.0, "metadata": {}}]},
            {"type": "volume", "source": "volume-9", "amount": 2.0, "metadata": {}, "items": []}
        ]))
        .unwrap();
        let labels = BTreeMap::from([(42u64, "vc-ws-3".to_string())]);
        let m = charges_to_ledger(&charges, &labels);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].instance, "vc-ws-3");
        assert_eq!(m[0].gpu.0.to_string(), "37.344");
        assert_eq!(m[0].as_breakdown().total().0.to_string(), "38.421");
        assert_eq!(m[1].instance, "7");
    }

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
