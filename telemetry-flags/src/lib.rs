//! # telemetry-flags
//!
//! The per-host feature-flag cache that decides whether a workspace accepts driver telemetry
//! (the connector service's feature-flag endpoint). The exporter consults it before every batch and the client's event path
//! reads it with one atomic load; the network look-up always happens in the background.
//!
//! - [`FeatureFlagCache`]: instance-based. [`acquire`](FeatureFlagCache::acquire) a host to get
//!   a [`FlagHandle`]; handles of one host share a context, which is removed (with its cached
//!   answer) when the last handle is dropped.
//! - The answer is [`FlagState::Unknown`] until the first look-up ends, then `Enabled` or
//!   `Disabled`. Any failure (non-2xx, timeout, malformed or oversized body, missing flag,
//!   a value other than `"true"`) means `Disabled` and is retried after a growing backoff
//!   (1 min, doubling, at most the default TTL), never on the caller's path.
//! - Answers are cached for 15 minutes, or the server's `ttl_seconds` clamped to 60..3600 s;
//!   one background task per host refreshes at expiry, so concurrent readers share one request.
//! - `DATABRICKS_TELEMETRY_DISABLED=1|true|yes|on` ([`DisableSwitch`]) turns everything off
//!   without any request.
//! - [`FlagCacheConfig`] holds the cache's settings, defaults and bounds.
//! - [`HttpFlagSource`] fetches over any [`HttpTransport`](telemetry_types::transport::HttpTransport).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use telemetry_flags::{FeatureFlagCache, FlagCacheConfig};
//! use telemetry_types::flag::FlagState;
//! use telemetry_types::host::Host;
//! use telemetry_types::testing::ScriptedFlagSource;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let source = ScriptedFlagSource::fixed(true); // or `HttpFlagSource` over a transport
//! let cache = FeatureFlagCache::new(source, FlagCacheConfig::default(),
//!     tokio::runtime::Handle::current());
//! let host = Host::parse("my-workspace.cloud.databricks.com", false).unwrap();
//! let handle = cache.acquire(&host, None);            // never waits
//! assert_eq!(handle.resolve(Duration::from_secs(10)).await, FlagState::Enabled);
//! drop(handle);                                        // last user: context removed
//! assert_eq!(cache.host_count(), 0);
//! # }
//! ```

mod cache;
mod http;
mod switch;

pub use cache::{
    FeatureFlagCache, FlagCacheConfig, FlagCacheStats, FlagFailure, FlagHandle, FlagView,
    PendingCredentials,
};
pub use http::{ClientPreset, HttpFlagSource};
pub use switch::{DISABLE_ENV_VAR, DisableSwitch};
pub use telemetry_types::flag::FlagState;
