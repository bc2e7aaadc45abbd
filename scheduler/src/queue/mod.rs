//! The queue: adding jobs and sweeps, listing and managing them, and the claim API the
//! scheduler drives.
//!
//! User-facing operations take the **acting user** and enforce the permission model of
//! [`crate::store::users`] (owner or admin for cancel / retry / priority / pause):
//! [`add_jobs`] (with [`plan_jobs`] for `--dry-run`), [`list`], [`show`], [`cancel`],
//! [`retry`], [`set_priority`], [`pause`], [`resume`], [`list_experiments`].
//!
//! The scheduler's side ([`claim`] module, re-exported here) is authorised by fencing tokens
//! instead: [`claim()`] hands out `(job, fence)` pairs under a lease; [`heartbeat`],
//! [`advance`], [`complete`], [`fail`] and [`interrupt`] must present the fence; expired leases
//! are reclaimed by the next claim; retries back off with deterministic jitter.
//!
//! Sweep syntax (`--sweep`, sweep files, `--sample`, placeholders): see [`sweep`].
//!
//! Every state change is journaled in `events` in the same transaction as the change.

pub mod claim;
pub mod sweep;

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use sha2::Digest;

pub use claim::{
    ClaimedJob, Completion, RetryPolicy, advance, claim, complete, fail, fail_with_policy,
    heartbeat, interrupt, reap_expired,
};
pub use sweep::{Point, SweepError, SweepSpec};

use crate::clock::Clock;
use crate::store::entity::{attempt, event, experiment, job};
use crate::store::events::{EntityKind, NewEvent, list_events, record_event, record_events};
use crate::store::users::{authorize, ensure_user, is_admin};
use crate::store::{
    Interruptible, JobState, Store, StoreError, decimal_from_nusd, nusd_from_decimal,
};

/// The experiment jobs go to when none is named.
pub const DEFAULT_EXPERIMENT: &str = "default";

/// What went wrong with a queue operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Bad input, naming the field and the value.
    #[error("invalid {field} {value:?}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Sweep(#[from] SweepError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The fence is stale or the job is no longer leased: stop working on it.
    #[error(
        "job {job}: lease lost (fence {fence} is not current, or the job is no longer claimed)"
    )]
    LeaseLost { job: i64, fence: i64 },
    /// The job is in a state where the operation makes no sense.
    #[error("job {job} is {state}: {why}")]
    BadState {
        job: i64,
        state: String,
        why: String,
    },
}

impl From<DbErr> for QueueError {
    fn from(e: DbErr) -> Self {
        QueueError::Store(StoreError::Db(e))
    }
}

impl QueueError {
    /// True when the user asked for something invalid (exit code 2 in the CLI), as opposed to
    /// a failure while doing it.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            QueueError::Invalid { .. }
                | QueueError::Sweep(_)
                | QueueError::BadState { .. }
                | QueueError::Store(StoreError::NotFound { .. })
                | QueueError::Store(StoreError::PermissionDenied { .. })
        )
    }
}

fn invalid(field: &'static str, value: impl Into<String>, why: impl Into<String>) -> QueueError {
    QueueError::Invalid {
        field,
        value: value.into(),
        why: why.into(),
    }
}

/// What a job needs from an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirements {
    /// Offer query in the `vast` query language (`gpu_ram>=16 num_gpus=1`).
    pub gpu_query: Option<String>,
    pub gpus: u32,
    pub image: Option<String>,
    pub disk_gb: Option<u32>,
    pub checkpoint_dir: Option<String>,
    pub interruptible: Interruptible,
    /// Price cap in dollars per hour.
    pub max_dph: Option<Decimal>,
    pub est_runtime_ms: Option<i64>,
}

impl Default for Requirements {
    fn default() -> Self {
        Self {
            gpu_query: None,
            gpus: 1,
            image: None,
            disk_gb: None,
            checkpoint_dir: None,
            interruptible: Interruptible::Auto,
            max_dph: None,
            est_runtime_ms: None,
        }
    }
}

/// One `queue add`: a command (with `{key}` placeholders), its requirements and a sweep.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub experiment: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub requirements: Requirements,
    pub priority: i32,
    pub max_attempts: u32,
    pub sweep: SweepSpec,
    /// Add jobs even when identical ones are already in the experiment.
    pub allow_duplicates: bool,
}

