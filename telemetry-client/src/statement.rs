//! A statement handle, shaped by how a SEA or Thrift driver runs a statement: begun before the
//! execute call (the server's id comes with its answer), shared by the execute path, the
//! poller, the CloudFetch download tasks and the result reader, ended once by whichever of
//! them gets there first, or by the last clone's drop.
//!
//! Everything the driver records folds lock-free into the shared handle; the statement costs
//! one queue push, at its end, however many chunks and polls it has.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use telemetry_types::classify::ErrorClass;
use telemetry_types::event::{
    ChunkFailure, ChunkStats, CompactId, DriverError, EventKind, ReportableError,
    StatementCompletion, StatementEnd, StatementId, StatementOutcome, TelemetryEvent, VolumeOp,
};
use telemetry_types::wire::{ExecutionResultFormat, OperationType, StatementType};

use crate::clock::{self, Stamp};
use crate::emitter::{Emitter, capped_id, millis};
use crate::set_once::SetOnce;
use crate::unreported::{self, NotReported};

/// One statement's telemetry: cheap to clone (an `Arc`), `Send + Sync`, every method `&self`
/// and never failing. When telemetry is off the handle is empty and every method is one
/// branch (and a chunk failure or non-terminal error, which would have been a row of its own,
/// is counted in [`calls_not_reported`](crate::calls_not_reported)).
///
/// The statement ends once: on [`complete`](Self::complete), [`fail`](Self::fail),
/// [`cancel`](Self::cancel) or [`close`](Self::close), whichever comes first (later endings
/// are ignored and counted in
/// [`ProviderStats::statement_endings_ignored`](crate::ProviderStats::statement_endings_ignored)),
/// or, when the last clone is dropped first, as abandoned (`CLOSE_STATEMENT`), keeping what was
/// recorded. Its row carries its id (if [attached](Self::attach_id)), the latency from its
/// begin, the outcome, and everything recorded below.
///
/// ```
/// # use std::time::Duration;
/// # use telemetry_client::{Connection, OperationType, StatementType, ExecutionResultFormat};
/// # fn demo(conn: &Connection) {
/// let st = conn.statement(StatementType::Query, OperationType::ExecuteStatement);
/// // POST /api/2.0/sql/statements answered:
/// st.attach_id("01ef-0000-aaaa");
/// st.poll(Duration::from_millis(40));
/// st.result_format(ExecutionResultFormat::ExternalLinks);
/// let download = st.clone(); // into a CloudFetch task
/// download.chunk(Duration::from_millis(12), 1 << 20, true);
/// st.result_ready();
/// st.result_consumed();
/// st.complete();
/// st.complete(); // ignored, counted
/// # }
/// ```
///
/// [`Statement::default()`] is a disabled handle (every method one branch), for a driver
/// struct or a test mock that needs a statement before, or without, telemetry.
#[derive(Clone, Default)]
pub struct Statement {
    shared: Option<Arc<Shared>>,
}

/// The state every clone of one statement handle shares.
pub(crate) struct Shared {
    conn: Arc<Emitter>,
    begun: Stamp,
    /// Whether its row goes to Databricks (else it lives for the OpenTelemetry bridge alone:
    /// the server's flag was off at its begin).
    report: bool,
    /// The OpenTelemetry context current at its begin, with a bridge.
    parent: Option<crate::bridge::Parent>,
    /// Its index in [`StatementType::ALL`]: the driver may learn the type after the begin
    /// (QUERY or UPDATE is known from the server's answer).
    statement_type: AtomicU8,
    operation_type: OperationType,
    ended: AtomicBool,
    /// The server's id: set once, by whichever clone attaches it first.
    id: SetOnce<CompactId>,
    volume: Option<Box<VolumeOp>>,
    /// Chunks fold here and ride with the end: a chunk costs a few atomic operations on the
    /// handle, not an event through the queue (a CloudFetch result can have thousands).
    chunks: FoldedChunks,
    recorded: Recorded,
}

/// An optional `u64` in one atomic: `u64::MAX` is "not recorded".
struct OptU64(AtomicU64);

impl Default for OptU64 {
    fn default() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }
}

