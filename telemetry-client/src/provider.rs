//! The entry point: per workspace host one shared client, built on first use and reached by
//! connections through leases.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use thiserror::Error;

use telemetry_aggregator::Aggregator;
use telemetry_breaker::CircuitBreakerRegistry;
use telemetry_export::DatabricksExporter;
use telemetry_flags::{
    ClientPreset, DisableSwitch, FeatureFlagCache, HttpFlagSource, PendingCredentials,
};
use telemetry_types::BoxFuture;
use telemetry_types::audit::AuditSink;
use telemetry_types::auth::AuthProvider;
use telemetry_types::classify::TransportErrorKind;
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::flag::{FlagAnswer, FlagError, FlagSource};
use telemetry_types::host::Host;
use telemetry_types::redact::redact_user_agent;
use telemetry_types::transport::{
    ExtraHeaders, HeaderError, HttpRequest, HttpResponse, HttpTransport, TransportError,
};
use telemetry_types::validation::ConfigError;
use telemetry_types::wire::DriverSystemConfiguration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::config::{OptionError, TelemetryConfig};
use crate::connection::Connection;
use crate::options::{ConnectionOptions, ProviderOptions};
use crate::registry::{HostClient, HostCore, HostRegistry, deadline_after};
use crate::runtime::BackgroundRuntime;
use crate::stats::{DisabledReason, HostStats, ProviderStats};
use crate::sysinfo::{default_system_configuration, workspace_id_from_http_path};

/// Why [`TelemetryClientProvider::force_flush`] or
/// [`shutdown`](TelemetryClientProvider::shutdown) did not finish everything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// Time ran out with these hosts' rows still in flight (empty: the background runtime did
    /// not answer at all).
    #[error("telemetry flush timed out for {} host(s): {}", hosts.len(), hosts.join(", "))]
    Timeout {
        /// The hosts still working, normalised.
        hosts: Vec<String>,
    },
}

/// The header that names a workspace behind a shared host.
const ORG_ID_HEADER: &str = "x-databricks-org-id";

/// A connection's credentials as its host's flag look-up uses them: with the connection's
/// org id header (from its http path, or the one the driver set), as the other drivers send
/// it on the feature-flag GET.
pub(crate) fn flag_credentials(
    auth: Arc<dyn AuthProvider>,
    info: &ConnectionInfo,
) -> Arc<dyn AuthProvider> {
    let org_id = info
        .extra_headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(ORG_ID_HEADER))
        .map(|(_, v)| v.to_owned());
    match org_id {
        Some(org_id) => Arc::new(WithOrgId {
            inner: auth,
            org_id,
        }),
        None => auth,
    }
}

/// Credentials with the org id header added.
struct WithOrgId {
    inner: Arc<dyn AuthProvider>,
    org_id: String,
}

impl AuthProvider for WithOrgId {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(async move {
            let mut headers = self.inner.auth_headers().await?;
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(ORG_ID_HEADER))
            {
                headers.push((ORG_ID_HEADER.to_owned(), self.org_id.clone()));
            }
            Some(headers)
        })
    }
}

/// Why [`TelemetryClientProvider::try_new`] refused its options.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of its range (the error names it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `DATABRICKS_TELEMETRY_*` variable has a bad value, or makes the config invalid.
    #[error("invalid telemetry environment override: {0}")]
    Environment(OptionError),
    /// An extra header was refused.
    #[error("refused telemetry header: {0}")]
    Header(HeaderError),
}

