//! Builds and runs the whole service: the store, the engine, progress feeds,
//! and the tonic server with reflection and health, and shuts them down in
//! order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, campaigns::Campaigns, dispatch::Dispatch};
use crate::config::{Config, ProviderConfig};
use crate::engine::{Engine, EngineConfig, Pacer, RunningCampaigns, build_stack};
use crate::pb::{
    self, campaign_service_server::CampaignServiceServer,
    dispatch_service_server::DispatchServiceServer,
};
use crate::progress::{ProgressHub, listener};
use crate::provider::{simulator::Simulator, twilio::Twilio};
use crate::store::Store;
use crate::telemetry;

/// A running server.
pub struct Server {
    /// The gRPC address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The metrics address actually bound, if metrics are on.
    pub metrics_addr: Option<SocketAddr>,
    /// The server's store, for tests that inspect the database.
    pub store: Store,
    /// The server's progress hub, for tests that count its reads.
    pub hub: ProgressHub,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Connects to the database, migrates it, and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let hint = if config.database_url.starts_with("sqlite:") {
            " (SQLite allows one process: is another Broadside using this file?)"
        } else {
            ""
        };
        let store = Store::connect(&config.database_url)
            .await
            .with_context(|| format!("connecting to the database{hint}"))?;
        store
            .migrate()
            .await
            .with_context(|| format!("running migrations{hint}"))?;

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let metrics_addr = match config.metrics_listen {
            Some(address) => Some(telemetry::serve_metrics(address).await?),
            None => None,
        };

        let shutdown = CancellationToken::new();
        let hub = ProgressHub::new(store.clone(), config.watch_interval, shutdown.clone());
        let engine = start_engine(&config, store.clone(), hub.clone(), shutdown.child_token())?;
        tokio::spawn(listener::run(store.clone(), hub.clone()));

        let state = AppState {
            store: store.clone(),
            engine: engine.clone(),
            hub: hub.clone(),
            default_region: config.default_region,
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(serve(state, listener, engine, config.shutdown_timeout));
        tracing::info!(%addr, provider = config.provider.name(), rate = config.rate_limit, "broadside serving");
        Ok(Self {
            addr,
            metrics_addr,
            store,
            hub,
            shutdown,
            task,
        })
    }

    /// A token whose cancellation begins a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shuts down gracefully and waits until everything has stopped.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// Stops at once without any of the graceful steps, as a crash would:
    /// claims stay leased until they expire.
    pub fn abort(self) {
        self.task.abort();
    }
}

fn start_engine(
    config: &Config,
    store: Store,
    hub: ProgressHub,
    shutdown: CancellationToken,
) -> anyhow::Result<Engine> {
    let pacer = Arc::new(Pacer::new(
        config.provider.name().into(),
        config.provider.account_key(),
        config.rate_limit,
        store.clone(),
        shutdown.clone(),
    ));
    let running = RunningCampaigns::default();
    let stack = match &config.provider {
        ProviderConfig::Simulator(simulator) => build_stack(
            Simulator::new(*simulator),
            pacer.clone(),
            running.admission(),
            config.provider_timeout,
        ),
        ProviderConfig::Twilio(twilio) => build_stack(
            Twilio::new(twilio.clone()).context("building the Twilio client")?,
            pacer.clone(),
            running.admission(),
            config.provider_timeout,
        ),
    };
    let engine_config = EngineConfig {
        owner: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()),
        provider: config.provider.name().into(),
        rate: config.rate_limit,
        policy: config.retry,
        lease: config.lease,
        max_in_flight: config.max_in_flight,
        claim_batch: 1000,
        poll_interval: config.poll_interval,
        housekeeping_interval: config.housekeeping_interval,
    };
    Ok(Engine::start(
        store,
        engine_config,
        stack,
        pacer,
        running,
        hub,
        shutdown,
    ))
}

/// Serves until the shutdown token is cancelled, then: health NOT_SERVING,
/// the engine stops claiming and drains, watch streams end, and the server
/// exits, all within `budget`.
async fn serve(
    state: AppState,
    listener: TcpListener,
    engine: Engine,
    budget: Duration,
) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CampaignServiceServer<Campaigns>>()
        .await;
    health_reporter
        .set_serving::<DispatchServiceServer<Dispatch>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let reporter = health_reporter.clone();
    let stopping = shutdown.clone();
    let signal = async move {
        stopping.cancelled().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        reporter
            .set_not_serving::<CampaignServiceServer<Campaigns>>()
            .await;
        reporter
            .set_not_serving::<DispatchServiceServer<Dispatch>>()
            .await;
        tracing::info!("shutting down: health NOT_SERVING, claims stopped");
    };

    let router = tonic::transport::Server::builder()
        .layer(telemetry::GrpcMetricsLayer)
        .trace_fn(telemetry::grpc_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CampaignServiceServer::new(Campaigns::new(state.clone())))
        .add_service(DispatchServiceServer::new(Dispatch::new(state.clone())));

    let served = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    let drained = async {
        served.await?;
        engine.drain().await;
        anyhow::Ok(())
    };
    // The budget starts when shutdown begins, not when serving began.
    tokio::pin!(drained);
    tokio::select! {
        result = &mut drained => return result,
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(budget, drained).await {
        Ok(result) => {
            tracing::info!("shutdown complete");
            result
        }
        Err(_) => {
            tracing::warn!(
                ?budget,
                "shutdown budget exhausted; exiting with work unfinished (leases will expire)"
            );
            Ok(())
        }
    }
}
