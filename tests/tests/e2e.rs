//! End to end: the public `telemetry-client` API against the mock workspace over real HTTP on
//! 127.0.0.1. Waits are bounded by short timeouts; nothing sleeps to "let things happen".

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_client::{
    AuthType, ClientPreset, ConnectionOptions, DisableSwitch, DriverError, DropReason,
    FailurePolicy, OperationType, ProviderOptions, StatementType, StaticToken,
    TelemetryClientProvider,
};
use telemetry_tests::mock::{Fault, MockWorkspace};
use telemetry_tests::schema::RowKind;
use telemetry_tests::workload::{self, Workload};

fn flag_name() -> String {
    ClientPreset::jdbc().flag_name
}

fn options() -> ProviderOptions {
    let mut o = ProviderOptions::new("E2EDriver", "3.1.4-oss", ClientPreset::jdbc());
    o.config.enabled = true;
    o.config.allow_insecure_loopback = true;
    o.config.aggregation.close_timeout = Duration::from_millis(1500);
    o.config.export.request_timeout = Duration::from_millis(1000);
    o.switch = Some(DisableSwitch::Unset);
    o
}

fn connect(p: &TelemetryClientProvider, base: &str) -> telemetry_client::Connection {
    p.connect(
        ConnectionOptions::new(base)
            .with_http_path("/sql/protocolv1/o/555/0123-abc")
            .with_session_id("e2e-session")
            .with_auth(Arc::new(StaticToken::new("e2e-token")), AuthType::Pat),
    )
}

