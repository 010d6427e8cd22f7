//! A statement recorded by the one task that runs it: the fast path beside the shared
//! [`Statement`] handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{self, Stamp};

use telemetry_types::classify::ErrorClass;
use telemetry_types::event::{
    ChunkStats, CompactId, DriverError, EventKind, ReportableError, StatementCompletion,
    StatementEnd, StatementId, StatementOutcome, VolumeOp,
};
use telemetry_types::wire::{ExecutionResultFormat, OperationType, StatementType};

use crate::emitter::{Emitter, capped_id, millis};
use crate::statement::{MAX_CHUNK_BYTES, MAX_CHUNK_MS, Shared, Statement, deliver};
use crate::unreported::{self, NotReported};

/// One statement's telemetry, recorded by the one task that runs it: every method takes
/// `&mut self` and records into plain fields (no atomic operation, no allocation: its end
/// rides inline in the host's queue), and an ending takes the handle by value. A terminal error given to
/// [`error`](Self::error) ends it too, as on a [`Statement`]; an ending after that is
/// ignored and counted.
/// Begun by [`Connection::local_statement`](crate::Connection::local_statement); the row is
/// the one a [`Statement`] with the same calls gives.
///
/// When another task needs the statement too (CloudFetch downloads on worker tasks), hand it
/// on with [`share`](Self::share): the shared handle carries on from what was recorded. A
/// handle dropped without an ending reports the statement as abandoned (`CLOSE_STATEMENT`).
///
/// ```
/// # use std::time::Duration;
/// # use telemetry_client::{Connection, ExecutionResultFormat, OperationType, StatementType};
/// # fn demo(conn: &Connection) {
/// let mut st = conn.local_statement(StatementType::Query, OperationType::ExecuteStatement);
/// st.attach_id("01ef-0000-aaaa");
/// st.result_format(ExecutionResultFormat::InlineArrow);
/// st.poll(Duration::from_millis(40));
/// st.complete();
///
/// // A result fetched by download tasks: share it when they start.
/// let mut st = conn.local_statement(StatementType::Query, OperationType::ExecuteStatement);
/// st.attach_id("01ef-0000-bbbb");
/// let shared = st.share();
/// let download = shared.clone();
/// download.chunk(Duration::from_millis(12), 1 << 20, true);
/// shared.complete();
/// # }
/// ```
#[derive(Default)]
pub struct LocalStatement {
    local: Option<Local>,
}

/// What a local statement records.
pub(crate) struct Local {
    pub(crate) conn: Arc<Emitter>,
    pub(crate) begun: Stamp,
    pub(crate) report: bool,
    pub(crate) parent: Option<crate::bridge::Parent>,
    pub(crate) statement_type: StatementType,
    pub(crate) operation_type: OperationType,
    pub(crate) id: Option<CompactId>,
    pub(crate) volume: Option<Box<VolumeOp>>,
    pub(crate) chunks: ChunkStats,
    pub(crate) completion: StatementCompletion,
    /// Ended by a terminal error: later endings are ignored (and counted).
    pub(crate) ended: bool,
}

/// Adds to an optional count (from 0 when unset), saturating.
fn add_u32(field: &mut Option<u32>, n: u32) {
    *field = Some(field.unwrap_or(0).saturating_add(n));
}

/// Adds to an optional total (from 0 when unset), saturating below the shared handle's
/// "unset" mark, as it does.
fn add_u64(field: &mut Option<u64>, n: u64) {
    *field = Some(field.unwrap_or(0).saturating_add(n).min(u64::MAX - 1));
}

impl LocalStatement {
    /// Begins a statement: one clock reading; `report` as for [`Statement::begin`].
    pub(crate) fn begin(
        conn: &Arc<Emitter>,
        statement_type: StatementType,
        operation_type: OperationType,
        report: bool,
    ) -> Self {
        if report {
            conn.lease.statement_begun();
        }
        Self {
            local: Some(Local {
                conn: conn.clone(),
                begun: clock::now(),
                report,
                parent: conn.bridge.get().map(|b| b.parent()),
                statement_type,
                operation_type,
                id: None,
                volume: None,
                chunks: ChunkStats::default(),
                completion: StatementCompletion::default(),
                ended: false,
            }),
        }
    }

