//! The glue the Databricks ADBC driver (Rust, SEA) needs, with stand-ins for its own types:
//! its error type (generic, from its `driverbase` dependency: no `ReportableError` impl is
//! possible, so it is reported through `ErrorReport`), its synchronous auth provider (which
//! may call `block_in_place`), a statement executor shared by tasks (the connection handle is
//! `Clone`; no `Arc<Mutex<Option<..>>>`), statement structs that hold a handle from the start
//! (`Statement::default()` until the execute begins; no `Option`), a provider built with the
//! database whose options arrive later (`apply_option`), and a connection registered before
//! its OAuth flow ran (`with_auth_later`, then `attach_auth`). Nothing starts until the first
//! enabled connection. Everything else is calls on the handles at the moments the driver
//! already has.
//!
//! `cargo run -p telemetry-client --example adbc_glue`

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use telemetry_client::{
    AuthFlow, AuthMech, AuthProvider, AuthType, BoxFuture, ClientPreset, Connection,
    ConnectionOptions, DriverConnectionParameters, DriverMode, ErrorReport, ExecutionResultFormat,
    OperationType, OptionError, ProviderOptions, Statement, StatementType, TelemetryClientProvider,
};

// ---- stand-ins for the driver's own types ----------------------------------------------

/// `driverbase::error::Error<K>`: generic, from another crate; a status, a SQLSTATE, a
/// message.
#[derive(Debug)]
struct DriverError<K> {
    kind: K,
    sqlstate: [u8; 5],
    message: String,
}

impl<K: fmt::Debug> fmt::Display for DriverError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

#[derive(Debug)]
enum Kind {
    Unauthorized,
}

/// `auth::AuthProvider`: synchronous, may block.
trait DriverAuth: Send + Sync {
    fn get_auth_header(&self) -> Result<String, DriverError<Kind>>;
}

struct OAuthM2m;
impl DriverAuth for OAuthM2m {
    fn get_auth_header(&self) -> Result<String, DriverError<Kind>> {
        // The real one refreshes its token with `block_in_place`.
        Ok("Bearer example-token".into())
    }
}

// ---- the glue: one error mapping, one auth adapter, one parameter mapping --------------

/// Reports the driver's error at any report site: borrowed, nothing cloned.
fn report<K: fmt::Debug>(err: &DriverError<K>) -> ErrorReport<'_> {
    let report = ErrorReport::of(err).named("DatabricksError");
    match std::str::from_utf8(&err.sqlstate) {
        Ok(state) => report.sqlstate(state),
        Err(_) => report,
    }
}

/// The driver's auth provider as telemetry's: runs on the provider's own multi-thread
/// runtime, where blocking (and `block_in_place`) is allowed, bounded by `auth_timeout`.
struct TelemetryAuth(Arc<dyn DriverAuth>);
impl AuthProvider for TelemetryAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        let header = self.0.get_auth_header().ok();
        Box::pin(async move { header.map(|h| vec![("Authorization".to_owned(), h)]) })
    }
}

/// The database's `databricks.*` options as connection parameters.
fn connection_params(auth_type: &str, use_proxy: bool) -> DriverConnectionParameters {
    DriverConnectionParameters {
        mode: Some(DriverMode::Sea),
        auth_mech: Some(AuthMech::from_name_lossy(auth_type)),
        auth_flow: Some(AuthFlow::ClientCredentials),
        use_proxy: Some(use_proxy),
        enable_arrow: Some(true),
        ..Default::default()
    }
}

// ---- where the driver calls it ----------------------------------------------------------

fn main() {
    // database.rs, new_database: once per database; starts nothing.
    let options = ProviderOptions::new("databricks-adbc", "0.1.0", ClientPreset::adbc());
    let provider = TelemetryClientProvider::new(options);
    // Database::set_option, for each option the user sets: telemetry's are applied, the
    // others skipped (a telemetry value out of range is the user's error to see).
    let enabled = std::env::var("DATABRICKS_HOST").is_ok().to_string();
    for (key, value) in [
        ("databricks.catalog", "main"),
        ("databricks.telemetry.enabled", enabled.as_str()),
    ] {
        match provider.apply_option(key, value) {
            Ok(()) | Err(OptionError::UnknownKey { .. }) => {}
            Err(e) => eprintln!("{e}"),
        }
    }
    let host = std::env::var("DATABRICKS_HOST").unwrap_or_else(|_| "https://example".into());

    // connection.rs: before create_session, before the OAuth flow has run.
    let conn = provider.connect(
        ConnectionOptions::new(host)
            .with_http_path("/sql/1.0/warehouses/abc")
            .with_auth_later(AuthType::OauthM2m)
            .with_connection_params(connection_params("oauth", false)),
    );
    // The driver's own first token fetch succeeded: telemetry may use its provider now.
    conn.attach_auth(Arc::new(TelemetryAuth(Arc::new(OAuthM2m))));
    let started = Instant::now();
    conn.session_opened("01ef-session", started.elapsed()); // or conn.open_failed(latency, &err)

    // The statement executor shares the connection's handle (a clone), as do its tasks.
    let executor = Executor {
        telemetry: conn.clone(),
    };
    let mut stmt = AdbcStatement::default(); // telemetry handle disabled until executed
    executor.begin(&mut stmt);
    let st = &stmt.telemetry;
    st.attach_id("01ef-statement"); // from the answer
    st.set_statement_type(StatementType::Query); // the answer's manifest says what it was
    st.poll(Duration::from_millis(100)); // wait_for_completion, per poll
    st.result_format(ExecutionResultFormat::ExternalLinks); // the manifest
    st.chunks_present(2);
    std::thread::scope(|s| {
        for i in 0..2u64 {
            let st = st.clone(); // ChunkDownloader::download, on worker tasks
            s.spawn(move || st.chunk(Duration::from_millis(30 + i), 8 << 20, true));
        }
    });
    st.result_ready(); // ResultReaderAdapter: first batch
    st.result_consumed(); // ResultReaderAdapter: end of stream
    st.complete();

    // A failing statement: the driver's own error, classified by its SQLSTATE.
    let failed = conn.metadata(OperationType::ListTables);
    failed.fail(&report(&DriverError {
        kind: Kind::Unauthorized,
        sqlstate: *b"42501",
        message: "permission denied on catalog 'main'".into(),
    }));

    // A call one task runs from begin to end (get_objects: one request, its result read
    // inline): the single-task handle records without atomics or allocation. Had it needed
    // download tasks, `listing.share()` would hand it on as a `Statement`.
    let mut listing = conn.local_statement(StatementType::Metadata, OperationType::ListCatalogs);
    listing.attach_id("01ef-listing");
    listing.result_format(ExecutionResultFormat::InlineArrow);
    listing.complete();

    conn.closed(Duration::from_millis(5)); // delete_session
    conn.close(); // release: returns at once, the final flush runs in the background
    executor.telemetry.close(); // from another clone: a no-op
    let _ = conn.flush_blocking(Duration::from_secs(5)); // last database released: wait here
    println!("{:?}", provider.stats());
}

/// The driver's statement struct: holds a handle from construction.
#[derive(Default)]
struct AdbcStatement {
    telemetry: Statement,
}

/// The driver's executor, shared and never dropped.
struct Executor {
    telemetry: Connection,
}

impl Executor {
    /// client/sea.rs execute_and_read: begin before POST /statements.
    fn begin(&self, stmt: &mut AdbcStatement) {
        stmt.telemetry = self
            .telemetry
            .statement(StatementType::Query, OperationType::ExecuteStatement);
    }
}
