//! The wire model: exactly the JSON the Databricks telemetry endpoints accept.
//!
//! Field names follow `spec/wire-format.md` to the letter. Every optional field is
//! skipped when `None` (the receiver rejects `null`), and every struct denies unknown
//! fields when parsed, so the same types validate payloads in tests and in the mock
//! workspace.

use serde::{Deserialize, Serialize};

/// Body of `POST /telemetry-ext` and `POST /telemetry-unauth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryRequest {
    /// Milliseconds since the Unix epoch at the time of the POST.
    #[serde(rename = "uploadTime")]
    pub upload_time: i64,
    /// Always empty; the server requires the key.
    pub items: Vec<serde_json::Value>,
    /// One JSON-serialised [`TelemetryFrontendLog`] per element, as a string.
    #[serde(rename = "protoLogs")]
    pub proto_logs: Vec<String>,
}

impl TelemetryRequest {
    /// Builds a request body from logs, serialising each log to its own JSON string.
    ///
    /// ```
    /// use telemetry_types::wire::{TelemetryFrontendLog, TelemetryRequest};
    /// let log = TelemetryFrontendLog::new("id-1".into(), 1, "ua".into());
    /// let req = TelemetryRequest::from_logs(7, [&log]).unwrap();
    /// assert_eq!(req.proto_logs.len(), 1);
    /// assert!(req.items.is_empty());
    /// ```
    pub fn from_logs<'a>(
        upload_time: i64,
        logs: impl IntoIterator<Item = &'a TelemetryFrontendLog>,
    ) -> Result<Self, serde_json::Error> {
        let proto_logs = logs
            .into_iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            upload_time,
            items: Vec::new(),
            proto_logs,
        })
    }
}

/// One log (`TelemetryFrontendLog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFrontendLog {
    /// Workspace id, sent as a JSON number. Only from the HTTP path, never guessed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub workspace_id: Option<i64>,
    /// A UUID v4 per log.
    pub frontend_log_event_id: String,
    /// When and by whom.
    pub context: FrontendLogContext,
    /// What happened.
    pub entry: FrontendLogEntry,
}

impl TelemetryFrontendLog {
    /// A log with an empty `sql_driver_log`, to be filled in by the caller.
    pub fn new(event_id: String, timestamp_millis: i64, user_agent: String) -> Self {
        Self {
            workspace_id: None,
            frontend_log_event_id: event_id,
            context: FrontendLogContext {
                client_context: TelemetryClientContext {
                    timestamp_millis,
                    user_agent,
                },
            },
            entry: FrontendLogEntry::default(),
        }
    }

    /// The driver log inside this log.
    pub fn driver_log(&self) -> &SqlDriverLog {
        &self.entry.sql_driver_log
    }

    /// The driver log inside this log, mutably.
    pub fn driver_log_mut(&mut self) -> &mut SqlDriverLog {
        &mut self.entry.sql_driver_log
    }
}

/// `context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendLogContext {
    /// `client_context`.
    pub client_context: TelemetryClientContext,
}

/// `context.client_context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryClientContext {
    /// When the event happened (statement rows: statement start), ms since the epoch.
    pub timestamp_millis: i64,
    /// The driver's user agent (redacted).
    pub user_agent: String,
}

/// `entry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendLogEntry {
    /// `sql_driver_log`.
    pub sql_driver_log: SqlDriverLog,
}

