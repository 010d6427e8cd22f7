//! The queue between producers (driver threads) and the background task: a fixed lock-free
//! array for the steady state, an overflow that grows only while a burst needs it.
//!
//! A single array queue sized for a burst (64 connections x 200 statements at once is 13 000
//! events) would hold most of a megabyte per host for its whole life; a segmented queue
//! alone cost 50-70 ns more per push (measured side by side). So the array is small (192
//! slots, allocated by the host's first event) and, when it is full, events go to a
//! segmented overflow whose segments are allocated as the burst comes and freed as it
//! drains. Both count against the queue's capacity; the driver's text every event carries
//! counts against the host's byte budget wherever it waits, and an overflow event's slot and
//! boxed payload count too (the array's are bounded by its slots). Events need no order
//! between them (a statement is one event), so the consumer takes the array first.
//!
//! The common push makes one read-modify-write, the array's own: no budget update for an
//! event without text, and a look at the array's length (which reads the consumer's index)
//! only every few pushes of a thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_queue::{ArrayQueue, SegQueue};
use telemetry_types::drops::DropReason;
use telemetry_types::event::{CompactId, DriverError, EventKind, TelemetryEvent};

use crate::stats::Counters;

/// Slots of the array part, at most: 192 events of 232 bytes (a statement's end rides
/// inline), about 45 KiB a host (a host's heap at rest is then about 57 KiB, within the
/// 64 KiB target).
pub(crate) const PRIMARY_SLOTS: usize = 192;

/// Slots the array keeps free past its mark: what arrives between a producer's wake-up and
/// the task's first drain (a wake-up takes a few to a few tens of microseconds here; an
/// unpaced driver thread pushes an event every 0.2 us). The mark is the rest of the array,
/// at least half of it: with 192 slots, a producer wakes the task once per 128 events
/// under load (it was once per 64 with 128 slots), and a group of up to 128 statements
/// between two drains wakes nothing.
const MARK_HEADROOM: usize = 64;

/// What one event costs in the overflow, beyond its text: the slot and its share of the
/// segment's bookkeeping.
const OVERFLOW_SLOT_BYTES: usize = std::mem::size_of::<TelemetryEvent>() + 16;

/// The heap bytes an event holds beyond its slot: its boxed payload, the driver's text and a
/// statement id too long to ride inline, as allocated (capped at intake by the handles, and
/// again by the background task).
fn text_bytes(event: &TelemetryEvent) -> usize {
    boxed_bytes(event) + event_text_bytes(event)
}

/// The size of an event's boxed payload (an error, a chunk failure, a volume operation; a
/// statement's end rides inline). In the array part it is bounded by the array's slots (at
/// most [`PRIMARY_SLOTS`] x the largest boxed payload, a few tens of KiB per host) and not
/// counted per event: the common push then makes no read-modify-write on the budget, a line
/// the background task writes too.
fn boxed_bytes(event: &TelemetryEvent) -> usize {
    use std::mem::size_of;
    match &event.kind {
        EventKind::Error { .. } | EventKind::ConnectionFailed { .. } => size_of::<DriverError>(),
        EventKind::ChunkFailed { .. } => size_of::<telemetry_types::event::ChunkFailure>(),
        EventKind::StatementEnded { end } => {
            end.error.as_ref().map_or(0, |_| size_of::<DriverError>())
                + end
                    .volume
                    .as_ref()
                    .map_or(0, |_| size_of::<telemetry_types::event::VolumeOp>())
        }
        EventKind::ConnectionOpened { .. } | EventKind::ConnectionClosed { .. } => 0,
    }
}

/// The driver's text an event carries (error strings, a long id, volume paths), as allocated:
/// counted against the budget wherever the event waits.
#[inline]
fn event_text_bytes(event: &TelemetryEvent) -> usize {
    match &event.kind {
        EventKind::Error {
            error,
            statement_id,
        } => error.text_bytes() + statement_id.as_ref().map_or(0, |s| s.len()),
        EventKind::ConnectionFailed { error, .. } => error.text_bytes(),
        EventKind::ChunkFailed { failure } => {
            failure.error.text_bytes()
                + failure
                    .statement_id
                    .as_ref()
                    .map_or(0, CompactId::heap_bytes)
        }
        EventKind::StatementEnded { end } => end.text_bytes(),
        EventKind::ConnectionOpened { .. } | EventKind::ConnectionClosed { .. } => 0,
    }
}

