//! Building the logs of each row kind (docs/TELEMETRY.md, "What is sent") from what the driver reported, and the privacy rules of
//! the unauthenticated endpoint.

use std::borrow::Cow;
use std::sync::Arc;

use crate::connection::{ConnectionInfo, MAX_ID_CHARS};
use crate::event::{
    ChunkFailure, ChunkStats, DriverError, StatementCompletion, StatementEnd, VolumeOp,
};
use crate::random::{random_u128, write_uuid_v4};
use crate::redact::{MAX_STACK_TRACE_CHARS, file_name_only, redact_truncated};
use crate::wire::{
    ChunkDetails, DriverErrorInfo, OperationDetail, OperationType, ResultLatency, SqlDriverLog,
    SqlExecutionEvent, StatementType, TelemetryFrontendLog, VolumeOperation,
};

/// Longest error name sent, in characters.
const MAX_ERROR_NAME_CHARS: usize = 256;

/// One row ready to export, with the connection it belongs to (for credentials grouping and
/// the unauthenticated-endpoint privacy rules).
///
/// A statement's row (nearly every row) waits as the statement's end. The exporter writes its
/// log straight from the end into the request body ([`TelemetryRow::statement_parts`]), or
/// builds it into a scratch log whose strings are reused from row to row
/// ([`TelemetryRow::log_in`]): waiting costs no allocation of its own, and writing costs none
/// either. Other rows (sessions, errors, chunk failures) wait built. Either way
/// [`TelemetryRow::log`] gives the log that is sent.
///
/// ```
/// use std::sync::Arc;
/// use telemetry_types::connection::ConnectionInfo;
/// use telemetry_types::event::StatementEnd;
/// use telemetry_types::host::Host;
/// use telemetry_types::row::TelemetryRow;
/// let conn = Arc::new(ConnectionInfo::new(Host::parse("example.com", false).unwrap(), "Demo/1.0"));
/// let end = StatementEnd { statement_id: Some("01ef-1".into()), latency_ms: 9, ..StatementEnd::default() };
/// let row = TelemetryRow::statement(conn, 1_767_225_600_000, end);
/// let log = row.log();
/// assert_eq!(log.driver_log().sql_statement_id.as_deref(), Some("01ef-1"));
/// assert_eq!(log.driver_log().operation_latency_ms, Some(9));
/// assert!(!row.is_error);
/// ```
#[derive(Debug, Clone)]
pub struct TelemetryRow {
    content: Content,
    /// Its connection.
    pub connection: Arc<ConnectionInfo>,
    /// Error rows are kept longest when the pending buffer overflows.
    pub is_error: bool,
}

// The large variant is the common one (nearly every row): boxing it would be the allocation
// per row this layout exists to avoid; the rare built log is the boxed one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Content {
    /// Built when its event was folded (a few rows a connection).
    Built(Box<TelemetryFrontendLog>),
    /// A statement's end, built when written.
    Statement {
        end: StatementEnd,
        began_at_millis: i64,
        /// The log's event id, drawn when the row was made: the same id however often the
        /// row is written (a retry, an audit).
        event_id: u128,
    },
}

impl TelemetryRow {
    /// A row of a log already built.
    pub fn new(log: TelemetryFrontendLog, connection: Arc<ConnectionInfo>, is_error: bool) -> Self {
        Self {
            content: Content::Built(Box::new(log)),
            connection,
            is_error,
        }
    }

    /// A statement's row, dated `began_at_millis`: the log [`statement_row`] builds, built
    /// when it is written. An error row when the statement carries an error.
    #[inline]
    pub fn statement(
        connection: Arc<ConnectionInfo>,
        began_at_millis: i64,
        end: StatementEnd,
    ) -> Self {
        Self {
            is_error: end.error.is_some(),
            content: Content::Statement {
                end,
                began_at_millis,
                event_id: random_u128(),
            },
            connection,
        }
    }

