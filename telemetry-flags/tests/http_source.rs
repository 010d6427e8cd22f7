//! `HttpFlagSource` against a local HTTP server.

use std::sync::Arc;
use std::time::Duration;

use httpmock::prelude::*;
use rstest::rstest;
use telemetry_export::HyperTransport;
use telemetry_flags::{ClientPreset, HttpFlagSource};
use telemetry_types::auth::StaticToken;
use telemetry_types::flag::{FlagError, FlagSource};
use telemetry_types::host::Host;

const FLAG: &str = "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForJdbc";

fn source(timeout: Duration) -> HttpFlagSource {
    HttpFlagSource::new(
        Arc::new(HyperTransport::new().unwrap()),
        ClientPreset::jdbc(),
        "2.7.1-oss",
        "TestDriver/2.7.1",
    )
    .with_timeout(timeout)
}

fn host(server: &MockServer) -> Host {
    Host::parse(&server.base_url(), true).unwrap()
}

#[tokio::test]
async fn path_headers_and_enabled_answer() {
    let server = MockServer::start_async().await;
    let m = server
        .mock_async(|when, then| {
            when.method(GET)
                .path("/api/2.0/connector-service/feature-flags/OSS_JDBC/2.7.1")
                .header("authorization", "Bearer tok")
                .header("user-agent", "TestDriver/2.7.1")
                .header("accept", "application/json");
            then.status(200).body(format!(
                r#"{{"flags":[{{"name":"{FLAG}","value":"TRUE"}}],"ttl_seconds":300}}"#
            ));
        })
        .await;
    let src = source(Duration::from_secs(5));
    let token = StaticToken::new("tok");
    let answer = src.fetch(&host(&server), Some(&token)).await.unwrap();
    assert!(answer.enabled);
    assert_eq!(answer.ttl, Some(Duration::from_secs(300)));
    m.assert_calls_async(1).await;
    assert!(
        src.url(&host(&server))
            .ends_with("/feature-flags/OSS_JDBC/2.7.1")
    );
}

#[rstest]
#[case(200, r#"{"flags":[{"name":"FLAG","value":"true"}],"ttlSeconds":120}"#, Ok((true, Some(120))))]
#[case(200, r#"{"flags":[{"name":"FLAG","value":"false"}]}"#, Ok((false, None)))]
#[case(200, r#"{"flags":[{"name":"other","value":"true"}]}"#, Ok((false, None)))]
#[case(200, r#"{"ttl_seconds":60}"#, Ok((false, Some(60))))]
#[case(200, r#"{"flags":[{"name":"FLAG","value":true}]}"#, Err("malformed"))]
#[case(200, r#"{"flags":"nope"}"#, Err("malformed"))]
#[case(200, r#"not json"#, Err("malformed"))]
#[case(404, r#"{}"#, Err("status"))]
#[case(500, r#"{}"#, Err("status"))]
#[tokio::test]
async fn answers(
    #[case] status: u16,
    #[case] body: &str,
    #[case] expected: Result<(bool, Option<u64>), &str>,
) {
    let server = MockServer::start_async().await;
    let body = body.replace("FLAG", FLAG);
    server
        .mock_async(|when, then| {
            when.method(GET);
            then.status(status).body(body);
        })
        .await;
    let got = source(Duration::from_secs(5))
        .fetch(&host(&server), None)
        .await;
    match (got, expected) {
        (Ok(a), Ok((enabled, ttl))) => {
            assert_eq!(a.enabled, enabled);
            assert_eq!(a.ttl, ttl.map(Duration::from_secs));
        }
        (Err(FlagError::Malformed(_)), Err("malformed")) => {}
        (Err(FlagError::Status(s)), Err("status")) => assert_eq!(s, status),
        (got, expected) => panic!("got {got:?}, expected {expected:?}"),
    }
}

#[tokio::test]
async fn oversized_body_and_timeout_are_errors() {
    let server = MockServer::start_async().await;
    server
        .mock_async(|when, then| {
            when.path_includes("OSS_JDBC");
            then.status(200)
                .body(format!(r#"{{"flags":[],"pad":"{}"}}"#, "x".repeat(100_000)));
        })
        .await;
    let err = source(Duration::from_secs(5))
        .fetch(&host(&server), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FlagError::Malformed(m) if m.contains("body over")),
        "{err:?}"
    );

    let slow = MockServer::start_async().await;
    slow.mock_async(|when, then| {
        when.method(GET);
        then.status(200).delay(Duration::from_secs(3)).body("{}");
    })
    .await;
    let started = std::time::Instant::now();
    let err = source(Duration::from_millis(200))
        .fetch(&host(&slow), None)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("Timeout"), "{err}");
}
