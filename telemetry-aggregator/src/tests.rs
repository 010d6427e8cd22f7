use std::sync::Arc;
use std::time::Duration;

use telemetry_types::BoxFuture;
use telemetry_types::classify::ErrorClass;
use telemetry_types::clock::now_millis;
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::drops::DropReason;
use telemetry_types::event::{
    ChunkStats, DriverError, EventKind, StatementCompletion, StatementEnd, StatementOutcome,
    TelemetryEvent,
};
use telemetry_types::host::Host;
use telemetry_types::row::TelemetryRow;
use telemetry_types::sink::BatchSink;
use telemetry_types::testing::RecordingSink;
use telemetry_types::wire::{ExecutionResultFormat, OperationType, StatementType};
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::*;

fn conn() -> Arc<ConnectionInfo> {
    Arc::new(ConnectionInfo::new(
        Host::parse("a.example", false).unwrap(),
        "ua/1",
    ))
}

fn ev(c: &Arc<ConnectionInfo>, kind: EventKind) -> TelemetryEvent {
    TelemetryEvent {
        connection: c.clone(),
        at: None,
        kind,
    }
}

/// The handle key the tests give the statement named `id`.
fn key(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn start(id: &str) -> EventKind {
    EventKind::StatementStarted {
        key: key(id),
        statement_type: StatementType::Query,
        operation_type: OperationType::ExecuteStatement,
    }
}

/// The end of a statement whose handle folded `chunks` (latency, compressed).
fn end_with_chunks(id: &str, chunks: &[(i64, bool)]) -> EventKind {
    let mut stats = ChunkStats::default();
    for &(latency_ms, compressed) in chunks {
        stats.record(latency_ms, 100, compressed);
    }
    EventKind::StatementEnded {
        key: key(id),
        end: Box::new(StatementEnd {
            statement_id: Some(id.into()),
            latency_ms: 42,
            chunks: stats,
            completion: StatementCompletion {
                execution_result: Some(ExecutionResultFormat::ExternalLinks),
                poll_count: Some(2),
                ..Default::default()
            },
            ..Default::default()
        }),
    }
}

fn complete(id: &str) -> EventKind {
    end_with_chunks(id, &[])
}

fn error(id: Option<&str>, class: ErrorClass) -> EventKind {
    EventKind::Error {
        statement: id.map(key),
        error: Box::new(DriverError::new("E", "msg").with_class(class)),
    }
}

fn config() -> AggregatorConfig {
    AggregatorConfig::default()
}

fn spawn(config: AggregatorConfig) -> (Aggregator, Arc<RecordingSink>) {
    let sink = RecordingSink::new();
    (
        Aggregator::spawn(&config, sink.clone(), &Handle::current()),
        sink,
    )
}

/// Lets the background task drain the intake (it drains on a tick) and the sink run.
async fn settle() {
    tokio::time::sleep(crate::DRAIN_INTERVAL + Duration::from_millis(1)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn op(row: &TelemetryRow) -> Option<OperationType> {
    row.log
        .driver_log()
        .sql_operation
        .as_ref()?
        .operation_detail
        .as_ref()?
        .operation_type
}

#[tokio::test(start_paused = true)]
async fn connection_rows_are_immediate_and_statements_buffered_until_complete() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 5 }));
    agg.emit(ev(&c, start("s1")));
    settle().await;
    let st = agg.stats();
    assert_eq!(
        (st.rows_produced, st.in_flight_statements, st.pending_rows),
        (1, 1, 1)
    );
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(op(&rows[0]), Some(OperationType::CreateSession));
    agg.emit(ev(&c, complete("s1")));
    agg.emit(ev(&c, EventKind::ConnectionClosed { latency_ms: 3 }));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 3);
    let d = rows[1].log.driver_log();
    assert_eq!(d.sql_statement_id.as_deref(), Some("s1"));
    assert_eq!(d.operation_latency_ms, Some(42));
    assert_eq!(op(&rows[2]), Some(OperationType::DeleteSession));
}

