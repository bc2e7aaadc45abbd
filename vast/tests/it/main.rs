//! Integration tests for the `vast` crate, one binary to keep link times down.

mod client;
mod query_vs_cli;
mod sim_cli;
mod sim_market;

/// Whether a test that needs an external part can run: prints why it was skipped when the part is
/// missing, and panics instead under `CI=true`.
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
