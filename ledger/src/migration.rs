//! The ledger's tables, as sea-orm migrations.
//!
//! The scheduler's store composes [`migrations()`] into its own migrator so one `migrate()`
//! creates everything; [`Migrator`] runs them alone (tests, tools). It records itself in its own
//! table (`ledger_seaql_migrations`), and every statement is `IF NOT EXISTS`, so running both
//! migrators on one database is harmless.
//!
//! Money columns are `BIGINT` nano-dollars (see `money`), times are `BIGINT` epoch
//! milliseconds bound from Rust, flags are `BIGINT` 0/1: the same DDL and the same decoding on
//! SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, big_pk_auto, text, text_null};

/// The ledger's migrations, in order.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(M0001LedgerInit)]
}

/// A migrator for the ledger's tables alone.
pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        migrations()
    }

    fn migration_table_name() -> sea_orm::DynIden {
        Alias::new("ledger_seaql_migrations").into_iden()
    }
}

struct M0001LedgerInit;

impl MigrationName for M0001LedgerInit {
    fn name(&self) -> &str {
        "m20261128_000001_ledger_init"
    }
}

fn create(name: &str) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Alias::new(name)).if_not_exists();
    t
}

fn index(name: &str, table: &str, cols: &[&str], unique: bool) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(Alias::new(table)).if_not_exists();
    for c in cols {
        i.col(Alias::new(*c));
    }
    if unique {
        i.unique();
    }
    i
}

// The trait's signature elides the lifetime (`&SchemaManager`); an explicit `'_` would make it
// early-bound and no longer match.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for M0001LedgerInit {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Per instance: who caused it, how far it has been accrued, and the exact sub-nano
        // remainders per component that rounding to nano-dollars left over.
        m.create_table(
            create("ledger_instance")
                .col(text("instance").primary_key())
                .col(text("experiment"))
                .col(text_null("user_name"))
                .col(big_integer("accrued_until_ms"))
                .col(text("carry_compute"))
                .col(text("carry_storage"))
                .col(text("carry_bandwidth"))
                .col(big_integer("created_ms"))
                .col(big_integer("updated_ms"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            create("ledger_entry")
                .col(big_pk_auto("id"))
                .col(text("instance"))
                .col(text_null("job"))
                .col(text("experiment"))
                .col(text_null("user_name"))
                .col(text("component"))
                .col(text("reason"))
                .col(big_integer("start_ms"))
                .col(big_integer("end_ms"))
                .col(big_integer("amount_nano"))
                .col(big_integer("recorded_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ix_ledger_entry_experiment",
            "ledger_entry",
            &["experiment"],
            false,
        ))
        .await?;
        m.create_index(index(
            "ix_ledger_entry_instance",
            "ledger_entry",
            &["instance"],
            false,
        ))
        .await?;
        m.create_index(index(
            "ix_ledger_entry_end",
            "ledger_entry",
            &["end_ms"],
            false,
        ))
        .await?;
        m.create_table(
            create("ledger_budget")
                .col(big_pk_auto("id"))
                .col(text("scope"))
                .col(text("subject"))
                .col(big_integer("amount_nano"))
                .col(text("warn_pct"))
                .col(big_integer("hard"))
                .col(text_null("notify_email"))
                .col(big_integer("created_ms"))
                .col(big_integer("updated_ms"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ux_ledger_budget_scope_subject",
            "ledger_budget",
            &["scope", "subject"],
            true,
        ))
        .await?;
        m.create_table(
            create("ledger_reservation")
                .col(big_pk_auto("id"))
                .col(text("experiment"))
                .col(text_null("user_name"))
                .col(text_null("job"))
                .col(big_integer("amount_nano"))
                .col(text("state"))
                .col(big_integer("created_ms"))
                .col(big_integer_null("closed_ms"))
                .col(big_integer_null("consumed_nano"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ix_ledger_reservation_state",
            "ledger_reservation",
            &["state"],
            false,
        ))
        .await?;
        m.create_table(
            create("ledger_schedule")
                .col(big_pk_auto("id"))
                .col(text("cron"))
                .col(text("email"))
                .col(text_null("experiment"))
                .col(big_integer("next_fire_ms"))
                .col(big_integer("created_ms"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            create("ledger_firing")
                .col(big_pk_auto("id"))
                .col(big_integer("schedule_id"))
                .col(big_integer("due_ms"))
                .col(big_integer("claimed_ms"))
                .col(big_integer_null("sent_ms"))
                .col(text_null("error"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ux_ledger_firing_schedule_due",
            "ledger_firing",
            &["schedule_id", "due_ms"],
            true,
        ))
        .await?;
        m.create_table(
            create("ledger_alert")
                .col(big_pk_auto("id"))
                .col(text("scope"))
                .col(text("subject"))
                .col(big_integer("threshold_pct"))
                .col(big_integer("budget_nano"))
                .col(big_integer("spent_nano"))
                .col(text_null("recipient"))
                .col(big_integer("created_ms"))
                .col(big_integer_null("sent_ms"))
                .col(text_null("error"))
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "ux_ledger_alert_once",
            "ledger_alert",
            &["scope", "subject", "threshold_pct", "budget_nano"],
            true,
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "ledger_alert",
            "ledger_firing",
            "ledger_schedule",
            "ledger_reservation",
            "ledger_budget",
            "ledger_entry",
            "ledger_instance",
        ] {
            m.drop_table(Table::drop().table(Alias::new(t)).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
