use std::sync::atomic::{AtomicU64, Ordering};

use telemetry_types::drops::{DropCounters, DropCounts, DropReason, DropUnit};

/// A snapshot of the aggregator's counters.
///
/// Identities (once closed): `events_emitted() == events_folded + events_dropped()` and
/// `rows_produced == rows_delivered + rows_dropped() + pending_rows`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregatorStats {
    /// Events the background task took from the queue.
    pub events_received: u64,
    /// Events folded into a row or a statement.
    pub events_folded: u64,
    /// Rows built.
    pub rows_produced: u64,
    /// Rows handed to the sink whose export ended, or was cut at the close deadline (the
    /// sink settles each row of a cut export itself).
    pub rows_delivered: u64,
    /// Events and rows dropped, by reason: [`QueueFull`](DropReason::QueueFull),
    /// [`AfterClose`](DropReason::AfterClose) (events); [`PendingCap`](DropReason::PendingCap),
    /// [`ByteBudget`](DropReason::ByteBudget), [`Shutdown`](DropReason::Shutdown) (rows).
    pub dropped: DropCounts,
    /// Batches handed to the sink.
    pub batches: u64,
    /// Batches in the sink now.
    pub exports_in_flight: u64,
    /// Rows waiting now.
    pub pending_rows: u64,
    /// Bytes held now against the byte budget by rows waiting for export.
    pub buffered_bytes: u64,
    /// Events in the intake queue now, not yet taken by the background task.
    pub queued_events: u64,
}

impl AggregatorStats {
    /// Every event the driver emitted while this aggregator existed.
    pub fn events_emitted(&self) -> u64 {
        self.events_received
            + self.queued_events
            + self.dropped.get(DropReason::QueueFull)
            + self.dropped.get(DropReason::AfterClose)
            + self.dropped.get(DropReason::RuntimeGone)
    }

    /// Events dropped, all reasons.
    pub fn events_dropped(&self) -> u64 {
        self.dropped.total_of(DropUnit::Event)
    }

    /// Rows dropped, all reasons.
    pub fn rows_dropped(&self) -> u64 {
        self.dropped.total_of(DropUnit::Row)
    }
}

macro_rules! counters {
    ($($name:ident),+ $(,)?) => {
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)+
            pub(crate) dropped: DropCounters,
            /// Written by the task once per statement end; read by `latencies()`.
            pub(crate) latencies: std::sync::Mutex<crate::latency::Latencies>,
        }
        impl Counters {
            pub(crate) fn snapshot(&self) -> AggregatorStats {
                AggregatorStats {
                    $($name: self.$name.load(Ordering::Relaxed),)+
                    dropped: self.dropped.snapshot(),
                    queued_events: 0,
                }
            }
        }
    };
}

counters!(
    events_received,
    events_folded,
    rows_produced,
    rows_delivered,
    batches,
    exports_in_flight,
    pending_rows,
    buffered_bytes,
);

impl Counters {
    pub(crate) fn count_drop(&self, reason: DropReason, n: u64) {
        self.dropped.add(reason, n);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds to a counter only the background task writes (readers only load it): a load and
    /// a store, not a locked read-modify-write, for the counters every event touches. The
    /// task's polls never overlap, and the runtime orders them when the task moves between
    /// threads, so no update is lost.
    pub(crate) fn bump(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }
}