impl AddRequest {
    /// A request with defaults: experiment `default`, priority 0, 3 attempts, no sweep.
    pub fn new(experiment: impl Into<String>, command: Vec<String>) -> Self {
        Self {
            experiment: experiment.into(),
            command,
            env: Vec::new(),
            requirements: Requirements::default(),
            priority: 0,
            max_attempts: 3,
            sweep: SweepSpec::default(),
            allow_duplicates: false,
        }
    }
}

/// One job as it will be written: expanded command, environment and identity.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlannedJob {
    pub name: String,
    pub params: BTreeMap<String, String>,
    pub command: Vec<String>,
    pub command_line: String,
    pub env: BTreeMap<String, String>,
    pub checkpoint_dir: Option<String>,
    /// sha256 of everything that defines the job; equal hashes are duplicates.
    pub spec_hash: String,
}

/// Validates a request and expands it into jobs without touching the database (`--dry-run`).
pub fn plan_jobs(req: &AddRequest) -> Result<Vec<PlannedJob>, QueueError> {
    validate_experiment_name(&req.experiment)?;
    if req.command.is_empty() || req.command[0].trim().is_empty() {
        return Err(invalid(
            "command",
            req.command.join(" "),
            "give the command after --",
        ));
    }
    let r = &req.requirements;
    if let Some(q) = &r.gpu_query {
        vast::query::parse_query(q).map_err(|e| invalid("--gpu", q.clone(), e.to_string()))?;
    }
    if r.gpus == 0 {
        return Err(invalid("--gpus", "0", "a job needs at least one GPU"));
    }
    if let Some(img) = &r.image
        && (img.trim().is_empty() || img.contains(char::is_whitespace))
    {
        return Err(invalid("--image", img.clone(), "not an image name"));
    }
    if r.disk_gb == Some(0) {
        return Err(invalid("--disk", "0", "disk must be at least 1 GB"));
    }
    if let Some(d) = r.max_dph {
        if d <= Decimal::ZERO {
            return Err(invalid("--max-dph", d.to_string(), "must be more than 0"));
        }
        if nusd_from_decimal(d).is_none() {
            return Err(invalid("--max-dph", d.to_string(), "too large"));
        }
    }
    if let Some(ms) = r.est_runtime_ms
        && ms <= 0
    {
        return Err(invalid(
            "--est-runtime",
            format!("{ms}ms"),
            "must be positive",
        ));
    }
    if req.max_attempts == 0 {
        return Err(invalid("--max-attempts", "0", "must be at least 1"));
    }
    let mut env_keys = HashSet::new();
    for (k, _) in &req.env {
        if !valid_env_key(k) {
            return Err(invalid("--env", k.clone(), "not a valid variable name"));
        }
        if !env_keys.insert(k.as_str()) {
            return Err(invalid("--env", k.clone(), "given twice"));
        }
    }
    for key in req.sweep.keys() {
        if env_keys.contains(key.as_str()) {
            return Err(invalid(
                "--env",
                key.clone(),
                "is also a sweep parameter (parameters are exported under their own name)",
            ));
        }
    }
    let points = req.sweep.expand()?;
    let mut out = Vec::with_capacity(points.len());
    for point in points {
        let command = req
            .command
            .iter()
            .map(|a| sweep::substitute(a, &point))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = BTreeMap::new();
        for (k, v) in &req.env {
            env.insert(k.clone(), sweep::substitute(v, &point)?);
        }
        for (k, v) in point.all() {
            env.insert(k.to_string(), v.to_string());
        }
        let checkpoint_dir = r
            .checkpoint_dir
            .as_deref()
            .map(|d| sweep::substitute(d, &point))
            .transpose()?;
        let params: BTreeMap<String, String> = point
            .all()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let spec_hash = spec_hash(&command, &env, &params, &checkpoint_dir, r);
        out.push(PlannedJob {
            name: point.name(),
            command_line: shell_join(&command),
            params,
            command,
            env,
            checkpoint_dir,
            spec_hash,
        });
    }
    Ok(out)
}

fn spec_hash(
    command: &[String],
    env: &BTreeMap<String, String>,
    params: &BTreeMap<String, String>,
    checkpoint_dir: &Option<String>,
    r: &Requirements,
) -> String {
    let canonical = serde_json::json!({
        "command": command,
        "env": env,
        "params": params,
        "checkpoint_dir": checkpoint_dir,
        "gpu_query": r.gpu_query,
        "gpus": r.gpus,
        "image": r.image,
        "disk_gb": r.disk_gb,
        "interruptible": r.interruptible.as_str(),
        "max_dph": r.max_dph.map(|d| d.normalize().to_string()),
        "est_runtime_ms": r.est_runtime_ms,
    });
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}