/// What every host client of a provider is built from.
struct ProviderInner {
    /// The settings, changed by `apply_option` (all of them until the provider starts;
    /// then only those read at `connect`), and why every connection is off, when it is:
    /// env switch, invalid config, bad header.
    settings: Mutex<Settings>,
    /// Connections given a disabled handle, by reason; each reason logged once.
    disabled: [AtomicU64; DisabledReason::ALL.len()],
    /// Set by `shutdown`: later connections get disabled handles.
    shut_down: AtomicBool,
    /// The runtime the driver handed in, if any.
    given_runtime: Option<Handle>,
    user_agent: String,
    extra_headers: ExtraHeaders,
    /// The transport of connections that bring none: the driver's, or the default one,
    /// built when a connection first needs it.
    transport: Arc<DefaultTransport>,
    /// Whether `DATABRICKS_TELEMETRY_*` overrides apply (over options applied later too).
    read_env: bool,
    /// Sees every export request's body.
    audit: Option<Arc<dyn AuditSink>>,
    /// The driver's flag source, if it handed one in (else the HTTP one, built at start).
    given_flag_source: Option<Arc<dyn FlagSource>>,
    flag_preset: ClientPreset,
    driver_version: String,
    /// Started by the first enabled connection: nothing runs before one needs it.
    engine: OnceLock<Engine>,
    /// The OpenTelemetry bridge, if the driver handed one in.
    #[cfg(feature = "opentelemetry")]
    bridge: Option<Arc<crate::otel::Bridge>>,
}

/// The provider's settings: validated, environment overrides applied.
#[derive(Clone)]
struct Settings {
    config: TelemetryConfig,
    off: Option<DisabledReason>,
    /// `system_configuration` of the connections made from now on.
    system_configuration: DriverSystemConfiguration,
}

/// What runs once a connection needs it: the background runtime (the driver's, or a thread
/// shared by every provider of the process), the flag cache and the host clients.
struct Engine {
    /// The settings as they were when it started.
    config: TelemetryConfig,
    runtime: Arc<BackgroundRuntime>,
    flags: FeatureFlagCache,
    breakers: CircuitBreakerRegistry<String>,
    registry: Arc<HostRegistry>,
    /// The test capture every connection sends to (`config.test_capture`), if any.
    capture: Option<Arc<dyn HttpTransport>>,
}

/// The provider-wide transport: the one the driver handed in, or the default built on first
/// need (never, when every connection brings its own).
struct DefaultTransport {
    given: Option<Arc<dyn HttpTransport>>,
    built: OnceLock<Option<Arc<dyn HttpTransport>>>,
}

impl DefaultTransport {
    /// The transport, built now if this is the first need; `None` if none can be had.
    fn get(&self) -> Option<Arc<dyn HttpTransport>> {
        if let Some(t) = &self.given {
            return Some(t.clone());
        }
        self.built.get_or_init(build_default_transport).clone()
    }

    /// Whether the default transport has been built (or tried).
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.built.get().is_some()
    }
}

impl HttpTransport for DefaultTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        match self.get() {
            Some(t) => Box::pin(async move { t.send(request).await }),
            // Unreachable through `connect`, which refuses a connection with no transport.
            None => Box::pin(async {
                Err(TransportError::new(
                    TransportErrorKind::Other,
                    "no transport",
                ))
            }),
        }
    }
}

#[cfg(feature = "hyper-transport")]
fn build_default_transport() -> Option<Arc<dyn HttpTransport>> {
    match telemetry_export::HyperTransport::new() {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            tracing::warn!(error = %e, "telemetry transport unavailable; connections without their own are disabled");
            None
        }
    }
}

#[cfg(not(feature = "hyper-transport"))]
fn build_default_transport() -> Option<Arc<dyn HttpTransport>> {
    tracing::warn!(
        "telemetry-client was built without the `hyper-transport` feature: a connection needs its own transport"
    );
    None
}

/// The entry point for a driver: one per process (or per driver instance), holding one shared
/// telemetry client per workspace host. Cheap to clone.
#[derive(Clone)]
pub struct TelemetryClientProvider {
    inner: Arc<ProviderInner>,
}

#[cfg(test)]
impl TelemetryClientProvider {
    /// The registry, for the crate's tests.
    pub(crate) fn registry(&self) -> &Arc<HostRegistry> {
        &self.inner.engine().registry
    }

    /// Whether background work has started (runtime, flag cache).
    pub(crate) fn is_started(&self) -> bool {
        self.inner.engine.get().is_some()
    }

