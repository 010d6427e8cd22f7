//! The OpenTelemetry bridge, end to end: the application's SDK (here with in-memory
//! exporters), a provider with the bridge, a small workload (a query with CloudFetch chunks,
//! a metadata call, a statement that fails with a server message quoting SQL), and every span
//! and metric data point the SDK exported, printed as JSON lines.
//!
//! ```text
//! cargo run -q -p telemetry-client --example opentelemetry --features opentelemetry
//! ```
//!
//! The server's flag is not asked here (`force_enable`); the bridge reports the same with the
//! flag off. It exits 1 if the SQL text or the token reached the pipeline.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::{Map, Value, json};
use telemetry_client::{
    AuthType, BoxFuture, ClientPreset, ConnectionOptions, ErrorReport, ExecutionResultFormat,
    HttpRequest, HttpResponse, HttpTransport, OpenTelemetryBridge, OperationType, ProviderOptions,
    StatementType, StaticToken, TelemetryClientProvider, TransportError,
};

/// So that the example needs no network: a Databricks endpoint that accepts everything.
struct Accepting;

impl HttpTransport for Accepting {
    fn send(&self, _: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async {
            Ok(HttpResponse {
                status: 200,
                ..HttpResponse::default()
            })
        })
    }
}

fn attributes<'a>(kvs: impl Iterator<Item = &'a KeyValue>) -> Value {
    let mut out = Map::new();
    for kv in kvs {
        let v = match &kv.value {
            opentelemetry::Value::I64(i) => json!(i),
            opentelemetry::Value::F64(f) => json!(f),
            opentelemetry::Value::Bool(b) => json!(b),
            other => json!(other.as_str()),
        };
        out.insert(kv.key.to_string(), v);
    }
    Value::Object(out)
}

fn unix_nanos(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // The application's OpenTelemetry pipeline.
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let metrics = InMemoryMetricExporter::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).build())
        .build();

    // The driver's provider, with the bridge.
    let mut options = ProviderOptions::new("ExampleDriver", "1.0.0", ClientPreset::adbc());
    options.config.enabled = true;
    options.config.force_enable = true;
    options.transport = Some(Arc::new(Accepting));
    options.read_env = false;
    options.opentelemetry = Some(OpenTelemetryBridge::from_providers(
        &tracer_provider,
        &meter_provider,
    ));
    let provider = TelemetryClientProvider::new(options);
    let conn = provider.connect(
        ConnectionOptions::new("adb-1234567890123456.7.azuredatabricks.net").with_auth(
            Arc::new(StaticToken::new("dapi0123456789abcdef0123456789ab")),
            AuthType::Pat,
        ),
    );

    // The application's request span: the statements' spans are its children.
    let request = tracer_provider.tracer("example-app").start("GET /report");
    {
        let _current = Context::current_with_span(request).attach();
        conn.session_opened("01f0-session", Duration::from_millis(300));
        let query = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
        query.attach_id("01f0-1111-2222-3333");
        query.result_format(ExecutionResultFormat::ExternalLinks);
        query.chunks_present(3);
        for (ms, bytes) in [(42, 18 << 20), (35, 20 << 20), (51, 9 << 20)] {
            query.chunk(Duration::from_millis(ms), bytes, true);
        }
        query.result_ready();
        query.result_consumed();
        query.complete();

        let tables = conn.metadata(OperationType::ListTables);
        tables.complete();

        let failing = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
        failing.attach_id("01f0-4444");
        let server_message = std::io::Error::other(
            "[TABLE_OR_VIEW_NOT_FOUND] The table or view `secret_table` cannot be found. \
             SQLSTATE: 42P01; line 1 pos 14 in: SELECT * FROM secret_table",
        );
        failing.fail(
            &ErrorReport::of(&server_message)
                .named("AnalysisException")
                .sqlstate("42P01"),
        );
    }
    conn.close();
    // Every statement handed to the SDK (and the Databricks rows settled), then the SDK's own
    // flush.
    if let Err(e) = provider.shutdown(Duration::from_secs(10)).await {
        eprintln!("shutdown: {e}");
        return ExitCode::FAILURE;
    }
    let (_, _) = (tracer_provider.force_flush(), meter_provider.force_flush());

    let mut lines = Vec::new();
    for s in spans.get_finished_spans().unwrap_or_default() {
        lines.push(json!({
            "signal": "span",
            "scope": s.instrumentation_scope.name(),
            "name": s.name,
            "kind": format!("{:?}", s.span_kind),
            "trace_id": s.span_context.trace_id().to_string(),
            "span_id": s.span_context.span_id().to_string(),
            "parent_span_id": s.parent_span_id.to_string(),
            "start_unix_nano": unix_nanos(s.start_time).to_string(),
            "end_unix_nano": unix_nanos(s.end_time).to_string(),
            "status": format!("{:?}", s.status),
            "attributes": attributes(s.attributes.iter()),
        }));
    }
    let collected = metrics.get_finished_metrics().unwrap_or_default();
    for sm in collected
        .iter()
        .rev()
        .take(1)
        .flat_map(|rm| rm.scope_metrics())
    {
        for m in sm.metrics() {
            let point = |attrs: Value, fields: Value| {
                let mut line = json!({
                    "signal": "metric",
                    "scope": sm.scope().name(),
                    "name": m.name(),
                    "unit": m.unit(),
                    "attributes": attrs,
                });
                if let (Value::Object(line), Value::Object(fields)) = (&mut line, fields) {
                    line.extend(fields);
                }
                line
            };
            match m.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        lines.push(point(
                            attributes(p.attributes()),
                            json!({"count": p.count(), "sum": p.sum()}),
                        ));
                    }
                }
                AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        lines.push(point(
                            attributes(p.attributes()),
                            json!({"count": p.count(), "sum": p.sum()}),
                        ));
                    }
                }
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    for p in s.data_points() {
                        lines.push(point(
                            attributes(p.attributes()),
                            json!({"value": p.value()}),
                        ));
                    }
                }
                AggregatedMetrics::I64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        lines.push(point(
                            attributes(p.attributes()),
                            json!({"value": p.value()}),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    let mut leaked = false;
    for line in &lines {
        let text = line.to_string();
        // The SQL text and the token; the table's name in the server's own words stays, as in
        // the Databricks rows.
        leaked |= ["SELECT", "FROM secret_table", "dapi0123456789"]
            .iter()
            .any(|s| text.contains(s));
        println!("{text}");
    }
    let ours = lines
        .iter()
        .filter(|l| l["signal"] == "span" && l["scope"] == telemetry_client::otel::SCOPE_NAME)
        .count();
    if leaked || ours != 3 {
        eprintln!(
            "expected 3 statement spans and no SQL text or token: {ours} spans, leaked: {leaked}"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
