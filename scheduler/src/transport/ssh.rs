//! The SSH transport: the system OpenSSH client, as every mature tool does.
//!
//! - **One multiplexed master per instance** (`openssh` crate, process-mux): commands, rsync and
//!   the reverse tunnel all ride one authenticated connection.
//! - **Host keys**: a known_hosts file per instance with `StrictHostKeyChecking=accept-new`.
//!   Vast gives every instance a fresh host key, so a shared known_hosts would either collect
//!   stale keys or need checking disabled; per instance, the first contact pins the key.
//! - **Our own key pair** (`IdentitiesOnly=yes`, `-i key`) and our own ssh config file (`-F`),
//!   so neither the user's keys nor their `~/.ssh/config` take part.
//! - **Fewer concurrent commands than sshd's MaxSessions** (10 by default): a semaphore of at
//!   most 8. Beyond MaxSessions, process-mux fails with the misleading "Could not resolve
//!   hostname none" (rust-notes §3).
//! - **Retries with backoff** (2, 4, 8, 16 s …) when the link drops: the master is checked, torn
//!   down and re-established, and reverse tunnels are requested again. Commands are re-run after a
//!   dropped link, so what [`super::deploy`] runs is written to be idempotent.
//! - **rsync** over the master with `--filter=':- .gitignore'`; **tar over ssh** when the image
//!   has no rsync.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Socket};
use tokio::sync::{Mutex, OnceCell, Semaphore};

use super::{CommandOutput, Transport, TransportError, TunnelEndpoint, shell_quote};

/// sshd's MaxSessions default is 10; stay below it.
pub const MAX_CONCURRENT_COMMANDS: usize = 8;

/// How to reach one instance.
#[derive(Debug, Clone)]
pub struct SshConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Our private key (never the user's).
    pub key_path: PathBuf,
    /// Per-instance folder for known_hosts and the ssh config file.
    pub state_dir: PathBuf,
    /// Where the control socket lives; keep it short (unix socket paths are limited to 108 bytes).
    pub control_dir: PathBuf,
    pub connect_timeout: Duration,
    pub server_alive_interval: Duration,
    /// At most [`MAX_CONCURRENT_COMMANDS`].
    pub max_concurrent: usize,
    /// Reconnect attempts after a dropped link or a failed connect.
    pub retries: u32,
    /// First backoff; doubles each retry.
    pub backoff_base: Duration,
}

impl SshConfig {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        key_path: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            key_path,
            state_dir,
            control_dir: std::env::temp_dir(),
            connect_timeout: Duration::from_secs(20),
            server_alive_interval: Duration::from_secs(15),
            max_concurrent: MAX_CONCURRENT_COMMANDS,
            retries: 4,
            backoff_base: Duration::from_secs(2),
        }
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.state_dir.join("known_hosts")
    }

    pub fn ssh_config_file(&self) -> PathBuf {
        self.state_dir.join("ssh_config")
    }
}