    /// Whether the default transport has been built.
    pub(crate) fn default_transport_built(&self) -> bool {
        self.inner.transport.is_built()
    }
}

impl fmt::Debug for TelemetryClientProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryClientProvider")
            .field("hosts", &self.host_count())
            .finish_non_exhaustive()
    }
}

impl TelemetryClientProvider {
    /// A provider. Never fails: a problem (invalid config, a refused header) disables
    /// telemetry and is logged (warn). Nothing starts here: the background runtime (the
    /// driver's `options.runtime`, or one worker thread shared by every provider of the
    /// process) starts with the first enabled connection, and the default transport is built
    /// when the first connection without its own needs it.
    pub fn new(options: ProviderOptions) -> Self {
        let (config, extra_headers, off) = match Self::settings_of(&options) {
            Ok((config, headers)) => (config, headers, None),
            Err(BuildError::Environment(e)) => {
                tracing::warn!(error = %e, "telemetry environment override ignored");
                let config = options.config.clone();
                match ExtraHeaders::try_from_pairs(options.extra_headers.clone()) {
                    Ok(h) => (config, h, None),
                    Err(e) => {
                        tracing::warn!(error = %e, "telemetry header refused; telemetry disabled");
                        (
                            config,
                            ExtraHeaders::default(),
                            Some(DisabledReason::InvalidHeader),
                        )
                    }
                }
            }
            Err(BuildError::Config(e)) => {
                tracing::warn!(error = %e, "invalid telemetry config; telemetry disabled");
                let off = Some(DisabledReason::InvalidConfig);
                (TelemetryConfig::default(), ExtraHeaders::default(), off)
            }
            Err(BuildError::Header(e)) => {
                tracing::warn!(error = %e, "telemetry header refused; telemetry disabled");
                let off = Some(DisabledReason::InvalidHeader);
                (options.config.clone(), ExtraHeaders::default(), off)
            }
        };
        Self::build(&options, config, extra_headers, off)
    }

    /// [`new`](Self::new) for a driver that wants to see a problem rather than get a provider
    /// whose every connection is disabled: an invalid config, an invalid
    /// `DATABRICKS_TELEMETRY_*` override or a refused header is the error.
    ///
    /// ```
    /// use telemetry_client::{BuildError, ClientPreset, ProviderOptions, TelemetryClientProvider};
    /// let mut options = ProviderOptions::new("MyDriver", "1.0.0", ClientPreset::adbc());
    /// options.config.aggregation.batch_size = 20_000;
    /// let err = TelemetryClientProvider::try_new(options).unwrap_err();
    /// assert!(matches!(err, BuildError::Config(_)));
    /// assert!(err.to_string().contains("aggregation.batch_size"), "{err}");
    /// ```
    pub fn try_new(options: ProviderOptions) -> Result<Self, BuildError> {
        let (config, extra_headers) = Self::settings_of(&options)?;
        Ok(Self::build(&options, config, extra_headers, None))
    }

    /// The config (validated, then the environment's overrides) and the extra headers.
    fn settings_of(
        options: &ProviderOptions,
    ) -> Result<(TelemetryConfig, ExtraHeaders), BuildError> {
        let mut config = options.config.clone();
        config.validate()?;
        if options.read_env {
            config
                .apply_env(|k| std::env::var(k).ok())
                .map_err(BuildError::Environment)?;
        }
        let headers = ExtraHeaders::try_from_pairs(options.extra_headers.clone())
            .map_err(BuildError::Header)?;
        Ok((config, headers))
    }

