//! The initial schema: campaigns, messages (which are also the queue) and the
//! shared pacing buckets.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000001_initial"
    }
}

/// Statements valid on both Postgres and SQLite, run in order.
const UP: &[&str] = &[
    "CREATE TABLE campaigns (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        sender TEXT NOT NULL,
        state TEXT NOT NULL,
        total BIGINT NOT NULL DEFAULT 0,
        sent BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0,
        cancelled BIGINT NOT NULL DEFAULT 0,
        scheduled_at BIGINT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        started_at BIGINT,
        completed_at BIGINT,
        request_id TEXT,
        request_hash TEXT
    )",
    "CREATE UNIQUE INDEX campaigns_request ON campaigns (tenant, request_id)
        WHERE request_id IS NOT NULL",
    "CREATE INDEX campaigns_tenant_id ON campaigns (tenant, id)",
    "CREATE INDEX campaigns_state ON campaigns (state)",
    "CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        campaign_id TEXT REFERENCES campaigns (id),
        tenant TEXT NOT NULL,
        to_number TEXT NOT NULL,
        sender TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        lease_owner TEXT,
        lease_expires_at BIGINT,
        last_error_code TEXT,
        last_error_message TEXT,
        provider TEXT,
        provider_message_id TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        sent_at BIGINT,
        request_id TEXT,
        request_hash TEXT
    )",
    // One row per distinct number in a campaign: duplicates are dropped on insert.
    "CREATE UNIQUE INDEX messages_campaign_to ON messages (campaign_id, to_number)",
    // The claim's index: only queued rows are in it, so rows already handled
    // are never scanned again, however many the table holds.
    "CREATE INDEX messages_due ON messages (campaign_id, next_attempt_at)
        WHERE state = 'queued'",
    // The rescuer's index: expired leases among the few rows being sent.
    "CREATE INDEX messages_leased ON messages (lease_expires_at)
        WHERE state = 'sending'",
    "CREATE INDEX messages_campaign_id ON messages (campaign_id, id)",
    "CREATE UNIQUE INDEX messages_request ON messages (tenant, request_id)
        WHERE request_id IS NOT NULL",
    // GCRA state per provider account, shared by every replica.
    "CREATE TABLE rate_buckets (
        account TEXT PRIMARY KEY,
        tat_us BIGINT NOT NULL
    )",
];

const DOWN: &[&str] = &[
    "DROP TABLE rate_buckets",
    "DROP TABLE messages",
    "DROP TABLE campaigns",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in UP {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in DOWN {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        Ok(())
    }
}
