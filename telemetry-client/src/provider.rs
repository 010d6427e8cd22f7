use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use telemetry_aggregator::{Aggregator, AggregatorStats};
use telemetry_breaker::{BreakerLease, CircuitBreakerRegistry};
use telemetry_export::{DatabricksExporter, ExportStats, HyperTransport, breaker_config};
use telemetry_flags::{
    ClientPreset, FeatureFlagCache, FlagCacheConfig, FlagHandle, HttpFlagSource,
};
use telemetry_types::config::{DisableSwitch, TelemetryConfig};
use telemetry_types::event::ConnectionInfo;
use telemetry_types::host::Host;
use telemetry_types::redact::redact;
use telemetry_types::traits::{AuthProvider, FlagSource, FlagState, HttpTransport};
use telemetry_types::wire::{AuthType, DriverConnectionParameters, DriverSystemConfiguration};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::handle::Connection;
use crate::sysinfo::{default_system_configuration, workspace_id_from_http_path};

/// How a provider is set up. Start from [`ProviderOptions::new`] and override fields.
#[derive(Clone)]
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
    /// Run background work on this runtime instead of a dedicated thread.
    pub runtime: Option<Handle>,
    /// The HTTP stack (proxy, custom TLS); default [`HyperTransport`].
    pub transport: Option<Arc<dyn HttpTransport>>,
    /// Where flags come from; default HTTP over the transport.
    pub flag_source: Option<Arc<dyn FlagSource>>,
    /// The off switch; default read from `DATABRICKS_TELEMETRY_DISABLED`.
    pub switch: Option<DisableSwitch>,
    /// `system_configuration`; default [`default_system_configuration`].
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// Headers added to authenticated export requests (e.g. `x-databricks-org-id`).
    pub extra_headers: Vec<(String, String)>,
    /// Feature-flag cache tuning (TTL, failure backoff).
    pub flag_cache: Option<FlagCacheConfig>,
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
            flag_cache: None,
        }
    }
}

/// One connection's identity, given to [`TelemetryClientProvider::connect`].
#[derive(Clone, Default)]
pub struct ConnectionOptions {
    /// The workspace host as the driver has it (`https://...`, any case, port 443 or not).
    pub host: String,
    /// The warehouse / cluster HTTP path (the workspace id is read from it, nothing else).
    pub http_path: Option<String>,
    /// The server's session id.
    pub session_id: Option<String>,
    /// The connection's credentials; `None` reports to the unauthenticated endpoint.
    pub auth: Option<Arc<dyn AuthProvider>>,
    /// How the connection authenticates.
    pub auth_type: Option<AuthType>,
    /// `driver_connection_params` of the `CREATE_SESSION` row.
    pub connection_params: Option<DriverConnectionParameters>,
    /// Per-connection override of `config.enabled`: `Some(false)` turns telemetry off for this
    /// connection whatever the flag says; `Some(true)` opts in when the config does not.
    pub enabled: Option<bool>,
    /// `system_configuration.client_app_name`.
    pub client_app_name: Option<String>,
}

impl fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("has_credentials", &self.auth.is_some())
            .field("auth_type", &self.auth_type)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl ConnectionOptions {
    /// Options for `host` with nothing else set.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            ..Self::default()
        }
    }
}

/// Everything one host's telemetry needs, shared by that host's connections.
pub(crate) struct HostClient {
    pub(crate) host: Host,
    pub(crate) aggregator: Aggregator,
    pub(crate) exporter: Arc<DatabricksExporter>,
    pub(crate) flag_state: Arc<AtomicU8>,
    flag: Arc<FlagHandle>,
    _breaker: BreakerLease<String>,
}

impl HostClient {
    fn stats(&self, refs: usize) -> HostStats {
        HostStats {
            host: self.host.to_string(),
            connections: refs,
            flag: self.flag.state(),
            aggregator: self.aggregator.stats(),
            export: self.exporter.stats(),
        }
    }
}

