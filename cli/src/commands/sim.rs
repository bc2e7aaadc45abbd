//! `vasticlaude sim serve`: the simulated Vast.ai market on 127.0.0.1, following the wall
//! clock, so the official `vastai` CLI, our own client and the scheduler can all be pointed at
//! it with `--url` / `VAST_URL`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::context::Context;
use crate::output::UsageError;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the simulated market over HTTP (prints `listening on http://127.0.0.1:PORT` first).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Seed of the market (overrides the config file's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The only API key the market accepts (default `sim`; overrides the config file's).
    #[arg(long)]
    pub api_key: Option<String>,
    /// A TOML file with a `vast::sim::SimConfig` (seed, machines, faults, boot times, ...).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder for the instances' local folders (default: a fresh folder under the temp dir).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Port written into every instance's SSH fields (host 127.0.0.1), e.g. a loopback sshd.
    #[arg(long)]
    pub ssh_port: Option<u16>,
}

/// What `serve` was asked for, free of clap.
struct ServeRequest {
    port: u16,
    config: vast::sim::SimConfig,
}

impl ServeArgs {
    fn into_request(self) -> anyhow::Result<ServeRequest> {
        let mut config = match &self.config {
            Some(path) => {
                vast::sim::SimConfig::from_toml_file(path).map_err(|e| UsageError(e.to_string()))?
            }
            None => vast::sim::SimConfig::default(),
        };
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(key) = self.api_key {
            if key.trim().is_empty() {
                return Err(UsageError("--api-key must not be empty".into()).into());
            }
            config.api_key = key;
        }
        if let Some(root) = self.root {
            config.root_dir = Some(root);
        }
        if let Some(port) = self.ssh_port {
            config.ssh_port = port;
        }
        config.start_ms = Some(vast::sim::server::wall_ms());
        config.validate().map_err(|e| UsageError(e.to_string()))?;
        Ok(ServeRequest {
            port: self.port,
            config,
        })
    }
}

pub async fn run(cmd: Command, _ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(args) => serve(args.into_request()?).await,
    }
}

async fn serve(req: ServeRequest) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", req.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", req.port))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let market = Arc::new(Mutex::new(vast::sim::Market::new(req.config)));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://127.0.0.1:{}", addr.port())?;
        out.flush()?;
    }
    tokio::select! {
        r = vast::sim::server::serve(listener, market, true) => r.context("the simulated market stopped")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
