//! Benchmarks of the event path and the pipeline (`cargo bench -p telemetry-client`).
//!
//! A small std-only harness (no criterion / divan: they would add a large dev-dependency tree
//! to a 2-core CI machine for four numbers): each benchmark takes many samples and prints the
//! median, plus one machine-readable `BENCH name|median|target|met` line that
//! `cargo xtask bench` turns into `target/bench-report.md`.
//! `TELEMETRY_BENCH_QUICK=1` takes fewer samples.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use telemetry_aggregator::{Aggregator, AggregatorConfig};
use telemetry_client::{
    AuthType, ClientPreset, Connection, ConnectionOptions, DisableSwitch, Host, OperationType,
    ProviderOptions, StatementType, StaticToken, TelemetryClientProvider,
};
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::event::{
    ChunkStats, CompactId, EventKind, StatementCompletion, StatementEnd, TelemetryEvent,
};
use telemetry_types::row::{self, TelemetryRow};
use telemetry_types::sink::BatchSink;
use telemetry_types::testing::{RecordingSink, ScriptedFlagSource, ScriptedTransport};
use telemetry_types::wire::{ExecutionResultFormat, TelemetryRequest};

mod common;
use common::{report, wait_until};

fn quick() -> bool {
    std::env::var_os("TELEMETRY_BENCH_QUICK").is_some()
}

fn samples() -> usize {
    if quick() { 11 } else { 51 }
}

