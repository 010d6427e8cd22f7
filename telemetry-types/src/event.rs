//! The driver-facing event vocabulary: what a driver reports, on its own thread, for the
//! background task to fold into rows.
//!
//! A connection's identity lives once in an [`Arc<ConnectionInfo>`]; each event carries a
//! clone of that `Arc` (one atomic increment, no allocation) and a small [`EventKind`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::classify::{ErrorClass, classify_driver_error, classify_error};
use crate::connection::ConnectionInfo;
use crate::redact::cap_at_word;
use crate::wire::{ExecutionResultFormat, OperationType, StatementType, VolumeOperationType};

/// A statement id in an error event: a pointer keeps the error event small. Statement ends
/// and chunk failures carry a [`CompactId`].
pub type StatementId = Arc<str>;

/// A statement id carried inline when it fits (a Databricks statement id is a 36-character
/// UUID), shared otherwise. Statement ends and chunk failures carry it: attaching an id then
/// costs the driver's thread a copy instead of an allocation that the
/// background thread frees later (the slow path of most allocators).
///
/// ```
/// use telemetry_types::event::CompactId;
/// let id = CompactId::from("01f0a1b2-c3d4-1e5f-8a9b-0123456789ab");
/// assert_eq!(&*id, "01f0a1b2-c3d4-1e5f-8a9b-0123456789ab");
/// assert_eq!(CompactId::from("x".repeat(100).as_str()).len(), 100);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CompactId(CompactRepr);

/// Bytes kept inline: a UUID and a little more, so the id is 40 bytes in all.
const COMPACT_INLINE: usize = 38;

#[derive(Clone, PartialEq, Eq)]
enum CompactRepr {
    /// The first `len` bytes of `bytes` are the id (a whole `str`, so valid UTF-8); the rest
    /// are zero, so equal ids compare equal.
    Inline {
        len: u8,
        bytes: [u8; COMPACT_INLINE],
    },
    Shared(Arc<str>),
}

impl CompactId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            CompactRepr::Inline { len, bytes } => {
                // A prefix copied from a whole `str`: always valid, so never "".
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            CompactRepr::Shared(s) => s,
        }
    }

    /// The id's bytes (UTF-8), without checking them again.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            CompactRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            CompactRepr::Shared(s) => s.as_bytes(),
        }
    }

    /// Heap bytes the id holds: none inline, the text shared (for byte budgets).
    #[inline]
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            CompactRepr::Inline { .. } => 0,
            CompactRepr::Shared(s) => s.len(),
        }
    }
}

impl From<&str> for CompactId {
    fn from(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= COMPACT_INLINE => {
                let mut bytes = [0; COMPACT_INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Self(CompactRepr::Inline { len, bytes })
            }
            _ => Self(CompactRepr::Shared(Arc::from(id))),
        }
    }
}

impl From<String> for CompactId {
    fn from(id: String) -> Self {
        Self::from(id.as_str())
    }
}

