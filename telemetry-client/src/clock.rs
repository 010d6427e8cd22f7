//! The statement clock: what a statement's begin and end read on the driver's thread.
//!
//! A statement costs the driver two clock readings, its begin and its end, and they were
//! the largest single part of its cost: `Instant::now()` is a `clock_gettime` call (about
//! 24 ns on a virtual machine, 15-20 ns on bare metal). Where the CPU's time-stamp counter
//! runs at a constant rate whatever the core and power state, [`now`] reads the counter
//! instead (about 10 ns) and scales it to nanoseconds with a calibration against the OS's
//! monotonic clock ([`quanta`], the clock `metrics` and `moka` use). A reading is a
//! [`Stamp`]: events carry it as it is, and the background task turns it into the row's
//! date, so the driver's thread does no date arithmetic.
//!
//! The calibration busy-reads both clocks for about half a millisecond (at most 200 ms on a
//! machine too noisy to settle), so it never runs on a driver's thread: the first
//! background runtime of the process (started by the first enabled connection) runs it on
//! one of its blocking threads (the next one, if that runtime shuts down first), and
//! readings taken before it is done come from `Instant`. Both sources give nanoseconds
//! since one origin on the monotonic clock's timeline, so a statement begun before the
//! calibration and ended after it still measures right (to well under a millisecond, the
//! unit of every latency sent). Where the counter is not usable, every reading comes from
//! `Instant`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use telemetry_types::clock::Stamp;
use telemetry_types::clock::origin;

/// The counter, once calibrated, with what ties it to the monotonic clock's timeline.
struct Counter {
    clock: quanta::Clock,
    /// A raw counter reading: a stamp is the nanoseconds the counter counted since it, plus...
    raw_at_offset: u64,
    /// ...this offset: the nanoseconds since the origin at `raw_at_offset`, as last
    /// checked. The calibration's scale is good to some parts per million, and the OS
    /// slews its monotonic clock (NTP): never checked, stamps would drift from `Instant` by
    /// about a second a day and date rows wrong by as much. Checked once per
    /// [`Self::check_every`] counter ticks (about a second), they stay within microseconds.
    offset_ns: AtomicI64,
    /// The raw reading past which the next check is due.
    next_check: AtomicU64,
    /// Counter ticks between two checks.
    check_every: u64,
}

/// How often the counter is checked against the monotonic clock.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The calibrated counter; unset until the calibration is done (and for good where the
/// counter is not usable).
static COUNTER: OnceLock<Counter> = OnceLock::new();

impl Counter {
    /// A reading: the scaled counter, corrected; checked against the monotonic clock (one
    /// `Instant` reading, on whichever thread comes first) once per `check_every` ticks (the
    /// counter does not wrap in the machine's lifetime: 2^64 ticks are two centuries at
    /// 3 GHz).
    #[inline]
    fn now(&self) -> Stamp {
        let raw = self.clock.raw();
        // The counter's nanoseconds since its calibration fit an i64 for 292 years.
        let counted =
            i64::try_from(self.clock.delta_as_nanos(self.raw_at_offset, raw)).unwrap_or(i64::MAX);
        if raw > self.next_check.load(Ordering::Relaxed) {
            self.check(raw, counted);
        }
        Stamp::from_nanos(counted.saturating_add(self.offset_ns.load(Ordering::Relaxed)))
    }

    /// Measures the offset again (one thread per period: the one that moves `next_check`).
    #[cold]
    #[inline(never)]
    fn check(&self, raw: u64, counted: i64) {
        let due = self.next_check.load(Ordering::Relaxed);
        if raw > due
            && self
                .next_check
                .compare_exchange(
                    due,
                    raw.saturating_add(self.check_every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let actual = Stamp::now().as_nanos();
            self.offset_ns
                .store(actual.saturating_sub(counted), Ordering::Relaxed);
        }
    }
}

/// Reads the statement clock: the counter once calibrated, else `Instant::now()`.
#[inline]
pub(crate) fn now() -> Stamp {
    match COUNTER.get() {
        Some(c) => c.now(),
        None => Stamp::now(),
    }
}

/// Starts the counter's calibration on `runtime`'s blocking threads, once per process (with
/// the first background runtime a connection needs: nothing runs before). Until it is done,
/// stamps come from `Instant`.
pub(crate) fn calibrate_in_background(runtime: &tokio::runtime::Handle) {
    static CALIBRATION: Calibration = Calibration::new();
    CALIBRATION.start(runtime, &COUNTER);
}

/// Whether a calibration is on its way.
struct Calibration {
    started: AtomicBool,
}

impl Calibration {
    const fn new() -> Self {
        Self {
            started: AtomicBool::new(false),
        }
    }

