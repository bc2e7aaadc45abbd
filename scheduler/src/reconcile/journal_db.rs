//! The engine journal in the database (SQLite or PostgreSQL), for team servers and for a
//! scheduler that must survive the machine it ran on: one row per workspace holding the
//! engine state as JSON, replaced in one statement (an upsert is atomic on both backends), and
//! the instances mirrored into the store's `instances` table so `vasticlaude instances` and
//! other tools see what runs where.
//!
//! The table is created with `CREATE TABLE IF NOT EXISTS` on first use rather than by a
//! migration: it is the engine's private checkpoint, not part of the shared schema.

use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use crate::store::Store;

use super::engine::{EngineState, Journal, JournalError};

const TABLE: &str = "vc_engine_journal";

pub struct DbJournal {
    store: Store,
    workspace: String,
    what: String,
}

impl std::fmt::Debug for DbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbJournal")
            .field("db", &self.store.url_redacted())
            .field("workspace", &self.workspace)
            .finish()
    }
}

fn err_read(what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::Read {
        path: what.into(),
        msg: e.to_string(),
    }
}

fn err_write(what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::Write {
        path: what.into(),
        msg: e.to_string(),
    }
}

impl DbJournal {
    /// Open (and create if needed) the journal of `workspace` in `store`.
    pub async fn open(store: Store, workspace: &str) -> Result<Self, JournalError> {
        let what = format!("{} table {TABLE}", store.url_redacted());
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (workspace TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at BIGINT NOT NULL)"
        );
        store
            .db()
            .execute_unprepared(&sql)
            .await
            .map_err(|e| err_write(&what, e))?;
        Ok(Self {
            store,
            workspace: workspace.to_string(),
            what,
        })
    }

    fn backend(&self) -> DbBackend {
        self.store.db_backend()
    }
}

impl Journal for DbJournal {
    fn load(&self) -> BoxFuture<'_, Result<Option<EngineState>, JournalError>> {
        Box::pin(async move {
            let sql = format!("SELECT state FROM {TABLE} WHERE workspace = $1");
            let row = self
                .store
                .db()
                .query_one_raw(Statement::from_sql_and_values(
                    self.backend(),
                    sql,
                    [Value::from(self.workspace.clone())],
                ))
                .await
                .map_err(|e| err_read(&self.what, e))?;
            let Some(row) = row else { return Ok(None) };
            let text: String = row
                .try_get("", "state")
                .map_err(|e| err_read(&self.what, e))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| err_read(&self.what, e))
        })
    }

    fn save<'a>(&'a self, state: &'a EngineState) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let text = serde_json::to_string(state).map_err(|e| err_write(&self.what, e))?;
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default(),
            )
            .unwrap_or(i64::MAX);
            let sql = format!(
                "INSERT INTO {TABLE} (workspace, state, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (workspace) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
            );
            self.store
                .db()
                .execute_raw(Statement::from_sql_and_values(
                    self.backend(),
                    sql,
                    [
                        Value::from(self.workspace.clone()),
                        Value::from(text),
                        Value::from(now),
                    ],
                ))
                .await
                .map_err(|e| err_write(&self.what, e))?;
            Ok(())
        })
    }
}
