//! # telemetry-export
//!
//! Delivers batches of telemetry rows to a Databricks workspace (spec sections 1, 3, 5).
//!
//! - [`HyperTransport`]: the default [`HttpTransport`](telemetry_types::traits::HttpTransport)
//!   on hyper 1, hyper-util's pooled client and hyper-rustls (webpki roots; OS roots with the
//!   `native-roots` feature; extra roots for corporate CAs), HTTP/1.1 keep-alive, 10 s connect
//!   and request timeouts, capped response bodies. It connects directly: a driver that needs a
//!   proxy or its own TLS stack implements the transport trait over its own client.
//! - [`DatabricksExporter`]: the aggregator's [`BatchSink`](telemetry_types::traits::BatchSink)
//!   for one host. It asks the feature flag first, groups rows by the credentials of their
//!   connection (one tenant's rows never ride another's token), posts to `/telemetry-ext` with
//!   credentials or `/telemetry-unauth` without (no correlation ids, no configuration, empty
//!   stack traces), retries retryable failures with capped exponential backoff and jitter
//!   (honouring `Retry-After` as a floor), and wraps each request's retries in the host's
//!   circuit breaker (`telemetry-breaker`). Terminal 4xx answers do not count as outages.
//! - Every failure is swallowed, counted by [`DropReason`] and logged at debug.
//!
//! ```no_run
//! use std::sync::Arc;
//! use telemetry_breaker::CircuitBreaker;
//! use telemetry_export::{DatabricksExporter, HyperTransport, breaker_config};
//! use telemetry_types::{config::TelemetryConfig, host::Host, traits::{FixedGate, FlagState}};
//!
//! let config = TelemetryConfig { enabled: true, ..TelemetryConfig::default() };
//! let host = Host::parse("my-workspace.cloud.databricks.com", false).unwrap();
//! let exporter = DatabricksExporter::new(
//!     host.clone(),
//!     config.clone(),
//!     Arc::new(HyperTransport::new().unwrap()),
//!     CircuitBreaker::new(host.to_string(), breaker_config(&config)),
//!     Arc::new(FixedGate(FlagState::Enabled)),
//!     "MyDriver/1.0.0",
//! );
//! // Hand `Arc::new(exporter)` to `telemetry_aggregator::Aggregator::spawn` as its sink.
//! # let _ = exporter;
//! ```

mod exporter;
mod transport;

pub use exporter::{
    AUTH_PATH, DatabricksExporter, DropReason, ExportStats, MAX_EXPORT_RESPONSE_BYTES, UNAUTH_PATH,
    breaker_config, parse_retry_after,
};
pub use transport::{HyperTransport, TransportBuildError, TransportOptions};
