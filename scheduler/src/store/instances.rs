//! Instances we rent: the rows the reconciler journals before and after each Vast call.
//!
//! Write the row *before* calling Vast's create (state `requested`), so that after a crash the
//! label `vc-<workspace>-<id>` finds the instance on the account to adopt or destroy.

use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ColumnTrait, ConnectionTrait, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set,
};

use super::entity::instance;
use super::events::{EntityKind, record_event};
use super::{InstanceState, StoreError};
use crate::clock::EpochMs;

/// The label of instance row `id` in `workspace`: `vc-<workspace>-<id>`.
pub fn instance_label(workspace: &str, id: i64) -> String {
    format!("vc-{workspace}-{id}")
}

/// What the reconciler knows before it calls create.
#[derive(Debug, Clone, Default)]
pub struct NewInstance {
    /// Workspace name used in the label (`vc-<workspace>-<id>`).
    pub workspace: String,
    pub offer_id: Option<i64>,
    pub machine_id: Option<i64>,
    pub dph_nusd: Option<i64>,
    pub bid_nusd: Option<i64>,
    pub gpu_name: Option<String>,
    pub num_gpus: Option<i32>,
    /// JSON object; `None` stores `{}`.
    pub meta: Option<serde_json::Value>,
}

/// Inserts an instance row in state `requested` with its unique label, and journals it.
///
/// Pass a transaction as `db` to make the two statements (insert, then set the label from the
/// new id) atomic.
pub async fn create_instance<C: ConnectionTrait>(
    db: &C,
    new: NewInstance,
    actor: &str,
    now: EpochMs,
) -> Result<instance::Model, StoreError> {
    let pending = format!(
        "vc-{}-pending-{now}-{}",
        new.workspace,
        super::testing::unique_suffix()
    );
    let row = instance::ActiveModel {
        id: NotSet,
        label: Set(pending),
        vast_id: Set(None),
        offer_id: Set(new.offer_id),
        machine_id: Set(new.machine_id),
        state: Set(InstanceState::Requested.as_str().to_string()),
        dph_nusd: Set(new.dph_nusd),
        bid_nusd: Set(new.bid_nusd),
        gpu_name: Set(new.gpu_name),
        num_gpus: Set(new.num_gpus),
        ssh_host: Set(None),
        ssh_port: Set(None),
        meta: Set(new
            .meta
            .unwrap_or_else(|| serde_json::json!({}))
            .to_string()),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        destroyed_at: Set(None),
    }
    .insert(db)
    .await?;
    let mut am = row.clone().into_active_model();
    am.label = Set(instance_label(&new.workspace, row.id));
    let row = am.update(db).await?;
    record_event(
        db,
        EntityKind::Instance,
        row.id,
        None,
        InstanceState::Requested.as_str(),
        actor,
        &format!("requested offer {:?} as {}", row.offer_id, row.label),
        now,
    )
    .await?;
    Ok(row)
}

pub async fn get_instance<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<instance::Model, StoreError> {
    instance::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "instance",
            key: id.to_string(),
        })
}

pub async fn find_instance_by_label<C: ConnectionTrait>(
    db: &C,
    label: &str,
) -> Result<Option<instance::Model>, StoreError> {
    Ok(instance::Entity::find()
        .filter(instance::Column::Label.eq(label))
        .one(db)
        .await?)
}

/// Instances in any of `states` (all instances when `states` is empty), by id.
pub async fn list_instances<C: ConnectionTrait>(
    db: &C,
    states: &[InstanceState],
) -> Result<Vec<instance::Model>, StoreError> {
    let mut q = instance::Entity::find().order_by_asc(instance::Column::Id);
    if !states.is_empty() {
        q = q.filter(instance::Column::State.is_in(states.iter().map(|s| s.as_str())));
    }
    Ok(q.all(db).await?)
}

/// Instances not yet `gone`.
pub async fn list_live_instances<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<instance::Model>, StoreError> {
    Ok(instance::Entity::find()
        .filter(instance::Column::State.ne(InstanceState::Gone.as_str()))
        .order_by_asc(instance::Column::Id)
        .all(db)
        .await?)
}

/// Moves an instance to `to` and journals it; sets `destroyed_at` on `gone`. A no-op (no event)
/// when it is already in `to`.
pub async fn set_instance_state<C: ConnectionTrait>(
    db: &C,
    id: i64,
    to: InstanceState,
    actor: &str,
    reason: &str,
    now: EpochMs,
) -> Result<instance::Model, StoreError> {
    let row = get_instance(db, id).await?;
    if row.state == to.as_str() {
        return Ok(row);
    }
    let from = row.state.clone();
    let mut am = row.into_active_model();
    am.state = Set(to.as_str().to_string());
    am.updated_at = Set(now);
    if to == InstanceState::Gone {
        am.destroyed_at = Set(Some(now));
    }
    let row = am.update(db).await?;
    record_event(
        db,
        EntityKind::Instance,
        id,
        Some(&from),
        to.as_str(),
        actor,
        reason,
        now,
    )
    .await?;
    Ok(row)
}

/// Fields the reconciler learns after create; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct InstancePatch {
    pub vast_id: Option<i64>,
    pub machine_id: Option<i64>,
    pub dph_nusd: Option<i64>,
    pub bid_nusd: Option<i64>,
    pub gpu_name: Option<String>,
    pub num_gpus: Option<i32>,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<i32>,
    pub meta: Option<serde_json::Value>,
    pub last_error: Option<String>,
}

/// Updates the given fields (not the state; use [`set_instance_state`] for that).
pub async fn update_instance<C: ConnectionTrait>(
    db: &C,
    id: i64,
    patch: InstancePatch,
    now: EpochMs,
) -> Result<instance::Model, StoreError> {
    let row = get_instance(db, id).await?;
    let mut am = row.into_active_model();
    if let Some(v) = patch.vast_id {
        am.vast_id = Set(Some(v));
    }
    if let Some(v) = patch.machine_id {
        am.machine_id = Set(Some(v));
    }
    if let Some(v) = patch.dph_nusd {
        am.dph_nusd = Set(Some(v));
    }
    if let Some(v) = patch.bid_nusd {
        am.bid_nusd = Set(Some(v));
    }
    if let Some(v) = patch.gpu_name {
        am.gpu_name = Set(Some(v));
    }
    if let Some(v) = patch.num_gpus {
        am.num_gpus = Set(Some(v));
    }
    if let Some(v) = patch.ssh_host {
        am.ssh_host = Set(Some(v));
    }
    if let Some(v) = patch.ssh_port {
        am.ssh_port = Set(Some(v));
    }
    if let Some(v) = patch.meta {
        am.meta = Set(v.to_string());
    }
    if let Some(v) = patch.last_error {
        am.last_error = Set(Some(v));
    }
    am.updated_at = Set(now);
    Ok(am.update(db).await?)
}
