//! # telemetry-export
//!
//! Delivers batches of telemetry rows to a Databricks workspace's telemetry endpoint.
//!
//! - [`HyperTransport`]: the default [`HttpTransport`](telemetry_types::transport::HttpTransport)
//!   on hyper 1, hyper-util's pooled client and hyper-rustls (webpki roots; OS roots with the
//!   `native-roots` feature; extra roots for corporate CAs), HTTP/1.1 keep-alive, 10 s connect
//!   and request timeouts, capped response bodies, and proxies from `HTTPS_PROXY` /
//!   `HTTP_PROXY` / `NO_PROXY` through hyper-util's matcher and `CONNECT` tunnel
//!   ([`ProxyConfig`]). A driver with its own HTTP stack implements the transport trait over
//!   its own client.
//! - [`DatabricksExporter`]: the aggregator's [`BatchSink`](telemetry_types::sink::BatchSink)
//!   for one host. It asks the feature flag first, groups rows by the credentials of their
//!   connection (one tenant's rows never ride another's token), posts to `/telemetry-ext` with
//!   credentials or `/telemetry-unauth` without (no correlation ids, no configuration, empty
//!   stack traces), and asks the host's circuit breaker (`telemetry-breaker`) before every
//!   attempt, retries included: once it opens, loops in flight stop. Terminal 4xx answers
//!   and local failures (a plug-in's panic, a refused header) do not count as outages.
//! - [`retry_with_backoff`]: retries with capped exponential backoff and jitter under a
//!   [`RetryPolicy`], honouring `Retry-After` as a floor.
//! - [`ExportConfig`]: the exporter's settings, defaults and bounds.
//! - Every failure is swallowed, counted by its
//!   [`DropReason`](telemetry_types::drops::DropReason) and logged at debug.
//!
//! ```no_run
//! use std::sync::Arc;
//! use telemetry_breaker::{BreakerConfig, CircuitBreaker};
//! use telemetry_export::{DatabricksExporter, ExportConfig, HyperTransport};
//! use telemetry_types::{flag::{FixedGate, FlagState}, host::Host};
//!
//! let host = Host::parse("my-workspace.cloud.databricks.com", false).unwrap();
//! let exporter = DatabricksExporter::new(
//!     host.clone(),
//!     ExportConfig::default(),
//!     Arc::new(HyperTransport::new().unwrap()),
//!     CircuitBreaker::new(host.to_string(), BreakerConfig::default()),
//!     Arc::new(FixedGate(FlagState::Enabled)),
//!     "MyDriver/1.0.0",
//! );
//! // Hand `Arc::new(exporter)` to `telemetry_aggregator::Aggregator::spawn` as its sink.
//! # let _ = exporter;
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod encode;
mod exporter;
mod retry;
#[cfg(feature = "hyper-transport")]
mod transport;

pub use config::ExportConfig;
pub use encode::{encode_body, encode_rows};
pub use exporter::{AUTH_PATH, DatabricksExporter, ExportStats, UNAUTH_PATH, parse_retry_after};
pub use retry::{Retry, RetryPolicy, retry_with_backoff};
#[cfg(feature = "hyper-transport")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-transport")))]
pub use transport::{HyperTransport, ProxyConfig, TransportBuildError, TransportOptions};
