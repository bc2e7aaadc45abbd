//! `vasticlaude`: the only user-facing entry point.
//!
//! Noun-verb subcommands, `--json` on every command that prints data, exit code 0 on success and
//! a one-line cause on failure. Each subcommand lives in its own file under `commands/`; the clap
//! structs stay here in `cli` and are turned into plain request types before library crates see
//! them.

mod commands;
mod context;
mod output;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vasticlaude",
    version,
    about = "Run many ML experiments on rented Vast.ai GPUs, cheaply and without babysitting.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a demo: a small sweep on the built-in simulated market, start to finish.
    Demo(commands::demo::Args),
    /// Run the scheduler loop that drains the queue.
    Run(commands::run::Args),
    /// Where everything stands: experiments, jobs, instances, spend.
    Status(commands::status::Args),
    /// Show a job's logs.
    Logs(commands::logs::Args),
    /// Pull a job's (or an experiment's) outputs and checkpoints.
    Pull(commands::pull::Args),
    /// Queue jobs and sweeps, and manage the queue.
    #[command(subcommand)]
    Queue(commands::queue::Command),
    /// Experiments.
    #[command(subcommand)]
    Experiments(commands::experiments::Command),
    /// Budgets per experiment.
    #[command(subcommand)]
    Budget(commands::budget::Command),
    /// Spend reports.
    #[command(subcommand)]
    Ledger(commands::ledger::Command),
    /// Scheduled reports.
    #[command(subcommand)]
    Report(commands::report::Command),
    /// Search Vast.ai offers.
    #[command(subcommand)]
    Offers(commands::offers::Command),
    /// Vast.ai instances on the account.
    #[command(subcommand)]
    Instances(commands::instances::Command),
    /// The local simulated Vast.ai market.
    #[command(subcommand)]
    Sim(commands::sim::Command),
}

fn main() {
    output::reset_sigpipe();
    // Copied onto an instance under the agent's name, this binary is the agent: `demo` and
    // `run --provider sim` fall back to it when no separately built agent is at hand.
    if invoked_as_agent() {
        std::process::exit(
            match worker_agent::cli::main_with(std::env::args().skip(1).collect()) {
                code if code == std::process::ExitCode::SUCCESS => 0,
                _ => 1,
            },
        );
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    if let Err(err) = result {
        // One line naming what was wrong; the chain is joined with ": ".
        eprintln!("error: {}", output::one_line(&err));
        std::process::exit(output::exit_code(&err));
    }
}

fn invoked_as_agent() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == worker_agent::AGENT_BINARY_NAME))
        .unwrap_or(false)
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    let ctx = context::Context::from_env()?;
    match command {
        Command::Demo(a) => commands::demo::run(a, &ctx).await,
        Command::Run(a) => commands::run::run(a, &ctx).await,
        Command::Status(a) => commands::status::run(a, &ctx).await,
        Command::Logs(a) => commands::logs::run(a, &ctx).await,
        Command::Pull(a) => commands::pull::run(a, &ctx).await,
        Command::Queue(c) => commands::queue::run(c, &ctx).await,
        Command::Experiments(c) => commands::experiments::run(c, &ctx).await,
        Command::Budget(c) => commands::budget::run(c, &ctx).await,
        Command::Ledger(c) => commands::ledger::run(c, &ctx).await,
        Command::Report(c) => commands::report::run(c, &ctx).await,
        Command::Offers(c) => commands::offers::run(c, &ctx).await,
        Command::Instances(c) => commands::instances::run(c, &ctx).await,
        Command::Sim(c) => commands::sim::run(c, &ctx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
