//! The one place where foreign code runs. Every call into a driver's plug-in (an
//! [`AuthProvider`], an [`HttpTransport`], a [`FlagSource`]) goes through a function of this
//! module, which gives it four things:
//!
//! - **containment**: a panic, in the call or in the future it returns, becomes that call's
//!   failure; it never unwinds into the exporter, the flag cache or the background task;
//! - **a time bound**: the call's answer is awaited at most its timeout;
//! - **the blocking rule**: an auth provider may block (a synchronous OAuth refresh,
//!   `block_in_place`), so it runs on a blocking-capable thread of the runtime's blocking pool,
//!   never on a worker the other tenants' exports need; concurrent calls into one provider
//!   share one call (at most one thread per provider, even if it hangs for good);
//! - **a typed failure**, so that the caller charges it only to the rows that depend on that
//!   plug-in: [`PluginFailure`] for auth, [`TransportErrorKind::Local`] for a transport (never
//!   an endpoint failure), [`FlagError::Plugin`] for a flag source.
//!
//! What it cannot do: interrupt a synchronous call. A transport or flag source that blocks
//! its thread inside `send` / `fetch` blocks a runtime worker until it returns (their
//! contracts forbid it); an auth provider that never returns keeps one blocking thread.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use thiserror::Error;
use tokio::runtime::Handle;

use crate::auth::AuthProvider;
use crate::classify::TransportErrorKind;
use crate::flag::{FlagAnswer, FlagError, FlagSource};
use crate::host::Host;
use crate::redact::redact_truncated;
use crate::transport::{HttpRequest, HttpResponse, HttpTransport, TransportError};

/// Headers an auth provider answered with; `None`: no credentials.
pub type AuthHeaders = Option<Vec<(String, String)>>;

/// How a call into a plug-in failed (its own answer, such as "no credentials", is not a
/// failure).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PluginFailure {
    /// The plug-in panicked; the panic's message, redacted and capped.
    #[error("the plug-in panicked: {0}")]
    Panicked(String),
    /// No answer within the call's timeout (the call may go on in the background).
    #[error("the plug-in did not answer within {0:?}")]
    TimedOut(Duration),
    /// There is no runtime to run it on (the caller's runtime was shut down).
    #[error("no runtime to run the plug-in on")]
    NoRuntime,
}

/// Longest panic message kept, in characters.
const MAX_PANIC_CHARS: usize = 200;

/// A panic's payload as text, redacted and capped (a panic message may quote anything).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    redact_truncated(text, MAX_PANIC_CHARS)
}

/// Polls `future` and turns a panic in any poll into `Err(message)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

/// Runs `make()` and awaits the future it returns, both contained: a panic in either is
/// `Err(message)`.
async fn contained<F: Future>(make: impl FnOnce() -> F) -> Result<F::Output, String> {
    let future = catch_unwind(AssertUnwindSafe(make)).map_err(|p| panic_message(&*p))?;
    CatchUnwind(Box::pin(future)).await
}

type AuthResult = Result<AuthHeaders, PluginFailure>;

/// One auth call in progress: its answer, once there is one. Concurrent callers for one
/// provider share it.
#[derive(Default)]
struct AuthCall {
    answer: Mutex<Option<AuthResult>>,
    ready: Condvar,
}

impl AuthCall {
    fn finish(&self, result: AuthResult) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        self.ready.notify_all();
    }

    /// Waits for the answer on this thread, at most `timeout` of wall-clock time.
    fn wait(&self, timeout: Duration) -> AuthResult {
        let answer = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        let (answer, _) = self
            .ready
            .wait_timeout_while(answer, timeout, |a| a.is_none())
            .unwrap_or_else(|e| e.into_inner());
        answer
            .clone()
            .unwrap_or(Err(PluginFailure::TimedOut(timeout)))
    }
}

/// Auth calls in progress, by provider object: a later caller waits for the call in
/// progress instead of starting another (and taking another thread) while it runs. The call
/// holds the provider, so its address cannot be reused while the entry exists. Process-wide
/// because the threads these calls hold are.
fn auth_calls() -> &'static Mutex<HashMap<usize, Arc<AuthCall>>> {
    static CALLS: OnceLock<Mutex<HashMap<usize, Arc<AuthCall>>>> = OnceLock::new();
    CALLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Where auth providers run: the blocking pool of a runtime of the boundary's own (threads
/// made on demand, reused, ended when idle), so that a provider that never returns holds
/// none of the caller's threads and never delays the shutdown of the caller's runtime.
fn plugin_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .thread_name("telemetry-plugin")
                .max_blocking_threads(64)
                .build()
                .ok()
        })
        .as_ref()
}

fn provider_key(auth: &Arc<dyn AuthProvider>) -> usize {
    Arc::as_ptr(auth) as *const () as usize
}

