//! The user-facing configuration: one struct that holds each component's own config and
//! projects into them. Every knob is declared, defaulted and bounded in its component's
//! crate; this file only adds the master switch and the loopback allowance.

use std::time::Duration;

use telemetry_aggregator::AggregatorConfig;
use telemetry_breaker::{BreakerConfig, BreakerConfigError, FailurePolicy};
use telemetry_export::ExportConfig;
use telemetry_flags::FlagCacheConfig;
use telemetry_types::validation::ConfigError;
use thiserror::Error;

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
    /// Send without asking the server's feature flag (as the JDBC, Python and Go drivers'
    /// force-enable options do). Default `false`. Only for a driver whose users opted in: the
    /// workspace's own switch is bypassed, and rows go to the endpoint even where the
    /// workspace has not turned telemetry on. The env off switch still wins.
    pub force_enable: bool,
    /// Batching, buffering and the close deadline (`close_timeout`, default 2 s).
    pub aggregation: AggregatorConfig,
    /// Requests, retries and the endpoint choice.
    pub export: ExportConfig,
    /// The breaker in front of each host's export endpoint. Default: 5 consecutive failures
    /// open it for 60 s, each failed probe doubles the next period (`open_backoff`) up to
    /// 2 min (also the longest a `Retry-After` keeps it open), every period lengthened by up
    /// to 25 % at random (`open_jitter`); 2 successful probes of 1 close it. Every attempt,
    /// retries included, asks it first.
    pub breaker: BreakerConfig,
    /// Feature-flag caching (TTL 15 min, failure backoff). Its `switch` is set by the
    /// provider from [`ProviderOptions::switch`](crate::ProviderOptions::switch).
    pub flags: FlagCacheConfig,
    /// Permit `http://` for loopback hosts (tests and the local simulator). Default `false`.
    pub allow_insecure_loopback: bool,
    /// Workspace hosts with a live client, at most; a connection to one more host gets a
    /// disabled handle (`DisabledReason::TooManyHosts`). Default 256; 1..=100 000.
    pub max_hosts: usize,
    /// The name of a `testing::Capture` every row goes to, with the flag
    /// on and no network (feature `testing`; option key `telemetryTestCapture`): a driver
    /// that builds its own provider from its options is pointed at a capture by its tests.
    /// Ignored without the feature, or when no capture has that name. Default `None`.
    pub test_capture: Option<String>,
    /// Send nothing: no flag look-up, no export; every request body goes to the provider's
    /// audit sink (`ProviderOptions::audit`) as it would have been sent, and its rows are
    /// counted dropped `dry_run`. Option key `telemetryDryRun`, variable
    /// `DATABRICKS_TELEMETRY_DRY_RUN`. Default `false`.
    pub dry_run: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            force_enable: false,
            aggregation: AggregatorConfig::default(),
            export: ExportConfig::default(),
            // Open periods spread by up to a quarter, so that a fleet whose breakers opened
            // in the same outage does not probe in the same second, and growing while the
            // endpoint stays down (measured with `telemetry-sim --fleet`: 2 min keeps what
            // is lost after recovery within 5 % of a fixed 60 s).
            breaker: BreakerConfig {
                max_open_duration: Duration::from_secs(120),
                open_jitter: 0.25,
                open_backoff: 2.0,
                ..BreakerConfig::default()
            },
            flags: FlagCacheConfig::default(),
            allow_insecure_loopback: false,
            max_hosts: 256,
            test_capture: None,
            dry_run: false,
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

/// A string option whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OptionError {
    /// `key`'s value is not what it must be.
    #[error("telemetry option `{key}`: `{value}` is not {expected}")]
    InvalidValue {
        /// The key as given.
        key: String,
        /// The value as given.
        value: String,
        /// What the value must be.
        expected: &'static str,
    },
    /// The values parse, but the config they make does not validate.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// `key` changes a setting the provider fixed when it started (its first enabled
    /// connection); only `enabled`, `allow_insecure_loopback` and `max_hosts` change after.
    #[error(
        "telemetry option `{key}`: the provider has started; set it before the first connection"
    )]
    TooLate {
        /// The key as given.
        key: String,
    },
    /// `key` is another Databricks driver's telemetry option that has no counterpart here:
    /// refused rather than silently ignored.
    #[error("telemetry option `{key}` is not supported: {reason}")]
    Unsupported {
        /// The key as given.
        key: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// `key` is not a telemetry option (a driver passing all its options skips these).
    #[error("`{key}` is not a telemetry option; known: {}", known.join(", "))]
    UnknownKey {
        /// The key as given.
        key: String,
        /// The options there are, by one of their names.
        known: &'static [&'static str],
    },
}

