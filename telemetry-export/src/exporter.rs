//! [`DatabricksExporter`]: batches of rows -> `POST /telemetry-ext` or `/telemetry-unauth`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use telemetry_breaker::{Admission, CircuitBreaker, Outcome};
use telemetry_types::BoxFuture;
use telemetry_types::auth::AuthProvider;
use telemetry_types::classify::{ErrorClass, classify_http_status, classify_transport};
use telemetry_types::clock::now_millis;
use telemetry_types::drops::{DropCounters, DropCounts, DropReason};
use telemetry_types::flag::{FlagGate, FlagState};
use telemetry_types::host::Host;
use telemetry_types::redact::redact;
use telemetry_types::row::{TelemetryRow, strip_for_unauthenticated};
use telemetry_types::sink::BatchSink;
use telemetry_types::transport::{Bytes, HttpMethod, HttpRequest, HttpTransport};
use telemetry_types::wire::TelemetryFrontendLog;

use crate::config::ExportConfig;
use crate::retry::{Retry, RetryPolicy, retry_with_backoff};

/// Path of the authenticated endpoint.
pub const AUTH_PATH: &str = "/telemetry-ext";
/// Path of the unauthenticated endpoint.
pub const UNAUTH_PATH: &str = "/telemetry-unauth";
/// Largest export response body read (only for debug logging).
const MAX_EXPORT_RESPONSE_BYTES: usize = 64 * 1024;

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
    /// Rows dropped, by reason.
    pub rows_dropped: DropCounts,
    /// Requests sent to the unauthenticated endpoint.
    pub unauthenticated_requests: u64,
    /// Auth-provider calls that did not answer within `auth_timeout`.
    pub auth_timeouts: u64,
    /// The last failure, redacted.
    pub last_error: Option<String>,
    /// The host's breaker (shared with the host's earlier and later exporters).
    pub breaker: telemetry_breaker::BreakerStats,
    /// Times the host's breaker opened while this exporter existed: the breaker outlives
    /// exporters, so totals over exporters add these, not `breaker.openings`.
    pub breaker_openings: u64,
}

impl ExportStats {
    /// Rows dropped, all reasons.
    pub fn total_dropped(&self) -> u64 {
        self.rows_dropped.total()
    }

    /// Rows dropped for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.rows_dropped.get(reason)
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    rows_exported: AtomicU64,
    unauthenticated_requests: AtomicU64,
    auth_timeouts: AtomicU64,
    dropped: DropCounters,
    last_error: Mutex<Option<String>>,
    warned_terminal: AtomicBool,
}

/// Sends one host's batches to its telemetry endpoint. Implements [`BatchSink`].
///
/// Per batch: ask the flag gate (wait up to `flag_wait_timeout` while unknown; drop unless
/// enabled), group rows by the credentials of their connection, then per group build the
/// body, pick the endpoint (`/telemetry-ext` with credentials, `/telemetry-unauth` without,
/// with the privacy rules applied) and send it through the host's breaker, which sees the
/// request and its retries as one call.
pub struct DatabricksExporter {
    host: Host,
    config: ExportConfig,
    transport: Arc<dyn HttpTransport>,
    breaker: CircuitBreaker,
    gate: Arc<dyn FlagGate>,
    user_agent: String,
    extra_headers: Vec<(String, String)>,
    counters: Counters,
    /// The breaker's openings when this exporter was made.
    openings_before: u64,
}

impl fmt::Debug for DatabricksExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabricksExporter")
            .field("host", &self.host)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// Rows that may share one request: same credentials, same transport, same headers.
/// Rows of a batch that may share a request: the same credentials, transport and headers.
/// Held as indices into the batch, so that rows are not moved to be grouped.
struct Group<'b> {
    auth: Option<Arc<dyn AuthProvider>>,
    credentials: Option<usize>,
    transport: Option<usize>,
    rows: Vec<&'b TelemetryRow>,
}

