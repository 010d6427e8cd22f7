//! The receiver's schema, written out from `spec/wire-format.md` sections 2-2.5 independently
//! of the crates' own wire types, so that the mock workspace checks what we send against the
//! server's field and enum set rather than against itself: unknown keys, unknown enum names,
//! wrong JSON types and integers out of their width all fail. It also tells which row kind of
//! row kind (docs/TELEMETRY.md, "What is sent") a log is.

use serde_json::{Map, Value};

/// A field's type.
#[derive(Debug, Clone, Copy)]
enum T {
    Str,
    Bool,
    I32,
    I64,
    StrList,
    Enum(&'static [&'static str]),
    Obj(&'static [(&'static str, T)]),
}

const OPERATION_TYPES: &[&str] = &[
    "TYPE_UNSPECIFIED",
    "CREATE_SESSION",
    "DELETE_SESSION",
    "EXECUTE_STATEMENT",
    "EXECUTE_STATEMENT_ASYNC",
    "CLOSE_STATEMENT",
    "CANCEL_STATEMENT",
    "LIST_TYPE_INFO",
    "LIST_CATALOGS",
    "LIST_SCHEMAS",
    "LIST_TABLES",
    "LIST_TABLE_TYPES",
    "LIST_COLUMNS",
    "LIST_FUNCTIONS",
    "LIST_PRIMARY_KEYS",
    "LIST_IMPORTED_KEYS",
    "LIST_EXPORTED_KEYS",
    "LIST_CROSS_REFERENCES",
];

const HOST: T = T::Obj(&[
    ("host_url", T::Str),
    ("port", T::I32),
    (
        "proxy_auth_type",
        T::Enum(&["AUTH_UNSPECIFIED", "NONE", "BASIC", "SPNEGO"]),
    ),
]);

const SYSTEM_CONFIGURATION: T = T::Obj(&[
    ("driver_name", T::Str),
    ("driver_version", T::Str),
    ("runtime_name", T::Str),
    ("runtime_version", T::Str),
    ("runtime_vendor", T::Str),
    ("os_name", T::Str),
    ("os_version", T::Str),
    ("os_arch", T::Str),
    ("client_app_name", T::Str),
    ("locale_name", T::Str),
    ("char_set_encoding", T::Str),
    ("process_name", T::Str),
]);

const CONNECTION_PARAMS: T = T::Obj(&[
    ("http_path", T::Str),
    ("mode", T::Enum(&["TYPE_UNSPECIFIED", "THRIFT", "SEA"])),
    ("host_info", HOST),
    ("use_proxy", T::Bool),
    (
        "auth_mech",
        T::Enum(&["TYPE_UNSPECIFIED", "OTHER", "PAT", "OAUTH"]),
    ),
    (
        "auth_flow",
        T::Enum(&[
            "TYPE_UNSPECIFIED",
            "TOKEN_PASSTHROUGH",
            "CLIENT_CREDENTIALS",
            "BROWSER_BASED_AUTHENTICATION",
        ]),
    ),
    ("auth_scope", T::Str),
    ("use_system_proxy", T::Bool),
    ("non_proxy_hosts", T::StrList),
    ("use_cf_proxy", T::Bool),
    ("proxy_host_info", HOST),
    ("cf_proxy_host_info", HOST),
    ("discovery_mode_enabled", T::Bool),
    ("discovery_url", T::Str),
    ("use_empty_metadata", T::Bool),
    ("support_many_parameters", T::Bool),
    ("ssl_trust_store_type", T::Str),
    ("check_certificate_revocation", T::Bool),
    ("accept_undetermined_certificate_revocation", T::Bool),
    ("google_service_account", T::Str),
    ("google_credential_file_path", T::Str),
    ("http_connection_pool_size", T::I64),
    ("enable_sea_hybrid_results", T::Bool),
    ("enable_complex_datatype_support", T::Bool),
    ("allow_self_signed_support", T::Bool),
    ("use_system_trust_store", T::Bool),
    ("rows_fetched_per_block", T::I64),
    ("azure_workspace_resource_id", T::Str),
    ("azure_tenant_id", T::Str),
    ("string_column_length", T::I32),
    ("enable_token_cache", T::Bool),
    ("token_endpoint", T::Str),
    ("auth_endpoint", T::Str),
    ("enable_arrow", T::Bool),
    ("enable_direct_results", T::Bool),
    ("enable_jwt_assertion", T::Bool),
    ("jwt_key_file", T::Str),
    ("jwt_algorithm", T::Str),
    ("socket_timeout", T::I64),
    ("allowed_volume_ingestion_paths", T::Str),
    ("async_poll_interval_millis", T::I64),
    ("query_tags", T::Str),
    ("enable_metric_view_metadata", T::Bool),
    ("auto_commit", T::Bool),
    ("fetch_auto_commit_from_server", T::Bool),
    ("enable_geospatial_support", T::Bool),
]);

