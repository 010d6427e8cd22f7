//! A mock Databricks workspace: a real hyper HTTP/1.1 server on 127.0.0.1 serving the
//! feature-flag endpoint and both telemetry endpoints, validating every body as strictly as
//! the real receiver, recording what it accepted, and injecting faults on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use telemetry_types::wire::TelemetryFrontendLog;

use crate::schema::{RowKind, check_log};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the workspace does wrong on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Export endpoints answer 500.
    Fail500,
    /// Export endpoints answer 503 with `Retry-After: <secs>`.
    Fail503 {
        /// Seconds.
        retry_after: u64,
    },
    /// Export endpoints answer 429 with `Retry-After: <secs>`.
    Fail429 {
        /// Seconds.
        retry_after: u64,
    },
    /// Export endpoints never answer.
    Hang,
    /// Export endpoints close the connection without an answer.
    CloseConnection,
    /// Export endpoints answer 200 after a delay.
    Slow(Duration),
    /// The flag is served as `"false"`.
    FlagOff,
    /// The flag endpoint answers malformed JSON.
    FlagMalformed,
    /// The flag endpoint answers 500.
    FlagError,
}

impl Fault {
    /// Parses the simulator's `--fault` names.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "fail500" => Self::Fail500,
            "fail503" => Self::Fail503 { retry_after: 1 },
            "fail429" => Self::Fail429 { retry_after: 1 },
            "hang" => Self::Hang,
            "close" => Self::CloseConnection,
            "slow" => Self::Slow(Duration::from_millis(200)),
            "flag-off" => Self::FlagOff,
            "flag-malformed" => Self::FlagMalformed,
            "flag-error" => Self::FlagError,
            _ => return None,
        })
    }
}

/// One accepted export request.
#[derive(Debug, Clone)]
pub struct Received {
    /// `/telemetry-ext` or `/telemetry-unauth`.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The parsed logs.
    pub logs: Vec<TelemetryFrontendLog>,
    /// Each log's row kind (docs/TELEMETRY.md, "What is sent").
    pub kinds: Vec<RowKind>,
}

#[derive(Default)]
struct Counters {
    flag_requests: AtomicU64,
    export_requests: AtomicU64,
    rejected: AtomicU64,
    privacy_violations: AtomicU64,
    /// Logs accepted.
    rows: AtomicU64,
}

struct State {
    flag_name: String,
    fault: Mutex<Fault>,
    received: Mutex<Vec<Received>>,
    /// Keep each accepted request (off for a long-running server: counts only).
    keep: std::sync::atomic::AtomicBool,
    /// Check each log against the schema (off for a throughput benchmark's endpoint: the
    /// envelope is checked and its logs counted).
    check_logs: std::sync::atomic::AtomicBool,
    counters: Counters,
}

