//! vasticlaude's scheduler: the store (sea-orm on SQLite or PostgreSQL), the queue and sweeps,
//! the planner, the reconciler, the transports and the heartbeat collector.

pub mod clock;
pub mod collector;
pub mod market;
pub mod planner;
pub mod queue;
pub mod reconcile;
pub mod store;
pub mod transport;
