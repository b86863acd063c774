//! Client commands: drive a running server through its gRPC API.

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use tonic::transport::Channel;

use crate::pb::{
    self, campaign_service_client::CampaignServiceClient,
    dispatch_service_client::DispatchServiceClient,
};

/// Recipients per AddRecipients message when uploading a CSV.
const UPLOAD_CHUNK: usize = 5_000;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "BROADSIDE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign from a CSV file (a `phone` column plus one column per
    /// template variable), streamed through AddRecipients.
    Create {
        #[arg(long)]
        name: String,
        /// Template; `{{column}}` is filled from the CSV.
        #[arg(long)]
        body: String,
        #[arg(long)]
        sender: String,
        /// CSV file of recipients.
        #[arg(long)]
        recipients: PathBuf,
        /// Start it once the recipients are in.
        #[arg(long)]
        start: bool,
    },
    /// Start a DRAFT campaign.
    Start { id: String },
    /// Pause a RUNNING campaign.
    Pause { id: String },
    /// Resume a PAUSED campaign.
    Resume { id: String },
    /// Cancel a campaign that has not finished.
    Cancel { id: String },
    /// Show a campaign's counts and check them against its messages.
    Status { id: String },
    /// List campaigns, newest first.
    List {
        /// Only campaigns in this state (draft, scheduled, running, paused,
        /// completed, cancelled).
        #[arg(long)]
        state: Option<String>,
    },
    /// Follow a campaign's progress live until it finishes.
    Watch { id: String },
}

/// Send one transactional SMS.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub body: String,
    #[arg(long, default_value = "Broadside")]
    pub sender: String,
    /// Idempotency key: repeating it returns the first message.
    #[arg(long, default_value = "")]
    pub request_id: String,
}

async fn connect(server: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(server.to_owned())
        .context("the --server address")?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))
}

/// A gRPC error as the user should read it, field violations included.
fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        for violation in bad.field_violations {
            text.push_str(&format!(
                "\n  {}: {}",
                violation.field, violation.description
            ));
        }
    }
    anyhow::anyhow!(text)
}

pub async fn campaign(server: &ServerArgs, command: CampaignCommand) -> anyhow::Result<()> {
    let mut client = CampaignServiceClient::new(connect(&server.server).await?);
    match command {
        CampaignCommand::Create {
            name,
            body,
            sender,
            recipients,
            start,
        } => create(&mut client, name, body, sender, recipients, start).await,
        CampaignCommand::Start { id } => {
            let response = client
                .start_campaign(pb::StartCampaignRequest { campaign_id: id })
                .await
                .map_err(explain)?;
            print_campaign(&response.into_inner().campaign.context("campaign")?);
            Ok(())
        }
        CampaignCommand::Pause { id } => {
            let response = client
                .pause_campaign(pb::PauseCampaignRequest { campaign_id: id })
                .await
                .map_err(explain)?;
            print_campaign(&response.into_inner().campaign.context("campaign")?);
            Ok(())
        }
        CampaignCommand::Resume { id } => {
            let response = client
                .resume_campaign(pb::ResumeCampaignRequest { campaign_id: id })
                .await
                .map_err(explain)?;
            print_campaign(&response.into_inner().campaign.context("campaign")?);
            Ok(())
        }
        CampaignCommand::Cancel { id } => {
            let response = client
                .cancel_campaign(pb::CancelCampaignRequest { campaign_id: id })
                .await
                .map_err(explain)?;
            print_campaign(&response.into_inner().campaign.context("campaign")?);
            Ok(())
        }
        CampaignCommand::Status { id } => {
            let status = client
                .get_campaign_status(pb::GetCampaignStatusRequest { campaign_id: id })
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "campaign {} {}",
                status.campaign_id,
                state_name(status.state)
            );
            println!(
                "  stored      {}",
                counts_line(&status.counts.unwrap_or_default())
            );
            println!(
                "  aggregated  {}",
                counts_line(&status.aggregated.unwrap_or_default())
            );
            println!(
                "  consistent  {}",
                if status.consistent { "yes" } else { "NO" }
            );
            Ok(())
        }
        CampaignCommand::List { state } => list(&mut client, state).await,
        CampaignCommand::Watch { id } => watch(&mut client, id).await,
    }
}

pub async fn send(server: &ServerArgs, args: SendArgs) -> anyhow::Result<()> {
    let mut client = DispatchServiceClient::new(connect(&server.server).await?);
    let message = client
        .send_message(pb::SendMessageRequest {
            to: args.to,
            body: args.body,
            sender: args.sender,
            request_id: args.request_id,
        })
        .await
        .map_err(explain)?
        .into_inner()
        .message
        .context("message")?;
    println!(
        "message {} {} to {}",
        message.id,
        message_state_name(message.state),
        message.to
    );
    Ok(())
}

