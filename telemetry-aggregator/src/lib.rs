//! # telemetry-aggregator
//!
//! Turns a driver's [`TelemetryEvent`]s into the rows of spec section 3 and hands them in
//! batches to a [`BatchSink`] (the exporter in production, a recording sink in tests).
//!
//! - **Intake**: [`Aggregator::emit`] is a non-blocking push into a bounded lock-free array
//!   queue, allocated on the first event (a host that reports nothing holds none of it); a
//!   full queue drops the event and counts it. Error text is queued as the driver handed it, within the
//!   byte budget (past it the error is dropped as queue-full), and capped by the background
//!   task. Nothing else runs on the caller's thread: the
//!   push does not wake the background task (a wake can cost a syscall), which drains the queue
//!   every few milliseconds, or at once when the queue passes a high-water mark.
//! - **Aggregation**: one background task owns all state. Connection open / close become rows
//!   at once. A statement is two events, keyed by its handle (the server's id comes with its
//!   end): its start and its end, which carries everything the handle recorded (id, outcome,
//!   chunk statistics, polls, format, error) and becomes one row. A statement never ended is
//!   still reported, as `CLOSE_STATEMENT`: when its TTL passes (default 1 h), when the
//!   in-flight cap (default 5000) evicts it (oldest first), or at close.
//! - **Errors**: a statement that failed with a terminal error, a failed session open and a
//!   failed CloudFetch chunk are flushed at once; other errors are kept on their statement
//!   (at most `max_errors_per_statement`) and reported with it; an error without a (known)
//!   statement becomes a standalone row.
//! - **Settings**: [`AggregatorConfig`], with its defaults and bounds.
//! - **Batching**: a flush starts when pending rows reach `batch_size`, on the flush interval,
//!   on a terminal error, on [`flush`](Aggregator::flush) and on [`close`](Aggregator::close).
//!   At most one batch is in the sink at a time. Pending rows are capped; past the cap the
//!   oldest non-error row is dropped.
//! - **Accounting**: every event ends folded or in a drop counted by its
//!   [`DropReason`], and every row ends handed to the sink
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
mod stats;
mod task;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use telemetry_types::clock::saturating_add;
use telemetry_types::drops::DropReason;
use telemetry_types::event::{EventKind, TelemetryEvent};
use telemetry_types::sink::BatchSink;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use config::AggregatorConfig;
pub use stats::AggregatorStats;
use stats::Counters;

/// How often the background task drains the intake when nothing wakes it.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// The heap bytes of an event's driver text: the error's strings, as allocated (an error
/// message is queued as the driver handed it and capped by the background task, so that
/// the driver's thread neither copies nor reallocates it).
fn text_bytes(event: &TelemetryEvent) -> usize {
    fn of(e: &telemetry_types::event::DriverError) -> usize {
        e.name.capacity() + e.message.capacity() + e.sqlstate.as_ref().map_or(0, String::capacity)
    }
    match &event.kind {
        EventKind::Error { error, .. } | EventKind::ConnectionFailed { error, .. } => of(error),
        EventKind::ChunkFailed { failure, .. } => of(&failure.error),
        EventKind::StatementEnded { end, .. } => {
            end.error.as_ref().map_or(0, of)
                + end.volume.as_ref().map_or(0, |v| {
                    v.volume_path.as_ref().map_or(0, String::capacity)
                        + v.local_file.as_ref().map_or(0, String::capacity)
                })
        }
        _ => 0,
    }
}

/// The queue between producers and the background task.
pub(crate) struct Intake {
    /// Allocated by the first event: an array of `capacity` slots (about 64 bytes each). A
    /// segmented queue that grows and shrinks with its content cost 50-70 ns more per push
    /// (measured side by side); allocating on first use keeps idle hosts free.
    queue: OnceLock<crossbeam_queue::ArrayQueue<TelemetryEvent>>,
    capacity: usize,
    /// Bytes of error text queued now (only error events carry text of the driver's size).
    queued_text: AtomicUsize,
    /// At most this many bytes of error text are queued; past it errors are dropped.
    max_queued_text: usize,
    closed: AtomicBool,
    wake: tokio::sync::Notify,
    high_water: usize,
    counters: Arc<Counters>,
}

impl Drop for Intake {
    /// An event pushed by a producer racing the final drain of `close` is still counted.
    fn drop(&mut self) {
        let left = self.len() as u64;
        if left > 0 {
            self.counters.count_drop(DropReason::AfterClose, left);
        }
    }
}

impl Intake {
    pub(crate) fn pop(&self) -> Option<TelemetryEvent> {
        let event = self.queue.get()?.pop()?;
        let text = text_bytes(&event);
        if text > 0 {
            self.queued_text.fetch_sub(text, Ordering::Relaxed);
        }
        Some(event)
    }

    fn len(&self) -> usize {
        self.queue.get().map_or(0, |q| q.len())
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

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
        let capacity = config.queue_capacity.max(1);
        let counters = Arc::new(Counters::default());
        let intake = Arc::new(Intake {
            queue: OnceLock::new(),
            capacity,
            queued_text: AtomicUsize::new(0),
            max_queued_text: config.max_buffered_bytes,
            closed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            // Half the queue: at the default 10 000 events and the 10 ms tick a producer must
            // emit 500 000 events/s before it wakes the task; a lower mark (once batch size x 4)
            // woke it every few milliseconds under an ordinary load, a syscall each time.
            high_water: (capacity / 2).max(1),
            counters: counters.clone(),
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        runtime.spawn(task::run(
            config.clone(),
            sink,
            intake.clone(),
            control_rx,
            counters.clone(),
        ));
        Self {
            intake,
            control,
            counters,
        }
    }

    /// Queues one event without blocking or waking anything (unless the queue passes its
    /// high-water mark). A full queue or a closed aggregator drops it and counts the drop.
    #[inline]
    pub fn emit(&self, event: TelemetryEvent) {
        let intake = &*self.intake;
        if intake.closed.load(Ordering::Acquire) {
            self.counters.count_drop(DropReason::AfterClose, 1);
            return;
        }
        let text = text_bytes(&event);
        if text > 0 {
            let queued = intake.queued_text.fetch_add(text, Ordering::Relaxed);
            if queued.saturating_add(text) > intake.max_queued_text {
                intake.queued_text.fetch_sub(text, Ordering::Relaxed);
                self.counters.count_drop(DropReason::QueueFull, 1);
                return;
            }
        }
        let queue = intake
            .queue
            .get_or_init(|| crossbeam_queue::ArrayQueue::new(intake.capacity));
        if queue.push(event).is_err() {
            if text > 0 {
                intake.queued_text.fetch_sub(text, Ordering::Relaxed);
            }
            self.counters.count_drop(DropReason::QueueFull, 1);
        } else if queue.len() >= intake.high_water {
            intake.wake.notify_one();
        }
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
        !self.intake.closed.load(Ordering::Acquire)
    }

    /// Whether [`close`](Self::close) has completed or the task is gone.
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
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
