//! Test doubles for every trait of this crate, shipped once (feature `testing`) so that each
//! crate's tests, the benches, the end-to-end tests and a driver's own tests use the same
//! ones: a scripted HTTP transport, a scripted flag source, a flag gate that answers late and
//! a recording batch sink, and a connection with every block a row can carry
//! ([`connection_with_every_block`]). [`StaticToken`] is the static auth provider.
//!
//! Waits use `tokio::time`, so the doubles work on a paused clock.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxFuture;
use crate::auth::{AuthProvider, StaticToken};
use crate::connection::ConnectionInfo;
use crate::flag::{FlagAnswer, FlagError, FlagGate, FlagSource, FlagState};
use crate::host::Host;
use crate::row::TelemetryRow;
use crate::sink::BatchSink;
use crate::transport::{HttpRequest, HttpResponse, HttpTransport, TransportError};
use crate::wire::{
    AuthFlow, AuthMech, AuthType, DriverConnectionParameters, DriverMode,
    DriverSystemConfiguration, HostDetails, ProxyAuthType,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a [`ScriptedTransport`] answers one request with.
pub type Reply = Result<HttpResponse, TransportError>;

/// A response with `status`, no headers and a `{}` body.
pub fn status(status: u16) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![],
        body: b"{}".to_vec(),
        body_truncated: false,
    }
}

/// A response with `status` and a `Retry-After: value` header.
pub fn with_retry_after(status: u16, value: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("retry-after".into(), value.into())],
        body: vec![],
        body_truncated: false,
    }
}

/// An in-memory [`HttpTransport`]: answers from a script (the last answer repeats; 200 when
/// the script is empty), optionally never answers, and records every request with the
/// (tokio) time it was sent.
///
/// ```
/// use telemetry_types::testing::{ScriptedTransport, status};
/// let t = ScriptedTransport::new(vec![Ok(status(503)), Ok(status(200))]);
/// assert_eq!(t.count(), 0);
/// ```
pub struct ScriptedTransport {
    script: Mutex<VecDeque<Reply>>,
    last: Mutex<Option<Reply>>,
    hang: AtomicBool,
    keep: bool,
    count: AtomicUsize,
    requests: Mutex<Vec<(Instant, HttpRequest)>>,
    arrived: tokio::sync::Notify,
}

impl fmt::Debug for ScriptedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedTransport")
            .field("requests", &self.count())
            .finish_non_exhaustive()
    }
}

impl ScriptedTransport {
    /// Answers with `replies` in order, then repeats the last one.
    pub fn new(replies: Vec<Reply>) -> Arc<Self> {
        Self::build(replies, true)
    }

    fn build(replies: Vec<Reply>, keep: bool) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(replies.into()),
            last: Mutex::new(None),
            hang: AtomicBool::new(false),
            keep,
            count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            arrived: tokio::sync::Notify::new(),
        })
    }

    /// Answers every request with `code`.
    pub fn always(code: u16) -> Arc<Self> {
        Self::new(vec![Ok(status(code))])
    }

    /// Answers every request with `code` and keeps only the count (for benchmarks, where
    /// recording every body would measure the recorder).
    pub fn counting(code: u16) -> Arc<Self> {
        Self::build(vec![Ok(status(code))], false)
    }

    /// Never answers (until [`set_hang(false)`](Self::set_hang) for later requests).
    pub fn hanging() -> Arc<Self> {
        let t = Self::always(200);
        t.set_hang(true);
        t
    }

    /// From now on, answers every request with `reply` (the rest of the script is dropped).
    pub fn set_reply(&self, reply: Reply) {
        lock(&self.script).clear();
        *lock(&self.last) = Some(reply);
    }

    /// Whether later requests hang.
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    /// Requests received.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were received (for tests whose other work waits on
    /// a real thread, such as an auth provider, so that the paused clock cannot be used).
    pub async fn received(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.count() >= n {
                return;
            }
            arrived.await;
        }
    }

    /// The requests received, in order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        lock(&self.requests)
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// When each request was received.
    pub fn times(&self) -> Vec<Instant> {
        lock(&self.requests).iter().map(|(t, _)| *t).collect()
    }

    /// Each request body, parsed as JSON (`Null` if it is not JSON).
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        lock(&self.requests)
            .iter()
            .map(|(_, r)| serde_json::from_slice(&r.body).unwrap_or_default())
            .collect()
    }

    /// Logs received over every export request (`protoLogs` entries).
    pub fn rows(&self) -> usize {
        self.bodies()
            .iter()
            .map(|b| b["protoLogs"].as_array().map_or(0, Vec::len))
            .sum()
    }

    fn next_reply(&self) -> Reply {
        match lock(&self.script).pop_front() {
            Some(r) => {
                *lock(&self.last) = Some(r.clone());
                r
            }
            None => lock(&self.last).clone().unwrap_or_else(|| Ok(status(200))),
        }
    }
}

