//! # telemetry-breaker
//!
//! A circuit breaker for async calls (CLOSED / OPEN / HALF_OPEN) and a per-key registry.
//! The telemetry exporter puts one in front of each workspace host so that an outage costs
//! one request per minute instead of one per batch; the crate depends on no other telemetry
//! crate and is meant to be reused on its own around any async call.
//!
//! - **CLOSED**: calls run. Failures are counted by a [`FailurePolicy`]: N consecutive
//!   failures (default 5; a success resets the count) or a failure rate over a sliding window
//!   of the last calls. When the policy trips, the breaker opens.
//! - **OPEN**: calls are rejected without running, for `open_duration` (default 60 s), or
//!   longer if the failing call asked for it (a server's `Retry-After`).
//! - **HALF_OPEN**: after the open duration, a limited number of concurrent probes (default 1)
//!   run. `success_threshold` successes (default 2) close the breaker; any failure re-opens it.
//!
//! - By hand: [`CircuitBreaker::force_open`] (reject everything), [`CircuitBreaker::disable`]
//!   (let everything through, still counting), [`CircuitBreaker::reset`] (back to CLOSED with
//!   nothing remembered).
//! - Listeners ([`CircuitBreaker::on_event`]) hear every [`BreakerEvent`]: transitions,
//!   rejections, successes, failures, ignored outcomes; synchronous calls go through
//!   [`CircuitBreaker::call_sync`]; a [`CircuitBreakerRegistry`] keeps one breaker per key
//!   (any `Eq + Hash + Clone + Debug` key, e.g. `(String, u16)`), with a config per key if
//!   wanted, and lists them.
//!
//! Time comes from `tokio::time`, so tests can run on a paused clock. State is read with one
//! atomic load (an OPEN breaker whose period is over reads HALF_OPEN); transitions take a
//! short `std` mutex that is never held across an `.await`, and listeners are called after it
//! is released. See the crate's README for the concepts beside resilience4j's names.
//!
//! ```
//! use std::time::Duration;
//! use telemetry_breaker::{BreakerConfig, CallError, CircuitBreaker};
//!
//! // Any async call: here a stand-in for an HTTP GET that returns a status code.
//! async fn get(url: &str) -> Result<u16, std::io::Error> {
//!     let _ = url;
//!     Ok(503)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::new("api.example.com", BreakerConfig::default());
//! for _ in 0..5 {
//!     // A 5xx or an I/O error counts as a failure; a 4xx is the caller's bug, not an outage.
//!     let result = breaker
//!         .call(
//!             async { get("https://api.example.com/health").await.and_then(|s| {
//!                 if s >= 500 { Err(std::io::Error::other(format!("status {s}"))) } else { Ok(s) }
//!             }) },
//!             |_err: &std::io::Error| true,
//!         )
//!         .await;
//!     assert!(matches!(result, Err(CallError::Inner(_))));
//! }
//! // Five consecutive failures: the breaker is open and rejects without calling.
//! let rejected = breaker.call(async { Ok::<_, std::io::Error>(200) }, |_| true).await;
//! assert!(matches!(rejected, Err(CallError::Rejected(_))));
//! assert_eq!(breaker.stats().openings, 1);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod registry;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use breaker::{
    Admission, BreakerConfig, BreakerConfigError, BreakerEvent, BreakerState, BreakerStats,
    CallError, CircuitBreaker, FailurePolicy, Outcome, Permit, Rejected,
};
pub use registry::{BreakerLease, CircuitBreakerRegistry, MAX_IDLE_BREAKERS};
