//! The request body, written once: each log serialised straight into the body as the JSON
//! string the wire format wants.

use telemetry_types::row::{StatementParts, TelemetryRow, strip_for_unauthenticated};
use telemetry_types::wire::TelemetryFrontendLog;

/// The request body, `{"uploadTime":..,"items":[],"protoLogs":["<log>",..]}`, with each log
/// serialised once, straight into the body as the JSON string the wire format wants (no
/// intermediate string per log, no second escaping pass), into a buffer sized up front.
///
/// Every log but a `CREATE_SESSION` row (the one kind with configuration blocks, once per
/// connection) is written by hand: keys are escaped at compile time, numbers written with
/// `itoa`, and a string that needs no escaping (nearly all of them) is one copy. The rest go
/// through `serde_json` with a formatter that escapes as it writes. Both give the same bytes
/// as serialising each log and then the request (tests compare them byte for byte).
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
    let mut body = Body::new(upload_time, logs.len());
    for log in logs {
        body.push(log)?;
    }
    Ok(body.finish())
}

/// The request body of `rows`, each written as [`TelemetryRow::log_in`] builds it (a
/// statement's row into one scratch log reused from row to row), or, `stripped`, with the
/// unauthenticated endpoint's privacy rules applied to a copy. The same bytes as
/// [`encode_body`] of the rows' logs.
///
/// ```
/// use std::sync::Arc;
/// use telemetry_export::{encode_body, encode_rows};
/// use telemetry_types::connection::ConnectionInfo;
/// use telemetry_types::event::StatementEnd;
/// use telemetry_types::host::Host;
/// use telemetry_types::row::TelemetryRow;
/// let conn = Arc::new(ConnectionInfo::new(Host::parse("example.com", false).unwrap(), "Demo/1.0"));
/// let rows = [TelemetryRow::statement(conn, 1, StatementEnd::default())];
/// let logs: Vec<_> = rows.iter().map(|r| r.log().into_owned()).collect();
/// assert_eq!(encode_rows(7, rows.iter(), false).unwrap(), encode_body(7, logs.iter()).unwrap());
/// ```
pub fn encode_rows<'a>(
    upload_time: i64,
    rows: impl ExactSizeIterator<Item = &'a TelemetryRow>,
    stripped: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = Body::new(upload_time, rows.len());
    let mut scratch = TelemetryFrontendLog::new(String::new(), 0, String::new());
    let mut connection = fast::ConnectionParts::default();
    for row in rows {
        if stripped {
            let mut log = row.log().into_owned();
            strip_for_unauthenticated(&mut log);
            body.push(&log)?;
        } else if let Some(parts) = row.statement_parts() {
            body.push_statement(&parts, &mut connection, &mut scratch, row)?;
        } else {
            body.push(row.log_in(&mut scratch))?;
        }
    }
    Ok(body.finish())
}

/// A body being written: the opening, the logs a comma apart, the closing.
struct Body {
    out: Vec<u8>,
    first: bool,
}

impl Body {
    fn new(upload_time: i64, logs: usize) -> Self {
        /// Bytes an encoded statement row takes, about (a statement row with chunks and
        /// latencies is 800 to 900, plus the driver's user agent): enough that most bodies
        /// never regrow.
        const ROW_BYTES_HINT: usize = 1024;
        let mut out = Vec::with_capacity(64 + logs.saturating_mul(ROW_BYTES_HINT));
        out.extend_from_slice(b"{\"uploadTime\":");
        out.extend_from_slice(itoa::Buffer::new().format(upload_time).as_bytes());
        out.extend_from_slice(b",\"items\":[],\"protoLogs\":[");
        Self { out, first: true }
    }

    fn push(&mut self, log: &TelemetryFrontendLog) -> Result<(), serde_json::Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        if !fast::write_log(&mut self.out, log) {
            let mut ser = serde_json::Serializer::with_formatter(&mut self.out, NestedString);
            serde::Serialize::serialize(log, &mut ser)?;
        }
        self.out.push(b'"');
        Ok(())
    }

    /// A statement's row, written from its parts (no log built), or, for the rare statement
    /// with an error or a volume operation, built into `scratch` and written as a log.
    fn push_statement(
        &mut self,
        parts: &StatementParts<'_>,
        connection: &mut fast::ConnectionParts,
        scratch: &mut TelemetryFrontendLog,
        row: &TelemetryRow,
    ) -> Result<(), serde_json::Error> {
        if parts.end.error.is_some() || parts.end.volume.is_some() {
            return self.push(row.log_in(scratch));
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        connection.refresh(&row.connection);
        fast::write_statement(&mut self.out, parts, connection);
        self.out.push(b'"');
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"]}");
        self.out
    }
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

