//! The dispatch engine against a local fake that speaks Twilio's wire format
//! and counts what it accepted.

mod common;

use std::time::{Duration, Instant};

use broadside::{
    domain::{Delivery, Disposition, time::now_millis},
    fake_twilio::{FakeConfig, FakeTwilio, Scripted},
    pb,
    store::queue::Recorded,
};
use common::*;

async fn fake() -> FakeTwilio {
    FakeTwilio::start(FakeConfig::default()).await.unwrap()
}

fn error(status: u16, code: i64) -> Scripted {
    Scripted::Error {
        status,
        code: Some(code),
        retry_after: None,
    }
}

/// The message sent to recipient `i` of a campaign.
async fn message_to(server: &mut TestServer, campaign_id: &str, i: usize) -> pb::Message {
    let to = phone(i);
    server
        .messages(campaign_id)
        .await
        .into_iter()
        .find(|m| m.to == to)
        .expect("message for recipient")
}

#[tokio::test]
async fn five_thousand_recipients_reach_the_provider_exactly_once() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut server = TestServer::start(with_twilio(test_config(&db), &fake)).await;

    let campaign = server.create(recipients(5_000), true).await;
    let done = server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(60),
        )
        .await;

    assert_eq!(
        counts(done.counts.as_ref().unwrap()),
        (5_000, 0, 5_000, 0, 5_000, 0)
    );
    assert_eq!(fake.accepted_total(), 5_000);
    assert_eq!(fake.duplicates(), 0);
    for i in 0..5_000 {
        assert_eq!(fake.accepted(&phone(i), &body(i)), 1, "recipient {i}");
    }
    let status = server.status(&campaign.id).await;
    assert!(status.consistent);
    assert_eq!(status.aggregated, status.counts);

    let messages = server.messages(&campaign.id).await;
    assert!(
        messages
            .iter()
            .all(|m| m.provider_message_id.starts_with("SM") && m.attempts == 1)
    );
    server.stop().await;
}

#[tokio::test]
async fn rate_limited_messages_are_retried_with_backoff_then_fail_with_the_error_kept() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut server = TestServer::start(with_twilio(test_config(&db), &fake)).await;
    fake.script(&phone(0), [error(429, 20429), error(429, 20429)]);
    fake.script(&phone(1), (0..5).map(|_| error(429, 20429)));

    let campaign = server.create(recipients(3), true).await;
    let done = server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(counts(done.counts.as_ref().unwrap()), (3, 0, 2, 1, 3, 0));

    let recovered = message_to(&mut server, &campaign.id, 0).await;
    assert_eq!(recovered.state, pb::MessageState::Sent as i32);
    assert_eq!(recovered.attempts, 3);
    // Two retries: at least 50 ms then 100 ms of backoff.
    let waited = millis(&recovered.sent_at.unwrap()) - millis(&recovered.created_at.unwrap());
    assert!(waited >= 150, "sent after {waited} ms");

    let exhausted = message_to(&mut server, &campaign.id, 1).await;
    assert_eq!(exhausted.state, pb::MessageState::Failed as i32);
    assert_eq!(exhausted.attempts, 5);
    assert_eq!(exhausted.error_code, "rate_limit_exceeded");
    assert!(
        exhausted.error_message.contains("20429"),
        "{}",
        exhausted.error_message
    );
    assert_eq!(fake.accepted(&phone(1), &body(1)), 0);
    assert_eq!(fake.accepted_total(), 2);
    server.stop().await;
}

#[tokio::test]
async fn retry_after_from_the_provider_lengthens_the_wait() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut server = TestServer::start(with_twilio(test_config(&db), &fake)).await;
    fake.script(
        &phone(0),
        [Scripted::Error {
            status: 429,
            code: Some(20429),
            retry_after: Some(1),
        }],
    );

    let campaign = server.create(recipients(1), true).await;
    server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(20),
        )
        .await;
    let message = message_to(&mut server, &campaign.id, 0).await;
    assert_eq!(message.attempts, 2);
    let waited = millis(&message.sent_at.unwrap()) - millis(&message.created_at.unwrap());
    assert!(
        waited >= 1_000,
        "Retry-After of 1 s honoured, sent after {waited} ms"
    );

    let stats = server
        .dispatch
        .get_dispatch_stats(pb::GetDispatchStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.providers[0].provider, "twilio");
    assert_eq!(stats.providers[0].throttle_events, 1);
    server.stop().await;
}

#[tokio::test]
async fn permanent_errors_fail_at_once_with_their_code() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut server = TestServer::start(with_twilio(test_config(&db), &fake)).await;
    fake.script(&phone(0), [error(400, 21211)]);
    fake.script(&phone(1), [error(400, 21610)]);

    let campaign = server.create(recipients(3), true).await;
    let done = server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(counts(done.counts.as_ref().unwrap()), (3, 0, 1, 2, 3, 0));
    for (i, code) in [(0, "21211"), (1, "21610")] {
        let message = message_to(&mut server, &campaign.id, i).await;
        assert_eq!(message.state, pb::MessageState::Failed as i32);
        assert_eq!(message.attempts, 1);
        assert_eq!(message.error_code, code);
    }
    assert_eq!(fake.requests(), 3);
    server.stop().await;
}

