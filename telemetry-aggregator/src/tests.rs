use std::sync::Arc;
use std::time::Duration;

use telemetry_types::BoxFuture;
use telemetry_types::classify::ErrorClass;
use telemetry_types::clock::now_millis;
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::drops::DropReason;
use telemetry_types::event::{
    ChunkFailure, ChunkStats, DriverError, EventKind, StatementCompletion, StatementEnd,
    StatementOutcome, TelemetryEvent,
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

fn opened(latency_ms: u64) -> EventKind {
    EventKind::ConnectionOpened { latency_ms }
}

/// The end of a statement whose handle folded `chunks` (latency, compressed).
fn end_with_chunks(id: &str, chunks: &[(i64, bool)]) -> EventKind {
    let mut stats = ChunkStats::default();
    for &(latency_ms, compressed) in chunks {
        stats.record(latency_ms, 100, compressed);
    }
    EventKind::StatementEnded {
        end: StatementEnd {
            statement_type: StatementType::Query,
            operation_type: OperationType::ExecuteStatement,
            statement_id: Some(id.into()),
            latency_ms: 42,
            chunks: stats,
            completion: StatementCompletion {
                execution_result: Some(ExecutionResultFormat::ExternalLinks),
                poll_count: Some(2),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

fn complete(id: &str) -> EventKind {
    end_with_chunks(id, &[])
}

fn failed(id: &str, class: ErrorClass) -> EventKind {
    let EventKind::StatementEnded { mut end } = end_with_chunks(id, &[(5, true), (9, false)])
    else {
        unreachable!()
    };
    end.outcome = StatementOutcome::Failed;
    end.error = Some(Box::new(DriverError::new("E", "msg").with_class(class)));
    EventKind::StatementEnded { end }
}

fn error(id: Option<&str>, class: ErrorClass) -> EventKind {
    EventKind::Error {
        statement_id: id.map(Into::into),
        error: Box::new(DriverError::new("E", "msg").with_class(class)),
    }
}

/// The defaults, with flushes on the exact interval (the tests count on when they happen)
/// and every full batch sent at once as `batch_size` rows (the tests count batches;
/// `max_batch_size` below `batch_size` counts as it).
fn config() -> AggregatorConfig {
    AggregatorConfig {
        flush_jitter_percent: 0,
        max_batch_size: 1,
        linger: Duration::ZERO,
        ..AggregatorConfig::default()
    }
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
    row.log()
        .driver_log()
        .sql_operation
        .as_ref()?
        .operation_detail
        .as_ref()?
        .operation_type
}

fn timestamp(row: &TelemetryRow) -> i64 {
    row.log().context.client_context.timestamp_millis
}

#[tokio::test(start_paused = true)]
async fn each_event_becomes_its_row() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, opened(5)));
    agg.emit(ev(&c, complete("s1")));
    settle().await;
    let st = agg.stats();
    assert_eq!((st.rows_produced, st.pending_rows), (2, 2));
    assert!(
        sink.rows().is_empty(),
        "below a batch: waits for the interval"
    );
    agg.emit(ev(&c, EventKind::ConnectionClosed { latency_ms: 3 }));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(op(&rows[0]), Some(OperationType::CreateSession));
    let log = rows[1].log();
    let d = log.driver_log();
    assert_eq!(d.sql_statement_id.as_deref(), Some("s1"));
    assert_eq!(d.operation_latency_ms, Some(42));
    assert_eq!(op(&rows[2]), Some(OperationType::DeleteSession));
    assert_eq!(agg.stats().events_folded, 3);
}

#[tokio::test(start_paused = true)]
async fn rows_are_dated_by_the_event_instant_or_by_the_drain() {
    let (agg, sink) = spawn(config());
    let c = conn();
    let at = |ago_ms: u64, kind| TelemetryEvent {
        at: Some(telemetry_types::clock::Stamp::from_instant(
            std::time::Instant::now() - Duration::from_millis(ago_ms),
        )),
        ..ev(&c, kind)
    };
    let before = now_millis();
    agg.emit(at(60_000, opened(1)));
    agg.emit(at(30_000, complete("s"))); // a statement's end carries its begin
    agg.emit(at(10_000, error(None, ErrorClass::Unknown)));
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
    dated(&rows[1], 30_000);
    dated(&rows[2], 10_000);
    dated(&rows[3], 0); // no instant: the drain's reading
}

#[tokio::test(start_paused = true)]
async fn a_statement_row_carries_what_its_handle_recorded() {
    let (agg, sink) = spawn(config());
    let c = conn();
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
    let a = rows[0].log().driver_log().sql_operation.clone().unwrap();
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
    let b = rows[1].log().driver_log().sql_operation.clone().unwrap();
    assert_eq!(b.chunk_details.unwrap().total_chunks_iterated, Some(1));
    assert_eq!(b.is_compressed, Some(false));
}

#[tokio::test(start_paused = true)]
async fn full_batches_go_without_waiting_for_the_interval() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 3,
        max_pending_rows: 10,
        ..config()
    });
    let c = conn();
    for _ in 0..7 {
        agg.emit(ev(&c, opened(1)));
    }
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![3, 3]);
    assert_eq!(agg.stats().pending_rows, 1);
}