impl std::ops::Deref for CompactId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for CompactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One thing that happened in the driver.
#[derive(Debug, Clone)]
pub struct TelemetryEvent {
    /// The connection it happened on.
    pub connection: Arc<ConnectionInfo>,
    /// When it happened, which dates its row: a connection opened or closed, a statement
    /// began (its end carries its begin), an error. `None` lets the background task use the
    /// time it takes the event. A monotonic [`Stamp`](crate::clock::Stamp), not a wall time,
    /// so a statement costs the driver one clock reading at its begin for both its date and
    /// its latency's origin; the background task turns stamps into dates with one
    /// [`WallClock`](crate::clock::WallClock) reading per batch.
    pub at: Option<crate::clock::Stamp>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of events a driver reports. Exhaustive on purpose: the aggregator must fold
/// every kind, so a new kind is a compile error there rather than a silent drop.
///
/// A statement's end, the common event, rides inline: boxing it would cost the driver's
/// thread an allocation that the background thread frees (the allocator's slow path, about
/// a fifth of a statement's instructions on the driver thread). The rare large payloads
/// (errors, chunk failures) are boxed.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // On purpose: the large variant is the common one.
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
    /// Opening the session failed (a `CREATE_SESSION` row with the error, sent at once).
    ConnectionFailed {
        /// Duration of the failed open call.
        latency_ms: u64,
        /// Why.
        error: Box<DriverError>,
    },
    /// A statement ended: completed, failed, cancelled, closed early or dropped. Everything
    /// its handle recorded rides here (type, operation, id, outcome, chunks, polls, format,
    /// error), and the event's `at` is the statement's begin: a statement is one event
    /// through the queue however many chunks and polls it has, and nothing about it waits in
    /// the background between its begin and its end.
    StatementEnded {
        /// The statement.
        end: StatementEnd,
    },
    /// A CloudFetch chunk failed after its retries (a row of its own, sent at once).
    ChunkFailed {
        /// The chunk, the statement's chunk statistics so far, the error.
        failure: Box<ChunkFailure>,
    },
    /// An error the driver saw that does not end a statement: a row of its own.
    Error {
        /// The server's id of the statement it belongs to, if any (and attached).
        statement_id: Option<StatementId>,
        /// The error.
        error: Box<DriverError>,
    },
}

/// What the driver recorded about a statement as it ran. All fields optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatementCompletion {
    /// How the result came back.
    pub execution_result: Option<ExecutionResultFormat>,
    /// Whether the result is compressed (also set by any compressed chunk).
    pub compressed: Option<bool>,
    /// Status polls made while waiting for the result.
    pub poll_count: Option<u32>,
    /// Total time spent in status polls.
    pub poll_latency_ms: Option<u64>,
    /// Retries of the execute call.
    pub retry_count: Option<u32>,
    /// Chunks the result has (CloudFetch).
    pub chunks_present: Option<u32>,
    /// Begin to the result set being ready (first batch handed out).
    pub result_ready_latency_ms: Option<u64>,
    /// Begin to the result set being consumed (reader done).
    pub result_consumption_latency_ms: Option<u64>,
    /// Whether the statement was an internal call of the driver.
    pub is_internal_call: Option<bool>,
}

/// How a statement ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatementOutcome {
    /// It completed.
    #[default]
    Completed,
    /// It failed (the error is on the statement's row).
    Failed,
    /// It was cancelled before completing (`CANCEL_STATEMENT`).
    Cancelled,
    /// It was closed before completing (`CLOSE_STATEMENT`).
    Closed,
    /// Its handle's last clone was dropped before any ending (`CLOSE_STATEMENT`).
    Abandoned,
}

impl StatementOutcome {
    /// Whether the row says the statement did not complete, with the server's own operation.
    pub const fn operation_override(self) -> Option<OperationType> {
        match self {
            Self::Completed | Self::Failed => None,
            Self::Cancelled => Some(OperationType::CancelStatement),
            Self::Closed | Self::Abandoned => Some(OperationType::CloseStatement),
        }
    }

    /// Short stable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Closed => "closed",
            Self::Abandoned => "abandoned",
        }
    }
}

/// A Unity Catalog volume operation as the driver reported it (strings redacted, and the local
/// file reduced to its name, when the row is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOp {
    /// PUT, GET, DELETE, LIST, QUERY.
    pub operation: VolumeOperationType,
    /// The volume path.
    pub volume_path: Option<String>,
    /// The local file (sent as its file name only).
    pub local_file: Option<String>,
}

/// Everything about one statement when it ends: what the driver told and what its handle
/// measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementEnd {
    /// What kind of statement.
    pub statement_type: StatementType,
    /// The operation (`EXECUTE_STATEMENT`, `LIST_TABLES`, ...).
    pub operation_type: OperationType,
    /// The server's id, if it was attached (a statement whose execute call failed has none).
    pub statement_id: Option<CompactId>,
    /// Begin to end.
    pub latency_ms: u64,
    /// How it ended.
    pub outcome: StatementOutcome,
    /// Its CloudFetch chunks.
    pub chunks: ChunkStats,
    /// What the driver recorded.
    pub completion: StatementCompletion,
    /// The error that ended it ([`StatementOutcome::Failed`]); boxed, as it is rare and
    /// ends wait in the queue.
    pub error: Option<Box<DriverError>>,
    /// The volume operation, for `VOLUME` statements (boxed: rare).
    pub volume: Option<Box<VolumeOp>>,
}