    fn build(
        options: &ProviderOptions,
        mut config: TelemetryConfig,
        extra_headers: ExtraHeaders,
        off: Option<DisabledReason>,
    ) -> Self {
        let switch = options
            .switch
            .clone()
            .unwrap_or_else(DisableSwitch::from_env);
        let off = switch
            .is_disabled()
            .then_some(DisabledReason::EnvSwitch)
            .or(off);
        config.flags.switch = switch.clone();
        // One setting bounds every call into an auth provider, exports and flag look-ups.
        config.flags.auth_timeout = config.export.auth_timeout;
        let transport = Arc::new(DefaultTransport {
            given: options.transport.clone(),
            built: OnceLock::new(),
        });
        let user_agent = redact_user_agent(
            &options
                .user_agent
                .clone()
                .unwrap_or_else(|| format!("{}/{}", options.driver_name, options.driver_version)),
        );
        let system_configuration = options.system_configuration.clone().unwrap_or_else(|| {
            default_system_configuration(&options.driver_name, &options.driver_version)
        });
        Self {
            inner: Arc::new_cyclic(|_weak| ProviderInner {
                #[cfg(feature = "opentelemetry")]
                bridge: options.opentelemetry.as_ref().and_then(|b| {
                    let stats = crate::otel::stats_source(_weak.clone(), |inner| {
                        TelemetryClientProvider { inner }.stats()
                    });
                    crate::otel::Bridge::start(b, stats)
                }),
                settings: Mutex::new(Settings {
                    config,
                    off,
                    system_configuration,
                }),
                disabled: Default::default(),
                read_env: options.read_env,
                audit: options.audit.clone(),
                given_flag_source: options.flag_source.clone(),
                flag_preset: options.flag_preset.clone(),
                driver_version: options.driver_version.clone(),
                engine: OnceLock::new(),
                shut_down: AtomicBool::new(false),
                given_runtime: options.runtime.clone(),
                user_agent,
                extra_headers,
                transport,
            }),
        }
    }

    /// Applies one string option (see [`TelemetryConfig::apply_option`] for the keys) to a
    /// provider already built: a driver whose options arrive after it made the provider (ADBC
    /// sets options on a database after it exists) builds the provider at once and passes
    /// each telemetry option here. Before the provider starts (its first enabled connection)
    /// every option applies; afterwards those read at each `connect` still do (`enabled`,
    /// `allow_insecure_loopback`, `max_hosts`), and the others are refused with
    /// [`OptionError::TooLate`]. A value out of range or an unknown key is an error and
    /// changes nothing; `DATABRICKS_TELEMETRY_*` overrides keep winning.
    ///
    /// ```
    /// use telemetry_client::{ClientPreset, ProviderOptions, TelemetryClientProvider};
    /// let provider = TelemetryClientProvider::new(ProviderOptions::new(
    ///     "MyDriver",
    ///     "1.0.0",
    ///     ClientPreset::adbc(),
    /// ));
    /// provider.apply_option("databricks.telemetry.batch_size", "200").unwrap();
    /// assert!(provider.apply_option("databricks.telemetry.batch_size", "0").is_err());
    /// ```
    pub fn apply_option(&self, key: &str, value: &str) -> Result<(), OptionError> {
        let inner = &self.inner;
        let mut settings = inner.settings();
        // Identity (driver, runtime, OS, app, locale, charset, process): read at each connect.
        if crate::sysinfo::apply_identity_option(&mut settings.system_configuration, key, value) {
            return Ok(());
        }
        let mut next = settings.config.clone();
        next.apply_option(key, value)?;
        if inner.read_env {
            // Environment overrides were applied at construction and keep precedence.
            let _ = next.apply_env(|k| std::env::var(k).ok());
        }
        next.flags.auth_timeout = next.export.auth_timeout;
        if inner.engine.get().is_some() {
            let mut fixed = next.clone();
            fixed.enabled = settings.config.enabled;
            fixed.allow_insecure_loopback = settings.config.allow_insecure_loopback;
            fixed.max_hosts = settings.config.max_hosts;
            if fixed != settings.config {
                return Err(OptionError::TooLate {
                    key: key.to_owned(),
                });
            }
        }
        settings.config = next;
        Ok(())
    }

    /// The settings now (those the provider started with, but for the ones `connect` reads).
    pub fn config(&self) -> TelemetryConfig {
        self.inner.settings().config.clone()
    }

