//! The exporter and the hyper transport against real local servers (no paused clock: real
//! sockets; every wait is bounded by short timeouts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use httpmock::prelude::*;
use telemetry_breaker::{BreakerConfig, CircuitBreaker};
use telemetry_export::{DatabricksExporter, ExportConfig, HyperTransport, TransportOptions};
use telemetry_types::auth::{AuthProvider, StaticToken};
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::drops::DropReason;
use telemetry_types::event::DriverError;
use telemetry_types::flag::{FixedGate, FlagState};
use telemetry_types::host::Host;
use telemetry_types::row::{self, TelemetryRow};
use telemetry_types::sink::BatchSink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn config() -> ExportConfig {
    let mut c = ExportConfig::default();
    c.request_timeout = Duration::from_millis(500);
    c.retry.max_retries = 1;
    c
}

fn exporter(base: &str, transport: HyperTransport) -> DatabricksExporter {
    let host = Host::parse(base, true).unwrap();
    DatabricksExporter::new(
        host.clone(),
        config(),
        Arc::new(transport),
        CircuitBreaker::new(host.to_string(), BreakerConfig::default()),
        Arc::new(FixedGate(FlagState::Enabled)),
        "TestDriver/1.0",
    )
}

fn rows(base: &str, token: Option<&str>, n: usize) -> Vec<TelemetryRow> {
    let mut c = ConnectionInfo::new(Host::parse(base, true).unwrap(), "TestDriver/1.0");
    c.workspace_id = Some(7);
    let _ = c.session_id.set("sess-1".into());
    c.auth = token.map(|t| Arc::new(StaticToken::new(t)) as Arc<dyn AuthProvider>);
    let c = Arc::new(c);
    (0..n)
        .map(|_| {
            let log = row::error_row(&c, 1, Some("st"), &DriverError::new("E", "boom"));
            TelemetryRow::new(log, c.clone(), true)
        })
        .collect()
}

#[tokio::test]
async fn authenticated_endpoint_method_headers_and_body() {
    let server = MockServer::start_async().await;
    let ext = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/telemetry-ext")
                .header("authorization", "Bearer tok")
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .header("user-agent", "TestDriver/1.0")
                .body_includes("\"items\":[]")
                .body_includes("\"protoLogs\":[\"{");
            then.status(200).body(r#"{"errors":[],"numSuccess":2}"#);
        })
        .await;
    let unauth = server
        .mock_async(|when, then| {
            when.path("/telemetry-unauth");
            then.status(200);
        })
        .await;
    let base = server.base_url();
    let e = exporter(&base, HyperTransport::new().unwrap());
    e.export(rows(&base, Some("tok"), 2)).await;
    ext.assert_calls_async(1).await;
    unauth.assert_calls_async(0).await;
    assert_eq!(e.stats().rows_exported, 2);
}

#[tokio::test]
async fn unauthenticated_endpoint_never_sees_the_token_or_ids() {
    let server = MockServer::start_async().await;
    let leaked = server
        .mock_async(|when, then| {
            when.path("/telemetry-unauth")
                .header_exists("authorization");
            then.status(500);
        })
        .await;
    let leaked_ids = server
        .mock_async(|when, then| {
            when.path("/telemetry-unauth").body_includes("sess-1");
            then.status(500);
        })
        .await;
    let ok = server
        .mock_async(|when, then| {
            when.method(POST)
                .path("/telemetry-unauth")
                .header_missing("authorization");
            then.status(200);
        })
        .await;
    let base = server.base_url();
    let e = exporter(&base, HyperTransport::new().unwrap());
    e.export(rows(&base, None, 3)).await;
    leaked.assert_calls_async(0).await;
    leaked_ids.assert_calls_async(0).await;
    ok.assert_calls_async(1).await;
    assert_eq!(e.stats().rows_exported, 3);
}

#[tokio::test]
async fn server_errors_are_retried_and_counted() {
    let server = MockServer::start_async().await;
    let m = server
        .mock_async(|when, then| {
            when.path("/telemetry-ext");
            then.status(503);
        })
        .await;
    let base = server.base_url();
    let e = exporter(&base, HyperTransport::new().unwrap());
    e.export(rows(&base, Some("t"), 1)).await;
    m.assert_calls_async(2).await;
    assert_eq!(e.stats().dropped(DropReason::Http5xx), 1);
}

async fn assert_transport_drop(base: &str, within: Duration) -> String {
    let e = exporter(base, HyperTransport::new().unwrap());
    let started = Instant::now();
    e.export(rows(base, Some("t"), 1)).await;
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    let s = e.stats();
    assert_eq!(s.dropped(DropReason::Transport), 1, "{s:?}");
    assert_eq!(s.rows_exported, 0);
    s.last_error.unwrap_or_default()
}