fn valid_env_key(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn validate_experiment_name(name: &str) -> Result<(), QueueError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "--experiment",
            name,
            "use letters, digits, '-', '_' and '.' (it names a folder), at most 100 characters",
        ))
    }
}

/// Joins argv into one line a POSIX shell would split back the same way.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let safe = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@%+{}".contains(c));
            if safe {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a duration such as `90s`, `30m`, `2h`, `1h30m`, `1.5h`, `2d`, `500ms`.
pub fn parse_duration(s: &str) -> Result<i64, QueueError> {
    let bad = |why: &str| invalid("duration", s, why);
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number, e.g. 90s, 30m, 2h, 1h30m"));
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad("not a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = match unit.trim() {
            "ms" => 1.0,
            "s" | "sec" | "secs" => 1_000.0,
            "m" | "min" | "mins" => 60_000.0,
            "h" | "hr" | "hrs" => 3_600_000.0,
            "d" | "day" | "days" => 86_400_000.0,
            "" => return Err(bad("missing unit (ms, s, m, h or d)")),
            _ => return Err(bad("unknown unit (use ms, s, m, h or d)")),
        };
        total += n * ms;
    }
    if !(1.0..=i64::MAX as f64 / 2.0).contains(&total) {
        return Err(bad("must be between 1ms and a few million years"));
    }
    Ok(total.round() as i64)
}

/// Parses a dollar amount such as `0.45` or `$1.20`.
pub fn parse_dollars(s: &str) -> Result<Decimal, QueueError> {
    let t = s.trim().trim_start_matches('$');
    let d: Decimal = t
        .parse()
        .map_err(|_| invalid("dollar amount", s, "not a decimal number, e.g. 0.45"))?;
    if d <= Decimal::ZERO {
        return Err(invalid("dollar amount", s, "must be more than 0"));
    }
    Ok(d)
}

/// What [`add_jobs`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddOutcome {
    pub experiment: String,
    pub experiment_id: i64,
    /// Identifies this add (`jobs.batch`).
    pub batch: String,
    /// Ids of the jobs written, in sweep order.
    pub added: Vec<i64>,
    /// Names of the jobs skipped because an identical one already exists.
    pub skipped_duplicates: Vec<String>,
}

