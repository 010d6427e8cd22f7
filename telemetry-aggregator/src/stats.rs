use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Events dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Events emitted after close.
    pub dropped_after_close: u64,
    /// Events for a statement that is not in flight (never started, already completed or
    /// evicted).
    pub dropped_unknown_statement: u64,
    /// Errors past the per-statement cap.
    pub dropped_error_cap: u64,
    /// Rows built.
    pub rows_produced: u64,
    /// Rows the sink finished with.
    pub rows_delivered: u64,
    /// Rows dropped because pending rows hit the cap.
    pub dropped_pending_cap: u64,
    /// Rows not delivered by the close deadline.
    pub dropped_shutdown: u64,
    /// Statements reported early because their TTL passed.
    pub evicted_ttl: u64,
    /// Statements reported early because the in-flight cap was reached.
    pub evicted_cap: u64,
    /// Batches handed to the sink.
    pub batches: u64,
    /// Statements in flight now.
    pub in_flight_statements: u64,
    /// Rows waiting now.
    pub pending_rows: u64,
}

impl AggregatorStats {
    /// Every event the driver emitted while this aggregator existed.
    pub fn events_emitted(&self) -> u64 {
        self.events_received + self.dropped_queue_full + self.dropped_after_close
    }

    /// Events dropped, all reasons.
    pub fn events_dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_after_close
            + self.dropped_unknown_statement
            + self.dropped_error_cap
    }

    /// Rows dropped, all reasons.
    pub fn rows_dropped(&self) -> u64 {
        self.dropped_pending_cap + self.dropped_shutdown
    }

    /// Event drops by reason, as `(reason, count)` pairs with stable names.
    pub fn event_drops(&self) -> [(&'static str, u64); 4] {
        [
            ("queue_full", self.dropped_queue_full),
            ("after_close", self.dropped_after_close),
            ("unknown_statement", self.dropped_unknown_statement),
            ("error_cap", self.dropped_error_cap),
        ]
    }

    /// Row drops by reason, as `(reason, count)` pairs with stable names.
    pub fn row_drops(&self) -> [(&'static str, u64); 2] {
        [
            ("pending_cap", self.dropped_pending_cap),
            ("shutdown", self.dropped_shutdown),
        ]
    }
}

macro_rules! counters {
    ($($name:ident),+ $(,)?) => {
        #[derive(Default)]
        pub(crate) struct Counters { $(pub(crate) $name: AtomicU64),+ }
        impl Counters {
            pub(crate) fn snapshot(&self) -> AggregatorStats {
                AggregatorStats { $($name: self.$name.load(Ordering::Relaxed)),+ }
            }
        }
    };
}

counters!(
    events_received,
    events_folded,
    dropped_queue_full,
    dropped_after_close,
    dropped_unknown_statement,
    dropped_error_cap,
    rows_produced,
    rows_delivered,
    dropped_pending_cap,
    dropped_shutdown,
    evicted_ttl,
    evicted_cap,
    batches,
    in_flight_statements,
    pending_rows,
);

impl Counters {
    pub(crate) fn count_rejected_emit(&self, full: bool) {
        let c = if full {
            &self.dropped_queue_full
        } else {
            &self.dropped_after_close
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }
}
