//! The `broadside` command line: `serve`, `migrate`, `bench`, and client commands.

mod bench;
mod client;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, DatabaseArgs, ServeArgs};

/// Broadside: bulk SMS campaigns over gRPC.
#[derive(Debug, Parser)]
#[command(name = "broadside", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (migrations run first).
    Serve(Box<ServeArgs>),
    /// Run database migrations and exit.
    Migrate(DatabaseArgs),
    /// Measure ingest, dispatch, pacing, watch latency and memory end to end.
    Bench(bench::BenchArgs),
    /// Manage campaigns on a running server.
    Campaign {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: client::CampaignCommand,
    },
    /// Send one transactional SMS through a running server.
    Send {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(flatten)]
        args: client::SendArgs,
    },
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::try_from(*args)?;
            let telemetry = crate::telemetry::init(config.log_format)?;
            let server = crate::server::Server::start(config).await?;
            let token = server.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                token.cancel();
            });
            let result = server.wait().await;
            telemetry.shutdown();
            result
        }
        Command::Migrate(args) => {
            let telemetry = crate::telemetry::init(crate::config::LogFormat::Text)?;
            let store = crate::store::Store::connect(&args.database_url)
                .await
                .context("connecting to the database")?;
            store.migrate().await.context("running migrations")?;
            tracing::info!("migrations applied");
            telemetry.shutdown();
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Campaign { server, command } => client::campaign(&server, command).await,
        Command::Send { server, args } => client::send(&server, args).await,
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
