//! Integration tests for the ledger: worked accrual examples, conservation (property test),
//! budgets and reservations on SQLite and PostgreSQL, schedules across a restart, and email
//! through a real SMTP server (aiosmtpd) on loopback.

mod accrual;
mod budgets;
mod conservation;
mod email;
mod report;
mod schedules;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ledger::Ledger;
use ledger::sea_orm::{ConnectionTrait, Database};

/// Skip a test whose external part is missing, or fail it under `CI=true`.
pub fn require(part: &str, available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{part} is missing: {why}");
    }
    eprintln!("skipped: {part} is missing: {why}");
    false
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A ledger on a fresh SQLite file (kept alive by the returned directory).
pub async fn sqlite_ledger() -> (Ledger, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("ledger.db").display()
    );
    let l = Ledger::open(&url).await.expect("open sqlite ledger");
    (l, dir, url)
}

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh PostgreSQL database `vc_<random>`, dropped by [`PgDb::drop_db`].
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    /// `None` (after printing why, or panicking under CI) when the server is unreachable.
    pub async fn create() -> Option<PgDb> {
        let admin = match Database::connect(PG_ADMIN_URL).await {
            Ok(c) => c,
            Err(e) => {
                require("PostgreSQL at 127.0.0.1:5432", false, &e.to_string());
                return None;
            }
        };
        let name = format!("vc_{}", unique_suffix());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let _ = admin.close().await;
        Some(PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }

    pub async fn drop_db(self) {
        if let Ok(admin) = Database::connect(PG_ADMIN_URL).await {
            let _ = admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// Where the workspace root is (for `.venv`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A real SMTP server (aiosmtpd) on loopback that writes a Maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_aiosmtpd_python() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("AIOSMTPD_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(workspace_root().join(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    let mut tried = Vec::new();
    for c in candidates {
        let ok = std::process::Command::new(&c)
            .args(["-c", "import aiosmtpd"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(format!(
        "no python with aiosmtpd (tried {}); set AIOSMTPD_PYTHON or create /work/main/.venv",
        tried.join(", ")
    ))
}

impl SmtpServer {
    /// Starts aiosmtpd; `None` (after printing why, or panicking under CI) when unavailable.
    pub fn start() -> Option<SmtpServer> {
        let python = match find_aiosmtpd_python() {
            Ok(p) => p,
            Err(why) => {
                require("aiosmtpd", false, &why);
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("temp dir");
        // Let aiosmtpd create the Maildir itself (a pre-created empty one breaks it).
        let maildir = dir.path().join("maildir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let child = std::process::Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn aiosmtpd");
        let server = SmtpServer {
            port,
            maildir,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not listen on 127.0.0.1:{port} within 15 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The delivered messages, with quoted-printable soft line breaks removed.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.maildir.join("new")) {
            let mut paths: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let raw = std::fs::read_to_string(&p).expect("read mail");
                out.push(raw.replace("=\r\n", "").replace("=\n", ""));
            }
        }
        out
    }
}

/// The `Subject:` header of a raw message.
pub fn subject_of(msg: &str) -> String {
    msg.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_string()
}
