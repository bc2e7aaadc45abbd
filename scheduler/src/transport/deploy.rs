//! Deploying one job attempt onto an instance: the agent binary (skipped when its sha256
//! already matches), the job spec, the code; then start the agent and wait for its first
//! heartbeat.
//!
//! Every step is idempotent, so a retry after a dropped SSH link (which re-runs the command) or
//! a second deploy of the same attempt never starts a second agent: the start command checks the
//! agent's pid file first.
//!
//! The spec's paths are instance paths (`/workspace/…`); they are mapped through
//! [`Transport::remote_path`] so the same spec works on the local transport. With the SSH
//! transport the caller opens the reverse tunnel first ([`Transport::reverse_tunnel`]) and puts
//! its endpoint in `spec.collector_url`.

use std::future::Future;
use std::path::{Path, PathBuf};

use sha2::Digest;
use worker_agent::protocol::{JobSpec, files};

use super::{Transport, TransportError, shell_quote};

/// Where things go on the instance.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Instance path of vasticlaude's own folder (the agent binary lives in `<root>/bin`).
    pub remote_root: String,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            remote_root: "/root/.vasticlaude".into(),
        }
    }
}

/// What was deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The agent's pid on the instance.
    pub agent_pid: u32,
    /// Paths as programs on the instance see them.
    pub agent_path: String,
    pub spec_path: String,
    pub state_dir: String,
    /// False when the agent binary on the instance already matched.
    pub agent_copied: bool,
    /// True when an agent for this attempt was already running and was left alone.
    pub already_running: bool,
}

impl Deployment {
    /// The agent's status file (readable over the transport when HTTP is down).
    pub fn status_path(&self) -> String {
        format!("{}/{}", self.state_dir, files::STATUS)
    }
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot read the agent binary {path}: {source}")]
    AgentBinary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the job spec to a temporary file: {0}")]
    Spec(std::io::Error),
    #[error("{step} failed on {target}: {why}")]
    Step {
        target: String,
        step: &'static str,
        why: String,
    },
    #[error("the agent on {target} sent no first heartbeat: {why}; agent log tail: {log_tail}")]
    NoHeartbeat {
        target: String,
        why: String,
        log_tail: String,
    },
}

/// sha256 hex of a local file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Write a file only its owner can read (it holds the agent token).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

fn map_spec(t: &dyn Transport, spec: &JobSpec) -> JobSpec {
    let m = |p: &Path| PathBuf::from(t.remote_path(&p.display().to_string()));
    let mut s = spec.clone();
    s.working_dir = m(&spec.working_dir);
    s.checkpoint_dir = m(&spec.checkpoint_dir);
    s.output_dir = m(&spec.output_dir);
    s.progress_file = m(&spec.progress_file);
    s.state_dir = m(&spec.state_dir);
    s
}

async fn step(t: &dyn Transport, step: &'static str, cmd: &str) -> Result<String, DeployError> {
    let out = t.run(cmd).await?;
    if !out.success() {
        return Err(DeployError::Step {
            target: t.describe(),
            step,
            why: format!("exit {:?}: {}", out.status, out.stderr_str().trim()),
        });
    }
    Ok(out.stdout_str())
}

