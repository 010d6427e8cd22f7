//! [`DatabricksExporter`]: batches of rows -> `POST /telemetry-ext` or `/telemetry-unauth`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use telemetry_breaker::{BreakerConfig, BreakerStats, CircuitBreaker, FailurePolicy, Outcome};
use telemetry_types::classify::{ErrorClass, classify_http_status, classify_transport};
use telemetry_types::config::TelemetryConfig;
use telemetry_types::event::TelemetryRow;
use telemetry_types::host::Host;
use telemetry_types::id::{now_millis, random_up_to};
use telemetry_types::row::strip_for_unauthenticated;
use telemetry_types::traits::{
    AuthProvider, BatchSink, BoxFuture, FlagGate, FlagState, HttpMethod, HttpRequest, HttpTransport,
};
use telemetry_types::wire::TelemetryRequest;

/// Path of the authenticated endpoint.
pub const AUTH_PATH: &str = "/telemetry-ext";
/// Path of the unauthenticated endpoint.
pub const UNAUTH_PATH: &str = "/telemetry-unauth";
/// Largest export response body read (only for debug logging).
pub const MAX_EXPORT_RESPONSE_BYTES: usize = 64 * 1024;

/// Why rows were not exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The feature flag says no (or the off switch is set).
    FlagDisabled,
    /// The feature flag was still unknown after the wait bound.
    FlagUnknown,
    /// The host's breaker is open: no request was made.
    BreakerOpen,
    /// A 4xx answer (after retries, if it was 429).
    Http4xx,
    /// A 5xx answer after retries.
    Http5xx,
    /// Another non-2xx status.
    HttpOther,
    /// The transport failed (after retries, if retryable).
    Transport,
    /// The body could not be serialised.
    Serialization,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 8] = [
        Self::FlagDisabled,
        Self::FlagUnknown,
        Self::BreakerOpen,
        Self::Http4xx,
        Self::Http5xx,
        Self::HttpOther,
        Self::Transport,
        Self::Serialization,
    ];

    /// Stable snake-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FlagDisabled => "flag_disabled",
            Self::FlagUnknown => "flag_unknown",
            Self::BreakerOpen => "breaker_open",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::HttpOther => "http_other",
            Self::Transport => "transport",
            Self::Serialization => "serialization",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    fn for_status(status: u16) -> Self {
        match status {
            400..=499 => Self::Http4xx,
            500..=599 => Self::Http5xx,
            _ => Self::HttpOther,
        }
    }
}

/// A snapshot of the exporter's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Batches received from the aggregator.
    pub batches: u64,
    /// HTTP requests made (every attempt).
    pub requests: u64,
    /// Retries (attempts after the first).
    pub retries: u64,
    /// Rows accepted by the server (2xx).
    pub rows_exported: u64,
    /// Rows dropped, by reason (all reasons present, zero or not).
    pub rows_dropped: Vec<(DropReason, u64)>,
    /// Requests sent to the unauthenticated endpoint.
    pub unauthenticated_requests: u64,
    /// The last failure, redacted.
    pub last_error: Option<String>,
    /// The host's breaker.
    pub breaker: BreakerStats,
}

impl ExportStats {
    /// Rows dropped, all reasons.
    pub fn total_dropped(&self) -> u64 {
        self.rows_dropped.iter().map(|(_, n)| n).sum()
    }

    /// Rows dropped for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.rows_dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    rows_exported: AtomicU64,
    unauthenticated_requests: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    last_error: Mutex<Option<String>>,
    warned_terminal: AtomicBool,
}

/// The breaker settings of a telemetry config.
pub fn breaker_config(config: &TelemetryConfig) -> BreakerConfig {
    BreakerConfig {
        policy: FailurePolicy::Consecutive {
            threshold: config.breaker.failure_threshold,
        },
        open_duration: config.breaker.open_duration,
        max_open_duration: config.max_retry_after.max(config.breaker.open_duration),
        half_open_max_probes: config.breaker.half_open_probes,
        success_threshold: config.breaker.success_threshold,
    }
}