/// The running mock workspace; stops when dropped.
pub struct MockWorkspace {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockWorkspace")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockWorkspace {
    /// Starts on a free port of 127.0.0.1, on the current tokio runtime, serving `flag_name`
    /// as `"true"` with a 900 s TTL.
    pub async fn start(flag_name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            flag_name: flag_name.to_owned(),
            fault: Mutex::new(Fault::None),
            received: Mutex::new(Vec::new()),
            keep: std::sync::atomic::AtomicBool::new(true),
            check_logs: std::sync::atomic::AtomicBool::new(true),
            counters: Counters::default(),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the fault injected from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// From now on, keeps only counts of what it accepts, not the requests (a server that
    /// runs for a whole benchmark would otherwise hold every log it was sent).
    pub fn keep_counts_only(&self) {
        self.state.keep.store(false, Ordering::Relaxed);
    }

    /// From now on, checks each request's envelope and counts its logs without parsing
    /// each against the server's schema (implies [`keep_counts_only`](Self::keep_counts_only)):
    /// an endpoint for a throughput benchmark, whose client is then not held back by the
    /// mock's own checking (about 10 us a log). Every other run checks every log.
    pub fn count_without_checking(&self) {
        self.keep_counts_only();
        self.state.check_logs.store(false, Ordering::Relaxed);
    }

    /// Every accepted export request (none kept after [`keep_counts_only`](Self::keep_counts_only)).
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Logs accepted, over all requests.
    pub fn rows_received(&self) -> u64 {
        self.state.counters.rows.load(Ordering::Relaxed)
    }

    /// Logs accepted, by row kind.
    pub fn rows_by_kind(&self) -> std::collections::BTreeMap<RowKind, u64> {
        let mut by_kind = std::collections::BTreeMap::new();
        for kind in self.received().iter().flat_map(|r| r.kinds.clone()) {
            *by_kind.entry(kind).or_insert(0) += 1;
        }
        by_kind
    }

    /// Export requests seen (accepted, rejected or faulted).
    pub fn export_requests(&self) -> u64 {
        self.state.counters.export_requests.load(Ordering::Relaxed)
    }

    /// Feature-flag requests seen.
    pub fn flag_requests(&self) -> u64 {
        self.state.counters.flag_requests.load(Ordering::Relaxed)
    }

    /// Requests rejected with 400 as the real receiver would.
    pub fn rejected(&self) -> u64 {
        self.state.counters.rejected.load(Ordering::Relaxed)
    }

    /// Unauthenticated requests that carried correlation ids or configuration.
    pub fn privacy_violations(&self) -> u64 {
        self.state
            .counters
            .privacy_violations
            .load(Ordering::Relaxed)
    }
}

impl Drop for MockWorkspace {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn with_retry_after(status: StatusCode, secs: u64) -> Reply {
    let mut r = reply(status, "{}")?;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    Ok(r)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let fault = state
        .fault
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if path.starts_with("/api/2.0/connector-service/feature-flags/") {
        state.counters.flag_requests.fetch_add(1, Ordering::Relaxed);
        return match fault {
            Fault::FlagError => reply(StatusCode::INTERNAL_SERVER_ERROR, "{}"),
            Fault::FlagMalformed => reply(StatusCode::OK, "{\"flags\": [ nope"),
            _ => {
                let value = if fault == Fault::FlagOff {
                    "false"
                } else {
                    "true"
                };
                let body = serde_json::json!({"flags": [{"name": state.flag_name, "value": value}], "ttl_seconds": 900});
                reply(StatusCode::OK, body.to_string())
            }
        };
    }
    if path != "/telemetry-ext" && path != "/telemetry-unauth" {
        return reply(StatusCode::NOT_FOUND, "{}");
    }
    state
        .counters
        .export_requests
        .fetch_add(1, Ordering::Relaxed);
    match fault {
        Fault::Fail500 => return reply(StatusCode::INTERNAL_SERVER_ERROR, "{}"),
        Fault::Fail503 { retry_after } => {
            return with_retry_after(StatusCode::SERVICE_UNAVAILABLE, retry_after);
        }
        Fault::Fail429 { retry_after } => {
            return with_retry_after(StatusCode::TOO_MANY_REQUESTS, retry_after);
        }
        Fault::Hang => std::future::pending::<()>().await,
        Fault::CloseConnection => return Err(std::io::Error::other("closing the connection")),
        Fault::Slow(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if path == "/telemetry-ext" && authorization.is_none() {
        return reply(StatusCode::UNAUTHORIZED, "{}");
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "{}"),
    };
    if !state.check_logs.load(Ordering::Relaxed) {
        return match count_logs(&body) {
            Ok(n) => {
                state.counters.rows.fetch_add(n as u64, Ordering::Relaxed);
                reply(StatusCode::OK, accepted(n))
            }
            Err(why) => {
                state.counters.rejected.fetch_add(1, Ordering::Relaxed);
                reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"errors": [why]}).to_string(),
                )
            }
        };
    }
    let (logs, kinds): (Vec<TelemetryFrontendLog>, Vec<RowKind>) = match validate(&body) {
        Ok(checked) => checked.into_iter().unzip(),
        Err(why) => {
            state.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%why, "mock workspace rejected a body");
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"errors": [why]}).to_string(),
            );
        }
    };
    if path == "/telemetry-unauth" && logs.iter().any(leaks_identity) {
        state
            .counters
            .privacy_violations
            .fetch_add(1, Ordering::Relaxed);
    }
    let n = logs.len();
    state.counters.rows.fetch_add(n as u64, Ordering::Relaxed);
    if !state.keep.load(Ordering::Relaxed) {
        return reply(StatusCode::OK, accepted(n));
    }
    state
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            path,
            authorization,
            logs,
            kinds,
        });
    reply(StatusCode::OK, accepted(n))
}

/// The endpoint's answer to a request whose `n` logs it took.
fn accepted(n: usize) -> String {
    serde_json::json!({"errors": [], "numSuccess": n, "numProtoSuccess": n, "numRealtimeSuccess": 0})
        .to_string()
}

fn leaks_identity(log: &TelemetryFrontendLog) -> bool {
    let d = log.driver_log();
    log.workspace_id.is_some()
        || d.session_id.is_some()
        || d.sql_statement_id.is_some()
        || d.system_configuration.is_some()
        || d.driver_connection_params.is_some()
        || d.auth_type.is_some()
        || d.error_info
            .as_ref()
            .is_some_and(|e| !e.stack_trace.is_empty())
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

/// A request body's envelope, as the receiver takes it: `uploadTime`, an empty `items`, the
/// logs (`protoLogs`, each a JSON string, read as `L`) and nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<L> {
    #[serde(rename = "uploadTime")]
    _upload_time: i64,
    items: Vec<serde::de::IgnoredAny>,
    #[serde(rename = "protoLogs")]
    proto_logs: Vec<L>,
}

