//! # telemetry-types
//!
//! The shared vocabulary of the Databricks SQL driver telemetry crates. Every other
//! `telemetry-*` crate (except the stand-alone `telemetry-breaker`) depends on this one and on
//! nothing else of ours:
//!
//! - [`wire`]: the exact JSON the telemetry endpoints accept (serde structs and closed enums);
//! - [`event`]: what a driver reports (connection, statement, chunk, error events) and the rows
//!   they become; [`row`] builds those rows and applies the unauthenticated privacy rules;
//! - [`config`]: [`TelemetryConfig`](config::TelemetryConfig) with documented defaults and
//!   validation, and the `DATABRICKS_TELEMETRY_DISABLED` off switch;
//! - [`classify`]: which failures are terminal and which are retryable;
//! - [`redact`]: secret and personal-path redaction; [`host`]: host normalisation;
//! - [`traits`]: the narrow, dyn-compatible traits where crates meet: a sink for batches
//!   (aggregator -> exporter), an HTTP transport, an auth provider, a flag source and gate.
//!
//! ```
//! use telemetry_types::{event::ConnectionInfo, host::Host, row, wire::TelemetryRequest};
//! let host = Host::parse("https://My-Workspace.cloud.databricks.com/", false).unwrap();
//! let conn = ConnectionInfo::new(host, "my-driver/1.0.0");
//! let log = row::connection_row(&conn, 1_767_225_600_000, true, 412);
//! let body = TelemetryRequest::from_logs(1_767_225_600_500, [&log]).unwrap();
//! let json = serde_json::to_value(&body).unwrap();
//! assert_eq!(json["items"], serde_json::json!([]));
//! assert!(json["protoLogs"][0].is_string());
//! ```

pub mod classify;
pub mod config;
pub mod event;
pub mod host;
pub mod id;
pub mod redact;
pub mod row;
pub mod traits;
pub mod wire;

#[cfg(test)]
mod golden_tests;