/// Starts `auth`'s call on a plug-in thread, or joins the one in progress.
fn start_auth_call(auth: &Arc<dyn AuthProvider>, caller: Handle) -> Option<Arc<AuthCall>> {
    let key = provider_key(auth);
    let mut calls = auth_calls().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(call) = calls.get(&key) {
        return Some(call.clone());
    }
    let call = Arc::new(AuthCall::default());
    let (provider, running) = (auth.clone(), call.clone());
    plugin_runtime()?.spawn_blocking(move || {
        // The provider's future runs in the caller's runtime context (its timers, its I/O),
        // on this thread, where blocking (even `block_in_place`) is safe.
        let result = caller
            .block_on(contained(|| provider.auth_headers()))
            .map_err(PluginFailure::Panicked);
        auth_calls()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        running.finish(result);
        drop(provider);
    });
    calls.insert(key, call.clone());
    Some(call)
}

/// The provider's headers, asked on a plug-in thread (where it may block) and awaited at
/// most `timeout`. Concurrent callers for one provider share one call; a call that outlives
/// its timeout goes on alone, and later callers join it until it returns.
///
/// The timeout is measured on the wall clock: the provider runs on its own thread, outside
/// any runtime's clock, and is waited for by a blocking task of the caller's runtime (so
/// that a paused test clock does not jump while the provider works).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use telemetry_types::auth::{AuthProvider, StaticToken};
/// use telemetry_types::boundary::auth_headers;
/// let auth: Arc<dyn AuthProvider> = Arc::new(StaticToken::new("t"));
/// let headers = auth_headers(&auth, Duration::from_secs(1)).await.unwrap().unwrap();
/// assert_eq!(headers[0].1, "Bearer t");
/// # }
/// ```
pub async fn auth_headers(auth: &Arc<dyn AuthProvider>, timeout: Duration) -> AuthResult {
    let Ok(caller) = Handle::try_current() else {
        return Err(PluginFailure::NoRuntime);
    };
    let Some(call) = start_auth_call(auth, caller.clone()) else {
        return Err(PluginFailure::NoRuntime);
    };
    let waiting = catch_unwind(AssertUnwindSafe(|| {
        caller.spawn_blocking(move || call.wait(timeout))
    }));
    match waiting {
        Ok(waiter) => waiter.await.unwrap_or(Err(PluginFailure::NoRuntime)),
        Err(_) => Err(PluginFailure::NoRuntime),
    }
}

/// Slack a transport gets past its request's timeout before the boundary stops waiting (a
/// transport must answer within the request's timeout itself).
pub const TRANSPORT_SLACK: Duration = Duration::from_secs(5);

/// Sends `request` through a transport plug-in, contained: a panic, or no answer within the
/// request's timeout plus [`TRANSPORT_SLACK`], is a [`TransportErrorKind::Local`] failure
/// (the endpoint was not asked, or its answer never came back through the plug-in).
pub async fn send(
    transport: &dyn HttpTransport,
    request: HttpRequest,
) -> Result<HttpResponse, TransportError> {
    let limit = request.timeout.saturating_add(TRANSPORT_SLACK);
    match tokio::time::timeout(limit, contained(|| transport.send(request))).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(TransportError::new(
            TransportErrorKind::Local,
            format!("the transport plug-in panicked: {panic}"),
        )),
        Err(_) => Err(TransportError::new(
            TransportErrorKind::Local,
            format!("the transport plug-in did not answer within {limit:?}"),
        )),
    }
}

/// Looks a flag up through a flag-source plug-in, contained and bounded by `guard`: a panic
/// is [`FlagError::Plugin`], no answer a timeout.
pub async fn fetch_flag(
    source: &dyn FlagSource,
    host: &Host,
    auth: Option<&dyn AuthProvider>,
    transport: Option<&dyn HttpTransport>,
    guard: Duration,
) -> Result<FlagAnswer, FlagError> {
    match tokio::time::timeout(guard, contained(|| source.fetch_via(host, auth, transport))).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(FlagError::Plugin(panic)),
        Err(_) => Err(FlagError::Transport(TransportError::new(
            TransportErrorKind::Timeout,
            "feature-flag look-up timed out",
        ))),
    }
}

/// Credentials already asked through [`auth_headers`]: handed to a flag source, so that the
/// source's own call into them is instant and cannot block or panic.
#[derive(Clone)]
pub struct ResolvedAuth(AuthHeaders);

impl ResolvedAuth {
    /// Wraps headers already obtained.
    pub fn new(headers: AuthHeaders) -> Self {
        Self(headers)
    }
}

impl std::fmt::Debug for ResolvedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResolvedAuth(***)")
    }
}