/// `entry.sql_driver_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlDriverLog {
    /// Session id (correlation id: never on the unauthenticated endpoint).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session_id: Option<String>,
    /// Statement id (correlation id: never on the unauthenticated endpoint).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sql_statement_id: Option<String>,
    /// Only on `CREATE_SESSION` rows (boxed: most rows have none, and rows wait in memory).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub system_configuration: Option<Box<DriverSystemConfiguration>>,
    /// Only on `CREATE_SESSION` rows (boxed: most rows have none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub driver_connection_params: Option<Box<DriverConnectionParameters>>,
    /// Only on `CREATE_SESSION` rows.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_type: Option<AuthType>,
    /// Latency of the operation in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub operation_latency_ms: Option<i64>,
    /// Statement / operation details.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sql_operation: Option<SqlExecutionEvent>,
    /// Unity Catalog volume operation (rows whose statement type is `VOLUME`; boxed: rare).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vol_operation: Option<Box<VolumeOperation>>,
    /// Error details.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_info: Option<DriverErrorInfo>,
}

/// `vol_operation` (spec 2.4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOperation {
    /// PUT, GET, DELETE, LIST, QUERY.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub volume_operation_type: Option<VolumeOperationType>,
    /// The volume path (redacted when the row is built).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub volume_path: Option<String>,
    /// The local file: its file name only, never its directories.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub local_file: Option<String>,
}

/// `system_configuration` (spec 2.1). All strings, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DriverSystemConfiguration {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub driver_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub driver_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub runtime_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub runtime_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub runtime_vendor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub os_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub os_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub os_arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_app_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub locale_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub char_set_encoding: Option<String>,
    /// Basename only: no arguments, no directories.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub process_name: Option<String>,
}

/// `driver_connection_params` (spec 2.2): every key of the server's `DriverConnectionParameters`
/// message, all optional. The receiver rejects unknown keys, so there is no other field.
/// Values are driver settings, never secrets; the strings still go through redaction when the
/// row is built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DriverConnectionParameters {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub http_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<DriverMode>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_info: Option<HostDetails>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub use_proxy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_mech: Option<AuthMech>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_flow: Option<AuthFlow>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub use_system_proxy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub non_proxy_hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub use_cf_proxy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub proxy_host_info: Option<HostDetails>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cf_proxy_host_info: Option<HostDetails>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discovery_mode_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub discovery_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub use_empty_metadata: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub support_many_parameters: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssl_trust_store_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub check_certificate_revocation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accept_undetermined_certificate_revocation: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub google_service_account: Option<String>,
    /// A path: sent with home directories redacted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub google_credential_file_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub http_connection_pool_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_sea_hybrid_results: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_complex_datatype_support: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allow_self_signed_support: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub use_system_trust_store: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rows_fetched_per_block: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub azure_workspace_resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub azure_tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub string_column_length: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_token_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_arrow: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_direct_results: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_jwt_assertion: Option<bool>,
    /// A path: sent with home directories redacted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jwt_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jwt_algorithm: Option<String>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket_timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed_volume_ingestion_paths: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub async_poll_interval_millis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query_tags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_metric_view_metadata: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auto_commit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fetch_auto_commit_from_server: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enable_geospatial_support: Option<bool>,
}

/// `host_info`, `proxy_host_info`, `cf_proxy_host_info`: all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDetails {
    /// The URL (redacted when the row is built: no user-info, no query).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_url: Option<String>,
    /// The port (an `i32` on the wire).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<i32>,
    /// How the proxy authenticates (proxy hosts only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub proxy_auth_type: Option<ProxyAuthType>,
}

impl HostDetails {
    /// A host URL and port.
    pub fn new(host_url: impl Into<String>, port: i32) -> Self {
        Self {
            host_url: Some(host_url.into()),
            port: Some(port),
            proxy_auth_type: None,
        }
    }
}

/// `sql_operation` (spec 2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SqlExecutionEvent {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub statement_type: Option<StatementType>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub is_compressed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub execution_result: Option<ExecutionResultFormat>,
    /// The chunk a CloudFetch chunk-failure row is about.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chunk_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub operation_detail: Option<OperationDetail>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chunk_details: Option<ChunkDetails>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result_latency: Option<ResultLatency>,
}

