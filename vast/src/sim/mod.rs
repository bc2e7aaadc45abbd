//! `vast::sim`: a local Vast.ai market, faithful enough that the official `vastai` CLI works
//! against it unchanged, and deterministic enough to run the whole scheduler inside it.
//!
//! Why: no machine that builds or tests vasticlaude can reach Vast.ai, and the expensive bugs
//! (leaked instances, unbilled storage, outbid spot instances nobody noticed) only show up
//! against a market that behaves like the real one. So the model follows Vast's documented
//! rules (`shared/reference/vast-api.md`) rather than being a stub:
//!
//! - **Offers**: a seeded catalogue of machines with real GPU models (RTX 3090 … H200), each
//!   offering 1, 2, 4, … GPU bundles. Renting GPUs (ours or other renters') hides the bundles
//!   that no longer fit. Search uses Vast's filter engine ([`filter::matches`]), ordering,
//!   `limit`, `type` (bid prices from `min_bid`) and `dph_total = dph_base +
//!   allocated_storage × storage_cost / 720`.
//! - **Lifecycle**: null → created → loading → running with seeded boot times; stop, start
//!   (`scheduling` while the GPUs are taken), reboot, destroy, change bid, labels, logs, SSH
//!   keys. Interruptible instances are outbid by higher bids (→ stopped in every state field,
//!   storage still billed) and resume when they win again.
//! - **Faults**: stuck in `created` with an OCI error, `exited`, `offline`, slow loading,
//!   outbids, GPUs taken after a stop, and at the HTTP layer 429s and 5xx ([`SimFaults`]).
//! - **Billing** by Vast's rules, exact in [`rust_decimal::Decimal`]: compute per millisecond
//!   while running (at the bid for interruptible instances), storage from creation to destroy
//!   in every state but loading and offline, bandwidth per byte. [`Market::charges`] gives the
//!   unrounded per-instance totals; `/api/v0/charges/` rounds to 3 decimals as Vast does.
//! - **Time** moves only through [`Market::advance_to`] (a virtual clock for simulations);
//!   the HTTP server advances it to the wall clock on every request and periodically.
//! - **Local work**: every instance owns a folder ([`Market::instance_dir`]) and its SSH fields
//!   point at 127.0.0.1, so a local transport can run its work there. Process groups recorded
//!   in `<instance_dir>/pids/<pgid>` are killed with SIGKILL when the instance stops, is
//!   outbid, exits, goes offline or is destroyed.
//!
//! [`server`] serves the same routes as Vast over axum.

mod catalog;
pub mod config;
pub mod filter;
mod instance;
mod market;
mod rng;
pub mod server;

pub use catalog::{DRIVERS, GPU_MODELS, GpuModel, country_code};
pub use config::{
    Bandwidth, BootTimes, Churn, ConfigError, DEFAULT_START_MS, RateLimitBody, RateLimits,
    SimConfig, SimFaults,
};
pub use instance::Charges;
pub use market::{CreateResult, Market, OfferType, SimError, SimEvent, SshKey};
