//! Reading the scheduler's journal for the commands that only look (status, logs, pull).

use scheduler::reconcile::engine::{EngineState, FileJournal};
use scheduler::reconcile::{DbJournal, Journal};

use crate::context::Context;

/// The engine state: from the database journal `vasticlaude run` writes, else the file journal
/// (`$VASTICLAUDE_HOME/engine/state.json`, as `vasticlaude demo` writes), else empty.
pub async fn load(ctx: &Context) -> anyhow::Result<EngineState> {
    let url = ctx.effective_database_url();
    let has_db = ctx.database_url.is_some() || ctx.home.join("state.db").is_file();
    if has_db {
        let store = scheduler::store::connect(&url).await?;
        let journal = DbJournal::open(store, &super::run::workspace(ctx)).await?;
        if let Some(s) = journal.load().await? {
            return Ok(s);
        }
    }
    Ok(FileJournal::in_home(&ctx.home).read()?.unwrap_or_default())
}
