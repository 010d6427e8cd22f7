//! The narrow traits where two crates meet. All are dyn-compatible (`Arc<dyn Trait>`), and
//! async methods return boxed futures so no extra crate is needed to name them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

use crate::classify::TransportErrorKind;
use crate::event::TelemetryRow;
use crate::host::Host;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where batches of rows go (the exporter; a recording sink in tests).
///
/// Contract: `export` never panics and always resolves (it bounds its own waits); every row it
/// receives is counted by the sink as exported or dropped. The future may be dropped before it
/// resolves (shutdown deadline); the caller then counts the batch as dropped.
pub trait BatchSink: Send + Sync + 'static {
    /// Delivers one batch.
    fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()>;
}

/// HTTP method of a [`HttpRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// GET (feature flags).
    Get,
    /// POST (export).
    Post,
}

/// One HTTP request, independent of any HTTP stack.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: HttpMethod,
    /// Absolute URL.
    pub url: String,
    /// Headers in order; names as given.
    pub headers: Vec<(String, String)>,
    /// Request body (empty for GET).
    pub body: Vec<u8>,
    /// Whole-request deadline, connect included.
    pub timeout: Duration,
    /// The transport stops reading (with [`TransportErrorKind::BodyTooLarge`]) past this many
    /// response-body bytes.
    pub max_response_bytes: usize,
}

/// One HTTP response.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body, at most the request's `max_response_bytes`.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A transport-level failure (no HTTP status was received).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind:?}: {message}")]
pub struct TransportError {
    /// What kind of failure, for classification.
    pub kind: TransportErrorKind,
    /// Human-readable detail (never contains headers or bodies).
    pub message: String,
}

impl TransportError {
    /// A new transport error.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Sends HTTP requests. A driver implements it to reuse its own HTTP stack (proxy, custom TLS).
///
/// Contract: resolves within `request.timeout` (plus scheduling slack), never panics, reads at
/// most `max_response_bytes` of body, and maps every failure to a [`TransportError`].
pub trait HttpTransport: Send + Sync + 'static {
    /// Sends one request.
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>>;
}

/// Supplies a connection's credentials as headers.
///
/// Contract: resolves quickly (refreshing a token is the provider's business, bounded by its own
/// timeout); `None` means "no credentials", and the unauthenticated endpoint is used.
pub trait AuthProvider: Send + Sync + 'static {
    /// Headers to add to authenticated requests (e.g. `Authorization: Bearer ...`).
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>>;
}

/// A fixed bearer token (personal access token). Its `Debug` never prints the token.
///
/// ```
/// use telemetry_types::traits::StaticToken;
/// let t = StaticToken::new("dapi-secret");
/// assert!(!format!("{t:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct StaticToken(String);

impl StaticToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(***)")
    }
}

impl AuthProvider for StaticToken {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        let headers = (!self.0.is_empty())
            .then(|| vec![("Authorization".to_owned(), format!("Bearer {}", self.0))]);
        Box::pin(async move { headers })
    }
}

/// What is known of a host's feature flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlagState {
    /// Not fetched yet.
    Unknown = 0,
    /// The server says telemetry may be sent.
    Enabled = 1,
    /// Off: server said no, the look-up failed, or the off switch is set.
    Disabled = 2,
}

impl FlagState {
    /// From the `repr(u8)` value (anything unexpected is `Disabled`).
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Enabled,
            _ => Self::Disabled,
        }
    }

    /// Lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// A successful feature-flag look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagAnswer {
    /// Whether the flag is `"true"`.
    pub enabled: bool,
    /// The server's TTL, if it gave one (not yet clamped).
    pub ttl: Option<Duration>,
}

/// Why a feature-flag look-up failed (which means "disabled").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// A non-2xx answer.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body was not the expected JSON.
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// Fetches a host's feature flag.
///
/// Contract: resolves within its own timeout, never panics.
pub trait FlagSource: Send + Sync + 'static {
    /// Looks the flag up for `host`, with the credentials of a connection to it if any.
    fn fetch<'a>(
        &'a self,
        host: &'a Host,
        auth: Option<&'a dyn AuthProvider>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>>;
}

/// What the exporter asks before sending: may this host's telemetry go out?
///
/// Contract: `state` is a cheap non-blocking read; `wait` resolves by `timeout` at the latest.
pub trait FlagGate: Send + Sync + 'static {
    /// The current answer.
    fn state(&self) -> FlagState;
    /// Waits until the answer is known, or `timeout` passes (then returns what is known).
    fn wait(&self, timeout: Duration) -> BoxFuture<'_, FlagState>;
}

/// A gate with a fixed answer (tests, and drivers that bypass the flag).
#[derive(Debug, Clone, Copy)]
pub struct FixedGate(pub FlagState);

impl FlagGate for FixedGate {
    fn state(&self) -> FlagState {
        self.0
    }
    fn wait(&self, _timeout: Duration) -> BoxFuture<'_, FlagState> {
        let state = self.0;
        Box::pin(async move { state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        // The futures here never pend; poll once with a no-op waker.
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("future pended"),
        }
    }

    #[test]
    fn static_token_headers() {
        let h = block_on(StaticToken::new("abc").auth_headers()).unwrap();
        assert_eq!(
            h,
            vec![("Authorization".to_owned(), "Bearer abc".to_owned())]
        );
        assert!(block_on(StaticToken::new("").auth_headers()).is_none());
    }

    #[test]
    fn fixed_gate_and_flag_state() {
        let g = FixedGate(FlagState::Enabled);
        assert_eq!(g.state(), FlagState::Enabled);
        assert_eq!(block_on(g.wait(Duration::ZERO)), FlagState::Enabled);
        for s in [FlagState::Unknown, FlagState::Enabled, FlagState::Disabled] {
            assert_eq!(FlagState::from_u8(s as u8), s);
            assert!(!s.as_str().is_empty());
        }
        assert_eq!(FlagState::from_u8(9), FlagState::Disabled);
    }

    #[test]
    fn response_header_lookup_is_case_insensitive() {
        let r = HttpResponse {
            status: 429,
            headers: vec![("retry-after".into(), "3".into())],
            body: vec![],
        };
        assert_eq!(r.header("Retry-After"), Some("3"));
        assert_eq!(r.header("x"), None);
        let e = TransportError::new(TransportErrorKind::Timeout, "slow");
        assert!(e.to_string().contains("slow"));
        assert_eq!(FlagError::from(e).to_string(), "transport: Timeout: slow");
    }
}