impl StatementEnd {
    /// The driver's text the end holds on the heap, as allocated: a statement id too long
    /// to ride inline, its error's strings, its volume operation's paths (for byte budgets;
    /// the boxes themselves not counted).
    #[inline]
    pub fn text_bytes(&self) -> usize {
        self.statement_id.as_ref().map_or(0, CompactId::heap_bytes)
            + self.error.as_deref().map_or(0, DriverError::text_bytes)
            + self.volume.as_deref().map_or(0, |v| {
                v.volume_path.as_ref().map_or(0, String::capacity)
                    + v.local_file.as_ref().map_or(0, String::capacity)
            })
    }
}

/// A CloudFetch chunk that failed after its retries: a row of its own, sent at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFailure {
    /// The server's statement id, if attached.
    pub statement_id: Option<CompactId>,
    /// The statement's type.
    pub statement_type: StatementType,
    /// The statement's operation.
    pub operation_type: OperationType,
    /// The chunk's index.
    pub chunk_index: i64,
    /// The statement's chunk statistics so far.
    pub chunks: ChunkStats,
    /// What the driver recorded so far.
    pub completion: StatementCompletion,
    /// Why it failed.
    pub error: DriverError,
}

/// CloudFetch chunk statistics of one statement (spec 2.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Chunks downloaded.
    pub iterated: u32,
    /// First chunk with a positive latency.
    pub initial_latency_ms: Option<i64>,
    /// Largest positive latency.
    pub slowest_latency_ms: Option<i64>,
    /// Sum of positive latencies.
    pub sum_latency_ms: i64,
    /// True if any chunk was compressed.
    pub compressed: bool,
    /// Bytes downloaded (kept for statistics; not a wire field).
    pub bytes: u64,
}

impl ChunkStats {
    /// Folds one chunk in.
    ///
    /// ```
    /// use telemetry_types::event::ChunkStats;
    /// let mut s = ChunkStats::default();
    /// for (lat, c) in [(0, false), (30, true), (50, false), (-1, false)] { s.record(lat, 10, c); }
    /// assert_eq!((s.iterated, s.initial_latency_ms, s.slowest_latency_ms, s.sum_latency_ms, s.compressed),
    ///            (4, Some(30), Some(50), 80, true));
    /// ```
    #[inline]
    pub fn record(&mut self, latency_ms: i64, bytes: u64, compressed: bool) {
        self.iterated = self.iterated.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
        self.compressed |= compressed;
        if latency_ms > 0 {
            self.initial_latency_ms.get_or_insert(latency_ms);
            self.slowest_latency_ms = Some(
                self.slowest_latency_ms
                    .map_or(latency_ms, |s| s.max(latency_ms)),
            );
            self.sum_latency_ms = self.sum_latency_ms.saturating_add(latency_ms);
        }
    }

    /// Folds in the statistics of chunks that came after `self`'s (so `self`'s initial
    /// latency, if any, stays the initial one).
    ///
    /// ```
    /// use telemetry_types::event::ChunkStats;
    /// let (mut a, mut b) = (ChunkStats::default(), ChunkStats::default());
    /// a.record(0, 1, false);
    /// b.record(40, 2, true);
    /// b.record(10, 3, false);
    /// a.merge(&b);
    /// assert_eq!((a.iterated, a.bytes, a.initial_latency_ms, a.slowest_latency_ms, a.sum_latency_ms, a.compressed),
    ///            (3, 6, Some(40), Some(40), 50, true));
    /// ```
    pub fn merge(&mut self, later: &ChunkStats) {
        self.iterated = self.iterated.saturating_add(later.iterated);
        self.bytes = self.bytes.saturating_add(later.bytes);
        self.compressed |= later.compressed;
        self.initial_latency_ms = self.initial_latency_ms.or(later.initial_latency_ms);
        self.slowest_latency_ms = self.slowest_latency_ms.max(later.slowest_latency_ms);
        self.sum_latency_ms = self.sum_latency_ms.saturating_add(later.sum_latency_ms);
    }
}

