//! Configuration with documented defaults, and the hard off switch.
//!
//! Defaults follow the Node.js driver (spec section 5) unless a comment says otherwise.

use std::time::Duration;

use thiserror::Error;

/// Environment variable that turns telemetry off without any request: `1`, `true`, `yes`, `on`
/// (any case).
pub const DISABLE_ENV_VAR: &str = "DATABRICKS_TELEMETRY_DISABLED";

/// Retry backoff: `min(base * 2^attempt, max) + random(0..=jitter)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay. Default 100 ms.
    pub base: Duration,
    /// Largest delay before jitter. Default 1 s.
    pub max: Duration,
    /// Random extra delay, uniformly up to this. Default 100 ms.
    pub jitter: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: Duration::from_millis(100),
        }
    }
}

impl BackoffConfig {
    /// The delay before retry number `attempt` (0 = first retry), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Circuit-breaker settings for the export endpoint of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How long the breaker stays open. Default 60 s.
    pub open_duration: Duration,
    /// Successes in half-open that close it. Default 2.
    pub success_threshold: u32,
    /// Concurrent probes admitted in half-open. Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_duration: Duration::from_secs(60),
            success_threshold: 2,
            half_open_probes: 1,
        }
    }
}

/// Everything the telemetry pipeline can be tuned with.
///
/// ```
/// use telemetry_types::config::TelemetryConfig;
/// let config = TelemetryConfig { enabled: true, batch_size: 50, ..TelemetryConfig::default() };
/// config.validate().unwrap();
/// assert!(TelemetryConfig { batch_size: 0, ..config }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Master switch. Default `false` (opt-in first release); even when `true` the server's
    /// feature flag must say yes.
    pub enabled: bool,
    /// Rows per export request; reaching it triggers a flush. Default 100.
    pub batch_size: usize,
    /// Pending rows are flushed at least this often. Default 5 s.
    pub flush_interval: Duration,
    /// Retries after the first try of an export request. Default 3.
    pub max_retries: u32,
    /// Backoff between retries. Default 100 ms base, 1 s max, 100 ms jitter.
    pub backoff: BackoffConfig,
    /// Upper bound on a server's `Retry-After`. Default 60 s.
    pub max_retry_after: Duration,
    /// Timeout of one HTTP request (connect included). Default 10 s.
    pub request_timeout: Duration,
    /// Breaker around the export endpoint. Default 5 failures / 60 s / 2 successes / 1 probe.
    pub breaker: BreakerSettings,
    /// How long a feature-flag answer is cached when the server gives no TTL. Default 15 min.
    pub flag_ttl: Duration,
    /// How long an export waits for a feature-flag answer not yet known. Default 10 s.
    pub flag_wait_timeout: Duration,
    /// Rows waiting to be exported, at most; past it the oldest non-error row is dropped.
    /// Default 500.
    pub max_pending_rows: usize,
    /// Statements being aggregated, at most; past it the oldest is reported early. Default 5000.
    pub max_in_flight_statements: usize,
    /// A statement never completed is reported after this long. Default 1 h.
    pub statement_ttl: Duration,
    /// Retryable errors kept on one statement, at most. Default 10.
    pub max_errors_per_statement: usize,
    /// How long closing waits for the final flush. Default 2 s.
    pub close_timeout: Duration,
    /// Events buffered between the driver and the background task. Default 10 000.
    pub queue_capacity: usize,
    /// Send with the connection's credentials to `/telemetry-ext` when it has some.
    /// `false` always uses `/telemetry-unauth`. Default `true`.
    pub authenticated_export: bool,
    /// Permit `http://` for loopback hosts (tests and the local simulator). Default `false`.
    pub allow_insecure_loopback: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            batch_size: 100,
            flush_interval: Duration::from_secs(5),
            max_retries: 3,
            backoff: BackoffConfig::default(),
            max_retry_after: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            breaker: BreakerSettings::default(),
            flag_ttl: Duration::from_secs(15 * 60),
            flag_wait_timeout: Duration::from_secs(10),
            max_pending_rows: 500,
            max_in_flight_statements: 5000,
            statement_ttl: Duration::from_secs(3600),
            max_errors_per_statement: 10,
            close_timeout: Duration::from_secs(2),
            queue_capacity: 10_000,
            authenticated_export: true,
            allow_insecure_loopback: false,
        }
    }
}

