//! `instances`: Vast.ai instances we rented (or are about to rent).
//!
//! The row is written *before* the create call, with a unique label `vc-<workspace>-<id>`, so a
//! crash between "create" and "record" leaves something to adopt or destroy.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub label: String,
    /// Vast's instance id, once the create call answered.
    pub vast_id: Option<i64>,
    pub offer_id: Option<i64>,
    pub machine_id: Option<i64>,
    /// An [`crate::store::state::InstanceState`] as text.
    pub state: String,
    /// Price per hour in nano-USD (on-demand price, or the bid when interruptible).
    pub dph_nusd: Option<i64>,
    /// Bid per hour in nano-USD for interruptible instances.
    pub bid_nusd: Option<i64>,
    pub gpu_name: Option<String>,
    pub num_gpus: Option<i32>,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    /// Free-form JSON object for facts the reconciler wants to keep (raw API strings etc.).
    pub meta: String,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub destroyed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
