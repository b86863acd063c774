//! `broadside bench`: measures the real service end to end.
//!
//! It starts a loopback fake Twilio in this process and the real server as a
//! child process (so the server's own memory and CPU can be read from
//! `/proc`), loads a campaign through AddRecipients, optionally opens many
//! watch streams, runs the campaign to completion and prints what it saw.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::fake_twilio::{self, FakeConfig, FakeTwilio};
use crate::pb::{self, campaign_service_client::CampaignServiceClient};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Recipients in the campaign.
    #[arg(long, default_value_t = 100_000)]
    pub recipients: usize,
    /// Database: `sqlite` for a fresh temporary file, or a Postgres URL on
    /// whose server a fresh database is created (and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// The server's configured rate (messages per second); the default is
    /// high enough to be unthrottled.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub rate: f64,
    /// The fake provider's own limit, answered with 429 beyond it.
    #[arg(long)]
    pub provider_limit: Option<f64>,
    /// Concurrent WatchCampaign streams to hold open during the run.
    #[arg(long, default_value_t = 1)]
    pub watchers: usize,
    /// The server's watch interval, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub watch_interval_ms: u64,
    /// Recipients per AddRecipients message.
    #[arg(long, default_value_t = 5_000)]
    pub chunk: usize,
}

/// A child server process and where it listens.
struct ServerProcess {
    child: Child,
    pid: u32,
    addr: String,
    log: PathBuf,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.watchers == 0 {
        bail!("--watchers must be at least 1 (one watcher measures latency)");
    }
    let fake = FakeTwilio::start(FakeConfig {
        rate_limit: args.provider_limit,
        ..FakeConfig::default()
    })
    .await?;
    let scratch = tempfile::tempdir()?;
    let database = Database::create(&args.database, &scratch).await?;
    let result = measure(&args, &fake, &database, &scratch).await;
    database.drop_if_temporary().await;
    result
}

