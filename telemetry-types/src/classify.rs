//! The exception classifier: which failures are terminal, which are worth a retry.
//!
//! The same rules serve the exporter (retry or not, count as an outage or not) and the
//! aggregator (a terminal driver error is flushed at once).

use serde::{Deserialize, Serialize};

/// What kind of failure something is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Never retried: authentication failures, HTTP 400, 401, 403, 404.
    Terminal,
    /// Worth another try: HTTP 429, 5xx gateways, timeouts, refused / reset
    /// connections, unreachable hosts, temporary DNS failures.
    Retryable,
    /// Neither rule applies.
    Unknown,
}

/// Why a transport failed, as far as the transport can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// Connect or request timeout.
    Timeout,
    /// The peer refused the connection.
    ConnectionRefused,
    /// The connection was reset or closed mid-exchange.
    ConnectionReset,
    /// No route to the host / network unreachable.
    HostUnreachable,
    /// DNS failed in a way that may pass (`EAI_AGAIN`).
    DnsTemporary,
    /// DNS says the host does not exist.
    DnsPermanent,
    /// TLS handshake or certificate failure.
    Tls,
    /// The response body was larger than the cap.
    BodyTooLarge,
    /// A malformed request or response (HTTP protocol error).
    Protocol,
    /// The request never reached the endpoint: the transport plug-in panicked, did not
    /// answer within the request's timeout (plus slack), or refused the request. A local
    /// failure: never retried, never counted against the endpoint's breaker.
    Local,
    /// Anything else.
    Other,
}

impl TransportErrorKind {
    /// Short stable name, used in statistics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionReset => "connection_reset",
            Self::HostUnreachable => "host_unreachable",
            Self::DnsTemporary => "dns_temporary",
            Self::DnsPermanent => "dns_permanent",
            Self::Tls => "tls",
            Self::BodyTooLarge => "body_too_large",
            Self::Protocol => "protocol",
            Self::Local => "local",
            Self::Other => "other",
        }
    }
}

/// Classifies an HTTP status code.
///
/// ```
/// use telemetry_types::classify::{classify_http_status, ErrorClass};
/// assert_eq!(classify_http_status(401), ErrorClass::Terminal);
/// assert_eq!(classify_http_status(503), ErrorClass::Retryable);
/// assert_eq!(classify_http_status(418), ErrorClass::Unknown);
/// ```
pub const fn classify_http_status(status: u16) -> ErrorClass {
    match status {
        400 | 401 | 403 | 404 => ErrorClass::Terminal,
        429 | 500 | 502 | 503 | 504 => ErrorClass::Retryable,
        _ => ErrorClass::Unknown,
    }
}

/// Classifies a transport failure.
pub const fn classify_transport(kind: TransportErrorKind) -> ErrorClass {
    match kind {
        TransportErrorKind::Timeout
        | TransportErrorKind::ConnectionRefused
        | TransportErrorKind::ConnectionReset
        | TransportErrorKind::HostUnreachable
        | TransportErrorKind::DnsTemporary => ErrorClass::Retryable,
        TransportErrorKind::Tls | TransportErrorKind::Local => ErrorClass::Terminal,
        TransportErrorKind::DnsPermanent
        | TransportErrorKind::BodyTooLarge
        | TransportErrorKind::Protocol
        | TransportErrorKind::Other => ErrorClass::Unknown,
    }
}

