//! The OpenTelemetry bridge (feature `opentelemetry`): the application's own view of its
//! statements, in the application's own OpenTelemetry pipeline.
//!
//! Per statement, a `CLIENT` span named for its operation (`EXECUTE_STATEMENT`,
//! `LIST_TABLES`, ...) with the database semantic conventions, parented on the OpenTelemetry
//! context that was current where the driver began the statement; the
//! `db.client.operation.duration` histogram; per CloudFetch chunk its download time and size;
//! and the library's own health (rows exported, rows dropped by reason, each host's breaker)
//! as observable instruments. It works whether or not the server's flag allows Databricks
//! telemetry: it is the application's data for the application's pipeline, switched on by
//! handing a bridge in ([`ProviderOptions::opentelemetry`](crate::ProviderOptions::opentelemetry)).
//!
//! Why a span per statement rather than events on the application's span: a statement has a
//! duration, and runs concurrently with others on the same application span (a connection
//! pool, CloudFetch downloads); a span of its own keeps both, and nests under the
//! application's span as its child, which is what the database conventions describe.
//!
//! Isolation: the application's SDK is foreign code that may block (a simple span processor
//! exports as each span ends), panic or be slow. Nothing of it runs on a driver thread or on
//! the telemetry runtime: a handle pushes a record into a bounded queue (a non-blocking push;
//! a full queue drops the record, counted in
//! [`ProviderStats::opentelemetry_spans_dropped`](crate::ProviderStats::opentelemetry_spans_dropped)
//! or `opentelemetry_chunks_dropped`), and one thread of the bridge's own makes the spans and
//! measurements. A panic there costs the record it was handling (counted the same way), never
//! the Databricks rows. Every statement ended with a bridge is a span made or a span dropped:
//! `opentelemetry_spans + opentelemetry_spans_dropped` is the statements ended.
//!
//! Never in it: SQL text (the driver never hands it in), an error message or name that was not
//! redacted as the rows are, tokens, URLs with their query.

use std::borrow::Cow;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider};
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use telemetry_types::event::{StatementEnd, StatementOutcome};
use telemetry_types::redact::redact_truncated;

use crate::stats::ProviderStats;

/// The instrumentation scope's name: spans and instruments say they come from here.
pub const SCOPE_NAME: &str = "databricks-sql-telemetry";

/// Records the queue holds by default before it drops (about 100 bytes each, plus what a
/// failed statement's error carries).
pub const DEFAULT_QUEUE_CAPACITY: usize = 16_384;

/// Longest error name (`error.type`) put on a span or a measurement, in characters.
const MAX_ERROR_TYPE_CHARS: usize = 128;
/// Longest status description (a redacted error message), in characters.
const MAX_STATUS_CHARS: usize = 1024;
/// Longest statement id put on a span, in characters.
const MAX_ID_CHARS: usize = 128;

/// The application's OpenTelemetry pipeline, handed to a provider
/// ([`ProviderOptions::opentelemetry`](crate::ProviderOptions::opentelemetry)): the tracer
/// and meter the bridge reports to. Either the global ones the application installed, or
/// providers handed in.
///
/// ```
/// # use telemetry_client::{ClientPreset, OpenTelemetryBridge, ProviderOptions};
/// let mut options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::adbc());
/// // Whatever `opentelemetry::global::set_tracer_provider` / `set_meter_provider` installed:
/// options.opentelemetry = Some(OpenTelemetryBridge::global());
/// ```
#[derive(Clone)]
pub struct OpenTelemetryBridge {
    tracer: Arc<BoxedTracer>,
    meter: Meter,
    queue_capacity: usize,
}

