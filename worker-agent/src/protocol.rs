//! The wire protocol between the agent and the collector, and the job spec the scheduler hands
//! the agent.
//!
//! Everything here is plain serde data so the scheduler (which links this crate as a library)
//! and the agent binary agree on one definition. The version travels in every message: a
//! collector that sees a newer major protocol can refuse it instead of misreading fields.
//! Unknown fields are ignored on read, so adding optional fields does not need a new version.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning or a required field is added.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default seconds between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 10_000;
/// Default time without any acknowledgement after which the agent stops the job (30 min).
pub const DEFAULT_DEAD_MAN_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// Default time between SIGTERM and SIGKILL, for the job to write a checkpoint.
pub const DEFAULT_GRACE_PERIOD_MS: u64 = 60_000;
/// Default cap per log file (stdout, stderr); one rotated copy is kept beside it.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 64 * 1024 * 1024;

/// The per-attempt bearer token. Its `Debug`/`Display` never show the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(pub String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the scheduler tells one agent to run. One agent runs one attempt of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub protocol_version: u32,
    pub job_id: i64,
    /// The attempt row id; heartbeats are keyed by it.
    pub attempt: i64,
    /// The fencing token of this attempt; a collector that knows a newer one answers "stop".
    pub fence: i64,
    pub token: Token,
    /// Run with `sh -c`.
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub output_dir: PathBuf,
    pub progress_file: PathBuf,
    /// Where the agent keeps its status file, spool and the job's logs.
    pub state_dir: PathBuf,
    #[serde(default = "default_interval")]
    pub heartbeat_interval_ms: u64,
    /// Base URL, e.g. `http://127.0.0.1:47001` (a reverse tunnel on the instance's loopback).
    pub collector_url: String,
    #[serde(default = "default_dead_man")]
    pub dead_man_timeout_ms: u64,
    #[serde(default = "default_grace")]
    pub grace_period_ms: u64,
    /// GPU indices for `CUDA_VISIBLE_DEVICES`. An empty list leaves the variable as inherited
    /// (setting it to "" would hide every GPU).
    #[serde(default)]
    pub gpus: Vec<u32>,
    #[serde(default = "default_log_cap")]
    pub log_cap_bytes: u64,
}

fn default_interval() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}
fn default_dead_man() -> u64 {
    DEFAULT_DEAD_MAN_TIMEOUT_MS
}
fn default_grace() -> u64 {
    DEFAULT_GRACE_PERIOD_MS
}
fn default_log_cap() -> u64 {
    DEFAULT_LOG_CAP_BYTES
}

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "job spec protocol version {found} is not supported (this agent speaks {PROTOCOL_VERSION})"
    )]
    Version { found: u32 },
    #[error("job spec field {field} is invalid: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("job spec is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl JobSpec {
    /// Parse and validate a spec from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let spec: JobSpec = serde_json::from_slice(bytes)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.protocol_version != PROTOCOL_VERSION {
            return Err(SpecError::Version {
                found: self.protocol_version,
            });
        }
        let bad = |field, why: &str| {
            Err(SpecError::Invalid {
                field,
                why: why.to_string(),
            })
        };
        if self.command.trim().is_empty() {
            return bad("command", "is empty");
        }
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms", "must be > 0");
        }
        if self.dead_man_timeout_ms < self.heartbeat_interval_ms {
            return Err(SpecError::Invalid {
                field: "dead_man_timeout_ms",
                why: format!(
                    "{} is shorter than the heartbeat interval {}",
                    self.dead_man_timeout_ms, self.heartbeat_interval_ms
                ),
            });
        }
        if !(self.collector_url.starts_with("http://")
            || self.collector_url.starts_with("https://"))
        {
            return Err(SpecError::Invalid {
                field: "collector_url",
                why: format!("{:?} is not an http(s) URL", self.collector_url),
            });
        }
        if self.token.0.is_empty() {
            return bad("token", "is empty");
        }
        Ok(())
    }

    /// The heartbeat endpoint for this spec.
    pub fn heartbeat_url(&self) -> String {
        format!(
            "{}{}",
            self.collector_url.trim_end_matches('/'),
            HEARTBEATS_PATH
        )
    }
}

/// The collector's heartbeat endpoint path.
pub const HEARTBEATS_PATH: &str = "/v1/heartbeats";

/// Lifecycle of the job as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// The agent is up, the command not yet spawned.
    Starting,
    Running,
    /// SIGTERM was sent; waiting out the grace period.
    Stopping,
    /// Final record: the command is gone; `exit` says how.
    Exited,
}

/// Why the job ended (in the final record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The command exited on its own.
    Completed,
    /// The collector answered "stop".
    StoppedByCollector,
    /// The agent received SIGTERM/SIGINT.
    StoppedBySignal,
    /// No acknowledgement within the dead-man timeout.
    DeadMan,
    /// `sh -c` could not be started.
    SpawnFailed,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    pub signal: Option<i32>,
    pub reason: EndReason,
    /// Set when the grace period ran out and SIGKILL was needed.
    #[serde(default)]
    pub killed_after_grace: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.reason == EndReason::Completed
    }
}

