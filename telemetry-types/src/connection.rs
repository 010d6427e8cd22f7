//! Who produced an event: one driver connection's identity, shared by its events.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::auth::AuthProvider;
use crate::host::Host;
use crate::redact::redact_truncated;
use crate::transport::HttpTransport;
use crate::wire::{AuthType, DriverConnectionParameters, DriverSystemConfiguration, HostDetails};

/// Longest id sent (session, statement), in characters.
pub(crate) const MAX_ID_CHARS: usize = 128;
/// Longest configuration or parameter string sent, in characters.
const MAX_SETTING_CHARS: usize = 256;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Who produced an event: one driver connection.
pub struct ConnectionInfo {
    /// Process-unique id, used to key statements and group rows by credentials.
    pub id: u64,
    /// The normalised workspace host.
    pub host: Host,
    /// From `?o=<digits>` or `/o/<digits>/` in the HTTP path only.
    pub workspace_id: Option<i64>,
    /// The server's session id, once known.
    pub session_id: Option<String>,
    /// The driver's user agent (already redacted).
    pub user_agent: String,
    /// How the connection authenticates.
    pub auth_type: Option<AuthType>,
    /// Sent on `CREATE_SESSION` rows only.
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// Sent on `CREATE_SESSION` rows only.
    pub connection_params: Option<DriverConnectionParameters>,
    /// The connection's credentials; `None` sends to the unauthenticated endpoint.
    pub auth: Option<Arc<dyn AuthProvider>>,
    /// The connection's own HTTP stack (its proxy, its TLS); `None` uses the provider's.
    pub transport: Option<Arc<dyn HttpTransport>>,
    /// Headers of this connection's authenticated requests (e.g. `x-databricks-org-id`).
    pub extra_headers: Vec<(String, String)>,
    /// The strings above as they may leave the process, computed once, by the first row built.
    redacted: OnceLock<RedactedIdentity>,
}

/// A connection's driver-supplied strings, redacted and capped: what rows carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactedIdentity {
    /// The session id.
    pub session_id: Option<String>,
    /// `system_configuration`, every string redacted and capped.
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// `driver_connection_params`, every string redacted and capped.
    pub connection_params: Option<DriverConnectionParameters>,
}

fn setting(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(|v| redact_truncated(v, MAX_SETTING_CHARS))
}

fn redact_system_configuration(c: &DriverSystemConfiguration) -> DriverSystemConfiguration {
    DriverSystemConfiguration {
        driver_name: setting(&c.driver_name),
        driver_version: setting(&c.driver_version),
        runtime_name: setting(&c.runtime_name),
        runtime_version: setting(&c.runtime_version),
        runtime_vendor: setting(&c.runtime_vendor),
        os_name: setting(&c.os_name),
        os_version: setting(&c.os_version),
        os_arch: setting(&c.os_arch),
        client_app_name: setting(&c.client_app_name),
        locale_name: setting(&c.locale_name),
        char_set_encoding: setting(&c.char_set_encoding),
        process_name: c
            .process_name
            .as_deref()
            .map(|p| redact_truncated(&crate::redact::file_name_only(p), MAX_SETTING_CHARS)),
    }
}

fn redact_connection_params(p: &DriverConnectionParameters) -> DriverConnectionParameters {
    DriverConnectionParameters {
        http_path: setting(&p.http_path),
        host_info: p.host_info.as_ref().map(|h| HostDetails {
            host_url: redact_truncated(&h.host_url, MAX_SETTING_CHARS),
            port: h.port,
        }),
        auth_mech: setting(&p.auth_mech),
        auth_flow: setting(&p.auth_flow),
        ..p.clone()
    }
}

