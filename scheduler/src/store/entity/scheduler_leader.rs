//! `scheduler_leader`: one row (id 1) naming the current scheduler leader and its epoch.
//!
//! The lock itself is an advisory lock (PostgreSQL) or a lock file (SQLite); this row only
//! records who holds it and bumps `epoch` on every takeover so effects can be fenced by epoch.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "scheduler_leader")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    pub holder: String,
    pub epoch: i64,
    pub acquired_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
