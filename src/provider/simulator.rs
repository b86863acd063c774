//! The built-in simulator: accepts every message, after an optional latency,
//! with an optional share of transient failures so a demo can show retries.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tower::Service;

use super::{Accepted, ProviderError, SmsRequest, new_message_sid};
use crate::domain::outcome::Class;

/// How the simulator behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatorConfig {
    /// Delay before each answer.
    pub latency: Duration,
    /// Share of sends, 0.0 to 1.0, refused with a retryable 503.
    pub failure_rate: f64,
}

/// A provider that needs no account.
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    config: SimulatorConfig,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        Self { config }
    }
}

impl Service<SmsRequest> for Simulator {
    type Response = Accepted;
    type Error = ProviderError;
    type Future = Pin<Box<dyn Future<Output = Result<Accepted, ProviderError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: SmsRequest) -> Self::Future {
        let config = self.config;
        Box::pin(async move {
            if !config.latency.is_zero() {
                tokio::time::sleep(config.latency).await;
            }
            if config.failure_rate > 0.0 && rand::random::<f64>() < config.failure_rate {
                return Err(ProviderError::Refused {
                    class: Class::Transient,
                    code: "503".into(),
                    message: "simulated transient failure".into(),
                    retry_after: None,
                });
            }
            Ok(Accepted {
                provider_message_id: new_message_sid(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    fn request() -> SmsRequest {
        SmsRequest {
            message_id: "m".into(),
            campaign_id: None,
            to: "+14155550100".into(),
            from: "Broadside".into(),
            body: "hi".into(),
        }
    }

    #[tokio::test]
    async fn the_simulator_accepts_with_a_twilio_style_sid() {
        let accepted = Simulator::default().oneshot(request()).await.unwrap();
        assert!(accepted.provider_message_id.starts_with("SM"));
        assert_eq!(accepted.provider_message_id.len(), 34);
    }

    #[tokio::test]
    async fn a_full_failure_rate_refuses_every_send_as_transient() {
        let simulator = Simulator::new(SimulatorConfig {
            latency: Duration::ZERO,
            failure_rate: 1.0,
        });
        let error = simulator.oneshot(request()).await.unwrap_err();
        assert!(matches!(
            error,
            ProviderError::Refused {
                class: Class::Transient,
                ..
            }
        ));
    }
}