impl HttpTransport for ScriptedTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Reply> {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.keep {
            lock(&self.requests).push((Instant::now(), request));
        }
        self.arrived.notify_waiters();
        let hang = self.hang.load(Ordering::SeqCst);
        let reply = self.next_reply();
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            reply
        })
    }
}

/// What a [`ScriptedFlagSource`] answers one look-up with.
pub type Answer = Result<FlagAnswer, FlagError>;

type AnswerFn = Box<dyn Fn(usize) -> Answer + Send + Sync>;

/// An in-memory [`FlagSource`]: answers the n-th look-up (from 0) with `answer(n)`, after an
/// optional delay, and counts look-ups and those that came with credentials.
///
/// ```
/// use telemetry_types::testing::ScriptedFlagSource;
/// let on = ScriptedFlagSource::fixed(true);
/// assert_eq!(on.count(), 0);
/// ```
pub struct ScriptedFlagSource {
    requests: AtomicUsize,
    with_auth: AtomicUsize,
    delay: Option<Duration>,
    answer: AnswerFn,
}

impl fmt::Debug for ScriptedFlagSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedFlagSource")
            .field("requests", &self.count())
            .finish_non_exhaustive()
    }
}

impl ScriptedFlagSource {
    /// Answers look-up `n` with `answer(n)`.
    pub fn new(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            requests: AtomicUsize::new(0),
            with_auth: AtomicUsize::new(0),
            delay: None,
            answer: Box::new(answer),
        })
    }

    /// Answers look-up `n` with `answer(n)` after `delay`.
    pub fn slow(
        delay: Duration,
        answer: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            requests: AtomicUsize::new(0),
            with_auth: AtomicUsize::new(0),
            delay: Some(delay),
            answer: Box::new(answer),
        })
    }

    /// Always `enabled`, with no server TTL.
    pub fn fixed(enabled: bool) -> Arc<Self> {
        Self::new(move |_| Ok(FlagAnswer { enabled, ttl: None }))
    }

    /// Look-ups made.
    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Look-ups made with a connection's credentials.
    pub fn count_with_auth(&self) -> usize {
        self.with_auth.load(Ordering::SeqCst)
    }
}

impl FlagSource for ScriptedFlagSource {
    fn fetch<'a>(
        &'a self,
        _host: &'a Host,
        auth: Option<&'a dyn AuthProvider>,
    ) -> BoxFuture<'a, Answer> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        if auth.is_some() {
            self.with_auth.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            (self.answer)(n)
        })
    }
}

/// A [`FlagGate`] still `Unknown` that becomes `answer` after `after` (never, if `None`).
#[derive(Debug, Clone, Copy)]
pub struct LateGate {
    /// The answer once it is known.
    pub answer: FlagState,
    /// When it becomes known.
    pub after: Option<Duration>,
}

impl FlagGate for LateGate {
    fn state(&self) -> FlagState {
        FlagState::Unknown
    }

    fn wait(&self, timeout: Duration) -> BoxFuture<'_, FlagState> {
        Box::pin(async move {
            match self.after {
                Some(after) if after <= timeout => {
                    tokio::time::sleep(after).await;
                    self.answer
                }
                _ => {
                    tokio::time::sleep(timeout).await;
                    FlagState::Unknown
                }
            }
        })
    }
}

/// A [`BatchSink`] that records every batch, or, when set to hang, takes `hang_for` over
/// each batch before recording it (longer than any close deadline of a test).
#[derive(Default)]
pub struct RecordingSink {
    batches: Mutex<Vec<Vec<TelemetryRow>>>,
    hang_for: Mutex<Option<Duration>>,
    keep: bool,
    rows: AtomicUsize,
}

impl fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingSink")
            .field("rows", &self.rows.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl RecordingSink {
    /// Records every batch.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            keep: true,
            ..Self::default()
        })
    }

    /// Counts rows and drops them (for benchmarks).
    pub fn discarding() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Later batches take `delay` before they are recorded (`None`: at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        *lock(&self.hang_for) = delay;
    }

    /// Every row recorded, in order.
    pub fn rows(&self) -> Vec<TelemetryRow> {
        lock(&self.batches).iter().flatten().cloned().collect()
    }

    /// Rows received, recorded or not.
    pub fn row_count(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }

    /// The size of each batch recorded.
    pub fn batch_sizes(&self) -> Vec<usize> {
        lock(&self.batches).iter().map(Vec::len).collect()
    }
}

impl BatchSink for RecordingSink {
    fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()> {
        let delay = *lock(&self.hang_for);
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            self.rows.fetch_add(batch.len(), Ordering::SeqCst);
            if self.keep {
                lock(&self.batches).push(batch);
            }
        })
    }
}

