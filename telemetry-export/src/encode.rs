//! The request body, written once: each log serialised straight into the body as the JSON
//! string the wire format wants.

use telemetry_types::wire::TelemetryFrontendLog;

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