async fn ambiguous_run(delivery: Delivery) -> (FakeTwilio, TestServer, String, TestDb) {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.retry.delivery = delivery;
    config.provider_timeout = Duration::from_millis(300);
    let mut server = TestServer::start(config).await;
    fake.script(&phone(0), [error(500, 20500)]);
    fake.script(
        &phone(1),
        [Scripted::AcceptThenHang(Duration::from_secs(2))],
    );

    let campaign = server.create(recipients(3), true).await;
    server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(20),
        )
        .await;
    (fake, server, campaign.id, db)
}

#[tokio::test]
async fn ambiguous_outcomes_are_retried_at_least_once() {
    let (fake, mut server, id, _db) = ambiguous_run(Delivery::AtLeastOnce).await;
    for i in 0..2 {
        let message = message_to(&mut server, &id, i).await;
        assert_eq!(
            message.state,
            pb::MessageState::Sent as i32,
            "recipient {i}"
        );
        assert_eq!(message.attempts, 2);
    }
    // The hung request was accepted before it timed out: at-least-once sends it twice.
    assert_eq!(fake.accepted(&phone(1), &body(1)), 2);
    assert_eq!(fake.accepted(&phone(0), &body(0)), 1);
    server.stop().await;
}

#[tokio::test]
async fn ambiguous_outcomes_fail_as_unknown_at_most_once() {
    let (fake, mut server, id, _db) = ambiguous_run(Delivery::AtMostOnce).await;
    for i in 0..2 {
        let message = message_to(&mut server, &id, i).await;
        assert_eq!(
            message.state,
            pb::MessageState::Failed as i32,
            "recipient {i}"
        );
        assert_eq!(message.attempts, 1);
        assert_eq!(message.error_code, "unknown_outcome");
    }
    assert_eq!(fake.accepted(&phone(1), &body(1)), 1, "never sent twice");
    assert_eq!(fake.accepted(&phone(2), &body(2)), 1);
    server.stop().await;
}

