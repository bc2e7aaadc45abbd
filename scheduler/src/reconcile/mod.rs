//! The reconciler: the control loop that turns a queue into finished jobs on rented instances.
//!
//! Functional core, imperative shell (ARCHITECTURE §2). [`reconcile`] is a pure function from
//! the journal's [`WorldView`], this pass's [`Observations`] (the market listing by label,
//! offers, agent heartbeats, ledger spend) and `now` to a list of [`Action`]s. [`apply`] is the
//! one definition of how an action (with its [`Outcome`]) changes the world; the core uses it on
//! a working copy, the shell after each effect. The shell ([`engine::Engine`]) gathers
//! observations, executes actions against the effect traits (market, transport, store, ledger,
//! clock) and journals every effect before doing it, so a `kill -9` at any point can be repaired
//! on restart by listing the account by label.

pub mod book;
mod core;
pub mod engine;
pub mod journal_db;
pub mod mirror;
mod model;
pub mod runner;
pub mod simrun;
mod transition;
pub mod virtual_runner;

pub use self::core::{
    Health, OutbidSituation, ReconcileConfig, classify, outbid_decision, reconcile,
};
pub use engine::{Engine, EngineConfig, EngineState, FileJournal, Journal, MemoryJournal};
pub use journal_db::DbJournal;
pub use model::*;
pub use runner::{AgentRunner, AgentRunnerOptions, Runner};
pub use transition::{Outcome, apply};

#[cfg(test)]
mod tests;
