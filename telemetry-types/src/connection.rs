//! Who produced an event: one driver connection's identity, shared by its events.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;

use crate::auth::AuthProvider;
use crate::host::Host;
use crate::redact::redact_truncated;
use crate::transport::{ExtraHeaders, HttpTransport};
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
    /// The server's session id, once known: set at most once, when the session opens (a
    /// failed open has none).
    pub session_id: OnceLock<String>,
    /// The driver's user agent (already redacted).
    pub user_agent: String,
    /// How the connection authenticates.
    pub auth_type: Option<AuthType>,
    /// Sent on `CREATE_SESSION` rows only.
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// Sent on `CREATE_SESSION` rows only.
    pub connection_params: Option<DriverConnectionParameters>,
    /// The connection's credentials given when it was registered; `None` sends to the
    /// unauthenticated endpoint unless credentials are attached later (see
    /// [`attach_auth`](Self::attach_auth) and [`credentials`](Self::credentials)).
    pub auth: Option<Arc<dyn AuthProvider>>,
    /// Credentials attached after registration (the driver had none yet): they win.
    attached: ArcSwapOption<Attached>,
    /// The connection's own HTTP stack (its proxy, its TLS); `None` uses the provider's.
    pub transport: Option<Arc<dyn HttpTransport>>,
    /// Headers of this connection's authenticated requests (e.g. `x-databricks-org-id`),
    /// validated when they were set; not sent to the unauthenticated endpoint.
    pub extra_headers: ExtraHeaders,
    /// The strings above as they may leave the process, computed once, by the first row built.
    redacted: OnceLock<RedactedIdentity>,
    /// The session id as it may leave the process, computed once it is known.
    redacted_session_id: OnceLock<String>,
}

/// Credentials attached after registration.
struct Attached(Arc<dyn AuthProvider>);

/// A connection's driver-supplied strings, redacted and capped: what rows carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactedIdentity {
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

fn host_details(h: &HostDetails) -> HostDetails {
    HostDetails {
        host_url: setting(&h.host_url),
        ..h.clone()
    }
}

/// Longest `non_proxy_hosts` list sent.
const MAX_LIST_ITEMS: usize = 64;