impl fmt::Debug for OpenTelemetryBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenTelemetryBridge")
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl OpenTelemetryBridge {
    /// The global tracer and meter providers, as they are when this is called (install the
    /// application's first).
    pub fn global() -> Self {
        Self::new(
            opentelemetry::global::tracer_with_scope(scope()),
            opentelemetry::global::meter_with_scope(scope()),
        )
    }

    /// Tracer and meter from the providers given (an SDK's `SdkTracerProvider` and
    /// `SdkMeterProvider`, say), under this library's instrumentation scope.
    pub fn from_providers<T, S, M>(tracer_provider: &T, meter_provider: &M) -> Self
    where
        T: TracerProvider,
        T::Tracer: Tracer<Span = S> + Send + Sync + 'static,
        S: opentelemetry::trace::Span + Send + Sync + 'static,
        M: MeterProvider + ?Sized,
    {
        Self::new(
            BoxedTracer::new(Box::new(tracer_provider.tracer_with_scope(scope()))),
            meter_provider.meter_with_scope(scope()),
        )
    }

    /// This tracer and this meter.
    pub fn new(tracer: BoxedTracer, meter: Meter) -> Self {
        Self {
            tracer: Arc::new(tracer),
            meter,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }

    /// How many records (a finished statement, a chunk) may wait for the bridge's thread
    /// before more are dropped and counted; at least 1. Default [`DEFAULT_QUEUE_CAPACITY`].
    pub fn with_queue_capacity(mut self, records: usize) -> Self {
        self.queue_capacity = records.max(1);
        self
    }
}

/// What a handle hands the bridge's thread.
enum Record {
    Statement(Box<Finished>),
    Chunk {
        attributes: Arc<[KeyValue]>,
        seconds: f64,
        bytes: u64,
    },
}

/// A statement that ended, as its handle saw it.
struct Finished {
    parent: Option<Context>,
    server: Arc<str>,
    begun: Instant,
    ended: Instant,
    end: StatementEnd,
}

/// The provider's bridge: the queue to its thread, and what it counts.
pub(crate) struct Bridge {
    tx: SyncSender<Record>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Records the queue took.
    queued: AtomicU64,
    /// Records the thread is done with (made into spans and measurements, or failed).
    handled: AtomicU64,
    /// Spans made.
    spans: AtomicU64,
    /// Statements whose span was lost: the queue was full or gone, or the SDK panicked.
    spans_dropped: AtomicU64,
    /// Chunk measurements lost the same ways.
    chunks_dropped: AtomicU64,
    /// Woken each time the thread is done with a record (for a flush that waits).
    progress: tokio::sync::Notify,
}

impl Counts {
    /// Counts a record that will never reach the SDK.
    fn lost(&self, record: &Record) {
        let counter = match record {
            Record::Statement(_) => &self.spans_dropped,
            Record::Chunk { .. } => &self.chunks_dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The provider's stats, read by the health instruments' callbacks (none once it is gone).
pub(crate) type StatsSource = Box<dyn Fn() -> Option<ProviderStats> + Send + Sync>;

impl Bridge {
    /// Starts the bridge's thread; `None` (logged) if the thread cannot be started.
    pub(crate) fn start(config: &OpenTelemetryBridge, stats: StatsSource) -> Option<Arc<Self>> {
        let (tx, rx) = sync_channel(config.queue_capacity);
        let counts = Arc::new(Counts::default());
        let (tracer, meter, thread_counts) =
            (config.tracer.clone(), config.meter.clone(), counts.clone());
        let started = std::thread::Builder::new()
            .name("databricks-telemetry-otel".into())
            .spawn(move || run(&rx, &tracer, &meter, stats, &thread_counts));
        match started {
            Ok(_) => Some(Arc::new(Self { tx, counts })),
            Err(e) => {
                tracing::warn!(error = %e, "the OpenTelemetry bridge could not start its thread; it is off");
                None
            }
        }
    }

    fn send(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.counts.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(record) | TrySendError::Disconnected(record)) => {
                self.counts.lost(&record);
            }
        }
    }

    /// Spans made so far.
    pub(crate) fn spans(&self) -> u64 {
        self.counts.spans.load(Ordering::Relaxed)
    }

    /// Statements whose span was lost, and chunk measurements lost, so far.
    pub(crate) fn dropped(&self) -> (u64, u64) {
        (
            self.counts.spans_dropped.load(Ordering::Relaxed),
            self.counts.chunks_dropped.load(Ordering::Relaxed),
        )
    }

    /// Resolves once every record queued before this call is handled (the spans are then in
    /// the application's SDK; its own exporter may hold them until it flushes).
    pub(crate) fn drained(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let target = self.counts.queued.load(Ordering::Relaxed);
        let counts = self.counts.clone();
        async move {
            loop {
                let progress = counts.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                if counts.handled.load(Ordering::Acquire) >= target {
                    return;
                }
                progress.await;
            }
        }
    }
}

/// One connection's bridge: the provider's, with the connection's attributes made once.
pub(crate) struct ConnBridge {
    bridge: Arc<Bridge>,
    server: Arc<str>,
    /// `db.system.name` and `server.address`, for each chunk's measurements.
    chunk_attributes: Arc<[KeyValue]>,
}

/// The OpenTelemetry context a statement's span is parented on.
pub(crate) type Parent = Context;

impl ConnBridge {
    pub(crate) fn new(bridge: Arc<Bridge>, host: &str) -> Self {
        let server: Arc<str> = Arc::from(host);
        Self {
            chunk_attributes: Arc::from(vec![
                KeyValue::new("db.system.name", "databricks"),
                KeyValue::new("server.address", server.to_string()),
            ]),
            bridge,
            server,
        }
    }

    /// The context current on the calling thread: the parent of the statement's span.
    pub(crate) fn parent(&self) -> Parent {
        Context::current()
    }

    /// One CloudFetch chunk downloaded.
    pub(crate) fn chunk(&self, latency: Duration, bytes: u64) {
        self.bridge.send(Record::Chunk {
            attributes: self.chunk_attributes.clone(),
            seconds: latency.as_secs_f64(),
            bytes,
        });
    }

    /// A statement ended (or its last handle was dropped).
    pub(crate) fn finished(
        &self,
        parent: Option<&Parent>,
        begun: Instant,
        ended: Instant,
        end: &StatementEnd,
    ) {
        self.bridge.send(Record::Statement(Box::new(Finished {
            parent: parent.cloned(),
            server: self.server.clone(),
            begun,
            ended,
            end: end.clone(),
        })));
    }
}

/// The instruments the bridge records into, made on its thread.
struct Instruments {
    duration: Histogram<f64>,
    chunk_duration: Histogram<f64>,
    chunk_size: Histogram<u64>,
}

impl Instruments {
    fn new(meter: &Meter, stats: StatsSource) -> Self {
        let stats: Arc<StatsSource> = Arc::new(stats);
        let exported = stats.clone();
        let _ = meter
            .u64_observable_counter("databricks.telemetry.rows.exported")
            .with_description("Telemetry rows the Databricks endpoint accepted")
            .with_unit("{row}")
            .with_callback(move |o| {
                if let Some(s) = exported() {
                    o.observe(s.rows_exported, &[]);
                }
            })
            .build();
        let dropped = stats.clone();
        let _ = meter
            .u64_observable_counter("databricks.telemetry.rows.dropped")
            .with_description("Telemetry rows dropped, by reason")
            .with_unit("{row}")
            .with_callback(move |o| {
                if let Some(s) = dropped() {
                    for (reason, n) in s.dropped.iter() {
                        if n > 0 {
                            o.observe(n, &[KeyValue::new("reason", reason.as_str())]);
                        }
                    }
                }
            })
            .build();
        let breakers = stats;
        let _ = meter
            .i64_observable_gauge("databricks.telemetry.breaker.state")
            .with_description(
                "Each host's circuit breaker: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open",
            )
            .with_callback(move |o| {
                if let Some(s) = breakers() {
                    for h in &s.hosts {
                        o.observe(
                            h.breaker as i64,
                            &[
                                KeyValue::new("server.address", h.host.clone()),
                                KeyValue::new("state", h.breaker.as_str()),
                            ],
                        );
                    }
                }
            })
            .build();
        Self {
            duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_description("Duration of database client operations")
                .with_unit("s")
                .with_boundaries(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
                ])
                .build(),
            chunk_duration: meter
                .f64_histogram("databricks.cloudfetch.chunk.duration")
                .with_description("Time to download one CloudFetch chunk")
                .with_unit("s")
                .with_boundaries(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            chunk_size: meter
                .u64_histogram("databricks.cloudfetch.chunk.size")
                .with_description("Size of one CloudFetch chunk")
                .with_unit("By")
                .with_boundaries(vec![
                    65_536.0,
                    262_144.0,
                    1_048_576.0,
                    4_194_304.0,
                    16_777_216.0,
                    67_108_864.0,
                ])
                .build(),
        }
    }

    fn handle(&self, tracer: &BoxedTracer, record: Record, counts: &Counts) {
        match record {
            Record::Chunk {
                attributes,
                seconds,
                bytes,
            } => {
                self.chunk_duration.record(seconds, &attributes);
                self.chunk_size.record(bytes, &attributes);
            }
            Record::Statement(f) => {
                let (attributes, status) = describe(&f);
                let seconds = f.ended.saturating_duration_since(f.begun).as_secs_f64();
                let measured: Vec<KeyValue> = attributes[..METRIC_ATTRIBUTES]
                    .iter()
                    .flatten()
                    .cloned()
                    .collect();
                self.duration.record(seconds, &measured);
                let wall = wall_clock();
                let parent = f.parent.unwrap_or_default();
                let mut span = tracer
                    .span_builder(f.end.operation_type.as_str())
                    .with_kind(SpanKind::Client)
                    .with_start_time(wall(f.begun))
                    .with_attributes(attributes.into_iter().flatten())
                    .start_with_context(tracer, &parent);
                if let Some(status) = status {
                    span.set_status(status);
                }
                span.end_with_timestamp(wall(f.ended));
                counts.spans.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A function from an `Instant` to the wall clock, both read once now.
fn wall_clock() -> impl Fn(Instant) -> SystemTime {
    let (wall, now) = (SystemTime::now(), Instant::now());
    move |at: Instant| {
        wall.checked_sub(now.saturating_duration_since(at))
            .unwrap_or(wall)
    }
}

/// How many of [`describe`]'s attributes, from the first, go on the duration histogram too
/// (those of low cardinality).
const METRIC_ATTRIBUTES: usize = 5;

/// The span's attributes (the first [`METRIC_ATTRIBUTES`] fit a metric; absent ones are
/// `None`) and its status, everything redacted as the rows are.
fn describe(f: &Finished) -> (Vec<Option<KeyValue>>, Option<Status>) {
    let end = &f.end;
    let failed = end.outcome == StatementOutcome::Failed;
    let error_type = failed.then(|| {
        end.error.as_ref().map_or(Cow::Borrowed("_OTHER"), |e| {
            Cow::Owned(redact_truncated(&e.name, MAX_ERROR_TYPE_CHARS))
        })
    });
    let sqlstate = end
        .error
        .as_ref()
        .and_then(|e| e.sqlstate.as_deref())
        .filter(|s| s.len() == 5 && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    let status = failed.then(|| {
        Status::error(end.error.as_ref().map_or(String::new(), |e| {
            redact_truncated(&e.message, MAX_STATUS_CHARS)
        }))
    });
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let attributes = vec![
        Some(KeyValue::new("db.system.name", "databricks")),
        Some(KeyValue::new(
            "db.operation.name",
            end.operation_type.as_str(),
        )),
        Some(KeyValue::new("server.address", f.server.to_string())),
        error_type.map(|t| KeyValue::new("error.type", t.into_owned())),
        sqlstate.map(|s| KeyValue::new("db.response.status_code", s.to_owned())),
        // Span only from here.
        Some(KeyValue::new(
            "databricks.statement.type",
            end.statement_type.as_str(),
        )),
        Some(KeyValue::new(
            "databricks.statement.outcome",
            end.outcome.as_str(),
        )),
        end.statement_id.as_ref().map(|id| {
            KeyValue::new(
                "databricks.statement.id",
                redact_truncated(id.as_str(), MAX_ID_CHARS),
            )
        }),
        end.completion
            .execution_result
            .map(|r| KeyValue::new("databricks.result.format", r.as_str())),
        end.completion
            .chunks_present
            .map(|n| KeyValue::new("databricks.cloudfetch.chunks_present", i64::from(n))),
        (end.chunks.iterated > 0).then(|| {
            KeyValue::new(
                "databricks.cloudfetch.chunks",
                i64::from(end.chunks.iterated),
            )
        }),
        (end.chunks.iterated > 0)
            .then(|| KeyValue::new("databricks.cloudfetch.bytes", int(end.chunks.bytes))),
        end.completion
            .poll_count
            .map(|n| KeyValue::new("databricks.poll.count", i64::from(n))),
    ];
    (attributes, status)
}

/// The bridge's thread: makes spans and measurements until every sender is gone.
fn run(
    rx: &Receiver<Record>,
    tracer: &BoxedTracer,
    meter: &Meter,
    stats: StatsSource,
    counts: &Counts,
) {
    let instruments = catch_unwind(AssertUnwindSafe(|| Instruments::new(meter, stats)));
    if instruments.is_err() {
        tracing::warn!(
            "the OpenTelemetry meter panicked while making instruments; the bridge is off"
        );
    }
    for record in rx {
        let kind = match record {
            Record::Statement(_) => &counts.spans_dropped,
            Record::Chunk { .. } => &counts.chunks_dropped,
        };
        let ok = match &instruments {
            Ok(i) => catch_unwind(AssertUnwindSafe(|| i.handle(tracer, record, counts))).is_ok(),
            Err(_) => false,
        };
        if !ok {
            kind.fetch_add(1, Ordering::Relaxed);
        }
        counts.handled.fetch_add(1, Ordering::Release);
        counts.progress.notify_waiters();
    }
}

/// Keeps a provider's stats reachable from the health instruments without keeping the
/// provider alive.
pub(crate) fn stats_source<T: Send + Sync + 'static>(
    inner: Weak<T>,
    stats: fn(Arc<T>) -> ProviderStats,
) -> StatsSource {
    Box::new(move || inner.upgrade().map(stats))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Condvar, Mutex};

    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{
        InMemorySpanExporter, SdkTracerProvider, SpanData, SpanProcessor,
    };
    use telemetry_types::testing::{ScriptedFlagSource, ScriptedTransport};

    use super::*;
    use crate::{
        ClientPreset, ConnectionOptions, DisableSwitch, ErrorReport, ExecutionResultFormat,
        OperationType, ProviderOptions, StatementType, StaticToken, TelemetryClientProvider,
    };

    /// Each metric's data points: (attributes, count or value).
    type Points = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

    /// The application's pipeline: the SDK with in-memory exporters.
    struct Pipeline {
        spans: InMemorySpanExporter,
        tracer_provider: SdkTracerProvider,
        metrics: InMemoryMetricExporter,
        meter_provider: SdkMeterProvider,
    }

    impl Pipeline {
        fn new() -> Self {
            Self::with_processor(None)
        }

        fn with_processor(extra: Option<Box<dyn SpanProcessor>>) -> Self {
            let spans = InMemorySpanExporter::default();
            let mut builder = SdkTracerProvider::builder();
            if let Some(p) = extra {
                builder = builder.with_span_processor(BoxedProcessor(p));
            }
            let tracer_provider = builder.with_simple_exporter(spans.clone()).build();
            let metrics = InMemoryMetricExporter::default();
            let meter_provider = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(metrics.clone()).build())
                .build();
            Self {
                spans,
                tracer_provider,
                metrics,
                meter_provider,
            }
        }

        fn bridge(&self) -> OpenTelemetryBridge {
            OpenTelemetryBridge::from_providers(&self.tracer_provider, &self.meter_provider)
        }

        fn finished_spans(&self) -> Vec<SpanData> {
            self.spans.get_finished_spans().unwrap()
        }

        /// Each metric's data points.
        fn metrics(&self) -> Points {
            self.meter_provider.force_flush().unwrap();
            let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
            let attrs = |a: &mut dyn Iterator<Item = &KeyValue>| {
                a.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect::<BTreeMap<_, _>>()
            };
            let all = self.metrics.get_finished_metrics().unwrap();
            // The last collection has every instrument's current totals.
            let Some(last) = all.last() else {
                return out;
            };
            for sm in last.scope_metrics() {
                for m in sm.metrics() {
                    let points = out.entry(m.name().to_owned()).or_default();
                    match m.data() {
                        AggregatedMetrics::F64(MetricData::Histogram(h)) => points.extend(
                            h.data_points()
                                .map(|p| (attrs(&mut p.attributes()), p.count() as f64)),
                        ),
                        AggregatedMetrics::U64(MetricData::Histogram(h)) => points.extend(
                            h.data_points()
                                .map(|p| (attrs(&mut p.attributes()), p.count() as f64)),
                        ),
                        AggregatedMetrics::U64(MetricData::Sum(s)) => points.extend(
                            s.data_points()
                                .map(|p| (attrs(&mut p.attributes()), p.value() as f64)),
                        ),
                        AggregatedMetrics::I64(MetricData::Gauge(g)) => points.extend(
                            g.data_points()
                                .map(|p| (attrs(&mut p.attributes()), p.value() as f64)),
                        ),
                        _ => {}
                    }
                }
            }
            out
        }
    }

    #[derive(Debug)]
    struct BoxedProcessor(Box<dyn SpanProcessor>);

    impl SpanProcessor for BoxedProcessor {
        fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
            self.0.on_start(span, cx);
        }
        fn on_end(&self, span: SpanData) {
            self.0.on_end(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn provider(
        pipeline: &Pipeline,
        flag_on: bool,
        server: &Arc<ScriptedTransport>,
    ) -> TelemetryClientProvider {
        provider_with(pipeline.bridge(), flag_on, server)
    }

    fn provider_with(
        bridge: OpenTelemetryBridge,
        flag_on: bool,
        server: &Arc<ScriptedTransport>,
    ) -> TelemetryClientProvider {
        let mut o = ProviderOptions::new("TestDriver", "1.0.0", ClientPreset::jdbc());
        o.config.enabled = true;
        o.transport = Some(server.clone());
        o.flag_source = Some(ScriptedFlagSource::fixed(flag_on));
        o.switch = Some(DisableSwitch::Unset);
        o.read_env = false;
        o.opentelemetry = Some(bridge);
        TelemetryClientProvider::new(o)
    }

    fn connect(p: &TelemetryClientProvider) -> crate::Connection {
        p.connect(
            ConnectionOptions::new("adb-1.azuredatabricks.net").with_auth(
                Arc::new(StaticToken::new("dapi0123456789abcdef0123")),
                crate::AuthType::Pat,
            ),
        )
    }

    /// The issue's workload: a query with chunks, a metadata call, a statement failing with
    /// a message that quotes SQL and a token.
    fn workload(c: &crate::Connection) {
        let q = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        q.attach_id("01f0-aaaa-bbbb");
        q.result_format(ExecutionResultFormat::ExternalLinks);
        q.chunks_present(2);
        q.chunk(Duration::from_millis(30), 4 << 20, true);
        q.chunk(Duration::from_millis(50), 2 << 20, true);
        q.complete();
        let m = c.metadata(OperationType::ListTables);
        m.complete();
        let f = c.statement(StatementType::Query, OperationType::ExecuteStatement);
        f.attach_id("01f0-cccc");
        let err = std::io::Error::other(
            "[TABLE_OR_VIEW_NOT_FOUND] SELECT * FROM secret_table WHERE ssn = '123-45-6789' token=dapi0123456789abcdef0123",
        );
        f.fail(
            &ErrorReport::of(&err)
                .named("AnalysisException")
                .sqlstate("42P01"),
        );
    }

    fn attribute<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// Everything the pipeline received, as text: what must never be in it is not.
    fn everything(pipeline: &Pipeline) -> String {
        let spans = pipeline.finished_spans();
        format!("{spans:?} {:?}", pipeline.metrics())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_carry_the_database_conventions_and_never_the_sql() {
        let pipeline = Pipeline::new();
        let server = ScriptedTransport::always(200);
        let p = provider(&pipeline, true, &server);
        let c = connect(&p);
        // The application's own span: the statements' spans are its children.
        let app = pipeline
            .tracer_provider
            .tracer("app")
            .start("handle-request");
        let app_id = app.span_context().span_id();
        {
            let _attached = Context::current_with_span(app).attach();
            workload(&c);
        }
        p.force_flush(Duration::from_secs(10)).await.unwrap();
        let spans = pipeline.finished_spans();
        let ours: Vec<_> = spans
            .iter()
            .filter(|s| s.instrumentation_scope.name() == SCOPE_NAME)
            .collect();
        assert_eq!(ours.len(), 3, "{spans:#?}");
        assert_eq!(p.stats().opentelemetry_spans, 3);
        for s in &ours {
            assert_eq!(s.span_kind, SpanKind::Client);
            assert_eq!(
                s.parent_span_id, app_id,
                "parented on the application's span"
            );
            assert_eq!(
                attribute(s, "db.system.name").unwrap().as_str(),
                "databricks"
            );
            assert_eq!(
                attribute(s, "server.address").unwrap().as_str(),
                "adb-1.azuredatabricks.net"
            );
            assert!(s.end_time >= s.start_time);
        }
        let (query, list, failed) = (ours[0], ours[1], ours[2]);
        assert_eq!(query.name, "EXECUTE_STATEMENT");
        assert_eq!(
            attribute(query, "db.operation.name").unwrap().as_str(),
            "EXECUTE_STATEMENT"
        );
        assert_eq!(
            attribute(query, "databricks.statement.id")
                .unwrap()
                .as_str(),
            "01f0-aaaa-bbbb"
        );
        assert_eq!(
            attribute(query, "databricks.result.format")
                .unwrap()
                .as_str(),
            "EXTERNAL_LINKS"
        );
        assert_eq!(
            attribute(query, "databricks.cloudfetch.chunks"),
            Some(&opentelemetry::Value::I64(2))
        );
        assert_eq!(
            attribute(query, "databricks.cloudfetch.bytes"),
            Some(&opentelemetry::Value::I64(6 << 20))
        );
        assert_eq!(query.status, Status::Unset);
        assert!(attribute(query, "error.type").is_none());
        assert_eq!(list.name, "LIST_TABLES");
        assert_eq!(
            attribute(list, "databricks.statement.type")
                .unwrap()
                .as_str(),
            "METADATA"
        );
        assert_eq!(
            attribute(failed, "error.type").unwrap().as_str(),
            "AnalysisException"
        );
        assert_eq!(
            attribute(failed, "db.response.status_code")
                .unwrap()
                .as_str(),
            "42P01"
        );
        let Status::Error { description } = &failed.status else {
            panic!("a failed statement's span is an error: {:?}", failed.status);
        };
        assert!(
            description.contains("TABLE_OR_VIEW_NOT_FOUND"),
            "{description}"
        );
        let all = everything(&pipeline);
        for secret in ["secret_table", "SELECT", "123-45-6789", "dapi0123456789"] {
            assert!(
                !all.contains(secret),
                "{secret} reached the pipeline: {all}"
            );
        }
        // The Databricks rows went out as well, unchanged by the bridge.
        c.close();
        p.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!(p.stats().rows_exported, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_give_durations_chunks_and_the_librarys_health() {
        let pipeline = Pipeline::new();
        let server = ScriptedTransport::always(200);
        let p = provider(&pipeline, true, &server);
        let c = connect(&p);
        workload(&c);
        p.force_flush(Duration::from_secs(10)).await.unwrap();
        let m = pipeline.metrics();
        let duration = &m["db.client.operation.duration"];
        let count = |op: &str, error: Option<&str>| -> f64 {
            duration
                .iter()
                .filter(|(a, _)| {
                    a["db.operation.name"] == op
                        && a.get("error.type").map(String::as_str) == error
                        && a["server.address"] == "adb-1.azuredatabricks.net"
                        && a["db.system.name"] == "databricks"
                })
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(count("EXECUTE_STATEMENT", None), 1.0, "{duration:?}");
        assert_eq!(count("LIST_TABLES", None), 1.0);
        assert_eq!(count("EXECUTE_STATEMENT", Some("AnalysisException")), 1.0);
        // No statement id or other high-cardinality attribute on a metric.
        assert!(duration.iter().all(|(a, _)| a.len() <= METRIC_ATTRIBUTES));
        let chunks: f64 = m["databricks.cloudfetch.chunk.duration"]
            .iter()
            .map(|(_, n)| n)
            .sum();
        let sizes: f64 = m["databricks.cloudfetch.chunk.size"]
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!((chunks, sizes), (2.0, 2.0));
        let exported: f64 = m["databricks.telemetry.rows.exported"]
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(exported, p.stats().rows_exported as f64);
        assert_eq!(exported, 3.0);
        let breaker = &m["databricks.telemetry.breaker.state"];
        assert_eq!(breaker.len(), 1);
        assert_eq!(breaker[0].0["state"], "closed");
        assert_eq!(breaker[0].1, 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bridge_reports_while_the_server_flag_is_off() {
        let pipeline = Pipeline::new();
        let server = ScriptedTransport::always(200);
        let p = provider(&pipeline, false, &server);
        let c = connect(&p);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while c.is_enabled() && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert!(!c.is_enabled(), "the flag's answer reached the handle");
        // This thread's own count: other tests run beside this one.
        let before = crate::unreported::this_thread();
        workload(&c);
        let flag_off = |m: &BTreeMap<crate::NotReported, u64>| {
            m.get(&crate::NotReported::FlagOff).copied().unwrap_or(0)
        };
        // Each statement's Databricks row is counted as not reported, once, at its begin.
        assert_eq!(
            flag_off(&crate::unreported::this_thread()) - flag_off(&before),
            3
        );
        p.force_flush(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            pipeline
                .finished_spans()
                .iter()
                .filter(|s| s.instrumentation_scope.name() == SCOPE_NAME)
                .count(),
            3
        );
        c.close();
        p.shutdown(Duration::from_secs(10)).await.unwrap();
        let s = p.stats();
        assert_eq!(
            (s.events_emitted, s.rows_produced, server.count()),
            (0, 0, 0)
        );
        assert_eq!(
            (s.opentelemetry_spans, s.opentelemetry_spans_dropped),
            (3, 0)
        );
        assert_eq!(s.statements_open, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_statement_is_one_span_however_and_wherever_it_ends() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 150;
        let pipeline = Pipeline::new();
        let server = ScriptedTransport::always(200);
        let p = provider(&pipeline, true, &server);
        let c = connect(&p);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let c = c.clone();
                scope.spawn(move || {
                    for i in 0..PER_THREAD {
                        let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
                        s.attach_id(&format!("01f0-{t}-{i}"));
                        // Two clones race to end it, or to drop it unended.
                        let other = s.clone();
                        let racer = std::thread::spawn(move || match i % 5 {
                            0 => other.complete(),
                            1 => other.cancel(),
                            2 => other.fail(&crate::DriverError::new("E", "x")),
                            3 => other.close(),
                            _ => drop(other),
                        });
                        if i % 5 != 4 {
                            s.complete();
                        }
                        drop(s);
                        racer.join().unwrap();
                    }
                });
            }
        });
        p.force_flush(Duration::from_secs(10)).await.unwrap();
        let all = (THREADS * PER_THREAD) as u64;
        let stats = p.stats();
        assert_eq!(
            (
                stats.opentelemetry_spans,
                stats.opentelemetry_spans_dropped,
                stats.rows_exported
            ),
            (all, 0, all)
        );
        let spans = pipeline.finished_spans();
        let mut ids: Vec<_> = spans
            .iter()
            .filter_map(|s| {
                attribute(s, "databricks.statement.id").map(|v| v.as_str().into_owned())
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len() as u64, all, "one span per statement, none twice");
        let abandoned = spans
            .iter()
            .filter(|s| {
                attribute(s, "databricks.statement.outcome").map(|v| v.as_str().into_owned())
                    == Some("abandoned".into())
            })
            .count();
        assert_eq!(abandoned, THREADS * PER_THREAD / 5);
    }

    /// A span processor that panics on the first span it sees.
    #[derive(Debug, Default)]
    struct PanicsOnce(AtomicBool);

    impl SpanProcessor for PanicsOnce {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, _: SpanData) {
            if !self.0.swap(true, Ordering::SeqCst) {
                panic!("the application's exporter panicked");
            }
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_sdk_costs_its_span_and_never_a_row() {
        let pipeline = Pipeline::with_processor(Some(Box::new(PanicsOnce::default())));
        let server = ScriptedTransport::always(200);
        let p = provider(&pipeline, true, &server);
        let c = connect(&p);
        for _ in 0..5 {
            c.statement(StatementType::Query, OperationType::ExecuteStatement)
                .complete();
        }
        p.force_flush(Duration::from_secs(10)).await.unwrap();
        let s = p.stats();
        assert_eq!(
            (s.opentelemetry_spans, s.opentelemetry_spans_dropped),
            (4, 1)
        );
        assert_eq!(s.rows_exported, 5, "the rows never depend on the bridge");
        // Only the span the panic interrupted is missing.
        let ours = pipeline
            .finished_spans()
            .iter()
            .filter(|s| s.instrumentation_scope.name() == SCOPE_NAME)
            .count();
        assert_eq!(ours, 4);
    }

    /// A span processor that blocks in `on_end` until released, saying when it is inside.
    #[derive(Debug, Default)]
    struct BlocksInner {
        state: Mutex<(bool, bool)>, // (inside, released)
        changed: Condvar,
    }

    #[derive(Debug, Default, Clone)]
    struct Blocks(Arc<BlocksInner>);

    impl std::ops::Deref for Blocks {
        type Target = BlocksInner;
        fn deref(&self) -> &BlocksInner {
            &self.0
        }
    }

    impl BlocksInner {
        fn wait_inside(&self) {
            let mut s = self.state.lock().unwrap();
            while !s.0 {
                s = self.changed.wait(s).unwrap();
            }
        }
        fn release(&self) {
            self.state.lock().unwrap().1 = true;
            self.changed.notify_all();
        }
    }

    impl SpanProcessor for Blocks {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, _: SpanData) {
            let mut s = self.state.lock().unwrap();
            s.0 = true;
            self.changed.notify_all();
            while !s.1 {
                s = self.changed.wait(s).unwrap();
            }
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_sdk_never_blocks_the_driver_and_its_losses_are_counted() {
        let blocks = Blocks::default();
        let pipeline = Pipeline::with_processor(Some(Box::new(blocks.clone())));
        let server = ScriptedTransport::always(200);
        let p = provider_with(pipeline.bridge().with_queue_capacity(2), true, &server);
        let c = connect(&p);
        c.statement(StatementType::Query, OperationType::ExecuteStatement)
            .complete();
        blocks.wait_inside();
        // The bridge's thread is stuck in the application's SDK: two records wait in the
        // queue, the rest are dropped and counted; every call returns at once.
        for _ in 0..9 {
            c.statement(StatementType::Query, OperationType::ExecuteStatement)
                .complete();
        }
        assert_eq!(p.stats().opentelemetry_spans_dropped, 7);
        // The Databricks rows do not wait for it.
        let late = p.force_flush(Duration::from_millis(300)).await.unwrap_err();
        assert!(
            matches!(late, crate::TelemetryError::Timeout { hosts } if hosts == ["opentelemetry"])
        );
        assert_eq!(p.stats().rows_exported, 10);
        blocks.release();
        p.force_flush(Duration::from_secs(10)).await.unwrap();
        let s = p.stats();
        // Ten statements ended: three spans made, seven lost, none of them unaccounted.
        assert_eq!(
            (s.opentelemetry_spans, s.opentelemetry_spans_dropped),
            (3, 7)
        );
        assert_eq!(s.opentelemetry_chunks_dropped, 0);
    }

    #[test]
    fn the_wall_clock_of_an_instant_keeps_the_gap_between_two() {
        let wall = wall_clock();
        let now = Instant::now();
        let earlier = now.checked_sub(Duration::from_millis(250)).unwrap();
        let gap = wall(now).duration_since(wall(earlier)).unwrap();
        assert!(
            gap >= Duration::from_millis(249) && gap <= Duration::from_millis(251),
            "{gap:?}"
        );
    }
}
