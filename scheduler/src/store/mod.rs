//! The store: vasticlaude's state in SQLite (embedded default) or PostgreSQL (team-shared).
//!
//! ```text
//! let store = scheduler::store::connect("sqlite:///home/me/.vasticlaude/state.db?mode=rwc").await?;
//! store.migrate().await?;
//! let db = store.db();           // a sea_orm::DatabaseConnection for the entities below
//! ```
//!
//! Why these choices:
//! - **One set of migrations** ([`migration::Migrator`]) runs on both backends; it composes the
//!   ledger's and the collector's migrations so one `migrate()` prepares everything.
//! - **SQLite** runs in WAL mode with a busy timeout and foreign keys on, several pooled
//!   connections, and every read-then-write transaction opened with `BEGIN IMMEDIATE`
//!   ([`Store::begin_write`]): a deferred transaction cannot be upgraded once another writer
//!   committed, and busy_timeout does not help then.
//! - **PostgreSQL** claims with `FOR UPDATE SKIP LOCKED` (see [`crate::queue::claim`]).
//! - **Times** are `i64` epoch milliseconds from a [`crate::clock::Clock`]; **money** is `i64`
//!   nano-USD ([`nusd_from_decimal`] / [`decimal_from_nusd`]), never a sea-orm `Decimal` column.
//!
//! Tables: [`entity::experiment`], [`entity::job`], [`entity::attempt`], [`entity::instance`],
//! [`entity::event`] (append-only, via [`events::record_event`]), [`entity::user`] (roles, see
//! [`users`]) and [`entity::scheduler_leader`] (see [`leader`]).

pub mod attempts;
pub mod entity;
pub mod events;
pub mod instances;
pub mod leader;
pub mod migration;
pub mod state;
pub mod testing;
pub mod users;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

pub use state::{AttemptState, InstanceState, Interruptible, JobState};

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database URL {url:?}: expected sqlite://PATH, sqlite::memory: or postgres://…"
    )]
    UnsupportedUrl { url: String },
    #[error("cannot create the state folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("cannot migrate the database at {url}: {source}")]
    Migrate { url: String, source: DbErr },
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error(
        "permission denied: {actor} may not {action} {target} (owned by {owner}; only the owner or an admin may)"
    )]
    PermissionDenied {
        actor: String,
        action: String,
        target: String,
        owner: String,
    },
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("{0}")]
    Conflict(String),
    #[error("leader lock: {0}")]
    Lock(String),
}

/// A connected database: a sea-orm connection plus what kind it is.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
    /// The URL with any password replaced by `***`, for messages.
    url_redacted: String,
    /// The URL as given, needed to open the leader lock's dedicated connection.
    url: String,
    /// The database file for SQLite (None for `sqlite::memory:`).
    sqlite_path: Option<PathBuf>,
}

// Manual, so the URL's password never reaches a log line.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("url", &self.url_redacted)
            .field("sqlite_path", &self.sqlite_path)
            .finish_non_exhaustive()
    }
}

/// Connects to `url` (`sqlite://PATH[?mode=rwc]`, `sqlite::memory:` or `postgres://…`).
///
/// SQLite files and their parent folder are created when missing. Does not migrate; call
/// [`Store::migrate`].
pub async fn connect(url: &str) -> Result<Store, StoreError> {
    let redacted = redact_url(url);
    let backend = backend_of(url)?;
    let mut url_owned = url.to_string();
    let mut sqlite_path = None;
    let mut opts;
    match backend {
        Backend::Sqlite => {
            if let Some(path) = sqlite_file_path(url) {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                if !url.contains("mode=") {
                    url_owned.push_str(if url.contains('?') {
                        "&mode=rwc"
                    } else {
                        "?mode=rwc"
                    });
                }
                sqlite_path = Some(path);
            }
            opts = ConnectOptions::new(url_owned.clone());
            opts.max_connections(8)
                // An in-memory database lives only as long as one of its connections.
                .min_connections(1)
                .idle_timeout(None::<Duration>)
                .max_lifetime(None::<Duration>)
                .acquire_timeout(Duration::from_secs(30))
                .sqlx_logging(false)
                .map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(30))
                        .foreign_keys(true)
                });
        }
        Backend::Postgres => {
            opts = ConnectOptions::new(url_owned.clone());
            opts.max_connections(16)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(30))
                .sqlx_logging(false);
        }
    }
    if sqlite_path.is_some() {
        wal_first(&url_owned).await;
    }
    let db = Database::connect(opts)
        .await
        .map_err(|source| StoreError::Connect {
            url: redacted.clone(),
            source,
        })?;
    Ok(Store {
        db,
        backend,
        url_redacted: redacted,
        url: url_owned,
        sqlite_path,
    })
}

