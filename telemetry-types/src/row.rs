//! Building the logs of each row kind (docs/TELEMETRY.md, "What is sent") from what the driver reported, and the privacy rules of
//! the unauthenticated endpoint.

use std::sync::Arc;

use crate::connection::{ConnectionInfo, MAX_ID_CHARS};
use crate::event::{
    ChunkFailure, ChunkStats, DriverError, StatementCompletion, StatementEnd, VolumeOp,
};
use crate::random::uuid_v4;
use crate::redact::{MAX_STACK_TRACE_CHARS, file_name_only, redact_truncated};
use crate::wire::{
    ChunkDetails, DriverErrorInfo, OperationDetail, OperationType, ResultLatency,
    SqlExecutionEvent, StatementType, TelemetryFrontendLog, VolumeOperation,
};

/// Longest error name sent, in characters.
const MAX_ERROR_NAME_CHARS: usize = 256;

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

/// Which end of a session a connection row reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// The session was opened (`CREATE_SESSION`).
    Opened,
    /// The session was closed (`DELETE_SESSION`).
    Closed,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A log with the connection's correlation ids (redacted, capped) and a fresh event id.
pub fn base_log(conn: &ConnectionInfo, timestamp_millis: i64) -> TelemetryFrontendLog {
    let mut log = TelemetryFrontendLog::new(uuid_v4(), timestamp_millis, conn.user_agent.clone());
    log.workspace_id = conn.workspace_id;
    log.driver_log_mut().session_id = conn.redacted_session_id().map(str::to_owned);
    log
}

/// A statement id as it may leave the process. Server-assigned ids (hex digits and hyphens)
/// match no secret class, so they skip the redaction passes; anything else goes through them.
fn statement_id(id: &str) -> String {
    let server_shaped =
        id.len() <= MAX_ID_CHARS && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if server_shaped {
        id.to_owned()
    } else {
        redact_truncated(id, MAX_ID_CHARS)
    }
}

/// The `CREATE_SESSION` or `DELETE_SESSION` row. Only `CREATE_SESSION` carries the system
/// configuration, connection parameters and auth type.
pub fn connection_row(
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    change: SessionChange,
    latency_ms: u64,
) -> TelemetryFrontendLog {
    connection_row_with(conn, timestamp_millis, change, latency_ms, None)
}

/// The connection-failure row: `CREATE_SESSION` with the error that stopped the open.
pub fn connection_failure_row(
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    latency_ms: u64,
    error: &DriverError,
) -> TelemetryFrontendLog {
    connection_row_with(
        conn,
        timestamp_millis,
        SessionChange::Opened,
        latency_ms,
        Some(error),
    )
}

