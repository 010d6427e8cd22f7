//! A test kit for driver authors (feature `testing`): a provider that records the rows a
//! driver produced, with no network and no flag look-up, so a driver's own tests can assert
//! what it reports. The doubles of every trait are re-exported too.
//!
//! ```
//! use std::time::Duration;
//! use telemetry_client::testing::{LogView, TestKit};
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
//! assert_eq!(logs[1].statement_id(), Some("01ef"));
//! ```
//!
//! A driver that builds its own provider from its options is pointed at a [`Capture`] by an
//! option value (`databricks.telemetry.test_capture`), and its tests read what it sent:
//!
//! ```
//! use std::time::Duration;
//! use telemetry_client::testing::{Capture, LogView};
//! use telemetry_client::{
//!     ClientPreset, ConnectionOptions, OperationType, ProviderOptions, StatementType,
//!     TelemetryClientProvider,
//! };
//!
//! let capture = Capture::new("my-driver-test");
//! // Inside the driver: its own provider, its own options, one of them from the test.
//! let provider = TelemetryClientProvider::new(ProviderOptions::new(
//!     "MyDriver",
//!     "1.0.0",
//!     ClientPreset::adbc(),
//! ).with_read_env(false));
//! let (key, value) = capture.option();
//! provider.apply_option("databricks.telemetry.enabled", "true").unwrap();
//! provider.apply_option(key, &value).unwrap();
//! let conn = provider.connect(ConnectionOptions::new("https://my-workspace.cloud.databricks.com"));
//! let statement = conn.metadata(OperationType::ListTables);
//! statement.complete();
//! conn.close();
//!
//! let logs = capture.wait_for_logs(1, Duration::from_secs(10));
//! assert_eq!(logs[0].operation_type(), Some(OperationType::ListTables));
//! assert_eq!(logs[0].statement_type(), Some(StatementType::Metadata));
//! assert!(!logs[0].is_error());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub use telemetry_types::testing::*;
pub use telemetry_types::wire::TelemetryFrontendLog;

use crate::{
    AuthType, ClientPreset, Connection, ConnectionOptions, DisableSwitch, ExecutionResultFormat,
    HttpTransport, OperationType, ProviderOptions, StatementType, StaticToken,
    TelemetryClientProvider,
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
        logs_of(&self.endpoint)
    }

    /// The in-memory endpoint (requests, headers, bodies).
    pub fn endpoint(&self) -> &ScriptedTransport {
        &self.endpoint
    }
}

/// Every log `endpoint` received, in order.
fn logs_of(endpoint: &ScriptedTransport) -> Vec<TelemetryFrontendLog> {
    endpoint
        .bodies()
        .iter()
        .flat_map(|b| b["protoLogs"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| serde_json::from_str(l.as_str()?).ok())
        .collect()
}

/// The captures alive, by name.
fn captures() -> &'static Mutex<HashMap<String, Weak<ScriptedTransport>>> {
    static CAPTURES: std::sync::OnceLock<Mutex<HashMap<String, Weak<ScriptedTransport>>>> =
        std::sync::OnceLock::new();
    CAPTURES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The endpoint of the capture named `name`, if one is alive.
pub(crate) fn capture_transport(name: &str) -> Option<Arc<dyn HttpTransport>> {
    let captures = captures().lock().unwrap_or_else(|e| e.into_inner());
    let endpoint = captures.get(name)?.upgrade()?;
    Some(endpoint)
}

/// An in-memory endpoint a provider the test did not build can be pointed at: a provider
/// whose config names it (`test_capture`, option key `telemetryTestCapture`) sends every
/// row here, with the flag on, whatever transport its connections bring. Named, so that tests
/// running side by side in one process each have their own; unregistered when dropped.
pub struct Capture {
    name: String,
    endpoint: Arc<ScriptedTransport>,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("name", &self.name)
            .field("requests", &self.endpoint.count())
            .finish()
    }
}

