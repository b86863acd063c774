//! Traces reach an OTLP collector, and `/metrics` moves while a campaign runs.
//! Both run the real binary: telemetry is process-wide.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use broadside::{
    fake_twilio::{FakeConfig, FakeTwilio, Scripted},
    pb,
};
use common::{
    process::{Process, wait_completed},
    *,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spans received: (name, trace id in hex).
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((span.name, hex::encode(span.trace_id)));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Creates and starts a campaign, optionally under a caller's trace.
async fn start_campaign(process: &Process, n: usize, traceparent: Option<&str>) -> String {
    let mut request = tonic::Request::new(pb::CreateCampaignRequest {
        name: "otel".into(),
        body: "Hello {{name}}".into(),
        sender: "Broadside".into(),
        recipients: recipients(n),
        start: true,
        ..Default::default()
    });
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    let mut client = process.client().await;
    client
        .create_campaign(request)
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap()
        .id
}

#[tokio::test]
async fn spans_reach_a_local_otlp_collector_and_continue_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let db = TestDb::new().await;
    let fake = FakeTwilio::start(FakeConfig::default()).await.unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let process = Process::start(&db, &fake, &env).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let id = start_campaign(&process, 20, Some(&traceparent)).await;
    wait_completed(&mut process.client().await, &id).await;
    process.signal("-TERM"); // shutdown flushes the exporter
    process.wait(Duration::from_secs(30)).await;

    let spans = collector.0.lock().unwrap().clone();
    let named = |name: &str| spans.iter().filter(|(n, _)| n == name).count();
    assert!(
        named("broadside.v1.CampaignService/CreateCampaign") >= 1,
        "{spans:?}"
    );
    assert!(named("dispatch_batch") >= 1, "{spans:?}");
    assert!(named("record_batch") >= 1, "{spans:?}");
    assert!(
        spans
            .iter()
            .any(|(n, t)| n == "broadside.v1.CampaignService/CreateCampaign" && t == trace_id),
        "the RPC span continues the incoming traceparent: {spans:?}"
    );
}

/// The value of the first sample of `metric` whose labels contain all of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(metric) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .next()
}

#[tokio::test]
async fn metrics_show_dispatch_moving_while_a_campaign_runs() {
    let db = TestDb::new().await;
    let fake = FakeTwilio::start(FakeConfig::default()).await.unwrap();
    fake.script(
        &phone(0),
        [Scripted::Error {
            status: 429,
            code: Some(20429),
            retry_after: None,
        }],
    );
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("BROADSIDE_METRICS_LISTEN", metrics_addr.as_str()),
        ("BROADSIDE_RATE_LIMIT", "200"),
    ];
    let process = Process::start(&db, &fake, &env).await;
    let url = format!("http://{metrics_addr}/metrics");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scrape = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };

    let id = start_campaign(&process, 600, None).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let during = scrape().await;
    let sent = r#"outcome="sent""#;
    let early = sample(
        &during,
        "broadside_messages_total",
        &[sent, r#"provider="twilio""#],
    )
    .unwrap_or(0.0);
    assert!(
        sample(&during, "broadside_in_flight", &[]).is_some(),
        "{during}"
    );
    assert!(
        sample(&during, "broadside_queue_depth", &[]).is_some(),
        "{during}"
    );
    assert!(
        sample(&during, "broadside_pacing_rate", &[]).is_some(),
        "{during}"
    );
    wait_completed(&mut process.client().await, &id).await;
    let after = scrape().await;
    process.signal("-TERM");
    process.wait(Duration::from_secs(30)).await;

    let late = sample(&after, "broadside_messages_total", &[sent]).unwrap();
    assert!(
        early > 0.0 && late > early,
        "sent moved from {early} to {late}"
    );
    assert_eq!(late, 600.0);
    assert_eq!(
        sample(
            &after,
            "broadside_messages_total",
            &[r#"outcome="retried""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "broadside_throttle_events_total", &[]),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            "broadside_provider_request_seconds_bucket",
            &[r#"le="+Inf""#]
        )
        .unwrap()
            >= 601.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "broadside_rpcs_total",
            &[
                r#"method="/broadside.v1.CampaignService/CreateCampaign""#,
                r#"code="Ok""#
            ]
        )
        .is_some(),
        "{after}"
    );
    assert!(!after.contains("+1415"), "no phone numbers in metrics");
}