fn connection_row_with(
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    change: SessionChange,
    latency_ms: u64,
    error: Option<&DriverError>,
) -> TelemetryFrontendLog {
    let mut log = base_log(conn, timestamp_millis);
    let d = log.driver_log_mut();
    d.operation_latency_ms = Some(to_i64(latency_ms));
    let operation_type = match change {
        SessionChange::Opened => {
            let redacted = conn.redacted();
            d.system_configuration = redacted.system_configuration.clone().map(Box::new);
            d.driver_connection_params = redacted.connection_params.clone().map(Box::new);
            d.auth_type = conn.auth_type;
            OperationType::CreateSession
        }
        SessionChange::Closed => OperationType::DeleteSession,
    };
    d.sql_operation = Some(SqlExecutionEvent {
        operation_detail: Some(OperationDetail {
            operation_type: Some(operation_type),
            ..Default::default()
        }),
        ..Default::default()
    });
    d.error_info = error.map(error_info);
    log
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// `chunk_details`, when the statement has chunks (or said how many it has).
fn chunk_details(chunks: &ChunkStats, c: &StatementCompletion) -> Option<ChunkDetails> {
    (chunks.iterated > 0 || c.chunks_present.is_some()).then(|| ChunkDetails {
        total_chunks_present: c.chunks_present.map(to_i32),
        total_chunks_iterated: Some(to_i32(chunks.iterated)),
        initial_chunk_latency_millis: chunks.initial_latency_ms,
        slowest_chunk_latency_millis: chunks.slowest_latency_ms,
        sum_chunks_download_time_millis: Some(chunks.sum_latency_ms),
    })
}

/// `sql_operation` of a statement: its type, the operation, and what the driver recorded.
fn sql_operation(
    statement_type: StatementType,
    operation_type: OperationType,
    chunks: &ChunkStats,
    c: &StatementCompletion,
) -> SqlExecutionEvent {
    let result_latency = (c.result_ready_latency_ms.is_some()
        || c.result_consumption_latency_ms.is_some())
    .then(|| ResultLatency {
        result_set_ready_latency_millis: c.result_ready_latency_ms.map(to_i64),
        result_set_consumption_latency_millis: c.result_consumption_latency_ms.map(to_i64),
    });
    SqlExecutionEvent {
        statement_type: Some(statement_type),
        is_compressed: Some(chunks.compressed || c.compressed == Some(true)),
        execution_result: c.execution_result,
        chunk_id: None,
        retry_count: c.retry_count.map(i64::from),
        operation_detail: Some(OperationDetail {
            operation_type: Some(operation_type),
            n_operation_status_calls: c.poll_count.map(to_i32),
            operation_status_latency_millis: c.poll_latency_ms.map(to_i64),
            is_internal_call: c.is_internal_call,
        }),
        chunk_details: chunk_details(chunks, c),
        result_latency,
    }
}

/// `vol_operation`: the path redacted, the local file reduced to its name.
fn vol_operation(v: &VolumeOp) -> VolumeOperation {
    VolumeOperation {
        volume_operation_type: Some(v.operation),
        volume_path: v
            .volume_path
            .as_deref()
            .map(|p| redact_truncated(p, MAX_PATH_CHARS)),
        local_file: v
            .local_file
            .as_deref()
            .map(|p| redact_truncated(&file_name_only(p), MAX_PATH_CHARS)),
    }
}

/// Longest volume path or file name sent, in characters.
const MAX_PATH_CHARS: usize = 1024;

/// The statement row. A statement that did not complete says so with the server's own
/// operation (`CANCEL_STATEMENT`, `CLOSE_STATEMENT`); a failed one carries its error.
/// `began_at_millis` (the statement's begin) dates the row.
pub fn statement_row(
    conn: &ConnectionInfo,
    began_at_millis: i64,
    end: &StatementEnd,
) -> TelemetryFrontendLog {
    let mut log = base_log(conn, began_at_millis);
    let d = log.driver_log_mut();
    d.sql_statement_id = end.statement_id.as_deref().map(statement_id);
    d.operation_latency_ms = Some(to_i64(end.latency_ms));
    let operation = end
        .outcome
        .operation_override()
        .unwrap_or(end.operation_type);
    d.sql_operation = Some(sql_operation(
        end.statement_type,
        operation,
        &end.chunks,
        &end.completion,
    ));
    d.vol_operation = end.volume.as_ref().map(|v| Box::new(vol_operation(v)));
    d.error_info = end.error.as_deref().map(error_info);
    log
}

/// The CloudFetch chunk-failure row: the chunk's index, the statement's chunk statistics so
/// far, and the error.
pub fn chunk_failure_row(
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    failure: &ChunkFailure,
) -> TelemetryFrontendLog {
    let mut log = base_log(conn, timestamp_millis);
    let d = log.driver_log_mut();
    d.sql_statement_id = failure.statement_id.as_deref().map(statement_id);
    let mut op = sql_operation(
        failure.statement_type,
        failure.operation_type,
        &failure.chunks,
        &failure.completion,
    );
    op.chunk_id = Some(failure.chunk_index);
    op.chunk_details =
        Some(chunk_details(&failure.chunks, &failure.completion).unwrap_or_default());
    d.sql_operation = Some(op);
    d.error_info = Some(error_info(&failure.error));
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
    d.sql_statement_id = statement_id.map(self::statement_id);
    d.error_info = Some(error_info(error));
    log
}

/// `error_info` with the name and message redacted and truncated.
pub fn error_info(error: &DriverError) -> DriverErrorInfo {
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