const SQL_OPERATION: T = T::Obj(&[
    (
        "statement_type",
        T::Enum(&[
            "TYPE_UNSPECIFIED",
            "QUERY",
            "SQL",
            "UPDATE",
            "METADATA",
            "VOLUME",
        ]),
    ),
    ("is_compressed", T::Bool),
    (
        "execution_result",
        T::Enum(&[
            "FORMAT_UNSPECIFIED",
            "INLINE_ARROW",
            "INLINE_JSON",
            "EXTERNAL_LINKS",
            "COLUMNAR_INLINE",
        ]),
    ),
    ("chunk_id", T::I64),
    ("retry_count", T::I64),
    (
        "operation_detail",
        T::Obj(&[
            ("operation_type", T::Enum(OPERATION_TYPES)),
            ("n_operation_status_calls", T::I32),
            ("operation_status_latency_millis", T::I64),
            ("is_internal_call", T::Bool),
        ]),
    ),
    (
        "chunk_details",
        T::Obj(&[
            ("total_chunks_present", T::I32),
            ("total_chunks_iterated", T::I32),
            ("initial_chunk_latency_millis", T::I64),
            ("slowest_chunk_latency_millis", T::I64),
            ("sum_chunks_download_time_millis", T::I64),
        ]),
    ),
    (
        "result_latency",
        T::Obj(&[
            ("result_set_ready_latency_millis", T::I64),
            ("result_set_consumption_latency_millis", T::I64),
        ]),
    ),
]);

const VOL_OPERATION: T = T::Obj(&[
    (
        "volume_operation_type",
        T::Enum(&["TYPE_UNSPECIFIED", "PUT", "GET", "DELETE", "LIST", "QUERY"]),
    ),
    ("volume_path", T::Str),
    ("local_file", T::Str),
]);

const DRIVER_LOG: T = T::Obj(&[
    ("session_id", T::Str),
    ("sql_statement_id", T::Str),
    ("system_configuration", SYSTEM_CONFIGURATION),
    ("driver_connection_params", CONNECTION_PARAMS),
    (
        "auth_type",
        T::Enum(&[
            "pat",
            "oauth-m2m",
            "external-browser",
            "token-provider",
            "custom",
            "unknown",
        ]),
    ),
    ("operation_latency_ms", T::I64),
    ("sql_operation", SQL_OPERATION),
    ("vol_operation", VOL_OPERATION),
    (
        "error_info",
        T::Obj(&[("error_name", T::Str), ("stack_trace", T::Str)]),
    ),
]);

fn check(path: &str, v: &Value, t: T) -> Result<(), String> {
    let bad = |what: &str| Err(format!("{path}: {what}, got {v}"));
    match t {
        T::Str if v.is_string() => Ok(()),
        T::Bool if v.is_boolean() => Ok(()),
        T::I64 if v.is_i64() => Ok(()),
        T::I32 if v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()) => Ok(()),
        T::StrList => match v.as_array() {
            Some(a) if a.iter().all(Value::is_string) => Ok(()),
            _ => bad("expected an array of strings"),
        },
        T::Enum(names) => match v.as_str() {
            Some(s) if names.contains(&s) => Ok(()),
            _ => bad("expected one of the enum's names"),
        },
        T::Obj(fields) => {
            let Some(obj) = v.as_object() else {
                return bad("expected an object");
            };
            for (key, value) in obj {
                let Some((_, t)) = fields.iter().find(|(k, _)| k == key) else {
                    return Err(format!("{path}.{key}: unknown key"));
                };
                check(&format!("{path}.{key}"), value, *t)?;
            }
            Ok(())
        }
        T::Str => bad("expected a string"),
        T::Bool => bad("expected a bool"),
        T::I64 => bad("expected an int64"),
        T::I32 => bad("expected an int32"),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Value, String> {
    obj.get(key).ok_or_else(|| format!("missing {key}"))
}

/// The row kinds docs/TELEMETRY.md lists under "What is sent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKind {
    /// `CREATE_SESSION` / `DELETE_SESSION`.
    Connection,
    /// A statement that completed (or failed).
    Statement,
    /// `CANCEL_STATEMENT`.
    Cancelled,
    /// `CLOSE_STATEMENT`: closed early or dropped.
    ClosedEarly,
    /// `METADATA` with a `LIST_*` operation.
    Metadata,
    /// `VOLUME` with `vol_operation`.
    Volume,
    /// A CloudFetch chunk failure (`chunk_id`).
    ChunkFailure,
    /// A standalone error.
    Error,
    /// A failed session open (`CREATE_SESSION` with `error_info`).
    ConnectionFailure,
}

impl RowKind {
    /// Every kind.
    pub const ALL: [RowKind; 9] = [
        Self::Connection,
        Self::Statement,
        Self::Cancelled,
        Self::ClosedEarly,
        Self::Metadata,
        Self::Volume,
        Self::ChunkFailure,
        Self::Error,
        Self::ConnectionFailure,
    ];

    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Statement => "statement",
            Self::Cancelled => "cancelled",
            Self::ClosedEarly => "closed_early",
            Self::Metadata => "metadata",
            Self::Volume => "volume",
            Self::ChunkFailure => "chunk_failure",
            Self::Error => "error",
            Self::ConnectionFailure => "connection_failure",
        }
    }
}

