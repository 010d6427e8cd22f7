//! What leaves the process, shown to whoever asks: an [`AuditSink`] sees every export
//! request's body exactly as it is sent (after redaction, capping and, on the
//! unauthenticated endpoint, stripping), and [`JsonLinesAudit`] writes one JSON line per
//! request to a file. With a dry run nothing is sent and the sink sees what would have been.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use crate::clock::now_millis;

/// One export request as it leaves (or, in a dry run, would leave) the process.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuditedRequest<'a> {
    /// The endpoint's URL (`https://<host>/telemetry-ext` or `/telemetry-unauth`).
    pub url: &'a str,
    /// Whether it carries credentials (`/telemetry-ext`); their values are never shown.
    pub authenticated: bool,
    /// The body, byte for byte: a JSON object with the logs in `protoLogs`.
    pub body: &'a [u8],
    /// A dry run: the request was not sent.
    pub dry_run: bool,
}

impl<'a> AuditedRequest<'a> {
    /// A request to `url`.
    pub fn new(url: &'a str, authenticated: bool, body: &'a [u8], dry_run: bool) -> Self {
        Self {
            url,
            authenticated,
            body,
            dry_run,
        }
    }
}

/// Sees every export request's body (one call per request sent, retries included). Called
/// on the exporter's task: keep it quick (a buffered write, a channel send). A panic in it
/// is contained and costs nothing but its own record.
pub trait AuditSink: Send + Sync + 'static {
    /// One request.
    fn record(&self, request: &AuditedRequest<'_>);
}

/// Writes each request as one JSON line to a file: `{"at_ms":..,"url":..,
/// "authenticated":..,"dry_run":..,"body":{..}}`, the body as sent (it is JSON). Each line is
/// flushed when written. Write errors are counted, never raised.
///
/// ```no_run
/// use std::sync::Arc;
/// use telemetry_types::audit::JsonLinesAudit;
/// let audit = Arc::new(JsonLinesAudit::create("telemetry-audit.jsonl").unwrap());
/// // Hand it to the provider: `ProviderOptions::with_audit(audit)`.
/// ```
pub struct JsonLinesAudit {
    out: Mutex<BufWriter<File>>,
    errors: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for JsonLinesAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesAudit")
            .field("write_errors", &self.write_errors())
            .finish_non_exhaustive()
    }
}

impl JsonLinesAudit {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            errors: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Lines that could not be written.
    pub fn write_errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write(&self, request: &AuditedRequest<'_>) -> io::Result<()> {
        let head = serde_json::json!({
            "at_ms": now_millis(),
            "url": request.url,
            "authenticated": request.authenticated,
            "dry_run": request.dry_run,
        })
        .to_string();
        // `{...}` without its closing brace, then the body as the last member.
        let head = head.strip_suffix('}').unwrap_or(&head);
        let body_is_json = serde_json::from_slice::<serde::de::IgnoredAny>(request.body).is_ok();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(head.as_bytes())?;
        out.write_all(b",\"body\":")?;
        if body_is_json {
            out.write_all(request.body)?;
        } else {
            // Never expected (the exporter writes JSON); kept a valid line regardless.
            let text = serde_json::Value::String(String::from_utf8_lossy(request.body).into());
            out.write_all(text.to_string().as_bytes())?;
        }
        out.write_all(b"}\n")?;
        out.flush()
    }
}

impl AuditSink for JsonLinesAudit {
    fn record(&self, request: &AuditedRequest<'_>) {
        if self.write(request).is_err() {
            self.errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_is_one_json_line_with_the_body_as_sent() {
        let dir = std::env::temp_dir().join(format!("audit-{}", std::process::id()));
        let audit = JsonLinesAudit::create(&dir).unwrap();
        let body = br#"{"uploadTime":1,"items":[],"protoLogs":["{\"a\":1}"]}"#;
        audit.record(&AuditedRequest::new(
            "https://h/telemetry-ext",
            true,
            body,
            false,
        ));
        audit.record(&AuditedRequest::new(
            "https://h/telemetry-unauth",
            false,
            b"{}",
            true,
        ));
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["url"], "https://h/telemetry-ext");
        assert_eq!(lines[0]["authenticated"], true);
        assert_eq!(lines[0]["body"]["protoLogs"][0], "{\"a\":1}");
        assert_eq!(lines[1]["dry_run"], true);
        assert_eq!(audit.write_errors(), 0);
    }
}