    /// Registers a connection. Synchronous and never waits on the network: the first
    /// connection to a host creates its client (the flag resolves in the background), later
    /// ones share it. Returns a disabled handle (every method a no-op) when telemetry is off
    /// for this connection or the host is invalid.
    pub fn connect(&self, options: ConnectionOptions) -> Connection {
        let inner = &self.inner;
        let (off, enabled, loopback, max_hosts) = {
            let s = inner.settings();
            (
                s.off,
                s.config.enabled,
                s.config.allow_insecure_loopback,
                s.config.max_hosts,
            )
        };
        if let Some(reason) = off {
            return self.disabled(reason);
        }
        if inner.shut_down.load(Ordering::Acquire) {
            return self.disabled(DisabledReason::ShutDown);
        }
        if !options.enabled.unwrap_or(enabled) {
            return self.disabled(DisabledReason::Config);
        }
        let host = match Host::parse(&options.host, loopback) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry disabled for a connection with an invalid host");
                return self.disabled(DisabledReason::InvalidHost);
            }
        };
        let mut info = ConnectionInfo::new(host.clone(), inner.user_agent.clone());
        info.workspace_id = options.workspace_id.or_else(|| {
            options
                .http_path
                .as_deref()
                .and_then(workspace_id_from_http_path)
        });
        if let Some(id) = options.session_id {
            let _ = info.session_id.set(id);
        }
        info.auth_type = options.auth_type;
        // The path is given once: the connection parameters take it unless they have their own.
        let mut params = options.connection_params;
        if let (Some(p), Some(path)) = (params.as_mut(), options.http_path) {
            p.http_path.get_or_insert(path);
        }
        info.connection_params = params;
        let mut sys = inner.settings().system_configuration.clone();
        if options.client_app_name.is_some() {
            sys.client_app_name = options.client_app_name;
        }
        info.system_configuration = Some(sys);
        info.auth = options.auth.clone();
        info.transport = options.transport;
        // Workspaces behind a shared host are told apart by the org id: sent on every
        // authenticated export, from the http path's `?o=<id>` unless a header names it.
        let mut own_headers = options.extra_headers;
        let named = |h: &(String, String)| h.0.eq_ignore_ascii_case(ORG_ID_HEADER);
        if let Some(id) = info.workspace_id
            && !own_headers.iter().any(named)
            && !inner
                .extra_headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(ORG_ID_HEADER))
        {
            own_headers.push((ORG_ID_HEADER.to_owned(), id.to_string()));
        }
        info.extra_headers = match ExtraHeaders::try_from_pairs(own_headers)
            .and_then(|own| inner.extra_headers.merged(&own))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry disabled for a connection with a refused header");
                return self.disabled(DisabledReason::InvalidHeader);
            }
        };
        let engine = inner.engine();
        if let Some(capture) = &engine.capture {
            info.transport = Some(capture.clone());
        }
        // The default transport is built by the first connection that needs it (a dry run
        // sends nothing and needs none).
        if !engine.config.dry_run && info.transport.is_none() && inner.transport.get().is_none() {
            return self.disabled(DisabledReason::TransportSetup);
        }
        let transport = info.transport.clone();
        let auth_later = options.auth_later && options.auth.is_none();
        let flag_auth = options.auth.clone().map(|a| flag_credentials(a, &info));
        let mut created = None;
        let lease = engine.registry.lease(&host, max_hosts, || {
            let (client, pending) =
                inner.host_client(engine, &host, flag_auth.clone(), transport, auth_later);
            created = Some(pending);
            client
        });
        match lease {
            Some(lease) => {
                let pending = match created {
                    Some(pending) => pending,
                    // The host's client exists: its flag learns this connection's credentials
                    // (tried at once if its look-up found none that answered).
                    None => lease.flag_handle().and_then(|flag| {
                        if let Some(auth) = flag_auth {
                            flag.add_credentials(auth, info.transport.clone());
                        }
                        auth_later.then(|| flag.expect_credentials())
                    }),
                };
                Connection::new(
                    Arc::new(info),
                    lease,
                    pending,
                    self.inner.bridge_slot(&host),
                )
            }
            None => {
                tracing::debug!(host = %host, max_hosts, "telemetry disabled for a connection: too many hosts");
                self.disabled(DisabledReason::TooManyHosts)
            }
        }
    }

    /// A disabled handle, counted by reason; the first of each reason is logged (info for
    /// a choice of the user's, warn for a problem).
    fn disabled(&self, reason: DisabledReason) -> Connection {
        let count = &self.inner.disabled[reason.index()];
        if count.fetch_add(1, Ordering::Relaxed) == 0 {
            match reason {
                DisabledReason::Config | DisabledReason::EnvSwitch | DisabledReason::ShutDown => {
                    tracing::info!(
                        reason = reason.as_str(),
                        "telemetry is off for this connection (logged once per reason)"
                    );
                }
                _ => {
                    tracing::warn!(
                        reason = reason.as_str(),
                        "telemetry is off for this connection (logged once per reason)"
                    );
                }
            }
        }
        Connection::disabled(reason)
    }

    fn parse_host(&self, host: &str) -> Option<Host> {
        let loopback = self.inner.settings().config.allow_insecure_loopback;
        Host::parse(host, loopback).ok()
    }

    /// Connections holding `host` (normalised the same way as `connect`).
    pub fn ref_count(&self, host: &str) -> usize {
        match (self.inner.engine.get(), self.parse_host(host)) {
            (Some(engine), Some(h)) => engine.registry.lease_count(&h),
            _ => 0,
        }
    }

    /// Hosts with a live client.
    pub fn host_count(&self) -> usize {
        self.inner.engine.get().map_or(0, |e| e.registry.len())
    }

    /// Statistics of one live host.
    pub fn host_stats(&self, host: &str) -> Option<HostStats> {
        self.inner
            .engine
            .get()?
            .registry
            .host_stats(&self.parse_host(host)?)
    }

    /// Totals over every host client, live and closed, and the connections given disabled
    /// handles.
    pub fn stats(&self) -> ProviderStats {
        let mut stats = self
            .inner
            .engine
            .get()
            .map(|e| e.registry.stats())
            .unwrap_or_default();
        stats.disabled_connections = DisabledReason::ALL
            .iter()
            .map(|r| (*r, self.inner.disabled[r.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        #[cfg(feature = "opentelemetry")]
        if let Some(b) = &self.inner.bridge {
            stats.opentelemetry_spans = b.spans();
            (
                stats.opentelemetry_spans_dropped,
                stats.opentelemetry_chunks_dropped,
            ) = b.dropped();
        }
        stats
    }

    /// Hands every row produced so far, on every host, to the endpoint and waits until each
    /// is settled (exported, or dropped with a counted reason), at most `timeout` (and at most
    /// the close timeout per host). Needs no particular runtime: it only awaits a signal.
    ///
    /// With an OpenTelemetry bridge, it also waits until the bridge has handed every statement
    /// ended so far to the application's SDK (whose exporter flushes on its own schedule).
    ///
    /// `Err(Timeout)` names the hosts whose rows were still in flight when time ran out
    /// (`opentelemetry` for the bridge); they go on in the background.
    pub async fn force_flush(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let Some(engine) = self.inner.engine.get() else {
            return Ok(());
        };
        let clients = engine.registry.live();
        let waits = clients
            .into_iter()
            .map(|c| {
                let (tx, rx) = oneshot::channel();
                let host = c.core.host.to_string();
                engine.runtime.handle.spawn(async move {
                    c.core.aggregator.flush().await;
                    let _ = tx.send(());
                });
                (host, rx)
            })
            .chain(self.bridge_drained(engine))
            .collect();
        self.wait_all(engine, waits, timeout).await
    }

    /// Stops telemetry: later connections get disabled handles, every host's client is
    /// closed (final flush) by `timeout`, and what is not settled by then is dropped and
    /// counted (`shutdown`). Idempotent. Needs no particular runtime.
    ///
    /// `Err(Timeout)` names the hosts whose close was still running when time ran out.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), TelemetryError> {
        self.inner.shut_down.store(true, Ordering::Release);
        let Some(engine) = self.inner.engine.get() else {
            return Ok(());
        };
        let deadline = deadline_after(timeout);
        let closes = engine
            .registry
            .close_all(deadline)
            .into_iter()
            .map(|(host, rx)| (host.to_string(), rx))
            .chain(self.bridge_drained(engine))
            .collect();
        let result = self.wait_all(engine, closes, timeout).await;
        self.wait_closed().await;
        result
    }

    /// [`force_flush`](Self::force_flush) for callers without an async context: blocks this
    /// thread at most `timeout` (plus a little). From inside an async task prefer the async
    /// form; on a current-thread runtime that also runs the provider's work, this can only
    /// time out.
    pub fn force_flush_blocking(&self, timeout: Duration) -> Result<(), TelemetryError> {
        if self.inner.engine.get().is_none() {
            return Ok(());
        }
        let this = self.clone();
        self.block_on(async move { this.force_flush(timeout).await }, timeout)
    }

    /// [`shutdown`](Self::shutdown) for callers without an async context (see
    /// [`force_flush_blocking`](Self::force_flush_blocking)).
    pub fn shutdown_blocking(&self, timeout: Duration) -> Result<(), TelemetryError> {
        if self.inner.engine.get().is_none() {
            self.inner.shut_down.store(true, Ordering::Release);
            return Ok(());
        }
        let this = self.clone();
        self.block_on(async move { this.shutdown(timeout).await }, timeout)
    }

    fn block_on(
        &self,
        work: impl std::future::Future<Output = Result<(), TelemetryError>> + Send + 'static,
        timeout: Duration,
    ) -> Result<(), TelemetryError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.engine().runtime.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        let limit = timeout.saturating_add(Duration::from_millis(200));
        rx.recv_timeout(limit)
            .unwrap_or(Err(TelemetryError::Timeout { hosts: Vec::new() }))
    }

    /// With an OpenTelemetry bridge, a signal once every record queued so far is handled
    /// (named `opentelemetry` among the hosts of a timeout).
    fn bridge_drained(&self, engine: &Engine) -> Option<(String, oneshot::Receiver<()>)> {
        #[cfg(feature = "opentelemetry")]
        if let Some(bridge) = &self.inner.bridge {
            let (tx, rx) = oneshot::channel();
            let drained = bridge.drained();
            engine.runtime.handle.spawn(async move {
                drained.await;
                let _ = tx.send(());
            });
            return Some(("opentelemetry".to_owned(), rx));
        }
        let _ = engine;
        None
    }

    /// Waits for every signal, all within one `timeout`; the hosts still waiting then are the
    /// error.
    async fn wait_all(
        &self,
        engine: &Engine,
        waits: Vec<(String, oneshot::Receiver<()>)>,
        timeout: Duration,
    ) -> Result<(), TelemetryError> {
        let (tx, rx) = oneshot::channel();
        engine.runtime.handle.spawn(async move {
            let deadline = deadline_after(timeout);
            let mut late = Vec::new();
            for (host, done) in waits {
                if tokio::time::timeout_at(deadline, done).await.is_err() {
                    late.push(host);
                }
            }
            let _ = tx.send(late);
        });
        match rx.await {
            Ok(late) if late.is_empty() => Ok(()),
            Ok(hosts) => Err(TelemetryError::Timeout { hosts }),
            Err(_) => Err(TelemetryError::Timeout { hosts: Vec::new() }),
        }
    }

    /// Waits until every host client released so far has finished closing (bounded by the
    /// close timeout of each). Live connections are not touched.
    pub async fn wait_closed(&self) {
        let Some(engine) = self.inner.engine.get() else {
            return;
        };
        let handles = engine.registry.take_closing();
        let (tx, rx) = oneshot::channel();
        engine.runtime.handle.spawn(async move {
            for h in handles {
                let _ = h.await;
            }
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

impl ProviderInner {
    /// A connection's share of the OpenTelemetry bridge (empty without one).
    fn bridge_slot(&self, host: &Host) -> crate::bridge::Slot {
        #[cfg(feature = "opentelemetry")]
        return crate::bridge::Slot(
            self.bridge
                .as_ref()
                .map(|b| crate::otel::ConnBridge::new(b.clone(), host.name())),
        );
        #[cfg(not(feature = "opentelemetry"))]
        {
            let _ = host;
            crate::bridge::Slot::default()
        }
    }

    /// The background work, started now if this is the first connection that needs it.
    fn engine(&self) -> &Engine {
        self.engine.get_or_init(|| {
            // Settings are frozen from here on, but for those `connect` reads.
            let config = self.settings().config.clone();
            let runtime = Arc::new(BackgroundRuntime::new(self.given_runtime.clone()));
            #[cfg(feature = "testing")]
            let capture = config
                .test_capture
                .as_deref()
                .and_then(crate::testing::capture_transport);
            #[cfg(not(feature = "testing"))]
            let capture: Option<Arc<dyn HttpTransport>> = None;
            let flag_source: Arc<dyn FlagSource> = match &self.given_flag_source {
                // A dry run asks the server nothing, the flag included.
                _ if config.force_enable || config.dry_run || capture.is_some() => {
                    Arc::new(AlwaysOn)
                }
                Some(s) => s.clone(),
                None => Arc::new(
                    HttpFlagSource::new(
                        self.transport.clone(),
                        self.flag_preset.clone(),
                        &self.driver_version,
                        self.user_agent.clone(),
                    )
                    .with_timeout(config.export.request_timeout),
                ),
            };
            Engine {
                flags: FeatureFlagCache::new(
                    flag_source,
                    config.flags.clone(),
                    runtime.handle.clone(),
                ),
                breakers: CircuitBreakerRegistry::new(config.breaker.clone()),
                registry: Arc::new(HostRegistry::new(
                    runtime.clone(),
                    config.aggregation.close_timeout,
                )),
                runtime,
                config,
                capture,
            }
        })
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        // Nothing panics while holding it; a poisoned lock still holds whole settings.
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new client for `host`: its flag (looked up with the first connection's credentials,
    /// through its transport when it brings one),
    /// its breaker, its exporter and its aggregator task.
    fn host_client(
        &self,
        engine: &Engine,
        host: &Host,
        auth: Option<Arc<dyn AuthProvider>>,
        transport: Option<Arc<dyn HttpTransport>>,
        auth_later: bool,
    ) -> (HostClient, Option<PendingCredentials>) {
        let (flag, pending) = if auth_later {
            let (flag, pending) = engine.flags.acquire_expecting_credentials(host, transport);
            (flag, Some(pending))
        } else {
            (engine.flags.acquire_via(host, auth, transport), None)
        };
        let flag = Arc::new(flag);
        let breaker = engine.breakers.lease(host.to_string());
        let exporter = Arc::new(
            DatabricksExporter::new(
                host.clone(),
                engine.config.export.clone(),
                self.transport.clone(),
                breaker.breaker().clone(),
                flag.clone(),
                self.user_agent.clone(),
            )
            .with_audit(self.audit.clone(), engine.config.dry_run),
        );
        let aggregator = Aggregator::spawn(
            &engine.config.aggregation,
            exporter.clone(),
            &engine.runtime.handle,
        );
        let client = HostClient {
            core: Arc::new(HostCore::new(host.clone(), aggregator)),
            exporter,
            flag,
            _breaker: breaker,
        };
        (client, pending)
    }
}

/// `force_enable`: the server's flag is not asked.
struct AlwaysOn;

impl FlagSource for AlwaysOn {
    fn fetch<'a>(
        &'a self,
        _host: &'a Host,
        _auth: Option<&'a dyn AuthProvider>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>> {
        Box::pin(async {
            Ok(FlagAnswer {
                enabled: true,
                ttl: None,
            })
        })
    }
}
