//! Time: monotonic [`Stamp`]s (what the driver's threads date events with), wall-clock
//! milliseconds since the epoch, and dating stamps without reading the wall clock for each.

use std::time::Instant;

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `base + d`, or a year past `base` when the clock cannot hold the sum (`d` near
/// `Duration::MAX`): an [`Instant`] spans centuries, so a year always fits. Deadlines built from
/// configured durations never panic.
///
/// ```
/// use std::time::{Duration, Instant};
/// use telemetry_types::clock::saturating_add;
/// let now = Instant::now();
/// assert_eq!(saturating_add(now, Duration::from_secs(1)), now + Duration::from_secs(1));
/// assert!(saturating_add(now, Duration::MAX) > now);
/// ```
pub fn saturating_add(base: Instant, d: std::time::Duration) -> Instant {
    base.checked_add(d)
        .unwrap_or_else(|| base + std::time::Duration::from_secs(365 * 24 * 3600))
}

/// Where every [`Stamp`] counts from: the process's first reading.
static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The instant every [`Stamp`] of the process counts from (fixed by the first call).
pub fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// A monotonic reading: nanoseconds since the process's [`origin`] (negative before it), on
/// the monotonic clock's timeline. What the driver's threads date events with: a reading
/// from `Instant`, or from a faster clock on the same timeline (`telemetry-client` reads the
/// CPU's counter), carried as a number, so that turning it into a date is the background
/// task's work.
///
/// ```
/// use std::time::{Duration, Instant};
/// use telemetry_types::clock::Stamp;
///
/// let begun = Stamp::now();
/// let ended = Stamp::from_nanos(begun.as_nanos() + 1_500_000);
/// assert_eq!(ended.millis_since(begun), 1);
/// assert_eq!(begun.millis_since(ended), 0);
/// assert!(Stamp::from_instant(begun.instant()) == begun);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(i64);

impl Stamp {
    /// Reads `Instant::now()`.
    pub fn now() -> Self {
        Self::from_instant(Instant::now())
    }

    /// The stamp of an `Instant` (saturating at 292 years either side of the origin).
    pub fn from_instant(at: Instant) -> Self {
        let origin = origin();
        let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match at.checked_duration_since(origin) {
            Some(after) => Self(nanos(after)),
            None => Self(-nanos(origin.saturating_duration_since(at))),
        }
    }

    /// A reading of another clock on the same timeline: nanoseconds since [`origin`].
    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since [`origin`] (negative before it).
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Whole milliseconds from `earlier` to this reading (0 if `earlier` is not earlier).
    #[inline]
    pub fn millis_since(self, earlier: Stamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).map_or(0, |ns| ns / 1_000_000)
    }

    /// The reading as an `Instant`; one that `Instant` cannot hold is the origin.
    pub fn instant(self) -> Instant {
        let origin = origin();
        let apart = std::time::Duration::from_nanos(self.0.unsigned_abs());
        let at = if self.0 >= 0 {
            origin.checked_add(apart)
        } else {
            origin.checked_sub(apart)
        };
        at.unwrap_or(origin)
    }
}

/// One reading of the wall clock and the monotonic clock together, to date [`Stamp`]s in
/// milliseconds since the epoch without reading the wall clock for each of them.
///
/// The driver's threads stamp events with a [`Stamp`] they often read anyway (a
/// statement's start is also its latency's origin); the background task takes one
/// `WallClock` per batch of events and dates them all against it, so the wall clock's
/// adjustments matter only over the few milliseconds an event waits in the queue.
///
/// ```
/// use std::time::{Duration, Instant};
/// use telemetry_types::clock::{Stamp, WallClock};
///
/// let earlier = Stamp::from_instant(Instant::now() - Duration::from_secs(5));
/// let clock = WallClock::now();
/// assert_eq!(clock.millis_at(earlier), clock.millis() - 5_000);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    millis: i64,
    stamp: Stamp,
}

impl WallClock {
    /// Reads both clocks.
    pub fn now() -> Self {
        let stamp = Stamp::now();
        Self {
            millis: now_millis(),
            stamp,
        }
    }

    /// The wall time of the reading, ms since the epoch.
    pub fn millis(&self) -> i64 {
        self.millis
    }

    /// The wall time of `at`, ms since the epoch (before or after the reading).
    pub fn millis_at(&self, at: Stamp) -> i64 {
        let apart = i64::try_from(self.stamp.0.abs_diff(at.0) / 1_000_000).unwrap_or(i64::MAX);
        if at <= self.stamp {
            self.millis.saturating_sub(apart)
        } else {
            self.millis.saturating_add(apart)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2023() {
        assert!(now_millis() > 1_700_000_000_000);
    }

    #[test]
    fn wall_clock_dates_stamps_on_both_sides_of_the_reading() {
        let clock = WallClock {
            millis: 1_700_000_000_000,
            stamp: Stamp(10_000_000_000),
        };
        let before = Stamp(clock.stamp.0 - 1_500_000_000);
        let after = Stamp(clock.stamp.0 + 250_000_000);
        assert_eq!(clock.millis_at(clock.stamp), clock.millis());
        assert_eq!(clock.millis_at(before), clock.millis() - 1_500);
        assert_eq!(clock.millis_at(after), clock.millis() + 250);
        let clock = WallClock::now();
        let wall = now_millis();
        assert!(
            (wall - clock.millis()).abs() < 1_000,
            "{wall} vs {}",
            clock.millis()
        );
        // Far from the reading either way: saturated, never a panic.
        let far = std::time::Duration::from_nanos(i64::MAX.unsigned_abs());
        assert_eq!(
            Stamp(i64::MAX).instant(),
            origin().checked_add(far).unwrap_or(origin())
        );
        assert!(clock.millis_at(Stamp(i64::MAX)) > clock.millis());
        assert!(clock.millis_at(Stamp(i64::MIN)) < clock.millis());
    }

    #[test]
    fn stamps_and_instants_convert_both_ways() {
        let _ = origin();
        let at = Instant::now();
        let back = Stamp::from_instant(at).instant();
        assert!(back.max(at) - back.min(at) < std::time::Duration::from_micros(1));
        assert_eq!(
            Stamp::from_nanos(5_999_999).millis_since(Stamp::from_nanos(5_000_000)),
            0
        );
        assert_eq!(
            Stamp::from_nanos(6_000_000).millis_since(Stamp::from_nanos(5_000_000)),
            1
        );
        assert_eq!(
            Stamp::from_nanos(4_000_000).millis_since(Stamp::from_nanos(5_000_000)),
            0
        );
        assert_eq!(Stamp::from_instant(origin()), Stamp(0));
        // Before the origin: negative, and back.
        let earlier = origin() - std::time::Duration::from_millis(1500);
        assert_eq!(Stamp::from_instant(earlier), Stamp(-1_500_000_000));
        assert_eq!(Stamp(-1_500_000_000).instant(), earlier);
        assert_eq!(Stamp(0).millis_since(Stamp(-1_500_000_000)), 1500);
    }
}