/// Classifies an error the driver reports, from its name and (when it came from an HTTP
/// answer) the status. The status wins when it is decisive; otherwise names that say
/// authentication / authorisation failure are terminal, names that say timeout or
/// temporary unavailability are retryable.
///
/// ```
/// use telemetry_types::classify::{classify_driver_error, ErrorClass};
/// assert_eq!(classify_driver_error("AuthenticationError", None), ErrorClass::Terminal);
/// assert_eq!(classify_driver_error("SomeError", Some(503)), ErrorClass::Retryable);
/// ```
pub fn classify_driver_error(error_name: &str, http_status: Option<u16>) -> ErrorClass {
    if let Some(status) = http_status {
        let class = classify_http_status(status);
        if class != ErrorClass::Unknown {
            return class;
        }
    }
    let name = error_name.to_ascii_lowercase();
    const TERMINAL: &[&str] = &[
        "auth",
        "unauthorized",
        "unauthorised",
        "forbidden",
        "permissiondenied",
        "permission_denied",
        "invalidcredential",
    ];
    const RETRYABLE: &[&str] = &[
        "timeout",
        "timedout",
        "temporarilyunavailable",
        "unavailable",
        "connectionreset",
        "connectionrefused",
        "toomanyrequests",
        "ratelimit",
    ];
    if TERMINAL.iter().any(|t| name.contains(t)) {
        ErrorClass::Terminal
    } else if RETRYABLE.iter().any(|t| name.contains(t)) {
        ErrorClass::Retryable
    } else {
        ErrorClass::Unknown
    }
}

/// Classifies a SQLSTATE (ISO/IEC 9075, ODBC) by its class.
///
/// ```
/// use telemetry_types::classify::{classify_sqlstate, ErrorClass};
/// assert_eq!(classify_sqlstate("28000"), ErrorClass::Terminal); // invalid authorization
/// assert_eq!(classify_sqlstate("08006"), ErrorClass::Retryable); // connection failure
/// assert_eq!(classify_sqlstate("22012"), ErrorClass::Unknown); // division by zero
/// ```
pub fn classify_sqlstate(sqlstate: &str) -> ErrorClass {
    let s = sqlstate.trim().as_bytes();
    if s.len() != 5 || !s.iter().all(u8::is_ascii_alphanumeric) {
        return ErrorClass::Unknown;
    }
    match (&s[..2], &s[2..]) {
        // Invalid authorization; syntax error or access rule violation; a rejected connection.
        (b"28", _) | (b"42", _) | (b"08", b"004") => ErrorClass::Terminal,
        // Connection exceptions; transaction rollback (serialisation, deadlock); insufficient
        // resources; ODBC timeouts.
        (b"08", _) | (b"40", _) | (b"53", _) => ErrorClass::Retryable,
        (b"HY", b"T00") | (b"HY", b"T01") => ErrorClass::Retryable,
        _ => ErrorClass::Unknown,
    }
}