/// Create an ed25519 key pair at `path` (and `path.pub`) unless it exists.
pub async fn ensure_keypair(path: &Path) -> Result<(), TransportError> {
    if path.exists() {
        return Ok(());
    }
    let target = format!("key {}", path.display());
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| TransportError::Io {
                target: target.clone(),
                op: "create key dir".into(),
                source,
            })?;
    }
    let out = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vasticlaude", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| TransportError::Io {
            target: target.clone(),
            op: "ssh-keygen".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(TransportError::Failed {
            target,
            op: "ssh-keygen".into(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// See the module docs.
#[derive(Debug)]
pub struct SshTransport {
    cfg: SshConfig,
    session: Mutex<Option<Arc<Session>>>,
    sem: Semaphore,
    tunnels: std::sync::Mutex<Vec<(u16, SocketAddr)>>,
    has_rsync: OnceCell<bool>,
}

impl SshTransport {
    pub fn new(mut cfg: SshConfig) -> Self {
        cfg.max_concurrent = cfg.max_concurrent.clamp(1, MAX_CONCURRENT_COMMANDS);
        let sem = Semaphore::new(cfg.max_concurrent);
        Self {
            cfg,
            session: Mutex::new(None),
            sem,
            tunnels: std::sync::Mutex::new(Vec::new()),
            has_rsync: OnceCell::new(),
        }
    }

    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    fn target(&self) -> String {
        format!("ssh {}@{}:{}", self.cfg.user, self.cfg.host, self.cfg.port)
    }

    fn failed(&self, op: &str, why: impl std::fmt::Display) -> TransportError {
        TransportError::Failed {
            target: self.target(),
            op: op.to_string(),
            why: why.to_string(),
        }
    }

    fn io(&self, op: &str, source: std::io::Error) -> TransportError {
        TransportError::Io {
            target: self.target(),
            op: op.to_string(),
            source,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.cfg
            .backoff_base
            .saturating_mul(1u32 << attempt.min(10))
    }

    async fn write_config(&self) -> Result<(), TransportError> {
        tokio::fs::create_dir_all(&self.cfg.state_dir)
            .await
            .map_err(|e| self.io("create state dir", e))?;
        let body = "# written by vasticlaude for this instance only\n\
                    ServerAliveCountMax 3\n\
                    GlobalKnownHostsFile /dev/null\n\
                    UpdateHostKeys no\n\
                    LogLevel ERROR\n";
        tokio::fs::write(self.cfg.ssh_config_file(), body)
            .await
            .map_err(|e| self.io("write ssh config", e))
    }

    async fn connect_once(&self) -> Result<Session, openssh::Error> {
        let mut b = SessionBuilder::default();
        b.user(self.cfg.user.clone())
            .port(self.cfg.port)
            .keyfile(&self.cfg.key_path)
            .known_hosts_check(KnownHosts::Add)
            .user_known_hosts_file(self.cfg.known_hosts())
            .config_file(self.cfg.ssh_config_file())
            .connect_timeout(self.cfg.connect_timeout)
            .server_alive_interval(self.cfg.server_alive_interval)
            .control_directory(&self.cfg.control_dir);
        b.connect(&self.cfg.host).await
    }

    /// The live master, connecting (with retries and backoff) when there is none.
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        self.write_config().await?;
        let mut last = String::new();
        for attempt in 0..=self.cfg.retries {
            match self.connect_once().await {
                Ok(s) => {
                    let s = Arc::new(s);
                    // Tunnels die with the old master; ask for them again.
                    let tunnels = self.tunnels.lock().expect("tunnels lock").clone();
                    for (port, local) in tunnels {
                        if let Err(e) = request_forward(&s, port, local).await {
                            tracing::warn!(target = %self.target(), port, "cannot re-open reverse tunnel: {e}");
                        }
                    }
                    *guard = Some(s.clone());
                    return Ok(s);
                }
                Err(e) => {
                    last = error_chain(&e);
                    if attempt < self.cfg.retries {
                        let wait = self.backoff(attempt);
                        tracing::info!(target = %self.target(), attempt, ?wait, "ssh connect failed: {last}");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(TransportError::Connect {
            target: self.target(),
            why: last,
        })
    }

    /// Drop the master if it is dead; true if it was.
    async fn reset_if_dead(&self, s: &Arc<Session>) -> bool {
        if s.check().await.is_ok() {
            return false;
        }
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            *guard = None;
        }
        true
    }

    /// `ssh … user@host` through the master, as a shell-quoted prefix for rsync `-e` and pipes.
    fn ssh_prefix(&self, s: &Session) -> String {
        format!(
            "ssh -S {} -F {} -o BatchMode=yes -p {} -l {}",
            shell_quote(&s.control_socket().display().to_string()),
            shell_quote(&self.cfg.ssh_config_file().display().to_string()),
            self.cfg.port,
            shell_quote(&self.cfg.user),
        )
    }

    /// Run a local `sh -c` pipeline that uses the master (rsync, tar | ssh), with retries.
    async fn run_local_pipeline(
        &self,
        op: &str,
        build: impl Fn(&Session) -> String,
    ) -> Result<(), TransportError> {
        let mut attempt = 0;
        loop {
            let s = self.session().await?;
            let script = build(&s);
            let out = {
                let _permit = self.sem.acquire().await.map_err(|e| self.failed(op, e))?;
                tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&script)
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .map_err(|e| self.io(op, e))?
            };
            if out.status.success() {
                return Ok(());
            }
            let why = format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if attempt < self.cfg.retries && self.reset_if_dead(&s).await {
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            return Err(self.failed(op, why));
        }
    }

    async fn remote_has_rsync(&self) -> Result<bool, TransportError> {
        self.has_rsync
            .get_or_try_init(|| async {
                let out = self
                    .run("command -v rsync >/dev/null 2>&1 && echo yes || echo no")
                    .await?;
                Ok(out.stdout_str().trim() == "yes")
            })
            .await
            .copied()
    }

    async fn remote_is_dir(&self, remote: &str) -> Result<bool, TransportError> {
        let out = self
            .run(&format!("test -d {}", shell_quote(remote)))
            .await?;
        Ok(out.success())
    }

    async fn mkdir(&self, dir: &str) -> Result<(), TransportError> {
        let out = self.run(&format!("mkdir -p {}", shell_quote(dir))).await?;
        if !out.success() {
            return Err(self.failed(&format!("mkdir -p {dir}"), out.stderr_str().trim()));
        }
        Ok(())
    }

    fn dest(&self, remote: &str) -> String {
        format!("{}@{}:{}", self.cfg.user, self.cfg.host, remote)
    }

    async fn copy_up_impl(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        let meta = tokio::fs::metadata(local)
            .await
            .map_err(|e| self.io("copy up", e))?;
        let is_dir = meta.is_dir();
        let remote_dir = if is_dir {
            remote.to_string()
        } else {
            Path::new(remote)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ".".into())
        };
        if !remote_dir.is_empty() {
            self.mkdir(&remote_dir).await?;
        }
        let local_s = local.display().to_string();
        if self.remote_has_rsync().await? {
            let (src, dst) = if is_dir {
                (
                    format!("{local_s}/"),
                    format!("{}/", remote.trim_end_matches('/')),
                )
            } else {
                (local_s.clone(), remote.to_string())
            };
            return self
                .run_local_pipeline("rsync up", |s| {
                    format!(
                        "rsync -az --filter={} --exclude=.git -e {} {} {}",
                        shell_quote(":- .gitignore"),
                        shell_quote(&self.ssh_prefix(s)),
                        shell_quote(&src),
                        shell_quote(&self.dest(&dst)),
                    )
                })
                .await;
        }
        // No rsync in the image: tar over the master. GNU tar's --exclude-vcs-ignores misses
        // gitignore forms such as `build/`, so the tree is first staged locally with the same
        // filter rsync uses (local rsync, else a plain copy that skips `.git`).
        if is_dir {
            let stage = std::env::temp_dir().join(format!(
                "vc-stage-{}-{}",
                std::process::id(),
                crate::collector::mint_token()
                    .map(|(t, _)| t[4..16].to_string())
                    .unwrap_or_default()
            ));
            let staged = super::local::copy_local(local, &stage)
                .await
                .map_err(|e| self.io("stage for tar", e));
            let stage_s = stage.display().to_string();
            let res = match staged {
                Ok(()) => {
                    self.run_local_pipeline("tar up", |s| {
                        format!(
                            "tar -C {} --exclude=.git --exclude-vcs-ignores -czf - . | {} {} {}",
                            shell_quote(&stage_s),
                            self.ssh_prefix(s),
                            shell_quote(&self.cfg.host),
                            shell_quote(&format!("tar -xzf - -C {}", shell_quote(remote))),
                        )
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            let _ = tokio::fs::remove_dir_all(&stage).await;
            res
        } else {
            self.run_local_pipeline("cat up", |s| {
                format!(
                    "{} {} {} < {}",
                    self.ssh_prefix(s),
                    shell_quote(&self.cfg.host),
                    shell_quote(&format!("cat > {}", shell_quote(remote))),
                    shell_quote(&local_s),
                )
            })
            .await
        }
    }

    async fn copy_down_impl(&self, remote: &str, local: &Path) -> Result<(), TransportError> {
        let is_dir = self.remote_is_dir(remote).await?;
        let local_dir = if is_dir { Some(local) } else { local.parent() };
        if let Some(d) = local_dir.filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| self.io("copy down", e))?;
        }
        let local_s = local.display().to_string();
        if self.remote_has_rsync().await? {
            let (src, dst) = if is_dir {
                (
                    format!("{}/", remote.trim_end_matches('/')),
                    format!("{local_s}/"),
                )
            } else {
                (remote.to_string(), local_s.clone())
            };
            return self
                .run_local_pipeline("rsync down", |s| {
                    format!(
                        "rsync -az -e {} {} {}",
                        shell_quote(&self.ssh_prefix(s)),
                        shell_quote(&self.dest(&src)),
                        shell_quote(&dst),
                    )
                })
                .await;
        }
        if is_dir {
            self.run_local_pipeline("tar down", |s| {
                format!(
                    "{} {} {} | tar -xzf - -C {}",
                    self.ssh_prefix(s),
                    shell_quote(&self.cfg.host),
                    shell_quote(&format!("tar -C {} -czf - .", shell_quote(remote))),
                    shell_quote(&local_s),
                )
            })
            .await
        } else {
            self.run_local_pipeline("cat down", |s| {
                format!(
                    "{} {} {} > {}",
                    self.ssh_prefix(s),
                    shell_quote(&self.cfg.host),
                    shell_quote(&format!("cat {}", shell_quote(remote))),
                    shell_quote(&local_s),
                )
            })
            .await
        }
    }

    /// Close the master (tunnels close with it).
    pub async fn close(&self) {
        if let Some(s) = self.session.lock().await.take()
            && let Ok(s) = Arc::try_unwrap(s)
        {
            let _ = s.close().await;
        }
    }

    /// Force the "rsync is absent" path (tests of the tar fallback).
    pub fn assume_no_rsync(&self) {
        let _ = self.has_rsync.set(false);
    }
}

async fn request_forward(
    s: &Session,
    remote_port: u16,
    local: SocketAddr,
) -> Result<(), openssh::Error> {
    s.request_port_forward(
        ForwardType::Remote,
        Socket::new("127.0.0.1", remote_port),
        local,
    )
    .await
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Transport for SshTransport {
    fn describe(&self) -> String {
        self.target()
    }

    fn run<'a>(&'a self, command: &'a str) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                let s = self.session().await?;
                let res = {
                    let _permit = self
                        .sem
                        .acquire()
                        .await
                        .map_err(|e| self.failed("run", e))?;
                    s.command("sh")
                        .arg("-c")
                        .arg(command)
                        .stdin(openssh::Stdio::null())
                        .output()
                        .await
                };
                let retryable = match &res {
                    Ok(out) => out.status.code() == Some(255),
                    Err(
                        openssh::Error::Disconnected
                        | openssh::Error::RemoteProcessTerminated
                        | openssh::Error::Master(_)
                        | openssh::Error::Ssh(_),
                    ) => true,
                    Err(_) => false,
                };
                if retryable && attempt < self.cfg.retries && self.reset_if_dead(&s).await {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                return match res {
                    Ok(out) => Ok(CommandOutput {
                        status: out.status.code(),
                        stdout: out.stdout,
                        stderr: out.stderr,
                    }),
                    Err(e) => Err(self.failed("run", error_chain(&e))),
                };
            }
        })
    }

    fn copy_up<'a>(
        &'a self,
        local: &'a Path,
        remote: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(self.copy_up_impl(local, remote))
    }

    fn copy_down<'a>(
        &'a self,
        remote: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(self.copy_down_impl(remote, local))
    }

    fn reverse_tunnel<'a>(
        &'a self,
        remote_port: u16,
        local: SocketAddr,
    ) -> BoxFuture<'a, Result<TunnelEndpoint, TransportError>> {
        Box::pin(async move {
            let s = self.session().await?;
            request_forward(&s, remote_port, local).await.map_err(|e| {
                self.failed(
                    &format!("reverse tunnel 127.0.0.1:{remote_port} -> {local}"),
                    error_chain(&e),
                )
            })?;
            self.tunnels
                .lock()
                .expect("tunnels lock")
                .push((remote_port, local));
            Ok(TunnelEndpoint {
                host: "127.0.0.1".into(),
                port: remote_port,
            })
        })
    }

    fn remote_path(&self, path: &str) -> String {
        path.to_string()
    }
}