/// Validates, expands and writes a request in one transaction: any bad value writes nothing.
///
/// Jobs identical to ones already in the experiment (same command, environment, parameters and
/// requirements) are skipped unless `allow_duplicates`; two identical adds racing each other are
/// caught by a unique index, so the loser fails and writes nothing.
pub async fn add_jobs(
    store: &Store,
    req: &AddRequest,
    actor: &str,
    clock: &dyn Clock,
) -> Result<AddOutcome, QueueError> {
    let planned = plan_jobs(req)?;
    let now = clock.now_ms();
    let batch = format!("b{now}-{}", crate::store::testing::unique_suffix());
    let txn = store.begin_write().await?;
    ensure_user(&txn, actor, now).await?;
    let exp = get_or_create_experiment(&txn, &req.experiment, actor, now).await?;

    let mut existing: HashSet<String> = HashSet::new();
    if !req.allow_duplicates {
        let hashes: Vec<String> = job::Entity::find()
            .select_only()
            .column(job::Column::SpecHash)
            .filter(job::Column::ExperimentId.eq(exp.id))
            .into_tuple()
            .all(&txn)
            .await?;
        existing.extend(hashes);
    }
    let r = &req.requirements;
    let max_dph_nusd = r.max_dph.and_then(nusd_from_decimal);
    let mut skipped = Vec::new();
    let mut seen_in_batch = HashSet::new();
    let mut rows = Vec::with_capacity(planned.len());
    for p in planned {
        if !req.allow_duplicates
            && (existing.contains(&p.spec_hash) || !seen_in_batch.insert(p.spec_hash.clone()))
        {
            skipped.push(p.name);
            continue;
        }
        rows.push(job::ActiveModel {
            id: NotSet,
            experiment_id: Set(exp.id),
            name: Set(p.name),
            owner: Set(actor.to_string()),
            state: Set(JobState::Queued.as_str().to_string()),
            priority: Set(req.priority),
            command: Set(serde_json::to_string(&p.command).unwrap_or_default()),
            env: Set(serde_json::to_string(&p.env).unwrap_or_default()),
            params: Set(serde_json::to_string(&p.params).unwrap_or_default()),
            gpu_query: Set(r.gpu_query.clone()),
            gpus: Set(i32::try_from(r.gpus).unwrap_or(i32::MAX)),
            image: Set(r.image.clone()),
            disk_gb: Set(r.disk_gb.map(|d| i32::try_from(d).unwrap_or(i32::MAX))),
            checkpoint_dir: Set(p.checkpoint_dir),
            interruptible: Set(r.interruptible.as_str().to_string()),
            max_dph_nusd: Set(max_dph_nusd),
            est_runtime_ms: Set(r.est_runtime_ms),
            attempts: Set(0),
            max_attempts: Set(i32::try_from(req.max_attempts).unwrap_or(i32::MAX)),
            run_at: Set(now),
            fence: Set(0),
            lease_owner: Set(None),
            lease_expires_at: Set(None),
            heartbeat_at: Set(None),
            instance_id: Set(None),
            last_error: Set(None),
            exit_code: Set(None),
            dedup_key: Set(if req.allow_duplicates {
                None
            } else {
                Some(p.spec_hash.clone())
            }),
            spec_hash: Set(p.spec_hash),
            batch: Set(batch.clone()),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(None),
        });
    }
    let mut added = Vec::with_capacity(rows.len());
    let mut it = rows.into_iter().peekable();
    // 33 bound columns per row: 1,500 rows stay under PostgreSQL's 65,535 parameters and 900
    // under SQLite's 32,766; fewer, larger statements are what makes big sweeps fast.
    let chunk_rows = match store.backend() {
        crate::store::Backend::Postgres => 1_500,
        crate::store::Backend::Sqlite => 900,
    };
    while it.peek().is_some() {
        let chunk: Vec<job::ActiveModel> = it.by_ref().take(chunk_rows).collect();
        let ids = job::Entity::insert_many(chunk)
            .exec_with_returning_keys(&txn)
            .await
            .map_err(|e| match &e {
                DbErr::Query(_) | DbErr::Exec(_) if e.to_string().to_lowercase().contains("unique") => {
                    QueueError::Store(StoreError::Conflict(format!(
                        "another `queue add` of the same jobs to experiment {} ran at the same time; run it again",
                        exp.name
                    )))
                }
                _ => QueueError::from(e),
            })?;
        added.extend(ids);
    }
    if !added.is_empty() {
        // One server-side statement journals the whole batch.
        let select = Query::select()
            .expr(Expr::val(EntityKind::Job.as_str()))
            .column(job::Column::Id)
            .expr(Expr::val(Option::<String>::None))
            .expr(Expr::val(JobState::Queued.as_str()))
            .expr(Expr::val(actor))
            .expr(Expr::val(format!("queue add ({batch})")))
            .expr(Expr::val(now))
            .from(job::Entity)
            .and_where(job::Column::Batch.eq(batch.as_str()))
            .order_by(job::Column::Id, sea_orm::Order::Asc)
            .to_owned();
        let insert = Query::insert()
            .into_table(event::Entity)
            .columns([
                event::Column::Entity,
                event::Column::EntityId,
                event::Column::FromState,
                event::Column::ToState,
                event::Column::Actor,
                event::Column::Reason,
                event::Column::At,
            ])
            .select_from(select)
            .map_err(|e| QueueError::Store(StoreError::Db(DbErr::Custom(e.to_string()))))?
            .to_owned();
        txn.execute(&insert).await?;
    }
    txn.commit().await?;
    Ok(AddOutcome {
        experiment: exp.name,
        experiment_id: exp.id,
        batch,
        added,
        skipped_duplicates: skipped,
    })
}

