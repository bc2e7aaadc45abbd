//! Report schedules (cron) and budget alerts, each sent at most once.
//!
//! A due report is claimed in one transaction that both advances the schedule's
//! `next_fire_ms` (compare-and-set on the old value) and records the firing (unique per
//! schedule and due time). A second process, or the same one after a restart, therefore never
//! claims the same firing again, and a restart skips nothing: the stored `next_fire_ms` is
//! still due. Missed firings while nothing ran are coalesced into one report (the next fire
//! time is computed from *now*, not from the missed time). A claimed firing whose send failed
//! keeps its error and is not retried, so nobody gets a report twice.
//!
//! Budget alerts work the same way: one row per (budget scope, threshold, budget amount) is
//! inserted if absent; only the inserter sends. Changing a budget's amount re-arms its
//! thresholds.
//!
//! Cron expressions are evaluated in UTC. The usual 5-field form (`*/15 * * * *`) is accepted
//! and gets a `0` seconds field; 6 and 7 fields (with seconds, and years) and `@hourly`-style
//! names are passed to the `cron` crate as they are.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::email::Mailer;
use crate::money::Usd;
use crate::report::{ExperimentProgress, GroupBy, ReportQuery};
use crate::store::{BudgetScope, Ledger, LedgerError, db, exec, get, query};

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct CronExpr {
    /// What the user typed, trimmed.
    pub original: String,
    /// What the `cron` crate parses (5-field input gets a leading `0` seconds field).
    pub normalized: String,
    schedule: cron::Schedule,
}

impl CronExpr {
    pub fn parse(expr: &str) -> Result<Self, LedgerError> {
        let original = expr.trim().to_string();
        let fields = original.split_whitespace().count();
        let normalized = if original.starts_with('@') {
            original.clone()
        } else {
            match fields {
                5 => format!(
                    "0 {}",
                    original.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                6 | 7 => original.split_whitespace().collect::<Vec<_>>().join(" "),
                n => {
                    return Err(LedgerError::Invalid {
                        what: "cron expression",
                        value: original,
                        reason: format!(
                            "has {n} fields; expected 5 (min hour day month weekday), or 6/7 with seconds first"
                        ),
                    });
                }
            }
        };
        let schedule = cron::Schedule::from_str(&normalized).map_err(|e| LedgerError::Invalid {
            what: "cron expression",
            value: original.clone(),
            reason: e.to_string(),
        })?;
        Ok(CronExpr {
            original,
            normalized,
            schedule,
        })
    }

    /// The first fire time strictly after `after_ms` (UTC), or `None` if it never fires again.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let dt = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
        self.schedule
            .after(&dt)
            .next()
            .map(|t| t.timestamp_millis())
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: i64,
    /// The normalized expression (6+ fields).
    pub cron: String,
    pub email: String,
    pub experiment: Option<String>,
    /// `i64::MAX` when the expression never fires again.
    pub next_fire_ms: i64,
    pub created_ms: i64,
}

/// A firing claimed by this caller: send it, then call [`Ledger::finish_firing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedFiring {
    pub firing_id: i64,
    pub schedule: Schedule,
    pub due_ms: i64,
}

/// A recorded firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    pub id: i64,
    pub schedule_id: i64,
    pub due_ms: i64,
    pub claimed_ms: i64,
    pub sent_ms: Option<i64>,
    pub error: Option<String>,
}

/// A budget threshold crossing claimed by this caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub scope: BudgetScope,
    pub threshold_percent: u32,
    pub budget: Usd,
    pub spent: Usd,
    pub hard: bool,
    /// Where it goes; empty when nobody is configured (recorded, not sent).
    pub recipients: Vec<String>,
    pub created_ms: i64,
}

/// What [`Ledger::tick`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickOutcome {
    pub reports: Vec<SendOutcome>,
    pub alerts: Vec<SendOutcome>,
}

/// One send attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOutcome {
    pub id: i64,
    pub to: Vec<String>,
    pub subject: String,
    pub error: Option<String>,
}

const NEVER: i64 = i64::MAX;

