//! [`DatabricksExporter`]: batches of rows -> `POST /telemetry-ext` or `/telemetry-unauth`.

//!
//! One file per concern: [`group`] (which rows share a request), [`request`] (credentials
//! through the plug-in boundary, endpoint, headers, body), [`send`] (breaker, retries,
//! classification), [`settle`] (every row counted once); the body encoding is
//! [`crate::encode`].

mod group;
mod pacing;
mod request;
mod send;
mod settle;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use telemetry_breaker::CircuitBreaker;
use telemetry_types::BoxFuture;
use telemetry_types::audit::AuditSink;
use telemetry_types::drops::{DropCounters, DropCounts, DropReason};
use telemetry_types::flag::{FlagGate, FlagState};
use telemetry_types::host::Host;
use telemetry_types::row::TelemetryRow;
use telemetry_types::sink::BatchSink;
use telemetry_types::transport::HttpTransport;

use crate::config::ExportConfig;
use group::{Fingerprints, Group};
use pacing::Pacing;
pub use send::parse_retry_after;
use settle::Unsettled;

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
    /// Auth-provider calls that did not answer within `auth_timeout` (their rows went to the
    /// unauthenticated endpoint).
    pub auth_timeouts: u64,
    /// The last failure, redacted.
    pub last_error: Option<String>,
    /// The host's breaker (shared with the host's earlier and later exporters).
    pub breaker: telemetry_breaker::BreakerStats,
    /// Requests the host may have in flight now: `max_concurrent_requests` while healthy, 1
    /// after a failure the endpoint answered, one more per success.
    pub concurrency_limit: usize,
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
/// enabled), group rows by the credentials of their connection (by what the credentials
/// resolve to, so one tenant's connections share requests), then per group, side by side,
/// ask the group's auth provider through the plug-in boundary, build the body, pick the
/// endpoint (`/telemetry-ext` with credentials, `/telemetry-unauth` without, with the
/// privacy rules applied) and send it. Each attempt, retries included, asks the host's
/// breaker first; the host sends at most `max_concurrent_requests` at once, one at a time
/// after a failure until a success, and a `Retry-After` pauses the whole host. A group's
/// failure (its auth provider, its transport) costs only that group's rows. Rows the server
/// says it did not accept (`numProtoSuccess`) are dropped `server_rejected`.
pub struct DatabricksExporter {
    host: Host,
    config: ExportConfig,
    transport: Arc<dyn HttpTransport>,
    breaker: CircuitBreaker,
    gate: Arc<dyn FlagGate>,
    user_agent: String,
    counters: Counters,
    /// The breaker's openings when this exporter was made.
    openings_before: u64,
    pacing: Pacing,
    fingerprints: Fingerprints,
    /// The auth providers' recent answers, reused for a second.
    answers: request::Answers,
    /// Sees every request body sent (or, in a dry run, not sent).
    audit: Option<Arc<dyn AuditSink>>,
    /// Send nothing: each request goes to the audit only, its rows dropped `dry_run`.
    dry_run: bool,
}

impl fmt::Debug for DatabricksExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabricksExporter")
            .field("host", &self.host)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl DatabricksExporter {
    /// An exporter for `host`. `breaker` is the host's breaker (shared by every exporter of
    /// the host); `gate` is the host's feature flag. Extra headers (e.g.
    /// `x-databricks-org-id`) ride each row's connection
    /// ([`ConnectionInfo::extra_headers`](telemetry_types::connection::ConnectionInfo)).
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
            transport,
            gate,
            user_agent: user_agent.into(),
            counters: Counters::default(),
            openings_before: breaker.stats().openings,
            breaker,
            pacing: Pacing::new(config.max_concurrent_requests, config.max_throttle_pause),
            fingerprints: Fingerprints::new(),
            answers: request::Answers::default(),
            config,
            audit: None,
            dry_run: false,
        }
    }

    /// Hands every request body to `audit` as it is sent, byte for byte (one call per
    /// request, retries included); with `dry_run`, nothing is sent: the audit sees what would
    /// have been, and the rows are dropped `dry_run` (the breaker never hears of it).
    pub fn with_audit(mut self, audit: Option<Arc<dyn AuditSink>>, dry_run: bool) -> Self {
        self.audit = audit;
        self.dry_run = dry_run;
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
            concurrency_limit: self.pacing.limit(),
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
        // Credential groups go out side by side: one tenant's slow, hanging or failing auth
        // provider delays or loses only its own rows.
        let groups = group::group(&batch, self.config.authenticated_export, &self.fingerprints);
        let sends: Vec<BoxFuture<'_, ()>> = groups
            .into_iter()
            .map(|g| Box::pin(self.send_group(g, unsettled)) as BoxFuture<'_, ()>)
            .collect();
        join_all(sends).await;
    }

    async fn send_group(&self, group: Group<'_>, unsettled: &Unsettled<'_>) {
        let n = group.rows.len();
        let auth_headers = match self.credentials(group.auth.as_ref()).await {
            Ok(h) => {
                if let (Some(auth), Some(headers)) = (&group.auth, &h) {
                    self.fingerprints.learn(auth, headers);
                }
                h
            }
            Err(error) => {
                return unsettled.drop_rows(DropReason::AuthFailed, n, Some(error));
            }
        };
        let request = match self.request(&group, auth_headers) {
            Ok(r) => r,
            Err(e) => {
                return unsettled.drop_rows(DropReason::Serialization, n, Some(e.to_string()));
            }
        };
        let transport = group.rows[0]
            .connection
            .transport
            .clone()
            .unwrap_or_else(|| self.transport.clone());
        let sent = {
            let _slot = self.pacing.acquire().await;
            self.send_with_retries(&*transport, &request).await
        };
        match sent {
            Ok(accepted) => {
                let taken = accepted
                    .logs
                    .map_or(n, |logs| usize::try_from(logs).unwrap_or(usize::MAX).min(n));
                unsettled.exported(taken);
                if taken < n {
                    unsettled.drop_rows(DropReason::ServerRejected, n - taken, accepted.error);
                }
            }
            Err(failure) => {
                if failure.refused_credentials
                    && let Some(auth) = &group.auth
                {
                    self.answers.forget(auth);
                }
                if failure.is_not_the_endpoints()
                    && !self.counters.warned_terminal.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(host = %self.host, error = %failure.error, reason = failure.reason.as_str(), "telemetry request refused or not sent; telemetry rows are dropped (logged once)");
                }
                let error = Some(failure.error).filter(|e| !e.is_empty());
                unsettled.drop_rows(failure.reason, n, error);
            }
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
        let unsettled = Unsettled::new(self, batch.len());
        Box::pin(async move { self.export_batch(batch, &unsettled).await })
    }
}

#[cfg(test)]
mod tests;