struct Entry {
    client: Arc<HostClient>,
    refs: usize,
}

/// Statistics of one host's telemetry client.
#[derive(Debug, Clone)]
pub struct HostStats {
    /// The normalised host.
    pub host: String,
    /// Connections holding it.
    pub connections: usize,
    /// The feature flag.
    pub flag: FlagState,
    /// Aggregation counters.
    pub aggregator: AggregatorStats,
    /// Export counters (breaker included).
    pub export: ExportStats,
}

/// Totals over every host client the provider has had (live and closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Events the driver emitted while telemetry was on.
    pub events_emitted: u64,
    /// Events dropped before becoming rows (queue full, after close, unknown statement, ...).
    pub events_dropped: u64,
    /// Rows built.
    pub rows_produced: u64,
    /// Rows the server accepted.
    pub rows_exported: u64,
    /// Rows dropped, by reason (aggregator and exporter reasons together).
    pub rows_dropped: BTreeMap<&'static str, u64>,
    /// Events dropped, by reason.
    pub events_dropped_by_reason: BTreeMap<&'static str, u64>,
    /// HTTP export requests (every attempt).
    pub export_requests: u64,
    /// Retries among them.
    pub export_retries: u64,
    /// Times a host's breaker opened.
    pub breaker_openings: u64,
    /// Host clients created.
    pub clients_created: u64,
    /// Host clients closed.
    pub clients_closed: u64,
    /// Live host clients, one entry each.
    pub hosts: Vec<HostStatsSummary>,
}

/// A live host in [`ProviderStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatsSummary {
    /// The normalised host.
    pub host: String,
    /// Connections holding it.
    pub connections: usize,
    /// The feature flag.
    pub flag: FlagState,
    /// The export breaker's state.
    pub breaker: &'static str,
}

impl ProviderStats {
    /// Rows dropped, all reasons.
    pub fn total_rows_dropped(&self) -> u64 {
        self.rows_dropped.values().sum()
    }

    fn add(&mut self, agg: &AggregatorStats, export: &ExportStats) {
        self.events_emitted += agg.events_emitted();
        self.events_dropped += agg.events_dropped();
        self.rows_produced += agg.rows_produced;
        self.rows_exported += export.rows_exported;
        self.export_requests += export.requests;
        self.export_retries += export.retries;
        self.breaker_openings += export.breaker.openings;
        for (reason, n) in agg.event_drops() {
            *self.events_dropped_by_reason.entry(reason).or_default() += n;
        }
        for (reason, n) in agg.row_drops() {
            *self.rows_dropped.entry(reason).or_default() += n;
        }
        for (reason, n) in &export.rows_dropped {
            *self.rows_dropped.entry(reason.as_str()).or_default() += n;
        }
    }
}

pub(crate) struct ProviderInner {
    options: ProviderOptions,
    pub(crate) config: TelemetryConfig,
    runtime: Handle,
    switch_off: bool,
    user_agent: String,
    system_configuration: DriverSystemConfiguration,
    transport: Option<Arc<dyn HttpTransport>>,
    flags: FeatureFlagCache,
    breakers: CircuitBreakerRegistry<String>,
    hosts: Mutex<HashMap<Host, Entry>>,
    retired: Mutex<ProviderStats>,
    closing: Mutex<Vec<JoinHandle<()>>>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code in these critical sections panics; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The entry point for a driver: one per process (or per driver instance), holding one shared
/// telemetry client per workspace host. Cheap to clone.
#[derive(Clone)]
pub struct TelemetryClientProvider {
    pub(crate) inner: Arc<ProviderInner>,
}

impl fmt::Debug for TelemetryClientProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryClientProvider")
            .field("hosts", &self.host_count())
            .finish_non_exhaustive()
    }
}

