//! Who may do what to a shared queue.
//!
//! The model (enforced here, in the store, not only in the CLI):
//! - Every call that changes the queue takes the **acting user** (`VASTICLAUDE_USER`, else the OS
//!   user, in the CLI). The first time a name acts it gets a `users` row with role `member`.
//! - **Anyone** may add jobs (to a new or an existing experiment) and list everything: a team
//!   queue is shared.
//! - **Only a job's owner** (the user who queued it) **or an admin** may cancel, retry or
//!   reprioritise it; only an experiment's owner or an admin may pause or resume it. Cancelling
//!   a whole experiment cancels the actor's own jobs (every job, for an admin) and reports the
//!   others as skipped.
//! - **Roles** live in the `users` table (`member` / `admin`). Only an admin may change a role,
//!   except on a database that has no admin yet, where the first user to ask becomes admin
//!   (bootstrap). The last admin cannot demote themselves.
//! - The scheduler's own transitions (claim, heartbeat, complete, fail) are not user actions:
//!   they are authorised by the job's fencing token instead.
//!
//! This guards teammates against each other's mistakes; it is not a security boundary against
//! someone who holds the database credentials, who can always write rows directly.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set,
    sea_query::OnConflict,
};

use super::StoreError;
use super::entity::user;
use super::events::{EntityKind, record_event};
use crate::clock::EpochMs;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            other => Err(StoreError::Conflict(format!(
                "unknown role {other:?} (expected member or admin)"
            ))),
        }
    }
}

/// Makes sure `name` has a `users` row (role `member` when new) and returns its role.
pub async fn ensure_user<C: ConnectionTrait>(
    db: &C,
    name: &str,
    now: EpochMs,
) -> Result<Role, StoreError> {
    user::Entity::insert(user::ActiveModel {
        name: Set(name.to_string()),
        role: Set(Role::Member.as_str().to_string()),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(user::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    role_of(db, name).await
}

/// The role of `name` (`member` when it has no row).
pub async fn role_of<C: ConnectionTrait>(db: &C, name: &str) -> Result<Role, StoreError> {
    match user::Entity::find_by_id(name.to_string()).one(db).await? {
        Some(u) => u.role.parse(),
        None => Ok(Role::Member),
    }
}

pub async fn is_admin<C: ConnectionTrait>(db: &C, name: &str) -> Result<bool, StoreError> {
    Ok(role_of(db, name).await? == Role::Admin)
}

/// Every known user.
pub async fn list_users<C: ConnectionTrait>(db: &C) -> Result<Vec<user::Model>, StoreError> {
    Ok(user::Entity::find().all(db).await?)
}

/// Sets `target`'s role, as `actor`. See the module docs for who may.
pub async fn set_role<C: ConnectionTrait>(
    db: &C,
    actor: &str,
    target: &str,
    role: Role,
    now: EpochMs,
) -> Result<(), StoreError> {
    let admins = user::Entity::find()
        .filter(user::Column::Role.eq(Role::Admin.as_str()))
        .count(db)
        .await?;
    let actor_is_admin = is_admin(db, actor).await?;
    let bootstrap = admins == 0 && role == Role::Admin && actor == target;
    if !actor_is_admin && !bootstrap {
        return Err(StoreError::PermissionDenied {
            actor: actor.to_string(),
            action: format!("make {target} {}", role.as_str()),
            target: "roles".to_string(),
            owner: "admins".to_string(),
        });
    }
    let before = ensure_user(db, target, now).await?;
    if before == Role::Admin && role == Role::Member && admins <= 1 {
        return Err(StoreError::Conflict(format!(
            "{target} is the last admin; make someone else admin first"
        )));
    }
    user::Entity::update_many()
        .col_expr(
            user::Column::Role,
            sea_orm::sea_query::Expr::value(role.as_str()),
        )
        .filter(user::Column::Name.eq(target))
        .exec(db)
        .await?;
    record_event(
        db,
        EntityKind::User,
        0,
        Some(before.as_str()),
        role.as_str(),
        actor,
        &format!("role of {target} set to {}", role.as_str()),
        now,
    )
    .await
}

/// Fails with [`StoreError::PermissionDenied`] unless `actor` owns the thing or is an admin.
pub async fn authorize<C: ConnectionTrait>(
    db: &C,
    actor: &str,
    owner: &str,
    action: &str,
    target: &str,
) -> Result<(), StoreError> {
    if actor == owner || is_admin(db, actor).await? {
        Ok(())
    } else {
        Err(StoreError::PermissionDenied {
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            owner: owner.to_string(),
        })
    }
}
