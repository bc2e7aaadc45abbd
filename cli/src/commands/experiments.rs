//! `vasticlaude experiments`: the experiments in the queue, with job counts per state.

use prettytable::{Table, format, row};
use scheduler::queue;

use crate::context::Context;
use crate::output::print_json;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List experiments with their jobs per state.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: Command, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        Command::List { json } => {
            let store = super::queue::open_store(ctx).await?;
            let exps = queue::list_experiments(&store).await?;
            if json {
                return print_json(&exps);
            }
            if exps.is_empty() {
                println!("no experiments");
                return Ok(());
            }
            let mut t = Table::new();
            t.set_format(*format::consts::FORMAT_CLEAN);
            t.set_titles(row!["name", "owner", "status", "jobs", "states", "created"]);
            for e in &exps {
                let states = e
                    .states
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                t.add_row(row![
                    e.name,
                    e.owner,
                    if e.paused { "paused" } else { "active" },
                    e.jobs,
                    states,
                    super::queue::time(e.created_at)
                ]);
            }
            t.printstd();
            Ok(())
        }
    }
}
