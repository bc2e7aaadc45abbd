//! The agent's command line: what `vasticlaude-agent` (and `vasticlaude` when it is copied onto
//! an instance under the agent's name) runs.
//!
//! ```text
//! vasticlaude-agent start --spec FILE   detach, run the job, print the agent's pid
//! vasticlaude-agent run --spec FILE     run in the foreground (what `start` re-executes)
//! vasticlaude-agent gpu-sample          sample GPUs once, print JSON
//! vasticlaude-agent version
//! ```
//!
//! `start` re-executes itself in a new session (setsid) with stdio on files, so the agent
//! survives the SSH session that launched it and never blocks it on open pipes. Arguments are
//! parsed by hand: clap would add half a megabyte to a binary whose CLI has four verbs.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use crate::gpu::{self, GpuSample};
use crate::protocol::{JobSpec, PROTOCOL_VERSION, files};

const USAGE: &str =
    "usage: vasticlaude-agent start --spec FILE | run --spec FILE | gpu-sample | version";

pub fn main_with(args: Vec<String>) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("start") => spec_arg(&args[1..]).and_then(start),
        Some("run") => spec_arg(&args[1..]).and_then(run),
        Some("gpu-sample") => gpu_sample(),
        Some("version" | "--version") => {
            println!(
                "vasticlaude-agent {} protocol {PROTOCOL_VERSION}",
                env!("CARGO_PKG_VERSION")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command {other:?}; {USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vasticlaude-agent: {e}");
            ExitCode::from(2)
        }
    }
}

fn spec_arg(args: &[String]) -> Result<PathBuf, String> {
    match args {
        [flag, path] if flag == "--spec" => Ok(PathBuf::from(path)),
        _ => Err(format!("expected --spec FILE, got {args:?}")),
    }
}

fn load_spec(path: &PathBuf) -> Result<JobSpec, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read spec {}: {e}", path.display()))?;
    JobSpec::from_json(&bytes).map_err(|e| format!("spec {}: {e}", path.display()))
}

/// Validate the spec, then re-execute `run` detached and print its pid.
fn start(spec_path: PathBuf) -> Result<ExitCode, String> {
    let spec = load_spec(&spec_path)?;
    let spec_path = std::fs::canonicalize(&spec_path)
        .map_err(|e| format!("cannot resolve spec path {}: {e}", spec_path.display()))?;
    std::fs::create_dir_all(&spec.state_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", spec.state_dir.display()))?;
    let log_path = spec.state_dir.join(files::AGENT_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot dup log fd: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--spec")
        .arg(&spec_path)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; it runs
        // in the forked child before exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the agent: {e}"))?;
    // The child is reparented to init when we exit; nobody needs to wait for it.
    println!("{}", child.id());
    Ok(ExitCode::SUCCESS)
}

fn run(spec_path: PathBuf) -> Result<ExitCode, String> {
    let spec = load_spec(&spec_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let exit = rt
        .block_on(crate::runtime::run(spec))
        .map_err(|e| e.to_string())?;
    Ok(if exit.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn gpu_sample() -> Result<ExitCode, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let out = match rt.block_on(gpu::sample(std::time::Duration::from_secs(10))) {
        GpuSample::Stats(s) => serde_json::json!({ "available": true, "gpus": s }),
        GpuSample::Absent(why) => {
            serde_json::json!({ "available": false, "error": why, "gpus": [] })
        }
        GpuSample::Failed(why) => {
            serde_json::json!({ "available": false, "error": why, "gpus": [] })
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    Ok(ExitCode::SUCCESS)
}