impl TelemetryClientProvider {
    /// A provider. Never fails: a problem (invalid config, TLS setup) disables telemetry and
    /// is logged at debug. Background work runs on `options.runtime`, or on a dedicated thread
    /// with a current-thread runtime.
    pub fn new(options: ProviderOptions) -> Self {
        let switch = options
            .switch
            .clone()
            .unwrap_or_else(DisableSwitch::from_env);
        let mut config = options.config.clone();
        if let Err(e) = config.validate() {
            tracing::debug!(error = %e, "invalid telemetry config; telemetry disabled");
            config = TelemetryConfig {
                enabled: false,
                ..TelemetryConfig::default()
            };
        }
        let (runtime, shutdown) = match options.runtime.clone() {
            Some(h) => (h, None),
            None => own_runtime(),
        };
        let transport = options.transport.clone().or_else(|| match HyperTransport::new() {
            Ok(t) => Some(Arc::new(t) as Arc<dyn HttpTransport>),
            Err(e) => {
                tracing::debug!(error = %e, "telemetry transport unavailable; telemetry disabled");
                None
            }
        });
        let user_agent = redact(
            &options
                .user_agent
                .clone()
                .unwrap_or_else(|| format!("{}/{}", options.driver_name, options.driver_version)),
        );
        let flag_source: Arc<dyn FlagSource> = match (&options.flag_source, &transport) {
            (Some(s), _) => s.clone(),
            (None, Some(t)) => Arc::new(
                HttpFlagSource::new(
                    t.clone(),
                    options.flag_preset.clone(),
                    &options.driver_version,
                    user_agent.clone(),
                )
                .with_timeout(config.request_timeout),
            ),
            (None, None) => Arc::new(NoFlags),
        };
        let flag_config = FlagCacheConfig {
            switch: switch.clone(),
            default_ttl: config.flag_ttl,
            ..options.flag_cache.clone().unwrap_or_default()
        };
        let system_configuration = options.system_configuration.clone().unwrap_or_else(|| {
            default_system_configuration(&options.driver_name, &options.driver_version)
        });
        Self {
            inner: Arc::new(ProviderInner {
                switch_off: switch.is_disabled() || transport.is_none(),
                flags: FeatureFlagCache::new(flag_source, flag_config, runtime.clone()),
                breakers: CircuitBreakerRegistry::new(breaker_config(&config)),
                config,
                runtime,
                user_agent,
                system_configuration,
                transport,
                hosts: Mutex::new(HashMap::new()),
                retired: Mutex::new(ProviderStats::default()),
                closing: Mutex::new(Vec::new()),
                shutdown: Mutex::new(shutdown),
                options,
            }),
        }
    }

