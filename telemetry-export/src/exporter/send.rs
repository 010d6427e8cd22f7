//! Sending one request: through the host's breaker, with retries, each attempt through the
//! plug-in boundary, each answer classified. Only what the endpoint answered counts for the
//! breaker; a local failure (the transport plug-in panicked or hung, a redirect refused, a
//! terminal refusal of ours) never does.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use telemetry_breaker::{Admission, Outcome};
use telemetry_types::boundary;
use telemetry_types::classify::{
    ErrorClass, TransportErrorKind, classify_http_status, classify_transport,
};
use telemetry_types::drops::DropReason;
use telemetry_types::redact::redact;
use telemetry_types::transport::{HttpRequest, HttpTransport};

use super::DatabricksExporter;
use crate::retry::{Retry, RetryPolicy, retry_with_backoff};

/// Why one attempt (or, after its retries, one request) failed.
pub(super) struct SendFailure {
    pub(super) reason: DropReason,
    class: ErrorClass,
    /// The server's `Retry-After`, as it asked.
    retry_after: Option<Duration>,
    pub(super) error: String,
}

impl SendFailure {
    /// A failure that says nothing about the endpoint's health: a terminal refusal of the
    /// caller's request (auth, bad request), a redirect, or a local failure of the transport
    /// plug-in (the endpoint may never have been asked).
    pub(super) fn is_not_the_endpoints(&self) -> bool {
        matches!(self.reason, DropReason::Redirect | DropReason::Plugin)
            || (self.reason == DropReason::Http4xx && self.class == ErrorClass::Terminal)
    }

    /// What the breaker records for this failure.
    pub(super) fn outcome(&self) -> Outcome {
        if self.is_not_the_endpoints() {
            Outcome::Ignored
        } else {
            Outcome::Failure {
                retry_after: self.retry_after,
            }
        }
    }
}

impl DatabricksExporter {
    /// The first try and up to `max_retries` retries of one request; a breaker's probe is a
    /// single attempt (its answer decides the breaker, and retries would hold the probe slot).
    pub(super) async fn send_with_retries(
        &self,
        transport: &dyn HttpTransport,
        request: &HttpRequest,
        admission: Admission,
    ) -> Result<(), SendFailure> {
        let probe_policy;
        let policy = match admission {
            Admission::Probe => {
                probe_policy = RetryPolicy {
                    max_retries: 0,
                    ..self.config.retry.clone()
                };
                &probe_policy
            }
            _ => &self.config.retry,
        };
        retry_with_backoff(
            policy,
            || self.send_once(transport, request.clone()),
            |result| match result {
                Err(f) if f.class == ErrorClass::Retryable => Retry::After(f.retry_after),
                _ => Retry::Stop,
            },
            |attempt, wait| {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host = %self.host, attempt, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "telemetry export retry");
            },
        )
        .await
    }

    /// One attempt through the plug-in boundary, classified.
    async fn send_once(
        &self,
        transport: &dyn HttpTransport,
        request: HttpRequest,
    ) -> Result<(), SendFailure> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        match boundary::send(transport, request).await {
            Ok(resp) if (200..300).contains(&resp.status) => {
                tracing::debug!(host = %self.host, status = resp.status, body = %String::from_utf8_lossy(&resp.body), "telemetry batch exported");
                Ok(())
            }
            Ok(resp) => Err(SendFailure {
                reason: DropReason::for_status(resp.status),
                class: classify_http_status(resp.status),
                retry_after: resp.header("retry-after").and_then(parse_retry_after),
                error: format!("HTTP {}", resp.status),
            }),
            Err(e) => Err(SendFailure {
                reason: if e.kind == TransportErrorKind::Local {
                    DropReason::Plugin
                } else {
                    DropReason::Transport
                },
                class: classify_transport(e.kind),
                retry_after: None,
                error: redact(&e.to_string()),
            }),
        }
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