    /// Whether this handle records anything (see [`Statement::is_enabled`]).
    pub fn is_enabled(&self) -> bool {
        self.local.is_some()
    }

    /// The server's statement id, once attached.
    pub fn id(&self) -> Option<&str> {
        self.local.as_ref()?.id.as_ref().map(CompactId::as_str)
    }

    /// Attaches the server's statement id; the first one stays (see [`Statement::attach_id`]).
    pub fn attach_id(&mut self, statement_id: &str) {
        if let Some(l) = self.local.as_mut().filter(|l| l.id.is_none()) {
            l.id = Some(CompactId::from(capped_id(statement_id)));
        }
    }

    /// The statement's type, once the driver knows it.
    pub fn set_statement_type(&mut self, statement_type: StatementType) {
        if let Some(l) = &mut self.local {
            l.statement_type = statement_type;
        }
    }

    /// How the result comes back.
    pub fn result_format(&mut self, format: ExecutionResultFormat) {
        if let Some(l) = &mut self.local {
            l.completion.execution_result = Some(format);
        }
    }

    /// Whether the result is compressed.
    pub fn compressed(&mut self, compressed: bool) {
        if let Some(l) = &mut self.local {
            l.completion.compressed = Some(compressed);
        }
    }

    /// How many CloudFetch chunks the result has.
    pub fn chunks_present(&mut self, chunks: u32) {
        if let Some(l) = &mut self.local {
            l.completion.chunks_present = Some(chunks);
        }
    }

    /// Whether the driver runs this statement for itself.
    pub fn internal_call(&mut self, internal: bool) {
        if let Some(l) = &mut self.local {
            l.completion.is_internal_call = Some(internal);
        }
    }

    /// One status poll, and how long it took.
    pub fn poll(&mut self, latency: Duration) {
        if let Some(l) = &mut self.local {
            add_u32(&mut l.completion.poll_count, 1);
            add_u64(&mut l.completion.poll_latency_ms, millis(latency));
        }
    }

    /// The poll count and total time, for a driver that keeps its own.
    pub fn polls(&mut self, count: u32, total: Duration) {
        if let Some(l) = &mut self.local {
            l.completion.poll_count = Some(count);
            l.completion.poll_latency_ms = Some(millis(total).min(u64::MAX - 1));
        }
    }

    /// One retry of the execute call.
    pub fn retry(&mut self) {
        if let Some(l) = &mut self.local {
            add_u32(&mut l.completion.retry_count, 1);
        }
    }

    /// A CloudFetch chunk was downloaded (on this task; [`share`](Self::share) the handle
    /// when downloads run on others).
    #[inline]
    pub fn chunk(&mut self, latency: Duration, bytes: u64, compressed: bool) {
        if let Some(l) = &mut self.local {
            l.chunks.record(
                i64::try_from(latency.as_millis()).map_or(MAX_CHUNK_MS, |ms| ms.min(MAX_CHUNK_MS)),
                bytes.min(MAX_CHUNK_BYTES),
                compressed,
            );
            if let Some(bridge) = l.conn.bridge.get() {
                bridge.chunk(latency, bytes);
            }
        }
    }

    /// A CloudFetch chunk failed after its retries: a row of its own, sent at once (see
    /// [`Statement::chunk_failed`]).
    pub fn chunk_failed<E: ReportableError + ?Sized>(&mut self, chunk_index: i64, error: &E) {
        let Some(l) = &self.local else {
            unreported::count(NotReported::StatementOff);
            return;
        };
        if !l.report {
            unreported::count(NotReported::FlagOff);
            return;
        }
        l.conn.emit(
            Some(clock::now()),
            EventKind::ChunkFailed {
                failure: Box::new(telemetry_types::event::ChunkFailure {
                    statement_id: l.id.clone(),
                    statement_type: l.statement_type,
                    operation_type: l.operation_type,
                    chunk_index,
                    chunks: l.chunks,
                    completion: l.completion,
                    error: DriverError::from_error(error),
                }),
            },
        );
    }

    /// The result set is ready; the first mark counts.
    pub fn result_ready(&mut self) {
        if let Some(l) = &mut self.local {
            let ms = clock::now().millis_since(l.begun);
            l.completion.result_ready_latency_ms.get_or_insert(ms);
        }
    }

