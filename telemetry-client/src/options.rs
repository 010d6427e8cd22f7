//! What a driver hands in: the provider's options once, a connection's identity per
//! connection.

use std::fmt;
use std::sync::Arc;

use telemetry_flags::{ClientPreset, DisableSwitch};
use telemetry_types::audit::AuditSink;
use telemetry_types::auth::AuthProvider;
use telemetry_types::flag::FlagSource;
use telemetry_types::transport::{HeaderError, HttpTransport, validate_header};
use telemetry_types::wire::{AuthType, DriverConnectionParameters, DriverSystemConfiguration};
use tokio::runtime::Handle;

use crate::config::{OptionError, TelemetryConfig};

/// How a provider is set up. Start from [`ProviderOptions::new`] and override fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderOptions {
    /// Pipeline settings. `enabled` defaults to `false`: turn it on here or per connection.
    pub config: TelemetryConfig,
    /// The driver's name (`system_configuration.driver_name`, user agent).
    pub driver_name: String,
    /// The driver's version (`MAJOR.MINOR.PATCH` is used for the flag look-up).
    pub driver_version: String,
    /// The user agent sent; default `<driver_name>/<driver_version>`. Redacted before use.
    pub user_agent: Option<String>,
    /// Client type and flag name of the feature-flag look-up.
    pub flag_preset: ClientPreset,
    /// Run background work on this runtime instead of the worker thread shared by every
    /// provider of the process (started by the first enabled connection).
    pub runtime: Option<Handle>,
    /// The HTTP stack (proxy, custom TLS); default [`HyperTransport`](crate::HyperTransport).
    pub transport: Option<Arc<dyn HttpTransport>>,
    /// Where flags come from; default HTTP over the transport.
    pub flag_source: Option<Arc<dyn FlagSource>>,
    /// The off switch; default read from `DATABRICKS_TELEMETRY_DISABLED`.
    pub switch: Option<DisableSwitch>,
    /// `system_configuration`; default [`default_system_configuration`](crate::default_system_configuration).
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// Headers added to authenticated export requests (e.g. `x-databricks-org-id`).
    pub extra_headers: Vec<(String, String)>,
    /// Apply the `DATABRICKS_TELEMETRY_*` overrides of
    /// [`ENV_OVERRIDES`](crate::ENV_OVERRIDES) over `config`. Default `true`; tests that must
    /// not depend on the environment turn it off.
    pub read_env: bool,
    /// Sees every export request's body exactly as sent (see
    /// [`AuditSink`](crate::AuditSink); [`JsonLinesAudit`](crate::JsonLinesAudit) writes them
    /// to a file). With `config.dry_run`, nothing is sent and it sees what would have been.
    pub audit: Option<Arc<dyn AuditSink>>,
    /// The OpenTelemetry bridge (feature `opentelemetry`): a span and measurements per
    /// statement, and the library's health, into the application's own OpenTelemetry
    /// pipeline. Its own switch: on when set, whether or not the server's flag allows
    /// Databricks telemetry (a connection turned off locally, by config or the environment
    /// switch, reports to neither). See [`OpenTelemetryBridge`](crate::OpenTelemetryBridge).
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub opentelemetry: Option<crate::OpenTelemetryBridge>,
}

impl fmt::Debug for ProviderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderOptions")
            .field("config", &self.config)
            .field("driver_name", &self.driver_name)
            .field("driver_version", &self.driver_version)
            .field("flag_preset", &self.flag_preset)
            .finish_non_exhaustive()
    }
}

impl ProviderOptions {
    /// Defaults for a driver called `driver_name` at `driver_version`, looking up `flag_preset`.
    pub fn new(
        driver_name: impl Into<String>,
        driver_version: impl Into<String>,
        flag_preset: ClientPreset,
    ) -> Self {
        Self {
            config: TelemetryConfig::default(),
            driver_name: driver_name.into(),
            driver_version: driver_version.into(),
            user_agent: None,
            flag_preset,
            runtime: None,
            transport: None,
            flag_source: None,
            switch: None,
            system_configuration: None,
            extra_headers: Vec::new(),
            read_env: true,
            audit: None,
            #[cfg(feature = "opentelemetry")]
            opentelemetry: None,
        }
    }