impl Group<'_> {
    fn takes(&self, row: &TelemetryRow, credentials: Option<usize>) -> bool {
        let first = &self.rows[0].connection;
        self.credentials == credentials
            && self.transport == row.connection.transport_key()
            && (Arc::ptr_eq(first, &row.connection)
                || first.extra_headers == row.connection.extra_headers)
    }
}

/// Why one attempt (or, after its retries, one request) failed.
struct SendFailure {
    reason: DropReason,
    class: ErrorClass,
    /// The server's `Retry-After`, as it asked.
    retry_after: Option<Duration>,
    error: String,
}

impl SendFailure {
    /// A caller-side refusal (auth, bad request): says nothing about the endpoint's health.
    fn is_refusal(&self) -> bool {
        self.reason == DropReason::Http4xx && self.class == ErrorClass::Terminal
    }
}

impl DatabricksExporter {
    /// An exporter for `host`. `breaker` is the host's breaker (shared by every exporter of
    /// the host); `gate` is the host's feature flag.
    pub fn new(
        host: Host,
        config: ExportConfig,
        transport: Arc<dyn HttpTransport>,
        breaker: CircuitBreaker,
        gate: Arc<dyn FlagGate>,
        user_agent: impl Into<String>,
    ) -> Self {
        Self {
            host,
            config,
            transport,
            gate,
            user_agent: user_agent.into(),
            extra_headers: Vec::new(),
            counters: Counters::default(),
            openings_before: breaker.stats().openings,
            breaker,
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
        let breaker = self.breaker.stats();
        ExportStats {
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rows_exported: c.rows_exported.load(Ordering::Relaxed),
            rows_dropped: c.dropped.snapshot(),
            unauthenticated_requests: c.unauthenticated_requests.load(Ordering::Relaxed),
            auth_timeouts: c.auth_timeouts.load(Ordering::Relaxed),
            last_error: c
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            breaker,
            breaker_openings: breaker.openings.saturating_sub(self.openings_before),
        }
    }

    fn drop_rows(&self, reason: DropReason, rows: usize, error: Option<String>) {
        self.counters.dropped.add(reason, rows as u64);
        tracing::debug!(host = %self.host, reason = reason.as_str(), rows, error = error.as_deref().unwrap_or(""), "telemetry rows dropped");
        if let Some(e) = error {
            *self
                .counters
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }

    /// Exports one batch; `unsettled` holds its rows until each is settled.
    async fn export_batch(&self, batch: Vec<TelemetryRow>, unsettled: &Unsettled<'_>) {
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
                return unsettled.drop_rows(DropReason::FlagDisabled, batch.len(), None);
            }
            FlagState::Unknown => {
                return unsettled.drop_rows(DropReason::FlagUnknown, batch.len(), None);
            }
        }
        // Credential groups go out side by side: one tenant's slow or hanging auth provider
        // (bounded by `auth_timeout`) delays only its own rows.
        let sends: Vec<BoxFuture<'_, ()>> = self
            .group(&batch)
            .into_iter()
            .map(|g| Box::pin(self.send_group(g, unsettled)) as BoxFuture<'_, ()>)
            .collect();
        join_all(sends).await;
    }

    /// Splits rows by credentials, keeping order within each group.
    fn group<'b>(&self, batch: &'b [TelemetryRow]) -> Vec<Group<'b>> {
        let mut groups: Vec<Group<'b>> = Vec::new();
        for row in batch {
            let (credentials, auth) = if self.config.authenticated_export {
                (
                    row.connection.credentials_key(),
                    row.connection.auth.clone(),
                )
            } else {
                (None, None)
            };
            match groups.iter_mut().find(|g| g.takes(row, credentials)) {
                Some(g) => g.rows.push(row),
                None => groups.push(Group {
                    auth,
                    credentials,
                    transport: row.connection.transport_key(),
                    rows: vec![row],
                }),
            }
        }
        groups
    }

    async fn send_group(&self, group: Group<'_>, unsettled: &Unsettled<'_>) {
        let n = group.rows.len();
        let first = group.rows[0].connection.clone();
        let transport = first
            .transport
            .clone()
            .unwrap_or_else(|| self.transport.clone());
        let auth_headers = match &group.auth {
            Some(auth) => {
                match tokio::time::timeout(self.config.auth_timeout, auth.auth_headers()).await {
                    Ok(headers) => headers,
                    Err(_) => {
                        // No credentials in time: the unauthenticated endpoint, stripped.
                        self.counters.auth_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(host = %self.host, timeout_ms = u64::try_from(self.config.auth_timeout.as_millis()).unwrap_or(u64::MAX), "telemetry auth provider did not answer in time");
                        None
                    }
                }
            }
            None => None,
        };
        let authenticated = auth_headers.is_some();
        let body = if authenticated {
            encode_body(now_millis(), group.rows.iter().map(|r| &r.log))
        } else {
            // The unauthenticated endpoint's privacy rules, on copies of the rows.
            let stripped: Vec<_> = group
                .rows
                .iter()
                .map(|r| {
                    let mut log = r.log.clone();
                    strip_for_unauthenticated(&mut log);
                    log
                })
                .collect();
            encode_body(now_millis(), stripped.iter())
        };
        let body = match body {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return unsettled.drop_rows(DropReason::Serialization, n, Some(e.to_string()));
            }
        };
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Accept".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), self.user_agent.clone()),
        ];
        let path = if let Some(h) = auth_headers {
            headers.extend(h);
            headers.extend(self.extra_headers.iter().cloned());
            headers.extend(first.extra_headers.iter().cloned());
            AUTH_PATH
        } else {
            self.counters
                .unauthenticated_requests
                .fetch_add(1, Ordering::Relaxed);
            UNAUTH_PATH
        };
        let url = format!("{}{}", self.host.base_url(), path);
        let request = HttpRequest {
            method: HttpMethod::Post,
            url,
            headers,
            body,
            timeout: self.config.request_timeout,
            max_response_bytes: MAX_EXPORT_RESPONSE_BYTES,
        };
        let sent = self
            .breaker
            .call_admitted(
                |admission| self.send_with_retries(&*transport, &request, admission),
                |result| match result {
                    Ok(()) => Outcome::Success,
                    Err(f) if f.is_refusal() => Outcome::Ignored,
                    Err(f) => Outcome::Failure {
                        retry_after: f.retry_after,
                    },
                },
            )
            .await;
        match sent {
            Err(_rejected) => unsettled.drop_rows(DropReason::BreakerOpen, n, None),
            Ok(Ok(())) => unsettled.exported(n),
            Ok(Err(failure)) => {
                if failure.is_refusal()
                    && !self.counters.warned_terminal.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(host = %self.host, error = %failure.error, "telemetry endpoint refused the request; telemetry rows are dropped (logged once)");
                }
                unsettled.drop_rows(failure.reason, n, Some(failure.error));
            }
        }
    }

    /// The first try and up to `max_retries` retries of one request; a breaker's probe is a
    /// single attempt (its answer decides the breaker, and retries would hold the probe slot).
    async fn send_with_retries(
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

    /// One attempt, classified.
    async fn send_once(
        &self,
        transport: &dyn HttpTransport,
        request: HttpRequest,
    ) -> Result<(), SendFailure> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        match transport.send(request).await {
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
                reason: DropReason::Transport,
                class: classify_transport(e.kind),
                retry_after: None,
                error: redact(&e.to_string()),
            }),
        }
    }
}

