//! Campaign queries: creation with its recipients, recipient uploads,
//! lifecycle transitions, reads and the consistency check.

use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, FromQueryResult,
    IsolationLevel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait, Value,
};

use super::entity::campaign;
use super::{Store, StoreError, placeholders, statement};
use crate::domain::{
    CampaignDraft, CampaignId, CampaignState, Counts, MessageId, Millis, PhoneNumber, Transition,
};

/// Rows per multi-row INSERT: large enough to amortise the round trip, small
/// enough for SQLite's parameter limit.
const INSERT_CHUNK: usize = 1000;

/// One validated, rendered recipient ready to become a message row.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub id: MessageId,
    pub to: PhoneNumber,
    pub body: String,
}

/// An idempotency key and the fingerprint of the request that used it.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub request_id: String,
    pub fingerprint: String,
}

/// The result of a create: a new campaign, or the one an earlier identical
/// request created.
#[derive(Debug)]
pub enum Created {
    New(campaign::Model),
    Replayed(campaign::Model),
}

/// What a chunk of AddRecipients did.
#[derive(Debug, Clone, Copy)]
pub struct Added {
    pub inserted: u64,
    pub total: i64,
}

impl Store {
    /// Creates a campaign and its recipients in one transaction. With a
    /// request key, a replay returns the original campaign and writes nothing.
    pub async fn create_campaign(
        &self,
        tenant: &str,
        draft: &CampaignDraft,
        recipients: &[NewRecipient],
        key: Option<&RequestKey>,
        start: bool,
        now: Millis,
    ) -> Result<Created, StoreError> {
        let txn = self.db.begin().await?;
        let id = CampaignId::generate().to_string();
        let state = match start {
            false => CampaignState::Draft,
            true => CampaignState::Draft
                .after(
                    Transition::Start,
                    draft.scheduled_at.is_some_and(|at| at > now),
                )
                .expect("a draft can always start"),
        };
        let started_at = (state == CampaignState::Running).then_some(now);

        let inserted = txn
            .query_one_raw(self.statement(
                "INSERT INTO campaigns (id, tenant, name, body, sender, state, total, \
                 scheduled_at, created_at, updated_at, started_at, request_id, request_hash) \
                 VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL DO NOTHING \
                 RETURNING id",
                vec![
                    id.clone().into(),
                    tenant.into(),
                    draft.name.clone().into(),
                    draft.body.clone().into(),
                    draft.sender.as_str().into(),
                    state.as_str().into(),
                    draft.scheduled_at.into(),
                    now.into(),
                    now.into(),
                    started_at.into(),
                    key.map(|k| k.request_id.clone()).into(),
                    key.map(|k| k.fingerprint.clone()).into(),
                ],
            ))
            .await?;

        if inserted.is_none() {
            // Another request with this key won; replay its result.
            txn.rollback().await?;
            let key = key.expect("only a keyed insert can conflict");
            let original = campaign::Entity::find()
                .filter(campaign::Column::Tenant.eq(tenant))
                .filter(campaign::Column::RequestId.eq(&key.request_id))
                .one(&self.db)
                .await?
                .ok_or_else(|| StoreError::Precondition("request_id conflict".into()))?;
            if original.request_hash.as_deref() != Some(key.fingerprint.as_str()) {
                return Err(StoreError::Precondition(format!(
                    "request_id `{}` was already used for a different request",
                    key.request_id
                )));
            }
            return Ok(Created::Replayed(original));
        }

        let count = self
            .insert_recipients(&txn, &id, tenant, draft.sender.as_str(), recipients, now)
            .await?;
        txn.execute_raw(self.statement(
            "UPDATE campaigns SET total = ? WHERE id = ?",
            vec![(count as i64).into(), id.clone().into()],
        ))
        .await?;
        let created = find_campaign(&txn, tenant, &id).await?;
        txn.commit().await?;
        Ok(Created::New(created))
    }

