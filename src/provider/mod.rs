//! Providers: tower services that send one SMS and say what happened.
//!
//! A provider is a `Service<SmsRequest, Response = Accepted, Error =
//! ProviderError>`. It classifies its own answers with the tables in
//! [`crate::domain::outcome`]; it knows nothing of the database or the queue.
//! [`retry`] adds the in-process retry of failures that certainly never
//! reached the provider; [`outcome_of`] folds any result of the whole stack,
//! timeouts included, into a [`SendOutcome`].

pub mod retry;
pub mod simulator;
pub mod twilio;

use std::time::Duration;

use crate::domain::{SendOutcome, outcome::Class};

/// Any error a tower stack of providers can return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One SMS to send.
#[derive(Debug, Clone)]
pub struct SmsRequest {
    /// Broadside's message id, for tracing; never sent to the provider.
    pub message_id: String,
    /// The campaign it belongs to; `None` for a transactional send.
    pub campaign_id: Option<String>,
    /// Recipient in E.164.
    pub to: String,
    pub from: String,
    pub body: String,
}

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id for it (Twilio's `SM...` sid).
    pub provider_message_id: String,
}

/// Why a provider did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The request certainly never reached the provider (connection refused,
    /// DNS failure): safe to try again at once.
    #[error("request not sent: {0}")]
    Unsent(String),
    /// The provider answered with a refusal of the given class.
    #[error("provider refused ({code}): {message}")]
    Refused {
        class: Class,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The request may have reached the provider, but no answer came back.
    #[error("no answer after the request was sent: {0}")]
    NoAnswer(String),
}

/// The classified outcome of one pass through a provider stack.
pub fn outcome_of(result: Result<Accepted, BoxError>) -> SendOutcome {
    let error = match result {
        Ok(Accepted {
            provider_message_id,
        }) => {
            return SendOutcome::Accepted {
                provider_message_id,
            };
        }
        Err(error) => error,
    };
    if error.is::<tower::timeout::error::Elapsed>() {
        return SendOutcome::Ambiguous {
            code: "timeout".into(),
            message: "provider did not answer within the timeout".into(),
        };
    }
    match error.downcast::<ProviderError>() {
        Ok(provider_error) => match *provider_error {
            ProviderError::Unsent(message) => SendOutcome::Transient {
                code: "transient".into(),
                message,
            },
            ProviderError::NoAnswer(message) => SendOutcome::Ambiguous {
                code: "no_answer".into(),
                message,
            },
            ProviderError::Refused {
                class,
                code,
                message,
                retry_after,
            } => match class {
                Class::Accepted | Class::Ambiguous => SendOutcome::Ambiguous { code, message },
                Class::RateLimited => SendOutcome::RateLimited {
                    code,
                    message,
                    retry_after,
                },
                Class::Transient => SendOutcome::Transient { code, message },
                Class::Permanent => SendOutcome::Permanent { code, message },
            },
        },
        Err(other) => SendOutcome::Ambiguous {
            code: "no_answer".into(),
            message: other.to_string(),
        },
    }
}

/// A fresh provider message id in Twilio's format: `SM` and 32 hex digits.
pub fn new_message_sid() -> String {
    format!("SM{}", uuid::Uuid::new_v4().simple())
}
