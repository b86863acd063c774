//! The provider stack: `pacing -> timeout -> in-process retry -> provider`.
//!
//! The timeout sits inside pacing on purpose: it bounds the provider call,
//! not the wait for a pacing slot, so a slow queue never turns into
//! "ambiguous" timeouts for messages that were never sent.

use std::{sync::Arc, time::Duration};

use tower::{ServiceBuilder, retry::RetryLayer, timeout::TimeoutLayer, util::BoxCloneSyncService};

use super::pacing::{Admission, Pacer, PacingLayer};
use crate::provider::{Accepted, BoxError, ProviderError, SmsRequest, retry::UnsentRetry};

/// A provider behind its middleware, type-erased and cheap to clone.
pub type ProviderStack = BoxCloneSyncService<SmsRequest, Accepted, BoxError>;

/// Wraps `provider` in pacing (with its admission check), a per-call timeout
/// and the retry of unsent requests.
pub fn build_stack<P>(
    provider: P,
    pacer: Arc<Pacer>,
    admission: Admission,
    timeout: Duration,
) -> ProviderStack
where
    P: tower::Service<SmsRequest, Response = Accepted, Error = ProviderError>
        + Clone
        + Send
        + Sync
        + 'static,
    P::Future: Send + 'static,
{
    let stack = ServiceBuilder::new()
        .layer(PacingLayer::new(pacer, admission))
        .layer(TimeoutLayer::new(timeout))
        .layer(RetryLayer::new(UnsentRetry::default()))
        .service(provider);
    BoxCloneSyncService::new(stack)
}