/// Classifies a driver error from what it carries: the HTTP status when decisive, then the
/// SQLSTATE when decisive, then (for errors with neither) the name, as
/// [`classify_driver_error`] does.
///
/// ```
/// use telemetry_types::classify::{classify_error, ErrorClass};
/// assert_eq!(classify_error(Some("28000"), None, "Whatever"), ErrorClass::Terminal);
/// assert_eq!(classify_error(Some("42P01"), Some(503), "x"), ErrorClass::Retryable);
/// assert_eq!(classify_error(None, None, "RequestTimeout"), ErrorClass::Retryable);
/// ```
pub fn classify_error(sqlstate: Option<&str>, http_status: Option<u16>, name: &str) -> ErrorClass {
    if let Some(class) = http_status
        .map(classify_http_status)
        .filter(|c| *c != ErrorClass::Unknown)
    {
        return class;
    }
    match sqlstate.map(classify_sqlstate) {
        Some(ErrorClass::Unknown) | None => classify_driver_error(name, None),
        Some(class) => class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("28000", ErrorClass::Terminal)]
    #[case("42501", ErrorClass::Terminal)]
    #[case("42P01", ErrorClass::Terminal)]
    #[case("08004", ErrorClass::Terminal)]
    #[case("08001", ErrorClass::Retryable)]
    #[case("08S01", ErrorClass::Retryable)]
    #[case("40001", ErrorClass::Retryable)]
    #[case("53300", ErrorClass::Retryable)]
    #[case("HYT00", ErrorClass::Retryable)]
    #[case("HY000", ErrorClass::Unknown)]
    #[case("22012", ErrorClass::Unknown)]
    #[case("2800", ErrorClass::Unknown)]
    #[case("28-00", ErrorClass::Unknown)]
    #[case("", ErrorClass::Unknown)]
    fn sqlstate(#[case] state: &str, #[case] expected: ErrorClass) {
        assert_eq!(classify_sqlstate(state), expected);
    }

    #[rstest]
    #[case(Some("HY000"), None, "AuthError", ErrorClass::Terminal)]
    #[case(Some("08001"), Some(401), "x", ErrorClass::Terminal)]
    #[case(Some("28000"), Some(418), "Timeout", ErrorClass::Terminal)]
    #[case(None, None, "Other", ErrorClass::Unknown)]
    fn sqlstate_and_status(
        #[case] state: Option<&str>,
        #[case] status: Option<u16>,
        #[case] name: &str,
        #[case] expected: ErrorClass,
    ) {
        assert_eq!(classify_error(state, status, name), expected);
    }

    #[rstest]
    #[case(400, ErrorClass::Terminal)]
    #[case(401, ErrorClass::Terminal)]
    #[case(403, ErrorClass::Terminal)]
    #[case(404, ErrorClass::Terminal)]
    #[case(429, ErrorClass::Retryable)]
    #[case(500, ErrorClass::Retryable)]
    #[case(502, ErrorClass::Retryable)]
    #[case(503, ErrorClass::Retryable)]
    #[case(504, ErrorClass::Retryable)]
    #[case(200, ErrorClass::Unknown)]
    #[case(405, ErrorClass::Unknown)]
    #[case(501, ErrorClass::Unknown)]
    #[case(302, ErrorClass::Unknown)]
    fn http_status(#[case] status: u16, #[case] expected: ErrorClass) {
        assert_eq!(classify_http_status(status), expected);
    }

    #[rstest]
    #[case(TransportErrorKind::Timeout, ErrorClass::Retryable)]
    #[case(TransportErrorKind::ConnectionRefused, ErrorClass::Retryable)]
    #[case(TransportErrorKind::ConnectionReset, ErrorClass::Retryable)]
    #[case(TransportErrorKind::HostUnreachable, ErrorClass::Retryable)]
    #[case(TransportErrorKind::DnsTemporary, ErrorClass::Retryable)]
    #[case(TransportErrorKind::DnsPermanent, ErrorClass::Unknown)]
    #[case(TransportErrorKind::Tls, ErrorClass::Terminal)]
    #[case(TransportErrorKind::BodyTooLarge, ErrorClass::Unknown)]
    #[case(TransportErrorKind::Protocol, ErrorClass::Unknown)]
    #[case(TransportErrorKind::Other, ErrorClass::Unknown)]
    fn transport(#[case] kind: TransportErrorKind, #[case] expected: ErrorClass) {
        assert_eq!(classify_transport(kind), expected);
        assert!(!kind.as_str().is_empty());
    }

    #[rstest]
    #[case("AuthenticationError", None, ErrorClass::Terminal)]
    #[case("UnauthorizedAccess", None, ErrorClass::Terminal)]
    #[case("PERMISSION_DENIED", None, ErrorClass::Terminal)]
    #[case("RequestTimeout", None, ErrorClass::Retryable)]
    #[case("ServiceTemporarilyUnavailable", None, ErrorClass::Retryable)]
    #[case("SqlSyntaxError", None, ErrorClass::Unknown)]
    #[case("SqlSyntaxError", Some(400), ErrorClass::Terminal)]
    #[case("Whatever", Some(429), ErrorClass::Retryable)]
    #[case("AuthenticationError", Some(418), ErrorClass::Terminal)]
    #[case("Whatever", Some(418), ErrorClass::Unknown)]
    fn driver_error(#[case] name: &str, #[case] status: Option<u16>, #[case] expected: ErrorClass) {
        assert_eq!(classify_driver_error(name, status), expected);
    }
}
