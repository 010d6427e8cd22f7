use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use telemetry_types::BoxFuture;
use telemetry_types::auth::AuthProvider;
use telemetry_types::flag::{FlagAnswer, FlagError, FlagSource};
use telemetry_types::host::Host;
use telemetry_types::transport::{HttpMethod, HttpRequest, HttpTransport};

/// A client type and flag name pair: which driver asks, and the flag it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPreset {
    /// Path segment after `/feature-flags/`.
    pub client_type: String,
    /// The flag that enables telemetry.
    pub flag_name: String,
}

impl ClientPreset {
    /// A Rust driver's own pair.
    pub fn new(client_type: impl Into<String>, flag_name: impl Into<String>) -> Self {
        Self {
            client_type: client_type.into(),
            flag_name: flag_name.into(),
        }
    }

    /// JDBC: `OSS_JDBC`.
    pub fn jdbc() -> Self {
        Self::new(
            "OSS_JDBC",
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForJdbc",
        )
    }

    /// Node.js: `NODEJS`.
    pub fn nodejs() -> Self {
        Self::new(
            "NODEJS",
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForNodeJs",
        )
    }

    /// Python: `PYTHON`.
    pub fn python() -> Self {
        Self::new(
            "PYTHON",
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForPythonDriver",
        )
    }

    /// Go: `GOLANG`.
    pub fn go() -> Self {
        Self::new(
            "GOLANG",
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForGoDriver",
        )
    }

    /// ADBC (the Databricks ADBC driver): `ADBC`.
    pub fn adbc() -> Self {
        Self::new(
            "ADBC",
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForAdbc",
        )
    }

    /// A preset by name: `adbc`, `jdbc`, `nodejs` / `node`, `python`, `go` / `golang` (any
    /// case).
    pub fn by_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "adbc" => Some(Self::adbc()),
            "jdbc" | "oss_jdbc" => Some(Self::jdbc()),
            "nodejs" | "node" => Some(Self::nodejs()),
            "python" => Some(Self::python()),
            "go" | "golang" => Some(Self::go()),
            _ => None,
        }
    }
}

