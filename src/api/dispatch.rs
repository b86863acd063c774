//! `broadside.v1.DispatchService`.

use sha2::Sha256;
use tonic::{Request, Response, Status};

use super::{
    ApiError, AppState, convert, decode_page_token, encode_page_token, hash_field, page_size,
    request_key,
};
use crate::domain::{
    DEFAULT_TENANT, FieldViolation, MessageId, PhoneNumber, Sender, campaign::check_body,
    time::now_millis,
};
use crate::pb::{self, dispatch_service_server::DispatchService};
use crate::store::messages::NewMessage;

/// The dispatch service over the shared application state.
#[derive(Clone)]
pub struct Dispatch {
    state: AppState,
}

impl Dispatch {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn send(&self, request: pb::SendMessageRequest) -> Result<pb::Message, ApiError> {
        let mut violations = Vec::new();
        let to = PhoneNumber::parse(&request.to, self.state.default_region)
            .map_err(|e| violations.push(FieldViolation::new("to", e.to_string())))
            .ok();
        // A transactional body is sent as written: placeholders are not filled.
        let body_ok = check_body(&request.body)
            .map_err(|e| violations.push(FieldViolation::new("body", e)))
            .is_ok();
        let sender = Sender::parse(&request.sender)
            .map_err(|e| violations.push(FieldViolation::new("sender", e)))
            .ok();
        let key = request_key(&request.request_id, |h| fingerprint_send(h, &request))
            .map_err(|v| violations.push(v))
            .ok()
            .flatten();
        let (Some(to), Some(sender), true) = (to, sender, body_ok && violations.is_empty()) else {
            return Err(ApiError::Invalid(violations));
        };

        let new = NewMessage {
            to,
            sender,
            body: request.body,
        };
        let row = self
            .state
            .store
            .insert_message(DEFAULT_TENANT, &new, key.as_ref(), now_millis())
            .await?;
        tracing::info!(message_id = %row.id, "transactional message queued");
        self.state.engine.wake();
        Ok(convert::message(&row))
    }

    async fn list(
        &self,
        request: pb::ListMessagesRequest,
    ) -> Result<pb::ListMessagesResponse, ApiError> {
        let limit = page_size(request.page_size, 100, 1000)?;
        let after = decode_page_token(&request.page_token)?;
        let state = convert::message_state_filter(request.state)
            .map_err(|e| ApiError::invalid("state", e))?;
        let campaign_id = match request.campaign_id.trim() {
            "" => None,
            id => {
                let id = crate::domain::CampaignId::parse(id)
                    .map_err(|e| ApiError::invalid("campaign_id", e))?
                    .to_string();
                // Another tenant's campaign is as unknown as a missing one.
                self.state.store.get_campaign(DEFAULT_TENANT, &id).await?;
                Some(id)
            }
        };
        let rows = self
            .state
            .store
            .list_messages(
                DEFAULT_TENANT,
                campaign_id.as_deref(),
                state,
                after.as_deref(),
                limit + 1,
            )
            .await?;
        let more = rows.len() as u64 > limit;
        let page = &rows[..rows.len().min(limit as usize)];
        Ok(pb::ListMessagesResponse {
            messages: page.iter().map(convert::message).collect(),
            next_page_token: match (more, page.last()) {
                (true, Some(last)) => encode_page_token(&last.id),
                _ => String::new(),
            },
        })
    }

    async fn stats(&self) -> Result<pb::GetDispatchStatsResponse, ApiError> {
        let stats = self.state.engine.stats().await?;
        let now_us = chrono::Utc::now().timestamp_micros();
        let throttled_until = (stats.pacer.throttled_until_us > now_us)
            .then(|| convert::timestamp(stats.pacer.throttled_until_us / 1000));
        Ok(pb::GetDispatchStatsResponse {
            providers: vec![pb::ProviderStats {
                provider: stats.provider,
                configured_rate: stats.pacer.configured_rate,
                current_rate: stats.pacer.current_rate,
                queue_depth: stats.queue_depth,
                in_flight: stats.in_flight,
                throttled_until,
                throttle_events: stats.pacer.throttle_events as i64,
                accepted: stats.pacer.accepted as i64,
            }],
        })
    }
}

fn fingerprint_send(hasher: &mut Sha256, request: &pb::SendMessageRequest) {
    hash_field(hasher, &request.to);
    hash_field(hasher, &request.body);
    hash_field(hasher, &request.sender);
}

#[tonic::async_trait]
impl DispatchService for Dispatch {
    #[tracing::instrument(skip_all)]
    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let message = self.send(request.into_inner()).await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(message),
        }))
    }

    #[tracing::instrument(skip_all, fields(message_id = %request.get_ref().message_id))]
    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let text = &request.get_ref().message_id;
        if text.trim().is_empty() {
            return Err(ApiError::invalid("message_id", "message_id is required").into());
        }
        let id = MessageId::parse(text).map_err(|e| ApiError::invalid("message_id", e))?;
        let row = self
            .state
            .store
            .get_message(DEFAULT_TENANT, &id.to_string())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetMessageResponse {
            message: Some(convert::message(&row)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_dispatch_stats(
        &self,
        _request: Request<pb::GetDispatchStatsRequest>,
    ) -> Result<Response<pb::GetDispatchStatsResponse>, Status> {
        Ok(Response::new(self.stats().await?))
    }
}
