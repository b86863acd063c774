//! The real `broadside` binary: crash and graceful shutdown mid-campaign, and
//! the command-line client against a running server.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use broadside::{
    fake_twilio::{FakeConfig, FakeTwilio},
    pb::{self, campaign_service_client::CampaignServiceClient},
    store::Store,
};
use common::{
    process::{BINARY, Process, create_started, wait_completed},
    *,
};
use tonic::transport::Channel;

async fn sent_so_far(client: &mut CampaignServiceClient<Channel>, id: &str) -> i64 {
    client
        .get_campaign(pb::GetCampaignRequest {
            campaign_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap()
        .counts
        .unwrap()
        .sent
}

/// A count read straight from the database (no server may hold it).
async fn count_rows(db: &TestDb, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let store = Store::connect(&db.url).await.unwrap();
    let row = store
        .connection()
        .query_one_raw(store.statement(sql, vec![]))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get_by_index(0).unwrap();
    store.close().await.unwrap();
    n
}

#[tokio::test]
async fn a_crash_mid_campaign_loses_nothing_and_doubles_only_what_was_in_flight() {
    let db = TestDb::new().await;
    let fake = FakeTwilio::start(FakeConfig::default()).await.unwrap();
    let settings = [("BROADSIDE_RATE_LIMIT", "300"), ("BROADSIDE_LEASE", "1s")];
    let first = Process::start(&db, &fake, &settings).await;
    let mut client = first.client().await;
    let id = create_started(&mut client, 1_000).await;
    while sent_so_far(&mut client, &id).await < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    first.signal("-KILL");
    first.wait(Duration::from_secs(10)).await;
    // Let requests already on the wire reach the fake's tally.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let accepted_at_kill = fake.accepted_total();
    let recorded_at_kill =
        count_rows(&db, "SELECT COUNT(*) FROM messages WHERE state = 'sent'").await;
    let in_flight_at_kill = accepted_at_kill as i64 - recorded_at_kill;

    let second = Process::start(&db, &fake, &settings).await;
    let mut client = second.client().await;
    let done = wait_completed(&mut client, &id).await;

    assert_eq!(done.counts.unwrap().sent, 1_000);
    for i in 0..1_000 {
        assert!(
            fake.accepted(&phone(i), &body(i)) >= 1,
            "recipient {i} lost"
        );
    }
    let duplicates = fake.duplicates() as i64;
    assert!(
        duplicates <= in_flight_at_kill,
        "{duplicates} duplicates, but only {in_flight_at_kill} were accepted and unrecorded at the kill"
    );
    second.signal("-TERM");
    second.wait(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn sigterm_mid_campaign_drains_and_a_restart_finishes_with_nothing_lost() {
    let db = TestDb::new().await;
    let fake = FakeTwilio::start(FakeConfig {
        latency: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let settings = [
        ("BROADSIDE_RATE_LIMIT", "300"),
        ("BROADSIDE_SHUTDOWN_TIMEOUT", "10s"),
    ];
    let first = Process::start(&db, &fake, &settings).await;
    let mut client = first.client().await;
    let id = create_started(&mut client, 1_000).await;
    while sent_so_far(&mut client, &id).await < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    first.signal("-TERM");
    let took = first.wait(Duration::from_secs(15)).await;
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    let sending = count_rows(&db, "SELECT COUNT(*) FROM messages WHERE state = 'sending'").await;
    assert_eq!(sending, 0, "no message left SENDING");

    let second = Process::start(&db, &fake, &settings).await;
    let mut client = second.client().await;
    let done = wait_completed(&mut client, &id).await;
    assert_eq!(done.counts.unwrap().sent, 1_000);
    assert_eq!(fake.accepted_total(), 1_000);
    assert_eq!(fake.duplicates(), 0, "a graceful stop doubles nothing");
    second.signal("-TERM");
    second.wait(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_second_process_on_one_sqlite_file_is_refused() {
    let db = TestDb::new().await;
    if db.is_postgres() {
        return; // several processes on Postgres is the supported way to scale
    }
    let fake = FakeTwilio::start(FakeConfig::default()).await.unwrap();
    let first = Process::start(&db, &fake, &[]).await;
    let output = Command::new(BINARY)
        .arg("serve")
        .env("BROADSIDE_LISTEN", "127.0.0.1:0")
        .env("BROADSIDE_DATABASE_URL", &db.url)
        .env("BROADSIDE_METRICS_LISTEN", "off")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SQLite allows one process"), "{stderr}");
    first.signal("-TERM");
    first.wait(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn bad_configuration_is_refused_at_start_naming_the_variable() {
    for (key, value, expected) in [
        ("BROADSIDE_RATE_LIMIT", "-3", "BROADSIDE_RATE_LIMIT"),
        ("BROADSIDE_PROVIDER", "carrier-pigeon", "BROADSIDE_PROVIDER"),
        ("BROADSIDE_DELIVERY", "sometimes", "BROADSIDE_DELIVERY"),
        ("BROADSIDE_DEFAULT_REGION", "XX", "BROADSIDE_DEFAULT_REGION"),
    ] {
        let output = Command::new(BINARY)
            .arg("serve")
            .env(key, value)
            .env("BROADSIDE_METRICS_LISTEN", "off")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{key}={value}: {stderr}");
    }
    let output = Command::new(BINARY)
        .arg("serve")
        .env("BROADSIDE_PROVIDER", "twilio")
        .env("TWILIO_AUTH_TOKEN", "s3cret-token")
        .env("BROADSIDE_METRICS_LISTEN", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TWILIO_ACCOUNT_SID"), "{stderr}");
    assert!(!stderr.contains("s3cret-token"), "secrets never printed");
}

fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("BROADSIDE_SERVER", format!("http://{server}"))
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_csv(dir: &Path, rows: usize) -> std::path::PathBuf {
    let path = dir.join("recipients.csv");
    let mut text = String::from("phone,name\n");
    for i in 0..rows {
        text.push_str(&format!("{},R{i}\n", phone(i)));
    }
    text.push_str("garbage,Nobody\n");
    text.push_str(&format!("{},R0\n", phone(0)));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_cli_drives_a_campaign_from_csv_to_completion() {
    let db = TestDb::new().await;
    let mut config = test_config(&db);
    config.rate_limit = 500.0;
    let server = TestServer::start(config).await;
    let addr = server.server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(dir.path(), 300);
    let csv = csv.to_str().unwrap();

    let created = tokio::task::spawn_blocking({
        let addr = addr.clone();
        let csv = csv.to_owned();
        move || {
            cli(
                &addr,
                &[
                    "campaign",
                    "create",
                    "--name",
                    "cli",
                    "--body",
                    "Hi {{name}}",
                    "--sender",
                    "Broadside",
                    "--recipients",
                    &csv,
                ],
            )
        }
    })
    .await
    .unwrap();
    let text = stdout(&created);
    assert!(
        text.contains("300 accepted, 1 rejected, 1 duplicates"),
        "{text}"
    );
    assert!(text.contains("rejected row 302: garbage"), "{text}");
    let id = text.split_whitespace().nth(1).unwrap().to_owned();

    let run = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&addr, &args)
        })
    };
    let listed = stdout(
        &run(vec![
            "campaign".into(),
            "list".into(),
            "--state".into(),
            "draft".into(),
        ])
        .await
        .unwrap(),
    );
    assert!(listed.contains(&id) && listed.contains("DRAFT"), "{listed}");

    let started = stdout(
        &run(vec!["campaign".into(), "start".into(), id.clone()])
            .await
            .unwrap(),
    );
    assert!(started.contains("RUNNING"), "{started}");
    let paused = stdout(
        &run(vec!["campaign".into(), "pause".into(), id.clone()])
            .await
            .unwrap(),
    );
    assert!(paused.contains("PAUSED"), "{paused}");
    let resumed = stdout(
        &run(vec!["campaign".into(), "resume".into(), id.clone()])
            .await
            .unwrap(),
    );
    assert!(resumed.contains("RUNNING"), "{resumed}");

    // Not a terminal: plain lines, one per update, then the final counts.
    let watched = stdout(
        &run(vec!["campaign".into(), "watch".into(), id.clone()])
            .await
            .unwrap(),
    );
    let lines: Vec<_> = watched.lines().collect();
    assert!(lines.len() >= 2, "{watched}");
    assert!(lines[0].starts_with("#1 "), "{watched}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("COMPLETED: total 300 queued 0 sent 300 failed 0 processed 300 cancelled 0"),
        "{watched}"
    );

    let status = stdout(
        &run(vec!["campaign".into(), "status".into(), id.clone()])
            .await
            .unwrap(),
    );
    assert!(status.contains("consistent  yes"), "{status}");

    let sent = stdout(
        &run(vec![
            "send".into(),
            "--to".into(),
            "+14155550199".into(),
            "--body".into(),
            "code 42".into(),
        ])
        .await
        .unwrap(),
    );
    assert!(sent.contains("QUEUED to +14155550199"), "{sent}");

    let refused = run(vec!["campaign".into(), "pause".into(), id.clone()])
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("cannot pause a campaign that is COMPLETED")
    );
    let invalid = run(vec![
        "send".into(),
        "--to".into(),
        "nope".into(),
        "--body".into(),
        "x".into(),
    ])
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("to: "),
        "field violations are shown"
    );
    server.stop().await;
}