/// The rows of one batch not settled yet: settling counts them (exported or dropped); what
/// is left when the export is dropped mid-way is counted as dropped on shutdown.
struct Unsettled<'a> {
    exporter: &'a DatabricksExporter,
    rows: AtomicU64,
}

impl Unsettled<'_> {
    fn take(&self, n: usize) -> u64 {
        let n = n as u64;
        let before = self
            .rows
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            })
            .unwrap_or(0);
        before.min(n)
    }

    fn exported(&self, n: usize) {
        let n = self.take(n);
        self.exporter
            .counters
            .rows_exported
            .fetch_add(n, Ordering::Relaxed);
    }

    fn drop_rows(&self, reason: DropReason, n: usize, error: Option<String>) {
        let n = self.take(n);
        self.exporter.drop_rows(reason, n as usize, error);
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        let left = *self.rows.get_mut();
        if left > 0 {
            self.exporter
                .drop_rows(DropReason::Shutdown, left as usize, None);
        }
    }
}

/// The request body, `{"uploadTime":..,"items":[],"protoLogs":["<log>",..]}`, with each log
/// serialised once, straight into the body as the JSON string the wire format wants (no
/// intermediate string per log, no second escaping pass), into a buffer sized up front.
///
/// ```
/// use telemetry_export::encode_body;
/// use telemetry_types::wire::{TelemetryFrontendLog, TelemetryRequest};
/// let log = TelemetryFrontendLog::new("id-\"1\"".into(), 1, "ua".into());
/// let body = encode_body(7, [&log].into_iter()).unwrap();
/// let reference = serde_json::to_vec(&TelemetryRequest::from_logs(7, [&log]).unwrap()).unwrap();
/// assert_eq!(body, reference);
/// ```
pub fn encode_body<'a>(
    upload_time: i64,
    logs: impl ExactSizeIterator<Item = &'a TelemetryFrontendLog>,
) -> Result<Vec<u8>, serde_json::Error> {
    /// Bytes an encoded statement row takes, about: enough that most bodies never regrow.
    const ROW_BYTES_HINT: usize = 640;
    let mut body = Vec::with_capacity(64 + logs.len() * ROW_BYTES_HINT);
    body.extend_from_slice(b"{\"uploadTime\":");
    body.extend_from_slice(itoa::Buffer::new().format(upload_time).as_bytes());
    body.extend_from_slice(b",\"items\":[],\"protoLogs\":[");
    for (i, log) in logs.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'"');
        let mut ser = serde_json::Serializer::with_formatter(&mut body, NestedString);
        serde::Serialize::serialize(log, &mut ser)?;
        body.push(b'"');
    }
    body.extend_from_slice(b"]}");
    Ok(body)
}

