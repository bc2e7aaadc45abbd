//! The vasticlaude worker agent.
//!
//! The library half is what the scheduler links: the [`protocol`] (job spec, heartbeat, ack),
//! the progress and GPU parsers, and [`locate_agent_binary`]. The binary half
//! (`vasticlaude-agent`) runs on every rented instance: it starts detached, runs one job attempt
//! in its own process group, and pushes heartbeats to the collector ([`runtime`]).

pub mod cli;
pub mod files;
pub mod gpu;
pub mod progress;
pub mod protocol;
pub mod runtime;

pub use protocol::*;

use std::path::PathBuf;

/// Name of the agent binary.
pub const AGENT_BINARY_NAME: &str = "vasticlaude-agent";
/// Environment variable naming the agent binary explicitly.
pub const AGENT_ENV: &str = "VASTICLAUDE_AGENT";

/// Find the static agent binary the CLI copies onto instances: `$VASTICLAUDE_AGENT`, then next to
/// the running executable, then `target/agent/vasticlaude-agent` (what `scripts/build-agent`
/// writes) in the current directory or any parent of it or of the executable.
pub fn locate_agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let exe = std::env::current_exe().ok();
    if let Some(dir) = exe.as_ref().and_then(|e| e.parent()) {
        let beside = dir.join(AGENT_BINARY_NAME);
        if beside.is_file() && Some(&beside) != exe.as_ref() {
            return Some(beside);
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Some(dir) = exe.as_ref().and_then(|e| e.parent()) {
        roots.push(dir.to_path_buf());
    }
    for root in roots {
        for dir in root.ancestors() {
            let p = dir.join("target").join("agent").join(AGENT_BINARY_NAME);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}
