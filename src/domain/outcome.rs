//! What a send attempt led to, and what happens to the message next.
//!
//! The provider's answer is first classified into a [`SendOutcome`]; the
//! [`RetryPolicy`] then turns the outcome and the attempt count into a
//! [`Disposition`]: sent, retried at a later time, or failed for good.

use std::time::Duration;

use super::Millis;

/// Error code recorded when a message was throttled on its last attempt.
pub const RATE_LIMIT_EXCEEDED: &str = "rate_limit_exceeded";
/// Error code recorded when the provider may or may not have sent it.
pub const UNKNOWN_OUTCOME: &str = "unknown_outcome";
/// Error code recorded when a transient failure outlasted every attempt.
pub const TRANSIENT: &str = "transient";

/// The classified result of one send attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The provider took the message; it will not be sent again.
    Accepted { provider_message_id: String },
    /// The provider refused to process it for now; safe to retry.
    RateLimited {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Failed before the provider could have acted on it; safe to retry.
    Transient { code: String, message: String },
    /// The provider will never accept it (bad number, opted out, auth...).
    Permanent { code: String, message: String },
    /// The provider may have sent it: a timeout or a 5xx after the request
    /// was written. Retrying risks a duplicate; not retrying risks a loss.
    Ambiguous { code: String, message: String },
}

/// What to do about an ambiguous outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Retry it: never lose a message, occasionally send one twice.
    #[default]
    AtLeastOnce,
    /// Fail it as `unknown_outcome`: never send twice, occasionally lose one.
    AtMostOnce,
}

impl Delivery {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "at-least-once" => Ok(Self::AtLeastOnce),
            "at-most-once" => Ok(Self::AtMostOnce),
            other => Err(format!(
                "delivery must be `at-least-once` or `at-most-once`, not `{other}`"
            )),
        }
    }
}

/// What becomes of a message after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Sent {
        provider_message_id: String,
    },
    Retry {
        at: Millis,
        code: String,
        message: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

/// How many attempts a message gets and how long it waits between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; each later wait doubles.
    pub backoff: Duration,
    pub delivery: Delivery,
}

impl RetryPolicy {
    /// The wait before retry `n` (1-based): `backoff * 2^(n-1)`.
    pub fn backoff_before_retry(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(30);
        self.backoff.saturating_mul(1 << doublings)
    }

    /// Decides the fate of a message whose attempt number `attempts` (the
    /// first attempt being 1) ended in `outcome` at time `now`.
    pub fn decide(&self, attempts: u32, outcome: SendOutcome, now: Millis) -> Disposition {
        let (code, message, retry_after) = match outcome {
            SendOutcome::Accepted {
                provider_message_id,
            } => {
                return Disposition::Sent {
                    provider_message_id,
                };
            }
            SendOutcome::Permanent { code, message } => {
                return Disposition::Failed { code, message };
            }
            SendOutcome::Ambiguous { message, .. } if self.delivery == Delivery::AtMostOnce => {
                return Disposition::Failed {
                    code: UNKNOWN_OUTCOME.into(),
                    message,
                };
            }
            SendOutcome::Ambiguous { message, .. } => (UNKNOWN_OUTCOME.into(), message, None),
            SendOutcome::RateLimited {
                code,
                message,
                retry_after,
            } => (
                RATE_LIMIT_EXCEEDED.into(),
                format!("{code}: {message}"),
                retry_after,
            ),
            SendOutcome::Transient { code, message } => (code, message, None),
        };

        if attempts >= self.max_attempts {
            return Disposition::Failed { code, message };
        }
        let wait = self
            .backoff_before_retry(attempts)
            .max(retry_after.unwrap_or_default());
        Disposition::Retry {
            at: now + wait.as_millis() as Millis,
            code,
            message,
        }
    }
}

/// How Broadside classifies one provider answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Accepted,
    RateLimited,
    Transient,
    Permanent,
    Ambiguous,
}

/// One row of the provider classification table.
#[derive(Debug, Clone, Copy)]
pub struct CodeRule {
    /// HTTP status the rule matches.
    pub http: u16,
    /// Provider error code it matches; `None` matches any.
    pub code: Option<i64>,
    pub class: Class,
    pub meaning: &'static str,
}

/// Twilio's answers and their classes. The first matching row wins; a status
/// no row names falls back to [`classify_http_status`].
pub const TWILIO_RULES: &[CodeRule] = &[
    CodeRule {
        http: 201,
        code: None,
        class: Class::Accepted,
        meaning: "message created",
    },
    CodeRule {
        http: 429,
        code: Some(20429),
        class: Class::RateLimited,
        meaning: "too many requests; not processed",
    },
    CodeRule {
        http: 400,
        code: Some(21611),
        class: Class::RateLimited,
        meaning: "sender's queue is full",
    },
    CodeRule {
        http: 401,
        code: Some(20003),
        class: Class::Permanent,
        meaning: "authentication failed",
    },
    CodeRule {
        http: 404,
        code: Some(20404),
        class: Class::Permanent,
        meaning: "resource not found",
    },
    CodeRule {
        http: 400,
        code: Some(21211),
        class: Class::Permanent,
        meaning: "invalid `To` number",
    },
    CodeRule {
        http: 400,
        code: Some(21614),
        class: Class::Permanent,
        meaning: "`To` is not a mobile number",
    },
    CodeRule {
        http: 400,
        code: Some(21610),
        class: Class::Permanent,
        meaning: "recipient opted out (STOP)",
    },
    CodeRule {
        http: 400,
        code: Some(21606),
        class: Class::Permanent,
        meaning: "`From` is not a valid sender",
    },
    CodeRule {
        http: 400,
        code: Some(21408),
        class: Class::Permanent,
        meaning: "region not permitted",
    },
    CodeRule {
        http: 400,
        code: Some(21602),
        class: Class::Permanent,
        meaning: "body required",
    },
    CodeRule {
        http: 400,
        code: Some(21617),
        class: Class::Permanent,
        meaning: "body too long",
    },
    CodeRule {
        http: 500,
        code: None,
        class: Class::Ambiguous,
        meaning: "internal error; may have been sent",
    },
    CodeRule {
        http: 502,
        code: None,
        class: Class::Transient,
        meaning: "bad gateway",
    },
    CodeRule {
        http: 503,
        code: None,
        class: Class::Transient,
        meaning: "service unavailable",
    },
    CodeRule {
        http: 504,
        code: None,
        class: Class::Ambiguous,
        meaning: "gateway timeout; may have been sent",
    },
];