#[tokio::test]
async fn connection_refused_is_a_counted_drop() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err =
        assert_transport_drop(&format!("http://127.0.0.1:{port}"), Duration::from_secs(3)).await;
    assert!(err.contains("ConnectionRefused"), "{err}");
}

/// A server that accepts and then does `behaviour` with each connection.
async fn raw_server(response: Option<&'static [u8]>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            if let Some(r) = response {
                let _ = sock.write_all(r).await;
            }
            held.push(sock); // never closed, never finished
        }
    });
    (base, task)
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (base, task) = raw_server(None).await;
    let err = assert_transport_drop(&base, Duration::from_secs(5)).await;
    assert!(err.contains("Timeout"), "{err}");
    task.abort();
}

#[tokio::test]
async fn a_body_that_never_ends_times_out() {
    let (base, task) = raw_server(Some(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n{\"partial\":",
    ))
    .await;
    let err = assert_transport_drop(&base, Duration::from_secs(5)).await;
    assert!(err.contains("Timeout"), "{err}");
    task.abort();
}

#[tokio::test]
async fn tls_to_a_plain_http_port_fails_cleanly() {
    let server = MockServer::start_async().await;
    let port = server.port();
    let err =
        assert_transport_drop(&format!("https://127.0.0.1:{port}"), Duration::from_secs(5)).await;
    assert!(err.contains("Tls"), "{err}");
}

#[tokio::test]
async fn oversized_response_body_is_cut() {
    use telemetry_types::transport::{HttpMethod, HttpRequest, HttpTransport};
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.path("/big");
            then.status(200).body("x".repeat(10_000));
        })
        .await;
    server
        .mock_async(|when, then| {
            when.path("/big-error");
            then.status(503).body("x".repeat(10_000));
        })
        .await;
    let t = HyperTransport::new().unwrap();
    let req = |max| HttpRequest {
        method: HttpMethod::Get,
        url: server.url("/big"),
        headers: vec![],
        body: bytes::Bytes::new(),
        timeout: Duration::from_secs(2),
        max_response_bytes: max,
    };
    // A 2xx is an answer whatever its body: cut, not failed.
    let cut = t.send(req(100)).await.unwrap();
    assert_eq!(
        (cut.status, cut.body.len(), cut.body_truncated),
        (200, 100, true)
    );
    let err = t
        .send(HttpRequest {
            url: server.url("/big-error"),
            ..req(100)
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.kind,
        telemetry_types::classify::TransportErrorKind::BodyTooLarge
    );
    let whole = t.send(req(20_000)).await.unwrap();
    assert_eq!((whole.body.len(), whole.body_truncated), (10_000, false));
    let bad = HttpRequest {
        url: "not a url".into(),
        ..req(10)
    };
    assert!(t.send(bad).await.is_err());
}

#[tokio::test]
async fn https_with_a_test_root_works() {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca = CertificateDer::from(include_bytes!("fixtures/ca.der").to_vec());
    let cert = CertificateDer::from(include_bytes!("fixtures/server.der").to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        include_bytes!("fixtures/server.key.der").to_vec(),
    ));
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        if req.uri().path() == "/telemetry-ext" {
                            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let base = format!("https://localhost:{port}");
    let transport = HyperTransport::with_options(TransportOptions {
        extra_roots: vec![ca],
        webpki_roots: false,
        ..Default::default()
    })
    .unwrap();
    let e = exporter(&base, transport);
    e.export(rows(&base, Some("t"), 2)).await;
    assert_eq!(e.stats().rows_exported, 2, "{:?}", e.stats());
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Without the test root the same server is refused.
    let e = exporter(&base, HyperTransport::new().unwrap());
    e.export(rows(&base, Some("t"), 1)).await;
    assert_eq!(e.stats().dropped(DropReason::Transport), 1);
    let err = e.stats().last_error.unwrap();
    assert!(err.contains("Tls"), "{err}");
    server.abort();
}

#[test]
fn native_roots_need_the_feature() {
    let r = HyperTransport::with_options(TransportOptions {
        native_roots: true,
        ..Default::default()
    });
    assert_eq!(r.is_ok(), cfg!(feature = "native-roots"));
}

#[cfg(not(feature = "platform-verifier"))]
#[test]
fn the_platform_verifier_needs_its_feature() {
    let err = HyperTransport::with_options(TransportOptions {
        platform_verifier: true,
        ..TransportOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("platform-verifier"), "{err}");
}
