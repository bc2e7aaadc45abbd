//! The reconciler's own view of the world, what it observes each pass, and the actions it emits.
//!
//! These types are plain data (no handles, no clocks) so that [`super::reconcile`] stays a pure
//! function: the deterministic simulation builds a [`WorldView`] and [`Observations`] by hand or
//! from the simulator, and replays a seed exactly.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::clock::EpochMs;

/// Our job id (the store's primary key).
pub type JobId = i64;
/// Our instance key: allocated before the purchase and written into the Vast label, so a crash
/// between "buy" and "record the answer" can be repaired by listing the account by label.
pub type InstanceKey = i64;
/// Vast's instance id (the contract id).
pub type VastId = i64;

/// The label prefix of every instance of a workspace: `vc-<workspace>-`.
pub fn label_prefix(workspace: &str) -> String {
    format!("vc-{workspace}-")
}

/// The unique label of one of our instances: `vc-<workspace>-<key>`.
pub fn instance_label(workspace: &str, key: InstanceKey) -> String {
    format!("vc-{workspace}-{key}")
}

/// The key in one of our labels, or `None` for a label that is not ours.
pub fn parse_label(workspace: &str, label: &str) -> Option<InstanceKey> {
    label
        .strip_prefix(&label_prefix(workspace))
        .and_then(|rest| rest.parse::<InstanceKey>().ok())
        .filter(|k| *k > 0)
}

/// Job lifecycle (ARCHITECTURE §3). `Interrupted` holds a job whose attempt was stopped by an
/// outbid pause while we wait for that instance to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Placed,
    Starting,
    Running,
    Interrupted,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Placed => "placed",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Interrupted => "interrupted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What a job needs from an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReq {
    pub gpus: u32,
    /// Exact GPU model wanted (`RTX_4090`), if any.
    pub gpu_name: Option<String>,
    pub min_gpu_ram_gb: Option<f64>,
    pub disk_gb: f64,
    pub image: String,
    /// Most this job may cost per hour for its share of an instance.
    pub max_dph: Option<Decimal>,
    /// Interruptible (bid) rentals allowed: only for jobs that checkpoint, or when the user says so.
    pub interruptible: bool,
    /// The job declares a checkpoint folder: it is expected to write checkpoints and resume from
    /// them, so an interruption is priced as losing the work since the last one, even before
    /// the first is seen (see [`JobView::resumes`]).
    #[serde(default)]
    pub checkpoints: bool,
    /// Estimated runtime on a reference GPU (dlperf 100), seconds.
    pub est_runtime_s: u64,
}

/// The current attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub id: i64,
    /// Fencing token: a heartbeat or result carrying another token changes nothing.
    pub token: i64,
    pub instance: InstanceKey,
    pub started_ms: EpochMs,
    pub last_heartbeat_ms: Option<EpochMs>,
    pub last_seq: u64,
    /// The newest phase the agent reported.
    pub phase: Option<AgentPhase>,
    pub progress: Option<(u64, u64)>,
    /// sha256 of the attempt's bearer token (to re-arm the collector after a restart).
    #[serde(default)]
    pub token_hash: Option<String>,
    /// GPU indices on the instance.
    #[serde(default)]
    pub gpus: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub experiment: String,
    pub name: String,
    /// The command (`sh -c`) and its environment: the engine's business, not the core's.
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub state: JobState,
    pub req: JobReq,
    /// Failed attempts (non-zero exits) so far; infrastructure losses do not count.
    pub failures: u32,
    pub max_attempts: u32,
    /// Interruptions (preemptions, lost instances) so far; bounded separately.
    pub interruptions: u32,
    /// Not before this time (retry backoff).
    pub not_before_ms: EpochMs,
    /// Instance the job is placed on / runs on / waits for.
    pub instance: Option<InstanceKey>,
    pub attempt: Option<AttemptView>,
    /// Newest checkpoint the agent reported written on the instance (survives an outbid pause
    /// on that instance's disk).
    pub checkpoint_reported_ms: Option<EpochMs>,
    /// Time of the newest checkpoint pulled back to `$VASTICLAUDE_HOME`; the next attempt resumes
    /// from it.
    pub checkpoint_pulled_ms: Option<EpochMs>,
    /// Disk multiplier for the next attempt (doubled after a full-disk failure).
    pub disk_factor: u32,
    /// Held by a budget hard stop: stays queued until the budget allows again.
    pub budget_held: bool,
    pub reason: Option<String>,
}

