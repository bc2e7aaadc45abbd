//! CLI-level tests of the `vasticlaude` binary.

mod ledger_cli;
mod queue_cli;
mod run_mirror;

/// A fresh PostgreSQL database and the runtime its cleanup runs on, or `None` once [`require`]
/// has said why the test is skipped.
pub fn postgres_or_skip() -> Option<(tokio::runtime::Runtime, scheduler::store::testing::TestDb)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(scheduler::store::testing::postgres()) {
        Ok(db) => Some((rt, db)),
        Err(why) => {
            require("PostgreSQL", false, &why);
            None
        }
    }
}

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
