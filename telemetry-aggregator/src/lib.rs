//! # telemetry-aggregator
//!
//! Turns a driver's [`TelemetryEvent`]s into the rows the server's schema defines (docs/TELEMETRY.md, "What is sent") and hands them in
//! batches to a [`BatchSink`] (the exporter in production, a recording sink in tests).
//!
//! - **Intake**: [`Aggregator::emit`] is a non-blocking push into a lock-free array queue of
//!   192 slots (a statement's end rides inline in its slot), allocated by the host's first event (a host that reports nothing holds none
//!   of it); a burst that fills it spills into a segmented overflow that grows while the burst
//!   lasts and is freed as it drains. Capacity and bytes (overflow slots, error text) are
//!   bounded; past them the event is dropped and counted. Nothing else runs on the caller's
//!   thread: the push does not wake the background task (a wake-up is a system call), which
//!   drains the queue every 10 ms while events come, or at once when the array reaches its
//!   mark (128 events, the last 64 slots kept for what comes while the task wakes).
//!   A task that found the queue empty stops that tick; a producer then wakes it only for a
//!   row it sends at once (see Flushes) or when
//!   `batch_size` events wait, and the flush tick takes the rest, as it would send them: a
//!   quiet driver's statements wake no thread (OpenTelemetry's batch processors wake their
//!   worker only for a ready batch too).
//! - **Rows**: one background task owns all state and turns each event into its row:
//!   connection open / close / failed open, a statement's end (which carries everything its
//!   handle recorded: type, operation, id, outcome, chunk statistics, polls, format, error),
//!   a CloudFetch chunk failure, an error. It drains a burst in slices, yielding between
//!   them, so exports run while it drains.
//! - **Flushes**: a failed statement or an error row with a terminal error, a failed session
//!   open and a failed CloudFetch chunk are flushed at once; so is everything pending on
//!   [`flush`](Aggregator::flush) and [`close`](Aggregator::close); otherwise a flush starts
//!   when pending rows reach `batch_size` (after a drain slice) and on the flush interval.
//!   Under load a full batch less than `linger` after the last request waits to grow, up to
//!   `max_batch_size` rows or a quarter of the byte budget: fewer, larger requests.
//! - **Settings**: [`AggregatorConfig`], with its defaults and bounds.
//! - **Batching**: up to `max_concurrent_exports` batches are in the sink at once, so a burst
//!   does not pile up behind one request. Pending rows are bounded in bytes
//!   (`max_buffered_bytes`): past it the oldest non-error row makes room; rows are never
//!   dropped because a flush is in flight.
//! - **Accounting**: every event ends folded or in a drop counted by its
//!   [`DropReason`](telemetry_types::drops::DropReason), and every row ends handed to the sink
//!   or in a counted drop ([`AggregatorStats`]).
//!
//! ```
//! use telemetry_aggregator::{Aggregator, AggregatorConfig};
//! use telemetry_types::connection::ConnectionInfo;
//! use telemetry_types::event::{EventKind, TelemetryEvent};
//! use telemetry_types::host::Host;
//! use telemetry_types::testing::RecordingSink;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sink = RecordingSink::new();
//! let agg = Aggregator::spawn(&AggregatorConfig::default(), sink.clone(), &tokio::runtime::Handle::current());
//! let conn = std::sync::Arc::new(ConnectionInfo::new(Host::parse("a.example", false).unwrap(), "ua"));
//! agg.emit(TelemetryEvent { connection: conn, at: None,
//!     kind: EventKind::ConnectionOpened { latency_ms: 12 } });
//! agg.close(tokio::time::Instant::now() + std::time::Duration::from_secs(2)).await;
//! assert_eq!(sink.rows().len(), 1);
//! assert_eq!(agg.stats().rows_delivered, 1);
//! # }
//! ```

mod config;
mod intake;
mod latency;
mod stats;
mod task;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use telemetry_types::clock::saturating_add;
use telemetry_types::event::TelemetryEvent;
use telemetry_types::sink::BatchSink;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use config::AggregatorConfig;
pub use latency::{Latencies, LatencyPercentiles, Percentiles};
pub use stats::AggregatorStats;

use intake::{Intake, OnClose};
use stats::Counters;

/// How often the background task drains the intake when nothing wakes it.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

enum Control {
    Flush(oneshot::Sender<()>),
    Close {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// The producer side of the pipeline and the handle on its background task.
pub struct Aggregator {
    intake: Arc<Intake>,
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
    /// ([`AggregatorConfig::validate`]); zero sizes are raised to 1.
    pub fn spawn(config: &AggregatorConfig, sink: Arc<dyn BatchSink>, runtime: &Handle) -> Self {
        let counters = Arc::new(Counters::default());
        let intake = Arc::new(Intake::new(
            config.queue_capacity,
            config.max_buffered_bytes,
            config.batch_size,
            counters.clone(),
        ));
        let (control, control_rx) = mpsc::unbounded_channel();
        // Built before the task's future, so that a runtime that drops the task unpolled (a
        // caller's runtime already shut down) still counts what it loses.
        let guard = task::Unfinished::new(intake.clone());
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.spawn(task::run(
                config.clone(),
                sink,
                intake.clone(),
                control_rx,
                counters.clone(),
                guard,
            ))
        }));
        Self {
            intake,
            control,
            counters,
        }
    }

    /// Queues one event without blocking or waking anything (unless the queue passes its
    /// high-water mark). A full queue or a closed aggregator drops it and counts the drop.
    #[inline(always)]
    pub fn emit(&self, event: TelemetryEvent) {
        self.intake.push(event, OnClose::Count);
    }

    /// Queues one event as [`emit`](Self::emit) does, except once the aggregator is closing or
    /// closed while its task lives: the event is then dropped without being counted here, and
    /// `false` returned, for a caller that counts such late events itself (the facade does,
    /// because a closed host's totals are retired). One closed check on the way, where
    /// checking [`is_accepting`](Self::is_accepting) and [`is_gone`](Self::is_gone) first
    /// would make three.
    #[inline(always)]
    pub fn emit_unless_closed(&self, event: TelemetryEvent) -> bool {
        self.intake.push(event, OnClose::Refuse)
    }

    /// Hands every row produced so far (including events already queued) to the sink and
    /// waits until the sink is done with them, at most the close timeout (a hung sink keeps
    /// its batch; the task goes on). Returns at once after close.
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
            let _ = tokio::time::timeout_at(
                Instant::from_std(saturating_add(
                    deadline.into_std(),
                    std::time::Duration::from_millis(50),
                )),
                rx,
            )
            .await;
        }
    }

    /// Whether the aggregator still takes events (not closing or closed): one atomic load.
    #[inline]
    pub fn is_accepting(&self) -> bool {
        !self.intake.is_closed()
    }

    /// Resolves once the background task has ended (after [`close`](Self::close), every
    /// batch in the sink settled or cut): the moment its counters are final.
    pub async fn finished(&self) {
        self.control.closed().await;
    }

    /// Whether the background task was dropped unfinished (its runtime shut down): every
    /// event is then counted as dropped `runtime_gone`.
    #[inline]
    pub fn is_gone(&self) -> bool {
        self.intake.is_gone()
    }

    /// Whether [`close`](Self::close) has completed or the task is gone.
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
    }

    /// The latency sketches of the statements folded so far (mergeable with other hosts').
    pub fn latencies(&self) -> Latencies {
        self.counters
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> AggregatorStats {
        AggregatorStats {
            queued_events: self.intake.len() as u64,
            ..self.counters.snapshot()
        }
    }
}

#[cfg(test)]
mod tests;
