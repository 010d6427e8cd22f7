//! # telemetry-types
//!
//! The contract of the Databricks SQL driver telemetry crates: what crosses from one crate to
//! another, and nothing else. Every other `telemetry-*` crate (except the stand-alone
//! `telemetry-breaker`) depends on this one; settings live beside the component they tune.
//!
//! - [`wire`]: the exact JSON the telemetry endpoints accept (serde structs and closed enums);
//! - [`connection`], [`event`]: who reports and what a driver reports; [`row`] turns what the
//!   background task folded into the logs of each row kind (docs/TELEMETRY.md, "What is sent") and applies the unauthenticated
//!   privacy rules;
//! - [`classify`]: which failures are terminal and which are retryable; [`redact`]: secret and
//!   personal-path redaction; [`host`]: host normalisation;
//! - [`drops`]: why an event or a row was lost, one vocabulary for every stats snapshot;
//!   [`validation`]: the error a component's config returns;
//! - the narrow, dyn-compatible traits where two crates meet: [`sink::BatchSink`]
//!   (aggregator -> exporter), [`transport::HttpTransport`] (exporter and flag source -> the
//!   network), [`auth::AuthProvider`] (a connection's credentials), [`flag::FlagSource`] and
//!   [`flag::FlagGate`] (flag cache <-> exporter);
//! - [`boundary`]: the one place where a plug-in's code runs (contained, bounded, off the
//!   runtime's workers when it may block), and the typed failures that charge a plug-in's
//!   fault to the rows that depend on it;
//! - [`clock`] and [`random`]: monotonic stamps (what events are dated with) and their
//!   wall-clock dating in the background; event-id / jitter randomness;
//! - `testing` (feature `testing`): the test doubles of those traits, shipped once.
//!
//! ```
//! use telemetry_types::{connection::ConnectionInfo, host::Host, row, wire::TelemetryRequest};
//! let host = Host::parse("https://My-Workspace.cloud.databricks.com/", false).unwrap();
//! let conn = ConnectionInfo::new(host, "my-driver/1.0.0");
//! let log = row::connection_row(&conn, 1_767_225_600_000, row::SessionChange::Opened, 412);
//! let body = TelemetryRequest::from_logs(1_767_225_600_500, [&log]).unwrap();
//! let json = serde_json::to_value(&body).unwrap();
//! assert_eq!(json["items"], serde_json::json!([]));
//! assert!(json["protoLogs"][0].is_string());
//! ```

use std::future::Future;
use std::pin::Pin;

pub mod audit;
pub mod auth;
pub mod boundary;
pub mod classify;
pub mod clock;
pub mod connection;
pub mod drops;
pub mod event;
pub mod flag;
pub mod host;
pub mod random;
pub mod redact;
pub mod row;
pub mod sink;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod validation;
pub mod wire;

/// A boxed, sendable future: what the traits' async methods return, so that they stay
/// dyn-compatible without an extra crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// Every trait used as `dyn` stays dyn-compatible.
const _: () = {
    fn _object_safe(
        _: &dyn auth::AuthProvider,
        _: &dyn transport::HttpTransport,
        _: &dyn flag::FlagSource,
        _: &dyn flag::FlagGate,
        _: &dyn sink::BatchSink,
    ) {
    }
};

/// Polls a future that never pends (the trivial futures of this crate's tests).
#[cfg(test)]
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("future pended"),
    }
}

#[cfg(test)]
mod golden_tests;
