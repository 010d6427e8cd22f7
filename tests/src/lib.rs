//! # telemetry-tests
//!
//! End-to-end support for the telemetry workspace: a [`mock::MockWorkspace`] (a real HTTP
//! server on 127.0.0.1 that validates payloads against the server's [`schema`] and injects
//! faults), the driver-like
//! [`workload`] the `telemetry-sim` binary and the integration tests run through the public
//! `telemetry-client` API.

pub mod fleet;
pub mod mock;
pub mod schema;
pub mod workload;
