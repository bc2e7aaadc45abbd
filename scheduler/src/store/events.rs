//! The append-only journal: every state change, who or what caused it, and why.
//!
//! Write events in the same transaction as the change they describe (pass the transaction as
//! `db`), so the journal never disagrees with the tables.

use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

use super::StoreError;
use super::entity::event;
use crate::clock::EpochMs;

/// What kind of row an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Job,
    Experiment,
    Instance,
    Attempt,
    User,
    Leader,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Job => "job",
            EntityKind::Experiment => "experiment",
            EntityKind::Instance => "instance",
            EntityKind::Attempt => "attempt",
            EntityKind::User => "user",
            EntityKind::Leader => "leader",
        }
    }
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub entity: EntityKind,
    pub entity_id: i64,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub reason: String,
    pub at: EpochMs,
}

impl NewEvent {
    fn into_active(self) -> event::ActiveModel {
        event::ActiveModel {
            id: NotSet,
            entity: Set(self.entity.as_str().to_string()),
            entity_id: Set(self.entity_id),
            from_state: Set(self.from),
            to_state: Set(self.to),
            actor: Set(self.actor),
            reason: Set(self.reason),
            at: Set(self.at),
        }
    }
}

/// Appends one event: `entity` `id` went `from` → `to` because of `actor`, for `reason`, at `now`.
#[allow(clippy::too_many_arguments)]
pub async fn record_event<C: ConnectionTrait>(
    db: &C,
    entity: EntityKind,
    id: i64,
    from: Option<&str>,
    to: &str,
    actor: &str,
    reason: &str,
    now: EpochMs,
) -> Result<(), StoreError> {
    record_events(
        db,
        vec![NewEvent {
            entity,
            entity_id: id,
            from: from.map(str::to_string),
            to: to.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            at: now,
        }],
    )
    .await
}

/// Appends many events (in chunks small enough for either backend's parameter limit).
pub async fn record_events<C: ConnectionTrait>(
    db: &C,
    events: Vec<NewEvent>,
) -> Result<(), StoreError> {
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<event::ActiveModel> =
            it.by_ref().take(1000).map(NewEvent::into_active).collect();
        event::Entity::insert_many(chunk)
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The events of one row, oldest first.
pub async fn list_events<C: ConnectionTrait>(
    db: &C,
    entity: EntityKind,
    id: i64,
) -> Result<Vec<event::Model>, StoreError> {
    Ok(event::Entity::find()
        .filter(event::Column::Entity.eq(entity.as_str()))
        .filter(event::Column::EntityId.eq(id))
        .order_by_asc(event::Column::Id)
        .all(db)
        .await?)
}