/// What telemetry reads from a driver's own error type: all optional. A driver implements it
/// in a few lines for its error type and hands its errors in as they are; the classifier
/// (terminal errors are flushed at once) uses the SQLSTATE and the HTTP status, and only
/// falls back on the name when neither is known.
///
/// ```
/// use std::borrow::Cow;
/// use telemetry_types::event::{DriverError, ReportableError};
/// use telemetry_types::classify::ErrorClass;
///
/// struct MyError { sqlstate: [u8; 5], message: String }
/// impl ReportableError for MyError {
///     fn error_name(&self) -> Option<Cow<'_, str>> { Some("MyError".into()) }
///     fn sqlstate(&self) -> Option<Cow<'_, str>> { std::str::from_utf8(&self.sqlstate).ok().map(Cow::from) }
///     fn message(&self) -> Option<Cow<'_, str>> { Some(self.message.as_str().into()) }
/// }
/// let e = DriverError::from_error(&MyError { sqlstate: *b"28000", message: "bad token".into() });
/// assert_eq!((e.name.as_str(), e.class), ("MyError", ErrorClass::Terminal));
/// ```
pub trait ReportableError {
    /// The error's name or type (`AuthenticationError`, ...).
    fn error_name(&self) -> Option<Cow<'_, str>> {
        None
    }
    /// The SQLSTATE, if the error has one.
    fn sqlstate(&self) -> Option<Cow<'_, str>> {
        None
    }
    /// The HTTP status behind the error, if any.
    fn http_status(&self) -> Option<u16> {
        None
    }
    /// The message or trace (redacted and capped before it leaves the process).
    fn message(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// Longest error name kept at intake, in bytes.
const MAX_INTAKE_NAME_BYTES: usize = 1024;
/// Longest error message kept at intake, in bytes: enough for a 2048-character stack trace
/// after redaction, small enough that a megabyte message costs the driver little to copy.
const MAX_INTAKE_MESSAGE_BYTES: usize = 16 * 1024;

/// `text` cut at a word boundary to `max` bytes: only what is kept is copied.
fn capped(text: &str, max: usize) -> String {
    cap_at_word(text, max)
}

/// An error reported by the driver. The message is redacted before it leaves the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    /// The error's name or type (`AuthenticationError`, `42P01` for an error given only a SQLSTATE, ...).
    pub name: String,
    /// The SQLSTATE, if known.
    pub sqlstate: Option<String>,
    /// The message or trace (redacted and truncated when rows are built).
    pub message: String,
    /// The HTTP status behind the error, if any.
    pub http_status: Option<u16>,
    /// Terminal / retryable / unknown.
    pub class: ErrorClass,
}

