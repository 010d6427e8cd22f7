//! The driver-facing event vocabulary and the rows events become.
//!
//! A connection's identity lives once in an [`Arc<ConnectionInfo>`]; each event carries a
//! clone of that `Arc` (one atomic increment, no allocation) and a small [`EventKind`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::classify::{ErrorClass, classify_driver_error};
use crate::host::Host;
use crate::row::ChunkStats;
use crate::traits::AuthProvider;
use crate::wire::{
    AuthType, DriverConnectionParameters, DriverSystemConfiguration, ExecutionResultFormat,
    OperationType, StatementType, TelemetryFrontendLog,
};

/// A statement id, shared between the handle and its events without copying the text.
pub type StatementId = Arc<str>;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Who produced an event: one driver connection.
pub struct ConnectionInfo {
    /// Process-unique id, used to key statements and group rows by credentials.
    pub id: u64,
    /// The normalised workspace host.
    pub host: Host,
    /// From `?o=<digits>` or `/o/<digits>/` in the HTTP path only.
    pub workspace_id: Option<i64>,
    /// The server's session id, once known.
    pub session_id: Option<String>,
    /// The driver's user agent (already redacted).
    pub user_agent: String,
    /// How the connection authenticates.
    pub auth_type: Option<AuthType>,
    /// Sent on `CREATE_SESSION` rows only.
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// Sent on `CREATE_SESSION` rows only.
    pub connection_params: Option<DriverConnectionParameters>,
    /// The connection's credentials; `None` sends to the unauthenticated endpoint.
    pub auth: Option<Arc<dyn AuthProvider>>,
}

impl ConnectionInfo {
    /// A connection to `host` with nothing else known.
    pub fn new(host: Host, user_agent: impl Into<String>) -> Self {
        Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            host,
            workspace_id: None,
            session_id: None,
            user_agent: user_agent.into(),
            auth_type: None,
            system_configuration: None,
            connection_params: None,
            auth: None,
        }
    }

    /// The identity of the credentials: rows with equal keys may share a request.
    pub fn credentials_key(&self) -> Option<usize> {
        self.auth
            .as_ref()
            .map(|a| Arc::as_ptr(a) as *const () as usize)
    }
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("workspace_id", &self.workspace_id)
            .field("session_id", &self.session_id)
            .field("auth_type", &self.auth_type)
            .field("has_credentials", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

/// One thing that happened in the driver.
#[derive(Debug, Clone)]
pub struct TelemetryEvent {
    /// The connection it happened on.
    pub connection: Arc<ConnectionInfo>,
    /// When it happened, for the events that date a row: a connection opened or closed, a
    /// statement started, an error. `None` (chunks, completions: they date nothing) lets the
    /// background task use the time it takes the event. An [`Instant`], not a wall time, so a
    /// statement's start costs the driver one clock reading for both its date and its latency;
    /// the background task dates instants with one [`WallClock`](crate::id::WallClock)
    /// reading per batch.
    pub at: Option<Instant>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of events a driver reports. Exhaustive on purpose: the aggregator must fold
/// every kind, so a new kind is a compile error there rather than a silent drop.
///
/// Kept to 40 bytes (an event to 64) so that one event is about one cache line of the
/// queue: the two large payloads, which come once per statement at most, are boxed.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// The session was opened; `latency_ms` is the open call's own duration.
    ConnectionOpened {
        /// Duration of the open call.
        latency_ms: u64,
    },
    /// The session was closed; `latency_ms` is the close call's own duration.
    ConnectionClosed {
        /// Duration of the close call.
        latency_ms: u64,
    },
    /// A statement started executing.
    StatementStarted {
        /// The statement.
        statement_id: StatementId,
        /// What kind of statement.
        statement_type: StatementType,
        /// The operation (`EXECUTE_STATEMENT`, `LIST_TABLES`, ...).
        operation_type: OperationType,
    },
    /// A CloudFetch chunk was downloaded.
    ChunkDownloaded {
        /// The statement.
        statement_id: StatementId,
        /// Download latency; non-positive values are ignored in the statistics.
        latency_ms: i64,
        /// Bytes downloaded.
        bytes: u64,
        /// Whether the chunk was compressed.
        compressed: bool,
    },
    /// A statement finished (successfully or not) or was closed / cancelled / dropped.
    StatementCompleted {
        /// The statement.
        statement_id: StatementId,
        /// How it ended.
        completion: Box<StatementCompletion>,
    },
    /// An error the driver saw.
    Error {
        /// The statement it belongs to, if any.
        statement_id: Option<StatementId>,
        /// The error.
        error: Box<DriverError>,
    },
}

/// How a statement ended. All fields optional; the aggregator fills in what it measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatementCompletion {
    /// Start to completion, if the driver measured it (else the aggregator's measure is used).
    pub latency_ms: Option<u64>,
    /// How the result came back.
    pub execution_result: Option<ExecutionResultFormat>,
    /// Status polls made while waiting for the result.
    pub poll_count: Option<u32>,
    /// Total time spent in status polls.
    pub poll_latency_ms: Option<u64>,
    /// Retries of the execute call.
    pub retry_count: Option<u32>,
    /// Chunks the result has (CloudFetch).
    pub chunks_present: Option<u32>,
    /// Time until the result set was ready.
    pub result_ready_latency_ms: Option<u64>,
    /// Time the caller spent consuming the result set.
    pub result_consumption_latency_ms: Option<u64>,
    /// Whether the statement was an internal call of the driver.
    pub is_internal_call: Option<bool>,
    /// Whether the statement ended without the driver completing it (cancelled, dropped).
    pub abandoned: bool,
    /// CloudFetch chunks folded before the completion was sent: `telemetry-client`'s
    /// statement handle folds its chunks here instead of queueing an event per chunk. The
    /// aggregator merges them with any [`EventKind::ChunkDownloaded`] it received.
    pub chunks: ChunkStats,
}

