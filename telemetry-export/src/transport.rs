//! The default [`HttpTransport`]: hyper 1 + hyper-util's pooled client + hyper-rustls.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use telemetry_types::BoxFuture;
use telemetry_types::classify::TransportErrorKind;
use telemetry_types::transport::{
    HttpMethod, HttpRequest, HttpResponse, HttpTransport, TransportError, append_capped,
};

/// Settings of [`HyperTransport`].
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// TCP connect timeout. Default 10 s. (Each request also has its own overall deadline.)
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Extra trusted roots (DER), e.g. a corporate CA or a test certificate.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Trust the bundled webpki roots. Default `true`.
    pub webpki_roots: bool,
    /// Trust the operating system's roots too (feature `native-roots`). Default `false`.
    pub native_roots: bool,
    /// Which proxy requests go through. Default [`ProxyConfig::FromEnv`].
    pub proxy: ProxyConfig,
    /// Verify certificates with the operating system's verifier (feature
    /// `platform-verifier`: revocation, enterprise policies, the OS trust store) instead of
    /// the roots above; `extra_roots` still apply. Default `false`.
    pub platform_verifier: bool,
}

type TlsBuilder = rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>;

#[cfg(feature = "platform-verifier")]
fn platform_verified(
    builder: TlsBuilder,
    extra_roots: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ClientConfig, TransportBuildError> {
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)
        .map_err(|e| TransportBuildError(format!("platform verifier: {e}")))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[cfg(not(feature = "platform-verifier"))]
fn platform_verified(
    _builder: TlsBuilder,
    _extra_roots: Vec<CertificateDer<'static>>,
    _provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ClientConfig, TransportBuildError> {
    Err(TransportBuildError(
        "the platform verifier was requested but the `platform-verifier` feature is off".into(),
    ))
}

/// Which proxy a [`HyperTransport`] goes through. HTTPS destinations are reached through a
/// `CONNECT` tunnel (TLS end to end); proxy credentials in the proxy URL
/// (`http://user:pass@proxy:3128`) are sent as `Proxy-Authorization: Basic`.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyConfig {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, in either case, as curl reads
    /// them (hyper-util's matcher), when the transport is built. Loopback destinations (local
    /// test servers) always go direct.
    #[default]
    FromEnv,
    /// Straight to the host.
    Direct,
    /// `url` for every destination except the hosts `no_proxy` lists (`NO_PROXY` syntax).
    Url {
        /// The proxy, e.g. `http://proxy.corp:3128`.
        url: String,
        /// Hosts reached directly, comma-separated.
        no_proxy: String,
    },
}

/// Never prints proxy credentials: the URL's user info is redacted.
///
/// ```
/// use telemetry_export::ProxyConfig;
/// let p = ProxyConfig::Url { url: "http://alice:s3cret@proxy:3128".into(), no_proxy: String::new() };
/// assert!(!format!("{p:?}").contains("s3cret"));
/// ```
impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromEnv => f.write_str("FromEnv"),
            Self::Direct => f.write_str("Direct"),
            Self::Url { url, no_proxy } => f
                .debug_struct("Url")
                .field("url", &telemetry_types::redact::redact(url))
                .field("no_proxy", no_proxy)
                .finish(),
        }
    }
}

impl ProxyConfig {
    fn matcher(&self) -> Option<Matcher> {
        match self {
            Self::FromEnv => Some(Matcher::from_env()),
            Self::Direct => None,
            Self::Url { url, no_proxy } => Some(
                Matcher::builder()
                    .http(url.clone())
                    .https(url.clone())
                    .no(no_proxy.clone())
                    .build(),
            ),
        }
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Connects directly, or through a `CONNECT` tunnel when the matcher says a proxy serves
/// the destination.
#[derive(Clone)]
struct ProxyConnector {
    http: HttpConnector,
    matcher: Option<Arc<Matcher>>,
    /// Loopback destinations skip the proxy (the environment's proxy is for the outside).
    direct_loopback: bool,
}

fn is_loopback(dst: &http::Uri) -> bool {
    dst.host().is_some_and(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

impl tower_service::Service<http::Uri> for ProxyConnector {
    type Response = <HttpConnector as tower_service::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let proxy = match &self.matcher {
            Some(_) if self.direct_loopback && is_loopback(&dst) => None,
            Some(m) => m.intercept(&dst),
            None => None,
        };
        match proxy {
            None => {
                let connecting = self.http.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.http.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move {
                    std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
                    Ok(tunnel.call(dst).await?)
                })
            }
        }
    }
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            extra_roots: Vec::new(),
            webpki_roots: true,
            native_roots: false,
            proxy: ProxyConfig::default(),
            platform_verifier: false,
        }
    }
}

/// HTTPS (and, for loopback test servers, plain HTTP/1.1) with keep-alive, over hyper.
///
/// Proxies: by default the `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` environment (either
/// case) decides, as for curl ([`ProxyConfig`]); destinations go through a `CONNECT` tunnel.
/// A driver with its own HTTP stack (its own proxy and TLS settings) can instead hand in its
/// own [`HttpTransport`], per provider or per connection.
#[derive(Clone)]
pub struct HyperTransport {
    client: Client<HttpsConnector<ProxyConnector>, Full<Bytes>>,
}