impl AuthProvider for ResolvedAuth {
    fn auth_headers(&self) -> crate::BoxFuture<'_, AuthHeaders> {
        let headers = self.0.clone();
        Box::pin(async move { headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct PanicsInCall;
    impl AuthProvider for PanicsInCall {
        fn auth_headers(&self) -> BoxFuture<'_, AuthHeaders> {
            panic!("token=dapi0123456789abcdef0123 refresh failed")
        }
    }

    struct PanicsInFuture;
    impl AuthProvider for PanicsInFuture {
        fn auth_headers(&self) -> BoxFuture<'_, AuthHeaders> {
            Box::pin(async { panic!("in the future") })
        }
    }

    /// Blocks its thread (as a synchronous OAuth refresh does), counting its calls.
    struct Blocks(Duration, AtomicUsize);
    impl AuthProvider for Blocks {
        fn auth_headers(&self) -> BoxFuture<'_, AuthHeaders> {
            self.1.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.0);
            Box::pin(async { Some(vec![("Authorization".into(), "Bearer b".into())]) })
        }
    }

    /// Calls `block_in_place`, as the ADBC driver's OAuth providers do.
    struct BlockInPlace;
    impl AuthProvider for BlockInPlace {
        fn auth_headers(&self) -> BoxFuture<'_, AuthHeaders> {
            let h = tokio::task::block_in_place(|| vec![("Authorization".into(), "x".into())]);
            Box::pin(async move { Some(h) })
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_in_the_call_or_its_future_is_that_calls_failure() {
        let a: Arc<dyn AuthProvider> = Arc::new(PanicsInCall);
        let Err(PluginFailure::Panicked(m)) = auth_headers(&a, Duration::from_secs(5)).await else {
            panic!("expected a contained panic")
        };
        assert!(
            m.contains("refresh failed") && !m.contains("dapi0123"),
            "{m}"
        );
        let b: Arc<dyn AuthProvider> = Arc::new(PanicsInFuture);
        assert!(matches!(
            auth_headers(&b, Duration::from_secs(5)).await,
            Err(PluginFailure::Panicked(_))
        ));
        // The entry is gone: a later call asks again (and fails again, not "busy").
        assert!(
            auth_calls()
                .lock()
                .unwrap()
                .get(&provider_key(&a))
                .is_none()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_provider_runs_off_the_runtime_and_is_bounded() {
        // On a current-thread runtime a blocking call would stop everything; here a timer on
        // the same runtime still fires while the provider blocks for 300 ms.
        let slow = Arc::new(Blocks(Duration::from_millis(300), AtomicUsize::new(0)));
        let a: Arc<dyn AuthProvider> = slow.clone();
        let (first, second, ()) = tokio::join!(
            auth_headers(&a, Duration::from_millis(50)),
            auth_headers(&a, Duration::from_secs(5)),
            tokio::time::sleep(Duration::from_millis(10)),
        );
        assert_eq!(
            first,
            Err(PluginFailure::TimedOut(Duration::from_millis(50)))
        );
        assert_eq!(second.unwrap().unwrap()[0].1, "Bearer b");
        assert_eq!(
            slow.1.load(Ordering::SeqCst),
            1,
            "the callers shared one call"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn block_in_place_is_safe_even_on_a_current_thread_runtime() {
        let a: Arc<dyn AuthProvider> = Arc::new(BlockInPlace);
        let h = auth_headers(&a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.unwrap()[0].1, "x");
    }

    struct PanickingTransport;
    impl HttpTransport for PanickingTransport {
        fn send(&self, _r: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
            Box::pin(async { panic!("transport bug") })
        }
    }

    struct HangingTransport;
    impl HttpTransport for HangingTransport {
        fn send(&self, _r: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
            Box::pin(std::future::pending())
        }
    }

    fn request() -> HttpRequest {
        HttpRequest {
            method: crate::transport::HttpMethod::Get,
            url: "https://h.example/x".into(),
            headers: vec![],
            body: Default::default(),
            timeout: Duration::from_secs(1),
            max_response_bytes: 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_panic_or_hang_is_a_local_failure() {
        let e = send(&PanickingTransport, request()).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::Local);
        assert!(e.message.contains("transport bug"));
        let e = send(&HangingTransport, request()).await.unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::Local);
    }

    struct PanickingSource;
    impl FlagSource for PanickingSource {
        fn fetch<'a>(
            &'a self,
            _h: &'a Host,
            _a: Option<&'a dyn AuthProvider>,
        ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>> {
            panic!("source bug")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flag_source_panic_is_a_plugin_error() {
        let host = Host::parse("h.example", false).unwrap();
        let r = fetch_flag(&PanickingSource, &host, None, None, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(FlagError::Plugin(m)) if m.contains("source bug")));
        let resolved = ResolvedAuth::new(None);
        assert_eq!(format!("{resolved:?}"), "ResolvedAuth(***)");
    }
}