async fn create(
    client: &mut CampaignServiceClient<Channel>,
    name: String,
    body: String,
    sender: String,
    path: PathBuf,
    start: bool,
) -> anyhow::Result<()> {
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("opening {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let phone_column = headers
        .iter()
        .position(|h| h.trim() == "phone")
        .with_context(|| format!("{} has no `phone` column", path.display()))?;

    let campaign = client
        .create_campaign(pb::CreateCampaignRequest {
            name,
            body,
            sender,
            ..Default::default()
        })
        .await
        .map_err(explain)?
        .into_inner()
        .campaign
        .context("campaign")?;
    let id = campaign.id.clone();

    // Read the file chunk by chunk into the stream, so memory stays flat.
    let (chunks, receiver) = tokio::sync::mpsc::channel::<pb::AddRecipientsRequest>(2);
    let reader_id = id.clone();
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut chunk = Vec::with_capacity(UPLOAD_CHUNK);
        let mut first = true;
        for (line, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("reading row {}", line + 2))?;
            let variables = headers
                .iter()
                .zip(record.iter())
                .enumerate()
                .filter(|(i, _)| *i != phone_column)
                .map(|(_, (h, v))| (h.trim().to_owned(), v.to_owned()))
                .collect();
            chunk.push(pb::Recipient {
                phone: record.get(phone_column).unwrap_or_default().to_owned(),
                variables,
            });
            if chunk.len() == UPLOAD_CHUNK {
                let message = pb::AddRecipientsRequest {
                    campaign_id: if first {
                        reader_id.clone()
                    } else {
                        String::new()
                    },
                    recipients: std::mem::take(&mut chunk),
                };
                first = false;
                if chunks.blocking_send(message).is_err() {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() || first {
            let _ = chunks.blocking_send(pb::AddRecipientsRequest {
                campaign_id: if first { reader_id } else { String::new() },
                recipients: chunk,
            });
        }
        Ok(())
    });
    let added = client
        .add_recipients(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .map_err(explain)?
        .into_inner();
    reading.await??;

    println!("campaign {id} created");
    println!(
        "  recipients: {} accepted, {} rejected, {} duplicates (total {})",
        added.accepted, added.rejected_count, added.duplicates, added.total
    );
    for rejected in &added.rejected {
        println!(
            "  rejected row {}: {} ({})",
            rejected.index + 2,
            rejected.phone,
            rejected.reason
        );
    }
    if added.rejected_count > added.rejected.len() as i64 {
        println!(
            "  ... and {} more rejections",
            added.rejected_count - added.rejected.len() as i64
        );
    }
    if start {
        let started = client
            .start_campaign(pb::StartCampaignRequest { campaign_id: id })
            .await
            .map_err(explain)?
            .into_inner()
            .campaign
            .context("campaign")?;
        println!("  started: {}", state_name(started.state));
    }
    Ok(())
}

async fn list(
    client: &mut CampaignServiceClient<Channel>,
    state: Option<String>,
) -> anyhow::Result<()> {
    let state = match state.as_deref() {
        None => 0,
        Some(name) => pb::CampaignState::from_str_name(&format!(
            "CAMPAIGN_STATE_{}",
            name.to_ascii_uppercase()
        ))
        .with_context(|| format!("`{name}` is not a campaign state"))? as i32,
    };
    let mut page_token = String::new();
    loop {
        let page = client
            .list_campaigns(pb::ListCampaignsRequest {
                page_size: 100,
                page_token,
                state,
            })
            .await
            .map_err(explain)?
            .into_inner();
        for campaign in &page.campaigns {
            print_campaign(campaign);
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

async fn watch(client: &mut CampaignServiceClient<Channel>, id: String) -> anyhow::Result<()> {
    let mut stream = client
        .watch_campaign(pb::WatchCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let bar = std::io::stdout().is_terminal().then(progress_bar);
    let mut last = None;
    while let Some(update) = stream.next().await {
        let update = update.map_err(explain)?;
        let counts = update.counts.unwrap_or_default();
        match &bar {
            Some(bar) => {
                bar.set_length(counts.total.max(0) as u64);
                bar.set_position((counts.processed + counts.cancelled).max(0) as u64);
                bar.set_message(format!(
                    "{}  sent {}  failed {}  {:.0}/s",
                    state_name(update.state),
                    counts.sent,
                    counts.failed,
                    update.rate_per_second
                ));
            }
            None => println!(
                "#{} {} {} rate {:.1}/s",
                update.sequence,
                state_name(update.state),
                counts_line(&counts),
                update.rate_per_second
            ),
        }
        last = Some(update);
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    let last = last.context("the stream ended without an update")?;
    println!(
        "campaign {id} {}: {}",
        state_name(last.state),
        counts_line(&last.counts.unwrap_or_default())
    );
    let terminal = [
        pb::CampaignState::Completed as i32,
        pb::CampaignState::Cancelled as i32,
    ];
    if !terminal.contains(&last.state) {
        bail!("the stream ended before the campaign finished");
    }
    Ok(())
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {pos}/{len} processed  {msg}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn print_campaign(campaign: &pb::Campaign) {
    println!(
        "{}  {:<10} {:<24} {}",
        campaign.id,
        state_name(campaign.state),
        campaign.name,
        counts_line(&campaign.counts.unwrap_or_default())
    );
}

fn counts_line(counts: &pb::CampaignCounts) -> String {
    format!(
        "total {} queued {} sent {} failed {} processed {} cancelled {}",
        counts.total, counts.queued, counts.sent, counts.failed, counts.processed, counts.cancelled
    )
}

fn state_name(state: i32) -> &'static str {
    pb::CampaignState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("CAMPAIGN_STATE_"))
        .unwrap_or("UNKNOWN")
}

fn message_state_name(state: i32) -> &'static str {
    pb::MessageState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("MESSAGE_STATE_"))
        .unwrap_or("UNKNOWN")
}
