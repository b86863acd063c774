//! WatchCampaign: live progress through the generated client.

mod common;

use std::time::{Duration, Instant};

use broadside::pb;
use common::*;
use futures::StreamExt;
use tonic::Code;

type Updates = tonic::Streaming<pb::WatchCampaignResponse>;

async fn watch(server: &TestServer, id: &str) -> Updates {
    let mut client = server.campaigns.clone();
    client
        .watch_campaign(pb::WatchCampaignRequest {
            campaign_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads a stream to its end, checking the invariants every update keeps.
async fn collect(mut updates: Updates) -> Vec<pb::WatchCampaignResponse> {
    let mut seen: Vec<pb::WatchCampaignResponse> = Vec::new();
    while let Some(update) = updates.next().await {
        let update = update.expect("update");
        let counts = update.counts.unwrap();
        assert_eq!(counts.processed, counts.sent + counts.failed);
        assert_eq!(
            counts.queued,
            counts.total - counts.processed - counts.cancelled
        );
        if let Some(previous) = seen.last() {
            let before = previous.counts.unwrap();
            assert!(
                update.sequence > previous.sequence,
                "sequence strictly increases"
            );
            assert!(counts.sent >= before.sent && counts.failed >= before.failed);
            assert!(counts.cancelled >= before.cancelled && counts.total >= before.total);
        }
        assert!(update.observed_at.is_some());
        seen.push(update);
    }
    seen
}

#[tokio::test]
async fn a_watcher_sees_the_run_from_first_counts_to_the_terminal_state() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    config.rate_limit = 1_000.0;
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(1_500), false).await;

    let updates = watch(&server, &campaign.id).await;
    let reader = tokio::spawn(collect(updates));
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap();
    let seen = reader.await.unwrap();

    assert_eq!(seen[0].sequence, 1);
    assert_eq!(
        seen[0].state,
        pb::CampaignState::Draft as i32,
        "first: the current counts"
    );
    assert_eq!(counts(&seen[0].counts.unwrap()), (1_500, 1_500, 0, 0, 0, 0));
    assert!(
        seen.len() > 3,
        "progress in between: {} updates",
        seen.len()
    );
    assert!(seen.iter().any(|u| u.rate_per_second > 0.0));
    let last = seen.last().unwrap();
    assert_eq!(last.state, pb::CampaignState::Completed as i32);
    let status = server.status(&campaign.id).await;
    assert_eq!(
        last.counts, status.aggregated,
        "the last update equals the message rows"
    );
    server.stop().await;
}

#[tokio::test]
async fn watching_a_finished_campaign_sends_one_update_and_ends() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let campaign = server.create(recipients(5), true).await;
    server
        .wait_for_state(
            &campaign.id,
            pb::CampaignState::Completed,
            Duration::from_secs(10),
        )
        .await;
    let seen = collect(watch(&server, &campaign.id).await).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].state, pb::CampaignState::Completed as i32);

    let mut client = server.campaigns.clone();
    let status = client
        .watch_campaign(pb::WatchCampaignRequest {
            campaign_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn pause_and_cancel_are_visible_to_watchers() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    config.rate_limit = 200.0;
    let mut server = TestServer::start(config).await;
    let campaign = server.create(recipients(2_000), true).await;
    let mut updates = watch(&server, &campaign.id).await;
    updates.next().await.unwrap().unwrap();

    server
        .campaigns
        .pause_campaign(pb::PauseCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap();
    loop {
        let update = updates.next().await.unwrap().unwrap();
        if update.state == pb::CampaignState::Paused as i32 {
            break;
        }
    }
    server
        .campaigns
        .cancel_campaign(pb::CancelCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap();
    let rest = collect(updates).await;
    let last = rest.last().unwrap();
    assert_eq!(last.state, pb::CampaignState::Cancelled as i32);
    assert!(last.counts.unwrap().cancelled > 0);
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_watchers_share_one_feed_and_agree_on_the_final_counts() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    config.rate_limit = 2_000.0;
    let mut server = TestServer::start(config).await;

    // A run with one watcher, to know what a feed costs in reads...
    let solo = server.create(recipients(2_000), false).await;
    let reads_before = server.server.hub.reads();
    let reader = tokio::spawn(collect(watch(&server, &solo.id).await));
    server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: solo.id.clone(),
        })
        .await
        .unwrap();
    reader.await.unwrap();
    let solo_reads = server.server.hub.reads() - reads_before;

    // ...and the same run with a thousand.
    let crowd = server.create(recipients(2_000), false).await;
    let reads_before = server.server.hub.reads();
    let mut readers = Vec::new();
    for _ in 0..1_000 {
        readers.push(tokio::spawn(collect(watch(&server, &crowd.id).await)));
    }
    server
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: crowd.id.clone(),
        })
        .await
        .unwrap();
    let mut finals = std::collections::HashSet::new();
    for reader in readers {
        let seen = reader.await.unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.state, pb::CampaignState::Completed as i32);
        finals.insert(counts(&last.counts.unwrap()));
    }
    let crowd_reads = server.server.hub.reads() - reads_before;

    assert_eq!(finals.len(), 1, "every watcher ends on the same counts");
    assert_eq!(
        finals.into_iter().next().unwrap(),
        (2_000, 0, 2_000, 0, 2_000, 0)
    );
    // One feed reads the row about once per interval whatever the audience:
    // a thousand watchers cost about what one does, not a thousand times it.
    assert!(
        crowd_reads <= solo_reads * 2 + 10,
        "{crowd_reads} reads for 1,000 watchers vs {solo_reads} for one"
    );
    assert_eq!(server.server.hub.feeds(), 0, "finished feeds are gone");
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_disconnects_leaves_nothing_behind() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(test_config(&db)).await;
    let campaign = server.create(recipients(10), false).await;
    let mut updates = watch(&server, &campaign.id).await;
    updates.next().await.unwrap().unwrap();
    assert_eq!(server.server.hub.feeds(), 1);
    drop(updates);

    let deadline = Instant::now() + Duration::from_secs(5);
    while server.server.hub.feeds() > 0 {
        assert!(
            Instant::now() < deadline,
            "the feed outlived its only watcher"
        );
        // A change wakes the feed, which then notices nobody is watching.
        server
            .campaigns
            .get_campaign(pb::GetCampaignRequest {
                campaign_id: campaign.id.clone(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let db = TestDb::new().await;
    let server = TestServer::start(test_config(&db)).await;
    let mut client = server.campaigns.clone();
    let campaign = client
        .create_campaign(pb::CreateCampaignRequest {
            name: "w".into(),
            body: "Hello {{name}}".into(),
            sender: "Broadside".into(),
            recipients: recipients(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    let mut updates = watch(&server, &campaign.id).await;
    updates.next().await.unwrap().unwrap();

    let stopping = tokio::spawn(server.server.stop());
    let ended = tokio::time::timeout(Duration::from_secs(10), updates.next())
        .await
        .expect("stream ends on shutdown");
    let status = ended.expect("a final status").unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_watcher_on_one_replica_sees_progress_made_by_another() {
    let db = TestDb::new().await;
    if !db.is_postgres() {
        eprintln!("skipped: replicas need BROADSIDE_TEST_DATABASE_URL");
        return;
    }
    let mut config = test_config(&db);
    config.rate_limit = 200.0;
    let mut worker = TestServer::start(config.clone()).await;
    // The watching replica claims only when woken, and nothing wakes it: every
    // change it reports was committed by the worker and reached it through
    // Postgres NOTIFY (its fallback read, every 2 s, is too slow to pass).
    config.poll_interval = Duration::from_secs(120);
    let watcher = TestServer::start(config).await;
    let campaign = worker.create(recipients(400), false).await;

    let mut updates = watch(&watcher, &campaign.id).await;
    let first = updates.next().await.unwrap().unwrap();
    assert_eq!(first.counts.unwrap().sent, 0);
    worker
        .campaigns
        .start_campaign(pb::StartCampaignRequest {
            campaign_id: campaign.id.clone(),
        })
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let update = tokio::time::timeout(Duration::from_secs(1), updates.next())
            .await
            .expect("progress reached the other replica within a second")
            .unwrap()
            .unwrap();
        if update.counts.unwrap().sent > 0 {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let rest = collect(updates).await;
    assert_eq!(
        rest.last().unwrap().state,
        pb::CampaignState::Completed as i32
    );
    watcher.stop().await;
    worker.stop().await;
}
