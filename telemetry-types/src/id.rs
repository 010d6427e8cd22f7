//! Random ids and jitter without a dependency (a per-thread SplitMix64 generator seeded from
//! the standard library's randomly keyed hasher; not for cryptography: event ids only need to
//! be unique, and jitter only needs to spread retries), and wall-clock time.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A random 64-bit number.
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A random number in `0..=max`.
pub fn random_up_to(max: u64) -> u64 {
    if max == u64::MAX {
        random_u64()
    } else {
        random_u64() % (max + 1)
    }
}

/// A random UUID version 4, lower-case hyphenated.
///
/// ```
/// let id = telemetry_types::id::uuid_v4();
/// assert_eq!(id.len(), 36);
/// assert_eq!(&id[14..15], "4");
/// ```
pub fn uuid_v4() -> String {
    let hi = (random_u64() & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (random_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
/// use telemetry_types::id::WallClock;
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
    use std::collections::HashSet;

    #[test]
    fn uuids_are_v4_and_unique() {
        let ids: HashSet<String> = (0..10_000).map(|_| uuid_v4()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let b = id.as_bytes();
            assert_eq!(b[8], b'-');
            assert_eq!(b[13], b'-');
            assert_eq!(b[14], b'4');
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn bounded_random() {
        assert!((0..1000).all(|_| random_up_to(5) <= 5));
        assert_eq!(random_up_to(0), 0);
        let _ = random_up_to(u64::MAX);
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
