//! One file (or folder) per subcommand.

pub mod budget;
pub mod demo;
pub mod experiments;
pub mod instances;
pub mod journal;
pub mod ledger;
pub mod logs;
pub mod offers;
pub mod pull;
pub mod queue;
pub mod report;
pub mod run;
pub mod sim;
pub mod status;