impl DriverError {
    /// The text the error holds on the heap, as allocated (for byte budgets).
    pub fn text_bytes(&self) -> usize {
        self.name.capacity()
            + self.message.capacity()
            + self.sqlstate.as_ref().map_or(0, String::capacity)
    }

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
            sqlstate: None,
            message: message.into(),
            http_status: None,
            class,
        }
    }

    /// How [`from_error`](Self::from_error) would classify `error`, without copying its
    /// message (for a handle that reports nothing but still has to tell an error that ends a
    /// statement from one that would have been a row of its own).
    pub fn class_of<E: ReportableError + ?Sized>(error: &E) -> ErrorClass {
        let sqlstate = error.sqlstate();
        let sqlstate = sqlstate.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let name = error.error_name();
        let name = match (
            name.as_deref().map(str::trim).filter(|n| !n.is_empty()),
            sqlstate,
        ) {
            (Some(n), _) => n,
            (None, Some(state)) => state,
            (None, None) => "Error",
        };
        classify_error(sqlstate, error.http_status(), name)
    }

    /// Copies what telemetry needs of a driver's error (strings capped: a long message costs a
    /// bounded copy) and classifies it by SQLSTATE and HTTP status. An error without a name
    /// is named after its SQLSTATE, or `Error`.
    pub fn from_error<E: ReportableError + ?Sized>(error: &E) -> Self {
        let sqlstate = error
            .sqlstate()
            .map(|s| capped(s.trim(), 16))
            .filter(|s| !s.is_empty());
        let name = match (error.error_name(), &sqlstate) {
            (Some(n), _) if !n.trim().is_empty() => capped(n.trim(), MAX_INTAKE_NAME_BYTES),
            // The bare code, as the JDBC driver sends it: rows group across drivers by it.
            (_, Some(state)) => state.clone(),
            _ => "Error".to_owned(),
        };
        let http_status = error.http_status();
        let class = classify_error(sqlstate.as_deref(), http_status, &name);
        Self {
            message: error
                .message()
                .map_or_else(String::new, |m| capped(&m, MAX_INTAKE_MESSAGE_BYTES)),
            name,
            sqlstate,
            http_status,
            class,
        }
    }

    /// Adds the SQLSTATE and reclassifies.
    pub fn with_sqlstate(mut self, sqlstate: impl Into<String>) -> Self {
        self.sqlstate = Some(sqlstate.into());
        self.class = classify_error(self.sqlstate.as_deref(), self.http_status, &self.name);
        self
    }

    /// Adds the HTTP status and reclassifies.
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self.class = classify_error(self.sqlstate.as_deref(), Some(status), &self.name);
        self
    }

    /// Overrides the classification.
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }
}

impl ReportableError for DriverError {
    fn error_name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn sqlstate(&self) -> Option<Cow<'_, str>> {
        self.sqlstate.as_deref().map(Cow::Borrowed)
    }
    fn http_status(&self) -> Option<u16> {
        self.http_status
    }
    fn message(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.message))
    }
}

/// Any error type, as it displays itself: no name, SQLSTATE or status (use [`ErrorReport`] to
/// add them). Lets a driver report an error of a type it cannot implement
/// [`ReportableError`] for (a type of its dependencies: the orphan rule) without wrapping it.
impl ReportableError for dyn std::error::Error + '_ {
    fn message(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(display_capped(self, MAX_INTAKE_MESSAGE_BYTES)))
    }
}

/// As for `dyn Error`, for the `Send + Sync` error objects most crates box.
impl ReportableError for dyn std::error::Error + Send + Sync + '_ {
    fn message(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(display_capped(self, MAX_INTAKE_MESSAGE_BYTES)))
    }
}

/// A driver's error of any type, with what the driver knows beside it, built at the report
/// site: borrows the error (no clone, no wrapper type to define), and reads its text through
/// `Display`, stopping at the intake cap (a megabyte message costs a bounded copy).
///
/// ```
/// use telemetry_types::event::{DriverError, ErrorReport};
/// use telemetry_types::classify::ErrorClass;
/// // An error type from a dependency: no ReportableError impl is possible for it.
/// let err = std::io::Error::new(std::io::ErrorKind::Other, "table not found: t1");
/// let report = ErrorReport::of(&err).named("DriverError").sqlstate("42P01").http_status(404);
/// let e = DriverError::from_error(&report);
/// assert_eq!((e.name.as_str(), e.sqlstate.as_deref()), ("DriverError", Some("42P01")));
/// assert_eq!((e.message.as_str(), e.class), ("table not found: t1", ErrorClass::Terminal));
/// ```
#[derive(Clone, Copy)]
pub struct ErrorReport<'a> {
    error: &'a dyn fmt::Display,
    name: Option<&'a str>,
    sqlstate: Option<&'a str>,
    http_status: Option<u16>,
}

