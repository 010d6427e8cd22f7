//! The HTTP transport trait and its request, response and error types, independent of any
//! HTTP stack (the exporter and the flag source both send through it).

use std::time::Duration;

use thiserror::Error;

use crate::BoxFuture;
use crate::classify::TransportErrorKind;

/// HTTP method of a [`HttpRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// GET (feature flags).
    Get,
    /// POST (export).
    Post,
}

pub use bytes::Bytes;

/// One HTTP request, independent of any HTTP stack.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: HttpMethod,
    /// Absolute URL.
    pub url: String,
    /// Headers in order; names as given.
    pub headers: Vec<(String, String)>,
    /// Request body (empty for GET). `Bytes`, so that a retry re-sends the same buffer
    /// rather than a copy of it.
    pub body: Bytes,
    /// Whole-request deadline, connect included.
    pub timeout: Duration,
    /// The transport stops reading past this many response-body bytes: a 2xx answer is
    /// returned with its body cut there ([`HttpResponse::body_truncated`]; only the status
    /// of an export matters), any other status fails with
    /// [`TransportErrorKind::BodyTooLarge`].
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
    /// Whether the body was cut at `max_response_bytes`.
    pub body_truncated: bool,
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

/// Adds `chunk` to a response `body` read under the request's `max_response_bytes`, as every
/// transport must: `None` while the body fits; at the cap, a 2xx answer is finished with its
/// body cut there (only the status of an export matters), any other status fails with
/// [`TransportErrorKind::BodyTooLarge`].
pub fn append_capped(
    status: u16,
    headers: &mut Vec<(String, String)>,
    body: &mut Vec<u8>,
    chunk: &[u8],
    max: usize,
) -> Option<Result<HttpResponse, TransportError>> {
    if body.len().saturating_add(chunk.len()) <= max {
        body.extend_from_slice(chunk);
        return None;
    }
    if !(200..300).contains(&status) {
        return Some(Err(TransportError::new(
            TransportErrorKind::BodyTooLarge,
            format!("response body over {max} bytes"),
        )));
    }
    let room = max.saturating_sub(body.len());
    body.extend_from_slice(&chunk[..room.min(chunk.len())]);
    Some(Ok(HttpResponse {
        status,
        headers: std::mem::take(headers),
        body: std::mem::take(body),
        body_truncated: true,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_capped_the_same_way_by_every_transport() {
        let (mut headers, mut body) = (vec![], vec![]);
        assert!(append_capped(200, &mut headers, &mut body, b"abc", 5).is_none());
        let cut = append_capped(200, &mut headers, &mut body, b"defg", 5);
        let cut = cut.and_then(Result::ok).map(|r| (r.body, r.body_truncated));
        assert_eq!(cut, Some((b"abcde".to_vec(), true)));
        let (mut headers, mut body) = (vec![], vec![]);
        let refused = append_capped(503, &mut headers, &mut body, b"abcdefg", 5);
        assert!(
            refused.is_some_and(|r| r.is_err_and(|e| e.kind == TransportErrorKind::BodyTooLarge))
        );
    }

    #[test]
    fn response_header_lookup_is_case_insensitive() {
        let r = HttpResponse {
            status: 429,
            headers: vec![("retry-after".into(), "3".into())],
            body: vec![],
            body_truncated: false,
        };
        assert_eq!(r.header("Retry-After"), Some("3"));
        assert_eq!(r.header("x"), None);
        let e = TransportError::new(TransportErrorKind::Timeout, "slow");
        assert!(e.to_string().contains("slow"));
    }
}
