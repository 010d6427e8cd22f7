//! Building the logs of spec section 3 from what the driver reported, and the privacy rules of
//! the unauthenticated endpoint.

use crate::event::{ConnectionInfo, DriverError, StatementCompletion};
use crate::id::uuid_v4;
use crate::redact::{MAX_STACK_TRACE_CHARS, redact_truncated};
use crate::wire::{
    ChunkDetails, DriverErrorInfo, OperationDetail, OperationType, ResultLatency,
    SqlExecutionEvent, StatementType, TelemetryFrontendLog,
};

/// Longest error name sent, in characters.
pub const MAX_ERROR_NAME_CHARS: usize = 256;

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
    /// use telemetry_types::row::ChunkStats;
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
    /// use telemetry_types::row::ChunkStats;
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

/// Everything known about one statement when its row is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSummary {
    /// The statement id.
    pub statement_id: String,
    /// When it started, ms since the epoch (the row's timestamp).
    pub started_at_millis: i64,
    /// Statement type.
    pub statement_type: StatementType,
    /// Operation type.
    pub operation_type: OperationType,
    /// Start to completion.
    pub latency_ms: u64,
    /// How it ended.
    pub completion: StatementCompletion,
    /// CloudFetch chunks.
    pub chunks: ChunkStats,
    /// The error that ended it, if any.
    pub error: Option<DriverError>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A log with the connection's correlation ids and a fresh event id.
pub fn base_log(conn: &ConnectionInfo, timestamp_millis: i64) -> TelemetryFrontendLog {
    let mut log = TelemetryFrontendLog::new(uuid_v4(), timestamp_millis, conn.user_agent.clone());
    log.workspace_id = conn.workspace_id;
    log.driver_log_mut().session_id = conn.session_id.clone();
    log
}

/// The `CREATE_SESSION` (`opened`) or `DELETE_SESSION` row. Only `CREATE_SESSION` carries the
/// system configuration, connection parameters and auth type.
pub fn connection_row(
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    opened: bool,
    latency_ms: u64,
) -> TelemetryFrontendLog {
    let mut log = base_log(conn, timestamp_millis);
    let d = log.driver_log_mut();
    d.operation_latency_ms = Some(to_i64(latency_ms));
    let operation_type = if opened {
        d.system_configuration = conn.system_configuration.clone();
        d.driver_connection_params = conn.connection_params.clone();
        d.auth_type = conn.auth_type;
        OperationType::CreateSession
    } else {
        OperationType::DeleteSession
    };
    d.sql_operation = Some(SqlExecutionEvent {
        operation_detail: Some(OperationDetail {
            operation_type: Some(operation_type),
            ..Default::default()
        }),
        ..Default::default()
    });
    log
}

/// The statement row.
pub fn statement_row(conn: &ConnectionInfo, s: &StatementSummary) -> TelemetryFrontendLog {
    let mut log = base_log(conn, s.started_at_millis);
    let c = &s.completion;
    let d = log.driver_log_mut();
    d.sql_statement_id = Some(s.statement_id.clone());
    d.operation_latency_ms = Some(to_i64(s.latency_ms));
    let chunk_details =
        (s.chunks.iterated > 0 || c.chunks_present.is_some()).then(|| ChunkDetails {
            total_chunks_present: c.chunks_present.map(i64::from),
            total_chunks_iterated: Some(i64::from(s.chunks.iterated)),
            initial_chunk_latency_millis: s.chunks.initial_latency_ms,
            slowest_chunk_latency_millis: s.chunks.slowest_latency_ms,
            sum_chunks_download_time_millis: Some(s.chunks.sum_latency_ms),
        });
    let result_latency = (c.result_ready_latency_ms.is_some()
        || c.result_consumption_latency_ms.is_some())
    .then(|| ResultLatency {
        result_set_ready_latency_millis: c.result_ready_latency_ms.map(to_i64),
        result_set_consumption_latency_millis: c.result_consumption_latency_ms.map(to_i64),
    });
    d.sql_operation = Some(SqlExecutionEvent {
        statement_type: Some(s.statement_type),
        is_compressed: Some(s.chunks.compressed),
        execution_result: c.execution_result,
        retry_count: c.retry_count.map(i64::from),
        operation_detail: Some(OperationDetail {
            operation_type: Some(s.operation_type),
            n_operation_status_calls: c.poll_count.map(i64::from),
            operation_status_latency_millis: c.poll_latency_ms.map(to_i64),
            is_internal_call: c.is_internal_call,
        }),
        chunk_details,
        result_latency,
    });
    d.error_info = s.error.as_ref().map(error_info);
    log
}

/// A standalone error row (or an error kept on a statement, reported with it).
pub fn error_row(
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    statement_id: Option<&str>,
    error: &DriverError,
) -> TelemetryFrontendLog {
    let mut log = base_log(conn, timestamp_millis);
    let d = log.driver_log_mut();
    d.sql_statement_id = statement_id.map(str::to_owned);
    d.error_info = Some(error_info(error));
    log
}

/// `error_info` with the name and message redacted and truncated.
pub fn error_info(error: &DriverError) -> crate::wire::DriverErrorInfo {
    DriverErrorInfo {
        error_name: redact_truncated(&error.name, MAX_ERROR_NAME_CHARS),
        stack_trace: redact_truncated(&error.message, MAX_STACK_TRACE_CHARS),
    }
}

/// Applies the unauthenticated endpoint's privacy rules in place: no correlation ids, no
/// configuration blocks, no auth type, empty stack traces.
pub fn strip_for_unauthenticated(log: &mut TelemetryFrontendLog) {
    log.workspace_id = None;
    let d = log.driver_log_mut();
    d.session_id = None;
    d.sql_statement_id = None;
    d.system_configuration = None;
    d.driver_connection_params = None;
    d.auth_type = None;
    if let Some(e) = d.error_info.as_mut() {
        e.stack_trace.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkStats;

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
}