/// `sql_operation.operation_detail`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OperationDetail {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub operation_type: Option<OperationType>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n_operation_status_calls: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub operation_status_latency_millis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub is_internal_call: Option<bool>,
}

/// `sql_operation.chunk_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ChunkDetails {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_chunks_present: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_chunks_iterated: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub initial_chunk_latency_millis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slowest_chunk_latency_millis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sum_chunks_download_time_millis: Option<i64>,
}

/// `sql_operation.result_latency`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ResultLatency {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result_set_ready_latency_millis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result_set_consumption_latency_millis: Option<i64>,
}

/// `error_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverErrorInfo {
    /// The error's name (type), e.g. `AuthenticationError`.
    pub error_name: String,
    /// Redacted message / trace, at most 2048 characters; empty on the unauthenticated endpoint.
    pub stack_trace: String,
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The string sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            /// The variant sent as `text`, if any (exact wire name).
            pub fn from_wire(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// `sql_operation.statement_type`.
    StatementType {
        /// Unknown (the server has no `NONE`).
        Unspecified = "TYPE_UNSPECIFIED",
        /// A query returning rows.
        Query = "QUERY",
        /// Other SQL.
        Sql = "SQL",
        /// DML.
        Update = "UPDATE",
        /// A metadata call (catalogs, schemas, ...).
        Metadata = "METADATA",
        /// A Unity Catalog volume operation (with `vol_operation`).
        Volume = "VOLUME",
    }
}

wire_enum! {
    /// `sql_operation.execution_result`: how the result came back.
    ExecutionResultFormat {
        /// Arrow batches inline in the response.
        InlineArrow = "INLINE_ARROW",
        /// Thrift columnar inline.
        ColumnarInline = "COLUMNAR_INLINE",
        /// CloudFetch presigned links.
        ExternalLinks = "EXTERNAL_LINKS",
        /// JSON inline.
        InlineJson = "INLINE_JSON",
        /// Unknown.
        Unspecified = "FORMAT_UNSPECIFIED",
    }
}

wire_enum! {
    /// `driver_connection_params.mode`.
    DriverMode {
        /// Thrift protocol.
        Thrift = "THRIFT",
        /// SQL Execution API.
        Sea = "SEA",
        /// Unknown.
        Unspecified = "TYPE_UNSPECIFIED",
    }
}

wire_enum! {
    /// `operation_detail.operation_type`. The receiver's enum is closed.
    OperationType {
        #[allow(missing_docs)] CreateSession = "CREATE_SESSION",
        #[allow(missing_docs)] DeleteSession = "DELETE_SESSION",
        #[allow(missing_docs)] ExecuteStatement = "EXECUTE_STATEMENT",
        #[allow(missing_docs)] ExecuteStatementAsync = "EXECUTE_STATEMENT_ASYNC",
        /// A statement closed (or its handle dropped) before it completed.
        CloseStatement = "CLOSE_STATEMENT",
        /// A statement cancelled before it completed.
        CancelStatement = "CANCEL_STATEMENT",
        #[allow(missing_docs)] ListTypeInfo = "LIST_TYPE_INFO",
        #[allow(missing_docs)] ListCatalogs = "LIST_CATALOGS",
        #[allow(missing_docs)] ListSchemas = "LIST_SCHEMAS",
        #[allow(missing_docs)] ListTables = "LIST_TABLES",
        #[allow(missing_docs)] ListTableTypes = "LIST_TABLE_TYPES",
        #[allow(missing_docs)] ListColumns = "LIST_COLUMNS",
        #[allow(missing_docs)] ListFunctions = "LIST_FUNCTIONS",
        #[allow(missing_docs)] ListPrimaryKeys = "LIST_PRIMARY_KEYS",
        #[allow(missing_docs)] ListImportedKeys = "LIST_IMPORTED_KEYS",
        #[allow(missing_docs)] ListExportedKeys = "LIST_EXPORTED_KEYS",
        #[allow(missing_docs)] ListCrossReferences = "LIST_CROSS_REFERENCES",
        /// Anything else: never a made-up value.
        Unspecified = "TYPE_UNSPECIFIED",
    }
}

