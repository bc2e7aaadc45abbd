//! How the engine runs work on an instance: set it up, start an attempt under the agent,
//! read the attempt's heartbeats, pull files back, stop it.
//!
//! [`Runner`] is the seam; [`AgentRunner`] is the real one: it reaches instances through a
//! [`Transport`] (SSH, or the local transport for simulator folders), copies the static
//! `vasticlaude-agent` there, writes a per-attempt [`JobSpec`] with a fresh bearer token, and
//! serves the heartbeat [`Collector`] the agents push to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use worker_agent::protocol::{
    EndReason, JobSpec, JobState as AgentJobState, PROTOCOL_VERSION, Token, files,
};

use crate::clock::SharedClock;
use crate::collector::{AttemptAuth, Collector, CollectorConfig, MemoryHeartbeatStore, mint_token};
use crate::market::Endpoint;
use crate::transport::{LocalTransport, SshConfig, SshTransport, Transport, shell_quote};

use super::model::*;

/// What a runner operation failed at.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {msg}")]
pub struct RunnerError {
    pub op: &'static str,
    pub msg: String,
}

fn rerr(op: &'static str, e: impl std::fmt::Display) -> RunnerError {
    RunnerError {
        op,
        msg: e.to_string(),
    }
}

/// An attempt the engine asks to start.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub job: JobView,
    pub attempt_id: i64,
    pub fence: i64,
    pub key: InstanceKey,
    pub endpoint: Endpoint,
    /// A pulled checkpoint folder to put in place first.
    pub resume_from: Option<PathBuf>,
    /// GPU indices on the instance.
    pub gpus: Vec<u32>,
    /// The instance's disk, GB (exported as `VASTICLAUDE_DISK_GB`).
    pub disk_gb: f64,
}

/// A running attempt, as the runner needs to know it (rebuilt after a restart).
#[derive(Debug, Clone)]
pub struct ActiveAttempt {
    pub job: JobId,
    pub attempt_id: i64,
    pub fence: i64,
    pub endpoint: Endpoint,
}

pub trait Runner: Send + Sync {
    /// Prepare an instance: the agent binary (and an SSH key, where the market did not).
    fn setup<'a>(
        &'a self,
        key: InstanceKey,
        ep: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), RunnerError>>;

    /// Start an attempt; returns the token hash to journal.
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<String, RunnerError>>;

    /// After a restart: accept heartbeats of attempts started before.
    fn readopt(&self, job: JobId, attempt_id: i64, fence: i64, token_hash: Option<&str>);

    /// The newest heartbeat of each active attempt.
    fn heartbeats<'a>(&'a self, active: &'a [ActiveAttempt]) -> BoxFuture<'a, Vec<HeartbeatObs>>;

    /// Copy a job's checkpoints (and for `Final`, outputs and logs) to `dest`. `Ok(true)`: a
    /// checkpoint came back (what heartbeats said about it may have been lost).
    fn pull<'a>(
        &'a self,
        ep: &'a Endpoint,
        job: JobId,
        attempt_id: Option<i64>,
        kind: PullKind,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<bool, RunnerError>>;

    /// Stop an attempt's processes (its agent is told "stop" and its process groups killed).
    fn stop<'a>(
        &'a self,
        ep: &'a Endpoint,
        job: JobId,
        attempt_id: i64,
    ) -> BoxFuture<'a, Result<(), RunnerError>>;

    /// Forget an attempt (ended): its agent gets "stop" if it still reports.
    fn forget(&self, attempt_id: i64);
}

/// Where things live on an instance.
pub mod paths {
    use super::JobId;
    pub const ROOT: &str = "/root/vasticlaude";
    pub fn agent() -> String {
        format!("{ROOT}/bin/vasticlaude-agent")
    }
    pub fn job(job: JobId) -> String {
        format!("{ROOT}/jobs/{job}")
    }
    pub fn checkpoints(job: JobId) -> String {
        format!("{}/checkpoints", job_dir(job))
    }
    pub fn outputs(job: JobId) -> String {
        format!("{}/outputs", job_dir(job))
    }
    pub fn attempt(job: JobId, attempt: i64) -> String {
        format!("{}/attempts/{attempt}", job_dir(job))
    }
    fn job_dir(job: JobId) -> String {
        self::job(job)
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    exit_checked: Option<bool>,
}

/// The real runner: agent + transports + collector.
pub struct AgentRunner {
    agent_binary: PathBuf,
    collector: Collector,
    store: Arc<MemoryHeartbeatStore>,
    collector_addr: SocketAddr,
    heartbeat_interval_ms: u64,
    dead_man_timeout_ms: u64,
    ssh: Option<SshKeys>,
    tracked: Mutex<BTreeMap<i64, Tracked>>,
    code_dir: Option<PathBuf>,
    transports: Mutex<BTreeMap<String, Arc<dyn Transport>>>,
}

impl std::fmt::Debug for AgentRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRunner")
            .field("agent_binary", &self.agent_binary)
            .field("collector_addr", &self.collector_addr)
            .finish_non_exhaustive()
    }
}

