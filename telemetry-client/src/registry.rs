//! The live host clients: one per workspace host, shared by that host's connections through
//! leases, closed (final flush, bounded) when the last lease is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use telemetry_aggregator::{Aggregator, Latencies};
use telemetry_breaker::{BreakerLease, BreakerState};
use telemetry_export::DatabricksExporter;
use telemetry_flags::{FlagHandle, FlagView};
use telemetry_types::clock::saturating_add;
use telemetry_types::drops::DropReason;
use telemetry_types::event::TelemetryEvent;
use telemetry_types::host::Host;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::runtime::BackgroundRuntime;
use crate::stats::{HostStats, HostStatsSummary, ProviderStats};

/// What a connection's handles hold of their host: its name, the intake of its background
/// task, and the gauge of its open statements. Deliberately small: a handle leaked past its
/// host's close keeps only this (a closed intake), never the exporter, its transport and
/// connection pool, the flag's refresh or the breaker.
pub(crate) struct HostCore {
    pub(crate) host: Host,
    pub(crate) aggregator: Aggregator,
    open: OpenStatements,
}

impl HostCore {
    pub(crate) fn new(host: Host, aggregator: Aggregator) -> Self {
        Self {
            host,
            aggregator,
            open: OpenStatements::default(),
        }
    }

    /// Statements begun and not yet ended.
    fn open_statements(&self) -> u64 {
        self.open.0.load(Ordering::Relaxed)
    }
}

/// Statements begun and not ended, on a cache line of its own: every statement's begin and
/// end touch it, and nothing else written as often should share its line.
#[derive(Default)]
#[repr(align(128))]
struct OpenStatements(AtomicU64);

/// Everything one host's telemetry needs, held by the registry while the host is live or
/// closing; connections hold only its [`HostCore`].
pub(crate) struct HostClient {
    pub(crate) core: Arc<HostCore>,
    pub(crate) exporter: Arc<DatabricksExporter>,
    pub(crate) flag: Arc<FlagHandle>,
    pub(crate) _breaker: BreakerLease<String>,
}

impl HostClient {
    fn host(&self) -> &Host {
        &self.core.host
    }

    fn stats(&self, connections: usize) -> HostStats {
        HostStats {
            host: self.host().to_string(),
            connections,
            flag: self.flag.state(),
            flag_failure: self.flag.failure(),
            statements_open: self.core.open_statements(),
            latency: self.core.aggregator.latencies().percentiles(),
            aggregator: self.core.aggregator.stats(),
            export: self.exporter.stats(),
        }
    }
}

struct Entry {
    client: Arc<HostClient>,
    leases: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code in these critical sections panics; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The clients released but still closing, and the totals of those closed: one lock, so that
/// a client's counters move from one to the other at once.
#[derive(Default)]
struct Released {
    closing: Vec<Arc<HostClient>>,
    retired: ProviderStats,
    /// The latency sketches of the clients closed, merged.
    retired_latencies: Latencies,
}

/// The host clients of one provider, counted by the leases their connections hold, and the
/// statistics of the clients released. Lock order: `hosts`, then `released`.
pub(crate) struct HostRegistry {
    /// Held by every lease (through the registry): the shared runtime stops only when every
    /// provider, connection, statement and close in progress using it is gone.
    runtime: Arc<BackgroundRuntime>,
    close_timeout: Duration,
    hosts: Mutex<HashMap<Host, Entry>>,
    released: Mutex<Released>,
    close_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Events handed to a closed client (dropped after close).
    late_drops: AtomicU64,
    /// Statement endings after the first (ignored).
    ignored_endings: AtomicU64,
    /// Statements refused (a non-metadata operation handed to `metadata`).
    refused_statements: AtomicU64,
}

impl HostRegistry {
    pub(crate) fn new(runtime: Arc<BackgroundRuntime>, close_timeout: Duration) -> Self {
        Self {
            runtime,
            close_timeout,
            hosts: Mutex::new(HashMap::new()),
            released: Mutex::new(Released::default()),
            close_tasks: Mutex::new(Vec::new()),
            late_drops: AtomicU64::new(0),
            ignored_endings: AtomicU64::new(0),
            refused_statements: AtomicU64::new(0),
        }
    }

    /// A lease on `host`'s client, built by `create` if the host has none; `None` (counted)
    /// when `max_hosts` other hosts are live.
    pub(crate) fn lease(
        self: &Arc<Self>,
        host: &Host,
        max_hosts: usize,
        create: impl FnOnce() -> HostClient,
    ) -> Option<HostLease> {
        let mut hosts = lock(&self.hosts);
        if hosts.len() >= max_hosts && !hosts.contains_key(host) {
            return None;
        }
        let client = match hosts.get_mut(host) {
            Some(e) => {
                e.leases += 1;
                e.client.clone()
            }
            None => {
                let client = Arc::new(create());
                lock(&self.released).retired.clients_created += 1;
                tracing::debug!(host = %host, "telemetry client created");
                hosts.insert(
                    host.clone(),
                    Entry {
                        client: client.clone(),
                        leases: 1,
                    },
                );
                client
            }
        };
        Some(HostLease {
            flag: client.flag.view(),
            flag_handle: Arc::downgrade(&client.flag),
            core: client.core.clone(),
            registry: self.clone(),
            released: AtomicBool::new(false),
        })
    }