/// Sends one host's batches to its telemetry endpoint. Implements [`BatchSink`].
///
/// Per batch: ask the flag gate (wait up to `flag_wait_timeout` while unknown; drop unless
/// enabled), group rows by the credentials of their connection, then per group build the
/// body, pick the endpoint (`/telemetry-ext` with credentials, `/telemetry-unauth` without,
/// with the privacy rules applied) and send it through the host's breaker with retries.
pub struct DatabricksExporter {
    host: Host,
    config: TelemetryConfig,
    transport: Arc<dyn HttpTransport>,
    breaker: CircuitBreaker,
    gate: Arc<dyn FlagGate>,
    user_agent: String,
    extra_headers: Vec<(String, String)>,
    counters: Counters,
}

impl fmt::Debug for DatabricksExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabricksExporter")
            .field("host", &self.host)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

struct Group {
    auth: Option<Arc<dyn AuthProvider>>,
    key: Option<usize>,
    rows: Vec<TelemetryRow>,
}

enum Attempts {
    Sent,
    Failed {
        reason: DropReason,
        class: ErrorClass,
        retry_after: Option<Duration>,
        error: String,
    },
}

impl DatabricksExporter {
    /// An exporter for `host`. `breaker` is the host's breaker (shared by every exporter of
    /// the host); `gate` is the host's feature flag.
    pub fn new(
        host: Host,
        config: TelemetryConfig,
        transport: Arc<dyn HttpTransport>,
        breaker: CircuitBreaker,
        gate: Arc<dyn FlagGate>,
        user_agent: impl Into<String>,
    ) -> Self {
        Self {
            host,
            config,
            transport,
            breaker,
            gate,
            user_agent: user_agent.into(),
            extra_headers: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Headers added to authenticated requests (e.g. `x-databricks-org-id`). They are not
    /// sent to the unauthenticated endpoint, which must not link requests to a workspace.
    pub fn with_extra_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.extra_headers = headers;
        self
    }

    /// The host's breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ExportStats {
        let c = &self.counters;
        ExportStats {
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rows_exported: c.rows_exported.load(Ordering::Relaxed),
            rows_dropped: DropReason::ALL
                .iter()
                .map(|r| (*r, c.dropped[r.index()].load(Ordering::Relaxed)))
                .collect(),
            unauthenticated_requests: c.unauthenticated_requests.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            breaker: self.breaker.stats(),
        }
    }