/// The logs of a body whose envelope the receiver accepts.
fn envelope<'de, L: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<Vec<L>, String> {
    let envelope: Envelope<L> =
        serde_json::from_slice(body).map_err(|e| format!("envelope does not parse: {e}"))?;
    if !envelope.items.is_empty() {
        return Err("items is not empty".into());
    }
    Ok(envelope.proto_logs)
}

/// Checks a request body's envelope (as [`validate`] does) and counts its logs, each a JSON
/// string, without parsing them.
pub fn count_logs(body: &[u8]) -> Result<usize, String> {
    /// A log, as the envelope holds it: a string, read and not kept.
    struct LogString;
    impl<'de> serde::Deserialize<'de> for LogString {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl serde::de::Visitor<'_> for Visit {
                type Value = LogString;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<LogString, E> {
                    Ok(LogString)
                }
            }
            d.deserialize_str(Visit)
        }
    }
    envelope::<LogString>(body).map(|logs| logs.len())
}

/// Checks a request body as the receiver does: the envelope, then each log against the
/// server's schema ([`check_log`]); returns the parsed logs with their row kinds.
pub fn validate(body: &[u8]) -> Result<Vec<(TelemetryFrontendLog, RowKind)>, String> {
    let proto: Vec<String> = envelope(body)?;
    let mut logs = Vec::with_capacity(proto.len());
    for s in &proto {
        let raw: Value = serde_json::from_str(s).map_err(|_| "protoLogs element is not JSON")?;
        if has_null(&raw) {
            return Err("null field in a log".into());
        }
        let kind = check_log(&raw).map_err(|e| format!("log does not match the schema: {e}"))?;
        let log = serde_json::from_value(raw)
            .map_err(|e| format!("log does not parse as a TelemetryFrontendLog: {e}"))?;
        logs.push((log, kind));
    }
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_what_the_receiver_rejects() {
        let good_log = serde_json::json!({"frontend_log_event_id": "x", "context": {"client_context": {"timestamp_millis": 1, "user_agent": "u"}}, "entry": {"sql_driver_log": {}}});
        let body = |v: Value| v.to_string().into_bytes();
        assert_eq!(validate(&body(serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": [good_log.to_string()]}))).unwrap().len(), 1);
        for (bad, why) in [
            (
                serde_json::json!({"uploadTime": 1, "protoLogs": []}),
                "items",
            ),
            (
                serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": [good_log.clone()]}),
                "expected a string",
            ),
            (
                serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": [], "extra": 1}),
                "unknown field",
            ),
            (
                serde_json::json!({"items": [], "protoLogs": []}),
                "uploadTime",
            ),
            (
                serde_json::json!({"uploadTime": 1, "items": [1], "protoLogs": []}),
                "items is not empty",
            ),
            (
                serde_json::json!({"uploadTime": "1", "items": [], "protoLogs": []}),
                "invalid type",
            ),
        ] {
            let bad = body(bad);
            let err = validate(&bad).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
            // The counting endpoint refuses the same envelopes, for the same reason.
            assert_eq!(count_logs(&bad), Err(err));
        }
        let mut with_null = good_log.clone();
        with_null["workspace_id"] = Value::Null;
        assert_eq!(
            validate(&body(
                serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": [with_null.to_string()]})
            )),
            Err("null field in a log".into())
        );
        let mut unknown = good_log;
        unknown["entry"]["sql_driver_log"]["made_up"] = Value::Bool(true);
        assert_eq!(
            validate(&body(
                serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": [unknown.to_string()]})
            )),
            Err("log does not match the schema: sql_driver_log.made_up: unknown key".into())
        );
        assert!(validate(b"nope").is_err());
        assert_eq!(
            Fault::parse("fail429"),
            Some(Fault::Fail429 { retry_after: 1 })
        );
        assert_eq!(Fault::parse("bogus"), None);
    }

    #[test]
    fn counting_counts_the_logs_of_an_accepted_envelope() {
        let body = |v: Value| v.to_string().into_bytes();
        let log = r#"{"a":"quoted \"x\""}"#;
        assert_eq!(
            count_logs(&body(
                serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": [log, log, "{}"]})
            )),
            Ok(3)
        );
        assert_eq!(
            count_logs(&body(
                serde_json::json!({"uploadTime": 1, "items": [], "protoLogs": []})
            )),
            Ok(0)
        );
        assert!(count_logs(b"nope").is_err());
    }
}
