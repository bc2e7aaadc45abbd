//! `vasticlaude pull` (placeholder until the scheduler issue lands).

use crate::context::Context;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _ctx: &Context) -> anyhow::Result<()> {
    anyhow::bail!("`vasticlaude pull` is not available in this build yet")
}
