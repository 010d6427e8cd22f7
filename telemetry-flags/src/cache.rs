use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use telemetry_types::BoxFuture;
use telemetry_types::auth::AuthProvider;
use telemetry_types::boundary::{self, ResolvedAuth};
use telemetry_types::classify::TransportErrorKind;
use telemetry_types::clock::saturating_add;
use telemetry_types::flag::{FlagAnswer, FlagError, FlagGate, FlagSource, FlagState};
use telemetry_types::host::Host;
use telemetry_types::transport::HttpTransport;
use telemetry_types::validation::ConfigError;

use crate::switch::DisableSwitch;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Settings of the cache: declared, defaulted and validated here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlagCacheConfig {
    /// How long an answer is kept when the server gives no TTL. Default 15 min; 1 s..=1 day.
    pub default_ttl: Duration,
    /// Lower clamp of a server TTL. Default 60 s; 1 s..=`max_ttl`.
    pub min_ttl: Duration,
    /// Upper clamp of a server TTL. Default 3600 s; at most 1 day.
    pub max_ttl: Duration,
    /// Wait before retrying after a failed look-up; doubles each time. Default 60 s;
    /// 1 s..=`max_failure_backoff`.
    pub failure_backoff: Duration,
    /// Largest failure backoff. Default 15 min; at most 1 day.
    pub max_failure_backoff: Duration,
    /// Guard around one look-up, in case a source ignores its own timeout. Default 15 s;
    /// 1 s..=10 min.
    pub fetch_guard: Duration,
    /// How long a look-up waits for one auth provider's credentials before it tries the
    /// host's next known credentials. Default 5 s; 1 ms..=1 min. The facade sets it from its
    /// `export.auth_timeout`, so that one setting bounds every call into a provider.
    pub auth_timeout: Duration,
    /// How long a look-up waits for credentials when it has none yet but a connection said
    /// they are coming ([`FlagHandle::expect_credentials`]), instead of asking without them.
    /// Past it the look-up fails ([`FlagFailure::Auth`], counted) and is retried at once when
    /// credentials arrive. Default 60 s; 0 (do not wait)..=10 min.
    pub credentials_wait: Duration,
    /// The off switch; [`FlagCacheConfig::default`] reads it from the environment.
    pub switch: DisableSwitch,
}

impl Default for FlagCacheConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(15 * 60),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            failure_backoff: Duration::from_secs(60),
            max_failure_backoff: Duration::from_secs(15 * 60),
            fetch_guard: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(5),
            credentials_wait: Duration::from_secs(60),
            switch: DisableSwitch::from_env(),
        }
    }
}

impl FlagCacheConfig {
    /// Checks every value against its bounds; the first one out of range is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const SECOND: Duration = Duration::from_secs(1);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        ConfigError::check_range(
            self.default_ttl,
            SECOND,
            DAY,
            "flags.default_ttl",
            "must be in 1 s..=1 day",
        )?;
        ConfigError::check_range(
            self.max_ttl,
            SECOND,
            DAY,
            "flags.max_ttl",
            "must be in 1 s..=1 day",
        )?;
        ConfigError::check_range(
            self.min_ttl,
            SECOND,
            self.max_ttl,
            "flags.min_ttl",
            "must be in 1 s..=max_ttl",
        )?;
        ConfigError::check_range(
            self.max_failure_backoff,
            SECOND,
            DAY,
            "flags.max_failure_backoff",
            "must be in 1 s..=1 day",
        )?;
        ConfigError::check_range(
            self.failure_backoff,
            SECOND,
            self.max_failure_backoff,
            "flags.failure_backoff",
            "must be in 1 s..=max_failure_backoff",
        )?;
        ConfigError::check_range(
            self.fetch_guard,
            SECOND,
            Duration::from_secs(600),
            "flags.fetch_guard",
            "must be in 1 s..=10 min",
        )?;
        ConfigError::check_range(
            self.auth_timeout,
            Duration::from_millis(1),
            Duration::from_secs(60),
            "flags.auth_timeout",
            "must be in 1 ms..=1 min",
        )?;
        ConfigError::check_range(
            self.credentials_wait,
            Duration::ZERO,
            Duration::from_secs(600),
            "flags.credentials_wait",
            "must be in 0..=10 min",
        )
    }

    /// The TTL to use for a server's answer.
    pub fn effective_ttl(&self, server_ttl: Option<Duration>) -> Duration {
        server_ttl.map_or(self.default_ttl, |t| {
            t.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
        })
    }
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagCacheStats {
    /// Look-ups started.
    pub fetches: u64,
    /// Look-ups that failed (each meant "disabled").
    pub failures: u64,
    /// Hosts with at least one handle.
    pub hosts: usize,
}