    /// Applies one string option the driver collected: an identity option (`driver_name`,
    /// `runtime_version`, `os_name`, `client_app_name`, `locale_name`, `char_set_encoding`,
    /// `process_name`, ... in any case and separator style, see
    /// [`IDENTITY_OPTIONS`](crate::IDENTITY_OPTIONS)) sets that field of
    /// `system_configuration`; any other goes to
    /// [`TelemetryConfig::apply_option`](crate::TelemetryConfig::apply_option).
    ///
    /// ```
    /// use telemetry_client::{ClientPreset, ProviderOptions};
    /// let mut o = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::adbc());
    /// o.apply_option("runtime_version", "node 22.3").unwrap();
    /// o.apply_option("telemetry_batch_size", "200").unwrap();
    /// let sys = o.system_configuration.as_ref().unwrap();
    /// assert_eq!(sys.runtime_version.as_deref(), Some("node 22.3"));
    /// assert_eq!(o.config.aggregation.batch_size, 200);
    /// ```
    pub fn apply_option(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        let (name, version) = (&self.driver_name, &self.driver_version);
        let sys = self
            .system_configuration
            .get_or_insert_with(|| crate::default_system_configuration(name, version));
        if crate::sysinfo::apply_identity_option(sys, key, value) {
            return Ok(());
        }
        self.config.apply_option(key, value)
    }

    /// Hands every export request's body to `audit` (see [`audit`](Self::audit)).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use telemetry_client::{ClientPreset, JsonLinesAudit, ProviderOptions};
    /// let audit = Arc::new(JsonLinesAudit::create("telemetry-audit.jsonl").unwrap());
    /// let mut options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::adbc())
    ///     .with_audit(audit);
    /// options.config.dry_run = true; // write what would be sent, send nothing
    /// ```
    pub fn with_audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// The pipeline settings.
    ///
    /// ```
    /// use telemetry_client::{ClientPreset, ProviderOptions, TelemetryConfig};
    /// let mut config = TelemetryConfig::default();
    /// config.enabled = true;
    /// let options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::jdbc())
    ///     .with_config(config)
    ///     .with_header("x-databricks-org-id", "42")
    ///     .with_user_agent("MyDriver/1.0.0 (embedded)");
    /// assert!(options.config.enabled);
    /// ```
    pub fn with_config(mut self, config: TelemetryConfig) -> Self {
        self.config = config;
        self
    }

    /// The user agent sent (redacted before use).
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Background work on this runtime instead of the process's shared one.
    pub fn with_runtime(mut self, runtime: Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The HTTP stack for every connection that brings none of its own.
    pub fn with_transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Where feature flags come from.
    pub fn with_flag_source(mut self, source: Arc<dyn FlagSource>) -> Self {
        self.flag_source = Some(source);
        self
    }

    /// The off switch, instead of reading `DATABRICKS_TELEMETRY_DISABLED`.
    pub fn with_switch(mut self, switch: DisableSwitch) -> Self {
        self.switch = Some(switch);
        self
    }

    /// `system_configuration` instead of the defaults.
    pub fn with_system_configuration(mut self, config: DriverSystemConfiguration) -> Self {
        self.system_configuration = Some(config);
        self
    }

    /// A header of every authenticated export request. Checked when the provider is built:
    /// a refused header (see [`try_with_header`](Self::try_with_header)) turns telemetry off
    /// with the reason `invalid_header`.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }

    /// [`with_header`](Self::with_header), checked now: an invalid name or value (CR, LF,
    /// controls, over the size cap) or a name the exporter sets itself (`Authorization`,
    /// `Host`, `Content-Length`, ...) is an error.
    ///
    /// ```
    /// use telemetry_client::{ClientPreset, ProviderOptions};
    /// let options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::jdbc());
    /// assert!(options.clone().try_with_header("x-databricks-org-id", "42").is_ok());
    /// assert!(options.try_with_header("Authorization", "Bearer x").is_err());
    /// ```
    pub fn try_with_header(
        self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, HeaderError> {
        let (name, value) = (name.into(), value.into());
        validate_header(&name, &value)?;
        Ok(self.with_header(name, value))
    }

    /// Whether the `DATABRICKS_TELEMETRY_*` overrides apply.
    pub fn with_read_env(mut self, read_env: bool) -> Self {
        self.read_env = read_env;
        self
    }
}

/// One connection's identity, given to
/// [`TelemetryClientProvider::connect`](crate::TelemetryClientProvider::connect).
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConnectionOptions {
    /// The workspace host as the driver has it (`https://...`, any case, port 443 or not).
    pub host: String,
    /// The warehouse / cluster HTTP path, given once: the workspace id is read from it
    /// (`?o=<id>`, `/o/<id>/`) unless [`workspace_id`](Self::workspace_id) is set, and it is
    /// the `http_path` of the connection parameters unless those carry their own.
    pub http_path: Option<String>,
    /// The workspace id, when the driver knows it (over what the http path says).
    pub workspace_id: Option<i64>,
    /// The server's session id.
    pub session_id: Option<String>,
    /// The connection's credentials; `None` reports to the unauthenticated endpoint, unless
    /// [`auth_later`](Self::auth_later) says they are coming.
    pub auth: Option<Arc<dyn AuthProvider>>,
    /// The connection has no credentials yet and the driver will attach them
    /// ([`Connection::attach_auth`](crate::Connection::attach_auth)) once its own first token
    /// fetch succeeded: the host's flag look-up waits for them (at most
    /// `flags.credentials_wait`) instead of asking without them or calling a provider early.
    pub auth_later: bool,
    /// How the connection authenticates.
    pub auth_type: Option<AuthType>,
    /// `driver_connection_params` of the `CREATE_SESSION` row.
    pub connection_params: Option<DriverConnectionParameters>,
    /// Per-connection override of `config.enabled`: `Some(false)` turns telemetry off for this
    /// connection whatever the flag says; `Some(true)` opts in when the config does not.
    pub enabled: Option<bool>,
    /// `system_configuration.client_app_name`.
    pub client_app_name: Option<String>,
    /// This connection's own HTTP stack (an ADBC database's proxy and TLS settings); `None`
    /// uses the provider's. Rows of connections with different transports never share a
    /// request. The host's feature-flag look-up goes through it too when this connection's
    /// credentials are the ones used for it.
    pub transport: Option<Arc<dyn HttpTransport>>,
    /// Headers added to this connection's authenticated requests (e.g.
    /// `x-databricks-org-id`), over the provider's (one value per name, this connection's
    /// winning); rows of connections with different headers never share a request.
    pub extra_headers: Vec<(String, String)>,
}

impl fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("has_credentials", &self.auth.is_some())
            .field("auth_later", &self.auth_later)
            .field("auth_type", &self.auth_type)
            .field("enabled", &self.enabled)
            .field("own_transport", &self.transport.is_some())
            .finish_non_exhaustive()
    }
}

