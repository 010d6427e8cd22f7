//! A driver shaped like the Databricks ADBC Rust driver, integrated with no workaround: a
//! generic error type from a dependency (no `ReportableError` impl possible), a connection
//! shared by an executor that is never dropped and by worker tasks, statement structs that
//! hold a handle from the start (disabled until the execute begins), and a statement type
//! learned after the server answers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use telemetry_client::testing::{Capture, LogView, TestKit};
use telemetry_client::{
    AuthProvider, AuthType, BoxFuture, ClientPreset, Connection, ConnectionOptions, ErrorReport,
    OperationType, OptionError, ProviderOptions, Statement, StatementType, TelemetryClientProvider,
};

/// `driverbase::error::Error<K>`: generic, from another crate.
#[derive(Debug)]
struct DriverbaseError<K: fmt::Debug> {
    kind: K,
    message: String,
    sqlstate: Option<String>,
}

impl<K: fmt::Debug> fmt::Display for DriverbaseError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl<K: fmt::Debug> std::error::Error for DriverbaseError<K> {}

#[derive(Debug)]
enum Kind {
    InvalidArguments,
}

/// The driver's statement: its telemetry handle exists from construction (disabled).
#[derive(Default)]
struct AdbcStatement {
    telemetry: Statement,
}

/// The driver's executor: shares the connection's handle; never dropped in the driver.
#[derive(Clone)]
struct Executor {
    telemetry: Connection,
}

