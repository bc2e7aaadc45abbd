//! [`Ledger`]: the store-backed ledger (sea-orm over SQLite or PostgreSQL).
//!
//! Everything goes through a handful of portable SQL statements (`?` placeholders rewritten
//! to `$n` for PostgreSQL, `ON CONFLICT`, `RETURNING`, `BIGINT` everywhere), because the ledger
//! needs compare-and-set updates and insert-if-absent claims that read more plainly as SQL.
//! Writes that must not interleave (accruing one instance, reserving against a budget, claiming
//! a report firing) run in a transaction that takes its write lock first: `BEGIN IMMEDIATE` on
//! SQLite, a row lock (`FOR UPDATE` or a no-op `UPDATE`) on PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait, Value,
};
use sea_orm_migration::MigratorTrait;
use serde::{Deserialize, Serialize};

use crate::accrual::{
    AccrualError, Component, CostBreakdown, Rates, StateInterval, accrue_interval,
};
use crate::attribution::{Allocation, AttributionError, JobSpan, Owner, Reason, attribute};
use crate::email::EmailError;
use crate::money::{MoneyError, NanoUsd, Usd};

/// What went wrong in the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error while {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: DbErr,
    },
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error(transparent)]
    Accrual(#[from] AccrualError),
    #[error(transparent)]
    Attribution(#[from] AttributionError),
    #[error(
        "instance {instance}: interval [{start_ms}, {end_ms}) overlaps what is already accrued (up to {accrued_until_ms})"
    )]
    IntervalOverlap {
        instance: String,
        start_ms: i64,
        end_ms: i64,
        accrued_until_ms: i64,
    },
    #[error(transparent)]
    BudgetDenied(#[from] BudgetDenied),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("invalid {what}: {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("corrupt ledger row: {what} = {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error(transparent)]
    Email(#[from] EmailError),
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(DbErr) -> LedgerError {
    move |source| LedgerError::Db { op, source }
}

/// What a budget applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", content = "subject", rename_all = "snake_case")]
pub enum BudgetScope {
    Experiment(String),
    User(String),
    Workspace,
}

impl BudgetScope {
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetScope::Experiment(_) => "experiment",
            BudgetScope::User(_) => "user",
            BudgetScope::Workspace => "workspace",
        }
    }

    pub fn subject(&self) -> &str {
        match self {
            BudgetScope::Experiment(s) | BudgetScope::User(s) => s,
            BudgetScope::Workspace => "",
        }
    }

    fn from_parts(kind: &str, subject: String) -> Result<Self, LedgerError> {
        match kind {
            "experiment" => Ok(BudgetScope::Experiment(subject)),
            "user" => Ok(BudgetScope::User(subject)),
            "workspace" => Ok(BudgetScope::Workspace),
            other => Err(LedgerError::Corrupt {
                what: "ledger_budget.scope",
                value: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetScope::Experiment(e) => write!(f, "experiment {e}"),
            BudgetScope::User(u) => write!(f, "user {u}"),
            BudgetScope::Workspace => f.write_str("the workspace"),
        }
    }
}

/// Default warning thresholds, in percent of the budget.
pub const DEFAULT_WARN_PERCENTS: [u32; 3] = [50, 80, 100];

/// A budget to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSpec {
    pub scope: BudgetScope,
    pub amount: Usd,
    /// Percent thresholds that send one alert each when crossed (default 50, 80, 100).
    pub warn_percents: Vec<u32>,
    /// Hard: reaching the budget stops the experiment(s) (checkpoint, pull, destroy) and no new
    /// reservation may exceed it. Soft: only alerts.
    pub hard: bool,
    /// Where alerts go; when `None`, to the addresses of the report schedules.
    pub notify_email: Option<String>,
}

impl BudgetSpec {
    pub fn new(scope: BudgetScope, amount: Usd) -> Self {
        BudgetSpec {
            scope,
            amount,
            warn_percents: DEFAULT_WARN_PERCENTS.to_vec(),
            hard: true,
            notify_email: None,
        }
    }
}

/// A stored budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub id: i64,
    pub scope: BudgetScope,
    pub amount: Usd,
    pub warn_percents: Vec<u32>,
    pub hard: bool,
    pub notify_email: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A budget with what has been spent and reserved against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub budget: Budget,
    pub spent: Usd,
    /// Held by open reservations (worst case not yet consumed).
    pub reserved: Usd,
    /// `amount − spent − reserved` (negative when over).
    pub left: Usd,
    /// `spent ÷ amount × 100`, 2 decimals (half away from zero); `None` for a zero budget.
    pub used_percent: Option<Decimal>,
    /// Thresholds that `spent` has reached.
    pub crossed: Vec<u32>,
    /// `spent ≥ amount`.
    pub reached: bool,
}