/// Our dedicated key pair (never the user's) and where per-instance SSH state goes.
#[derive(Debug, Clone)]
pub struct SshKeys {
    pub key_path: PathBuf,
    pub state_root: PathBuf,
}

/// Options of [`AgentRunner::start`].
#[derive(Debug, Clone)]
pub struct AgentRunnerOptions {
    pub agent_binary: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub dead_man_timeout_ms: u64,
    /// SSH settings for real instances; `None` when only local.
    pub ssh: Option<SshKeys>,
    /// A folder copied to each job's working directory (the user's code).
    pub code_dir: Option<PathBuf>,
    /// Address the collector listens on (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
}

impl AgentRunner {
    /// Start the collector (HTTP) and return the runner.
    pub async fn start(
        opts: AgentRunnerOptions,
        clock: SharedClock,
    ) -> Result<Arc<Self>, RunnerError> {
        let store = Arc::new(MemoryHeartbeatStore::new());
        let collector = Collector::new(store.clone(), clock, CollectorConfig::default());
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| rerr("start the collector", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| rerr("start the collector", e))?;
        let router = crate::collector::router(collector.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the heartbeat collector stopped");
            }
        });
        Ok(Arc::new(Self {
            agent_binary: opts.agent_binary,
            collector,
            store,
            collector_addr: addr,
            heartbeat_interval_ms: opts.heartbeat_interval_ms,
            dead_man_timeout_ms: opts.dead_man_timeout_ms,
            ssh: opts.ssh,
            tracked: Mutex::new(BTreeMap::new()),
            code_dir: opts.code_dir,
            transports: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn collector_addr(&self) -> SocketAddr {
        self.collector_addr
    }

    async fn transport(&self, ep: &Endpoint) -> Result<Arc<dyn Transport>, RunnerError> {
        let k = format!("{ep:?}");
        if let Some(t) = self
            .transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
        {
            return Ok(t.clone());
        }
        let t: Arc<dyn Transport> = match ep {
            Endpoint::Local { dir } => Arc::new(LocalTransport::new(dir.clone())),
            Endpoint::Ssh { host, port } => {
                let ssh = self.ssh.clone().ok_or_else(|| RunnerError {
                    op: "connect",
                    msg: format!("no SSH key to reach {host}:{port}"),
                })?;
                let cfg = SshConfig::new(
                    host.clone(),
                    *port,
                    "root",
                    ssh.key_path.clone(),
                    ssh.state_root.join(format!("{host}-{port}")),
                );
                Arc::new(SshTransport::new(cfg))
            }
        };
        self.transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, t.clone());
        Ok(t)
    }

    async fn run_ok(t: &dyn Transport, op: &'static str, cmd: &str) -> Result<String, RunnerError> {
        let out = t.run(cmd).await.map_err(|e| rerr(op, e))?;
        if !out.success() {
            return Err(RunnerError {
                op,
                msg: format!(
                    "`{cmd}` exited with {:?}: {}",
                    out.status,
                    out.stderr_str().trim()
                ),
            });
        }
        Ok(out.stdout_str())
    }

    /// Read the tail of an attempt's stderr to tell a full disk from other failures.
    async fn disk_full(&self, ep: &Endpoint, job: JobId, attempt: i64) -> bool {
        let Ok(t) = self.transport(ep).await else {
            return false;
        };
        let path = format!("{}/{}", paths::attempt(job, attempt), files::STDERR);
        let cmd = format!(
            "tail -c 4096 {} 2>/dev/null || true",
            shell_quote(&t.remote_path(&path))
        );
        match t.run(&cmd).await {
            Ok(out) => {
                let s = out.stdout_str().to_ascii_lowercase();
                s.contains("no space left on device") || s.contains("disk quota exceeded")
            }
            Err(_) => false,
        }
    }
}

impl Runner for AgentRunner {
    fn setup<'a>(
        &'a self,
        _key: InstanceKey,
        ep: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), RunnerError>> {
        Box::pin(async move {
            let t = self.transport(ep).await?;
            let agent = paths::agent();
            let dir = format!("{}/bin", paths::ROOT);
            Self::run_ok(
                &*t,
                "prepare the instance",
                &format!("mkdir -p {}", shell_quote(&t.remote_path(&dir))),
            )
            .await?;
            // Copy beside it, then rename over: a running old agent keeps its (unlinked) file.
            let tmp = format!("{agent}.new");
            t.copy_up(&self.agent_binary, &tmp)
                .await
                .map_err(|e| rerr("copy the agent", e))?;
            let remote = t.remote_path(&agent);
            let v = Self::run_ok(
                &*t,
                "check the agent",
                &format!(
                    "chmod 755 {n} && mv -f {n} {q} && {q} version",
                    n = shell_quote(&t.remote_path(&tmp)),
                    q = shell_quote(&remote)
                ),
            )
            .await?;
            if !v.contains("vasticlaude-agent") {
                return Err(RunnerError {
                    op: "check the agent",
                    msg: format!("unexpected answer {:?}", v.trim()),
                });
            }
            Ok(())
        })
    }

    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<String, RunnerError>> {
        Box::pin(async move {
            let t = self.transport(&req.endpoint).await?;
            let job = req.job.id;
            let ckpt = paths::checkpoints(job);
            let out = paths::outputs(job);
            let adir = paths::attempt(job, req.attempt_id);
            let work = format!("{}/work", paths::job(job));
            let mk = [&ckpt, &out, &adir, &work]
                .iter()
                .map(|p| shell_quote(&t.remote_path(p)))
                .collect::<Vec<_>>()
                .join(" ");
            Self::run_ok(&*t, "prepare the job folders", &format!("mkdir -p {mk}")).await?;
            if let Some(code) = &self.code_dir {
                t.copy_up(code, &work)
                    .await
                    .map_err(|e| rerr("copy the code", e))?;
            }
            if let Some(from) = &req.resume_from
                && from.is_dir()
            {
                t.copy_up(from, &ckpt)
                    .await
                    .map_err(|e| rerr("copy the checkpoint", e))?;
            }
            let (token, hash) = mint_token().map_err(|e| rerr("mint a token", e))?;
            self.store.put_attempt(
                req.attempt_id,
                AttemptAuth {
                    token_hash: Some(hash.clone()),
                    fence: req.fence,
                    current_fence: req.fence,
                    active: true,
                },
            );
            let tunnel = t
                .reverse_tunnel(47_000, self.collector_addr)
                .await
                .map_err(|e| rerr("open the collector tunnel", e))?;
            let spec = JobSpec {
                protocol_version: PROTOCOL_VERSION,
                job_id: job,
                attempt: req.attempt_id,
                fence: req.fence,
                token: Token(token),
                command: req.job.command.clone(),
                env: {
                    let mut env = req.job.env.clone();
                    env.insert(
                        "VASTICLAUDE_DISK_GB".into(),
                        format!("{}", req.disk_gb.round()),
                    );
                    env
                },
                working_dir: t.remote_path(&work).into(),
                checkpoint_dir: t.remote_path(&ckpt).into(),
                output_dir: t.remote_path(&out).into(),
                progress_file: t.remote_path(&format!("{adir}/progress.jsonl")).into(),
                state_dir: t.remote_path(&adir).into(),
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                collector_url: tunnel.http_url(),
                dead_man_timeout_ms: self.dead_man_timeout_ms,
                grace_period_ms: 2_000,
                gpus: req.gpus.clone(),
                log_cap_bytes: worker_agent::protocol::DEFAULT_LOG_CAP_BYTES,
            };
            let json =
                serde_json::to_vec_pretty(&spec).map_err(|e| rerr("write the job spec", e))?;
            let tmp = std::env::temp_dir().join(format!(
                "vasticlaude-spec-{}-{}-{}.json",
                std::process::id(),
                job,
                req.attempt_id
            ));
            std::fs::write(&tmp, &json).map_err(|e| rerr("write the job spec", e))?;
            let spec_path = format!("{adir}/spec.json");
            let copied = t.copy_up(&tmp, &spec_path).await;
            let _ = std::fs::remove_file(&tmp);
            copied.map_err(|e| rerr("copy the job spec", e))?;
            let cmd = format!(
                "chmod 600 {s} && {a} start --spec {s}",
                a = shell_quote(&t.remote_path(&paths::agent())),
                s = shell_quote(&t.remote_path(&spec_path))
            );
            Self::run_ok(&*t, "start the agent", &cmd).await?;
            self.tracked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.attempt_id, Tracked { exit_checked: None });
            Ok(hash)
        })
    }

    fn readopt(&self, _job: JobId, attempt_id: i64, fence: i64, token_hash: Option<&str>) {
        self.store.put_attempt(
            attempt_id,
            AttemptAuth {
                token_hash: token_hash.map(str::to_string),
                fence,
                current_fence: fence,
                active: true,
            },
        );
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(attempt_id, Tracked { exit_checked: None });
    }

    fn heartbeats<'a>(&'a self, active: &'a [ActiveAttempt]) -> BoxFuture<'a, Vec<HeartbeatObs>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for a in active {
                let Ok(Some(stored)) = self.collector.latest(a.attempt_id).await else {
                    continue;
                };
                let hb = &stored.heartbeat;
                let phase = match (&hb.state, &hb.exit) {
                    (AgentJobState::Exited, Some(exit))
                        if exit.reason == EndReason::SpawnFailed =>
                    {
                        AgentPhase::StartFailed {
                            reason: exit.error.clone().unwrap_or_else(|| "spawn failed".into()),
                        }
                    }
                    (AgentJobState::Exited, Some(exit)) => {
                        let code = exit.code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(9));
                        let cached = self
                            .tracked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&a.attempt_id)
                            .and_then(|t| t.exit_checked);
                        let disk_full = if code == 0 {
                            false
                        } else if let Some(d) = cached {
                            d
                        } else {
                            let d = self.disk_full(&a.endpoint, a.job, a.attempt_id).await;
                            self.tracked
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(
                                    a.attempt_id,
                                    Tracked {
                                        exit_checked: Some(d),
                                    },
                                );
                            d
                        };
                        AgentPhase::Exited { code, disk_full }
                    }
                    (AgentJobState::Exited, None) => AgentPhase::Exited {
                        code: 1,
                        disk_full: false,
                    },
                    _ => AgentPhase::Running,
                };
                out.push(HeartbeatObs {
                    job: a.job,
                    token: a.fence,
                    seq: hb.seq,
                    at_ms: stored.received_at,
                    phase,
                    progress: hb
                        .progress
                        .step
                        .map(|s| (s, hb.progress.total.unwrap_or(0))),
                    checkpoint_ms: hb.last_checkpoint.as_ref().map(|c| c.time_ms),
                });
            }
            out
        })
    }

    fn pull<'a>(
        &'a self,
        ep: &'a Endpoint,
        job: JobId,
        attempt_id: Option<i64>,
        kind: PullKind,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<bool, RunnerError>> {
        Box::pin(async move {
            let t = self.transport(ep).await?;
            let ckpt_dest = dest.join("checkpoints");
            std::fs::create_dir_all(&ckpt_dest).map_err(|e| rerr("create the pull folder", e))?;
            // Into a fresh folder, then swap: a half-copied checkpoint never replaces a good one.
            let tmp = dest.join(".checkpoints.partial");
            let _ = std::fs::remove_dir_all(&tmp);
            t.copy_down(&paths::checkpoints(job), &tmp)
                .await
                .map_err(|e| rerr("pull the checkpoints", e))?;
            let old = dest.join(".checkpoints.old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&ckpt_dest, &old).map_err(|e| rerr("swap the checkpoints", e))?;
            std::fs::rename(&tmp, &ckpt_dest).map_err(|e| rerr("swap the checkpoints", e))?;
            let _ = std::fs::remove_dir_all(&old);
            let checkpoint = std::fs::read_dir(&ckpt_dest)
                .map_err(|e| rerr("read the pulled checkpoints", e))?
                .next()
                .is_some();
            if kind == PullKind::Final {
                t.copy_down(&paths::outputs(job), &dest.join("outputs"))
                    .await
                    .map_err(|e| rerr("pull the outputs", e))?;
                if let Some(a) = attempt_id {
                    let logs = dest.join("logs").join(format!("attempt-{a}"));
                    std::fs::create_dir_all(&logs).map_err(|e| rerr("create the log folder", e))?;
                    for f in [files::STDOUT, files::STDERR] {
                        let _ = t
                            .copy_down(&format!("{}/{f}", paths::attempt(job, a)), &logs.join(f))
                            .await;
                    }
                }
            }
            Ok(checkpoint)
        })
    }

    fn stop<'a>(
        &'a self,
        ep: &'a Endpoint,
        job: JobId,
        attempt_id: i64,
    ) -> BoxFuture<'a, Result<(), RunnerError>> {
        Box::pin(async move {
            self.forget(attempt_id);
            let t = self.transport(ep).await?;
            // The agent's status file names its own pid and the job's process group.
            let status = format!("{}/{}", paths::attempt(job, attempt_id), files::STATUS);
            let cmd = format!(
                "f={}; [ -f \"$f\" ] || exit 0; \
                 g=$(sed -n 's/.*\"job_pgid\": *\\([0-9]*\\).*/\\1/p' \"$f\" | head -1); \
                 p=$(sed -n 's/.*\"agent_pid\": *\\([0-9]*\\).*/\\1/p' \"$f\" | head -1); \
                 [ -n \"$g\" ] && kill -KILL -\"$g\" 2>/dev/null; [ -n \"$p\" ] && kill -TERM \"$p\" 2>/dev/null; exit 0",
                shell_quote(&t.remote_path(&status))
            );
            Self::run_ok(&*t, "stop the attempt", &cmd).await.map(drop)
        })
    }

    fn forget(&self, attempt_id: i64) {
        self.store.end_attempt(attempt_id);
        self.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&attempt_id);
    }
}