/// A configuration value that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `field` is out of range.
    #[error("invalid telemetry config: `{field}` {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl TelemetryConfig {
    /// Checks every value; the first nonsensical one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, field: &'static str, reason: &'static str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid { field, reason })
            }
        }
        check(self.batch_size > 0, "batch_size", "must be at least 1")?;
        check(
            !self.flush_interval.is_zero(),
            "flush_interval",
            "must be positive",
        )?;
        check(self.max_retries <= 10, "max_retries", "must be at most 10")?;
        check(
            self.backoff.base <= self.backoff.max,
            "backoff.base",
            "must not exceed backoff.max",
        )?;
        check(
            !self.request_timeout.is_zero(),
            "request_timeout",
            "must be positive",
        )?;
        check(
            self.breaker.failure_threshold > 0,
            "breaker.failure_threshold",
            "must be at least 1",
        )?;
        check(
            !self.breaker.open_duration.is_zero(),
            "breaker.open_duration",
            "must be positive",
        )?;
        check(
            self.breaker.success_threshold > 0,
            "breaker.success_threshold",
            "must be at least 1",
        )?;
        check(
            self.breaker.half_open_probes > 0,
            "breaker.half_open_probes",
            "must be at least 1",
        )?;
        check(!self.flag_ttl.is_zero(), "flag_ttl", "must be positive")?;
        check(
            self.max_pending_rows >= self.batch_size,
            "max_pending_rows",
            "must be at least batch_size",
        )?;
        check(
            self.max_in_flight_statements > 0,
            "max_in_flight_statements",
            "must be at least 1",
        )?;
        check(
            !self.statement_ttl.is_zero(),
            "statement_ttl",
            "must be positive",
        )?;
        check(
            self.queue_capacity > 0,
            "queue_capacity",
            "must be at least 1",
        )?;
        Ok(())
    }
}

/// What the off switch's environment value means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisableSwitch {
    /// Not set or empty.
    Unset,
    /// `1`, `true`, `yes`, `on` (any case): telemetry is off, no request is made.
    Disabled,
    /// Another value: ignored (callers warn once).
    Ignored(String),
}