/// Classifies a Twilio answer by HTTP status and error code.
pub fn classify_twilio(http: u16, code: Option<i64>) -> Class {
    TWILIO_RULES
        .iter()
        .find(|rule| rule.http == http && (rule.code.is_none() || rule.code == code))
        .map(|rule| rule.class)
        .unwrap_or_else(|| classify_http_status(http))
}

/// The class of a status no rule names: any other 429 throttles, any other
/// 5xx may have been processed, any other 4xx will never succeed.
pub fn classify_http_status(http: u16) -> Class {
    match http {
        200..=299 => Class::Accepted,
        429 => Class::RateLimited,
        500..=599 => Class::Ambiguous,
        _ => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delivery: Delivery) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(3000),
            delivery,
        }
    }

    fn throttled() -> SendOutcome {
        SendOutcome::RateLimited {
            code: "20429".into(),
            message: "Too Many Requests".into(),
            retry_after: None,
        }
    }

    #[test]
    fn default_backoff_waits_3_6_12_24_seconds_then_fails() {
        let policy = policy(Delivery::AtLeastOnce);
        let mut waits = Vec::new();
        for attempt in 1..=4 {
            match policy.decide(attempt, throttled(), 0) {
                Disposition::Retry { at, code, .. } => {
                    assert_eq!(code, RATE_LIMIT_EXCEEDED);
                    waits.push(at);
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert_eq!(waits, [3000, 6000, 12000, 24000]);
        assert_eq!(
            policy.decide(5, throttled(), 0),
            Disposition::Failed {
                code: RATE_LIMIT_EXCEEDED.into(),
                message: "20429: Too Many Requests".into()
            }
        );
    }

    #[test]
    fn retry_after_lengthens_but_never_shortens_the_wait() {
        let policy = policy(Delivery::AtLeastOnce);
        let long = SendOutcome::RateLimited {
            code: "20429".into(),
            message: String::new(),
            retry_after: Some(Duration::from_secs(10)),
        };
        assert!(matches!(
            policy.decide(1, long, 0),
            Disposition::Retry { at: 10_000, .. }
        ));
        let short = SendOutcome::RateLimited {
            code: "20429".into(),
            message: String::new(),
            retry_after: Some(Duration::from_secs(1)),
        };
        assert!(matches!(
            policy.decide(1, short, 0),
            Disposition::Retry { at: 3000, .. }
        ));
    }

    #[test]
    fn permanent_errors_fail_at_once_with_their_code() {
        let outcome = SendOutcome::Permanent {
            code: "21211".into(),
            message: "bad To".into(),
        };
        assert_eq!(
            policy(Delivery::AtLeastOnce).decide(1, outcome, 0),
            Disposition::Failed {
                code: "21211".into(),
                message: "bad To".into()
            }
        );
    }

    #[test]
    fn ambiguous_outcomes_follow_the_delivery_setting() {
        let outcome = || SendOutcome::Ambiguous {
            code: "500".into(),
            message: "boom".into(),
        };
        assert!(matches!(
            policy(Delivery::AtLeastOnce).decide(1, outcome(), 0),
            Disposition::Retry { .. }
        ));
        assert_eq!(
            policy(Delivery::AtMostOnce).decide(1, outcome(), 0),
            Disposition::Failed {
                code: UNKNOWN_OUTCOME.into(),
                message: "boom".into()
            }
        );
    }

    #[test]
    fn twilio_answers_are_classified_by_the_table() {
        assert_eq!(classify_twilio(201, None), Class::Accepted);
        assert_eq!(classify_twilio(429, Some(20429)), Class::RateLimited);
        assert_eq!(classify_twilio(429, None), Class::RateLimited);
        assert_eq!(classify_twilio(400, Some(21611)), Class::RateLimited);
        assert_eq!(classify_twilio(400, Some(21211)), Class::Permanent);
        assert_eq!(classify_twilio(400, Some(21610)), Class::Permanent);
        assert_eq!(classify_twilio(401, Some(20003)), Class::Permanent);
        assert_eq!(classify_twilio(500, Some(20500)), Class::Ambiguous);
        assert_eq!(classify_twilio(502, None), Class::Transient);
        assert_eq!(classify_twilio(503, None), Class::Transient);
        assert_eq!(classify_twilio(418, None), Class::Permanent);
    }
}