#[tokio::test(start_paused = true)]
async fn rows_folded_together_go_in_one_request_up_to_the_cap() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 3,
        max_batch_size: 5,
        max_pending_rows: 20,
        ..config()
    });
    let c = conn();
    // Twelve events queued before the task runs: one drain slice folds them all.
    for _ in 0..12 {
        agg.emit(ev(&c, opened(1)));
    }
    settle().await;
    // The cap cuts the slice's rows into requests of 5; the last 2 (below batch_size)
    // wait for the interval.
    assert_eq!(sink.batch_sizes(), vec![5, 5]);
    assert_eq!(agg.stats().pending_rows, 2);
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![5, 5, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_soon_after_a_request_lingers_until_the_cap_or_the_linger() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 2,
        max_batch_size: 6,
        linger: Duration::from_millis(100),
        max_pending_rows: 20,
        ..config()
    });
    let c = conn();
    let send = |n: usize| {
        for _ in 0..n {
            agg.emit(ev(&c, opened(1)));
        }
    };
    // The first full batch goes at once (no request before it).
    send(2);
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![2]);
    // A second full batch right after it waits...
    send(3);
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![2]);
    assert_eq!(agg.stats().pending_rows, 3);
    // ...and grows: more rows join it while the linger runs.
    tokio::time::advance(Duration::from_millis(50)).await;
    send(2);
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![2]);
    // The linger ends: one request of everything waiting (a drain tick sends it).
    tokio::time::advance(Duration::from_millis(60)).await;
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![2, 5]);
    // Within the next linger, reaching the cap sends at once.
    send(6);
    settle().await;
    assert_eq!(sink.batch_sizes(), vec![2, 5, 6]);
    assert_eq!(agg.stats().pending_rows, 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_waiting_for_an_export_slot_lets_the_task_sleep() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 2,
        max_batch_size: 6,
        linger: Duration::from_millis(100),
        max_concurrent_exports: 1,
        ..config()
    });
    let c = conn();
    // The first batch hangs in the sink; a second full batch waits for its slot.
    sink.set_delay(Some(Duration::from_secs(3)));
    agg.emit(ev(&c, opened(1)));
    agg.emit(ev(&c, opened(2)));
    settle().await;
    agg.emit(ev(&c, opened(3)));
    agg.emit(ev(&c, opened(4)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agg.stats().pending_rows, 2);
    assert!(
        agg.intake.is_sleeping(),
        "no drain tick while nothing can be sent"
    );
    // The export finishing wakes the task: the waiting batch goes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(sink.batch_sizes(), vec![2, 2]);
}