/// Switches a SQLite file to WAL through one lone connection before the pool opens several.
/// The switch takes an exclusive lock and SQLite does not call the busy handler for it, so two
/// fresh pool connections switching at once can fail with "database is locked"; once the file is
/// in WAL mode (it is persistent) their own `journal_mode = WAL` changes nothing. Best effort: a
/// failure here surfaces, with its cause, from the pool's connect.
async fn wal_first(url: &str) {
    use sea_orm::sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let Ok(o) = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        return;
    };
    let o = o
        .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    for attempt in 0..5u64 {
        match o.connect().await {
            Ok(c) => {
                let _ = sea_orm::sqlx::Connection::close(c).await;
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await,
        }
    }
}

/// Connects to the default database for a vasticlaude home folder: `$home/state.db` (SQLite).
pub async fn connect_home(home: &Path) -> Result<Store, StoreError> {
    connect(&sqlite_url(&home.join("state.db"))).await
}

/// The SQLite URL for a file path.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

impl Store {
    /// Applies every pending migration (store, ledger, collector). Safe to call on every start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migration::Migrator::up(&self.db, None)
            .await
            .map_err(|source| StoreError::Migrate {
                url: self.url_redacted.clone(),
                source,
            })
    }

    /// The sea-orm connection (a pool).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// sea-orm's name for the backend, for building statements by hand.
    pub fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Sqlite => DbBackend::Sqlite,
            Backend::Postgres => DbBackend::Postgres,
        }
    }

    /// The URL with any password hidden.
    pub fn url_redacted(&self) -> &str {
        &self.url_redacted
    }

    /// The SQLite database file, if this is a file-backed SQLite store.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_path.as_deref()
    }

    pub(crate) fn raw_url(&self) -> &str {
        &self.url
    }

    /// Opens a transaction for a read-then-write: `BEGIN IMMEDIATE` on SQLite (takes the write
    /// lock up front, so it never fails half-way with SQLITE_BUSY_SNAPSHOT), a plain `BEGIN`
    /// (read committed) on PostgreSQL, where row locks do the work.
    ///
    /// (An in-process async gate in front of `BEGIN IMMEDIATE` was tried and measured: it
    /// halved single-job claim throughput with 8 claimers, 1,000 → 450 jobs/s, so SQLite's own
    /// lock and busy timeout do the queueing.)
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        let opts = TransactionOptions {
            sqlite_transaction_mode: match self.backend {
                Backend::Sqlite => Some(SqliteTransactionMode::Immediate),
                Backend::Postgres => None,
            },
            ..Default::default()
        };
        Ok(self.db.begin_with_options(opts).await?)
    }

    /// Closes the pool.
    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await?;
        Ok(())
    }
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl {
            url: redact_url(url),
        })
    }
}

/// The file behind a SQLite URL, or None for an in-memory database.
fn sqlite_file_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
        None
    } else {
        Some(PathBuf::from(path))
    }
}

/// Replaces the password of `scheme://user:password@host/…` with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if let Some((userinfo, host)) = authority.rsplit_once('@')
            && let Some((user, _password)) = userinfo.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}{tail}");
        }
    }
    url.to_string()
}

/// Nano-US-dollars per dollar.
pub const NUSD_PER_USD: i64 = 1_000_000_000;

/// Dollars to integer nano-USD, rounding half away from zero at the 9th decimal; None if out of
/// range (about ±9.2 billion dollars).
pub fn nusd_from_decimal(usd: Decimal) -> Option<i64> {
    let scaled = usd.checked_mul(Decimal::from(NUSD_PER_USD))?;
    let rounded =
        scaled.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(rounded).ok()
}

/// Integer nano-USD to dollars, exactly.
pub fn decimal_from_nusd(nusd: i64) -> Decimal {
    Decimal::new(nusd, 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // connect_lazy-free check: build the struct the way connect() does, minus the pool.
        let store = rt.block_on(connect("sqlite::memory:")).unwrap();
        let with_secret = Store {
            url: "postgres://bob:s3cret@db/vc".into(),
            url_redacted: redact_url("postgres://bob:s3cret@db/vc"),
            ..store
        };
        let shown = format!("{with_secret:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("bob:***@db"),
            "{shown}"
        );
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db.example:5432/vc"),
            "postgres://bob:***@db.example:5432/vc"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn sqlite_paths_are_found() {
        assert_eq!(
            sqlite_file_path("sqlite:///tmp/a/state.db?mode=rwc"),
            Some(PathBuf::from("/tmp/a/state.db"))
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
        assert!(backend_of("mysql://x").is_err());
    }

    #[test]
    fn money_round_trips_exactly() {
        let d: Decimal = "123456789.123456789".parse().unwrap();
        assert_eq!(nusd_from_decimal(d), Some(123_456_789_123_456_789));
        assert_eq!(decimal_from_nusd(123_456_789_123_456_789), d);
        let tiny: Decimal = "0.0000000005".parse().unwrap();
        assert_eq!(nusd_from_decimal(tiny), Some(1));
        assert_eq!(nusd_from_decimal(Decimal::from(10_000_000_000i64)), None);
    }
}
