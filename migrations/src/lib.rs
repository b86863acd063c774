//! Broadside's schema, as SeaORM migrations that run on Postgres and SQLite.
//!
//! Times are stored as milliseconds since the Unix epoch (`BIGINT`), so that
//! the claim query compares integers identically on both databases.

pub use sea_orm_migration::prelude::*;

mod m20261203_000001_initial;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261203_000001_initial::Migration)]
    }
}