async fn run_workload(
    p: &TelemetryClientProvider,
    base: &str,
    w: Workload,
) -> workload::WorkloadReport {
    let (provider, base) = (p.clone(), base.to_owned());
    let report = tokio::task::spawn_blocking(move || {
        workload::run(&provider, &base, "/sql/1.0/warehouses/x?o=9", &w)
    })
    .await
    .expect("workload thread");
    // Each connection waited for its own host's close; a host released earlier (a failed
    // open's, closed before the others connected) may still be closing: its rows are then
    // in flight, not yet settled. Every total is final once every close is done.
    p.wait_closed().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arrive_with_the_right_fields() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    let p = TelemetryClientProvider::new(options());
    let c = connect(&p, &mock.base_url());
    assert_eq!(p.host_count(), 1, "telemetry initialises on connect");
    c.opened(Duration::from_millis(321));
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id("stmt-1");
    s.chunk(Duration::from_millis(40), 1000, true);
    s.chunk(Duration::from_millis(90), 1000, false);
    s.chunks_present(2);
    s.polls(4, Duration::from_millis(80));
    s.complete();
    c.error(
        &DriverError::new(
            "AuthenticationError",
            "Bearer dapi0123456789abcdef0123 expired",
        )
        .with_http_status(401),
    );
    c.closed(Duration::from_millis(7));
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    assert_eq!(p.host_count(), 0, "clean-up on close");
    assert_eq!(mock.flag_requests(), 1);
    let received = mock.received();
    assert!(
        received.iter().all(|r| r.path == "/telemetry-ext"
            && r.authorization.as_deref() == Some("Bearer e2e-token"))
    );
    let logs: Vec<_> = received.into_iter().flat_map(|r| r.logs).collect();
    assert_eq!(logs.len(), 4);
    // Several exports may be in flight at once, so requests can arrive in any order.
    let open = logs
        .iter()
        .find(|l| {
            l.driver_log()
                .sql_operation
                .as_ref()
                .and_then(|op| op.operation_detail.as_ref())
                .and_then(|d| d.operation_type)
                == Some(OperationType::CreateSession)
        })
        .unwrap();
    assert_eq!(open.workspace_id, Some(555));
    let d = open.driver_log();
    assert_eq!(d.operation_latency_ms, Some(321));
    assert_eq!(d.session_id.as_deref(), Some("e2e-session"));
    assert_eq!(
        d.system_configuration
            .as_ref()
            .unwrap()
            .driver_version
            .as_deref(),
        Some("3.1.4-oss")
    );
    let stmt = logs
        .iter()
        .find(|l| l.driver_log().sql_statement_id.as_deref() == Some("stmt-1"))
        .unwrap();
    let op = stmt.driver_log().sql_operation.as_ref().unwrap();
    let chunks = op.chunk_details.as_ref().unwrap();
    assert_eq!(
        (
            chunks.total_chunks_iterated,
            chunks.initial_chunk_latency_millis,
            chunks.slowest_chunk_latency_millis,
            chunks.sum_chunks_download_time_millis
        ),
        (Some(2), Some(40), Some(90), Some(130))
    );
    assert_eq!(op.is_compressed, Some(true));
    let err = logs
        .iter()
        .find_map(|l| l.driver_log().error_info.clone())
        .unwrap();
    assert_eq!(err.error_name, "AuthenticationError");
    assert_eq!(err.stack_trace, "Bearer [REDACTED] expired");
    assert_eq!((mock.rejected(), mock.privacy_violations()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_off_means_zero_export_requests() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    mock.set_fault(Fault::FlagOff);
    let p = TelemetryClientProvider::new(options());
    let report = run_workload(
        &p,
        &mock.base_url(),
        Workload {
            connections: 3,
            statements: 20,
            ..Default::default()
        },
    )
    .await;
    assert!(report.events > 0);
    assert_eq!(mock.export_requests(), 0);
    let s = p.stats();
    assert_eq!(s.rows_exported, 0);
    assert_eq!(s.rows_produced, s.total_rows_dropped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_shared_by_many_connections_and_override() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    let base = mock.base_url();
    let p = TelemetryClientProvider::new(options());
    let conns: Vec<_> = (0..10).map(|_| connect(&p, &base)).collect();
    let off = p.connect(ConnectionOptions::new(base.clone()).with_enabled(false));
    assert!(!off.is_enabled());
    assert_eq!(p.ref_count(&base), 10);
    assert_eq!(p.host_count(), 1);
    for c in &conns {
        c.opened(Duration::from_millis(1));
    }
    off.opened(Duration::from_millis(1));
    for c in conns {
        c.close();
        let _ = c.flush(Duration::from_secs(10)).await;
    }
    assert_eq!(p.host_count(), 0);
    assert_eq!(
        mock.flag_requests(),
        1,
        "one flag look-up for the shared client"
    );
    assert_eq!(
        mock.rows_received(),
        10,
        "the overridden connection sent nothing"
    );
    // Defaults: opt-in.
    let mut defaults = ProviderOptions::new("D", "1.0.0", ClientPreset::jdbc());
    assert!(!defaults.config.enabled);
    defaults.switch = Some(DisableSwitch::Unset);
    let p2 = TelemetryClientProvider::new(defaults);
    assert!(!p2.connect(ConnectionOptions::new(base)).is_enabled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_expected_rows_arrive_for_a_known_workload() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    let p = TelemetryClientProvider::new(options());
    let w = Workload {
        connections: 4,
        statements: 50,
        chunks: 3,
        error_rate: 0.1,
        token: Some("t".into()),
        ..Default::default()
    };
    let report = run_workload(&p, &mock.base_url(), w).await;
    let chunk_failures = (0..50)
        .filter(|s| workload::Kind::of(*s) == workload::Kind::ChunkFails)
        .count() as u64;
    // Per connection: open, close, 50 statements, its chunk failures; one failed open; errors.
    assert_eq!(
        report.expected_rows,
        4 * (2 + 50 + chunk_failures) + 1 + report.errors
    );
    assert_eq!(mock.rows_received(), report.expected_rows);
    assert_eq!(mock.rejected(), 0);
    let s = p.stats();
    assert_eq!(
        (s.events_emitted, s.rows_exported, s.total_rows_dropped()),
        (report.events, report.expected_rows, 0)
    );
    // Every row kind arrived and passed the server's schema.
    let by_kind = mock.rows_by_kind();
    for kind in RowKind::ALL {
        assert!(
            by_kind.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind:?} row: {by_kind:?}"
        );
    }
    // The completed statements were also closed: ignored second endings, counted.
    let completed = (0..50)
        .filter(|s| {
            matches!(
                workload::Kind::of(*s),
                workload::Kind::Query
                    | workload::Kind::AsyncQuery
                    | workload::Kind::ChunkFails
                    | workload::Kind::Metadata
                    | workload::Kind::Volume
            )
        })
        .count() as u64;
    assert_eq!(s.statement_endings_ignored, 4 * completed);
    // Rows the handles measured and recorded: ids attached late, chunks from other threads.
    let logs: Vec<_> = mock.received().into_iter().flat_map(|r| r.logs).collect();
    let queries: Vec<_> = logs
        .iter()
        .filter_map(|l| {
            let op = l.driver_log().sql_operation.as_ref()?;
            (op.operation_detail.as_ref()?.operation_type == Some(OperationType::ExecuteStatement)
                && op.statement_type == Some(StatementType::Query)
                && op.chunk_id.is_none()
                && l.driver_log().error_info.is_none())
            .then_some((l.driver_log(), op))
        })
        .collect();
    assert!(!queries.is_empty());
    for (d, op) in queries {
        assert!(
            d.sql_statement_id
                .as_deref()
                .is_some_and(|id| id.starts_with("01ef-"))
        );
        let chunks = op.chunk_details.as_ref().unwrap();
        assert_eq!(
            (chunks.total_chunks_present, chunks.total_chunks_iterated),
            (Some(3), Some(3))
        );
        assert_eq!(
            op.operation_detail
                .as_ref()
                .unwrap()
                .n_operation_status_calls,
            Some(2)
        );
        assert!(op.result_latency.is_some());
    }
    // A failed execute has no id, and its error (SQL and all) is redacted.
    let failed = logs
        .iter()
        .find(|l| {
            l.driver_log()
                .error_info
                .as_ref()
                .is_some_and(|e| e.stack_trace.contains("TABLE_OR_VIEW_NOT_FOUND"))
        })
        .unwrap_or_else(|| {
            let errors: Vec<_> = logs
                .iter()
                .filter_map(|l| l.driver_log().error_info.clone())
                .collect();
            panic!("{errors:?}")
        });
    assert!(failed.driver_log().sql_statement_id.is_none());
    let trace = &failed.driver_log().error_info.as_ref().unwrap().stack_trace;
    assert!(
        !trace.contains("secret") && !trace.contains("SELECT"),
        "{trace}"
    );
}

/// An OAuth-style provider that calls `block_in_place` in `auth_headers`, as the ADBC driver's
/// do: the rows still arrive with its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_auth_provider_still_delivers_every_row() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    let p = TelemetryClientProvider::new(options());
    let w = Workload {
        connections: 2,
        statements: 20,
        token: Some("t".into()),
        blocking_auth: true,
        ..Default::default()
    };
    let report = run_workload(&p, &mock.base_url(), w).await;
    assert_eq!(mock.rows_received(), report.expected_rows);
    assert!(mock.received().iter().all(|r| r.path == "/telemetry-ext"));
    assert_eq!(p.stats().total_rows_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_stops_requests_during_an_outage_and_they_resume() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    mock.set_fault(Fault::Fail500);
    let mut o = options();
    o.config.export.retry.max_retries = 0;
    // A request per row, each through the breaker.
    o.config.aggregation.batch_size = 1;
    o.config.aggregation.max_batch_size = 1;
    o.config.aggregation.linger = Duration::ZERO;
    o.config.breaker.policy = FailurePolicy::Consecutive { threshold: 3 };
    o.config.breaker.open_duration = Duration::from_millis(400);
    o.config.breaker.success_threshold = 1;
    let p = TelemetryClientProvider::new(o);
    let base = mock.base_url();
    let keep = connect(&p, &base);
    for _ in 0..30 {
        keep.opened(Duration::ZERO);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.stats().dropped.get(DropReason::BreakerOpen) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Up to `max_concurrent_exports` (4) requests go out side by side: those admitted
    // before the third failure opened the breaker still arrive.
    let during = mock.export_requests();
    assert!(during <= 6, "the breaker stopped requests: {during}");
    assert_eq!(p.stats().breaker_openings, 1);
    // The endpoint recovers; after the open period a probe closes the breaker and rows flow.
    mock.set_fault(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.rows_received() == 0 && Instant::now() < deadline {
        keep.opened(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mock.rows_received() > 0,
        "requests resumed after the outage"
    );
    keep.close();
    let _ = keep.flush(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_within_its_deadline_when_the_endpoint_hangs() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    mock.set_fault(Fault::Hang);
    let mut o = options();
    o.config.export.request_timeout = Duration::from_secs(10);
    let p = TelemetryClientProvider::new(o);
    let c = connect(&p, &mock.base_url());
    c.opened(Duration::ZERO);
    let started = Instant::now();
    c.close();
    let _ = c.flush(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(p.stats().dropped.get(DropReason::Shutdown), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_errors_never_reach_the_driver() {
    for fault in [
        Fault::Fail500,
        Fault::CloseConnection,
        Fault::FlagMalformed,
        Fault::FlagError,
        Fault::Fail429 { retry_after: 1 },
    ] {
        let mock = MockWorkspace::start(&flag_name()).await.unwrap();
        mock.set_fault(fault.clone());
        let mut o = options();
        o.config.aggregation.close_timeout = Duration::from_millis(300);
        let p = TelemetryClientProvider::new(o);
        let report = run_workload(
            &p,
            &mock.base_url(),
            Workload {
                connections: 2,
                statements: 10,
                ..Default::default()
            },
        )
        .await;
        let s = p.stats();
        assert_eq!(s.rows_exported, 0, "{fault:?}");
        assert_eq!(s.rows_produced, s.total_rows_dropped(), "{fault:?}: {s:?}");
        assert!(
            report.elapsed < Duration::from_secs(3),
            "{fault:?}: {:?}",
            report.elapsed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_lose_nothing_when_healthy() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    let mut o = options();
    o.config.aggregation.close_timeout = Duration::from_secs(10);
    // 32 threads emit ~35 000 events (~7 000 rows) as fast as they can, with no driver work
    // between them: the queue and the pending rows must hold the whole burst while one batch
    // at a time goes out. With real statements the defaults (10 000 / 500) are plenty.
    o.config.aggregation.max_pending_rows = 10_000;
    o.config.aggregation.queue_capacity = 50_000;
    let p = TelemetryClientProvider::new(o);
    let w = Workload {
        connections: 32,
        statements: 200,
        chunks: 2,
        error_rate: 0.05,
        token: Some("t".into()),
        ..Default::default()
    };
    let report = run_workload(&p, &mock.base_url(), w).await;
    let s = p.stats();
    assert_eq!(s.total_rows_dropped(), 0, "{s:?}");
    assert_eq!(s.events_dropped(), 0);
    assert_eq!(mock.rows_received(), report.expected_rows);
    assert_eq!(mock.rejected(), 0);
}

/// A serverless driver: one connection per request, each closed before the next. The flag is
/// looked up once, and a failing endpoint opens the breaker once for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_shares_the_flag_answer_and_the_breaker() {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    let p = TelemetryClientProvider::new(options());
    let w = Workload {
        connections: 50,
        statements: 1,
        error_rate: 0.0,
        token: Some("e2e-token".into()),
        sequential: true,
        ..Workload::default()
    };
    let report = run_workload(&p, &mock.base_url(), w.clone()).await;
    assert_eq!(mock.flag_requests(), 1, "one look-up for 50 connections");
    assert_eq!(mock.rows_received(), report.expected_rows);

    let failing = MockWorkspace::start(&flag_name()).await.unwrap();
    failing.set_fault(Fault::Fail500);
    let mut o = options();
    o.config.export.retry.max_retries = 0;
    let p = TelemetryClientProvider::new(o);
    run_workload(&p, &failing.base_url(), w).await;
    let s = p.stats();
    assert_eq!(
        failing.export_requests(),
        5,
        "one breaker's worth (5 consecutive failures), not one per connection: {s:?}"
    );
    assert_eq!(s.breaker_openings, 1);
    assert_eq!(s.rows_produced, s.total_rows_dropped());
    assert!(s.dropped.get(DropReason::BreakerOpen) > 0);
}

/// What a driver author writes in their own tests: the test kit records the rows, no network.
#[test]
fn a_driver_can_assert_its_rows_with_the_test_kit() {
    use telemetry_client::testing::TestKit;
    let kit = TestKit::new();
    let conn = kit.connect("https://adb-1.azuredatabricks.net");
    conn.opened(Duration::from_millis(7));
    let s = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id("st-1");
    s.chunk(Duration::from_millis(3), 10, true);
    s.polls(2, Duration::from_millis(5));
    s.complete();
    conn.error(&DriverError::new("Boom", "token=abc"));
    let logs = kit.logs();
    assert_eq!(logs.len(), 3);
    let st = logs[1].driver_log();
    assert_eq!(st.sql_statement_id.as_deref(), Some("st-1"));
    let op = st.sql_operation.as_ref().unwrap();
    assert_eq!(
        op.chunk_details.as_ref().unwrap().total_chunks_iterated,
        Some(1)
    );
    let trace = &logs[2]
        .driver_log()
        .error_info
        .as_ref()
        .unwrap()
        .stack_trace;
    assert_eq!(trace, "token=[REDACTED]");
    assert_eq!(
        kit.endpoint().count(),
        1,
        "one request, nothing over the network"
    );
}

#[rstest::rstest]
#[case::checking_each_log(false)]
#[case::counting_without_checking(true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_keeping_counts_only_counts_every_row_and_holds_none(
    #[case] without_checking: bool,
) {
    let mock = MockWorkspace::start(&flag_name()).await.unwrap();
    if without_checking {
        mock.count_without_checking();
    } else {
        mock.keep_counts_only();
    }
    let p = TelemetryClientProvider::new(options());
    let w = Workload {
        connections: 2,
        statements: 30,
        chunks: 1,
        error_rate: 0.0,
        token: Some("t".into()),
        ..Default::default()
    };
    let report = run_workload(&p, &mock.base_url(), w).await;
    assert!(report.expected_rows > 60);
    assert_eq!(mock.rows_received(), report.expected_rows);
    assert_eq!(mock.rejected(), 0);
    assert!(mock.received().is_empty(), "no request kept");
}