/// A connection with every block a `CREATE_SESSION` row carries filled in (system
/// configuration, connection parameters with proxy details and a host list), a session id,
/// a workspace id and a static token: the fixture of golden payloads and encoding tests.
pub fn connection_with_every_block() -> ConnectionInfo {
    let mut c = ConnectionInfo::new(
        // A fixed, valid host: parsing cannot fail.
        Host::parse("adb-1.azuredatabricks.net", false).unwrap_or_else(|e| panic!("{e}")),
        "RustDriver/1.2.3",
    );
    c.workspace_id = Some(1_234_567_890_123_456);
    let _ = c.session_id.set("sess-1".into());
    c.auth_type = Some(AuthType::Pat);
    c.auth = Some(Arc::new(StaticToken::new("t")));
    c.system_configuration = Some(DriverSystemConfiguration {
        driver_name: Some("RustDriver".into()),
        driver_version: Some("1.2.3".into()),
        runtime_name: Some("Rust".into()),
        os_name: Some("linux".into()),
        os_arch: Some("x86_64".into()),
        locale_name: Some("en_US".into()),
        char_set_encoding: Some("UTF-8".into()),
        process_name: Some("app".into()),
        ..Default::default()
    });
    c.connection_params = Some(DriverConnectionParameters {
        http_path: Some("/sql/1.0/warehouses/abc".into()),
        mode: Some(DriverMode::Sea),
        host_info: Some(HostDetails::new("https://adb-1.azuredatabricks.net", 443)),
        use_proxy: Some(true),
        proxy_host_info: Some(HostDetails {
            proxy_auth_type: Some(ProxyAuthType::Basic),
            ..HostDetails::new("http://proxy.corp", 3128)
        }),
        non_proxy_hosts: Some(vec!["localhost".into(), ".corp".into()]),
        enable_arrow: Some(true),
        enable_direct_results: Some(true),
        socket_timeout: Some(900),
        auth_mech: Some(AuthMech::Oauth),
        auth_flow: Some(AuthFlow::ClientCredentials),
        string_column_length: Some(255),
        jwt_key_file: Some("/home/alice/keys/key.pem".into()),
        enable_metric_view_metadata: Some(false),
        ..Default::default()
    });
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::HttpMethod;

    fn request() -> HttpRequest {
        HttpRequest {
            method: HttpMethod::Post,
            url: "https://a.example/telemetry-ext".into(),
            headers: vec![],
            body: crate::transport::Bytes::from_static(br#"{"protoLogs":["a","b"]}"#),
            timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_transport_follows_its_script_and_records() {
        let t = ScriptedTransport::new(vec![Ok(status(503)), Ok(with_retry_after(429, "2"))]);
        let codes: Vec<u16> = [
            t.send(request()).await,
            t.send(request()).await,
            t.send(request()).await,
        ]
        .into_iter()
        .map(|r| r.map(|r| r.status).unwrap_or(0))
        .collect();
        assert_eq!(codes, [503, 429, 429]);
        t.set_reply(Ok(status(201)));
        assert_eq!(t.send(request()).await.map(|r| r.status).ok(), Some(201));
        assert_eq!(t.count(), 4);
        assert_eq!(t.rows(), 8);
        assert_eq!(t.times().len(), 4);
        let c = ScriptedTransport::counting(204);
        assert_eq!(c.send(request()).await.map(|r| r.status).ok(), Some(204));
        assert_eq!((c.count(), c.requests().len()), (1, 0));
        let h = ScriptedTransport::hanging();
        let hung = tokio::time::timeout(Duration::from_secs(5), h.send(request())).await;
        assert!(hung.is_err());
        assert!(format!("{h:?}").contains("requests: 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_flag_source_and_late_gate() {
        let s = ScriptedFlagSource::slow(Duration::from_secs(1), |n| {
            Ok(FlagAnswer {
                enabled: n == 0,
                ttl: None,
            })
        });
        let host = Host::parse("a.example", false).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.fetch(&host, None).await.is_ok_and(|a| a.enabled));
        let token = crate::auth::StaticToken::new("t");
        assert!(s.fetch(&host, Some(&token)).await.is_ok_and(|a| !a.enabled));
        assert_eq!((s.count(), s.count_with_auth()), (2, 1));
        let g = LateGate {
            answer: FlagState::Enabled,
            after: Some(Duration::from_secs(2)),
        };
        assert_eq!(g.state(), FlagState::Unknown);
        assert_eq!(g.wait(Duration::from_secs(1)).await, FlagState::Unknown);
        assert_eq!(g.wait(Duration::from_secs(3)).await, FlagState::Enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn recording_sink_records_or_discards() {
        let host = Host::parse("a.example", false).unwrap_or_else(|e| panic!("{e}"));
        let conn = Arc::new(crate::connection::ConnectionInfo::new(host, "ua"));
        let row = || TelemetryRow::new(crate::row::base_log(&conn, 0), conn.clone(), false);
        let sink = RecordingSink::new();
        sink.export(vec![row(), row()]).await;
        sink.set_delay(Some(Duration::from_secs(10)));
        let late = tokio::time::timeout(Duration::from_secs(1), sink.export(vec![row()])).await;
        assert!(late.is_err());
        assert_eq!(sink.batch_sizes(), [2]);
        let d = RecordingSink::discarding();
        d.export(vec![row()]).await;
        assert_eq!((d.row_count(), d.rows().len()), (1, 0));
    }
}
