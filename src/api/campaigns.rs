//! `broadside.v1.CampaignService`.

use std::{collections::HashSet, pin::Pin};

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::recipients::{Screened, screen};
use super::{
    ApiError, AppState, convert, decode_page_token, encode_page_token, hash_field, hash_map,
    page_size, request_key,
};
use crate::domain::{
    CampaignDraft, CampaignId, DEFAULT_TENANT, FieldViolation, Template, Transition,
    time::now_millis,
};
use crate::pb::{self, campaign_service_server::CampaignService};
use crate::progress::Snapshot;
use crate::store::campaigns::{Created, NewRecipient, counts_of, parse_state};

/// Recipients accepted inline by CreateCampaign, and per AddRecipients chunk.
const MAX_INLINE_RECIPIENTS: usize = 10_000;
/// Recipients buffered before an AddRecipients write.
const UPLOAD_BATCH: usize = 2_000;

/// The campaign service over the shared application state.
#[derive(Clone)]
pub struct Campaigns {
    state: AppState,
}

impl Campaigns {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn transition(&self, id: &str, transition: Transition) -> Result<pb::Campaign, ApiError> {
        let id = parse_campaign_id(id)?;
        let row = self
            .state
            .store
            .transition(DEFAULT_TENANT, &id, transition, now_millis())
            .await?;
        tracing::info!(campaign_id = %id, %transition, state = %row.state, "campaign transition");
        self.state.hub.notify([id.as_str()]);
        if matches!(transition, Transition::Start | Transition::Resume) {
            self.state.engine.wake();
        }
        Ok(convert::campaign(&row))
    }

    async fn create(
        &self,
        request: pb::CreateCampaignRequest,
    ) -> Result<pb::CreateCampaignResponse, ApiError> {
        let scheduled_at = request.scheduled_at.as_ref().map(convert::millis);
        let mut violations = Vec::new();
        let draft =
            CampaignDraft::parse(&request.name, &request.body, &request.sender, scheduled_at)
                .map_err(|mut v| violations.append(&mut v))
                .ok();
        if request.recipients.len() > MAX_INLINE_RECIPIENTS {
            violations.push(FieldViolation::new(
                "recipients",
                format!(
                    "{} recipients is more than the {MAX_INLINE_RECIPIENTS} accepted inline; \
                     use AddRecipients for larger lists",
                    request.recipients.len()
                ),
            ));
        }
        let key = request_key(&request.request_id, |h| fingerprint_create(h, &request))
            .map_err(|v| violations.push(v))
            .ok()
            .flatten();
        let Some(draft) = draft.filter(|_| violations.is_empty()) else {
            return Err(ApiError::Invalid(violations));
        };

        let mut screened = Screened::default();
        screen(
            &draft.template,
            self.state.default_region,
            0,
            &request.recipients,
            &mut screened,
        );
        if !request.recipients.is_empty() && screened.accepted.is_empty() {
            return Err(ApiError::Invalid(rejections_as_violations(&screened)));
        }
        if request.start && screened.accepted.is_empty() {
            return Err(ApiError::FailedPrecondition(
                "cannot start a campaign with no recipients; create it as a draft and use \
                 AddRecipients first"
                    .into(),
            ));
        }
        let distinct = screened
            .accepted
            .iter()
            .map(|r| r.to.as_str())
            .collect::<HashSet<_>>()
            .len();

        let created = self
            .state
            .store
            .create_campaign(
                DEFAULT_TENANT,
                &draft,
                &screened.accepted,
                key.as_ref(),
                request.start,
                now_millis(),
            )
            .await?;
        let row = match created {
            Created::New(row) => {
                tracing::info!(campaign_id = %row.id, total = row.total, state = %row.state, "campaign created");
                if request.start {
                    self.state.engine.wake();
                }
                row
            }
            Created::Replayed(row) => {
                tracing::info!(campaign_id = %row.id, "create replayed by request_id");
                row
            }
        };
        Ok(pb::CreateCampaignResponse {
            campaign: Some(convert::campaign(&row)),
            rejected: screened.rejected,
            duplicates: (screened.accepted.len() - distinct) as i64,
            accepted: distinct as i64,
        })
    }