wire_enum! {
    /// `driver_connection_params.auth_mech`.
    AuthMech {
        /// Unknown.
        Unspecified = "TYPE_UNSPECIFIED",
        /// Another mechanism.
        Other = "OTHER",
        /// Personal access token.
        Pat = "PAT",
        /// OAuth.
        Oauth = "OAUTH",
    }
}

wire_enum! {
    /// `driver_connection_params.auth_flow`.
    AuthFlow {
        /// Unknown.
        Unspecified = "TYPE_UNSPECIFIED",
        /// A token handed in by the caller.
        TokenPassthrough = "TOKEN_PASSTHROUGH",
        /// OAuth client credentials (machine to machine).
        ClientCredentials = "CLIENT_CREDENTIALS",
        /// OAuth in a browser (user to machine).
        BrowserBasedAuthentication = "BROWSER_BASED_AUTHENTICATION",
    }
}

wire_enum! {
    /// `host_info.proxy_auth_type`.
    ProxyAuthType {
        /// Unknown.
        Unspecified = "AUTH_UNSPECIFIED",
        /// No proxy authentication.
        None = "NONE",
        /// Basic.
        Basic = "BASIC",
        /// SPNEGO / Kerberos.
        Spnego = "SPNEGO",
    }
}

wire_enum! {
    /// `vol_operation.volume_operation_type`.
    VolumeOperationType {
        /// Unknown.
        Unspecified = "TYPE_UNSPECIFIED",
        /// Upload a local file.
        Put = "PUT",
        /// Download to a local file.
        Get = "GET",
        /// Remove a file.
        Delete = "DELETE",
        /// List a directory.
        List = "LIST",
        /// Query.
        Query = "QUERY",
    }
}

wire_enum! {
    /// `auth_type`.
    AuthType {
        /// Personal access token.
        Pat = "pat",
        /// OAuth machine-to-machine.
        OauthM2m = "oauth-m2m",
        /// OAuth user-to-machine in a browser.
        ExternalBrowser = "external-browser",
        /// A caller-supplied token provider.
        TokenProvider = "token-provider",
        /// Custom credentials.
        Custom = "custom",
        /// Unknown.
        Unknown = "unknown",
    }
}

/// The proto's unspecified member is where a value the server does not know goes: nothing
/// invents a name.
macro_rules! unspecified_fallback {
    ($($name:ident => $unspecified:ident),+ $(,)?) => {$(
        impl $name {
            /// The variant whose wire name equals `text` ignoring ASCII case (a driver's option
            /// value such as `oauth` or `sea`), or the unspecified member for anything else.
            pub fn from_name_lossy(text: &str) -> Self {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(text.trim()))
                    .unwrap_or(Self::$unspecified)
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::$unspecified
            }
        }
    )+};
}

impl OperationType {
    /// Whether this is a metadata look-up (`LIST_*`), as `Connection::metadata` takes.
    pub fn is_metadata(self) -> bool {
        self.as_str().starts_with("LIST_")
    }

