//! # telemetry-aggregator
//!
//! Turns a driver's [`TelemetryEvent`]s into the rows of spec section 3 and hands them in
//! batches to a [`BatchSink`] (the exporter in production, a recording sink in tests).
//!
//! - **Intake**: [`Aggregator::emit`] is a non-blocking push into a bounded queue; a full
//!   queue drops the event and counts it. Nothing else runs on the caller's thread.
//! - **Aggregation**: one background task owns all state. Connection open / close become rows
//!   at once. Statement events are folded per statement (chunk statistics, compression, poll
//!   count, latency) into one row on completion. A statement never completed is still
//!   reported: when its TTL passes (default 1 h), when the in-flight cap (default 5000)
//!   evicts it (oldest first), or at close.
//! - **Errors**: a terminal error completes its statement and flushes at once; other errors
//!   are kept on their statement (at most `max_errors_per_statement`) and reported with it;
//!   an error without a (known) statement becomes a standalone row.
//! - **Batching**: a flush starts when pending rows reach `batch_size`, on the flush interval,
//!   on a terminal error, on [`flush`](Aggregator::flush) and on [`close`](Aggregator::close).
//!   At most one batch is in the sink at a time. Pending rows are capped; past the cap the
//!   oldest non-error row is dropped.
//! - **Accounting**: every event ends folded or in a counted drop, and every row ends handed
//!   to the sink or in a counted drop ([`AggregatorStats`]).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use telemetry_aggregator::Aggregator;
//! use telemetry_types::config::TelemetryConfig;
//! use telemetry_types::event::{ConnectionInfo, EventKind, TelemetryEvent, TelemetryRow};
//! use telemetry_types::host::Host;
//! use telemetry_types::traits::{BatchSink, BoxFuture};
//!
//! #[derive(Default)]
//! struct Recorder(Mutex<Vec<TelemetryRow>>);
//! impl BatchSink for Recorder {
//!     fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()> {
//!         self.0.lock().unwrap().extend(batch);
//!         Box::pin(async {})
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sink = Arc::new(Recorder::default());
//! let agg = Aggregator::spawn(&TelemetryConfig::default(), sink.clone(), &tokio::runtime::Handle::current());
//! let conn = Arc::new(ConnectionInfo::new(Host::parse("a.example", false).unwrap(), "ua"));
//! agg.emit(TelemetryEvent { connection: conn, timestamp_millis: 0,
//!     kind: EventKind::ConnectionOpened { latency_ms: 12 } });
//! agg.close(tokio::time::Instant::now() + std::time::Duration::from_secs(2)).await;
//! assert_eq!(sink.0.lock().unwrap().len(), 1);
//! assert_eq!(agg.stats().rows_delivered, 1);
//! # }
//! ```
#![deny(missing_docs)]

mod stats;
mod task;

use std::fmt;
use std::sync::Arc;

use telemetry_types::config::TelemetryConfig;
use telemetry_types::event::TelemetryEvent;
use telemetry_types::traits::BatchSink;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use stats::AggregatorStats;
use stats::Counters;

enum Control {
    Flush(oneshot::Sender<()>),
    Close {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// The producer side of the pipeline and the handle on its background task.
pub struct Aggregator {
    events: mpsc::Sender<TelemetryEvent>,
    control: mpsc::UnboundedSender<Control>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregator")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Aggregator {
    /// Starts the background task on `runtime`. `config` should be valid
    /// ([`TelemetryConfig::validate`]); zero sizes are raised to 1.
    pub fn spawn(config: &TelemetryConfig, sink: Arc<dyn BatchSink>, runtime: &Handle) -> Self {
        let (events, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (control, control_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        runtime.spawn(task::run(
            config.clone(),
            sink,
            rx,
            control_rx,
            counters.clone(),
        ));
        Self {
            events,
            control,
            counters,
        }
    }

    /// Queues one event without blocking. A full queue or a closed aggregator drops it and
    /// counts the drop.
    #[inline]
    pub fn emit(&self, event: TelemetryEvent) {
        if let Err(e) = self.events.try_send(event) {
            self.counters
                .count_rejected_emit(matches!(e, mpsc::error::TrySendError::Full(_)));
        }
    }

    /// Hands every row produced so far (including events already queued) to the sink and
    /// waits until the sink is done with them. Returns at once after close.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops intake, drains the queue, reports every open statement, hands the final rows to
    /// the sink and returns by `deadline` (rows the sink has not finished by then are counted
    /// as dropped on shutdown). Idempotent.
    pub async fn close(&self, deadline: Instant) {
        let (tx, rx) = oneshot::channel();
        if self
            .control
            .send(Control::Close { deadline, done: tx })
            .is_ok()
        {
            // The task enforces the deadline; the grace only covers scheduling.
            let _ =
                tokio::time::timeout_at(deadline + std::time::Duration::from_millis(50), rx).await;
        }
    }

    /// Whether [`close`](Self::close) has completed or the task is gone.
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> AggregatorStats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests;