    fn drop_rows(&self, reason: DropReason, rows: usize, error: Option<String>) {
        self.counters.dropped[reason.index()].fetch_add(rows as u64, Ordering::Relaxed);
        tracing::debug!(host = %self.host, reason = reason.as_str(), rows, error = error.as_deref().unwrap_or(""), "telemetry rows dropped");
        if let Some(e) = error {
            *self
                .counters
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }

    async fn export_batch(&self, batch: Vec<TelemetryRow>) {
        if batch.is_empty() {
            return;
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let mut flag = self.gate.state();
        if flag == FlagState::Unknown {
            flag = self.gate.wait(self.config.flag_wait_timeout).await;
        }
        match flag {
            FlagState::Enabled => {}
            FlagState::Disabled => {
                return self.drop_rows(DropReason::FlagDisabled, batch.len(), None);
            }
            FlagState::Unknown => {
                return self.drop_rows(DropReason::FlagUnknown, batch.len(), None);
            }
        }
        for group in self.group(batch) {
            self.send_group(group).await;
        }
    }

    /// Splits rows by credentials, keeping order within each group.
    fn group(&self, batch: Vec<TelemetryRow>) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        for row in batch {
            let (key, auth) = if self.config.authenticated_export {
                (
                    row.connection.credentials_key(),
                    row.connection.auth.clone(),
                )
            } else {
                (None, None)
            };
            match groups.iter_mut().find(|g| g.key == key) {
                Some(g) => g.rows.push(row),
                None => groups.push(Group {
                    auth,
                    key,
                    rows: vec![row],
                }),
            }
        }
        groups
    }

    async fn send_group(&self, group: Group) {
        let n = group.rows.len();
        let auth_headers = match &group.auth {
            Some(auth) => auth.auth_headers().await,
            None => None,
        };
        let authenticated = auth_headers.is_some();
        let mut logs: Vec<_> = group.rows.into_iter().map(|r| r.log).collect();
        if !authenticated {
            logs.iter_mut().for_each(strip_for_unauthenticated);
        }
        let body = match TelemetryRequest::from_logs(now_millis(), logs.iter())
            .and_then(|r| serde_json::to_vec(&r))
        {
            Ok(b) => b,
            Err(e) => return self.drop_rows(DropReason::Serialization, n, Some(e.to_string())),
        };
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Accept".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), self.user_agent.clone()),
        ];
        let path = if let Some(h) = auth_headers {
            headers.extend(h);
            headers.extend(self.extra_headers.iter().cloned());
            AUTH_PATH
        } else {
            self.counters
                .unauthenticated_requests
                .fetch_add(1, Ordering::Relaxed);
            UNAUTH_PATH
        };
        let url = format!("{}{}", self.host.base_url(), path);
        let Ok(permit) = self.breaker.try_acquire() else {
            return self.drop_rows(DropReason::BreakerOpen, n, None);
        };
        match self.attempts(&url, headers, body).await {
            Attempts::Sent => {
                permit.success();
                self.counters
                    .rows_exported
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Attempts::Failed {
                reason,
                class,
                retry_after,
                error,
            } => {
                if reason == DropReason::Http4xx && class == ErrorClass::Terminal {
                    // A caller-side problem (auth, bad request), not an outage.
                    permit.record(Outcome::Ignored);
                    if !self.counters.warned_terminal.swap(true, Ordering::Relaxed) {
                        tracing::warn!(host = %self.host, error = %error, "telemetry endpoint refused the request; telemetry rows are dropped (logged once)");
                    }
                } else {
                    permit.record(Outcome::Failure { retry_after });
                }
                self.drop_rows(reason, n, Some(error));
            }
        }
    }

    /// The first try and up to `max_retries` retries of one request.
    async fn attempts(&self, url: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Attempts {
        let mut attempt = 0u32;
        loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let result = self
                .transport
                .send(HttpRequest {
                    method: HttpMethod::Post,
                    url: url.to_owned(),
                    headers: headers.clone(),
                    body: body.clone(),
                    timeout: self.config.request_timeout,
                    max_response_bytes: MAX_EXPORT_RESPONSE_BYTES,
                })
                .await;
            let (reason, class, retry_after, error) = match result {
                Ok(resp) if (200..300).contains(&resp.status) => {
                    tracing::debug!(host = %self.host, status = resp.status, body = %String::from_utf8_lossy(&resp.body), "telemetry batch exported");
                    return Attempts::Sent;
                }
                Ok(resp) => {
                    let retry_after = resp
                        .header("retry-after")
                        .and_then(parse_retry_after)
                        .map(|d| d.min(self.config.max_retry_after));
                    (
                        DropReason::for_status(resp.status),
                        classify_http_status(resp.status),
                        retry_after,
                        format!("HTTP {}", resp.status),
                    )
                }
                Err(e) => (
                    DropReason::Transport,
                    classify_transport(e.kind),
                    None,
                    telemetry_types::redact::redact(&e.to_string()),
                ),
            };
            if class != ErrorClass::Retryable || attempt >= self.config.max_retries {
                return Attempts::Failed {
                    reason,
                    class,
                    retry_after,
                    error,
                };
            }
            let backoff = self.config.backoff.delay(attempt)
                + Duration::from_millis(
                    random_up_to(self.config.backoff.jitter.as_millis() as u64),
                );
            let wait = retry_after.map_or(backoff, |r| r.max(backoff));
            tracing::debug!(host = %self.host, error = %error, attempt, wait_ms = wait.as_millis() as u64, "telemetry export retry");
            tokio::time::sleep(wait).await;
            attempt += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl BatchSink for DatabricksExporter {
    fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()> {
        Box::pin(self.export_batch(batch))
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
///
/// ```
/// use std::time::Duration;
/// use telemetry_export::parse_retry_after;
/// assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
/// assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
/// assert_eq!(parse_retry_after("soon"), None);
/// ```
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests;