    /// Registers a connection. Synchronous and never waits on the network: the first
    /// connection to a host creates its client (the flag resolves in the background), later
    /// ones share it. Returns a disabled handle (every method a no-op) when telemetry is off
    /// for this connection or the host is invalid.
    pub fn connect(&self, options: ConnectionOptions) -> Connection {
        let inner = &self.inner;
        let enabled = !inner.switch_off && options.enabled.unwrap_or(inner.config.enabled);
        if !enabled {
            return Connection::disabled();
        }
        let host = match Host::parse(&options.host, inner.config.allow_insecure_loopback) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry disabled for a connection with an invalid host");
                return Connection::disabled();
            }
        };
        let mut info = ConnectionInfo::new(host.clone(), inner.user_agent.clone());
        info.workspace_id = options
            .http_path
            .as_deref()
            .and_then(workspace_id_from_http_path);
        info.session_id = options.session_id;
        info.auth_type = options.auth_type;
        info.connection_params = options.connection_params;
        let mut sys = inner.system_configuration.clone();
        if options.client_app_name.is_some() {
            sys.client_app_name = options.client_app_name;
        }
        info.system_configuration = Some(sys);
        info.auth = options.auth.clone();
        let client = self.acquire(&host, options.auth);
        Connection::new(self.clone(), Arc::new(info), client)
    }

    fn acquire(&self, host: &Host, auth: Option<Arc<dyn AuthProvider>>) -> Arc<HostClient> {
        let inner = &self.inner;
        let mut hosts = lock(&inner.hosts);
        if let Some(e) = hosts.get_mut(host) {
            e.refs += 1;
            return e.client.clone();
        }
        let flag = Arc::new(inner.flags.acquire(host, auth));
        let lease = inner.breakers.lease(host.to_string());
        let transport = inner
            .transport
            .clone()
            .unwrap_or_else(|| Arc::new(NoTransport) as Arc<dyn HttpTransport>);
        let exporter = Arc::new(
            DatabricksExporter::new(
                host.clone(),
                inner.config.clone(),
                transport,
                lease.breaker().clone(),
                flag.clone(),
                inner.user_agent.clone(),
            )
            .with_extra_headers(inner.options.extra_headers.clone()),
        );
        let aggregator = Aggregator::spawn(&inner.config, exporter.clone(), &inner.runtime);
        let client = Arc::new(HostClient {
            host: host.clone(),
            aggregator,
            exporter,
            flag_state: flag.state_cell(),
            flag,
            _breaker: lease,
        });
        lock(&inner.retired).clients_created += 1;
        tracing::debug!(host = %host, "telemetry client created");
        hosts.insert(
            host.clone(),
            Entry {
                client: client.clone(),
                refs: 1,
            },
        );
        client
    }

    /// Releases one reference; the last one closes the host's client (final flush, bounded by
    /// the close timeout). Returns the close's completion signal if this was the last.
    pub(crate) fn release(&self, client: &Arc<HostClient>) -> Option<oneshot::Receiver<()>> {
        let inner = &self.inner;
        let mut hosts = lock(&inner.hosts);
        let entry = hosts.get_mut(&client.host)?;
        if !Arc::ptr_eq(&entry.client, client) {
            return None;
        }
        entry.refs -= 1;
        if entry.refs > 0 {
            return None;
        }
        let entry = hosts.remove(&client.host)?;
        drop(hosts);
        let (tx, rx) = oneshot::channel();
        let provider = self.inner.clone();
        let deadline_in = inner.config.close_timeout;
        let task = inner.runtime.spawn(async move {
            let client = entry.client;
            client.aggregator.close(Instant::now() + deadline_in).await;
            let mut retired = lock(&provider.retired);
            retired.add(&client.aggregator.stats(), &client.exporter.stats());
            retired.clients_closed += 1;
            drop(retired);
            tracing::debug!(host = %client.host, "telemetry client closed");
            let _ = tx.send(());
        });
        let mut closing = lock(&inner.closing);
        closing.retain(|h| !h.is_finished());
        closing.push(task);
        Some(rx)
    }

    /// The runtime background work runs on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// Connections holding `host` (normalised the same way as `connect`).
    pub fn ref_count(&self, host: &str) -> usize {
        let Ok(host) = Host::parse(host, self.inner.config.allow_insecure_loopback) else {
            return 0;
        };
        lock(&self.inner.hosts).get(&host).map_or(0, |e| e.refs)
    }

    /// Hosts with a live client.
    pub fn host_count(&self) -> usize {
        lock(&self.inner.hosts).len()
    }

    /// Statistics of one live host.
    pub fn host_stats(&self, host: &str) -> Option<HostStats> {
        let host = Host::parse(host, self.inner.config.allow_insecure_loopback).ok()?;
        lock(&self.inner.hosts)
            .get(&host)
            .map(|e| e.client.stats(e.refs))
    }

    /// Totals over every host client, live and closed.
    pub fn stats(&self) -> ProviderStats {
        let mut total = lock(&self.inner.retired).clone();
        for e in lock(&self.inner.hosts).values() {
            let s = e.client.stats(e.refs);
            total.add(&s.aggregator, &s.export);
            total.hosts.push(HostStatsSummary {
                host: s.host,
                connections: e.refs,
                flag: s.flag,
                breaker: s.export.breaker.state.map_or("closed", |b| b.as_str()),
            });
        }
        total
    }

    /// Waits until every host client released so far has finished closing (bounded by the
    /// close timeout of each). Live connections are not touched.
    pub async fn wait_closed(&self) {
        let handles: Vec<_> = lock(&self.inner.closing).drain(..).collect();
        let (tx, rx) = oneshot::channel();
        self.inner.runtime.spawn(async move {
            for h in handles {
                let _ = h.await;
            }
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

impl Drop for ProviderInner {
    fn drop(&mut self) {
        // Every connection is gone (each holds the provider), so every host client has been
        // released. Stop the owned runtime once the closes in progress end.
        let closing: Vec<_> = lock(&self.closing).drain(..).collect();
        let shutdown = lock(&self.shutdown).take();
        let limit = self.config.close_timeout + Duration::from_millis(500);
        self.runtime.spawn(async move {
            let _ = tokio::time::timeout(limit, async {
                for h in closing {
                    let _ = h.await;
                }
            })
            .await;
            if let Some(tx) = shutdown {
                let _ = tx.send(());
            }
        });
    }
}

/// Starts the provider's own runtime: one thread, current-thread runtime, alive until the
/// returned sender fires (or is dropped).
fn own_runtime() -> (Handle, Option<oneshot::Sender<()>>) {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("databricks-telemetry".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::debug!(error = %e, "telemetry runtime could not start");
                    return;
                }
            };
            let _ = handle_tx.send(rt.handle().clone());
            rt.block_on(async move {
                let _ = stop_rx.await;
            });
            rt.shutdown_background();
        });
    match spawned.ok().and_then(|_| handle_rx.recv().ok()) {
        Some(handle) => (handle, Some(stop_tx)),
        None => {
            // No thread or no runtime: fall back to the caller's runtime if there is one, else
            // a runtime that is never driven (telemetry then does nothing, harmlessly).
            let handle = Handle::try_current().unwrap_or_else(|_| idle_runtime());
            (handle, None)
        }
    }
}

