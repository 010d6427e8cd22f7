//! A statement handle: chunks folded lock-free on the handle, one event at its start and one
//! at its end.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use telemetry_types::event::{
    ChunkStats, DriverError, EventKind, StatementCompletion, StatementEnd, StatementId,
};
use telemetry_types::wire::{OperationType, StatementType};

use crate::emitter::{Emitter, capped_id, millis};

impl Statement {
    /// Starts a statement: one clock reading, the row's date and the latency's origin.
    pub(crate) fn start(
        conn: &Arc<Emitter>,
        statement_id: &str,
        statement_type: StatementType,
        operation_type: OperationType,
    ) -> Self {
        let id: StatementId = Arc::from(capped_id(statement_id));
        let started = Instant::now();
        conn.emit(
            Some(started),
            EventKind::StatementStarted {
                statement_id: id.clone(),
                statement_type,
                operation_type,
            },
        );
        Statement {
            live: Some(LiveStatement {
                conn: conn.clone(),
                id,
                started,
                chunks: FoldedChunks::default(),
            }),
        }
    }

    /// A handle that reports nothing (telemetry off).
    pub(crate) fn disabled() -> Self {
        Statement { live: None }
    }
}

/// One statement's telemetry (RAII): reports its end exactly once, on
/// [`complete`](Self::complete) or, as abandoned, on drop.
///
/// `Send + Sync`: CloudFetch download threads may share it to report their chunks.
pub struct Statement {
    live: Option<LiveStatement>,
}

struct LiveStatement {
    conn: Arc<Emitter>,
    id: StatementId,
    started: Instant,
    /// Chunks fold here and ride with the completion: a chunk costs a few atomic operations
    /// on the handle, not an event through the queue (a CloudFetch result can have thousands).
    chunks: FoldedChunks,
}

/// [`ChunkStats`] folded lock-free, so download threads sharing a statement never wait on
/// each other. Every count saturates, as [`ChunkStats::record`] does.
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
        let _ = self
            .iterated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(bytes))
            });
        if compressed {
            self.compressed.store(true, Ordering::Relaxed);
        }
        if latency_ms > 0 {
            let _ =
                self.initial
                    .compare_exchange(0, latency_ms, Ordering::Relaxed, Ordering::Relaxed);
            self.slowest.fetch_max(latency_ms, Ordering::Relaxed);
            let _ = self
                .sum
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(latency_ms))
                });
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
    /// once (without the chunks reported so far: they ride with the statement's end, which
    /// then finds the statement already reported and is counted as
    /// [`UnknownStatement`](telemetry_types::drops::DropReason::UnknownStatement)); others are
    /// reported with the statement.
    #[inline]
    pub fn error(&self, error: DriverError) {
        if let Some(s) = &self.live {
            s.conn.emit(
                Some(Instant::now()),
                EventKind::Error {
                    statement_id: Some(s.id.clone()),
                    error: Box::new(error),
                },
            );
        }
    }

    /// The statement finished (or was closed); fields the driver does not know stay `None`.
    /// The latency is measured from [`Connection::statement`](crate::Connection::statement).
    #[inline]
    pub fn complete(mut self, completion: StatementCompletion) {
        if let Some(live) = self.live.take() {
            live.end(completion, false);
        }
    }
}

impl LiveStatement {
    /// Reports the end: the latency measured from the start, the chunks folded here and what
    /// the driver told; out of line.
    fn end(self, completion: StatementCompletion, abandoned: bool) {
        let end = StatementEnd {
            latency_ms: millis(self.started.elapsed()),
            abandoned,
            chunks: self.chunks.into_stats(),
            completion,
        };
        self.conn.emit(
            None,
            EventKind::StatementEnded {
                statement_id: self.id,
                end: Box::new(end),
            },
        );
    }
}

impl Drop for Statement {
    #[inline]
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.end(StatementCompletion::default(), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_chunks_saturate_like_chunk_stats() {
        let folded = FoldedChunks::default();
        let mut whole = ChunkStats::default();
        for (latency, bytes) in [(i64::MAX, u64::MAX), (i64::MAX, 7), (5, u64::MAX)] {
            folded.record(latency, bytes, false);
            whole.record(latency, bytes, false);
        }
        let got = folded.into_stats();
        assert_eq!(got, whole);
        assert_eq!((got.sum_latency_ms, got.bytes), (i64::MAX, u64::MAX));
    }
}