impl JobView {
    /// A job as it enters the engine: queued, never tried (3 attempts allowed), placed nowhere,
    /// no checkpoint, no environment.
    pub fn queued(
        id: JobId,
        experiment: impl Into<String>,
        name: impl Into<String>,
        command: impl Into<String>,
        req: JobReq,
    ) -> Self {
        Self {
            id,
            experiment: experiment.into(),
            name: name.into(),
            command: command.into(),
            env: BTreeMap::new(),
            state: JobState::Queued,
            req,
            failures: 0,
            max_attempts: 3,
            interruptions: 0,
            not_before_ms: 0,
            instance: None,
            attempt: None,
            checkpoint_reported_ms: None,
            checkpoint_pulled_ms: None,
            disk_factor: 1,
            budget_held: false,
            reason: None,
        }
    }

    /// Whether an interruption costs only the work since the last checkpoint: the job has
    /// written one, or it declares a checkpoint folder. (Planning a declared job as losing
    /// everything until its first checkpoint would price every fresh job's bid rental as if it
    /// could not resume.) A declared job that never writes one is bounded elsewhere: without a
    /// pulled checkpoint each interruption counts as a whole attempt, and after
    /// `PlanConfig::interruptible_max_attempts` it runs on demand.
    pub fn resumes(&self) -> bool {
        self.checkpoint_reported_ms.is_some()
            || self.checkpoint_pulled_ms.is_some()
            || self.req.checkpoints
    }

    /// Disk the next attempt asks for.
    pub fn disk_gb(&self) -> f64 {
        self.req.disk_gb * f64::from(self.disk_factor.max(1))
    }
}

/// Our instance lifecycle (ARCHITECTURE §3). `Up` is `agent_up`; busy or idle follows from the
/// jobs placed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstState {
    /// Journaled, the purchase is being made (or was made and the answer was lost).
    Requested,
    /// Bought; waiting for the container to run.
    Booting,
    /// Running; SSH key, agent and code being set up.
    Ready,
    /// Agent deployed: takes jobs.
    Up,
    /// Outbid or stopped by Vast.
    Paused,
    /// Destroy requested, waiting for the listing to confirm.
    Destroying,
    Gone,
    /// Failed to boot or died; will be destroyed.
    Failed,
}

impl InstState {
    pub fn is_live(self) -> bool {
        !matches!(self, Self::Gone)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Booting => "booting",
            Self::Ready => "ready",
            Self::Up => "agent_up",
            Self::Paused => "paused",
            Self::Destroying => "destroying",
            Self::Gone => "gone",
            Self::Failed => "failed",
        }
    }
}

/// The price and place of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferChoice {
    pub offer_id: i64,
    pub machine_id: i64,
    pub gpus: u32,
    pub gpu_name: String,
    /// On-demand $/h of the whole instance (with the disk we ask for).
    pub dph: Decimal,
    /// Compute part of the on-demand price (without storage), for the ledger.
    #[serde(default)]
    pub dph_base: Decimal,
    /// Storage $/GB/month, for the ledger.
    #[serde(default)]
    pub storage_cost: Decimal,
    /// Our bid ($/h, whole instance) for an interruptible rental.
    pub bid: Option<Decimal>,
    pub disk_gb: f64,
    pub image: String,
    pub dlperf: f64,
}

impl OfferChoice {
    /// What the instance costs per hour while running: the bid when interruptible.
    pub fn price(&self) -> Decimal {
        self.bid.unwrap_or(self.dph)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub key: InstanceKey,
    pub label: String,
    pub vast_id: Option<VastId>,
    pub state: InstState,
    pub offer: OfferChoice,
    /// The experiment whose job caused the rental (boot/idle overhead is attributed to it).
    pub experiment: String,
    pub created_ms: EpochMs,
    pub state_since_ms: EpochMs,
    /// When the instance last became empty (for the idle timeout).
    pub idle_since_ms: Option<EpochMs>,
    pub setup_failures: u32,
    pub reason: Option<String>,
}

/// An experiment's budget as the ledger sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetView {
    pub limit: Decimal,
    /// Fraction of the limit at which to warn (0.8).
    pub warn_fraction: Decimal,
    pub warned: bool,
    pub hard_stopped: bool,
}

