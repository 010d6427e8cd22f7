//! Wall-clock time: milliseconds since the epoch, and dating [`Instant`]s without reading the
//! wall clock for each.

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

/// One reading of the wall clock and the monotonic clock together, to date [`Instant`]s in
/// milliseconds since the epoch without reading the wall clock for each of them.
///
/// The driver's threads stamp events with an [`Instant`] they often read anyway (a
/// statement's start is also its latency's origin); the background task takes one
/// `WallClock` per batch of events and dates them all against it, so the wall clock's
/// adjustments matter only over the few milliseconds an event waits in the queue.
///
/// ```
/// use std::time::{Duration, Instant};
/// use telemetry_types::clock::WallClock;
///
/// let earlier = Instant::now() - Duration::from_secs(5);
/// let clock = WallClock::now();
/// assert_eq!(clock.millis_at(earlier), clock.millis() - 5_000);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    millis: i64,
    instant: Instant,
}

impl WallClock {
    /// Reads both clocks.
    pub fn now() -> Self {
        let instant = Instant::now();
        Self {
            millis: now_millis(),
            instant,
        }
    }

    /// The wall time of the reading, ms since the epoch.
    pub fn millis(&self) -> i64 {
        self.millis
    }

    /// The wall time of `at`, ms since the epoch (before or after the reading).
    pub fn millis_at(&self, at: Instant) -> i64 {
        fn ms(d: std::time::Duration) -> i64 {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        }
        match self.instant.checked_duration_since(at) {
            Some(ago) => self.millis.saturating_sub(ms(ago)),
            None => self.millis.saturating_add(ms(at - self.instant)),
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
    fn wall_clock_dates_instants_on_both_sides_of_the_reading() {
        let clock = WallClock::now();
        let before = clock.instant - std::time::Duration::from_millis(1_500);
        let after = clock.instant + std::time::Duration::from_millis(250);
        assert_eq!(clock.millis_at(clock.instant), clock.millis());
        assert_eq!(clock.millis_at(before), clock.millis() - 1_500);
        assert_eq!(clock.millis_at(after), clock.millis() + 250);
        let wall = now_millis();
        assert!(
            (wall - clock.millis()).abs() < 1_000,
            "{wall} vs {}",
            clock.millis()
        );
    }
}