fn schedule_from_row(r: &sea_orm::QueryResult) -> Result<Schedule, LedgerError> {
    const OP: &str = "reading a schedule";
    Ok(Schedule {
        id: get(r, OP, "id")?,
        cron: get(r, OP, "cron")?,
        email: get(r, OP, "email")?,
        experiment: get(r, OP, "experiment")?,
        next_fire_ms: get(r, OP, "next_fire_ms")?,
        created_ms: get(r, OP, "created_ms")?,
    })
}

const SCHED_COLS: &str =
    "SELECT id, cron, email, experiment, next_fire_ms, created_ms FROM ledger_schedule";

impl Ledger {
    /// Adds a report schedule; the first firing is the first cron time after `now_ms`.
    pub async fn add_schedule(
        &self,
        cron_expr: &str,
        email: &str,
        experiment: Option<&str>,
        now_ms: i64,
    ) -> Result<Schedule, LedgerError> {
        const OP: &str = "adding a schedule";
        let cron = CronExpr::parse(cron_expr)?;
        crate::email::parse_address(email)?;
        let next = cron
            .next_after(now_ms)
            .ok_or_else(|| LedgerError::Invalid {
                what: "cron expression",
                value: cron.original.clone(),
                reason: "never fires after now".into(),
            })?;
        let rows = query(
            self.connection(),
            OP,
            "INSERT INTO ledger_schedule (cron, email, experiment, next_fire_ms, created_ms) \
             VALUES (?, ?, ?, ?, ?) RETURNING id",
            vec![
                cron.normalized.clone().into(),
                email.trim().to_string().into(),
                sea_orm::Value::String(experiment.map(str::to_string)),
                next.into(),
                now_ms.into(),
            ],
        )
        .await?;
        let id: i64 = match rows.first() {
            Some(r) => get(r, OP, "id")?,
            None => {
                return Err(LedgerError::NotFound {
                    what: "new schedule id",
                    id: String::new(),
                });
            }
        };
        Ok(Schedule {
            id,
            cron: cron.normalized,
            email: email.trim().to_string(),
            experiment: experiment.map(str::to_string),
            next_fire_ms: next,
            created_ms: now_ms,
        })
    }