    async fn add(
        &self,
        mut stream: Streaming<pb::AddRecipientsRequest>,
    ) -> Result<pb::AddRecipientsResponse, ApiError> {
        let first = stream
            .message()
            .await
            .map_err(|status| {
                ApiError::invalid("recipients", format!("stream failed: {}", status.message()))
            })?
            .ok_or_else(|| ApiError::invalid("campaign_id", "the stream carried no message"))?;
        let id = parse_campaign_id(&first.campaign_id)?;
        let campaign = self.state.store.get_campaign(DEFAULT_TENANT, &id).await?;
        if parse_state(&campaign.state) != crate::domain::CampaignState::Draft {
            return Err(ApiError::FailedPrecondition(format!(
                "recipients can only be added to a DRAFT campaign; this one is {}",
                parse_state(&campaign.state)
            )));
        }
        let template = Template::parse(&campaign.body)
            .map_err(|e| ApiError::FailedPrecondition(format!("stored body is invalid: {e}")))?;

        // Screening and writing overlap: a writer task inserts one batch while
        // the next is received and screened. The channel bounds memory.
        let (batches, mut pending) = mpsc::channel::<Vec<NewRecipient>>(2);
        let store = self.state.store.clone();
        let writer_id = id.clone();
        let writer = tokio::spawn(async move {
            let mut inserted = 0u64;
            let mut total = 0i64;
            while let Some(batch) = pending.recv().await {
                let added = store
                    .add_recipients(DEFAULT_TENANT, &writer_id, &batch, now_millis())
                    .await?;
                inserted += added.inserted;
                total = added.total;
            }
            Ok::<_, crate::store::StoreError>((inserted, total))
        });

        let mut screened = Screened::default();
        let mut valid = 0u64;
        let mut index = 0i64;
        let mut next = Some(first);
        while let Some(chunk) = next {
            if !chunk.campaign_id.is_empty() && chunk.campaign_id.trim() != id {
                return Err(ApiError::invalid(
                    "campaign_id",
                    "every message of one stream must name the same campaign",
                ));
            }
            if chunk.recipients.len() > MAX_INLINE_RECIPIENTS {
                return Err(ApiError::invalid(
                    "recipients",
                    format!("a chunk may hold at most {MAX_INLINE_RECIPIENTS} recipients"),
                ));
            }
            screen(
                &template,
                self.state.default_region,
                index,
                &chunk.recipients,
                &mut screened,
            );
            index += chunk.recipients.len() as i64;
            if screened.accepted.len() >= UPLOAD_BATCH {
                valid += screened.accepted.len() as u64;
                let batch = std::mem::take(&mut screened.accepted);
                if batches.send(batch).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            next = stream.message().await.map_err(|status| {
                ApiError::invalid("recipients", format!("stream failed: {}", status.message()))
            })?;
        }
        valid += screened.accepted.len() as u64;
        if !screened.accepted.is_empty() {
            let _ = batches.send(std::mem::take(&mut screened.accepted)).await;
        }
        drop(batches);
        let (inserted, total) = writer
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))??;

