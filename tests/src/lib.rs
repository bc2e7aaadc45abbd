//! Shared helpers for vasticlaude's workspace-level end-to-end tests and benchmarks.

/// Decide whether a test that needs an external part (a CLI, a server) can run.
///
/// Returns `true` when the part is there. When it is missing the test prints why it was skipped
/// and returns `false`, except under `CI=true`, where a missing part is a failure.
pub fn require(part: &str, available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{part} is required under CI=true but is missing: {why}");
    }
    eprintln!("skipped: {part} is missing: {why}");
    false
}

pub mod bench;
pub mod dst;
