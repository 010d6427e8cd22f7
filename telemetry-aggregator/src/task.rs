use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use telemetry_types::classify::ErrorClass;
use telemetry_types::clock::{WallClock, saturating_add};
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::drops::DropReason;
use telemetry_types::event::{DriverError, EventKind, TelemetryEvent};
use telemetry_types::redact::cap_at_word;
use telemetry_types::row::{self, SessionChange, TelemetryRow};
use telemetry_types::sink::BatchSink;
use telemetry_types::wire::TelemetryFrontendLog;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::AggregatorConfig;
use crate::latency::PendingLatencies;
use crate::stats::Counters;
use crate::{Control, DRAIN_INTERVAL, Intake};

/// Longest error name kept, in bytes.
const MAX_ERROR_NAME_BYTES: usize = 1024;
/// Longest error message kept, in bytes: enough for a 2048-character stack trace after
/// redaction, small enough that a megabyte message costs little to keep.
const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;

/// Events taken from the intake before the task yields, so that exports (on the same
/// runtime, perhaps its only worker) run while a burst drains.
const DRAIN_SLICE: usize = 1024;

/// `error` with its strings capped (at a word boundary, so that a secret is never left half
/// there for redaction to miss).
fn capped(mut error: DriverError) -> DriverError {
    if error.name.len() > MAX_ERROR_NAME_BYTES {
        error.name = cap_at_word(&error.name, MAX_ERROR_NAME_BYTES);
    }
    if error.message.len() > MAX_ERROR_MESSAGE_BYTES {
        error.message = cap_at_word(&error.message, MAX_ERROR_MESSAGE_BYTES);
    }
    error
}

/// Whether an event's row is sent at once, with whatever is pending, rather than with its
/// batch: a failed open (the driver may be about to give up), a failed CloudFetch chunk, and
/// a statement or an error ended by a terminal error (with the statement's statistics). An
/// idle task is woken for such an event as it is queued.
pub(crate) fn sent_at_once(kind: &EventKind) -> bool {
    let terminal = |e: &DriverError| e.class == ErrorClass::Terminal;
    match kind {
        EventKind::ConnectionFailed { .. } | EventKind::ChunkFailed { .. } => true,
        EventKind::StatementEnded { end } => end.error.as_deref().is_some_and(terminal),
        EventKind::Error { error, .. } => terminal(error),
        EventKind::ConnectionOpened { .. } | EventKind::ConnectionClosed { .. } => false,
    }
}

struct InFlight {
    handle: JoinHandle<()>,
    rows: u64,
    /// Set once the sink has the batch (from then on the sink settles its rows).
    handed: Arc<AtomicBool>,
}

struct State {
    config: AggregatorConfig,
    sink: Arc<dyn BatchSink>,
    counters: Arc<Counters>,
    pending: VecDeque<TelemetryRow>,
    in_flight: Vec<InFlight>,
    /// Bytes held against `config.max_buffered_bytes` by pending rows.
    held_bytes: usize,
    /// The latencies of the slice being folded, before they reach the sketches.
    latencies: PendingLatencies,
    /// When the last export request started (for `config.linger`).
    last_request: Option<Instant>,
}

/// Marks the intake gone if the task's future is dropped before it finishes (its runtime
/// shut down), so that what it loses is counted.
pub(crate) struct Unfinished(Option<Arc<Intake>>);

impl Unfinished {
    pub(crate) fn new(intake: Arc<Intake>) -> Self {
        Self(Some(intake))
    }

    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(intake) = self.0.take() {
            intake.mark_gone();
        }
    }
}

pub(crate) async fn run(
    config: AggregatorConfig,
    sink: Arc<dyn BatchSink>,
    events: Arc<Intake>,
    control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<Counters>,
    guard: Unfinished,
) {
    run_until_closed(config, sink, events, control, counters).await;
    guard.finished();
}