/// Every string of the connection parameters redacted and capped. Written field by field, with
/// the struct destructured so that a new field is a compile error here until it is handled.
fn redact_connection_params(p: &DriverConnectionParameters) -> DriverConnectionParameters {
    let DriverConnectionParameters {
        http_path,
        mode,
        host_info,
        use_proxy,
        auth_mech,
        auth_flow,
        auth_scope,
        use_system_proxy,
        non_proxy_hosts,
        use_cf_proxy,
        proxy_host_info,
        cf_proxy_host_info,
        discovery_mode_enabled,
        discovery_url,
        use_empty_metadata,
        support_many_parameters,
        ssl_trust_store_type,
        check_certificate_revocation,
        accept_undetermined_certificate_revocation,
        google_service_account,
        google_credential_file_path,
        http_connection_pool_size,
        enable_sea_hybrid_results,
        enable_complex_datatype_support,
        allow_self_signed_support,
        use_system_trust_store,
        rows_fetched_per_block,
        azure_workspace_resource_id,
        azure_tenant_id,
        string_column_length,
        enable_token_cache,
        token_endpoint,
        auth_endpoint,
        enable_arrow,
        enable_direct_results,
        enable_jwt_assertion,
        jwt_key_file,
        jwt_algorithm,
        socket_timeout,
        allowed_volume_ingestion_paths,
        async_poll_interval_millis,
        query_tags,
        enable_metric_view_metadata,
        auto_commit,
        fetch_auto_commit_from_server,
        enable_geospatial_support,
    } = p;
    DriverConnectionParameters {
        http_path: setting(http_path),
        mode: *mode,
        host_info: host_info.as_ref().map(host_details),
        use_proxy: *use_proxy,
        auth_mech: *auth_mech,
        auth_flow: *auth_flow,
        auth_scope: setting(auth_scope),
        use_system_proxy: *use_system_proxy,
        non_proxy_hosts: non_proxy_hosts.as_ref().map(|hosts| {
            hosts
                .iter()
                .take(MAX_LIST_ITEMS)
                .map(|h| redact_truncated(h, MAX_SETTING_CHARS))
                .collect()
        }),
        use_cf_proxy: *use_cf_proxy,
        proxy_host_info: proxy_host_info.as_ref().map(host_details),
        cf_proxy_host_info: cf_proxy_host_info.as_ref().map(host_details),
        discovery_mode_enabled: *discovery_mode_enabled,
        discovery_url: setting(discovery_url),
        use_empty_metadata: *use_empty_metadata,
        support_many_parameters: *support_many_parameters,
        ssl_trust_store_type: setting(ssl_trust_store_type),
        check_certificate_revocation: *check_certificate_revocation,
        accept_undetermined_certificate_revocation: *accept_undetermined_certificate_revocation,
        google_service_account: setting(google_service_account),
        google_credential_file_path: setting(google_credential_file_path),
        http_connection_pool_size: *http_connection_pool_size,
        enable_sea_hybrid_results: *enable_sea_hybrid_results,
        enable_complex_datatype_support: *enable_complex_datatype_support,
        allow_self_signed_support: *allow_self_signed_support,
        use_system_trust_store: *use_system_trust_store,
        rows_fetched_per_block: *rows_fetched_per_block,
        azure_workspace_resource_id: setting(azure_workspace_resource_id),
        azure_tenant_id: setting(azure_tenant_id),
        string_column_length: *string_column_length,
        enable_token_cache: *enable_token_cache,
        token_endpoint: setting(token_endpoint),
        auth_endpoint: setting(auth_endpoint),
        enable_arrow: *enable_arrow,
        enable_direct_results: *enable_direct_results,
        enable_jwt_assertion: *enable_jwt_assertion,
        jwt_key_file: setting(jwt_key_file),
        jwt_algorithm: setting(jwt_algorithm),
        socket_timeout: *socket_timeout,
        allowed_volume_ingestion_paths: setting(allowed_volume_ingestion_paths),
        async_poll_interval_millis: *async_poll_interval_millis,
        query_tags: setting(query_tags),
        enable_metric_view_metadata: *enable_metric_view_metadata,
        auto_commit: *auto_commit,
        fetch_auto_commit_from_server: *fetch_auto_commit_from_server,
        enable_geospatial_support: *enable_geospatial_support,
    }
}