    /// The result set was consumed; the first mark counts.
    pub fn result_consumed(&mut self) {
        if let Some(l) = &mut self.local {
            let ms = clock::now().millis_since(l.begun);
            l.completion.result_consumption_latency_ms.get_or_insert(ms);
        }
    }

    /// An error on this statement. A terminal one (by SQLSTATE or HTTP status) ends the
    /// statement as [`fail`](Self::fail) does; others are a row of their own, with the
    /// statement's id if it is attached.
    pub fn error<E: ReportableError + ?Sized>(&mut self, error: &E) {
        let Some(l) = &self.local else {
            if DriverError::class_of(error) != ErrorClass::Terminal {
                unreported::count(NotReported::StatementOff);
            }
            return;
        };
        let error = DriverError::from_error(error);
        if error.class == ErrorClass::Terminal {
            self.end(StatementOutcome::Failed, Some(error), Ending::KeepsId);
            return;
        }
        if l.ended {
            unreported::count(NotReported::AfterEnd);
            return;
        }
        if !l.report {
            unreported::count(NotReported::FlagOff);
            return;
        }
        l.conn.emit(
            Some(clock::now()),
            EventKind::Error {
                statement_id: l.id.as_ref().map(|id| StatementId::from(id.as_str())),
                error: Box::new(error),
            },
        );
    }

    /// The statement completed.
    #[inline]
    pub fn complete(mut self) {
        self.end(StatementOutcome::Completed, None, Ending::Final);
    }

    /// The statement failed; the error goes on its row, and a terminal one is sent at once.
    pub fn fail<E: ReportableError + ?Sized>(mut self, error: &E) {
        let error = self.local.is_some().then(|| DriverError::from_error(error));
        self.end(StatementOutcome::Failed, error, Ending::Final);
    }

    /// The statement was cancelled before completing (`CANCEL_STATEMENT`).
    #[inline]
    pub fn cancel(mut self) {
        self.end(StatementOutcome::Cancelled, None, Ending::Final);
    }

    /// The statement was closed before completing (`CLOSE_STATEMENT`).
    #[inline]
    pub fn close(mut self) {
        self.end(StatementOutcome::Closed, None, Ending::Final);
    }

    /// Hands the statement on as a shared [`Statement`] (`Clone + Send + Sync`), carrying on
    /// from what was recorded: for download tasks, a poller, or a reader on another task.
    pub fn share(mut self) -> Statement {
        match self.local.take() {
            Some(l) => Statement::from_shared(Shared::from_local(l)),
            None => Statement::default(),
        }
    }

    /// Reports the end once; an ending after a terminal error is counted as ignored.
    fn end(&mut self, outcome: StatementOutcome, error: Option<DriverError>, ending: Ending) {
        let Some(l) = self.local.as_mut() else {
            return;
        };
        if l.ended {
            l.conn.lease.count_ignored_ending();
            return;
        }
        l.ended = true;
        if l.report {
            l.conn.lease.statement_ended();
        }
        let ended = clock::now();
        let end = StatementEnd {
            statement_type: l.statement_type,
            operation_type: l.operation_type,
            statement_id: match ending {
                // A chunk failure or error after a terminal one still carries the id.
                Ending::KeepsId => l.id.clone(),
                Ending::Final => l.id.take(),
            },
            latency_ms: ended.millis_since(l.begun),
            outcome,
            chunks: l.chunks,
            completion: l.completion,
            error: error.map(Box::new),
            volume: l.volume.take(),
        };
        deliver(&l.conn, l.parent.as_ref(), l.begun, ended, l.report, end);
    }
}

/// Whether the handle records on after its end: a terminal [`LocalStatement::error`] ends
/// the statement but the handle lives on (its id is copied onto the end); the other endings
/// consume it (its id is moved).
#[derive(Clone, Copy)]
enum Ending {
    KeepsId,
    Final,
}

impl Drop for LocalStatement {
    fn drop(&mut self) {
        if self.local.as_ref().is_some_and(|l| !l.ended) {
            self.end(StatementOutcome::Abandoned, None, Ending::Final);
        }
    }
}

impl fmt::Debug for LocalStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.local {
            Some(l) => f
                .debug_struct("LocalStatement")
                .field("id", &l.id)
                .field("operation", &l.operation_type)
                .finish(),
            None => f.write_str("LocalStatement(disabled)"),
        }
    }
}