/// A JSON formatter whose output is the inside of a JSON string: the log is serialised once,
/// and every character serde_json would write that a JSON string cannot hold as is (the
/// quotes around strings, the backslash of each escape) is written escaped in the same pass.
/// Numbers, `true`, braces, commas and colons need no escaping and use the default methods.
struct NestedString;

impl serde_json::ser::Formatter for NestedString {
    #[inline]
    fn begin_string<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"\\\"")
    }

    #[inline]
    fn end_string<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"\\\"")
    }

    #[inline]
    fn write_char_escape<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> std::io::Result<()> {
        use serde_json::ser::CharEscape::*;
        // The escape serde_json writes, with its backslash (and, for a quote or a backslash,
        // the character itself) escaped once more.
        static HEX: [u8; 16] = *b"0123456789abcdef";
        match escape {
            Quote => w.write_all(b"\\\\\\\""),
            ReverseSolidus => w.write_all(b"\\\\\\\\"),
            Solidus => w.write_all(b"\\\\/"),
            Backspace => w.write_all(b"\\\\b"),
            FormFeed => w.write_all(b"\\\\f"),
            LineFeed => w.write_all(b"\\\\n"),
            CarriageReturn => w.write_all(b"\\\\r"),
            Tab => w.write_all(b"\\\\t"),
            AsciiControl(byte) => w.write_all(&[
                b'\\',
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]),
        }
    }
}

/// Polls every future until all are done (the few credential groups of one batch).
async fn join_all(mut futures: Vec<BoxFuture<'_, ()>>) {
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

impl BatchSink for DatabricksExporter {
    fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()> {
        // The rows are held before the future exists: dropped at any point, even before its
        // first poll (a close deadline of zero), the future counts what it did not settle as
        // dropped on shutdown, once.
        let unsettled = Unsettled {
            exporter: self,
            rows: AtomicU64::new(batch.len() as u64),
        };
        Box::pin(async move { self.export_batch(batch, &unsettled).await })
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
