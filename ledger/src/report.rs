//! Spend reports: per-experiment progress and money, grouped breakdowns, and their renderings
//! (terminal table, plain text, HTML, CSV; JSON via serde).
//!
//! Jobs done/total live in the scheduler's tables, which the ledger must not read, so the
//! caller passes [`ExperimentProgress`]. All amounts in a [`Report`] are exact; the renderings
//! round half away from zero to cents, and JSON/CSV carry the exact decimals.
//!
//! Definitions:
//! - *spent*: entries whose interval ends in the report window `(since, until]`;
//! - *left*: budget − all-time spent − open reservations;
//! - *burn rate now*: what accrued over the last hour before `min(now, until)`, prorated by
//!   each entry's overlap with that hour, per hour;
//! - *cost per completed job*: all-time spent ÷ jobs done (overhead and lost work included);
//! - *forecast*: all-time spent + remaining jobs × cost per completed job; the time to finish
//!   is that remaining cost ÷ the burn rate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::accrual::{Component, CostBreakdown};
use crate::attribution::Reason;
use crate::email::html_escape;
use crate::money::{NanoUsd, Usd};
use crate::store::{BudgetScope, EntryFilter, Ledger, LedgerError, filter_sql, get, query};

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// How to group the breakdown table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Experiment,
    Job,
    Instance,
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Experiment => "experiment",
            GroupBy::Job => "job",
            GroupBy::Instance => "instance",
            GroupBy::Day => "day",
        }
    }
}

impl FromStr for GroupBy {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "experiment" => Ok(GroupBy::Experiment),
            "job" => Ok(GroupBy::Job),
            "instance" => Ok(GroupBy::Instance),
            "day" => Ok(GroupBy::Day),
            other => Err(LedgerError::Invalid {
                what: "grouping",
                value: other.to_string(),
                reason: "expected experiment, job, instance or day".into(),
            }),
        }
    }
}

/// What to report on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportQuery {
    pub experiment: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub by: GroupBy,
}

/// Job counts of one experiment, from the caller (the scheduler's jobs table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentProgress {
    pub experiment: String,
    pub jobs_total: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub jobs_running: u64,
}

/// One experiment's line in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    pub experiment: String,
    pub jobs_total: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub jobs_running: u64,
    /// In the report window.
    pub spent: Usd,
    /// All time (what the budget counts).
    pub spent_all_time: Usd,
    pub budget: Option<Usd>,
    pub budget_hard: Option<bool>,
    pub left: Option<Usd>,
    pub burn_rate_per_hour: Usd,
    pub cost_per_completed_job: Option<Usd>,
    pub forecast_total: Option<Usd>,
    /// Hours to finish at the current burn rate (2 decimals).
    pub forecast_hours: Option<Decimal>,
    pub lost_preemption: Usd,
    pub lost_failure: Usd,
    pub overhead: Usd,
    pub split: CostBreakdown,
}

/// One line of the grouped breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    pub key: String,
    pub cost: CostBreakdown,
    pub total: Usd,
}

/// A spend report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub generated_ms: i64,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub experiment_filter: Option<String>,
    pub by: GroupBy,
    pub currency: String,
    pub experiments: Vec<ExperimentSummary>,
    pub groups: Vec<GroupRow>,
    pub total: CostBreakdown,
    pub grand_total: Usd,
}

#[derive(Default)]
struct Agg {
    split: CostBreakdown,
    by_reason: BTreeMap<Reason, Usd>,
}