/// Reduces a version to `MAJOR.MINOR.PATCH` (the server answers 404 to suffixes such as
/// `-oss`). Missing parts are 0.
pub(crate) fn reduce_version(version: &str) -> String {
    let v = version.trim().trim_start_matches(['v', 'V']);
    let mut parts = [0u64; 3];
    for (slot, piece) in parts.iter_mut().zip(v.split('.')) {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        match digits.parse() {
            Ok(n) => *slot = n,
            Err(_) => break,
        }
        if digits.len() != piece.len() {
            break;
        }
    }
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

/// Largest feature-flag response body read; a larger one means "disabled".
pub(crate) const MAX_FLAG_BODY_BYTES: usize = 64 * 1024;

/// Fetches the telemetry flag over HTTP:
/// `GET <host>/api/2.0/connector-service/feature-flags/<client type>/<MAJOR.MINOR.PATCH>`.
#[derive(Clone)]
pub struct HttpFlagSource {
    transport: Arc<dyn HttpTransport>,
    preset: ClientPreset,
    version: String,
    user_agent: String,
    timeout: Duration,
}

impl fmt::Debug for HttpFlagSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFlagSource")
            .field("preset", &self.preset)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct FlagsBody {
    #[serde(default)]
    flags: Vec<FlagEntry>,
    #[serde(default, alias = "ttlSeconds")]
    ttl_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct FlagEntry {
    name: String,
    value: String,
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl HttpFlagSource {
    /// A source for `preset`, reporting `driver_version` (reduced to `MAJOR.MINOR.PATCH`).
    /// Requests time out after 10 s.
    pub fn new(
        transport: Arc<dyn HttpTransport>,
        preset: ClientPreset,
        driver_version: &str,
        user_agent: impl Into<String>,
    ) -> Self {
        Self {
            transport,
            preset,
            version: reduce_version(driver_version),
            user_agent: user_agent.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Changes the request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL looked up for `host`.
    pub fn url(&self, host: &Host) -> String {
        format!(
            "{}/api/2.0/connector-service/feature-flags/{}/{}",
            host.base_url(),
            encode_segment(&self.preset.client_type),
            self.version
        )
    }

    /// Interprets a 2xx body.
    fn parse(&self, body: &[u8]) -> Result<FlagAnswer, FlagError> {
        let parsed: FlagsBody =
            serde_json::from_slice(body).map_err(|e| FlagError::Malformed(e.to_string()))?;
        // Every entry of the flag must say "true": a duplicate that says anything else wins,
        // since sending when the server may have meant no is the worse mistake.
        let mut entries = parsed
            .flags
            .iter()
            .filter(|f| f.name == self.preset.flag_name)
            .peekable();
        let enabled = entries.peek().is_some()
            && entries.all(|f| f.value.trim().eq_ignore_ascii_case("true"));
        Ok(FlagAnswer {
            enabled,
            ttl: parsed.ttl_seconds.map(Duration::from_secs),
        })
    }
}

impl FlagSource for HttpFlagSource {
    fn fetch<'a>(
        &'a self,
        host: &'a Host,
        auth: Option<&'a dyn AuthProvider>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>> {
        self.fetch_via(host, auth, None)
    }

    fn fetch_via<'a>(
        &'a self,
        host: &'a Host,
        auth: Option<&'a dyn AuthProvider>,
        transport: Option<&'a dyn HttpTransport>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>> {
        let transport = transport.unwrap_or(&*self.transport);
        Box::pin(async move {
            let mut headers = vec![
                ("Accept".to_owned(), "application/json".to_owned()),
                ("User-Agent".to_owned(), self.user_agent.clone()),
            ];
            if let Some(auth) = auth
                && let Some(h) = auth.auth_headers().await
            {
                headers.extend(h);
            }
            let response = telemetry_types::boundary::send(
                transport,
                HttpRequest {
                    method: HttpMethod::Get,
                    url: self.url(host),
                    headers,
                    body: telemetry_types::transport::Bytes::new(),
                    timeout: self.timeout,
                    max_response_bytes: MAX_FLAG_BODY_BYTES,
                },
            )
            .await?;
            if !(200..300).contains(&response.status) {
                return Err(FlagError::Status(response.status));
            }
            if response.body_truncated {
                return Err(FlagError::Malformed(format!(
                    "body over {MAX_FLAG_BODY_BYTES} bytes"
                )));
            }
            self.parse(&response.body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(r#"[{"name":"F","value":"true"}]"#, true)]
    #[case(r#"[{"name":"F","value":" TRUE "}]"#, true)]
    #[case(r#"[{"name":"F","value":"true"},{"name":"F","value":"false"}]"#, false)]
    #[case(r#"[{"name":"F","value":"false"},{"name":"F","value":"true"}]"#, false)]
    #[case(r#"[{"name":"F","value":"true"},{"name":"F","value":"true"}]"#, true)]
    #[case(r#"[{"name":"G","value":"true"}]"#, false)]
    #[case(r#"[]"#, false)]
    fn every_entry_of_the_flag_must_say_true(#[case] flags: &str, #[case] enabled: bool) {
        let source = HttpFlagSource::new(
            telemetry_types::testing::ScriptedTransport::always(200),
            ClientPreset::new("X", "F"),
            "1.0.0",
            "ua",
        );
        let body = format!(r#"{{"flags":{flags}}}"#);
        assert_eq!(
            source.parse(body.as_bytes()).map(|a| a.enabled),
            Ok(enabled)
        );
    }

    #[rstest]
    #[case("1.2.3", "1.2.3")]
    #[case("1.2.3-oss", "1.2.3")]
    #[case("1.2.3-SNAPSHOT", "1.2.3")]
    #[case("10.20", "10.20.0")]
    #[case("7", "7.0.0")]
    #[case("v1.0.0", "1.0.0")]
    #[case("", "0.0.0")]
    #[case("garbage", "0.0.0")]
    #[case("1.x.3", "1.0.0")]
    fn versions(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(reduce_version(input), expected);
    }

    #[rstest]
    #[case("jdbc", "OSS_JDBC")]
    #[case("NodeJS", "NODEJS")]
    #[case("python", "PYTHON")]
    #[case("golang", "GOLANG")]
    #[case("go", "GOLANG")]
    #[case("ADBC", "ADBC")]
    fn presets(#[case] name: &str, #[case] client_type: &str) {
        let p = ClientPreset::by_name(name).unwrap();
        assert_eq!(p.client_type, client_type);
        assert!(p.flag_name.starts_with(
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryFor"
        ));
        assert!(ClientPreset::by_name("cobol").is_none());
        assert_eq!(
            ClientPreset::adbc().flag_name,
            "databricks.partnerplatform.clientConfigsFeatureFlags.enableTelemetryForAdbc"
        );
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("OSS_JDBC"), "OSS_JDBC");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
