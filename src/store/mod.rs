//! Persistence: the SeaORM entities and every query Broadside runs. No SQL
//! lives anywhere else.
//!
//! The same statements serve Postgres and SQLite. They are written with `?`
//! placeholders, numbered for Postgres by [`Store::statement`]; the few places
//! where the two dialects differ (row locks, `GREATEST`) branch on the backend.
//! SQLite gets one pooled connection: it allows one writer at a time, so every
//! write is funnelled through that connection instead of failing with
//! "database is locked".

pub mod campaigns;
pub mod entity;
pub mod messages;
pub mod pacing;
pub mod queue;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, Statement, Value};

use crate::domain::{CampaignState, Transition};

/// Errors of the store, each a decision the API layer maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("cannot {transition} a campaign that is {state}")]
    IllegalTransition {
        transition: Transition,
        state: CampaignState,
    },
    #[error("{0}")]
    Precondition(String),
    #[error("database error")]
    Database(#[from] DbErr),
}

/// The database, and the dialect its statements are written in.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`).
    pub async fn connect(url: &str) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(url.to_owned());
        options.sqlx_logging(false);
        if url.starts_with("sqlite:") {
            options
                .max_connections(1)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .map_sqlx_sqlite_opts(|opts| {
                    // Exclusive locking: a second process on the same file is
                    // refused at start instead of corrupting the queue's
                    // one-writer assumption.
                    opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                        .locking_mode(sea_orm::sqlx::sqlite::SqliteLockingMode::Exclusive)
                        .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(2))
                        .foreign_keys(true)
                });
        } else {
            options
                .max_connections(16)
                .min_connections(2)
                .acquire_timeout(Duration::from_secs(30));
        }
        let db = Database::connect(options).await?;
        Ok(Self { db })
    }

    /// Applies every migration not yet applied.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    /// Builds a statement from SQL written with `?` placeholders.
    pub fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        statement(self.backend(), sql, values)
    }

    /// `FOR UPDATE` on Postgres; nothing on SQLite, whose single connection
    /// already serialises writers.
    fn lock_clause(&self) -> &'static str {
        if self.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        }
    }

    /// A cheap query proving the database answers.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.db.ping().await
    }

    pub async fn close(self) -> Result<(), DbErr> {
        self.db.close().await
    }
}

/// Numbers `?` placeholders as `$1, $2, ...` for Postgres.
fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend != DbBackend::Postgres {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let mut numbered = String::with_capacity(sql.len() + values.len() * 3);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            numbered.push('$');
            numbered.push_str(&n.to_string());
        } else {
            numbered.push(c);
        }
    }
    Statement::from_sql_and_values(backend, numbered, values)
}

/// `?, ?, ?` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let pg = statement(
            DbBackend::Postgres,
            "a = ? AND b = ?",
            vec![1.into(), 2.into()],
        );
        assert_eq!(pg.sql, "a = $1 AND b = $2");
        let lite = statement(
            DbBackend::Sqlite,
            "a = ? AND b = ?",
            vec![1.into(), 2.into()],
        );
        assert_eq!(lite.sql, "a = ? AND b = ?");
    }
}
