//! The agent's main loop: run the job, watch it, heartbeat, stop it when told.
//!
//! One tokio current-thread runtime (one OS thread) is enough for a process that mostly sleeps;
//! it keeps resident memory small. The job runs in its own process group so that a stop reaches
//! everything it spawned (data loaders, torchrun workers), and the agent itself sits in a separate
//! session so that it outlives the SSH connection that started it.
//!
//! HTTP client choice: reqwest with rustls, bundled webpki roots and hickory-dns. A hand-written
//! HTTP/1.1 client would be smaller, but a team server may expose the collector over HTTPS with
//! a DNS name, and doing TLS and DNS by hand is where bugs hide. hickory reads
//! `/etc/resolv.conf` and `/etc/hosts` itself, so a static glibc binary never `dlopen`s an NSS
//! module from a foreign glibc in the user's image; bundled roots make HTTPS work in images
//! without `/etc/ssl/certs`.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;

use crate::files::{CappedLog, PidDir, Spool, write_atomic};
use crate::gpu::{self, GpuSample};
use crate::progress::{LineSplitter, parse_json_line, parse_output_line};
use crate::protocol::{
    Action, AgentStatus, CheckpointInfo, EndReason, ExitInfo, GpuStat, Heartbeat, HeartbeatAck,
    HeartbeatBatch, JobSpec, JobState, LogOffsets, PROTOCOL_VERSION, Progress, files,
};

/// Most heartbeats kept unacknowledged (about 28 hours at 10 s).
const SPOOL_MAX: usize = 10_000;
/// Most heartbeats per POST.
const BATCH_MAX: usize = 200;

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

macro_rules! alog {
    ($($t:tt)*) => {{
        eprintln!("{} vasticlaude-agent: {}", now_ms(), format_args!($($t)*));
    }};
}

/// Errors that end the agent before a job could run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare {what} at {path}: {source}")]
    Prepare {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// What the job's output and progress file told us so far.
#[derive(Debug, Default)]
struct Observed {
    progress: Progress,
    checkpoint: Option<String>,
    logs: LogOffsets,
}

/// Build the HTTP client: bundled roots only, hickory resolver.
pub fn http_client() -> Result<reqwest::Client, AgentError> {
    let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|d| reqwest::Certificate::from_der(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Http(e.to_string()))?;
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .hickory_dns(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| AgentError::Http(e.to_string()))
}

fn prepare_dir(what: &'static str, p: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(p).map_err(|source| AgentError::Prepare {
        what,
        path: p.display().to_string(),
        source,
    })
}

/// Send SIGTERM/SIGKILL to a whole process group.
fn signal_group(pgid: i32, sig: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid only sends a signal; no memory is touched.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// This process's own process group id.
pub fn own_pgid() -> i32 {
    // SAFETY: getpgrp(2) has no arguments and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::getpgrp()
    }
}

struct Agent {
    spec: JobSpec,
    client: reqwest::Client,
    url: String,
    spool: Spool,
    seq: u64,
    acked: u64,
    last_ack: Instant,
    last_ack_ms: i64,
    observed: Arc<Mutex<Observed>>,
    gpus: Vec<GpuStat>,
    gpu_error: Option<String>,
    gpu_absent: bool,
    progress_offset: u64,
    progress_partial: Vec<u8>,
    job_pgid: Option<i32>,
    stop_requested: bool,
    /// The newest heartbeat, for the status file.
    last: Option<Heartbeat>,
}

impl Agent {
    fn dead_man_expired(&self) -> bool {
        self.last_ack.elapsed() >= Duration::from_millis(self.spec.dead_man_timeout_ms)
    }

