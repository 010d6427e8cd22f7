use rstest::rstest;
use serde_json::Value;
use telemetry_breaker::{BreakerConfig, BreakerState};
use telemetry_types::auth::StaticToken;
use telemetry_types::classify::TransportErrorKind;
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::event::DriverError;
use telemetry_types::flag::FixedGate;
use telemetry_types::row;
use telemetry_types::testing::{LateGate, ScriptedTransport, status, with_retry_after};
use telemetry_types::transport::{
    ExtraHeaders, HttpMethod, HttpRequest, HttpResponse, TransportError,
};
use tokio::time::Instant;

use super::*;
use crate::encode::{encode_body, encode_rows};
use request::AUTH_REUSE;
use std::time::{Duration, SystemTime};
use telemetry_types::auth::AuthProvider;

type Scripted = ScriptedTransport;

fn host() -> Host {
    Host::parse("a.example", false).unwrap()
}

fn config() -> ExportConfig {
    ExportConfig::default()
}

fn exporter_with(
    transport: Arc<Scripted>,
    gate: Arc<dyn FlagGate>,
    config: ExportConfig,
) -> DatabricksExporter {
    // As the facade configures it: open for 60 s, at most as long as a Retry-After honoured.
    let breaker = CircuitBreaker::new(
        "a.example",
        BreakerConfig {
            max_open_duration: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
    );
    DatabricksExporter::new(host(), config, transport, breaker, gate, "TestDriver/1.0")
}

/// An exporter whose auth timeout (measured on the wall clock: providers run on their own
/// thread) is short, for tests with a provider that hangs.
fn exporter_with_quick_auth(transport: Arc<Scripted>) -> DatabricksExporter {
    let config = ExportConfig {
        auth_timeout: Duration::from_millis(100),
        ..config()
    };
    exporter_with(transport, Arc::new(FixedGate(FlagState::Enabled)), config)
}

fn exporter(transport: Arc<Scripted>) -> DatabricksExporter {
    exporter_with(transport, Arc::new(FixedGate(FlagState::Enabled)), config())
}

fn conn_with(token: Option<&str>) -> Arc<ConnectionInfo> {
    let mut c = ConnectionInfo::new(host(), "TestDriver/1.0");
    c.workspace_id = Some(42);
    let _ = c.session_id.set("sess".into());
    c.auth = token.map(|t| Arc::new(StaticToken::new(t)) as Arc<dyn AuthProvider>);
    c.extra_headers = ExtraHeaders::try_from_pairs([("x-databricks-org-id", "42")]).unwrap();
    Arc::new(c)
}

fn conn_with_auth(auth: Arc<dyn AuthProvider>) -> Arc<ConnectionInfo> {
    let mut c = ConnectionInfo::new(host(), "TestDriver/1.0");
    c.auth = Some(auth);
    Arc::new(c)
}

fn rows(conn: &Arc<ConnectionInfo>, n: usize) -> Vec<TelemetryRow> {
    (0..n)
        .map(|i| {
            let log = row::error_row(
                conn,
                1,
                Some(&format!("st{i}")),
                &DriverError::new("E", "secret stack"),
            );
            TelemetryRow::new(log, conn.clone(), true)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn success_counts_rows() {
    let t = Scripted::new(vec![Ok(status(200))]);
    let e = exporter(t.clone());
    e.export(rows(&conn_with(Some("tok")), 3)).await;
    let s = e.stats();
    assert_eq!(
        (s.requests, s.rows_exported, s.total_dropped(), s.batches),
        (1, 3, 0, 1)
    );
    let req = &t.requests()[0];
    assert_eq!(req.url, "https://a.example/telemetry-ext");
    assert_eq!(req.method, HttpMethod::Post);
    assert_eq!(req.timeout, Duration::from_secs(10));
    assert!(format!("{e:?}").contains("a.example"));
}

#[rstest]
#[case(429, DropReason::Http4xx)]
#[case(500, DropReason::Http5xx)]
#[case(502, DropReason::Http5xx)]
#[case(503, DropReason::Http5xx)]
#[case(504, DropReason::Http5xx)]
#[tokio::test(start_paused = true)]
async fn retries_retryable_statuses_up_to_the_limit(#[case] code: u16, #[case] reason: DropReason) {
    let t = Scripted::new(vec![Ok(status(code))]);
    let e = exporter(t.clone());
    e.export(rows(&conn_with(Some("tok")), 2)).await;
    let s = e.stats();
    assert_eq!(t.count(), 4, "first try and 3 retries");
    assert_eq!(s.retries, 3);
    assert_eq!(s.dropped(reason), 2);
    assert_eq!(
        s.last_error.as_deref(),
        Some(format!("HTTP {code}").as_str())
    );
    // Full jitter: each gap is drawn below its growing bound of 100, 200, 400 ms (plus at
    // most 100 ms of jitter).
    let times = t.times();
    for (i, base) in [100u64, 200, 400].iter().enumerate() {
        let gap = times[i + 1] - times[i];
        assert!(gap <= Duration::from_millis(base + 100), "gap {i}: {gap:?}");
    }
}

#[rstest]
#[case(400)]
#[case(401)]
#[case(403)]
#[case(404)]
#[tokio::test(start_paused = true)]
async fn no_retry_on_terminal_statuses_and_breaker_untouched(#[case] code: u16) {
    let t = Scripted::new(vec![Ok(status(code))]);
    let e = exporter(t.clone());
    for _ in 0..10 {
        e.export(rows(&conn_with(Some("tok")), 1)).await;
    }
    assert_eq!(t.count(), 10, "one request per batch, no retries");
    let s = e.stats();
    assert_eq!(s.dropped(DropReason::Http4xx), 10);
    assert_eq!(s.breaker.openings, 0, "a {code} is not an outage");
    assert_eq!(s.breaker.ignored, 10);
}

#[tokio::test(start_paused = true)]
async fn recovers_within_retries() {
    let t = Scripted::new(vec![
        Ok(status(503)),
        Err(TransportError::new(
            TransportErrorKind::ConnectionReset,
            "reset",
        )),
        Ok(status(200)),
    ]);
    let e = exporter(t.clone());
    e.export(rows(&conn_with(Some("tok")), 2)).await;
    let s = e.stats();
    assert_eq!(
        (t.count(), s.retries, s.rows_exported, s.total_dropped()),
        (3, 2, 2, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn non_retryable_transport_errors_are_not_retried() {
    let t = Scripted::new(vec![Err(TransportError::new(
        TransportErrorKind::DnsPermanent,
        "no such host",
    ))]);
    let e = exporter(t.clone());
    e.export(rows(&conn_with(Some("tok")), 1)).await;
    assert_eq!(t.count(), 1);
    assert_eq!(e.stats().dropped(DropReason::Transport), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_a_floor_and_a_longer_one_ends_the_retries() {
    let t = Scripted::new(vec![
        Ok(with_retry_after(429, "7")),
        Ok(with_retry_after(503, "100000")),
        Ok(status(200)),
    ]);
    let e = exporter(t.clone());
    let started = Instant::now();
    e.export(rows(&conn_with(Some("tok")), 1)).await;
    let times = t.times();
    assert_eq!(
        times.len(),
        2,
        "a Retry-After past the cap is not waited for"
    );
    // 7 s, and the host's pause adds up to a quarter more at random.
    assert!(times[1] - times[0] >= Duration::from_secs(7));
    assert!(times[1] - times[0] <= Duration::from_millis(8_750));
    assert!(
        started.elapsed() <= Duration::from_millis(8_750),
        "the slot is freed at once"
    );
    let s = e.stats();
    assert_eq!((s.rows_exported, s.dropped(DropReason::Http5xx)), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_then_sends_nothing_until_timeout_then_probe_closes() {
    let t = Scripted::new(vec![Ok(status(500))]);
    let mut cfg = config();
    cfg.retry.max_retries = 0;
    let e = exporter_with(t.clone(), Arc::new(FixedGate(FlagState::Enabled)), cfg);
    let c = conn_with(Some("tok"));
    for _ in 0..5 {
        e.export(rows(&c, 1)).await;
    }
    assert_eq!(e.breaker().state(), BreakerState::Open);
    assert_eq!(t.count(), 5);
    for _ in 0..20 {
        e.export(rows(&c, 2)).await;
    }
    assert_eq!(t.count(), 5, "no request while open");
    assert_eq!(e.stats().dropped(DropReason::BreakerOpen), 40);
    // Endpoint recovers; after the open period two probes close the breaker.
    t.set_reply(Ok(status(200)));
    tokio::time::advance(Duration::from_secs(60)).await;
    e.export(rows(&c, 1)).await;
    e.export(rows(&c, 1)).await;
    assert_eq!(e.breaker().state(), BreakerState::Closed);
    e.export(rows(&c, 1)).await;
    let s = e.stats();
    assert_eq!(s.rows_exported, 3);
    assert_eq!(s.breaker.openings, 1);
}

#[tokio::test(start_paused = true)]
async fn disabled_flag_means_zero_requests() {
    let t = Scripted::new(vec![]);
    let e = exporter_with(
        t.clone(),
        Arc::new(FixedGate(FlagState::Disabled)),
        config(),
    );
    e.export(rows(&conn_with(Some("tok")), 4)).await;
    assert_eq!(t.count(), 0);
    assert_eq!(e.stats().dropped(DropReason::FlagDisabled), 4);
}

#[tokio::test(start_paused = true)]
async fn unknown_flag_waits_for_the_answer() {
    let t = Scripted::new(vec![]);
    let gate = LateGate {
        answer: FlagState::Enabled,
        after: Some(Duration::from_secs(3)),
    };
    let e = exporter_with(t.clone(), Arc::new(gate), config());
    let started = Instant::now();
    e.export(rows(&conn_with(Some("tok")), 1)).await;
    assert_eq!(Instant::now() - started, Duration::from_secs(3));
    assert_eq!((t.count(), e.stats().rows_exported), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn unknown_flag_waits_up_to_the_bound_then_drops() {
    let t = Scripted::new(vec![]);
    let gate = LateGate {
        answer: FlagState::Enabled,
        after: None,
    };
    let e = exporter_with(t.clone(), Arc::new(gate), config());
    let started = Instant::now();
    e.export(rows(&conn_with(Some("tok")), 1)).await;
    assert_eq!(Instant::now() - started, config().flag_wait_timeout);
    assert_eq!(t.count(), 0);
    assert_eq!(e.stats().dropped(DropReason::FlagUnknown), 1);
}

/// Failed statements' rows, with ids and errors: rows whose log is built as it is written.
fn statement_rows(conn: &Arc<ConnectionInfo>, n: usize) -> Vec<TelemetryRow> {
    use telemetry_types::event::{StatementEnd, StatementOutcome};
    use telemetry_types::wire::OperationType;
    (0..n)
        .map(|i| {
            let end = StatementEnd {
                operation_type: OperationType::ExecuteStatement,
                statement_id: Some(format!("01ef-{i:04}").into()),
                latency_ms: 5,
                outcome: StatementOutcome::Failed,
                error: Some(Box::new(DriverError::new("E", "secret stack"))),
                ..StatementEnd::default()
            };
            TelemetryRow::statement(conn.clone(), 1, end)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn unauthenticated_rows_carry_no_ids_config_or_stack_trace_and_no_token() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    let c = conn_with(None);
    let mut batch = rows(&c, 2);
    batch.extend(statement_rows(&c, 2));
    e.export(batch).await;
    let req = t.requests()[0].clone();
    assert_eq!(req.url, "https://a.example/telemetry-unauth");
    assert!(
        req.headers
            .iter()
            .all(|(k, _)| !k.eq_ignore_ascii_case("authorization") && k != "x-databricks-org-id")
    );
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    let logs = body["protoLogs"].as_array().unwrap();
    assert_eq!(logs.len(), 4);
    for log in logs {
        let log: Value = serde_json::from_str(log.as_str().unwrap()).unwrap();
        assert!(log.get("workspace_id").is_none());
        let d = &log["entry"]["sql_driver_log"];
        assert!(d.get("session_id").is_none() && d.get("sql_statement_id").is_none());
        assert_eq!(d["error_info"]["stack_trace"], "");
    }
    // The statement rows (built as they are written) are there, stripped the same way.
    let statement_logs = logs
        .iter()
        .filter(|l| l.as_str().unwrap().contains("EXECUTE_STATEMENT"))
        .count();
    assert_eq!(statement_logs, 2);
    assert_eq!(e.stats().unauthenticated_requests, 1);
}

#[tokio::test(start_paused = true)]
async fn authenticated_export_off_forces_unauth_endpoint() {
    let t = Scripted::new(vec![]);
    let e = exporter_with(
        t.clone(),
        Arc::new(FixedGate(FlagState::Enabled)),
        ExportConfig {
            authenticated_export: false,
            ..config()
        },
    );
    e.export(rows(&conn_with(Some("tok")), 1)).await;
    let req = t.requests()[0].clone();
    assert!(req.url.ends_with(UNAUTH_PATH));
    assert!(!String::from_utf8_lossy(&req.body).contains("sess"));
    assert!(req.headers.iter().all(|(_, v)| !v.contains("tok")));
}

#[tokio::test(start_paused = true)]
async fn two_tenants_rows_never_share_a_request() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    let (a, b) = (conn_with(Some("token-a")), conn_with(Some("token-b")));
    let mut batch = rows(&a, 2);
    batch.extend(rows(&b, 3));
    batch.extend(rows(&a, 1));
    e.export(batch).await;
    let reqs = t.requests();
    assert_eq!(reqs.len(), 2);
    let auth = |r: &HttpRequest| {
        r.headers
            .iter()
            .find(|(k, _)| k == "Authorization")
            .map(|(_, v)| v.clone())
    };
    // The two credential groups are sent side by side: find each by its token.
    let mut tokens: Vec<_> = reqs.iter().filter_map(auth).collect();
    tokens.sort();
    assert_eq!(tokens, ["Bearer token-a", "Bearer token-b"]);
    for req in &reqs {
        assert!(
            req.headers
                .contains(&("x-databricks-org-id".into(), "42".into()))
        );
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["protoLogs"].as_array().unwrap().len(), 3);
    }
    assert_eq!(e.stats().rows_exported, 6);
}

#[tokio::test(start_paused = true)]
async fn body_shape_and_headers() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    e.export(rows(&conn_with(Some("tok")), 2)).await;
    e.export(Vec::new()).await; // nothing to do
    assert_eq!(t.count(), 1);
    let req = t.requests()[0].clone();
    for (k, v) in [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("User-Agent", "TestDriver/1.0"),
        ("Authorization", "Bearer tok"),
    ] {
        assert!(req.headers.contains(&(k.to_owned(), v.to_owned())), "{k}");
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["items"], serde_json::json!([]));
    assert!(body["uploadTime"].as_i64().unwrap() > 1_700_000_000_000);
    let logs = body["protoLogs"].as_array().unwrap();
    let first: telemetry_types::wire::TelemetryFrontendLog =
        serde_json::from_str(logs[0].as_str().unwrap()).unwrap();
    assert_eq!(first.workspace_id, Some(42));
    assert_eq!(first.driver_log().sql_statement_id.as_deref(), Some("st0"));
}

#[tokio::test(start_paused = true)]
async fn provider_without_credentials_falls_back_to_unauth() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    let mut c = ConnectionInfo::new(host(), "ua");
    // A provider with no credentials at the moment.
    c.auth = Some(Arc::new(StaticToken::new("")));
    e.export(rows(&Arc::new(c), 1)).await;
    assert!(t.requests()[0].url.ends_with(UNAUTH_PATH));
}

#[rstest]
#[case("0", Some(Duration::ZERO))]
#[case(" 12 ", Some(Duration::from_secs(12)))]
#[case("Wed, 21 Oct 2015 07:28:00 GMT", Some(Duration::ZERO))]
#[case("-1", None)]
#[case("", None)]
fn retry_after_parsing(#[case] v: &str, #[case] expected: Option<Duration>) {
    assert_eq!(parse_retry_after(v), expected);
}

#[test]
fn future_http_date_is_a_delay() {
    let when = SystemTime::now() + Duration::from_secs(120);
    let d = parse_retry_after(&httpdate::fmt_http_date(when)).unwrap();
    assert!(d > Duration::from_secs(110) && d <= Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_sees_every_attempt_and_a_probe_is_one() {
    let t = Scripted::new(vec![Ok(status(503))]);
    let e = exporter(t.clone());
    let c = conn_with(Some("tok"));
    e.export(rows(&c, 1)).await;
    assert_eq!(t.count(), 4, "first try and 3 retries, each a failure");
    e.export(rows(&c, 1)).await;
    assert_eq!(
        t.count(),
        5,
        "the fifth failure opened it: the retry was refused"
    );
    assert_eq!(e.breaker().state(), BreakerState::Open);
    let s = e.stats();
    assert_eq!(s.dropped(DropReason::Http5xx), 1);
    assert_eq!(
        s.dropped(DropReason::BreakerOpen),
        1,
        "the loop in flight stopped"
    );
    assert_eq!(s.concurrency_limit, 1, "one at a time after a failure");
    tokio::time::advance(Duration::from_secs(60)).await;
    e.export(rows(&c, 1)).await;
    assert_eq!(t.count(), 6, "the probe is a single request");
    assert_eq!(e.breaker().state(), BreakerState::Open, "and it re-opened");
}

/// Credentials that never come.
struct HangingAuth;
impl AuthProvider for HangingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_auth_provider_delays_only_its_own_rows() {
    let t = Scripted::new(vec![]);
    let e = exporter_with_quick_auth(t.clone());
    let good = conn_with(Some("token-good"));
    let hung = conn_with_auth(Arc::new(HangingAuth));
    let mut batch = rows(&hung, 2);
    batch.extend(rows(&good, 3));
    e.export(batch).await;
    let reqs = t.requests();
    assert_eq!(reqs.len(), 2);
    // The good tenant's rows went out with its token; the other group, with no credentials in
    // time, went out unauthenticated (the order of the two depends on thread scheduling).
    let authed: Vec<_> = reqs.iter().filter(|r| r.url.ends_with(AUTH_PATH)).collect();
    let unauthed: Vec<_> = reqs
        .iter()
        .filter(|r| r.url.ends_with(UNAUTH_PATH))
        .collect();
    assert_eq!((authed.len(), unauthed.len()), (1, 1));
    assert!(
        authed[0]
            .headers
            .iter()
            .any(|(_, v)| v == "Bearer token-good")
    );
    let s = e.stats();
    assert_eq!((s.rows_exported, s.auth_timeouts), (5, 1));
}

/// Panics when asked, in the call itself or in the future it returns.
struct PanickingAuth {
    in_future: bool,
}
impl AuthProvider for PanickingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        if self.in_future {
            Box::pin(async { panic!("token refresh bug (in the future)") })
        } else {
            panic!("token refresh bug (in the call)")
        }
    }
}

/// A provider whose header value would split the request line.
struct InjectingAuth;
impl AuthProvider for InjectingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(async {
            Some(vec![(
                "Authorization".to_owned(),
                "Bearer x\r\nHost: evil.example".to_owned(),
            )])
        })
    }
}

#[rstest]
#[case::panic_in_call(Arc::new(PanickingAuth { in_future: false }) as Arc<dyn AuthProvider>)]
#[case::panic_in_future(Arc::new(PanickingAuth { in_future: true }) as Arc<dyn AuthProvider>)]
#[case::unsendable_header(Arc::new(InjectingAuth) as Arc<dyn AuthProvider>)]
#[tokio::test(start_paused = true)]
async fn a_failing_auth_provider_costs_only_its_own_rows_once(#[case] bad: Arc<dyn AuthProvider>) {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    let (good, bad) = (conn_with(Some("token-good")), conn_with_auth(bad));
    let mut batch = rows(&bad, 4);
    batch.extend(rows(&good, 6));
    e.export(batch).await;
    let reqs = t.requests();
    assert_eq!(
        reqs.len(),
        1,
        "the good tenant's rows went out in the same flush"
    );
    assert!(
        reqs[0]
            .headers
            .iter()
            .any(|(_, v)| v == "Bearer token-good")
    );
    let s = e.stats();
    assert_eq!(s.rows_exported, 6);
    assert_eq!(s.dropped(DropReason::AuthFailed), 4);
    assert_eq!(s.total_dropped(), 4, "counted once: produced 10 = 6 + 4");
    assert_eq!(
        e.breaker().stats().failures,
        0,
        "not the endpoint's failure"
    );
}

/// A transport plug-in that panics.
struct PanickingTransport;
impl HttpTransport for PanickingTransport {
    fn send(&self, _r: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async { panic!("transport bug") })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_transport_is_a_local_failure_never_the_breakers() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    let mut own = ConnectionInfo::new(host(), "ua");
    own.auth = Some(Arc::new(StaticToken::new("tok")));
    own.transport = Some(Arc::new(PanickingTransport));
    let own = Arc::new(own);
    let clean = conn_with(Some("tok-clean"));
    for _ in 0..10 {
        let mut batch = rows(&own, 2);
        batch.extend(rows(&clean, 3));
        e.export(batch).await;
    }
    let s = e.stats();
    assert_eq!(s.dropped(DropReason::Plugin), 20);
    assert_eq!(
        s.rows_exported, 30,
        "the clean connection's rows all delivered"
    );
    assert_eq!(e.breaker().state(), BreakerState::Closed);
    assert_eq!(e.breaker().stats().failures, 0);
}

/// Rows of several connections, in runs and interleaved: each request carries the rows of
/// one set of credentials, in batch order, whichever connection they came from.
#[tokio::test(start_paused = true)]
async fn rows_in_runs_of_connections_go_with_their_own_credentials() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    let a = conn_with(Some("tok-a"));
    let b = conn_with(Some("tok-b"));
    let mut batch = Vec::new();
    for (conn, n) in [(&a, 2), (&b, 1), (&a, 1), (&a, 2), (&b, 2), (&a, 1)] {
        batch.extend(statement_rows(conn, n));
    }
    let ids = |rows: &[TelemetryRow]| -> Vec<String> {
        rows.iter()
            .map(|r| r.log().driver_log().sql_statement_id.clone().unwrap())
            .collect()
    };
    let want_a: Vec<String> = ids(&batch)
        .into_iter()
        .zip(&batch)
        .filter(|(_, r)| !Arc::ptr_eq(&r.connection, &b))
        .map(|(id, _)| id)
        .collect();
    e.export(batch).await;
    let requests = t.requests();
    assert_eq!(requests.len(), 2);
    let token = |r: &HttpRequest| {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.clone())
    };
    let sent_ids = |r: &HttpRequest| -> Vec<String> {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        body["protoLogs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let l: Value = serde_json::from_str(l.as_str().unwrap()).unwrap();
                l["entry"]["sql_driver_log"]["sql_statement_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let (ra, rb) = if token(&requests[0]).as_deref() == Some("Bearer tok-a") {
        (&requests[0], &requests[1])
    } else {
        (&requests[1], &requests[0])
    };
    assert_eq!(token(ra).as_deref(), Some("Bearer tok-a"));
    assert_eq!(token(rb).as_deref(), Some("Bearer tok-b"));
    assert_eq!(sent_ids(ra), want_a, "a's 6 rows, in batch order");
    assert_eq!(sent_ids(rb).len(), 3);
    assert_eq!(e.stats().rows_exported, 9);
}

#[rstest]
#[case(301)]
#[case(302)]
#[case(307)]
#[case(308)]
#[tokio::test(start_paused = true)]
async fn a_redirect_is_a_drop_of_its_own_never_followed(#[case] code: u16) {
    let t = Scripted::new(vec![Ok(status(code))]);
    let e = exporter(t.clone());
    e.export(rows(&conn_with(Some("tok")), 3)).await;
    assert_eq!(t.count(), 1, "not retried, not followed");
    let s = e.stats();
    assert_eq!((s.rows_exported, s.dropped(DropReason::Redirect)), (0, 3));
    assert_eq!(e.breaker().stats().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_batch_cut_mid_way_settles_each_row_once() {
    let t = Scripted::new(vec![]);
    let e = exporter_with_quick_auth(t.clone());
    let good = conn_with(Some("token-good"));
    let mut hung = ConnectionInfo::new(host(), "ua");
    hung.auth = Some(Arc::new(HangingAuth));
    let mut batch = rows(&Arc::new(hung), 2);
    batch.extend(rows(&good, 3));
    // The close deadline cuts the export while one group is still waiting.
    let export = e.export(batch);
    tokio::select! {
        _ = export => panic!("one group is still waiting on its provider"),
        _ = t.received(1) => {}
    }
    let s = e.stats();
    assert_eq!(s.rows_exported, 3, "the sent group counts as exported");
    assert_eq!(
        s.dropped(DropReason::Shutdown),
        2,
        "the rest as dropped on shutdown"
    );
    assert_eq!(s.total_dropped(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_export_dropped_before_its_first_poll_still_settles_its_rows() {
    let t = Scripted::new(vec![]);
    let e = exporter(t.clone());
    drop(e.export(rows(&conn_with(Some("tok")), 3)));
    let s = e.stats();
    assert_eq!((s.dropped(DropReason::Shutdown), t.count()), (3, 0));
}

mod one_encoding {
    use proptest::prelude::*;
    use telemetry_types::wire::{DriverErrorInfo, TelemetryFrontendLog, TelemetryRequest};

    use super::*;

    fn log(text: &str) -> TelemetryFrontendLog {
        let mut log = TelemetryFrontendLog::new(format!("id-{text}"), 1, text.to_owned());
        log.driver_log_mut().error_info = Some(DriverErrorInfo {
            error_name: text.to_owned(),
            stack_trace: format!("{text}\\{text}\"\n\t\u{1}\u{7f}é😀"),
        });
        log
    }

    /// The reference: each log serialised to a string, then the request serialised.
    fn reference(upload_time: i64, logs: &[TelemetryFrontendLog]) -> Vec<u8> {
        serde_json::to_vec(&TelemetryRequest::from_logs(upload_time, logs.iter()).unwrap()).unwrap()
    }

    #[rstest]
    #[case("")]
    #[case("plain")]
    #[case("\"quoted\" and \\backslashed\\")]
    #[case("\\\"\\\\\"")]
    #[case("control \u{0}\u{1f} newline\n tab\t")]
    #[case("unicode é ü 中文 😀 \u{2028}")]
    fn byte_for_byte_the_reference(#[case] text: &str) {
        let logs = vec![log(text), log(&text.repeat(3))];
        assert_eq!(encode_body(-5, logs.iter()).unwrap(), reference(-5, &logs));
        assert_eq!(encode_body(0, [].iter()).unwrap(), reference(0, &[]));
    }

    /// Every row kind with every block the rows carry (configuration, connection parameters
    /// with a list, proxy details, chunk statistics, latencies, error, volume operation),
    /// byte for byte as the two-pass reference.
    #[test]
    fn every_row_kind_encodes_as_the_reference() {
        use telemetry_types::event::{
            ChunkFailure, ChunkStats, DriverError, StatementCompletion, StatementEnd,
            StatementOutcome, VolumeOp,
        };
        use telemetry_types::row::{self, SessionChange};
        use telemetry_types::wire::*;

        // The golden fixture, with text that needs escaping where rows repeat it.
        let mut c = telemetry_types::testing::connection_with_every_block();
        c.user_agent = "Rust/1 \"q\"".into();
        if let Some(config) = c.system_configuration.as_mut() {
            config.driver_name = Some("Rust\\Driver".into());
        }
        let mut chunks = ChunkStats::default();
        chunks.record(120, 1000, true);
        chunks.record(80, 1000, false);
        let error = DriverError::new("Err\"or", "line\nbreak").with_sqlstate("42000");
        let end = StatementEnd {
            statement_type: StatementType::Query,
            operation_type: OperationType::ExecuteStatement,
            statement_id: Some("01ef-stmt".into()),
            latency_ms: 412,
            outcome: StatementOutcome::Failed,
            chunks,
            completion: StatementCompletion {
                execution_result: Some(ExecutionResultFormat::ExternalLinks),
                poll_count: Some(3),
                poll_latency_ms: Some(90),
                chunks_present: Some(2),
                result_ready_latency_ms: Some(200),
                ..Default::default()
            },
            error: Some(Box::new(error.clone())),
            volume: Some(Box::new(VolumeOp {
                operation: VolumeOperationType::Put,
                volume_path: Some("/Volumes/a/b".into()),
                local_file: Some("/tmp/x.csv".into()),
            })),
        };
        let logs = vec![
            row::connection_row(&c, 1, SessionChange::Opened, 5),
            row::connection_row(&c, 2, SessionChange::Closed, 6),
            row::connection_failure_row(&c, 3, 7, &error),
            row::statement_row(&c, 4, &end),
            row::statement_row(&c, 5, &StatementEnd::default()),
            row::chunk_failure_row(
                &c,
                6,
                &ChunkFailure {
                    statement_id: Some("01ef-stmt".into()),
                    statement_type: StatementType::Query,
                    operation_type: OperationType::ExecuteStatement,
                    chunk_index: 3,
                    chunks,
                    completion: StatementCompletion::default(),
                    error: error.clone(),
                },
            ),
            row::error_row(&c, 7, Some("01ef-stmt"), &error),
        ];
        assert_eq!(encode_body(9, logs.iter()).unwrap(), reference(9, &logs));
    }

    /// A statement's end without an error or a volume operation (the ends written straight
    /// from their parts), with any of its optional fields present or not and ids of every
    /// shape: server-assigned, ones the redactor rewrites, ones with characters to escape.
    fn any_plain_end() -> impl Strategy<Value = telemetry_types::event::StatementEnd> {
        use telemetry_types::event::{
            ChunkStats, StatementCompletion, StatementEnd, StatementOutcome,
        };
        use telemetry_types::wire::{ExecutionResultFormat, OperationType, StatementType};
        let id = prop_oneof![
            Just(None),
            Just(Some("01ef-00aa-0000-0000-0000-000000000000".to_owned())),
            Just(Some("q\"uote\\d\n".to_owned())),
            Just(Some(
                "token dapi0123456789abcdef0123456789abcdef".to_owned()
            )),
            "\\PC{0,40}".prop_map(Some),
        ];
        let outcome = prop_oneof![
            Just(StatementOutcome::Completed),
            Just(StatementOutcome::Cancelled),
            Just(StatementOutcome::Closed),
            Just(StatementOutcome::Abandoned),
        ];
        let completion = (
            proptest::option::of(Just(ExecutionResultFormat::ExternalLinks)),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(format, compressed, polls, latency, chunks, consumed, internal)| {
                    StatementCompletion {
                        execution_result: format,
                        compressed,
                        poll_count: polls,
                        poll_latency_ms: latency,
                        retry_count: polls,
                        chunks_present: chunks,
                        result_ready_latency_ms: latency,
                        result_consumption_latency_ms: consumed,
                        is_internal_call: internal,
                    }
                },
            );
        (
            id,
            any::<u64>(),
            outcome,
            0u32..4,
            completion,
            any::<bool>(),
        )
            .prop_map(|(id, latency_ms, outcome, chunks, completion, metadata)| {
                let mut stats = ChunkStats::default();
                for i in 0..chunks {
                    stats.record(i64::from(i) * 7, 1024, i % 2 == 0);
                }
                StatementEnd {
                    statement_type: if metadata {
                        StatementType::Metadata
                    } else {
                        StatementType::Query
                    },
                    operation_type: if metadata {
                        OperationType::ListTables
                    } else {
                        OperationType::ExecuteStatement
                    },
                    statement_id: id.map(Into::into),
                    latency_ms,
                    outcome,
                    chunks: stats,
                    completion,
                    ..StatementEnd::default()
                }
            })
    }

    /// A connection with or without a session and a workspace, its user agent plain or with
    /// characters to escape.
    fn any_connection() -> impl Strategy<Value = Arc<ConnectionInfo>> {
        (
            any::<bool>(),
            proptest::option::of(any::<i64>()),
            prop_oneof![Just("Driver/1.0".to_owned()), "\\PC{0,60}"],
        )
            .prop_map(|(session, workspace, ua)| {
                let mut c = ConnectionInfo::new(host(), ua);
                c.workspace_id = workspace;
                if session {
                    let _ = c.session_id.set("01ef-session \"x\"".into());
                }
                Arc::new(c)
            })
    }

    /// A log of the kinds written by hand, with any of its optional fields present or not.
    fn any_statement_log() -> impl Strategy<Value = TelemetryFrontendLog> {
        use telemetry_types::wire::*;
        let ids = (
            proptest::option::of(any::<i64>()),
            any::<String>(),
            any::<i64>(),
            any::<String>(),
            proptest::option::of(any::<String>()),
            proptest::option::of(any::<String>()),
            proptest::option::of(proptest::sample::select(AuthType::ALL)),
            proptest::option::of(any::<i64>()),
        );
        let operation = (
            proptest::option::of(proptest::sample::select(StatementType::ALL)),
            proptest::option::of(any::<bool>()),
            proptest::option::of(proptest::sample::select(ExecutionResultFormat::ALL)),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of((
                proptest::option::of(proptest::sample::select(OperationType::ALL)),
                proptest::option::of(any::<i32>()),
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<bool>()),
            )),
            proptest::option::of(proptest::array::uniform5(
                proptest::option::of(any::<i32>()),
            )),
            proptest::option::of((
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<i64>()),
            )),
        );
        let error = proptest::option::of((any::<String>(), any::<String>()));
        (ids, proptest::option::of(operation), error).prop_map(|(ids, op, error)| {
            let (ws, event, ts, ua, session, statement, auth, latency) = ids;
            let mut log = TelemetryFrontendLog::new(event, ts, ua);
            log.workspace_id = ws;
            let d = log.driver_log_mut();
            d.session_id = session;
            d.sql_statement_id = statement;
            d.auth_type = auth;
            d.operation_latency_ms = latency;
            d.sql_operation =
                op.map(
                    |(st, comp, fmt, chunk, retry, detail, chunks, result)| SqlExecutionEvent {
                        statement_type: st,
                        is_compressed: comp,
                        execution_result: fmt,
                        chunk_id: chunk,
                        retry_count: retry,
                        operation_detail: detail.map(|(t, n, l, i)| OperationDetail {
                            operation_type: t,
                            n_operation_status_calls: n,
                            operation_status_latency_millis: l,
                            is_internal_call: i,
                        }),
                        chunk_details: chunks.map(|c| ChunkDetails {
                            total_chunks_present: c[0],
                            total_chunks_iterated: c[1],
                            initial_chunk_latency_millis: c[2].map(i64::from),
                            slowest_chunk_latency_millis: c[3].map(i64::from),
                            sum_chunks_download_time_millis: c[4].map(i64::from),
                        }),
                        result_latency: result.map(|(r, c)| ResultLatency {
                            result_set_ready_latency_millis: r,
                            result_set_consumption_latency_millis: c,
                        }),
                    },
                );
            d.error_info = error.map(|(error_name, stack_trace)| DriverErrorInfo {
                error_name,
                stack_trace,
            });
            log
        })
    }

    proptest! {
        /// The hand-written writer (every log without configuration blocks) against serde.
        #[test]
        fn any_statement_shaped_log_encodes_as_the_reference(
            logs in proptest::collection::vec(any_statement_log(), 0..4),
            t in any::<i64>(),
        ) {
            prop_assert_eq!(encode_body(t, logs.iter()).unwrap(), reference(t, &logs));
        }

        /// Rows (built ones and statements built as they are written, in any order) encode
        /// as their logs do, and stripped as their logs stripped do.
        #[test]
        fn any_rows_encode_as_their_logs(
            kinds in proptest::collection::vec(any::<bool>(), 0..6),
            t in any::<i64>(),
            stripped in any::<bool>(),
        ) {
            let c = conn_with(Some("tok"));
            let batch: Vec<TelemetryRow> = kinds
                .iter()
                .enumerate()
                .map(|(i, &statement)| {
                    if statement {
                        statement_rows(&c, i + 1).swap_remove(i)
                    } else {
                        rows(&c, 1).swap_remove(0)
                    }
                })
                .collect();
            let logs: Vec<TelemetryFrontendLog> = batch
                .iter()
                .map(|r| {
                    let mut log = r.log().into_owned();
                    if stripped {
                        row::strip_for_unauthenticated(&mut log);
                    }
                    log
                })
                .collect();
            prop_assert_eq!(
                encode_rows(t, batch.iter(), stripped).unwrap(),
                reference(t, &logs)
            );
        }

        /// A statement's row written from its parts (no log built) is byte for byte the
        /// log `statement_row` builds, written as the reference writes it, ids included.
        #[test]
        fn a_statement_written_from_its_parts_is_its_log_written(
            conns in proptest::collection::vec(any_connection(), 3),
            rows in proptest::collection::vec((0usize..3, any_plain_end(), any::<i64>()), 1..8),
            t in any::<i64>(),
        ) {
            // Rows of a few connections, in runs and interleaved (a connection's parts are
            // written once a run).
            let batch: Vec<TelemetryRow> = rows
                .into_iter()
                .map(|(c, end, at)| TelemetryRow::statement(conns[c].clone(), at, end))
                .collect();
            prop_assert!(batch.iter().all(|r| r.statement_parts().is_some()));
            let logs: Vec<TelemetryFrontendLog> =
                batch.iter().map(|r| r.log().into_owned()).collect();
            prop_assert_eq!(
                String::from_utf8(encode_rows(t, batch.iter(), false).unwrap()).unwrap(),
                String::from_utf8(reference(t, &logs)).unwrap()
            );
        }

        /// A connection whose session id becomes known while a body is being written (the
        /// driver's task sets it as the background task writes): the rows written after it
        /// carry it, the ones before do not, each as its log built at that moment.
        #[test]
        fn a_session_id_known_mid_body_is_in_the_rows_after_it(
            end in any_plain_end(),
            t in any::<i64>(),
        ) {
            let c = Arc::new(ConnectionInfo::new(host(), "Driver/1.0"));
            let rows: Vec<TelemetryRow> = (0..3)
                .map(|i| TelemetryRow::statement(c.clone(), i, end.clone()))
                .collect();
            let mut logs = vec![rows[0].log().into_owned()];
            let rows_as_written = rows.iter().enumerate().map(|(i, r)| {
                if i == 1 {
                    let _ = c.session_id.set("01ef-late-session".into());
                }
                r
            });
            let body = encode_rows(t, rows_as_written, false).unwrap();
            logs.extend(rows[1..].iter().map(|r| r.log().into_owned()));
            prop_assert_eq!(&body, &reference(t, &logs));
            prop_assert_eq!(
                String::from_utf8_lossy(&body).matches("01ef-late-session").count(),
                2
            );
        }

        #[test]
        fn any_text_encodes_as_the_reference(texts in proptest::collection::vec(any::<String>(), 0..4), t in any::<i64>()) {
            let logs: Vec<_> = texts.iter().map(|s| log(s)).collect();
            let body = encode_body(t, logs.iter()).unwrap();
            prop_assert_eq!(&body, &reference(t, &logs));
            let parsed: TelemetryRequest = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(parsed.proto_logs.len(), logs.len());
        }
    }
}

mod fleet_safety {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_exports_against_a_failing_endpoint_cost_it_the_threshold_at_most() {
        let t = Scripted::new(vec![Ok(status(503))]);
        let e = exporter(t.clone());
        let c = conn_with(Some("tok"));
        let exports: Vec<_> = (0..8).map(|_| e.export(rows(&c, 10))).collect();
        join_all(exports).await;
        let s = e.stats();
        // Four in flight fail together, then one at a time: the fifth failure opens the
        // breaker and every loop still in flight stops.
        assert_eq!(t.count(), 5, "{s:?}");
        assert_eq!(e.breaker().state(), BreakerState::Open);
        assert_eq!(s.rows_exported + s.total_dropped(), 80);
        assert_eq!(
            s.dropped(DropReason::BreakerOpen),
            80 - s.dropped(DropReason::Http5xx)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_pauses_every_request_of_the_host() {
        let t = Scripted::new(vec![Ok(with_retry_after(429, "7")), Ok(status(200))]);
        let e = Arc::new(exporter(t.clone()));
        let c = conn_with(Some("tok"));
        let first = e.export(rows(&c, 1));
        let e2 = e.clone();
        let c2 = c.clone();
        let second = async move {
            // Starts after the 429 came back.
            tokio::time::sleep(Duration::from_millis(1)).await;
            e2.export(rows(&c2, 1)).await;
        };
        let start = Instant::now();
        tokio::join!(first, second);
        let times = t.times();
        assert_eq!(times.len(), 3, "the 429, then both rows' requests");
        for at in &times[1..] {
            assert!(*at - start >= Duration::from_secs(7), "{:?}", *at - start);
        }
        assert_eq!(e.stats().rows_exported, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rows_the_server_did_not_accept_are_dropped_with_their_own_reason() {
        let answer = HttpResponse {
            status: 200,
            headers: vec![],
            body: br#"{"errors":["log 3: bad field at https://x.example/?sig=abc"],"numSuccess":0,"numProtoSuccess":3,"numRealtimeSuccess":0}"#.to_vec(),
            body_truncated: false,
        };
        let t = Scripted::new(vec![Ok(answer)]);
        let e = exporter(t.clone());
        e.export(rows(&conn_with(Some("tok")), 5)).await;
        let s = e.stats();
        assert_eq!(
            (s.rows_exported, s.dropped(DropReason::ServerRejected)),
            (3, 2)
        );
        assert_eq!(t.count(), 1, "not retried: the server refused the content");
        let error = s.last_error.unwrap();
        assert!(
            error.contains("bad field") && !error.contains("sig=abc"),
            "{error}"
        );
    }

    #[rstest]
    #[case::no_body(b"".to_vec())]
    #[case::not_json(b"ok".to_vec())]
    #[case::no_count(br#"{"errors":[]}"#.to_vec())]
    #[case::more_than_sent(br#"{"numProtoSuccess":99}"#.to_vec())]
    #[tokio::test(start_paused = true)]
    async fn an_answer_without_a_usable_count_means_all_accepted(#[case] body: Vec<u8>) {
        let answer = HttpResponse {
            status: 200,
            headers: vec![],
            body,
            body_truncated: false,
        };
        let e = exporter(Scripted::new(vec![Ok(answer)]));
        e.export(rows(&conn_with(Some("tok")), 4)).await;
        let s = e.stats();
        assert_eq!((s.rows_exported, s.total_dropped()), (4, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenants_connections_share_requests_whatever_their_provider_objects() {
        let t = Scripted::new(vec![]);
        let e = exporter(t.clone());
        // Three connections, each with its own provider object for the same token, and one
        // of another tenant.
        let same: Vec<_> = (0..3).map(|_| conn_with(Some("token-a"))).collect();
        let other = conn_with(Some("token-b"));
        let batch = |n| {
            let mut b = Vec::new();
            for c in &same {
                b.extend(rows(c, n));
            }
            b.extend(rows(&other, n));
            b
        };
        e.export(batch(2)).await;
        assert_eq!(t.count(), 4, "first batch: each provider asked once");
        e.export(batch(2)).await;
        let reqs = t.requests();
        assert_eq!(reqs.len(), 4 + 2, "then one request per credential");
        let auth_of = |r: &HttpRequest| {
            r.headers
                .iter()
                .find(|(k, _)| k == "Authorization")
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        for r in &reqs[4..] {
            let logs = serde_json::from_slice::<Value>(&r.body).unwrap()["protoLogs"]
                .as_array()
                .unwrap()
                .len();
            match auth_of(r).as_str() {
                "Bearer token-a" => assert_eq!(logs, 6),
                "Bearer token-b" => assert_eq!(logs, 2),
                other => panic!("{other}"),
            }
        }
        assert_eq!(e.stats().rows_exported, 16);
    }
}

/// One request the audit saw: url, authenticated, body, dry run.
type Audited = (String, bool, Vec<u8>, bool);

/// Records what the audit saw.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<Audited>>);

impl telemetry_types::audit::AuditSink for Recorded {
    fn record(&self, r: &telemetry_types::audit::AuditedRequest<'_>) {
        self.0.lock().unwrap().push((
            r.url.to_owned(),
            r.authenticated,
            r.body.to_vec(),
            r.dry_run,
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn the_audit_sees_every_body_as_sent_retries_included() {
    let t = Scripted::new(vec![Ok(status(503)), Ok(status(200))]);
    let audit = Arc::new(Recorded::default());
    let e = exporter(t.clone()).with_audit(Some(audit.clone()), false);
    e.export(rows(&conn_with(Some("tok")), 2)).await;
    let seen = audit.0.lock().unwrap().clone();
    let sent = t.requests();
    assert_eq!((seen.len(), sent.len()), (2, 2), "the retry too");
    for ((url, authenticated, body, dry_run), req) in seen.iter().zip(&sent) {
        assert_eq!((url, body.as_slice()), (&req.url, req.body.as_ref()));
        assert!(*authenticated && !*dry_run);
    }
    assert_eq!(e.stats().rows_exported, 2);
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_sends_nothing_and_counts_its_rows() {
    let t = Scripted::always(200);
    let audit = Arc::new(Recorded::default());
    let e = exporter(t.clone()).with_audit(Some(audit.clone()), true);
    e.export(rows(&conn_with(None), 3)).await;
    assert_eq!(t.count(), 0, "nothing sent");
    let seen = audit.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].0.ends_with("/telemetry-unauth") && !seen[0].1 && seen[0].3);
    let body: Value = serde_json::from_slice(&seen[0].2).unwrap();
    assert_eq!(body["protoLogs"].as_array().unwrap().len(), 3);
    let s = e.stats();
    assert_eq!((s.requests, s.rows_exported), (0, 0));
    assert_eq!(s.rows_dropped.get(DropReason::DryRun), 3);
    assert_eq!(
        e.breaker().stats().failures,
        0,
        "never the endpoint's failure"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_audit_costs_nothing_but_its_record() {
    struct Panics;
    impl telemetry_types::audit::AuditSink for Panics {
        fn record(&self, _: &telemetry_types::audit::AuditedRequest<'_>) {
            panic!("audit bug");
        }
    }
    let t = Scripted::always(200);
    let e = exporter(t.clone()).with_audit(Some(Arc::new(Panics)), false);
    e.export(rows(&conn_with(Some("tok")), 2)).await;
    assert_eq!((t.count(), e.stats().rows_exported), (1, 2));
}

/// A token provider that counts how often it is asked and answers with a token numbered by
/// the call.
#[derive(Default)]
struct RotatingAuth {
    calls: std::sync::atomic::AtomicUsize,
}
impl AuthProvider for RotatingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move { Some(vec![("Authorization".to_owned(), format!("Bearer t{n}"))]) })
    }
}

fn bearer(r: &HttpRequest) -> String {
    r.headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn an_auth_answer_is_reused_for_a_second_then_asked_again() {
    let t = Scripted::always(200);
    let e = exporter(t.clone());
    let auth = Arc::new(RotatingAuth::default());
    let c = conn_with_auth(auth.clone());
    e.export(rows(&c, 2)).await;
    e.export(rows(&c, 2)).await;
    tokio::time::advance(AUTH_REUSE - Duration::from_millis(1)).await;
    e.export(rows(&c, 2)).await;
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1, "one answer, reused");
    tokio::time::advance(Duration::from_millis(1)).await;
    e.export(rows(&c, 2)).await;
    assert_eq!(
        auth.calls.load(Ordering::SeqCst),
        2,
        "asked again once stale"
    );
    let tokens: Vec<String> = t.requests().iter().map(bearer).collect();
    assert_eq!(tokens, ["Bearer t1", "Bearer t1", "Bearer t1", "Bearer t2"]);
    assert_eq!(e.stats().rows_exported, 8);
}

#[rstest]
#[case::unauthorized(401)]
#[case::forbidden(403)]
#[tokio::test(start_paused = true)]
async fn a_token_the_endpoint_refuses_is_asked_again_at_once(#[case] code: u16) {
    let t = Scripted::new(vec![Ok(status(code)), Ok(status(200))]);
    let e = exporter(t.clone());
    let auth = Arc::new(RotatingAuth::default());
    let c = conn_with_auth(auth.clone());
    e.export(rows(&c, 1)).await;
    e.export(rows(&c, 1)).await;
    let tokens: Vec<String> = t.requests().iter().map(bearer).collect();
    assert_eq!(
        tokens,
        ["Bearer t1", "Bearer t2"],
        "the refused token was not reused"
    );
    let s = e.stats();
    assert_eq!((s.rows_exported, s.total_dropped()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_late_answer_is_not_reused() {
    let t = Scripted::always(200);
    let e = exporter_with_quick_auth(t.clone());
    let hung = conn_with_auth(Arc::new(HangingAuth));
    e.export(rows(&hung, 1)).await;
    e.export(rows(&hung, 1)).await;
    // Both waited for the provider (it hangs for good; the second joined its call) and
    // timed out: nothing was remembered in between.
    assert_eq!(e.stats().auth_timeouts, 2);
}
