//! Pacing: a smooth send rate per provider account, shared by every replica,
//! that backs off when the provider throttles us.
//!
//! The budget is GCRA: each send takes the next slot of a schedule whose slots
//! are `1 / rate` apart. Slots are reserved from the database in chunks of a
//! tenth of a second, so replicas on one database interleave their chunks and
//! together never exceed the rate. On a 429 the pacer drops to the rate the
//! provider actually accepted over the last second (and waits out any
//! `Retry-After`), then climbs back by 2% of the configured rate per second.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt};

use crate::provider::{Accepted, BoxError, ProviderError, SmsRequest};
use crate::{domain::outcome::Class, store::Store};

/// Share of the configured rate regained per second after a throttle.
const RECOVERY_PER_SECOND: f64 = 0.02;
/// The rate never drops below this share of the configured one.
const FLOOR: f64 = 0.02;
/// Throttles closer together than this count as one.
const DECREASE_SPACING_US: i64 = 250_000;
/// Slots reserved per trip to the database, in seconds of traffic.
const CHUNK_SECONDS: f64 = 0.1;

/// The send was never started: the engine is shutting down, or the message's
/// campaign stopped running while it waited for its slot.
#[derive(Debug, thiserror::Error)]
#[error("send not started")]
pub struct NotStarted;

/// Decides, once a send's slot has come, whether it may still go out.
pub type Admission = Arc<dyn Fn(&SmsRequest) -> bool + Send + Sync>;

/// What the pacer reports about itself.
#[derive(Debug, Clone, Copy)]
pub struct PacerStats {
    pub configured_rate: f64,
    pub current_rate: f64,
    /// Microseconds since the epoch; in the past when not throttled.
    pub throttled_until_us: i64,
    pub throttle_events: u64,
    pub accepted: u64,
}

#[derive(Debug)]
struct State {
    current_rate: f64,
    interval_us: i64,
    next_slot_us: i64,
    remaining: u32,
    throttled_until_us: i64,
    last_decrease_us: i64,
    last_adjust_us: i64,
    throttle_events: u64,
    accepted: u64,
    /// Acceptances per 100 ms, for the last second.
    window: [u64; 10],
    window_tick: i64,
    /// Since when acceptances have been flowing without a pause of a second
    /// or more; the window only speaks for the time it covers.
    flowing_since_us: i64,
    last_accept_us: i64,
}

/// Paces one provider account.
#[derive(Debug)]
pub struct Pacer {
    provider: String,
    account: String,
    /// Provider call duration, smoothed, in microseconds (pacing wait excluded).
    latency_us: std::sync::atomic::AtomicU64,
    configured_rate: f64,
    store: Store,
    shutdown: CancellationToken,
    state: Mutex<State>,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Pacer {
    pub fn new(
        provider: String,
        account: String,
        rate: f64,
        store: Store,
        shutdown: CancellationToken,
    ) -> Self {
        let now = now_us();
        Self {
            provider,
            account,
            latency_us: std::sync::atomic::AtomicU64::new(0),
            configured_rate: rate,
            store,
            shutdown,
            state: Mutex::new(State {
                current_rate: rate,
                interval_us: interval(rate),
                next_slot_us: 0,
                remaining: 0,
                throttled_until_us: 0,
                last_decrease_us: 0,
                last_adjust_us: now,
                throttle_events: 0,
                accepted: 0,
                window: [0; 10],
                window_tick: now / 100_000,
                flowing_since_us: 0,
                last_accept_us: 0,
            }),
        }
    }

    /// Waits for this send's slot. Fails with [`NotStarted`] if the engine
    /// begins shutting down first.
    pub async fn acquire(&self) -> Result<(), NotStarted> {
        let slot = tokio::select! {
            slot = self.take_slot() => slot,
            () = self.shutdown.cancelled() => return Err(NotStarted),
        };
        let wait = slot - now_us();
        if wait > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_micros(wait as u64)) => {}
                () = self.shutdown.cancelled() => return Err(NotStarted),
            }
        }
        Ok(())
    }

    async fn take_slot(&self) -> i64 {
        let mut state = self.state.lock().await;
        let now = now_us();
        state.recover(now, self.configured_rate);

        // Slots whose time passed long ago are given up, not spent in a
        // burst: the budget never holds more than one chunk of credit.
        let stale_before = now - (CHUNK_SECONDS * 1e6) as i64;
        if state.remaining > 0 && state.next_slot_us < stale_before {
            state.remaining = 0;
        }
        if state.remaining == 0 {
            let start_at = now.max(state.throttled_until_us);
            let chunk = ((state.current_rate * CHUNK_SECONDS) as u32).max(1);
            let interval_us = interval(state.current_rate);
            let first = loop {
                match self
                    .store
                    .reserve_slots(&self.account, chunk, interval_us, start_at)
                    .await
                {
                    Ok(first) => break first,
                    Err(error) => {
                        tracing::warn!(error = %error, "reserving send slots failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            state.next_slot_us = first;
            state.remaining = chunk;
            state.interval_us = interval_us;
        }

        let slot = state.next_slot_us;
        state.next_slot_us += state.interval_us;
        state.remaining -= 1;
        slot
    }

    /// Learns from a provider call that took `elapsed`: counts acceptances,
    /// slows down on throttles, tracks latency.
    pub async fn observe(&self, result: &Result<Accepted, BoxError>, elapsed: Duration) {
        self.observe_latency(elapsed);
        metrics::histogram!("broadside_provider_request_seconds", "provider" => self.provider.clone())
            .record(elapsed.as_secs_f64());
        let mut state = self.state.lock().await;
        let now = now_us();
        match result {
            Ok(_) => state.count_accepted(now),
            Err(error) => {
                if let Some(ProviderError::Refused {
                    class: Class::RateLimited,
                    retry_after,
                    ..
                }) = error.downcast_ref::<ProviderError>()
                {
                    state.throttle(now, *retry_after, self.configured_rate);
                    metrics::counter!("broadside_throttle_events_total").increment(1);
                }
            }
        }
        metrics::gauge!("broadside_pacing_rate").set(state.current_rate);
    }

    pub async fn stats(&self) -> PacerStats {
        let mut state = self.state.lock().await;
        state.recover(now_us(), self.configured_rate);
        PacerStats {
            configured_rate: self.configured_rate,
            current_rate: state.current_rate,
            throttled_until_us: state.throttled_until_us,
            throttle_events: state.throttle_events,
            accepted: state.accepted,
        }
    }

    fn observe_latency(&self, elapsed: Duration) {
        use std::sync::atomic::Ordering;
        let sample = elapsed.as_micros() as u64;
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    (old * 9 + sample) / 10
                })
            });
    }

    /// The provider's smoothed call duration, pacing wait excluded.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The rate the pacer sends at now.
    pub async fn current_rate(&self) -> f64 {
        self.state.lock().await.current_rate
    }
}