impl ConnectionInfo {
    /// A connection to `host` with nothing else known.
    pub fn new(host: Host, user_agent: impl Into<String>) -> Self {
        Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            host,
            workspace_id: None,
            session_id: OnceLock::new(),
            user_agent: user_agent.into(),
            auth_type: None,
            system_configuration: None,
            connection_params: None,
            auth: None,
            attached: ArcSwapOption::empty(),
            transport: None,
            extra_headers: ExtraHeaders::default(),
            redacted: OnceLock::new(),
            redacted_session_id: OnceLock::new(),
        }
    }

    /// The connection's driver-supplied strings as they may leave the process: redacted and
    /// capped on first use (by the background task building rows, never on the driver's
    /// thread), then reused by every row of the connection.
    pub fn redacted(&self) -> &RedactedIdentity {
        self.redacted.get_or_init(|| RedactedIdentity {
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

    /// The session id as it may leave the process (redacted, capped), once it is known.
    pub fn redacted_session_id(&self) -> Option<&str> {
        let id = self.session_id.get()?;
        Some(
            self.redacted_session_id
                .get_or_init(|| redact_truncated(id, MAX_ID_CHARS)),
        )
    }

    /// The identity of the transport: rows may share a request only with equal keys.
    pub fn transport_key(&self) -> Option<usize> {
        self.transport
            .as_ref()
            .map(|t| Arc::as_ptr(t) as *const () as usize)
    }

    /// The identity of the credentials: rows with equal keys may share a request.
    pub fn credentials_key(&self) -> Option<usize> {
        self.credentials()
            .as_ref()
            .map(|a| Arc::as_ptr(a) as *const () as usize)
    }

    /// The connection's credentials now: those attached last, else those it was registered
    /// with. Rows are exported with the credentials current when they are sent.
    pub fn credentials(&self) -> Option<Arc<dyn AuthProvider>> {
        match &*self.attached.load() {
            Some(attached) => Some(attached.0.clone()),
            None => self.auth.clone(),
        }
    }

    /// Attaches (or replaces) the connection's credentials: for a driver that registers the
    /// connection before its first token fetch. Rows sent from now on use them.
    pub fn attach_auth(&self, auth: Arc<dyn AuthProvider>) {
        self.attached.store(Some(Arc::new(Attached(auth))));
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
            .field("has_credentials", &self.credentials().is_some())
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
        assert_eq!(c.redacted_session_id(), None);
        c.session_id
            .set(format!("sess-{}", "x".repeat(1_000_000)))
            .unwrap();
        c.system_configuration = Some(DriverSystemConfiguration {
            client_app_name: Some("app password=hunter2".into()),
            driver_version: Some("1.0 token=abc".into()),
            process_name: Some("/home/alice/bin/app".into()),
            ..Default::default()
        });
        c.connection_params = Some(DriverConnectionParameters {
            http_path: Some("/sql/1.0/warehouses/abc?o=1&token=dapi0123456789abcdef0123".into()),
            host_info: Some(HostDetails::new("https://u:p@h.example", 443)),
            ..Default::default()
        });
        let r = c.redacted();
        assert_eq!(
            c.redacted_session_id().map(|s| s.chars().count()),
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
            params.host_info.as_ref().unwrap().host_url.as_deref(),
            Some("https://[REDACTED]@h.example")
        );
        assert!(std::ptr::eq(r, c.redacted()), "computed once");
    }

    /// Plants a secret in every string (and string list) of the parameters, through their JSON
    /// form so that a field added later is planted too, and checks none survives.
    #[test]
    fn every_connection_parameter_string_is_redacted() {
        let secret = "https://h.example/p?token=dapi0123456789abcdef0123 password=hunter2";
        let host = serde_json::json!({"host_url": secret, "port": 1, "proxy_auth_type": "BASIC"});
        let mut planted = serde_json::Map::new();
        // Every key the type knows: probe each with a string, a list and a host object.
        for key in KNOWN_PARAMETER_KEYS {
            for value in [
                serde_json::json!(secret),
                serde_json::json!([secret, secret]),
                host.clone(),
            ] {
                let one = serde_json::json!({ *key: value.clone() });
                if serde_json::from_value::<DriverConnectionParameters>(one).is_ok() {
                    planted.insert((*key).to_owned(), value);
                }
            }
        }
        let parsed: DriverConnectionParameters =
            serde_json::from_value(serde_json::Value::Object(planted.clone())).unwrap();
        let sent = serde_json::to_string(&redact_connection_params(&parsed)).unwrap();
        assert!(
            !sent.contains("hunter2") && !sent.contains("dapi0123"),
            "{sent}"
        );
        assert_eq!(
            planted.len(),
            18,
            "14 strings, 1 list, 3 hosts, lists and hosts planted: {planted:?}"
        );
    }

    /// The server's keys (spec 2.2), for the planting test above.
    const KNOWN_PARAMETER_KEYS: &[&str] = &[
        "http_path",
        "mode",
        "host_info",
        "use_proxy",
        "auth_mech",
        "auth_flow",
        "auth_scope",
        "use_system_proxy",
        "non_proxy_hosts",
        "use_cf_proxy",
        "proxy_host_info",
        "cf_proxy_host_info",
        "discovery_mode_enabled",
        "discovery_url",
        "use_empty_metadata",
        "support_many_parameters",
        "ssl_trust_store_type",
        "check_certificate_revocation",
        "accept_undetermined_certificate_revocation",
        "google_service_account",
        "google_credential_file_path",
        "http_connection_pool_size",
        "enable_sea_hybrid_results",
        "enable_complex_datatype_support",
        "allow_self_signed_support",
        "use_system_trust_store",
        "rows_fetched_per_block",
        "azure_workspace_resource_id",
        "azure_tenant_id",
        "string_column_length",
        "enable_token_cache",
        "token_endpoint",
        "auth_endpoint",
        "enable_arrow",
        "enable_direct_results",
        "enable_jwt_assertion",
        "jwt_key_file",
        "jwt_algorithm",
        "socket_timeout",
        "allowed_volume_ingestion_paths",
        "async_poll_interval_millis",
        "query_tags",
        "enable_metric_view_metadata",
        "auto_commit",
        "fetch_auto_commit_from_server",
        "enable_geospatial_support",
    ];

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