fn timestamp(row: &TelemetryRow) -> i64 {
    row.log.context.client_context.timestamp_millis
}

#[tokio::test(start_paused = true)]
async fn rows_are_dated_by_the_event_instant_or_by_the_drain() {
    let (agg, sink) = spawn(config());
    let c = conn();
    let at = |ago_ms: u64| TelemetryEvent {
        at: Some(std::time::Instant::now() - Duration::from_millis(ago_ms)),
        ..ev(&c, EventKind::ConnectionOpened { latency_ms: 1 })
    };
    let before = now_millis();
    agg.emit(at(60_000));
    agg.emit(TelemetryEvent {
        at: Some(std::time::Instant::now() - Duration::from_millis(30_000)),
        ..ev(&c, start("s"))
    });
    agg.emit(ev(&c, complete("s")));
    agg.emit(TelemetryEvent {
        at: Some(std::time::Instant::now() - Duration::from_millis(10_000)),
        ..ev(&c, error(None, ErrorClass::Unknown))
    });
    agg.emit(ev(&c, EventKind::ConnectionClosed { latency_ms: 1 }));
    agg.flush().await;
    let after = now_millis();
    let rows = sink.rows();
    assert_eq!(rows.len(), 4);
    // The wall clock is real (only tokio's clock is paused): allow the test's own run time.
    let dated = |row: &TelemetryRow, ago: i64| {
        let t = timestamp(row);
        assert!(
            (before - ago..=after - ago).contains(&t),
            "{t} not within {}..={}",
            before - ago,
            after - ago
        );
    };
    dated(&rows[0], 60_000);
    dated(&rows[1], 30_000); // the statement row: its start, not its completion
    dated(&rows[2], 10_000);
    dated(&rows[3], 0); // no instant: the drain's reading
}

#[tokio::test(start_paused = true)]
async fn aggregates_by_statement_id_with_chunk_statistics() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, start("a")));
    agg.emit(ev(&c, start("b")));
    agg.emit(ev(
        &c,
        end_with_chunks(
            "a",
            &[
                (0, false),
                (-5, false),
                (30, true),
                (70, false),
                (20, false),
            ],
        ),
    ));
    agg.emit(ev(&c, end_with_chunks("b", &[(5, false)])));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    let a = rows[0].log.driver_log().sql_operation.clone().unwrap();
    let cd = a.chunk_details.unwrap();
    assert_eq!(cd.total_chunks_iterated, Some(5));
    assert_eq!(cd.initial_chunk_latency_millis, Some(30));
    assert_eq!(cd.slowest_chunk_latency_millis, Some(70));
    assert_eq!(cd.sum_chunks_download_time_millis, Some(120));
    assert_eq!(a.is_compressed, Some(true), "compression is sticky");
    assert_eq!(
        a.execution_result,
        Some(ExecutionResultFormat::ExternalLinks)
    );
    assert_eq!(
        a.operation_detail.unwrap().n_operation_status_calls,
        Some(2)
    );
    let b = rows[1].log.driver_log().sql_operation.clone().unwrap();
    assert_eq!(b.chunk_details.unwrap().total_chunks_iterated, Some(1));
    assert_eq!(b.is_compressed, Some(false));
}

#[tokio::test(start_paused = true)]
async fn same_id_on_two_connections_are_two_statements() {
    let (agg, sink) = spawn(config());
    let (c1, c2) = (conn(), conn());
    agg.emit(ev(&c1, start("s")));
    agg.emit(ev(&c2, start("s")));
    agg.emit(ev(&c1, end_with_chunks("s", &[(10, false)])));
    agg.emit(ev(&c2, complete("s")));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].connection.id, c1.id);
    assert!(
        rows[1]
            .log
            .driver_log()
            .sql_operation
            .as_ref()
            .unwrap()
            .chunk_details
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn latency_measured_for_a_statement_open_at_close() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, start("s")));
    settle().await;
    tokio::time::advance(Duration::from_millis(1500)).await;
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    // Measured between the task's receipts: exact to the drain interval.
    let latency = sink.rows()[0]
        .log
        .driver_log()
        .operation_latency_ms
        .unwrap();
    let slack = crate::DRAIN_INTERVAL.as_millis() as i64;
    assert!((1500..=1500 + slack).contains(&latency), "{latency}");
}