#[tokio::test(start_paused = true)]
async fn interval_flush() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, opened(1)));
    settle().await;
    tokio::time::advance(Duration::from_millis(4900)).await;
    settle().await;
    assert!(sink.rows().is_empty());
    tokio::time::advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(sink.rows().len(), 1);
}

/// Lets the background task run what is ready, with no time passing (the paused clock
/// advances only when every task waits).
async fn run_without_time_passing() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_task_sleeps_and_the_event_that_makes_a_batch_wakes_it() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 1,
        ..config()
    });
    let c = conn();
    // Long idle: the drain tick has stopped.
    tokio::time::sleep(Duration::from_secs(60)).await;
    agg.emit(ev(&c, opened(1)));
    // No drain tick runs now; the event's own wake-up drains it (batch of 1: sent at once).
    tokio::task::yield_now().await;
    settle().await;
    assert_eq!(sink.rows().len(), 1);
    // And again after another quiet spell.
    tokio::time::sleep(Duration::from_secs(60)).await;
    agg.emit(ev(&c, opened(2)));
    settle().await;
    assert_eq!(sink.rows().len(), 2);
}

/// An aggregator whose task went idle long ago (its drain tick stopped), at a moment between
/// two flush ticks (every 5 s: the next at 65 s), and a connection.
async fn idle(config: AggregatorConfig) -> (Aggregator, Arc<RecordingSink>, Arc<ConnectionInfo>) {
    let (agg, sink) = spawn(config);
    tokio::time::sleep(Duration::from_millis(62_500)).await;
    assert!(agg.intake.is_sleeping());
    (agg, sink, conn())
}

#[tokio::test(start_paused = true)]
async fn an_idle_task_is_woken_by_a_batch_not_by_each_event() {
    let (agg, sink, c) = idle(AggregatorConfig {
        batch_size: 3,
        ..config()
    })
    .await;
    agg.emit(ev(&c, complete("a")));
    agg.emit(ev(&c, complete("b")));
    run_without_time_passing().await;
    assert_eq!(
        agg.stats().events_received,
        0,
        "two of a batch of three wait"
    );
    assert!(agg.intake.is_sleeping());
    agg.emit(ev(&c, complete("c")));
    run_without_time_passing().await;
    assert_eq!(agg.stats().events_received, 3, "the third makes the batch");
    assert_eq!(sink.batch_sizes(), vec![3]);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_hosts_rows_wait_for_the_flush_tick_and_wake_nothing() {
    let (agg, sink, c) = idle(config()).await;
    for id in ["a", "b", "c"] {
        agg.emit(ev(&c, complete(id)));
    }
    settle().await;
    assert_eq!(agg.stats().events_received, 0, "no wake-up, no drain tick");
    assert!(agg.intake.is_sleeping());
    // The flush tick (at 65 s) takes and sends them, as it would have sent them anyway.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    settle().await;
    assert_eq!(agg.stats().events_received, 3);
    assert_eq!(sink.batch_sizes(), vec![3]);
}

/// Which events wake an idle task at once (default batch of 200): those whose row it sends
/// at once, and it does.
#[rstest::rstest]
#[case::statement(complete("s"), false)]
#[case::opened(opened(1), false)]
#[case::closed(EventKind::ConnectionClosed { latency_ms: 1 }, false)]
#[case::terminal_failure(failed("s", ErrorClass::Terminal), true)]
#[case::retryable_failure(failed("s", ErrorClass::Retryable), false)]
#[case::terminal_error(error(None, ErrorClass::Terminal), true)]
#[case::retryable_error(error(None, ErrorClass::Retryable), false)]
#[case::failed_open(EventKind::ConnectionFailed {
    latency_ms: 3,
    error: Box::new(DriverError::new("ConnectError", "refused")),
}, true)]
#[case::chunk_failure(EventKind::ChunkFailed {
    failure: Box::new(ChunkFailure {
        statement_id: None,
        statement_type: StatementType::Query,
        operation_type: OperationType::ExecuteStatement,
        chunk_index: 1,
        chunks: ChunkStats::default(),
        completion: StatementCompletion::default(),
        error: DriverError::new("CloudFetchError", "x"),
    }),
}, true)]
#[tokio::test(start_paused = true)]
async fn an_idle_task_is_woken_at_once_only_for_rows_it_sends_at_once(
    #[case] kind: EventKind,
    #[case] wakes: bool,
) {
    let (agg, sink, c) = idle(config()).await;
    agg.emit(ev(&c, kind));
    run_without_time_passing().await;
    assert_eq!(agg.stats().events_received, u64::from(wakes));
    assert_eq!(agg.intake.is_sleeping(), !wakes);
    assert_eq!(
        sink.rows().len(),
        usize::from(wakes),
        "sent before any time passed"
    );
}

