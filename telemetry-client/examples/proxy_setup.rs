//! Reporting through a corporate proxy: from the environment (the default), or named in code.
//!
//! `HTTPS_PROXY=http://proxy.corp:3128 NO_PROXY=.internal DATABRICKS_HOST=https://... cargo run -p telemetry-client --example proxy_setup`

use std::sync::Arc;

use telemetry_client::{
    ClientPreset, ConnectionOptions, HyperTransport, ProviderOptions, ProxyConfig,
    TelemetryClientProvider, TransportOptions,
};

fn main() {
    let Ok(host) = std::env::var("DATABRICKS_HOST") else {
        println!("set DATABRICKS_HOST to report to a workspace");
        return;
    };
    let mut options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::jdbc());
    options.config.enabled = true;
    // The default transport already honours HTTPS_PROXY / HTTP_PROXY / NO_PROXY. To name a
    // proxy from the driver's own settings instead:
    if let Ok(proxy) = std::env::var("MY_DRIVER_PROXY") {
        let transport = TransportOptions {
            proxy: ProxyConfig::Url {
                url: proxy,
                no_proxy: "localhost,127.0.0.1".into(),
            },
            ..TransportOptions::default()
        };
        match HyperTransport::with_options(transport) {
            Ok(t) => options.transport = Some(Arc::new(t)),
            Err(e) => eprintln!("{e}"),
        }
    }
    let provider = TelemetryClientProvider::new(options);
    let conn = provider.connect(ConnectionOptions::new(host));
    conn.close();
    println!("{:?}", provider.stats());
}