#[tokio::test(start_paused = true)]
async fn batch_size_flush() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 3,
        max_pending_rows: 10,
        ..config()
    });
    let c = conn();
    for _ in 0..7 {
        agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    }
    settle().await;
    assert_eq!(
        sink.batch_sizes(),
        vec![3, 3],
        "two full batches without waiting for the interval"
    );
    assert_eq!(agg.stats().pending_rows, 1);
}

#[tokio::test(start_paused = true)]
async fn interval_flush() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    settle().await;
    tokio::time::advance(Duration::from_millis(4900)).await;
    settle().await;
    assert!(sink.rows().is_empty());
    tokio::time::advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(sink.rows().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_terminal_failure_flushes_at_once_with_its_chunks() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    agg.emit(ev(&c, start("s")));
    let EventKind::StatementEnded { key, mut end } = end_with_chunks("s", &[(5, true), (9, false)])
    else {
        unreachable!()
    };
    end.outcome = StatementOutcome::Failed;
    end.error = Some(DriverError::new("E", "msg").with_class(ErrorClass::Terminal));
    agg.emit(ev(&c, EventKind::StatementEnded { key, end }));
    settle().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2, "flushed before the interval");
    let d = rows[1].log.driver_log();
    assert_eq!(d.sql_statement_id.as_deref(), Some("s"));
    assert_eq!(d.error_info.as_ref().unwrap().error_name, "E");
    let chunks = d
        .sql_operation
        .as_ref()
        .unwrap()
        .chunk_details
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            chunks.total_chunks_iterated,
            chunks.slowest_chunk_latency_millis
        ),
        (Some(2), Some(9))
    );
    assert_eq!(op(&rows[1]), Some(OperationType::ExecuteStatement));
    assert_eq!(agg.stats().in_flight_statements, 0);
    // A second end for it is counted, not turned into a row.
    agg.emit(ev(&c, complete("s")));
    agg.flush().await;
    assert_eq!(agg.stats().dropped.get(DropReason::UnknownStatement), 1);
}

#[tokio::test(start_paused = true)]
async fn a_terminal_error_on_a_running_statement_flushes_and_rides_with_it() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    agg.emit(ev(&c, start("s")));
    agg.emit(ev(&c, error(Some("s"), ErrorClass::Terminal)));
    settle().await;
    assert_eq!(
        sink.rows().len(),
        1,
        "pending rows flushed before the interval"
    );
    agg.emit(ev(&c, complete("s")));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[2].log.driver_log().sql_statement_id.as_deref(),
        Some("s")
    );
    assert!(rows[2].is_error);
}

