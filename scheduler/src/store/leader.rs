//! One active scheduler per database.
//!
//! - **PostgreSQL**: a session advisory lock (`pg_try_advisory_lock`) held on a *dedicated*
//!   connection opened outside the pool. A pooled connection can be recycled (idle timeout, max
//!   lifetime) and would silently drop the lock. When the leader process dies its connection
//!   closes, the server releases the lock, and a standby's next try succeeds.
//! - **SQLite**: an exclusive lock (`flock`) on `<database file>.leader.lock`; the kernel releases
//!   it when the process dies.
//!
//! Every takeover bumps `scheduler_leader.epoch`, so effects can be tagged with the epoch of the
//! leader that caused them. Call [`LeaderLock::check`] every few seconds and step down at once
//! when it fails.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::sqlx::{self, Connection};
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};

use super::entity::scheduler_leader;
use super::events::{EntityKind, record_event};
use super::{Backend, Store, StoreError};
use crate::clock::{Clock, EpochMs};

/// The advisory-lock key ("vcsched1").
pub const ADVISORY_KEY: i64 = 0x7663_7363_6865_6431;

enum Inner {
    Pg(sqlx::PgConnection),
    File { _file: std::fs::File, path: PathBuf },
}

/// Proof of leadership; dropping it (or the process dying) releases it.
pub struct LeaderLock {
    inner: Inner,
    holder: String,
    epoch: i64,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.inner {
            Inner::Pg(_) => "postgres advisory lock".to_string(),
            Inner::File { path, .. } => format!("lock file {}", path.display()),
        };
        f.debug_struct("LeaderLock")
            .field("holder", &self.holder)
            .field("epoch", &self.epoch)
            .field("how", &how)
            .finish()
    }
}

impl LeaderLock {
    /// Takes leadership if nobody holds it; `Ok(None)` if someone does.
    pub async fn try_acquire(
        store: &Store,
        holder: &str,
        now: EpochMs,
    ) -> Result<Option<Self>, StoreError> {
        let inner = match store.backend() {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(store.raw_url())
                    .await
                    .map_err(|e| {
                        StoreError::Lock(format!(
                            "cannot open a connection to {}: {e}",
                            store.url_redacted()
                        ))
                    })?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| StoreError::Lock(format!("pg_try_advisory_lock failed: {e}")))?;
                if !got {
                    let _ = conn.close().await;
                    return Ok(None);
                }
                Inner::Pg(conn)
            }
            Backend::Sqlite => {
                let db_path = store.sqlite_path().ok_or_else(|| {
                    StoreError::Lock(
                        "an in-memory SQLite database has no lock file; use a file".to_string(),
                    )
                })?;
                let mut name = db_path.as_os_str().to_owned();
                name.push(".leader.lock");
                let path = PathBuf::from(name);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        StoreError::Lock(format!("cannot open {}: {e}", path.display()))
                    })?;
                match file.try_lock() {
                    Ok(()) => Inner::File { _file: file, path },
                    Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => {
                        return Err(StoreError::Lock(format!(
                            "cannot lock {}: {e}",
                            path.display()
                        )));
                    }
                }
            }
        };
        let epoch = bump_epoch(store, holder, now).await?;
        Ok(Some(Self {
            inner,
            holder: holder.to_string(),
            epoch,
        }))
    }

    /// Waits (polling every `poll`) until leadership is free, then takes it: a standby.
    pub async fn acquire(
        store: &Store,
        holder: &str,
        clock: &dyn Clock,
        poll: Duration,
    ) -> Result<Self, StoreError> {
        loop {
            if let Some(lock) = Self::try_acquire(store, holder, clock.now_ms()).await? {
                return Ok(lock);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The leadership epoch (grows by one on every takeover).
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Confirms the lock is still held (PostgreSQL: the dedicated connection still answers).
    /// An error means leadership may be lost: stop acting as leader.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Pg(conn) => conn
                .ping()
                .await
                .map_err(|e| StoreError::Lock(format!("leader connection lost: {e}"))),
            Inner::File { .. } => Ok(()),
        }
    }

    /// Releases leadership now.
    pub async fn release(self) -> Result<(), StoreError> {
        match self.inner {
            Inner::Pg(mut conn) => {
                let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| StoreError::Lock(format!("pg_advisory_unlock failed: {e}")))?;
                conn.close()
                    .await
                    .map_err(|e| StoreError::Lock(format!("closing the leader connection: {e}")))?;
            }
            Inner::File { _file, .. } => drop(_file),
        }
        Ok(())
    }
}

/// The current leader row, if any scheduler ever led.
pub async fn current_leader(store: &Store) -> Result<Option<scheduler_leader::Model>, StoreError> {
    Ok(scheduler_leader::Entity::find_by_id(1)
        .one(store.db())
        .await?)
}

async fn bump_epoch(store: &Store, holder: &str, now: EpochMs) -> Result<i64, StoreError> {
    let txn = store.begin_write().await?;
    let (from, epoch) = match scheduler_leader::Entity::find_by_id(1).one(&txn).await? {
        Some(row) => {
            let from = row.holder.clone();
            let epoch = row.epoch + 1;
            let mut am = row.into_active_model();
            am.holder = Set(holder.to_string());
            am.epoch = Set(epoch);
            am.acquired_at = Set(now);
            am.update(&txn).await?;
            (Some(from), epoch)
        }
        None => {
            scheduler_leader::ActiveModel {
                id: Set(1),
                holder: Set(holder.to_string()),
                epoch: Set(1),
                acquired_at: Set(now),
            }
            .insert(&txn)
            .await?;
            (None, 1)
        }
    };
    record_event(
        &txn,
        EntityKind::Leader,
        epoch,
        from.as_deref(),
        holder,
        holder,
        &format!("took scheduler leadership, epoch {epoch}"),
        now,
    )
    .await?;
    txn.commit().await?;
    Ok(epoch)
}
