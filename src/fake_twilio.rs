//! A loopback stand-in for Twilio's Messages API, for tests and the benchmark.
//!
//! It speaks the same wire format as the real service (form POST, Basic auth,
//! 201 with a message resource, error objects with numeric codes), counts
//! every message it accepts per (to, body) so callers can prove that nothing
//! was lost or doubled, and can misbehave on purpose: a rate limit answered
//! with 429 (with or without `Retry-After`), scripted answers per recipient
//! (any status and code, or accept-then-hang), and latency.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The account the fake expects unless told otherwise.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// Its auth token.
pub const AUTH_TOKEN: &str = "fake-auth-token";

/// What the fake does with requests no script claims.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Accept at most this many messages per second; 429 (code 20429) beyond.
    pub rate_limit: Option<f64>,
    /// With a rate limit: seconds to announce in `Retry-After` on a 429.
    pub retry_after: Option<u64>,
    /// Delay before every answer.
    pub latency: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            rate_limit: None,
            retry_after: None,
            latency: Duration::ZERO,
        }
    }
}

/// A scripted answer for one request to a given number.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Answer with this HTTP status and Twilio error code (not accepted).
    Error {
        status: u16,
        code: Option<i64>,
        retry_after: Option<u64>,
    },
    /// Count the message as accepted, then keep the connection silent for
    /// this long before answering 201: the client's timeout fires first.
    AcceptThenHang(Duration),
}

/// What the fake has seen.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    throttled: u64,
    accepted: HashMap<(String, String), u32>,
    accepted_total: u64,
    /// Accepted messages per 100 ms since start, to find the busiest second.
    per_tick: HashMap<u64, u64>,
    first_accept: Option<Instant>,
    last_accept: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Inner {
    config: Mutex<FakeConfig>,
    scripts: Mutex<HashMap<String, VecDeque<Scripted>>>,
    tally: Mutex<Tally>,
    bucket: Mutex<Bucket>,
    started: Instant,
}