impl ConnectionOptions {
    /// Options for `host` with nothing else set.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use telemetry_client::{AuthType, ConnectionOptions, StaticToken};
    /// let options = ConnectionOptions::new("https://my-workspace.cloud.databricks.com")
    ///     .with_http_path("/sql/1.0/warehouses/abc?o=42")
    ///     .with_session_id("01ef-session")
    ///     .with_auth(Arc::new(StaticToken::new("dapi-example")), AuthType::Pat);
    /// assert_eq!(options.session_id.as_deref(), Some("01ef-session"));
    /// ```
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            ..Self::default()
        }
    }

    /// The warehouse / cluster HTTP path (see [`http_path`](Self::http_path)).
    pub fn with_http_path(mut self, http_path: impl Into<String>) -> Self {
        self.http_path = Some(http_path.into());
        self
    }

    /// The workspace id, when the driver knows it.
    pub fn with_workspace_id(mut self, workspace_id: i64) -> Self {
        self.workspace_id = Some(workspace_id);
        self
    }

    /// The server's session id.
    pub fn with_session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// The connection's credentials and how it authenticates.
    pub fn with_auth(mut self, auth: Arc<dyn AuthProvider>, auth_type: AuthType) -> Self {
        self.auth = Some(auth);
        self.auth_type = Some(auth_type);
        self
    }

    /// How the connection authenticates, its credentials to come: the driver attaches them
    /// with [`Connection::attach_auth`](crate::Connection::attach_auth) when it has them (an
    /// OAuth flow that has not run yet). Nothing calls into the driver's provider before.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use telemetry_client::{AuthType, ConnectionOptions};
    /// let options = ConnectionOptions::new("https://my-workspace.cloud.databricks.com")
    ///     .with_auth_later(AuthType::ExternalBrowser);
    /// assert!(options.auth_later && options.auth.is_none());
    /// ```
    pub fn with_auth_later(mut self, auth_type: AuthType) -> Self {
        self.auth = None;
        self.auth_later = true;
        self.auth_type = Some(auth_type);
        self
    }

    /// `driver_connection_params` of the `CREATE_SESSION` row.
    pub fn with_connection_params(mut self, params: DriverConnectionParameters) -> Self {
        self.connection_params = Some(params);
        self
    }

    /// Overrides `config.enabled` for this connection.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }

    /// This connection's own HTTP stack.
    pub fn with_transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// A header of this connection's authenticated requests (over the provider's of the same
    /// name). Checked at `connect`: a refused header gives a disabled handle with the reason
    /// `invalid_header` (see [`try_with_header`](Self::try_with_header)).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }

    /// [`with_header`](Self::with_header), checked now: an invalid or reserved header is an
    /// error.
    pub fn try_with_header(
        self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, HeaderError> {
        let (name, value) = (name.into(), value.into());
        validate_header(&name, &value)?;
        Ok(self.with_header(name, value))
    }

    /// `system_configuration.client_app_name`.
    pub fn with_client_app_name(mut self, name: impl Into<String>) -> Self {
        self.client_app_name = Some(name.into());
        self
    }
}