/// Training progress as last reported by the job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: Option<u64>,
    pub total: Option<u64>,
    /// Numeric metrics from the progress file (`loss`, `lr`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// One GPU, as sampled with nvidia-smi.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStat {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub utilization_pct: Option<f64>,
    pub memory_used_mib: Option<f64>,
    pub memory_total_mib: Option<f64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
}

/// The newest checkpoint the agent knows of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub path: String,
    pub time_ms: i64,
}

/// Bytes written so far to each log (monotonic, across rotations), so the scheduler can fetch
/// only what is new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOffsets {
    pub stdout: u64,
    pub stderr: u64,
}

/// One heartbeat. `seq` starts at 1 and grows by one per heartbeat of an attempt; the collector
/// stores each (attempt, seq) once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub protocol_version: u32,
    pub job_id: i64,
    pub attempt: i64,
    pub fence: i64,
    pub seq: u64,
    /// Agent wall time, epoch milliseconds.
    pub time_ms: i64,
    pub state: JobState,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuStat>,
    /// Why the GPU list is empty when it is (e.g. nvidia-smi absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointInfo>,
    #[serde(default)]
    pub logs: LogOffsets,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

/// Body of `POST /v1/heartbeats`: heartbeats of one attempt, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatBatch {
    pub attempt: i64,
    pub heartbeats: Vec<Heartbeat>,
}

/// What the agent should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Continue,
    Stop,
}

/// The collector's answer to a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub protocol_version: u32,
    pub attempt: i64,
    /// Every heartbeat with `seq <= ack_seq` is stored; the agent may forget them.
    pub ack_seq: u64,
    pub action: Action,
}

/// The agent's status file (`<state_dir>/status.json`), replaced atomically on every beat, so
/// the scheduler can read it over SSH when the HTTP path is down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub protocol_version: u32,
    pub agent_pid: u32,
    pub job_pgid: Option<i32>,
    /// Highest sequence number the collector acknowledged.
    pub acked_seq: u64,
    /// Heartbeats waiting in the spool.
    pub spooled: usize,
    /// Wall time of the last acknowledgement (or the agent's start).
    pub last_ack_ms: i64,
    pub last: Heartbeat,
}

/// File names inside the state dir.
pub mod files {
    pub const STATUS: &str = "status.json";
    pub const SPOOL: &str = "spool.jsonl";
    pub const STDOUT: &str = "stdout.log";
    pub const STDERR: &str = "stderr.log";
    pub const AGENT_LOG: &str = "agent.log";
    pub const PID: &str = "agent.pid";
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> JobSpec {
        JobSpec {
            protocol_version: PROTOCOL_VERSION,
            job_id: 7,
            attempt: 3,
            fence: 2,
            token: Token("s3cret-token".into()),
            command: "true".into(),
            env: BTreeMap::new(),
            working_dir: "/w".into(),
            checkpoint_dir: "/w/ckpt".into(),
            output_dir: "/w/out".into(),
            progress_file: "/w/progress.jsonl".into(),
            state_dir: "/w/state".into(),
            heartbeat_interval_ms: 1000,
            collector_url: "http://127.0.0.1:9/".into(),
            dead_man_timeout_ms: 5000,
            grace_period_ms: 100,
            gpus: vec![0, 1],
            log_cap_bytes: 1024,
        }
    }

    #[test]
    fn spec_round_trips_and_hides_token() {
        let s = spec();
        let json = serde_json::to_vec(&s).unwrap();
        let back = JobSpec::from_json(&json).unwrap();
        assert_eq!(back, s);
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.heartbeat_url(), "http://127.0.0.1:9/v1/heartbeats");
    }

    #[test]
    fn spec_rejects_bad_values_with_the_value() {
        let mut s = spec();
        s.collector_url = "ftp://x".into();
        let e = JobSpec::from_json(&serde_json::to_vec(&s).unwrap()).unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
        let mut s = spec();
        s.protocol_version = 99;
        let e = JobSpec::from_json(&serde_json::to_vec(&s).unwrap()).unwrap_err();
        assert!(e.to_string().contains("99"), "{e}");
        let mut s = spec();
        s.dead_man_timeout_ms = 10;
        assert!(s.validate().is_err());
    }

    #[test]
    fn defaults_apply_to_missing_fields() {
        let mut v = serde_json::to_value(spec()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("heartbeat_interval_ms");
        o.remove("dead_man_timeout_ms");
        o.remove("grace_period_ms");
        let s: JobSpec = serde_json::from_value(v).unwrap();
        assert_eq!(s.heartbeat_interval_ms, 10_000);
        assert_eq!(s.dead_man_timeout_ms, 1_800_000);
        assert_eq!(s.grace_period_ms, 60_000);
    }
}
