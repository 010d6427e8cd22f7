use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use telemetry_types::event::{
    ConnectionInfo, DriverError, EventKind, StatementCompletion, StatementId, TelemetryEvent,
};
use telemetry_types::row::ChunkStats;
use telemetry_types::wire::{OperationType, StatementType};

use crate::provider::{HostClient, TelemetryClientProvider, flag_off};

struct Live {
    /// The host's flag state, here rather than behind `client` to save a load per event.
    flag_state: Arc<AtomicU8>,
    provider: TelemetryClientProvider,
    info: Arc<ConnectionInfo>,
    client: Arc<HostClient>,
    released: AtomicBool,
}

impl Live {
    /// Queues one event. `at` dates the row it starts (see [`TelemetryEvent::at`]); events
    /// that date nothing pass `None` and cost no clock reading. Not `#[inline]`: the public
    /// methods inline only their enabled check into the driver; the queue push stays here.
    fn emit(&self, at: Option<Instant>, kind: EventKind) {
        self.client.aggregator.emit(TelemetryEvent {
            connection: self.info.clone(),
            at,
            kind,
        });
    }

    fn start_statement(
        self: &Arc<Self>,
        statement_id: &str,
        statement_type: StatementType,
        operation_type: OperationType,
    ) -> Statement {
        let id: StatementId = Arc::from(statement_id);
        // One clock reading: the row's date and the latency's origin.
        let started = Instant::now();
        self.emit(
            Some(started),
            EventKind::StatementStarted {
                statement_id: id.clone(),
                statement_type,
                operation_type,
            },
        );
        Statement {
            live: Some(LiveStatement {
                live: self.clone(),
                id,
                started,
                chunks: FoldedChunks::default(),
            }),
        }
    }

    fn release(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if self.released.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.provider.release(&self.client)
    }
}

/// One driver connection's telemetry. Every method is synchronous, never waits on the network
/// and never fails; when telemetry is off each costs one branch or one atomic load and
/// allocates nothing. Dropping the handle releases the host's client (the last release
/// flushes in the background); [`close`](Self::close) also waits for that flush.
pub struct Connection {
    live: Option<Arc<Live>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.live {
            Some(l) => f.debug_struct("Connection").field("info", &l.info).finish(),
            None => f.write_str("Connection(disabled)"),
        }
    }
}

impl Connection {
    pub(crate) fn disabled() -> Self {
        Self { live: None }
    }

    pub(crate) fn new(
        provider: TelemetryClientProvider,
        info: Arc<ConnectionInfo>,
        client: Arc<HostClient>,
    ) -> Self {
        Self {
            live: Some(Arc::new(Live {
                flag_state: client.flag_state.clone(),
                provider,
                info,
                client,
                released: AtomicBool::new(false),
            })),
        }
    }

    /// The live state if telemetry may be sent: one atomic load of the host's flag.
    #[inline]
    fn live(&self) -> Option<&Arc<Live>> {
        self.live.as_ref().filter(|l| !flag_off(&l.flag_state))
    }

