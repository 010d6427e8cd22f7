//! The default transport reads `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (either case). Its
//! own test binary: the process environment is changed before any thread starts.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use telemetry_export::HyperTransport;
use telemetry_types::transport::{HttpMethod, HttpRequest, HttpTransport};

#[test]
fn the_environment_names_the_proxy() {
    // A "proxy" that answers every CONNECT with 407: the request must fail at the proxy.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap();
    // SAFETY: this binary's only test, run before any other thread reads the environment.
    unsafe {
        std::env::set_var("http_proxy", format!("http://{proxy}"));
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let accepted = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = s.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = HyperTransport::new().unwrap();
    let result = rt.block_on(t.send(HttpRequest {
        method: HttpMethod::Get,
        // A name only the proxy would resolve (it refuses first): nothing leaves the machine.
        url: "http://telemetry.invalid:9/never-reached".into(),
        headers: vec![],
        body: telemetry_types::transport::Bytes::new(),
        timeout: Duration::from_secs(5),
        max_response_bytes: 1024,
    }));
    let head = accepted.join().unwrap();
    assert!(head.starts_with("CONNECT telemetry.invalid:9 "), "{head}");
    assert!(result.is_err(), "the proxy refused the tunnel");
    // Loopback destinations skip the environment's proxy (local test servers).
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    let served = std::thread::spawn(move || {
        let (mut s, _) = local.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
    });
    let direct = rt.block_on(t.send(HttpRequest {
        method: HttpMethod::Get,
        url: format!("http://127.0.0.1:{port}/"),
        headers: vec![],
        body: telemetry_types::transport::Bytes::new(),
        timeout: Duration::from_secs(5),
        max_response_bytes: 1024,
    }));
    served.join().unwrap();
    assert_eq!(direct.map(|r| r.status).ok(), Some(204));
}
