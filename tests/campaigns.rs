//! CampaignService through the generated client against a real server.

mod common;

use std::time::Duration;

use broadside::{domain::Region, pb};
use common::*;
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

#[tokio::test]
async fn create_reports_rejected_and_duplicate_recipients_and_stores_e164() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;

    let response = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "Spring".into(),
            body: "Hi {{name}}".into(),
            sender: "Broadside".into(),
            recipients: vec![
                recipient("+1 415 555 2671", "Ada"),
                recipient("+14155552672", "Bob"),
                recipient("+44 20 7183 8750", "Cy"),
                recipient("12345", "Dee"),
                recipient("+1 (415) 555-2671", "Ada"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let campaign = response.campaign.unwrap();
    assert_eq!(campaign.state, pb::CampaignState::Draft as i32);
    assert_eq!(
        counts(campaign.counts.as_ref().unwrap()),
        (3, 3, 0, 0, 0, 0)
    );
    assert_eq!(response.accepted, 3);
    assert_eq!(response.duplicates, 1);
    assert_eq!(response.rejected.len(), 1);
    assert_eq!(response.rejected[0].index, 3);
    assert_eq!(response.rejected[0].phone, "12345");
    assert!(
        response.rejected[0].reason.contains("country code"),
        "{:?}",
        response.rejected
    );

    let mut numbers: Vec<_> = server
        .messages(&campaign.id)
        .await
        .into_iter()
        .map(|m| m.to)
        .collect();
    numbers.sort();
    assert_eq!(numbers, ["+14155552671", "+14155552672", "+442071838750"]);
    server.stop().await;
}

#[tokio::test]
async fn national_numbers_are_accepted_with_a_default_region() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    config.default_region = Some(Region::parse("US").unwrap());
    let mut server = TestServer::start(config).await;

    let response = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "n".into(),
            body: "Hi {{name}}".into(),
            sender: "+14155550100".into(),
            recipients: vec![recipient("(415) 555-2671", "Ada")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.accepted, 1);
    let messages = server.messages(&response.campaign.unwrap().id).await;
    assert_eq!(messages[0].to, "+14155552671");
    assert_eq!(messages[0].body, "Hi Ada");
    server.stop().await;
}

#[tokio::test]
async fn bad_fields_are_invalid_argument_with_a_violation_per_field() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;

    let status = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "".into(),
            body: "Hi {{name".into(),
            sender: "not a valid sender!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<_> = field_violations(&status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(fields, ["name", "body", "sender"]);

    let long_body = "x".repeat(1601);
    let status = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "n".into(),
            body: long_body,
            sender: "Broadside".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&status)[0].0, "body");
    assert!(status.message().contains("1601"), "{}", status.message());

    let status = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "n".into(),
            body: "b".into(),
            sender: "Broadside".into(),
            recipients: recipients(10_001),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status)[0].0, "recipients");

    let list = server
        .campaigns
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.campaigns.is_empty(),
        "a refused request creates nothing"
    );
    server.stop().await;
}

