//! Agent footprint: binary size, resident memory (VmHWM/VmRSS from /proc) and CPU while it
//! heartbeats to a minimal collector stand-in on loopback.
//!
//! ```text
//! scripts/build-agent && cargo bench -p worker-agent --bench footprint
//! VC_BENCH_SECONDS=60 VC_BENCH_INTERVAL_MS=10000 cargo bench -p worker-agent --bench footprint
//! ```
//!
//! Measures `$VASTICLAUDE_AGENT`, else `target/agent/vasticlaude-agent` (the static release
//! build). Targets: binary ≤ 10 MB, resident memory ≤ 10 MB.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use worker_agent::protocol::{
    Action, HeartbeatAck, HeartbeatBatch, JobSpec, PROTOCOL_VERSION, Token,
};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Answer every POST with an ack of its newest seq (keep-alive, one thread per connection).
fn stand_in_collector(listener: TcpListener) {
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let batch: HeartbeatBatch = serde_json::from_slice(&body).unwrap();
                let ack = HeartbeatAck {
                    protocol_version: PROTOCOL_VERSION,
                    attempt: batch.attempt,
                    ack_seq: batch.heartbeats.last().map(|h| h.seq).unwrap_or(0),
                    action: Action::Continue,
                };
                let out = serde_json::to_vec(&ack).unwrap();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    out.len()
                );
                if w.write_all(head.as_bytes())
                    .and_then(|_| w.write_all(&out))
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

fn proc_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = s.rfind(')') else { return 0 };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after "pid (comm) " they are at 11 and 12.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let agent = std::env::var_os("VASTICLAUDE_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/agent/vasticlaude-agent"));
    if !agent.is_file() {
        eprintln!(
            "skipped: {} is missing: run scripts/build-agent first (or set VASTICLAUDE_AGENT)",
            agent.display()
        );
        return;
    }
    let seconds = env_num("VC_BENCH_SECONDS", 20);
    let interval = env_num("VC_BENCH_INTERVAL_MS", 1000);
    let size = std::fs::metadata(&agent).unwrap().len();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || stand_in_collector(listener));

    let dir = std::env::temp_dir().join(format!("vc-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = JobSpec {
        protocol_version: PROTOCOL_VERSION,
        job_id: 1,
        attempt: 1,
        fence: 1,
        token: Token("bench".into()),
        command: format!(
            "for i in $(seq 1 {n}); do echo \"step $i/{n}\"; sleep 0.1; done",
            n = seconds * 10 + 50
        ),
        env: Default::default(),
        working_dir: dir.join("work"),
        checkpoint_dir: dir.join("ckpt"),
        output_dir: dir.join("out"),
        progress_file: dir.join("work/progress.jsonl"),
        state_dir: dir.join("state"),
        heartbeat_interval_ms: interval,
        collector_url: url,
        dead_man_timeout_ms: 600_000,
        grace_period_ms: 1_000,
        gpus: vec![],
        log_cap_bytes: 1 << 20,
    };
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut child = std::process::Command::new(&agent)
        .arg("run")
        .arg("--spec")
        .arg(&spec_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid);
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        rss_max = rss_max.max(proc_kb(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let hwm = proc_kb(pid, "VmHWM:");
    let rss = proc_kb(pid, "VmRSS:");
    let ticks = cpu_ticks(pid) - c0;
    let elapsed = t0.elapsed().as_secs_f64();
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spec.state_dir.join("status.json")).unwrap())
            .unwrap();
    // SAFETY: stops the agent this bench started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    println!("agent footprint: {}", agent.display());
    println!(
        "  binary size: {size} bytes ({:.2} MiB; target <= 10 MB)",
        size as f64 / 1048576.0
    );
    println!(
        "  heartbeat interval: {interval} ms, measured for {elapsed:.1} s, job printing 10 lines/s"
    );
    println!(
        "  resident memory: VmRSS now {rss} KiB, max sampled {rss_max} KiB, VmHWM {hwm} KiB (target <= 10240 KiB)"
    );
    println!(
        "  CPU: {:.2} s over {elapsed:.1} s = {:.3} % of one core",
        ticks as f64 / hz,
        100.0 * ticks as f64 / hz / elapsed
    );
    println!("  heartbeats acked: {}", status["acked_seq"]);
}