    /// Read new JSON lines appended to the progress file since the last look.
    fn poll_progress_file(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.spec.progress_file) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.progress_offset {
            // Truncated or replaced: start over.
            self.progress_offset = 0;
            self.progress_partial.clear();
        }
        if f.seek(SeekFrom::Start(self.progress_offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        // Bound one read so a runaway file cannot balloon memory; the rest is read next beat.
        let Ok(n) = f.take(4 * 1024 * 1024).read_to_end(&mut buf) else {
            return;
        };
        self.progress_offset += n as u64;
        self.progress_partial.extend_from_slice(&buf);
        let Some(last_nl) = self.progress_partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.progress_partial.drain(..=last_nl).collect();
        let mut obs = self.observed.lock().expect("observed lock");
        for line in String::from_utf8_lossy(&complete).lines() {
            if let Some(u) = parse_json_line(line) {
                if u.step.is_some() {
                    obs.progress.step = u.step;
                }
                if u.total.is_some() {
                    obs.progress.total = u.total;
                }
                obs.progress.metrics.extend(u.metrics);
                if u.checkpoint.is_some() {
                    obs.checkpoint = u.checkpoint;
                }
            }
        }
    }

    /// The newest checkpoint: what the progress file named, else the newest entry in the
    /// checkpoint dir.
    fn last_checkpoint(&self) -> Option<CheckpointInfo> {
        let named = self
            .observed
            .lock()
            .expect("observed lock")
            .checkpoint
            .clone();
        if let Some(p) = named {
            let full = self.spec.checkpoint_dir.join(&p);
            let time_ms = std::fs::metadata(&full)
                .or_else(|_| std::fs::metadata(&p))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .unwrap_or_else(now_ms);
            return Some(CheckpointInfo { path: p, time_ms });
        }
        let mut best: Option<(SystemTime, String)> = None;
        for e in std::fs::read_dir(&self.spec.checkpoint_dir).ok()?.flatten() {
            let Ok(t) = e.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, e.file_name().to_string_lossy().into_owned()));
            }
        }
        best.map(|(t, path)| CheckpointInfo {
            path,
            time_ms: t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        })
    }

    async fn sample_gpus(&mut self) {
        if self.gpu_absent {
            return;
        }
        let timeout = Duration::from_millis((self.spec.heartbeat_interval_ms / 2).clamp(500, 5000));
        match gpu::sample(timeout).await {
            GpuSample::Stats(s) => {
                self.gpus = s;
                self.gpu_error = None;
            }
            GpuSample::Absent(why) => {
                self.gpu_absent = true;
                self.gpus.clear();
                self.gpu_error = Some(why);
            }
            GpuSample::Failed(why) => {
                self.gpus.clear();
                self.gpu_error = Some(why);
            }
        }
    }

    fn make_heartbeat(&mut self, state: JobState, exit: Option<ExitInfo>) -> Heartbeat {
        self.seq += 1;
        let (progress, logs) = {
            let o = self.observed.lock().expect("observed lock");
            (o.progress.clone(), o.logs)
        };
        Heartbeat {
            protocol_version: PROTOCOL_VERSION,
            job_id: self.spec.job_id,
            attempt: self.spec.attempt,
            fence: self.spec.fence,
            seq: self.seq,
            time_ms: now_ms(),
            state,
            progress,
            gpus: self.gpus.clone(),
            gpu_error: self.gpu_error.clone(),
            last_checkpoint: self.last_checkpoint(),
            logs,
            exit,
        }
    }

    /// Record a heartbeat: spool it and refresh the status file.
    fn record(&mut self, hb: Heartbeat) {
        if let Err(e) = self.spool.push(hb.clone()) {
            alog!("cannot spool heartbeat {}: {e}", hb.seq);
        }
        self.last = Some(hb);
        self.write_status();
    }

    fn write_status(&self) {
        let Some(last) = self.last.clone() else {
            return;
        };
        let status = AgentStatus {
            protocol_version: PROTOCOL_VERSION,
            agent_pid: std::process::id(),
            job_pgid: self.job_pgid,
            acked_seq: self.acked,
            spooled: self.spool.len(),
            last_ack_ms: self.last_ack_ms,
            last,
        };
        let path = self.spec.state_dir.join(files::STATUS);
        match serde_json::to_vec_pretty(&status) {
            Ok(bytes) => {
                if let Err(e) = write_atomic(&path, &bytes) {
                    alog!("cannot write {}: {e}", path.display());
                }
            }
            Err(e) => alog!("cannot encode status: {e}"),
        }
    }

    /// Send everything spooled, oldest first. Returns false when the collector could not be
    /// reached (the spool keeps the rest for the next try).
    async fn flush(&mut self) -> bool {
        while !self.spool.is_empty() {
            let batch = HeartbeatBatch {
                attempt: self.spec.attempt,
                heartbeats: self
                    .spool
                    .pending()
                    .iter()
                    .take(BATCH_MAX)
                    .cloned()
                    .collect(),
            };
            let last_sent = batch.heartbeats.last().map(|h| h.seq).unwrap_or(0);
            let res = self
                .client
                .post(&self.url)
                .bearer_auth(self.spec.token.expose())
                .json(&batch)
                .send()
                .await;
            let resp = match res {
                Ok(r) => r,
                Err(e) => {
                    alog!(
                        "collector unreachable ({} spooled): {}",
                        self.spool.len(),
                        without_url(&e)
                    );
                    return false;
                }
            };
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                alog!(
                    "collector answered {status}: {}",
                    body.chars().take(200).collect::<String>()
                );
                return false;
            }
            let ack: HeartbeatAck = match resp.json().await {
                Ok(a) => a,
                Err(e) => {
                    alog!(
                        "collector answer is not a heartbeat ack: {}",
                        without_url(&e)
                    );
                    return false;
                }
            };
            self.last_ack = Instant::now();
            self.last_ack_ms = now_ms();
            if ack.ack_seq > self.acked {
                self.acked = ack.ack_seq;
            }
            if let Err(e) = self.spool.ack(self.acked) {
                alog!("cannot rewrite spool: {e}");
            }
            self.write_status();
            if ack.action == Action::Stop && !self.stop_requested {
                alog!("collector says stop");
                self.stop_requested = true;
            }
            if ack.ack_seq < last_sent {
                // The collector did not store all of them (should not happen); retry next beat.
                return false;
            }
        }
        true
    }
}