/// Median of `samples()` runs of `f`, each returning (elapsed, units of work).
fn median_per_unit(mut f: impl FnMut() -> (Duration, u64)) -> f64 {
    let _ = f(); // warm-up
    let mut v: Vec<f64> = (0..samples())
        .map(|_| {
            let (d, n) = f();
            d.as_nanos() as f64 / n.max(1) as f64
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn provider(enabled: bool, flag: bool) -> TelemetryClientProvider {
    let mut o = ProviderOptions::new("Bench", "1.0.0", ClientPreset::jdbc());
    o.config.enabled = enabled;
    o.config.aggregation.queue_capacity = 1_000_000;
    o.config.aggregation.max_pending_rows = 1_000_000;
    o.config.aggregation.batch_size = 1000;
    o.transport = Some(ScriptedTransport::counting(200));
    o.flag_source = Some(ScriptedFlagSource::fixed(flag));
    o.switch = Some(DisableSwitch::Unset);
    TelemetryClientProvider::new(o)
}

fn connect(p: &TelemetryClientProvider) -> Connection {
    p.connect(
        ConnectionOptions::new("bench.example")
            .with_auth(Arc::new(StaticToken::new("t")), AuthType::Pat),
    )
}

const ITERS: u64 = 100_000;

/// Median cost of `connection.opened(..)` on a disabled path.
fn bench_disabled_path(name: &str, c: &Connection) {
    let ns = median_per_unit(|| {
        let t = Instant::now();
        for _ in 0..ITERS {
            black_box(c).opened(black_box(Duration::from_millis(1)));
        }
        (t.elapsed(), ITERS)
    });
    report(name, format!("{ns:.2} ns"), "<= 2 ns", ns <= 2.0);
}

fn bench_disabled() {
    let p = provider(false, true);
    bench_disabled_path("event, telemetry disabled (config)", &connect(&p));
    let p = provider(true, false);
    let c = connect(&p);
    wait_until(|| !c.is_enabled());
    bench_disabled_path("event, telemetry disabled (server flag off)", &c);
}

/// One statement as a SEA driver runs it: begun before the execute call, the server's id
/// attached from its answer, three CloudFetch chunks, completed; the handle dropped.
fn lifecycle(c: &Connection, id: &str, chunks: usize) {
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id(id);
    for _ in 0..chunks {
        s.chunk(Duration::from_millis(3), 1 << 20, true);
    }
    s.complete();
}

fn enabled_provider() -> (TelemetryClientProvider, Connection) {
    let p = provider(true, true);
    let c = connect(&p);
    wait_until(|| {
        p.host_stats("bench.example")
            .is_some_and(|h| h.flag == telemetry_client::FlagState::Enabled)
    });
    (p, c)
}

fn events_received(p: &TelemetryClientProvider) -> u64 {
    p.host_stats("bench.example")
        .map_or(0, |h| h.aggregator.events_received)
}

/// The driver thread's cost of one statement (begin, attach id, 3 chunks, complete, drop),
/// measured as a driver produces them: groups of `group` statements, the background task
/// taking each group before the next (as it does between statements that each take
/// milliseconds). A group of one statement is too short to time (a clock reading is a third
/// of it), so the median is over groups.
fn bench_statement(group: u64) -> f64 {
    let ns = bench_statement_group(group, |c, id| lifecycle(c, id, 3));
    report(
        "driver thread: statement (begin, id, 3 chunks, complete)",
        format!("{ns:.1} ns"),
        "<= 120 ns",
        ns <= 120.0,
    );
    ns
}

/// The same statement through the single-task handle (`Connection::local_statement`), the
/// driver's fast path when one task runs the statement from begin to end.
fn bench_local_statement(group: u64) -> f64 {
    let ns = bench_statement_group(group, |c, id| {
        let mut s = c.local_statement(StatementType::Query, OperationType::ExecuteStatement);
        s.attach_id(id);
        for _ in 0..3 {
            s.chunk(Duration::from_millis(3), 1 << 20, true);
        }
        s.complete();
    });
    report(
        "driver thread: local statement (begin, id, 3 chunks, complete)",
        format!("{ns:.1} ns"),
        "<= 120 ns",
        ns <= 120.0,
    );
    ns
}

/// Where the statement's time goes, measured the same way in the same run: the handle's
/// begin and end alone, then with the id attached; the rest is the three chunks.
fn bench_statement_parts(group: u64) {
    let bare = bench_statement_group(group, |c, _| {
        c.statement(StatementType::Query, OperationType::ExecuteStatement)
            .complete();
    });
    report(
        "driver thread, part: begin + complete",
        format!("{bare:.1} ns"),
        "-",
        true,
    );
    let with_id = bench_statement_group(group, |c, id| {
        let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        s.attach_id(id);
        s.complete();
    });
    report(
        "driver thread, part: begin + attach id + complete",
        format!("{with_id:.1} ns"),
        "-",
        true,
    );
}

/// Median driver-thread cost of `statement` over groups of `group` statements, the
/// background task taking each group before the next. A group that passes the intake's mark
/// wakes the task inside the timed part (the wake-up is the driver thread's); a smaller one
/// is taken by a flush outside it, as the task's tick would take it.
fn bench_statement_group(group: u64, statement: impl Fn(&Connection, &str)) -> f64 {
    let (p, c) = enabled_provider();
    let ids: Vec<String> = (0..group)
        .map(|i| format!("01ef-statement-{i:08}"))
        .collect();
    let mut sent = 0u64;
    let mut run_group = || {
        let t = Instant::now();
        for id in &ids {
            statement(&c, id);
        }
        let d = t.elapsed();
        sent += group;
        if events_received(&p) < sent {
            let _ = p.force_flush_blocking(Duration::from_secs(10));
        }
        wait_until(|| events_received(&p) >= sent);
        // The task settles before the next group, as between a driver's statements.
        std::thread::sleep(Duration::from_millis(1));
        (d, group)
    };
    let mut per: Vec<f64> = (0..samples() * 20)
        .map(|_| {
            let (d, n) = run_group();
            d.as_nanos() as f64 / n as f64
        })
        .collect();
    per.sort_by(|a, b| a.total_cmp(b));
    let dropped = p.stats().events_dropped();
    if dropped > 0 {
        println!("  note: {dropped} events dropped during the run");
    }
    per[per.len() / 2]
}

/// The same statements back to back, 2000 at once: a burst that fills the array part of the
/// intake and spills into the overflow, with the background task draining alongside.
fn bench_statement_burst() {
    let (p, c) = enabled_provider();
    const STATEMENTS: u64 = 2000;
    let ids: Vec<String> = (0..STATEMENTS)
        .map(|i| format!("01ef-statement-{i:08}"))
        .collect();
    let mut sent = 0u64;
    let ns = median_per_unit(|| {
        let t = Instant::now();
        for id in &ids {
            lifecycle(&c, id, 3);
        }
        let d = t.elapsed();
        sent += STATEMENTS;
        wait_until(|| events_received(&p) >= sent);
        (d, STATEMENTS)
    });
    report(
        "driver thread: statement in a 2000-statement burst",
        format!("{ns:.1} ns"),
        "-",
        true,
    );
}

/// Words of an event's size: a floor's queue slot.
const SLOT_WORDS: usize = std::mem::size_of::<TelemetryEvent>() / 8;

/// A lock-free queue of `slots` event-sized slots, with a consumer thread that drains it
/// every `tick` (as the background task drains its intake), and what stops that thread.
fn drained_queue(
    slots: usize,
    tick: Duration,
) -> (Arc<ArrayQueue<[u64; SLOT_WORDS]>>, impl FnOnce()) {
    let queue = Arc::new(ArrayQueue::new(slots));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (queue, stop) = (queue.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while let Some(v) = queue.pop() {
                    black_box(v);
                }
                std::thread::sleep(tick);
            }
        })
    };
    (queue, move || {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = consumer.join();
    })
}