impl fmt::Debug for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The error's text is the driver's (it may quote SQL): not in Debug output.
        f.debug_struct("ErrorReport")
            .field("name", &self.name)
            .field("sqlstate", &self.sqlstate)
            .field("http_status", &self.http_status)
            .finish_non_exhaustive()
    }
}

impl<'a> ErrorReport<'a> {
    /// The error, by its `Display` text.
    pub fn of(error: &'a dyn fmt::Display) -> Self {
        Self {
            error,
            name: None,
            sqlstate: None,
            http_status: None,
        }
    }

    /// Its name or type (`AuthenticationError`, ...).
    pub fn named(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    /// Its SQLSTATE.
    pub fn sqlstate(mut self, sqlstate: &'a str) -> Self {
        self.sqlstate = Some(sqlstate);
        self
    }

    /// The HTTP status behind it.
    pub fn http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }
}

impl ReportableError for ErrorReport<'_> {
    fn error_name(&self) -> Option<Cow<'_, str>> {
        self.name.map(Cow::Borrowed)
    }
    fn sqlstate(&self) -> Option<Cow<'_, str>> {
        self.sqlstate.map(Cow::Borrowed)
    }
    fn http_status(&self) -> Option<u16> {
        self.http_status
    }
    fn message(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(display_capped(
            self.error,
            MAX_INTAKE_MESSAGE_BYTES,
        )))
    }
}