/// A running fake. Dropping it stops the server.
pub struct FakeTwilio {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

#[derive(Deserialize)]
struct SendForm {
    #[serde(rename = "To")]
    to: Option<String>,
    #[serde(rename = "From")]
    from: Option<String>,
    #[serde(rename = "Body")]
    body: Option<String>,
}

impl FakeTwilio {
    /// Starts the fake on an ephemeral loopback port.
    pub async fn start(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let inner = Arc::new(Inner {
            config: Mutex::new(config),
            scripts: Mutex::default(),
            tally: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                updated: now,
            }),
            started: now,
        });
        inner.refill_bucket_full();

        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message),
            )
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until)
                .await;
        });
        Ok(Self { addr, inner, stop })
    }

    /// The base URL to configure as `TWILIO_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues scripted answers for the next requests to `to`, in order.
    pub fn script(&self, to: &str, answers: impl IntoIterator<Item = Scripted>) {
        self.inner
            .scripts
            .lock()
            .expect("scripts lock")
            .entry(to.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Changes the rate limit (and its `Retry-After`) while running.
    pub fn set_rate_limit(&self, rate: Option<f64>, retry_after: Option<u64>) {
        let mut config = self.inner.config.lock().expect("config lock");
        config.rate_limit = rate;
        config.retry_after = retry_after;
    }

    /// Requests received, accepted or not.
    pub fn requests(&self) -> u64 {
        self.tally().requests
    }

    /// 429 answers given by the rate limit.
    pub fn throttled(&self) -> u64 {
        self.tally().throttled
    }

    /// Messages accepted in all.
    pub fn accepted_total(&self) -> u64 {
        self.tally().accepted_total
    }

    /// Times a given (to, body) was accepted.
    pub fn accepted(&self, to: &str, body: &str) -> u32 {
        let tally = self.tally();
        tally
            .accepted
            .get(&(to.to_owned(), body.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Distinct (to, body) pairs accepted.
    pub fn distinct_accepted(&self) -> u64 {
        self.tally().accepted.len() as u64
    }

    /// Acceptances beyond the first of the same (to, body).
    pub fn duplicates(&self) -> u64 {
        self.tally()
            .accepted
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Most messages accepted in any one-second window (in 100 ms steps).
    pub fn busiest_second(&self) -> u64 {
        let tally = self.tally();
        let last = tally.per_tick.keys().copied().max().unwrap_or(0);
        (0..=last)
            .map(|start| {
                (start..start + 10)
                    .filter_map(|t| tally.per_tick.get(&t))
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    /// Accepted messages per second between the first and last acceptance.
    pub fn accepted_rate(&self) -> f64 {
        let tally = self.tally();
        match (tally.first_accept, tally.last_accept) {
            (Some(first), Some(last)) if last > first => {
                (tally.accepted_total.saturating_sub(1)) as f64 / (last - first).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.inner.tally.lock().expect("tally lock")
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    fn refill_bucket_full(&self) {
        let rate = self.config.lock().expect("config lock").rate_limit;
        if let Some(rate) = rate {
            let mut bucket = self.bucket.lock().expect("bucket lock");
            bucket.tokens = burst(rate);
        }
    }

    /// Takes a token from the rate limit's bucket; false when empty.
    fn admit(&self, rate: f64) -> bool {
        let mut bucket = self.bucket.lock().expect("bucket lock");
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst(rate));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn count_accepted(&self, to: String, body: String) {
        let now = Instant::now();
        let tick = now.duration_since(self.started).as_millis() as u64 / 100;
        let mut tally = self.tally.lock().expect("tally lock");
        *tally.accepted.entry((to, body)).or_default() += 1;
        tally.accepted_total += 1;
        *tally.per_tick.entry(tick).or_default() += 1;
        tally.first_accept.get_or_insert(now);
        tally.last_accept = Some(now);
    }
}

/// The bucket holds a tenth of a second of traffic, at least a few messages.
fn burst(rate: f64) -> f64 {
    (rate / 10.0).max(5.0)
}

async fn create_message(
    State(inner): State<Arc<Inner>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Response {
    inner.tally.lock().expect("tally lock").requests += 1;
    let config = inner.config.lock().expect("config lock").clone();
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }

    if sid != ACCOUNT_SID || !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate", None);
    }
    let (Some(to), Some(from)) = (form.to, form.from) else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' and 'From' are required",
            None,
        );
    };
    let Some(body) = form.body.filter(|b| !b.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            21602,
            "Message body is required",
            None,
        );
    };

    let scripted = inner
        .scripts
        .lock()
        .expect("scripts lock")
        .get_mut(&to)
        .and_then(VecDeque::pop_front);
    match scripted {
        Some(Scripted::Error {
            status,
            code,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, code.unwrap_or(0), "scripted failure", retry_after);
        }
        Some(Scripted::AcceptThenHang(hang)) => {
            inner.count_accepted(to.clone(), body.clone());
            tokio::time::sleep(hang).await;
            return created(&to, &from, &body);
        }
        None => {}
    }

    if let Some(rate) = config.rate_limit
        && !inner.admit(rate)
    {
        inner.tally.lock().expect("tally lock").throttled += 1;
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            20429,
            "Too Many Requests",
            config.retry_after,
        );
    }
    inner.count_accepted(to.clone(), body.clone());
    created(&to, &from, &body)
}

fn authorized(headers: &HeaderMap) -> bool {
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .is_some_and(|value| value == expected)
}

fn created(to: &str, from: &str, body: &str) -> Response {
    let sid = crate::provider::new_message_sid();
    let now = chrono::Utc::now().to_rfc2822();
    let resource = json!({
        "sid": sid, "account_sid": ACCOUNT_SID, "to": to, "from": from, "body": body,
        "status": "queued", "num_segments": "1", "num_media": "0",
        "direction": "outbound-api", "api_version": "2010-04-01",
        "date_created": now, "date_updated": now, "date_sent": null,
        "error_code": null, "error_message": null, "price": null, "price_unit": null,
        "messaging_service_sid": null,
        "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json"),
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json")
        },
    });
    (StatusCode::CREATED, Json(resource)).into_response()
}

fn error(status: StatusCode, code: i64, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            seconds.to_string().parse().expect("digits"),
        );
    }
    response
}
