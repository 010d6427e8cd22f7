//! Golden payloads: each row kind compared structurally to the JSON the spec describes. Any
//! renamed, retyped or `null`-valued field fails these tests.

use serde_json::{Value, json};

use crate::connection::ConnectionInfo;
use crate::event::{
    ChunkFailure, ChunkStats, DriverError, StatementCompletion, StatementEnd, StatementOutcome,
    VolumeOp,
};
use crate::host::Host;
use crate::row::{self, SessionChange};
use crate::wire::*;

const TS: i64 = 1_767_225_600_000;

fn conn() -> ConnectionInfo {
    crate::testing::connection_with_every_block()
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

fn statement_end(error: Option<DriverError>) -> StatementEnd {
    let mut chunks = ChunkStats::default();
    for (lat, compressed) in [(0, false), (120, true), (300, false), (80, false)] {
        chunks.record(lat, 1000, compressed);
    }
    let outcome = if error.is_some() {
        StatementOutcome::Failed
    } else {
        StatementOutcome::Completed
    };
    StatementEnd {
        statement_type: StatementType::Query,
        operation_type: OperationType::ExecuteStatement,
        statement_id: Some("stmt-9".into()),
        latency_ms: 412,
        outcome,
        chunks,
        error: error.map(Box::new),
        volume: None,
        completion: StatementCompletion {
            execution_result: Some(ExecutionResultFormat::ExternalLinks),
            compressed: None,
            poll_count: Some(3),
            poll_latency_ms: Some(90),
            retry_count: Some(1),
            chunks_present: Some(4),
            result_ready_latency_ms: Some(200),
            result_consumption_latency_ms: Some(150),
            is_internal_call: Some(false),
        },
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
                    "use_proxy": true,
                    "proxy_host_info": {"host_url": "http://proxy.corp", "port": 3128, "proxy_auth_type": "BASIC"},
                    "non_proxy_hosts": ["localhost", ".corp"],
                    "enable_arrow": true, "enable_direct_results": true,
                    "socket_timeout": 900, "auth_mech": "OAUTH", "auth_flow": "CLIENT_CREDENTIALS",
                    "string_column_length": 255, "jwt_key_file": "/home/[REDACTED]/keys/key.pem",
                    "enable_metric_view_metadata": false
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
    let v = to_json(&row::statement_row(&conn(), TS, &statement_end(None)));
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
fn golden_failed_statement_without_an_id() {
    let mut s = statement_end(Some(
        DriverError::new("SqlError", "no such table 'secret'").with_sqlstate("42P01"),
    ));
    s.statement_id = None;
    s.chunks = ChunkStats::default();
    s.completion = StatementCompletion::default();
    let v = to_json(&row::statement_row(&conn(), TS, &s));
    assert_eq!(
        v["entry"],
        json!({"sql_driver_log": {
            "session_id": "sess-1",
            "operation_latency_ms": 412,
            "sql_operation": {
                "statement_type": "QUERY",
                "is_compressed": false,
                "operation_detail": {"operation_type": "EXECUTE_STATEMENT"}
            },
            "error_info": {"error_name": "SqlError", "stack_trace": "no such table '?'"}
        }})
    );
}

#[rstest::rstest]
#[case(StatementOutcome::Cancelled, "CANCEL_STATEMENT")]
#[case(StatementOutcome::Closed, "CLOSE_STATEMENT")]
#[case(StatementOutcome::Abandoned, "CLOSE_STATEMENT")]
#[case(StatementOutcome::Completed, "EXECUTE_STATEMENT")]
fn a_statement_that_did_not_complete_says_so(
    #[case] outcome: StatementOutcome,
    #[case] operation: &str,
) {
    let mut s = statement_end(None);
    s.outcome = outcome;
    let v = to_json(&row::statement_row(&conn(), TS, &s));
    let op = &v["entry"]["sql_driver_log"]["sql_operation"];
    assert_eq!(op["operation_detail"]["operation_type"], json!(operation));
    assert_eq!(
        op["chunk_details"]["total_chunks_iterated"],
        json!(4),
        "kept what was recorded"
    );
}

#[test]
fn golden_volume_row() {
    let mut s = statement_end(None);
    s.statement_type = StatementType::Volume;
    s.chunks = ChunkStats::default();
    s.completion = StatementCompletion::default();
    s.volume = Some(Box::new(VolumeOp {
        operation: VolumeOperationType::Put,
        volume_path: Some("/Volumes/main/default/vol/in.csv?sig=abc".into()),
        local_file: Some("C:\\Users\\bob\\data\\in.csv".into()),
    }));
    let v = to_json(&row::statement_row(&conn(), TS, &s));
    let d = &v["entry"]["sql_driver_log"];
    assert_eq!(d["sql_operation"]["statement_type"], json!("VOLUME"));
    assert_eq!(
        d["vol_operation"],
        json!({"volume_operation_type": "PUT", "volume_path": "/Volumes/main/default/vol/in.csv?sig=[REDACTED]", "local_file": "in.csv"})
    );
}

#[test]
fn golden_chunk_failure_row() {
    let mut chunks = ChunkStats::default();
    chunks.record(40, 10, true);
    let failure = ChunkFailure {
        statement_id: Some("stmt-9".into()),
        statement_type: StatementType::Query,
        operation_type: OperationType::ExecuteStatement,
        chunk_index: 7,
        chunks,
        completion: StatementCompletion {
            execution_result: Some(ExecutionResultFormat::ExternalLinks),
            chunks_present: Some(9),
            ..Default::default()
        },
        error: DriverError::new(
            "CloudFetchError",
            "GET https://b.s3.amazonaws.com/x?X-Amz-Signature=abc failed",
        )
        .with_http_status(403),
    };
    let v = to_json(&row::chunk_failure_row(&conn(), TS, &failure));
    assert_eq!(
        v["entry"],
        json!({"sql_driver_log": {
            "session_id": "sess-1",
            "sql_statement_id": "stmt-9",
            "sql_operation": {
                "statement_type": "QUERY",
                "is_compressed": true,
                "execution_result": "EXTERNAL_LINKS",
                "chunk_id": 7,
                "operation_detail": {"operation_type": "EXECUTE_STATEMENT"},
                "chunk_details": {
                    "total_chunks_present": 9,
                    "total_chunks_iterated": 1,
                    "initial_chunk_latency_millis": 40,
                    "slowest_chunk_latency_millis": 40,
                    "sum_chunks_download_time_millis": 40
                }
            },
            "error_info": {"error_name": "CloudFetchError", "stack_trace": "GET https://b.s3.amazonaws.com/x?[REDACTED] failed"}
        }})
    );
}

#[test]
fn golden_connection_failure_row() {
    let c = ConnectionInfo::new(
        Host::parse("adb-1.azuredatabricks.net", false).unwrap(),
        "RustDriver/1.2.3",
    );
    let err = DriverError::new("ConnectError", "connection refused");
    let v = to_json(&row::connection_failure_row(&c, TS, 30, &err));
    assert_eq!(
        v["entry"],
        json!({"sql_driver_log": {
            "operation_latency_ms": 30,
            "sql_operation": {"operation_detail": {"operation_type": "CREATE_SESSION"}},
            "error_info": {"error_name": "ConnectError", "stack_trace": "connection refused"}
        }})
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
        row::statement_row(&conn(), TS, &statement_end(Some(err.clone()))),
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
        "TYPE_UNSPECIFIED,QUERY,SQL,UPDATE,METADATA,VOLUME"
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
