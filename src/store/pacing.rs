//! The shared pacing budget: one GCRA "theoretical arrival time" per provider
//! account, advanced atomically, so replicas on one database never exceed the
//! account's rate together.

use sea_orm::ConnectionTrait;

use super::{Store, StoreError};

impl Store {
    /// Reserves `count` consecutive send slots `interval_us` apart for
    /// `account`, starting no earlier than `now_us`. Returns the first slot's
    /// time in microseconds since the epoch.
    pub async fn reserve_slots(
        &self,
        account: &str,
        count: u32,
        interval_us: i64,
        now_us: i64,
    ) -> Result<i64, StoreError> {
        let span = i64::from(count) * interval_us;
        let greatest = if self.is_postgres() {
            "GREATEST"
        } else {
            "MAX"
        };
        let sql = format!(
            "INSERT INTO rate_buckets (account, tat_us) VALUES (?, ?) \
             ON CONFLICT (account) DO UPDATE \
             SET tat_us = {greatest}(rate_buckets.tat_us, ?) + ? \
             RETURNING tat_us"
        );
        let row = self
            .db
            .query_one_raw(self.statement(
                &sql,
                vec![
                    account.into(),
                    (now_us + span).into(),
                    now_us.into(),
                    span.into(),
                ],
            ))
            .await?
            .ok_or_else(|| {
                StoreError::Precondition("rate bucket upsert returned nothing".into())
            })?;
        let tat: i64 = row.try_get_by_index(0)?;
        Ok(tat - span)
    }
}
