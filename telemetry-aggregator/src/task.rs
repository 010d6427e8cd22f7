use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use telemetry_types::classify::ErrorClass;
use telemetry_types::clock::{WallClock, saturating_add};
use telemetry_types::connection::ConnectionInfo;
use telemetry_types::drops::DropReason;
use telemetry_types::event::{
    DriverError, EventKind, StatementEnd, StatementOutcome, TelemetryEvent,
};
use telemetry_types::redact::cap_at_word;
use telemetry_types::row::{self, SessionChange, StatementSummary, TelemetryRow};
use telemetry_types::sink::BatchSink;
use telemetry_types::wire::{OperationType, StatementType, TelemetryFrontendLog};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::AggregatorConfig;
use crate::stats::Counters;
use crate::{Control, DRAIN_INTERVAL, Intake};

/// A statement in flight: its connection and its handle's key (the server's id may come
/// only with its end).
type StatementKey = (u64, u64);

struct Statement {
    seq: u64,
    connection: Arc<ConnectionInfo>,
    started: Instant,
    started_at_millis: i64,
    statement_type: StatementType,
    operation_type: OperationType,
    errors: Vec<(i64, DriverError)>,
    /// What it holds against the byte budget: its bookkeeping and its kept errors.
    bytes: usize,
}

/// Longest error name kept, in bytes.
const MAX_ERROR_NAME_BYTES: usize = 1024;
/// Longest error message kept, in bytes: enough for a 2048-character stack trace after
/// redaction, small enough that a megabyte message costs little to keep.
const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;

/// `error` with its strings capped (at a word boundary, so that a secret is never left half
/// there for redaction to miss).
fn capped(mut error: DriverError) -> DriverError {
    if error.name.len() > MAX_ERROR_NAME_BYTES {
        error.name = cap_at_word(error.name, MAX_ERROR_NAME_BYTES);
    }
    if error.message.len() > MAX_ERROR_MESSAGE_BYTES {
        error.message = cap_at_word(error.message, MAX_ERROR_MESSAGE_BYTES);
    }
    error
}

/// Bookkeeping bytes of one in-flight statement.
const STATEMENT_OVERHEAD: usize = 160;

fn error_bytes(e: &DriverError) -> usize {
    e.name.len() + e.message.len() + 64
}

/// An estimate of a pending row's memory: its strings plus a fixed overhead.
fn row_bytes(row: &TelemetryRow) -> usize {
    let log = &row.log;
    let d = log.driver_log();
    let strings = log.context.client_context.user_agent.len()
        + d.session_id.as_ref().map_or(0, String::len)
        + d.sql_statement_id.as_ref().map_or(0, String::len)
        + d.error_info
            .as_ref()
            .map_or(0, |e| e.error_name.len() + e.stack_trace.len())
        + if d.system_configuration.is_some() || d.driver_connection_params.is_some() {
            1024
        } else {
            0
        };
    512 + strings
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
    statements: HashMap<StatementKey, Statement>,
    order: BTreeMap<u64, StatementKey>,
    next_seq: u64,
    pending: VecDeque<TelemetryRow>,
    in_flight: Option<InFlight>,
    /// Bytes held against `config.max_buffered_bytes`: in-flight statements (with their kept
    /// errors) and pending rows.
    held_bytes: usize,
}

