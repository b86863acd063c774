//! Test harness: a fresh database per test, a real server on port 0, and the
//! generated clients.
//!
//! Tests run on SQLite, or on Postgres when `BROADSIDE_TEST_DATABASE_URL`
//! names a server (each test then creates and drops its own database).

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod process;

use std::{collections::HashMap, time::Duration};

use broadside::{
    config::{Config, ProviderConfig},
    domain::{Delivery, RetryPolicy},
    fake_twilio::{self, FakeTwilio},
    pb::{
        self, campaign_service_client::CampaignServiceClient,
        dispatch_service_client::DispatchServiceClient,
    },
    provider::twilio::TwilioConfig,
    server::Server,
};
use tonic::transport::Channel;

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn new() -> Self {
        match std::env::var("BROADSIDE_TEST_DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => Self::postgres(admin).await,
            _ => Self::sqlite(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        Self {
            url,
            _dir: Some(dir),
            postgres: None,
        }
    }

    async fn postgres(admin: String) -> Self {
        use sea_orm::ConnectionTrait;
        let name = format!("broadside_test_{}", uuid::Uuid::now_v7().simple());
        let db = sea_orm::Database::connect(&admin)
            .await
            .expect("connect to admin db");
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        db.close().await.ok();
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .expect("URL with a database");
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
            postgres: Some((admin, name)),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside async; a short-lived runtime on its own thread does it.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sea_orm::ConnectionTrait;
                if let Ok(db) = sea_orm::Database::connect(&admin).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = db.close().await;
                }
            });
        })
        .join();
    }
}

/// A configuration for tests: port 0, no metrics, fast loops, short backoff.
pub fn test_config(db: &TestDb) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        metrics_listen: None,
        rate_limit: 100_000.0,
        retry: RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            delivery: Delivery::AtLeastOnce,
        },
        watch_interval: Duration::from_millis(50),
        poll_interval: Duration::from_millis(20),
        housekeeping_interval: Duration::from_millis(100),
        shutdown_timeout: Duration::from_secs(10),
        provider_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Points a configuration at a fake Twilio.
pub fn with_twilio(mut config: Config, fake: &FakeTwilio) -> Config {
    config.provider = ProviderConfig::Twilio(TwilioConfig {
        account_sid: fake_twilio::ACCOUNT_SID.into(),
        auth_token: fake_twilio::AUTH_TOKEN.to_string().into(),
        api_base: fake.base_url(),
        connect_timeout: Duration::from_secs(1),
    });
    config
}

/// A running server and clients connected to it.
pub struct TestServer {
    pub server: Server,
    pub campaigns: CampaignServiceClient<Channel>,
    pub dispatch: DispatchServiceClient<Channel>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = Server::start(config).await.expect("server starts");
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to server");
        Self {
            server,
            campaigns: CampaignServiceClient::new(channel.clone()),
            dispatch: DispatchServiceClient::new(channel),
        }
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("clean shutdown");
    }

    pub async fn campaign(&mut self, id: &str) -> pb::Campaign {
        self.campaigns
            .get_campaign(pb::GetCampaignRequest {
                campaign_id: id.into(),
            })
            .await
            .expect("get campaign")
            .into_inner()
            .campaign
            .unwrap()
    }

    /// Polls until the campaign is in `state`, failing after `within`.
    pub async fn wait_for_state(
        &mut self,
        id: &str,
        state: pb::CampaignState,
        within: Duration,
    ) -> pb::Campaign {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let campaign = self.campaign(id).await;
            if campaign.state == state as i32 {
                return campaign;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "campaign still {:?} after {within:?}, counts {:?}",
                pb::CampaignState::try_from(campaign.state),
                campaign.counts
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn status(&mut self, id: &str) -> pb::GetCampaignStatusResponse {
        self.campaigns
            .get_campaign_status(pb::GetCampaignStatusRequest {
                campaign_id: id.into(),
            })
            .await
            .expect("status")
            .into_inner()
    }

    /// Polls until no message of the campaign is unfinished.
    pub async fn wait_until_settled(
        &mut self,
        id: &str,
        within: Duration,
    ) -> pb::GetCampaignStatusResponse {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.status(id).await;
            if status.counts.as_ref().unwrap().queued == 0 {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still unsettled: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until nothing of the campaign is in flight: its counts hold still
    /// for a few polls.
    pub async fn wait_until_idle(&mut self, id: &str, within: Duration) -> pb::Campaign {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = self.campaign(id).await;
        let mut still = 0;
        while still < 8 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never idle: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let current = self.campaign(id).await;
            still = if current.counts == last.counts {
                still + 1
            } else {
                0
            };
            last = current;
        }
        last
    }

    /// Creates a campaign of the given recipients, started or not.
    pub async fn create(&mut self, recipients: Vec<pb::Recipient>, start: bool) -> pb::Campaign {
        self.campaigns
            .create_campaign(pb::CreateCampaignRequest {
                name: "test".into(),
                body: "Hello {{name}}".into(),
                sender: "Broadside".into(),
                recipients,
                start,
                ..Default::default()
            })
            .await
            .expect("create campaign")
            .into_inner()
            .campaign
            .unwrap()
    }

    /// Every message of a campaign, through ListMessages.
    pub async fn messages(&mut self, campaign_id: &str) -> Vec<pb::Message> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .dispatch
                .list_messages(pb::ListMessagesRequest {
                    campaign_id: campaign_id.into(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("list messages")
                .into_inner();
            all.extend(page.messages);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }
}

/// A distinct valid US number for index `i` (+1 415 2xx xxxx).
pub fn phone(i: usize) -> String {
    format!("+1415{:07}", 2_000_000 + i)
}

/// `n` recipients with distinct numbers and a `name` variable.
pub fn recipients(n: usize) -> Vec<pb::Recipient> {
    (0..n)
        .map(|i| recipient(&phone(i), &format!("R{i}")))
        .collect()
}

pub fn recipient(phone: &str, name: &str) -> pb::Recipient {
    pb::Recipient {
        phone: phone.into(),
        variables: HashMap::from([("name".to_string(), name.to_string())]),
    }
}

/// The body `Hello {{name}}` renders to for recipient `i`.
pub fn body(i: usize) -> String {
    format!("Hello R{i}")
}

/// Counts as a compact tuple: (total, queued, sent, failed, processed, cancelled).
pub fn counts(c: &pb::CampaignCounts) -> (i64, i64, i64, i64, i64, i64) {
    (
        c.total,
        c.queued,
        c.sent,
        c.failed,
        c.processed,
        c.cancelled,
    )
}