/// What [`Intake::push`] does with an event once the intake is closed (its task still live).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnClose {
    /// Drops it, counted `after_close`.
    Count,
    /// Refuses it uncounted: the caller counts it.
    Refuse,
}

pub(crate) struct Intake {
    primary: OnceLock<ArrayQueue<TelemetryEvent>>,
    primary_slots: usize,
    overflow: SegQueue<TelemetryEvent>,
    overflow_len: AtomicUsize,
    max_overflow: usize,
    /// Bytes queued beyond the array: overflow slots and every queued event's text.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    closed: AtomicBool,
    /// The background task was dropped unfinished (its runtime shut down): nothing will
    /// ever take what is queued.
    gone: AtomicBool,
    wake: tokio::sync::Notify,
    /// A wake-up is on its way to the task: set by the producer that sends it, cleared by
    /// the task as it wakes. Producers of a burst then each read one flag instead of each
    /// notifying (a read-modify-write on a line the task writes too).
    wake_pending: AtomicBool,
    /// The task found the intake empty and stopped its drain tick: an event it sends at once,
    /// or the one that makes a batch, wakes it; others wait for its flush tick (or the mark).
    /// Read only by a push that could wake the task (a line the task writes when it goes
    /// idle); a wake-up missed in a race costs a delay until the next flush tick drains, never
    /// an event.
    sleeping: AtomicBool,
    high_water: usize,
    /// Events that wake an idle task (its batch size, at most the mark, which wakes it anyway).
    idle_wake_at: usize,
    /// A small array is looked at on every push (a few pushes past its mark would fill it).
    look_every_push: bool,
    counters: std::sync::Arc<Counters>,
}

impl Intake {
    /// An intake of `capacity` events and `max_queued_bytes`, whose idle task is woken when
    /// `batch_size` events wait (or an event it sends at once comes).
    pub(crate) fn new(
        capacity: usize,
        max_queued_bytes: usize,
        batch_size: usize,
        counters: std::sync::Arc<Counters>,
    ) -> Self {
        let primary_slots = capacity.clamp(1, PRIMARY_SLOTS);
        // The array less its headroom, at least half of it: the task drains every few
        // milliseconds anyway; a burst wakes it early, once per hundred-odd events rather
        // than on each.
        let high_water = primary_slots
            .saturating_sub(MARK_HEADROOM)
            .max(primary_slots / 2)
            .max(1);
        Self {
            primary: OnceLock::new(),
            primary_slots,
            overflow: SegQueue::new(),
            overflow_len: AtomicUsize::new(0),
            max_overflow: capacity.saturating_sub(primary_slots),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            closed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            wake_pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            high_water,
            idle_wake_at: batch_size.clamp(1, high_water),
            look_every_push: primary_slots < 8 * LOOK_EVERY as usize,
            counters,
        }
    }