/// A reservation refused because a hard budget would be exceeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "budget for {scope} is {amount}: spent {spent} + reserved {reserved} + requested {requested} would exceed it"
)]
pub struct BudgetDenied {
    pub scope: BudgetScope,
    pub amount: Usd,
    pub spent: Usd,
    pub reserved: Usd,
    pub requested: Usd,
}

/// A request to hold money before committing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub experiment: String,
    pub user: Option<String>,
    /// With a job, the reservation shrinks as that job's cost is accrued; without, it holds its
    /// full amount until released or settled.
    pub job: Option<String>,
    pub worst_case: Usd,
}

/// Open, settled or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Open,
    Settled,
    Released,
}

impl ReservationState {
    fn as_str(self) -> &'static str {
        match self {
            ReservationState::Open => "open",
            ReservationState::Settled => "settled",
            ReservationState::Released => "released",
        }
    }

    fn parse(s: &str) -> Result<Self, LedgerError> {
        match s {
            "open" => Ok(ReservationState::Open),
            "settled" => Ok(ReservationState::Settled),
            "released" => Ok(ReservationState::Released),
            other => Err(LedgerError::Corrupt {
                what: "ledger_reservation.state",
                value: other.to_string(),
            }),
        }
    }
}

/// Money held against budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: i64,
    pub experiment: String,
    pub user: Option<String>,
    pub job: Option<String>,
    pub amount: Usd,
    pub state: ReservationState,
    pub created_ms: i64,
    pub closed_ms: Option<i64>,
    /// At settlement: what the job's accruals since the reservation came to.
    pub consumed: Option<Usd>,
}

/// An experiment that must stop (checkpoint, pull, destroy) because a hard budget is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardStop {
    pub experiment: String,
    pub scope: BudgetScope,
    pub amount: Usd,
    pub spent: Usd,
}

/// One instance interval to accrue and attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccrualInput {
    /// The instance key: the Vast instance id in decimal, or the scheduler's instance label
    /// (`vasticlaude ledger reconcile` maps labels to Vast ids through the `instances` table).
    pub instance: String,
    /// The experiment (and user) that caused the instance: pays its overhead.
    pub owner: Owner,
    /// GPUs on the instance.
    pub gpus: u32,
    pub rates: Rates,
    pub interval: StateInterval,
    /// The jobs on the instance during the interval (spans are clipped to it).
    pub jobs: Vec<JobSpan>,
}

/// What [`Ledger::record_interval`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    /// Accrued and attributed.
    Recorded {
        /// The exact cost of the interval.
        exact: CostBreakdown,
        /// What was stored (whole nano-dollars, after carrying sub-nano remainders).
        stored: CostBreakdown,
        allocations: Vec<Allocation>,
    },
    /// The interval ends at or before what was already accrued for this instance (a replay).
    AlreadyAccrued { accrued_until_ms: i64 },
}

/// One stored accrual entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: i64,
    pub instance: String,
    pub job: Option<String>,
    pub experiment: String,
    pub user: Option<String>,
    pub component: Component,
    pub reason: Reason,
    pub start_ms: i64,
    pub end_ms: i64,
    pub amount: NanoUsd,
    pub recorded_ms: i64,
}

/// Which entries to read: `end_ms` in `(since_ms, until_ms]`, optionally one experiment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryFilter {
    pub experiment: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// Per-instance totals (for reconciliation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTotal {
    pub instance: String,
    pub cost: CostBreakdown,
}

/// The store-backed ledger. Cheap to clone (the connection is a pool).
#[derive(Clone)]
pub struct Ledger {
    db: DatabaseConnection,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("backend", &self.db.get_database_backend())
            .finish()
    }
}

/// Rewrites `?` placeholders to `$1, $2, …` for PostgreSQL. The ledger's SQL has no `?` in
/// string literals.
fn sql_for(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) async fn exec<C: ConnectionTrait>(
    c: &C,
    op: &'static str,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, LedgerError> {
    let b = c.get_database_backend();
    let r = c
        .execute_raw(Statement::from_sql_and_values(b, sql_for(b, sql), values))
        .await
        .map_err(db(op))?;
    Ok(r.rows_affected())
}

pub(crate) async fn query<C: ConnectionTrait>(
    c: &C,
    op: &'static str,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, LedgerError> {
    let b = c.get_database_backend();
    c.query_all_raw(Statement::from_sql_and_values(b, sql_for(b, sql), values))
        .await
        .map_err(db(op))
}

pub(crate) fn get<T: sea_orm::TryGetable>(
    row: &QueryResult,
    op: &'static str,
    col: &str,
) -> Result<T, LedgerError> {
    row.try_get::<T>("", col).map_err(db(op))
}

fn opt_str(v: &Option<String>) -> Value {
    Value::String(v.clone())
}

