//! The statement clock: what a statement's begin and end read on the driver's thread.
//!
//! A statement costs the driver two clock readings, its begin and its end, and they were
//! the largest single part of its cost: `Instant::now()` is a `clock_gettime` call (about
//! 24 ns on a virtual machine, 15-20 ns on bare metal). Where the CPU's time-stamp counter
//! runs at a constant rate whatever the core and power state, [`Stamp::now`] reads the
//! counter instead (about 10 ns) and scales it to nanoseconds with a calibration against
//! the OS's monotonic clock ([`quanta`], the clock `metrics` and `moka` use).
//!
//! The calibration busy-reads both clocks for about half a millisecond (at most 200 ms on a
//! machine too noisy to settle), so it never runs on a driver's thread: the first
//! background runtime of the process (started by the first enabled connection) runs it on
//! one of its blocking threads, and readings taken before it is done come from `Instant`.
//! Both sources give nanoseconds since one origin on the monotonic clock's timeline, so a
//! statement begun before the calibration and ended after it still measures right (to well
//! under a millisecond, the unit of every latency sent). Where the counter is not usable,
//! every reading comes from `Instant`.

use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// A monotonic reading: nanoseconds since the process's clock origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

/// The counter, once calibrated, with the reading that ties it to the origin.
struct Counter {
    clock: quanta::Clock,
    /// A raw counter reading, taken with...
    raw_at_offset: u64,
    /// ...this many nanoseconds since the origin.
    offset_ns: u64,
}

/// Where every stamp counts from: the first reading any statement needs.
static ORIGIN: OnceLock<Instant> = OnceLock::new();
/// The calibrated counter; unset until the calibration is done (and for good where the
/// counter is not usable).
static COUNTER: OnceLock<Counter> = OnceLock::new();

fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds from the origin to `at`, saturating (and 0 for an instant before it).
fn nanos_since_origin(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin()).as_nanos()).unwrap_or(u64::MAX)
}

impl Stamp {
    /// Reads the clock: the counter once calibrated, else `Instant::now()`.
    #[inline]
    pub(crate) fn now() -> Self {
        match COUNTER.get() {
            Some(c) => Self(
                c.offset_ns
                    .saturating_add(c.clock.delta_as_nanos(c.raw_at_offset, c.clock.raw())),
            ),
            None => Self::from_instant(Instant::now()),
        }
    }

    /// The stamp of an `Instant` reading.
    pub(crate) fn from_instant(at: Instant) -> Self {
        Self(nanos_since_origin(at))
    }

    /// Whole milliseconds from `earlier` to this reading (0 if `earlier` is not earlier: a
    /// counter read on another core may lag by a few nanoseconds).
    #[inline]
    pub(crate) fn millis_since(self, earlier: Stamp) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000_000
    }

    /// The reading as an `Instant` (the row's date, the OpenTelemetry span's times). An
    /// absurd stamp (beyond what `Instant` holds) is the origin.
    pub(crate) fn instant(self) -> Instant {
        let origin = origin();
        origin
            .checked_add(Duration::from_nanos(self.0))
            .unwrap_or(origin)
    }
}

/// Starts the counter's calibration on `runtime`'s blocking threads, once per process (with
/// the first background runtime a connection needs: nothing runs before). Until it is done
/// (and for good if the runtime is gone), stamps come from `Instant`.
pub(crate) fn calibrate_in_background(runtime: &tokio::runtime::Handle) {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        // The origin is fixed before the counter exists, so both sources share it.
        let _ = origin();
        drop(runtime.spawn_blocking(|| {
            let _ = COUNTER.set(calibrated());
        }));
    });
}

/// The counter (or the OS clock where the CPU has no invariant counter), tied to the origin.
fn calibrated() -> Counter {
    let clock = quanta::Clock::new();
    let raw_at_offset = clock.raw();
    let offset_ns = nanos_since_origin(Instant::now());
    Counter {
        clock,
        raw_at_offset,
        offset_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_from_both_sources_share_one_timeline() {
        let counter = calibrated();
        let from_instant = Stamp::from_instant(Instant::now());
        let from_counter = Stamp(
            counter.offset_ns.saturating_add(
                counter
                    .clock
                    .delta_as_nanos(counter.raw_at_offset, counter.clock.raw()),
            ),
        );
        let after = Stamp::from_instant(Instant::now());
        // Read in this order, the counter's reading falls between the two Instant ones
        // (give or take the calibration's error, a few microseconds at most).
        let slack = 50_000;
        assert!(
            from_counter.0 + slack >= from_instant.0 && from_counter.0 <= after.0 + slack,
            "{from_instant:?} <= {from_counter:?} <= {after:?}"
        );
    }

    #[test]
    fn millis_are_whole_and_never_negative() {
        let a = Stamp(5_000_000);
        assert_eq!(Stamp(5_999_999).millis_since(a), 0);
        assert_eq!(Stamp(6_000_000).millis_since(a), 1);
        assert_eq!(Stamp(1_234_000_000).millis_since(a), 1229);
        assert_eq!(Stamp(4_000_000).millis_since(a), 0);
    }

    #[test]
    fn a_stamp_converts_back_to_its_instant() {
        // An instant before the origin is the origin: fix the origin first.
        let _ = origin();
        let at = Instant::now();
        let stamp = Stamp::from_instant(at);
        let back = stamp.instant();
        // Nanosecond-exact where the platform's Instant is.
        assert!(back.max(at) - back.min(at) < Duration::from_micros(1));
        let far = origin().checked_add(Duration::from_nanos(u64::MAX));
        assert_eq!(Stamp(u64::MAX).instant(), far.unwrap_or(origin()));
    }

    #[test]
    fn readings_go_forward() {
        let a = Stamp::now();
        let b = Stamp::now();
        // The calibration may finish between the two: the sources agree to microseconds.
        assert!(b.0 + 50_000 >= a.0, "{a:?} then {b:?}");
        assert!(Stamp::from_instant(origin()) == Stamp(0));
    }
}