    /// Reserves `bytes` of the queue's budget; false (nothing reserved) if it would overrun.
    fn reserve(&self, bytes: usize) -> bool {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues `event` without blocking; a full queue, a spent budget or a gone task drops it,
    /// counted. After close (the task still live), `on_close` says whether the drop is
    /// counted here or refused (`false` returned, nothing counted) for the caller to count.
    #[inline(always)]
    pub(crate) fn push(&self, event: TelemetryEvent, on_close: OnClose) -> bool {
        if self.closed.load(Ordering::Acquire) {
            let reason = if self.gone.load(Ordering::Acquire) {
                DropReason::RuntimeGone
            } else if on_close == OnClose::Count {
                DropReason::AfterClose
            } else {
                return false;
            };
            self.counters.count_drop(reason, 1);
            return true;
        }
        let text = event_text_bytes(&event);
        let urgent = crate::task::sent_at_once(&event.kind);
        if text > 0 && !self.reserve(text) {
            self.counters.count_drop(DropReason::QueueFull, 1);
            return true;
        }
        let primary = self
            .primary
            .get_or_init(|| ArrayQueue::new(self.primary_slots));
        match primary.push(event) {
            Ok(()) => {
                // The array's length reads the consumer's index too (a line it writes):
                // looked at every few pushes of a thread, which still wakes the task well
                // before the array is full (and a full array spills, and wakes it, anyway).
                if (self.look_every_push || every_few_pushes()) && primary.len() >= self.high_water
                {
                    self.wake_task();
                }
            }
            Err(event) => self.push_overflow(event, text),
        }
        // With a batch at or past the mark (the default), a common event does not even look
        // at whether the task sleeps: a read of a line the task writes.
        if (urgent || self.idle_wake_at < self.high_water) && self.sleeping.load(Ordering::Relaxed)
        {
            self.wake_sleeper(urgent);
        }
        true
    }

    /// The task is idle: wake it (the first producer to see it asleep) for an event it sends
    /// at once, or when a batch waits. Anything else waits for its flush tick, which exports
    /// what waits anyway, or for the mark: a quiet driver's statement then costs its thread
    /// no wake-up (a system call, and on a virtual machine an interrupt to another core), as
    /// OpenTelemetry's batch processors wake their worker only when a batch is ready.
    #[cold]
    #[inline(never)]
    fn wake_sleeper(&self, urgent: bool) {
        // From `idle_wake_at == high_water` on, the mark's own look wakes the task.
        let batch_waits = self.idle_wake_at < self.high_water && self.len() >= self.idle_wake_at;
        if (urgent || batch_waits) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// The task goes idle if the intake is empty: returns whether it did (it then waits for
    /// a producer's wake-up or its flush tick, not its drain tick).
    pub(crate) fn sleep_if_empty(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.len() > 0 {
            self.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The array is full: a burst. Out of line, so the common push stays small.
    #[cold]
    #[inline(never)]
    fn push_overflow(&self, event: TelemetryEvent, text: usize) {
        let queued = self.overflow_len.fetch_add(1, Ordering::Relaxed);
        if queued >= self.max_overflow || !self.reserve(OVERFLOW_SLOT_BYTES + boxed_bytes(&event)) {
            self.overflow_len.fetch_sub(1, Ordering::Relaxed);
            self.queued_bytes.fetch_sub(text, Ordering::Relaxed);
            self.counters.count_drop(DropReason::QueueFull, 1);
            return;
        }
        self.overflow.push(event);
        self.wake_task();
    }

    /// Wakes the background task unless a wake-up is already on its way: one per drain, not
    /// one per event of a burst.
    #[inline]
    fn wake_task(&self) {
        if !self.wake_pending.load(Ordering::Relaxed)
            && !self.wake_pending.swap(true, Ordering::AcqRel)
        {
            self.wake.notify_one();
        }
    }

    /// The oldest event, the array's first. Each way returns the queue's own `Option`, so
    /// that the event (232 bytes) is not copied again on its way out.
    pub(crate) fn pop(&self) -> Option<TelemetryEvent> {
        let popped = self.primary.get().and_then(ArrayQueue::pop);
        if let Some(event) = &popped {
            self.release(event_text_bytes(event));
            return popped;
        }
        let popped = self.overflow.pop();
        if let Some(event) = &popped {
            self.overflow_len.fetch_sub(1, Ordering::Relaxed);
            self.release(text_bytes(event) + OVERFLOW_SLOT_BYTES);
        }
        popped
    }

    /// Gives back what a taken event held of the budget.
    #[inline]
    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Whether the task has gone idle (waiting for a producer's wake-up or its flush tick).
    #[cfg(test)]
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }

    pub(crate) fn len(&self) -> usize {
        self.primary.get().map_or(0, ArrayQueue::len) + self.overflow_len.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The task is gone for good: refuse later events and count what is queued, both as
    /// `runtime_gone`.
    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
        self.close();
        let mut left = 0u64;
        while self.pop().is_some() {
            left += 1;
        }
        self.counters.count_drop(DropReason::RuntimeGone, left);
    }

    /// Whether the task is gone for good.
    #[inline]
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Completes when a producer woke the task (a wake-up sent while the task was busy is
    /// kept by the `Notify` and completes the next call at once). Events pushed from here on
    /// may wake it again.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
        self.wake_pending.store(false, Ordering::Release);
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Whether the array has been allocated (by a first event).
    #[cfg(test)]
    pub(crate) fn is_allocated(&self) -> bool {
        self.primary.get().is_some()
    }

    /// Queues past the closed check, as a producer racing `close` would.
    #[cfg(test)]
    pub(crate) fn push_racing_close(&self, event: TelemetryEvent) {
        let _ = self
            .primary
            .get_or_init(|| ArrayQueue::new(self.primary_slots))
            .push(event);
    }
}

/// Pushes a thread makes between two looks at the array's length.
const LOOK_EVERY: u32 = 16;

/// True on one push in [`LOOK_EVERY`] of the calling thread (a thread-local count). Out of
/// line: inlined into another crate (the facade, where the push is inlined), the
/// thread-local is reached through its key's accessor, an indirect call; here it is one
/// access relative to the thread pointer.
#[inline(never)]
fn every_few_pushes() -> bool {
    thread_local! {
        static PUSHES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    PUSHES.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next % LOOK_EVERY == 0
    })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use telemetry_types::connection::ConnectionInfo;
    use telemetry_types::host::Host;

    use super::*;

    fn event(kind: EventKind) -> TelemetryEvent {
        TelemetryEvent {
            connection: Arc::new(ConnectionInfo::new(
                Host::parse("a.example", false).unwrap(),
                "ua",
            )),
            at: None,
            kind,
        }
    }

    fn opened() -> TelemetryEvent {
        event(EventKind::ConnectionOpened { latency_ms: 1 })
    }

    #[tokio::test]
    async fn a_burst_wakes_the_task_once_per_drain_and_never_loses_a_wake_up() {
        let intake = Intake::new(10_000, 4 << 20, 1, Arc::new(Counters::default()));
        let woken = |intake: &Intake| {
            let mut f = std::pin::pin!(intake.woken());
            std::future::Future::poll(
                f.as_mut(),
                &mut std::task::Context::from_waker(std::task::Waker::noop()),
            )
            .is_ready()
        };
        for _ in 0..intake.high_water - 1 {
            intake.push(opened(), OnClose::Count);
        }
        assert!(
            !intake.wake_pending.load(Ordering::Relaxed),
            "below the mark"
        );
        assert!(!woken(&intake));
        for _ in 0..1_000 {
            intake.push(opened(), OnClose::Count); // past the mark and into the overflow
        }
        assert!(intake.wake_pending.load(Ordering::Relaxed));
        assert!(woken(&intake), "the wake-up was kept for the task");
        assert!(!intake.wake_pending.load(Ordering::Relaxed));
        assert!(!woken(&intake), "one wake-up for the whole burst");
        // Still above the mark after the wake-up: the next event wakes the task again.
        intake.push(opened(), OnClose::Count);
        assert!(woken(&intake));
    }

    #[test]
    fn a_burst_overflows_the_array_and_drains_back_to_nothing() {
        let counters = Arc::new(Counters::default());
        let intake = Intake::new(10_000, 4 << 20, 1, counters.clone());
        assert!(
            intake.primary.get().is_none(),
            "nothing before the first event"
        );
        for _ in 0..5_000 {
            intake.push(opened(), OnClose::Count);
        }
        assert_eq!(intake.len(), 5_000);
        assert_eq!(
            intake.queued_bytes.load(Ordering::Relaxed),
            (5_000 - PRIMARY_SLOTS) * OVERFLOW_SLOT_BYTES
        );
        let mut popped = 0;
        while intake.pop().is_some() {
            popped += 1;
        }
        assert_eq!((popped, intake.len()), (5_000, 0));
        assert_eq!(intake.queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(counters.snapshot().dropped.total(), 0);
    }

    #[test]
    fn statement_ids_too_long_to_ride_inline_count_against_the_budget() {
        use telemetry_types::event::StatementEnd;
        let end = |id: &str| {
            event(EventKind::StatementEnded {
                end: StatementEnd {
                    statement_id: Some(id.into()),
                    ..StatementEnd::default()
                },
            })
        };
        let short = text_bytes(&end("01f0a1b2-c3d4-1e5f-8a9b-0123456789ab"));
        assert_eq!(short, 0, "the end rides inline, and so does a UUID");
        assert_eq!(text_bytes(&end(&"x".repeat(512))), short + 512);
        let error = event(EventKind::Error {
            statement_id: Some("y".repeat(100).into()),
            error: Box::new(DriverError::new("", "")),
        });
        assert_eq!(text_bytes(&error), std::mem::size_of::<DriverError>() + 100);
    }

    #[test]
    fn capacity_and_bytes_bound_the_overflow() {
        let counters = Arc::new(Counters::default());
        let intake = Intake::new(600, 4 << 20, 1, counters.clone());
        for _ in 0..700 {
            intake.push(opened(), OnClose::Count);
        }
        assert_eq!(intake.len(), 600);
        assert_eq!(counters.snapshot().dropped.get(DropReason::QueueFull), 100);
        let small = Intake::new(100_000, 64 << 10, 1, counters.clone());
        for _ in 0..100_000 {
            small.push(opened(), OnClose::Count);
        }
        let held = PRIMARY_SLOTS + (64 << 10) / OVERFLOW_SLOT_BYTES;
        assert_eq!(small.len(), held);
        let huge = || {
            event(EventKind::Error {
                statement_id: None,
                error: Box::new(DriverError::new("E", "x".repeat(40 << 10))),
            })
        };
        small.pop();
        small.push(huge(), OnClose::Count);
        small.push(huge(), OnClose::Count);
        assert_eq!(small.len(), held - 1, "text counts against the same budget");
    }

    /// Open, closed and gone, with each way of handling a closed intake: what `push` answers,
    /// what it counts, and what it queues.
    #[rstest::rstest]
    #[case::open_counting(State::Open, OnClose::Count, true, None, 1)]
    #[case::open_refusing(State::Open, OnClose::Refuse, true, None, 1)]
    #[case::closed_counting(State::Closed, OnClose::Count, true, Some(DropReason::AfterClose), 0)]
    #[case::closed_refusing(State::Closed, OnClose::Refuse, false, None, 0)]
    #[case::gone_counting(State::Gone, OnClose::Count, true, Some(DropReason::RuntimeGone), 0)]
    #[case::gone_refusing(State::Gone, OnClose::Refuse, true, Some(DropReason::RuntimeGone), 0)]
    fn a_closed_intake_counts_or_refuses_what_it_is_handed(
        #[case] state: State,
        #[case] on_close: OnClose,
        #[case] taken: bool,
        #[case] counted: Option<DropReason>,
        #[case] queued: usize,
    ) {
        let counters = Arc::new(Counters::default());
        let intake = Intake::new(10, 1 << 20, 1, counters.clone());
        match state {
            State::Open => {}
            State::Closed => intake.close(),
            State::Gone => intake.mark_gone(),
        }
        assert_eq!(intake.push(opened(), on_close), taken);
        let dropped = counters.snapshot().dropped;
        assert_eq!(dropped.total(), u64::from(counted.is_some()));
        if let Some(reason) = counted {
            assert_eq!(dropped.get(reason), 1);
        }
        assert_eq!(intake.len(), queued);
        assert_eq!(intake.is_closed(), !matches!(state, State::Open));
    }

    #[derive(Debug, Clone, Copy)]
    enum State {
        Open,
        Closed,
        Gone,
    }
}