    /// The log this row sends.
    pub fn log(&self) -> Cow<'_, TelemetryFrontendLog> {
        match &self.content {
            Content::Built(log) => Cow::Borrowed(log),
            Content::Statement { .. } => {
                let mut log = TelemetryFrontendLog::new(String::new(), 0, String::new());
                self.log_in(&mut log);
                Cow::Owned(log)
            }
        }
    }

    /// The log this row sends, built (for a statement's row) into `scratch`, whose strings
    /// are reused: what a request body is written from, a row at a time.
    pub fn log_in<'a>(&'a self, scratch: &'a mut TelemetryFrontendLog) -> &'a TelemetryFrontendLog {
        match &self.content {
            Content::Built(log) => log,
            Content::Statement {
                end,
                began_at_millis,
                event_id,
            } => {
                fill_statement_row(scratch, &self.connection, *began_at_millis, end, *event_id);
                scratch
            }
        }
    }

    /// A statement's row's parts, for a writer that writes its log without building it;
    /// `None` for a row built when folded.
    pub fn statement_parts(&self) -> Option<StatementParts<'_>> {
        match &self.content {
            Content::Built(_) => None,
            Content::Statement {
                end,
                began_at_millis,
                event_id,
            } => Some(StatementParts {
                connection: &self.connection,
                end,
                began_at_millis: *began_at_millis,
                event_id: *event_id,
            }),
        }
    }

    /// An estimate of the memory the row holds while it waits: its own size plus the heap
    /// its log (or its statement's end) holds.
    pub fn held_bytes(&self) -> usize {
        let heap = match &self.content {
            Content::Built(log) => {
                std::mem::size_of::<TelemetryFrontendLog>() + log_heap_bytes(log)
            }
            Content::Statement { end, .. } => end_heap_bytes(end),
        };
        std::mem::size_of::<Self>() + heap
    }
}

/// The heap a built log holds, about (a configuration block counted as 2 KiB).
fn log_heap_bytes(log: &TelemetryFrontendLog) -> usize {
    let d = log.driver_log();
    log.frontend_log_event_id.len()
        + log.context.client_context.user_agent.len()
        + d.session_id.as_ref().map_or(0, String::len)
        + d.sql_statement_id.as_ref().map_or(0, String::len)
        + d.error_info
            .as_ref()
            .map_or(0, |e| e.error_name.len() + e.stack_trace.len())
        + d.vol_operation.as_ref().map_or(0, |v| {
            std::mem::size_of::<VolumeOperation>()
                + v.volume_path.as_ref().map_or(0, String::len)
                + v.local_file.as_ref().map_or(0, String::len)
        })
        + if d.system_configuration.is_some() || d.driver_connection_params.is_some() {
            2048
        } else {
            0
        }
}

/// The heap a statement's end holds: its text and the boxes of its error and volume
/// operation.
fn end_heap_bytes(end: &StatementEnd) -> usize {
    end.text_bytes()
        + end
            .error
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<DriverError>())
        + end
            .volume
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<VolumeOp>())
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
    let mut log = TelemetryFrontendLog::new(String::new(), 0, String::new());
    fill_base(&mut log, conn, timestamp_millis, random_u128());
    log
}

/// Sets `slot` to `v`, reusing the string already there.
fn set_str(slot: &mut String, v: &str) {
    slot.clear();
    slot.push_str(v);
}

/// Sets `slot` to `v`, reusing the string already there.
fn set_opt(slot: &mut Option<String>, v: Option<&str>) {
    match (slot.as_mut(), v) {
        (Some(s), Some(v)) => set_str(s, v),
        (None, Some(v)) => *slot = Some(v.to_owned()),
        (_, None) => *slot = None,
    }
}

