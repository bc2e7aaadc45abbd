//! `attempts`: one try of a job on one instance, under one fencing token.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "attempts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub job_id: i64,
    pub instance_id: Option<i64>,
    /// The job's fencing token when this attempt started.
    pub fence: i64,
    /// sha256 (hex) of the per-attempt bearer token the agent uses; never the token itself.
    pub token_hash: Option<String>,
    /// An [`crate::store::state::AttemptState`] as text.
    pub state: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub exit_status: Option<i32>,
    pub checkpoint_path: Option<String>,
    pub reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
