//! The driver-facing event vocabulary: what a driver reports, on its own thread, for the
//! background task to fold into rows.
//!
//! A connection's identity lives once in an [`Arc<ConnectionInfo>`]; each event carries a
//! clone of that `Arc` (one atomic increment, no allocation) and a small [`EventKind`].

use std::sync::Arc;
use std::time::Instant;

use crate::classify::{ErrorClass, classify_driver_error};
use crate::connection::ConnectionInfo;
use crate::wire::{ExecutionResultFormat, OperationType, StatementType};

/// A statement id, shared between the handle and its events without copying the text.
pub type StatementId = Arc<str>;

/// One thing that happened in the driver.
#[derive(Debug, Clone)]
pub struct TelemetryEvent {
    /// The connection it happened on.
    pub connection: Arc<ConnectionInfo>,
    /// When it happened, for the events that date a row: a connection opened or closed, a
    /// statement started, an error. `None` (chunks, completions: they date nothing) lets the
    /// background task use the time it takes the event. An [`Instant`], not a wall time, so a
    /// statement's start costs the driver one clock reading for both its date and its latency;
    /// the background task dates instants with one [`WallClock`](crate::clock::WallClock)
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
    /// A statement finished (successfully or not) or was closed / cancelled / dropped. Its
    /// CloudFetch chunks ride here: the statement handle folds them as they come, so chunks
    /// take one route and are never events of their own.
    StatementEnded {
        /// The statement.
        statement_id: StatementId,
        /// How it ended.
        end: Box<StatementEnd>,
    },
    /// An error the driver saw.
    Error {
        /// The statement it belongs to, if any.
        statement_id: Option<StatementId>,
        /// The error.
        error: Box<DriverError>,
    },
}

/// What the driver tells about a statement as it completes. All fields optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatementCompletion {
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
}

/// How a statement ended: what the driver told and what its handle measured. Built by the
/// statement handle, or by the aggregator for a statement that never ended (evicted, open at
/// close).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatementEnd {
    /// Start to end.
    pub latency_ms: u64,
    /// Whether the statement ended without the driver completing it (dropped, evicted).
    pub abandoned: bool,
    /// Its CloudFetch chunks.
    pub chunks: ChunkStats,
    /// What the driver told.
    pub completion: StatementCompletion,
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

#[cfg(test)]
mod tests {
    use super::*;

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