pub(crate) async fn run(
    config: AggregatorConfig,
    sink: Arc<dyn BatchSink>,
    events: Arc<Intake>,
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<Counters>,
) {
    let flush_every = config.flush_interval.max(Duration::from_millis(1));
    let mut flush_tick = tokio::time::interval_at(after(flush_every), flush_every);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let sweep_every =
        (config.statement_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut sweep_tick = tokio::time::interval_at(after(sweep_every), sweep_every);
    sweep_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain_tick = tokio::time::interval_at(after(DRAIN_INTERVAL), DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let close_timeout = config.close_timeout;
    let mut s = State {
        config,
        sink,
        counters,
        statements: HashMap::new(),
        order: BTreeMap::new(),
        next_seq: 0,
        pending: VecDeque::new(),
        in_flight: None,
        held_bytes: 0,
    };
    loop {
        tokio::select! {
            biased;
            ctrl = control.recv() => match ctrl {
                Some(Control::Flush(reply)) => {
                    // A flush waits at most the close timeout: a hung sink must not stall the
                    // task (and with it every later event and the close).
                    s.drain(&events);
                    s.flush_all(Deadline::Wait(after(close_timeout))).await;
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
            done = async { s.in_flight.as_mut().map(|f| &mut f.handle).expect("guarded by the select precondition").await }, if s.in_flight.is_some() => {
                s.finish_in_flight(done.is_ok());
                if s.pending.len() >= s.config.batch_size {
                    s.start_flush();
                }
            }
            _ = events.woken() => s.drain(&events),
            _ = drain_tick.tick() => s.drain(&events),
            _ = flush_tick.tick() => s.start_flush(),
            _ = sweep_tick.tick() => s.evict_expired(),
        }
        s.publish_gauges();
    }
}

impl State {
    fn drain(&mut self, events: &Intake) {
        // One clock reading dates the whole batch (events wait at most a drain interval);
        // none when the queue is empty.
        let mut clock = None;
        while let Some(event) = events.pop() {
            let clock = clock.get_or_insert_with(|| Clock {
                wall: WallClock::now(),
                now: Instant::now(),
            });
            self.fold(event, clock);
            if self.pending.len() >= self.config.batch_size {
                self.start_flush();
            }
        }
    }

    fn publish_gauges(&self) {
        Counters::set(
            &self.counters.in_flight_statements,
            self.statements.len() as u64,
        );
        Counters::set(&self.counters.pending_rows, self.pending.len() as u64);
        Counters::set(&self.counters.buffered_bytes, self.held_bytes as u64);
    }

    fn over_budget(&self, more: usize) -> bool {
        self.held_bytes.saturating_add(more) > self.config.max_buffered_bytes
    }

    /// Drops the oldest non-error pending row (the oldest row if all are errors).
    fn drop_oldest_pending(&mut self) -> bool {
        let victim = self.pending.iter().position(|r| !r.is_error).unwrap_or(0);
        match self.pending.remove(victim) {
            Some(row) => {
                self.held_bytes = self.held_bytes.saturating_sub(row_bytes(&row));
                self.counters.count_drop(DropReason::PendingCap, 1);
                true
            }
            None => false,
        }
    }

    fn push_row(&mut self, connection: Arc<ConnectionInfo>, log: TelemetryFrontendLog) {
        let is_error = log.driver_log().error_info.is_some();
        Counters::add(&self.counters.rows_produced, 1);
        let row = TelemetryRow {
            log,
            connection,
            is_error,
        };
        let bytes = row_bytes(&row);
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

    fn fold(&mut self, event: TelemetryEvent, clock: &Clock) {
        Counters::add(&self.counters.events_received, 1);
        let TelemetryEvent {
            connection,
            at,
            kind,
        } = event;
        let timestamp_millis = at.map_or(clock.wall.millis(), |at| clock.wall.millis_at(at));
        let fate = match kind {
            EventKind::ConnectionOpened { latency_ms } => self.session_row(
                connection,
                timestamp_millis,
                SessionChange::Opened,
                latency_ms,
            ),
            EventKind::ConnectionClosed { latency_ms } => self.session_row(
                connection,
                timestamp_millis,
                SessionChange::Closed,
                latency_ms,
            ),
            EventKind::ConnectionFailed { latency_ms, error } => {
                let log = row::connection_failure_row(
                    &connection,
                    timestamp_millis,
                    latency_ms,
                    &capped(*error),
                );
                self.push_row(connection, log);
                // The driver may be about to give up: send it now.
                self.start_flush();
                EventFate::Folded
            }
            EventKind::StatementStarted {
                key,
                statement_type,
                operation_type,
            } => {
                let key = (connection.id, key);
                if self.statements.contains_key(&key) {
                    // A reused key (never from the facade's handles): report the earlier
                    // statement before starting again.
                    self.abandon(&key);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let bytes = STATEMENT_OVERHEAD;
                self.order.insert(seq, key);
                self.statements.insert(
                    key,
                    Statement {
                        seq,
                        connection,
                        started: clock.now,
                        started_at_millis: timestamp_millis,
                        statement_type,
                        operation_type,
                        errors: Vec::new(),
                        bytes,
                    },
                );
                self.held_bytes += bytes;
                // Past the count cap, or the byte budget, the oldest statements are reported
                // early (their rows then compete for the budget like any other).
                while self.statements.len() > self.config.max_in_flight_statements
                    || (self.over_budget(0) && self.statements.len() > 1)
                {
                    let Some((_, oldest)) = self.order.first_key_value() else {
                        break;
                    };
                    let oldest = *oldest;
                    Counters::add(&self.counters.evicted_cap, 1);
                    self.abandon(&oldest);
                }
                EventFate::Folded
            }
            EventKind::StatementEnded { key, mut end } => {
                let terminal = end
                    .error
                    .as_ref()
                    .is_some_and(|e| e.class == ErrorClass::Terminal);
                end.error = end.error.map(capped);
                let known = self.complete(&(connection.id, key), |_| *end);
                if known && terminal {
                    // A terminal failure is sent at once, with the statement's statistics.
                    self.start_flush();
                }
                EventFate::from_known(known)
            }
            EventKind::ChunkFailed { failure, .. } => {
                let mut failure = *failure;
                failure.error = capped(failure.error);
                let log = row::chunk_failure_row(&connection, timestamp_millis, &failure);
                self.push_row(connection, log);
                self.start_flush();
                EventFate::Folded
            }
            EventKind::Error { statement, error } => {
                self.error(connection, timestamp_millis, statement, capped(*error))
            }
        };
        match fate {
            EventFate::Folded => Counters::add(&self.counters.events_folded, 1),
            EventFate::Dropped(reason) => self.counters.count_drop(reason, 1),
        }
    }

    fn session_row(
        &mut self,
        connection: Arc<ConnectionInfo>,
        timestamp_millis: i64,
        change: SessionChange,
        latency_ms: u64,
    ) -> EventFate {
        let log = row::connection_row(&connection, timestamp_millis, change, latency_ms);
        self.push_row(connection, log);
        EventFate::Folded
    }

    fn error(
        &mut self,
        connection: Arc<ConnectionInfo>,
        timestamp_millis: i64,
        statement: Option<u64>,
        error: DriverError,
    ) -> EventFate {
        let terminal = error.class == ErrorClass::Terminal;
        let key = statement.map(|k| (connection.id, k));
        match key {
            Some(key) if self.statements.contains_key(&key) => {
                if terminal {
                    // Sends what is pending now; the error rides with its statement's row.
                    self.start_flush();
                }
                let cap = self.config.max_errors_per_statement;
                let bytes = error_bytes(&error);
                let over_budget = self.over_budget(bytes);
                let Some(st) = self.statements.get_mut(&key) else {
                    return EventFate::Dropped(DropReason::UnknownStatement);
                };
                if st.errors.len() >= cap || over_budget {
                    return EventFate::Dropped(DropReason::ErrorCap);
                }
                st.errors.push((timestamp_millis, error));
                st.bytes += bytes;
                self.held_bytes += bytes;
                EventFate::Folded
            }
            _ => {
                let log = row::error_row(&connection, timestamp_millis, None, &error);
                self.push_row(connection, log);
                if terminal {
                    self.start_flush();
                }
                EventFate::Folded
            }
        }
    }

    /// Reports a statement that never ended, with the latency measured here.
    fn abandon(&mut self, key: &StatementKey) -> bool {
        self.complete(key, |latency_ms| StatementEnd {
            latency_ms,
            outcome: StatementOutcome::Abandoned,
            ..StatementEnd::default()
        })
    }

    /// Removes a statement and emits its row (plus one row per kept error); `end` gets the
    /// latency measured here, for ends that did not come from the statement's handle.
    /// Returns whether the statement existed.
    fn complete(&mut self, key: &StatementKey, end: impl FnOnce(u64) -> StatementEnd) -> bool {
        let Some(st) = self.statements.remove(key) else {
            return false;
        };
        self.order.remove(&st.seq);
        self.held_bytes = self.held_bytes.saturating_sub(st.bytes);
        let measured = u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let summary = StatementSummary {
            started_at_millis: st.started_at_millis,
            statement_type: st.statement_type,
            operation_type: st.operation_type,
            end: end(measured),
        };
        let log = row::statement_row(&st.connection, &summary);
        self.push_row(st.connection.clone(), log);
        let id = summary.end.statement_id.as_deref();
        for (ts, e) in &st.errors {
            let log = row::error_row(&st.connection, *ts, id, e);
            self.push_row(st.connection.clone(), log);
        }
        true
    }

    fn evict_expired(&mut self) {
        let now = Instant::now();
        let ttl = self.config.statement_ttl;
        while let Some((_, key)) = self.order.first_key_value() {
            let key = *key;
            let expired = self
                .statements
                .get(&key)
                .is_some_and(|st| now.duration_since(st.started) >= ttl);
            if !expired {
                break;
            }
            Counters::add(&self.counters.evicted_ttl, 1);
            self.abandon(&key);
        }
        if self.pending.len() >= self.config.batch_size {
            self.start_flush();
        }
    }

    fn take_batch(&mut self) -> Vec<TelemetryRow> {
        let n = self.pending.len().min(self.config.batch_size);
        let batch: Vec<TelemetryRow> = self.pending.drain(..n).collect();
        let bytes: usize = batch.iter().map(row_bytes).sum();
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        batch
    }

    /// Starts exporting one batch unless one is already in the sink.
    fn start_flush(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let batch = self.take_batch();
        let rows = batch.len() as u64;
        Counters::add(&self.counters.batches, 1);
        let sink = self.sink.clone();
        let handed = Arc::new(AtomicBool::new(false));
        let handing = handed.clone();
        let handle = tokio::spawn(async move {
            handing.store(true, Ordering::Release);
            sink.export(batch).await
        });
        self.in_flight = Some(InFlight {
            handle,
            rows,
            handed,
        });
    }

    fn finish_in_flight(&mut self, completed: bool) {
        if let Some(f) = self.in_flight.take() {
            if completed {
                Counters::add(&self.counters.rows_delivered, f.rows);
            } else {
                // The sink panicked: its rows are lost, and it settled none of them.
                tracing::debug!(rows = f.rows, "telemetry sink task failed; rows dropped");
                self.counters.count_drop(DropReason::Shutdown, f.rows);
            }
        }
    }

    /// Delivers everything pending, one batch at a time, until empty or the deadline.
    /// Returns false if the deadline passed: a flush then leaves the batch in the sink
    /// running; a close cuts it.
    async fn flush_all(&mut self, deadline: Deadline) -> bool {
        let at = match deadline {
            Deadline::Wait(at) | Deadline::Cut(at) => at,
        };
        loop {
            if let Some(mut f) = self.in_flight.take() {
                let done = tokio::time::timeout_at(at, &mut f.handle).await.ok();
                match done {
                    Some(result) => {
                        self.in_flight = Some(f);
                        self.finish_in_flight(result.is_ok());
                    }
                    None if matches!(deadline, Deadline::Wait(_)) => {
                        self.in_flight = Some(f);
                        return false;
                    }
                    None => {
                        // Cut at the deadline: the sink settles every row it received, the
                        // unsent ones as dropped on shutdown (BatchSink's contract), so they
                        // count as handed over here, never twice.
                        f.handle.abort();
                        // Resolves once the export future is dropped, so its settling is
                        // counted before anyone reads the totals.
                        let _ = (&mut f.handle).await;
                        if f.handed.load(Ordering::Acquire) {
                            Counters::add(&self.counters.rows_delivered, f.rows);
                        } else {
                            // Cut before the sink ever saw the batch: the rows are ours to count.
                            self.counters.count_drop(DropReason::Shutdown, f.rows);
                        }
                        return false;
                    }
                }
            }
            if self.pending.is_empty() {
                return true;
            }
            self.start_flush();
        }
    }

    async fn close(&mut self, events: &Intake, deadline: Instant) {
        // Producers that already passed the closed check may still push for a moment: yield
        // once so they finish, then drain. A push racing past this stays in the queue and is
        // counted as dropped after close when the intake is dropped.
        events.close();
        tokio::task::yield_now().await;
        self.drain(events);
        let open: Vec<StatementKey> = self.order.values().copied().collect();
        for key in open {
            self.abandon(&key);
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

/// How long a flush may wait for the sink, and what happens to the batch in it then.
#[derive(Clone, Copy)]
enum Deadline {
    /// Stop waiting; the batch in the sink goes on.
    Wait(Instant),
    /// Cut the batch in the sink (it settles its rows as dropped on shutdown).
    Cut(Instant),
}

/// `d` from now on the runtime's clock, saturating (see [`saturating_add`]).
fn after(d: Duration) -> Instant {
    Instant::from_std(saturating_add(Instant::now().into_std(), d))
}

/// The clocks read once per drain.
struct Clock {
    /// Dates events (their `at`, or this reading when they have none).
    wall: WallClock,
    /// The runtime's clock, for statement time-to-live.
    now: Instant,
}

/// What became of one event.
enum EventFate {
    Folded,
    Dropped(DropReason),
}

impl EventFate {
    fn from_known(known: bool) -> Self {
        if known {
            Self::Folded
        } else {
            Self::Dropped(DropReason::UnknownStatement)
        }
    }
}