/// Checks one log against the schema and tells its row kind.
pub fn check_log(log: &Value) -> Result<RowKind, String> {
    let obj = log.as_object().ok_or("log is not an object")?;
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "workspace_id" | "frontend_log_event_id" | "context" | "entry"
        ) {
            return Err(format!("unknown key {key}"));
        }
    }
    if let Some(w) = obj.get("workspace_id") {
        check("workspace_id", w, T::I64)?;
    }
    check(
        "frontend_log_event_id",
        required(obj, "frontend_log_event_id")?,
        T::Str,
    )?;
    check(
        "context",
        required(obj, "context")?,
        T::Obj(&[(
            "client_context",
            T::Obj(&[("timestamp_millis", T::I64), ("user_agent", T::Str)]),
        )]),
    )?;
    let entry = required(obj, "entry")?
        .as_object()
        .ok_or("entry is not an object")?;
    if entry.keys().any(|k| k != "sql_driver_log") {
        return Err("unknown key in entry".into());
    }
    let d = required(entry, "sql_driver_log")?;
    check("sql_driver_log", d, DRIVER_LOG)?;
    Ok(kind_of(d))
}

fn kind_of(d: &Value) -> RowKind {
    let op = &d["sql_operation"];
    let operation = op["operation_detail"]["operation_type"].as_str();
    let has_error = d.get("error_info").is_some();
    match (operation, op["statement_type"].as_str()) {
        (Some("CREATE_SESSION"), _) if has_error => RowKind::ConnectionFailure,
        (Some("CREATE_SESSION" | "DELETE_SESSION"), _) => RowKind::Connection,
        _ if op.get("chunk_id").is_some() => RowKind::ChunkFailure,
        (Some("CANCEL_STATEMENT"), _) => RowKind::Cancelled,
        (Some("CLOSE_STATEMENT"), _) => RowKind::ClosedEarly,
        (_, Some("VOLUME")) => RowKind::Volume,
        (_, Some("METADATA")) => RowKind::Metadata,
        (_, Some(_)) => RowKind::Statement,
        _ => RowKind::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn log(driver_log: Value) -> Value {
        json!({"frontend_log_event_id": "x", "context": {"client_context": {"timestamp_millis": 1, "user_agent": "u"}}, "entry": {"sql_driver_log": driver_log}})
    }

    #[rstest]
    #[case(json!({"made_up": 1}), "unknown key")]
    #[case(json!({"sql_operation": {"statement_type": "NONE"}}), "enum")]
    #[case(json!({"sql_operation": {"chunk_details": {"total_chunks_iterated": 3_000_000_000_i64}}}), "int32")]
    #[case(json!({"operation_latency_ms": "12"}), "int64")]
    #[case(json!({"driver_connection_params": {"auth_mech": "oauth"}}), "enum")]
    #[case(json!({"driver_connection_params": {"host_info": {"host_url": "h", "port": 443, "extra": 1}}}), "unknown key")]
    #[case(json!({"driver_connection_params": {"non_proxy_hosts": "a,b"}}), "array")]
    #[case(json!({"vol_operation": {"volume_operation_type": "COPY"}}), "enum")]
    #[case(json!({"error_info": {"error_name": "e", "message": "m"}}), "unknown key")]
    fn rejects_what_the_server_rejects(#[case] driver_log: Value, #[case] why: &str) {
        let err = check_log(&log(driver_log)).unwrap_err();
        assert!(err.contains(why), "{err}");
    }

    #[rstest]
    #[case(json!({"sql_operation": {"operation_detail": {"operation_type": "CREATE_SESSION"}}}), RowKind::Connection)]
    #[case(json!({"sql_operation": {"operation_detail": {"operation_type": "CREATE_SESSION"}}, "error_info": {"error_name": "e", "stack_trace": ""}}), RowKind::ConnectionFailure)]
    #[case(json!({"sql_operation": {"statement_type": "QUERY", "chunk_id": 3}}), RowKind::ChunkFailure)]
    #[case(json!({"sql_operation": {"statement_type": "QUERY", "operation_detail": {"operation_type": "CANCEL_STATEMENT"}}}), RowKind::Cancelled)]
    #[case(json!({"sql_operation": {"statement_type": "VOLUME"}, "vol_operation": {"volume_operation_type": "PUT"}}), RowKind::Volume)]
    #[case(json!({"sql_operation": {"statement_type": "METADATA", "operation_detail": {"operation_type": "LIST_CROSS_REFERENCES"}}}), RowKind::Metadata)]
    #[case(json!({"sql_operation": {"statement_type": "QUERY"}}), RowKind::Statement)]
    #[case(json!({"error_info": {"error_name": "e", "stack_trace": "t"}}), RowKind::Error)]
    fn tells_the_row_kind(#[case] driver_log: Value, #[case] kind: RowKind) {
        assert_eq!(check_log(&log(driver_log)), Ok(kind));
    }
}