impl State {
    fn count_accepted(&mut self, now: i64) {
        if now - self.last_accept_us > 1_000_000 {
            self.flowing_since_us = now;
        }
        self.last_accept_us = now;
        self.roll_window(now);
        self.window[(self.window_tick % 10) as usize] += 1;
        self.accepted += 1;
    }

    fn roll_window(&mut self, now: i64) {
        let tick = now / 100_000;
        let steps = (tick - self.window_tick).clamp(0, 10);
        for step in 1..=steps {
            self.window[((self.window_tick + step) % 10) as usize] = 0;
        }
        self.window_tick = self.window_tick.max(tick);
    }

    fn throttle(&mut self, now: i64, retry_after: Option<Duration>, configured: f64) {
        self.throttle_events += 1;
        if let Some(wait) = retry_after {
            let until = now + wait.as_micros() as i64;
            self.throttled_until_us = self.throttled_until_us.max(until);
            self.remaining = 0;
        }
        if now - self.last_decrease_us < DECREASE_SPACING_US {
            return;
        }
        // The provider's real limit is about what it accepted lately. Drop
        // to that, by at least 10% and at most half at a time.
        self.roll_window(now);
        let accepted: u64 = self.window.iter().sum();
        let covered = ((now - self.flowing_since_us) as f64 / 1e6).clamp(0.1, 1.0);
        let observed = accepted as f64 / covered;
        let floor = (configured * FLOOR).max(1.0).min(configured);
        let next = observed
            .clamp(self.current_rate * 0.5, self.current_rate * 0.9)
            .max(floor);
        self.current_rate = next;
        self.last_decrease_us = now;
        self.last_adjust_us = now;
        // Slots already reserved (a tenth of a second at most) are still used:
        // they are spent in the shared budget, and giving them up would idle
        // the provider for that long after every throttle.
    }

    fn recover(&mut self, now: i64, configured: f64) {
        if now < self.throttled_until_us || self.current_rate >= configured {
            self.last_adjust_us = now;
            return;
        }
        let elapsed = (now - self.last_adjust_us) as f64 / 1e6;
        self.current_rate =
            (self.current_rate + configured * RECOVERY_PER_SECOND * elapsed).min(configured);
        self.last_adjust_us = now;
    }
}

fn interval(rate: f64) -> i64 {
    ((1e6 / rate) as i64).max(1)
}

/// The tower layer that puts a [`Pacer`] in front of a provider.
#[derive(Clone)]
pub struct PacingLayer {
    pacer: Arc<Pacer>,
    admission: Admission,
}