impl Ledger {
    /// Builds a report at `now_ms`.
    pub async fn report(
        &self,
        q: &ReportQuery,
        progress: &[ExperimentProgress],
        now_ms: i64,
    ) -> Result<Report, LedgerError> {
        const OP: &str = "building a report";
        if let (Some(s), Some(u)) = (q.since_ms, q.until_ms)
            && s >= u
        {
            return Err(LedgerError::Invalid {
                what: "report window",
                value: format!("since {s} until {u}"),
                reason: "since must be before until".into(),
            });
        }
        let filter = EntryFilter {
            experiment: q.experiment.clone(),
            since_ms: q.since_ms,
            until_ms: q.until_ms,
        };
        let (cond, values) = filter_sql(&filter);
        let rows = query(
            self.connection(),
            OP,
            &format!(
                "SELECT experiment, job, instance, component, reason, \
                 (end_ms - 1) / {MS_PER_DAY} AS day_idx, \
                 CAST(SUM(amount_nano) AS BIGINT) AS total FROM ledger_entry WHERE {cond} \
                 GROUP BY experiment, job, instance, component, reason, (end_ms - 1) / {MS_PER_DAY}"
            ),
            values,
        )
        .await?;
        let mut per_exp: BTreeMap<String, Agg> = BTreeMap::new();
        let mut groups: BTreeMap<String, CostBreakdown> = BTreeMap::new();
        let mut total = CostBreakdown::ZERO;
        for r in &rows {
            let experiment: String = get(r, OP, "experiment")?;
            let job: Option<String> = get(r, OP, "job")?;
            let instance: String = get(r, OP, "instance")?;
            let comp: String = get(r, OP, "component")?;
            let reason: String = get(r, OP, "reason")?;
            let day: i64 = get(r, OP, "day_idx")?;
            let amount = NanoUsd(get(r, OP, "total")?).to_usd();
            let c = Component::parse(&comp).ok_or(LedgerError::Corrupt {
                what: "ledger_entry.component",
                value: comp.clone(),
            })?;
            let reason = Reason::parse(&reason).ok_or(LedgerError::Corrupt {
                what: "ledger_entry.reason",
                value: reason.clone(),
            })?;
            let agg = per_exp.entry(experiment.clone()).or_default();
            *agg.split.get_mut(c) += amount;
            *agg.by_reason.entry(reason).or_default() += amount;
            *total.get_mut(c) += amount;
            let key = match q.by {
                GroupBy::Experiment => experiment.clone(),
                GroupBy::Job => match &job {
                    Some(j) => format!("{experiment}/{j}"),
                    None => format!("{experiment}/(overhead)"),
                },
                GroupBy::Instance => instance,
                GroupBy::Day => DateTime::<Utc>::from_timestamp_millis(day * MS_PER_DAY)
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| day.to_string()),
            };
            *groups.entry(key).or_default().get_mut(c) += amount;
        }

        let budgets: BTreeMap<String, crate::store::BudgetStatus> = self
            .budget_status()
            .await?
            .into_iter()
            .filter_map(|st| match &st.budget.scope {
                BudgetScope::Experiment(e) => Some((e.clone(), st)),
                _ => None,
            })
            .collect();
        let progress_map: BTreeMap<&str, &ExperimentProgress> = progress
            .iter()
            .map(|p| (p.experiment.as_str(), p))
            .collect();
        let mut names: BTreeSet<String> = per_exp.keys().cloned().collect();
        names.extend(progress.iter().map(|p| p.experiment.clone()));
        names.extend(budgets.keys().cloned());
        if let Some(e) = &q.experiment {
            names.retain(|n| n == e);
            names.insert(e.clone());
        }
        let burn_end = q.until_ms.map_or(now_ms, |u| u.min(now_ms));
        let burn = self.burn_rates(burn_end, q.experiment.as_deref()).await?;