struct HostContext {
    host: Host,
    state: Arc<AtomicU8>,
    tx: watch::Sender<FlagState>,
    /// The host's known credentials, most recent first, each with the HTTP stack of its
    /// connection (if it has its own): a look-up uses the first that answers in time.
    credentials: Mutex<Vec<Credential>>,
    /// Fired when new credentials arrive (or a connection stops waiting for its own).
    new_credentials: Notify,
    /// Connections registered without credentials that said theirs are coming.
    awaiting: AtomicUsize,
    /// The HTTP stack of the latest connection that brought one, for look-ups made
    /// without credentials (a connection with its own transport and no credentials).
    transport: Mutex<Option<Arc<dyn HttpTransport>>>,
    task: Mutex<Option<AbortHandle>>,
    /// Why the last look-up failed (cleared by an answer).
    failure: Mutex<Option<FlagFailure>>,
}

/// Why a feature-flag look-up failed (telemetry is then off for the host until a later
/// look-up answers), as distinct from the server answering "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlagFailure {
    /// The host name did not resolve.
    Dns,
    /// No answer in time.
    Timeout,
    /// Connecting or talking to the server failed (refused, reset, TLS, proxy).
    Network,
    /// The server answered with this non-2xx status.
    Status(u16),
    /// The answer was not the expected JSON (or too large).
    Malformed,
    /// No credentials could be had: every auth provider known for the host failed or did
    /// not answer within the auth timeout (retried at once when a connection brings others).
    Auth,
    /// The flag-source plug-in panicked (the look-up failed closed; the next one is tried
    /// after the backoff, as for any failure).
    Plugin,
}

impl FlagFailure {
    fn of(error: &FlagError) -> Self {
        match error {
            FlagError::Status(s) => Self::Status(*s),
            FlagError::Malformed(_) => Self::Malformed,
            FlagError::Auth(_) => Self::Auth,
            FlagError::Plugin(_) => Self::Plugin,
            FlagError::Transport(t) => match t.kind {
                TransportErrorKind::DnsTemporary | TransportErrorKind::DnsPermanent => Self::Dns,
                TransportErrorKind::Timeout => Self::Timeout,
                _ => Self::Network,
            },
            _ => Self::Network,
        }
    }
}

impl std::fmt::Display for FlagFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns => f.write_str("dns"),
            Self::Timeout => f.write_str("timeout"),
            Self::Network => f.write_str("network"),
            Self::Status(s) => write!(f, "status {s}"),
            Self::Malformed => f.write_str("malformed answer"),
            Self::Auth => f.write_str("no credentials answered"),
            Self::Plugin => f.write_str("flag source panicked"),
        }
    }
}

/// Credentials of one connection, and the HTTP stack they go through.
#[derive(Clone)]
struct Credential {
    auth: Arc<dyn AuthProvider>,
    transport: Option<Arc<dyn HttpTransport>>,
}

/// Credentials remembered per host, at most: the most recent connections'.
const MAX_CREDENTIALS: usize = 4;

impl HostContext {
    /// Remembers `auth` first (once per provider object), dropping the oldest past the cap.
    fn add_credential(
        &self,
        auth: Arc<dyn AuthProvider>,
        transport: Option<Arc<dyn HttpTransport>>,
    ) {
        let mut list = lock(&self.credentials);
        list.retain(|c| !Arc::ptr_eq(&c.auth, &auth));
        list.insert(0, Credential { auth, transport });
        list.truncate(MAX_CREDENTIALS);
    }

    /// What a connection brings: its credentials (tried first from now on; a look-up
    /// waiting for credentials goes on at once) and its transport.
    fn add(&self, auth: Option<Arc<dyn AuthProvider>>, transport: Option<Arc<dyn HttpTransport>>) {
        if let Some(t) = &transport {
            *lock(&self.transport) = Some(t.clone());
        }
        if let Some(auth) = auth {
            self.add_credential(auth, transport);
            self.new_credentials.notify_one();
        }
    }

