//! Sending one request: with retries, each attempt admitted by the host's breaker and paced
//! with the host's other requests, sent through the plug-in boundary, its answer classified. Only what the endpoint answered counts for the
//! breaker; a local failure (the transport plug-in panicked or hung, a redirect refused, a
//! terminal refusal of ours) never does.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use telemetry_breaker::Outcome;
use telemetry_types::audit::AuditedRequest;
use telemetry_types::boundary;
use telemetry_types::classify::{
    ErrorClass, TransportErrorKind, classify_http_status, classify_transport,
};
use telemetry_types::drops::DropReason;
use telemetry_types::redact::{cap_at_word, redact};
use telemetry_types::transport::{HttpRequest, HttpTransport};

use super::{AUTH_PATH, DatabricksExporter};
use crate::retry::{Retry, retry_with_backoff};

/// Why one attempt (or, after its retries, one request) failed.
pub(super) struct SendFailure {
    pub(super) reason: DropReason,
    class: ErrorClass,
    /// The server's `Retry-After`, as it asked.
    retry_after: Option<Duration>,
    /// The attempt was the breaker's probe: its answer decides the breaker, and a retry
    /// would hold the probe slot, so it is not retried.
    probe: bool,
    /// The endpoint refused the credentials (401, 403): the provider is asked again.
    pub(super) refused_credentials: bool,
    pub(super) error: String,
}

impl SendFailure {
    /// A failure that says nothing about the endpoint's health: a terminal refusal of the
    /// caller's request (auth, bad request), a redirect, or a local failure of the transport
    /// plug-in (the endpoint may never have been asked).
    pub(super) fn is_not_the_endpoints(&self) -> bool {
        matches!(
            self.reason,
            DropReason::Redirect | DropReason::Plugin | DropReason::DryRun
        ) || (self.reason == DropReason::Http4xx && self.class == ErrorClass::Terminal)
    }

    /// What the breaker records for this failure.
    fn outcome(&self) -> Outcome {
        if self.is_not_the_endpoints() {
            Outcome::Ignored
        } else {
            Outcome::Failure {
                retry_after: self.retry_after,
            }
        }
    }

    /// Refused before it was sent (by the breaker): the request ends, its rows dropped for
    /// `reason`.
    fn local(reason: DropReason) -> Self {
        Self {
            reason,
            class: ErrorClass::Terminal,
            retry_after: None,
            probe: false,
            refused_credentials: false,
            error: String::new(),
        }
    }
}

/// What the endpoint said of a request it accepted (2xx).
pub(super) struct Accepted {
    /// Logs it says it accepted (`numProtoSuccess`), when its answer says so.
    pub(super) logs: Option<u64>,
    /// Its first error, redacted, when it reported some.
    pub(super) error: Option<String>,
}

/// The endpoint's answer to an export, as far as it is read: every field optional (the
/// answer is not required to have a body at all).
#[derive(serde::Deserialize)]
struct ExportAnswer {
    #[serde(rename = "numProtoSuccess")]
    num_proto_success: Option<u64>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

/// Longest server error text kept, in bytes.
const MAX_SERVER_ERROR_BYTES: usize = 256;

impl Accepted {
    fn from_body(body: &[u8]) -> Self {
        match serde_json::from_slice::<ExportAnswer>(body) {
            Ok(a) => Self {
                logs: a.num_proto_success,
                error: a.errors.first().map(|e| {
                    let text = match e {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    redact(&cap_at_word(&text, MAX_SERVER_ERROR_BYTES))
                }),
            },
            Err(_) => Self {
                logs: None,
                error: None,
            },
        }
    }
}

impl DatabricksExporter {
    /// The first try and up to `max_retries` retries of one request. Every attempt asks the
    /// host's breaker first (a loop in flight stops as soon as the breaker opens), honours a
    /// pause the server asked of the host, and tells the breaker and the host's pacing what
    /// the endpoint answered; a probe is a single attempt.
    pub(super) async fn send_with_retries(
        &self,
        transport: &dyn HttpTransport,
        request: &HttpRequest,
    ) -> Result<Accepted, SendFailure> {
        retry_with_backoff(
            &self.config.retry,
            || self.attempt(transport, request),
            |result| match result {
                Err(f) if f.class == ErrorClass::Retryable && !f.probe => {
                    Retry::After(f.retry_after)
                }
                _ => Retry::Stop,
            },
            |attempt, wait| {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host = %self.host, attempt, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "telemetry export retry");
            },
        )
        .await
    }

    /// One attempt: admitted by the breaker, sent, and its answer recorded.
    async fn attempt(
        &self,
        transport: &dyn HttpTransport,
        request: &HttpRequest,
    ) -> Result<Accepted, SendFailure> {
        self.pacing.honour_pause().await;
        let Ok(permit) = self.breaker.try_acquire() else {
            return Err(SendFailure::local(DropReason::BreakerOpen));
        };
        let probe = permit.is_probe();
        match self.send_once(transport, request.clone()).await {
            Ok(accepted) => {
                permit.success();
                self.pacing.succeeded();
                Ok(accepted)
            }
            Err(mut failure) => {
                let outcome = failure.outcome();
                permit.record(outcome);
                if matches!(outcome, Outcome::Failure { .. }) {
                    self.pacing.failed();
                }
                if let Some(r) = failure.retry_after {
                    // The whole host waits, not only this request.
                    self.pacing
                        .throttled(r.min(self.config.retry.max_retry_after));
                }
                failure.probe = probe;
                Err(failure)
            }
        }
    }

    /// One request through the plug-in boundary, classified.
    async fn send_once(
        &self,
        transport: &dyn HttpTransport,
        request: HttpRequest,
    ) -> Result<Accepted, SendFailure> {
        if let Some(audit) = &self.audit {
            let seen = AuditedRequest::new(
                &request.url,
                request.url.ends_with(AUTH_PATH),
                &request.body,
                self.dry_run,
            );
            // The audit is a plug-in too: its panic costs its own record, nothing else.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| audit.record(&seen)))
                .is_err()
            {
                tracing::debug!(host = %self.host, "telemetry audit sink panicked");
            }
        }
        if self.dry_run {
            return Err(SendFailure::local(DropReason::DryRun));
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        match boundary::send(transport, request).await {
            Ok(resp) if (200..300).contains(&resp.status) => {
                tracing::debug!(host = %self.host, status = resp.status, body = %String::from_utf8_lossy(&resp.body), "telemetry batch exported");
                Ok(Accepted::from_body(&resp.body))
            }
            Ok(resp) => Err(SendFailure {
                reason: DropReason::for_status(resp.status),
                class: classify_http_status(resp.status),
                retry_after: resp.header("retry-after").and_then(parse_retry_after),
                probe: false,
                refused_credentials: matches!(resp.status, 401 | 403),
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
                probe: false,
                refused_credentials: false,
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