        self.state.hub.notify([id.as_str()]);
        tracing::info!(campaign_id = %id, inserted, rejected = screened.rejected_count, "recipients added");
        Ok(pb::AddRecipientsResponse {
            campaign_id: id,
            accepted: inserted as i64,
            rejected_count: screened.rejected_count,
            duplicates: (valid - inserted) as i64,
            rejected: screened.rejected,
            total,
        })
    }

    async fn list(
        &self,
        request: pb::ListCampaignsRequest,
    ) -> Result<pb::ListCampaignsResponse, ApiError> {
        let limit = page_size(request.page_size, 50, 500)?;
        let before = decode_page_token(&request.page_token)?;
        let state = convert::campaign_state_filter(request.state)
            .map_err(|e| ApiError::invalid("state", e))?;
        let rows = self
            .state
            .store
            .list_campaigns(DEFAULT_TENANT, state, before.as_deref(), limit + 1)
            .await?;
        let more = rows.len() as u64 > limit;
        let page = &rows[..rows.len().min(limit as usize)];
        Ok(pb::ListCampaignsResponse {
            campaigns: page.iter().map(convert::campaign).collect(),
            next_page_token: match (more, page.last()) {
                (true, Some(last)) => encode_page_token(&last.id),
                _ => String::new(),
            },
        })
    }

    async fn status(&self, id: &str) -> Result<pb::GetCampaignStatusResponse, ApiError> {
        let id = parse_campaign_id(id)?;
        let (row, aggregated) = self
            .state
            .store
            .campaign_status(DEFAULT_TENANT, &id)
            .await?;
        let stored = counts_of(&row);
        Ok(pb::GetCampaignStatusResponse {
            campaign_id: id,
            state: convert::campaign_state(parse_state(&row.state)) as i32,
            counts: Some(convert::counts(stored)),
            aggregated: Some(convert::counts(aggregated)),
            consistent: stored == aggregated,
        })
    }
}

/// Parses a campaign id from a request.
fn parse_campaign_id(text: &str) -> Result<String, ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid("campaign_id", "campaign_id is required"));
    }
    CampaignId::parse(text)
        .map(|id| id.to_string())
        .map_err(|e| ApiError::invalid("campaign_id", e))
}

fn rejections_as_violations(screened: &Screened) -> Vec<FieldViolation> {
    let mut violations: Vec<_> = screened
        .rejected
        .iter()
        .map(|r| FieldViolation::new(format!("recipients[{}].phone", r.index), r.reason.clone()))
        .collect();
    violations.insert(
        0,
        FieldViolation::new(
            "recipients",
            format!(
                "none of the {} recipients is valid",
                screened.rejected_count
            ),
        ),
    );
    violations
}

fn fingerprint_create(hasher: &mut Sha256, request: &pb::CreateCampaignRequest) {
    hash_field(hasher, &request.name);
    hash_field(hasher, &request.body);
    hash_field(hasher, &request.sender);
    let scheduled = request
        .scheduled_at
        .as_ref()
        .map(convert::millis)
        .unwrap_or(i64::MIN);
    hasher.update(scheduled.to_le_bytes());
    hasher.update([u8::from(request.start)]);
    hasher.update((request.recipients.len() as u64).to_le_bytes());
    for recipient in &request.recipients {
        hash_field(hasher, &recipient.phone);
        hash_map(hasher, &recipient.variables);
    }
}

