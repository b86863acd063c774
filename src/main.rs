//! The `broadside` binary: parses the command line and hands it to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS crypto provider for the whole process (reqwest's rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = broadside::cli::Cli::parse();
    match broadside::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
