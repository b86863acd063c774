//! Carries progress between replicas: every replica LISTENs on the channel the
//! recorder NOTIFYs at commit, and wakes its local feeds for the campaigns named.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;

use super::ProgressHub;
use crate::store::{Store, queue::PROGRESS_CHANNEL};

/// Listens until shutdown, reconnecting after failures. Does nothing on SQLite,
/// where one process holds the database.
pub async fn run(store: Store, hub: ProgressHub) {
    if !store.is_postgres() {
        return;
    }
    let shutdown = hub.shutdown_token().clone();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let pool = store.connection().get_postgres_connection_pool().clone();
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "progress listener could not connect; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen(PROGRESS_CHANNEL).await {
            tracing::warn!(error = %error, "LISTEN failed; retrying");
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                notification = listener.recv() => match notification {
                    Ok(notification) => hub.notify([notification.payload()]),
                    Err(error) => {
                        tracing::warn!(error = %error, "progress listener lost its connection");
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}
