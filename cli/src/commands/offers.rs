//! `vasticlaude offers`: search Vast.ai offers with the official CLI's query language.
//!
//! The query, `--order`, `--type`, `--limit` and `--storage` mean exactly what they mean to
//! `vastai search offers`, so the same words give the same offers in the same order.

use anyhow::Context as _;
use prettytable::{Table, format, row};
use vast::client::VastClient;
use vast::query::{DEFAULT_ORDER, DEFAULT_STORAGE_GB, OfferType, SearchRequest};
use vast::types::Offer;

use crate::context::Context;
use crate::output::{UsageError, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Search offers, e.g. `vasticlaude offers search 'gpu_ram>=24 num_gpus=1 dph<2' --order dph`.
    ///
    /// QUERY uses `vastai search offers` syntax: `field op value` terms such as `gpu_ram>=24`,
    /// `gpu_name=RTX_4090` (`_` for spaces), `geolocation in [US,CA]`, `verified=any` (drops a
    /// default filter). gpu_ram/cpu_ram are in GB, duration in days.
    Search(SearchArgs),
}

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Query terms (joined with spaces).
    pub query: Vec<String>,
    /// Pricing to show: on-demand, bid (interruptible) or reserved.
    #[arg(long = "type", short = 't', default_value = "on-demand", value_parser = parse_type)]
    pub kind: OfferType,
    /// Sort fields, comma-separated; a trailing `-` sorts descending (e.g. `dph`, `dlperf_usd-`).
    #[arg(long, short = 'o', default_value = DEFAULT_ORDER, allow_hyphen_values = true)]
    pub order: String,
    /// At most this many offers.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Disk size in GB used to price storage into dph_total.
    #[arg(long, default_value_t = DEFAULT_STORAGE_GB)]
    pub storage: f64,
    /// Do not add the default filters (verified, not external, rentable).
    #[arg(long, short = 'n')]
    pub no_default: bool,
    /// Print the offers as JSON with Vast's own field names.
    #[arg(long)]
    pub json: bool,
}

fn parse_type(s: &str) -> Result<OfferType, String> {
    s.parse()
}

pub async fn run(cmd: Command, _ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        Command::Search(args) => search(args).await,
    }
}

async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let req = SearchRequest {
        query: args.query.join(" "),
        kind: args.kind,
        order: args.order,
        limit: args.limit,
        storage_gb: args.storage,
        no_default: args.no_default,
    };
    // Check the query before anything else (a bad query is the user's to fix, exit 2).
    let (_, unknown) = req
        .to_body_with_warnings()
        .map_err(|e| UsageError(format!("invalid offer query {:?}: {e}", req.query)))?;
    for field in unknown {
        eprintln!("Warning: Unrecognized field: {field}, see list of recognized fields.");
    }
    let client = VastClient::from_env()?;
    let offers = client
        .search_offers(&req)
        .await
        .context("searching Vast offers")?;
    if args.json {
        return print_json(&offers);
    }
    print_table(&offers);
    Ok(())
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

fn print_table(offers: &[Offer]) {
    if offers.is_empty() {
        println!("no offers match");
        return;
    }
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_CLEAN);
    t.set_titles(row![
        "id",
        "gpu",
        "num",
        "gpu_ram GB",
        "$/h total",
        "min_bid",
        "dlperf",
        "reliability",
        "location"
    ]);
    for o in offers {
        t.add_row(row![
            o.id,
            o.gpu_name.as_deref().unwrap_or("-"),
            o.num_gpus.map_or_else(|| "-".into(), |n| n.to_string()),
            num(o.gpu_ram.map(|mb| mb / 1000.0), 1),
            num(o.dph_total, 4),
            num(o.min_bid, 4),
            num(o.dlperf, 1),
            num(o.reliability.or(o.reliability2), 4),
            o.geolocation.as_deref().unwrap_or("-"),
        ]);
    }
    t.printstd();
}
