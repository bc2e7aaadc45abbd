//! The schema, as sea-orm-migration migrations that run unchanged on SQLite and PostgreSQL.
//!
//! Rules that keep both backends happy: only add tables and columns (SQLite cannot alter or
//! drop columns), integers for times (epoch ms) and money (nano-USD), text for enums and JSON.
//!
//! [`Migrator`] composes, in order: this crate's store tables, the ledger's tables and the
//! heartbeat collector's tables. Migration names are global, so every migration is named after
//! its owner (`m0001_store_core`, `m…_ledger_…`, …).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, big_pk_auto, boolean, integer, integer_null, string,
    string_null, text, text_null,
};

/// Every migration the scheduler's database needs.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut all: Vec<Box<dyn MigrationTrait>> =
            vec![Box::new(M0001StoreCore), Box::new(M0002StoreJobBatch)];
        all.extend(ledger::migration::migrations());
        all.extend(crate::collector::migrations());
        all
    }
}

/// Experiments, jobs, attempts, instances, events, users and the leader row.
#[derive(Debug)]
pub struct M0001StoreCore;

impl MigrationName for M0001StoreCore {
    fn name(&self) -> &str {
        "m0001_store_core"
    }
}

fn fk(
    name: &str,
    from: (&'static str, &'static str),
    to: (&'static str, &'static str),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name.to_string())
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(ForeignKeyAction::Restrict)
        .to_owned()
}

// The trait is written with `&SchemaManager` (elided lifetime) under async_trait.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for M0001StoreCore {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("users")
                .col(string("name").primary_key())
                .col(string("role"))
                .col(big_integer("created_at"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("experiments")
                .col(big_pk_auto("id"))
                .col(string("name").unique_key())
                .col(string("owner"))
                .col(boolean("paused").default(false))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("instances")
                .col(big_pk_auto("id"))
                .col(string("label").unique_key())
                .col(big_integer_null("vast_id"))
                .col(big_integer_null("offer_id"))
                .col(big_integer_null("machine_id"))
                .col(string("state"))
                .col(big_integer_null("dph_nusd"))
                .col(big_integer_null("bid_nusd"))
                .col(string_null("gpu_name"))
                .col(integer_null("num_gpus"))
                .col(string_null("ssh_host"))
                .col(integer_null("ssh_port"))
                .col(text("meta"))
                .col(text_null("last_error"))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .col(big_integer_null("destroyed_at"))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("jobs")
                .col(big_pk_auto("id"))
                .col(big_integer("experiment_id"))
                .col(string("name"))
                .col(string("owner"))
                .col(string("state"))
                .col(integer("priority"))
                .col(text("command"))
                .col(text("env"))
                .col(text("params"))
                .col(text_null("gpu_query"))
                .col(integer("gpus"))
                .col(string_null("image"))
                .col(integer_null("disk_gb"))
                .col(string_null("checkpoint_dir"))
                .col(string("interruptible"))
                .col(big_integer_null("max_dph_nusd"))
                .col(big_integer_null("est_runtime_ms"))
                .col(integer("attempts"))
                .col(integer("max_attempts"))
                .col(big_integer("run_at"))
                .col(big_integer("fence"))
                .col(string_null("lease_owner"))
                .col(big_integer_null("lease_expires_at"))
                .col(big_integer_null("heartbeat_at"))
                .col(big_integer_null("instance_id"))
                .col(text_null("last_error"))
                .col(integer_null("exit_code"))
                .col(string("spec_hash"))
                .col(string_null("dedup_key"))
                .col(string("batch"))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .col(big_integer_null("finished_at"))
                .foreign_key(&mut fk(
                    "fk_jobs_experiment",
                    ("jobs", "experiment_id"),
                    ("experiments", "id"),
                ))
                .foreign_key(&mut fk(
                    "fk_jobs_instance",
                    ("jobs", "instance_id"),
                    ("instances", "id"),
                ))
                .to_owned(),
        )
        .await?;
        // The claim query's order, restricted by state.
        m.create_index(
            Index::create()
                .name("ix_jobs_claim")
                .table("jobs")
                .col("state")
                .col("priority")
                .col("run_at")
                .col("id")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_jobs_lease")
                .table("jobs")
                .col("state")
                .col("lease_expires_at")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_jobs_experiment_spec")
                .table("jobs")
                .col("experiment_id")
                .col("spec_hash")
                .to_owned(),
        )
        .await?;
        // Adding the same sweep twice must not duplicate jobs, even when two adds race.
        m.create_index(
            Index::create()
                .name("ux_jobs_dedup")
                .table("jobs")
                .col("experiment_id")
                .col("dedup_key")
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("attempts")
                .col(big_pk_auto("id"))
                .col(big_integer("job_id"))
                .col(big_integer_null("instance_id"))
                .col(big_integer("fence"))
                .col(string_null("token_hash"))
                .col(string("state"))
                .col(big_integer("started_at"))
                .col(big_integer_null("ended_at"))
                .col(integer_null("exit_status"))
                .col(text_null("checkpoint_path"))
                .col(text_null("reason"))
                .foreign_key(&mut fk(
                    "fk_attempts_job",
                    ("attempts", "job_id"),
                    ("jobs", "id"),
                ))
                .foreign_key(&mut fk(
                    "fk_attempts_instance",
                    ("attempts", "instance_id"),
                    ("instances", "id"),
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_attempts_job")
                .table("attempts")
                .col("job_id")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("events")
                .col(big_pk_auto("id"))
                .col(string("entity"))
                .col(big_integer("entity_id"))
                .col(string_null("from_state"))
                .col(string("to_state"))
                .col(string("actor"))
                .col(text("reason"))
                .col(big_integer("at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_events_entity")
                .table("events")
                .col("entity")
                .col("entity_id")
                .col("id")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("scheduler_leader")
                .col(integer("id").primary_key())
                .col(string("holder"))
                .col(big_integer("epoch"))
                .col(big_integer("acquired_at"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "scheduler_leader",
            "events",
            "attempts",
            "jobs",
            "instances",
            "experiments",
            "users",
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}

/// An index on `jobs.batch`, so one `queue add` can journal its jobs with one
/// `INSERT … SELECT` (and be found again) without scanning the table.
#[derive(Debug)]
pub struct M0002StoreJobBatch;

impl MigrationName for M0002StoreJobBatch {
    fn name(&self) -> &str {
        "m0002_store_job_batch"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for M0002StoreJobBatch {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("ix_jobs_batch")
                .table("jobs")
                .col("batch")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ix_jobs_batch").table("jobs").to_owned())
            .await
    }
}
