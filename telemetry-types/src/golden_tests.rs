//! Golden payloads: each row kind compared structurally to the JSON the spec describes. Any
//! renamed, retyped or `null`-valued field fails these tests.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::auth::StaticToken;
use crate::connection::ConnectionInfo;
use crate::event::{ChunkStats, DriverError, StatementCompletion, StatementEnd};
use crate::host::Host;
use crate::row::{self, SessionChange, StatementSummary};
use crate::wire::*;

const TS: i64 = 1_767_225_600_000;

fn conn() -> ConnectionInfo {
    let mut c = ConnectionInfo::new(
        Host::parse("adb-1.azuredatabricks.net", false).unwrap(),
        "RustDriver/1.2.3",
    );
    c.workspace_id = Some(1_234_567_890_123_456);
    c.session_id = Some("sess-1".into());
    c.auth_type = Some(AuthType::Pat);
    c.auth = Some(Arc::new(StaticToken::new("t")));
    c.system_configuration = Some(DriverSystemConfiguration {
        driver_name: Some("RustDriver".into()),
        driver_version: Some("1.2.3".into()),
        runtime_name: Some("Rust".into()),
        os_name: Some("linux".into()),
        os_arch: Some("x86_64".into()),
        locale_name: Some("en_US".into()),
        char_set_encoding: Some("UTF-8".into()),
        process_name: Some("app".into()),
        ..Default::default()
    });
    c.connection_params = Some(DriverConnectionParameters {
        http_path: Some("/sql/1.0/warehouses/abc".into()),
        mode: Some(DriverMode::Sea),
        host_info: Some(HostDetails {
            host_url: "https://adb-1.azuredatabricks.net".into(),
            port: 443,
        }),
        use_proxy: Some(false),
        enable_arrow: Some(true),
        enable_direct_results: Some(true),
        socket_timeout: Some(900),
        auth_mech: Some("PAT".into()),
        auth_flow: None,
        enable_metric_view_metadata: Some(false),
    });
    c
}

/// Serialises the log, pins the random event id, and checks that no `null` appears anywhere.
fn to_json(log: &TelemetryFrontendLog) -> Value {
    let text = serde_json::to_string(log).unwrap();
    assert!(!text.contains("null"), "null in {text}");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let id = v["frontend_log_event_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    v["frontend_log_event_id"] = json!("ID");
    // Round trip: parses back (deny_unknown_fields) to the same value.
    let back: TelemetryFrontendLog = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, log);
    v
}

fn statement_summary(error: Option<DriverError>) -> StatementSummary {
    let mut chunks = ChunkStats::default();
    for (lat, compressed) in [(0, false), (120, true), (300, false), (80, false)] {
        chunks.record(lat, 1000, compressed);
    }
    StatementSummary {
        statement_id: "stmt-9".into(),
        started_at_millis: TS,
        statement_type: StatementType::Query,
        operation_type: OperationType::ExecuteStatement,
        end: StatementEnd {
            latency_ms: 412,
            abandoned: false,
            chunks,
            completion: StatementCompletion {
                execution_result: Some(ExecutionResultFormat::ExternalLinks),
                poll_count: Some(3),
                poll_latency_ms: Some(90),
                retry_count: Some(1),
                chunks_present: Some(4),
                result_ready_latency_ms: Some(200),
                result_consumption_latency_ms: Some(150),
                is_internal_call: Some(false),
            },
        },
        error,
    }
}