/// Every telemetry option, by one of its names (see [`TelemetryConfig::apply_option`]).
pub const KNOWN_OPTIONS: &[&str] = &[
    "telemetryEnabled",
    "forceEnableTelemetry",
    "telemetryBatchSize",
    "telemetryFlushIntervalMs",
    "telemetryMaxRetries",
    "telemetryAuthenticatedExport",
    "telemetryRequestTimeoutMs",
    "telemetryCloseTimeoutMs",
    "telemetryCircuitBreakerThreshold",
    "telemetryCircuitBreakerTimeout",
    "telemetryAllowInsecureLoopback",
    "telemetryRetryDelayMs",
    "telemetryBackoffMaxMs",
    "telemetryBackoffJitterMs",
    "telemetryMaxPendingMetrics",
    "telemetryCircuitBreakerEnabled",
    "telemetryDryRun",
];

/// Environment variables that override the config (see [`TelemetryConfig::apply_env`]),
/// with the option each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DATABRICKS_TELEMETRY_ENABLED", "telemetryEnabled"),
    ("DATABRICKS_TELEMETRY_FORCE_ENABLE", "forceEnableTelemetry"),
    ("DATABRICKS_TELEMETRY_BATCH_SIZE", "telemetryBatchSize"),
    (
        "DATABRICKS_TELEMETRY_MAX_BATCH_SIZE",
        "telemetryMaxBatchSize",
    ),
    ("DATABRICKS_TELEMETRY_LINGER_MS", "telemetryLingerMs"),
    (
        "DATABRICKS_TELEMETRY_FLUSH_INTERVAL_MS",
        "telemetryFlushIntervalMs",
    ),
    ("DATABRICKS_TELEMETRY_MAX_RETRIES", "telemetryMaxRetries"),
    (
        "DATABRICKS_TELEMETRY_REQUEST_TIMEOUT_MS",
        "telemetryRequestTimeoutMs",
    ),
    (
        "DATABRICKS_TELEMETRY_CLOSE_TIMEOUT_MS",
        "telemetryCloseTimeoutMs",
    ),
    (
        "DATABRICKS_TELEMETRY_AUTHENTICATED_EXPORT",
        "telemetryAuthenticatedExport",
    ),
    (
        "DATABRICKS_TELEMETRY_ALLOW_INSECURE_LOOPBACK",
        "telemetryAllowInsecureLoopback",
    ),
    ("DATABRICKS_TELEMETRY_DRY_RUN", "telemetryDryRun"),
];

/// A key without case, separators or a `databricks` prefix: `telemetry_batch_size`,
/// `telemetryBatchSize`, `TelemetryBatchSize` and `databricks.telemetry.batch_size` are one.
fn normalise(key: &str) -> String {
    let k: String = key
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    let k = k.strip_prefix("adbc").unwrap_or(&k).to_owned();
    k.strip_prefix("databricks").unwrap_or(&k).to_owned()
}

fn parse_bool(key: &str, value: &str) -> Result<bool, OptionError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            key,
            value,
            "a boolean (true/false, 1/0, yes/no, on/off)",
        )),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, OptionError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "a non-negative whole number"))
}

