//! The queue: the message table read and written by the dispatch engine.
//!
//! A message moves QUEUED -> SENDING when a worker claims it under a lease,
//! then to SENT or FAILED, or back to QUEUED for a retry, when its outcome is
//! recorded. Every write that finishes a message also moves its campaign's
//! counters, in the same transaction, and is fenced by the lease owner: a
//! worker whose lease was taken from it changes nothing.
//!
//! `lease_owner` is set only while a message is SENDING (every write that
//! leaves SENDING clears it), so the fence tests the owner alone. Adding
//! `state = 'sending'` would be redundant and lets Postgres, with fresh
//! statistics on a new campaign, drive the batched update from the partial
//! lease index instead of the primary key: quadratic, measured at 400 ms for
//! 500 rows.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, TransactionTrait, Value};

use super::{Store, StoreError, placeholders};
use crate::domain::{Disposition, Millis, outcome::UNKNOWN_OUTCOME};

/// Rows per batched UPDATE.
const UPDATE_CHUNK: usize = 500;

/// The channel Postgres NOTIFY carries progress on.
pub const PROGRESS_CHANNEL: &str = "broadside_progress";

/// A message claimed for sending.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Claimed {
    pub id: String,
    pub campaign_id: Option<String>,
    pub to_number: String,
    pub sender: String,
    pub body: String,
    pub attempts: i32,
}

/// The outcome of one claimed message, ready to record.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    /// `None` when the send never started (its campaign was paused or
    /// cancelled while it waited, or the engine is shutting down): the claim
    /// is handed back and its attempt undone.
    pub disposition: Option<Disposition>,
}

/// What recording a batch changed.
#[derive(Debug, Default)]
pub struct RecordSummary {
    /// Messages whose outcome was written (the rest had lost their lease).
    pub written: u64,
    /// Campaigns whose counts changed.
    pub campaigns: BTreeSet<String>,
    /// Campaigns that reached COMPLETED with this batch.
    pub completed: Vec<String>,
}

/// Per-campaign counter changes.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    sent: i64,
    failed: i64,
}

impl Store {
    /// Campaigns whose messages may be claimed.
    pub async fn running_campaigns(&self) -> Result<Vec<String>, StoreError> {
        #[derive(FromQueryResult)]
        struct Row {
            id: String,
        }
        let rows = Row::find_by_statement(self.statement(
            "SELECT id FROM campaigns WHERE state = 'running' ORDER BY id",
            vec![],
        ))
        .all(&self.db)
        .await?;
        Ok(rows.into_iter().map(|row| row.id).collect())
    }

