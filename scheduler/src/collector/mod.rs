//! (to be written) The heartbeat collector.

/// Migrations owned by the collector, composed into the store's migrator.
pub fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
    Vec::new()
}