#[test]
fn golden_create_session_row() {
    let v = to_json(&row::connection_row(
        &conn(),
        TS,
        SessionChange::Opened,
        412,
    ));
    assert_eq!(
        v,
        json!({
            "workspace_id": 1_234_567_890_123_456_i64,
            "frontend_log_event_id": "ID",
            "context": {"client_context": {"timestamp_millis": TS, "user_agent": "RustDriver/1.2.3"}},
            "entry": {"sql_driver_log": {
                "session_id": "sess-1",
                "system_configuration": {
                    "driver_name": "RustDriver", "driver_version": "1.2.3", "runtime_name": "Rust",
                    "os_name": "linux", "os_arch": "x86_64", "locale_name": "en_US",
                    "char_set_encoding": "UTF-8", "process_name": "app"
                },
                "driver_connection_params": {
                    "http_path": "/sql/1.0/warehouses/abc", "mode": "SEA",
                    "host_info": {"host_url": "https://adb-1.azuredatabricks.net", "port": 443},
                    "use_proxy": false, "enable_arrow": true, "enable_direct_results": true,
                    "socket_timeout": 900, "auth_mech": "PAT", "enable_metric_view_metadata": false
                },
                "auth_type": "pat",
                "operation_latency_ms": 412,
                "sql_operation": {"operation_detail": {"operation_type": "CREATE_SESSION"}}
            }}
        })
    );
}

#[test]
fn golden_delete_session_row_has_no_configuration() {
    let v = to_json(&row::connection_row(&conn(), TS, SessionChange::Closed, 7));
    assert_eq!(
        v["entry"],
        json!({"sql_driver_log": {
            "session_id": "sess-1",
            "operation_latency_ms": 7,
            "sql_operation": {"operation_detail": {"operation_type": "DELETE_SESSION"}}
        }})
    );
}

#[test]
fn golden_statement_row_with_chunks() {
    let v = to_json(&row::statement_row(&conn(), &statement_summary(None)));
    assert_eq!(
        v,
        json!({
            "workspace_id": 1_234_567_890_123_456_i64,
            "frontend_log_event_id": "ID",
            "context": {"client_context": {"timestamp_millis": TS, "user_agent": "RustDriver/1.2.3"}},
            "entry": {"sql_driver_log": {
                "session_id": "sess-1",
                "sql_statement_id": "stmt-9",
                "operation_latency_ms": 412,
                "sql_operation": {
                    "statement_type": "QUERY",
                    "is_compressed": true,
                    "execution_result": "EXTERNAL_LINKS",
                    "retry_count": 1,
                    "operation_detail": {
                        "operation_type": "EXECUTE_STATEMENT",
                        "n_operation_status_calls": 3,
                        "operation_status_latency_millis": 90,
                        "is_internal_call": false
                    },
                    "chunk_details": {
                        "total_chunks_present": 4,
                        "total_chunks_iterated": 4,
                        "initial_chunk_latency_millis": 120,
                        "slowest_chunk_latency_millis": 300,
                        "sum_chunks_download_time_millis": 500
                    },
                    "result_latency": {
                        "result_set_ready_latency_millis": 200,
                        "result_set_consumption_latency_millis": 150
                    }
                }
            }}
        })
    );
}

#[test]
fn golden_error_row_is_redacted() {
    let err = DriverError::new(
        "AuthenticationError",
        "token dapi0123456789abcdef0123 rejected for /home/bob/x",
    )
    .with_http_status(401);
    let v = to_json(&row::error_row(&conn(), TS, Some("stmt-9"), &err));
    assert_eq!(
        v["entry"],
        json!({"sql_driver_log": {
            "session_id": "sess-1",
            "sql_statement_id": "stmt-9",
            "error_info": {
                "error_name": "AuthenticationError",
                "stack_trace": "token [REDACTED] rejected for /home/[REDACTED]/x"
            }
        }})
    );
}

