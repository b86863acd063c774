//! Configuration: one typed [`Config`], read from flags or `BROADSIDE_*`
//! environment variables and validated once, at start.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;

use crate::domain::{Delivery, Region, RetryPolicy};
use crate::provider::{simulator::SimulatorConfig, twilio::TwilioConfig};

/// Which provider carries messages.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Simulator(SimulatorConfig),
    Twilio(TwilioConfig),
}

impl ProviderConfig {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Simulator(_) => "simulator",
            Self::Twilio(_) => "twilio",
        }
    }

    /// The key of the shared pacing budget: one per provider account.
    pub fn account_key(&self) -> String {
        match self {
            Self::Simulator(_) => "simulator".into(),
            Self::Twilio(twilio) => format!("twilio:{}", twilio.account_sid),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub provider: ProviderConfig,
    /// Messages per second per provider account, across every replica.
    pub rate_limit: f64,
    pub retry: RetryPolicy,
    pub default_region: Option<Region>,
    pub watch_interval: Duration,
    /// Where `/metrics` is served; `None` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// The longest a provider call may take.
    pub provider_timeout: Duration,
    /// How long a claim is held before it may be rescued.
    pub lease: Duration,
    pub max_in_flight: usize,
    pub poll_interval: Duration,
    pub housekeeping_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("literal address"),
            database_url: "sqlite://broadside.db?mode=rwc".into(),
            provider: ProviderConfig::Simulator(SimulatorConfig::default()),
            rate_limit: 100.0,
            retry: RetryPolicy {
                max_attempts: 5,
                backoff: Duration::from_millis(3000),
                delivery: Delivery::AtLeastOnce,
            },
            default_region: None,
            watch_interval: Duration::from_millis(250),
            metrics_listen: Some("127.0.0.1:9090".parse().expect("literal address")),
            shutdown_timeout: Duration::from_secs(25),
            log_format: LogFormat::Text,
            provider_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            max_in_flight: 2048,
            poll_interval: Duration::from_millis(100),
            housekeeping_interval: Duration::from_secs(1),
        }
    }
}

/// The server's flags; each can also be set by its environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "BROADSIDE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `simulator` or `twilio`.
    #[arg(long, env = "BROADSIDE_PROVIDER", default_value = "simulator")]
    pub provider: String,
    /// Messages per second per provider account, shared by all replicas.
    #[arg(long, env = "BROADSIDE_RATE_LIMIT", default_value_t = 100.0)]
    pub rate_limit: f64,
    /// Attempts per message, the first included.
    #[arg(long, env = "BROADSIDE_QUEUE_ATTEMPTS", default_value_t = 5)]
    pub queue_attempts: u32,
    /// Wait before the first retry, in milliseconds; doubles each retry.
    #[arg(long, env = "BROADSIDE_QUEUE_BACKOFF_MS", default_value_t = 3000)]
    pub queue_backoff_ms: u64,
    /// `at-least-once` (retry ambiguous outcomes) or `at-most-once`.
    #[arg(long, env = "BROADSIDE_DELIVERY", default_value = "at-least-once")]
    pub delivery: String,
    /// ISO region (e.g. `US`) whose national number format is accepted.
    #[arg(long, env = "BROADSIDE_DEFAULT_REGION")]
    pub default_region: Option<String>,
    /// Least time between two progress updates of one watch stream, in ms.
    #[arg(long, env = "BROADSIDE_WATCH_INTERVAL_MS", default_value_t = 250)]
    pub watch_interval_ms: u64,
    /// Prometheus `/metrics` address, or `off`.
    #[arg(
        long,
        env = "BROADSIDE_METRICS_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: String,
    /// Graceful shutdown budget, e.g. `25s`.
    #[arg(long, env = "BROADSIDE_SHUTDOWN_TIMEOUT", default_value = "25s")]
    pub shutdown_timeout: humantime::Duration,
    /// `text` or `json`.
    #[arg(long, env = "BROADSIDE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The longest one provider call may take, e.g. `10s`.
    #[arg(long, env = "BROADSIDE_PROVIDER_TIMEOUT", default_value = "10s")]
    pub provider_timeout: humantime::Duration,
    /// How long a claim is held before another worker may rescue it.
    #[arg(long, env = "BROADSIDE_LEASE", default_value = "30s")]
    pub lease: humantime::Duration,
    /// Simulator: delay before each answer, in ms.
    #[arg(long, env = "BROADSIDE_SIMULATOR_LATENCY_MS", default_value_t = 0)]
    pub simulator_latency_ms: u64,
    /// Simulator: share of sends (0 to 1) refused with a retryable error.
    #[arg(long, env = "BROADSIDE_SIMULATOR_FAILURE_RATE", default_value_t = 0.0)]
    pub simulator_failure_rate: f64,
    /// Twilio account SID (`AC...`).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// Twilio API base URL.
    #[arg(long, env = "TWILIO_API_BASE", default_value = crate::provider::twilio::DEFAULT_API_BASE)]
    pub twilio_api_base: String,
}