#[tokio::test(start_paused = true)]
async fn periodic_flushes_are_jittered_within_their_bound() {
    let spawned: Vec<_> = (0..12)
        .map(|_| {
            spawn(AggregatorConfig {
                flush_jitter_percent: 20,
                ..config()
            })
        })
        .collect();
    let c = conn();
    for (agg, _) in &spawned {
        agg.emit(ev(&c, opened(1)));
    }
    settle().await;
    let start = tokio::time::Instant::now();
    let mut flushed_at = vec![None; spawned.len()];
    while flushed_at.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        for (i, (_, sink)) in spawned.iter().enumerate() {
            if flushed_at[i].is_none() && !sink.rows().is_empty() {
                flushed_at[i] = Some(start.elapsed().as_millis() / 100);
            }
        }
    }
    let at: Vec<u128> = flushed_at.into_iter().map(Option::unwrap).collect();
    assert!(at.iter().all(|t| (39..=61).contains(t)), "4 s..6 s: {at:?}");
    let distinct: std::collections::BTreeSet<_> = at.iter().collect();
    assert!(distinct.len() > 2, "spread, not in step: {at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_terminal_failure_flushes_at_once_with_its_chunks() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, opened(1)));
    agg.emit(ev(&c, failed("s", ErrorClass::Terminal)));
    settle().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2, "flushed before the interval");
    let log = rows[1].log();
    let d = log.driver_log();
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
    // A retryable failure waits for its batch like any row.
    agg.emit(ev(&c, failed("r", ErrorClass::Retryable)));
    settle().await;
    assert_eq!(sink.rows().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn chunk_failures_failed_opens_and_terminal_errors_are_sent_at_once() {
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
            failure: Box::new(ChunkFailure {
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
    let log = rows[1].log();
    let d = log.driver_log();
    assert_eq!(d.sql_operation.as_ref().unwrap().chunk_id, Some(4));
    assert!(d.error_info.as_ref().unwrap().stack_trace.chars().count() <= 2048);
    agg.emit(ev(&c, error(Some("s"), ErrorClass::Terminal)));
    settle().await;
    assert_eq!(sink.rows().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn error_rows_carry_their_statement_id_when_known() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, error(None, ErrorClass::Unknown)));
    agg.emit(ev(&c, error(Some("01ef"), ErrorClass::Retryable)));
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].log().driver_log().sql_statement_id.is_none());
    assert_eq!(
        rows[1].log().driver_log().sql_statement_id.as_deref(),
        Some("01ef")
    );
    assert!(rows.iter().all(|r| r.is_error));
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
        agg.emit(ev(&c, opened(1)));
    }
    agg.flush().await;
    let st = agg.stats();
    assert_eq!(st.dropped.get(DropReason::QueueFull), 6);
    assert_eq!(st.events_received, 4);
    assert_eq!(st.events_emitted(), 10);
}