async fn get_or_create_experiment<C: ConnectionTrait>(
    db: &C,
    name: &str,
    actor: &str,
    now: i64,
) -> Result<experiment::Model, QueueError> {
    if let Some(e) = find_experiment(db, name).await? {
        return Ok(e);
    }
    let inserted = experiment::Entity::insert(experiment::ActiveModel {
        id: NotSet,
        name: Set(name.to_string()),
        owner: Set(actor.to_string()),
        paused: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(experiment::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    let e = find_experiment(db, name)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "experiment",
            key: name.to_string(),
        })?;
    if inserted == 1 {
        record_event(
            db,
            EntityKind::Experiment,
            e.id,
            None,
            "active",
            actor,
            "created by queue add",
            now,
        )
        .await?;
    }
    Ok(e)
}

async fn find_experiment<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<Option<experiment::Model>, QueueError> {
    Ok(experiment::Entity::find()
        .filter(experiment::Column::Name.eq(name))
        .one(db)
        .await?)
}

async fn require_experiment<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<experiment::Model, QueueError> {
    find_experiment(db, name).await?.ok_or_else(|| {
        QueueError::Store(StoreError::NotFound {
            what: "experiment",
            key: name.to_string(),
        })
    })
}

/// A job as shown to users and scripts (`queue list --json`): a stable schema.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobView {
    pub id: i64,
    pub experiment: String,
    pub name: String,
    pub state: String,
    pub owner: String,
    pub priority: i32,
    /// The expanded argv.
    pub command: Vec<String>,
    /// `command` joined for a POSIX shell.
    pub command_line: String,
    pub params: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub gpu_query: Option<String>,
    pub gpus: i32,
    pub image: Option<String>,
    pub disk_gb: Option<i32>,
    pub checkpoint_dir: Option<String>,
    pub interruptible: String,
    /// Dollars per hour, as a decimal string.
    pub max_dph: Option<String>,
    pub est_runtime_ms: Option<i64>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: i64,
    pub fence: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub instance_id: Option<i64>,
    pub last_error: Option<String>,
    pub exit_code: Option<i32>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl JobView {
    pub fn from_model(j: &job::Model, experiment: &str) -> Result<Self, StoreError> {
        let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt {
            what: "job",
            detail: format!("job {} {what}: {e}", j.id),
        };
        let command: Vec<String> =
            serde_json::from_str(&j.command).map_err(|e| corrupt("command", e))?;
        Ok(Self {
            id: j.id,
            experiment: experiment.to_string(),
            name: j.name.clone(),
            state: j.state.clone(),
            owner: j.owner.clone(),
            priority: j.priority,
            command_line: shell_join(&command),
            command,
            params: serde_json::from_str(&j.params).map_err(|e| corrupt("params", e))?,
            env: serde_json::from_str(&j.env).map_err(|e| corrupt("env", e))?,
            gpu_query: j.gpu_query.clone(),
            gpus: j.gpus,
            image: j.image.clone(),
            disk_gb: j.disk_gb,
            checkpoint_dir: j.checkpoint_dir.clone(),
            interruptible: j.interruptible.clone(),
            max_dph: j
                .max_dph_nusd
                .map(|n| decimal_from_nusd(n).normalize().to_string()),
            est_runtime_ms: j.est_runtime_ms,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            fence: j.fence,
            lease_owner: j.lease_owner.clone(),
            lease_expires_at: j.lease_expires_at,
            instance_id: j.instance_id,
            last_error: j.last_error.clone(),
            exit_code: j.exit_code,
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
        })
    }
}

/// Which jobs [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub experiment: Option<String>,
    pub state: Option<JobState>,
    pub owner: Option<String>,
    pub limit: Option<u64>,
}

async fn experiment_names<C: ConnectionTrait>(db: &C) -> Result<HashMap<i64, String>, QueueError> {
    Ok(experiment::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect())
}

/// Jobs matching `filter`, by id.
pub async fn list(store: &Store, filter: &ListFilter) -> Result<Vec<JobView>, QueueError> {
    let db = store.db();
    let mut q = job::Entity::find().order_by_asc(job::Column::Id);
    if let Some(name) = &filter.experiment {
        let e = require_experiment(db, name).await?;
        q = q.filter(job::Column::ExperimentId.eq(e.id));
    }
    if let Some(s) = filter.state {
        q = q.filter(job::Column::State.eq(s.as_str()));
    }
    if let Some(o) = &filter.owner {
        q = q.filter(job::Column::Owner.eq(o.as_str()));
    }
    if let Some(n) = filter.limit {
        q = q.limit(n);
    }
    let names = experiment_names(db).await?;
    q.all(db)
        .await?
        .iter()
        .map(|j| {
            let exp = names
                .get(&j.experiment_id)
                .map(String::as_str)
                .unwrap_or("?");
            JobView::from_model(j, exp).map_err(QueueError::from)
        })
        .collect()
}

/// How a user names a job: its id, or `experiment/name` when that is unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    Id(i64),
    Name { experiment: String, name: String },
}

impl std::str::FromStr for JobRef {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.trim().parse::<i64>() {
            return Ok(JobRef::Id(id));
        }
        match s.split_once('/') {
            Some((e, n)) if !e.is_empty() && !n.is_empty() => Ok(JobRef::Name {
                experiment: e.to_string(),
                name: n.to_string(),
            }),
            _ => Err(invalid("job", s, "expected a job id or EXPERIMENT/NAME")),
        }
    }
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobRef::Id(id) => write!(f, "{id}"),
            JobRef::Name { experiment, name } => write!(f, "{experiment}/{name}"),
        }
    }
}