/// An error reported by the driver. The message is redacted before it leaves the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    /// The error's name or type (`AuthenticationError`, `SQLSTATE 42P01`, ...).
    pub name: String,
    /// The message or trace (redacted and truncated when rows are built).
    pub message: String,
    /// The HTTP status behind the error, if any.
    pub http_status: Option<u16>,
    /// Terminal / retryable / unknown.
    pub class: ErrorClass,
}

impl DriverError {
    /// An error classified from its name.
    ///
    /// ```
    /// use telemetry_types::event::DriverError;
    /// use telemetry_types::classify::ErrorClass;
    /// assert_eq!(DriverError::new("AuthenticationError", "bad token").class, ErrorClass::Terminal);
    /// assert_eq!(DriverError::new("X", "y").with_http_status(503).class, ErrorClass::Retryable);
    /// ```
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        let name = name.into();
        let class = classify_driver_error(&name, None);
        Self {
            name,
            message: message.into(),
            http_status: None,
            class,
        }
    }

    /// Adds the HTTP status and reclassifies.
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self.class = classify_driver_error(&self.name, Some(status));
        self
    }

    /// Overrides the classification.
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }
}

/// One log ready to export, with the connection it belongs to (for credentials grouping and
/// the unauthenticated-endpoint privacy rules).
#[derive(Debug, Clone)]
pub struct TelemetryRow {
    /// The log.
    pub log: TelemetryFrontendLog,
    /// Its connection.
    pub connection: Arc<ConnectionInfo>,
    /// Error rows are kept longest when the pending buffer overflows.
    pub is_error: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traits::StaticToken;

    #[test]
    fn connection_ids_unique_and_credentials_key_by_provider() {
        let host = Host::parse("a.example", false).unwrap();
        let a = ConnectionInfo::new(host.clone(), "ua");
        let mut b = ConnectionInfo::new(host.clone(), "ua");
        assert_ne!(a.id, b.id);
        assert_eq!(a.credentials_key(), None);
        let token: Arc<dyn AuthProvider> = Arc::new(StaticToken::new("t"));
        b.auth = Some(token.clone());
        let mut c = ConnectionInfo::new(host, "ua");
        c.auth = Some(token);
        assert_eq!(b.credentials_key(), c.credentials_key());
        assert!(b.credentials_key().is_some());
        let dbg = format!("{b:?}");
        assert!(dbg.contains("has_credentials: true"));
    }

    #[test]
    fn an_event_is_about_one_cache_line() {
        assert!(std::mem::size_of::<EventKind>() <= 40);
        assert!(std::mem::size_of::<TelemetryEvent>() <= 64);
    }

    #[test]
    fn driver_error_classification() {
        let e = DriverError::new("Oops", "m");
        assert_eq!(e.class, ErrorClass::Unknown);
        let e = e.with_http_status(401);
        assert_eq!(e.class, ErrorClass::Terminal);
        assert_eq!(
            e.with_class(ErrorClass::Retryable).class,
            ErrorClass::Retryable
        );
    }
}