async fn run_until_closed(
    config: AggregatorConfig,
    sink: Arc<dyn BatchSink>,
    events: Arc<Intake>,
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<Counters>,
) {
    let flush_every = config.flush_interval.max(Duration::from_millis(1));
    let jitter = config.flush_jitter_percent.min(100);
    let flush_tick = tokio::time::sleep_until(after(jittered(flush_every, jitter)));
    tokio::pin!(flush_tick);
    // Idle (the intake found empty): the drain tick stops and the next event wakes the task,
    // so a quiet host costs one wake-up per flush interval, not one per drain interval.
    let mut idle = false;
    let mut drain_tick = tokio::time::interval_at(after(DRAIN_INTERVAL), DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let close_timeout = config.close_timeout;
    let mut s = State {
        config,
        sink,
        counters,
        pending: VecDeque::new(),
        in_flight: Vec::new(),
        held_bytes: 0,
        latencies: PendingLatencies::default(),
        last_request: None,
    };
    // Whether the last drain stopped at its slice with events left.
    let mut backlog = false;
    loop {
        tokio::select! {
            biased;
            ctrl = control.recv() => match ctrl {
                Some(Control::Flush(reply)) => {
                    // A flush waits at most the close timeout: a hung sink must not stall the
                    // task (and with it every later event and the close).
                    let deadline = after(close_timeout);
                    let _ = tokio::time::timeout_at(deadline, s.drain_all(&events)).await;
                    s.flush_all(Deadline::Wait(deadline)).await;
                    let _ = reply.send(());
                }
                Some(Control::Close { deadline, done }) => {
                    s.close(&events, deadline).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    // The aggregator was dropped without close: close with the default deadline.
                    s.close(&events, after(close_timeout)).await;
                    return;
                }
            },
            (index, completed) = s.next_finished(), if !s.in_flight.is_empty() => {
                s.finish(index, completed);
                s.start_flushes(false);
                // A drain held back for room in the budget goes on.
                backlog = events.len() > 0;
            }
            _ = std::future::ready(()), if backlog => backlog = s.drain(&events, DRAIN_SLICE),
            _ = events.woken() => {
                if idle {
                    idle = false;
                    drain_tick.reset();
                }
                backlog = s.drain(&events, DRAIN_SLICE);
            }
            _ = drain_tick.tick(), if !idle => {
                let was_empty = events.len() == 0;
                backlog = s.drain(&events, DRAIN_SLICE);
                idle = was_empty && !s.lingering() && events.sleep_if_empty();
            }
            () = &mut flush_tick => {
                // What a missed wake-up left in the intake goes with this flush.
                backlog = s.drain(&events, DRAIN_SLICE);
                s.start_flushes(true);
                flush_tick.as_mut().reset(after(jittered(flush_every, jitter)));
            }
        }
        s.publish_gauges();
        if backlog {
            // Let the exports this slice started (and anything else on the runtime) run.
            tokio::task::yield_now().await;
        }
    }
}

impl State {
    /// Whether to leave events in the queue for now: the rows waiting fill most of the
    /// budget and exports are under way that will make room. The queue, with its own budget,
    /// holds the rest of a burst meanwhile; nothing is dropped for want of patience.
    fn held_back(&self) -> bool {
        !self.in_flight.is_empty() && self.held_bytes >= self.config.max_buffered_bytes / 4 * 3
    }

    /// Hands the latencies counted so far to the sketches readers see (once a slice).
    fn take_latencies(&mut self) {
        if !self.latencies.is_empty() {
            self.counters
                .latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(&mut self.latencies);
        }
    }

    /// Takes at most `limit` events from the intake; returns whether it should be called
    /// again at once (events left, and room for them). The slice's latencies reach the
    /// sketches before it returns.
    fn drain(&mut self, events: &Intake, limit: usize) -> bool {
        let more = self.drain_slice(events, limit);
        // The slice's full batches go now: what it folded rides in as few requests as the
        // cap allows, not one per `batch_size` rows.
        self.start_flushes(false);
        self.take_latencies();
        more
    }

    fn drain_slice(&mut self, events: &Intake, limit: usize) -> bool {
        // One clock reading dates the whole slice (events wait at most a drain interval);
        // none when the queue is empty.
        let mut clock = None;
        for _ in 0..limit {
            if self.held_back() {
                return false;
            }
            let Some(event) = events.pop() else {
                return false;
            };
            let clock = clock.get_or_insert_with(WallClock::now);
            self.fold(event, clock);
            if self.pending.len() >= self.config.request_rows() {
                self.start_flushes(false);
            }
        }
        events.len() > 0
    }

    /// Takes everything queued now (a flush, a close), a slice at a time, letting exports run
    /// and making room as they finish.
    async fn drain_all(&mut self, events: &Intake) {
        loop {
            let more = self.drain(events, DRAIN_SLICE);
            if events.len() == 0 {
                return;
            }
            if !more {
                // Held back: wait for an export to finish (they end by their own timeouts).
                let (index, completed) = self.next_finished().await;
                self.finish(index, completed);
                self.start_flushes(false);
            } else {
                tokio::task::yield_now().await;
                self.reap_finished().await;
            }
        }
    }

    /// Settles the exports that have finished, without waiting for others.
    async fn reap_finished(&mut self) {
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].handle.is_finished() {
                let done = (&mut self.in_flight[i].handle).await;
                self.finish(i, done.is_ok());
            } else {
                i += 1;
            }
        }
        self.start_flushes(false);
    }

    fn publish_gauges(&self) {
        Counters::set(&self.counters.pending_rows, self.pending.len() as u64);
        Counters::set(&self.counters.buffered_bytes, self.held_bytes as u64);
        Counters::set(
            &self.counters.exports_in_flight,
            self.in_flight.len() as u64,
        );
    }

    fn over_budget(&self, more: usize) -> bool {
        self.held_bytes.saturating_add(more) > self.config.max_buffered_bytes
    }

    /// Drops the oldest non-error pending row (the oldest row if all are errors).
    fn drop_oldest_pending(&mut self) -> bool {
        let victim = self.pending.iter().position(|r| !r.is_error).unwrap_or(0);
        match self.pending.remove(victim) {
            Some(row) => {
                self.held_bytes = self.held_bytes.saturating_sub(row.held_bytes());
                self.counters.count_drop(DropReason::PendingCap, 1);
                true
            }
            None => false,
        }
    }

    /// A row built now (a session, an error): an error row if it carries an error.
    fn push_log(&mut self, connection: Arc<ConnectionInfo>, log: TelemetryFrontendLog) {
        let is_error = log.driver_log().error_info.is_some();
        self.push_row(TelemetryRow::new(log, connection, is_error));
    }

    #[inline(always)]
    fn push_row(&mut self, row: TelemetryRow) {
        let is_error = row.is_error;
        Counters::bump(&self.counters.rows_produced, 1);
        let bytes = row.held_bytes();
        if self.pending.len() >= self.config.max_pending_rows {
            self.drop_oldest_pending();
        }
        // Within the byte budget: older rows make room, else this one goes.
        while self.over_budget(bytes) && self.pending.iter().any(|r| !r.is_error || is_error) {
            if !self.drop_oldest_pending() {
                break;
            }
        }
        if self.over_budget(bytes) {
            self.counters.count_drop(DropReason::ByteBudget, 1);
            return;
        }
        self.held_bytes += bytes;
        self.pending.push_back(row);
    }

    fn fold(&mut self, event: TelemetryEvent, clock: &WallClock) {
        Counters::bump(&self.counters.events_received, 1);
        let TelemetryEvent {
            connection,
            at,
            kind,
        } = event;
        let timestamp_millis = at.map_or(clock.millis(), |at| clock.millis_at(at));
        let urgent = sent_at_once(&kind);
        match kind {
            EventKind::ConnectionOpened { latency_ms } => {
                let log = row::connection_row(
                    &connection,
                    timestamp_millis,
                    SessionChange::Opened,
                    latency_ms,
                );
                self.push_log(connection, log);
            }
            EventKind::ConnectionClosed { latency_ms } => {
                let log = row::connection_row(
                    &connection,
                    timestamp_millis,
                    SessionChange::Closed,
                    latency_ms,
                );
                self.push_log(connection, log);
            }
            EventKind::ConnectionFailed { latency_ms, error } => {
                let log = row::connection_failure_row(
                    &connection,
                    timestamp_millis,
                    latency_ms,
                    &capped(*error),
                );
                self.push_log(connection, log);
            }
            EventKind::StatementEnded { mut end } => {
                end.error = end.error.map(|e| Box::new(capped(*e)));
                if !self.latencies.has_room() {
                    self.take_latencies();
                }
                // Counted while it has room (made just above): the return is then true.
                let _ = self.latencies.record(&end);
                // Built when written into a request body (`TelemetryRow::log_in`).
                self.push_row(TelemetryRow::statement(connection, timestamp_millis, end));
            }
            EventKind::ChunkFailed { failure } => {
                let mut failure = *failure;
                failure.error = capped(failure.error);
                let log = row::chunk_failure_row(&connection, timestamp_millis, &failure);
                self.push_log(connection, log);
            }
            EventKind::Error {
                statement_id,
                error,
            } => {
                let error = capped(*error);
                let log = row::error_row(
                    &connection,
                    timestamp_millis,
                    statement_id.as_deref(),
                    &error,
                );
                self.push_log(connection, log);
            }
        }
        Counters::bump(&self.counters.events_folded, 1);
        if urgent {
            self.start_flushes(true);
        }
    }

    fn take_batch(&mut self) -> Vec<TelemetryRow> {
        let n = self.pending.len().min(self.config.request_rows());
        let batch: Vec<TelemetryRow> = if n == self.pending.len() {
            // Everything pending (the common case: a flush starts as the batch fills): the
            // pending buffer itself becomes the batch, no row copied. A full batch leaves a
            // buffer for the next one; a partial one (a flush tick, a quiet host) leaves
            // none, so an idle host holds no buffer.
            let next = if n >= self.config.batch_size {
                VecDeque::with_capacity(self.config.batch_size)
            } else {
                VecDeque::new()
            };
            Vec::from(std::mem::replace(&mut self.pending, next))
        } else {
            self.pending.drain(..n).collect()
        };
        let bytes: usize = batch.iter().map(TelemetryRow::held_bytes).sum();
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        batch
    }

    /// Starts exports while there is room in flight: full batches, or (`partial`: the flush
    /// interval, an urgent row) whatever is pending.
    fn start_flushes(&mut self, partial: bool) {
        while self.in_flight.len() < self.config.max_concurrent_exports.max(1)
            && ((partial && !self.pending.is_empty()) || self.batch_ready())
        {
            self.start_one();
        }
    }

    /// Whether a full batch goes now: `batch_size` rows are waiting and either no request
    /// started within `linger`, or the rows waiting fill a request (`max_batch_size`) or a
    /// quarter of the byte budget (so lingering never costs a row its place).
    fn batch_ready(&self) -> bool {
        let n = self.pending.len();
        if n < self.config.batch_size {
            return false;
        }
        n >= self.config.request_rows()
            || self.held_bytes >= self.config.max_buffered_bytes / 4
            || self
                .last_request
                .is_none_or(|t| t.elapsed() >= self.config.effective_linger())
    }

    /// Whether a full batch is waiting out its linger (the task must not go idle then: its
    /// drain tick sends it). A batch waiting for a free export slot is not: the export that
    /// finishes wakes the task, so a hung endpoint does not keep an idle host ticking.
    fn lingering(&self) -> bool {
        self.pending.len() >= self.config.batch_size
            && self.in_flight.len() < self.config.max_concurrent_exports.max(1)
    }

    fn start_one(&mut self) {
        let batch = self.take_batch();
        self.last_request = Some(Instant::now());
        let rows = batch.len() as u64;
        Counters::add(&self.counters.batches, 1);
        let sink = self.sink.clone();
        let handed = Arc::new(AtomicBool::new(false));
        let handing = handed.clone();
        let handle = tokio::spawn(async move {
            handing.store(true, Ordering::Release);
            sink.export(batch).await
        });
        self.in_flight.push(InFlight {
            handle,
            rows,
            handed,
        });
    }

    /// The first batch in the sink to finish: its index and whether its task completed.
    fn next_finished(&mut self) -> impl Future<Output = (usize, bool)> + '_ {
        poll_fn(move |cx| {
            for (i, f) in self.in_flight.iter_mut().enumerate() {
                if let Poll::Ready(result) = Pin::new(&mut f.handle).poll(cx) {
                    return Poll::Ready((i, result.is_ok()));
                }
            }
            Poll::Pending
        })
    }

    fn finish(&mut self, index: usize, completed: bool) {
        let f = self.in_flight.swap_remove(index);
        if completed {
            Counters::add(&self.counters.rows_delivered, f.rows);
        } else {
            // The sink panicked: its rows are lost, and it settled none of them.
            tracing::debug!(rows = f.rows, "telemetry sink task failed; rows dropped");
            self.counters.count_drop(DropReason::Shutdown, f.rows);
        }
    }

    /// Delivers everything pending, up to `max_concurrent_exports` batches at a time, until
    /// empty or the deadline. Returns false if the deadline passed: a flush then leaves the
    /// batches in the sink running; a close cuts them.
    async fn flush_all(&mut self, deadline: Deadline) -> bool {
        let at = match deadline {
            Deadline::Wait(at) | Deadline::Cut(at) => at,
        };
        loop {
            self.start_flushes(true);
            if self.in_flight.is_empty() {
                return true;
            }
            match tokio::time::timeout_at(at, self.next_finished()).await {
                Ok((index, completed)) => self.finish(index, completed),
                Err(_) if matches!(deadline, Deadline::Wait(_)) => return false,
                Err(_) => {
                    self.cut_in_flight().await;
                    return false;
                }
            }
        }
    }

    /// Cuts every batch in the sink at the close deadline: the sink settles every row it
    /// received, the unsent ones as dropped on shutdown (`BatchSink`'s contract), so they
    /// count as handed over here, never twice.
    async fn cut_in_flight(&mut self) {
        for mut f in std::mem::take(&mut self.in_flight) {
            f.handle.abort();
            // Resolves once the export future is dropped, so its settling is counted before
            // anyone reads the totals.
            let _ = (&mut f.handle).await;
            if f.handed.load(Ordering::Acquire) {
                Counters::add(&self.counters.rows_delivered, f.rows);
            } else {
                // Cut before the sink ever saw the batch: the rows are ours to count.
                self.counters.count_drop(DropReason::Shutdown, f.rows);
            }
        }
    }

    async fn close(&mut self, events: &Intake, deadline: Instant) {
        // Producers that already passed the closed check may still push for a moment: yield
        // once so they finish, then drain. A push racing past this stays in the queue and is
        // counted as dropped after close when the intake is dropped.
        events.close();
        tokio::task::yield_now().await;
        if tokio::time::timeout_at(deadline, self.drain_all(events))
            .await
            .is_err()
        {
            // Out of time with events still queued: dropped, counted.
            let mut left = 0u64;
            while events.pop().is_some() {
                left += 1;
            }
            self.counters.count_drop(DropReason::AfterClose, left);
            tracing::debug!(
                events = left,
                "telemetry close deadline passed while draining"
            );
        }
        if !self.flush_all(Deadline::Cut(deadline)).await {
            let left = self.pending.len() as u64;
            self.pending.clear();
            self.held_bytes = 0;
            self.counters.count_drop(DropReason::Shutdown, left);
            tracing::debug!(rows = left, "telemetry close deadline passed; rows dropped");
        }
        self.publish_gauges();
    }
}

/// How long a flush may wait for the sink, and what happens to the batches in it then.
#[derive(Clone, Copy)]
enum Deadline {
    /// Stop waiting; the batches in the sink go on.
    Wait(Instant),
    /// Cut the batches in the sink (they settle their rows as dropped on shutdown).
    Cut(Instant),
}

/// `d` from now on the runtime's clock, saturating (see [`saturating_add`]).
/// `every`, moved uniformly within `percent` percent either side.
fn jittered(every: Duration, percent: u8) -> Duration {
    if percent == 0 {
        return every;
    }
    let span = every.mul_f64(f64::from(percent) / 100.0);
    let span_ns = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
    let offset = Duration::from_nanos(telemetry_types::random::random_up_to(
        span_ns.saturating_mul(2),
    ));
    // every - span + [0, 2 span]: never below zero, since span <= every.
    every.saturating_sub(span).saturating_add(offset)
}

fn after(d: Duration) -> Instant {
    Instant::from_std(saturating_add(Instant::now().into_std(), d))
}