/// Finds one job by reference.
pub async fn find_job<C: ConnectionTrait>(db: &C, r: &JobRef) -> Result<job::Model, QueueError> {
    let not_found = || {
        QueueError::Store(StoreError::NotFound {
            what: "job",
            key: r.to_string(),
        })
    };
    match r {
        JobRef::Id(id) => job::Entity::find_by_id(*id)
            .one(db)
            .await?
            .ok_or_else(not_found),
        JobRef::Name { experiment, name } => {
            let e = require_experiment(db, experiment).await?;
            let mut found = job::Entity::find()
                .filter(job::Column::ExperimentId.eq(e.id))
                .filter(job::Column::Name.eq(name.as_str()))
                .limit(2)
                .all(db)
                .await?;
            match found.len() {
                0 => Err(not_found()),
                1 => Ok(found.remove(0)),
                _ => Err(invalid(
                    "job",
                    r.to_string(),
                    "several jobs have this name; use the job id",
                )),
            }
        }
    }
}

/// A job with its attempts and its journal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobDetail {
    pub job: JobView,
    pub attempts: Vec<attempt::Model>,
    pub events: Vec<event::Model>,
}

/// One job in full.
pub async fn show(store: &Store, r: &JobRef) -> Result<JobDetail, QueueError> {
    let db = store.db();
    let j = find_job(db, r).await?;
    let exp = experiment::Entity::find_by_id(j.experiment_id)
        .one(db)
        .await?
        .map(|e| e.name)
        .unwrap_or_default();
    Ok(JobDetail {
        job: JobView::from_model(&j, &exp)?,
        attempts: crate::store::attempts::attempts_for_job(db, j.id).await?,
        events: list_events(db, EntityKind::Job, j.id).await?,
    })
}

/// What to cancel.
#[derive(Debug, Clone)]
pub enum CancelTarget {
    Jobs(Vec<JobRef>),
    Experiment(String),
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CancelOutcome {
    pub cancelled: Vec<i64>,
    /// Already succeeded, failed or cancelled: left as they were.
    pub already_final: Vec<i64>,
    /// (Experiment cancels only) jobs owned by someone else, left alone.
    pub skipped_not_owner: Vec<i64>,
}

/// Cancels jobs. Named jobs must all be the actor's (or the actor an admin), else nothing is
/// cancelled; an experiment cancel takes the actor's own jobs (all, for an admin) and reports
/// the rest. A cancelled leased job gets a new fence, so its agent's next heartbeat is refused.
pub async fn cancel(
    store: &Store,
    actor: &str,
    target: &CancelTarget,
    clock: &dyn Clock,
) -> Result<CancelOutcome, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    ensure_user(&txn, actor, now).await?;
    let admin = is_admin(&txn, actor).await?;
    let mut out = CancelOutcome::default();
    let jobs: Vec<job::Model> = match target {
        CancelTarget::Jobs(refs) => {
            let mut v = Vec::with_capacity(refs.len());
            for r in refs {
                let j = find_job(&txn, r).await?;
                authorize(&txn, actor, &j.owner, "cancel", &format!("job {}", j.id)).await?;
                v.push(j);
            }
            v
        }
        CancelTarget::Experiment(name) => {
            let e = require_experiment(&txn, name).await?;
            let all = job::Entity::find()
                .filter(job::Column::ExperimentId.eq(e.id))
                .order_by_asc(job::Column::Id)
                .all(&txn)
                .await?;
            let (mine, others): (Vec<_>, Vec<_>) =
                all.into_iter().partition(|j| admin || j.owner == actor);
            out.skipped_not_owner = others
                .iter()
                .filter(|j| !is_final(&j.state))
                .map(|j| j.id)
                .collect();
            mine
        }
    };
    let mut events = Vec::new();
    for j in jobs {
        if is_final(&j.state) {
            out.already_final.push(j.id);
            continue;
        }
        job::Entity::update_many()
            .col_expr(
                job::Column::State,
                Expr::value(JobState::Cancelled.as_str()),
            )
            .col_expr(job::Column::Fence, Expr::col(job::Column::Fence).add(1))
            .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
            .col_expr(
                job::Column::LeaseExpiresAt,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(j.id))
            .exec(&txn)
            .await?;
        events.push(NewEvent {
            entity: EntityKind::Job,
            entity_id: j.id,
            from: Some(j.state.clone()),
            to: JobState::Cancelled.as_str().to_string(),
            actor: actor.to_string(),
            reason: "queue cancel".to_string(),
            at: now,
        });
        out.cancelled.push(j.id);
    }
    record_events(&txn, events).await?;
    txn.commit().await?;
    Ok(out)
}