    /// Adds a chunk of recipients to a DRAFT campaign, dropping numbers it
    /// already has, and returns how many were new.
    pub async fn add_recipients(
        &self,
        tenant: &str,
        id: &str,
        recipients: &[NewRecipient],
        now: Millis,
    ) -> Result<Added, StoreError> {
        let txn = self.db.begin().await?;
        let current = self.lock_campaign(&txn, tenant, id).await?;
        let state = parse_state(&current.state);
        if state != CampaignState::Draft {
            return Err(StoreError::Precondition(format!(
                "recipients can only be added to a DRAFT campaign; this one is {state}"
            )));
        }

        let inserted = self
            .insert_recipients(&txn, id, tenant, &current.sender, recipients, now)
            .await?;
        txn.execute_raw(self.statement(
            "UPDATE campaigns SET total = total + ?, updated_at = ? WHERE id = ?",
            vec![(inserted as i64).into(), now.into(), id.into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(Added {
            inserted,
            total: current.total + inserted as i64,
        })
    }

    /// Multi-row inserts of queued messages; a number the campaign already
    /// has is skipped by the unique index. Returns the rows inserted.
    async fn insert_recipients(
        &self,
        txn: &DatabaseTransaction,
        campaign_id: &str,
        tenant: &str,
        sender: &str,
        recipients: &[NewRecipient],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for chunk in recipients.chunks(INSERT_CHUNK) {
            let rows = vec![format!("({})", placeholders(3)); chunk.len()].join(", ");
            // `WHERE true` lets SQLite parse ON CONFLICT after a SELECT.
            let sql = format!(
                "INSERT INTO messages (id, campaign_id, tenant, to_number, sender, body, state, \
                 attempts, next_attempt_at, created_at, updated_at) \
                 SELECT v.column1, ?, ?, v.column2, ?, v.column3, 'queued', 0, ?, ?, ? \
                 FROM (VALUES {rows}) AS v WHERE true \
                 ON CONFLICT (campaign_id, to_number) DO NOTHING"
            );
            let mut values: Vec<Value> = Vec::with_capacity(6 + chunk.len() * 3);
            values.extend([
                campaign_id.into(),
                tenant.into(),
                sender.into(),
                now.into(),
                now.into(),
                now.into(),
            ]);
            for recipient in chunk {
                values.push(recipient.id.to_string().into());
                values.push(recipient.to.as_str().into());
                values.push(recipient.body.clone().into());
            }
            inserted += txn
                .execute_raw(self.statement(&sql, values))
                .await?
                .rows_affected();
        }
        Ok(inserted)
    }

    /// Applies a lifecycle transition, or explains why it is illegal.
    pub async fn transition(
        &self,
        tenant: &str,
        id: &str,
        transition: Transition,
        now: Millis,
    ) -> Result<campaign::Model, StoreError> {
        let txn = self.db.begin().await?;
        let current = self.lock_campaign(&txn, tenant, id).await?;
        let state = parse_state(&current.state);
        let scheduled_in_future = current.scheduled_at.is_some_and(|at| at > now);
        let mut next = state
            .after(transition, scheduled_in_future)
            .ok_or(StoreError::IllegalTransition { transition, state })?;

        if transition == Transition::Start && current.total == 0 {
            return Err(StoreError::Precondition(
                "campaign has no recipients; add some with AddRecipients before starting it".into(),
            ));
        }
        if transition == Transition::Resume && counts_of(&current).is_finished() {
            next = CampaignState::Completed;
        }

        let cancelled = if next == CampaignState::Cancelled {
            txn.execute_raw(self.statement(
                "UPDATE messages SET state = 'cancelled', updated_at = ? \
                 WHERE campaign_id = ? AND state = 'queued'",
                vec![now.into(), id.into()],
            ))
            .await?
            .rows_affected() as i64
        } else {
            0
        };
        let started_at = (next == CampaignState::Running).then_some(now);
        let completed_at = next.is_terminal().then_some(now);
        txn.execute_raw(self.statement(
            "UPDATE campaigns SET state = ?, cancelled = cancelled + ?, \
             started_at = COALESCE(started_at, ?), completed_at = COALESCE(completed_at, ?), \
             updated_at = ? WHERE id = ?",
            vec![
                next.as_str().into(),
                cancelled.into(),
                started_at.into(),
                completed_at.into(),
                now.into(),
                id.into(),
            ],
        ))
        .await?;
        let updated = find_campaign(&txn, tenant, id).await?;
        txn.commit().await?;
        Ok(updated)
    }

    pub async fn get_campaign(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<campaign::Model, StoreError> {
        find_campaign(&self.db, tenant, id).await
    }

    /// Campaigns newest first, after the page token's id.
    pub async fn list_campaigns(
        &self,
        tenant: &str,
        state: Option<CampaignState>,
        before_id: Option<&str>,
        limit: u64,
    ) -> Result<Vec<campaign::Model>, StoreError> {
        let mut query = campaign::Entity::find().filter(campaign::Column::Tenant.eq(tenant));
        if let Some(state) = state {
            query = query.filter(campaign::Column::State.eq(state.as_str()));
        }
        if let Some(before) = before_id {
            query = query.filter(campaign::Column::Id.lt(before));
        }
        Ok(query
            .order_by_desc(campaign::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The campaign row and the counts aggregated from its messages, read
    /// from one snapshot of the database.
    pub async fn campaign_status(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(campaign::Model, Counts), StoreError> {
        let txn = if self.is_postgres() {
            self.db
                .begin_with_config(
                    Some(IsolationLevel::RepeatableRead),
                    Some(AccessMode::ReadOnly),
                )
                .await?
        } else {
            self.db.begin().await?
        };
        let row = find_campaign(&txn, tenant, id).await?;

        #[derive(FromQueryResult)]
        struct StateCount {
            state: String,
            n: i64,
        }
        let rows = StateCount::find_by_statement(self.statement(
            "SELECT state, COUNT(*) AS n FROM messages WHERE campaign_id = ? GROUP BY state",
            vec![id.into()],
        ))
        .all(&txn)
        .await?;
        txn.commit().await?;

        let mut aggregated = Counts::default();
        for StateCount { state, n } in rows {
            aggregated.total += n;
            match state.as_str() {
                "sent" => aggregated.sent += n,
                "failed" => aggregated.failed += n,
                "cancelled" => aggregated.cancelled += n,
                _ => {}
            }
        }
        Ok((row, aggregated))
    }

    /// Reads a campaign, holding its row lock on Postgres until the
    /// transaction ends, so transitions and uploads serialise.
    async fn lock_campaign(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<campaign::Model, StoreError> {
        let sql = format!(
            "SELECT * FROM campaigns WHERE id = ? AND tenant = ?{}",
            self.lock_clause()
        );
        campaign::Model::find_by_statement(statement(
            self.backend(),
            &sql,
            vec![id.into(), tenant.into()],
        ))
        .one(txn)
        .await?
        .ok_or_else(|| not_found(id))
    }
}

async fn find_campaign<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
) -> Result<campaign::Model, StoreError> {
    campaign::Entity::find_by_id(id.to_owned())
        .filter(campaign::Column::Tenant.eq(tenant))
        .one(conn)
        .await?
        .ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: "campaign",
        id: id.to_owned(),
    }
}

/// States are written only by this module, so an unknown one is corruption.
pub fn parse_state(text: &str) -> CampaignState {
    CampaignState::parse(text).unwrap_or_else(|| panic!("unknown campaign state `{text}` in store"))
}

/// The stored counts of a campaign row.
pub fn counts_of(row: &campaign::Model) -> Counts {
    Counts {
        total: row.total,
        sent: row.sent,
        failed: row.failed,
        cancelled: row.cancelled,
    }
}

impl Store {
    /// A campaign by id alone, for progress feeds whose watchers were
    /// already checked against their tenant.
    pub async fn campaign_by_id(&self, id: &str) -> Result<campaign::Model, StoreError> {
        campaign::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| not_found(id))
    }
}