/// One statement on a thread that has been idle for 25 ms, as a driver's statements mostly
/// are (each waits on the server), the background task asleep meanwhile (its intake found
/// empty): median over single statements, each timed alone. Beside it, its floor after the
/// same sleep (two counter readings and one push of an event's size onto a queue another
/// thread drains): what cold caches cost any code there.
fn bench_isolated_statement() {
    const IDLE: Duration = Duration::from_millis(25);
    let rounds = if quick() { 40 } else { 200 };
    let median = |mut f: Box<dyn FnMut(usize) -> Duration>| {
        let mut v: Vec<f64> = (0..rounds)
            .map(|i| {
                std::thread::sleep(IDLE);
                f(i).as_nanos() as f64
            })
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (p, c) = enabled_provider();
    let ids: Vec<String> = (0..rounds)
        .map(|i| format!("01ef-statement-{i:08}"))
        .collect();
    let local = median(Box::new(|i| {
        let t = Instant::now();
        let mut s = c.local_statement(StatementType::Query, OperationType::ExecuteStatement);
        s.attach_id(&ids[i]);
        for _ in 0..3 {
            s.chunk(Duration::from_millis(3), 1 << 20, true);
        }
        s.complete();
        t.elapsed()
    }));
    let shared = median(Box::new(|i| {
        let t = Instant::now();
        lifecycle(&c, &ids[i], 3);
        t.elapsed()
    }));
    wait_until(|| events_received(&p) >= 2 * rounds as u64);
    let (queue, stop) = drained_queue(192, Duration::from_millis(10));
    let floor = median(Box::new(|i| {
        let t = Instant::now();
        let begun = counter_reading();
        let _ = queue.push(black_box([i as u64; SLOT_WORDS]));
        black_box((begun, counter_reading()));
        t.elapsed()
    }));
    stop();
    for (name, ns) in [
        (
            "driver thread: isolated statement, after 25 ms idle",
            shared,
        ),
        ("driver thread: isolated local statement", local),
        (
            "floor: isolated (2 clocks, 1 push), after 25 ms idle",
            floor,
        ),
    ] {
        report(name, format!("{:.2} us", ns / 1000.0), "-", true);
    }
}

/// A raw reading of the CPU's time-stamp counter, as the statement clock takes it (no
/// counter off x86_64: an `Instant` reading there).
#[cfg(target_arch = "x86_64")]
fn counter_reading() -> u64 {
    // SAFETY: RDTSC has no preconditions: it reads the time-stamp counter, which every x86_64
    // CPU has, and touches no memory.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn counter_reading() -> Instant {
    Instant::now()
}

/// What a statement cannot avoid, measured in the same run: two clock readings (its begin,
/// its latency; the cheaper of the OS clock and the CPU's counter, which statements read
/// where it is invariant), one lock-free queue push of an event's size (the end and its id
/// ride inline; the consumer draining on a tick, as the background task does) and one heap
/// allocation freed again (the shared handle; a local statement has none). Returns the sum,
/// and the sum without the allocation (a local statement's floor).
fn bench_floor() -> (f64, f64) {
    let instant = median_per_unit(|| {
        let t = Instant::now();
        for _ in 0..10_000 {
            black_box(Instant::now());
        }
        (t.elapsed(), 10_000)
    });
    report(
        "floor: clock reading (Instant::now)",
        format!("{instant:.1} ns"),
        "-",
        true,
    );
    let tsc = median_per_unit(|| {
        let t = Instant::now();
        for _ in 0..10_000 {
            black_box(counter_reading());
        }
        (t.elapsed(), 10_000)
    });
    report(
        "floor: clock reading (CPU counter, RDTSC)",
        format!("{tsc:.1} ns"),
        "-",
        true,
    );
    let clock = instant.min(tsc);

    let (queue, stop) = drained_queue(512, Duration::from_millis(1));
    let push = median_per_unit(|| {
        while !queue.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        for i in 0..100u64 {
            let _ = queue.push(black_box([i; SLOT_WORDS]));
        }
        (t.elapsed(), 100)
    });
    stop();
    report(
        "floor: lock-free queue push of one event",
        format!("{push:.1} ns"),
        "-",
        true,
    );

    let alloc = median_per_unit(|| {
        let t = Instant::now();
        for i in 0..10_000u64 {
            let handle = Arc::new(black_box([i; 24]));
            black_box(&handle);
        }
        (t.elapsed(), 10_000)
    });
    report(
        "floor: one allocation and free",
        format!("{alloc:.1} ns"),
        "-",
        true,
    );
    let floor = 2.0 * clock + push + alloc;
    report(
        "floor: statement (2 clocks, 1 push, 1 allocation)",
        format!("{floor:.1} ns"),
        "-",
        true,
    );
    let local = 2.0 * clock + push;
    report(
        "floor: local statement (2 clocks, 1 push)",
        format!("{local:.1} ns"),
        "-",
        true,
    );
    (floor, local)
}

fn bench_channel_floor() -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<[u64; 8]>(1 << 20);
    // The consumer drains on a tick, as the aggregator drains its intake: a consumer spinning
    // on each value would make the floor swing with how often producer and consumer meet on
    // the same cache lines (seen: 18 to 60 ns from run to run).
    let consumer = std::thread::spawn(move || {
        loop {
            loop {
                match rx.try_recv() {
                    Ok(v) => drop(black_box(v)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            // The aggregator's intake drains on a 10 ms tick; the floor drains the same way.
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let ns = median_per_unit(|| {
        let t = Instant::now();
        for i in 0..10_000u64 {
            let _ = tx.try_send(black_box([i; 8]));
        }
        (t.elapsed(), 10_000)
    });
    drop(tx);
    let _ = consumer.join();
    report(
        "floor: bare bounded-channel send (tokio mpsc)",
        format!("{ns:.1} ns"),
        "-",
        true,
    );
    ns
}

fn bench_aggregation() {
    let fold = background_throughput(RecordingSink::discarding());
    // Per statement (one event carrying 3 folded chunks): the target is the old 2 M events/s
    // at 5 events a statement (start, 3 chunk events, completion). A statement's row is built
    // when its body is written, so this is the fold alone.
    report(
        "aggregation throughput (statements, one event each)",
        format!("{:.0} k statements/s", fold / 1e3),
        ">= 400 k/s",
        fold >= 4e5,
    );
    // The sustained target asks the background path for 1 M statements a second on
    // one core. This is that path on one thread (a current-thread runtime) up to the bytes of
    // the request bodies: fold, build each row, write it; the HTTP send (one request per 200
    // rows by default) is not in it.
    let encoded = background_throughput(Arc::new(EncodingSink));
    report(
        "background path on one core: fold + build + body (no send)",
        format!("{:.0} k statements/s", encoded / 1e3),
        ">= 1000 k/s",
        encoded >= 1e6,
    );
}

/// A sink that writes each batch's request body, as the exporter does, and drops it.
struct EncodingSink;

impl BatchSink for EncodingSink {
    fn export(&self, batch: Vec<TelemetryRow>) -> telemetry_types::BoxFuture<'_, ()> {
        let body = telemetry_export::encode_rows(0, batch.iter(), false);
        black_box(body.map(|b| b.len()).unwrap_or_default());
        Box::pin(async {})
    }
}

/// Statements a second the background task takes from a full queue into `sink`, on one
/// thread: 20 000 statements with server-shaped ids, 3 chunks, a poll and a result format,
/// from a connection with a session and a driver-sized user agent.
fn background_throughput(sink: Arc<dyn BatchSink>) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut conn = ConnectionInfo::new(
        Host::parse("bench.example", false).expect("host"),
        "DatabricksJDBCDriverOSS/3.0.1 (Linux 6.1; x86_64; Java 17.0.15; en_US; bench)",
    );
    conn.workspace_id = Some(1234567890123456);
    let _ = conn
        .session_id
        .set("01f0a1b2-c3d4-1e5f-9a8b-7c6d5e4f3a2b".into());
    let conn = Arc::new(conn);
    const STATEMENTS: usize = 20_000;
    let ids: Vec<CompactId> = (0..STATEMENTS)
        .map(|i| CompactId::from(format!("01f0a1b2-c3d4-1e5f-9a8b-{i:012x}")))
        .collect();
    let mut config = AggregatorConfig::default();
    config.queue_capacity = STATEMENTS * 2;
    config.max_pending_rows = STATEMENTS * 2;
    config.max_buffered_bytes = 256 << 20;
    config.batch_size = 200;
    let mut chunks = ChunkStats::default();
    for _ in 0..3 {
        chunks.record(5, 10, true);
    }
    let ns = median_per_unit(|| {
        let agg = Aggregator::spawn(&config, sink.clone(), rt.handle());
        for id in &ids {
            // One event a statement: its three chunks, folded by the handle, ride with it.
            agg.emit(TelemetryEvent {
                connection: conn.clone(),
                at: None,
                kind: EventKind::StatementEnded {
                    end: StatementEnd {
                        statement_type: StatementType::Query,
                        operation_type: OperationType::ExecuteStatement,
                        statement_id: Some(id.clone()),
                        latency_ms: 20,
                        chunks,
                        completion: StatementCompletion {
                            poll_count: Some(1),
                            execution_result: Some(ExecutionResultFormat::ExternalLinks),
                            chunks_present: Some(3),
                            ..StatementCompletion::default()
                        },
                        ..StatementEnd::default()
                    },
                },
            });
        }
        // The queue is full of events; time only the background task taking them.
        let t = Instant::now();
        rt.block_on(agg.flush());
        (t.elapsed(), STATEMENTS as u64)
    });
    1e9 / ns
}

fn bench_serialisation() {
    let mut conn = ConnectionInfo::new(
        Host::parse("bench.example", false).expect("host"),
        "Bench/1.0",
    );
    conn.workspace_id = Some(1234567890123456);
    let _ = conn.session_id.set("01ef-0000-session".into());
    let mut chunks = ChunkStats::default();
    chunks.record(30, 1 << 20, true);
    chunks.record(50, 1 << 20, false);
    let logs: Vec<_> = (0..100)
        .map(|i| {
            row::statement_row(
                &conn,
                1_767_225_600_000,
                &StatementEnd {
                    statement_type: StatementType::Query,
                    operation_type: OperationType::ExecuteStatement,
                    statement_id: Some(format!("01ef-statement-{i}").into()),
                    latency_ms: 412,
                    chunks,
                    completion: StatementCompletion {
                        poll_count: Some(3),
                        chunks_present: Some(2),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
        })
        .collect();
    let encode = |f: &dyn Fn() -> Vec<u8>| {
        median_per_unit(|| {
            let t = Instant::now();
            for _ in 0..50 {
                black_box(f());
            }
            (t.elapsed(), 50 * 100)
        })
    };
    let ours = encode(&|| telemetry_export::encode_body(0, logs.iter()).expect("serialises"));
    // The reference: serde_json writing the same logs once, as a plain JSON array (the shape
    // minus the escaping the wire format's string-wrapped logs need).
    let reference = encode(&|| serde_json::to_vec(&logs).expect("serialises"));
    // Serialising each log to a string, then the request (escaping each again): the old way.
    let two_pass = encode(&|| {
        TelemetryRequest::from_logs(0, logs.iter())
            .and_then(|r| serde_json::to_vec(&r))
            .expect("serialises")
    });
    let rate = |ns: f64| format!("{:.0} k rows/s", 1e6 / ns);
    report(
        "serialisation: rows into a request body",
        rate(ours),
        ">= 2500 k/s",
        1e9 / ours >= 2.5e6,
    );
    report(
        "serialisation reference: serde_json, logs unwrapped",
        rate(reference),
        "-",
        true,
    );
    report(
        "serialisation, two passes (serialise, then escape)",
        rate(two_pass),
        "-",
        true,
    );
}

/// Redaction of a 1 MB error text with secrets of every class spread through it (the
/// background task's cost for a pathological message; driver text is capped before this).
fn bench_redaction() {
    let unit = "Query failed at /home/alice/q.sql: Bearer abc123def456 password=hunter2 \
        https://b.s3.amazonaws.com/x?X-Amz-Signature=00ff bob@example.com WHERE a = 'secret' \
        AKIAIOSFODNN7EXAMPLE and plain text that says nothing private at all. ";
    let text = unit.repeat((1 << 20) / unit.len());
    let ns = median_per_unit(|| {
        let t = Instant::now();
        black_box(telemetry_types::redact::redact(black_box(&text)));
        (t.elapsed(), 1)
    });
    let mb_per_s = text.len() as f64 / (ns / 1e9) / 1e6;
    report(
        "redaction: 1 MB error text",
        format!("{mb_per_s:.0} MB/s"),
        "-",
        true,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run quickly then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("(not invoked by cargo bench: skipping)");
        return;
    }
    // `cargo bench -p telemetry-client -- serialisation` runs the groups whose name contains
    // the word (for profiling one at a time).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |group: &str| only.is_empty() || only.iter().any(|o| group.contains(o.as_str()));
    // The floors first, on a fresh process: after the pipeline benchmarks (their heap, their
    // runtime threads winding down) they read higher, which would flatter the ratios.
    if run("statement floor") {
        let channel = bench_channel_floor();
        let (floor, local_floor) = bench_floor();
        let statement = bench_statement(100);
        report(
            "driver thread: statement / floor",
            format!("{:.2}x", statement / floor),
            "-",
            true,
        );
        report(
            "driver thread: statement / channel send",
            format!("{:.2}x", statement / channel),
            "-",
            true,
        );
        let local = bench_local_statement(100);
        report(
            "driver thread: local statement / its floor (no allocation)",
            format!("{:.2}x", local / local_floor),
            "-",
            true,
        );
        bench_statement_parts(100);
        bench_statement_burst();
    }
    if run("isolated statement") {
        bench_isolated_statement();
    }
    if run("disabled") {
        bench_disabled();
    }
    if run("aggregation") {
        bench_aggregation();
    }
    if run("serialisation") {
        bench_serialisation();
    }
    if run("redaction") {
        bench_redaction();
    }
    #[cfg(feature = "opentelemetry")]
    if run("opentelemetry") {
        otel::bench_bridge();
    }
}

/// The OpenTelemetry bridge's cost (`cargo bench -p telemetry-client --bench telemetry
/// --features opentelemetry -- opentelemetry`): on the driver thread, the same statement with
/// the bridge off and on, side by side in one run; in the background, the bridge thread's
/// time per statement (span and measurements into the SDK, its exporter discarding them).
#[cfg(feature = "opentelemetry")]
mod otel {
    use std::sync::atomic::{AtomicU64, Ordering};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
    use telemetry_client::OpenTelemetryBridge;

    use super::*;

    /// The application's span pipeline, its export free: counts and discards.
    #[derive(Debug, Default, Clone)]
    struct Discard(Arc<AtomicU64>);

    impl SpanProcessor for Discard {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, _: SpanData) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn bridged(flag: bool, spans: &Discard) -> (TelemetryClientProvider, Connection) {
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(spans.clone())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .build();
        let mut o = ProviderOptions::new("Bench", "1.0.0", ClientPreset::jdbc());
        o.config.enabled = true;
        o.config.aggregation.queue_capacity = 1_000_000;
        o.config.aggregation.max_pending_rows = 1_000_000;
        o.config.aggregation.batch_size = 1000;
        o.transport = Some(ScriptedTransport::counting(200));
        o.flag_source = Some(ScriptedFlagSource::fixed(flag));
        o.switch = Some(DisableSwitch::Unset);
        o.opentelemetry = Some(
            OpenTelemetryBridge::from_providers(&tracer_provider, &meter_provider)
                .with_queue_capacity(1_000_000),
        );
        let p = TelemetryClientProvider::new(o);
        let c = connect(&p);
        let want = if flag {
            telemetry_client::FlagState::Enabled
        } else {
            telemetry_client::FlagState::Disabled
        };
        wait_until(|| {
            p.host_stats("bench.example")
                .is_some_and(|h| h.flag == want)
        });
        (p, c)
    }

    /// Median driver-thread ns per statement over groups of `GROUP`, and the bridge's ns per
    /// statement: from the group's first begin until its last span is in the SDK (the
    /// thread works alongside the driver, so this bounds its time per statement from above).
    fn measure(c: &Connection, spans: &Discard, p: &TelemetryClientProvider) -> (f64, f64) {
        const GROUP: u64 = 100;
        let ids: Vec<String> = (0..GROUP)
            .map(|i| format!("01ef-statement-{i:08}"))
            .collect();
        let mut driver = Vec::new();
        let mut background = Vec::new();
        for _ in 0..samples() * 20 {
            let before = spans.0.load(Ordering::Relaxed);
            let t = Instant::now();
            for id in &ids {
                lifecycle(c, id, 3);
            }
            let d = t.elapsed();
            // Yields rather than sleeps: a sleep's granularity would be most of the figure.
            let deadline = t + Duration::from_secs(30);
            while spans.0.load(Ordering::Relaxed) < before + GROUP && Instant::now() < deadline {
                std::thread::yield_now();
            }
            let all = t.elapsed();
            driver.push(d.as_nanos() as f64 / GROUP as f64);
            background.push(all.as_nanos() as f64 / GROUP as f64);
        }
        let _ = p.stats();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        (median(&mut driver), median(&mut background))
    }

    pub(super) fn bench_bridge() {
        let off = bench_statement_group(100, |c, id| lifecycle(c, id, 3));
        let spans = Discard::default();
        let (p, c) = bridged(true, &spans);
        let (on, background) = measure(&c, &spans, &p);
        let spans_flag_off = Discard::default();
        let (p_off, c_off) = bridged(false, &spans_flag_off);
        let (flag_off, background_flag_off) = measure(&c_off, &spans_flag_off, &p_off);
        report(
            "driver thread: statement, OpenTelemetry bridge off",
            format!("{off:.1} ns"),
            "-",
            true,
        );
        report(
            "driver thread: statement, bridge on (flag on: rows and spans)",
            format!("{on:.1} ns ({:.2}x off)", on / off),
            "-",
            true,
        );
        report(
            "driver thread: statement, bridge on (flag off: spans only)",
            format!("{flag_off:.1} ns ({:.2}x off)", flag_off / off),
            "-",
            true,
        );
        report(
            "bridge thread: statement into the SDK (span, duration, 3 chunks)",
            format!("{background:.0} ns (flag off: {background_flag_off:.0} ns)"),
            "-",
            true,
        );
        let s = p.stats();
        if s.opentelemetry_spans_dropped + s.opentelemetry_chunks_dropped > 0 {
            println!(
                "  note: the bridge dropped {} spans and {} chunk measurements",
                s.opentelemetry_spans_dropped, s.opentelemetry_chunks_dropped
            );
        }
    }
}
