//! `vasticlaude report` (placeholder until its issue lands).

use crate::context::Context;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not available in this build yet.
    Placeholder,
}

pub async fn run(_cmd: Command, _ctx: &Context) -> anyhow::Result<()> {
    anyhow::bail!("`vasticlaude report` is not available in this build yet")
}
