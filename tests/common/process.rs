//! The real `broadside` binary as a child process, for tests of what only a
//! whole process shows: signals, crashes, telemetry.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use broadside::{
    fake_twilio::{self, FakeTwilio},
    pb::{self, campaign_service_client::CampaignServiceClient},
};
use tokio::process::{Child, Command as AsyncCommand};
use tonic::transport::Channel;

use super::{TestDb, recipients};

pub const BINARY: &str = env!("CARGO_BIN_EXE_broadside");

/// The real server as a child process.
pub struct Process {
    child: Child,
    pub addr: String,
}

impl Process {
    pub async fn start(db: &TestDb, fake: &FakeTwilio, extra: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = AsyncCommand::new(BINARY);
        command
            .arg("serve")
            .env("BROADSIDE_LISTEN", &addr)
            .env("BROADSIDE_DATABASE_URL", &db.url)
            .env("BROADSIDE_PROVIDER", "twilio")
            .env("TWILIO_ACCOUNT_SID", fake_twilio::ACCOUNT_SID)
            .env("TWILIO_AUTH_TOKEN", fake_twilio::AUTH_TOKEN)
            .env("TWILIO_API_BASE", fake.base_url())
            .env("BROADSIDE_METRICS_LISTEN", "off")
            .env("BROADSIDE_QUEUE_BACKOFF_MS", "50")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn broadside");
        let process = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while process.channel().await.is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
    }

    pub async fn client(&self) -> CampaignServiceClient<Channel> {
        CampaignServiceClient::new(self.channel().await.unwrap())
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns how long that took.
    pub async fn wait(mut self, within: Duration) -> Duration {
        let started = Instant::now();
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exited in time")
            .expect("wait");
        started.elapsed()
    }
}

pub async fn create_started(client: &mut CampaignServiceClient<Channel>, n: usize) -> String {
    client
        .create_campaign(pb::CreateCampaignRequest {
            name: "process".into(),
            body: "Hello {{name}}".into(),
            sender: "Broadside".into(),
            recipients: recipients(n),
            start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap()
        .id
}

pub async fn wait_completed(client: &mut CampaignServiceClient<Channel>, id: &str) -> pb::Campaign {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let campaign = client
            .get_campaign(pb::GetCampaignRequest {
                campaign_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap();
        if campaign.state == pb::CampaignState::Completed as i32 {
            return campaign;
        }
        assert!(Instant::now() < deadline, "not completed: {campaign:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