impl Capture {
    /// A capture registered under `name` (replacing one of the same name).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let endpoint = ScriptedTransport::always(200);
        captures()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), Arc::downgrade(&endpoint));
        Self { name, endpoint }
    }

    /// The option that points a provider here: `("databricks.telemetry.test_capture", name)`.
    pub fn option(&self) -> (&'static str, String) {
        ("databricks.telemetry.test_capture", self.name.clone())
    }

    /// Every log received so far, in order.
    pub fn logs(&self) -> Vec<TelemetryFrontendLog> {
        logs_of(&self.endpoint)
    }

    /// Waits (this thread, at most `timeout`) until at least `n` logs arrived, and returns
    /// every log then: rows are flushed in the background (at a connection's close, or the
    /// flush interval), which the driver under test does not wait for.
    pub fn wait_for_logs(&self, n: usize, timeout: Duration) -> Vec<TelemetryFrontendLog> {
        let started = Instant::now();
        loop {
            let logs = self.logs();
            if logs.len() >= n || started.elapsed() >= timeout {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The in-memory endpoint (requests, headers, bodies).
    pub fn endpoint(&self) -> &ScriptedTransport {
        &self.endpoint
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let mut captures = captures().lock().unwrap_or_else(|e| e.into_inner());
        if captures
            .get(&self.name)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.endpoint)))
        {
            captures.remove(&self.name);
        }
    }
}

/// The facts of a log a driver's test asserts on, without the wire format's nesting.
pub trait LogView {
    /// The operation (`EXECUTE_STATEMENT`, `LIST_TABLES`, `CREATE_SESSION`, ...).
    fn operation_type(&self) -> Option<OperationType>;
    /// The statement type.
    fn statement_type(&self) -> Option<StatementType>;
    /// The server's statement id, as sent.
    fn statement_id(&self) -> Option<&str>;
    /// The server's session id, as sent.
    fn session_id(&self) -> Option<&str>;
    /// The result format.
    fn result_format(&self) -> Option<ExecutionResultFormat>;
    /// The operation's latency in milliseconds.
    fn latency_ms(&self) -> Option<i64>;
    /// Chunks downloaded (`total_chunks_iterated`).
    fn chunks_iterated(&self) -> Option<i32>;
    /// Chunks the result had (`total_chunks_present`).
    fn chunks_present(&self) -> Option<i32>;
    /// Total download time of the chunks, in milliseconds.
    fn chunks_download_ms(&self) -> Option<i64>;
    /// The error's name, if the log reports one.
    fn error_name(&self) -> Option<&str>;
    /// Whether the log reports an error.
    fn is_error(&self) -> bool {
        self.error_name().is_some()
    }
}

impl LogView for TelemetryFrontendLog {
    fn operation_type(&self) -> Option<OperationType> {
        self.driver_log()
            .sql_operation
            .as_ref()?
            .operation_detail
            .as_ref()?
            .operation_type
    }

    fn statement_type(&self) -> Option<StatementType> {
        self.driver_log().sql_operation.as_ref()?.statement_type
    }

    fn statement_id(&self) -> Option<&str> {
        self.driver_log().sql_statement_id.as_deref()
    }

    fn session_id(&self) -> Option<&str> {
        self.driver_log().session_id.as_deref()
    }

    fn result_format(&self) -> Option<ExecutionResultFormat> {
        self.driver_log().sql_operation.as_ref()?.execution_result
    }

    fn latency_ms(&self) -> Option<i64> {
        self.driver_log().operation_latency_ms
    }

    fn chunks_iterated(&self) -> Option<i32> {
        self.driver_log()
            .sql_operation
            .as_ref()?
            .chunk_details
            .as_ref()?
            .total_chunks_iterated
    }

    fn chunks_present(&self) -> Option<i32> {
        self.driver_log()
            .sql_operation
            .as_ref()?
            .chunk_details
            .as_ref()?
            .total_chunks_present
    }

    fn chunks_download_ms(&self) -> Option<i64> {
        self.driver_log()
            .sql_operation
            .as_ref()?
            .chunk_details
            .as_ref()?
            .sum_chunks_download_time_millis
    }

    fn error_name(&self) -> Option<&str> {
        self.driver_log()
            .error_info
            .as_ref()
            .map(|e| e.error_name.as_str())
    }
}