#[tokio::test]
async fn claims_of_a_dead_worker_are_rescued_and_sent_once() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.poll_interval = Duration::from_secs(30); // the engine claims only when woken
    let mut server = TestServer::start(config).await;
    let store = server.server.store.clone();

    let campaign = server.create(recipients(20), false).await;
    let now = now_millis();
    store
        .transition(
            "default",
            &campaign.id,
            broadside::domain::Transition::Start,
            now,
        )
        .await
        .unwrap();
    let dead = store
        .claim("dead-worker", Some(&campaign.id), 10, now + 300, now)
        .await
        .unwrap();
    assert_eq!(dead.len(), 10);
    server
        .dispatch
        .send_message(pb::SendMessageRequest {
            to: phone(99),
            body: "wake up".into(),
            sender: "Broadside".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();

    let done = server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(counts(done.counts.as_ref().unwrap()), (20, 0, 20, 0, 20, 0));
    assert_eq!(fake.duplicates(), 0);
    for i in 0..20 {
        assert_eq!(fake.accepted(&phone(i), &body(i)), 1, "recipient {i}");
    }
    let rescued = server
        .messages(&campaign.id)
        .await
        .into_iter()
        .filter(|m| dead.iter().any(|d| d.id == m.id))
        .collect::<Vec<_>>();
    assert!(
        rescued.iter().all(|m| m.attempts == 2),
        "the dead worker's attempt still counts"
    );

    // The dead worker wakes up and reports an outcome for a message it lost.
    let late = store
        .record(
            "dead-worker",
            "twilio",
            &[Recorded {
                id: dead[0].id.clone(),
                disposition: Some(Disposition::Failed {
                    code: "21211".into(),
                    message: "late".into(),
                }),
            }],
            now_millis(),
        )
        .await
        .unwrap();
    assert_eq!(late.written, 0);
    let status = server.status(&campaign.id).await;
    assert!(status.consistent);
    assert_eq!(
        counts(status.counts.as_ref().unwrap()),
        (20, 0, 20, 0, 20, 0)
    );
    server.stop().await;
}

#[tokio::test]
async fn pause_stops_sending_and_resume_finishes_with_nothing_lost() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.rate_limit = 200.0;
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(600), true).await;
    let id = campaign.id.clone();

    tokio::time::sleep(Duration::from_millis(700)).await;
    server
        .campaigns
        .pause_campaign(pb::PauseCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap();
    let paused = server.wait_until_idle(&id, Duration::from_secs(3)).await;
    let sent_at_pause = paused.counts.as_ref().unwrap().sent;
    assert!(sent_at_pause > 0 && sent_at_pause < 600, "{paused:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.campaign(&id).await.counts.unwrap().sent,
        sent_at_pause,
        "nothing sent while paused"
    );
    assert_eq!(fake.accepted_total() as i64, sent_at_pause);

    server
        .campaigns
        .resume_campaign(pb::ResumeCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap();
    let done = server
        .wait_for_state(&id, pb::CampaignState::Completed, Duration::from_secs(20))
        .await;
    assert_eq!(
        counts(done.counts.as_ref().unwrap()),
        (600, 0, 600, 0, 600, 0)
    );
    assert_eq!(fake.accepted_total(), 600);
    assert_eq!(fake.duplicates(), 0);
    server.stop().await;
}

#[tokio::test]
async fn cancel_while_sending_counts_every_message_once() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.rate_limit = 200.0;
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(600), true).await;

    tokio::time::sleep(Duration::from_millis(700)).await;
    server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap();
    let status = server
        .wait_until_settled(&campaign.id, Duration::from_secs(5))
        .await;
    assert!(status.consistent, "{status:?}");
    let counts = status.counts.unwrap();
    assert!(counts.cancelled > 0 && counts.sent > 0, "{counts:?}");
    assert_eq!(counts.sent + counts.cancelled, 600);
    assert_eq!(fake.accepted_total() as i64, counts.sent);
    assert_eq!(
        server.campaign(&campaign.id).await.state,
        pb::CampaignState::Cancelled as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn a_transactional_send_overtakes_a_campaign_that_saturates_the_rate() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.rate_limit = 200.0;
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(2_000), true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let accepted_before = fake.accepted_total();
    let message = server
        .dispatch
        .send_message(pb::SendMessageRequest {
            to: "+14155550123".into(),
            body: "Your code is 123456".into(),
            sender: "Broadside".into(),
            request_id: "otp-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    loop {
        let current = server
            .dispatch
            .get_message(pb::GetMessageRequest {
                message_id: message.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        if current.state == pb::MessageState::Sent as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never sent: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.accepted("+14155550123", "Your code is 123456"), 1);
    // Measured in the provider's own order rather than wall time, so a busy
    // test machine cannot blur it: at most one second's worth of campaign
    // messages (200 at 200/s) went out ahead of the transactional one.
    let overtaken_by = fake.accepted_total() - accepted_before - 1;
    assert!(
        overtaken_by <= 200,
        "{overtaken_by} campaign messages went first"
    );
    assert!(
        server.campaign(&campaign.id).await.counts.unwrap().queued > 0,
        "campaign still running"
    );
    server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_small_campaign_is_not_starved_by_a_large_one() {
    let db = TestDb::new().await;
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.rate_limit = 400.0;
    let mut server = TestServer::start(config).await;
    let large = server.create(recipients(4_000), true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let small_recipients = (0..100)
        .map(|i| recipient(&phone(10_000 + i), "small"))
        .collect();
    let small = server.create(small_recipients, true).await;
    let started = Instant::now();
    server
        .wait_for_state(
            &small.id,
            pb::CampaignState::Completed,
            Duration::from_secs(10),
        )
        .await;
    // With a fair share (half of 400/s) the 100 messages need about half a second.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(server.campaign(&large.id).await.counts.unwrap().queued > 1_000);
    server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: large.id,
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_provider_limit_below_the_configured_rate_slows_the_pacer_instead_of_failing() {
    let db = TestDb::new().await;
    let fake = FakeTwilio::start(FakeConfig {
        rate_limit: Some(150.0),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut config = with_twilio(test_config(&db), &fake);
    config.rate_limit = 300.0;
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(600), true).await;
    let done = server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        counts(done.counts.as_ref().unwrap()),
        (600, 0, 600, 0, 600, 0)
    );
    assert!(fake.throttled() > 0, "the fake did throttle");
    assert_eq!(fake.duplicates(), 0);
    let stats = server
        .dispatch
        .get_dispatch_stats(pb::GetDispatchStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stats.providers[0].throttle_events > 0);
    server.stop().await;
}

#[tokio::test]
async fn two_engines_on_one_postgres_database_share_the_work_and_the_rate() {
    let db = TestDb::new().await;
    if !db.is_postgres() {
        eprintln!("skipped: needs BROADSIDE_TEST_DATABASE_URL (several replicas need Postgres)");
        return;
    }
    let fake = fake().await;
    let mut config = with_twilio(test_config(&db), &fake);
    config.rate_limit = 200.0;
    let mut first = TestServer::start(config.clone()).await;
    let second = TestServer::start(config).await;

    let campaign = first.create(recipients(800), true).await;
    let started = Instant::now();
    let done = first
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(30),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        counts(done.counts.as_ref().unwrap()),
        (800, 0, 800, 0, 800, 0)
    );
    assert_eq!(fake.accepted_total(), 800);
    assert_eq!(fake.duplicates(), 0, "no message sent twice");
    // 800 at 200/s is 4 s; each second at most 200 plus one reserved chunk.
    assert!(
        fake.busiest_second() <= 230,
        "busiest second {}",
        fake.busiest_second()
    );
    assert!(
        elapsed >= Duration::from_millis(3_500),
        "finished in {elapsed:?}: over the rate"
    );

    let providers: std::collections::HashSet<_> = first
        .messages(&campaign.id)
        .await
        .into_iter()
        .map(|m| m.provider)
        .collect();
    assert_eq!(providers.len(), 1);
    second.stop().await;
    first.stop().await;
}

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}
