//! `jobs`: one command to run, with its requirements, its place in the queue and its lease.
//!
//! `fence` is the fencing token: it grows by one on every claim (and on cancel), and every
//! heartbeat, completion or failure must present the value it was handed, so a late answer from
//! an earlier attempt changes nothing.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub experiment_id: i64,
    /// Readable, stable name from the sweep parameters, e.g. `lr=0.1,seed=0` (`job` without any).
    pub name: String,
    /// The user who queued it; only they (or an admin) may cancel or reprioritise it.
    pub owner: String,
    /// A [`crate::store::state::JobState`] as text.
    pub state: String,
    /// Higher runs first.
    pub priority: i32,
    /// The expanded argv, as a JSON array of strings.
    pub command: String,
    /// Environment for the job, as a JSON object (sweep parameters included).
    pub env: String,
    /// Sweep parameters of this job, as a JSON object of strings.
    pub params: String,
    /// Offer query in the `vast` query language, validated when the job was added.
    pub gpu_query: Option<String>,
    pub gpus: i32,
    pub image: Option<String>,
    pub disk_gb: Option<i32>,
    pub checkpoint_dir: Option<String>,
    /// `auto`, `never` or `always`.
    pub interruptible: String,
    /// Price cap in nano-USD per hour.
    pub max_dph_nusd: Option<i64>,
    /// Estimated runtime on a reference GPU.
    pub est_runtime_ms: Option<i64>,
    /// Claims so far (reset by `queue retry`).
    pub attempts: i32,
    pub max_attempts: i32,
    /// Not claimable before this time (retry backoff).
    pub run_at: i64,
    /// Fencing token; see the module docs.
    pub fence: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub heartbeat_at: Option<i64>,
    /// The instance the job is placed on, if any (set by the reconciler).
    pub instance_id: Option<i64>,
    pub last_error: Option<String>,
    pub exit_code: Option<i32>,
    /// sha256 of the job's specification (command, env, params, requirements).
    pub spec_hash: String,
    /// `spec_hash` unless added with `--allow-duplicates`; unique per experiment.
    pub dedup_key: Option<String>,
    /// Which `queue add` created it.
    pub batch: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
