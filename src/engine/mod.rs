//! The dispatch engine: claims due messages, sends them through the provider
//! stack, records their outcomes, and keeps the queue healthy.
//!
//! Four kinds of task run under one [`TaskTracker`]:
//! - the dispatcher claims batches fairly (transactional sends first, then an
//!   equal share per running campaign) while fewer messages are in flight
//!   than about half a second of the current rate, and spawns a send for each;
//! - each send waits for its pacing slot, calls the provider, and turns the
//!   answer into a [`Disposition`] with the retry policy;
//! - the recorder writes dispositions in batches, message rows and campaign
//!   counters in one transaction, then tells watchers;
//! - the housekeeper starts scheduled campaigns and rescues expired leases.
//!
//! A send whose campaign stopped running (paused, cancelled) while it waited
//! for its pacing slot never reaches the provider: it is handed back to the
//! queue with its attempt undone. Shutdown does the same for every send not
//! yet started, and lets those already past their slot finish and be recorded.

pub mod pacing;
mod stack;

use std::{
    collections::HashSet,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;
use tracing::Instrument;

pub use pacing::{Admission, Pacer, PacerStats};
pub use stack::{ProviderStack, build_stack};

use crate::domain::{Disposition, RetryPolicy, time::now_millis};
use crate::progress::ProgressHub;
use crate::provider::{SmsRequest, outcome_of};
use crate::store::{
    Store,
    queue::{Claimed, Recorded},
};

/// How often the queue depth gauge is refreshed.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(5);
/// Outcomes recorded per transaction, at most.
const RECORD_BATCH: usize = 1000;
/// How long the recorder waits for more outcomes before writing a small batch:
/// at low rates outcomes trickle in, and a transaction per handful would cost
/// more than the sends.
const RECORD_GATHER: Duration = Duration::from_millis(20);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This replica's lease owner id; unique per process.
    pub owner: String,
    /// Provider name recorded on messages, e.g. `twilio`.
    pub provider: String,
    /// Messages per second for the provider account, across replicas.
    pub rate: f64,
    pub policy: RetryPolicy,
    /// How long a claim is held before another worker may rescue it.
    pub lease: Duration,
    /// The most messages in flight at once, whatever the rate.
    pub max_in_flight: usize,
    /// The most messages claimed per query.
    pub claim_batch: usize,
    /// How often the dispatcher looks for due work when nothing wakes it.
    pub poll_interval: Duration,
    /// How often scheduled campaigns and expired leases are checked.
    pub housekeeping_interval: Duration,
}

/// What the engine reports about its provider.
#[derive(Debug, Clone)]
pub struct DispatchStats {
    pub provider: String,
    pub pacer: PacerStats,
    pub in_flight: i64,
    pub queue_depth: i64,
}

/// The campaigns this replica last saw RUNNING, refreshed before every claim
/// and at least once per poll interval; a send whose campaign left the set is not started.
#[derive(Debug, Clone, Default)]
pub struct RunningCampaigns(Arc<RwLock<HashSet<String>>>);

impl RunningCampaigns {
    /// The admission check for the pacing layer: transactional sends always
    /// go; campaign sends only while their campaign runs.
    pub fn admission(&self) -> Admission {
        let running = self.0.clone();
        Arc::new(move |request| match &request.campaign_id {
            None => true,
            Some(id) => running.read().expect("running lock").contains(id),
        })
    }

    fn replace(&self, ids: &[String]) {
        let mut running = self.0.write().expect("running lock");
        running.clear();
        running.extend(ids.iter().cloned());
    }
}

