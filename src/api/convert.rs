//! Store rows and domain values to protobuf, and protobuf enums to domain.

use prost_types::Timestamp;

use crate::domain::{CampaignState, Counts, MessageState, Millis};
use crate::pb;
use crate::store::{
    campaigns::{counts_of, parse_state},
    entity::{campaign, message},
};

pub fn timestamp(millis: Millis) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn millis(timestamp: &Timestamp) -> Millis {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
}

pub fn campaign_state(state: CampaignState) -> pb::CampaignState {
    match state {
        CampaignState::Draft => pb::CampaignState::Draft,
        CampaignState::Scheduled => pb::CampaignState::Scheduled,
        CampaignState::Running => pb::CampaignState::Running,
        CampaignState::Paused => pb::CampaignState::Paused,
        CampaignState::Completed => pb::CampaignState::Completed,
        CampaignState::Cancelled => pb::CampaignState::Cancelled,
    }
}

/// A state filter: `None` for UNSPECIFIED, an error for unknown numbers.
pub fn campaign_state_filter(value: i32) -> Result<Option<CampaignState>, String> {
    match pb::CampaignState::try_from(value) {
        Ok(pb::CampaignState::Unspecified) => Ok(None),
        Ok(pb::CampaignState::Draft) => Ok(Some(CampaignState::Draft)),
        Ok(pb::CampaignState::Scheduled) => Ok(Some(CampaignState::Scheduled)),
        Ok(pb::CampaignState::Running) => Ok(Some(CampaignState::Running)),
        Ok(pb::CampaignState::Paused) => Ok(Some(CampaignState::Paused)),
        Ok(pb::CampaignState::Completed) => Ok(Some(CampaignState::Completed)),
        Ok(pb::CampaignState::Cancelled) => Ok(Some(CampaignState::Cancelled)),
        Err(_) => Err(format!("{value} is not a CampaignState")),
    }
}

pub fn message_state(state: MessageState) -> pb::MessageState {
    match state {
        MessageState::Queued => pb::MessageState::Queued,
        MessageState::Sending => pb::MessageState::Sending,
        MessageState::Sent => pb::MessageState::Sent,
        MessageState::Failed => pb::MessageState::Failed,
        MessageState::Cancelled => pb::MessageState::Cancelled,
    }
}

pub fn message_state_filter(value: i32) -> Result<Option<MessageState>, String> {
    match pb::MessageState::try_from(value) {
        Ok(pb::MessageState::Unspecified) => Ok(None),
        Ok(pb::MessageState::Queued) => Ok(Some(MessageState::Queued)),
        Ok(pb::MessageState::Sending) => Ok(Some(MessageState::Sending)),
        Ok(pb::MessageState::Sent) => Ok(Some(MessageState::Sent)),
        Ok(pb::MessageState::Failed) => Ok(Some(MessageState::Failed)),
        Ok(pb::MessageState::Cancelled) => Ok(Some(MessageState::Cancelled)),
        Err(_) => Err(format!("{value} is not a MessageState")),
    }
}

pub fn counts(counts: Counts) -> pb::CampaignCounts {
    pb::CampaignCounts {
        total: counts.total,
        queued: counts.queued(),
        sent: counts.sent,
        failed: counts.failed,
        processed: counts.processed(),
        cancelled: counts.cancelled,
    }
}

pub fn campaign(row: &campaign::Model) -> pb::Campaign {
    pb::Campaign {
        id: row.id.clone(),
        name: row.name.clone(),
        body: row.body.clone(),
        sender: row.sender.clone(),
        state: campaign_state(parse_state(&row.state)) as i32,
        counts: Some(counts(counts_of(row))),
        created_at: Some(timestamp(row.created_at)),
        started_at: row.started_at.map(timestamp),
        completed_at: row.completed_at.map(timestamp),
        scheduled_at: row.scheduled_at.map(timestamp),
    }
}

pub fn message(row: &message::Model) -> pb::Message {
    let state = MessageState::parse(&row.state)
        .unwrap_or_else(|| panic!("unknown message state `{}` in store", row.state));
    pb::Message {
        id: row.id.clone(),
        campaign_id: row.campaign_id.clone().unwrap_or_default(),
        to: row.to_number.clone(),
        body: row.body.clone(),
        state: message_state(state) as i32,
        attempts: row.attempts,
        error_code: row.last_error_code.clone().unwrap_or_default(),
        error_message: row.last_error_message.clone().unwrap_or_default(),
        provider_message_id: row.provider_message_id.clone().unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        sent_at: row.sent_at.map(timestamp),
        sender: row.sender.clone(),
        provider: row.provider.clone().unwrap_or_default(),
        next_attempt_at: (state == MessageState::Queued).then(|| timestamp(row.next_attempt_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }
}
