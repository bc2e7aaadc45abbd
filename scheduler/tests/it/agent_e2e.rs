//! The real agent binary against the real collector (axum on loopback, in-memory store):
//! collector outage and replay, SIGTERM with and without a cooperative job, stop by fence,
//! the dead-man's switch, a failing job, and a deploy through the local transport.
//!
//! The agent binary is `$VASTICLAUDE_AGENT`, else the newest of `target/debug/vasticlaude-agent`
//! (`cargo build -p worker-agent`) and `target/agent/vasticlaude-agent` (`scripts/build-agent`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduler::clock::SystemClock;
use scheduler::collector::{
    AttemptAuth, Collector, CollectorConfig, MemoryHeartbeatStore, hash_token, mint_token,
};
use scheduler::transport::{DeployOptions, LocalTransport, Transport, deploy};
use worker_agent::protocol::{
    AgentStatus, EndReason, JobSpec, JobState, PROTOCOL_VERSION, Token, files,
};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The agent binary to test, or why there is none.
pub fn agent_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VASTICLAUDE_AGENT").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("VASTICLAUDE_AGENT={} is not a file", p.display()))
        };
    }
    let root = workspace_root();
    let candidates = [
        root.join("target/debug/vasticlaude-agent"),
        root.join("target/agent/vasticlaude-agent"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            "no vasticlaude-agent binary: run `cargo build -p worker-agent` or scripts/build-agent, or set VASTICLAUDE_AGENT"
                .to_string()
        })
}

/// The agent binary, or `None` after printing why the test is skipped.
pub fn agent_or_skip() -> Option<PathBuf> {
    match agent_binary() {
        Ok(p) => Some(p),
        Err(why) => {
            crate::require("vasticlaude-agent binary", false, &why);
            None
        }
    }
}

