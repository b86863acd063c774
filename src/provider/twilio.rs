//! Twilio's Programmable Messaging API: one form POST per message to
//! `/2010-04-01/Accounts/{sid}/Messages.json` with Basic auth; a 201 carries
//! the message resource, anything else an error object with a numeric `code`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use reqwest::{StatusCode, header::RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower::Service;

use super::{Accepted, ProviderError, SmsRequest};
use crate::domain::outcome::{Class, classify_twilio};

/// Twilio's public API.
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// Credentials and where to send.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: SecretString,
    /// Base URL, e.g. `https://api.twilio.com` or a local fake.
    pub api_base: String,
    /// Give up connecting after this long (the request is then certainly unsent).
    pub connect_timeout: Duration,
}

/// A Twilio account as a tower service. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Twilio {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: SecretString,
}

impl std::fmt::Debug for Twilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twilio")
            .field("url", &self.url)
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct MessageResource {
    sid: String,
}

#[derive(Deserialize)]
struct ErrorResource {
    code: Option<i64>,
    message: Option<String>,
}

impl Twilio {
    pub fn new(config: TwilioConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .build()?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.api_base.trim_end_matches('/'),
            config.account_sid
        );
        Ok(Self {
            client,
            url,
            account_sid: config.account_sid,
            auth_token: config.auth_token,
        })
    }

    async fn send(self, request: SmsRequest) -> Result<Accepted, ProviderError> {
        let form = [
            ("To", request.to.as_str()),
            ("From", request.from.as_str()),
            ("Body", request.body.as_str()),
        ];
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;

        let status = response.status();
        let retry_after = retry_after(&response);
        let bytes = response
            .bytes()
            .await
            .map_err(|error| ProviderError::NoAnswer(format!("reading the answer: {error}")))?;

        if status == StatusCode::CREATED || status.is_success() {
            let resource: MessageResource = serde_json::from_slice(&bytes).map_err(|error| {
                // Accepted, but the body is not what Twilio sends: we cannot
                // tell whether the message went out.
                ProviderError::NoAnswer(format!("unreadable {status} answer: {error}"))
            })?;
            return Ok(Accepted {
                provider_message_id: resource.sid,
            });
        }

        let error: Option<ErrorResource> = serde_json::from_slice(&bytes).ok();
        let code = error.as_ref().and_then(|e| e.code);
        let message = error
            .and_then(|e| e.message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        let class = classify_twilio(status.as_u16(), code);
        Err(ProviderError::Refused {
            class: if class == Class::Accepted {
                Class::Ambiguous
            } else {
                class
            },
            code: code.map_or_else(|| status.as_u16().to_string(), |c| c.to_string()),
            message,
            retry_after,
        })
    }
}

/// A transport failure: certainly unsent only if the connection was never made.
fn transport_error(error: reqwest::Error) -> ProviderError {
    // The error's text can carry the URL, which holds the account sid but
    // never the token (that travels in a header).
    if error.is_connect() {
        ProviderError::Unsent(error.to_string())
    } else {
        ProviderError::NoAnswer(error.to_string())
    }
}

/// `Retry-After` in seconds, when the provider sends one.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
}

impl Service<SmsRequest> for Twilio {
    type Response = Accepted;
    type Error = ProviderError;
    type Future = Pin<Box<dyn Future<Output = Result<Accepted, ProviderError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SmsRequest) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}