/// Deploy and start one attempt. `wait_first_heartbeat` is the caller's wait (typically: poll
/// [`crate::collector::Collector::latest`] until a heartbeat of `spec.attempt` arrives, with a
/// timeout); its error text is reported together with the tail of the agent's log.
pub async fn deploy<W, F>(
    t: &dyn Transport,
    agent_binary: &Path,
    spec: &JobSpec,
    code_dir: Option<&Path>,
    opts: &DeployOptions,
    wait_first_heartbeat: W,
) -> Result<Deployment, DeployError>
where
    W: FnOnce(Deployment) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mapped = map_spec(t, spec);
    // Instance paths (what copy_up takes) and, mapped, what commands on the instance see.
    let inst_root = opts.remote_root.trim_end_matches('/');
    let inst_agent = format!("{inst_root}/bin/{}", worker_agent::AGENT_BINARY_NAME);
    let inst_state = spec.state_dir.display().to_string();
    let inst_spec = format!("{}/spec.json", inst_state.trim_end_matches('/'));
    let bin_dir = t.remote_path(&format!("{inst_root}/bin"));
    let agent_path = t.remote_path(&inst_agent);
    let state_dir = mapped.state_dir.display().to_string();
    let spec_path = t.remote_path(&inst_spec);

    // 1. The agent binary, unless the same one is already there.
    let local_sha = sha256_file(agent_binary).map_err(|source| DeployError::AgentBinary {
        path: agent_binary.to_path_buf(),
        source,
    })?;
    let remote_sha = t
        .run(&format!(
            "sha256sum {} 2>/dev/null | cut -d' ' -f1",
            shell_quote(&agent_path)
        ))
        .await?
        .stdout_str();
    let agent_copied = remote_sha.trim() != local_sha;
    if agent_copied {
        let suffix = format!(".{}.tmp", &local_sha[..12]);
        let tmp = format!("{agent_path}{suffix}");
        step(
            t,
            "create agent dir",
            &format!("mkdir -p {}", shell_quote(&bin_dir)),
        )
        .await?;
        t.copy_up(agent_binary, &format!("{inst_agent}{suffix}"))
            .await?;
        step(
            t,
            "install agent",
            &format!(
                "chmod 755 {q} && mv -f {q} {a}",
                q = shell_quote(&tmp),
                a = shell_quote(&agent_path)
            ),
        )
        .await?;
    }

    // 2. The spec (it carries the token: owner-only permissions).
    step(
        t,
        "create state dir",
        &format!("mkdir -p {} && chmod 700 {0}", shell_quote(&state_dir)),
    )
    .await?;
    let json = serde_json::to_vec_pretty(&mapped)
        .map_err(|e| DeployError::Spec(std::io::Error::other(e)))?;
    let tmp = std::env::temp_dir().join(format!(
        "vc-spec-{}-{}-{}.json",
        std::process::id(),
        spec.attempt,
        crate::collector::mint_token()
            .map(|(t, _)| t[4..16].to_string())
            .unwrap_or_default()
    ));
    write_private(&tmp, &json).map_err(DeployError::Spec)?;
    let copied = t.copy_up(&tmp, &inst_spec).await;
    let _ = std::fs::remove_file(&tmp);
    copied?;
    step(
        t,
        "protect spec",
        &format!("chmod 600 {}", shell_quote(&spec_path)),
    )
    .await?;

    // 3. The code.
    if let Some(code) = code_dir {
        t.copy_up(code, &spec.working_dir.display().to_string())
            .await?;
    }

    // 4. Start, unless this attempt's agent is already running.
    let pid_file = format!("{state_dir}/{}", files::PID);
    let start = format!(
        "if [ -f {pf} ] && kill -0 \"$(cat {pf})\" 2>/dev/null; then echo running \"$(cat {pf})\"; \
         else {a} start --spec {s}; fi",
        pf = shell_quote(&pid_file),
        a = shell_quote(&agent_path),
        s = shell_quote(&spec_path),
    );
    let out = step(t, "start agent", &start).await?;
    let (already_running, pid_text) = match out.trim().strip_prefix("running ") {
        Some(p) => (true, p.trim().to_string()),
        None => (false, out.trim().to_string()),
    };
    let agent_pid: u32 = pid_text
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .parse()
        .map_err(|_| DeployError::Step {
            target: t.describe(),
            step: "start agent",
            why: format!("expected the agent's pid, got {:?}", out.trim()),
        })?;
    let deployment = Deployment {
        agent_pid,
        agent_path,
        spec_path,
        state_dir: state_dir.clone(),
        agent_copied,
        already_running,
    };

    // 5. The first heartbeat proves the whole path (agent, tunnel, collector, token).
    if let Err(why) = wait_first_heartbeat(deployment.clone()).await {
        let log = format!("{state_dir}/{}", files::AGENT_LOG);
        let log_tail = t
            .run(&format!("tail -n 20 {} 2>/dev/null", shell_quote(&log)))
            .await
            .map(|o| o.stdout_str())
            .unwrap_or_default();
        return Err(DeployError::NoHeartbeat {
            target: t.describe(),
            why,
            log_tail: log_tail.trim().to_string(),
        });
    }
    Ok(deployment)
}