/// The database, for `serve` and `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `sqlite://FILE?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "BROADSIDE_DATABASE_URL",
        default_value = "sqlite://broadside.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
}

/// A setting that cannot work, named with the variable that sets it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Self, ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if !(args.rate_limit.is_finite() && args.rate_limit > 0.0) {
            return fail(format!(
                "BROADSIDE_RATE_LIMIT must be a positive number, not {}",
                args.rate_limit
            ));
        }
        if args.queue_attempts == 0 {
            return fail("BROADSIDE_QUEUE_ATTEMPTS must be at least 1".into());
        }
        if args.watch_interval_ms == 0 {
            return fail("BROADSIDE_WATCH_INTERVAL_MS must be at least 1".into());
        }
        let delivery = Delivery::parse(&args.delivery)
            .map_err(|e| ConfigError(format!("BROADSIDE_DELIVERY: {e}")))?;
        let default_region = args
            .default_region
            .filter(|r| !r.trim().is_empty())
            .map(|r| Region::parse(&r))
            .transpose()
            .map_err(|e| ConfigError(format!("BROADSIDE_DEFAULT_REGION: {e}")))?;
        let metrics_listen = match args.metrics_listen.trim() {
            "" | "off" => None,
            address => Some(address.parse().map_err(|_| {
                ConfigError(format!("BROADSIDE_METRICS_LISTEN: `{address}` is not an address like 127.0.0.1:9090, or `off`"))
            })?),
        };
        let database_url = args.database.database_url;
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return fail(
                "BROADSIDE_DATABASE_URL must start with sqlite:, postgres:// or postgresql://"
                    .into(),
            );
        }
        let provider = match args.provider.as_str() {
            "simulator" => {
                if !(0.0..=1.0).contains(&args.simulator_failure_rate) {
                    return fail("BROADSIDE_SIMULATOR_FAILURE_RATE must be between 0 and 1".into());
                }
                ProviderConfig::Simulator(SimulatorConfig {
                    latency: Duration::from_millis(args.simulator_latency_ms),
                    failure_rate: args.simulator_failure_rate,
                })
            }
            "twilio" => {
                let Some(account_sid) = args.twilio_account_sid.filter(|s| !s.is_empty()) else {
                    return fail("BROADSIDE_PROVIDER=twilio needs TWILIO_ACCOUNT_SID".into());
                };
                let Some(token) = args.twilio_auth_token.filter(|s| !s.is_empty()) else {
                    return fail("BROADSIDE_PROVIDER=twilio needs TWILIO_AUTH_TOKEN".into());
                };
                if !args.twilio_api_base.starts_with("http://")
                    && !args.twilio_api_base.starts_with("https://")
                {
                    return fail("TWILIO_API_BASE must be an http:// or https:// URL".into());
                }
                ProviderConfig::Twilio(TwilioConfig {
                    account_sid,
                    auth_token: SecretString::from(token),
                    api_base: args.twilio_api_base,
                    connect_timeout: Duration::from_secs(2),
                })
            }
            other => {
                return fail(format!(
                    "BROADSIDE_PROVIDER must be `simulator` or `twilio`, not `{other}`"
                ));
            }
        };

        Ok(Self {
            listen: args.listen,
            database_url,
            provider,
            rate_limit: args.rate_limit,
            retry: RetryPolicy {
                max_attempts: args.queue_attempts,
                backoff: Duration::from_millis(args.queue_backoff_ms),
                delivery,
            },
            default_region,
            watch_interval: Duration::from_millis(args.watch_interval_ms),
            metrics_listen,
            shutdown_timeout: args.shutdown_timeout.into(),
            log_format: args.log_format,
            provider_timeout: args.provider_timeout.into(),
            lease: args.lease.into(),
            ..Self::default()
        })
    }
}
