//! In-process retry of sends that certainly never reached the provider.
//!
//! A refused connection costs no attempt: it is retried here a few times with
//! a short exponential backoff (50, 100, 200, 400 ms). Anything slower or less
//! certain goes back to the queue as a durable retry instead.

use std::{future::Future, pin::Pin, time::Duration};

use tower::retry::Policy;

use super::{Accepted, ProviderError, SmsRequest};

/// Retries [`ProviderError::Unsent`] up to `remaining` more times.
#[derive(Debug, Clone)]
pub struct UnsentRetry {
    remaining: u32,
    backoff: Duration,
}

impl Default for UnsentRetry {
    fn default() -> Self {
        Self {
            remaining: 4,
            backoff: Duration::from_millis(50),
        }
    }
}

impl Policy<SmsRequest, Accepted, ProviderError> for UnsentRetry {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut SmsRequest,
        result: &mut Result<Accepted, ProviderError>,
    ) -> Option<Self::Future> {
        if !matches!(result, Err(ProviderError::Unsent(_))) || self.remaining == 0 {
            return None;
        }
        let wait = self.backoff;
        self.remaining -= 1;
        self.backoff *= 2;
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, request: &SmsRequest) -> Option<SmsRequest> {
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use tower::{ServiceBuilder, ServiceExt, retry::RetryLayer, service_fn};

    use super::*;
    use crate::domain::outcome::Class;

    fn request() -> SmsRequest {
        SmsRequest {
            message_id: "m".into(),
            campaign_id: None,
            to: "+14155550100".into(),
            from: "Broadside".into(),
            body: "hi".into(),
        }
    }

    /// A provider that fails `failures` times with `error`, then accepts.
    fn flaky(
        failures: u32,
        error: ProviderError,
    ) -> (
        Arc<AtomicU32>,
        impl tower::Service<SmsRequest, Response = Accepted, Error = ProviderError> + Clone,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let service = service_fn(move |_request: SmsRequest| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let error = error.clone();
            async move {
                if n < failures {
                    Err(error)
                } else {
                    Ok(Accepted {
                        provider_message_id: "SM1".into(),
                    })
                }
            }
        });
        (calls, service)
    }

    #[tokio::test(start_paused = true)]
    async fn unsent_requests_are_retried_in_process_until_they_get_through() {
        let (calls, provider) = flaky(3, ProviderError::Unsent("refused".into()));
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(UnsentRetry::default()))
            .service(provider);
        let accepted = stack.oneshot(request()).await.unwrap();
        assert_eq!(accepted.provider_message_id, "SM1");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn unsent_retries_give_up_after_a_few_tries() {
        let (calls, provider) = flaky(100, ProviderError::Unsent("refused".into()));
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(UnsentRetry::default()))
            .service(provider);
        assert!(matches!(
            stack.oneshot(request()).await,
            Err(ProviderError::Unsent(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_and_ambiguous_failures_are_not_retried_in_process() {
        let refusal = ProviderError::Refused {
            class: Class::RateLimited,
            code: "20429".into(),
            message: "slow down".into(),
            retry_after: None,
        };
        for error in [refusal, ProviderError::NoAnswer("reset".into())] {
            let (calls, provider) = flaky(1, error);
            let stack = ServiceBuilder::new()
                .layer(RetryLayer::new(UnsentRetry::default()))
                .service(provider);
            assert!(stack.oneshot(request()).await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }
}