fn without_url(e: &reqwest::Error) -> String {
    // reqwest errors name the URL; it carries no secret but is noise in every line.
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "collector");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Copy one output stream of the job into its capped log while scanning it for progress.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    mut log: CappedLog,
    observed: Arc<Mutex<Observed>>,
    is_stdout: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut splitter = LineSplitter::default();
    let apply = |line: &str, observed: &Arc<Mutex<Observed>>| {
        if let Some((n, m)) = parse_output_line(line) {
            let mut o = observed.lock().expect("observed lock");
            o.progress.step = Some(n);
            o.progress.total = Some(m);
        }
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Err(e) = log.write(&buf[..n]) {
            alog!("cannot write job log: {e}");
        }
        splitter.feed(&buf[..n], |l| apply(l, &observed));
        let mut o = observed.lock().expect("observed lock");
        if is_stdout {
            o.logs.stdout = log.total;
        } else {
            o.logs.stderr = log.total;
        }
    }
    splitter.finish(|l| apply(l, &observed));
}

/// Run the job described by `spec` to the end. Returns how it ended.
pub async fn run(spec: JobSpec) -> Result<ExitInfo, AgentError> {
    for (what, dir) in [
        ("state dir", &spec.state_dir),
        ("working dir", &spec.working_dir),
        ("checkpoint dir", &spec.checkpoint_dir),
        ("output dir", &spec.output_dir),
    ] {
        prepare_dir(what, dir)?;
    }
    if let Some(parent) = spec.progress_file.parent() {
        prepare_dir("progress file dir", parent)?;
    }
    let pid_dir = PidDir::from_env();
    let agent_pgid = own_pgid();
    pid_dir.register(agent_pgid);
    let _ = std::fs::write(
        spec.state_dir.join(files::PID),
        std::process::id().to_string(),
    );

    let spool_path = spec.state_dir.join(files::SPOOL);
    let spool =
        Spool::open(spool_path.clone(), SPOOL_MAX).map_err(|source| AgentError::Prepare {
            what: "spool",
            path: spool_path.display().to_string(),
            source,
        })?;
    // A restarted agent of the same attempt continues the sequence (the collector would
    // otherwise drop its heartbeats as duplicates of the earlier run's).
    let status_seq = std::fs::read(spec.state_dir.join(files::STATUS))
        .ok()
        .and_then(|b| serde_json::from_slice::<AgentStatus>(&b).ok())
        .map(|st| st.last.seq)
        .unwrap_or(0);
    let seq = spool
        .pending()
        .back()
        .map(|h| h.seq)
        .unwrap_or(0)
        .max(status_seq);
    let cap = spec.log_cap_bytes;
    let open_log = |name: &str| {
        let p = spec.state_dir.join(name);
        CappedLog::create(p.clone(), cap).map_err(|source| AgentError::Prepare {
            what: "job log",
            path: p.display().to_string(),
            source,
        })
    };
    let out_log = open_log(files::STDOUT)?;
    let err_log = open_log(files::STDERR)?;

    let mut agent = Agent {
        url: spec.heartbeat_url(),
        client: http_client()?,
        spec,
        spool,
        seq,
        acked: 0,
        last_ack: Instant::now(),
        last_ack_ms: now_ms(),
        observed: Arc::new(Mutex::new(Observed::default())),
        gpus: vec![],
        gpu_error: None,
        gpu_absent: false,
        progress_offset: 0,
        progress_partial: vec![],
        job_pgid: None,
        stop_requested: false,
        last: None,
    };
    let spec = agent.spec.clone();
    alog!(
        "job {} attempt {} starting: heartbeats to {}",
        spec.job_id,
        spec.attempt,
        agent.url
    );

    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.working_dir)
        .envs(&spec.env)
        .env("VASTICLAUDE_JOB_ID", spec.job_id.to_string())
        .env("VASTICLAUDE_ATTEMPT", spec.attempt.to_string())
        .env("VASTICLAUDE_CHECKPOINT_DIR", &spec.checkpoint_dir)
        .env("VASTICLAUDE_PROGRESS_FILE", &spec.progress_file)
        .env("VASTICLAUDE_OUTPUT_DIR", &spec.output_dir)
        .env_remove(PidDir::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !spec.gpus.is_empty() {
        let list: Vec<String> = spec.gpus.iter().map(u32::to_string).collect();
        cmd.env("CUDA_VISIBLE_DEVICES", list.join(","));
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Http(format!("cannot install SIGTERM handler: {e}")))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| AgentError::Http(format!("cannot install SIGINT handler: {e}")))?;

    // A lost terminal (agent run in the foreground over SSH) must not kill the agent and leave
    // its job orphaned in another process group: handling SIGHUP replaces the default action.
    let _sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let exit = ExitInfo {
                code: None,
                signal: None,
                reason: EndReason::SpawnFailed,
                killed_after_grace: false,
                error: Some(format!("cannot start sh -c: {e}")),
            };
            alog!("cannot start job: {e}");
            let hb = agent.make_heartbeat(JobState::Exited, Some(exit.clone()));
            agent.record(hb);
            finish_delivery(&mut agent, &mut sigterm).await;
            pid_dir.unregister(agent_pgid);
            return Ok(exit);
        }
    };
    let pgid = child.id().map(|p| p as i32);
    agent.job_pgid = pgid;
    if let Some(g) = pgid {
        pid_dir.register(g);
    }
    let out_task = tokio::spawn(pump(
        child.stdout.take().expect("piped stdout"),
        out_log,
        agent.observed.clone(),
        true,
    ));
    let err_task = tokio::spawn(pump(
        child.stderr.take().expect("piped stderr"),
        err_log,
        agent.observed.clone(),
        false,
    ));

    agent.poll_progress_file();
    agent.sample_gpus().await;
    let hb = agent.make_heartbeat(JobState::Running, None);
    agent.record(hb);
    agent.flush().await;

    let interval = Duration::from_millis(spec.heartbeat_interval_ms);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop_reason: Option<EndReason> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut killed_after_grace = false;
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);

    let status = loop {
        // A stop asked for by the collector during the last flush.
        if agent.stop_requested && stop_reason.is_none() {
            stop_reason = Some(EndReason::StoppedByCollector);
        }
        if stop_reason.is_some() && kill_at.is_none() {
            if let Some(g) = pgid {
                alog!("stopping job ({:?}): SIGTERM to group {g}", stop_reason);
                signal_group(g, libc::SIGTERM);
            }
            kill_at =
                Some(tokio::time::Instant::now() + Duration::from_millis(spec.grace_period_ms));
        }
        tokio::select! {
            st = child.wait() => break st,
            _ = ticker.tick() => {
                agent.poll_progress_file();
                agent.sample_gpus().await;
                let state = if stop_reason.is_some() { JobState::Stopping } else { JobState::Running };
                let hb = agent.make_heartbeat(state, None);
                agent.record(hb);
                agent.flush().await;
                if stop_reason.is_none() && agent.dead_man_expired() {
                    alog!("dead-man switch: no acknowledgement for {} ms", spec.dead_man_timeout_ms);
                    stop_reason = Some(EndReason::DeadMan);
                }
            }
            _ = sigterm.recv() => {
                stop_reason.get_or_insert(EndReason::StoppedBySignal);
            }
            _ = sigint.recv() => {
                stop_reason.get_or_insert(EndReason::StoppedBySignal);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() && !killed_after_grace => {
                if let Some(g) = pgid {
                    alog!("grace period over: SIGKILL to group {g}");
                    signal_group(g, libc::SIGKILL);
                }
                killed_after_grace = true;
            }
        }
    };

    // The main process is gone; take down anything it left behind in its group (they would
    // keep GPUs busy and the log pipes open).
    if let Some(g) = pgid {
        signal_group(g, libc::SIGKILL);
        pid_dir.unregister(g);
    }
    let drain = async {
        let _ = out_task.await;
        let _ = err_task.await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    agent.poll_progress_file();

    use std::os::unix::process::ExitStatusExt;
    let exit = match status {
        Ok(st) => ExitInfo {
            code: st.code(),
            signal: st.signal(),
            reason: stop_reason.unwrap_or(EndReason::Completed),
            killed_after_grace,
            error: None,
        },
        Err(e) => ExitInfo {
            code: None,
            signal: None,
            reason: stop_reason.unwrap_or(EndReason::Completed),
            killed_after_grace,
            error: Some(format!("cannot wait for the job: {e}")),
        },
    };
    alog!("job ended: {:?}", exit);
    let hb = agent.make_heartbeat(JobState::Exited, Some(exit.clone()));
    agent.record(hb);
    match exit.reason {
        // Nobody is listening; one last try, then leave the status file for a later reader.
        EndReason::DeadMan => {
            agent.flush().await;
        }
        // Whoever sent SIGTERM wants us gone soon.
        EndReason::StoppedBySignal => {
            let wait = finish_delivery(&mut agent, &mut sigterm);
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
        _ => finish_delivery(&mut agent, &mut sigterm).await,
    }
    pid_dir.unregister(agent_pgid);
    Ok(exit)
}

/// After the job ended: keep trying to deliver the spool (the final record above all) until it
/// is acknowledged, the dead-man timeout passes, or we are told to go.
async fn finish_delivery(agent: &mut Agent, sigterm: &mut tokio::signal::unix::Signal) {
    let mut backoff = Duration::from_millis(200);
    let cap = Duration::from_millis(agent.spec.heartbeat_interval_ms.max(200));
    loop {
        if agent.flush().await {
            return;
        }
        if agent.dead_man_expired() {
            alog!("giving up delivery: dead-man timeout; final record stays in the status file");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = sigterm.recv() => return,
        }
        backoff = (backoff * 2).min(cap);
    }
}