#[tokio::test]
async fn recipients_given_but_none_valid_is_invalid_argument() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let status = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "n".into(),
            body: "Hi {{name}}".into(),
            sender: "Broadside".into(),
            recipients: vec![
                recipient("nope", "A"),
                pb::Recipient {
                    phone: "+14155552671".into(),
                    variables: Default::default(),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = field_violations(&status);
    assert_eq!(violations[0].0, "recipients");
    assert_eq!(
        violations[2],
        (
            "recipients[1].phone".into(),
            "missing variable `name`".into()
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn an_empty_campaign_is_a_draft_that_cannot_start() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let campaign = server.create(vec![], false).await;
    assert_eq!(campaign.state, pb::CampaignState::Draft as i32);

    let status = server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("no recipients"),
        "{}",
        status.message()
    );

    let status = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "n".into(),
            body: "b".into(),
            sender: "Broadside".into(),
            start: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn the_lifecycle_follows_the_state_machine() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    config.rate_limit = 5.0; // slow enough to pause and cancel mid-run
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(40), false).await;
    let id = campaign.id.clone();
    let request = || pb::PauseCampaignRequest {
        campaign_id: id.clone(),
    };

    // Illegal from DRAFT: pause and resume.
    let status = server
        .campaigns
        .pause_campaign(request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "cannot pause a campaign that is DRAFT");
    let status = server
        .campaigns
        .resume_campaign(pb::ResumeCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let started = server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(started.state, pb::CampaignState::Running as i32);
    assert!(started.started_at.is_some());
    let status = server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.message(), "cannot start a campaign that is RUNNING");

    let paused = server
        .campaigns
        .pause_campaign(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        paused.campaign.unwrap().state,
        pb::CampaignState::Paused as i32
    );
    let resumed = server
        .campaigns
        .resume_campaign(pb::ResumeCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resumed.campaign.unwrap().state,
        pb::CampaignState::Running as i32
    );

    let cancelled = server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(cancelled.state, pb::CampaignState::Cancelled as i32);
    assert!(cancelled.completed_at.is_some());
    let counts = cancelled.counts.unwrap();
    assert!(counts.cancelled > 0, "{counts:?}");

    for status in [
        server
            .campaigns
            .pause_campaign(request())
            .await
            .unwrap_err(),
        server
            .campaigns
            .start_campaign(pb::StartCampaignRequest {
                campaign_id: id.clone(),
            })
            .await
            .unwrap_err(),
        server
            .campaigns
            .cancel_campaign(pb::CancelCampaignRequest {
                campaign_id: id.clone(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().ends_with("CANCELLED"),
            "{}",
            status.message()
        );
    }

    // Sends in flight at the cancel finish and are counted, those still
    // waiting for a slot are cancelled; then it all adds up.
    let status = server.wait_until_settled(&id, Duration::from_secs(5)).await;
    assert!(status.consistent, "{status:?}");
    let counts = status.counts.unwrap();
    assert_eq!(counts.processed + counts.cancelled, 40);
    server.stop().await;
}

#[tokio::test]
async fn a_scheduled_campaign_waits_for_its_time_or_can_be_cancelled() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let in_an_hour = broadside_time(3_600_000);
    let later = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "later".into(),
            body: "Hello {{name}}".into(),
            sender: "Broadside".into(),
            recipients: recipients(3),
            scheduled_at: Some(in_an_hour),
            start: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(later.state, pb::CampaignState::Scheduled as i32);
    let cancelled = server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: later.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(
        counts(cancelled.counts.as_ref().unwrap()),
        (3, 0, 0, 0, 0, 3)
    );

    let soon = server
        .campaigns
        .create_campaign(pb::CreateCampaignRequest {
            name: "soon".into(),
            body: "Hello {{name}}".into(),
            sender: "Broadside".into(),
            recipients: recipients(3),
            scheduled_at: Some(broadside_time(300)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    let started = server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: soon.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(started.state, pb::CampaignState::Scheduled as i32);
    let done = server
        .wait_for_state(
            &soon.id,
            pb::CampaignState::Completed,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(counts(done.counts.as_ref().unwrap()), (3, 0, 3, 0, 3, 0));
    server.stop().await;
}

/// Now plus `ms` milliseconds, as a protobuf timestamp.
fn broadside_time(ms: i64) -> prost_types::Timestamp {
    let at = chrono::Utc::now().timestamp_millis() + ms;
    prost_types::Timestamp {
        seconds: at / 1000,
        nanos: ((at % 1000) * 1_000_000) as i32,
    }
}

#[tokio::test]
async fn concurrent_replays_of_a_request_id_create_one_campaign() {
    let db = TestDb::new().await;
    let server = TestServer::start(test_config(&db)).await;
    let request = pb::CreateCampaignRequest {
        name: "once".into(),
        body: "Hello {{name}}".into(),
        sender: "Broadside".into(),
        recipients: recipients(50),
        request_id: "order-42".into(),
        ..Default::default()
    };

    let calls = (0..20).map(|_| {
        let mut client = server.campaigns.clone();
        let request = request.clone();
        tokio::spawn(async move {
            client
                .create_campaign(request)
                .await
                .map(|r| r.into_inner())
        })
    });
    let responses = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<_> = responses
        .into_iter()
        .map(|r| r.unwrap().unwrap().campaign.unwrap().id)
        .collect();
    assert_eq!(ids.len(), 1, "every replay returns the same campaign");

    let mut client = server.campaigns.clone();
    let list = client
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.campaigns.len(), 1);
    assert_eq!(list.campaigns[0].counts.as_ref().unwrap().total, 50);

    let mut different = request.clone();
    different.body = "Changed {{name}}".into();
    let status = client.create_campaign(different).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("order-42"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn add_recipients_streams_a_hundred_thousand_with_dedup_and_capped_rejections() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let campaign = server.create(recipients(10), false).await;
    let id = campaign.id.clone();

    // 100,000 new numbers in chunks of 5,000, plus 10 already in the campaign,
    // 150 invalid ones, and each chunk's first number repeated.
    let mut chunks = Vec::new();
    for c in 0..20 {
        let mut chunk: Vec<_> = (0..5_000)
            .map(|i| recipient(&phone(10 + c * 5_000 + i), "x"))
            .collect();
        chunk.push(recipient(&phone(10 + c * 5_000), "x"));
        if c == 0 {
            chunk.extend(recipients(10));
        }
        if c < 3 {
            chunk.extend((0..50).map(|_| recipient("garbage", "x")));
        }
        chunks.push(pb::AddRecipientsRequest {
            campaign_id: if c == 0 { id.clone() } else { String::new() },
            recipients: chunk,
        });
    }
    let response = server
        .campaigns
        .add_recipients(futures::stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.accepted, 100_000);
    assert_eq!(response.duplicates, 20 + 10);
    assert_eq!(response.rejected_count, 150);
    assert_eq!(response.rejected.len(), 100);
    assert_eq!(response.total, 100_010);
    assert_eq!(
        response.rejected[0].index, 5_011,
        "index counts across the stream"
    );

    let status = server.status(&id).await;
    assert!(status.consistent);
    assert_eq!(status.counts.unwrap().total, 100_010);

    // Once started, no more recipients.
    server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap();
    let status = server
        .campaigns
        .add_recipients(futures::stream::iter([pb::AddRecipientsRequest {
            campaign_id: id.clone(),
            recipients: recipients(1),
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn add_recipients_needs_a_campaign_id_first() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let status = server
        .campaigns
        .add_recipients(futures::stream::iter([pb::AddRecipientsRequest {
            campaign_id: String::new(),
            recipients: recipients(1),
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status)[0].0, "campaign_id");

    let status = server
        .campaigns
        .add_recipients(futures::stream::iter([pb::AddRecipientsRequest {
            campaign_id: uuid::Uuid::now_v7().to_string(),
            recipients: recipients(1),
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn list_campaigns_pages_newest_first_and_filters_by_state() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(server.create(recipients(1), false).await.id);
    }
    server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: created[2].clone(),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = server
            .campaigns
            .list_campaigns(pb::ListCampaignsRequest {
                page_size: 3,
                page_token,
                state: 0,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.campaigns.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created);

    let cancelled = server
        .campaigns
        .list_campaigns(pb::ListCampaignsRequest {
            state: pb::CampaignState::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.campaigns.len(), 1);

    for request in [
        pb::ListCampaignsRequest {
            page_token: "bogus".into(),
            ..Default::default()
        },
        pb::ListCampaignsRequest {
            page_size: 100_000,
            ..Default::default()
        },
        pb::ListCampaignsRequest {
            state: 99,
            ..Default::default()
        },
    ] {
        let status = server.campaigns.list_campaigns(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_ids_are_not_found_and_malformed_ids_invalid() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = server
        .campaigns
        .get_campaign(pb::GetCampaignRequest {
            campaign_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown));

    let status = server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status)[0].0, "campaign_id");

    let status = server
        .dispatch
        .get_message(pb::GetMessageRequest {
            message_id: unknown,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn the_status_check_agrees_with_the_message_rows_after_a_run() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let campaign = server.create(recipients(200), true).await;
    server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(20),
        )
        .await;
    let status = server.status(&campaign.id).await;
    assert!(status.consistent);
    assert_eq!(status.counts, status.aggregated);
    assert_eq!(
        counts(status.counts.as_ref().unwrap()),
        (200, 0, 200, 0, 200, 0)
    );
    let done = server.campaign(&campaign.id).await;
    assert!(done.completed_at.is_some());
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_services() {
    let db = TestDb::new().await;
    let server = TestServer::start(test_config(&db)).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        "broadside.v1.CampaignService",
        "broadside.v1.DispatchService",
    ] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "broadside.v1.CampaignService",
        "broadside.v1.DispatchService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    server.stop().await;
}
