//! # telemetry-client
//!
//! The crate a Databricks SQL driver adds to its `Cargo.toml` to report how its connections
//! and statements behave. It wires the other crates together: per workspace host one shared
//! client (feature flag from `telemetry-flags`, aggregation from `telemetry-aggregator`, export
//! from `telemetry-export`, a circuit breaker from `telemetry-breaker`), reference-counted by
//! the connections that use it.
//!
//! ```text
//!  driver threads                      background runtime (own thread, or the caller's)
//!  --------------                      -------------------------------------------------
//!  Connection / Statement handles
//!    | event (one push, never waits)
//!    v
//!  bounded lock-free queue  ---drain--->  aggregator task: fold per statement -> rows
//!                                           | batch (size, interval, terminal error,
//!                                           v        flush, close)
//!                                         exporter: flag gate (telemetry-flags)
//!                                           -> group by credentials
//!                                           -> per attempt: breaker permit,
//!                                              HttpTransport::send, retry with backoff
//!                                           -> POST /telemetry-ext | /telemetry-unauth
//! ```
//!
//! Telemetry never hurts the driver: every method of a connection or statement handle is
//! synchronous, never waits on the network, never returns an error and never panics (the
//! provider's `try_new`, `apply_option`, `force_flush`, `shutdown` and a connection's `flush`
//! return a `Result` for the driver to look at, or not); when telemetry is off it costs one
//! branch or one atomic load, and a call that would have reported is counted with its reason
//! in a thread-local counter ([`calls_not_reported`]). When it is on, an event is one push into a lock-free queue
//! (a statement's end, an error, a connection's open or close); what a statement records as
//! it runs (its late id, polls, format, CloudFetch chunks, result ready / consumed) is not an
//! event at all but a few atomic operations on its shared handle, and rides with its end.
//! Whether a connection reports is decided, in this order, by
//! the `DATABRICKS_TELEMETRY_DISABLED` environment switch, the connection's `enabled`
//! override, `config.enabled` (default `false`: opt-in), and the server's feature flag.
//!
//! ## Wiring it into a driver
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use telemetry_client::{
//!     AuthType, BoxFuture, ClientPreset, ConnectionOptions, DriverError, ErrorReport, ExecutionResultFormat,
//!     HttpRequest, HttpResponse, HttpTransport, OperationType, ProviderOptions, StatementType,
//!     StaticToken, TelemetryClientProvider, TransportError,
//! };
//!
//! // So that this example runs without a network: an endpoint that accepts everything. A
//! // driver leaves `transport` unset (hyper + rustls, proxies from the environment) or hands
//! // in its own HTTP stack.
//! struct Accepting;
//! impl HttpTransport for Accepting {
//!     fn send(&self, _: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
//!         Box::pin(async { Ok(HttpResponse { status: 200, ..HttpResponse::default() }) })
//!     }
//! }
//!
//! // Once per process (or driver instance). No runtime needed: background work runs on one
//! // small runtime shared by the process's providers, started by the first enabled
//! // connection, unless `options.runtime` hands one in.
//! let mut options = ProviderOptions::new(
//!     "MyRustDriver",
//!     "1.4.2",
//!     ClientPreset::new("MY_RUST_DRIVER", "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForMyRustDriver"),
//! );
//! options.config.enabled = true;         // opt-in; the server's flag must also say yes...
//! options.config.force_enable = true;    // ...unless forced (here: no flag look-up at all)
//! options.transport = Some(Arc::new(Accepting));
//! # options.read_env = false;
//! let provider = TelemetryClientProvider::new(options);
//!
//! // Per connection: the handle first, then the session (its id comes with the answer).
//! let connection = provider.connect(
//!     ConnectionOptions::new("https://my-workspace.cloud.databricks.com")
//!         .with_http_path("/sql/1.0/warehouses/abc?o=1234567890123456")
//!         .with_auth(Arc::new(StaticToken::new("dapi-example")), AuthType::Pat),
//! );
//! connection.session_opened("01ef-session", Duration::from_millis(420));
//!
//! // A SEA statement: begun before POST /statements, shared with the CloudFetch tasks.
//! let statement = connection.statement(StatementType::Query, OperationType::ExecuteStatement);
//! statement.attach_id("01ef-stmt"); // from the execute call's answer
//! statement.poll(Duration::from_millis(30)); // each GET /statements/{id}
//! statement.result_format(ExecutionResultFormat::ExternalLinks);
//! statement.chunks_present(2);
//! std::thread::scope(|s| {
//!     for chunk in 0..2u64 {
//!         let statement = statement.clone();
//!         s.spawn(move || statement.chunk(Duration::from_millis(35 + chunk), 4 << 20, true));
//!     }
//! });
//! statement.result_ready(); // first batch handed out
//! statement.result_consumed(); // reader done
//! statement.complete(); // or fail(&err), cancel(), close(); dropping it reports CLOSE_STATEMENT
//!
//! // The driver's own error type, once it implements `ReportableError` (redacted before sending).
//! connection.error(&DriverError::new("ServerError", "warehouse stopped").with_http_status(503));
//! // A type it cannot implement it for (from a dependency): borrowed, nothing cloned.
//! let io = std::io::Error::other("connection reset");
//! connection.error(&ErrorReport::of(&io).named("IoError"));
//!
//! // Closing: report the close call, then release (any clone, once; returns at once: the
//! // last connection to a host flushes in the background).
//! connection.closed(Duration::from_millis(12));
//! connection.close();
//! // Where the driver chooses to wait (last database released, process exit):
//! connection.flush_blocking(Duration::from_secs(5)).unwrap(); // or `.flush(t).await`
//! let stats = provider.stats();
//! assert_eq!((stats.rows_produced, stats.rows_exported), (5, 5));
//! assert_eq!(stats.total_rows_dropped(), 0);
//! ```
//!
//! `provider.stats()` reports what happened to every event: emitted, exported, and dropped by
//! [`DropReason`]. Logs go through `tracing` at debug level, under the crates' targets
//! (`RUST_LOG=telemetry_client=debug,telemetry_export=debug,telemetry_flags=debug,telemetry_aggregator=debug,telemetry_breaker=debug`).
//!
//! With the `testing` feature, `telemetry_client::testing` re-exports the test doubles of every trait (a
//! scripted transport and flag source, a recording sink).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod bridge;
mod clock;
mod config;
mod connection;
mod emitter;
mod local;
mod options;
mod provider;
mod registry;
mod runtime;
mod set_once;
mod statement;
mod stats;
mod sysinfo;
mod unreported;

// The handles and how to make them.
pub use config::{ENV_OVERRIDES, KNOWN_OPTIONS, OptionError, TelemetryConfig};
pub use connection::Connection;
pub use local::LocalStatement;
pub use options::{ConnectionOptions, ProviderOptions};
pub use provider::{BuildError, TelemetryClientProvider, TelemetryError};
pub use statement::Statement;
pub use sysinfo::{IDENTITY_OPTIONS, default_system_configuration, workspace_id_from_http_path};
pub use unreported::{NotReported, calls_not_reported};

// What a driver reports.
pub use telemetry_types::classify::ErrorClass;
pub use telemetry_types::event::{DriverError, ErrorReport, ReportableError, StatementOutcome};
pub use telemetry_types::wire::{
    AuthFlow, AuthMech, AuthType, DriverConnectionParameters, DriverMode,
    DriverSystemConfiguration, ExecutionResultFormat, HostDetails, OperationType, ProxyAuthType,
    StatementType, VolumeOperationType,
};

// The components' settings.
pub use telemetry_aggregator::AggregatorConfig;
pub use telemetry_breaker::{BreakerConfig, FailurePolicy};
pub use telemetry_export::{ExportConfig, RetryPolicy};
pub use telemetry_flags::{
    ClientPreset, DISABLE_ENV_VAR, DisableSwitch, FlagCacheConfig, FlagFailure,
};
pub use telemetry_types::validation::ConfigError;

// The driver's own HTTP stack, credentials and flag source.
#[cfg(feature = "hyper-transport")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-transport")))]
pub use telemetry_export::{HyperTransport, ProxyConfig, TransportBuildError, TransportOptions};
pub use telemetry_types::BoxFuture;
pub use telemetry_types::audit::{AuditSink, AuditedRequest, JsonLinesAudit};
pub use telemetry_types::auth::{AuthProvider, StaticToken};
pub use telemetry_types::classify::TransportErrorKind;
pub use telemetry_types::flag::{FlagAnswer, FlagError, FlagSource, FlagState};
pub use telemetry_types::host::Host;
pub use telemetry_types::transport::{
    HttpMethod, HttpRequest, HttpResponse, HttpTransport, TransportError,
};

// Statistics.
pub use stats::{DisabledReason, HostStats, HostStatsSummary, ProviderStats};
pub use telemetry_aggregator::{AggregatorStats, LatencyPercentiles, Percentiles};
pub use telemetry_breaker::{BreakerState, BreakerStats};
pub use telemetry_export::ExportStats;
pub use telemetry_types::drops::{DropCounts, DropReason, DropUnit};

#[cfg(feature = "reqwest")]
mod reqwest_transport;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest_transport::ReqwestTransport;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod otel;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use otel::OpenTelemetryBridge;

#[cfg(test)]
mod tests;