/// A collector on loopback that can be stopped and started again on the same address.
pub struct TestCollector {
    pub addr: SocketAddr,
    pub store: Arc<MemoryHeartbeatStore>,
    pub collector: Collector,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl TestCollector {
    pub async fn start() -> Self {
        let store = Arc::new(MemoryHeartbeatStore::new());
        let collector = Collector::new(
            store.clone(),
            Arc::new(SystemClock),
            CollectorConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = Self {
            addr,
            store,
            collector,
            server: None,
        };
        c.serve(listener);
        c
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let collector = self.collector.clone();
        let task = tokio::spawn(async move {
            scheduler::collector::serve(listener, collector, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.server = Some((tx, task));
    }

    /// Stop serving (open connections are closed too).
    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Serve again on the same address.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Register an attempt; returns its token.
    pub fn add_attempt(&self, attempt: i64, fence: i64) -> String {
        let (token, hash) = mint_token().unwrap();
        assert_eq!(hash_token(&token), hash);
        self.store.put_attempt(
            attempt,
            AttemptAuth {
                token_hash: Some(hash),
                fence,
                current_fence: fence,
                active: true,
            },
        );
        token
    }
}

pub fn spec(dir: &Path, attempt: i64, command: &str, url: &str, token: &str) -> JobSpec {
    JobSpec {
        protocol_version: PROTOCOL_VERSION,
        job_id: 5,
        attempt,
        fence: 1,
        token: Token(token.to_string()),
        command: command.to_string(),
        env: BTreeMap::from([("EXTRA".to_string(), "yes".to_string())]),
        working_dir: dir.join("work"),
        checkpoint_dir: dir.join("ckpt"),
        output_dir: dir.join("out"),
        progress_file: dir.join("work/progress.jsonl"),
        state_dir: dir.join("state"),
        heartbeat_interval_ms: 150,
        collector_url: url.to_string(),
        dead_man_timeout_ms: 20_000,
        grace_period_ms: 2_000,
        gpus: vec![0, 1],
        log_cap_bytes: 1 << 20,
    }
}

fn write_spec(dir: &Path, spec: &JobSpec) -> PathBuf {
    let p = dir.join("spec.json");
    std::fs::write(&p, serde_json::to_vec(spec).unwrap()).unwrap();
    p
}

fn run_agent(agent: &Path, spec_path: &Path) -> tokio::process::Child {
    tokio::process::Command::new(agent)
        .arg("run")
        .arg("--spec")
        .arg(spec_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Poll `cond` until true; panics with `what` after `limit` (a hang guard, not a timing check).
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_exit(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("agent did not exit")
        .unwrap()
}

fn read_status(spec: &JobSpec) -> AgentStatus {
    serde_json::from_slice(&std::fs::read(spec.state_dir.join(files::STATUS)).unwrap()).unwrap()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sends a signal to a child process this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_loses_nothing_and_keeps_order() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let mut c = TestCollector::start().await;
    let token = c.add_attempt(11, 1);
    let cmd = r#"echo "env $VASTICLAUDE_JOB_ID $VASTICLAUDE_ATTEMPT $CUDA_VISIBLE_DEVICES $EXTRA";
test -d "$VASTICLAUDE_OUTPUT_DIR" && test -d "$VASTICLAUDE_CHECKPOINT_DIR" && echo dirs-ok;
for i in $(seq 1 30); do
  printf 'epoch 1: %d%%|###| %d/30 [00:01<00:01]\r' $((i*100/30)) $i >&2
  printf '{"step": %d, "total": 30, "loss": 0.%d}\n' $i $i >> "$VASTICLAUDE_PROGRESS_FILE"
  sleep 0.1
done
echo done"#;
    let s = spec(d.path(), 11, cmd, &c.url(), &token);
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));

    wait_for("two heartbeats", Duration::from_secs(20), || {
        c.store.heartbeats(11).len() >= 2
    })
    .await;
    c.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.restart().await;
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "agent exit {status:?}");

    let beats = c.store.heartbeats(11);
    let n = beats.len() as u64;
    assert!(n >= 10, "only {n} heartbeats");
    assert_eq!(
        c.store.arrival_order(11),
        (1..=n).collect::<Vec<_>>(),
        "each once, in order"
    );
    // Some were produced during the outage and delivered after it.
    assert!(
        beats
            .iter()
            .any(|b| b.received_at - b.heartbeat.time_ms >= 500),
        "no heartbeat was spooled across the outage"
    );
    let last = &beats.last().unwrap().heartbeat;
    assert_eq!(last.state, JobState::Exited);
    let exit = last.exit.as_ref().unwrap();
    assert_eq!((exit.code, exit.reason), (Some(0), EndReason::Completed));
    assert_eq!(last.progress.step, Some(30));
    assert_eq!(last.progress.total, Some(30));
    assert!(last.progress.metrics.contains_key("loss"));
    assert!(
        beats
            .iter()
            .all(|b| b.heartbeat.gpu_error.is_some() || !b.heartbeat.gpus.is_empty())
    );

    let out = std::fs::read_to_string(s.state_dir.join(files::STDOUT)).unwrap();
    assert!(out.contains("env 5 11 0,1 yes"), "{out}");
    assert!(out.contains("dirs-ok") && out.contains("done"), "{out}");
    assert_eq!(last.logs.stdout, out.len() as u64);
    let st = read_status(&s);
    assert_eq!(st.spooled, 0);
    assert_eq!(st.acked_seq, n);
    assert_eq!(
        std::fs::read_to_string(s.state_dir.join(files::SPOOL)).unwrap(),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_only_progress_is_read_from_tqdm_lines() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(12, 1);
    let cmd = r#"for i in 1 2 3 4 5 6 7; do printf '%d%%|##  | %d/7 [00:01<00:02, 3.1it/s]\r' $((i*14)) $i >&2; sleep 0.1; done; sleep 0.5"#;
    let s = spec(d.path(), 12, cmd, &c.url(), &token);
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));
    assert!(wait_exit(&mut child).await.success());
    let last = c.store.latest_heartbeat(12).unwrap();
    assert_eq!(
        (last.progress.step, last.progress.total),
        (Some(7), Some(7))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_the_job_its_grace_period() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(21, 1);
    let cmd = r#"trap 'echo saved > "$VASTICLAUDE_CHECKPOINT_DIR/final.ckpt"; exit 0' TERM; while true; do sleep 0.05; done"#;
    let s = spec(d.path(), 21, cmd, &c.url(), &token);
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));
    wait_for("first heartbeat", Duration::from_secs(20), || {
        !c.store.heartbeats(21).is_empty()
    })
    .await;
    // A lost terminal does not take the agent down.
    signal(child.id().unwrap(), libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP killed the agent"
    );
    signal(child.id().unwrap(), libc::SIGTERM);
    let status = wait_exit(&mut child).await;
    assert!(!status.success(), "a stopped job is not a success");
    let last = c.store.latest_heartbeat(21).unwrap();
    let exit = last.exit.clone().unwrap();
    assert_eq!(exit.reason, EndReason::StoppedBySignal);
    assert_eq!(exit.code, Some(0), "the trap ran: {exit:?}");
    assert!(!exit.killed_after_grace);
    assert_eq!(
        std::fs::read_to_string(s.checkpoint_dir.join("final.ckpt")).unwrap(),
        "saved\n"
    );
    assert_eq!(last.last_checkpoint.unwrap().path, "final.ckpt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ignoring_sigterm_is_killed_after_the_grace_period() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(22, 1);
    let mut s = spec(
        d.path(),
        22,
        "trap '' TERM; while true; do sleep 0.05; done",
        &c.url(),
        &token,
    );
    s.grace_period_ms = 300;
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));
    wait_for("first heartbeat", Duration::from_secs(20), || {
        !c.store.heartbeats(22).is_empty()
    })
    .await;
    signal(child.id().unwrap(), libc::SIGTERM);
    wait_exit(&mut child).await;
    let exit = c.store.latest_heartbeat(22).unwrap().exit.unwrap();
    assert_eq!(exit.reason, EndReason::StoppedBySignal);
    assert!(exit.killed_after_grace, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_fence_makes_the_collector_stop_the_job() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(31, 1);
    let s = spec(d.path(), 31, "sleep 60", &c.url(), &token);
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));
    wait_for("first heartbeat", Duration::from_secs(20), || {
        !c.store.heartbeats(31).is_empty()
    })
    .await;
    c.store.set_current_fence(31, 2);
    wait_exit(&mut child).await;
    let last = c.store.latest_heartbeat(31).unwrap();
    let exit = last.exit.unwrap();
    assert_eq!(exit.reason, EndReason::StoppedByCollector);
    assert_eq!(exit.signal, Some(libc::SIGTERM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_man_switch_stops_the_job_when_nobody_answers() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s = spec(
        d.path(),
        41,
        "sleep 60",
        &format!("http://127.0.0.1:{port}"),
        "tok",
    );
    s.dead_man_timeout_ms = 1_000;
    s.heartbeat_interval_ms = 200;
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));
    let started = Instant::now();
    wait_exit(&mut child).await;
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the job's sleep 60 was not cut short"
    );
    let st = read_status(&s);
    let exit = st.last.exit.clone().unwrap();
    assert_eq!(exit.reason, EndReason::DeadMan);
    assert_eq!(st.acked_seq, 0);
    assert!(st.spooled >= 3, "heartbeats stay spooled: {}", st.spooled);
    let spool = std::fs::read_to_string(s.state_dir.join(files::SPOOL)).unwrap();
    assert_eq!(spool.lines().count(), st.spooled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_reports_its_exit_code() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(51, 1);
    let s = spec(d.path(), 51, "echo oops >&2; exit 3", &c.url(), &token);
    let mut child = run_agent(&agent, &write_spec(d.path(), &s));
    let status = wait_exit(&mut child).await;
    assert_eq!(status.code(), Some(1));
    let last = c.store.latest_heartbeat(51).unwrap();
    let exit = last.exit.unwrap();
    assert_eq!((exit.code, exit.reason), (Some(3), EndReason::Completed));
    assert_eq!(
        std::fs::read_to_string(s.state_dir.join(files::STDERR)).unwrap(),
        "oops\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spec_is_refused_with_the_value() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let mut s = spec(d.path(), 52, "true", "ftp://nowhere", "tok");
    s.protocol_version = PROTOCOL_VERSION;
    let p = write_spec(d.path(), &s);
    let out = std::process::Command::new(&agent)
        .arg("start")
        .arg("--spec")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ftp://nowhere") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!s.state_dir.exists(), "nothing half-written");
}

/// Session id of a process, from /proc.
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_through_the_local_transport_starts_a_detached_registered_agent() {
    let Some(agent) = agent_or_skip() else { return };
    let inst = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    std::fs::write(
        code.path().join("train.sh"),
        "echo training; sleep 2; echo trained\n",
    )
    .unwrap();
    std::fs::write(code.path().join(".gitignore"), "data/\n").unwrap();
    std::fs::create_dir(code.path().join("data")).unwrap();
    std::fs::write(code.path().join("data/big.bin"), "x").unwrap();

    let c = TestCollector::start().await;
    let token = c.add_attempt(61, 1);
    let t = LocalTransport::new(inst.path());
    let tunnel = t.reverse_tunnel(47001, c.addr).await.unwrap();
    let mut s = spec(
        Path::new("/workspace/job61"),
        61,
        "sh train.sh",
        &tunnel.http_url(),
        &token,
    );
    s.working_dir = "/workspace/code".into();
    let store = c.store.clone();
    let wait = move |_d| async move {
        let start = Instant::now();
        while store.heartbeats(61).is_empty() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("no heartbeat within 20 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    };
    let dep = deploy(
        &t,
        &agent,
        &s,
        Some(code.path()),
        &DeployOptions::default(),
        wait,
    )
    .await
    .unwrap();
    assert!(dep.agent_copied && !dep.already_running);
    assert!(inst.path().join("workspace/code/train.sh").exists());
    assert!(
        !inst.path().join("workspace/code/data").exists(),
        ".gitignore honoured"
    );
    // Detached: its own session, and registered for the simulator's kill.
    assert_eq!(session_of(dep.agent_pid), Some(dep.agent_pid));
    assert!(t.pid_dir().join(dep.agent_pid.to_string()).exists());

    // Deploying the same attempt again neither copies the agent nor starts a second one.
    let again = deploy(&t, &agent, &s, None, &DeployOptions::default(), |_| async {
        Ok(())
    })
    .await
    .unwrap();
    assert!(!again.agent_copied && again.already_running, "{again:?}");
    assert_eq!(again.agent_pid, dep.agent_pid);

    wait_for("final heartbeat", Duration::from_secs(30), || {
        c.store
            .latest_heartbeat(61)
            .is_some_and(|h| h.state == JobState::Exited)
    })
    .await;
    let last = c.store.latest_heartbeat(61).unwrap();
    assert_eq!(last.exit.unwrap().code, Some(0));
    let status = t.run(&format!("cat {}", dep.status_path())).await.unwrap();
    let st: AgentStatus = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(st.last.state, JobState::Exited);
    // Every group is gone, and so are their pid files.
    wait_for("pid files removed", Duration::from_secs(10), || {
        std::fs::read_dir(t.pid_dir())
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_continues_the_sequence() {
    let Some(agent) = agent_or_skip() else { return };
    let d = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(81, 1);
    let s = spec(d.path(), 81, "sleep 0.4", &c.url(), &token);
    let p = write_spec(d.path(), &s);
    assert!(wait_exit(&mut run_agent(&agent, &p)).await.success());
    let first = c.store.heartbeats(81).len() as u64;
    assert!(wait_exit(&mut run_agent(&agent, &p)).await.success());
    let all = c.store.heartbeats(81).len() as u64;
    assert!(
        all > first,
        "the second run's heartbeats were dropped as duplicates"
    );
    assert_eq!(c.store.arrival_order(81), (1..=all).collect::<Vec<_>>());
    assert_eq!(c.store.duplicates(), 0);
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process (group, when negative) exists.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, 0) };
    r == 0
}

/// What the simulator does on preemption: SIGKILL every group listed in `<instance>/pids/`.
/// The agent and its job must both be among them, and both must die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_registered_groups_takes_down_agent_and_job() {
    let Some(agent) = agent_or_skip() else { return };
    let inst = tempfile::tempdir().unwrap();
    let c = TestCollector::start().await;
    let token = c.add_attempt(91, 1);
    let t = LocalTransport::new(inst.path());
    let s = spec(
        Path::new("/workspace/job91"),
        91,
        "sleep 600",
        &c.url(),
        &token,
    );
    let store = c.store.clone();
    let wait = move |_d| async move {
        let start = Instant::now();
        while store.heartbeats(91).is_empty() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("no heartbeat within 20 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    };
    let dep = deploy(&t, &agent, &s, None, &DeployOptions::default(), wait)
        .await
        .unwrap();
    let status = std::fs::read(inst.path().join("workspace/job91/state/status.json")).unwrap();
    let job_pgid = serde_json::from_slice::<AgentStatus>(&status)
        .unwrap()
        .job_pgid
        .unwrap();
    let groups: Vec<i32> = std::fs::read_dir(t.pid_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert!(
        groups.contains(&(dep.agent_pid as i32)),
        "agent group registered: {groups:?}"
    );
    assert!(
        groups.contains(&job_pgid),
        "job group registered: {groups:?}"
    );
    for g in &groups {
        signal_group(*g);
    }
    wait_for("agent and job gone", Duration::from_secs(10), || {
        !alive(dep.agent_pid as i32) && !alive(-job_pgid)
    })
    .await;
}

fn signal_group(pgid: i32) {
    // SAFETY: SIGKILL to a process group this test started (through the transport).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