fn watch_update(
    campaign_id: &str,
    snapshot: &Snapshot,
    sequence: u64,
) -> pb::WatchCampaignResponse {
    pb::WatchCampaignResponse {
        campaign_id: campaign_id.to_owned(),
        state: convert::campaign_state(parse_state(&snapshot.campaign.state)) as i32,
        counts: Some(convert::counts(counts_of(&snapshot.campaign))),
        rate_per_second: snapshot.rate_per_second,
        sequence,
        observed_at: Some(convert::timestamp(snapshot.observed_at)),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchCampaignResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CampaignService for Campaigns {
    #[tracing::instrument(skip_all)]
    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::CreateCampaignResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn add_recipients(
        &self,
        request: Request<Streaming<pb::AddRecipientsRequest>>,
    ) -> Result<Response<pb::AddRecipientsResponse>, Status> {
        Ok(Response::new(self.add(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn start_campaign(
        &self,
        request: Request<pb::StartCampaignRequest>,
    ) -> Result<Response<pb::StartCampaignResponse>, Status> {
        let campaign = self
            .transition(&request.get_ref().campaign_id, Transition::Start)
            .await?;
        Ok(Response::new(pb::StartCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn pause_campaign(
        &self,
        request: Request<pb::PauseCampaignRequest>,
    ) -> Result<Response<pb::PauseCampaignResponse>, Status> {
        let campaign = self
            .transition(&request.get_ref().campaign_id, Transition::Pause)
            .await?;
        Ok(Response::new(pb::PauseCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn resume_campaign(
        &self,
        request: Request<pb::ResumeCampaignRequest>,
    ) -> Result<Response<pb::ResumeCampaignResponse>, Status> {
        let campaign = self
            .transition(&request.get_ref().campaign_id, Transition::Resume)
            .await?;
        Ok(Response::new(pb::ResumeCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn cancel_campaign(
        &self,
        request: Request<pb::CancelCampaignRequest>,
    ) -> Result<Response<pb::CancelCampaignResponse>, Status> {
        let campaign = self
            .transition(&request.get_ref().campaign_id, Transition::Cancel)
            .await?;
        Ok(Response::new(pb::CancelCampaignResponse {
            campaign: Some(campaign),
        }))
    }

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::GetCampaignResponse>, Status> {
        let id = parse_campaign_id(&request.get_ref().campaign_id)?;
        let row = self
            .state
            .store
            .get_campaign(DEFAULT_TENANT, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetCampaignResponse {
            campaign: Some(convert::campaign(&row)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn get_campaign_status(
        &self,
        request: Request<pb::GetCampaignStatusRequest>,
    ) -> Result<Response<pb::GetCampaignStatusResponse>, Status> {
        Ok(Response::new(
            self.status(&request.get_ref().campaign_id).await?,
        ))
    }

    type WatchCampaignStream = WatchStream;

    #[tracing::instrument(skip_all, fields(campaign_id = %request.get_ref().campaign_id))]
    async fn watch_campaign(
        &self,
        request: Request<pb::WatchCampaignRequest>,
    ) -> Result<Response<Self::WatchCampaignStream>, Status> {
        let id = parse_campaign_id(&request.get_ref().campaign_id)?;
        self.state
            .store
            .get_campaign(DEFAULT_TENANT, &id)
            .await
            .map_err(ApiError::from)?;
        let receiver = self.state.hub.subscribe(&id);
        let (updates, stream) = mpsc::channel(4);
        tokio::spawn(relay_progress(
            id,
            receiver,
            updates,
            self.state.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

/// Forwards a feed's snapshots to one watcher: only those that changed, each
/// numbered, ending after the terminal one, on shutdown, or when the
/// watcher leaves.
async fn relay_progress(
    id: String,
    mut feed: tokio::sync::watch::Receiver<Option<Snapshot>>,
    updates: mpsc::Sender<Result<pb::WatchCampaignResponse, Status>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut sequence = 0;
    let mut last_sent: Option<(String, crate::domain::Counts)> = None;
    loop {
        let snapshot = feed.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let key = (
                snapshot.campaign.state.clone(),
                counts_of(&snapshot.campaign),
            );
            if last_sent.as_ref() != Some(&key) {
                sequence += 1;
                if updates
                    .send(Ok(watch_update(&id, &snapshot, sequence)))
                    .await
                    .is_err()
                {
                    return;
                }
                last_sent = Some(key);
            }
            if snapshot.is_terminal() {
                return;
            }
        }
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() && !feed.borrow().as_ref().is_some_and(Snapshot::is_terminal) {
                    let status = if shutdown.is_cancelled() {
                        Status::unavailable("server is shutting down; watch again elsewhere")
                    } else {
                        Status::unavailable("progress feed ended; watch again")
                    };
                    let _ = updates.send(Err(status)).await;
                    return;
                }
            }
            () = shutdown.cancelled() => {
                let _ = updates
                    .send(Err(Status::unavailable("server is shutting down; watch again elsewhere")))
                    .await;
                return;
            }
            () = updates.closed() => return,
        }
    }
}
