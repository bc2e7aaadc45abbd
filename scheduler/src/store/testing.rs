//! Throw-away databases for tests, on both backends (public so every crate's tests can use it).
//!
//! ```text
//! let db = scheduler::store::testing::sqlite().await?;          // temp file, migrated
//! match scheduler::store::testing::postgres().await {             // CREATE DATABASE vc_<random>
//!     Ok(db) => { /* db.store … */ }
//!     Err(why) => { /* skip, saying why (panic when CI=true) */ }
//! }
//! ```
//! The database (or temp folder) is dropped when the [`TestDb`] is dropped, even if the test
//! panicked. PostgreSQL comes from `VASTICLAUDE_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (trust auth).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::sqlx::{self, Connection};
use sha2::Digest;

use super::{Store, StoreError};

/// The PostgreSQL server used by tests.
pub fn pg_admin_url() -> String {
    std::env::var("VASTICLAUDE_TEST_PG_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A short random-looking hex string, unique within this process.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..6])
}

enum Kind {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

/// A migrated database that disappears when dropped.
pub struct TestDb {
    pub store: Store,
    /// The URL to connect to it again (e.g. from a child process).
    pub url: String,
    kind: Kind,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("url", &super::redact_url(&self.url))
            .finish()
    }
}

/// A migrated SQLite database in a fresh temp folder.
pub async fn sqlite() -> Result<TestDb, StoreError> {
    let dir = std::env::temp_dir().join(format!("vc-test-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let url = super::sqlite_url(&dir.join("state.db"));
    let store = super::connect(&url).await?;
    store.migrate().await?;
    Ok(TestDb {
        store,
        url,
        kind: Kind::Sqlite(dir),
    })
}

/// A migrated, freshly created PostgreSQL database, or why none could be had.
pub async fn postgres() -> Result<TestDb, String> {
    let admin_url = pg_admin_url();
    let name = format!("vc_{}", unique_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.map_err(|e| {
        format!(
            "PostgreSQL at {} is not reachable: {e}",
            super::redact_url(&admin_url)
        )
    })?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("CREATE DATABASE {name} failed: {e}"))?;
    let _ = admin.close().await;
    let url = replace_db_name(&admin_url, &name);
    let store = super::connect(&url).await.map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    Ok(TestDb {
        store,
        url,
        kind: Kind::Postgres { admin_url, name },
    })
}

/// `postgres://u@h:p/old?x` with the database name replaced.
pub fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Sqlite(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Kind::Postgres { admin_url, name } => {
                let admin_url = admin_url.clone();
                let name = name.clone();
                // Drop runs inside a test's runtime, where blocking on another future is not
                // allowed; a thread with its own small runtime does the async work.
                let handle = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .execute(&mut c)
                            .await;
                            let _ = c.close().await;
                        }
                    });
                });
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            super::replace_db_name("postgres://postgres@127.0.0.1:5432/test", "vc_1"),
            "postgres://postgres@127.0.0.1:5432/vc_1"
        );
        assert_eq!(
            super::replace_db_name("postgres://u:p@h/test?sslmode=disable", "vc_2"),
            "postgres://u:p@h/vc_2?sslmode=disable"
        );
    }
}