    pub async fn schedules(&self) -> Result<Vec<Schedule>, LedgerError> {
        let rows = query(
            self.connection(),
            "reading schedules",
            &format!("{SCHED_COLS} ORDER BY id"),
            vec![],
        )
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Removes a schedule (its firing history stays).
    pub async fn remove_schedule(&self, id: i64) -> Result<(), LedgerError> {
        let n = exec(
            self.connection(),
            "removing a schedule",
            "DELETE FROM ledger_schedule WHERE id = ?",
            vec![id.into()],
        )
        .await?;
        if n == 0 {
            return Err(LedgerError::NotFound {
                what: "schedule",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Claims every schedule that is due at `now_ms` (see the module docs). Each claim is its
    /// own transaction; a schedule claimed by someone else meanwhile is skipped.
    pub async fn claim_due_reports(&self, now_ms: i64) -> Result<Vec<ClaimedFiring>, LedgerError> {
        const OP: &str = "claiming due reports";
        let due = query(
            self.connection(),
            OP,
            &format!("{SCHED_COLS} WHERE next_fire_ms <= ? ORDER BY next_fire_ms, id"),
            vec![now_ms.into()],
        )
        .await?;
        let mut out = Vec::new();
        for row in &due {
            let s = schedule_from_row(row)?;
            let next = CronExpr::parse(&s.cron)?
                .next_after(now_ms)
                .unwrap_or(NEVER);
            let txn = self.write_txn().await?;
            let n = exec(
                &txn,
                OP,
                "UPDATE ledger_schedule SET next_fire_ms = ? WHERE id = ? AND next_fire_ms = ?",
                vec![next.into(), s.id.into(), s.next_fire_ms.into()],
            )
            .await?;
            if n != 1 {
                txn.rollback().await.map_err(db(OP))?;
                continue;
            }
            let rows = query(
                &txn,
                OP,
                "INSERT INTO ledger_firing (schedule_id, due_ms, claimed_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (schedule_id, due_ms) DO NOTHING RETURNING id",
                vec![s.id.into(), s.next_fire_ms.into(), now_ms.into()],
            )
            .await?;
            let Some(r) = rows.first() else {
                // Already recorded (cannot happen after a successful compare-and-set, but a
                // firing must never be claimed twice).
                txn.rollback().await.map_err(db(OP))?;
                continue;
            };
            let firing_id: i64 = get(r, OP, "id")?;
            txn.commit().await.map_err(db(OP))?;
            out.push(ClaimedFiring {
                firing_id,
                due_ms: s.next_fire_ms,
                schedule: Schedule {
                    next_fire_ms: next,
                    ..s
                },
            });
        }
        Ok(out)
    }

    /// Records how a claimed firing's send went.
    pub async fn finish_firing(
        &self,
        firing_id: i64,
        result: Result<(), String>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let (sent, err) = match result {
            Ok(()) => (Some(now_ms), None),
            Err(e) => (None, Some(e)),
        };
        exec(
            self.connection(),
            "recording a firing",
            "UPDATE ledger_firing SET sent_ms = ?, error = ? WHERE id = ?",
            vec![
                sea_orm::Value::BigInt(sent),
                sea_orm::Value::String(err),
                firing_id.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Recorded firings, optionally of one schedule, oldest first.
    pub async fn firings(&self, schedule_id: Option<i64>) -> Result<Vec<Firing>, LedgerError> {
        const OP: &str = "reading firings";
        let (cond, values) = match schedule_id {
            Some(id) => ("WHERE schedule_id = ?", vec![id.into()]),
            None => ("", vec![]),
        };
        let rows = query(
            self.connection(),
            OP,
            &format!(
                "SELECT id, schedule_id, due_ms, claimed_ms, sent_ms, error FROM ledger_firing \
                 {cond} ORDER BY id"
            ),
            values,
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Firing {
                    id: get(r, OP, "id")?,
                    schedule_id: get(r, OP, "schedule_id")?,
                    due_ms: get(r, OP, "due_ms")?,
                    claimed_ms: get(r, OP, "claimed_ms")?,
                    sent_ms: get(r, OP, "sent_ms")?,
                    error: get(r, OP, "error")?,
                })
            })
            .collect()
    }

    /// Claims every budget threshold that has been crossed and not yet alerted. Recipients are
    /// the budget's `notify_email`, else `default_recipients` (e.g. the schedules' addresses).
    pub async fn claim_alerts(
        &self,
        default_recipients: &[String],
        now_ms: i64,
    ) -> Result<Vec<Alert>, LedgerError> {
        const OP: &str = "claiming budget alerts";
        let mut out = Vec::new();
        for st in self.budget_status().await? {
            let recipients: Vec<String> = match &st.budget.notify_email {
                Some(e) => vec![e.clone()],
                None => default_recipients.to_vec(),
            };
            for pct in &st.crossed {
                let rows = query(
                    self.connection(),
                    OP,
                    "INSERT INTO ledger_alert (scope, subject, threshold_pct, budget_nano, \
                     spent_nano, recipient, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (scope, subject, threshold_pct, budget_nano) DO NOTHING \
                     RETURNING id",
                    vec![
                        st.budget.scope.kind().into(),
                        st.budget.scope.subject().to_string().into(),
                        i64::from(*pct).into(),
                        st.budget.amount.to_nano()?.into(),
                        st.spent.to_nano()?.into(),
                        recipients.join(", ").into(),
                        now_ms.into(),
                    ],
                )
                .await?;
                if let Some(r) = rows.first() {
                    out.push(Alert {
                        id: get(r, OP, "id")?,
                        scope: st.budget.scope.clone(),
                        threshold_percent: *pct,
                        budget: st.budget.amount,
                        spent: st.spent,
                        hard: st.budget.hard,
                        recipients: recipients.clone(),
                        created_ms: now_ms,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Records how a claimed alert's send went.
    pub async fn finish_alert(
        &self,
        alert_id: i64,
        result: Result<(), String>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let (sent, err) = match result {
            Ok(()) => (Some(now_ms), None),
            Err(e) => (None, Some(e)),
        };
        exec(
            self.connection(),
            "recording an alert",
            "UPDATE ledger_alert SET sent_ms = ?, error = ? WHERE id = ?",
            vec![
                sea_orm::Value::BigInt(sent),
                sea_orm::Value::String(err),
                alert_id.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Number of alerts ever recorded (for status displays and tests).
    pub async fn alert_count(&self) -> Result<i64, LedgerError> {
        const OP: &str = "counting alerts";
        let rows = query(
            self.connection(),
            OP,
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM ledger_alert",
            vec![],
        )
        .await?;
        Ok(rows
            .first()
            .map(|r| get(r, OP, "n"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Sends every due report and every new budget alert through `mailer`, recording each.
    /// `progress` is the caller's job counts per experiment (the ledger does not read the
    /// scheduler's tables).
    pub async fn tick(
        &self,
        mailer: &Mailer,
        progress: &[ExperimentProgress],
        now_ms: i64,
    ) -> Result<TickOutcome, LedgerError> {
        let mut outcome = TickOutcome::default();
        for claim in self.claim_due_reports(now_ms).await? {
            let q = ReportQuery {
                experiment: claim.schedule.experiment.clone(),
                since_ms: None,
                until_ms: None,
                by: GroupBy::Experiment,
            };
            let report = self.report(&q, progress, now_ms).await?;
            let subject = report.email_subject();
            let to = vec![claim.schedule.email.clone()];
            let res = mailer
                .send(&to, &subject, &report.to_text(), &report.to_html())
                .await
                .map_err(|e| e.to_string());
            self.finish_firing(claim.firing_id, res.clone(), now_ms)
                .await?;
            outcome.reports.push(SendOutcome {
                id: claim.firing_id,
                to,
                subject,
                error: res.err(),
            });
        }
        let defaults: Vec<String> = self
            .schedules()
            .await?
            .into_iter()
            .map(|s| s.email)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for alert in self.claim_alerts(&defaults, now_ms).await? {
            let subject = format!(
                "vasticlaude budget alert: {} reached {}% ({} of {})",
                alert.scope, alert.threshold_percent, alert.spent, alert.budget
            );
            let text = format!(
                "{subject}\n\nBudget: {} ({})\nSpent: {} (exact {})\n{}\n",
                alert.budget,
                if alert.hard { "hard" } else { "soft" },
                alert.spent,
                alert.spent.normalized(),
                if alert.hard && alert.threshold_percent >= 100 {
                    "The budget is hard: the scheduler checkpoints, pulls and destroys its instances."
                } else {
                    ""
                }
            );
            let html = format!(
                "<html><body><pre>{}</pre></body></html>",
                crate::email::html_escape(&text)
            );
            let res = if alert.recipients.is_empty() {
                Err("no recipient: set a budget --email or a report schedule".to_string())
            } else {
                mailer
                    .send(&alert.recipients, &subject, &text, &html)
                    .await
                    .map_err(|e| e.to_string())
            };
            self.finish_alert(alert.id, res.clone(), now_ms).await?;
            outcome.alerts.push(SendOutcome {
                id: alert.id,
                to: alert.recipients.clone(),
                subject,
                error: res.err(),
            });
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_get_seconds() {
        let c = CronExpr::parse("*/15 * * * *").unwrap();
        assert_eq!(c.normalized, "0 */15 * * * *");
        // 2026-11-28T12:01:00Z → 12:15:00Z
        let t = DateTime::parse_from_rfc3339("2026-11-28T12:01:00Z")
            .unwrap()
            .timestamp_millis();
        let next = c.next_after(t).unwrap();
        assert_eq!(
            DateTime::<Utc>::from_timestamp_millis(next)
                .unwrap()
                .to_rfc3339(),
            "2026-11-28T12:15:00+00:00"
        );
        assert!(CronExpr::parse("0 30 9 * * Mon-Fri").is_ok());
        assert!(CronExpr::parse("@hourly").is_ok());
    }

    #[test]
    fn bad_cron_names_the_expression() {
        let err = CronExpr::parse("* * *").unwrap_err().to_string();
        assert!(err.contains("3 fields"), "{err}");
        let err = CronExpr::parse("61 * * * *").unwrap_err().to_string();
        assert!(err.contains("61 * * * *"), "{err}");
    }
}
