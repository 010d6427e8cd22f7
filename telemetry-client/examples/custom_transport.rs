//! The driver's own HTTP stack: one `HttpTransport` method over whatever client the driver
//! already holds (here a stand-in that only prints; a real one would send with reqwest or
//! hyper and map its errors to `TransportErrorKind`).
//!
//! `cargo run -p telemetry-client --example custom_transport`

use std::sync::Arc;
use std::time::Duration;

use telemetry_client::{
    AuthType, BoxFuture, ClientPreset, ConnectionOptions, HttpRequest, HttpResponse, HttpTransport,
    ProviderOptions, StaticToken, TelemetryClientProvider, TransportError,
};

/// Stands in for the driver's client; per connection, so it can carry that database's proxy,
/// TLS and headers.
struct PrintingTransport {
    database: &'static str,
}

impl HttpTransport for PrintingTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        println!(
            "[{}] {:?} {} ({} bytes)",
            self.database,
            request.method,
            request.url,
            request.body.len()
        );
        Box::pin(async {
            Ok(HttpResponse {
                status: 200,
                body: br#"{"flags":[{"name":"f","value":"true"}]}"#.to_vec(),
                ..HttpResponse::default()
            })
        })
    }
}

fn main() {
    let mut options =
        ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::new("MY_DRIVER", "f"));
    options.config.enabled = true;
    options.transport = Some(Arc::new(PrintingTransport {
        database: "provider",
    }));
    let provider = TelemetryClientProvider::new(options);

    // Two databases of one workspace, each with its own stack and org id: never one request.
    // Extra headers ride on authenticated requests only (rows without credentials go to
    // `/telemetry-unauth`, which gets none), so each connection brings its token too.
    let a = provider.connect(
        ConnectionOptions::new("https://example.cloud.databricks.com")
            .with_transport(Arc::new(PrintingTransport { database: "db-a" }))
            .with_auth(Arc::new(StaticToken::new("token-a")), AuthType::Pat)
            .with_header("x-databricks-org-id", "1"),
    );
    let b = provider.connect(
        ConnectionOptions::new("https://example.cloud.databricks.com")
            .with_transport(Arc::new(PrintingTransport { database: "db-b" }))
            .with_auth(Arc::new(StaticToken::new("token-b")), AuthType::Pat)
            .with_header("x-databricks-org-id", "2"),
    );
    a.opened(Duration::from_millis(10));
    b.opened(Duration::from_millis(12));
    drop(a);
    b.close();
    let _ = b.flush_blocking(Duration::from_secs(5));
    println!("{:?}", provider.stats());
}