/// A duration: a whole number of milliseconds (`1500`), or a Go-style duration (`30s`,
/// `500ms`, `1m30s`, `2h`; units `ms`, `s`, `m`, `h`).
fn parse_ms(key: &str, value: &str) -> Result<Duration, OptionError> {
    let v = value.trim();
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    let bad = || {
        invalid(
            key,
            value,
            "milliseconds or a duration such as 30s, 500ms, 1m30s",
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(part);
    }
    if v.is_empty() { Err(bad()) } else { Ok(total) }
}

fn unsupported(key: &str, reason: &'static str) -> OptionError {
    OptionError::Unsupported {
        key: key.to_owned(),
        reason,
    }
}

fn invalid(key: &str, value: &str, expected: &'static str) -> OptionError {
    OptionError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

impl TelemetryConfig {
    /// Applies one string option, by the names the other Databricks drivers use (any case
    /// and separator style, with or without a `databricks.` prefix): Node.js
    /// `telemetryEnabled`, `telemetryBatchSize`, `telemetryFlushIntervalMs`,
    /// `telemetryMaxRetries`, `telemetryAuthenticatedExport`,
    /// `telemetryCircuitBreakerThreshold`, `telemetryCircuitBreakerTimeout` (ms); Python
    /// `enable_telemetry`, `telemetry_batch_size`, `force_enable_telemetry`; Go DSN
    /// `enableTelemetry`, `forceEnableTelemetry`; JDBC `EnableTelemetry`,
    /// `TelemetryBatchSize`, `TelemetryFlushInterval` (ms); and ours,
    /// `telemetryRequestTimeoutMs`, `telemetryCloseTimeoutMs`,
    /// `telemetryAllowInsecureLoopback`. The value is checked against its range at once: an
    /// out-of-range value is an error and leaves the config as it was. A key that is not a
    /// telemetry option is [`OptionError::UnknownKey`], naming the known ones (a driver that
    /// passes all its options skips it; [`apply_options`](Self::apply_options) does).
    ///
    /// ```
    /// use telemetry_client::{OptionError, TelemetryConfig};
    /// let mut c = TelemetryConfig::default();
    /// c.apply_option("enable_telemetry", "true").unwrap();
    /// c.apply_option("telemetryBatchSize", "50").unwrap();
    /// assert!(c.enabled && c.aggregation.batch_size == 50);
    /// let err = c.apply_option("databricks.http_path", "/sql/1.0/x").unwrap_err();
    /// assert!(matches!(err, OptionError::UnknownKey { .. }));
    /// assert!(err.to_string().contains("telemetryBatchSize"));
    /// let err = c.apply_option("telemetryFlushIntervalMs", "soon").unwrap_err();
    /// assert!(err.to_string().contains("telemetryFlushIntervalMs"));
    /// c.apply_option("telemetryBatchSize", "20000").unwrap_err(); // out of range
    /// assert_eq!(c.aggregation.batch_size, 50, "unchanged");
    /// ```
    pub fn apply_option(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        let mut next = self.clone();
        next.set_option(key, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    fn set_option(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        match normalise(key).as_str() {
            "telemetryenabled" | "enabletelemetry" => self.enabled = parse_bool(key, value)?,
            "forceenabletelemetry" | "telemetryforceenable" => {
                self.force_enable = parse_bool(key, value)?
            }
            "telemetrybatchsize" => self.aggregation.batch_size = parse_num(key, value)?,
            "telemetrymaxbatchsize" => self.aggregation.max_batch_size = parse_num(key, value)?,
            "telemetrylinger" | "telemetrylingerms" => {
                self.aggregation.linger = parse_ms(key, value)?
            }
            // Only a build with the test kit knows it: elsewhere it is an unknown key.
            #[cfg(feature = "testing")]
            "telemetrytestcapture" => self.test_capture = Some(value.to_owned()),
            "telemetryflushintervalms" | "telemetryflushinterval" => {
                self.aggregation.flush_interval = parse_ms(key, value)?
            }
            "telemetrymaxretries" => self.export.retry.max_retries = parse_num(key, value)?,
            "telemetryauthenticatedexport" => {
                self.export.authenticated_export = parse_bool(key, value)?
            }
            "telemetryrequesttimeoutms" => self.export.request_timeout = parse_ms(key, value)?,
            "telemetryclosetimeoutms"
            | "telemetryclosetimeout"
            | "telemetrycloseflushtimeout"
            | "telemetrycloseflushtimeoutms" => {
                self.aggregation.close_timeout = parse_ms(key, value)?
            }
            "telemetryretrydelay"
            | "telemetryretrydelayms"
            | "telemetrybackoffbase"
            | "telemetrybackoffbasems" => self.export.retry.backoff_base = parse_ms(key, value)?,
            "telemetrybackoffmax" | "telemetrybackoffmaxms" => {
                self.export.retry.backoff_max = parse_ms(key, value)?
            }
            "telemetrybackoffjitter" | "telemetrybackoffjitterms" => {
                self.export.retry.jitter = parse_ms(key, value)?
            }
            "telemetrymaxpendingmetrics" | "telemetrymaxpendingrows" => {
                self.aggregation.max_pending_rows = parse_num(key, value)?
            }
            "telemetrycircuitbreakerenabled"
            | "enabletelemetrycircuitbreaker"
            | "telemetrycircuitbreaker" => {
                if !parse_bool(key, value)? {
                    return Err(unsupported(
                        key,
                        "the breaker protects the endpoint every process shares and cannot be turned off; tune telemetryCircuitBreakerThreshold / Timeout",
                    ));
                }
            }
            "telemetryloglevel" => {
                return Err(unsupported(
                    key,
                    "log levels come from tracing: RUST_LOG=telemetry_client=debug,telemetry_export=debug",
                ));
            }
            "telemetrymaxerrorsperstatement"
            | "telemetrystatementttlms"
            | "telemetrymaxstatementmetrics" => {
                return Err(unsupported(
                    key,
                    "statements are not buffered by count here: memory is bounded by aggregation.max_buffered_bytes",
                ));
            }
            "telemetrycircuitbreakerthreshold" => {
                self.breaker.policy = FailurePolicy::Consecutive {
                    threshold: parse_num(key, value)?,
                }
            }
            "telemetrycircuitbreakertimeout" | "telemetrycircuitbreakertimeoutms" => {
                self.breaker.open_duration = parse_ms(key, value)?;
                self.breaker.max_open_duration = self
                    .breaker
                    .max_open_duration
                    .max(self.breaker.open_duration);
            }
            "telemetrydryrun" => self.dry_run = parse_bool(key, value)?,
            "telemetryallowinsecureloopback" => {
                self.allow_insecure_loopback = parse_bool(key, value)?
            }
            _ => {
                return Err(OptionError::UnknownKey {
                    key: key.to_owned(),
                    known: KNOWN_OPTIONS,
                });
            }
        }
        Ok(())
    }

    /// Applies every option of `options` (see [`apply_option`](Self::apply_option)), then
    /// validates: the first bad value or out-of-range setting is the error.
    ///
    /// ```
    /// use telemetry_client::TelemetryConfig;
    /// let mut c = TelemetryConfig::default();
    /// c.apply_options([("enableTelemetry", "1"), ("telemetryBatchSize", "0")]).unwrap_err();
    /// ```
    pub fn apply_options<'a>(
        &mut self,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), OptionError> {
        for (key, value) in options {
            match self.apply_option(key, value) {
                // A driver passes all its options: those that are not telemetry's are skipped.
                Ok(()) | Err(OptionError::UnknownKey { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.validate()?)
    }

    /// Applies the `DATABRICKS_TELEMETRY_*` overrides of [`ENV_OVERRIDES`] found by `get`
    /// (the process environment: `|k| std::env::var(k).ok()`), then validates.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), OptionError> {
        for (var, option) in ENV_OVERRIDES {
            if let Some(value) = get(var).filter(|v| !v.trim().is_empty()) {
                self.apply_option(option, &value).map_err(|e| match e {
                    OptionError::InvalidValue {
                        value, expected, ..
                    } => OptionError::InvalidValue {
                        key: (*var).to_owned(),
                        value,
                        expected,
                    },
                    other => other,
                })?;
            }
        }
        Ok(self.validate()?)
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
        assert_eq!(c.breaker.max_open_duration, Duration::from_secs(120));
        assert_eq!((c.breaker.open_backoff, c.breaker.open_jitter), (2.0, 0.25));
        assert_eq!(c.breaker.success_threshold, 2);
        assert_eq!(c.breaker.half_open_max_probes, 1);
        assert_eq!(c.flags.default_ttl, Duration::from_secs(900));
        c.validate().unwrap();
    }

    #[rstest::rstest]
    #[case("telemetryEnabled", "true")]
    #[case("enable_telemetry", "YES")]
    #[case("enableTelemetry", "1")]
    #[case("EnableTelemetry", "on")]
    #[case("databricks.telemetry.enabled", "true")]
    fn every_drivers_name_for_the_switch(#[case] key: &str, #[case] value: &str) {
        let mut c = TelemetryConfig::default();
        assert_eq!(c.apply_option(key, value), Ok(()));
        assert!(c.enabled, "{key}");
    }

    #[test]
    fn an_unknown_key_names_the_known_ones_and_a_value_out_of_range_changes_nothing() {
        let mut c = TelemetryConfig::default();
        let err = c.apply_option("telemetryBatchSise", "10").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("telemetryBatchSise") && text.contains("telemetryBatchSize"));
        let before = c.clone();
        let err = c.apply_option("telemetryBatchSize", "20000").unwrap_err();
        assert!(matches!(err, OptionError::Invalid(_)), "{err}");
        assert_eq!(c, before);
        c.apply_option("telemetry_allow_insecure_loopback", "true")
            .unwrap();
        assert!(c.allow_insecure_loopback);
        let mut e = TelemetryConfig::default();
        e.apply_env(|k| {
            (k == "DATABRICKS_TELEMETRY_ALLOW_INSECURE_LOOPBACK").then(|| "1".to_owned())
        })
        .unwrap();
        assert!(e.allow_insecure_loopback);
        // Every known option is one apply_option takes.
        for key in KNOWN_OPTIONS {
            let err = TelemetryConfig::default().apply_option(key, "not-a-value");
            assert!(!matches!(err, Err(OptionError::UnknownKey { .. })), "{key}");
        }
    }

    #[test]
    fn options_set_the_components() {
        let mut c = TelemetryConfig::default();
        c.apply_options([
            ("telemetry_batch_size", "25"),
            ("telemetryFlushIntervalMs", "1500"),
            ("TelemetryMaxRetries", "0"),
            ("telemetryAuthenticatedExport", "false"),
            ("telemetryCircuitBreakerThreshold", "7"),
            ("telemetryCircuitBreakerTimeout", "120000"),
            ("forceEnableTelemetry", "true"),
            ("telemetryRequestTimeoutMs", "2000"),
            ("telemetryCloseTimeoutMs", "500"),
            ("uid", "token"),
        ])
        .unwrap();
        assert_eq!(c.aggregation.batch_size, 25);
        assert_eq!(c.aggregation.flush_interval, Duration::from_millis(1500));
        assert_eq!(c.export.retry.max_retries, 0);
        assert!(!c.export.authenticated_export);
        assert_eq!(
            c.breaker.policy,
            FailurePolicy::Consecutive { threshold: 7 }
        );
        assert_eq!(c.breaker.open_duration, Duration::from_secs(120));
        assert!(c.breaker.max_open_duration >= c.breaker.open_duration);
        assert!(c.force_enable);
        assert_eq!(c.export.request_timeout, Duration::from_secs(2));
        assert_eq!(c.aggregation.close_timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let mut c = TelemetryConfig::default();
        let err = c.apply_option("enable_telemetry", "maybe").unwrap_err();
        assert_eq!(
            err.to_string(),
            "telemetry option `enable_telemetry`: `maybe` is not a boolean (true/false, 1/0, yes/no, on/off)"
        );
        assert!(c.apply_option("telemetryBatchSize", "-3").is_err());
        let err = c.apply_options([("telemetryBatchSize", "0")]).unwrap_err();
        assert!(matches!(err, OptionError::Invalid(_)), "{err}");
    }

    #[test]
    fn env_overrides_name_the_variable_in_errors() {
        let mut c = TelemetryConfig::default();
        let env = |k: &str| match k {
            "DATABRICKS_TELEMETRY_ENABLED" => Some("true".to_owned()),
            "DATABRICKS_TELEMETRY_BATCH_SIZE" => Some("10".to_owned()),
            "DATABRICKS_TELEMETRY_MAX_BATCH_SIZE" => Some("40".to_owned()),
            "DATABRICKS_TELEMETRY_LINGER_MS" => Some("250".to_owned()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert!(c.enabled && c.aggregation.batch_size == 10);
        assert_eq!(c.aggregation.max_batch_size, 40);
        assert_eq!(c.aggregation.linger, Duration::from_millis(250));
        let err = c
            .apply_env(|k| (k == "DATABRICKS_TELEMETRY_MAX_RETRIES").then(|| "x".to_owned()))
            .unwrap_err();
        assert!(
            err.to_string().contains("DATABRICKS_TELEMETRY_MAX_RETRIES"),
            "{err}"
        );
    }

    #[rstest::rstest]
    #[case("telemetry_flush_interval", "30s", |c: &TelemetryConfig| c.aggregation.flush_interval == Duration::from_secs(30))]
    #[case("telemetryFlushIntervalMs", "1500", |c: &TelemetryConfig| c.aggregation.flush_interval == Duration::from_millis(1500))]
    #[case("telemetry_flush_interval", "1m30s", |c: &TelemetryConfig| c.aggregation.flush_interval == Duration::from_secs(90))]
    #[case("telemetryRetryDelayMs", "250", |c: &TelemetryConfig| c.export.retry.backoff_base == Duration::from_millis(250))]
    #[case("telemetryBackoffBaseMs", "200ms", |c: &TelemetryConfig| c.export.retry.backoff_base == Duration::from_millis(200))]
    #[case("telemetryBackoffMaxMs", "2s", |c: &TelemetryConfig| c.export.retry.backoff_max == Duration::from_secs(2))]
    #[case("telemetryBackoffJitterMs", "50", |c: &TelemetryConfig| c.export.retry.jitter == Duration::from_millis(50))]
    #[case("telemetryMaxBatchSize", "500", |c: &TelemetryConfig| c.aggregation.max_batch_size == 500)]
    #[case("telemetry_linger_ms", "0", |c: &TelemetryConfig| c.aggregation.linger == Duration::ZERO)]
    #[case("telemetryMaxPendingMetrics", "5000", |c: &TelemetryConfig| c.aggregation.max_pending_rows == 5000)]
    #[case("telemetry_close_flush_timeout", "3s", |c: &TelemetryConfig| c.aggregation.close_timeout == Duration::from_secs(3))]
    #[case("TelemetryCircuitBreakerEnabled", "true", |c: &TelemetryConfig| *c == TelemetryConfig::default())]
    fn other_drivers_option_names_are_mapped(
        #[case] key: &str,
        #[case] value: &str,
        #[case] check: fn(&TelemetryConfig) -> bool,
    ) {
        let mut c = TelemetryConfig::default();
        c.apply_option(key, value).unwrap();
        assert!(check(&c), "{key}={value}: {c:?}");
    }

    #[rstest::rstest]
    #[case("TelemetryCircuitBreakerEnabled", "false")]
    #[case("enable_telemetry_circuit_breaker", "0")]
    #[case("TelemetryLogLevel", "DEBUG")]
    #[case("telemetryMaxErrorsPerStatement", "5")]
    #[case("telemetryStatementTtlMs", "60000")]
    fn options_without_a_counterpart_are_refused(#[case] key: &str, #[case] value: &str) {
        let mut c = TelemetryConfig::default();
        let err = c.apply_option(key, value).unwrap_err();
        assert!(matches!(err, OptionError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        assert_eq!(c, TelemetryConfig::default(), "unchanged");
        // A driver passing all its options sees it too (only unknown keys are skipped).
        assert!(c.apply_options([(key, value)]).is_err());
    }

    #[rstest::rstest]
    #[case("30x")]
    #[case("s")]
    #[case("1.5s")]
    #[case("")]
    #[case("-1")]
    fn bad_durations_are_refused(#[case] value: &str) {
        let err = TelemetryConfig::default()
            .apply_option("telemetry_flush_interval", value)
            .unwrap_err();
        assert!(
            matches!(err, OptionError::InvalidValue { .. }),
            "{value}: {err}"
        );
    }

    #[test]
    fn each_component_is_validated() {
        let check = |f: fn(&mut TelemetryConfig), field: &str| {
            let mut c = TelemetryConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        };
        check(|c| c.aggregation.batch_size = 0, "aggregation.batch_size");
        check(
            |c| c.export.request_timeout = Duration::ZERO,
            "export.request_timeout",
        );
        check(
            |c| c.flags.default_ttl = Duration::ZERO,
            "flags.default_ttl",
        );
        check(|c| c.breaker.success_threshold = 0, "success_threshold");
        check(|c| c.max_hosts = 0, "max_hosts");
    }
}