impl DisableSwitch {
    /// Interprets a raw value of [`DISABLE_ENV_VAR`].
    ///
    /// ```
    /// use telemetry_types::config::DisableSwitch;
    /// assert_eq!(DisableSwitch::parse(Some("YES")), DisableSwitch::Disabled);
    /// assert_eq!(DisableSwitch::parse(Some("")), DisableSwitch::Unset);
    /// assert_eq!(DisableSwitch::parse(Some("0")), DisableSwitch::Ignored("0".into()));
    /// ```
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => Self::Unset,
            Some(v)
                if ["1", "true", "yes", "on"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                Self::Disabled
            }
            Some(v) => Self::Ignored(v.to_owned()),
        }
    }

    /// Reads [`DISABLE_ENV_VAR`] from the process environment.
    pub fn from_env() -> Self {
        Self::parse(std::env::var(DISABLE_ENV_VAR).ok().as_deref())
    }

    /// Whether telemetry is forced off.
    pub fn is_disabled(&self) -> bool {
        matches!(self, Self::Disabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = TelemetryConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.flush_interval, Duration::from_secs(5));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.backoff.base, Duration::from_millis(100));
        assert_eq!(c.backoff.max, Duration::from_secs(1));
        assert_eq!(c.backoff.jitter, Duration::from_millis(100));
        assert_eq!(c.breaker, BreakerSettings::default());
        assert_eq!(c.breaker.failure_threshold, 5);
        assert_eq!(c.breaker.open_duration, Duration::from_secs(60));
        assert_eq!(c.breaker.success_threshold, 2);
        assert_eq!(c.flag_ttl, Duration::from_secs(900));
        assert_eq!(c.max_in_flight_statements, 5000);
        assert_eq!(c.statement_ttl, Duration::from_secs(3600));
        assert_eq!(c.close_timeout, Duration::from_secs(2));
        assert!(c.authenticated_export);
        c.validate().unwrap();
    }

    #[rstest]
    #[case(TelemetryConfig { batch_size: 0, ..Default::default() }, "batch_size")]
    #[case(TelemetryConfig { flush_interval: Duration::ZERO, ..Default::default() }, "flush_interval")]
    #[case(TelemetryConfig { max_retries: 11, ..Default::default() }, "max_retries")]
    #[case(TelemetryConfig { backoff: BackoffConfig { base: Duration::from_secs(2), ..Default::default() }, ..Default::default() }, "backoff.base")]
    #[case(TelemetryConfig { request_timeout: Duration::ZERO, ..Default::default() }, "request_timeout")]
    #[case(TelemetryConfig { breaker: BreakerSettings { failure_threshold: 0, ..Default::default() }, ..Default::default() }, "breaker.failure_threshold")]
    #[case(TelemetryConfig { breaker: BreakerSettings { open_duration: Duration::ZERO, ..Default::default() }, ..Default::default() }, "breaker.open_duration")]
    #[case(TelemetryConfig { breaker: BreakerSettings { success_threshold: 0, ..Default::default() }, ..Default::default() }, "breaker.success_threshold")]
    #[case(TelemetryConfig { breaker: BreakerSettings { half_open_probes: 0, ..Default::default() }, ..Default::default() }, "breaker.half_open_probes")]
    #[case(TelemetryConfig { flag_ttl: Duration::ZERO, ..Default::default() }, "flag_ttl")]
    #[case(TelemetryConfig { max_pending_rows: 99, ..Default::default() }, "max_pending_rows")]
    #[case(TelemetryConfig { max_in_flight_statements: 0, ..Default::default() }, "max_in_flight_statements")]
    #[case(TelemetryConfig { statement_ttl: Duration::ZERO, ..Default::default() }, "statement_ttl")]
    #[case(TelemetryConfig { queue_capacity: 0, ..Default::default() }, "queue_capacity")]
    fn nonsense_is_rejected(#[case] config: TelemetryConfig, #[case] field: &str) {
        let err = config.validate().unwrap_err();
        let ConfigError::Invalid { field: got, .. } = &err;
        assert_eq!(*got, field);
        assert!(err.to_string().contains(field));
    }

    #[rstest]
    #[case(0, 100)]
    #[case(1, 200)]
    #[case(2, 400)]
    #[case(3, 800)]
    #[case(4, 1000)]
    #[case(40, 1000)]
    fn backoff_grows_and_caps(#[case] attempt: u32, #[case] millis: u64) {
        assert_eq!(
            BackoffConfig::default().delay(attempt),
            Duration::from_millis(millis)
        );
    }

    #[rstest]
    #[case(None, DisableSwitch::Unset)]
    #[case(Some(""), DisableSwitch::Unset)]
    #[case(Some("1"), DisableSwitch::Disabled)]
    #[case(Some("true"), DisableSwitch::Disabled)]
    #[case(Some("TRUE"), DisableSwitch::Disabled)]
    #[case(Some("Yes"), DisableSwitch::Disabled)]
    #[case(Some("on"), DisableSwitch::Disabled)]
    #[case(Some("0"), DisableSwitch::Ignored("0".into()))]
    #[case(Some("nope"), DisableSwitch::Ignored("nope".into()))]
    fn disable_switch(#[case] value: Option<&str>, #[case] expected: DisableSwitch) {
        let got = DisableSwitch::parse(value);
        assert_eq!(got.is_disabled(), expected == DisableSwitch::Disabled);
        assert_eq!(got, expected);
    }
}