#[tokio::test(start_paused = true)]
async fn the_task_drains_before_its_tick_only_past_half_the_array() {
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
        agg.emit(ev(&c, opened(1)));
    }
    run_without_time_passing().await;
    assert_eq!(
        agg.stats().events_received,
        0,
        "below the mark: waits for the tick"
    );
    agg.emit(ev(&c, opened(1)));
    run_without_time_passing().await;
    assert_eq!(
        agg.stats().events_received,
        5,
        "at the mark: drained at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_size_array_wakes_the_task_a_few_pushes_past_its_mark() {
    let (agg, _sink) = spawn(config());
    let c = conn();
    run_without_time_passing().await;
    // The 192-slot array's mark is 128 (64 slots kept free for what comes while the task
    // wakes). Below it by one look's worth (16 pushes), the task waits for its tick: a
    // group of 100 statements wakes nothing.
    assert_eq!(crate::intake::PRIMARY_SLOTS, 192);
    for _ in 0..112 {
        agg.emit(ev(&c, opened(1)));
    }
    run_without_time_passing().await;
    assert_eq!(agg.stats().events_received, 0, "below the mark: waits");
    // Past the mark by at most one look's worth of pushes: drained before any time passes.
    for _ in 0..32 {
        agg.emit(ev(&c, opened(1)));
    }
    run_without_time_passing().await;
    assert_eq!(
        agg.stats().events_received,
        144,
        "past the mark: drained at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_delivered_whole() {
    let (agg, sink) = spawn(config());
    let c = conn();
    // 13 000 statements at once, far more than the array holds, and (at ~400 bytes a row)
    // more than the byte budget could hold if the task folded them all before exporting: the
    // overflow absorbs them, the task drains in slices and the exports run in between.
    for i in 0..13_000 {
        agg.emit(ev(&c, complete(&format!("01ef-{i}"))));
    }
    agg.close(Instant::now() + Duration::from_secs(5)).await;
    let st = agg.stats();
    assert_eq!(st.dropped.total(), 0, "{st:?}");
    assert_eq!(st.rows_delivered, 13_000);
    assert_eq!(sink.rows().len(), 13_000);
}

#[tokio::test(start_paused = true)]
async fn several_batches_are_in_flight_at_once() {
    let (agg, sink) = spawn(config());
    sink.set_delay(Some(Duration::from_millis(20)));
    let c = conn();
    for i in 0..2_000 {
        agg.emit(ev(&c, complete(&format!("01ef-{i}"))));
    }
    settle().await;
    assert_eq!(agg.stats().exports_in_flight, 4, "max_concurrent_exports");
    agg.close(Instant::now() + Duration::from_secs(5)).await;
    let st = agg.stats();
    assert_eq!(
        (st.rows_delivered, st.dropped.total()),
        (2_000, 0),
        "{st:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn near_the_byte_budget_events_wait_in_the_queue_for_exports_to_make_room() {
    let budget = 64 << 10;
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 2,
        max_concurrent_exports: 1,
        max_buffered_bytes: budget,
        ..config()
    });
    let c = conn();
    sink.set_delay(Some(Duration::from_secs(10)));
    // The first batch goes into the (hanging) sink; the rest pile up.
    agg.emit(ev(&c, opened(1)));
    agg.emit(ev(&c, opened(2)));
    settle().await;
    // About 250 statement ends fit in the queue's share of the budget, about 150 rows in
    // the task's.
    for i in 0..250 {
        agg.emit(ev(&c, complete(&format!("s{i}"))));
    }
    settle().await;
    let st = agg.stats();
    assert!(st.buffered_bytes <= budget as u64, "{st:?}");
    assert!(st.queued_events > 0, "the rest waits in the queue: {st:?}");
    assert_eq!(
        st.dropped.total(),
        0,
        "nothing dropped for want of patience"
    );
    // The sink recovers: everything arrives.
    tokio::time::advance(Duration::from_secs(10)).await;
    sink.set_delay(None);
    agg.close(Instant::now() + Duration::from_secs(5)).await;
    let st = agg.stats();
    assert_eq!((st.rows_delivered, st.dropped.total()), (252, 0), "{st:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hung_sink_at_close_costs_only_what_it_held() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 2,
        max_concurrent_exports: 1,
        max_buffered_bytes: 64 << 10,
        ..config()
    });
    let c = conn();
    sink.set_delay(Some(Duration::from_secs(3600)));
    for i in 0..250 {
        agg.emit(ev(&c, complete(&format!("s{i}"))));
    }
    settle().await;
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!(
        st.rows_delivered, 2,
        "the cut batch is the sink's to settle"
    );
    assert!(st.dropped.get(DropReason::Shutdown) > 0);
    assert_eq!(st.events_emitted(), 250);
    assert!(st.dropped.get(DropReason::AfterClose) > 0);
    assert_eq!(
        st.events_received + st.dropped.get(DropReason::AfterClose),
        250,
        "events still queued at the deadline are counted: {st:?}"
    );
    assert_eq!(st.rows_produced, st.rows_delivered + st.rows_dropped());
}