#[tokio::test(start_paused = true)]
async fn chunk_failures_and_failed_opens_are_sent_at_once() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(
        &c,
        EventKind::ConnectionFailed {
            latency_ms: 3,
            error: Box::new(DriverError::new("ConnectError", "refused")),
        },
    ));
    settle().await;
    assert_eq!(sink.rows().len(), 1);
    assert_eq!(op(&sink.rows()[0]), Some(OperationType::CreateSession));
    agg.emit(ev(
        &c,
        EventKind::ChunkFailed {
            key: key("s"),
            failure: Box::new(telemetry_types::event::ChunkFailure {
                statement_id: Some("s".into()),
                statement_type: StatementType::Query,
                operation_type: OperationType::ExecuteStatement,
                chunk_index: 4,
                chunks: ChunkStats::default(),
                completion: StatementCompletion::default(),
                error: DriverError::new("CloudFetchError", "x".repeat(100_000)),
            }),
        },
    ));
    settle().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    let d = rows[1].log.driver_log();
    assert_eq!(d.sql_operation.as_ref().unwrap().chunk_id, Some(4));
    assert!(d.error_info.as_ref().unwrap().stack_trace.chars().count() <= 2048);
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_ride_with_their_statement_capped() {
    let (agg, sink) = spawn(AggregatorConfig {
        max_errors_per_statement: 2,
        ..config()
    });
    let c = conn();
    agg.emit(ev(&c, start("s")));
    for _ in 0..3 {
        agg.emit(ev(&c, error(Some("s"), ErrorClass::Retryable)));
    }
    agg.flush().await;
    assert!(sink.rows().is_empty(), "kept on the statement");
    agg.emit(ev(&c, complete("s")));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 3, "statement row and two error rows");
    assert!(rows[0].log.driver_log().error_info.is_none());
    assert!(
        rows[1..]
            .iter()
            .all(|r| r.is_error && r.log.driver_log().sql_statement_id.as_deref() == Some("s"))
    );
    assert_eq!(agg.stats().dropped.get(DropReason::ErrorCap), 1);
}

#[tokio::test(start_paused = true)]
async fn standalone_error_rows() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, error(None, ErrorClass::Unknown)));
    agg.emit(ev(&c, error(Some("never-started"), ErrorClass::Retryable)));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.log.driver_log().sql_statement_id.is_none())
    );
    assert!(rows.iter().all(|r| r.is_error));
}

#[tokio::test(start_paused = true)]
async fn ttl_eviction_reports_the_statement() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, start("s")));
    settle().await;
    tokio::time::advance(Duration::from_secs(3599)).await;
    settle().await;
    agg.flush().await;
    assert!(sink.rows().is_empty());
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(op(&rows[0]), Some(OperationType::CloseStatement));
    let latency = rows[0].log.driver_log().operation_latency_ms.unwrap();
    assert!(
        (3_659_000..3_660_000).contains(&latency),
        "measured here: {latency}"
    );
    assert_eq!(agg.stats().evicted_ttl, 1);
}

#[tokio::test(start_paused = true)]
async fn cap_eviction_reports_the_oldest() {
    let (agg, sink) = spawn(AggregatorConfig {
        max_in_flight_statements: 2,
        ..config()
    });
    let c = conn();
    for id in ["a", "b", "c"] {
        agg.emit(ev(&c, start(id)));
    }
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(op(&rows[0]), Some(OperationType::CloseStatement));
    // "b" and "c" remain: ending them makes their rows, ending "a" is unknown.
    agg.emit(ev(&c, complete("a")));
    agg.flush().await;
    assert_eq!(agg.stats().dropped.get(DropReason::UnknownStatement), 1);
    let st = agg.stats();
    assert_eq!((st.evicted_cap, st.in_flight_statements), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn reused_statement_id_reports_the_earlier_one() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, start("s")));
    agg.emit(ev(&c, start("s")));
    agg.emit(ev(&c, complete("s")));
    agg.flush().await;
    assert_eq!(sink.rows().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn queue_full_drop_counted() {
    let (agg, _sink) = spawn(AggregatorConfig {
        queue_capacity: 4,
        ..config()
    });
    let c = conn();
    // The background task cannot run between these pushes (same thread, no await).
    for _ in 0..10 {
        agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    }
    agg.flush().await;
    let st = agg.stats();
    assert_eq!(st.dropped.get(DropReason::QueueFull), 6);
    assert_eq!(st.events_received, 4);
    assert_eq!(st.events_emitted(), 10);
}

#[tokio::test(start_paused = true)]
async fn the_task_drains_before_its_tick_only_past_half_the_queue() {
    let (agg, _sink) = spawn(AggregatorConfig {
        queue_capacity: 10,
        ..config()
    });
    let c = conn();
    let run_without_time_passing = || async {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    };
    run_without_time_passing().await;
    for _ in 0..4 {
        agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    }
    run_without_time_passing().await;
    assert_eq!(
        agg.stats().events_received,
        0,
        "below the mark: waits for the tick"
    );
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    run_without_time_passing().await;
    assert_eq!(
        agg.stats().events_received,
        5,
        "at the mark: drained at once"
    );
}

#[tokio::test(start_paused = true)]
async fn pending_cap_drop_keeps_errors() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 2,
        max_pending_rows: 3,
        ..config()
    });
    let c = conn();
    sink.set_delay(Some(Duration::from_secs(10)));
    // First two rows go into the (hanging) sink; the next ones pile up.
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 2 }));
    settle().await;
    agg.emit(ev(&c, error(None, ErrorClass::Unknown)));
    for latency_ms in 10..15 {
        agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms }));
    }
    settle().await;
    let st = agg.stats();
    assert_eq!(st.pending_rows, 3);
    assert_eq!(st.dropped.get(DropReason::PendingCap), 3);
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!(
        st.dropped.get(DropReason::Shutdown),
        3,
        "pending rows lost at the deadline"
    );
    assert_eq!(
        st.rows_delivered, 2,
        "the cut in-flight batch is the sink's to settle, not counted twice"
    );
    assert_eq!(st.rows_produced, st.rows_delivered + st.rows_dropped());
}

