//! # telemetry-client
//!
//! The crate a Databricks SQL driver adds to its `Cargo.toml` to report how its connections
//! and statements behave. It wires the other crates together: per workspace host one shared
//! client (feature flag from `telemetry-flags`, aggregation from `telemetry-aggregator`, export
//! from `telemetry-export`, a circuit breaker from `telemetry-breaker`), reference-counted by
//! the connections that use it.
//!
//! Telemetry never hurts the driver: every method here is synchronous, never waits on the
//! network, never returns an error and never panics; when telemetry is off it costs one
//! branch or one atomic load. When it is on, an event is one push into a lock-free queue
//! (statement start, completion, errors, connection open / close); a CloudFetch chunk is not
//! an event at all but a few atomic operations on its statement's handle, and its statistics
//! ride with the completion. Whether a connection reports is decided, in this order, by the
//! `DATABRICKS_TELEMETRY_DISABLED` environment switch, the connection's `enabled` override,
//! `config.enabled` (default `false`: opt-in), and the server's feature flag.
//!
//! ## Wiring it into a driver
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use telemetry_client::{ConnectionOptions, ProviderOptions, TelemetryClientProvider};
//! use telemetry_client::flags::ClientPreset;
//! use telemetry_client::types::event::{DriverError, StatementCompletion};
//! use telemetry_client::types::traits::StaticToken;
//! use telemetry_client::types::wire::{AuthType, ExecutionResultFormat, OperationType, StatementType};
//!
//! // Once per process (or driver instance). No runtime needed: background work runs on a
//! // dedicated thread unless `options.runtime` hands one in.
//! let mut options = ProviderOptions::new(
//!     "MyRustDriver",
//!     "1.4.2",
//!     ClientPreset::new("MY_RUST_DRIVER", "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForMyRustDriver"),
//! );
//! options.config.enabled = true;
//! # options.switch = Some(telemetry_client::types::config::DisableSwitch::Disabled); // doc test: no network
//! let provider = TelemetryClientProvider::new(options);
//!
//! // Per connection, once the session is open.
//! let connection = provider.connect(ConnectionOptions {
//!     http_path: Some("/sql/1.0/warehouses/abc?o=1234567890123456".into()),
//!     session_id: Some("01ef-session".into()),
//!     auth: Some(Arc::new(StaticToken::new("dapi-example"))),
//!     auth_type: Some(AuthType::Pat),
//!     ..ConnectionOptions::new("https://my-workspace.cloud.databricks.com")
//! });
//! connection.opened(Duration::from_millis(420));
//!
//! // A statement with CloudFetch chunks.
//! let statement = connection.statement("01ef-stmt", StatementType::Query, OperationType::ExecuteStatement);
//! statement.chunk(Duration::from_millis(35), 4 << 20, true);
//! statement.chunk(Duration::from_millis(52), 4 << 20, true);
//! statement.complete(StatementCompletion {
//!     execution_result: Some(ExecutionResultFormat::ExternalLinks),
//!     poll_count: Some(3),
//!     chunks_present: Some(2),
//!     ..Default::default()
//! });
//!
//! // An error (its message is redacted before it leaves the process).
//! connection.error(DriverError::new("ServerError", "warehouse stopped").with_http_status(503));
//!
//! // Closing: report the close call, then release (the last connection to a host flushes).
//! connection.closed(Duration::from_millis(12));
//! connection.close_blocking(); // or `connection.close().await` in async code
//! let stats = provider.stats();
//! assert_eq!(stats.total_rows_dropped(), 0);
//! ```
//!
//! `provider.stats()` reports what happened to every event: emitted, exported, and dropped by
//! reason. Logs go through `tracing` at debug level, under the crates' targets
//! (`RUST_LOG=telemetry_export=debug,telemetry_flags=debug,telemetry_aggregator=debug`).

mod handle;
mod provider;
mod sysinfo;

pub use handle::{Connection, Statement};
pub use provider::{
    ConnectionOptions, HostStats, HostStatsSummary, ProviderOptions, ProviderStats,
    TelemetryClientProvider,
};
pub use sysinfo::{default_system_configuration, workspace_id_from_http_path};

/// The shared vocabulary (events, wire model, config, traits), re-exported.
pub use telemetry_types as types;

/// Feature-flag presets and sources, re-exported.
pub mod flags {
    pub use telemetry_flags::{ClientPreset, FlagCacheConfig, HttpFlagSource};
}

/// Statistics of the parts, re-exported.
pub mod stats {
    pub use telemetry_aggregator::AggregatorStats;
    pub use telemetry_breaker::{BreakerState, BreakerStats};
    pub use telemetry_export::{DropReason, ExportStats};
}

/// The default HTTP transport, re-exported (for custom roots or timeouts).
pub mod transport {
    pub use telemetry_export::{HyperTransport, TransportOptions};
}

#[cfg(test)]
mod tests;