/// A handle to a runtime nobody drives: spawned tasks never run. Only reached if the OS
/// refuses a thread; telemetry is then inert rather than failing the driver.
fn idle_runtime() -> Handle {
    static IDLE: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    IDLE.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().ok())
        .as_ref()
        .map(|rt| rt.handle().clone())
        .unwrap_or_else(|| {
            // Both the thread and a bare runtime failed: the process is out of resources.
            // Handle::current panics outside a runtime, so this is the one place we cannot
            // continue; it is unreachable in practice (building a runtime without I/O or
            // timers only allocates).
            Handle::current()
        })
}

/// Used when no transport could be built: every look-up fails (disabled).
struct NoFlags;

impl FlagSource for NoFlags {
    fn fetch<'a>(
        &'a self,
        _host: &'a Host,
        _auth: Option<&'a dyn AuthProvider>,
    ) -> telemetry_types::traits::BoxFuture<
        'a,
        Result<telemetry_types::traits::FlagAnswer, telemetry_types::traits::FlagError>,
    > {
        Box::pin(async { Err(telemetry_types::traits::FlagError::Status(0)) })
    }
}

/// Used when no transport could be built: every request fails.
struct NoTransport;

impl HttpTransport for NoTransport {
    fn send(
        &self,
        _request: telemetry_types::traits::HttpRequest,
    ) -> telemetry_types::traits::BoxFuture<
        '_,
        Result<telemetry_types::traits::HttpResponse, telemetry_types::traits::TransportError>,
    > {
        Box::pin(async {
            Err(telemetry_types::traits::TransportError::new(
                telemetry_types::classify::TransportErrorKind::Other,
                "no transport",
            ))
        })
    }
}

pub(crate) fn flag_off(state: &AtomicU8) -> bool {
    state.load(Ordering::Relaxed) == FlagState::Disabled as u8
}