fn is_final(state: &str) -> bool {
    state
        .parse::<JobState>()
        .map(JobState::is_final)
        .unwrap_or(false)
}

/// Puts a failed or cancelled job back in the queue with a fresh set of attempts.
pub async fn retry(
    store: &Store,
    actor: &str,
    r: &JobRef,
    clock: &dyn Clock,
) -> Result<JobView, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    ensure_user(&txn, actor, now).await?;
    let j = find_job(&txn, r).await?;
    authorize(&txn, actor, &j.owner, "retry", &format!("job {}", j.id)).await?;
    if !matches!(
        j.state.parse::<JobState>(),
        Ok(JobState::Failed | JobState::Cancelled)
    ) {
        return Err(QueueError::BadState {
            job: j.id,
            state: j.state,
            why: "only failed or cancelled jobs can be retried".to_string(),
        });
    }
    job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(JobState::Queued.as_str()))
        .col_expr(job::Column::Attempts, Expr::value(0))
        .col_expr(job::Column::RunAt, Expr::value(now))
        .col_expr(job::Column::FinishedAt, Expr::value(Option::<i64>::None))
        .col_expr(job::Column::ExitCode, Expr::value(Option::<i32>::None))
        .col_expr(job::Column::InstanceId, Expr::value(Option::<i64>::None))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(j.id))
        .exec(&txn)
        .await?;
    record_event(
        &txn,
        EntityKind::Job,
        j.id,
        Some(&j.state),
        JobState::Queued.as_str(),
        actor,
        "queue retry",
        now,
    )
    .await?;
    let updated = find_job(&txn, &JobRef::Id(j.id)).await?;
    let exp = experiment::Entity::find_by_id(updated.experiment_id)
        .one(&txn)
        .await?
        .map(|e| e.name)
        .unwrap_or_default();
    txn.commit().await?;
    Ok(JobView::from_model(&updated, &exp)?)
}

/// Changes a job's priority (higher runs first).
pub async fn set_priority(
    store: &Store,
    actor: &str,
    r: &JobRef,
    priority: i32,
    clock: &dyn Clock,
) -> Result<JobView, QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    ensure_user(&txn, actor, now).await?;
    let j = find_job(&txn, r).await?;
    authorize(
        &txn,
        actor,
        &j.owner,
        "reprioritise",
        &format!("job {}", j.id),
    )
    .await?;
    job::Entity::update_many()
        .col_expr(job::Column::Priority, Expr::value(priority))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(j.id))
        .exec(&txn)
        .await?;
    record_event(
        &txn,
        EntityKind::Job,
        j.id,
        Some(&j.state),
        &j.state,
        actor,
        &format!("priority {} -> {priority}", j.priority),
        now,
    )
    .await?;
    let updated = find_job(&txn, &JobRef::Id(j.id)).await?;
    let exp = experiment::Entity::find_by_id(updated.experiment_id)
        .one(&txn)
        .await?
        .map(|e| e.name)
        .unwrap_or_default();
    txn.commit().await?;
    Ok(JobView::from_model(&updated, &exp)?)
}

/// Stops claiming an experiment's queued jobs (running ones keep running).
pub async fn pause(
    store: &Store,
    actor: &str,
    experiment: &str,
    clock: &dyn Clock,
) -> Result<(), QueueError> {
    set_paused(store, actor, experiment, true, clock).await
}

/// Lets an experiment's queued jobs be claimed again.
pub async fn resume(
    store: &Store,
    actor: &str,
    experiment: &str,
    clock: &dyn Clock,
) -> Result<(), QueueError> {
    set_paused(store, actor, experiment, false, clock).await
}