fn parse_decimal(what: &'static str, s: &str) -> Result<Decimal, LedgerError> {
    Decimal::from_str(s).map_err(|_| LedgerError::Corrupt {
        what,
        value: s.to_string(),
    })
}

fn warn_to_text(w: &[u32]) -> String {
    w.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `50,80,100` (spaces and a trailing `%` allowed) into sorted distinct percents
/// in 1..=1000.
pub fn parse_warn_percents(s: &str) -> Result<Vec<u32>, LedgerError> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = part.trim_end_matches('%').trim();
        let p: u32 = num.parse().map_err(|_| LedgerError::Invalid {
            what: "warning threshold",
            value: part.to_string(),
            reason: "expected a whole percent such as 80".into(),
        })?;
        if p == 0 || p > 1000 {
            return Err(LedgerError::Invalid {
                what: "warning threshold",
                value: part.to_string(),
                reason: "must be between 1 and 1000 percent".into(),
            });
        }
        out.insert(p);
    }
    Ok(out.into_iter().collect())
}

fn floor_nano(u: Usd) -> Result<(NanoUsd, Usd), LedgerError> {
    let scaled = (u.0 * Decimal::from(crate::money::NANOS_PER_USD)).floor();
    let n = i64::try_from(scaled).map_err(|_| MoneyError::OutOfRange(u.0))?;
    let nano = NanoUsd(n);
    Ok((nano, u - nano.to_usd()))
}

impl Ledger {
    /// Wraps a connection whose schema already has the ledger's tables (the scheduler's
    /// `migrate()` creates them).
    pub fn new(db: DatabaseConnection) -> Self {
        Ledger { db }
    }