/// Makes `log` what [`TelemetryFrontendLog::new`] and the connection's correlation ids
/// make it, whatever it held before, reusing its strings; all but `sql_statement_id`, which a
/// statement row sets itself (a fresh log's is `None`). Every field is named, so that a field
/// added to the wire format is not left over from a log written earlier.
fn fill_base(
    log: &mut TelemetryFrontendLog,
    conn: &ConnectionInfo,
    timestamp_millis: i64,
    event_id: u128,
) {
    let TelemetryFrontendLog {
        workspace_id,
        frontend_log_event_id,
        context,
        entry,
    } = log;
    *workspace_id = conn.workspace_id;
    frontend_log_event_id.clear();
    write_uuid_v4(event_id, frontend_log_event_id);
    context.client_context.timestamp_millis = timestamp_millis;
    set_str(&mut context.client_context.user_agent, &conn.user_agent);
    let SqlDriverLog {
        session_id,
        sql_statement_id: _,
        system_configuration,
        driver_connection_params,
        auth_type,
        operation_latency_ms,
        sql_operation,
        vol_operation,
        error_info,
    } = &mut entry.sql_driver_log;
    set_opt(session_id, conn.redacted_session_id());
    *system_configuration = None;
    *driver_connection_params = None;
    *auth_type = None;
    *operation_latency_ms = None;
    *sql_operation = None;
    *vol_operation = None;
    *error_info = None;
}

/// Whether a statement id is server-shaped (hex digits and hyphens, not too long): such ids
/// match no secret class, so they skip the redaction passes.
fn server_shaped(id: &str) -> bool {
    is_server_shaped(id.as_bytes())
}

/// Whether a statement id is server-shaped (hex digits and hyphens, at most the id cap): sent
/// as it is, and nothing in it needs escaping in JSON. Every byte is looked at, without
/// stopping early, so that the check runs on vector instructions.
pub fn is_server_shaped(id: &[u8]) -> bool {
    #[inline(always)]
    fn shaped(b: u8) -> bool {
        b.is_ascii_digit() | (b'a'..=b'f').contains(&(b | 0x20)) | (b == b'-')
    }
    if id.len() > MAX_ID_CHARS {
        return false;
    }
    let mut chunks = id.chunks_exact(16);
    let whole = chunks.by_ref().fold(true, |ok, c| {
        ok & c.iter().fold(true, |ok, &b| ok & shaped(b))
    });
    whole & chunks.remainder().iter().all(|&b| shaped(b))
}

/// A statement id as it may leave the process ([`statement_id_as_sent`]), owned.
fn statement_id(id: &str) -> String {
    statement_id_as_sent(id).into_owned()
}

/// Sets `slot` to the statement id as it may leave the process, reusing the string there.
fn set_statement_id(slot: &mut Option<String>, id: Option<&str>) {
    match id.map(statement_id_as_sent) {
        Some(Cow::Borrowed(id)) => set_opt(slot, Some(id)),
        Some(Cow::Owned(id)) => *slot = Some(id),
        None => *slot = None,
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
    let mut log = TelemetryFrontendLog::new(String::new(), 0, String::new());
    fill_statement_row(&mut log, conn, began_at_millis, end, random_u128());
    log
}

/// A statement row's `operation_latency_ms`.
pub fn statement_latency_ms(end: &StatementEnd) -> i64 {
    to_i64(end.latency_ms)
}

/// A statement row's `sql_operation`: a statement that did not complete says so with the
/// server's own operation (`CANCEL_STATEMENT`, `CLOSE_STATEMENT`).
pub fn statement_operation(end: &StatementEnd) -> SqlExecutionEvent {
    let operation = end
        .outcome
        .operation_override()
        .unwrap_or(end.operation_type);
    sql_operation(end.statement_type, operation, &end.chunks, &end.completion)
}

/// A statement id as it is sent. Server-assigned ids (hex digits and hyphens) match no
/// secret class, so they skip the redaction passes and go as they are; anything else is
/// redacted and capped.
pub fn statement_id_as_sent(id: &str) -> Cow<'_, str> {
    if server_shaped(id) {
        Cow::Borrowed(id)
    } else {
        Cow::Owned(redact_truncated(id, MAX_ID_CHARS))
    }
}