    /// Whether this connection reports telemetry (not off by config, override, env switch or
    /// the server's flag). While the flag is not yet known this is `true`: events are kept
    /// and sent or discarded once it is.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.live().is_some()
    }

    /// The session was opened; `latency` is the open call's own duration.
    #[inline]
    pub fn opened(&self, latency: Duration) {
        if let Some(l) = self.live() {
            l.emit(
                Some(Instant::now()),
                EventKind::ConnectionOpened {
                    latency_ms: millis(latency),
                },
            );
        }
    }

    /// The session was closed; `latency` is the close call's own duration.
    #[inline]
    pub fn closed(&self, latency: Duration) {
        if let Some(l) = self.live() {
            l.emit(
                Some(Instant::now()),
                EventKind::ConnectionClosed {
                    latency_ms: millis(latency),
                },
            );
        }
    }

    /// A statement started. The returned handle reports its chunks, errors and completion;
    /// dropped without [`Statement::complete`], it reports the statement as abandoned.
    #[inline]
    pub fn statement(
        &self,
        statement_id: &str,
        statement_type: StatementType,
        operation_type: OperationType,
    ) -> Statement {
        match self.live() {
            Some(l) => l.start_statement(statement_id, statement_type, operation_type),
            None => Statement { live: None },
        }
    }

    /// An error not tied to a statement (or whose statement is not tracked).
    #[inline]
    pub fn error(&self, error: DriverError) {
        if let Some(l) = self.live() {
            l.emit(
                Some(Instant::now()),
                EventKind::Error {
                    statement_id: None,
                    error: Box::new(error),
                },
            );
        }
    }

    /// Releases this connection and, if it was the host's last, waits for the final flush
    /// (bounded by the close timeout). Needs no particular runtime: it only awaits a signal.
    pub async fn close(mut self) {
        let Some(live) = self.live.take() else { return };
        match live.release() {
            Some(done) => {
                let _ = done.await;
            }
            None => {
                // Other connections keep the client: flush this connection's rows now.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let client = live.client.clone();
                let timeout = live.provider.inner.config.close_timeout;
                live.provider.runtime().spawn(async move {
                    let _ = tokio::time::timeout(timeout, client.aggregator.flush()).await;
                    let _ = tx.send(());
                });
                let _ = rx.await;
            }
        }
    }

    /// [`close`](Self::close) for callers without an async context: blocks this thread up to
    /// the close timeout (plus a little). Do not call it from inside an async task.
    pub fn close_blocking(mut self) {
        let Some(live) = self.live.take() else { return };
        if let Some(done) = live.release() {
            let limit = live.provider.inner.config.close_timeout + Duration::from_millis(200);
            let (tx, rx) = std::sync::mpsc::channel();
            live.provider.runtime().spawn(async move {
                let _ = done.await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(limit);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(l) = self.live.take() {
            let _ = l.release();
        }
    }
}

/// One statement's telemetry (RAII): reports `StatementCompleted` exactly once, on
/// [`complete`](Self::complete) or, as abandoned, on drop.
///
/// `Send + Sync`: CloudFetch download threads may share it to report their chunks.
pub struct Statement {
    live: Option<LiveStatement>,
}

struct LiveStatement {
    live: Arc<Live>,
    id: StatementId,
    started: Instant,
    /// Chunks fold here and ride with the completion: a chunk costs a few atomic operations
    /// on the handle, not an event through the queue (a CloudFetch result can have thousands).
    chunks: FoldedChunks,
}

/// [`ChunkStats`] folded lock-free, so download threads sharing a statement never wait on
/// each other (counters wrap only past 2^32 chunks or 2^64 bytes).
#[derive(Default)]
struct FoldedChunks {
    iterated: AtomicU32,
    bytes: AtomicU64,
    compressed: AtomicBool,
    /// First positive latency; 0 until there is one.
    initial: AtomicI64,
    /// Largest positive latency; 0 until there is one.
    slowest: AtomicI64,
    sum: AtomicI64,
}

impl FoldedChunks {
    fn record(&self, latency_ms: i64, bytes: u64, compressed: bool) {
        self.iterated.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if compressed {
            self.compressed.store(true, Ordering::Relaxed);
        }
        if latency_ms > 0 {
            let _ =
                self.initial
                    .compare_exchange(0, latency_ms, Ordering::Relaxed, Ordering::Relaxed);
            self.slowest.fetch_max(latency_ms, Ordering::Relaxed);
            self.sum.fetch_add(latency_ms, Ordering::Relaxed);
        }
    }

    fn into_stats(self) -> ChunkStats {
        let positive = |v: i64| (v > 0).then_some(v);
        ChunkStats {
            iterated: self.iterated.into_inner(),
            initial_latency_ms: positive(self.initial.into_inner()),
            slowest_latency_ms: positive(self.slowest.into_inner()),
            sum_latency_ms: self.sum.into_inner(),
            compressed: self.compressed.into_inner(),
            bytes: self.bytes.into_inner(),
        }
    }
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.live {
            Some(s) => f.debug_tuple("Statement").field(&s.id).finish(),
            None => f.write_str("Statement(disabled)"),
        }
    }
}

impl Statement {
    /// The statement's id, if telemetry is on.
    pub fn id(&self) -> Option<&str> {
        self.live.as_ref().map(|s| &*s.id)
    }

    /// A CloudFetch chunk was downloaded. Folded into the statement's chunk statistics,
    /// which are sent with its completion.
    #[inline]
    pub fn chunk(&self, latency: Duration, bytes: u64, compressed: bool) {
        if let Some(s) = &self.live {
            s.chunks.record(
                i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
                bytes,
                compressed,
            );
        }
    }

    /// An error on this statement. A terminal one ends the statement's row and is flushed at
    /// once (without the chunks reported so far: they ride with the completion, which then
    /// finds the statement already reported and is counted as `unknown_statement`); others
    /// are reported with the statement.
    #[inline]
    pub fn error(&self, error: DriverError) {
        if let Some(s) = &self.live {
            s.live.emit(
                Some(Instant::now()),
                EventKind::Error {
                    statement_id: Some(s.id.clone()),
                    error: Box::new(error),
                },
            );
        }
    }

    /// The statement finished (or was closed); fields the driver does not know stay `None`.
    ///
    /// The latency is measured from [`Connection::statement`] unless `completion` has one.
    #[inline]
    pub fn complete(mut self, completion: StatementCompletion) {
        if let Some(live) = self.live.take() {
            Self::report(live, completion);
        }
    }

    /// Reports the completion (latency measured from the start unless given, the folded
    /// chunks added to any the driver put in); out of line.
    fn report(s: LiveStatement, mut completion: StatementCompletion) {
        completion
            .latency_ms
            .get_or_insert_with(|| millis(s.started.elapsed()));
        let mut chunks = s.chunks.into_stats();
        chunks.merge(&completion.chunks);
        completion.chunks = chunks;
        s.live.emit(
            None,
            EventKind::StatementCompleted {
                statement_id: s.id,
                completion: Box::new(completion),
            },
        );
    }
}

impl Drop for Statement {
    #[inline]
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            Self::report(
                live,
                StatementCompletion {
                    abandoned: true,
                    ..StatementCompletion::default()
                },
            );
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
