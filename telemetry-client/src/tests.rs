use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_types::testing::{ScriptedFlagSource, ScriptedTransport};

use super::*;

type FakeServer = ScriptedTransport;
type Flag = ScriptedFlagSource;

fn options(server: &Arc<FakeServer>, flag: &Arc<Flag>) -> ProviderOptions {
    let mut o = ProviderOptions::new("TestDriver", "1.0.0", ClientPreset::jdbc());
    o.config.enabled = true;
    o.config.aggregation.close_timeout = Duration::from_millis(500);
    o.transport = Some(server.clone());
    o.flag_source = Some(flag.clone());
    o.switch = Some(DisableSwitch::Unset);
    o.read_env = false;
    o
}

fn flag(enabled: bool) -> Arc<Flag> {
    Flag::fixed(enabled)
}

fn conn_opts(host: &str) -> ConnectionOptions {
    ConnectionOptions {
        auth: Some(Arc::new(StaticToken::new("tok"))),
        http_path: Some("/sql/protocolv1/o/99/abc".into()),
        session_id: Some("sess".into()),
        ..ConnectionOptions::new(host)
    }
}

/// A statement with two chunks, an error, open and close rows: 4 rows.
fn workload(c: &Connection) {
    c.opened(Duration::from_millis(5));
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id("s1");
    s.chunk(Duration::from_millis(10), 100, true);
    s.chunk(Duration::from_millis(20), 100, false);
    s.complete();
    c.error(&DriverError::new("E", "x"));
    c.closed(Duration::from_millis(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_per_host_shared_and_ref_counted() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(ProviderOptions {
        runtime: Some(tokio::runtime::Handle::current()),
        ..options(&server, &f)
    });
    let a1 = p.connect(conn_opts("a.example"));
    let a2 = p.connect(conn_opts("HTTPS://A.EXAMPLE:443/"));
    let a3 = p.connect(conn_opts("a.example."));
    let b = p.connect(conn_opts("b.example"));
    assert_eq!(p.host_count(), 2);
    assert_eq!(p.ref_count("a.example"), 3);
    assert_eq!(p.ref_count("b.example"), 1);
    assert_eq!(p.stats().clients_created, 2);
    drop(a1);
    a2.close();
    let _ = a2.flush(Duration::from_secs(10)).await;
    assert_eq!(p.ref_count("a.example"), 1, "not closed before the last");
    assert_eq!(p.host_count(), 2);
    a3.close();
    p.wait_closed().await;
    assert_eq!(p.ref_count("a.example"), 0);
    assert_eq!(p.host_count(), 1);
    assert_eq!(p.stats().clients_closed, 1);
    // A new connection after full release gets a fresh client.
    let a4 = p.connect(conn_opts("a.example"));
    assert_eq!(p.stats().clients_created, 3);
    drop(a4);
    drop(b);
    p.wait_closed().await;
    assert_eq!(p.host_count(), 0);
    assert_eq!(p.stats().clients_closed, 3);
    // At most one look-up per client; a client may be released before its background
    // look-up starts (the look-up is then cancelled, as it should be), and closes no longer
    // wait.
    let lookups = f.count();
    assert!(
        lookups <= 3,
        "at most one flag look-up per client: {lookups}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_everything_with_the_right_fields() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(server.rows(), 4);
    let req = server.requests()[0].clone();
    assert_eq!(req.url, "https://a.example/telemetry-ext");
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(body["protoLogs"][0].as_str().unwrap()).unwrap();
    assert_eq!(first["workspace_id"], 99);
    let d = &first["entry"]["sql_driver_log"];
    assert_eq!(d["session_id"], "sess");
    assert_eq!(d["system_configuration"]["driver_name"], "TestDriver");
    assert_eq!(d["system_configuration"]["runtime_name"], "Rust");
    // The statement's chunks were folded by its handle and rode with its completion.
    let statement: serde_json::Value =
        serde_json::from_str(body["protoLogs"][1].as_str().unwrap()).unwrap();
    let op = &statement["entry"]["sql_driver_log"]["sql_operation"];
    assert_eq!(op["chunk_details"]["total_chunks_iterated"], 2);
    assert_eq!(op["chunk_details"]["initial_chunk_latency_millis"], 10);
    assert_eq!(op["chunk_details"]["slowest_chunk_latency_millis"], 20);
    assert_eq!(op["chunk_details"]["sum_chunks_download_time_millis"], 30);
    assert_eq!(op["is_compressed"], true);
    let s = p.stats();
    // Events: opened, the statement (its chunks folded in its handle, sent with its end),
    // the error, closed: one event a row.
    assert_eq!(
        (
            s.events_emitted,
            s.rows_produced,
            s.rows_exported,
            s.total_rows_dropped()
        ),
        (4, 4, 4, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_with_others_alive_flushes_its_rows() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let keep = p.connect(conn_opts("a.example"));
    let c = p.connect(conn_opts("a.example"));
    c.opened(Duration::from_millis(1));
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(server.rows(), 1);
    assert!(keep.is_enabled());
    assert!(format!("{keep:?}").contains("a.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_costs_nothing_and_sends_nothing() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.enabled = false;
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(conn_opts("a.example"));
    assert!(!c.is_enabled());
    workload(&c);
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id("x");
    assert!(s.id().is_none() && !s.is_enabled());
    drop(s);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(p.host_count(), 0);
    assert_eq!(server.count(), 0);
    assert_eq!(f.count(), 0);
    assert_eq!(
        p.stats(),
        ProviderStats {
            disabled_connections: vec![(DisabledReason::Config, 1)],
            ..ProviderStats::default()
        }
    );
    assert_eq!(c_reason(&p), Some(DisabledReason::Config));
    assert_eq!(
        format!("{:?}", p.connect(conn_opts("a.example"))),
        "Connection(disabled: config)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_beats_config_and_flag() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let off = p.connect(ConnectionOptions {
        enabled: Some(false),
        ..conn_opts("a.example")
    });
    assert!(!off.is_enabled());
    assert_eq!(p.host_count(), 0);
    let mut o = options(&server, &f);
    o.config.enabled = false;
    let p2 = TelemetryClientProvider::new(o);
    let on = p2.connect(ConnectionOptions {
        enabled: Some(true),
        ..conn_opts("a.example")
    });
    assert!(on.is_enabled());
    on.opened(Duration::ZERO);
    on.close();
    let _ = on.flush(Duration::from_secs(10)).await;
    assert_eq!(server.rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_switch_beats_everything() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.switch = Some(DisableSwitch::Disabled);
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(ConnectionOptions {
        enabled: Some(true),
        ..conn_opts("a.example")
    });
    assert!(!c.is_enabled());
    assert_eq!(c.disabled_reason(), Some(DisabledReason::EnvSwitch));
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!((server.count(), f.count()), (0, 0));
    assert_eq!(p.stats().disabled(DisabledReason::EnvSwitch), 1);
}

fn c_reason(p: &TelemetryClientProvider) -> Option<DisabledReason> {
    p.connect(conn_opts("a.example")).disabled_reason()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_for_a_disabled_connection_is_visible() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.aggregation.batch_size = 0;
    let p = TelemetryClientProvider::new(o);
    assert_eq!(c_reason(&p), Some(DisabledReason::InvalidConfig));
    let p = TelemetryClientProvider::new(options(&server, &f));
    assert_eq!(
        p.connect(conn_opts("a..b")).disabled_reason(),
        Some(DisabledReason::InvalidHost)
    );
    assert_eq!(c_reason(&p), None, "a live handle has no reason");
    p.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(c_reason(&p), Some(DisabledReason::ShutDown));
    let s = p.stats();
    assert_eq!(
        (
            s.disabled(DisabledReason::InvalidHost),
            s.disabled(DisabledReason::ShutDown)
        ),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_flag_off_sends_nothing_and_turns_the_hot_path_off() {
    let (server, f) = (FakeServer::always(200), flag(false));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c); // may be queued before the flag is known: dropped at export
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.is_enabled() && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert!(!c.is_enabled(), "the flag's answer reached the handle");
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(server.count(), 0);
    let s = p.stats();
    // Only events emitted before the flag was known (some or all of the first workload) were
    // queued; none of the second.
    assert!(s.events_emitted <= 7, "{s:?}");
    assert_eq!(s.rows_exported, 0);
    assert_eq!(s.rows_produced, s.total_rows_dropped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_is_a_disabled_connection() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    for bad in ["", "http://a.example", "user@a.example", "a.example/path"] {
        assert!(!p.connect(conn_opts(bad)).is_enabled(), "{bad}");
    }
    assert_eq!(p.host_count(), 0);
    assert_eq!(p.ref_count("%%"), 0);
    assert!(p.host_stats("a.example").is_none());
}

#[test]
fn works_without_a_runtime() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    let hs = p.host_stats("a.example").unwrap();
    assert_eq!(hs.connections, 1);
    c.close();
    c.flush_blocking(Duration::from_secs(10)).unwrap();
    assert_eq!(server.rows(), 4);
    drop(p);
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime_and_drops_inside_it() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(ProviderOptions {
        runtime: Some(tokio::runtime::Handle::current()),
        ..options(&server, &f)
    });
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(server.rows(), 4);
    // A provider with its own runtime, dropped inside an async context, does not panic.
    let own = TelemetryClientProvider::new(options(&server, &f));
    let c = own.connect(conn_opts("b.example"));
    c.opened(Duration::ZERO);
    drop(c);
    drop(own);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_by_its_deadline_when_the_endpoint_hangs() {
    let (server, f) = (FakeServer::hanging(), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    let started = Instant::now();
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let s = p.stats();
    assert_eq!(s.dropped.get(DropReason::Shutdown), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_every_request_hurts_nothing() {
    let (server, f) = (FakeServer::always(500), flag(true));
    let mut o = options(&server, &f);
    o.config.export.retry.max_retries = 0;
    o.config.aggregation.batch_size = 5;
    // Many small requests, each through the breaker.
    o.config.aggregation.max_batch_size = 5;
    o.config.aggregation.linger = Duration::ZERO;
    o.config.aggregation.max_pending_rows = 50;
    let p = TelemetryClientProvider::new(o);
    let conns: Vec<_> = (0..4).map(|_| p.connect(conn_opts("a.example"))).collect();
    for c in &conns {
        for i in 0..50 {
            let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
            s.attach_id(&format!("s{i}"));
            s.chunk(Duration::from_millis(3), 10, false);
            s.error(&DriverError::new("E", "password=hunter2"));
        }
    }
    for c in conns {
        c.close();
        let _ = c.flush(Duration::from_secs(10)).await;
    }
    let s = p.stats();
    assert_eq!(s.rows_exported, 0);
    assert!(s.breaker_openings >= 1);
    assert!(s.dropped.get(DropReason::BreakerOpen) > 0, "{s:?}");
    assert_eq!(s.rows_produced, s.total_rows_dropped(), "{s:?}");
    let bodies: String = server
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(!bodies.contains("hunter2"), "secrets are redacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_from_several_threads_ride_with_an_abandoned_statement() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id("s1");
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..250u64 {
                    s.chunk(Duration::from_millis(1 + (t * 250 + i) % 7), 10, t == 3);
                }
            });
        }
    });
    drop(s); // never completed: reported as abandoned, chunks included
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let req = server.requests()[0].clone();
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let row: serde_json::Value =
        serde_json::from_str(body["protoLogs"][0].as_str().unwrap()).unwrap();
    let op = &row["entry"]["sql_driver_log"]["sql_operation"];
    assert_eq!(op["chunk_details"]["total_chunks_iterated"], 1000);
    assert_eq!(op["chunk_details"]["slowest_chunk_latency_millis"], 7);
    let sum: u64 = (0..1000u64).map(|n| 1 + n % 7).sum();
    assert_eq!(op["chunk_details"]["sum_chunks_download_time_millis"], sum);
    assert_eq!(op["is_compressed"], true);
    assert_eq!(
        op["operation_detail"]["operation_type"], "CLOSE_STATEMENT",
        "a dropped statement does not look completed"
    );
    assert_eq!(p.stats().events_emitted, 1);
}

/// The end is written into the statement's own state, which the queue shares: clones dropped
/// together on several threads report a statement exactly once, as abandoned when it never
/// ended, and what is recorded after the end is not in its row.
#[rstest::rstest]
#[case::never_ended(false, "CLOSE_STATEMENT")]
#[case::completed(true, "EXECUTE_STATEMENT")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_dropped_together_report_a_statement_once(
    #[case] complete: bool,
    #[case] operation: &str,
) {
    const STATEMENTS: usize = 200;
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    for _ in 0..STATEMENTS {
        let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        s.chunk(Duration::from_millis(3), 10, false);
        if complete {
            s.complete();
        }
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (s, barrier) = (s.clone(), &barrier);
                scope.spawn(move || {
                    s.chunk(Duration::from_millis(5), 10, false);
                    barrier.wait();
                    drop(s);
                });
            }
        });
        drop(s);
    }
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let rows: Vec<serde_json::Value> = sent_logs(&server)
        .into_iter()
        .map(|(_, row)| row)
        .filter(|row| row["entry"]["sql_driver_log"]["sql_operation"]["statement_type"] == "QUERY")
        .collect();
    assert_eq!(rows.len(), STATEMENTS);
    for row in &rows {
        let op = &row["entry"]["sql_driver_log"]["sql_operation"];
        assert_eq!(op["operation_detail"]["operation_type"], operation);
        // Completed: only the chunk before the end; dropped: every chunk until the last drop.
        let chunks = if complete { 1 } else { 5 };
        assert_eq!(op["chunk_details"]["total_chunks_iterated"], chunks);
    }
    assert_eq!(p.stats().events_emitted, STATEMENTS as u64);
    assert_eq!(p.stats().statements_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_the_user_agent_is_removed_not_fatal() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.user_agent = Some("Driver/1.0\r\nX-Injected: yes".into());
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(conn_opts("a.example"));
    assert!(c.is_enabled());
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let req = &server.requests()[0];
    let ua = req
        .headers
        .iter()
        .find(|(k, _)| k == "User-Agent")
        .map(|(_, v)| v.clone());
    assert_eq!(ua.as_deref(), Some("Driver/1.0  X-Injected: yes"));
    assert_eq!(server.rows(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_host_keeps_its_counters_in_the_stats() {
    let (server, f) = (FakeServer::hanging(), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    drop(c); // the close now waits on the hanging endpoint, up to the close timeout
    assert_eq!(p.host_count(), 0);
    let s = p.stats();
    assert_eq!(s.events_emitted, 4, "closing, not vanished: {s:?}");
    assert_eq!(s.clients_closed, 0);
    p.wait_closed().await;
    let s = p.stats();
    assert_eq!((s.events_emitted, s.clients_closed), (4, 1));
    assert_eq!(s.rows_produced, s.total_rows_dropped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_capped() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.max_hosts = 3;
    let p = TelemetryClientProvider::new(o);
    let live: Vec<_> = (0..3)
        .map(|i| p.connect(conn_opts(&format!("h{i}.example"))))
        .collect();
    assert!(live.iter().all(Connection::is_enabled));
    let refused = p.connect(conn_opts("h3.example"));
    assert!(!refused.is_enabled());
    assert!(
        p.connect(conn_opts("h0.example")).is_enabled(),
        "a live host still takes more"
    );
    assert_eq!(
        refused.disabled_reason(),
        Some(DisabledReason::TooManyHosts)
    );
    assert_eq!(
        (
            p.host_count(),
            p.stats().disabled(DisabledReason::TooManyHosts)
        ),
        (3, 1)
    );
}

/// An auth provider that blocks the way the ADBC driver's OAuth providers do.
struct BlockingAuth;
impl AuthProvider for BlockingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(async {
            let token = tokio::task::block_in_place(|| {
                std::thread::sleep(Duration::from_millis(20)); // a blocking token refresh
                "oauth-token".to_owned()
            });
            Some(vec![(
                "Authorization".to_owned(),
                format!("Bearer {token}"),
            )])
        })
    }
}

#[test]
fn an_auth_provider_that_blocks_works_on_the_providers_own_runtime() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(
        ConnectionOptions::new("a.example").with_auth(Arc::new(BlockingAuth), AuthType::OauthM2m),
    );
    workload(&c);
    c.close();
    c.flush_blocking(Duration::from_secs(10)).unwrap();
    let s = p.stats();
    assert_eq!((s.rows_exported, server.rows()), (4, 4), "{s:?}");
    let auth = server.requests()[0]
        .headers
        .iter()
        .find(|(k, _)| k == "Authorization")
        .map(|(_, v)| v.clone());
    assert_eq!(auth.as_deref(), Some("Bearer oauth-token"));
}

/// Every row ends exported or dropped with a reason, exactly once, whatever the endpoint
/// answers, however the close races the export: rows_produced = rows_exported + rows_dropped.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_row_is_accounted_for_under_random_faults_and_close_races() {
    use telemetry_types::classify::TransportErrorKind;
    use telemetry_types::testing::{status, with_retry_after};
    for seed in 1..=200u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let replies: Vec<_> = (0..1 + rnd(6))
            .map(|_| match rnd(8) {
                0 | 1 => Ok(status(200)),
                2 => Ok(status(500)),
                3 => Ok(with_retry_after(503, "1")),
                4 => Ok(status(401)),
                5 => Ok(with_retry_after(429, "2")),
                // A partial success: the server accepted none of the logs.
                6 => Ok(HttpResponse {
                    status: 200,
                    headers: vec![],
                    body: br#"{"errors":["bad"],"numProtoSuccess":0}"#.to_vec(),
                    body_truncated: false,
                }),
                _ => Err(TransportError::new(
                    TransportErrorKind::ConnectionReset,
                    "reset",
                )),
            })
            .collect();
        let server = ScriptedTransport::new(replies);
        if rnd(4) == 0 {
            server.set_hang(true);
        }
        let f = flag(rnd(5) != 0);
        let mut o = options(&server, &f);
        o.runtime = Some(tokio::runtime::Handle::current());
        o.config.aggregation.close_timeout = Duration::from_millis(rnd(3000));
        o.config.aggregation.batch_size = 1 + rnd(5) as usize;
        o.config.export.retry.max_retries = rnd(4) as u32;
        o.config.export.auth_timeout = Duration::from_millis(20);
        // Concurrent exports against a failing endpoint, through the host's pacing.
        o.config.export.max_concurrent_requests = 1 + rnd(4) as usize;
        o.config.aggregation.max_concurrent_exports = 1 + rnd(4) as usize;
        let p = TelemetryClientProvider::new(o);
        let hosts = ["a.example", "b.example"];
        // Plug-ins that panic, hang or block, beside well-behaved ones.
        let conns: Vec<_> = (0..1 + rnd(3))
            .map(|_| {
                let mut opts = conn_opts(hosts[rnd(2) as usize]);
                opts.auth = Some(match rnd(5) {
                    0 => Arc::new(plugins::PanickingAuth) as Arc<dyn AuthProvider>,
                    1 => Arc::new(plugins::HangingAuth),
                    2 => Arc::new(plugins::BlockingAuth),
                    _ => Arc::new(StaticToken::new("tok")),
                });
                if rnd(6) == 0 {
                    opts.transport = Some(Arc::new(plugins::PanickingTransport));
                }
                p.connect(opts)
            })
            .collect();
        for c in &conns {
            for _ in 0..rnd(4) {
                workload(c);
            }
            if rnd(3) == 0 {
                tokio::time::advance(Duration::from_millis(rnd(8000))).await;
            }
        }
        for c in conns {
            if rnd(2) == 0 {
                c.close();
                let _ = c.flush(Duration::from_secs(10)).await;
            } else {
                drop(c);
            }
        }
        p.wait_closed().await;
        let s = p.stats();
        assert_eq!(p.host_count(), 0, "seed {seed}");
        assert_eq!(
            s.rows_produced,
            s.rows_exported + s.total_rows_dropped(),
            "seed {seed}: {s:?}"
        );
        assert_eq!(s.clients_created, s.clients_closed, "seed {seed}");
    }
}

/// Every knob at the ends of its range validates, and a provider built with it neither panics
/// nor loses count, whatever the endpoint does (Duration::MAX and friends are refused by
/// validation; the largest accepted values must work).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_config_knob_at_its_extremes_is_safe() {
    type Knob = fn(&mut TelemetryConfig, bool);
    let knobs: &[(&str, Knob)] = &[
        ("batch_size", |c, max| {
            c.aggregation.batch_size = if max { 10_000 } else { 1 };
            c.aggregation.max_pending_rows =
                c.aggregation.max_pending_rows.max(c.aggregation.batch_size);
        }),
        ("flush_interval", |c, max| {
            c.aggregation.flush_interval = if max {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(1)
            }
        }),
        ("max_pending_rows", |c, max| {
            c.aggregation.max_pending_rows = if max {
                1_000_000
            } else {
                c.aggregation.batch_size
            }
        }),
        ("max_concurrent_exports", |c, max| {
            c.aggregation.max_concurrent_exports = if max { 64 } else { 1 }
        }),
        ("close_timeout", |c, max| {
            c.aggregation.close_timeout = if max {
                Duration::from_secs(600)
            } else {
                Duration::ZERO
            }
        }),
        ("queue_capacity", |c, max| {
            c.aggregation.queue_capacity = if max { 1_000_000 } else { 1 }
        }),
        ("max_buffered_bytes", |c, max| {
            c.aggregation.max_buffered_bytes = if max { 1 << 30 } else { 64 << 10 }
        }),
        ("max_retries", |c, max| {
            c.export.retry.max_retries = if max { 10 } else { 0 }
        }),
        ("backoff", |c, max| {
            let d = if max {
                Duration::from_secs(600)
            } else {
                Duration::ZERO
            };
            c.export.retry.backoff_max = d;
            c.export.retry.backoff_base = d;
            c.export.retry.jitter = if max {
                Duration::from_secs(60)
            } else {
                Duration::ZERO
            };
        }),
        ("max_retry_after", |c, max| {
            c.export.retry.max_retry_after = if max {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            }
        }),
        ("max_total_wait", |c, max| {
            c.export.retry.max_total_wait = if max {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            }
        }),
        ("request_timeout", |c, max| {
            c.export.request_timeout = if max {
                Duration::from_secs(300)
            } else {
                Duration::from_millis(1)
            }
        }),
        ("flag_wait_timeout", |c, max| {
            c.export.flag_wait_timeout = if max {
                Duration::from_secs(600)
            } else {
                Duration::ZERO
            }
        }),
        ("auth_timeout", |c, max| {
            c.export.auth_timeout = if max {
                Duration::from_secs(60)
            } else {
                Duration::from_millis(1)
            }
        }),
        ("breaker", |c, max| {
            let d = if max {
                Duration::from_secs(24 * 3600)
            } else {
                Duration::from_nanos(1)
            };
            c.breaker.open_duration = d;
            c.breaker.max_open_duration = d;
            c.breaker.success_threshold = if max { 1000 } else { 1 };
            c.breaker.half_open_max_probes = if max { 1000 } else { 1 };
        }),
        ("flags", |c, max| {
            let d = if max {
                Duration::from_secs(24 * 3600)
            } else {
                Duration::from_secs(1)
            };
            c.flags.default_ttl = d;
            c.flags.max_ttl = d;
            c.flags.min_ttl = d;
            c.flags.max_failure_backoff = d;
            c.flags.failure_backoff = d;
            c.flags.fetch_guard = if max {
                Duration::from_secs(600)
            } else {
                Duration::from_secs(1)
            };
        }),
        ("max_hosts", |c, max| {
            c.max_hosts = if max { 100_000 } else { 1 }
        }),
    ];
    for (name, set) in knobs {
        for max in [false, true] {
            for fault in [200u16, 503, 0] {
                let server = if fault == 0 {
                    ScriptedTransport::hanging()
                } else {
                    ScriptedTransport::always(fault)
                };
                let f = flag(true);
                let mut o = options(&server, &f);
                o.runtime = Some(tokio::runtime::Handle::current());
                set(&mut o.config, max);
                o.config
                    .validate()
                    .unwrap_or_else(|e| panic!("{name} max={max}: {e}"));
                let p = TelemetryClientProvider::new(o);
                let c = p.connect(conn_opts("a.example"));
                assert!(c.is_enabled(), "{name} max={max}: the config was taken");
                for _ in 0..3 {
                    workload(&c);
                }
                c.close();
                let _ = c.flush(Duration::from_secs(10)).await;
                p.wait_closed().await;
                let s = p.stats();
                assert_eq!(
                    s.rows_produced,
                    s.rows_exported + s.total_rows_dropped(),
                    "{name} max={max} fault={fault}: {s:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_flush_delivers_without_closing_and_names_hung_hosts() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    assert_eq!(p.force_flush(Duration::from_secs(5)).await, Ok(()));
    assert_eq!(server.rows(), 4, "delivered with the connection still open");
    assert!(c.is_enabled());

    let (hung, f) = (FakeServer::hanging(), flag(true));
    let p = TelemetryClientProvider::new(options(&hung, &f));
    let c = p.connect(conn_opts("b.example"));
    workload(&c);
    let err = p.force_flush(Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(
        err,
        TelemetryError::Timeout {
            hosts: vec!["https://b.example".into()]
        }
    );
    assert!(err.to_string().contains("b.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_host_and_refuses_new_connections() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let a = p.connect(conn_opts("a.example"));
    let b = p.connect(conn_opts("b.example"));
    workload(&a);
    workload(&b);
    assert_eq!(p.shutdown(Duration::from_secs(5)).await, Ok(()));
    assert_eq!((server.rows(), p.host_count()), (8, 0));
    assert!(!p.connect(conn_opts("a.example")).is_enabled());
    // A handle still held reports into a closed client: counted, never sent.
    a.opened(Duration::from_millis(1));
    drop((a, b));
    let s = p.stats();
    assert_eq!(s.dropped.get(DropReason::AfterClose), 1);
    assert_eq!((s.clients_created, s.clients_closed), (2, 2));
    assert_eq!(s.rows_produced, s.rows_exported + s.total_rows_dropped());
    assert_eq!(
        p.shutdown(Duration::from_secs(1)).await,
        Ok(()),
        "idempotent"
    );
}

#[test]
fn flush_and_shutdown_have_blocking_forms_for_plain_threads() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    assert_eq!(p.force_flush_blocking(Duration::from_secs(5)), Ok(()));
    assert_eq!(server.rows(), 4);
    workload(&c);
    assert_eq!(p.shutdown_blocking(Duration::from_secs(5)), Ok(()));
    assert_eq!(server.rows(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_enable_sends_without_asking_the_flag() {
    let (server, f) = (FakeServer::always(200), flag(false));
    let mut o = options(&server, &f);
    o.config.force_enable = true;
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(
        (f.count(), server.rows()),
        (0, 4),
        "no look-up; the flag's 'no' is bypassed"
    );
    let mut o = options(&server, &f);
    o.config.force_enable = true;
    o.switch = Some(DisableSwitch::Disabled);
    let p = TelemetryClientProvider::new(o);
    assert_eq!(
        p.connect(conn_opts("a.example")).disabled_reason(),
        Some(DisabledReason::EnvSwitch),
        "the env off switch still wins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_can_bring_its_own_transport_and_headers() {
    let (default, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&default, &f));
    let (own_a, own_b) = (FakeServer::always(200), FakeServer::always(200));
    let a = p.connect(
        conn_opts("h.example")
            .with_transport(own_a.clone())
            .with_header("x-databricks-org-id", "1"),
    );
    let b = p.connect(
        conn_opts("h.example")
            .with_transport(own_b.clone())
            .with_header("x-databricks-org-id", "2"),
    );
    let c = p.connect(conn_opts("h.example").with_header("x-databricks-org-id", "3"));
    for conn in [&a, &b, &c] {
        conn.opened(Duration::from_millis(1));
    }
    p.force_flush(Duration::from_secs(5)).await.unwrap();
    let org = |t: &ScriptedTransport| -> Vec<String> {
        t.requests()
            .iter()
            .flat_map(|r| r.headers.clone())
            .filter(|(k, _)| k == "x-databricks-org-id")
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!((own_a.rows(), org(&own_a)), (1, vec!["1".to_owned()]));
    assert_eq!((own_b.rows(), org(&own_b)), (1, vec!["2".to_owned()]));
    assert_eq!((default.rows(), org(&default)), (1, vec!["3".to_owned()]));
}

#[cfg(feature = "platform-verifier")]
mod optional_features {
    use crate::{HyperTransport, TransportOptions};

    #[test]
    fn the_platform_verifier_builds_a_transport() {
        let options = TransportOptions {
            platform_verifier: true,
            ..TransportOptions::default()
        };
        assert!(HyperTransport::with_options(options).is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flag_look_up_is_visible_per_host() {
    use telemetry_types::flag::FlagError;
    let server = FakeServer::always(200);
    let f = ScriptedFlagSource::new(|_| Err(FlagError::Status(404)));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.is_enabled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = p.stats();
    assert_eq!(s.hosts[0].flag, FlagState::Disabled);
    assert_eq!(s.hosts[0].flag_failure, Some(FlagFailure::Status(404)));
    let hs = p.host_stats("a.example").unwrap();
    assert_eq!(hs.flag_failure, Some(FlagFailure::Status(404)));
    // Once the host is closed its reason stays in the totals, apart from a server's "no".
    c.close();
    p.wait_closed().await;
    let s = p.stats();
    assert_eq!(s.hosts_flag_failed, vec![(FlagFailure::Status(404), 1)]);
    assert_eq!(s.hosts_flag_failed_for(FlagFailure::Status(404)), 1);
    assert_eq!(s.hosts_flag_refused, 0);
    let refused = TelemetryClientProvider::new(options(&server, &flag(false)));
    let d = refused.connect(conn_opts("b.example"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.is_enabled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.close();
    refused.wait_closed().await;
    let s = refused.stats();
    assert_eq!((s.hosts_flag_refused, s.hosts_flag_failed.len()), (1, 0));
}

#[test]
fn try_new_refuses_what_new_would_turn_off() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.aggregation.batch_size = 20_000;
    let err = TelemetryClientProvider::try_new(o.clone()).unwrap_err();
    assert!(matches!(err, BuildError::Config(_)));
    assert!(
        err.to_string().contains("`aggregation.batch_size`"),
        "{err}"
    );
    assert_eq!(
        TelemetryClientProvider::new(o)
            .connect(conn_opts("a.example"))
            .disabled_reason(),
        Some(DisabledReason::InvalidConfig)
    );
    let o = options(&server, &f).with_header("Bad Name", "v");
    assert!(matches!(
        TelemetryClientProvider::try_new(o),
        Err(BuildError::Header(_))
    ));
    assert!(TelemetryClientProvider::try_new(options(&server, &f)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_is_looked_up_through_the_connections_own_transport() {
    let (default, own) = (FakeServer::always(200), FakeServer::always(200));
    let mut o = options(&default, &flag(true));
    o.flag_source = None; // the HTTP flag source
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(conn_opts("a.example").with_transport(own.clone()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while own.count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let get = own.requests()[0].clone();
    assert_eq!(get.method, HttpMethod::Get);
    assert!(
        get.url
            .contains("/api/2.0/connector-service/feature-flags/"),
        "{}",
        get.url
    );
    // With the connection's credentials and its org id (from its http path `/o/99/`).
    let header = |name: &str| {
        get.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-databricks-org-id").as_deref(), Some("99"));
    assert_eq!(header("authorization").as_deref(), Some("Bearer tok"));
    assert_eq!(
        default.count(),
        0,
        "nothing through the provider's transport"
    );
    drop(c);
}

/// Every log the fake server received, parsed, with the path it went to.
fn sent_logs(server: &FakeServer) -> Vec<(String, serde_json::Value)> {
    server
        .requests()
        .iter()
        .flat_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["protoLogs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        r.url.clone(),
                        serde_json::from_str(l.as_str().unwrap()).unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn driver_log(log: &serde_json::Value) -> &serde_json::Value {
    &log["entry"]["sql_driver_log"]
}

/// A driver's own error type, as the ADBC driver's carries: a SQLSTATE and a message.
struct AdbcError {
    sqlstate: &'static str,
    message: &'static str,
}

impl ReportableError for AdbcError {
    fn sqlstate(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.sqlstate.into())
    }
    fn message(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.message.into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sea_statement_lifecycle_with_a_late_id_and_a_shared_handle() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(ConnectionOptions {
        session_id: None,
        ..conn_opts("a.example")
    });
    c.session_opened("01ef-session", Duration::from_millis(40));
    let st = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    assert!(st.id().is_none(), "no id before the execute call answers");
    st.attach_id("01ef-aaaa");
    st.attach_id("01ef-bbbb");
    assert_eq!(st.id(), Some("01ef-aaaa"), "the first id stays");
    st.poll(Duration::from_millis(10));
    st.poll(Duration::from_millis(15));
    st.retry();
    st.result_format(ExecutionResultFormat::ExternalLinks);
    st.chunks_present(8);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let st = st.clone();
            s.spawn(move || {
                for i in 0..4u64 {
                    st.chunk(Duration::from_millis(10 + t * 4 + i), 100, false);
                }
            });
        }
    });
    st.result_ready();
    st.result_consumed();
    let reader = st.clone();
    st.complete();
    reader.close(); // the reader's close after completion: ignored, counted
    drop(reader);
    drop(st);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let logs = sent_logs(&server);
    assert_eq!(logs.len(), 2);
    assert_eq!(driver_log(&logs[0].1)["session_id"], "01ef-session");
    let d = driver_log(&logs[1].1);
    assert_eq!(
        d["session_id"], "01ef-session",
        "the late session id on later rows"
    );
    assert_eq!(d["sql_statement_id"], "01ef-aaaa");
    let op = &d["sql_operation"];
    assert_eq!(
        op["operation_detail"]["operation_type"],
        "EXECUTE_STATEMENT"
    );
    assert_eq!(op["operation_detail"]["n_operation_status_calls"], 2);
    assert_eq!(
        op["operation_detail"]["operation_status_latency_millis"],
        25
    );
    assert_eq!(op["retry_count"], 1);
    assert_eq!(op["execution_result"], "EXTERNAL_LINKS");
    assert_eq!(op["chunk_details"]["total_chunks_present"], 8);
    assert_eq!(op["chunk_details"]["total_chunks_iterated"], 8);
    assert_eq!(op["chunk_details"]["slowest_chunk_latency_millis"], 17);
    assert!(op["result_latency"]["result_set_ready_latency_millis"].is_i64());
    assert!(op["result_latency"]["result_set_consumption_latency_millis"].is_i64());
    let s = p.stats();
    assert_eq!(s.statement_endings_ignored, 1);
    assert_eq!((s.rows_exported, s.total_rows_dropped()), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_statement_ends_has_its_own_row() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    // The execute call failed: no id, the error on the statement's row.
    let failed = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    failed.fail(&AdbcError {
        sqlstate: "42P01",
        message: "table not found: SELECT * FROM t WHERE x = 'secret'",
    });
    failed.complete(); // ignored
    // Cancelled while polling.
    let cancelled = c.statement(StatementType::Query, OperationType::ExecuteStatementAsync);
    cancelled.attach_id("01ef-c");
    cancelled.poll(Duration::from_millis(5));
    cancelled.cancel();
    // Closed before completion.
    let closed = c.metadata(OperationType::ListCrossReferences);
    closed.close();
    // Dropped after recording: the row keeps what was recorded.
    let dropped = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    dropped.attach_id("01ef-d");
    dropped.result_format(ExecutionResultFormat::InlineArrow);
    dropped.poll(Duration::from_millis(3));
    let clone = dropped.clone();
    drop(dropped);
    drop(clone);
    // A volume PUT: the local file as its name only.
    let volume = c.volume(
        VolumeOperationType::Put,
        "/Volumes/main/default/v/f.csv",
        Some("/home/alice/f.csv"),
    );
    volume.complete();
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    // The failed statement went at once, in a request of its own; the rest at the close. The
    // requests may finish in either order: find the rows by what they are.
    let logs = sent_logs(&server);
    let mut ops: Vec<_> = logs
        .iter()
        .map(|(_, l)| {
            driver_log(l)["sql_operation"]["operation_detail"]["operation_type"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    ops.sort();
    assert_eq!(
        ops,
        [
            "CANCEL_STATEMENT",
            "CLOSE_STATEMENT",
            "CLOSE_STATEMENT",
            "EXECUTE_STATEMENT",
            "EXECUTE_STATEMENT"
        ]
    );
    let find = |f: &dyn Fn(&serde_json::Value) -> bool| {
        logs.iter()
            .map(|(_, l)| driver_log(l))
            .find(|d| f(d))
            .unwrap()
            .clone()
    };
    let failed = find(&|d| d.get("error_info").is_some());
    assert!(failed.get("sql_statement_id").is_none());
    assert_eq!(failed["error_info"]["error_name"], "42P01");
    assert_eq!(
        failed["error_info"]["stack_trace"], "table not found: [REDACTED SQL]",
        "SQL quoted in a message never leaves the process"
    );
    let cancelled =
        find(&|d| d["sql_operation"]["operation_detail"]["operation_type"] == "CANCEL_STATEMENT");
    assert_eq!(cancelled["sql_statement_id"], "01ef-c");
    let metadata = find(&|d| d["sql_operation"]["statement_type"] == "METADATA");
    assert_eq!(
        metadata["sql_operation"]["operation_detail"]["operation_type"],
        "CLOSE_STATEMENT"
    );
    let dropped = find(&|d| d["sql_statement_id"] == "01ef-d");
    assert_eq!(dropped["sql_statement_id"], "01ef-d");
    assert_eq!(dropped["sql_operation"]["execution_result"], "INLINE_ARROW");
    assert_eq!(
        dropped["sql_operation"]["operation_detail"]["n_operation_status_calls"],
        1
    );
    let volume = find(&|d| d.get("vol_operation").is_some());
    assert_eq!(volume["sql_operation"]["statement_type"], "VOLUME");
    assert_eq!(volume["vol_operation"]["local_file"], "f.csv");
    assert_eq!(volume["vol_operation"]["volume_operation_type"], "PUT");
    let s = p.stats();
    assert_eq!(s.statement_endings_ignored, 1);
    assert_eq!((s.rows_exported, s.total_rows_dropped()), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_failure_and_a_chunk_failure_are_sent_at_once() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.aggregation.flush_interval = Duration::from_secs(3600);
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(conn_opts("a.example"));
    let st = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    st.attach_id("01ef-s");
    st.chunk(Duration::from_millis(9), 10, true);
    st.chunk_failed(
        1,
        &DriverError::new("CloudFetchError", "GET https://b/x?X-Amz-Signature=s")
            .with_http_status(403),
    );
    let wait = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.rows() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.rows()
    };
    assert_eq!(
        wait(1),
        1,
        "the chunk failure went without waiting for the interval"
    );
    // A terminal error ends the statement (its chunks kept) and is sent at once.
    st.error(&AdbcError {
        sqlstate: "28000",
        message: "token expired",
    });
    assert_eq!(wait(2), 2);
    let logs = sent_logs(&server);
    let chunk = driver_log(&logs[0].1);
    assert_eq!(chunk["sql_operation"]["chunk_id"], 1);
    assert_eq!(
        chunk["sql_operation"]["chunk_details"]["total_chunks_iterated"],
        1
    );
    assert_eq!(chunk["sql_statement_id"], "01ef-s");
    let ended = driver_log(&logs[1].1);
    assert_eq!(ended["error_info"]["stack_trace"], "token expired");
    assert_eq!(
        ended["sql_operation"]["chunk_details"]["initial_chunk_latency_millis"],
        9
    );
    st.complete(); // after the terminal error: ignored
    assert_eq!(p.stats().statement_endings_ignored, 1);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_open_without_credentials_goes_to_the_unauthenticated_endpoint() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(ConnectionOptions {
        auth: None,
        session_id: None,
        ..conn_opts("a.example")
    });
    c.open_failed(
        Duration::from_millis(12),
        &AdbcError {
            sqlstate: "08001",
            message: "connect https://u:p@a.example refused",
        },
    );
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let logs = sent_logs(&server);
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].0, "https://a.example/telemetry-unauth");
    let d = driver_log(&logs[0].1);
    assert_eq!(
        d["sql_operation"]["operation_detail"]["operation_type"],
        "CREATE_SESSION"
    );
    assert_eq!(d["error_info"]["error_name"], "08001");
    assert_eq!(
        d["error_info"]["stack_trace"], "",
        "no trace without credentials"
    );
    assert!(d.get("session_id").is_none() && logs[0].1.get("workspace_id").is_none());
}

#[test]
fn a_disabled_statement_handle_does_nothing_and_allocates_nothing() {
    let st = Statement::disabled();
    let clone = st.clone();
    clone.attach_id("x");
    clone.chunk(Duration::from_millis(1), 1, true);
    clone.fail(&DriverError::new("E", "m"));
    st.complete();
    assert!(!st.is_enabled() && st.id().is_none());
    assert_eq!(format!("{st:?}"), "Statement(disabled)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_header_disables_only_its_own_connection_and_the_breaker_never_hears_of_it() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(ProviderOptions {
        runtime: Some(tokio::runtime::Handle::current()),
        ..options(&server, &f)
    });
    for (name, value) in [
        ("x-bad", "1\r\nX-Injected: 1"),
        ("bad name", "1"),
        ("Authorization", "Bearer other"),
        ("Host", "evil.example"),
        ("Content-Length", "5"),
    ] {
        let bad = p.connect(conn_opts("a.example").with_header(name, value));
        assert_eq!(bad.disabled_reason(), Some(DisabledReason::InvalidHeader));
        assert!(
            conn_opts("a.example").try_with_header(name, value).is_err(),
            "{name}: a clear error when asked up front"
        );
    }
    let big = p.connect(conn_opts("a.example").with_header("x-big", "v".repeat(1 << 20)));
    assert_eq!(big.disabled_reason(), Some(DisabledReason::InvalidHeader));
    let clean = p.connect(conn_opts("a.example"));
    for _ in 0..20 {
        workload(&clean);
    }
    clean.close();
    let _ = clean.flush(Duration::from_secs(10)).await;
    p.wait_closed().await;
    let s = p.stats();
    assert_eq!(
        s.rows_exported, 80,
        "the clean connection's rows all delivered"
    );
    assert_eq!(
        s.disabled_connections
            .iter()
            .find(|(r, _)| *r == DisabledReason::InvalidHeader)
            .map(|(_, n)| *n),
        Some(6)
    );
    // A provider-level refused header turns the provider off, visibly.
    let off = TelemetryClientProvider::new(options(&server, &f).with_header("Connection", "close"));
    let c = off.connect(conn_opts("a.example"));
    assert_eq!(c.disabled_reason(), Some(DisabledReason::InvalidHeader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_set_at_both_levels_is_sent_once_the_connections_winning() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(ProviderOptions {
        runtime: Some(tokio::runtime::Handle::current()),
        ..options(&server, &f).with_header("X-Databricks-Org-Id", "1")
    });
    let c = p.connect(conn_opts("a.example").with_header("x-databricks-org-id", "2"));
    workload(&c);
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let req = &server.requests()[0];
    let org: Vec<_> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-databricks-org-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(org, ["2"]);
}

#[test]
fn a_connection_outliving_its_provider_still_delivers_its_rows() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    drop(p);
    workload(&c);
    // The last connection's close is the host's final flush, on the provider's runtime.
    c.close();
    c.flush_blocking(Duration::from_secs(10)).unwrap();
    assert_eq!(
        server.rows(),
        4,
        "the runtime ran until the connection closed"
    );
}

#[tokio::test]
async fn a_unicode_host_is_refused_with_a_reason() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(ProviderOptions {
        runtime: Some(tokio::runtime::Handle::current()),
        ..options(&server, &f)
    });
    let c = p.connect(conn_opts("wörkspace.example"));
    assert_eq!(c.disabled_reason(), Some(DisabledReason::InvalidHost));
    assert_eq!(p.host_count(), 0);
}

#[test]
fn a_callers_runtime_shut_down_counts_every_event_it_loses() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = TelemetryClientProvider::new(ProviderOptions {
        runtime: Some(rt.handle().clone()),
        ..options(&server, &f)
    });
    let c = p.connect(conn_opts("a.example"));
    c.opened(Duration::from_millis(1));
    drop(rt);
    workload(&c);
    let s = p.stats();
    // One open, then the workload's open, statement end, error and close.
    assert_eq!(s.events_emitted, 5);
    assert_eq!(s.dropped.get(DropReason::RuntimeGone), 5);
    assert_eq!(s.rows_produced, 0);
    assert_eq!(server.count(), 0);
}

/// Plug-ins that misbehave, for the accounting tests.
mod plugins {
    use telemetry_types::BoxFuture;
    use telemetry_types::auth::AuthProvider;
    use telemetry_types::transport::{HttpRequest, HttpResponse, HttpTransport, TransportError};

    type Headers = Option<Vec<(String, String)>>;

    pub(super) struct PanickingAuth;
    impl AuthProvider for PanickingAuth {
        fn auth_headers(&self) -> BoxFuture<'_, Headers> {
            panic!("auth provider bug")
        }
    }

    pub(super) struct HangingAuth;
    impl AuthProvider for HangingAuth {
        fn auth_headers(&self) -> BoxFuture<'_, Headers> {
            Box::pin(std::future::pending())
        }
    }

    /// Blocks its thread briefly, as a synchronous token refresh does.
    pub(super) struct BlockingAuth;
    impl AuthProvider for BlockingAuth {
        fn auth_headers(&self) -> BoxFuture<'_, Headers> {
            std::thread::sleep(std::time::Duration::from_millis(2));
            Box::pin(async { Some(vec![("Authorization".into(), "Bearer b".into())]) })
        }
    }

    pub(super) struct PanickingTransport;
    impl HttpTransport for PanickingTransport {
        fn send(&self, _r: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
            Box::pin(async { panic!("transport bug") })
        }
    }
}

mod open_statements {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_open_are_shown_and_those_open_at_close_are_counted() {
        let (server, f) = (FakeServer::always(200), flag(true));
        let p = TelemetryClientProvider::new(options(&server, &f));
        let c = p.connect(conn_opts("a.example"));
        let done = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        let open: Vec<_> = (0..3)
            .map(|_| c.statement(StatementType::Query, OperationType::ExecuteStatement))
            .collect();
        let other = p.connect(conn_opts("b.example"));
        let dropped = other.metadata(OperationType::ListCatalogs);
        let s = p.stats();
        assert_eq!(s.statements_open, 5);
        assert_eq!(p.host_stats("a.example").unwrap().statements_open, 4);
        done.complete();
        drop(dropped); // abandoned: ended, its row reported
        assert_eq!(p.stats().statements_open, 3);
        c.close();
        let _ = c.flush(Duration::from_secs(10)).await;
        other.close();
        let _ = other.flush(Duration::from_secs(10)).await;
        let s = p.stats();
        assert_eq!((s.statements_open, s.statements_open_at_close), (0, 3));
        assert_eq!((s.events_emitted, s.rows_exported), (2, 2));
        // One of them ends later: its end is dropped after close, counted once more.
        open[0].fail(&DriverError::new("E", "late"));
        let s = p.stats();
        assert_eq!(s.events_emitted, 3);
        assert_eq!(s.dropped.get(DropReason::AfterClose), 1);
        assert_eq!(
            s.statements_open_at_close, 3,
            "counted when the host closed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handle_leaked_past_close_keeps_only_the_hosts_intake() {
        let (server, f) = (FakeServer::always(200), flag(true));
        let p = TelemetryClientProvider::new(options(&server, &f));
        let c = p.connect(conn_opts("a.example"));
        let client = p.registry().live().pop().unwrap();
        let (exporter, flag_handle) = (
            Arc::downgrade(&client.exporter),
            Arc::downgrade(&client.flag),
        );
        drop(client);
        let leaked = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        c.close();
        let _ = c.flush(Duration::from_secs(10)).await;
        p.wait_closed().await;
        assert!(
            exporter.upgrade().is_none(),
            "the exporter (its transport, its pool) is freed"
        );
        assert!(flag_handle.upgrade().is_none(), "the flag's refresh stops");
        assert_eq!(p.stats().statements_open_at_close, 1);
        std::mem::forget(leaked);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_counts_the_statements_it_cuts_off() {
        let (server, f) = (FakeServer::always(200), flag(true));
        let p = TelemetryClientProvider::new(options(&server, &f));
        let c = p.connect(conn_opts("a.example"));
        let st = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        c.opened(Duration::from_millis(1));
        p.shutdown(Duration::from_secs(5)).await.unwrap();
        let s = p.stats();
        assert_eq!((s.statements_open, s.statements_open_at_close), (0, 1));
        st.complete();
        drop(c);
        let s = p.stats();
        assert_eq!(s.events_emitted, 2);
        assert_eq!(
            s.events_emitted,
            s.rows_produced + s.events_dropped(),
            "{s:?}"
        );
        assert_eq!(s.rows_produced, s.rows_exported + s.total_rows_dropped());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_queued_ahead_of_the_close_never_cost_the_totals() {
    let (server, f) = (FakeServer::hanging(), flag(true));
    let mut o = options(&server, &f);
    o.config.aggregation.close_timeout = Duration::from_millis(300);
    let p = TelemetryClientProvider::new(o);
    let (a, b) = (
        p.connect(conn_opts("a.example")),
        p.connect(conn_opts("a.example")),
    );
    workload(&a);
    workload(&b);
    // Callers flush ahead of the close: each flush holds the host's task up to the close
    // timeout, so the close runs late, after its own deadline and settle time.
    let flushes: Vec<_> = (0..3)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.flush(Duration::from_secs(5)).await })
        })
        .collect();
    // The first flush's export has reached the (hanging) endpoint.
    server.received(1).await;
    a.close();
    b.close();
    // Close returned before the host's final flush, which cannot end before its deadline.
    assert_eq!(p.stats().clients_closed, 0, "close never waits");
    for f in flushes {
        let _ = f.await;
    }
    p.wait_closed().await;
    let s = p.stats();
    assert_eq!(s.rows_produced, 8, "{s:?}");
    assert_eq!(
        s.rows_produced,
        s.rows_exported + s.total_rows_dropped(),
        "{s:?}"
    );
    assert_eq!(s.clients_closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_of_one_database_share_requests_through_its_transport() {
    let (default, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&default, &f));
    // One transport per database (its reqwest client), shared by the database's connections,
    // each with its own provider object for the same token.
    let database = FakeServer::always(200);
    let conns: Vec<_> = (0..4)
        .map(|_| p.connect(conn_opts("h.example").with_transport(database.clone())))
        .collect();
    for c in &conns {
        c.opened(Duration::from_millis(1));
    }
    p.force_flush(Duration::from_secs(5)).await.unwrap();
    let first = database.count();
    for c in &conns {
        c.opened(Duration::from_millis(1));
    }
    p.force_flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(database.rows(), 8);
    assert_eq!(
        database.count() - first,
        1,
        "once the credentials are known, one request for the four connections"
    );
    assert_eq!(default.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_takes_only_metadata_operations_and_maps_a_drivers_calls() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    let refused = c.metadata(OperationType::ExecuteStatement);
    assert!(!refused.is_enabled());
    refused.complete();
    let procedures = OperationType::for_metadata_call("list_procedures").unwrap();
    c.metadata(procedures).complete();
    c.close();
    c.flush(Duration::from_secs(5)).await.unwrap();
    let s = p.stats();
    assert_eq!((s.statements_refused, s.rows_exported), (1, 1));
    let ops: Vec<_> = sent_logs(&server)
        .iter()
        .map(|(_, l)| driver_log(l)["sql_operation"]["operation_detail"]["operation_type"].clone())
        .collect();
    assert_eq!(ops, ["LIST_FUNCTIONS"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_path_is_given_once_and_a_known_workspace_id_wins() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let path = "/sql/1.0/warehouses/abc?o=42";
    let params = DriverConnectionParameters {
        mode: Some(DriverMode::Sea),
        ..Default::default()
    };
    let from_path = p.connect(
        conn_opts("a.example")
            .with_http_path(path)
            .with_connection_params(params.clone()),
    );
    let known = p.connect(
        conn_opts("b.example")
            .with_http_path(path)
            .with_workspace_id(7)
            .with_connection_params(params),
    );
    for c in [&from_path, &known] {
        c.opened(Duration::from_millis(1));
    }
    p.force_flush(Duration::from_secs(5)).await.unwrap();
    let mut seen: Vec<(i64, String)> = sent_logs(&server)
        .iter()
        .map(|(_, l)| {
            (
                l["workspace_id"].as_i64().unwrap(),
                driver_log(l)["driver_connection_params"]["http_path"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [(7, path.to_owned()), (42, path.to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_starts_until_an_enabled_connection_needs_it() {
    let f = flag(true);
    let mut o = options(&FakeServer::always(200), &f);
    o.transport = None; // the default transport, built only if a connection needs it
    o.config.enabled = false;
    let p = TelemetryClientProvider::new(o.clone());
    let off = p.connect(conn_opts("a.example"));
    assert_eq!(off.disabled_reason(), Some(DisabledReason::Config));
    assert!(!p.is_started(), "telemetry off: no runtime, no flag cache");
    assert!(!p.default_transport_built());
    assert_eq!(p.stats().events_emitted, 0);
    p.force_flush(Duration::from_secs(1)).await.unwrap();

    // Every connection brings its own transport: the runtime starts, the default transport
    // is never built, and rows go out through the connection's.
    o.config.enabled = true;
    let p = TelemetryClientProvider::new(o);
    assert!(!p.is_started());
    let own = FakeServer::always(200);
    let c = p.connect(conn_opts("a.example").with_transport(own.clone()));
    assert!(p.is_started());
    assert!(!p.default_transport_built());
    c.opened(Duration::from_millis(3));
    c.close();
    c.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(own.rows(), 1);
    assert!(!p.default_transport_built());
    // A connection without one builds it.
    let plain = p.connect(conn_opts("b.example"));
    assert!(plain.disabled_reason().is_none());
    assert!(p.default_transport_built());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_attached_later_are_waited_for_and_used() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c =
        p.connect(ConnectionOptions::new("a.example").with_auth_later(AuthType::ExternalBrowser));
    c.opened(Duration::from_millis(3));
    // The wait itself is timed on a paused clock in telemetry-flags; here: had the look-up
    // not waited, it would have asked without credentials (count_with_auth 0 below).
    assert_eq!(p.host_stats("a.example").unwrap().flag, FlagState::Unknown);
    c.attach_auth(Arc::new(StaticToken::new("late-token")));
    c.close();
    c.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!((f.count(), f.count_with_auth()), (1, 1));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].url.ends_with("/telemetry-ext"),
        "{}",
        requests[0].url
    );
    assert!(
        requests[0]
            .headers
            .iter()
            .any(|(k, v)| k == "Authorization" && v == "Bearer late-token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_credentials_that_never_come_is_bounded_and_counted() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.flags.credentials_wait = Duration::from_millis(100);
    let p = TelemetryClientProvider::new(o);
    let c =
        p.connect(ConnectionOptions::new("a.example").with_auth_later(AuthType::ExternalBrowser));
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.is_enabled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hs = p.host_stats("a.example").unwrap();
    assert_eq!(
        (hs.flag, hs.flag_failure),
        (FlagState::Disabled, Some(FlagFailure::Auth))
    );
    assert_eq!(f.count(), 0, "never asked without the credentials");
    // A later connection's credentials are tried at once.
    let d = p.connect(conn_opts("a.example"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.host_stats("a.example").unwrap().flag != FlagState::Enabled && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((f.count(), f.count_with_auth()), (1, 1));
    drop((c, d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_credentials_looks_the_flag_up_through_its_own_transport() {
    let (default, own) = (FakeServer::always(200), FakeServer::always(200));
    let mut o = options(&default, &flag(true));
    o.flag_source = None; // the HTTP flag source
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(ConnectionOptions::new("a.example").with_transport(own.clone()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while own.count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(own.requests()[0].method, HttpMethod::Get);
    assert_eq!(
        default.count(),
        0,
        "nothing through the provider's transport"
    );
    drop(c);
}

/// Built without `hyper-transport` (`cargo xtask ci` runs these): no second TLS stack, and a
/// connection must bring its own transport.
#[cfg(not(feature = "hyper-transport"))]
mod without_default_transport {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_needs_its_own_transport() {
        let mut o = options(&FakeServer::always(200), &flag(true));
        o.transport = None;
        let p = TelemetryClientProvider::new(o);
        let none = p.connect(conn_opts("a.example"));
        assert_eq!(none.disabled_reason(), Some(DisabledReason::TransportSetup));
        let own = FakeServer::always(200);
        let c = p.connect(conn_opts("a.example").with_transport(own.clone()));
        assert_eq!(c.disabled_reason(), None);
        c.opened(Duration::from_millis(1));
        c.close();
        c.flush(Duration::from_secs(5)).await.unwrap();
        assert_eq!(own.rows(), 1);
        assert_eq!(
            p.stats().disabled_connections,
            vec![(DisabledReason::TransportSetup, 1)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_set_after_the_provider_exists_apply() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.config.enabled = false; // the database is made first; its options come later
    let p = TelemetryClientProvider::new(o);
    p.apply_option("databricks.telemetry.enabled", "true")
        .unwrap();
    p.apply_option("telemetryBatchSize", "1").unwrap();
    p.apply_option("telemetryMaxBatchSize", "1").unwrap();
    p.apply_option("telemetryLingerMs", "0").unwrap();
    let err = p.apply_option("telemetryBatchSize", "0").unwrap_err();
    assert!(matches!(err, OptionError::Invalid(_)), "{err}");
    assert_eq!(
        p.config().aggregation.batch_size,
        1,
        "unchanged by the refused value"
    );
    assert!(matches!(
        p.apply_option("databricks.catalog", "main"),
        Err(OptionError::UnknownKey { .. })
    ));
    let c = p.connect(conn_opts("a.example"));
    assert!(c.disabled_reason().is_none(), "enabled by the late option");
    c.opened(Duration::from_millis(1));
    c.closed(Duration::from_millis(1));
    // Started: the settings `connect` reads still change, the others are refused.
    assert!(matches!(
        p.apply_option("telemetryBatchSize", "50"),
        Err(OptionError::TooLate { .. })
    ));
    assert_eq!(p.config().aggregation.batch_size, 1);
    p.apply_option("telemetryEnabled", "false").unwrap();
    assert_eq!(
        p.connect(conn_opts("a.example")).disabled_reason(),
        Some(DisabledReason::Config)
    );
    c.close();
    c.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (server.count(), server.rows()),
        (2, 2),
        "batch size 1: one request per row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_org_id_of_the_http_path_rides_on_every_authenticated_export() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let org = |r: &HttpRequest| {
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-databricks-org-id"))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    // From the path (`/o/99/`), and a header the driver set wins over it: one value each.
    let derived = p.connect(conn_opts("a.example"));
    let explicit = p.connect(conn_opts("b.example").with_header("X-Databricks-Org-Id", "7"));
    for c in [&derived, &explicit] {
        c.opened(Duration::from_millis(1));
        c.close();
        c.flush(Duration::from_secs(5)).await.unwrap();
    }
    let mut seen: Vec<_> = server.requests().iter().map(org).collect();
    seen.sort();
    assert_eq!(seen, vec![vec!["7".to_owned()], vec!["99".to_owned()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_what_would_be_sent_and_sends_nothing() {
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(String, serde_json::Value, bool)>>);
    impl AuditSink for Seen {
        fn record(&self, r: &AuditedRequest<'_>) {
            let body = serde_json::from_slice(r.body).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((r.url.to_owned(), body, r.dry_run));
        }
    }
    let (server, f) = (FakeServer::always(200), flag(true));
    let seen = Arc::new(Seen::default());
    let mut o = options(&server, &f).with_audit(seen.clone());
    o.config.dry_run = true;
    let p = TelemetryClientProvider::new(o);
    let c = p.connect(conn_opts("a.example"));
    workload(&c);
    c.close();
    c.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (server.count(), f.count()),
        (0, 0),
        "no export, no flag look-up"
    );
    let seen = seen.0.lock().unwrap().clone();
    let logs: usize = seen
        .iter()
        .map(|(_, body, _)| body["protoLogs"].as_array().unwrap().len())
        .sum();
    assert_eq!(logs, 4, "every row, as it would have been sent");
    assert!(
        seen.iter()
            .all(|(url, _, dry)| url.ends_with("/telemetry-ext") && *dry)
    );
    let s = p.stats();
    assert_eq!((s.rows_exported, s.dropped.get(DropReason::DryRun)), (0, 4));
    assert_eq!(s.rows_produced, s.total_rows_dropped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_percentiles_per_host_and_over_every_host_live_or_closed() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let a = p.connect(conn_opts("a.example"));
    let b = p.connect(conn_opts("b.example"));
    for (c, n) in [(&a, 10u64), (&b, 30)] {
        for _ in 0..n {
            let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
            s.chunk(Duration::from_millis(40), 100, true);
            s.chunk(Duration::from_millis(60), 100, true);
            s.complete();
        }
    }
    p.force_flush(Duration::from_secs(5)).await.unwrap();
    let s = p.stats();
    let host = |name: &str| {
        s.hosts
            .iter()
            .find(|h| h.host.contains(name))
            .unwrap()
            .latency
    };
    assert_eq!(host("a.example").statement.unwrap().count, 10);
    assert_eq!(host("b.example").statement.unwrap().count, 30);
    let all = s.latency;
    assert_eq!(all.statement.unwrap().count, 40);
    let chunk = all.chunk.unwrap();
    assert_eq!(chunk.count, 40, "one mean per statement with chunks");
    let p50 = chunk.p50.as_secs_f64() * 1000.0;
    assert!((49.0..=51.0).contains(&p50), "mean of 40 and 60 ms: {p50}");
    assert_eq!(all.first_result, None, "no result_ready recorded");
    // A closed host's values stay in the totals.
    a.close();
    p.wait_closed().await;
    assert_eq!(p.stats().latency.statement.unwrap().count, 40);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_options_set_the_system_configuration_of_later_connections() {
    let (server, f) = (FakeServer::always(200), flag(true));
    let mut o = options(&server, &f);
    o.apply_option("runtime_version", "node 22.3.0").unwrap();
    o.apply_option("telemetry.client_app_name", "Tableau")
        .unwrap();
    o.apply_option("telemetryBatchSize", "50").unwrap();
    assert_eq!(o.config.aggregation.batch_size, 50);
    let p = TelemetryClientProvider::new(o);
    p.apply_option("locale_name", "de_DE").unwrap();
    p.apply_option("process_name", "/home/alice/bin/etl")
        .unwrap();
    let c = p.connect(conn_opts("a.example"));
    c.opened(Duration::from_millis(1));
    c.close();
    c.flush(Duration::from_secs(5)).await.unwrap();
    let body = &server.bodies()[0];
    let log: serde_json::Value =
        serde_json::from_str(body["protoLogs"][0].as_str().unwrap()).unwrap();
    let sys = &log["entry"]["sql_driver_log"]["system_configuration"];
    assert_eq!(sys["runtime_version"], "node 22.3.0");
    assert_eq!(sys["client_app_name"], "Tableau");
    assert_eq!(sys["locale_name"], "de_DE");
    assert_eq!(sys["driver_name"], "TestDriver");
    let process = sys["process_name"].as_str().unwrap();
    assert!(
        !process.contains("alice"),
        "redacted as every driver string: {process}"
    );
}

/// Every call is accounted: emitted, or counted as not reported with its reason. The calls
/// run on this test's own thread, whose counts are read alone (other tests count in theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_emitted_or_counted_as_not_reported() {
    use crate::unreported::this_thread;
    let transient = AdbcError {
        sqlstate: "08S01",
        message: "warehouse busy",
    };
    let terminal = AdbcError {
        sqlstate: "42P01",
        message: "no such table",
    };
    assert_ne!(DriverError::class_of(&transient), ErrorClass::Terminal);
    assert_eq!(DriverError::class_of(&terminal), ErrorClass::Terminal);
    let calls = |c: &Connection| {
        c.session_opened("sess", Duration::from_millis(1)); // 1
        for _ in 0..3 {
            let s = c.statement(StatementType::Query, OperationType::ExecuteStatement); // 1
            s.chunk(Duration::from_millis(1), 10, false); // folded: no event of its own
            s.chunk_failed(1, &transient); // 1
            s.error(&transient); // 1
            s.complete();
            s.close(); // an ignored second ending
        }
        let failing = c.statement(StatementType::Query, OperationType::ExecuteStatement); // 1
        failing.error(&terminal); // ends it: its one event
        c.error(&transient); // 1
        c.closed(Duration::from_millis(1)); // 1
        1 + 3 * 3 + 1 + 1 + 1
    };
    let before = this_thread();
    let n = |m: &std::collections::BTreeMap<NotReported, u64>, r| m.get(&r).copied().unwrap_or(0);

    // Off from the start.
    let issued = calls(&Connection::default());
    let after = this_thread();
    assert_eq!(
        n(&after, NotReported::Disabled) - n(&before, NotReported::Disabled),
        1 + 3 + 1 + 1 + 1,
        "the connection's calls and each statement's begin"
    );
    assert_eq!(
        n(&after, NotReported::StatementOff) - n(&before, NotReported::StatementOff),
        3 * 2,
        "each statement's chunk failure and non-terminal error"
    );
    assert_eq!(issued, 7 + 6);

    // The server's flag off.
    let (server, f) = (FakeServer::always(200), flag(false));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.is_enabled() && Instant::now() < deadline {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = this_thread();
    let issued = calls(&c);
    let after = this_thread();
    let flag_off = n(&after, NotReported::FlagOff) - n(&before, NotReported::FlagOff);
    let statement_off =
        n(&after, NotReported::StatementOff) - n(&before, NotReported::StatementOff);
    assert_eq!((flag_off, statement_off), (7, 6));
    assert_eq!(p.stats().events_emitted + flag_off + statement_off, issued);

    // An error after its statement ended.
    let (server, f) = (FakeServer::always(200), flag(true));
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("b.example"));
    let before = this_thread();
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.complete();
    s.error(&transient);
    let after = this_thread();
    assert_eq!(
        n(&after, NotReported::AfterEnd) - n(&before, NotReported::AfterEnd),
        1
    );
    assert_eq!(p.stats().events_emitted, 1);
}

/// One call a driver makes on a statement, for the local / shared equivalence test.
#[derive(Debug, Clone)]
enum Call {
    AttachId(String),
    SetType(usize),
    Format(usize),
    Compressed(bool),
    ChunksPresent(u32),
    Internal(bool),
    Poll(u64),
    Polls(u32, u64),
    Retry,
    Chunk(u64, u64, bool),
    ResultReady,
    ResultConsumed,
    /// A non-terminal error (a row of its own) or a terminal one (ends the statement).
    Error(bool),
    ChunkFailed(i64),
}

/// How the statement ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Complete,
    Fail,
    Cancel,
    Close,
    Drop,
    /// Shared half-way (the local handle only), then completed on another thread.
    ShareThenComplete,
}

fn call_strategy() -> impl proptest::strategy::Strategy<Value = Call> {
    use proptest::prelude::*;
    prop_oneof![
        "[0-9a-f-]{1,40}".prop_map(Call::AttachId),
        (0..StatementType::ALL.len()).prop_map(Call::SetType),
        (0..ExecutionResultFormat::ALL.len()).prop_map(Call::Format),
        any::<bool>().prop_map(Call::Compressed),
        any::<u32>().prop_map(Call::ChunksPresent),
        any::<bool>().prop_map(Call::Internal),
        (0..100_000u64).prop_map(Call::Poll),
        (any::<u32>(), 0..100_000u64).prop_map(|(n, ms)| Call::Polls(n, ms)),
        Just(Call::Retry),
        (0..10_000u64, any::<u64>(), any::<bool>()).prop_map(|(ms, b, c)| Call::Chunk(ms, b, c)),
        Just(Call::ResultReady),
        Just(Call::ResultConsumed),
        any::<bool>().prop_map(Call::Error),
        (0..100i64).prop_map(Call::ChunkFailed),
    ]
}

fn error_of(terminal: bool) -> DriverError {
    if terminal {
        DriverError::new("AuthenticationError", "bad token")
    } else {
        DriverError::new("Transient", "retry later")
    }
}

/// `call` on either handle: the same methods, `&self` on a [`Statement`], `&mut self` on a
/// [`LocalStatement`].
macro_rules! apply {
    ($s:expr, $call:expr) => {
        match $call {
            Call::AttachId(id) => $s.attach_id(id),
            Call::SetType(i) => $s.set_statement_type(StatementType::ALL[*i]),
            Call::Format(i) => $s.result_format(ExecutionResultFormat::ALL[*i]),
            Call::Compressed(c) => $s.compressed(*c),
            Call::ChunksPresent(n) => $s.chunks_present(*n),
            Call::Internal(b) => $s.internal_call(*b),
            Call::Poll(ms) => $s.poll(Duration::from_millis(*ms)),
            Call::Polls(n, ms) => $s.polls(*n, Duration::from_millis(*ms)),
            Call::Retry => $s.retry(),
            Call::Chunk(ms, b, c) => $s.chunk(Duration::from_millis(*ms), *b, *c),
            Call::ResultReady => $s.result_ready(),
            Call::ResultConsumed => $s.result_consumed(),
            Call::Error(t) => $s.error(&error_of(*t)),
            Call::ChunkFailed(i) => $s.chunk_failed(*i, &error_of(false)),
        }
    };
}

fn apply_shared(s: &Statement, call: &Call) {
    apply!(s, call)
}

fn apply_local(s: &mut LocalStatement, call: &Call) {
    apply!(s, call)
}

/// What a host received, without what differs between two runs of the same calls (event
/// ids, dates, measured latencies, the order of rows in a batch), as sorted JSON texts.
fn comparable_rows(server: &FakeServer) -> Vec<String> {
    let mut rows: Vec<String> = sent_logs(server)
        .into_iter()
        .map(|(_, mut log)| {
            log["frontend_log_event_id"] = serde_json::Value::Null;
            log["context"]["client_context"]["timestamp_millis"] = serde_json::Value::Null;
            let d = &mut log["entry"]["sql_driver_log"];
            d["operation_latency_ms"] = serde_json::Value::Null;
            if let Some(r) = d["sql_operation"].get_mut("result_latency") {
                *r = serde_json::Value::Null;
            }
            log.to_string()
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_local_statement_reports_what_a_shared_one_reports_for_the_same_calls() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let ending = prop_oneof![
        Just(Ending::Complete),
        Just(Ending::Fail),
        Just(Ending::Cancel),
        Just(Ending::Close),
        Just(Ending::Drop),
        Just(Ending::ShareThenComplete),
    ];
    let strategy = (
        proptest::collection::vec(call_strategy(), 0..12),
        proptest::collection::vec(call_strategy(), 0..4),
        ending,
    );
    runner
        .run(&strategy, |(calls, after_share, ending)| {
            let f = flag(true);
            let (shared_server, local_server) = (FakeServer::always(200), FakeServer::always(200));
            let shared_provider = TelemetryClientProvider::new(options(&shared_server, &f));
            let local_provider = TelemetryClientProvider::new(options(&local_server, &f));
            let shared_conn = shared_provider.connect(conn_opts("a.example"));
            let local_conn = local_provider.connect(conn_opts("a.example"));

            let s = shared_conn.statement(StatementType::Query, OperationType::ExecuteStatement);
            let mut l =
                local_conn.local_statement(StatementType::Query, OperationType::ExecuteStatement);
            for call in &calls {
                apply_shared(&s, call);
                apply_local(&mut l, call);
            }
            match ending {
                Ending::Complete => {
                    s.complete();
                    l.complete();
                }
                Ending::Fail => {
                    s.fail(&error_of(false));
                    l.fail(&error_of(false));
                }
                Ending::Cancel => {
                    s.cancel();
                    l.cancel();
                }
                Ending::Close => {
                    s.close();
                    l.close();
                }
                Ending::Drop => {
                    for call in &after_share {
                        apply_shared(&s, call);
                        apply_local(&mut l, call);
                    }
                    drop(s);
                    drop(l);
                }
                Ending::ShareThenComplete => {
                    let shared = l.share();
                    for call in &after_share {
                        apply_shared(&s, call);
                        apply_shared(&shared, call);
                    }
                    std::thread::spawn(move || shared.complete())
                        .join()
                        .unwrap();
                    s.complete();
                }
            }
            for (c, p) in [
                (&shared_conn, &shared_provider),
                (&local_conn, &local_provider),
            ] {
                c.close();
                p.shutdown_blocking(Duration::from_secs(10)).unwrap();
            }
            let (a, b) = (
                comparable_rows(&shared_server),
                comparable_rows(&local_server),
            );
            prop_assert_eq!(&a, &b);
            let (sa, sb) = (shared_provider.stats(), local_provider.stats());
            prop_assert_eq!(
                (
                    sa.rows_exported,
                    sa.statement_endings_ignored,
                    sa.statements_open
                ),
                (
                    sb.rows_exported,
                    sb.statement_endings_ignored,
                    sb.statements_open
                )
            );
            prop_assert_eq!(sb.statements_open, 0);
            Ok(())
        })
        .unwrap();
}

/// Statements read the statement clock (the CPU's counter once timed): their latencies
/// are milliseconds of real time and their rows are dated at their begin, through either
/// handle. Real sleeps on purpose (the clock under test is the real one); only lower bounds
/// and a wide window, so a slow machine cannot fail it.
#[test]
fn statements_are_timed_and_dated_on_the_statement_clock() {
    let f = flag(true);
    let server = FakeServer::always(200);
    let p = TelemetryClientProvider::new(options(&server, &f));
    let c = p.connect(conn_opts("a.example"));
    // Time for the counter to be timed (its second paired reading is taken by the first
    // reading 100 ms after the first connection's start: the session's open event here), so
    // that the statements' readings come from it, and for the stamps to be well past the
    // clock's origin.
    std::thread::sleep(Duration::from_millis(110));
    c.opened(Duration::from_millis(1));
    let wall = || telemetry_types::clock::now_millis();
    let before = wall();
    let shared = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    let mut local = c.local_statement(StatementType::Query, OperationType::ListTables);
    let begun = wall();
    std::thread::sleep(Duration::from_millis(30));
    shared.result_ready();
    local.result_ready();
    std::thread::sleep(Duration::from_millis(30));
    shared.complete();
    local.complete();
    c.close();
    p.shutdown_blocking(Duration::from_secs(10)).unwrap();
    let logs = sent_logs(&server);
    let rows: Vec<_> = logs
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l["entry"]["sql_driver_log"]["sql_operation"]["statement_type"].is_string())
        .collect();
    assert_eq!(rows.len(), 2, "{logs:?}");
    for log in rows {
        let d = &log["entry"]["sql_driver_log"];
        let latency = d["operation_latency_ms"].as_i64().unwrap();
        // Slept 60 ms between begin and end; a unit slip (micro- or nanoseconds) or a wrong
        // origin reads far outside this window.
        assert!((59..30_000).contains(&latency), "{latency} ms");
        let ready = d["sql_operation"]["result_latency"]["result_set_ready_latency_millis"]
            .as_i64()
            .unwrap();
        assert!((29..=latency).contains(&ready), "{ready} ms of {latency}");
        // Dated at the begin: between the wall readings around it (two milliseconds' slack
        // for the rounding of the wall and monotonic readings the date is derived from).
        let date = log["context"]["client_context"]["timestamp_millis"]
            .as_i64()
            .unwrap();
        assert!(
            (before - 2..=begun + 2).contains(&date),
            "{before} <= {date} <= {begun}"
        );
    }
}