#[test]
fn golden_unauthenticated_variant() {
    let err = DriverError::new("E", "boom");
    for mut log in [
        row::connection_row(&conn(), TS, SessionChange::Opened, 1),
        row::statement_row(&conn(), &statement_summary(Some(err.clone()))),
        row::error_row(&conn(), TS, Some("s"), &err),
    ] {
        row::strip_for_unauthenticated(&mut log);
        let v = to_json(&log);
        assert!(v.get("workspace_id").is_none());
        let d = &v["entry"]["sql_driver_log"];
        for key in [
            "session_id",
            "sql_statement_id",
            "system_configuration",
            "driver_connection_params",
            "auth_type",
        ] {
            assert!(d.get(key).is_none(), "{key} present in {d}");
        }
        if let Some(e) = d.get("error_info") {
            assert_eq!(e, &json!({"error_name": "E", "stack_trace": ""}));
        }
    }
}

#[test]
fn request_body_shape_and_round_trip() {
    let logs = [
        row::connection_row(&conn(), TS, SessionChange::Opened, 1),
        row::connection_row(&conn(), TS, SessionChange::Closed, 2),
    ];
    let req = TelemetryRequest::from_logs(TS + 5, logs.iter()).unwrap();
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(v["uploadTime"], json!(TS + 5));
    assert_eq!(v["items"], json!([]));
    let proto = v["protoLogs"].as_array().unwrap();
    assert_eq!(proto.len(), 2);
    for (s, log) in proto.iter().zip(&logs) {
        let parsed: TelemetryFrontendLog = serde_json::from_str(s.as_str().unwrap()).unwrap();
        assert_eq!(&parsed, log);
    }
    let back: TelemetryRequest = serde_json::from_value(v).unwrap();
    assert_eq!(back, req);
}

#[test]
fn unknown_fields_and_wrong_enum_values_are_rejected() {
    assert!(
        serde_json::from_value::<TelemetryRequest>(
            json!({"uploadTime": 1, "items": [], "protoLogs": [], "x": 1})
        )
        .is_err()
    );
    assert!(
        serde_json::from_value::<TelemetryRequest>(json!({"uploadTime": 1, "protoLogs": []}))
            .is_err()
    );
    assert!(
        serde_json::from_value::<DriverConnectionParameters>(json!({"made_up": true})).is_err()
    );
    assert!(
        serde_json::from_value::<OperationDetail>(json!({"operation_type": "MADE_UP"})).is_err()
    );
}

#[test]
fn enum_strings_match_the_spec() {
    let names = |all: Vec<String>| all.join(",");
    assert_eq!(
        names(StatementType::ALL.iter().map(|v| v.to_string()).collect()),
        "NONE,QUERY,SQL,UPDATE,METADATA"
    );
    assert_eq!(
        names(
            ExecutionResultFormat::ALL
                .iter()
                .map(|v| v.to_string())
                .collect()
        ),
        "INLINE_ARROW,COLUMNAR_INLINE,EXTERNAL_LINKS,INLINE_JSON,FORMAT_UNSPECIFIED"
    );
    assert_eq!(
        names(DriverMode::ALL.iter().map(|v| v.to_string()).collect()),
        "THRIFT,SEA,TYPE_UNSPECIFIED"
    );
    assert_eq!(
        names(OperationType::ALL.iter().map(|v| v.to_string()).collect()),
        "CREATE_SESSION,DELETE_SESSION,EXECUTE_STATEMENT,EXECUTE_STATEMENT_ASYNC,CLOSE_STATEMENT,CANCEL_STATEMENT,LIST_TYPE_INFO,LIST_CATALOGS,LIST_SCHEMAS,LIST_TABLES,LIST_TABLE_TYPES,LIST_COLUMNS,LIST_FUNCTIONS,LIST_PRIMARY_KEYS,LIST_IMPORTED_KEYS,LIST_EXPORTED_KEYS,LIST_CROSS_REFERENCES,TYPE_UNSPECIFIED"
    );
    assert_eq!(
        names(AuthType::ALL.iter().map(|v| v.to_string()).collect()),
        "pat,oauth-m2m,external-browser,token-provider,custom,unknown"
    );
    for v in OperationType::ALL {
        assert_eq!(serde_json::to_value(v).unwrap(), json!(v.as_str()));
    }
}
