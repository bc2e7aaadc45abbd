//! Typed async client for the Vast.ai REST API, the offer query language exactly as the official
//! `vastai` CLI parses it, and `vast::sim`, a local Vast.ai market that speaks the same HTTP API.
//!
//! Everything vasticlaude does stands on this API, and no machine that builds or tests it can
//! reach Vast.ai, so the client and the simulator keep each other honest: the client sends what
//! the official CLI sends, and the simulator is faithful enough that the official CLI works
//! against it unchanged.

pub mod client;
pub mod error;
pub mod query;
pub mod sim;
pub mod types;
