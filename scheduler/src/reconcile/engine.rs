//! The imperative shell around [`reconcile`]: gather observations, execute the actions against
//! the effects (market, runner, journal, cost book), record every outcome with [`apply`].
//!
//! Crash safety rests on two rules. The journal is written *before* an effect that creates
//! something (a purchase is journaled with its label first), and again after every effect. And
//! nothing is concluded from memory that the market can contradict: on each pass the listing
//! by label prefix adopts purchases whose answer was lost, destroys what we do not know, and
//! confirms destroys. A `kill -9` anywhere, then a restart with the same journal, converges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use ledger::Reason;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::clock::{EpochMs, SharedClock};
use crate::market::{CreateSpec, Endpoint, MarketError, OfferSearch, SharedMarket};

use super::book::{CostBook, CostSummary, billing_state};
use super::core::{ReconcileConfig, reconcile};
use super::mirror::StoreMirror;
use super::model::*;
use super::runner::{ActiveAttempt, Runner, StartRequest};
use super::transition::{Outcome, apply};

/// What the engine persists: the world and the cost book.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub world: WorldView,
    pub book: CostBook,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot read the journal {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("cannot write the journal {path}: {msg}")]
    Write { path: PathBuf, msg: String },
}

/// Where the engine state survives a crash.
pub trait Journal: Send + Sync {
    fn load(&self) -> BoxFuture<'_, Result<Option<EngineState>, JournalError>>;
    fn save<'a>(&'a self, state: &'a EngineState) -> BoxFuture<'a, Result<(), JournalError>>;
}

/// In memory: simulations and tests (a "restart" reuses the same journal object).
#[derive(Debug, Default)]
pub struct MemoryJournal(Mutex<Option<EngineState>>);

impl Journal for MemoryJournal {
    fn load(&self) -> BoxFuture<'_, Result<Option<EngineState>, JournalError>> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Box::pin(async move { Ok(s) })
    }
    fn save<'a>(&'a self, state: &'a EngineState) -> BoxFuture<'a, Result<(), JournalError>> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
        Box::pin(async { Ok(()) })
    }
}

/// A JSON file replaced atomically (write, fsync, rename), so a crash leaves the old or the
/// new state, never half of one.
#[derive(Debug, Clone)]
pub struct FileJournal {
    path: PathBuf,
}

impl FileJournal {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
    /// `$VASTICLAUDE_HOME/engine/state.json`.
    pub fn in_home(home: &Path) -> Self {
        Self::new(home.join("engine").join("state.json"))
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Write `bytes` to `path` atomically (readers see the old or the new file), without waiting
/// for the disk: for snapshots that are rewritten anyway.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Write `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl FileJournal {
    /// Read the journal now (for commands that only look).
    pub fn read(&self) -> Result<Option<EngineState>, JournalError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| JournalError::Read {
                    path: self.path.clone(),
                    msg: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError::Read {
                path: self.path.clone(),
                msg: e.to_string(),
            }),
        }
    }
    fn write(&self, state: &EngineState) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(state).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }
}

impl Journal for FileJournal {
    fn load(&self) -> BoxFuture<'_, Result<Option<EngineState>, JournalError>> {
        let r = self.read();
        Box::pin(async move { r })
    }
    fn save<'a>(&'a self, state: &'a EngineState) -> BoxFuture<'a, Result<(), JournalError>> {
        let r = self.write(state);
        Box::pin(async move { r })
    }
}

/// Knobs of the shell.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub workspace: String,
    /// `$VASTICLAUDE_HOME`: experiments' folders and the snapshots go here.
    pub home: PathBuf,
    pub reconcile: ReconcileConfig,
    /// Base offer query (Vast query language).
    pub offer_query: String,
    pub offer_limit: u32,
    /// Offers are searched again after this long.
    pub offer_ttl_ms: i64,
    /// Our public SSH key, put on every instance.
    pub ssh_public_key: Option<String>,
    /// Who gets each experiment's final cost report by email (`VASTICLAUDE_REPORT_TO`), sent
    /// through `VASTICLAUDE_SMTP_URL` when that is configured.
    pub report_to: Vec<String>,
    /// Write the human-readable snapshots (`instances.json`, experiments' `status.json`,
    /// jobs' `job.json`); simulations turn them off.
    pub snapshots: bool,
}

impl EngineConfig {
    pub fn new(workspace: impl Into<String>, home: impl Into<PathBuf>) -> Self {
        Self {
            workspace: workspace.into(),
            home: home.into(),
            reconcile: ReconcileConfig::default(),
            offer_query: "reliability>0.9 num_gpus>=1".into(),
            offer_limit: 64,
            offer_ttl_ms: 30_000,
            ssh_public_key: None,
            report_to: Vec::new(),
            snapshots: true,
        }
    }
}

/// Something that happened, for progress displays and logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineEvent {
    pub at_ms: EpochMs,
    pub kind: String,
    pub detail: String,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepReport {
    pub actions: usize,
    pub drained: bool,
    pub errors: Vec<String>,
}

/// A final report of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentReport {
    pub experiment: String,
    pub jobs: BTreeMap<String, usize>,
    pub cost: Decimal,
    pub lost_to_interruptions: Decimal,
    pub folder: PathBuf,
}

/// Counters for the demo and status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    pub purchases: u64,
    pub purchase_failures: u64,
    pub boot_failures: u64,
    pub preemptions: u64,
    pub outbids: u64,
    pub bid_raises: u64,
    pub attempts_started: u64,
    pub attempts_failed: u64,
    pub attempts_interrupted: u64,
    pub resumed_from_checkpoint: u64,
    pub checkpoints_pulled: u64,
    pub orphans_destroyed: u64,
    pub destroys: u64,
}