    /// Starts every SCHEDULED campaign whose time has come.
    pub async fn activate_scheduled(&self, now: Millis) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query_all_raw(self.statement(
                "UPDATE campaigns SET state = 'running', started_at = COALESCE(started_at, ?), \
                 updated_at = ? WHERE state = 'scheduled' AND scheduled_at <= ? RETURNING id",
                vec![now.into(), now.into(), now.into()],
            ))
            .await?;
        rows.iter()
            .map(|row| row.try_get_by_index(0).map_err(Into::into))
            .collect()
    }

    /// Claims up to `limit` due messages of one running campaign (or of
    /// transactional sends, with `None`), marking them SENDING under a lease
    /// held by `owner` until `lease_until`, and counting the attempt.
    pub async fn claim(
        &self,
        owner: &str,
        campaign_id: Option<&str>,
        limit: u64,
        lease_until: Millis,
        now: Millis,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (scope, running) = match campaign_id {
            Some(_) => (
                "campaign_id = ?",
                " AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = messages.campaign_id \
                 AND c.state = 'running')",
            ),
            None => ("campaign_id IS NULL", ""),
        };
        // Postgres: skip rows another replica is claiming, and pick them in a
        // materialized CTE so the LIMIT is applied once (a locking subquery
        // inside IN may be re-run and claim more). SQLite has no row locks
        // and runs one process, so the CTE alone is enough.
        let (materialized, skip_locked) = if self.is_postgres() {
            (" MATERIALIZED", " FOR UPDATE SKIP LOCKED")
        } else {
            ("", "")
        };
        let sql = format!(
            "WITH picked AS{materialized} (SELECT id FROM messages WHERE state = 'queued' \
             AND {scope} AND next_attempt_at <= ?{running} ORDER BY next_attempt_at LIMIT ?{skip_locked}) \
             UPDATE messages SET state = 'sending', lease_owner = ?, lease_expires_at = ?, \
             attempts = attempts + 1, updated_at = ? \
             WHERE id IN (SELECT id FROM picked) AND state = 'queued' \
             RETURNING id, campaign_id, to_number, sender, body, attempts"
        );
        let mut values: Vec<Value> = Vec::new();
        if let Some(id) = campaign_id {
            values.push(id.into());
        }
        values.push(now.into());
        values.push((limit as i64).into());
        values.extend([owner.into(), lease_until.into(), now.into()]);
        Ok(Claimed::find_by_statement(self.statement(&sql, values))
            .all(&self.db)
            .await?)
    }

    /// Writes a batch of outcomes and the counters they move, in one
    /// transaction, fenced by `owner`'s lease.
    pub async fn record(
        &self,
        owner: &str,
        provider: &str,
        outcomes: &[Recorded],
        now: Millis,
    ) -> Result<RecordSummary, StoreError> {
        let txn = self.db.begin().await?;
        let mut deltas: BTreeMap<String, Delta> = BTreeMap::new();
        let mut retried: BTreeSet<String> = BTreeSet::new();
        let mut written = 0;

        let (mut sent, mut failed, mut retries, mut unstarted) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for outcome in outcomes {
            match &outcome.disposition {
                Some(Disposition::Sent { .. }) => sent.push(outcome),
                Some(Disposition::Failed { .. }) => failed.push(outcome),
                Some(Disposition::Retry { .. }) => retries.push(outcome),
                None => unstarted.push(outcome.id.clone()),
            }
        }

        for chunk in sent.chunks(UPDATE_CHUNK) {
            let campaigns = self.write_sent(&txn, owner, provider, chunk, now).await?;
            written += campaigns.len() as u64;
            for campaign in campaigns.into_iter().flatten() {
                deltas.entry(campaign).or_default().sent += 1;
            }
        }
        for chunk in failed.chunks(UPDATE_CHUNK) {
            let campaigns = self.write_failed(&txn, owner, provider, chunk, now).await?;
            written += campaigns.len() as u64;
            for campaign in campaigns.into_iter().flatten() {
                deltas.entry(campaign).or_default().failed += 1;
            }
        }
        for chunk in retries.chunks(UPDATE_CHUNK) {
            let campaigns = self
                .write_retries(&txn, owner, provider, chunk, now)
                .await?;
            written += campaigns.len() as u64;
            retried.extend(campaigns.into_iter().flatten());
        }
        for chunk in unstarted.chunks(UPDATE_CHUNK) {
            let campaigns = self.release(&txn, owner, chunk, now).await?;
            written += campaigns.len() as u64;
            retried.extend(campaigns.into_iter().flatten());
        }

        let summary = self.apply_counts(&txn, &deltas, &retried, now).await?;
        txn.commit().await?;
        Ok(RecordSummary { written, ..summary })
    }

    async fn write_sent(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        provider: &str,
        chunk: &[&Recorded],
        now: Millis,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut values: Vec<Value> = vec![now.into(), now.into(), provider.into()];
        for outcome in chunk {
            let Some(Disposition::Sent {
                provider_message_id,
            }) = &outcome.disposition
            else {
                unreachable!("partitioned by disposition")
            };
            values.push(outcome.id.clone().into());
            values.push(provider_message_id.clone().into());
        }
        values.push(owner.into());
        let sql = format!(
            "UPDATE messages SET state = 'sent', sent_at = ?, updated_at = ?, provider = ?, \
             provider_message_id = v.column2, lease_owner = NULL, lease_expires_at = NULL \
             FROM (VALUES {}) AS v \
             WHERE messages.id = v.column1 AND messages.lease_owner = ? \
             RETURNING messages.campaign_id",
            rows(2, chunk.len())
        );
        returning_campaigns(txn, self.statement(&sql, values)).await
    }

    async fn write_failed(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        provider: &str,
        chunk: &[&Recorded],
        now: Millis,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut values: Vec<Value> = vec![now.into(), provider.into()];
        for outcome in chunk {
            let Some(Disposition::Failed { code, message }) = &outcome.disposition else {
                unreachable!("partitioned by disposition")
            };
            values.push(outcome.id.clone().into());
            values.push(code.clone().into());
            values.push(message.clone().into());
        }
        values.push(owner.into());
        let sql = format!(
            "UPDATE messages SET state = 'failed', updated_at = ?, provider = ?, \
             last_error_code = v.column2, last_error_message = v.column3, \
             lease_owner = NULL, lease_expires_at = NULL \
             FROM (VALUES {}) AS v \
             WHERE messages.id = v.column1 AND messages.lease_owner = ? \
             RETURNING messages.campaign_id",
            rows(3, chunk.len())
        );
        returning_campaigns(txn, self.statement(&sql, values)).await
    }

    async fn write_retries(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        provider: &str,
        chunk: &[&Recorded],
        now: Millis,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut values: Vec<Value> = vec![now.into(), provider.into()];
        for outcome in chunk {
            let Some(Disposition::Retry { at, code, message }) = &outcome.disposition else {
                unreachable!("partitioned by disposition")
            };
            values.push(outcome.id.clone().into());
            values.push((*at).into());
            values.push(code.clone().into());
            values.push(message.clone().into());
        }
        values.push(owner.into());
        let sql = format!(
            "UPDATE messages SET state = 'queued', updated_at = ?, provider = ?, \
             next_attempt_at = v.column2, last_error_code = v.column3, \
             last_error_message = v.column4, lease_owner = NULL, lease_expires_at = NULL \
             FROM (VALUES {}) AS v \
             WHERE messages.id = v.column1 AND messages.lease_owner = ? \
             RETURNING messages.campaign_id",
            rows(4, chunk.len())
        );
        returning_campaigns(txn, self.statement(&sql, values)).await
    }

    /// Moves campaign counters by `deltas`, cancels retries that came back to
    /// a cancelled campaign, completes campaigns whose messages are all
    /// finished, and (on Postgres) notifies other replicas at commit.
    async fn apply_counts(
        &self,
        txn: &DatabaseTransaction,
        deltas: &BTreeMap<String, Delta>,
        retried: &BTreeSet<String>,
        now: Millis,
    ) -> Result<RecordSummary, StoreError> {
        for (campaign, delta) in deltas {
            txn.execute_raw(self.statement(
                "UPDATE campaigns SET sent = sent + ?, failed = failed + ?, updated_at = ? \
                 WHERE id = ?",
                vec![
                    delta.sent.into(),
                    delta.failed.into(),
                    now.into(),
                    campaign.into(),
                ],
            ))
            .await?;
        }
        for campaign in retried {
            self.cancel_leftovers(txn, campaign, now).await?;
        }

        let campaigns: BTreeSet<String> = deltas.keys().chain(retried).cloned().collect();
        let mut completed = Vec::new();
        if !campaigns.is_empty() {
            let ids: Vec<Value> = campaigns.iter().map(|id| id.clone().into()).collect();
            let mut values: Vec<Value> = vec![now.into(), now.into()];
            values.extend(ids);
            let sql = format!(
                "UPDATE campaigns SET state = 'completed', completed_at = ?, updated_at = ? \
                 WHERE id IN ({}) AND state = 'running' AND sent + failed + cancelled = total \
                 RETURNING id",
                placeholders(campaigns.len())
            );
            for row in txn.query_all_raw(self.statement(&sql, values)).await? {
                completed.push(row.try_get_by_index(0)?);
            }
            self.notify_progress(txn, &campaigns).await?;
        }
        Ok(RecordSummary {
            written: 0,
            campaigns,
            completed,
        })
    }

    /// A message that came back for a retry after its campaign was cancelled
    /// is cancelled too, and counted.
    async fn cancel_leftovers(
        &self,
        txn: &DatabaseTransaction,
        campaign: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let cancelled = txn
            .execute_raw(self.statement(
                "UPDATE messages SET state = 'cancelled', updated_at = ? \
                 WHERE campaign_id = ? AND state = 'queued' \
                 AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = ? AND c.state = 'cancelled')",
                vec![now.into(), campaign.into(), campaign.into()],
            ))
            .await?
            .rows_affected() as i64;
        if cancelled > 0 {
            txn.execute_raw(self.statement(
                "UPDATE campaigns SET cancelled = cancelled + ? WHERE id = ?",
                vec![cancelled.into(), campaign.into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// Queues a NOTIFY per campaign; Postgres delivers them at commit.
    async fn notify_progress(
        &self,
        txn: &DatabaseTransaction,
        campaigns: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        for campaign in campaigns {
            txn.execute_raw(self.statement(
                "SELECT pg_notify(?, ?)",
                vec![PROGRESS_CHANNEL.into(), campaign.into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// Returns messages whose lease expired (their worker died) to the queue,
    /// attempts intact. In at-most-once mode they may already have been sent,
    /// so they fail as `unknown_outcome` instead. Returns how many were moved.
    pub async fn rescue_expired(&self, now: Millis, at_most_once: bool) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        let rows = if at_most_once {
            txn.query_all_raw(self.statement(
                "UPDATE messages SET state = 'failed', last_error_code = ?, \
                 last_error_message = 'worker lost its lease mid-send; outcome unknown', \
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = ? \
                 WHERE state = 'sending' AND lease_expires_at < ? RETURNING campaign_id",
                vec![UNKNOWN_OUTCOME.into(), now.into(), now.into()],
            ))
            .await?
        } else {
            txn.query_all_raw(self.statement(
                "UPDATE messages SET state = 'queued', lease_owner = NULL, \
                 lease_expires_at = NULL, next_attempt_at = ?, updated_at = ? \
                 WHERE state = 'sending' AND lease_expires_at < ? RETURNING campaign_id",
                vec![now.into(), now.into(), now.into()],
            ))
            .await?
        };
        let moved = rows.len() as u64;
        let mut deltas: BTreeMap<String, Delta> = BTreeMap::new();
        let mut retried = BTreeSet::new();
        for row in rows {
            let campaign: Option<String> = row.try_get_by_index(0)?;
            let Some(campaign) = campaign else { continue };
            if at_most_once {
                deltas.entry(campaign).or_default().failed += 1;
            } else {
                retried.insert(campaign);
            }
        }
        self.apply_counts(&txn, &deltas, &retried, now).await?;
        txn.commit().await?;
        Ok(moved)
    }

    /// Gives back claims `owner` never started sending, undoing their
    /// attempt, so another worker can take them at once.
    async fn release(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        ids: &[String],
        now: Millis,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut values: Vec<Value> = vec![now.into(), now.into(), owner.into()];
        values.extend(ids.iter().map(|id| Value::from(id.clone())));
        let sql = format!(
            "UPDATE messages SET state = 'queued', attempts = attempts - 1, \
             lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = ?, updated_at = ? \
             WHERE lease_owner = ? AND id IN ({}) RETURNING campaign_id",
            placeholders(ids.len())
        );
        returning_campaigns(txn, self.statement(&sql, values)).await
    }

    /// Messages waiting in the queue (due now or later), across replicas.
    pub async fn queue_depth(&self) -> Result<i64, StoreError> {
        let row = self
            .db
            .query_one_raw(self.statement(
                "SELECT COUNT(*) FROM messages WHERE state = 'queued' AND (campaign_id IS NULL \
                 OR campaign_id IN (SELECT id FROM campaigns WHERE state = 'running'))",
                vec![],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        })
    }
}

/// `(?, ?), (?, ?)` for `count` rows of `width` values.
fn rows(width: usize, count: usize) -> String {
    vec![format!("({})", placeholders(width)); count].join(", ")
}

async fn returning_campaigns(
    txn: &DatabaseTransaction,
    statement: sea_orm::Statement,
) -> Result<Vec<Option<String>>, StoreError> {
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get_by_index(0).map_err(Into::into))
        .collect()
}
