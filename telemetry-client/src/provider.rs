//! The entry point: per workspace host one shared client, built on first use and reached by
//! connections through leases.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use telemetry_aggregator::Aggregator;
use telemetry_breaker::CircuitBreakerRegistry;
use telemetry_export::{DatabricksExporter, HyperTransport};
use telemetry_flags::{DisableSwitch, FeatureFlagCache, HttpFlagSource};
use telemetry_types::BoxFuture;
use telemetry_types::auth::AuthProvider;
use telemetry_types::classify::TransportErrorKind;
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::flag::{FlagAnswer, FlagError, FlagSource};
use telemetry_types::host::Host;
use telemetry_types::redact::redact_user_agent;
use telemetry_types::transport::{
    ExtraHeaders, HttpRequest, HttpResponse, HttpTransport, TransportError,
};
use telemetry_types::wire::DriverSystemConfiguration;
use tokio::sync::oneshot;

use crate::config::TelemetryConfig;
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

/// What every host client of a provider is built from.
struct ProviderInner {
    config: TelemetryConfig,
    /// Why every connection is off, when it is: env switch, invalid config, no transport.
    off: Option<DisabledReason>,
    /// Connections given a disabled handle, by reason; each reason logged once.
    disabled: [AtomicU64; DisabledReason::ALL.len()],
    /// Set by `shutdown`: later connections get disabled handles.
    shut_down: AtomicBool,
    runtime: Arc<BackgroundRuntime>,
    user_agent: String,
    system_configuration: DriverSystemConfiguration,
    extra_headers: ExtraHeaders,
    transport: Arc<dyn HttpTransport>,
    flags: FeatureFlagCache,
    breakers: CircuitBreakerRegistry<String>,
    registry: Arc<HostRegistry>,
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
        &self.inner.registry
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
    /// A provider. Never fails: a problem (invalid config, TLS setup) disables telemetry and
    /// is logged (warn). Background work runs on `options.runtime`, or on the provider's own
    /// multi-thread runtime with one worker.
    pub fn new(options: ProviderOptions) -> Self {
        let switch = options
            .switch
            .clone()
            .unwrap_or_else(DisableSwitch::from_env);
        let mut config = options.config.clone();
        if options.read_env
            && let Err(e) = config.apply_env(|k| std::env::var(k).ok())
        {
            tracing::warn!(error = %e, "telemetry environment override ignored");
            config = options.config.clone();
        }
        let mut off = switch.is_disabled().then_some(DisabledReason::EnvSwitch);
        if let Err(e) = config.validate() {
            tracing::warn!(error = %e, "invalid telemetry config; telemetry disabled");
            config = TelemetryConfig::default();
            off = off.or(Some(DisabledReason::InvalidConfig));
        }
        config.flags.switch = switch.clone();
        // One setting bounds every call into an auth provider, exports and flag look-ups.
        config.flags.auth_timeout = config.export.auth_timeout;
        let extra_headers = match ExtraHeaders::try_from_pairs(options.extra_headers.clone()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "telemetry header refused; telemetry disabled");
                off = off.or(Some(DisabledReason::InvalidHeader));
                ExtraHeaders::default()
            }
        };
        let runtime = Arc::new(BackgroundRuntime::new(options.runtime.clone()));
        let transport = options.transport.clone().or_else(|| match HyperTransport::new() {
            Ok(t) => Some(Arc::new(t) as Arc<dyn HttpTransport>),
            Err(e) => {
                tracing::warn!(error = %e, "telemetry transport unavailable; telemetry disabled");
                None
            }
        });
        if transport.is_none() {
            off = off.or(Some(DisabledReason::TransportSetup));
        }
        let user_agent = redact_user_agent(
            &options
                .user_agent
                .clone()
                .unwrap_or_else(|| format!("{}/{}", options.driver_name, options.driver_version)),
        );
        let flag_source: Arc<dyn FlagSource> = match (&options.flag_source, &transport) {
            _ if config.force_enable => Arc::new(AlwaysOn),
            (Some(s), _) => s.clone(),
            (None, Some(t)) => Arc::new(
                HttpFlagSource::new(
                    t.clone(),
                    options.flag_preset.clone(),
                    &options.driver_version,
                    user_agent.clone(),
                )
                .with_timeout(config.export.request_timeout),
            ),
            (None, None) => Arc::new(NoFlags),
        };
        let system_configuration = options.system_configuration.clone().unwrap_or_else(|| {
            default_system_configuration(&options.driver_name, &options.driver_version)
        });
        Self {
            inner: Arc::new(ProviderInner {
                off,
                disabled: Default::default(),
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
                config,
                shut_down: AtomicBool::new(false),
                runtime,
                user_agent,
                system_configuration,
                extra_headers,
                transport: transport.unwrap_or_else(|| Arc::new(NoTransport)),
            }),
        }
    }

    /// Registers a connection. Synchronous and never waits on the network: the first
    /// connection to a host creates its client (the flag resolves in the background), later
    /// ones share it. Returns a disabled handle (every method a no-op) when telemetry is off
    /// for this connection or the host is invalid.
    pub fn connect(&self, options: ConnectionOptions) -> Connection {
        let inner = &self.inner;
        if let Some(reason) = inner.off {
            return self.disabled(reason);
        }
        if inner.shut_down.load(Ordering::Acquire) {
            return self.disabled(DisabledReason::ShutDown);
        }
        if !options.enabled.unwrap_or(inner.config.enabled) {
            return self.disabled(DisabledReason::Config);
        }
        let host = match Host::parse(&options.host, inner.config.allow_insecure_loopback) {
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
        let mut sys = inner.system_configuration.clone();
        if options.client_app_name.is_some() {
            sys.client_app_name = options.client_app_name;
        }
        info.system_configuration = Some(sys);
        info.auth = options.auth.clone();
        info.transport = options.transport;
        info.extra_headers = match ExtraHeaders::try_from_pairs(options.extra_headers)
            .and_then(|own| inner.extra_headers.merged(&own))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry disabled for a connection with a refused header");
                return self.disabled(DisabledReason::InvalidHeader);
            }
        };
        let transport = info.transport.clone();
        let lease = inner.registry.lease(&host, inner.config.max_hosts, || {
            inner.host_client(&host, options.auth, transport)
        });
        match lease {
            Some(lease) => Connection::new(Arc::new(info), lease),
            None => {
                tracing::debug!(host = %host, max_hosts = inner.config.max_hosts, "telemetry disabled for a connection: too many hosts");
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
        Host::parse(host, self.inner.config.allow_insecure_loopback).ok()
    }

    /// Connections holding `host` (normalised the same way as `connect`).
    pub fn ref_count(&self, host: &str) -> usize {
        self.parse_host(host)
            .map_or(0, |h| self.inner.registry.lease_count(&h))
    }

    /// Hosts with a live client.
    pub fn host_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// Statistics of one live host.
    pub fn host_stats(&self, host: &str) -> Option<HostStats> {
        self.inner.registry.host_stats(&self.parse_host(host)?)
    }

    /// Totals over every host client, live and closed, and the connections given disabled
    /// handles.
    pub fn stats(&self) -> ProviderStats {
        let mut stats = self.inner.registry.stats();
        stats.disabled_connections = DisabledReason::ALL
            .iter()
            .map(|r| (*r, self.inner.disabled[r.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        stats
    }

    /// Hands every row produced so far, on every host, to the endpoint and waits until each
    /// is settled (exported, or dropped with a counted reason), at most `timeout` (and at most
    /// the close timeout per host). Needs no particular runtime: it only awaits a signal.
    ///
    /// `Err(Timeout)` names the hosts whose rows were still in flight when time ran out;
    /// they go on in the background.
    pub async fn force_flush(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let clients = self.inner.registry.live();
        let waits = clients
            .into_iter()
            .map(|c| {
                let (tx, rx) = oneshot::channel();
                let host = c.core.host.to_string();
                self.inner.runtime.handle.spawn(async move {
                    c.core.aggregator.flush().await;
                    let _ = tx.send(());
                });
                (host, rx)
            })
            .collect();
        self.wait_all(waits, timeout).await
    }

    /// Stops telemetry: later connections get disabled handles, every host's client is
    /// closed (final flush) by `timeout`, and what is not settled by then is dropped and
    /// counted (`shutdown`). Idempotent. Needs no particular runtime.
    ///
    /// `Err(Timeout)` names the hosts whose close was still running when time ran out.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), TelemetryError> {
        self.inner.shut_down.store(true, Ordering::Release);
        let deadline = deadline_after(timeout);
        let closes = self
            .inner
            .registry
            .close_all(deadline)
            .into_iter()
            .map(|(host, rx)| (host.to_string(), rx))
            .collect();
        let result = self.wait_all(closes, timeout).await;
        self.wait_closed().await;
        result
    }

    /// [`force_flush`](Self::force_flush) for callers without an async context: blocks this
    /// thread at most `timeout` (plus a little). From inside an async task prefer the async
    /// form; on a current-thread runtime that also runs the provider's work, this can only
    /// time out.
    pub fn force_flush_blocking(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let this = self.clone();
        self.block_on(async move { this.force_flush(timeout).await }, timeout)
    }

    /// [`shutdown`](Self::shutdown) for callers without an async context (see
    /// [`force_flush_blocking`](Self::force_flush_blocking)).
    pub fn shutdown_blocking(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let this = self.clone();
        self.block_on(async move { this.shutdown(timeout).await }, timeout)
    }

    fn block_on(
        &self,
        work: impl std::future::Future<Output = Result<(), TelemetryError>> + Send + 'static,
        timeout: Duration,
    ) -> Result<(), TelemetryError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.runtime.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        let limit = timeout.saturating_add(Duration::from_millis(200));
        rx.recv_timeout(limit)
            .unwrap_or(Err(TelemetryError::Timeout { hosts: Vec::new() }))
    }

    /// Waits for every signal, all within one `timeout`; the hosts still waiting then are the
    /// error.
    async fn wait_all(
        &self,
        waits: Vec<(String, oneshot::Receiver<()>)>,
        timeout: Duration,
    ) -> Result<(), TelemetryError> {
        let (tx, rx) = oneshot::channel();
        self.inner.runtime.handle.spawn(async move {
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
        let handles = self.inner.registry.take_closing();
        let (tx, rx) = oneshot::channel();
        self.inner.runtime.handle.spawn(async move {
            for h in handles {
                let _ = h.await;
            }
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

impl ProviderInner {
    /// A new client for `host`: its flag (looked up with the first connection's credentials,
    /// through its transport when it brings one),
    /// its breaker, its exporter and its aggregator task.
    fn host_client(
        &self,
        host: &Host,
        auth: Option<Arc<dyn AuthProvider>>,
        transport: Option<Arc<dyn HttpTransport>>,
    ) -> HostClient {
        let flag = Arc::new(self.flags.acquire_via(host, auth, transport));
        let breaker = self.breakers.lease(host.to_string());
        let exporter = Arc::new(DatabricksExporter::new(
            host.clone(),
            self.config.export.clone(),
            self.transport.clone(),
            breaker.breaker().clone(),
            flag.clone(),
            self.user_agent.clone(),
        ));
        let aggregator = Aggregator::spawn(
            &self.config.aggregation,
            exporter.clone(),
            &self.runtime.handle,
        );
        HostClient {
            core: Arc::new(HostCore::new(host.clone(), aggregator)),
            exporter,
            flag,
            _breaker: breaker,
        }
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

/// Used when no transport could be built: every look-up fails (disabled).
struct NoFlags;

impl FlagSource for NoFlags {
    fn fetch<'a>(
        &'a self,
        _host: &'a Host,
        _auth: Option<&'a dyn AuthProvider>,
    ) -> BoxFuture<'a, Result<FlagAnswer, FlagError>> {
        Box::pin(async { Err(FlagError::Status(0)) })
    }
}

/// Used when no transport could be built: every request fails.
struct NoTransport;

impl HttpTransport for NoTransport {
    fn send(&self, _request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async {
            Err(TransportError::new(
                TransportErrorKind::Other,
                "no transport",
            ))
        })
    }
}
