//! The exporter's settings: declared, defaulted and validated here.

use std::time::Duration;

use telemetry_types::validation::ConfigError;

use crate::retry::RetryPolicy;

/// How the exporter sends a host's batches.
///
/// ```
/// use telemetry_export::ExportConfig;
/// let mut config = ExportConfig::default();
/// config.retry.max_retries = 0; // the breaker alone, as the Go driver does
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportConfig {
    /// Retries of one request and the waits between them.
    pub retry: RetryPolicy,
    /// Timeout of one HTTP request (connect included). Default 10 s; 1 ms..=5 min.
    pub request_timeout: Duration,
    /// How long a batch waits for a feature-flag answer not yet known. Default 10 s;
    /// at most 10 min.
    pub flag_wait_timeout: Duration,
    /// How long a connection's auth provider may take to produce its headers; past it the
    /// group is sent without credentials (to `/telemetry-unauth`, stripped). Default 5 s;
    /// 1 ms..=1 min.
    pub auth_timeout: Duration,
    /// Send with the connection's credentials to `/telemetry-ext` when it has some; `false`
    /// always uses `/telemetry-unauth`. Default `true`.
    pub authenticated_export: bool,
    /// Requests one host sends at once, at most. After a failure the endpoint answered, the
    /// host sends one at a time, and each success allows one more, back up to this (additive
    /// increase, multiplicative decrease). Default 4; 1..=64.
    pub max_concurrent_requests: usize,
    /// Longest pause of a host the server keeps throttling. Each `Retry-After` pauses every
    /// request of the host; the n-th in a row pauses 2^(n-1) times as long (30 s, 60 s,
    /// 120 s, ...) up to this, and each success steps back one. So a fleet told to slow down
    /// slows down further while the endpoint does not keep up. Default 4 min (measured with
    /// `telemetry-sim --fleet 10000 --scenario storm`: 10 min held rows past the recovery);
    /// at most 1 h, never below the server's own `Retry-After` (itself bounded by
    /// `retry.max_retry_after`).
    pub max_throttle_pause: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
            flag_wait_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(5),
            authenticated_export: true,
            max_concurrent_requests: 4,
            max_throttle_pause: Duration::from_secs(240),
        }
    }
}

impl ExportConfig {
    /// Checks every value against its bounds; the first one out of range is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.retry.validate()?;
        ConfigError::check_range(
            self.request_timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
            "export.request_timeout",
            "must be in 1 ms..=5 min",
        )?;
        ConfigError::check_range(
            self.flag_wait_timeout,
            Duration::ZERO,
            Duration::from_secs(600),
            "export.flag_wait_timeout",
            "must be at most 10 min",
        )?;
        ConfigError::check_range(
            self.auth_timeout,
            Duration::from_millis(1),
            Duration::from_secs(60),
            "export.auth_timeout",
            "must be in 1 ms..=1 min",
        )?;
        ConfigError::check_range(
            self.max_concurrent_requests,
            1,
            64,
            "export.max_concurrent_requests",
            "must be in 1..=64",
        )?;
        ConfigError::check_range(
            self.max_throttle_pause,
            Duration::ZERO,
            Duration::from_secs(3600),
            "export.max_throttle_pause",
            "must be at most 1 h",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let c = ExportConfig::default();
        assert_eq!(c.retry.max_retries, 3);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.flag_wait_timeout, Duration::from_secs(10));
        assert!(c.authenticated_export);
        c.validate().unwrap();
        for (bad, field) in [
            (
                ExportConfig {
                    request_timeout: Duration::ZERO,
                    ..c.clone()
                },
                "export.request_timeout",
            ),
            (
                ExportConfig {
                    request_timeout: Duration::MAX,
                    ..c.clone()
                },
                "export.request_timeout",
            ),
            (
                ExportConfig {
                    flag_wait_timeout: Duration::MAX,
                    ..c.clone()
                },
                "export.flag_wait_timeout",
            ),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