pub struct Engine {
    pub cfg: EngineConfig,
    state: EngineState,
    market: SharedMarket,
    runner: Arc<dyn Runner>,
    journal: Arc<dyn Journal>,
    offers: Vec<OfferObs>,
    offers_at: Option<EpochMs>,
    events: Vec<EngineEvent>,
    reports: Vec<ExperimentReport>,
    pub stats: EngineStats,
    last_snapshot: String,
    ledger: Option<ledger::Ledger>,
    mirror: Option<StoreMirror>,
    /// Consecutive failed pulls per job (not journaled: a restart just grants a few more tries).
    pull_failures: BTreeMap<JobId, u32>,
    /// Machines whose interruptible purchase was refused (their GPUs are held by higher bids),
    /// and until when not to bid on them again: their listed `min_bid` is only the floor.
    /// Not journaled: after a restart a refused bid just costs one more try.
    bid_refused: BTreeMap<i64, EpochMs>,
}

/// How long a machine that refused our bid is not bid on again.
const BID_REFUSED_BACKOFF_MS: EpochMs = 30 * 60_000;

/// After this many failed pulls in a row the engine stops holding back a job's dependent
/// actions, so an instance that never answers cannot keep an attempt (and its bill) open
/// forever; the output is then lost, and the event log says so.
const MAX_DEFERRED_PULLS: u32 = 10;

/// What a failed pull in this pass holds back until the next pass retries it.
#[derive(Default)]
struct Deferred {
    /// Jobs whose pull failed: their attempt must not end (or move) in this pass.
    jobs: BTreeSet<JobId>,
    /// Instances that hold the only copy of what a failed pull wanted: not destroyed, and
    /// not given new work (the core's working copy believed their slot freed).
    keys: BTreeSet<InstanceKey>,
}

fn deferred_what(a: &Action) -> String {
    match a {
        Action::EndAttempt { job, .. } => format!("ending the attempt of job {job}"),
        Action::Place { job, key } => format!("placing job {job} on instance {key}"),
        Action::StartAttempt { job, key, .. } => format!("starting job {job} on instance {key}"),
        Action::Destroy { key, .. } => format!("destroying instance {key}"),
        other => format!("{other:?}"),
    }
}

impl Deferred {
    fn holds(&self, a: &Action) -> bool {
        match a {
            Action::EndAttempt { job, .. } => self.jobs.contains(job),
            Action::Place { job, key } | Action::StartAttempt { job, key, .. } => {
                self.jobs.contains(job) || self.keys.contains(key)
            }
            Action::Destroy { key, .. } => self.keys.contains(key),
            _ => false,
        }
    }
}

fn exp_dir(home: &Path, exp: &str) -> PathBuf {
    home.join("experiments").join(sanitize(exp))
}

/// A name safe as one path component.
pub fn sanitize(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() || t.starts_with('.') {
        format!("_{t}")
    } else {
        t
    }
}

/// `$VASTICLAUDE_HOME/experiments/<experiment>/jobs/<job>/`.
pub fn job_dir(home: &Path, exp: &str, job: JobId) -> PathBuf {
    exp_dir(home, exp).join("jobs").join(job.to_string())
}

impl Engine {
    /// Load the journal (or start empty) and re-arm the runner for attempts that were running.
    pub async fn new(
        cfg: EngineConfig,
        market: SharedMarket,
        runner: Arc<dyn Runner>,
        journal: Arc<dyn Journal>,
    ) -> Result<Self, JournalError> {
        let mut state = journal.load().await?.unwrap_or_default();
        if state.world.workspace.is_empty() {
            state.world.workspace = cfg.workspace.clone();
        }
        for j in state.world.jobs.values() {
            if let Some(a) = &j.attempt {
                runner.readopt(j.id, a.id, a.token, a.token_hash.as_deref());
            }
        }
        Ok(Self {
            cfg,
            state,
            market,
            runner,
            journal,
            offers: Vec::new(),
            offers_at: None,
            events: Vec::new(),
            reports: Vec::new(),
            stats: EngineStats::default(),
            last_snapshot: String::new(),
            ledger: None,
            mirror: None,
            pull_failures: BTreeMap::new(),
            bid_refused: BTreeMap::new(),
        })
    }