/// Everything the reconciler knows from its journal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorldView {
    pub workspace: String,
    pub jobs: BTreeMap<JobId, JobView>,
    pub instances: BTreeMap<InstanceKey, InstanceView>,
    pub budgets: BTreeMap<String, BudgetView>,
    /// Failures of machines we rented (boot failures, OCI errors), newest last: the machines
    /// banned now follow from them by the rules of `planner::reputation` (one slow boot does not
    /// lose a machine for good; repeated failures ban it for longer and longer).
    #[serde(default)]
    pub machine_failures: Vec<crate::planner::reputation::FailureEvent>,
    /// Experiments whose final report was already produced.
    pub reported: BTreeSet<String>,
    pub last_accrual_ms: Option<EpochMs>,
    /// Last attempt id handed out (attempt ids double as fencing tokens when no store is used).
    #[serde(default)]
    pub attempt_seq: i64,
}

impl WorldView {
    pub fn new(workspace: impl Into<String>) -> Self {
        Self {
            workspace: workspace.into(),
            ..Self::default()
        }
    }

    /// The next instance key: one above every key ever used, so a label is never reused.
    pub fn next_instance_key(&self) -> InstanceKey {
        self.instances.keys().next_back().copied().unwrap_or(0) + 1
    }

    /// Jobs placed on or running on an instance (not terminal, not requeued).
    pub fn jobs_on(&self, key: InstanceKey) -> impl Iterator<Item = &JobView> {
        self.jobs
            .values()
            .filter(move |j| j.instance == Some(key) && !j.state.is_terminal())
    }

    /// GPUs taken on an instance by the jobs on it.
    pub fn gpus_used(&self, key: InstanceKey) -> u32 {
        self.jobs_on(key).map(|j| j.req.gpus).sum()
    }

    /// Every job terminal and no instance left (not even one waiting for a verified destroy).
    pub fn is_drained(&self) -> bool {
        self.jobs.values().all(|j| j.state.is_terminal())
            && self.instances.values().all(|i| i.state == InstState::Gone)
    }
}

/// One instance as the market lists it (the fields of Vast's instance object we act on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketInstance {
    pub vast_id: VastId,
    pub label: Option<String>,
    pub machine_id: i64,
    pub actual_status: Option<String>,
    pub intended_status: Option<String>,
    pub cur_state: Option<String>,
    pub status_msg: Option<String>,
    pub is_bid: bool,
    /// Current winning price for an interruptible rental of this machine ($/h, whole instance).
    pub min_bid: Option<Decimal>,
    /// SSH (or the local transport) answers.
    pub ssh_ready: bool,
}

/// An offer the market lists now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferObs {
    pub offer_id: i64,
    pub machine_id: i64,
    pub num_gpus: u32,
    pub gpu_name: String,
    pub gpu_ram_gb: f64,
    /// On-demand $/h for the whole offer including `disk_gb` of storage.
    pub dph_total: Decimal,
    /// Compute part of `dph_total`.
    pub dph_base: Decimal,
    /// Storage $/GB/month, to price more disk.
    pub storage_cost: Decimal,
    pub min_bid: Decimal,
    pub disk_space_gb: f64,
    pub dlperf: f64,
    pub reliability: f64,
    /// Vast `rented`: not all of its GPUs are free (renting it would take GPUs from
    /// interruptible renters, possibly ours).
    #[serde(default)]
    pub rented: bool,
    /// When the search that returned it ran (0: unknown). An offer on a machine where we rented
    /// since then may no longer have the GPUs it lists.
    #[serde(default)]
    pub seen_ms: EpochMs,
}

/// How an attempt reports itself (the newest heartbeat the collector holds for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentPhase {
    Running,
    /// The job command ended.
    Exited {
        code: i32,
        disk_full: bool,
    },
    /// The agent could not start the command.
    StartFailed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatObs {
    pub job: JobId,
    pub token: i64,
    pub seq: u64,
    pub at_ms: EpochMs,
    pub phase: AgentPhase,
    pub progress: Option<(u64, u64)>,
    pub checkpoint_ms: Option<EpochMs>,
}

