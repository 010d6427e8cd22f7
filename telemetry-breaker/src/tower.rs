//! The breaker as a tower middleware (feature `tower`): `ServiceBuilder::new().layer(..)`.
//!
//! ```
//! use telemetry_breaker::tower::CircuitBreakerLayer;
//! use telemetry_breaker::{BreakerConfig, CircuitBreaker, Outcome};
//!
//! let breaker = CircuitBreaker::new("api", BreakerConfig::default());
//! // An `Err` of the inner service is a failure; every `Ok` a success.
//! let layer = CircuitBreakerLayer::new(breaker, |r: &Result<u16, std::io::Error>| match r {
//!     Ok(status) if *status >= 500 => Outcome::Failure { retry_after: None },
//!     Ok(_) => Outcome::Success,
//!     Err(_) => Outcome::Failure { retry_after: None },
//! });
//! # let _ = layer;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::{CallError, CircuitBreaker, Outcome};

/// Wraps a service in a breaker: a call is rejected (`CallError::Rejected`) without reaching
/// the service while the breaker is open; otherwise its result is classified by `classify`
/// and recorded. A call whose future is dropped counts as ignored.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C> {
    breaker: CircuitBreaker,
    classify: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer recording through `breaker` (shared by every service it wraps).
    pub fn new(breaker: CircuitBreaker, classify: C) -> Self {
        Self { breaker, classify }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service behind a breaker; see [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S, C> fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: Fn(&Result<S::Response, S::Error>) -> Outcome + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.try_acquire() {
            Err(rejected) => Box::pin(std::future::ready(Err(CallError::Rejected(rejected)))),
            Ok(permit) => {
                let response = self.inner.call(request);
                let classify = self.classify.clone();
                Box::pin(async move {
                    let out = response.await;
                    permit.record(classify(&out));
                    out.map_err(CallError::Inner)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BreakerConfig, BreakerState, FailurePolicy};
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Answers each request with its own value: odd fails.
    #[derive(Clone, Default)]
    struct Echo(Arc<AtomicU32>);

    impl Service<u32> for Echo {
        type Response = u32;
        type Error = String;
        type Future = std::future::Ready<Result<u32, String>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n % 2 == 1 {
                Err(format!("odd {n}"))
            } else {
                Ok(n)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_rejects_while_open_and_records_what_it_lets_through() {
        let breaker = CircuitBreaker::new(
            "svc",
            BreakerConfig {
                policy: FailurePolicy::Consecutive { threshold: 2 },
                ..BreakerConfig::default()
            },
        );
        let layer = CircuitBreakerLayer::new(breaker.clone(), |r: &Result<u32, String>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure { retry_after: None }
            }
        });
        let echo = Echo::default();
        let mut svc = layer.layer(echo.clone());
        let mut call = |n: u32| {
            poll_fn(|cx| svc.poll_ready(cx)).await_ready();
            svc.call(n)
        };
        assert_eq!(call(2).await.unwrap(), 2);
        assert!(matches!(call(1).await, Err(CallError::Inner(e)) if e == "odd 1"));
        assert!(matches!(call(3).await, Err(CallError::Inner(_))));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(call(4).await, Err(CallError::Rejected(_))));
        assert_eq!(
            echo.0.load(Ordering::SeqCst),
            3,
            "the rejected call never reached it"
        );
        let s = breaker.stats();
        assert_eq!((s.successes, s.failures, s.rejected), (1, 2, 1));
    }

    /// Polls a ready future once (the test services are always ready).
    trait AwaitReady {
        fn await_ready(self);
    }

    impl<F: Future<Output = Result<(), CallError<String>>>> AwaitReady for F {
        fn await_ready(self) {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut fut = std::pin::pin!(self);
            assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        }
    }
}