/// `value`'s `Display` text, at most about `max` bytes of it: writing stops once the cap is
/// reached, so the work is proportional to the cap, not to the text.
fn display_capped(value: &(impl fmt::Display + ?Sized), max: usize) -> String {
    struct Capped {
        out: String,
        max: usize,
    }
    impl fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.max.saturating_sub(self.out.len());
            if s.len() <= room {
                self.out.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.out.push_str(&s[..end]);
            // Full: stop the formatting (the error is ours, not the value's).
            Err(fmt::Error)
        }
    }
    let mut w = Capped {
        out: String::new(),
        max,
    };
    let _ = fmt::write(&mut w, format_args!("{value}"));
    // Cut at a word boundary, as every other capped text.
    if w.out.len() >= max {
        return capped(&w.out, max.saturating_sub(1).max(1));
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error type from "another crate": only `Display` and `std::error::Error`.
    #[derive(Debug)]
    struct ForeignError(String);
    impl fmt::Display for ForeignError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "driverbase: {}", self.0)
        }
    }
    impl std::error::Error for ForeignError {}

    #[test]
    fn a_foreign_error_is_reported_without_a_wrapper() {
        let err = ForeignError("warehouse is starting".into());
        let plain = DriverError::from_error(&err as &dyn std::error::Error);
        assert_eq!(plain.message, "driverbase: warehouse is starting");
        assert_eq!(plain.name, "Error");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(ForeignError("x".into()));
        assert_eq!(DriverError::from_error(&*boxed).message, "driverbase: x");
        let full = DriverError::from_error(
            &ErrorReport::of(&err)
                .named("ServiceUnavailable")
                .http_status(503),
        );
        assert_eq!(full.name, "ServiceUnavailable");
        assert_eq!(full.class, ErrorClass::Retryable);
        assert!(!format!("{:?}", ErrorReport::of(&err)).contains("warehouse"));
    }

    #[test]
    fn a_huge_foreign_message_costs_a_bounded_copy_and_is_never_emptied() {
        let err = ForeignError("x".repeat(1 << 20));
        let e = DriverError::from_error(&ErrorReport::of(&err));
        assert!(!e.message.is_empty());
        assert!(
            e.message.len() <= MAX_INTAKE_MESSAGE_BYTES,
            "{}",
            e.message.len()
        );
        assert!(e.message.capacity() <= MAX_INTAKE_MESSAGE_BYTES);
        // Cut at the last word boundary within the cap, as any capped text.
        assert!(e.message.starts_with("driverbase:"));
    }

    proptest::proptest! {
        /// Any text comes back as it went in, inline or shared, and ids compare as their text.
        #[test]
        fn compact_ids_keep_their_text(a in "\\PC{0,60}", b in "\\PC{0,60}") {
            let (ca, cb) = (CompactId::from(a.as_str()), CompactId::from(b.as_str()));
            proptest::prop_assert_eq!(ca.as_str(), a.as_str());
            proptest::prop_assert_eq!(ca == cb, a == b);
            proptest::prop_assert_eq!(format!("{ca:?}"), format!("{a:?}"));
        }
    }

    #[test]
    fn compact_ids_are_inline_up_to_a_uuid_and_a_little_more() {
        assert_eq!(std::mem::size_of::<Option<CompactId>>(), 40);
        let inline = "0".repeat(COMPACT_INLINE);
        assert!(matches!(
            CompactId::from(inline.as_str()).0,
            CompactRepr::Inline { .. }
        ));
        let long = "0".repeat(COMPACT_INLINE + 1);
        assert!(matches!(
            CompactId::from(long.as_str()).0,
            CompactRepr::Shared(_)
        ));
    }

    #[test]
    fn merging_a_split_sequence_equals_recording_it_whole() {
        let chunks: Vec<(i64, u64, bool)> = (0..12)
            .map(|i| ((i * 37 % 11) as i64 - 3, i as u64 * 100, i % 5 == 3))
            .collect();
        let mut whole = ChunkStats::default();
        chunks.iter().for_each(|&(l, b, c)| whole.record(l, b, c));
        for split in 0..=chunks.len() {
            let (mut earlier, mut later) = (ChunkStats::default(), ChunkStats::default());
            chunks[..split]
                .iter()
                .for_each(|&(l, b, c)| earlier.record(l, b, c));
            chunks[split..]
                .iter()
                .for_each(|&(l, b, c)| later.record(l, b, c));
            earlier.merge(&later);
            assert_eq!(earlier, whole, "split at {split}");
        }
    }

    #[test]
    fn an_event_is_a_statement_end_and_little_more() {
        // The queue's slots are this size (192 of them in a host's array): a field added to
        // a statement's end grows every slot, and another kind must box what it carries.
        assert!(std::mem::size_of::<StatementEnd>() <= 208);
        assert!(std::mem::size_of::<EventKind>() <= 208);
        assert!(std::mem::size_of::<TelemetryEvent>() <= 232);
    }

    struct Bare;
    impl ReportableError for Bare {}

    struct Huge(String);
    impl ReportableError for Huge {
        fn sqlstate(&self) -> Option<Cow<'_, str>> {
            Some(" 08S01 ".into())
        }
        fn message(&self) -> Option<Cow<'_, str>> {
            Some(self.0.as_str().into())
        }
    }

    #[test]
    fn errors_from_the_drivers_own_type() {
        let bare = DriverError::from_error(&Bare);
        assert_eq!(
            (bare.name.as_str(), bare.class),
            ("Error", ErrorClass::Unknown)
        );
        let huge = DriverError::from_error(&Huge("word ".repeat(1_000_000)));
        assert_eq!(huge.name, "08S01");
        assert_eq!(huge.class, ErrorClass::Retryable);
        assert!(huge.message.len() <= MAX_INTAKE_MESSAGE_BYTES);
        assert!(
            huge.message.capacity() <= MAX_INTAKE_MESSAGE_BYTES,
            "capacity trimmed"
        );
        // A megabyte without whitespace is cut, not emptied.
        let dense = DriverError::from_error(&Huge("x".repeat(1 << 20)));
        assert_eq!(dense.message.len(), MAX_INTAKE_MESSAGE_BYTES);
        assert_eq!(dense.message.capacity(), MAX_INTAKE_MESSAGE_BYTES);
        let again = DriverError::from_error(&huge);
        assert_eq!(again, huge, "a DriverError reports itself unchanged");
        let e = DriverError::new("X", "m").with_sqlstate("28000");
        assert_eq!(e.class, ErrorClass::Terminal);
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
