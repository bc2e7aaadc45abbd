//! `events`: the append-only journal of every state change, who or what caused it, and why.
//!
//! Nothing in this crate updates or deletes an event row; write them only through
//! [`crate::store::events::record_event`].

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `job`, `experiment`, `instance`, `attempt`, `user`, `leader`.
    pub entity: String,
    pub entity_id: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    /// A user name, or `scheduler:<owner>` / `reconciler` / `agent` for the machinery.
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