/// What a statement's row is made of, for a writer that writes its log without building it
/// (`telemetry_export::encode_rows`): the log is [`statement_row`]'s for these parts.
#[derive(Debug, Clone, Copy)]
pub struct StatementParts<'a> {
    /// The statement's connection.
    pub connection: &'a ConnectionInfo,
    /// The statement's end.
    pub end: &'a StatementEnd,
    /// The row's date (`timestamp_millis`).
    pub began_at_millis: i64,
    /// The row's event id, as [`write_uuid_v4`] writes it.
    pub event_id: u128,
}

/// [`statement_row`] into `log`, whatever it held, reusing its strings.
fn fill_statement_row(
    log: &mut TelemetryFrontendLog,
    conn: &ConnectionInfo,
    began_at_millis: i64,
    end: &StatementEnd,
    event_id: u128,
) {
    fill_base(log, conn, began_at_millis, event_id);
    let d = log.driver_log_mut();
    set_statement_id(&mut d.sql_statement_id, end.statement_id.as_deref());
    d.operation_latency_ms = Some(statement_latency_ms(end));
    d.sql_operation = Some(statement_operation(end));
    d.vol_operation = end.volume.as_ref().map(|v| Box::new(vol_operation(v)));
    d.error_info = end.error.as_deref().map(error_info);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CompactId, StatementOutcome};
    use crate::host::Host;
    use crate::wire::{ExecutionResultFormat, VolumeOperationType};
    use proptest::prelude::*;

    fn any_end() -> impl Strategy<Value = StatementEnd> {
        let id = prop_oneof![
            Just(None),
            Just(Some("01ef-00aa".to_owned())),
            Just(Some("a".repeat(200))),
            Just(Some(
                "sess token=dapi0123456789abcdef0123456789abcdef".to_owned()
            )),
        ];
        let outcome = prop_oneof![
            Just(StatementOutcome::Completed),
            Just(StatementOutcome::Failed),
            Just(StatementOutcome::Cancelled),
            Just(StatementOutcome::Closed),
            Just(StatementOutcome::Abandoned),
        ];
        let completion = (
            proptest::option::of(prop_oneof![
                Just(ExecutionResultFormat::ExternalLinks),
                Just(ExecutionResultFormat::InlineArrow),
            ]),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(0u32..4),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(format, compressed, polls, ready, chunks, consumed, internal)| {
                    StatementCompletion {
                        execution_result: format,
                        compressed,
                        poll_count: polls,
                        poll_latency_ms: ready,
                        chunks_present: chunks,
                        result_ready_latency_ms: ready,
                        result_consumption_latency_ms: consumed,
                        is_internal_call: internal,
                        ..StatementCompletion::default()
                    }
                },
            );
        let error = proptest::option::of(
            ("[a-zA-Z]{1,12}", "\\PC{0,80}")
                .prop_map(|(name, message)| Box::new(DriverError::new(name, message))),
        );
        let volume = proptest::option::of(Just(Box::new(VolumeOp {
            operation: VolumeOperationType::from_name_lossy("PUT"),
            volume_path: Some("/Volumes/main/default/v/file.csv".into()),
            local_file: Some("/home/me/file.csv".into()),
        })));
        (
            id,
            any::<u64>(),
            outcome,
            0u32..4,
            completion,
            error,
            volume,
        )
            .prop_map(
                |(id, latency_ms, outcome, chunks, completion, error, volume)| {
                    let mut stats = ChunkStats::default();
                    for i in 0..chunks {
                        stats.record(i64::from(i) * 7, 1024, i % 2 == 0);
                    }
                    StatementEnd {
                        statement_type: StatementType::from_name_lossy("QUERY"),
                        operation_type: OperationType::ExecuteStatement,
                        statement_id: id.map(CompactId::from),
                        latency_ms,
                        outcome,
                        chunks: stats,
                        completion,
                        error,
                        volume,
                    }
                },
            )
    }

    fn conn(session: bool, workspace: Option<i64>) -> Arc<ConnectionInfo> {
        let mut c = crate::testing::connection_with_every_block();
        c.workspace_id = workspace;
        if !session {
            c = ConnectionInfo::new(Host::parse("example.com", false).unwrap(), "Other/2.0");
        }
        Arc::new(c)
    }

    /// `log` with its event id replaced, to compare logs built with different ids.
    fn without_id(mut log: TelemetryFrontendLog) -> TelemetryFrontendLog {
        log.frontend_log_event_id = "ID".into();
        log
    }

    proptest! {
        /// A statement's row built into a scratch log that held any earlier row (a
        /// `CREATE_SESSION` row with every block, another statement) is the row built fresh,
        /// and the row `statement_row` builds: nothing is left over, nothing is lost.
        #[test]
        fn a_statement_row_built_into_a_used_scratch_is_the_row_built_fresh(
            ends in proptest::collection::vec(any_end(), 1..6),
            session in any::<bool>(),
            workspace in proptest::option::of(any::<i64>()),
        ) {
            let c = conn(session, workspace);
            let mut scratch = connection_row(&crate::testing::connection_with_every_block(), 5, SessionChange::Opened, 3);
            for end in ends {
                let row = TelemetryRow::statement(c.clone(), 1_767_225_600_000, end.clone());
                let fresh = row.log().into_owned();
                prop_assert_eq!(row.log_in(&mut scratch), &fresh);
                prop_assert_eq!(fresh.frontend_log_event_id.len(), 36);
                prop_assert_eq!(
                    without_id(fresh),
                    without_id(statement_row(&c, 1_767_225_600_000, &end))
                );
                prop_assert_eq!(row.is_error, end.error.is_some());
            }
        }
    }

    #[test]
    fn server_shaped_ids_are_hex_digits_and_hyphens_up_to_the_cap() {
        for b in 0..=u8::MAX {
            let want = b.is_ascii_hexdigit() || b == b'-';
            assert_eq!(is_server_shaped(&[b]), want, "byte {b:#04x}");
            assert_eq!(is_server_shaped(&[b'a', b, b'0']), want, "byte {b:#04x}");
        }
        assert!(is_server_shaped(b"01EF-00aa-0000"));
        assert!(is_server_shaped(&[b'a'; MAX_ID_CHARS]));
        assert!(!is_server_shaped(&[b'a'; MAX_ID_CHARS + 1]));
    }

    #[test]
    fn a_statement_row_keeps_its_event_id_however_often_it_is_built() {
        let row = TelemetryRow::statement(conn(true, Some(1)), 1, StatementEnd::default());
        let mut scratch = TelemetryFrontendLog::new(String::new(), 0, String::new());
        let first = row.log_in(&mut scratch).frontend_log_event_id.clone();
        assert_eq!(row.log().frontend_log_event_id, first);
        let other = TelemetryRow::statement(conn(true, Some(1)), 1, StatementEnd::default());
        assert_ne!(other.log().frontend_log_event_id, first);
    }

    #[test]
    fn a_waiting_statement_row_holds_less_than_its_built_log() {
        let c = conn(true, Some(1));
        let end = StatementEnd {
            statement_id: Some("01ef-00aa-0000-0000-0000-000000000000".into()),
            ..StatementEnd::default()
        };
        let lazy = TelemetryRow::statement(c.clone(), 1, end.clone());
        let built = TelemetryRow::new(statement_row(&c, 1, &end), c, false);
        assert!(
            lazy.held_bytes() < built.held_bytes(),
            "{} vs {}",
            lazy.held_bytes(),
            built.held_bytes()
        );
        let failed = TelemetryRow::statement(
            conn(true, Some(1)),
            1,
            StatementEnd {
                error: Some(Box::new(DriverError::new("E", "x".repeat(4096)))),
                ..end
            },
        );
        assert!(failed.is_error);
        assert!(failed.held_bytes() >= lazy.held_bytes() + 4096);
    }
}