impl Executor {
    fn execute(&self, stmt: &mut AdbcStatement, sql_is_update: bool, fail: bool) {
        stmt.telemetry = self
            .telemetry
            .statement(StatementType::Query, OperationType::ExecuteStatement);
        stmt.telemetry.attach_id("01f0-aaaa");
        if sql_is_update {
            // The server's answer says what kind of statement it was.
            stmt.telemetry.set_statement_type(StatementType::Update);
        }
        if fail {
            let err = DriverbaseError {
                kind: Kind::InvalidArguments,
                message: "table not found: SELECT * FROM secret_table".into(),
                sqlstate: Some("42P01".into()),
            };
            let report = ErrorReport::of(&err).named("InvalidArguments");
            let report = match &err.sqlstate {
                Some(state) => report.sqlstate(state),
                None => report,
            };
            stmt.telemetry.fail(&report);
        } else {
            stmt.telemetry.complete();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adbc_shaped_driver_needs_no_wrapper_no_option_and_no_mutex() {
    let kit = TestKit::new();
    // Before telemetry is set up, handles exist and do nothing.
    let unset = AdbcStatement::default();
    unset.telemetry.complete();
    assert!(!unset.telemetry.is_enabled() && !Connection::default().is_enabled());

    let conn = kit.connect("adbc.example");
    let executor = Executor {
        telemetry: conn.clone(),
    };
    // Worker tasks share the connection through clones.
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let executor = executor.clone();
            tokio::spawn(async move {
                let mut stmt = AdbcStatement::default();
                executor.execute(&mut stmt, i == 1, i == 2);
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    // Closed through one clone, by reference; again from another clone: a no-op.
    conn.close();
    let _ = conn.flush(Duration::from_secs(10)).await;
    executor.telemetry.close();
    let _ = executor.telemetry.flush(Duration::from_secs(10)).await;
    kit.provider().wait_closed().await;
    let logs = kit.logs();
    let statements: Vec<_> = logs
        .iter()
        .filter_map(|l| {
            let d = &l.entry.sql_driver_log;
            d.sql_operation
                .as_ref()
                .map(|op| (op, d.error_info.as_ref()))
        })
        .collect();
    assert_eq!(statements.len(), 3, "{logs:?}");
    let types: Vec<_> = statements.iter().map(|(op, _)| op.statement_type).collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == Some(StatementType::Update))
            .count(),
        1
    );
    let failed: Vec<_> = statements.iter().filter_map(|(_, e)| *e).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error_name, "InvalidArguments");
    let text = serde_json::to_string(&failed[0]).unwrap();
    assert!(!text.contains("secret_table"), "{text}");
    let s = kit.provider().stats();
    assert_eq!(s.clients_closed, 1);
    assert_eq!(s.rows_produced, s.rows_exported + s.total_rows_dropped());
}

/// The driver's `Database`: builds its own provider at once, from its own options; options
/// arrive after it exists.
struct Database {
    telemetry: TelemetryClientProvider,
}

impl Database {
    fn new() -> Self {
        Self {
            telemetry: TelemetryClientProvider::new(
                ProviderOptions::new("databricks-adbc", "0.1.0", ClientPreset::adbc())
                    .with_read_env(false),
            ),
        }
    }

    /// `Database::set_option`: every option goes by; telemetry's are applied.
    fn set_option(&self, key: &str, value: &str) -> Result<(), OptionError> {
        match self.telemetry.apply_option(key, value) {
            Ok(()) | Err(OptionError::UnknownKey { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `Database::new_connection`: registered before the OAuth flow ran.
    fn connect(&self) -> Connection {
        self.telemetry.connect(
            ConnectionOptions::new("https://adbc-late.example")
                .with_http_path("/sql/1.0/warehouses/abc?o=7")
                .with_auth_later(AuthType::ExternalBrowser),
        )
    }
}

/// The driver's OAuth provider once its flow ran: synchronous, may block.
struct OAuthU2m;
impl AuthProvider for OAuthU2m {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(async {
            Some(vec![(
                "Authorization".to_owned(),
                "Bearer u2m-token".to_owned(),
            )])
        })
    }
}

#[test]
fn a_driver_that_builds_its_own_provider_takes_late_options_late_credentials_and_a_capture() {
    let capture = Capture::new("driver-shaped-late");
    let db = Database::new();
    // The options come after the database exists, with the driver's others among them.
    db.set_option("databricks.catalog", "main").unwrap();
    db.set_option("databricks.telemetry.enabled", "true")
        .unwrap();
    let (key, value) = capture.option();
    db.set_option(key, &value).unwrap();
    assert!(
        db.set_option("databricks.telemetry.batch_size", "0")
            .is_err()
    );

    let conn = db.connect();
    assert!(conn.disabled_reason().is_none());
    // The driver's OAuth flow ran: its credentials are attached now.
    conn.attach_auth(Arc::new(OAuthU2m));
    conn.session_opened("01f0-session", Duration::from_millis(40));
    let st = conn.metadata(OperationType::ListTables);
    st.attach_id("01f0-meta");
    st.complete();
    let failed = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
    failed.attach_id("01f0-fail");
    failed.set_statement_type(StatementType::Update);
    failed.fail(&ErrorReport::of(&std::io::Error::other("boom")).named("ServerError"));
    conn.closed(Duration::from_millis(2));
    conn.close();

    let logs = capture.wait_for_logs(4, Duration::from_secs(10));
    assert_eq!(logs.len(), 4, "{logs:?}");
    let ops: Vec<_> = logs.iter().map(|l| l.operation_type()).collect();
    assert!(ops.contains(&Some(OperationType::CreateSession)), "{ops:?}");
    assert!(ops.contains(&Some(OperationType::DeleteSession)), "{ops:?}");
    let meta = logs
        .iter()
        .find(|l| l.statement_id() == Some("01f0-meta"))
        .unwrap();
    assert_eq!(
        (
            meta.operation_type(),
            meta.statement_type(),
            meta.is_error()
        ),
        (
            Some(OperationType::ListTables),
            Some(StatementType::Metadata),
            false
        )
    );
    let fail = logs
        .iter()
        .find(|l| l.statement_id() == Some("01f0-fail"))
        .unwrap();
    assert_eq!(
        (fail.statement_type(), fail.error_name()),
        (Some(StatementType::Update), Some("ServerError"))
    );
    assert!(logs.iter().all(|l| l.session_id() == Some("01f0-session")));
    // Sent with the credentials attached late, to the authenticated endpoint.
    let requests = capture.endpoint().requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| {
        r.url.ends_with("/telemetry-ext")
            && r.headers
                .iter()
                .any(|(k, v)| k == "Authorization" && v == "Bearer u2m-token")
    }));
}
