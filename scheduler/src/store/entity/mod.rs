//! sea-orm entities for the scheduler's own tables.
//!
//! Conventions shared by every table (they are what lets one set of migrations run unchanged on
//! SQLite and PostgreSQL):
//! - ids are 64-bit integers;
//! - times are `i64` epoch milliseconds bound from Rust (`*_at` columns), never the database clock;
//! - money is `i64` nano-US-dollars (`*_nusd` columns), never a sea-orm `Decimal` (SQLite would
//!   read it back through `f64`); convert with [`crate::store::nusd_from_decimal`] and
//!   [`crate::store::decimal_from_nusd`];
//! - states and other enums are lower-case text, parsed by the Rust enums in [`crate::store::state`];
//! - structured values (argv, env, sweep parameters) are JSON text.
//!
//! Relations are joined by hand in the query code, so the entities carry no `Relation` variants.

pub mod attempt;
pub mod event;
pub mod experiment;
pub mod instance;
pub mod job;
pub mod scheduler_leader;
pub mod user;
