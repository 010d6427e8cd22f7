//! The default transport through an HTTP proxy on 127.0.0.1: requests go through a CONNECT
//! tunnel with the proxy's credentials, and NO_PROXY hosts go direct.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use httpmock::prelude::*;
use telemetry_export::{HyperTransport, ProxyConfig, TransportOptions};
use telemetry_types::transport::{HttpMethod, HttpRequest, HttpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A CONNECT proxy that records each tunnel's target and `Proxy-Authorization`.
async fn connect_proxy() -> (std::net::SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut words = text.split_whitespace();
                if words.next() != Some("CONNECT") {
                    return;
                }
                let target = words.next().unwrap_or_default().to_owned();
                let auth = text.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| v.trim().to_owned())
                });
                log.lock().unwrap().push((target.clone(), auth));
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

fn get(url: String) -> HttpRequest {
    HttpRequest {
        method: HttpMethod::Get,
        url,
        headers: vec![],
        body: telemetry_types::transport::Bytes::new(),
        timeout: Duration::from_secs(5),
        max_response_bytes: 1024,
    }
}

#[tokio::test]
async fn requests_go_through_the_proxy_and_no_proxy_hosts_go_direct() {
    let server = MockServer::start_async().await;
    let hits = server
        .mock_async(|when, then| {
            when.path("/x");
            then.status(204);
        })
        .await;
    let (proxy, seen) = connect_proxy().await;
    let through = HyperTransport::with_options(TransportOptions {
        proxy: ProxyConfig::Url {
            url: format!("http://user:secret@{proxy}"),
            no_proxy: String::new(),
        },
        ..TransportOptions::default()
    })
    .unwrap();
    let r = through.send(get(server.url("/x"))).await.unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(hits.calls_async().await, 1);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one tunnel");
        assert_eq!(seen[0].0, format!("127.0.0.1:{}", server.port()));
        // base64("user:secret")
        assert_eq!(seen[0].1.as_deref(), Some("Basic dXNlcjpzZWNyZXQ="));
    }
    let bypass = HyperTransport::with_options(TransportOptions {
        proxy: ProxyConfig::Url {
            url: format!("http://{proxy}"),
            no_proxy: "127.0.0.1".into(),
        },
        ..TransportOptions::default()
    })
    .unwrap();
    assert_eq!(
        bypass.send(get(server.url("/x"))).await.unwrap().status,
        204
    );
    assert_eq!(hits.calls_async().await, 2);
    assert_eq!(seen.lock().unwrap().len(), 1, "NO_PROXY went direct");
    let direct = HyperTransport::with_options(TransportOptions {
        proxy: ProxyConfig::Direct,
        ..TransportOptions::default()
    })
    .unwrap();
    assert_eq!(
        direct.send(get(server.url("/x"))).await.unwrap().status,
        204
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}