    /// The schema's closest operation for a metadata call by its name in a driver's API
    /// (ADBC `get_objects` depths, JDBC `DatabaseMetaData` methods, ODBC `SQL*` calls): any
    /// case, with or without `get` / `list` and separators. Procedures map to
    /// `LIST_FUNCTIONS` (the schema has no procedure kind); `None` when nothing is close.
    ///
    /// ```
    /// use telemetry_types::wire::OperationType;
    /// assert_eq!(OperationType::for_metadata_call("list_procedures"), Some(OperationType::ListFunctions));
    /// assert_eq!(OperationType::for_metadata_call("getTableTypes"), Some(OperationType::ListTableTypes));
    /// assert_eq!(OperationType::for_metadata_call("SQLColumns"), Some(OperationType::ListColumns));
    /// assert_eq!(OperationType::for_metadata_call("execute"), None);
    /// ```
    pub fn for_metadata_call(name: &str) -> Option<Self> {
        let key: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let key = key
            .strip_prefix("sql")
            .or_else(|| key.strip_prefix("get"))
            .or_else(|| key.strip_prefix("list"))
            .unwrap_or(&key);
        Some(match key {
            "catalogs" | "databases" => Self::ListCatalogs,
            "schemas" | "dbschemas" => Self::ListSchemas,
            "tables" | "objects" => Self::ListTables,
            "tabletypes" => Self::ListTableTypes,
            "columns" | "tableschema" | "procedurecolumns" | "functioncolumns" => Self::ListColumns,
            "functions" | "procedures" => Self::ListFunctions,
            "primarykeys" => Self::ListPrimaryKeys,
            "importedkeys" | "foreignkeys" => Self::ListImportedKeys,
            "exportedkeys" => Self::ListExportedKeys,
            "crossreference" | "crossreferences" => Self::ListCrossReferences,
            "typeinfo" | "info" => Self::ListTypeInfo,
            _ => return None,
        })
    }
}

unspecified_fallback! {
    StatementType => Unspecified,
    ExecutionResultFormat => Unspecified,
    DriverMode => Unspecified,
    OperationType => Unspecified,
    AuthMech => Unspecified,
    AuthFlow => Unspecified,
    ProxyAuthType => Unspecified,
    VolumeOperationType => Unspecified,
}

#[cfg(test)]
mod enum_tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("oauth", AuthMech::Oauth.as_str())]
    #[case(" PAT ", AuthMech::Pat.as_str())]
    #[case("kerberos", AuthMech::Unspecified.as_str())]
    fn auth_mech_lossy(#[case] text: &str, #[case] want: &str) {
        assert_eq!(AuthMech::from_name_lossy(text).as_str(), want);
    }

    #[test]
    fn unknown_names_map_to_the_unspecified_member() {
        assert_eq!(DriverMode::from_name_lossy("sea"), DriverMode::Sea);
        assert_eq!(DriverMode::from_name_lossy("hive"), DriverMode::Unspecified);
        assert_eq!(
            StatementType::from_name_lossy("NONE"),
            StatementType::Unspecified
        );
        assert_eq!(
            VolumeOperationType::from_name_lossy("copy"),
            VolumeOperationType::Unspecified
        );
        assert_eq!(ProxyAuthType::default().as_str(), "AUTH_UNSPECIFIED");
        assert_eq!(
            OperationType::from_wire("LIST_CROSS_REFERENCES"),
            Some(OperationType::ListCrossReferences)
        );
        assert_eq!(OperationType::from_wire("list_tables"), None);
    }

    #[test]
    fn every_enum_round_trips_through_serde() {
        fn check<T: Serialize + for<'a> Deserialize<'a> + PartialEq + std::fmt::Debug + Copy>(
            all: &[T],
            name: fn(T) -> &'static str,
        ) {
            for &v in all {
                let json = serde_json::to_string(&v).unwrap();
                assert_eq!(json, format!("\"{}\"", name(v)));
                assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
            }
        }
        check(StatementType::ALL, StatementType::as_str);
        check(ExecutionResultFormat::ALL, ExecutionResultFormat::as_str);
        check(DriverMode::ALL, DriverMode::as_str);
        check(OperationType::ALL, OperationType::as_str);
        check(AuthMech::ALL, AuthMech::as_str);
        check(AuthFlow::ALL, AuthFlow::as_str);
        check(ProxyAuthType::ALL, ProxyAuthType::as_str);
        check(VolumeOperationType::ALL, VolumeOperationType::as_str);
        check(AuthType::ALL, AuthType::as_str);
        assert_eq!(OperationType::ALL.len(), 18, "the server's closed set");
    }
}