    /// Connects to `url` and creates the ledger's tables if needed (standalone use and tests).
    /// For SQLite, add `?mode=rwc` to create the file.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let mut opt = sea_orm::ConnectOptions::new(url.to_string());
        // min 1: an in-memory SQLite database lives only as long as one of its connections.
        opt.min_connections(1)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(std::time::Duration::from_secs(30))
            });
        let conn = sea_orm::Database::connect(opt)
            .await
            .map_err(db("connecting to the database"))?;
        crate::migration::Migrator::up(&conn, None)
            .await
            .map_err(db("creating the ledger tables"))?;
        Ok(Ledger { db: conn })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// A write transaction that holds the write lock from its first statement on SQLite.
    pub(crate) async fn write_txn(&self) -> Result<sea_orm::DatabaseTransaction, LedgerError> {
        let opts = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        self.db
            .begin_with_options(opts)
            .await
            .map_err(db("starting a transaction"))
    }

    fn for_update(&self) -> &'static str {
        if self.backend() == DbBackend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        }
    }

    // ---------------------------------------------------------------- accrual

    /// Accrues one instance interval, attributes it to jobs and experiments, and stores the
    /// entries. Idempotent for replays: an interval that ends at or before what was already
    /// accrued for the instance is skipped; one that overlaps it partly is an error.
    ///
    /// Storage precision: each component's exact cost plus the instance's carried remainder is
    /// stored as whole nano-dollars rounded **down**, and the sub-nano rest is carried to the
    /// instance's next interval. So stored totals are never negative and stay within one
    /// nano-dollar below the exact sum however many intervals there are (give or take
    /// Decimal's own 28-digit rounding of non-terminating divisions, ~1e-25 per interval).
    pub async fn record_interval(
        &self,
        input: &AccrualInput,
        now_ms: i64,
    ) -> Result<Recorded, LedgerError> {
        let iv = &input.interval;
        let exact = accrue_interval(&input.rates, iv)?;
        let txn = self.write_txn().await?;
        const OP: &str = "recording an accrual";
        exec(
            &txn,
            OP,
            "INSERT INTO ledger_instance (instance, experiment, user_name, accrued_until_ms, \
             carry_compute, carry_storage, carry_bandwidth, created_ms, updated_ms) \
             VALUES (?, ?, ?, ?, '0', '0', '0', ?, ?) ON CONFLICT (instance) DO NOTHING",
            vec![
                input.instance.clone().into(),
                input.owner.experiment.clone().into(),
                opt_str(&input.owner.user),
                iv.start_ms.into(),
                now_ms.into(),
                now_ms.into(),
            ],
        )
        .await?;
        let rows = query(
            &txn,
            OP,
            &format!(
                "SELECT accrued_until_ms, carry_compute, carry_storage, carry_bandwidth \
                 FROM ledger_instance WHERE instance = ?{}",
                self.for_update()
            ),
            vec![input.instance.clone().into()],
        )
        .await?;
        let row = rows.first().ok_or_else(|| LedgerError::NotFound {
            what: "ledger instance",
            id: input.instance.clone(),
        })?;
        let accrued_until: i64 = get(row, OP, "accrued_until_ms")?;
        // A replay (or a zero-length interval: bytes must ride on an interval of positive
        // length, so a replayed tick can never count them twice).
        if iv.end_ms <= accrued_until {
            txn.rollback().await.map_err(db(OP))?;
            return Ok(Recorded::AlreadyAccrued {
                accrued_until_ms: accrued_until,
            });
        }
        if iv.start_ms < accrued_until {
            txn.rollback().await.map_err(db(OP))?;
            return Err(LedgerError::IntervalOverlap {
                instance: input.instance.clone(),
                start_ms: iv.start_ms,
                end_ms: iv.end_ms,
                accrued_until_ms: accrued_until,
            });
        }
        let mut carries = CostBreakdown::ZERO;
        for (c, col, what) in [
            (
                Component::Compute,
                "carry_compute",
                "ledger_instance.carry_compute",
            ),
            (
                Component::Storage,
                "carry_storage",
                "ledger_instance.carry_storage",
            ),
            (
                Component::Bandwidth,
                "carry_bandwidth",
                "ledger_instance.carry_bandwidth",
            ),
        ] {
            let s: String = get(row, OP, col)?;
            *carries.get_mut(c) = Usd(parse_decimal(what, &s)?);
        }
        let mut stored = CostBreakdown::ZERO;
        let mut new_carry = CostBreakdown::ZERO;
        for c in Component::ALL {
            let (nano, rest) = floor_nano(exact.get(c) + carries.get(c))?;
            *stored.get_mut(c) = nano.to_usd();
            *new_carry.get_mut(c) = rest;
        }
        let allocations = attribute(
            &stored,
            iv.start_ms,
            iv.end_ms,
            input.gpus,
            &input.owner,
            &input.jobs,
        )?;
        for a in &allocations {
            for c in Component::ALL {
                let amount = a.cost.get(c);
                if amount.is_zero() {
                    continue;
                }
                exec(
                    &txn,
                    OP,
                    "INSERT INTO ledger_entry (instance, job, experiment, user_name, component, \
                     reason, start_ms, end_ms, amount_nano, recorded_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    vec![
                        input.instance.clone().into(),
                        opt_str(&a.job),
                        a.experiment.clone().into(),
                        opt_str(&a.user),
                        c.as_str().into(),
                        a.reason.as_str().into(),
                        iv.start_ms.into(),
                        iv.end_ms.into(),
                        amount.to_nano()?.into(),
                        now_ms.into(),
                    ],
                )
                .await?;
            }
        }
        exec(
            &txn,
            OP,
            "UPDATE ledger_instance SET accrued_until_ms = ?, carry_compute = ?, \
             carry_storage = ?, carry_bandwidth = ?, updated_ms = ? WHERE instance = ?",
            vec![
                iv.end_ms.into(),
                new_carry.compute.0.to_string().into(),
                new_carry.storage.0.to_string().into(),
                new_carry.bandwidth.0.to_string().into(),
                now_ms.into(),
                input.instance.clone().into(),
            ],
        )
        .await?;
        txn.commit().await.map_err(db(OP))?;
        Ok(Recorded::Recorded {
            exact,
            stored,
            allocations,
        })
    }

    /// Entries matching `filter`, oldest first.
    pub async fn entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, LedgerError> {
        const OP: &str = "reading ledger entries";
        let (cond, values) = filter_sql(filter);
        let rows = query(
            &self.db,
            OP,
            &format!(
                "SELECT id, instance, job, experiment, user_name, component, reason, start_ms, \
                 end_ms, amount_nano, recorded_ms FROM ledger_entry WHERE {cond} ORDER BY end_ms, id"
            ),
            values,
        )
        .await?;
        rows.iter().map(|r| entry_from_row(r, OP)).collect()
    }

    /// Totals per instance (for reconciliation against Vast's charges).
    pub async fn instance_totals(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<InstanceTotal>, LedgerError> {
        const OP: &str = "summing ledger entries per instance";
        let (cond, values) = filter_sql(filter);
        let rows = query(
            &self.db,
            OP,
            &format!(
                "SELECT instance, component, CAST(SUM(amount_nano) AS BIGINT) AS total \
                 FROM ledger_entry WHERE {cond} GROUP BY instance, component"
            ),
            values,
        )
        .await?;
        let mut map: BTreeMap<String, CostBreakdown> = BTreeMap::new();
        for r in &rows {
            let instance: String = get(r, OP, "instance")?;
            let comp: String = get(r, OP, "component")?;
            let total: i64 = get(r, OP, "total")?;
            let c = Component::parse(&comp).ok_or(LedgerError::Corrupt {
                what: "ledger_entry.component",
                value: comp,
            })?;
            *map.entry(instance).or_default().get_mut(c) += NanoUsd(total).to_usd();
        }
        Ok(map
            .into_iter()
            .map(|(instance, cost)| InstanceTotal { instance, cost })
            .collect())
    }

    /// Total stored for one budget scope (all time).
    pub async fn spent(&self, scope: &BudgetScope) -> Result<Usd, LedgerError> {
        spent_on(&self.db, scope).await
    }

    // ---------------------------------------------------------------- budgets

    /// Creates or replaces the budget for `spec.scope`.
    pub async fn set_budget(&self, spec: &BudgetSpec, now_ms: i64) -> Result<Budget, LedgerError> {
        const OP: &str = "setting a budget";
        if spec.amount.is_negative() {
            return Err(LedgerError::Invalid {
                what: "budget amount",
                value: spec.amount.0.to_string(),
                reason: "must not be negative".into(),
            });
        }
        if let BudgetScope::Experiment(s) | BudgetScope::User(s) = &spec.scope
            && s.trim().is_empty()
        {
            return Err(LedgerError::Invalid {
                what: "budget subject",
                value: s.clone(),
                reason: "must not be empty".into(),
            });
        }
        if let Some(e) = &spec.notify_email {
            crate::email::parse_address(e)?;
        }
        let mut warn = spec.warn_percents.clone();
        warn.sort_unstable();
        warn.dedup();
        if let Some(bad) = warn.iter().find(|p| **p == 0 || **p > 1000) {
            return Err(LedgerError::Invalid {
                what: "warning threshold",
                value: bad.to_string(),
                reason: "must be between 1 and 1000 percent".into(),
            });
        }
        let amount = spec.amount.to_nano()?;
        exec(
            &self.db,
            OP,
            "INSERT INTO ledger_budget (scope, subject, amount_nano, warn_pct, hard, notify_email, \
             created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (scope, subject) DO UPDATE SET amount_nano = excluded.amount_nano, \
             warn_pct = excluded.warn_pct, hard = excluded.hard, \
             notify_email = excluded.notify_email, updated_ms = excluded.updated_ms",
            vec![
                spec.scope.kind().into(),
                spec.scope.subject().to_string().into(),
                amount.into(),
                warn_to_text(&warn).into(),
                i64::from(spec.hard).into(),
                opt_str(&spec.notify_email),
                now_ms.into(),
                now_ms.into(),
            ],
        )
        .await?;
        self.budget(&spec.scope)
            .await?
            .ok_or_else(|| LedgerError::NotFound {
                what: "budget",
                id: spec.scope.to_string(),
            })
    }

    /// The budget for a scope, if any.
    pub async fn budget(&self, scope: &BudgetScope) -> Result<Option<Budget>, LedgerError> {
        Ok(self
            .budgets()
            .await?
            .into_iter()
            .find(|b| &b.scope == scope))
    }

    /// All budgets: workspace first, then users, then experiments, by name.
    pub async fn budgets(&self) -> Result<Vec<Budget>, LedgerError> {
        budgets_on(&self.db).await
    }

    /// Removes a scope's budget; `NotFound` when there is none.
    pub async fn remove_budget(&self, scope: &BudgetScope) -> Result<(), LedgerError> {
        let n = exec(
            &self.db,
            "removing a budget",
            "DELETE FROM ledger_budget WHERE scope = ? AND subject = ?",
            vec![scope.kind().into(), scope.subject().to_string().into()],
        )
        .await?;
        if n == 0 {
            return Err(LedgerError::NotFound {
                what: "budget for",
                id: scope.to_string(),
            });
        }
        Ok(())
    }

    /// Every budget with its spending.
    pub async fn budget_status(&self) -> Result<Vec<BudgetStatus>, LedgerError> {
        let mut out = Vec::new();
        for b in self.budgets().await? {
            out.push(status_on(&self.db, b).await?);
        }
        Ok(out)
    }

    /// Reserves `worst_case` against every budget that applies to the experiment (its own, its
    /// user's, the workspace's). A hard budget that the reservation would exceed denies it
    /// with [`LedgerError::BudgetDenied`]; soft budgets never deny.
    pub async fn reserve(
        &self,
        req: &ReserveRequest,
        now_ms: i64,
    ) -> Result<Reservation, LedgerError> {
        const OP: &str = "reserving against budgets";
        if req.worst_case.is_negative() {
            return Err(LedgerError::Invalid {
                what: "reservation amount",
                value: req.worst_case.0.to_string(),
                reason: "must not be negative".into(),
            });
        }
        let amount = req.worst_case.to_nano()?;
        let txn = self.write_txn().await?;
        let user = req.user.clone().unwrap_or_default();
        // Take the budgets' row locks first so two reservations cannot both see the same room.
        exec(
            &txn,
            OP,
            "UPDATE ledger_budget SET updated_ms = updated_ms WHERE \
             (scope = 'experiment' AND subject = ?) OR (scope = 'user' AND subject = ?) \
             OR scope = 'workspace'",
            vec![req.experiment.clone().into(), user.clone().into()],
        )
        .await?;
        for b in budgets_on(&txn).await? {
            let applies = match &b.scope {
                BudgetScope::Experiment(e) => e == &req.experiment,
                BudgetScope::User(u) => req.user.as_deref() == Some(u.as_str()),
                BudgetScope::Workspace => true,
            };
            if !applies || !b.hard {
                continue;
            }
            let st = status_on(&txn, b).await?;
            if st.spent + st.reserved + req.worst_case > st.budget.amount {
                txn.rollback().await.map_err(db(OP))?;
                return Err(BudgetDenied {
                    scope: st.budget.scope,
                    amount: st.budget.amount,
                    spent: st.spent,
                    reserved: st.reserved,
                    requested: req.worst_case,
                }
                .into());
            }
        }
        let rows = query(
            &txn,
            OP,
            "INSERT INTO ledger_reservation (experiment, user_name, job, amount_nano, state, \
             created_ms) VALUES (?, ?, ?, ?, 'open', ?) RETURNING id",
            vec![
                req.experiment.clone().into(),
                opt_str(&req.user),
                opt_str(&req.job),
                amount.into(),
                now_ms.into(),
            ],
        )
        .await?;
        let id: i64 = rows
            .first()
            .map(|r| get(r, OP, "id"))
            .transpose()?
            .ok_or_else(|| LedgerError::NotFound {
                what: "new reservation id",
                id: String::new(),
            })?;
        txn.commit().await.map_err(db(OP))?;
        Ok(Reservation {
            id,
            experiment: req.experiment.clone(),
            user: req.user.clone(),
            job: req.job.clone(),
            amount: req.worst_case,
            state: ReservationState::Open,
            created_ms: now_ms,
            closed_ms: None,
            consumed: None,
        })
    }

    /// Gives back an open reservation unused (the work was not started).
    pub async fn release(&self, id: i64, now_ms: i64) -> Result<Reservation, LedgerError> {
        self.close_reservation(id, ReservationState::Released, now_ms)
            .await
    }

    /// Closes an open reservation once its work is done and accrued; records what it consumed.
    pub async fn settle(&self, id: i64, now_ms: i64) -> Result<Reservation, LedgerError> {
        self.close_reservation(id, ReservationState::Settled, now_ms)
            .await
    }

    async fn close_reservation(
        &self,
        id: i64,
        to: ReservationState,
        now_ms: i64,
    ) -> Result<Reservation, LedgerError> {
        const OP: &str = "closing a reservation";
        let txn = self.write_txn().await?;
        let r = reservation_on(&txn, id)
            .await?
            .ok_or_else(|| LedgerError::NotFound {
                what: "reservation",
                id: id.to_string(),
            })?;
        if r.state != ReservationState::Open {
            txn.rollback().await.map_err(db(OP))?;
            return Err(LedgerError::Invalid {
                what: "reservation",
                value: id.to_string(),
                reason: format!("it is already {}", r.state.as_str()),
            });
        }
        let consumed = consumed_on(&txn, &r).await?;
        exec(
            &txn,
            OP,
            "UPDATE ledger_reservation SET state = ?, closed_ms = ?, consumed_nano = ? \
             WHERE id = ? AND state = 'open'",
            vec![
                to.as_str().into(),
                now_ms.into(),
                consumed.to_nano()?.into(),
                id.into(),
            ],
        )
        .await?;
        txn.commit().await.map_err(db(OP))?;
        Ok(Reservation {
            state: to,
            closed_ms: Some(now_ms),
            consumed: Some(consumed),
            ..r
        })
    }

    /// Open reservations.
    pub async fn open_reservations(&self) -> Result<Vec<Reservation>, LedgerError> {
        let rows = query(
            &self.db,
            "reading reservations",
            &format!("{RES_COLS} WHERE state = 'open' ORDER BY id"),
            vec![],
        )
        .await?;
        rows.iter().map(reservation_from_row).collect()
    }

    /// Experiments that must stop because a hard budget that covers them is reached. The
    /// ledger only reports; the scheduler checkpoints, pulls and destroys.
    pub async fn over_hard_budgets(&self) -> Result<Vec<HardStop>, LedgerError> {
        const OP: &str = "checking hard budgets";
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for st in self.budget_status().await? {
            if !st.budget.hard || !st.reached {
                continue;
            }
            let experiments: Vec<String> = match &st.budget.scope {
                BudgetScope::Experiment(e) => vec![e.clone()],
                BudgetScope::User(u) => {
                    let rows = query(
                        &self.db,
                        OP,
                        "SELECT DISTINCT experiment FROM ledger_entry WHERE user_name = ? \
                         UNION SELECT DISTINCT experiment FROM ledger_reservation \
                         WHERE user_name = ? AND state = 'open'",
                        vec![u.clone().into(), u.clone().into()],
                    )
                    .await?;
                    rows.iter()
                        .map(|r| get(r, OP, "experiment"))
                        .collect::<Result<_, _>>()?
                }
                BudgetScope::Workspace => {
                    let rows = query(
                        &self.db,
                        OP,
                        "SELECT DISTINCT experiment FROM ledger_entry UNION SELECT DISTINCT \
                         experiment FROM ledger_reservation WHERE state = 'open'",
                        vec![],
                    )
                    .await?;
                    rows.iter()
                        .map(|r| get(r, OP, "experiment"))
                        .collect::<Result<_, _>>()?
                }
            };
            for e in experiments {
                if seen.insert(e.clone()) {
                    out.push(HardStop {
                        experiment: e,
                        scope: st.budget.scope.clone(),
                        amount: st.budget.amount,
                        spent: st.spent,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.experiment.cmp(&b.experiment));
        Ok(out)
    }
}

const RES_COLS: &str = "SELECT id, experiment, user_name, job, amount_nano, state, created_ms, \
                        closed_ms, consumed_nano FROM ledger_reservation";

fn reservation_from_row(r: &QueryResult) -> Result<Reservation, LedgerError> {
    const OP: &str = "reading a reservation";
    let state: String = get(r, OP, "state")?;
    Ok(Reservation {
        id: get(r, OP, "id")?,
        experiment: get(r, OP, "experiment")?,
        user: get(r, OP, "user_name")?,
        job: get(r, OP, "job")?,
        amount: NanoUsd(get(r, OP, "amount_nano")?).to_usd(),
        state: ReservationState::parse(&state)?,
        created_ms: get(r, OP, "created_ms")?,
        closed_ms: get(r, OP, "closed_ms")?,
        consumed: get::<Option<i64>>(r, OP, "consumed_nano")?.map(|n| NanoUsd(n).to_usd()),
    })
}

async fn reservation_on<C: ConnectionTrait>(
    c: &C,
    id: i64,
) -> Result<Option<Reservation>, LedgerError> {
    let rows = query(
        c,
        "reading a reservation",
        &format!("{RES_COLS} WHERE id = ?"),
        vec![id.into()],
    )
    .await?;
    rows.first().map(reservation_from_row).transpose()
}

/// What a job-bound reservation's job has accrued since the reservation was made.
async fn consumed_on<C: ConnectionTrait>(c: &C, r: &Reservation) -> Result<Usd, LedgerError> {
    const OP: &str = "measuring a reservation";
    let Some(job) = &r.job else {
        return Ok(Usd::ZERO);
    };
    let rows = query(
        c,
        OP,
        "SELECT CAST(COALESCE(SUM(amount_nano), 0) AS BIGINT) AS total FROM ledger_entry \
         WHERE job = ? AND experiment = ? AND recorded_ms >= ?",
        vec![
            job.clone().into(),
            r.experiment.clone().into(),
            r.created_ms.into(),
        ],
    )
    .await?;
    let total: i64 = rows
        .first()
        .map(|r| get(r, OP, "total"))
        .transpose()?
        .unwrap_or(0);
    Ok(NanoUsd(total).to_usd())
}

async fn spent_on<C: ConnectionTrait>(c: &C, scope: &BudgetScope) -> Result<Usd, LedgerError> {
    const OP: &str = "summing spending";
    let (cond, values): (&str, Vec<Value>) = match scope {
        BudgetScope::Experiment(e) => ("experiment = ?", vec![e.clone().into()]),
        BudgetScope::User(u) => ("user_name = ?", vec![u.clone().into()]),
        BudgetScope::Workspace => ("1 = 1", vec![]),
    };
    let rows = query(
        c,
        OP,
        &format!(
            "SELECT CAST(COALESCE(SUM(amount_nano), 0) AS BIGINT) AS total FROM ledger_entry \
             WHERE {cond}"
        ),
        values,
    )
    .await?;
    let total: i64 = rows
        .first()
        .map(|r| get(r, OP, "total"))
        .transpose()?
        .unwrap_or(0);
    Ok(NanoUsd(total).to_usd())
}

async fn reserved_on<C: ConnectionTrait>(c: &C, scope: &BudgetScope) -> Result<Usd, LedgerError> {
    let (cond, values): (&str, Vec<Value>) = match scope {
        BudgetScope::Experiment(e) => ("experiment = ?", vec![e.clone().into()]),
        BudgetScope::User(u) => ("user_name = ?", vec![u.clone().into()]),
        BudgetScope::Workspace => ("1 = 1", vec![]),
    };
    let rows = query(
        c,
        "summing reservations",
        &format!("{RES_COLS} WHERE state = 'open' AND {cond}"),
        values,
    )
    .await?;
    let mut held = Usd::ZERO;
    for row in &rows {
        let r = reservation_from_row(row)?;
        let consumed = consumed_on(c, &r).await?;
        let h = r.amount - consumed;
        if !h.is_negative() {
            held += h;
        }
    }
    Ok(held)
}

async fn budgets_on<C: ConnectionTrait>(c: &C) -> Result<Vec<Budget>, LedgerError> {
    const OP: &str = "reading budgets";
    let rows = query(
        c,
        OP,
        "SELECT id, scope, subject, amount_nano, warn_pct, hard, notify_email, created_ms, \
         updated_ms FROM ledger_budget",
        vec![],
    )
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        let kind: String = get(r, OP, "scope")?;
        let warn: String = get(r, OP, "warn_pct")?;
        let hard: i64 = get(r, OP, "hard")?;
        out.push(Budget {
            id: get(r, OP, "id")?,
            scope: BudgetScope::from_parts(&kind, get(r, OP, "subject")?)?,
            amount: NanoUsd(get(r, OP, "amount_nano")?).to_usd(),
            warn_percents: parse_warn_percents(&warn).map_err(|_| LedgerError::Corrupt {
                what: "ledger_budget.warn_pct",
                value: warn.clone(),
            })?,
            hard: hard != 0,
            notify_email: get(r, OP, "notify_email")?,
            created_ms: get(r, OP, "created_ms")?,
            updated_ms: get(r, OP, "updated_ms")?,
        });
    }
    out.sort_by(|a, b| {
        let rank = |s: &BudgetScope| match s {
            BudgetScope::Workspace => 0,
            BudgetScope::User(_) => 1,
            BudgetScope::Experiment(_) => 2,
        };
        rank(&a.scope)
            .cmp(&rank(&b.scope))
            .then_with(|| a.scope.cmp(&b.scope))
    });
    Ok(out)
}

async fn status_on<C: ConnectionTrait>(c: &C, b: Budget) -> Result<BudgetStatus, LedgerError> {
    let spent = spent_on(c, &b.scope).await?;
    let reserved = reserved_on(c, &b.scope).await?;
    let left = b.amount - spent - reserved;
    let used_percent = if b.amount.is_zero() {
        None
    } else {
        Some(
            (spent.0 * Decimal::from(100) / b.amount.0)
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero),
        )
    };
    let crossed = b
        .warn_percents
        .iter()
        .copied()
        .filter(|p| spent.0 * Decimal::from(100) >= b.amount.0 * Decimal::from(*p))
        .collect();
    let reached = spent >= b.amount;
    Ok(BudgetStatus {
        budget: b,
        spent,
        reserved,
        left,
        used_percent,
        crossed,
        reached,
    })
}

pub(crate) fn filter_sql(f: &EntryFilter) -> (String, Vec<Value>) {
    let mut conds = vec!["1 = 1".to_string()];
    let mut values: Vec<Value> = Vec::new();
    if let Some(e) = &f.experiment {
        conds.push("experiment = ?".into());
        values.push(e.clone().into());
    }
    if let Some(s) = f.since_ms {
        conds.push("end_ms > ?".into());
        values.push(s.into());
    }
    if let Some(u) = f.until_ms {
        conds.push("end_ms <= ?".into());
        values.push(u.into());
    }
    (conds.join(" AND "), values)
}

fn entry_from_row(r: &QueryResult, op: &'static str) -> Result<Entry, LedgerError> {
    let comp: String = get(r, op, "component")?;
    let reason: String = get(r, op, "reason")?;
    Ok(Entry {
        id: get(r, op, "id")?,
        instance: get(r, op, "instance")?,
        job: get(r, op, "job")?,
        experiment: get(r, op, "experiment")?,
        user: get(r, op, "user_name")?,
        component: Component::parse(&comp).ok_or(LedgerError::Corrupt {
            what: "ledger_entry.component",
            value: comp.clone(),
        })?,
        reason: Reason::parse(&reason).ok_or(LedgerError::Corrupt {
            what: "ledger_entry.reason",
            value: reason.clone(),
        })?,
        start_ms: get(r, op, "start_ms")?,
        end_ms: get(r, op, "end_ms")?,
        amount: NanoUsd(get(r, op, "amount_nano")?),
        recorded_ms: get(r, op, "recorded_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            sql_for(DbBackend::Postgres, "a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(sql_for(DbBackend::Sqlite, "a = ?"), "a = ?");
    }

    #[test]
    fn warn_percents_parse_and_reject() {
        assert_eq!(parse_warn_percents("80, 50%,80").unwrap(), vec![50, 80]);
        let err = parse_warn_percents("50,abc").unwrap_err().to_string();
        assert!(err.contains("abc"), "{err}");
        assert!(parse_warn_percents("0").is_err());
    }

    #[test]
    fn floor_nano_carries_the_rest() {
        let (n, rest) = floor_nano(Usd(Decimal::new(15, 10))).unwrap();
        assert_eq!(n, NanoUsd(1));
        assert_eq!(rest, Usd(Decimal::new(5, 10)));
    }
}
