//! A driver on plain threads: connect, report a statement, flush on close.
//!
//! `DATABRICKS_HOST=https://... DATABRICKS_TOKEN=dapi... cargo run -p telemetry-client --example sync_driver`
//! (without `DATABRICKS_HOST` it only explains itself: nothing is sent).

use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_client::{
    AuthType, ClientPreset, ConnectionOptions, ExecutionResultFormat, OperationType,
    ProviderOptions, StatementType, StaticToken, TelemetryClientProvider,
};

fn main() {
    let Ok(host) = std::env::var("DATABRICKS_HOST") else {
        println!("set DATABRICKS_HOST (and DATABRICKS_TOKEN) to report to a workspace");
        return;
    };
    let token = std::env::var("DATABRICKS_TOKEN").unwrap_or_default();

    let mut options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::jdbc());
    options.config.enabled = true;
    let provider = TelemetryClientProvider::new(options);

    let conn = provider.connect(
        ConnectionOptions::new(host).with_auth(Arc::new(StaticToken::new(token)), AuthType::Pat),
    );
    let opened = Instant::now();
    // ... create the session ...
    conn.session_opened("01ef-example-session", opened.elapsed());

    let stmt = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
    // ... POST /statements answers with the id ...
    stmt.attach_id("01ef-example");
    stmt.result_format(ExecutionResultFormat::ExternalLinks);
    stmt.chunks_present(1);
    stmt.chunk(Duration::from_millis(40), 1 << 20, true);
    stmt.result_consumed();
    stmt.complete();

    conn.closed(Duration::from_millis(3));
    conn.close(); // returns at once; the host's last connection: final flush in the background
    let _ = conn.flush_blocking(Duration::from_secs(5)); // where the driver chooses to wait
    println!("{:?}", provider.stats());
}
