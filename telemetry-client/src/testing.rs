//! A test kit for driver authors (feature `testing`): a provider that records the rows a
//! driver produced, with no network and no flag look-up, so a driver's own tests can assert
//! what it reports. The doubles of every trait are re-exported too.
//!
//! ```
//! use std::time::Duration;
//! use telemetry_client::testing::TestKit;
//! use telemetry_client::{OperationType, StatementType};
//!
//! let kit = TestKit::new();
//! let conn = kit.connect("https://my-workspace.cloud.databricks.com");
//! conn.opened(Duration::from_millis(5));
//! let statement = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
//! statement.attach_id("01ef");
//! statement.complete();
//! let logs = kit.logs();
//! assert_eq!(logs.len(), 2);
//! assert_eq!(logs[1].driver_log().sql_statement_id.as_deref(), Some("01ef"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use telemetry_types::testing::*;
pub use telemetry_types::wire::TelemetryFrontendLog;

use crate::{
    AuthType, ClientPreset, Connection, ConnectionOptions, DisableSwitch, ProviderOptions,
    StaticToken, TelemetryClientProvider,
};

/// A provider wired to an in-memory endpoint that accepts everything, with the feature flag
/// on, telemetry enabled and the environment ignored.
pub struct TestKit {
    provider: TelemetryClientProvider,
    endpoint: Arc<ScriptedTransport>,
}

impl fmt::Debug for TestKit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKit")
            .field("requests", &self.endpoint.count())
            .finish_non_exhaustive()
    }
}

impl Default for TestKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKit {
    /// A kit with the default options.
    pub fn new() -> Self {
        Self::with_options(ProviderOptions::new(
            "TestDriver",
            "1.0.0",
            ClientPreset::new("TEST", "test.flag"),
        ))
    }

    /// A kit from `options`, with its transport, flag source, off switch and environment
    /// replaced (telemetry is turned on).
    pub fn with_options(mut options: ProviderOptions) -> Self {
        let endpoint = ScriptedTransport::always(200);
        options.config.enabled = true;
        options.config.allow_insecure_loopback = true;
        options.transport = Some(endpoint.clone());
        options.flag_source = Some(ScriptedFlagSource::fixed(true));
        options.switch = Some(DisableSwitch::Unset);
        options.read_env = false;
        Self {
            provider: TelemetryClientProvider::new(options),
            endpoint,
        }
    }

    /// The provider, to hand to the driver under test.
    pub fn provider(&self) -> &TelemetryClientProvider {
        &self.provider
    }

    /// A connection to `host` with a test token.
    pub fn connect(&self, host: &str) -> Connection {
        self.provider.connect(
            ConnectionOptions::new(host)
                .with_auth(Arc::new(StaticToken::new("test")), AuthType::Pat),
        )
    }

    /// Flushes and returns every log sent so far, in order.
    pub fn logs(&self) -> Vec<TelemetryFrontendLog> {
        let _ = self.provider.force_flush_blocking(Duration::from_secs(10));
        self.endpoint
            .bodies()
            .iter()
            .flat_map(|b| b["protoLogs"].as_array().cloned().unwrap_or_default())
            .filter_map(|l| serde_json::from_str(l.as_str()?).ok())
            .collect()
    }

    /// The in-memory endpoint (requests, headers, bodies).
    pub fn endpoint(&self) -> &ScriptedTransport {
        &self.endpoint
    }
}