    /// Waits, at most `wait`, until credentials are known or no connection awaits any;
    /// returns whether credentials are known.
    async fn credentials_within(&self, wait: Duration) -> bool {
        let arrived = async {
            loop {
                let notified = self.new_credentials.notified();
                if !lock(&self.credentials).is_empty() || self.awaiting.load(Ordering::Acquire) == 0
                {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(wait, arrived).await;
        !lock(&self.credentials).is_empty()
    }

    fn set(&self, state: FlagState) {
        self.state.store(state as u8, Ordering::Release);
        self.tx.send_replace(state);
    }
}

struct Entry {
    ctx: Arc<HostContext>,
    refs: usize,
}

/// A host's last answer (or failure), remembered past the removal of its context until the
/// answer's TTL (or the failure's backoff) ends: a driver that opens one connection per
/// request reuses it instead of looking the flag up again.
#[derive(Clone, Copy)]
struct Memo {
    state: FlagState,
    /// When the answer expires: the next look-up is due then.
    refresh_at: Instant,
    /// The failure backoff to use after the next failure.
    backoff: Duration,
}

/// Hosts whose answer is remembered, at most; past it the one expiring first goes.
const MAX_MEMOS: usize = 1024;

struct Inner {
    source: Arc<dyn FlagSource>,
    config: FlagCacheConfig,
    runtime: Handle,
    hosts: Mutex<HashMap<Host, Entry>>,
    memos: Mutex<HashMap<Host, Memo>>,
    fetches: AtomicU64,
    failed: AtomicU64,
}

/// The per-host feature-flag cache. Cheap to clone; clones share hosts.
#[derive(Clone)]
pub struct FeatureFlagCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for FeatureFlagCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeatureFlagCache")
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here cannot panic; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FeatureFlagCache {
    /// A cache that looks flags up through `source`, running its background refreshes on
    /// `runtime`.
    pub fn new(source: Arc<dyn FlagSource>, config: FlagCacheConfig, runtime: Handle) -> Self {
        if let DisableSwitch::Ignored(value) = &config.switch {
            tracing::warn!(
                value = %value,
                "{} has an unrecognised value and is ignored (use 1, true, yes or on)",
                crate::switch::DISABLE_ENV_VAR
            );
        }
        Self {
            inner: Arc::new(Inner {
                source,
                config,
                runtime,
                hosts: Mutex::new(HashMap::new()),
                memos: Mutex::new(HashMap::new()),
                fetches: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// Takes a reference on `host`'s context, creating it (and starting its background
    /// look-up) if this is the first. Never waits on the network. `auth`, when given, is used
    /// for this host's look-ups from now on.
    pub fn acquire(&self, host: &Host, auth: Option<Arc<dyn AuthProvider>>) -> FlagHandle {
        self.acquire_via(host, auth, None)
    }

    /// [`acquire`](Self::acquire) for a connection with its own HTTP stack: look-ups made
    /// with its credentials go through `transport` (its proxy, its TLS).
    pub fn acquire_via(
        &self,
        host: &Host,
        auth: Option<Arc<dyn AuthProvider>>,
        transport: Option<Arc<dyn HttpTransport>>,
    ) -> FlagHandle {
        self.acquire_inner(host, auth, transport, false).0
    }

    /// [`acquire_via`](Self::acquire_via) for a connection registered before it has
    /// credentials, that says they are coming: the guard is taken before any look-up starts,
    /// so the first look-up waits for them (see [`FlagHandle::expect_credentials`]).
    pub fn acquire_expecting_credentials(
        &self,
        host: &Host,
        transport: Option<Arc<dyn HttpTransport>>,
    ) -> (FlagHandle, PendingCredentials) {
        let (handle, pending) = self.acquire_inner(host, None, transport, true);
        let pending = pending.unwrap_or_else(|| handle.expect_credentials());
        (handle, pending)
    }

    fn acquire_inner(
        &self,
        host: &Host,
        auth: Option<Arc<dyn AuthProvider>>,
        transport: Option<Arc<dyn HttpTransport>>,
        expecting: bool,
    ) -> (FlagHandle, Option<PendingCredentials>) {
        let mut hosts = lock(&self.inner.hosts);
        if let Some(entry) = hosts.get_mut(host) {
            entry.refs += 1;
            entry.ctx.add(auth, transport);
            let handle = FlagHandle {
                cache: self.clone(),
                ctx: entry.ctx.clone(),
            };
            let pending = expecting.then(|| handle.expect_credentials());
            return (handle, pending);
        }
        let (tx, _) = watch::channel(FlagState::Unknown);
        let ctx = Arc::new(HostContext {
            host: host.clone(),
            state: Arc::new(AtomicU8::new(FlagState::Unknown as u8)),
            tx,
            credentials: Mutex::new(Vec::new()),
            new_credentials: Notify::new(),
            awaiting: AtomicUsize::new(0),
            transport: Mutex::new(None),
            task: Mutex::new(None),
            failure: Mutex::new(None),
        });
        ctx.add(auth, transport);
        // Taken before the look-up is spawned, so that it sees it.
        let pending = expecting.then(|| {
            ctx.awaiting.fetch_add(1, Ordering::AcqRel);
            PendingCredentials { ctx: ctx.clone() }
        });
        if self.inner.config.switch.is_disabled() {
            ctx.set(FlagState::Disabled);
        } else {
            let memo = lock(&self.inner.memos).get(host).copied();
            let mut first_fetch = None;
            if let Some(memo) = memo.filter(|m| m.refresh_at > Instant::now()) {
                ctx.set(memo.state);
                first_fetch = Some(memo);
            }
            let task = self.inner.runtime.spawn(refresh_loop(
                self.inner.clone(),
                ctx.clone(),
                first_fetch,
            ));
            *lock(&ctx.task) = Some(task.abort_handle());
        }
        hosts.insert(
            host.clone(),
            Entry {
                ctx: ctx.clone(),
                refs: 1,
            },
        );
        (
            FlagHandle {
                cache: self.clone(),
                ctx,
            },
            pending,
        )
    }

    fn release(&self, ctx: &Arc<HostContext>) {
        let mut hosts = lock(&self.inner.hosts);
        let Some(entry) = hosts.get_mut(&ctx.host) else {
            return;
        };
        if !Arc::ptr_eq(&entry.ctx, ctx) {
            return;
        }
        entry.refs -= 1;
        if entry.refs == 0 {
            hosts.remove(&ctx.host);
            if let Some(task) = lock(&ctx.task).take() {
                task.abort();
            }
            tracing::debug!(host = %ctx.host, "feature-flag context removed");
        }
    }

    /// The state of `host` without taking a reference (`Unknown` if nobody holds it).
    pub fn state(&self, host: &Host) -> FlagState {
        lock(&self.inner.hosts)
            .get(host)
            .map_or(FlagState::Unknown, |e| {
                FlagState::from_u8(e.ctx.state.load(Ordering::Acquire))
            })
    }

    /// References held on `host`.
    pub fn ref_count(&self, host: &Host) -> usize {
        lock(&self.inner.hosts).get(host).map_or(0, |e| e.refs)
    }

    /// Hosts with at least one reference.
    pub fn host_count(&self) -> usize {
        lock(&self.inner.hosts).len()
    }

    /// Counters.
    pub fn stats(&self) -> FlagCacheStats {
        FlagCacheStats {
            fetches: self.inner.fetches.load(Ordering::Relaxed),
            failures: self.inner.failed.load(Ordering::Relaxed),
            hosts: self.host_count(),
        }
    }
}

impl Inner {
    /// Remembers `host`'s answer until `refresh_at`, within [`MAX_MEMOS`] hosts.
    fn remember(&self, host: &Host, memo: Memo) {
        let mut memos = lock(&self.memos);
        if memos.len() >= MAX_MEMOS && !memos.contains_key(host) {
            let now = Instant::now();
            memos.retain(|_, m| m.refresh_at > now);
            if memos.len() >= MAX_MEMOS
                && let Some(first) = memos
                    .iter()
                    .min_by_key(|(_, m)| m.refresh_at)
                    .map(|(h, _)| h.clone())
            {
                memos.remove(&first);
            }
        }
        memos.insert(host.clone(), memo);
    }
}

/// `d` from now on the runtime's clock, saturating (see [`saturating_add`]).
fn after(d: Duration) -> Instant {
    Instant::from_std(saturating_add(Instant::now().into_std(), d))
}

async fn refresh_loop(inner: Arc<Inner>, ctx: Arc<HostContext>, first: Option<Memo>) {
    let config = &inner.config;
    let mut backoff = config.failure_backoff;
    if let Some(memo) = first {
        backoff = memo.backoff;
        tokio::time::sleep_until(memo.refresh_at).await;
    }
    loop {
        inner.fetches.fetch_add(1, Ordering::Relaxed);
        let result = look_up(&inner, &ctx).await;
        let wait = match result {
            Ok(answer) => {
                lock(&ctx.failure).take();
                let state = if answer.enabled {
                    FlagState::Enabled
                } else {
                    FlagState::Disabled
                };
                let ttl = config.effective_ttl(answer.ttl);
                tracing::debug!(host = %ctx.host, state = state.as_str(), ttl_s = ttl.as_secs(), "feature flag fetched");
                ctx.set(state);
                backoff = config.failure_backoff;
                inner.remember(
                    &ctx.host,
                    Memo {
                        state,
                        refresh_at: after(ttl),
                        backoff,
                    },
                );
                ttl
            }
            Err(err) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                let failure = FlagFailure::of(&err);
                if lock(&ctx.failure).replace(failure).is_none() {
                    tracing::warn!(host = %ctx.host, reason = %failure, "telemetry is off for this host: its feature-flag look-up failed (retried in the background)");
                }
                tracing::debug!(host = %ctx.host, error = %err, retry_in_s = backoff.as_secs(), "feature-flag look-up failed; telemetry disabled");
                ctx.set(FlagState::Disabled);
                let wait = backoff;
                backoff = backoff
                    .saturating_mul(2)
                    .min(config.max_failure_backoff.max(config.failure_backoff));
                inner.remember(
                    &ctx.host,
                    Memo {
                        state: FlagState::Disabled,
                        refresh_at: after(wait),
                        backoff,
                    },
                );
                wait
            }
        };
        let no_credentials = matches!(*lock(&ctx.failure), Some(FlagFailure::Auth));
        if no_credentials {
            // Credentials a later connection brings are tried at once, not after the backoff;
            // rows wait for that answer instead of being dropped as disabled meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.new_credentials.notified() => ctx.set(FlagState::Unknown),
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One look-up: with the first of the host's credentials that answers within the auth
/// timeout (every call into a provider through the plug-in boundary), then the flag source
/// itself, contained and bounded by the fetch guard.
async fn look_up(inner: &Inner, ctx: &HostContext) -> Result<FlagAnswer, FlagError> {
    // A connection said its credentials are coming: wait for them (bounded) rather than
    // ask without, or ask the driver's provider before the driver itself did.
    if lock(&ctx.credentials).is_empty()
        && ctx.awaiting.load(Ordering::Acquire) > 0
        && !ctx.credentials_within(inner.config.credentials_wait).await
        && ctx.awaiting.load(Ordering::Acquire) > 0
    {
        return Err(FlagError::Auth(format!(
            "no credentials arrived within {:?}",
            inner.config.credentials_wait
        )));
    }
    let candidates = lock(&ctx.credentials).clone();
    let mut chosen: Option<(ResolvedAuth, Option<Arc<dyn HttpTransport>>)> = None;
    let mut failures = Vec::new();
    for c in &candidates {
        match boundary::auth_headers(&c.auth, inner.config.auth_timeout).await {
            Ok(Some(headers)) => {
                chosen = Some((ResolvedAuth::new(Some(headers)), c.transport.clone()));
                break;
            }
            // A provider without credentials: asked without them unless another has some.
            Ok(None) => {
                if chosen.is_none() {
                    chosen = Some((ResolvedAuth::new(None), c.transport.clone()));
                }
            }
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    if chosen.is_none() && !candidates.is_empty() {
        return Err(FlagError::Auth(failures.join("; ")));
    }
    let fallback = lock(&ctx.transport).clone();
    let (auth, transport) = match &chosen {
        Some((auth, transport)) => (
            Some(auth as &dyn AuthProvider),
            transport.as_deref().or(fallback.as_deref()),
        ),
        None => (None, fallback.as_deref()),
    };
    boundary::fetch_flag(
        &*inner.source,
        &ctx.host,
        auth,
        transport,
        inner.config.fetch_guard,
    )
    .await
}

/// A read-only view of one host's flag answer: one atomic load per question. It does not
/// keep the host's context alive (a [`FlagHandle`] does).
#[derive(Debug, Clone)]
pub struct FlagView(Arc<AtomicU8>);

impl FlagView {
    /// The current answer.
    #[inline]
    pub fn state(&self) -> FlagState {
        FlagState::from_u8(self.0.load(Ordering::Relaxed))
    }

    /// Whether the answer is [`FlagState::Disabled`] (not merely unknown yet).
    #[inline]
    pub fn is_off(&self) -> bool {
        self.0.load(Ordering::Relaxed) == FlagState::Disabled as u8
    }
}

/// A reference on one host's feature-flag context; dropping it releases the reference.
pub struct FlagHandle {
    cache: FeatureFlagCache,
    ctx: Arc<HostContext>,
}

impl fmt::Debug for FlagHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagHandle")
            .field("host", &self.ctx.host)
            .field("state", &self.state())
            .finish()
    }
}

impl FlagHandle {
    /// The host.
    pub fn host(&self) -> &Host {
        &self.ctx.host
    }

    /// The current answer: one atomic load.
    pub fn state(&self) -> FlagState {
        FlagState::from_u8(self.ctx.state.load(Ordering::Acquire))
    }

    /// Why the last look-up failed, if it did (`None` once the server answers, yes or no).
    pub fn failure(&self) -> Option<FlagFailure> {
        *lock(&self.ctx.failure)
    }

    /// A read-only view of the answer for hot paths that keep their own pointer.
    pub fn view(&self) -> FlagView {
        FlagView(self.ctx.state.clone())
    }

    /// Waits until the answer is known, at most `timeout`; returns what is known then.
    pub async fn resolve(&self, timeout: Duration) -> FlagState {
        let mut rx = self.ctx.tx.subscribe();
        let known = tokio::time::timeout(timeout, rx.wait_for(|s| *s != FlagState::Unknown)).await;
        match known {
            Ok(Ok(state)) => *state,
            _ => self.state(),
        }
    }
    /// Credentials a connection of this host brings after it was registered (its driver
    /// fetched its first token): tried first by later look-ups, and at once by a look-up
    /// that is waiting for credentials or found none that answered. Look-ups made with them
    /// go through `transport` when given.
    pub fn add_credentials(
        &self,
        auth: Arc<dyn AuthProvider>,
        transport: Option<Arc<dyn HttpTransport>>,
    ) {
        self.ctx.add(Some(auth), transport);
    }

    /// Says that a connection's credentials are coming: until the returned guard is dropped
    /// (once they were added, or the connection gave up), a look-up that knows no
    /// credentials waits for them, at most [`FlagCacheConfig::credentials_wait`], instead of
    /// asking without them.
    pub fn expect_credentials(&self) -> PendingCredentials {
        self.ctx.awaiting.fetch_add(1, Ordering::AcqRel);
        PendingCredentials {
            ctx: self.ctx.clone(),
        }
    }
}

/// A connection's credentials still to come (see [`FlagHandle::expect_credentials`]);
/// dropping it ends the wait for them.
pub struct PendingCredentials {
    ctx: Arc<HostContext>,
}

impl fmt::Debug for PendingCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCredentials")
            .field("host", &self.ctx.host)
            .finish()
    }
}

impl Drop for PendingCredentials {
    fn drop(&mut self) {
        self.ctx.awaiting.fetch_sub(1, Ordering::AcqRel);
        // A look-up waiting for these re-checks now.
        self.ctx.new_credentials.notify_one();
    }
}

impl FlagGate for FlagHandle {
    fn state(&self) -> FlagState {
        FlagHandle::state(self)
    }

    fn wait(&self, timeout: Duration) -> BoxFuture<'_, FlagState> {
        Box::pin(self.resolve(timeout))
    }
}

impl Drop for FlagHandle {
    fn drop(&mut self) {
        self.cache.release(&self.ctx);
    }
}

#[cfg(test)]
mod tests;
