//! [`HttpTransport`] over a `reqwest::Client` (feature `reqwest`): most Rust drivers already
//! hold one, configured with their proxy and TLS settings; telemetry then goes the same way.

use std::fmt;

use telemetry_types::BoxFuture;
use telemetry_types::classify::TransportErrorKind;
use telemetry_types::transport::{
    HttpMethod, HttpRequest, HttpResponse, HttpTransport, TransportError, append_capped,
};

/// Sends telemetry with the driver's own `reqwest::Client`.
///
/// ```no_run
/// use std::sync::Arc;
/// use telemetry_client::{ConnectionOptions, ReqwestTransport};
/// let client = reqwest::Client::new(); // the driver's, with its proxy and TLS settings
/// let options = ConnectionOptions::new("https://my-workspace.cloud.databricks.com")
///     .with_transport(Arc::new(ReqwestTransport::new(client)));
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl fmt::Debug for ReqwestTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReqwestTransport")
    }
}

impl ReqwestTransport {
    /// Wraps the driver's client. Build it with `.redirect(reqwest::redirect::Policy::none())`
    /// (or use [`from_builder`](Self::from_builder)): a client that follows redirects sends
    /// the extra headers and body to wherever the redirect points before this transport can
    /// refuse the answer. A followed redirect is still never trusted: its answer is a local
    /// failure (rows dropped `plugin_failed`, a flag look-up failed), never an export.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// A client built from the driver's builder (its proxy, its TLS) with redirects off:
    /// a 3xx answer reaches the exporter as such (rows dropped `redirect`).
    pub fn from_builder(builder: reqwest::ClientBuilder) -> Result<Self, reqwest::Error> {
        Ok(Self::new(
            builder
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        ))
    }

    async fn send_inner(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let method = match request.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
        };
        let mut builder = self
            .client
            .request(method, &request.url)
            .timeout(request.timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body);
        }
        let mut response = builder.send().await.map_err(map_error)?;
        if reqwest::Url::parse(&request.url).ok().as_ref() != Some(response.url()) {
            return Err(TransportError::new(
                TransportErrorKind::Local,
                "the reqwest client followed a redirect; its answer is not trusted (build the client with redirects off)",
            ));
        }
        let status = response.status().as_u16();
        let mut headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(map_error)? {
            if let Some(done) = append_capped(
                status,
                &mut headers,
                &mut body,
                &chunk,
                request.max_response_bytes,
            ) {
                return done;
            }
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
            body_truncated: false,
        })
    }
}

impl HttpTransport for ReqwestTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(self.send_inner(request))
    }
}

fn map_error(e: reqwest::Error) -> TransportError {
    let kind = if e.is_timeout() {
        TransportErrorKind::Timeout
    } else if e.is_connect() {
        TransportErrorKind::ConnectionRefused
    } else if e.is_request() || e.is_body() || e.is_decode() {
        TransportErrorKind::ConnectionReset
    } else if e.is_builder() {
        TransportErrorKind::Protocol
    } else {
        TransportErrorKind::Other
    };
    TransportError::new(kind, e.without_url().to_string())
}

#[cfg(test)]
mod optional_features {
    use super::*;
    use httpmock::prelude::*;
    use std::time::Duration;

    fn request(url: String, max: usize) -> HttpRequest {
        HttpRequest {
            method: HttpMethod::Post,
            url,
            headers: vec![("X-Test".into(), "1".into())],
            body: telemetry_types::transport::Bytes::from_static(b"{}"),
            timeout: Duration::from_secs(5),
            max_response_bytes: max,
        }
    }

    #[tokio::test]
    async fn sends_through_the_drivers_client() {
        let server = MockServer::start_async().await;
        let m = server
            .mock_async(|when, then| {
                when.method(POST)
                    .path("/telemetry-ext")
                    .header("x-test", "1")
                    .body("{}");
                then.status(200)
                    .header("retry-after", "3")
                    .body("x".repeat(100));
            })
            .await;
        let t = ReqwestTransport::new(reqwest::Client::new());
        let r = t
            .send(request(server.url("/telemetry-ext"), 10))
            .await
            .unwrap();
        assert_eq!((r.status, r.body.len(), r.body_truncated), (200, 10, true));
        assert_eq!(r.header("Retry-After"), Some("3"));
        assert_eq!(m.calls_async().await, 1);
        let refused = t
            .send(request("http://127.0.0.1:9/".into(), 10))
            .await
            .unwrap_err();
        assert_eq!(refused.kind, TransportErrorKind::ConnectionRefused);
        assert!(format!("{t:?}").contains("Reqwest"));
    }

    #[tokio::test]
    async fn redirects_are_never_followed_nor_trusted() {
        let server = MockServer::start_async().await;
        let other = server
            .mock_async(|when, then| {
                when.path("/elsewhere");
                then.status(200);
            })
            .await;
        server
            .mock_async(|when, then| {
                when.path("/telemetry-ext");
                then.status(302).header("location", "/elsewhere");
            })
            .await;
        // Redirects off: the 3xx reaches the exporter as such.
        let off = ReqwestTransport::from_builder(reqwest::Client::builder()).unwrap();
        let r = off
            .send(request(server.url("/telemetry-ext"), 10))
            .await
            .unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(other.calls_async().await, 0);
        // A client that follows: the answer from elsewhere is refused, not counted exported.
        let follows = ReqwestTransport::new(reqwest::Client::new());
        let e = follows
            .send(request(server.url("/telemetry-ext"), 10))
            .await
            .unwrap_err();
        assert_eq!(e.kind, TransportErrorKind::Local);
    }
}