    /// Also accrue into the store-backed ledger (what `vasticlaude ledger` and budgets read),
    /// and take experiment budgets from it.
    pub fn with_ledger(mut self, ledger: ledger::Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Also mirror jobs' states, instances and attempts into the store (after each journal
    /// save; the journal stays the source of truth).
    pub fn with_mirror(mut self, mirror: StoreMirror) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// The store mirror, to hand it the fence of each claimed job.
    pub fn mirror_mut(&mut self) -> Option<&mut StoreMirror> {
        self.mirror.as_mut()
    }

    /// Bring the store mirror (if any) up to the journaled world; failures become warnings
    /// and are retried on the next pass.
    pub async fn sync_mirror(&mut self, now: EpochMs) {
        let Some(m) = self.mirror.as_mut() else {
            return;
        };
        let errors = m.sync(&self.state.world, &self.cfg.home, now).await;
        for e in errors {
            self.event(now, "warn", e);
        }
    }

    /// Give the ledger every interval piece not yet stored, up to `now`. Replays are harmless
    /// (the ledger skips what it has), so a crash between storing and journaling is fine.
    pub async fn accrue_to_ledger(&mut self, now: EpochMs) -> Result<usize, String> {
        let Some(l) = self.ledger.clone() else {
            return Ok(0);
        };
        let mut n = 0;
        let mut failed: std::collections::BTreeSet<InstanceKey> = std::collections::BTreeSet::new();
        for (key, until, input) in self.state.book.accrual_inputs(now) {
            if failed.contains(&key) {
                continue;
            }
            match l.record_interval(&input, now).await {
                Ok(_) => {
                    self.state.book.mark_accrued(key, until);
                    n += 1;
                }
                Err(e) => {
                    failed.insert(key);
                    self.event(
                        now,
                        "warn",
                        format!("ledger accrual for {} failed: {e}", input.instance),
                    );
                }
            }
        }
        self.save().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Send due scheduled reports and budget alerts (each firing is recorded by the ledger, so
    /// a restart neither skips nor repeats one). Needs `VASTICLAUDE_SMTP_URL`; without it the
    /// schedules wait.
    async fn report_schedules(&mut self, now: EpochMs) {
        let Some(l) = self.ledger.clone() else { return };
        let Ok(mailer) = ledger::Mailer::from_env() else {
            return;
        };
        let mut progress: BTreeMap<String, ledger::report::ExperimentProgress> = BTreeMap::new();
        for j in self.state.world.jobs.values() {
            let p = progress.entry(j.experiment.clone()).or_insert_with(|| {
                ledger::report::ExperimentProgress {
                    experiment: j.experiment.clone(),
                    ..Default::default()
                }
            });
            p.jobs_total += 1;
            match j.state {
                JobState::Succeeded => p.jobs_done += 1,
                JobState::Failed => p.jobs_failed += 1,
                JobState::Starting | JobState::Running => p.jobs_running += 1,
                _ => {}
            }
        }
        let progress: Vec<_> = progress.into_values().collect();
        match l.tick(&mailer, &progress, now).await {
            Ok(t) => {
                for s in t.reports.iter().chain(t.alerts.iter()) {
                    let what = match &s.error {
                        None => format!("sent \"{}\" to {}", s.subject, s.to.join(", ")),
                        Some(e) => format!("could not send \"{}\": {e}", s.subject),
                    };
                    self.event(now, "report", what);
                }
            }
            Err(e) => self.event(now, "warn", format!("report schedules: {e}")),
        }
    }

    /// Experiment budgets set in the ledger (`vasticlaude budget set`) apply here.
    async fn load_budgets(&mut self) {
        let Some(l) = self.ledger.clone() else { return };
        let Ok(budgets) = l.budgets().await else {
            return;
        };
        for b in budgets {
            let ledger::store::BudgetScope::Experiment(exp) = &b.scope else {
                continue;
            };
            if !b.hard {
                continue;
            }
            let warn = b
                .warn_percents
                .iter()
                .copied()
                .filter(|p| *p < 100)
                .max()
                .map(|p| Decimal::from(p) / Decimal::from(100))
                .unwrap_or(Decimal::new(8, 1));
            let entry = self
                .state
                .world
                .budgets
                .entry(exp.clone())
                .or_insert(BudgetView {
                    limit: b.amount.0,
                    warn_fraction: warn,
                    warned: false,
                    hard_stopped: false,
                });
            if entry.limit != b.amount.0 {
                // A raised budget lifts a hard stop; held jobs may run again.
                if b.amount.0 > entry.limit {
                    entry.hard_stopped = false;
                    entry.warned = false;
                }
                entry.limit = b.amount.0;
            }
            entry.warn_fraction = warn;
        }
    }

    pub fn ledger(&self) -> Option<&ledger::Ledger> {
        self.ledger.as_ref()
    }
    pub fn world(&self) -> &WorldView {
        &self.state.world
    }
    pub fn book(&self) -> &CostBook {
        &self.state.book
    }
    pub fn costs(&self, now: EpochMs) -> CostSummary {
        self.state.book.summary(now)
    }
    /// Events since the last call.
    pub fn drain_events(&mut self) -> Vec<EngineEvent> {
        std::mem::take(&mut self.events)
    }
    /// Final reports produced since the last call.
    pub fn drain_reports(&mut self) -> Vec<ExperimentReport> {
        std::mem::take(&mut self.reports)
    }

    /// Queue jobs (ids must be new) and set budgets, then journal.
    pub async fn add_jobs(&mut self, jobs: Vec<JobView>) -> Result<(), JournalError> {
        for j in jobs {
            self.state.world.jobs.entry(j.id).or_insert(j);
        }
        self.save().await
    }

    pub async fn set_budget(
        &mut self,
        experiment: &str,
        limit: Decimal,
        warn_fraction: Decimal,
    ) -> Result<(), JournalError> {
        let b = self
            .state
            .world
            .budgets
            .entry(experiment.to_string())
            .or_insert(BudgetView {
                limit,
                warn_fraction,
                warned: false,
                hard_stopped: false,
            });
        b.limit = limit;
        b.warn_fraction = warn_fraction;
        self.save().await
    }

    async fn save(&self) -> Result<(), JournalError> {
        self.journal.save(&self.state).await
    }

    fn event(&mut self, now: EpochMs, kind: &str, detail: String) {
        tracing::info!(kind, %detail, "engine");
        self.events.push(EngineEvent {
            at_ms: now,
            kind: kind.to_string(),
            detail,
        });
    }

    async fn record(
        &mut self,
        action: &Action,
        outcome: &Outcome,
        now: EpochMs,
    ) -> Result<(), JournalError> {
        apply(&mut self.state.world, action, outcome, now);
        self.save().await
    }

    fn endpoint_of(&self, key: InstanceKey) -> Option<VastId> {
        self.state.world.instances.get(&key).and_then(|i| i.vast_id)
    }

    async fn endpoint(&self, key: InstanceKey) -> Result<Endpoint, String> {
        let id = self
            .endpoint_of(key)
            .ok_or_else(|| format!("instance {key} has no Vast id yet"))?;
        match self.market.endpoint(id).await {
            Ok(Some(ep)) => Ok(ep),
            Ok(None) => Err(format!("instance {id} is not reachable")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn observe(&mut self, now: EpochMs) -> Observations {
        let prefix = label_prefix(&self.state.world.workspace);
        let market = match self.market.list(&prefix).await {
            Ok(l) => Some(l),
            Err(e) => {
                self.event(now, "warn", format!("listing our instances failed: {e}"));
                None
            }
        };
        let wants_offers = self
            .state
            .world
            .jobs
            .values()
            .any(|j| j.state == JobState::Queued && j.not_before_ms <= now);
        if wants_offers
            && self
                .offers_at
                .is_none_or(|t| now - t >= self.cfg.offer_ttl_ms)
        {
            self.refresh_offers(now).await;
        }
        let active: Vec<ActiveAttempt> = self.active_attempts().await;
        let heartbeats = self.runner.heartbeats(&active).await;
        let spend = self.state.book.summary(now).per_experiment;
        self.bid_refused.retain(|_, until| *until > now);
        let mut offers = self.offers.clone();
        for o in &mut offers {
            if self.bid_refused.contains_key(&o.machine_id) {
                o.min_bid = Decimal::ZERO;
            }
        }
        Observations {
            market,
            offers,
            heartbeats,
            spend,
        }
    }

    /// One on-demand search: its offers carry `min_bid` too, which prices interruptible rentals.
    /// (A `type=bid` search reports `min_bid` as the offer's base price, so its prices must not
    /// be mixed with on-demand ones.)
    async fn refresh_offers(&mut self, now: EpochMs) {
        let disk = self
            .state
            .world
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| j.disk_gb())
            .fold(10.0_f64, f64::max);
        let q = OfferSearch {
            query: format!("{} disk_space>={}", self.cfg.offer_query, disk.ceil()),
            interruptible: false,
            disk_gb: disk,
            limit: self.cfg.offer_limit,
        };
        match self.market.search(&q).await {
            Ok(mut o) => {
                for x in &mut o {
                    x.seen_ms = now;
                }
                self.offers = o;
                self.offers_at = Some(now);
            }
            Err(e) => self.event(now, "warn", format!("offer search failed: {e}")),
        }
    }

    async fn active_attempts(&self) -> Vec<ActiveAttempt> {
        let mut out = Vec::new();
        for j in self.state.world.jobs.values() {
            let Some(a) = &j.attempt else { continue };
            let Some(vast_id) = self.endpoint_of(a.instance) else {
                continue;
            };
            let Ok(Some(ep)) = self.market.endpoint(vast_id).await else {
                continue;
            };
            out.push(ActiveAttempt {
                job: j.id,
                attempt_id: a.id,
                fence: a.token,
                endpoint: ep,
            });
        }
        out
    }

    /// One reconcile pass at `now`.
    pub async fn step(&mut self, now: EpochMs) -> Result<StepReport, JournalError> {
        self.market.advance_to(now);
        self.load_budgets().await;
        let obs = self.observe(now).await;
        self.book_open_missing(now);
        self.book_observe(&obs, now);
        let actions = reconcile(&self.state.world, &obs, now, &self.cfg.reconcile);
        let mut report = StepReport {
            actions: actions.len(),
            ..StepReport::default()
        };
        // The core planned this pass on a working copy where every pull succeeded. When a
        // real pull fails, what depends on it (ending the attempt, destroying or reusing the
        // instance with the only copy) waits: the real world still shows the work unpulled,
        // so the next pass plans the pull again.
        let mut deferred = Deferred::default();
        for a in actions {
            if deferred.holds(&a) {
                self.event(
                    now,
                    "deferred",
                    format!(
                        "{}: held back until a failed pull is retried",
                        deferred_what(&a)
                    ),
                );
                continue;
            }
            let res = self.execute(&a, now).await;
            if let Action::Pull { job, key, .. } = &a {
                if res.is_ok() {
                    self.pull_failures.remove(job);
                } else {
                    let n = {
                        let n = self.pull_failures.entry(*job).or_insert(0);
                        *n += 1;
                        *n
                    };
                    if n <= MAX_DEFERRED_PULLS {
                        deferred.jobs.insert(*job);
                        deferred.keys.insert(*key);
                    } else {
                        self.event(
                            now,
                            "warn",
                            format!("job {job}: giving up on pulling after {} failures", n - 1),
                        );
                    }
                }
            }
            if let Err(e) = res {
                report.errors.push(e.clone());
                self.event(now, "error", e);
            }
        }
        // Adoptions (and journals written before the book was) leave instances unbilled.
        self.book_open_missing(now);
        self.save().await?;
        self.sync_mirror(now).await;
        self.snapshot(now);
        report.drained = self.state.world.is_drained();
        Ok(report)
    }

    /// Every rented instance we know of is in the book: one with a Vast id but no entry (an
    /// adopted purchase, a crash between the journal and the book) is opened now.
    fn book_open_missing(&mut self, now: EpochMs) {
        let missing: Vec<(InstanceView, VastId)> = self
            .state
            .world
            .instances
            .values()
            .filter(|i| {
                i.state != InstState::Gone && !self.state.book.instances.contains_key(&i.key)
            })
            .filter_map(|i| i.vast_id.map(|v| (i.clone(), v)))
            .collect();
        for (inst, v) in missing {
            self.state.book.open_instance(&inst, v, now);
        }
    }

    fn book_observe(&mut self, obs: &Observations, now: EpochMs) {
        let Some(listing) = &obs.market else { return };
        let by_id: BTreeMap<VastId, &MarketInstance> =
            listing.iter().map(|m| (m.vast_id, m)).collect();
        for inst in self.state.world.instances.values() {
            let Some(v) = inst.vast_id else { continue };
            match by_id.get(&v) {
                Some(m) => self.state.book.observe(
                    inst.key,
                    billing_state(m.actual_status.as_deref()),
                    now,
                ),
                None if inst.state == InstState::Destroying || inst.state == InstState::Gone => {
                    self.state.book.close_instance(inst.key, now)
                }
                None => {}
            }
        }
    }

    /// Execute one action and record its outcome. Errors are reported, not fatal: the next
    /// pass sees the world as it is and decides again.
    async fn execute(&mut self, a: &Action, now: EpochMs) -> Result<(), String> {
        let j = |e: JournalError| e.to_string();
        match a {
            Action::Provision {
                key, label, offer, ..
            } => {
                // Journal first: after a crash the label tells us this purchase is ours.
                self.record(a, &Outcome::Planned, now).await.map_err(j)?;
                let spec = CreateSpec {
                    offer: offer.clone(),
                    label: label.clone(),
                    ssh_public_key: self.cfg.ssh_public_key.clone(),
                };
                match self.market.create(&spec).await {
                    Ok(vast_id) => {
                        self.stats.purchases += 1;
                        // Open the bill before the journal save, so both are persisted together.
                        if let Some(inst) = self.state.world.instances.get(key).cloned() {
                            self.state.book.open_instance(&inst, vast_id, now);
                        }
                        self.record(a, &Outcome::Provisioned { vast_id }, now)
                            .await
                            .map_err(j)?;
                        self.event(
                            now,
                            "provision",
                            format!(
                                "rented {label} (Vast {vast_id}): {}× {} at ${}/h{}",
                                offer.gpus,
                                offer.gpu_name,
                                offer.price(),
                                if offer.bid.is_some() { " (bid)" } else { "" }
                            ),
                        );
                        Ok(())
                    }
                    Err(MarketError::BidTooLow { new_contract, .. }) => {
                        // Vast left a stopped contract: adopt it so the next pass destroys it.
                        self.stats.purchase_failures += 1;
                        self.record(
                            a,
                            &Outcome::Provisioned {
                                vast_id: new_contract,
                            },
                            now,
                        )
                        .await
                        .map_err(j)?;
                        let mark = Action::MarkInstance {
                            key: *key,
                            state: InstState::Failed,
                            reason: Some("bid too low at purchase".into()),
                        };
                        self.record(&mark, &Outcome::Done, now).await.map_err(j)?;
                        Err(format!(
                            "purchase of offer {} failed: bid too low",
                            offer.offer_id
                        ))
                    }
                    Err(e) => {
                        self.stats.purchase_failures += 1;
                        // "no longer available" / "not available": the GPUs are taken (for a
                        // bid: by higher bids). Transient errors do not count.
                        if offer.bid.is_some() && e.to_string().contains("available") {
                            self.bid_refused
                                .insert(offer.machine_id, now + BID_REFUSED_BACKOFF_MS);
                        }
                        self.record(a, &Outcome::Failed(e.to_string()), now)
                            .await
                            .map_err(j)?;
                        // Do not try that offer again in this offer cache.
                        self.offers.retain(|o| o.offer_id != offer.offer_id);
                        Err(format!("purchase of offer {} failed: {e}", offer.offer_id))
                    }
                }
            }
            Action::DestroyOrphan { vast_id, label } => {
                self.stats.orphans_destroyed += 1;
                if let Some(key) = parse_label(&self.state.world.workspace, label)
                    && self.state.world.instances.get(&key).and_then(|i| i.vast_id)
                        == Some(*vast_id)
                {
                    self.state.book.close_instance(key, now);
                }
                self.event(
                    now,
                    "orphan",
                    format!("destroying {label} (Vast {vast_id}): not in our journal"),
                );
                self.market
                    .destroy(*vast_id)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::MarkInstance { key, state, reason } => {
                let before = self.state.world.instances.get(key).map(|i| i.state);
                if *state == InstState::Failed
                    && matches!(before, Some(InstState::Requested | InstState::Booting))
                {
                    self.stats.boot_failures += 1;
                }
                if *state == InstState::Paused {
                    self.stats.outbids += 1;
                }
                if *state == InstState::Gone {
                    self.state.book.close_instance(*key, now);
                }
                self.record(a, &Outcome::Done, now).await.map_err(j)?;
                let label = self
                    .state
                    .world
                    .instances
                    .get(key)
                    .map(|i| i.label.clone())
                    .unwrap_or_default();
                self.event(
                    now,
                    "instance",
                    format!(
                        "{label} → {}{}",
                        state.as_str(),
                        reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                );
                Ok(())
            }
            Action::Setup { key } => {
                // Our key on this instance (Vast copies account keys only at creation, and we
                // never touch the user's account keys).
                if let (Some(pk), Some(id)) =
                    (self.cfg.ssh_public_key.clone(), self.endpoint_of(*key))
                    && let Err(e) = self.market.attach_ssh_key(id, &pk).await
                {
                    self.event(now, "warn", format!("attaching our SSH key to {id}: {e}"));
                }
                let res = match self.endpoint(*key).await {
                    Ok(ep) => self
                        .runner
                        .setup(*key, &ep)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match res {
                    Ok(()) => self.record(a, &Outcome::Done, now).await.map_err(j),
                    Err(e) => {
                        self.record(a, &Outcome::Failed(e.clone()), now)
                            .await
                            .map_err(j)?;
                        Err(format!("setup of instance {key} failed: {e}"))
                    }
                }
            }
            Action::ChangeBid { key, vast_id, bid } => {
                match self.market.change_bid(*vast_id, *bid).await {
                    Ok(()) => {
                        self.stats.bid_raises += 1;
                        self.state.book.change_bid(*key, *bid, now);
                        self.record(a, &Outcome::Done, now).await.map_err(j)?;
                        self.event(
                            now,
                            "bid",
                            format!("raised the bid of Vast {vast_id} to ${bid}/h"),
                        );
                        Ok(())
                    }
                    Err(e) => Err(format!("change bid of {vast_id}: {e}")),
                }
            }
            Action::Destroy {
                key,
                vast_id,
                reason,
            } => {
                let Some(id) = vast_id else {
                    return self.record(a, &Outcome::Done, now).await.map_err(j);
                };
                match self.market.destroy(*id).await {
                    Ok(()) => {
                        self.stats.destroys += 1;
                        // Billing stops at the (verified) destroy.
                        self.state.book.close_instance(*key, now);
                        self.record(a, &Outcome::Done, now).await.map_err(j)?;
                        let label = self
                            .state
                            .world
                            .instances
                            .get(key)
                            .map(|i| i.label.clone())
                            .unwrap_or_default();
                        self.event(
                            now,
                            "destroy",
                            format!("destroyed {label} (Vast {id}): {reason}"),
                        );
                        Ok(())
                    }
                    Err(e) => Err(format!("destroy of {id} failed: {e}")),
                }
            }
            Action::StartAttempt { job, key, resume } => {
                self.start_attempt(a, *job, *key, *resume, now).await
            }
            Action::Pull { job, key, kind } => {
                let Some(jv) = self.state.world.jobs.get(job).cloned() else {
                    return Ok(());
                };
                let dest = job_dir(&self.cfg.home, &jv.experiment, *job);
                let attempt = jv.attempt.as_ref().map(|x| x.id);
                let res = match self.endpoint(*key).await {
                    Ok(ep) => self
                        .runner
                        .pull(&ep, *job, attempt, *kind, &dest)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match res {
                    Ok(checkpoint) => {
                        if *kind == PullKind::Checkpoint {
                            self.stats.checkpoints_pulled += 1;
                        }
                        self.record(a, &Outcome::Pulled { checkpoint }, now)
                            .await
                            .map_err(j)
                    }
                    Err(e) => {
                        self.record(a, &Outcome::Failed(e.clone()), now)
                            .await
                            .map_err(j)?;
                        Err(format!("pull of job {job} failed: {e}"))
                    }
                }
            }
            Action::StopAttempt { job, key, token } => {
                if let Ok(ep) = self.endpoint(*key).await {
                    if let Err(e) = self.runner.stop(&ep, *job, *token).await {
                        self.event(now, "warn", format!("stopping job {job}: {e}"));
                    }
                } else {
                    self.runner.forget(*token);
                }
                Ok(())
            }
            Action::EndAttempt { job, end, .. } => {
                let before = self.state.world.jobs.get(job).cloned();
                if let Some(att) = before.as_ref().and_then(|b| b.attempt.clone()) {
                    self.runner.forget(att.id);
                    let reason = match end {
                        AttemptEnd::Succeeded => Reason::Work,
                        AttemptEnd::Failed { .. } => Reason::LostFailure,
                        AttemptEnd::Interrupted { .. } | AttemptEnd::BudgetStopped => {
                            Reason::LostPreemption
                        }
                    };
                    // What an interrupted attempt did up to its newest pulled checkpoint is
                    // kept (the next attempt resumes from it): only the rest was lost.
                    let kept_until = before
                        .as_ref()
                        .and_then(|b| b.checkpoint_pulled_ms)
                        .filter(|_| reason == Reason::LostPreemption);
                    self.state
                        .book
                        .end_span_kept(att.instance, *job, reason, kept_until, now);
                }
                match end {
                    AttemptEnd::Failed { .. } => self.stats.attempts_failed += 1,
                    AttemptEnd::Interrupted { .. } => {
                        self.stats.attempts_interrupted += 1;
                        self.stats.preemptions += 1;
                    }
                    _ => {}
                }
                self.record(a, &Outcome::Done, now).await.map_err(j)?;
                if let Some(after) = self.state.world.jobs.get(job).cloned() {
                    self.event(
                        now,
                        "job",
                        format!(
                            "job {} ({}) → {}{}",
                            after.id,
                            after.name,
                            after.state.as_str(),
                            after
                                .reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                    );
                }
                self.write_job_status(*job);
                Ok(())
            }
            Action::BudgetWarn {
                experiment,
                spent,
                limit,
            } => {
                self.record(a, &Outcome::Done, now).await.map_err(j)?;
                self.event(
                    now,
                    "budget",
                    format!(
                        "{experiment} has spent ${} of its ${} budget",
                        spent.round_dp(4),
                        limit
                    ),
                );
                Ok(())
            }
            Action::BudgetHardStop {
                experiment,
                spent,
                limit,
            } => {
                self.record(a, &Outcome::Done, now).await.map_err(j)?;
                self.event(
                    now,
                    "budget",
                    format!("{experiment} reached its ${limit} budget (${}): checkpointing, stopping, destroying", spent.round_dp(4)),
                );
                Ok(())
            }
            Action::FinalReport { experiment } => {
                let report = self.experiment_report(experiment, now);
                let _ = std::fs::create_dir_all(&report.folder);
                if let Ok(b) = serde_json::to_vec_pretty(&report) {
                    let _ = write_atomic(&report.folder.join("report.json"), &b);
                }
                if !self.cfg.report_to.is_empty() {
                    self.mail_report(&report, now).await;
                }
                self.reports.push(report);
                self.record(a, &Outcome::Done, now).await.map_err(j)
            }
            Action::Accrue => {
                self.accrue_to_ledger(now).await?;
                self.report_schedules(now).await;
                self.record(a, &Outcome::Done, now).await.map_err(j)
            }
            Action::Note { job, reason } => {
                self.record(a, &Outcome::Done, now).await.map_err(j)?;
                self.event(now, "wait", format!("job {job}: {reason}"));
                Ok(())
            }
            Action::Heartbeat(_)
            | Action::Adopt { .. }
            | Action::Place { .. }
            | Action::MachineFailed { .. } => self.record(a, &Outcome::Done, now).await.map_err(j),
        }
    }

    async fn start_attempt(
        &mut self,
        a: &Action,
        job: JobId,
        key: InstanceKey,
        resume: bool,
        now: EpochMs,
    ) -> Result<(), String> {
        let Some(jv) = self.state.world.jobs.get(&job).cloned() else {
            return Ok(());
        };
        let ep = match self.endpoint(key).await {
            Ok(ep) => ep,
            Err(e) => {
                self.record(a, &Outcome::Failed(e.clone()), now)
                    .await
                    .map_err(|e| e.to_string())?;
                return Err(e);
            }
        };
        // GPUs on the instance not used by other jobs.
        let inst_gpus = self
            .state
            .world
            .instances
            .get(&key)
            .map(|i| i.offer.gpus)
            .unwrap_or(1);
        let used: Vec<u32> = self
            .state
            .world
            .jobs
            .values()
            .filter(|o| o.id != job && o.instance == Some(key) && o.attempt.is_some())
            .flat_map(|o| {
                o.attempt
                    .as_ref()
                    .map(|x| x.gpus.clone())
                    .unwrap_or_default()
            })
            .collect();
        let gpus: Vec<u32> = (0..inst_gpus)
            .filter(|g| !used.contains(g))
            .take(jv.req.gpus as usize)
            .collect();
        self.state.world.attempt_seq += 1;
        let attempt_id = self.state.world.attempt_seq;
        self.save().await.map_err(|e| e.to_string())?;
        let resume_from =
            resume.then(|| job_dir(&self.cfg.home, &jv.experiment, job).join("checkpoints"));
        let req = StartRequest {
            job: jv.clone(),
            attempt_id,
            fence: attempt_id,
            key,
            endpoint: ep,
            resume_from,
            gpus: gpus.clone(),
            disk_gb: self
                .state
                .world
                .instances
                .get(&key)
                .map(|i| i.offer.disk_gb)
                .unwrap_or_default(),
        };
        match self.runner.start(&req).await {
            Ok(hash) => {
                self.stats.attempts_started += 1;
                if resume {
                    self.stats.resumed_from_checkpoint += 1;
                }
                self.record(
                    a,
                    &Outcome::AttemptStarted {
                        attempt_id,
                        token: attempt_id,
                    },
                    now,
                )
                .await
                .map_err(|e| e.to_string())?;
                if let Some(att) = self
                    .state
                    .world
                    .jobs
                    .get_mut(&job)
                    .and_then(|j| j.attempt.as_mut())
                {
                    att.token_hash = Some(hash);
                    att.gpus = gpus.clone();
                }
                self.state
                    .book
                    .start_span(key, job, &jv.experiment, jv.req.gpus, now);
                self.save().await.map_err(|e| e.to_string())?;
                let label = self
                    .state
                    .world
                    .instances
                    .get(&key)
                    .map(|i| i.label.clone())
                    .unwrap_or_default();
                self.event(
                    now,
                    "start",
                    format!(
                        "job {job} ({}) attempt {attempt_id} on {label}{}",
                        jv.name,
                        if resume {
                            ", resuming from its checkpoint"
                        } else {
                            ""
                        }
                    ),
                );
                self.write_job_status(job);
                Ok(())
            }
            Err(e) => {
                self.record(a, &Outcome::Failed(e.to_string()), now)
                    .await
                    .map_err(|e| e.to_string())?;
                Err(format!("start of job {job} failed: {e}"))
            }
        }
    }

    async fn mail_report(&mut self, r: &ExperimentReport, now: EpochMs) {
        let mailer = match ledger::Mailer::from_env() {
            Ok(m) => m,
            Err(e) => {
                self.event(
                    now,
                    "warn",
                    format!("final report of {} not mailed: {e}", r.experiment),
                );
                return;
            }
        };
        let jobs: Vec<String> = r.jobs.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let text = format!(
            "Experiment {} finished: {}.\nCost: ${} (lost to interruptions: ${}).\nOutputs: {}\n",
            r.experiment,
            jobs.join(", "),
            r.cost.round_dp(6),
            r.lost_to_interruptions.round_dp(6),
            r.folder.display()
        );
        let html = format!(
            "<p>Experiment <b>{}</b> finished: {}.</p><p>Cost: ${} (lost to interruptions: ${}).</p><p>Outputs: <code>{}</code></p>",
            ledger::email::html_escape(&r.experiment),
            ledger::email::html_escape(&jobs.join(", ")),
            r.cost.round_dp(6),
            r.lost_to_interruptions.round_dp(6),
            ledger::email::html_escape(&r.folder.display().to_string())
        );
        let subject = format!(
            "vasticlaude: {} finished, ${}",
            r.experiment,
            r.cost.round_dp(2)
        );
        match mailer
            .send(&self.cfg.report_to, &subject, &text, &html)
            .await
        {
            Ok(()) => self.event(
                now,
                "report",
                format!("final report of {} mailed", r.experiment),
            ),
            Err(e) => self.event(
                now,
                "warn",
                format!("final report of {} not mailed: {e}", r.experiment),
            ),
        }
    }

    fn experiment_report(&self, experiment: &str, now: EpochMs) -> ExperimentReport {
        let costs = self.state.book.summary(now);
        let mut jobs: BTreeMap<String, usize> = BTreeMap::new();
        for j in self
            .state
            .world
            .jobs
            .values()
            .filter(|j| j.experiment == experiment)
        {
            *jobs.entry(j.state.as_str().to_string()).or_default() += 1;
        }
        ExperimentReport {
            experiment: experiment.to_string(),
            jobs,
            cost: costs
                .per_experiment
                .get(experiment)
                .copied()
                .unwrap_or_default(),
            lost_to_interruptions: costs.lost.get(experiment).copied().unwrap_or_default(),
            folder: exp_dir(&self.cfg.home, experiment),
        }
    }

    fn write_job_status(&self, job: JobId) {
        let Some(j) = self.state.world.jobs.get(&job) else {
            return;
        };
        let dir = job_dir(&self.cfg.home, &j.experiment, job);
        if let Ok(b) = serde_json::to_vec_pretty(j) {
            let _ = replace_file(&dir.join("job.json"), &b);
        }
    }

    /// `$VASTICLAUDE_HOME/instances.json` and `experiments/<e>/status.json`: what runs where,
    /// since when, at what price. Rewritten when it changes.
    fn snapshot(&mut self, now: EpochMs) {
        if !self.cfg.snapshots {
            return;
        }
        let w = &self.state.world;
        let costs = self.state.book.summary(now);
        let instances: Vec<serde_json::Value> = w
            .instances
            .values()
            .filter(|i| i.state != InstState::Gone)
            .map(|i| {
                serde_json::json!({
                    "label": i.label,
                    "vast_id": i.vast_id,
                    "state": i.state.as_str(),
                    "since_ms": i.state_since_ms,
                    "created_ms": i.created_ms,
                    "gpus": i.offer.gpus,
                    "gpu_name": i.offer.gpu_name,
                    "dph": i.offer.price().to_string(),
                    "interruptible": i.offer.bid.is_some(),
                    "experiment": i.experiment,
                    "jobs": w.jobs_on(i.key).map(|j| serde_json::json!({"id": j.id, "name": j.name, "state": j.state.as_str()})).collect::<Vec<_>>(),
                    "cost_so_far": costs.per_instance.get(&i.label).map(|d| d.round_dp(6).to_string()),
                })
            })
            .collect();
        let doc = serde_json::json!({ "workspace": w.workspace, "instances": instances });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if text == self.last_snapshot {
            return;
        }
        let _ = replace_file(&self.cfg.home.join("instances.json"), text.as_bytes());
        let mut exps: BTreeMap<&str, Vec<&JobView>> = BTreeMap::new();
        for j in w.jobs.values() {
            exps.entry(j.experiment.as_str()).or_default().push(j);
        }
        for (e, jobs) in exps {
            let doc = serde_json::json!({
                "experiment": e,
                "cost_so_far": costs.per_experiment.get(e).map(|d| d.round_dp(6).to_string()),
                "budget": w.budgets.get(e),
                "jobs": jobs.iter().map(|j| serde_json::json!({
                    "id": j.id, "name": j.name, "state": j.state.as_str(),
                    "instance": j.instance.and_then(|k| w.instances.get(&k)).map(|i| i.label.clone()),
                    "progress": j.attempt.as_ref().and_then(|a| a.progress),
                    "failures": j.failures, "interruptions": j.interruptions,
                    "reason": j.reason,
                })).collect::<Vec<_>>(),
            });
            if let Ok(b) = serde_json::to_vec_pretty(&doc) {
                let _ = replace_file(&exp_dir(&self.cfg.home, e).join("status.json"), &b);
            }
        }
        self.last_snapshot = text;
    }

    /// Step with the clock until the world is drained (or nothing can progress, or `stop`
    /// says so). `pause` sleeps between passes (wall time or a virtual advance).
    pub async fn run_until_drained<F, S>(
        &mut self,
        clock: &SharedClock,
        mut pause: S,
        mut stop: F,
    ) -> Result<StepReport, JournalError>
    where
        F: FnMut(&Self) -> bool,
        S: AsyncFnMut(),
    {
        loop {
            let now = clock.now_ms();
            let r = self.step(now).await?;
            if r.drained || stop(self) {
                return Ok(r);
            }
            pause().await;
        }
    }

    /// Nothing left that the loop can move: every job is terminal or held by a budget, and no
    /// instance is left.
    pub fn is_stuck(&self) -> bool {
        let w = &self.state.world;
        w.instances.values().all(|i| i.state == InstState::Gone)
            && w.jobs
                .values()
                .all(|j| j.state.is_terminal() || j.budget_held)
    }

    /// Destroy everything we rented (Ctrl-C with `--teardown`), verified by listing.
    pub async fn teardown(&mut self, now: EpochMs) -> Result<usize, String> {
        let prefix = label_prefix(&self.state.world.workspace);
        let listed = self.market.list(&prefix).await.map_err(|e| e.to_string())?;
        let mut n = 0;
        for m in &listed {
            self.market
                .destroy(m.vast_id)
                .await
                .map_err(|e| e.to_string())?;
            n += 1;
            if let Some(key) = m
                .label
                .as_deref()
                .and_then(|l| parse_label(&self.state.world.workspace, l))
            {
                // Running attempts end as interrupted; their jobs go back to the queue.
                let running: Vec<JobId> = self
                    .state
                    .world
                    .jobs_on(key)
                    .filter(|j| j.attempt.is_some())
                    .map(|j| j.id)
                    .collect();
                for job in running {
                    let end = Action::EndAttempt {
                        job,
                        end: AttemptEnd::Interrupted {
                            reason: "torn down".into(),
                        },
                        requeue_at: Some(now),
                        hold: false,
                    };
                    let _ = self.execute(&end, now).await;
                }
                let d = Action::MarkInstance {
                    key,
                    state: InstState::Gone,
                    reason: Some("torn down".into()),
                };
                let _ = self.execute(&d, now).await;
            }
        }
        self.save().await.map_err(|e| e.to_string())?;
        self.sync_mirror(now).await;
        self.snapshot(now);
        Ok(n)
    }
}
