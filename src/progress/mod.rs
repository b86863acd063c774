//! Live progress: one feed per watched campaign, shared by all its watchers.
//!
//! The recorder calls [`ProgressHub::notify`] after each commit (and, on
//! Postgres, [`listener`] does the same for commits made by other replicas).
//! A campaign's feed then re-reads its row at most once per watch interval and
//! publishes the snapshot on a `watch` channel that every watcher of that
//! campaign reads. Database reads therefore grow with the number of watched
//! campaigns, never with the number of watchers. A feed ends when its last
//! watcher leaves or the campaign reaches a terminal state.

pub mod listener;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::{Millis, time::now_millis};
use crate::store::{
    Store, StoreError,
    campaigns::{counts_of, parse_state},
    entity::campaign,
};

/// How long a feed waits for a notification before re-reading anyway, so a
/// lost notification delays an update instead of losing it.
const FALLBACK_READ: Duration = Duration::from_secs(2);
/// The window the send rate is averaged over.
const RATE_WINDOW_MS: Millis = 5_000;

/// One committed state of a campaign, as read by its feed.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub campaign: campaign::Model,
    /// When the row was read.
    pub observed_at: Millis,
    /// Messages processed per second over the last few seconds.
    pub rate_per_second: f64,
}

impl Snapshot {
    pub fn is_terminal(&self) -> bool {
        parse_state(&self.campaign.state).is_terminal()
    }
}

type Feed = Arc<watch::Sender<Option<Snapshot>>>;

struct FeedEntry {
    sender: Feed,
    changed: Arc<Notify>,
}

/// The registry of feeds. Cloning shares it.
#[derive(Clone)]
pub struct ProgressHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    interval: Duration,
    feeds: Mutex<HashMap<String, FeedEntry>>,
    shutdown: CancellationToken,
    reads: AtomicU64,
}

impl ProgressHub {
    pub fn new(store: Store, interval: Duration, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                interval,
                feeds: Mutex::new(HashMap::new()),
                shutdown,
                reads: AtomicU64::new(0),
            }),
        }
    }

    /// Marks campaigns as changed; feeds that exist re-read them soon.
    pub fn notify<'a>(&self, campaign_ids: impl IntoIterator<Item = &'a str>) {
        let feeds = self.inner.feeds.lock().expect("feeds lock");
        for id in campaign_ids {
            if let Some(feed) = feeds.get(id) {
                feed.changed.notify_one();
            }
        }
    }

    /// A receiver of the campaign's snapshots, starting its feed if needed.
    /// The caller has already checked that the campaign exists for its tenant.
    pub fn subscribe(&self, campaign_id: &str) -> watch::Receiver<Option<Snapshot>> {
        let mut feeds = self.inner.feeds.lock().expect("feeds lock");
        if let Some(feed) = feeds.get(campaign_id) {
            return feed.sender.subscribe();
        }
        let (sender, receiver) = watch::channel(None);
        let sender = Arc::new(sender);
        let changed = Arc::new(Notify::new());
        feeds.insert(
            campaign_id.to_owned(),
            FeedEntry {
                sender: sender.clone(),
                changed: changed.clone(),
            },
        );
        tokio::spawn(
            self.clone()
                .run_feed(campaign_id.to_owned(), sender, changed),
        );
        receiver
    }

    /// Campaign rows read by feeds since start.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// Feeds currently running.
    pub fn feeds(&self) -> usize {
        self.inner.feeds.lock().expect("feeds lock").len()
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    async fn run_feed(self, id: String, sender: Feed, changed: Arc<Notify>) {
        let mut history: VecDeque<(Millis, i64)> = VecDeque::new();
        loop {
            let read_at = tokio::time::Instant::now();
            match self.read(&id, &mut history).await {
                Ok(snapshot) => {
                    let terminal = snapshot.is_terminal();
                    sender.send_replace(Some(snapshot));
                    if terminal {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(campaign_id = %id, error = %error, "progress read failed")
                }
            }

            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(FALLBACK_READ) => {}
                () = sender.closed() => {}
                () = self.inner.shutdown.cancelled() => break,
            }
            if self.retire_if_unwatched(&id, &sender) {
                return;
            }
            // Coalesce: at most one read per interval.
            tokio::time::sleep_until(read_at + self.inner.interval).await;
        }
        self.retire(&id);
    }

    async fn read(
        &self,
        id: &str,
        history: &mut VecDeque<(Millis, i64)>,
    ) -> Result<Snapshot, StoreError> {
        let campaign = self.inner.store.campaign_by_id(id).await?;
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let observed_at = now_millis();
        let processed = counts_of(&campaign).processed();

        history.push_back((observed_at, processed));
        while history.len() > 2 && history[0].0 < observed_at - RATE_WINDOW_MS {
            history.pop_front();
        }
        let (first_at, first_processed) = history[0];
        let rate_per_second = if observed_at > first_at {
            (processed - first_processed) as f64 * 1000.0 / (observed_at - first_at) as f64
        } else {
            0.0
        };
        Ok(Snapshot {
            campaign,
            observed_at,
            rate_per_second,
        })
    }

    /// Removes the feed if nobody watches it; decided under the registry lock
    /// so a watcher arriving now either gets this feed or starts a new one.
    fn retire_if_unwatched(&self, id: &str, sender: &Feed) -> bool {
        let mut feeds = self.inner.feeds.lock().expect("feeds lock");
        if sender.receiver_count() == 0 {
            feeds.remove(id);
            return true;
        }
        false
    }

    fn retire(&self, id: &str) {
        self.inner.feeds.lock().expect("feeds lock").remove(id);
    }
}
