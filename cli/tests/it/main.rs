//! CLI-level tests of the `vasticlaude` binary.

mod ledger_cli;
mod queue_cli;
mod run_mirror;

/// Skip a test whose external part is missing, or fail it under `CI=true`.
pub fn require(part: &str, available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{part} is missing: {why}");
    }
    eprintln!("skipped: {part} is missing: {why}");
    false
}
