//! The HTTP transport trait and its request, response and error types, independent of any
//! HTTP stack (the exporter and the flag source both send through it).

use std::fmt;
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

/// Why an extra header was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The name is empty, too long, or not an RFC 9110 token.
    #[error(
        "header name is not a token (RFC 9110: letters, digits and !#$%&'*+-.^_`|~), or over {MAX_HEADER_NAME_BYTES} bytes"
    )]
    InvalidName,
    /// The value holds CR, LF, NUL or another control character, or is over the cap.
    #[error(
        "value of header `{name}` is not a field value (no CR, LF or control characters) or is over {MAX_HEADER_VALUE_BYTES} bytes"
    )]
    InvalidValue {
        /// The header's name.
        name: String,
    },
    /// The exporter sets this header itself (credentials, framing, content type).
    #[error("header `{0}` is set by the exporter and cannot be added (reserved names: {reserved})", reserved = RESERVED_HEADERS.join(", "))]
    Reserved(String),
    /// More headers than [`MAX_EXTRA_HEADERS`].
    #[error("more than {MAX_EXTRA_HEADERS} extra headers")]
    TooMany,
}

/// Longest extra header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Longest extra header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
/// Most extra headers one connection (provider's and its own together) may add.
pub const MAX_EXTRA_HEADERS: usize = 32;
/// Names the exporter sets itself, refused as extra headers (compared case-insensitively).
pub const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "connection",
    "keep-alive",
    "upgrade",
    "expect",
    "content-type",
    "content-encoding",
    "accept",
    "user-agent",
];

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks one extra header: an RFC 9110 token for the name, a field value (visible ASCII,
/// space, tab, or bytes of non-ASCII UTF-8; no CR, LF, NUL or other controls) for the value,
/// both within their caps, and a name the exporter does not set itself.
///
/// ```
/// use telemetry_types::transport::{validate_header, HeaderError};
/// assert!(validate_header("x-databricks-org-id", "42").is_ok());
/// assert_eq!(validate_header("x-a", "1\r\nHost: evil"), Err(HeaderError::InvalidValue { name: "x-a".into() }));
/// assert_eq!(validate_header("Authorization", "Bearer x"), Err(HeaderError::Reserved("authorization".into())));
/// assert_eq!(validate_header("bad name", "1"), Err(HeaderError::InvalidName));
/// ```
pub fn validate_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES || !name.bytes().all(is_token_byte) {
        return Err(HeaderError::InvalidName);
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(HeaderError::Reserved(lower));
    }
    let field_value = value.len() <= MAX_HEADER_VALUE_BYTES
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if !field_value {
        return Err(HeaderError::InvalidValue {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Headers a driver adds to its authenticated export requests (e.g. `x-databricks-org-id`):
/// validated when added ([`validate_header`]), one value per name (a later insert of a name
/// replaces the earlier value, whatever its letter case). `Debug` prints names, never values.
///
/// ```
/// use telemetry_types::transport::ExtraHeaders;
/// let mut provider = ExtraHeaders::default();
/// provider.insert("X-Databricks-Org-Id", "1").unwrap();
/// let mut connection = ExtraHeaders::default();
/// connection.insert("x-databricks-org-id", "2").unwrap();
/// let sent = provider.merged(&connection).unwrap();
/// assert_eq!(sent.iter().collect::<Vec<_>>(), [("x-databricks-org-id", "2")]);
/// assert!(connection.insert("Content-Length", "5").is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ExtraHeaders(Vec<(String, String)>);

impl ExtraHeaders {
    /// Adds (or replaces) one header after checking it; on error nothing changes.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), HeaderError> {
        let (name, value) = (name.into(), value.into());
        validate_header(&name, &value)?;
        let full = self.0.len() >= MAX_EXTRA_HEADERS;
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some(slot) => *slot = (name, value),
            None if full => return Err(HeaderError::TooMany),
            None => self.0.push((name, value)),
        }
        Ok(())
    }

    /// Every pair checked and added in order (a later pair of a name wins).
    pub fn try_from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, HeaderError> {
        let mut headers = Self::default();
        for (n, v) in pairs {
            headers.insert(n, v)?;
        }
        Ok(headers)
    }

    /// These headers with `over`'s added on top (`over` wins for a name in both).
    pub fn merged(&self, over: &ExtraHeaders) -> Result<Self, HeaderError> {
        let mut out = self.clone();
        for (n, v) in &over.0 {
            out.insert(n.clone(), v.clone())?;
        }
        Ok(out)
    }

    /// The headers, in the order first added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ExtraHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| format!("{n}: ***")))
            .finish()
    }
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

    #[rstest::rstest]
    #[case("x-databricks-org-id", "42", Ok(()))]
    #[case("X-Custom", "tab\there and ünïcode", Ok(()))]
    #[case("", "1", Err(HeaderError::InvalidName))]
    #[case("x a", "1", Err(HeaderError::InvalidName))]
    #[case("x:a", "1", Err(HeaderError::InvalidName))]
    #[case("x\r\ny", "1", Err(HeaderError::InvalidName))]
    #[case("x-a", "1\r\nX-Injected: 1", Err(HeaderError::InvalidValue { name: "x-a".into() }))]
    #[case("x-a", "1\n", Err(HeaderError::InvalidValue { name: "x-a".into() }))]
    #[case("x-a", "nul\0", Err(HeaderError::InvalidValue { name: "x-a".into() }))]
    #[case("x-a", "del\u{7f}", Err(HeaderError::InvalidValue { name: "x-a".into() }))]
    #[case("Authorization", "Bearer x", Err(HeaderError::Reserved("authorization".into())))]
    #[case("HOST", "evil.example", Err(HeaderError::Reserved("host".into())))]
    #[case("Content-Length", "5", Err(HeaderError::Reserved("content-length".into())))]
    #[case("Transfer-Encoding", "chunked", Err(HeaderError::Reserved("transfer-encoding".into())))]
    #[case("Connection", "close", Err(HeaderError::Reserved("connection".into())))]
    #[case("content-type", "text/plain", Err(HeaderError::Reserved("content-type".into())))]
    fn extra_headers_are_checked(
        #[case] name: &str,
        #[case] value: &str,
        #[case] expected: Result<(), HeaderError>,
    ) {
        assert_eq!(validate_header(name, value), expected);
        let mut h = ExtraHeaders::default();
        assert_eq!(h.insert(name, value), expected);
        assert_eq!(h.len(), usize::from(expected.is_ok()));
    }

    #[test]
    fn extra_headers_caps_and_debug() {
        let big = "v".repeat(MAX_HEADER_VALUE_BYTES + 1);
        assert!(matches!(
            validate_header("x-big", &big),
            Err(HeaderError::InvalidValue { .. })
        ));
        assert!(validate_header(&"n".repeat(MAX_HEADER_NAME_BYTES + 1), "1").is_err());
        let many = (0..MAX_EXTRA_HEADERS).map(|i| (format!("x-{i}"), "1"));
        let mut h = ExtraHeaders::try_from_pairs(many).unwrap();
        assert_eq!(h.insert("x-one-more", "1"), Err(HeaderError::TooMany));
        assert!(
            h.insert("X-0", "replaced").is_ok(),
            "a replacement is not one more"
        );
        let secret = ExtraHeaders::try_from_pairs([("x-secret", "hunter2")]).unwrap();
        assert_eq!(format!("{secret:?}"), "[\"x-secret: ***\"]");
        assert!(
            HeaderError::Reserved("host".into())
                .to_string()
                .contains("authorization")
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