async fn measure(
    args: &BenchArgs,
    fake: &FakeTwilio,
    database: &Database,
    scratch: &tempfile::TempDir,
) -> anyhow::Result<()> {
    let mut server = spawn_server(args, fake, &database.url, scratch).await?;
    let channel = connect(&server.addr).await?;
    let mut campaigns = CampaignServiceClient::new(channel.clone());

    // Ingest.
    let campaign = campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "bench".into(),
            body: "Hello {{name}}, your code is {{code}}".into(),
            sender: "Broadside".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .campaign
        .context("campaign")?;
    let id = campaign.id.clone();
    let rss_before_ingest = rss_kib(server.pid);
    let started = Instant::now();
    let added = campaigns
        .add_recipients(recipient_chunks(id.clone(), args.recipients, args.chunk))
        .await?
        .into_inner();
    let ingest = started.elapsed();
    if added.accepted as usize != args.recipients {
        bail!(
            "ingested {} of {} recipients",
            added.accepted,
            args.recipients
        );
    }

    // Watchers, opened before the start so each sees the whole run.
    let rss_before_watchers = rss_kib(server.pid);
    let cpu_before_watchers = cpu_seconds(server.pid);
    let mut latency_watcher = CampaignServiceClient::new(channel.clone())
        .watch_campaign(pb::WatchCampaignRequest {
            campaign_id: id.clone(),
        })
        .await?
        .into_inner();
    let mut others = Vec::new();
    for _ in 1..args.watchers {
        let mut client = CampaignServiceClient::new(channel.clone());
        let stream = client
            .watch_campaign(pb::WatchCampaignRequest {
                campaign_id: id.clone(),
            })
            .await?
            .into_inner();
        others.push(tokio::spawn(drain_watch(stream)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_with_watchers = rss_kib(server.pid);

    // Dispatch.
    let started = Instant::now();
    campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: id.clone(),
        })
        .await?;
    let mut latencies_ms = Vec::new();
    let mut last = None;
    while let Some(update) = latency_watcher.next().await {
        let update = update?;
        // The first update was read before the start and waited in the
        // stream while watchers were opened: not a latency sample.
        if let Some(observed) = update.observed_at.as_ref().filter(|_| last.is_some()) {
            let observed_ms = observed.seconds * 1000 + i64::from(observed.nanos) / 1_000_000;
            latencies_ms.push((chrono::Utc::now().timestamp_millis() - observed_ms) as f64);
        }
        last = Some(update);
    }
    let dispatch = started.elapsed();
    let last = last.context("no watch update")?;
    if last.state != pb::CampaignState::Completed as i32 {
        bail!("campaign ended in state {}", last.state);
    }
    let mut finals = Vec::new();
    for watcher in others {
        finals.push(watcher.await??);
    }
    let same_final = finals
        .iter()
        .all(|counts| Some(counts) == last.counts.as_ref());
    let peak_kib = peak_rss_kib(server.pid);
    let cpu_during = cpu_seconds(server.pid) - cpu_before_watchers;
    let status = campaigns
        .get_campaign_status(pb::GetCampaignStatusRequest {
            campaign_id: id.clone(),
        })
        .await?
        .into_inner();
    stop(&mut server).await;

    let n = args.recipients as f64;
    latencies_ms.sort_by(f64::total_cmp);
    println!(
        "broadside bench: {} recipients on {}",
        args.recipients, database.kind
    );
    println!(
        "  ingest (AddRecipients)      {:>10.0} recipients/s  ({:.2} s)",
        n / ingest.as_secs_f64(),
        ingest.as_secs_f64()
    );
    println!(
        "  dispatch (start->COMPLETED) {:>10.0} messages/s    ({:.2} s)",
        n / dispatch.as_secs_f64(),
        dispatch.as_secs_f64()
    );
    println!(
        "  provider accepted rate      {:>10.1} /s (configured {}{})",
        fake.accepted_rate(),
        args.rate,
        args.provider_limit
            .map(|l| format!(", provider limit {l}"))
            .unwrap_or_default()
    );
    println!(
        "  achieved / configured       {:>10.1} %",
        100.0 * fake.accepted_rate() / args.rate.min(args.provider_limit.unwrap_or(f64::MAX))
    );
    println!(
        "  busiest second at provider  {:>10}",
        fake.busiest_second()
    );
    println!("  429s answered by provider   {:>10}", fake.throttled());
    println!(
        "  accepted / distinct / dups  {:>10} / {} / {}",
        fake.accepted_total(),
        fake.distinct_accepted(),
        fake.duplicates()
    );
    let counts = status.counts.unwrap_or_default();
    println!(
        "  final counts                sent {} failed {} consistent {}",
        counts.sent, counts.failed, status.consistent
    );
    println!(
        "  server peak RSS (VmHWM)     {:>10.1} MB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "  server RSS before ingest    {:>10.1} MB",
        rss_before_ingest as f64 / 1024.0
    );
    println!(
        "  watchers                    {:>10} (all saw the final counts: {same_final})",
        args.watchers
    );
    println!(
        "  RSS added by the watchers   {:>10.1} MB",
        (rss_with_watchers as f64 - rss_before_watchers as f64) / 1024.0
    );
    println!("  server CPU during the run   {:>10.2} s", cpu_during);
    println!("  watch updates (one stream)  {:>10}", latencies_ms.len());
    println!(
        "  read->arrival latency p50   {:>10.1} ms",
        percentile(&latencies_ms, 0.50)
    );
    println!(
        "  read->arrival latency p99   {:>10.1} ms",
        percentile(&latencies_ms, 0.99)
    );
    println!(
        "  (commit->arrival is at most this plus the {} ms watch interval)",
        args.watch_interval_ms
    );
    if fake.distinct_accepted() as usize != args.recipients
        || counts.failed != 0
        || !status.consistent
    {
        bail!("lost, failed or inconsistent messages; see above");
    }
    Ok(())
}

/// The recipient stream: chunks generated as they are sent, so the client's
/// memory does not grow with the list either.
fn recipient_chunks(
    id: String,
    total: usize,
    chunk: usize,
) -> impl futures::Stream<Item = pb::AddRecipientsRequest> {
    futures::stream::iter((0..total).step_by(chunk)).map(move |start| pb::AddRecipientsRequest {
        campaign_id: if start == 0 {
            id.clone()
        } else {
            String::new()
        },
        recipients: (start..(start + chunk).min(total))
            .map(|i| pb::Recipient {
                phone: format!("+1415{:07}", 2_000_000 + i),
                variables: [
                    ("name".to_string(), format!("R{i}")),
                    ("code".to_string(), format!("{:06}", i % 1_000_000)),
                ]
                .into(),
            })
            .collect(),
    })
}

async fn drain_watch(
    mut stream: tonic::Streaming<pb::WatchCampaignResponse>,
) -> anyhow::Result<pb::CampaignCounts> {
    let mut last = None;
    while let Some(update) = stream.next().await {
        last = update?.counts;
    }
    last.context("watch ended without an update")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn spawn_server(
    args: &BenchArgs,
    fake: &FakeTwilio,
    database_url: &str,
    scratch: &tempfile::TempDir,
) -> anyhow::Result<ServerProcess> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = scratch.path().join("server.log");
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("BROADSIDE_LISTEN", &addr)
        .env("BROADSIDE_DATABASE_URL", database_url)
        .env("BROADSIDE_PROVIDER", "twilio")
        .env("TWILIO_ACCOUNT_SID", fake_twilio::ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN", fake_twilio::AUTH_TOKEN)
        .env("TWILIO_API_BASE", fake.base_url())
        .env("BROADSIDE_RATE_LIMIT", args.rate.to_string())
        .env("BROADSIDE_METRICS_LISTEN", "off")
        .env(
            "BROADSIDE_WATCH_INTERVAL_MS",
            args.watch_interval_ms.to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the server")?;
    let pid = child.id().context("server pid")?;
    let mut server = ServerProcess {
        child,
        pid,
        addr,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while connect(&server.addr).await.is_err() {
        if Instant::now() > deadline || server.child.try_wait()?.is_some() {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            bail!("server did not start:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

async fn stop(server: &mut ServerProcess) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.pid.to_string())
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await;
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// The benchmark's database.
struct Database {
    kind: &'static str,
    url: String,
    admin: Option<(String, String)>,
}

impl Database {
    async fn create(spec: &str, scratch: &tempfile::TempDir) -> anyhow::Result<Self> {
        if spec == "sqlite" {
            let path = scratch.path().join("bench.db");
            return Ok(Self {
                kind: "SQLite",
                url: format!("sqlite://{}?mode=rwc", path.display()),
                admin: None,
            });
        }
        use sea_orm::ConnectionTrait;
        let name = format!("broadside_bench_{}", uuid::Uuid::now_v7().simple());
        let admin = sea_orm::Database::connect(spec)
            .await
            .context("connecting to Postgres")?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await?;
        let base = spec
            .rsplit_once('/')
            .map(|(base, _)| base)
            .context("a URL with a database")?;
        Ok(Self {
            kind: "Postgres",
            url: format!("{base}/{name}"),
            admin: Some((spec.to_owned(), name)),
        })
    }

    async fn drop_if_temporary(&self) {
        use sea_orm::ConnectionTrait;
        if let Some((admin, name)) = &self.admin
            && let Ok(db) = sea_orm::Database::connect(admin).await
        {
            let _ = db
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            let _ = db.close().await;
        }
    }
}
