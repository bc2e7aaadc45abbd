//! What every command needs from the environment: where vasticlaude keeps its state, which
//! database to use, and who the user is.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Context {
    /// `$VASTICLAUDE_HOME`, default `~/.vasticlaude`.
    pub home: PathBuf,
    /// `$VASTICLAUDE_DATABASE_URL`; `None` means SQLite at `$VASTICLAUDE_HOME/state.db`.
    pub database_url: Option<String>,
    /// `$VASTICLAUDE_USER`, else the OS user.
    pub user: String,
}

impl Context {
    pub fn from_env() -> anyhow::Result<Self> {
        let home = match std::env::var_os("VASTICLAUDE_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => std::env::home_dir()
                .ok_or_else(|| {
                    anyhow::anyhow!("cannot find a home directory; set VASTICLAUDE_HOME")
                })?
                .join(".vasticlaude"),
        };
        let database_url = std::env::var("VASTICLAUDE_DATABASE_URL")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let user = std::env::var("VASTICLAUDE_USER")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| std::env::var("USER").ok().filter(|s| !s.is_empty()))
            .or_else(|| std::env::var("LOGNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unknown".to_string());
        Ok(Self {
            home,
            database_url,
            user,
        })
    }

    /// The database URL to connect to: the configured one, else SQLite under the home folder.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.home.join("state.db").display()),
        }
    }
}

/// The agent binary to deploy onto instances: the separately built static agent where one is
/// found (`$VASTICLAUDE_AGENT`, beside this binary, `target/agent/`), else, where `allow_self`
/// (local simulator instances, which run on this very machine), this binary itself, which acts
/// as the agent when it runs under the agent's name.
pub fn agent_binary(allow_self: bool) -> anyhow::Result<PathBuf> {
    if let Some(p) = worker_agent::locate_agent_binary() {
        return Ok(p);
    }
    if allow_self {
        return std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find this program's own path: {e}"));
    }
    anyhow::bail!(
        "cannot find the vasticlaude-agent binary (set VASTICLAUDE_AGENT, or build it with scripts/build-agent)"
    )
}