impl ConnectionInfo {
    /// A connection to `host` with nothing else known.
    pub fn new(host: Host, user_agent: impl Into<String>) -> Self {
        Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            host,
            workspace_id: None,
            session_id: None,
            user_agent: user_agent.into(),
            auth_type: None,
            system_configuration: None,
            connection_params: None,
            auth: None,
            transport: None,
            extra_headers: Vec::new(),
            redacted: OnceLock::new(),
        }
    }

    /// The connection's driver-supplied strings as they may leave the process: redacted and
    /// capped on first use (by the background task building rows, never on the driver's
    /// thread), then reused by every row of the connection.
    pub fn redacted(&self) -> &RedactedIdentity {
        self.redacted.get_or_init(|| RedactedIdentity {
            session_id: self
                .session_id
                .as_deref()
                .map(|id| redact_truncated(id, MAX_ID_CHARS)),
            system_configuration: self
                .system_configuration
                .as_ref()
                .map(redact_system_configuration),
            connection_params: self
                .connection_params
                .as_ref()
                .map(redact_connection_params),
        })
    }

    /// The identity of the transport: rows may share a request only with equal keys.
    pub fn transport_key(&self) -> Option<usize> {
        self.transport
            .as_ref()
            .map(|t| Arc::as_ptr(t) as *const () as usize)
    }

    /// The identity of the credentials: rows with equal keys may share a request.
    pub fn credentials_key(&self) -> Option<usize> {
        self.auth
            .as_ref()
            .map(|a| Arc::as_ptr(a) as *const () as usize)
    }
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("workspace_id", &self.workspace_id)
            .field("session_id", &self.session_id)
            .field("auth_type", &self.auth_type)
            .field("has_credentials", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StaticToken;
    use crate::wire::{DriverConnectionParameters, DriverSystemConfiguration, HostDetails};

    #[test]
    fn every_string_is_redacted_and_capped_once() {
        let host = Host::parse("a.example", false).unwrap();
        let mut c = ConnectionInfo::new(host, "ua");
        c.session_id = Some(format!("sess-{}", "x".repeat(1_000_000)));
        c.system_configuration = Some(DriverSystemConfiguration {
            client_app_name: Some("app password=hunter2".into()),
            driver_version: Some("1.0 token=abc".into()),
            process_name: Some("/home/alice/bin/app".into()),
            ..Default::default()
        });
        c.connection_params = Some(DriverConnectionParameters {
            http_path: Some("/sql/1.0/warehouses/abc?o=1&token=dapi0123456789abcdef0123".into()),
            host_info: Some(HostDetails {
                host_url: "https://u:p@h.example".into(),
                port: 443,
            }),
            ..Default::default()
        });
        let r = c.redacted();
        assert_eq!(
            r.session_id.as_ref().map(|s| s.chars().count()),
            Some(MAX_ID_CHARS)
        );
        let sys = r.system_configuration.as_ref().unwrap();
        assert_eq!(
            sys.client_app_name.as_deref(),
            Some("app password=[REDACTED]")
        );
        assert_eq!(sys.driver_version.as_deref(), Some("1.0 token=[REDACTED]"));
        assert_eq!(sys.process_name.as_deref(), Some("app"));
        let params = r.connection_params.as_ref().unwrap();
        assert_eq!(
            params.http_path.as_deref(),
            Some("/sql/1.0/warehouses/abc?o=1&token=[REDACTED]")
        );
        assert_eq!(
            params.host_info.as_ref().unwrap().host_url,
            "https://[REDACTED]@h.example"
        );
        assert!(std::ptr::eq(r, c.redacted()), "computed once");
    }

    #[test]
    fn connection_ids_unique_and_credentials_key_by_provider() {
        let host = Host::parse("a.example", false).unwrap();
        let a = ConnectionInfo::new(host.clone(), "ua");
        let mut b = ConnectionInfo::new(host.clone(), "ua");
        assert_ne!(a.id, b.id);
        assert_eq!(a.credentials_key(), None);
        let token: Arc<dyn AuthProvider> = Arc::new(StaticToken::new("t"));
        b.auth = Some(token.clone());
        let mut c = ConnectionInfo::new(host, "ua");
        c.auth = Some(token);
        assert_eq!(b.credentials_key(), c.credentials_key());
        assert!(b.credentials_key().is_some());
        let dbg = format!("{b:?}");
        assert!(dbg.contains("has_credentials: true"));
    }
}
