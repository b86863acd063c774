//! Message reads and transactional sends.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::campaigns::RequestKey;
use super::entity::message;
use super::{Store, StoreError};
use crate::domain::{MessageId, MessageState, Millis, PhoneNumber, Sender};

/// A transactional message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub to: PhoneNumber,
    pub sender: Sender,
    pub body: String,
}

impl Store {
    /// Queues one transactional message; with a request key, a replay
    /// returns the original message.
    pub async fn insert_message(
        &self,
        tenant: &str,
        new: &NewMessage,
        key: Option<&RequestKey>,
        now: Millis,
    ) -> Result<message::Model, StoreError> {
        let id = MessageId::generate().to_string();
        let inserted = self
            .db
            .query_one_raw(self.statement(
                "INSERT INTO messages (id, campaign_id, tenant, to_number, sender, body, state, \
                 attempts, next_attempt_at, created_at, updated_at, request_id, request_hash) \
                 VALUES (?, NULL, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL DO NOTHING \
                 RETURNING id",
                vec![
                    id.clone().into(),
                    tenant.into(),
                    new.to.as_str().into(),
                    new.sender.as_str().into(),
                    new.body.clone().into(),
                    now.into(),
                    now.into(),
                    now.into(),
                    key.map(|k| k.request_id.clone()).into(),
                    key.map(|k| k.fingerprint.clone()).into(),
                ],
            ))
            .await?;
        if inserted.is_some() {
            return self.get_message(tenant, &id).await;
        }

        let key = key.expect("only a keyed insert can conflict");
        let original = message::Entity::find()
            .filter(message::Column::Tenant.eq(tenant))
            .filter(message::Column::RequestId.eq(&key.request_id))
            .one(&self.db)
            .await?
            .ok_or_else(|| StoreError::Precondition("request_id conflict".into()))?;
        if original.request_hash.as_deref() != Some(key.fingerprint.as_str()) {
            return Err(StoreError::Precondition(format!(
                "request_id `{}` was already used for a different request",
                key.request_id
            )));
        }
        Ok(original)
    }

    pub async fn get_message(&self, tenant: &str, id: &str) -> Result<message::Model, StoreError> {
        find_message(&self.db, tenant, id).await
    }

    /// Messages of one campaign (or transactional ones when `campaign_id` is
    /// `None`), oldest first, after the page token's id.
    pub async fn list_messages(
        &self,
        tenant: &str,
        campaign_id: Option<&str>,
        state: Option<MessageState>,
        after_id: Option<&str>,
        limit: u64,
    ) -> Result<Vec<message::Model>, StoreError> {
        let mut query = message::Entity::find().filter(message::Column::Tenant.eq(tenant));
        query = match campaign_id {
            Some(id) => query.filter(message::Column::CampaignId.eq(id)),
            None => query.filter(message::Column::CampaignId.is_null()),
        };
        if let Some(state) = state {
            query = query.filter(message::Column::State.eq(state.as_str()));
        }
        if let Some(after) = after_id {
            query = query.filter(message::Column::Id.gt(after));
        }
        Ok(query
            .order_by_asc(message::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

async fn find_message<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
) -> Result<message::Model, StoreError> {
    message::Entity::find_by_id(id.to_owned())
        .filter(message::Column::Tenant.eq(tenant))
        .one(conn)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "message",
            id: id.to_owned(),
        })
}