    /// Gives one lease back; the last one closes the host's client (final flush, bounded by
    /// the close timeout). Returns the close's completion signal if this was the last.
    fn release(self: &Arc<Self>, core: &Arc<HostCore>) -> Option<oneshot::Receiver<()>> {
        let mut hosts = lock(&self.hosts);
        let entry = hosts.get_mut(&core.host)?;
        if !Arc::ptr_eq(&entry.client.core, core) {
            return None;
        }
        entry.leases -= 1;
        if entry.leases > 0 {
            return None;
        }
        let entry = hosts.remove(&core.host)?;
        // Still under the hosts lock: stats see the client live or closing, never neither.
        lock(&self.released).closing.push(entry.client.clone());
        drop(hosts);
        let (tx, rx) = oneshot::channel();
        self.close(entry.client, deadline_after(self.close_timeout), tx);
        Some(rx)
    }

    /// Closes a client already moved to the closing list, by `deadline`; `done` fires then.
    fn close(
        self: &Arc<Self>,
        client: Arc<HostClient>,
        deadline: Instant,
        done: oneshot::Sender<()>,
    ) {
        let registry = self.clone();
        let settle = self.close_timeout;
        let task = self.runtime.handle.spawn(async move {
            let core = &client.core;
            core.aggregator.close(deadline).await;
            // From here on a statement's end is dropped `after_close`: those still open now
            // are counted, so that a statement that never ends is not silent.
            let open = core.open_statements();
            if open > 0 {
                tracing::debug!(host = %core.host, open, "statements still open at the host's close");
            }
            // The totals are read once the task has ended, so that nothing it settles late
            // (a batch cut at the deadline) is left out of them. A task still busy then (a
            // flush a caller asked for ahead of the close) ends by its own bounds: waiters are
            // told now, and the totals wait for it.
            let mut done = Some(done);
            if tokio::time::timeout(settle, core.aggregator.finished())
                .await
                .is_err()
            {
                tracing::debug!(host = %core.host, "telemetry task still running after its close; totals wait for it");
                if let Some(done) = done.take() {
                    let _ = done.send(());
                }
                core.aggregator.finished().await;
            }
            let mut released = lock(&registry.released);
            released.closing.retain(|c| !Arc::ptr_eq(c, &client));
            released
                .retired
                .add(&core.aggregator.stats(), &client.exporter.stats());
            released.retired.clients_closed += 1;
            released
                .retired_latencies
                .merge(&core.aggregator.latencies());
            released.retired.statements_open_at_close += open;
            released
                .retired
                .count_closed_flag(client.flag.state(), client.flag.failure());
            drop(released);
            tracing::debug!(host = %core.host, "telemetry client closed");
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
        let mut tasks = lock(&self.close_tasks);
        tasks.retain(|h| !h.is_finished());
        tasks.push(task);
    }

    /// Closes every live client now, whatever its leases (their handles then report to a
    /// closed client: counted as dropped after close), by `deadline`. Returns each host with
    /// its completion signal.
    pub(crate) fn close_all(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Vec<(Host, oneshot::Receiver<()>)> {
        let mut hosts = lock(&self.hosts);
        let entries: Vec<Entry> = hosts.drain().map(|(_, e)| e).collect();
        lock(&self.released)
            .closing
            .extend(entries.iter().map(|e| e.client.clone()));
        drop(hosts);
        entries
            .into_iter()
            .map(|e| {
                let (tx, rx) = oneshot::channel();
                let host = e.client.host().clone();
                self.close(e.client, deadline, tx);
                (host, rx)
            })
            .collect()
    }

    /// The live clients now.
    pub(crate) fn live(&self) -> Vec<Arc<HostClient>> {
        lock(&self.hosts)
            .values()
            .map(|e| e.client.clone())
            .collect()
    }

    /// Whether `core` is its host's live client.
    fn is_live(&self, core: &Arc<HostCore>) -> bool {
        lock(&self.hosts)
            .get(&core.host)
            .is_some_and(|e| Arc::ptr_eq(&e.client.core, core))
    }

    /// Connections holding `host`.
    pub(crate) fn lease_count(&self, host: &Host) -> usize {
        lock(&self.hosts).get(host).map_or(0, |e| e.leases)
    }

    /// Hosts with a live client.
    pub(crate) fn len(&self) -> usize {
        lock(&self.hosts).len()
    }

    /// Statistics of one live host.
    pub(crate) fn host_stats(&self, host: &Host) -> Option<HostStats> {
        lock(&self.hosts)
            .get(host)
            .map(|e| e.client.stats(e.leases))
    }

    /// Totals over every host client: live, closing and closed.
    pub(crate) fn stats(&self) -> ProviderStats {
        let hosts = lock(&self.hosts);
        let released = lock(&self.released);
        let mut total = released.retired.clone();
        let mut latencies = released.retired_latencies.clone();
        let late = self.late_drops.load(Ordering::Relaxed);
        total.events_emitted += late;
        total.dropped.add(DropReason::AfterClose, late);
        total.statement_endings_ignored = self.ignored_endings.load(Ordering::Relaxed);
        total.statements_refused = self.refused_statements.load(Ordering::Relaxed);
        for c in &released.closing {
            total.add(&c.core.aggregator.stats(), &c.exporter.stats());
            total.statements_open += c.core.open_statements();
            latencies.merge(&c.core.aggregator.latencies());
        }
        drop(released);
        for e in hosts.values() {
            let host_latencies = e.client.core.aggregator.latencies();
            latencies.merge(&host_latencies);
            let s = e.client.stats(e.leases);
            total.add(&s.aggregator, &s.export);
            total.statements_open += s.statements_open;
            total.hosts.push(HostStatsSummary {
                host: s.host,
                connections: e.leases,
                flag: s.flag,
                flag_failure: s.flag_failure,
                breaker: s.export.breaker.state.unwrap_or(BreakerState::Closed),
                latency: host_latencies.percentiles(),
            });
        }
        total.latency = latencies.percentiles();
        total
    }

    /// The closes in progress (taken: the caller waits for them).
    pub(crate) fn take_closing(&self) -> Vec<JoinHandle<()>> {
        lock(&self.close_tasks).drain(..).collect()
    }
}

/// `d` from now on the runtime's clock, saturating (see [`saturating_add`]).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    Instant::from_std(saturating_add(Instant::now().into_std(), d))
}

/// What a connection holds of its host: the shared client, the flag view its hot path reads,
/// and what closing needs (the runtime, the close timeout). Released once, explicitly or on
/// drop.
pub(crate) struct HostLease {
    core: Arc<HostCore>,
    flag: FlagView,
    /// The host's flag, for credentials that connections bring; weak, so that a handle
    /// leaked past the host's close does not keep its refresh running.
    flag_handle: Weak<FlagHandle>,
    registry: Arc<HostRegistry>,
    released: AtomicBool,
}

impl HostLease {
    /// Whether the host's flag says no (one atomic load).
    #[inline]
    pub(crate) fn flag_off(&self) -> bool {
        self.flag.is_off()
    }

    /// Queues one event for the host's background task. A client already closed (a statement
    /// outliving its connection, a handle kept past `shutdown`) no longer counts what it is
    /// handed once its totals are retired, so the provider counts those drops itself.
    #[inline(always)]
    pub(crate) fn emit(&self, event: TelemetryEvent) {
        // A gone task's intake counts the event itself (`runtime_gone`); a closed one's is
        // refused, and counted here.
        if !self.core.aggregator.emit_unless_closed(event) {
            self.registry.late_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The host's flag (credentials a connection brings late), while the host's client lives.
    pub(crate) fn flag_handle(&self) -> Option<Arc<FlagHandle>> {
        self.flag_handle.upgrade()
    }

    /// A statement was refused (a non-metadata operation handed to `metadata`).
    pub(crate) fn count_refused_statement(&self) {
        self.registry
            .refused_statements
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A statement was begun (the open-statements gauge).
    #[inline]
    pub(crate) fn statement_begun(&self) {
        self.core.open.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A statement ended (its first ending, or its last handle dropped).
    #[inline]
    pub(crate) fn statement_ended(&self) {
        self.core.open.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// A statement was ended again (the first ending stands).
    pub(crate) fn count_ignored_ending(&self) {
        self.registry
            .ignored_endings
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The runtime background work runs on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.registry.runtime.handle
    }

    /// Gives the lease back (once; later calls do nothing). Returns the close's completion
    /// signal if it was the host's last lease.
    pub(crate) fn release(&self) -> Option<oneshot::Receiver<()>> {
        if self.released.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.registry.release(&self.core)
    }

    /// Settles the host's rows so far within `timeout`, on the background runtime: a flush
    /// while the host is open, the end of its final flush once it is closing. The signal
    /// says whether it finished in time.
    pub(crate) fn settle_within(&self, timeout: Duration) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let core = self.core.clone();
        // Closing: this lease is given back and the host has no live client for it any more
        // (its close task may not have run yet, so the intake may still be accepting).
        let closing = self.released.load(Ordering::Acquire) && !self.registry.is_live(&core);
        self.runtime().spawn(async move {
            let aggregator = &core.aggregator;
            let settled = if aggregator.is_accepting() && !closing {
                tokio::time::timeout(timeout, aggregator.flush()).await
            } else {
                tokio::time::timeout(timeout, aggregator.finished()).await
            };
            let _ = tx.send(settled.is_ok());
        });
        rx
    }
}

impl Drop for HostLease {
    fn drop(&mut self) {
        let _ = self.release();
    }
}
