//! The user-facing configuration: one struct that holds each component's own config and
//! projects into them. Every knob is declared, defaulted and bounded in its component's
//! crate; this file only adds the master switch and the loopback allowance.

use std::time::Duration;

use telemetry_aggregator::AggregatorConfig;
use telemetry_breaker::{BreakerConfig, BreakerConfigError};
use telemetry_export::ExportConfig;
use telemetry_flags::FlagCacheConfig;
use telemetry_types::validation::ConfigError;

/// Everything the telemetry pipeline can be tuned with.
///
/// ```
/// use telemetry_client::TelemetryConfig;
/// let mut config = TelemetryConfig::default();
/// config.enabled = true;
/// config.aggregation.batch_size = 50;
/// config.validate().unwrap();
/// config.export.retry.max_retries = 11;
/// assert!(config.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// Master switch. Default `false` (opt-in first release); even when `true` the server's
    /// feature flag must say yes.
    pub enabled: bool,
    /// Batching, buffering and the close deadline (`close_timeout`, default 2 s).
    pub aggregation: AggregatorConfig,
    /// Requests, retries and the endpoint choice.
    pub export: ExportConfig,
    /// The breaker in front of each host's export endpoint. Default: 5 consecutive failures
    /// open it for 60 s (at most 60 s even when a `Retry-After` asks for longer, the longest
    /// `Retry-After` a retry honours), 2 successful probes of 1 close it.
    pub breaker: BreakerConfig,
    /// Feature-flag caching (TTL 15 min, failure backoff). Its `switch` is set by the
    /// provider from [`ProviderOptions::switch`](crate::ProviderOptions::switch).
    pub flags: FlagCacheConfig,
    /// Permit `http://` for loopback hosts (tests and the local simulator). Default `false`.
    pub allow_insecure_loopback: bool,
    /// Workspace hosts with a live client, at most; a connection to one more host gets a
    /// disabled handle (`DisabledReason::TooManyHosts`). Default 256; 1..=100 000.
    pub max_hosts: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            aggregation: AggregatorConfig::default(),
            export: ExportConfig::default(),
            breaker: BreakerConfig {
                max_open_duration: Duration::from_secs(60),
                ..BreakerConfig::default()
            },
            flags: FlagCacheConfig::default(),
            allow_insecure_loopback: false,
            max_hosts: 256,
        }
    }
}

impl TelemetryConfig {
    /// Checks every component's config; the first value out of range is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.aggregation.validate()?;
        self.export.validate()?;
        self.flags.validate()?;
        ConfigError::check_range(
            self.max_hosts,
            1,
            100_000,
            "max_hosts",
            "must be in 1..=100000",
        )?;
        self.breaker.validate().map_err(|e| match e {
            BreakerConfigError::Invalid { field, reason } => ConfigError::Invalid { field, reason },
            _ => ConfigError::Invalid {
                field: "breaker",
                reason: "is out of range",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = TelemetryConfig::default();
        assert!(!c.enabled);
        assert!(!c.allow_insecure_loopback);
        assert_eq!(c.aggregation, AggregatorConfig::default());
        assert_eq!(c.export, ExportConfig::default());
        assert_eq!(c.breaker.open_duration, Duration::from_secs(60));
        assert_eq!(c.breaker.max_open_duration, Duration::from_secs(60));
        assert_eq!(c.breaker.success_threshold, 2);
        assert_eq!(c.breaker.half_open_max_probes, 1);
        assert_eq!(c.flags.default_ttl, Duration::from_secs(900));
        c.validate().unwrap();
    }

    #[test]
    fn each_component_is_validated() {
        let check = |f: fn(&mut TelemetryConfig), field: &str| {
            let mut c = TelemetryConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        };
        check(|c| c.aggregation.batch_size = 0, "batch_size");
        check(
            |c| c.export.request_timeout = Duration::ZERO,
            "request_timeout",
        );
        check(|c| c.flags.default_ttl = Duration::ZERO, "flag_ttl");
        check(|c| c.breaker.success_threshold = 0, "success_threshold");
        check(|c| c.max_hosts = 0, "max_hosts");
    }
}