impl fmt::Debug for HyperTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HyperTransport")
    }
}

/// The transport could not be built (bad root certificate, TLS setup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the HTTP transport: {0}")]
pub struct TransportBuildError(pub String);

impl HyperTransport {
    /// A transport with default options (webpki roots).
    pub fn new() -> Result<Self, TransportBuildError> {
        Self::with_options(TransportOptions::default())
    }

    /// A transport with `options`.
    pub fn with_options(options: TransportOptions) -> Result<Self, TransportBuildError> {
        let mut roots = RootCertStore::empty();
        if options.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        #[cfg(feature = "native-roots")]
        if options.native_roots {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            tracing::debug!(
                added,
                errors = loaded.errors.len(),
                "native root certificates loaded"
            );
        }
        #[cfg(not(feature = "native-roots"))]
        if options.native_roots {
            return Err(TransportBuildError(
                "native roots requested but the `native-roots` feature is off".into(),
            ));
        }
        let extra_roots = options.extra_roots.clone();
        for cert in options.extra_roots {
            roots
                .add(cert)
                .map_err(|e| TransportBuildError(format!("bad root certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportBuildError(e.to_string()))?;
        let tls = if options.platform_verifier {
            platform_verified(builder, extra_roots, provider)?
        } else {
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.connect_timeout));
        let connector = ProxyConnector {
            http,
            matcher: options.proxy.matcher().map(Arc::new),
            direct_loopback: options.proxy == ProxyConfig::FromEnv,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .build(https);
        Ok(Self { client })
    }

    async fn send_inner(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let method = match request.method {
            HttpMethod::Get => http::Method::GET,
            HttpMethod::Post => http::Method::POST,
        };
        let mut builder = http::Request::builder().method(method).uri(&request.url);
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let req = builder.body(Full::new(request.body)).map_err(|e| {
            TransportError::new(TransportErrorKind::Protocol, format!("bad request: {e}"))
        })?;
        let response = self.client.request(req).await.map_err(|e| map_error(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut headers = headers;
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| map_error(&e))?;
            if let Some(data) = frame.data_ref()
                && let Some(done) = append_capped(
                    status,
                    &mut headers,
                    &mut bytes,
                    data,
                    request.max_response_bytes,
                )
            {
                return done;
            }
        }
        Ok(HttpResponse {
            status,
            headers,
            body: bytes,
            body_truncated: false,
        })
    }
}

impl HttpTransport for HyperTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async move {
            let timeout = request.timeout;
            match tokio::time::timeout(timeout, self.send_inner(request)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::new(
                    TransportErrorKind::Timeout,
                    format!("no complete answer within {} ms", timeout.as_millis()),
                )),
            }
        })
    }
}

/// Maps a hyper / hyper-util error to a kind by walking its source chain.
fn map_error(err: &(dyn StdError + 'static)) -> TransportError {
    let mut kind = TransportErrorKind::Other;
    let mut text = String::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&e.to_string());
        if e.downcast_ref::<rustls::Error>().is_some() {
            kind = TransportErrorKind::Tls;
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                kind = TransportErrorKind::Tls;
            } else if kind == TransportErrorKind::Other {
                kind = io_kind(io);
            }
        } else if let Some(h) = e.downcast_ref::<hyper::Error>()
            && kind == TransportErrorKind::Other
        {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                kind = TransportErrorKind::ConnectionReset;
            } else if h.is_parse() {
                kind = TransportErrorKind::Protocol;
            } else if h.is_timeout() {
                kind = TransportErrorKind::Timeout;
            }
        }
        cur = e.source();
    }
    let lower = text.to_ascii_lowercase();
    if kind == TransportErrorKind::Other || kind == TransportErrorKind::Protocol {
        if lower.contains("temporary failure in name resolution") || lower.contains("try again") {
            kind = TransportErrorKind::DnsTemporary;
        } else if lower.contains("failed to lookup address")
            || lower.contains("name or service not known")
            || lower.contains("no address associated")
        {
            kind = TransportErrorKind::DnsPermanent;
        } else if [
            "invalidcontenttype",
            "corrupt message",
            "tls",
            "certificate",
            "handshake",
        ]
        .iter()
        .any(|t| lower.contains(t))
        {
            kind = TransportErrorKind::Tls;
        }
    }
    TransportError::new(kind, text)
}

fn io_kind(io: &std::io::Error) -> TransportErrorKind {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => TransportErrorKind::ConnectionRefused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            TransportErrorKind::ConnectionReset
        }
        K::TimedOut => TransportErrorKind::Timeout,
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
            TransportErrorKind::HostUnreachable
        }
        K::InvalidData => TransportErrorKind::Protocol,
        _ => TransportErrorKind::Other,
    }
}