impl OptU64 {
    fn set(&self, v: u64) {
        self.0.store(v.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// Sets the value unless one is there already (the first mark wins).
    fn set_first(&self, v: u64) {
        let _ = self.0.compare_exchange(
            u64::MAX,
            v.min(u64::MAX - 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Adds to the value (from 0 when unset), saturating below the "unset" mark.
    fn add(&self, v: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                let n = if n == u64::MAX { 0 } else { n };
                Some(n.saturating_add(v).min(u64::MAX - 1))
            });
    }

    fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|v| *v != u64::MAX)
    }

    fn get_u32(&self) -> Option<u32> {
        self.get().map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    }
}

/// An optional `bool` in one atomic: 0 unset, 1 false, 2 true.
#[derive(Default)]
struct OptBool(AtomicU8);

impl OptBool {
    fn set(&self, v: bool) {
        self.0.store(1 + u8::from(v), Ordering::Relaxed);
    }

    fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }
}

/// What the driver records as the statement runs, each field lock-free.
#[derive(Default)]
struct Recorded {
    /// 0 unset, else the index in [`ExecutionResultFormat::ALL`] plus one.
    format: AtomicU8,
    compressed: OptBool,
    internal: OptBool,
    chunks_present: OptU64,
    polls: OptU64,
    poll_ms: OptU64,
    retries: OptU64,
    ready_ms: OptU64,
    consumed_ms: OptU64,
}

impl Recorded {
    fn snapshot(&self) -> StatementCompletion {
        let format = usize::from(self.format.load(Ordering::Relaxed));
        StatementCompletion {
            execution_result: format
                .checked_sub(1)
                .and_then(|i| ExecutionResultFormat::ALL.get(i).copied()),
            compressed: self.compressed.get(),
            poll_count: self.polls.get_u32(),
            poll_latency_ms: self.poll_ms.get(),
            retry_count: self.retries.get_u32(),
            chunks_present: self.chunks_present.get_u32(),
            result_ready_latency_ms: self.ready_ms.get(),
            result_consumption_latency_ms: self.consumed_ms.get(),
            is_internal_call: self.internal.get(),
        }
    }
}

/// Longest chunk latency counted, in ms (about 35 years).
pub(crate) const MAX_CHUNK_MS: i64 = 1 << 40;
/// Largest chunk counted, in bytes (1 TiB).
pub(crate) const MAX_CHUNK_BYTES: u64 = 1 << 40;

/// [`ChunkStats`] folded lock-free, so download tasks sharing a statement never wait on
/// each other. A chunk costs three atomic additions; the first latency, the slowest and the
/// compression flag are read first and written only when they change (once or twice a
/// statement), since an atomic read-modify-write is the price of a chunk here. Each chunk's
/// latency and size are capped so the 64-bit sums cannot wrap; the count saturates to the
/// row's 32 bits when read, as [`ChunkStats::record`] does.
#[derive(Default)]
struct FoldedChunks {
    iterated: AtomicU64,
    bytes: AtomicU64,
    compressed: AtomicBool,
    /// First positive latency; 0 until there is one.
    initial: AtomicI64,
    /// Largest positive latency; 0 until there is one.
    slowest: AtomicI64,
    sum: AtomicI64,
}

