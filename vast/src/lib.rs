//! Typed async client for the Vast.ai REST API, the offer query language exactly as the official
//! `vastai` CLI parses it, and `vast::sim`, a local Vast.ai market that speaks the same HTTP API.
//!
//! Everything vasticlaude does stands on this API, and no machine that builds or tests it can
//! reach Vast.ai, so the client and the simulator keep each other honest: the client sends what
//! the official CLI sends, and the simulator is faithful enough that the official CLI works
//! against it unchanged.

//!
//! - [`query`]: `parse_query` and [`query::SearchRequest::to_body`], the same JSON body the
//!   official CLI (vastai 1.9.1) sends for the same query string.
//! - [`client::VastClient`]: typed async operations (search, create, get, list, destroy and
//!   verify, stop/start/reboot, bid, label, SSH key, logs, user, charges) with retries, pacing and
//!   a key that never leaves the Authorization header.
//! - [`types`]: Vast's objects with Vast's own field names, parsed tolerantly.
//! - [`error::VastError`]: one variant per way Vast fails.

pub mod client;
pub mod error;
pub mod query;
pub mod sim;
pub mod types;

pub use client::{ApiKey, VastClient};
pub use error::VastError;
pub use query::{OfferType, SearchRequest, parse_query};