/// The hand-written writer of the logs without configuration blocks: what a statement, a
/// session close, an error or a chunk failure sends, field by field in the order (and with
/// the omissions) of the serde derive in `telemetry_types::wire`.
mod fast {
    use std::sync::Arc;

    use telemetry_types::connection::ConnectionInfo;
    use telemetry_types::random::uuid_v4_bytes;
    use telemetry_types::row::{
        StatementParts, is_server_shaped, statement_id_as_sent, statement_latency_ms,
        statement_operation,
    };
    use telemetry_types::wire::{
        ChunkDetails, DriverErrorInfo, OperationDetail, ResultLatency, SqlExecutionEvent,
        TelemetryFrontendLog,
    };

    /// `\"name\":` as it stands inside the body's string: the key, escaped at compile time.
    macro_rules! key {
        ($name:literal) => {
            concat!("\\\"", $name, "\\\":").as_bytes()
        };
    }

    /// An object's fields, each written with its leading comma but the first.
    struct Object<'a> {
        out: &'a mut Vec<u8>,
        first: bool,
    }

    impl<'a> Object<'a> {
        // Inlined, so that each key (a constant) is copied by a few moves rather than a call
        // to memcpy with its length at run time: a row has about forty of them.
        #[inline(always)]
        fn open(out: &'a mut Vec<u8>) -> Self {
            out.push(b'{');
            Self { out, first: true }
        }

        #[inline(always)]
        fn key(&mut self, key: &[u8]) -> &mut Vec<u8> {
            if !self.first {
                self.out.push(b',');
            }
            self.first = false;
            self.out.extend_from_slice(key);
            self.out
        }

        #[inline(always)]
        fn int(&mut self, key: &[u8], v: Option<impl itoa::Integer>) {
            if let Some(v) = v {
                let out = self.key(key);
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
        }

        #[inline(always)]
        fn bool(&mut self, key: &[u8], v: Option<bool>) {
            if let Some(v) = v {
                let text: &[u8] = if v { b"true" } else { b"false" };
                self.key(key).extend_from_slice(text);
            }
        }

        #[inline(always)]
        fn str(&mut self, key: &[u8], v: Option<&str>) {
            if let Some(v) = v {
                string(self.key(key), v);
            }
        }

        /// An enum member's wire name: upper-case letters and underscores, never escaped.
        #[inline(always)]
        fn name(&mut self, key: &[u8], v: Option<&'static str>) {
            if let Some(v) = v {
                debug_assert!(!needs_escape(v.as_bytes()));
                unescaped(self.key(key), v.as_bytes());
            }
        }

        #[inline(always)]
        fn close(self) {
            self.out.push(b'}');
        }
    }

    /// A JSON string inside the body's string, of bytes known to need no escaping.
    #[inline(always)]
    fn unescaped(out: &mut Vec<u8>, v: &[u8]) {
        out.reserve(v.len() + 4);
        out.extend_from_slice(b"\\\"");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\\\"");
    }

    /// A JSON string inside the body's string: `\"..\"`, its escapes escaped once more
    /// (serde_json's escapes: `"`, `\`, and control characters; nothing else).
    fn string(out: &mut Vec<u8>, v: &str) {
        out.reserve(v.len() + 4);
        out.extend_from_slice(b"\\\"");
        let bytes = v.as_bytes();
        if !needs_escape(bytes) {
            out.extend_from_slice(bytes);
        } else {
            static HEX: [u8; 16] = *b"0123456789abcdef";
            let mut start = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let escaped: &[u8] = match b {
                    b'"' => b"\\\\\\\"",
                    b'\\' => b"\\\\\\\\",
                    0x08 => b"\\\\b",
                    0x0C => b"\\\\f",
                    b'\n' => b"\\\\n",
                    b'\r' => b"\\\\r",
                    b'\t' => b"\\\\t",
                    0..=0x1F => &[
                        b'\\',
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xF)],
                    ],
                    _ => continue,
                };
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(escaped);
                start = i + 1;
            }
            out.extend_from_slice(&bytes[start..]);
        }
        out.extend_from_slice(b"\\\"");
    }

    /// Whether any byte of `bytes` needs an escape (a quote, a backslash, a control
    /// character). Sixteen bytes at a time, without stopping early, so that the compiler can
    /// use vector instructions: a row's strings (event id, user agent, ids) are clean, and a
    /// byte-at-a-time check that stops at the first hit cost a tenth of a row's encoding.
    #[inline]
    fn needs_escape(bytes: &[u8]) -> bool {
        #[inline(always)]
        fn bad(b: u8) -> bool {
            b < 0x20 || b == b'"' || b == b'\\'
        }
        let mut chunks = bytes.chunks_exact(16);
        for chunk in chunks.by_ref() {
            if chunk.iter().fold(false, |acc, &b| acc | bad(b)) {
                return true;
            }
        }
        chunks.remainder().iter().any(|&b| bad(b))
    }

    /// Writes `log` and returns true, or writes nothing and returns false when the log has
    /// a block this writer leaves to serde (configuration, connection parameters, volume).
    pub(super) fn write_log(out: &mut Vec<u8>, log: &TelemetryFrontendLog) -> bool {
        let d = log.driver_log();
        if d.system_configuration.is_some()
            || d.driver_connection_params.is_some()
            || d.vol_operation.is_some()
        {
            return false;
        }
        let mut o = Object::open(out);
        o.int(key!("workspace_id"), log.workspace_id);
        o.str(
            key!("frontend_log_event_id"),
            Some(&log.frontend_log_event_id),
        );
        let c = &log.context.client_context;
        context(&mut o, c.timestamp_millis, &c.user_agent);
        entry(&mut o, |dl| {
            dl.str(key!("session_id"), d.session_id.as_deref());
            dl.str(key!("sql_statement_id"), d.sql_statement_id.as_deref());
            dl.name(key!("auth_type"), d.auth_type.map(|a| a.as_str()));
            dl.int(key!("operation_latency_ms"), d.operation_latency_ms);
            if let Some(op) = &d.sql_operation {
                sql_operation(dl.key(key!("sql_operation")), op);
            }
            if let Some(e) = &d.error_info {
                error_info(dl.key(key!("error_info")), e);
            }
        });
        o.close();
        true
    }

    /// `"context":{"client_context":{"timestamp_millis":..,"user_agent":..}}`.
    #[inline(always)]
    fn context(o: &mut Object<'_>, timestamp_millis: i64, user_agent: &str) {
        let out = o.key(key!("context"));
        out.push(b'{');
        out.extend_from_slice(key!("client_context"));
        let mut cc = Object::open(out);
        cc.int(key!("timestamp_millis"), Some(timestamp_millis));
        cc.str(key!("user_agent"), Some(user_agent));
        cc.close();
        o.out.push(b'}');
    }

    /// `"entry":{"sql_driver_log":{..}}`, the driver log's fields written by `fields`.
    #[inline(always)]
    fn entry(o: &mut Object<'_>, fields: impl FnOnce(&mut Object<'_>)) {
        let out = o.key(key!("entry"));
        out.push(b'{');
        out.extend_from_slice(key!("sql_driver_log"));
        let mut dl = Object::open(out);
        fields(&mut dl);
        dl.close();
        o.out.push(b'}');
    }

    /// The parts of a statement's log that are its connection's, written once for a run of
    /// one connection's rows in a body, escaped once: the opening up to the event id (with
    /// the workspace id), and from after the timestamp to the driver log's first field (the
    /// user agent, the session id). Made by the same writer as every other part, so the
    /// bytes are the ones [`write_log`] writes.
    #[derive(Default)]
    pub(super) struct ConnectionParts {
        connection: Option<Arc<ConnectionInfo>>,
        /// Whether the session id was known when the parts were written.
        session: bool,
        /// `{"workspace_id":N,"frontend_log_event_id":`
        head: Vec<u8>,
        /// `,"user_agent":".."}},"entry":{"sql_driver_log":{"session_id":".."`
        middle: Vec<u8>,
    }

    impl ConnectionParts {
        /// Makes the parts `connection`'s, unless they are already (the same connection,
        /// and its session id known then as now).
        pub(super) fn refresh(&mut self, connection: &Arc<ConnectionInfo>) {
            let session = connection.session_id.get().is_some();
            if self.session == session
                && self
                    .connection
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, connection))
            {
                return;
            }
            self.head.clear();
            let mut o = Object::open(&mut self.head);
            o.int(key!("workspace_id"), connection.workspace_id);
            o.key(key!("frontend_log_event_id"));
            self.middle.clear();
            // The client context after its timestamp, then the entry up to the driver log's
            // first field: as `context` and `entry` write them.
            let mut cc = Object {
                out: &mut self.middle,
                first: false,
            };
            cc.str(key!("user_agent"), Some(&connection.user_agent));
            cc.close();
            self.middle.push(b'}');
            let mut o = Object {
                out: &mut self.middle,
                first: false,
            };
            let out = o.key(key!("entry"));
            out.push(b'{');
            out.extend_from_slice(key!("sql_driver_log"));
            let mut dl = Object::open(out);
            dl.str(key!("session_id"), connection.redacted_session_id());
            self.session = session;
            self.connection = Some(connection.clone());
        }
    }

    /// `,"context":{"client_context":{"timestamp_millis":`, as `context` writes it.
    const CONTEXT_TO_TIMESTAMP: &[u8] =
        b",\\\"context\\\":{\\\"client_context\\\":{\\\"timestamp_millis\\\":";

    /// Writes the log [`statement_row`](telemetry_types::row::statement_row) would build
    /// from `p` (with `p`'s event id), as [`write_log`] writes it, without building it: the
    /// same fields in the same order, from the end itself and the connection's `parts`
    /// (refreshed for `p`'s connection by the caller). For an end without an error or a
    /// volume operation (the caller's part).
    pub(super) fn write_statement(
        out: &mut Vec<u8>,
        p: &StatementParts<'_>,
        parts: &ConnectionParts,
    ) {
        let end = p.end;
        out.extend_from_slice(&parts.head);
        // Hex digits and hyphens: nothing to escape.
        unescaped(out, &uuid_v4_bytes(p.event_id));
        out.extend_from_slice(CONTEXT_TO_TIMESTAMP);
        out.extend_from_slice(itoa::Buffer::new().format(p.began_at_millis).as_bytes());
        out.extend_from_slice(&parts.middle);
        let mut dl = Object {
            out,
            first: !parts.session,
        };
        if let Some(id) = &end.statement_id {
            if is_server_shaped(id.as_bytes()) {
                // Hex digits and hyphens (the server's own ids): sent as they are, nothing
                // to escape.
                unescaped(dl.key(key!("sql_statement_id")), id.as_bytes());
            } else {
                dl.str(
                    key!("sql_statement_id"),
                    Some(&statement_id_as_sent(id.as_str())),
                );
            }
        }
        dl.int(
            key!("operation_latency_ms"),
            Some(statement_latency_ms(end)),
        );
        sql_operation(dl.key(key!("sql_operation")), &statement_operation(end));
        let out = dl.out;
        // The driver log, the entry, the log.
        out.extend_from_slice(b"}}}");
    }

    fn sql_operation(out: &mut Vec<u8>, op: &SqlExecutionEvent) {
        let mut o = Object::open(out);
        o.name(
            key!("statement_type"),
            op.statement_type.map(|t| t.as_str()),
        );
        o.bool(key!("is_compressed"), op.is_compressed);
        o.name(
            key!("execution_result"),
            op.execution_result.map(|f| f.as_str()),
        );
        o.int(key!("chunk_id"), op.chunk_id);
        o.int(key!("retry_count"), op.retry_count);
        if let Some(d) = &op.operation_detail {
            operation_detail(o.key(key!("operation_detail")), d);
        }
        if let Some(c) = &op.chunk_details {
            chunk_details(o.key(key!("chunk_details")), c);
        }
        if let Some(r) = &op.result_latency {
            result_latency(o.key(key!("result_latency")), r);
        }
        o.close();
    }

    fn operation_detail(out: &mut Vec<u8>, d: &OperationDetail) {
        let mut o = Object::open(out);
        o.name(key!("operation_type"), d.operation_type.map(|t| t.as_str()));
        o.int(key!("n_operation_status_calls"), d.n_operation_status_calls);
        o.int(
            key!("operation_status_latency_millis"),
            d.operation_status_latency_millis,
        );
        o.bool(key!("is_internal_call"), d.is_internal_call);
        o.close();
    }

    fn chunk_details(out: &mut Vec<u8>, c: &ChunkDetails) {
        let mut o = Object::open(out);
        o.int(key!("total_chunks_present"), c.total_chunks_present);
        o.int(key!("total_chunks_iterated"), c.total_chunks_iterated);
        o.int(
            key!("initial_chunk_latency_millis"),
            c.initial_chunk_latency_millis,
        );
        o.int(
            key!("slowest_chunk_latency_millis"),
            c.slowest_chunk_latency_millis,
        );
        o.int(
            key!("sum_chunks_download_time_millis"),
            c.sum_chunks_download_time_millis,
        );
        o.close();
    }

    fn result_latency(out: &mut Vec<u8>, r: &ResultLatency) {
        let mut o = Object::open(out);
        o.int(
            key!("result_set_ready_latency_millis"),
            r.result_set_ready_latency_millis,
        );
        o.int(
            key!("result_set_consumption_latency_millis"),
            r.result_set_consumption_latency_millis,
        );
        o.close();
    }

    fn error_info(out: &mut Vec<u8>, e: &DriverErrorInfo) {
        let mut o = Object::open(out);
        o.str(key!("error_name"), Some(&e.error_name));
        o.str(key!("stack_trace"), Some(&e.stack_trace));
        o.close();
    }
}