impl FoldedChunks {
    #[inline]
    fn record(&self, latency_ms: i64, bytes: u64, compressed: bool) {
        self.iterated.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if compressed && !self.compressed.load(Ordering::Relaxed) {
            self.compressed.store(true, Ordering::Relaxed);
        }
        if latency_ms > 0 {
            if self.initial.load(Ordering::Relaxed) == 0 {
                let _ = self.initial.compare_exchange(
                    0,
                    latency_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            if latency_ms > self.slowest.load(Ordering::Relaxed) {
                self.slowest.fetch_max(latency_ms, Ordering::Relaxed);
            }
            // Latencies are capped at MAX_CHUNK_MS, so the sum of 2^23 chunks cannot wrap.
            self.sum.fetch_add(latency_ms, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> ChunkStats {
        let positive = |v: i64| (v > 0).then_some(v);
        ChunkStats {
            iterated: u32::try_from(self.iterated.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
            initial_latency_ms: positive(self.initial.load(Ordering::Relaxed)),
            slowest_latency_ms: positive(self.slowest.load(Ordering::Relaxed)),
            sum_latency_ms: match self.sum.load(Ordering::Relaxed) {
                sum if sum < 0 => i64::MAX,
                sum => sum,
            },
            compressed: self.compressed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Statement {
    /// A shared handle from a local one's state (see [`LocalStatement::share`](crate::LocalStatement::share)).
    pub(crate) fn from_shared(shared: Shared) -> Self {
        Statement {
            shared: Some(Arc::new(shared)),
        }
    }

    /// Begins a statement: one clock reading (the row's date and the latency's origin) and
    /// one allocation (the shared handle); nothing is queued until it ends. `report`: whether
    /// its row goes to Databricks (else only to the OpenTelemetry bridge).
    pub(crate) fn begin(
        conn: &Arc<Emitter>,
        statement_type: StatementType,
        operation_type: OperationType,
        volume: Option<VolumeOp>,
        report: bool,
    ) -> Self {
        if report {
            conn.lease.statement_begun();
        }
        Statement {
            shared: Some(Arc::new(Shared {
                conn: conn.clone(),
                begun: clock::now(),
                report,
                parent: conn.bridge.get().map(|b| b.parent()),
                statement_type: AtomicU8::new(type_index(statement_type)),
                operation_type,
                ended: AtomicBool::new(false),
                id: SetOnce::new(None),
                volume: volume.map(Box::new),
                chunks: FoldedChunks::default(),
                recorded: Recorded::default(),
            })),
        }
    }

    /// A handle that reports nothing (telemetry off).
    pub(crate) fn disabled() -> Self {
        Statement { shared: None }
    }

    /// Whether this handle records anything (for Databricks telemetry, or, with the server's
    /// flag off, for the OpenTelemetry bridge alone).
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// The server's statement id, once attached.
    pub fn id(&self) -> Option<&str> {
        self.shared.as_ref()?.id.get().map(CompactId::as_str)
    }

    /// Attaches the server's statement id (from the execute call's answer). The first id
    /// attached stays; later ones are ignored. A statement that never gets one (its execute
    /// call failed) is still reported, without an id.
    pub fn attach_id(&self, statement_id: &str) {
        if let Some(s) = self.shared.as_ref().filter(|s| s.id.get().is_none()) {
            let _ = s.id.set(CompactId::from(capped_id(statement_id)));
        }
    }

    /// The statement's type, once the driver knows it (`QUERY` or `UPDATE` often comes with
    /// the server's answer, after the begin): replaces the type given at the begin, until the
    /// statement ends.
    pub fn set_statement_type(&self, statement_type: StatementType) {
        if let Some(s) = &self.shared {
            s.statement_type
                .store(type_index(statement_type), Ordering::Relaxed);
        }
    }

    /// How the result comes back (from the execute or poll answer's manifest).
    pub fn result_format(&self, format: ExecutionResultFormat) {
        if let Some(s) = &self.shared {
            let index = ExecutionResultFormat::ALL
                .iter()
                .position(|f| *f == format)
                .map_or(0, |i| u8::try_from(i + 1).unwrap_or(0));
            s.recorded.format.store(index, Ordering::Relaxed);
        }
    }

    /// Whether the result is compressed (e.g. `LZ4_FRAME`); any compressed chunk also says so.
    pub fn compressed(&self, compressed: bool) {
        if let Some(s) = &self.shared {
            s.recorded.compressed.set(compressed);
        }
    }

    /// How many CloudFetch chunks the result has.
    pub fn chunks_present(&self, chunks: u32) {
        if let Some(s) = &self.shared {
            s.recorded.chunks_present.set(u64::from(chunks));
        }
    }

    /// Whether the driver runs this statement for itself (e.g. a metadata query).
    pub fn internal_call(&self, internal: bool) {
        if let Some(s) = &self.shared {
            s.recorded.internal.set(internal);
        }
    }

    /// One status poll, and how long it took. Adds to the poll count and total.
    pub fn poll(&self, latency: Duration) {
        if let Some(s) = &self.shared {
            s.recorded.polls.add(1);
            s.recorded.poll_ms.add(millis(latency));
        }
    }

    /// The poll count and total time, for a driver that keeps its own (replaces what
    /// [`poll`](Self::poll) added).
    pub fn polls(&self, count: u32, total: Duration) {
        if let Some(s) = &self.shared {
            s.recorded.polls.set(u64::from(count));
            s.recorded.poll_ms.set(millis(total));
        }
    }

    /// One retry of the execute call.
    pub fn retry(&self) {
        if let Some(s) = &self.shared {
            s.recorded.retries.add(1);
        }
    }

    /// A CloudFetch chunk was downloaded: folded into the statement's chunk statistics.
    #[inline]
    pub fn chunk(&self, latency: Duration, bytes: u64, compressed: bool) {
        if let Some(s) = &self.shared {
            // Capped so that the sums of 2^23 chunks still fit (a chunk is ~20 MB and well
            // under a minute): the fold adds without checking for overflow.
            s.chunks.record(
                i64::try_from(latency.as_millis()).map_or(MAX_CHUNK_MS, |ms| ms.min(MAX_CHUNK_MS)),
                bytes.min(MAX_CHUNK_BYTES),
                compressed,
            );
            if let Some(bridge) = s.conn.bridge.get() {
                bridge.chunk(latency, bytes);
            }
        }
    }

    /// A CloudFetch chunk failed after its retries: a row of its own (the chunk's index, the
    /// statement's chunk statistics so far, the error), sent at once. The statement goes on.
    pub fn chunk_failed<E: ReportableError + ?Sized>(&self, chunk_index: i64, error: &E) {
        let Some(s) = &self.shared else {
            unreported::count(NotReported::StatementOff);
            return;
        };
        if !s.report {
            unreported::count(NotReported::FlagOff);
            return;
        }
        s.conn.emit(
            Some(clock::now()),
            EventKind::ChunkFailed {
                failure: Box::new(ChunkFailure {
                    statement_id: s.id.get().cloned(),
                    statement_type: s.statement_type(),
                    operation_type: s.operation_type,
                    chunk_index,
                    chunks: s.chunks.snapshot(),
                    completion: s.recorded.snapshot(),
                    error: DriverError::from_error(error),
                }),
            },
        );
    }

    /// The result set is ready (the first batch handed out): its latency is measured from
    /// the begin. The first mark counts.
    pub fn result_ready(&self) {
        if let Some(s) = &self.shared {
            s.recorded
                .ready_ms
                .set_first(clock::now().millis_since(s.begun));
        }
    }

    /// The result set was consumed (the reader is done): measured from the begin. The first
    /// mark counts.
    pub fn result_consumed(&self) {
        if let Some(s) = &self.shared {
            s.recorded
                .consumed_ms
                .set_first(clock::now().millis_since(s.begun));
        }
    }

    /// An error on this statement. A terminal one (by SQLSTATE or HTTP status) ends the
    /// statement as [`fail`](Self::fail) does, and is sent at once with its statistics; others
    /// are a row of their own, with the statement's id if it is attached.
    pub fn error<E: ReportableError + ?Sized>(&self, error: &E) {
        let Some(s) = &self.shared else {
            // A terminal error would have ended the statement, counted when it began; any
            // other would have been a row of its own.
            if DriverError::class_of(error) != ErrorClass::Terminal {
                unreported::count(NotReported::StatementOff);
            }
            return;
        };
        let error = DriverError::from_error(error);
        if error.class == ErrorClass::Terminal {
            s.end(StatementOutcome::Failed, Some(error));
        } else if s.ended.load(Ordering::Relaxed) {
            unreported::count(NotReported::AfterEnd);
        } else if !s.report {
            unreported::count(NotReported::FlagOff);
        } else {
            s.conn.emit(
                Some(clock::now()),
                EventKind::Error {
                    statement_id: s.id.get().map(|id| StatementId::from(id.as_str())),
                    error: Box::new(error),
                },
            );
        }
    }

    /// The statement completed.
    pub fn complete(&self) {
        if let Some(s) = &self.shared {
            s.end(StatementOutcome::Completed, None);
        }
    }

    /// The statement failed (its execute call, its polling, or reading its result); the error
    /// goes on the statement's row, and a terminal one is sent at once.
    pub fn fail<E: ReportableError + ?Sized>(&self, error: &E) {
        if let Some(s) = &self.shared {
            s.end(
                StatementOutcome::Failed,
                Some(DriverError::from_error(error)),
            );
        }
    }

    /// The statement was cancelled before completing (`CANCEL_STATEMENT`).
    pub fn cancel(&self) {
        if let Some(s) = &self.shared {
            s.end(StatementOutcome::Cancelled, None);
        }
    }

    /// The statement was closed. Before it completed, the row says `CLOSE_STATEMENT`; after,
    /// this is an ignored (counted) second ending.
    pub fn close(&self) {
        if let Some(s) = &self.shared {
            s.end(StatementOutcome::Closed, None);
        }
    }
}

/// `t`'s index in [`StatementType::ALL`] (0, unspecified, if absent).
pub(crate) fn type_index(t: StatementType) -> u8 {
    StatementType::ALL
        .iter()
        .position(|x| *x == t)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

impl Shared {
    fn statement_type(&self) -> StatementType {
        let i = usize::from(self.statement_type.load(Ordering::Relaxed));
        StatementType::ALL
            .get(i)
            .copied()
            .unwrap_or(StatementType::Unspecified)
    }

    /// Reports the end once: the first caller wins; later ones are counted.
    fn end(&self, outcome: StatementOutcome, error: Option<DriverError>) {
        if self.ended.swap(true, Ordering::AcqRel) {
            self.conn.lease.count_ignored_ending();
            return;
        }
        if self.report {
            self.conn.lease.statement_ended();
        }
        self.emit_end(outcome, error, self.volume.clone());
    }

    /// Out of line: builds the end from what was recorded and queues it, dated by the begin
    /// (and hands it to the OpenTelemetry bridge, with one).
    fn emit_end(
        &self,
        outcome: StatementOutcome,
        error: Option<DriverError>,
        volume: Option<Box<VolumeOp>>,
    ) {
        let ended = clock::now();
        let end = StatementEnd {
            statement_type: self.statement_type(),
            operation_type: self.operation_type,
            statement_id: self.id.get().cloned(),
            latency_ms: ended.millis_since(self.begun),
            outcome,
            chunks: self.chunks.snapshot(),
            completion: self.recorded.snapshot(),
            error: error.map(Box::new),
            volume,
        };
        deliver(
            &self.conn,
            self.parent.as_ref(),
            self.begun,
            ended,
            self.report,
            end,
        );
    }

    /// The shared state of a [`LocalStatement`](crate::LocalStatement) handed on: what it
    /// recorded, in atomics.
    pub(crate) fn from_local(local: crate::local::Local) -> Self {
        let crate::local::Local {
            conn,
            begun,
            report,
            parent,
            statement_type,
            operation_type,
            id,
            volume,
            chunks,
            completion,
            ended,
        } = local;
        let folded = FoldedChunks::default();
        folded
            .iterated
            .store(u64::from(chunks.iterated), Ordering::Relaxed);
        folded.bytes.store(chunks.bytes, Ordering::Relaxed);
        folded
            .compressed
            .store(chunks.compressed, Ordering::Relaxed);
        folded
            .initial
            .store(chunks.initial_latency_ms.unwrap_or(0), Ordering::Relaxed);
        folded
            .slowest
            .store(chunks.slowest_latency_ms.unwrap_or(0), Ordering::Relaxed);
        folded.sum.store(chunks.sum_latency_ms, Ordering::Relaxed);
        let recorded = Recorded::default();
        let c = completion;
        let index = c
            .execution_result
            .and_then(|f| ExecutionResultFormat::ALL.iter().position(|x| *x == f))
            .map_or(0, |i| u8::try_from(i + 1).unwrap_or(0));
        recorded.format.store(index, Ordering::Relaxed);
        if let Some(v) = c.compressed {
            recorded.compressed.set(v);
        }
        if let Some(v) = c.is_internal_call {
            recorded.internal.set(v);
        }
        let set = |field: &OptU64, v: Option<u64>| {
            if let Some(v) = v {
                field.set(v);
            }
        };
        set(&recorded.chunks_present, c.chunks_present.map(u64::from));
        set(&recorded.polls, c.poll_count.map(u64::from));
        set(&recorded.poll_ms, c.poll_latency_ms);
        set(&recorded.retries, c.retry_count.map(u64::from));
        set(&recorded.ready_ms, c.result_ready_latency_ms);
        set(&recorded.consumed_ms, c.result_consumption_latency_ms);
        Self {
            conn,
            begun,
            report,
            parent,
            statement_type: AtomicU8::new(type_index(statement_type)),
            operation_type,
            // Ended by a terminal error before it was shared: ended for the clones too.
            ended: AtomicBool::new(ended),
            id: SetOnce::new(id),
            volume,
            chunks: folded,
            recorded,
        }
    }
}

/// Hands a statement's end to the OpenTelemetry bridge (with one) and, if it reports, to the
/// host's queue, dated by its begin.
#[inline(always)]
pub(crate) fn deliver(
    conn: &Emitter,
    parent: Option<&crate::bridge::Parent>,
    begun: Stamp,
    ended: Stamp,
    report: bool,
    end: StatementEnd,
) {
    if let Some(bridge) = conn.bridge.get() {
        bridge.finished(parent, begun.instant(), ended.instant(), &end);
    }
    if report {
        conn.emit_event(TelemetryEvent {
            connection: conn.info.clone(),
            at: Some(begun),
            kind: EventKind::StatementEnded { end },
        });
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !*self.ended.get_mut() {
            if self.report {
                self.conn.lease.statement_ended();
            }
            let volume = self.volume.take();
            self.emit_end(StatementOutcome::Abandoned, None, volume);
        }
    }
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shared {
            Some(s) => f
                .debug_struct("Statement")
                .field("id", &s.id.get())
                .field("operation", &s.operation_type)
                .field("ended", &s.ended.load(Ordering::Relaxed))
                .finish(),
            None => f.write_str("Statement(disabled)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_chunks_agree_with_chunk_stats_at_the_caps() {
        // Absurd values are capped before the fold (as `Statement::chunk` does), so the
        // unchecked sums agree with ChunkStats' saturating ones.
        let folded = FoldedChunks::default();
        let mut whole = ChunkStats::default();
        for (latency, bytes) in [(i64::MAX, u64::MAX), (i64::MAX, 7), (5, u64::MAX), (0, 1)] {
            let (latency, bytes) = (latency.min(MAX_CHUNK_MS), bytes.min(MAX_CHUNK_BYTES));
            folded.record(latency, bytes, bytes == 7);
            whole.record(latency, bytes, bytes == 7);
        }
        let got = folded.snapshot();
        assert_eq!(got, whole);
        assert_eq!(
            (got.iterated, got.sum_latency_ms, got.bytes, got.compressed),
            (4, 2 * MAX_CHUNK_MS + 5, 2 * MAX_CHUNK_BYTES + 8, true)
        );
        assert_eq!(
            (got.initial_latency_ms, got.slowest_latency_ms),
            (Some(MAX_CHUNK_MS), Some(MAX_CHUNK_MS))
        );
    }

    #[test]
    fn chunks_from_many_threads_fold_exactly() {
        let folded = Arc::new(FoldedChunks::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let folded = folded.clone();
                std::thread::spawn(move || {
                    for i in 1..=1000 {
                        folded.record(i + t, 10, false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = folded.snapshot();
        assert_eq!((got.iterated, got.bytes), (4000, 40_000));
        assert_eq!(got.sum_latency_ms, 4 * 500_500 + 1000 * (1 + 2 + 3));
        assert_eq!(got.slowest_latency_ms, Some(1003));
        assert!(matches!(got.initial_latency_ms, Some(1..=4)));
    }

    #[test]
    fn recorded_fields_round_trip_and_saturate() {
        let r = Recorded::default();
        assert_eq!(r.snapshot(), StatementCompletion::default());
        for f in ExecutionResultFormat::ALL {
            r.format.store(0, Ordering::Relaxed);
            let index = ExecutionResultFormat::ALL
                .iter()
                .position(|x| x == f)
                .unwrap();
            r.format
                .store(u8::try_from(index + 1).unwrap(), Ordering::Relaxed);
            assert_eq!(r.snapshot().execution_result, Some(*f));
        }
        r.polls.add(u64::MAX);
        r.polls.add(5);
        assert_eq!(r.snapshot().poll_count, Some(u32::MAX));
        r.ready_ms.set_first(7);
        r.ready_ms.set_first(9);
        assert_eq!(r.snapshot().result_ready_latency_ms, Some(7));
        r.compressed.set(false);
        assert_eq!(r.snapshot().compressed, Some(false));
    }
}