        let mut experiments = Vec::new();
        for name in names {
            let agg = per_exp.remove(&name).unwrap_or_default();
            let p = progress_map.get(name.as_str());
            let (jobs_total, jobs_done, jobs_failed, jobs_running) = p.map_or((0, 0, 0, 0), |p| {
                (p.jobs_total, p.jobs_done, p.jobs_failed, p.jobs_running)
            });
            let spent = agg.split.total();
            let spent_all_time = if q.since_ms.is_none() && q.until_ms.is_none() {
                spent
            } else {
                self.spent(&BudgetScope::Experiment(name.clone())).await?
            };
            let st = budgets.get(&name);
            let burn_rate = burn.get(&name).copied().unwrap_or(Usd::ZERO);
            let cost_per_job =
                (jobs_done > 0).then(|| Usd(spent_all_time.0 / Decimal::from(jobs_done)));
            let remaining = jobs_total.saturating_sub(jobs_done + jobs_failed);
            let (forecast_total, forecast_hours) = match cost_per_job {
                Some(cpj) => {
                    let rest = cpj * Decimal::from(remaining);
                    let hours = if remaining == 0 {
                        Some(Decimal::ZERO)
                    } else if burn_rate.0 > Decimal::ZERO {
                        Some(
                            (rest.0 / burn_rate.0)
                                .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero),
                        )
                    } else {
                        None
                    };
                    (Some(spent_all_time + rest), hours)
                }
                None if jobs_total > 0 && remaining == 0 => {
                    (Some(spent_all_time), Some(Decimal::ZERO))
                }
                None => (None, None),
            };
            let reason = |r: Reason| agg.by_reason.get(&r).copied().unwrap_or(Usd::ZERO);
            experiments.push(ExperimentSummary {
                experiment: name.clone(),
                jobs_total,
                jobs_done,
                jobs_failed,
                jobs_running,
                spent,
                spent_all_time,
                budget: st.map(|s| s.budget.amount),
                budget_hard: st.map(|s| s.budget.hard),
                left: st.map(|s| s.left),
                burn_rate_per_hour: burn_rate,
                cost_per_completed_job: cost_per_job,
                forecast_total,
                forecast_hours,
                lost_preemption: reason(Reason::LostPreemption),
                lost_failure: reason(Reason::LostFailure),
                overhead: reason(Reason::Overhead),
                split: agg.split,
            });
        }
        let groups = groups
            .into_iter()
            .map(|(key, cost)| GroupRow {
                key,
                total: cost.total(),
                cost,
            })
            .collect();
        Ok(Report {
            generated_ms: now_ms,
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            experiment_filter: q.experiment.clone(),
            by: q.by,
            currency: "USD".into(),
            experiments,
            groups,
            grand_total: total.total(),
            total,
        })
    }

    /// $/h per experiment over the hour before `end_ms`.
    async fn burn_rates(
        &self,
        end_ms: i64,
        experiment: Option<&str>,
    ) -> Result<BTreeMap<String, Usd>, LedgerError> {
        const OP: &str = "measuring burn rates";
        let start = end_ms - MS_PER_HOUR;
        let mut sql = "SELECT experiment, start_ms, end_ms, amount_nano FROM ledger_entry \
                       WHERE end_ms > ? AND start_ms <= ?"
            .to_string();
        let mut values: Vec<sea_orm::Value> = vec![start.into(), end_ms.into()];
        if let Some(e) = experiment {
            sql.push_str(" AND experiment = ?");
            values.push(e.to_string().into());
        }
        let rows = query(self.connection(), OP, &sql, values).await?;
        let mut out: BTreeMap<String, Usd> = BTreeMap::new();
        for r in &rows {
            let e: String = get(r, OP, "experiment")?;
            let s: i64 = get(r, OP, "start_ms")?;
            let t: i64 = get(r, OP, "end_ms")?;
            let a = NanoUsd(get(r, OP, "amount_nano")?).to_usd();
            let share = if t <= s {
                a
            } else {
                let overlap = t.min(end_ms) - s.max(start);
                if overlap <= 0 {
                    continue;
                }
                Usd(a.0 * Decimal::from(overlap) / Decimal::from(t - s))
            };
            *out.entry(e).or_default() += share;
        }
        Ok(out)
    }
}

fn fmt_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn opt_usd(u: Option<Usd>) -> String {
    u.map_or_else(|| "-".to_string(), |u| u.to_string())
}

fn rate(u: Usd) -> String {
    format!("{u}/h")
}

fn hours(h: Option<Decimal>) -> String {
    h.map_or_else(|| "-".to_string(), |h| format!("{h} h"))
}

/// Renders rows as a plain prettytable table (one place to swap the table crate).
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    use prettytable::{Cell, Row, Table, format};
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    t.set_titles(Row::new(headers.iter().map(|h| Cell::new(h)).collect()));
    for r in rows {
        t.add_row(Row::new(r.iter().map(|c| Cell::new(c)).collect()));
    }
    t.to_string()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(fields: &[String]) -> String {
    let mut l = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    l.push('\n');
    l
}

fn exact(u: Usd) -> String {
    u.normalized().to_string()
}

fn opt_exact(u: Option<Usd>) -> String {
    u.map(exact).unwrap_or_default()
}