/// What the shell observed for this pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    /// Our instances on the account (listed by label prefix); `None` when the listing failed,
    /// in which case nothing is concluded from absence.
    pub market: Option<Vec<MarketInstance>>,
    pub offers: Vec<OfferObs>,
    pub heartbeats: Vec<HeartbeatObs>,
    /// Spend so far per experiment (ledger), for budgets.
    pub spend: BTreeMap<String, Decimal>,
}

/// How a job should be retrieved from its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullKind {
    /// A new checkpoint was reported: pull the checkpoint folder.
    Checkpoint,
    /// The job ended: pull outputs, checkpoints and logs.
    Final,
}

/// How a job's attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttemptEnd {
    Succeeded,
    /// Non-zero exit (or the agent could not start it). Counts towards `max_attempts`.
    Failed {
        reason: String,
        disk_full: bool,
    },
    /// The instance was lost or paused, or the agent went silent. Does not count as a failure.
    Interrupted {
        reason: String,
    },
    /// A budget hard stop.
    BudgetStopped,
}

/// The result of an outbid judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BidMove {
    /// Raise the bid to this price ($/h, whole instance).
    Raise(Decimal),
    Wait,
    /// Give up on the instance: destroy it, the jobs go elsewhere from their pulled checkpoint.
    Move,
}

/// What the reconciler wants done. The shell executes these in order; effects are journaled
/// first (`Provision` writes the instance row with its label before calling the market).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Journal an instance with `label`, then buy `offer` (serialized, one at a time).
    Provision {
        key: InstanceKey,
        label: String,
        offer: OfferChoice,
        experiment: String,
    },
    /// The listing shows a purchase whose answer we lost: record its Vast id.
    Adopt { key: InstanceKey, vast_id: VastId },
    /// An instance with our prefix we have no live record of (or a second buy): destroy it.
    DestroyOrphan { vast_id: VastId, label: String },
    /// An instance changed state (booting, ready, paused, failed, gone).
    MarkInstance {
        key: InstanceKey,
        state: InstState,
        reason: Option<String>,
    },
    /// SSH key, agent, code.
    Setup { key: InstanceKey },
    ChangeBid {
        key: InstanceKey,
        vast_id: VastId,
        bid: Decimal,
    },
    /// Destroy and verify.
    Destroy {
        key: InstanceKey,
        vast_id: Option<VastId>,
        reason: String,
    },
    /// A machine failed us: recorded for its reputation (see `WorldView::machine_failures`).
    MachineFailed {
        machine_id: i64,
        kind: crate::planner::reputation::FailureKind,
        reason: String,
    },
    /// Put a queued job on an instance (existing, or being provisioned).
    Place { job: JobId, key: InstanceKey },
    /// Claim the job (new fencing token), send its spec (and the last pulled checkpoint) and start it.
    StartAttempt {
        job: JobId,
        key: InstanceKey,
        resume: bool,
    },
    /// A newer heartbeat of the current attempt.
    Heartbeat(HeartbeatObs),
    /// Copy a job's files back to `$VASTICLAUDE_HOME/experiments/<e>/jobs/<job>/`.
    Pull {
        job: JobId,
        key: InstanceKey,
        kind: PullKind,
    },
    /// Stop the attempt's processes (stale agent, budget stop).
    StopAttempt {
        job: JobId,
        key: InstanceKey,
        token: i64,
    },
    /// Record how an attempt ended; the job is finished, retried with backoff, or requeued.
    EndAttempt {
        job: JobId,
        end: AttemptEnd,
        /// Where the job goes: queued again (`Some(not_before)`) or finished (`None`).
        requeue_at: Option<EpochMs>,
        /// Keep the job waiting for its (paused) instance instead of requeueing it.
        hold: bool,
    },
    BudgetWarn {
        experiment: String,
        spent: Decimal,
        limit: Decimal,
    },
    BudgetHardStop {
        experiment: String,
        spent: Decimal,
        limit: Decimal,
    },
    /// Why a queued job is not placed (shown by `status`).
    Note { job: JobId, reason: String },
    /// Accrue the ledger up to now.
    Accrue,
    /// Every job of the experiment is terminal: print (and mail) its final cost report.
    FinalReport { experiment: String },
}