async fn set_paused(
    store: &Store,
    actor: &str,
    name: &str,
    paused: bool,
    clock: &dyn Clock,
) -> Result<(), QueueError> {
    let now = clock.now_ms();
    let txn = store.begin_write().await?;
    ensure_user(&txn, actor, now).await?;
    let e = require_experiment(&txn, name).await?;
    let verb = if paused { "pause" } else { "resume" };
    authorize(&txn, actor, &e.owner, verb, &format!("experiment {name}")).await?;
    if e.paused != paused {
        experiment::Entity::update_many()
            .col_expr(experiment::Column::Paused, Expr::value(paused))
            .col_expr(experiment::Column::UpdatedAt, Expr::value(now))
            .filter(experiment::Column::Id.eq(e.id))
            .exec(&txn)
            .await?;
        let (from, to) = if paused {
            ("active", "paused")
        } else {
            ("paused", "active")
        };
        record_event(
            &txn,
            EntityKind::Experiment,
            e.id,
            Some(from),
            to,
            actor,
            &format!("queue {verb}"),
            now,
        )
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// An experiment with job counts per state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExperimentSummary {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub paused: bool,
    pub created_at: i64,
    pub jobs: u64,
    /// Jobs per state (only states that occur).
    pub states: BTreeMap<String, u64>,
}

/// Every experiment, by name.
pub async fn list_experiments(store: &Store) -> Result<Vec<ExperimentSummary>, QueueError> {
    let db = store.db();
    let counts: Vec<(i64, String, i64)> = job::Entity::find()
        .select_only()
        .column(job::Column::ExperimentId)
        .column(job::Column::State)
        .column_as(job::Column::Id.count(), "n")
        .group_by(job::Column::ExperimentId)
        .group_by(job::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    let mut per: HashMap<i64, BTreeMap<String, u64>> = HashMap::new();
    for (e, s, n) in counts {
        per.entry(e)
            .or_default()
            .insert(s, u64::try_from(n).unwrap_or(0));
    }
    Ok(experiment::Entity::find()
        .order_by_asc(experiment::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(|e| {
            let states = per.remove(&e.id).unwrap_or_default();
            ExperimentSummary {
                id: e.id,
                jobs: states.values().sum(),
                name: e.name,
                owner: e.owner,
                paused: e.paused,
                created_at: e.created_at,
                states,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90_000);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("1.5h").unwrap(), 5_400_000);
        assert_eq!(parse_duration("2d").unwrap(), 172_800_000);
        assert_eq!(parse_duration("250ms").unwrap(), 250);
        for bad in ["", "90", "3x", "h", "1h-2m"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn dollars() {
        assert_eq!(parse_dollars("$0.45").unwrap().to_string(), "0.45");
        assert!(parse_dollars("-1").is_err());
        assert!(
            parse_dollars("abc")
                .unwrap_err()
                .to_string()
                .contains("\"abc\"")
        );
    }

    #[test]
    fn shell_join_quotes_only_when_needed() {
        let argv: Vec<String> = ["python", "train.py", "--lr", "0.1", "it's", "a b", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_join(&argv),
            r#"python train.py --lr 0.1 'it'\''s' 'a b' ''"#
        );
    }

    #[test]
    fn plan_expands_and_validates() {
        let mut req = AddRequest::new(
            "e1",
            ["python", "train.py", "--lr", "{lr}", "--seed", "{seed}"]
                .map(String::from)
                .to_vec(),
        );
        req.sweep
            .push_grid(sweep::parse_sweep_arg("lr=0.1,0.01").unwrap())
            .unwrap();
        req.sweep
            .push_grid(sweep::parse_sweep_arg("seed=0,1,2").unwrap())
            .unwrap();
        req.requirements.gpu_query = Some("gpu_ram>=16".to_string());
        let jobs = plan_jobs(&req).unwrap();
        assert_eq!(jobs.len(), 6);
        assert_eq!(jobs[0].name, "lr=0.1,seed=0");
        assert_eq!(jobs[0].command_line, "python train.py --lr 0.1 --seed 0");
        assert_eq!(jobs[5].env.get("seed").map(String::as_str), Some("2"));
        let hashes: HashSet<&str> = jobs.iter().map(|j| j.spec_hash.as_str()).collect();
        assert_eq!(hashes.len(), 6);

        let mut bad = req.clone();
        bad.command.push("{epochs}".into());
        assert!(
            plan_jobs(&bad)
                .unwrap_err()
                .to_string()
                .contains("{epochs}")
        );
        let mut bad = req.clone();
        bad.requirements.gpu_query = Some("gpu_ram>=".into());
        assert!(plan_jobs(&bad).unwrap_err().to_string().contains("--gpu"));
        let mut bad = req.clone();
        bad.experiment = "../etc".into();
        assert!(
            plan_jobs(&bad)
                .unwrap_err()
                .to_string()
                .contains("--experiment")
        );
        let mut bad = req;
        bad.env.push(("lr".into(), "1".into()));
        assert!(
            plan_jobs(&bad)
                .unwrap_err()
                .to_string()
                .contains("sweep parameter")
        );
    }
}