#[tokio::test(start_paused = true)]
async fn the_row_cap_keeps_the_error_row() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 1,
        max_pending_rows: 2,
        max_concurrent_exports: 1,
        ..config()
    });
    let c = conn();
    sink.set_delay(Some(Duration::from_secs(10)));
    agg.emit(ev(&c, opened(1)));
    settle().await;
    agg.emit(ev(&c, error(None, ErrorClass::Unknown)));
    agg.emit(ev(&c, opened(2)));
    agg.emit(ev(&c, opened(3)));
    settle().await;
    sink.set_delay(None);
    assert_eq!(agg.stats().dropped.get(DropReason::PendingCap), 1);
    // The slow batch ends; the rest follow.
    tokio::time::advance(Duration::from_secs(10)).await;
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 3);
    assert!(rows[1].is_error, "the error row survived the cap");
    assert_eq!(rows[2].log().driver_log().operation_latency_ms, Some(3));
    assert_eq!(agg.stats().dropped.get(DropReason::Shutdown), 0);
}

#[tokio::test(start_paused = true)]
async fn close_drains_and_flushes_nothing_twice() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, opened(1)));
    agg.emit(ev(&c, complete("s")));
    agg.close(Instant::now() + Duration::from_secs(2)).await;
    assert_eq!(sink.rows().len(), 2);
    assert!(agg.is_closed());
    // Idempotent: a second close and a flush after close do nothing.
    agg.close(Instant::now() + Duration::from_secs(2)).await;
    agg.flush().await;
    assert_eq!(sink.rows().len(), 2);
    assert_eq!(sink.batch_sizes(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn close_respects_the_deadline_with_a_hanging_sink() {
    let (agg, sink) = spawn(AggregatorConfig {
        batch_size: 2,
        ..config()
    });
    sink.set_delay(Some(Duration::from_secs(10)));
    let c = conn();
    for _ in 0..11 {
        agg.emit(ev(&c, opened(1)));
    }
    let started = Instant::now();
    agg.close(started + Duration::from_secs(2)).await;
    assert!(Instant::now() - started <= Duration::from_millis(2050));
    let st = agg.stats();
    // Four batches were in the hung sink and cut at the deadline: the sink settles their
    // rows; the three rows never handed over are dropped here.
    assert_eq!(st.rows_delivered, 8);
    assert_eq!(st.dropped.get(DropReason::Shutdown), 3);
    assert!(sink.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn events_after_close_are_counted_not_processed() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    agg.emit(ev(&c, opened(1)));
    settle().await;
    assert_eq!(agg.stats().dropped.get(DropReason::AfterClose), 1);
    assert!(sink.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_aggregator_closes_and_delivers() {
    let (agg, sink) = spawn(config());
    let c = conn();
    agg.emit(ev(&c, opened(1)));
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
    agg.emit(ev(&c, opened(1)));
    agg.flush().await;
    agg.emit(ev(&c, opened(1)));
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
            queue_capacity: 5 + rnd(600) as usize,
            max_concurrent_exports: 1 + rnd(4) as usize,
            max_buffered_bytes: (64 << 10) + rnd(64 << 10) as usize,
            ..config()
        };
        let (agg, sink) = spawn(cfg);
        if rnd(2) == 0 {
            sink.set_delay(Some(Duration::from_millis(rnd(50))));
        }
        let conns = [conn(), conn()];
        let mut emitted = 0u64;
        for i in 0..800 {
            let c = &conns[rnd(2) as usize];
            let id = format!("s{}", rnd(8));
            let kind = match rnd(6) {
                0 => opened(1),
                1 => end_with_chunks(&id, &[(rnd(100) as i64 - 10, rnd(2) == 0)]),
                2 => complete(&id),
                3 => failed(&id, ErrorClass::Terminal),
                4 => error(Some(&id), ErrorClass::Retryable),
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
        assert_eq!(st.events_received, st.events_folded, "seed {seed}");
        assert_eq!(st.events_folded, st.rows_produced, "seed {seed}");
        assert_eq!(
            st.rows_produced,
            st.rows_delivered + st.rows_dropped(),
            "seed {seed}: {st:?}"
        );
        assert_eq!(st.rows_delivered as usize, sink.rows().len(), "seed {seed}");
        assert_eq!((st.pending_rows, st.exports_in_flight), (0, 0));
        assert_eq!(st.dropped.total(), st.events_dropped() + st.rows_dropped());
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_racing_the_final_drain_is_still_counted() {
    let (agg, _sink) = spawn(config());
    let c = conn();
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    // What a producer that passed the closed check just before close would leave behind.
    agg.intake.push_racing_close(ev(&c, opened(1)));
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
    let (agg, sink) = spawn(cfg);
    sink.set_delay(Some(Duration::from_secs(3600)));
    let c = conn();
    let big = "x".repeat(100 << 10);
    let mut emitted = 0u64;
    for i in 0..200 {
        let id = format!("s{i}");
        for _ in 0..3 {
            agg.emit(ev(
                &c,
                EventKind::Error {
                    statement_id: Some(id.as_str().into()),
                    error: Box::new(
                        DriverError::new("E", big.clone()).with_class(ErrorClass::Retryable),
                    ),
                },
            ));
        }
        agg.emit(ev(&c, complete(&id)));
        emitted += 4;
        if i % 10 == 0 {
            settle().await;
            let held = agg.stats().buffered_bytes;
            assert!(held <= 256 << 10, "held {held} bytes at statement {i}");
        }
    }
    settle().await;
    let st = agg.stats();
    assert!(st.buffered_bytes <= 256 << 10);
    // Error text beyond the budget is refused at the queue.
    assert!(st.dropped.get(DropReason::QueueFull) > 0, "{st:?}");
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!(st.events_emitted(), emitted);
    assert_eq!(st.events_received, st.events_folded);
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
                statement_id: None,
                error: Box::new(huge()),
            },
        ));
    }
    assert_eq!(agg.stats().dropped.get(DropReason::QueueFull), 2);
    agg.flush().await;
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    let log = rows[0].log();
    let trace = &log.driver_log().error_info.as_ref().unwrap().stack_trace;
    assert_eq!(trace.chars().count(), 2048);
    // The queue's text count came back to zero: another large error is taken.
    agg.emit(ev(
        &c,
        EventKind::Error {
            statement_id: None,
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
    agg.emit(ev(&c, opened(1)));
    let started = Instant::now();
    agg.flush().await;
    assert_eq!(Instant::now() - started, config().close_timeout);
    // The task still takes events and closes by its deadline.
    agg.emit(ev(&c, EventKind::ConnectionClosed { latency_ms: 1 }));
    agg.close(Instant::now() + Duration::from_secs(1)).await;
    let st = agg.stats();
    assert_eq!((st.rows_produced, st.rows_delivered), (2, 2), "{st:?}");
    assert!(agg.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_host_allocates_no_queue() {
    let (agg, _sink) = spawn(config());
    settle().await;
    assert!(!agg.intake.is_allocated());
    agg.emit(ev(&conn(), opened(1)));
    assert!(agg.intake.is_allocated());
}