#[tokio::test(start_paused = true)]
async fn pending_cap_keeps_the_error_row() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 1,
        max_pending_rows: 2,
        ..config()
    });
    let c = conn();
    sink.set_delay(Some(Duration::from_secs(10)));
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    settle().await;
    agg.emit(ev(&c, error(None, ErrorClass::Unknown)));
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 2 }));
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 3 }));
    settle().await;
    sink.set_delay(None);
    assert_eq!(agg.stats().dropped.get(DropReason::PendingCap), 1);
    // The slow batch ends; the rest follow.
    tokio::time::advance(Duration::from_secs(10)).await;
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 3);
    assert!(rows[1].is_error, "the error row survived the cap");
    assert_eq!(rows[2].log.driver_log().operation_latency_ms, Some(3));
    assert_eq!(agg.stats().dropped.get(DropReason::Shutdown), 0);
}

#[tokio::test(start_paused = true)]
async fn close_drains_completes_open_statements_and_flushes_nothing_twice() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    agg.emit(ev(&c, start("open")));
    agg.close(Instant::now() + Duration::from_secs(2)).await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    assert_eq!(op(&rows[1]), Some(OperationType::CloseStatement));
    assert!(agg.is_closed());
    // Idempotent: a second close and a flush after close do nothing.
    agg.close(Instant::now() + Duration::from_secs(2)).await;
    agg.flush().await;
    assert_eq!(sink.rows().len(), 2);
    assert_eq!(sink.batch_sizes(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn close_respects_the_deadline_with_a_hanging_sink() {
    let (agg, sink) = spawn(config());
    sink.set_delay(Some(Duration::from_secs(10)));
    let c = conn();
    for _ in 0..5 {
        agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    }
    let started = Instant::now();
    agg.close(started + Duration::from_secs(2)).await;
    assert!(Instant::now() - started <= Duration::from_millis(2050));
    let st = agg.stats();
    // The batch in the hung sink was cut at the deadline: the sink settles its rows.
    assert_eq!(st.dropped.get(DropReason::Shutdown), 0);
    assert_eq!(st.rows_delivered, 5);
    assert!(sink.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn events_after_close_are_counted_not_processed() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    settle().await;
    assert_eq!(agg.stats().dropped.get(DropReason::AfterClose), 1);
    assert!(sink.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_aggregator_closes_and_delivers() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    drop(agg);
    settle().await;
    assert_eq!(sink.rows().len(), 1);
}

/// A sink that panics: the rows are counted as lost and the aggregator keeps going.
struct Panicky;
impl BatchSink for Panicky {
    fn export(&self, _batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()> {
        Box::pin(async { panic!("sink bug") })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_sink_is_contained() {
    let agg = Aggregator::spawn(&config(), Arc::new(Panicky), &Handle::current());
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    agg.flush().await;
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!(st.dropped.get(DropReason::Shutdown), 2);
    assert_eq!(st.rows_produced, st.rows_delivered + st.rows_dropped());
    assert!(format!("{agg:?}").contains("rows_produced"));
}

/// Every event ends in a row or a counted drop, whatever the mix.
#[tokio::test(start_paused = true)]
async fn accounting_identity_holds_for_random_workloads() {
    for seed in 1..=20u64 {
        let mut x = seed;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let cfg = AggregatorConfig {
            batch_size: 1 + rnd(10) as usize,
            max_pending_rows: 10 + rnd(20) as usize,
            queue_capacity: 5 + rnd(50) as usize,
            max_in_flight_statements: 1 + rnd(5) as usize,
            max_errors_per_statement: rnd(3) as usize,
            ..config()
        };
        let (agg, sink) = spawn(cfg);
        let conns = [conn(), conn()];
        let mut emitted = 0u64;
        for i in 0..500 {
            let c = &conns[rnd(2) as usize];
            let id = format!("s{}", rnd(8));
            let kind = match rnd(8) {
                0 => EventKind::ConnectionOpened { latency_ms: 1 },
                1 | 2 => start(&id),
                3 | 4 => end_with_chunks(&id, &[(rnd(100) as i64 - 10, rnd(2) == 0)]),
                5 => complete(&id),
                6 => error(
                    Some(&id),
                    if rnd(3) == 0 {
                        ErrorClass::Terminal
                    } else {
                        ErrorClass::Retryable
                    },
                ),
                _ => error(None, ErrorClass::Unknown),
            };
            agg.emit(ev(c, kind));
            emitted += 1;
            if i % 37 == 0 {
                settle().await;
            }
            if i % 101 == 0 {
                tokio::time::advance(Duration::from_secs(rnd(10))).await;
            }
        }
        agg.close(Instant::now() + Duration::from_secs(2)).await;
        let st = agg.stats();
        assert_eq!(st.events_emitted(), emitted, "seed {seed}");
        assert_eq!(
            st.events_received,
            st.events_folded
                + st.dropped.get(DropReason::UnknownStatement)
                + st.dropped.get(DropReason::ErrorCap),
            "seed {seed}"
        );
        assert_eq!(
            st.rows_produced,
            st.rows_delivered + st.rows_dropped(),
            "seed {seed}: {st:?}"
        );
        assert_eq!(st.rows_delivered as usize, sink.rows().len(), "seed {seed}");
        assert_eq!((st.pending_rows, st.in_flight_statements), (0, 0));
        assert_eq!(st.dropped.total(), st.events_dropped() + st.rows_dropped());
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_racing_the_final_drain_is_still_counted() {
    let (agg, _sink) = spawn(config());
    let c = conn();
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    // What a producer that passed the closed check just before close would leave behind.
    assert!(
        agg.intake
            .queue
            .get_or_init(|| crossbeam_queue::ArrayQueue::new(4))
            .push(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }))
            .is_ok()
    );
    let counters = agg.counters.clone();
    drop(agg);
    settle().await;
    assert_eq!(counters.snapshot().dropped.get(DropReason::AfterClose), 1);
}

/// Megabyte messages and a hung sink: what the task holds stays within the byte budget, and
/// every event and row is still accounted for.
#[tokio::test(start_paused = true)]
async fn memory_stays_within_the_byte_budget() {
    let mut cfg = config();
    cfg.max_buffered_bytes = 256 << 10;
    cfg.max_pending_rows = 10_000;
    cfg.queue_capacity = 100_000;
    let (agg, sink) = spawn(cfg);
    sink.set_delay(Some(Duration::from_secs(3600)));
    let c = conn();
    let big = "x".repeat(100 << 10);
    let mut emitted = 0u64;
    for i in 0..200 {
        let id = format!("s{i}");
        agg.emit(ev(&c, start(&id)));
        for _ in 0..3 {
            agg.emit(ev(
                &c,
                EventKind::Error {
                    statement: Some(key(&id)),
                    error: Box::new(
                        DriverError::new("E", big.clone()).with_class(ErrorClass::Retryable),
                    ),
                },
            ));
        }
        agg.emit(ev(&c, error(None, ErrorClass::Unknown)));
        emitted += 5;
        if i % 10 == 0 {
            settle().await;
            let held = agg.stats().buffered_bytes;
            assert!(held <= 256 << 10, "held {held} bytes at statement {i}");
        }
    }
    settle().await;
    let st = agg.stats();
    assert!(st.buffered_bytes <= 256 << 10);
    // Error text beyond the budget is refused at the queue or when kept on its statement.
    assert!(
        st.dropped.get(DropReason::QueueFull) + st.dropped.get(DropReason::ErrorCap) > 0,
        "{st:?}"
    );
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!(st.events_emitted(), emitted);
    assert_eq!(
        st.events_received,
        st.events_folded + st.events_dropped()
            - st.dropped.get(DropReason::QueueFull)
            - st.dropped.get(DropReason::AfterClose)
    );
    assert_eq!(
        st.rows_produced,
        st.rows_delivered + st.rows_dropped(),
        "{st:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_error_text_is_bounded_and_kept_text_capped() {
    let mut cfg = config();
    cfg.max_buffered_bytes = 256 << 10;
    let (agg, sink) = spawn(cfg);
    let c = conn();
    let huge = || DriverError::new("E", "word ".repeat(20_000)).with_class(ErrorClass::Unknown);
    // Two 100 KB messages fit in the queue's 256 KiB of text; the third and fourth do not.
    for _ in 0..4 {
        agg.emit(ev(
            &c,
            EventKind::Error {
                statement: None,
                error: Box::new(huge()),
            },
        ));
    }
    assert_eq!(agg.stats().dropped.get(DropReason::QueueFull), 2);
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    let trace = &rows[0]
        .log
        .driver_log()
        .error_info
        .as_ref()
        .unwrap()
        .stack_trace;
    assert_eq!(trace.chars().count(), 2048);
    // The queue's text count came back to zero: another large error is taken.
    agg.emit(ev(
        &c,
        EventKind::Error {
            statement: None,
            error: Box::new(huge()),
        },
    ));
    assert_eq!(agg.stats().dropped.get(DropReason::QueueFull), 2);
}

#[tokio::test(start_paused = true)]
async fn a_flush_into_a_hung_sink_gives_up_at_the_close_timeout_and_the_task_goes_on() {
    let (agg, sink) = spawn(config());
    sink.set_delay(Some(Duration::from_secs(3600)));
    let c = conn();
    agg.emit(ev(&c, EventKind::ConnectionOpened { latency_ms: 1 }));
    let started = Instant::now();
    agg.flush().await;
    assert_eq!(Instant::now() - started, config().close_timeout);
    // The task still takes events and closes by its deadline.
    agg.emit(ev(&c, EventKind::ConnectionClosed { latency_ms: 1 }));
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!((st.rows_produced, st.rows_delivered), (2, 1), "{st:?}");
    assert_eq!(st.dropped.get(DropReason::Shutdown), 1);
    assert!(agg.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_host_allocates_no_queue() {
    let (agg, _sink) = spawn(config());
    settle().await;
    assert!(agg.intake.queue.get().is_none());
    agg.emit(ev(&conn(), EventKind::ConnectionOpened { latency_ms: 1 }));
    assert!(agg.intake.queue.get().is_some());
}