impl Report {
    fn window(&self) -> String {
        match (self.since_ms, self.until_ms) {
            (None, None) => "all time".to_string(),
            (Some(s), None) => format!("since {}", fmt_time(s)),
            (None, Some(u)) => format!("until {}", fmt_time(u)),
            (Some(s), Some(u)) => format!("{} to {}", fmt_time(s), fmt_time(u)),
        }
    }

    fn experiment_rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let headers = vec![
            "Experiment",
            "Jobs done",
            "Failed",
            "Spent",
            "Budget",
            "Left",
            "Burn now",
            "Forecast",
            "To finish",
            "Per job",
        ];
        let rows = self
            .experiments
            .iter()
            .map(|e| {
                vec![
                    e.experiment.clone(),
                    format!("{}/{}", e.jobs_done, e.jobs_total),
                    e.jobs_failed.to_string(),
                    e.spent.to_string(),
                    match (e.budget, e.budget_hard) {
                        (Some(b), Some(true)) => format!("{b} hard"),
                        (Some(b), _) => format!("{b} soft"),
                        _ => "-".into(),
                    },
                    opt_usd(e.left),
                    rate(e.burn_rate_per_hour),
                    opt_usd(e.forecast_total),
                    hours(e.forecast_hours),
                    opt_usd(e.cost_per_completed_job),
                ]
            })
            .collect();
        (headers, rows)
    }

    fn split_rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let headers = vec![
            "Experiment",
            "Compute",
            "Storage",
            "Bandwidth",
            "Overhead",
            "Lost: preemption",
            "Lost: failures",
        ];
        let rows = self
            .experiments
            .iter()
            .map(|e| {
                vec![
                    e.experiment.clone(),
                    e.split.compute.to_string(),
                    e.split.storage.to_string(),
                    e.split.bandwidth.to_string(),
                    e.overhead.to_string(),
                    e.lost_preemption.to_string(),
                    e.lost_failure.to_string(),
                ]
            })
            .collect();
        (headers, rows)
    }

    fn group_rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let key = match self.by {
            GroupBy::Experiment => "Experiment",
            GroupBy::Job => "Job",
            GroupBy::Instance => "Instance",
            GroupBy::Day => "Day (UTC)",
        };
        let rows = self
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.key.clone(),
                    g.cost.compute.to_string(),
                    g.cost.storage.to_string(),
                    g.cost.bandwidth.to_string(),
                    g.total.to_string(),
                ]
            })
            .collect();
        (vec![key, "Compute", "Storage", "Bandwidth", "Total"], rows)
    }

    fn total_line(&self) -> String {
        format!(
            "Total: {} (compute {}, storage {}, bandwidth {})",
            self.grand_total, self.total.compute, self.total.storage, self.total.bandwidth
        )
    }

    /// The terminal rendering (also the plain-text email body).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vasticlaude spend report, {} ({}), generated {}",
            self.experiment_filter.as_deref().map_or_else(
                || "all experiments".to_string(),
                |e| format!("experiment {e}")
            ),
            self.window(),
            fmt_time(self.generated_ms)
        );
        s.push('\n');
        if self.experiments.is_empty() {
            s.push_str("No experiments and no spending recorded yet.\n\n");
        } else {
            let (h, r) = self.experiment_rows();
            s.push_str(&render_table(&h, &r));
            s.push('\n');
            let (h, r) = self.split_rows();
            s.push_str(&render_table(&h, &r));
            s.push('\n');
        }
        if self.by != GroupBy::Experiment && !self.groups.is_empty() {
            let (h, r) = self.group_rows();
            let _ = writeln!(s, "By {}:", self.by.as_str());
            s.push_str(&render_table(&h, &r));
            s.push('\n');
        }
        let _ = writeln!(s, "{}", self.total_line());
        s.push_str(
            "Amounts are exact in the ledger and shown rounded half away from zero to cents.\n",
        );
        s
    }

    /// The HTML email body.
    pub fn to_html(&self) -> String {
        fn table(h: &[&str], rows: &[Vec<String>]) -> String {
            let mut t = String::from(
                "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\" style=\"border-collapse:collapse\"><tr>",
            );
            for c in h {
                let _ = write!(t, "<th>{}</th>", html_escape(c));
            }
            t.push_str("</tr>");
            for r in rows {
                t.push_str("<tr>");
                for c in r {
                    let _ = write!(t, "<td>{}</td>", html_escape(c));
                }
                t.push_str("</tr>");
            }
            t.push_str("</table>");
            t
        }
        let mut s = String::from("<!DOCTYPE html><html><body style=\"font-family:sans-serif\">");
        let _ = write!(
            s,
            "<h2>vasticlaude spend report</h2><p>{} ({}), generated {}</p>",
            html_escape(&self.experiment_filter.as_deref().map_or_else(
                || "All experiments".to_string(),
                |e| format!("Experiment {e}")
            )),
            html_escape(&self.window()),
            html_escape(&fmt_time(self.generated_ms))
        );
        if self.experiments.is_empty() {
            s.push_str("<p>No experiments and no spending recorded yet.</p>");
        } else {
            let (h, r) = self.experiment_rows();
            s.push_str(&table(&h, &r));
            s.push_str("<h3>Cost split</h3>");
            let (h, r) = self.split_rows();
            s.push_str(&table(&h, &r));
        }
        if self.by != GroupBy::Experiment && !self.groups.is_empty() {
            let _ = write!(s, "<h3>By {}</h3>", self.by.as_str());
            let (h, r) = self.group_rows();
            s.push_str(&table(&h, &r));
        }
        let _ = write!(
            s,
            "<p><b>{}</b></p><p><small>Amounts are exact in the ledger and shown rounded half away from zero to cents.</small></p></body></html>",
            html_escape(&self.total_line())
        );
        s
    }

    /// CSV with exact amounts: the experiment summaries when grouped by experiment, else the
    /// grouped rows.
    pub fn to_csv(&self) -> String {
        let mut s = String::new();
        if self.by == GroupBy::Experiment {
            s.push_str(&csv_line(
                &[
                    "experiment",
                    "jobs_total",
                    "jobs_done",
                    "jobs_failed",
                    "jobs_running",
                    "spent",
                    "spent_all_time",
                    "budget",
                    "left",
                    "burn_rate_per_hour",
                    "cost_per_completed_job",
                    "forecast_total",
                    "forecast_hours",
                    "lost_preemption",
                    "lost_failure",
                    "overhead",
                    "compute",
                    "storage",
                    "bandwidth",
                ]
                .map(String::from),
            ));
            for e in &self.experiments {
                s.push_str(&csv_line(&[
                    e.experiment.clone(),
                    e.jobs_total.to_string(),
                    e.jobs_done.to_string(),
                    e.jobs_failed.to_string(),
                    e.jobs_running.to_string(),
                    exact(e.spent),
                    exact(e.spent_all_time),
                    opt_exact(e.budget),
                    opt_exact(e.left),
                    exact(e.burn_rate_per_hour),
                    opt_exact(e.cost_per_completed_job),
                    opt_exact(e.forecast_total),
                    e.forecast_hours.map(|h| h.to_string()).unwrap_or_default(),
                    exact(e.lost_preemption),
                    exact(e.lost_failure),
                    exact(e.overhead),
                    exact(e.split.compute),
                    exact(e.split.storage),
                    exact(e.split.bandwidth),
                ]));
            }
        } else {
            s.push_str(&csv_line(
                &[self.by.as_str(), "compute", "storage", "bandwidth", "total"].map(String::from),
            ));
            for g in &self.groups {
                s.push_str(&csv_line(&[
                    g.key.clone(),
                    exact(g.cost.compute),
                    exact(g.cost.storage),
                    exact(g.cost.bandwidth),
                    exact(g.total),
                ]));
            }
        }
        s
    }

    /// The email subject; always names vasticlaude.
    pub fn email_subject(&self) -> String {
        match &self.experiment_filter {
            Some(e) => format!("vasticlaude report for {e}: {} spent", self.grand_total),
            None => format!(
                "vasticlaude report: {} spent across {} experiment{}",
                self.grand_total,
                self.experiments.len(),
                if self.experiments.len() == 1 { "" } else { "s" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn group_by_parses() {
        assert_eq!("day".parse::<GroupBy>().unwrap(), GroupBy::Day);
        let err = "week".parse::<GroupBy>().unwrap_err().to_string();
        assert!(err.contains("week"), "{err}");
    }
}