    /// Starts the calibration into `counter` unless it is done or on its way. A runtime shut
    /// down before its blocking thread ran it (a driver's runtime for one short-lived
    /// database) drops it unrun: then the next runtime starts it again.
    fn start(&'static self, runtime: &tokio::runtime::Handle, counter: &'static OnceLock<Counter>) {
        if counter.get().is_some() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        // The origin is fixed before the counter exists, so both sources share it.
        let _ = origin();
        /// Unless the counter is set when the task is gone (run, or dropped unrun), lets the
        /// next runtime try.
        struct Retry(&'static Calibration, &'static OnceLock<Counter>);
        impl Drop for Retry {
            fn drop(&mut self) {
                if self.1.get().is_none() {
                    self.0.started.store(false, Ordering::Release);
                }
            }
        }
        let retry = Retry(self, counter);
        drop(runtime.spawn_blocking(move || {
            let retry = retry;
            let _ = retry.1.set(calibrated());
        }));
    }
}

/// The counter (or the OS clock where the CPU has no invariant counter), tied to the origin.
fn calibrated() -> Counter {
    let clock = quanta::Clock::new();
    let raw_at_offset = clock.raw();
    let offset_ns = Stamp::now().as_nanos();
    let check_every = ticks_in(&clock, CHECK_EVERY);
    Counter {
        check_every,
        clock,
        raw_at_offset,
        offset_ns: AtomicI64::new(offset_ns),
        next_check: AtomicU64::new(raw_at_offset.saturating_add(check_every)),
    }
}

/// About how many counter ticks `period` is: the counter's rate, scaled back from a
/// nanosecond count of `clock` (whose scale turns ticks into nanoseconds).
fn ticks_in(clock: &quanta::Clock, period: Duration) -> u64 {
    // The scale of 2^32 ticks in nanoseconds gives the rate to 1 part in 4 billion.
    const PROBE: u64 = 1 << 32;
    let probe_ns = clock.delta_as_nanos(0, PROBE).max(1);
    let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
    u64::try_from(u128::from(period_ns) * u128::from(PROBE) / u128::from(probe_ns))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn stamps_from_both_sources_share_one_timeline() {
        let counter = calibrated();
        let from_instant = Stamp::from_instant(Instant::now());
        let from_counter = counter.now();
        let after = Stamp::from_instant(Instant::now());
        // Read in this order, the counter's reading falls between the two Instant ones
        // (give or take the calibration's error, a few microseconds at most).
        let slack = 50_000;
        assert!(
            from_counter.as_nanos() + slack >= from_instant.as_nanos()
                && from_counter.as_nanos() <= after.as_nanos() + slack,
            "{from_instant:?} <= {from_counter:?} <= {after:?}"
        );
    }

    #[test]
    fn a_counter_off_the_monotonic_clock_is_corrected_at_its_next_check() {
        let counter = calibrated();
        // As if the scale had drifted 5 ms since the calibration.
        counter.offset_ns.fetch_add(5_000_000, Ordering::Relaxed);
        let instant = || Stamp::now().as_nanos();
        // No check due: the reading is 5 ms ahead (bracketed by Instant readings, so a
        // preemption between the lines only widens the bracket).
        let before = instant();
        assert!(counter.now().as_nanos() >= before + 4_000_000);
        // A check due (a period of ticks since the last): that reading and the next are on
        // time again.
        let raw = counter.clock.raw();
        counter.next_check.store(raw - 1, Ordering::Relaxed);
        for _ in 0..2 {
            let before = instant();
            let reading = counter.now().as_nanos();
            let after = instant();
            let slack = 100_000;
            assert!(
                reading + slack >= before && reading <= after + slack,
                "{before} <= {reading} <= {after}"
            );
        }
        assert!(counter.next_check.load(Ordering::Relaxed) > raw + counter.check_every / 2);
    }

    #[test]
    fn a_check_period_in_ticks_scales_back_to_the_period() {
        let clock = quanta::Clock::new();
        let ticks = ticks_in(&clock, Duration::from_secs(1));
        let back = clock.delta_as_nanos(0, ticks);
        assert!(
            back.abs_diff(1_000_000_000) < 1_000,
            "{ticks} ticks = {back} ns"
        );
    }

    #[test]
    fn a_calibration_dropped_with_its_runtime_starts_again_on_the_next() {
        let calibration: &'static Calibration = Box::leak(Box::new(Calibration::new()));
        let counter: &'static OnceLock<Counter> = Box::leak(Box::new(OnceLock::new()));
        // A runtime shut down before its blocking pool runs anything.
        let gone = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = gone.handle().clone();
        drop(gone);
        calibration.start(&handle, counter);
        assert!(counter.get().is_none());
        assert!(
            !calibration.started.load(Ordering::Acquire),
            "free to start again"
        );
        // The next runtime runs it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        calibration.start(rt.handle(), counter);
        let deadline = Instant::now() + Duration::from_secs(60);
        rt.block_on(async {
            while counter.get().is_none() && Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
        });
        assert!(counter.get().is_some());
        // Done: a later runtime starts nothing.
        calibration.start(rt.handle(), counter);
        assert!(calibration.started.load(Ordering::Acquire));
    }

    #[test]
    fn readings_go_forward() {
        let a = now();
        let b = now();
        // The calibration may finish between the two: the sources agree to microseconds.
        assert!(b.as_nanos() + 50_000 >= a.as_nanos(), "{a:?} then {b:?}");
    }
}
