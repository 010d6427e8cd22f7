//! A tokio driver: handles shared across tasks, flush on close without blocking a worker,
//! and a bounded shutdown at exit.
//!
//! `DATABRICKS_HOST=https://... DATABRICKS_TOKEN=dapi... cargo run -p telemetry-client --example tokio_driver`

use std::sync::Arc;
use std::time::Duration;

use telemetry_client::{
    AuthType, ClientPreset, ConnectionOptions, OperationType, ProviderOptions, StatementType,
    StaticToken, TelemetryClientProvider,
};

#[tokio::main]
async fn main() {
    let Ok(host) = std::env::var("DATABRICKS_HOST") else {
        println!("set DATABRICKS_HOST (and DATABRICKS_TOKEN) to report to a workspace");
        return;
    };
    let token = std::env::var("DATABRICKS_TOKEN").unwrap_or_default();

    let mut options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::jdbc());
    options.config.enabled = true;
    options.runtime = Some(tokio::runtime::Handle::current()); // or leave None: own runtime
    let provider = TelemetryClientProvider::new(options);

    // `Clone + Send + Sync`: the driver's tasks share it by cloning.
    let conn = provider.connect(
        ConnectionOptions::new(host).with_auth(Arc::new(StaticToken::new(token)), AuthType::Pat),
    );
    conn.opened(Duration::from_millis(120));

    // A statement whose CloudFetch chunks download on other tasks, each holding a clone.
    let stmt = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
    stmt.attach_id("01ef-tokio");
    let downloads: Vec<_> = (0..4)
        .map(|i| {
            let stmt = stmt.clone();
            tokio::spawn(async move { stmt.chunk(Duration::from_millis(20 + i), 1 << 20, true) })
        })
        .collect();
    for d in downloads {
        let _ = d.await;
    }
    stmt.complete(); // whichever task ends it first wins; the others' endings are ignored

    conn.close(); // by reference, from any clone: no Arc::try_unwrap needed
    if let Err(e) = provider.shutdown(Duration::from_secs(2)).await {
        eprintln!("{e}");
    }
}