impl PacingLayer {
    /// Paces calls with `pacer`; a call whose slot comes when `admission`
    /// refuses it fails with [`NotStarted`] instead of reaching the provider.
    pub fn new(pacer: Arc<Pacer>, admission: Admission) -> Self {
        Self { pacer, admission }
    }
}

impl<S> Layer<S> for PacingLayer {
    type Service = Pacing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pacing {
            inner,
            pacer: self.pacer.clone(),
            admission: self.admission.clone(),
        }
    }
}

/// A provider stack whose calls wait for their slot.
#[derive(Clone)]
pub struct Pacing<S> {
    inner: S,
    pacer: Arc<Pacer>,
    admission: Admission,
}

impl<S> Service<SmsRequest> for Pacing<S>
where
    S: Service<SmsRequest, Response = Accepted> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Accepted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Accepted, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call, after the slot is reached.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SmsRequest) -> Self::Future {
        let inner = self.inner.clone();
        let pacer = self.pacer.clone();
        let admission = self.admission.clone();
        Box::pin(async move {
            pacer.acquire().await?;
            if !admission(&request) {
                return Err(NotStarted.into());
            }
            let started = std::time::Instant::now();
            let result = inner.oneshot(request).await.map_err(Into::into);
            pacer.observe(&result, started.elapsed()).await;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_at(rate: f64) -> State {
        let mut state = state(1000.0);
        state.current_rate = rate;
        state
    }

    fn state(rate: f64) -> State {
        State {
            current_rate: rate,
            interval_us: interval(rate),
            next_slot_us: 0,
            remaining: 0,
            throttled_until_us: 0,
            last_decrease_us: 0,
            last_adjust_us: 0,
            throttle_events: 0,
            accepted: 0,
            window: [0; 10],
            window_tick: 0,
            flowing_since_us: 0,
            last_accept_us: 0,
        }
    }

    #[test]
    fn a_throttle_drops_to_the_rate_the_provider_accepted() {
        let mut state = state(1000.0);
        let now = 10_000_000;
        for i in 0..600 {
            state.count_accepted(now - 1_900_000 + i * 3_000);
        }
        // 600 accepted over 1.8 s of flow, about 333 in the last second.
        state.throttle(now, None, 1000.0);
        assert!(
            (state.current_rate - 500.0).abs() < 1.0,
            "halves at most: {}",
            state.current_rate
        );
        assert_eq!(state.throttle_events, 1);

        let mut state = state_at(800.0);
        for i in 0..700 {
            state.count_accepted(now - 1_000_000 + i * 1_400);
        }
        state.throttle(now, None, 1000.0);
        // About 700/s accepted (the window holds 0.9 to 1 s of it), and a
        // decrease is at least 10%.
        assert!(
            (600.0..=720.0).contains(&state.current_rate),
            "{}",
            state.current_rate
        );
    }

    #[test]
    fn a_throttle_early_in_a_run_reads_the_window_for_the_time_it_covers() {
        let mut state = state(1000.0);
        let now = 10_000_000;
        // Only 100 ms of flow: 55 accepted is 550/s, not 55/s.
        for i in 0..55 {
            state.count_accepted(now - 100_000 + i * 1_800);
        }
        state.throttle(now, None, 1000.0);
        assert!(
            (state.current_rate - 550.0).abs() < 60.0,
            "{}",
            state.current_rate
        );
    }

    #[test]
    fn throttles_in_quick_succession_count_once() {
        let mut state = state(1000.0);
        state.throttle(10_000_000, None, 1000.0);
        let after_first = state.current_rate;
        state.throttle(10_100_000, None, 1000.0);
        assert_eq!(state.current_rate, after_first);
        assert_eq!(state.throttle_events, 2);
    }

    #[test]
    fn the_rate_never_falls_below_its_floor() {
        let mut state = state_at(30.0);
        state.throttle(10_000_000, None, 1000.0);
        assert_eq!(state.current_rate, 20.0);
    }

    #[test]
    fn retry_after_holds_sending_until_it_passes() {
        let mut state = state(100.0);
        state.throttle(10_000_000, Some(Duration::from_secs(2)), 100.0);
        assert_eq!(state.throttled_until_us, 12_000_000);
        let throttled = state.current_rate;
        state.recover(11_000_000, 100.0);
        assert_eq!(state.current_rate, throttled, "no recovery while throttled");
    }

    #[test]
    fn the_rate_recovers_gradually_to_the_configured_one() {
        let mut state = state(1000.0);
        state.current_rate = 500.0;
        state.last_adjust_us = 0;
        state.recover(1_000_000, 1000.0);
        assert_eq!(state.current_rate, 520.0);
        state.recover(100_000_000, 1000.0);
        assert_eq!(state.current_rate, 1000.0);
    }
}
