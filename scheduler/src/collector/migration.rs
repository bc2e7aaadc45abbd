//! The collector's own tables.
//!
//! - `agent_heartbeats`: every heartbeat once, keyed by (attempt_id, seq): the history of an
//!   attempt (progress curve, GPU use), and the unique key that makes replays harmless.
//! - `attempt_progress`: one row per attempt with the newest heartbeat, so "where is attempt N"
//!   is a primary-key read instead of a max() over the history.
//!
//! No foreign key to `attempts`: the collector authenticates before it writes, and keeping the
//! tables independent lets the in-memory simulation and the database share one schema story.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, integer_null, string, text, text_null,
};

/// Creates `agent_heartbeats` and `attempt_progress`.
#[derive(Debug)]
pub struct M0100CollectorHeartbeats;

impl MigrationName for M0100CollectorHeartbeats {
    fn name(&self) -> &str {
        "m0100_collector_heartbeats"
    }
}

// The trait is written with `&SchemaManager` (elided lifetime) under async_trait.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for M0100CollectorHeartbeats {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("agent_heartbeats")
                .col(big_integer("attempt_id"))
                .col(big_integer("seq"))
                .col(big_integer("job_id"))
                .col(big_integer("sent_at"))
                .col(big_integer("received_at"))
                .col(string("state"))
                .col(text("body"))
                .primary_key(Index::create().col("attempt_id").col("seq"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("attempt_progress")
                .col(big_integer("attempt_id").primary_key())
                .col(big_integer("job_id"))
                .col(big_integer("last_seq"))
                .col(big_integer("sent_at"))
                .col(big_integer("received_at"))
                .col(string("state"))
                .col(big_integer_null("step"))
                .col(big_integer_null("total"))
                .col(text_null("metrics"))
                .col(text_null("last_checkpoint"))
                .col(integer_null("exit_code"))
                .col(text("body"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("attempt_progress").to_owned())
            .await?;
        m.drop_table(Table::drop().table("agent_heartbeats").to_owned())
            .await
    }
}