/// A running engine. Cloning shares it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: EngineConfig,
    stack: ProviderStack,
    pacer: Arc<Pacer>,
    hub: ProgressHub,
    /// Set when new work may be due (a start, a resume, a send).
    wake: Notify,
    /// Set when recorded outcomes free room for more claims.
    freed: Notify,
    in_flight: AtomicI64,
    running: RunningCampaigns,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Engine {
    /// Starts the engine's tasks. They stop when `shutdown` is cancelled;
    /// [`Engine::drain`] then waits for them.
    pub fn start(
        store: Store,
        config: EngineConfig,
        stack: ProviderStack,
        pacer: Arc<Pacer>,
        running: RunningCampaigns,
        hub: ProgressHub,
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner {
            store,
            config,
            stack,
            pacer,
            hub,
            wake: Notify::new(),
            freed: Notify::new(),
            in_flight: AtomicI64::new(0),
            running,
            shutdown,
            tracker: TaskTracker::new(),
        });
        let (outcomes, received) = mpsc::channel(RECORD_BATCH * 4);
        // No span wraps these loops: they live as long as the process, so
        // each batch gets a span of its own instead.
        inner.tracker.spawn(inner.clone().dispatch(outcomes));
        inner.tracker.spawn(inner.clone().record(received));
        inner.tracker.spawn(inner.clone().housekeep());
        Self { inner }
    }

    /// Tells the dispatcher that work may be due now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub async fn stats(&self) -> Result<DispatchStats, crate::store::StoreError> {
        Ok(DispatchStats {
            provider: self.inner.config.provider.clone(),
            pacer: self.inner.pacer.stats().await,
            in_flight: self.inner.in_flight.load(Ordering::Relaxed),
            queue_depth: self.inner.store.queue_depth().await?,
        })
    }

    /// After the shutdown token is cancelled: waits until every send has
    /// finished or been handed back, and every outcome is recorded.
    pub async fn drain(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    /// Claims while there is room, spawning a send per claimed message.
    async fn dispatch(self: Arc<Self>, outcomes: mpsc::Sender<Recorded>) {
        let mut rotation = 0;
        let mut refreshed = tokio::time::Instant::now();
        while !self.shutdown.is_cancelled() {
            let room = self.target_in_flight().await - self.in_flight.load(Ordering::Acquire);
            let claimed = match self.claim_round(room, &mut rotation, &mut refreshed).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(error = %error, "claim failed; will retry");
                    Vec::new()
                }
            };

            if claimed.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = self.freed.notified() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = self.shutdown.cancelled() => {}
                }
                continue;
            }

            // One span per batch, open until its last send is handed over.
            let batch = tracing::info_span!("dispatch_batch", size = claimed.len());
            self.in_flight
                .fetch_add(claimed.len() as i64, Ordering::AcqRel);
            metrics::gauge!("broadside_in_flight")
                .set(self.in_flight.load(Ordering::Relaxed) as f64);
            for message in claimed {
                let send = self.clone().send(message, outcomes.clone());
                self.tracker.spawn(send.instrument(batch.clone()));
            }
        }
    }

    /// About half a second of sends at the current rate, plus what the
    /// provider's latency holds in flight: enough to keep the provider busy,
    /// few enough that a transactional send claimed next waits behind no more
    /// than that.
    async fn target_in_flight(&self) -> i64 {
        let rate = self.pacer.current_rate().await;
        let latency = self.pacer.latency().as_secs_f64();
        let target = rate * (0.5 + 1.5 * latency) + 4.0;
        (target as i64).min(self.config.max_in_flight as i64)
    }

    /// Refreshes the running set, then claims if there is room.
    async fn claim_round(
        &self,
        room: i64,
        rotation: &mut usize,
        refreshed: &mut tokio::time::Instant,
    ) -> Result<Vec<Claimed>, crate::store::StoreError> {
        // With no room, the running set is still refreshed once per poll
        // interval, so sends of a paused campaign stop within that.
        if room <= 0 && refreshed.elapsed() < self.config.poll_interval {
            return Ok(Vec::new());
        }
        let running = self.store.running_campaigns().await?;
        self.running.replace(&running);
        *refreshed = tokio::time::Instant::now();
        if room <= 0 {
            return Ok(Vec::new());
        }
        let want = (room as usize).min(self.config.claim_batch);
        self.claim_fair(want, running, rotation).await
    }

    /// Transactional sends first; then an equal share for each running
    /// campaign, starting with a different one each time, with what a small
    /// campaign leaves over going to the others.
    async fn claim_fair(
        &self,
        want: usize,
        running: Vec<String>,
        rotation: &mut usize,
    ) -> Result<Vec<Claimed>, crate::store::StoreError> {
        let now = now_millis();
        let lease_until = now + self.config.lease.as_millis() as i64;
        let owner = &self.config.owner;

        let mut claimed = self
            .store
            .claim(owner, None, want as u64, lease_until, now)
            .await?;
        let mut active = if claimed.len() < want {
            running
        } else {
            Vec::new()
        };
        if !active.is_empty() {
            let turn = *rotation % active.len();
            active.rotate_left(turn);
            *rotation = rotation.wrapping_add(1);
        }

        while claimed.len() < want && !active.is_empty() {
            let remaining = want - claimed.len();
            let share = remaining.div_ceil(active.len());
            let mut still_active = Vec::new();
            for campaign in active {
                let take = share.min(want - claimed.len());
                if take == 0 {
                    break;
                }
                let batch = self
                    .store
                    .claim(owner, Some(&campaign), take as u64, lease_until, now)
                    .await?;
                if batch.len() == take {
                    still_active.push(campaign);
                }
                claimed.extend(batch);
            }
            active = still_active;
        }
        Ok(claimed)
    }

    /// Sends one claimed message and hands its disposition to the recorder.
    async fn send(self: Arc<Self>, message: Claimed, outcomes: mpsc::Sender<Recorded>) {
        let request = SmsRequest {
            message_id: message.id.clone(),
            campaign_id: message.campaign_id,
            to: message.to_number,
            from: message.sender,
            body: message.body,
        };
        let result = self.stack.clone().oneshot(request).await;
        if let Err(error) = &result
            && error.is::<pacing::NotStarted>()
        {
            let unstarted = Recorded {
                id: message.id,
                disposition: None,
            };
            if outcomes.send(unstarted).await.is_err() {
                tracing::error!("recorder has stopped; the lease will return this message");
            }
            return;
        }

        let outcome = outcome_of(result);
        let attempts = u32::try_from(message.attempts).unwrap_or(u32::MAX);
        let disposition = self.config.policy.decide(attempts, outcome, now_millis());
        let label = match &disposition {
            Disposition::Sent { .. } => "sent",
            Disposition::Retry { .. } => "retried",
            Disposition::Failed { .. } => "failed",
        };
        metrics::counter!("broadside_messages_total", "outcome" => label, "provider" => self.config.provider.clone())
            .increment(1);
        tracing::debug!(message_id = %message.id, attempts, outcome = label, "send finished");

        let recorded = Recorded {
            id: message.id,
            disposition: Some(disposition),
        };
        if outcomes.send(recorded).await.is_err() {
            tracing::error!(
                "recorder has stopped; the lease will return this message to the queue"
            );
        }
    }

    /// Writes outcomes in batches until every sender is gone.
    async fn record(self: Arc<Self>, mut received: mpsc::Receiver<Recorded>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while received.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let deadline = tokio::time::Instant::now() + RECORD_GATHER;
            while batch.len() < RECORD_BATCH {
                let room = RECORD_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, received.recv_many(&mut batch, room)).await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            self.record_batch(&batch).await;
            self.in_flight
                .fetch_sub(batch.len() as i64, Ordering::AcqRel);
            metrics::gauge!("broadside_in_flight")
                .set(self.in_flight.load(Ordering::Relaxed) as f64);
            self.freed.notify_one();
            batch.clear();
        }
    }

    /// Records one batch, retrying until the database takes it: an outcome
    /// dropped here would send its message again once the lease expired.
    #[tracing::instrument(name = "record_batch", skip_all, fields(size = batch.len()))]
    async fn record_batch(&self, batch: &[Recorded]) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .store
                .record(
                    &self.config.owner,
                    &self.config.provider,
                    batch,
                    now_millis(),
                )
                .await
            {
                Ok(summary) => {
                    if summary.written < batch.len() as u64 {
                        tracing::warn!(
                            lost = batch.len() as u64 - summary.written,
                            "outcomes ignored: their lease had expired and was rescued"
                        );
                    }
                    self.hub
                        .notify(summary.campaigns.iter().map(String::as_str));
                    for campaign_id in summary.completed {
                        tracing::info!(campaign_id, "campaign completed");
                    }
                    return;
                }
                Err(error) => {
                    tracing::error!(error = %error, size = batch.len(), "recording outcomes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Starts scheduled campaigns and rescues expired leases, periodically.
    async fn housekeep(self: Arc<Self>) {
        let at_most_once = self.config.policy.delivery == crate::domain::Delivery::AtMostOnce;
        let mut depth_read_at: Option<tokio::time::Instant> = None;
        loop {
            let now = now_millis();
            match self.store.activate_scheduled(now).await {
                Ok(started) if !started.is_empty() => {
                    for campaign_id in &started {
                        tracing::info!(campaign_id, "scheduled campaign started");
                    }
                    self.hub.notify(started.iter().map(String::as_str));
                    self.wake.notify_one();
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "starting scheduled campaigns failed"),
            }
            // Counting the queue scans every waiting row, so the gauge is
            // refreshed every few seconds, not every tick.
            if depth_read_at.is_none_or(|at| at.elapsed() >= QUEUE_DEPTH_EVERY) {
                depth_read_at = Some(tokio::time::Instant::now());
                match self.store.queue_depth().await {
                    Ok(depth) => metrics::gauge!("broadside_queue_depth").set(depth as f64),
                    Err(error) => tracing::warn!(error = %error, "reading the queue depth failed"),
                }
            }
            match self.store.rescue_expired(now, at_most_once).await {
                Ok(0) => {}
                Ok(rescued) => {
                    tracing::warn!(rescued, "rescued messages whose lease expired");
                    self.wake.notify_one();
                }
                Err(error) => tracing::warn!(error = %error, "rescuing expired leases failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.housekeeping_interval) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}
