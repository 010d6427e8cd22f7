//! The statement clock: what a statement's begin and end read on the driver's thread.
//!
//! A statement costs the driver two clock readings, its begin and its end, and they were
//! the largest single part of its cost: `Instant::now()` is a `clock_gettime` call (about
//! 24 ns on a virtual machine, 15-20 ns on bare metal). Where the CPU's time-stamp counter
//! is invariant (it runs at one rate in every core, frequency and power state), [`now`]
//! reads the counter instead (about 10 ns) and scales it to nanoseconds on the monotonic
//! clock's timeline. A reading is a [`Stamp`]: events carry it as it is, and the background
//! task turns it into the row's date, so the driver's thread does no date arithmetic.
//!
//! The counter is timed against the monotonic clock without spinning: one paired reading
//! (a counter reading between two monotonic ones) when the first connection starts, another
//! by the first reading [`BASELINE`] later, and the scale is the ratio of the two spans (to a
//! few parts per million). That costs a few microseconds once per process, whatever the
//! machine is doing. (A calibration that busy-reads both clocks until they agree, as
//! `quanta`'s does, usually takes half a millisecond, but it spins until the clocks agree
//! to 10 ns or for 200 ms: in a profiled run of the unpaced benchmark, where the driver
//! threads kept preempting it, it spun for 100 ms and took 46 ms of a core, CPU taken from
//! the driver's process at its busiest.)
//! Until then, and for good where the counter is not invariant or not x86_64, readings come
//! from `Instant`: both sources give nanoseconds since one origin, so a statement begun
//! before the counter is timed and ended after measures right (to well under a millisecond,
//! the unit of every latency sent).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use telemetry_types::clock::Stamp;

/// How long the counter is timed against the monotonic clock before it is read.
const BASELINE: Duration = Duration::from_millis(100);

/// How often the counter is checked against the monotonic clock.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Widest a paired reading may be (its two monotonic readings apart, in ns) to time the
/// counter with: two such pairs a [`BASELINE`] apart give the scale to 40 parts per million
/// at worst, and they are usually a few dozen nanoseconds wide.
const MAX_PAIR_NS: i64 = 2_000;

/// The scale's fixed point: nanoseconds per tick times 2^SHIFT.
const SHIFT: u32 = 32;

/// The process's statement clock.
static CLOCK: StatementClock = StatementClock::new();

/// Reads the statement clock: the counter once timed, else `Instant::now()`.
#[inline]
pub(crate) fn now() -> Stamp {
    CLOCK.now()
}

/// Starts timing the counter (its first paired reading), once per process: called as the
/// first connection starts, so the counter is in use a [`BASELINE`] later. A few
/// microseconds (CPUID, a few clock readings).
pub(crate) fn start() {
    CLOCK.start();
}

/// Where readings come from, once settled.
enum Source {
    /// The counter, timed.
    Counter(Counter),
    /// The OS's monotonic clock (`Instant`): the counter is not invariant, or not there.
    Os,
}

/// The counter's timing, then the source it settled on.
struct StatementClock {
    /// Whether the counter is invariant (CPUID, read once: in a virtual machine each CPUID
    /// is a trap to the hypervisor).
    invariant: OnceLock<bool>,
    /// The first paired reading.
    first: OnceLock<Pair>,
    source: OnceLock<Source>,
}

impl StatementClock {
    const fn new() -> Self {
        Self {
            invariant: OnceLock::new(),
            first: OnceLock::new(),
            source: OnceLock::new(),
        }
    }

    #[inline]
    fn now(&self) -> Stamp {
        match self.source.get() {
            Some(Source::Counter(c)) => c.now(),
            Some(Source::Os) => Stamp::now(),
            None => self.timing(Stamp::now()),
        }
    }

    fn start(&self) {
        if self.source.get().is_none() {
            self.timing(Stamp::now());
        }
    }

    /// A reading (`now`, from `Instant`) while the counter is being timed: takes the first
    /// pair if there is none yet, and the second once a [`BASELINE`] has passed, which
    /// settles the source. A pair that cannot be taken (every try preempted) is tried again
    /// at the next reading.
    #[cold]
    #[inline(never)]
    fn timing(&self, now: Stamp) -> Stamp {
        if !*self.invariant.get_or_init(tsc::invariant) {
            let _ = self.source.set(Source::Os);
            return now;
        }
        match self.first.get() {
            None => {
                if let Some(first) = Pair::take() {
                    let _ = self.first.set(first);
                }
            }
            Some(first) if now.as_nanos().saturating_sub(first.ns) >= nanos(BASELINE) => {
                if let Some(second) = Pair::take() {
                    let source = Counter::timed(first, &second).map_or(Source::Os, Source::Counter);
                    let _ = self.source.set(source);
                }
            }
            Some(_) => {}
        }
        now
    }
}

/// A counter reading and the monotonic clock's at the same moment (nanoseconds since the
/// origin).
#[derive(Debug, Clone, Copy)]
struct Pair {
    ticks: u64,
    ns: i64,
}

impl Pair {
    /// A counter reading between two monotonic ones, dated at their midpoint: the tightest
    /// of a few tries (a try the OS preempts is wide), none if every try was wider than
    /// [`MAX_PAIR_NS`].
    fn take() -> Option<Pair> {
        let mut best: Option<(i64, Pair)> = None;
        for _ in 0..8 {
            let before = Stamp::now().as_nanos();
            let ticks = tsc::read();
            let width = Stamp::now().as_nanos().saturating_sub(before);
            if best.is_none_or(|(w, _)| width < w) {
                let ns = before.saturating_add(width / 2);
                best = Some((width, Pair { ticks, ns }));
            }
            if width <= MAX_PAIR_NS / 10 {
                break;
            }
        }
        best.filter(|(w, _)| *w <= MAX_PAIR_NS).map(|(_, p)| p)
    }
}

/// The counter, timed, with what ties it to the monotonic clock's timeline.
struct Counter {
    /// Nanoseconds per tick, times 2^[`SHIFT`].
    scale: u64,
    /// A counter reading: a stamp is the nanoseconds the counter counted since it, plus...
    raw_at_offset: u64,
    /// ...this offset: the nanoseconds since the origin at `raw_at_offset`, as last
    /// checked. The scale is good to some parts per million, and the OS slews its
    /// monotonic clock (NTP): never checked, stamps would drift from `Instant` by up to a
    /// second a day and date rows wrong by as much. Checked once per [`Self::check_every`]
    /// counter ticks (about a second), they stay within microseconds.
    offset_ns: AtomicI64,
    /// The raw reading past which the next check is due.
    next_check: AtomicU64,
    /// Counter ticks between two checks.
    check_every: u64,
}

impl Counter {
    /// The counter timed by two pairs (the second later), tied to the timeline at the
    /// second; `None` if they do not give a rate (the counter did not move forward).
    fn timed(first: &Pair, second: &Pair) -> Option<Counter> {
        let ticks = second.ticks.checked_sub(first.ticks).filter(|t| *t > 0)?;
        let ns = u64::try_from(second.ns.checked_sub(first.ns)?)
            .ok()
            .filter(|n| *n > 0)?;
        let scale = u64::try_from((u128::from(ns) << SHIFT) / u128::from(ticks))
            .ok()
            .filter(|s| *s > 0)?;
        let check_every = ticks_in(scale, CHECK_EVERY);
        Some(Counter {
            scale,
            raw_at_offset: second.ticks,
            offset_ns: AtomicI64::new(second.ns),
            next_check: AtomicU64::new(second.ticks.saturating_add(check_every)),
            check_every,
        })
    }

    /// A reading: the scaled counter, corrected; checked against the monotonic clock (one
    /// `Instant` reading, on whichever thread comes first) once per `check_every` ticks (the
    /// counter does not wrap in the machine's lifetime: 2^64 ticks are two centuries at
    /// 3 GHz).
    #[inline]
    fn now(&self) -> Stamp {
        let raw = tsc::read();
        // A core whose counter lags the one that set `raw_at_offset` reads 0 elapsed.
        let counted = self.nanos(raw.saturating_sub(self.raw_at_offset));
        if raw > self.next_check.load(Ordering::Relaxed) {
            self.check(raw, counted);
        }
        Stamp::from_nanos(counted.saturating_add(self.offset_ns.load(Ordering::Relaxed)))
    }

    /// `ticks` in nanoseconds (saturating: an i64 holds 292 years).
    #[inline]
    fn nanos(&self, ticks: u64) -> i64 {
        i64::try_from((u128::from(ticks) * u128::from(self.scale)) >> SHIFT).unwrap_or(i64::MAX)
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

/// About how many counter ticks `period` is, at `scale` (nanoseconds per tick, times
/// 2^[`SHIFT`]).
fn ticks_in(scale: u64, period: Duration) -> u64 {
    let period_ns = u128::from(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX));
    u64::try_from((period_ns << SHIFT) / u128::from(scale.max(1))).unwrap_or(u64::MAX)
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The CPU's time-stamp counter.
#[cfg(target_arch = "x86_64")]
mod tsc {
    /// Whether the counter is invariant: one rate in every core, frequency and power state
    /// (CPUID leaf 0x8000_0007, EDX bit 8), the condition for timing with it. Hypervisors
    /// report it where the counter they give a guest is reliable.
    pub(super) fn invariant() -> bool {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID has no preconditions on x86_64 (every such CPU has it, and it reads
        // nothing but its leaf); the block is needed only before Rust 1.87, where the
        // intrinsic was still marked unsafe.
        #[allow(unused_unsafe)]
        let (max, apm) = unsafe { (__cpuid(0x8000_0000).eax, __cpuid(0x8000_0007).edx) };
        max >= 0x8000_0007 && apm & (1 << 8) != 0
    }

    /// A raw counter reading (RDTSC).
    #[inline]
    pub(super) fn read() -> u64 {
        // SAFETY: RDTSC has no preconditions: it reads the time-stamp counter, which every
        // x86_64 CPU has, and touches no memory.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
}

/// No counter is read off x86_64: the statement clock is `Instant` there.
#[cfg(not(target_arch = "x86_64"))]
mod tsc {
    pub(super) fn invariant() -> bool {
        false
    }

    pub(super) fn read() -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Instant;

    /// A counter timed by two real pairs `gap` apart (a real sleep: the clock under test is
    /// the real one, which tokio's paused clock does not drive). `None` off x86_64 or
    /// without an invariant counter, where there is no counter to test.
    fn real_counter(gap: Duration) -> Option<Counter> {
        if !tsc::invariant() {
            return None;
        }
        let first = Pair::take()?;
        std::thread::sleep(gap);
        Counter::timed(&first, &Pair::take()?)
    }

    #[test]
    fn stamps_from_both_sources_share_one_timeline() {
        let Some(counter) = real_counter(Duration::from_millis(20)) else {
            return;
        };
        for _ in 0..3 {
            let from_instant = Stamp::from_instant(Instant::now());
            let from_counter = counter.now();
            let after = Stamp::from_instant(Instant::now());
            // Read in this order, the counter's reading falls between the two Instant ones
            // (give or take the pairs' width and the scale's error: microseconds).
            let slack = 50_000;
            assert!(
                from_counter.as_nanos() + slack >= from_instant.as_nanos()
                    && from_counter.as_nanos() <= after.as_nanos() + slack,
                "{from_instant:?} <= {from_counter:?} <= {after:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_scale_turns_ticks_into_nanoseconds() {
        // A 3 GHz counter: 300 million ticks in 100 ms.
        let first = Pair {
            ticks: 1_000,
            ns: 5,
        };
        let second = Pair {
            ticks: 1_000 + 300_000_000,
            ns: 5 + 100_000_000,
        };
        let counter = Counter::timed(&first, &second).unwrap();
        assert!(counter.nanos(3_000_000_000).abs_diff(1_000_000_000) <= 1);
        assert_eq!(counter.nanos(0), 0);
        // All 2^64 ticks (195 years): the fixed point's truncation is under 1 part in 10^9.
        let all = (u64::MAX / 3) as i64;
        assert!(counter.nanos(u64::MAX).abs_diff(all) < (all / 1_000_000_000) as u64);
        assert!(counter.check_every.abs_diff(3_000_000_000) <= 3);
        assert_eq!(counter.raw_at_offset, second.ticks);
        assert_eq!(counter.offset_ns.load(Ordering::Relaxed), second.ns);
        // A 1 MHz counter a day long: the product needs more than 64 bits, and saturates
        // only past an i64 of nanoseconds.
        let slow = Counter::timed(
            &Pair { ticks: 0, ns: 0 },
            &Pair {
                ticks: 1_000,
                ns: 1_000_000,
            },
        )
        .unwrap();
        assert_eq!(slow.nanos(86_400_000_000), 86_400_000_000_000);
        assert_eq!(slow.nanos(u64::MAX), i64::MAX);
    }

    #[rstest]
    #[case::counter_still(Pair { ticks: 9, ns: 0 }, Pair { ticks: 9, ns: 100 })]
    #[case::counter_backwards(Pair { ticks: 9, ns: 0 }, Pair { ticks: 8, ns: 100 })]
    #[case::clock_still(Pair { ticks: 9, ns: 100 }, Pair { ticks: 90, ns: 100 })]
    #[case::clock_backwards(Pair { ticks: 9, ns: 100 }, Pair { ticks: 90, ns: 50 })]
    #[case::rate_below_the_fixed_point(Pair { ticks: 0, ns: 0 }, Pair { ticks: u64::MAX, ns: 1 })]
    fn pairs_without_a_rate_time_nothing(#[case] first: Pair, #[case] second: Pair) {
        assert!(Counter::timed(&first, &second).is_none());
    }

    #[test]
    fn a_check_period_in_ticks_scales_back_to_the_period() {
        for (ticks, ns) in [(300_000_000u64, 100_000_000i64), (2_400_000, 1_000_000)] {
            let counter = Counter::timed(&Pair { ticks: 0, ns: 0 }, &Pair { ticks, ns }).unwrap();
            let back = counter.nanos(ticks_in(counter.scale, Duration::from_secs(1)));
            assert!(back.abs_diff(1_000_000_000) < 1_000, "{back} ns");
        }
    }

    #[test]
    fn a_counter_off_the_monotonic_clock_is_corrected_at_its_next_check() {
        let Some(counter) = real_counter(Duration::from_millis(20)) else {
            return;
        };
        // As if the scale had drifted 5 ms since the timing.
        counter.offset_ns.fetch_add(5_000_000, Ordering::Relaxed);
        let instant = || Stamp::now().as_nanos();
        // No check due: the reading is 5 ms ahead (bracketed by Instant readings, so a
        // preemption between the lines only widens the bracket).
        let before = instant();
        assert!(counter.now().as_nanos() >= before + 4_000_000);
        // A check due (a period of ticks since the last): that reading and the next are on
        // time again.
        let raw = tsc::read();
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
    fn the_clock_settles_on_the_counter_a_baseline_after_its_first_pair() {
        let clock = StatementClock::new();
        clock.start();
        if !tsc::invariant() {
            // No counter to time (another CPU, or a counter that is not invariant).
            assert!(matches!(clock.source.get(), Some(Source::Os)));
            return;
        }
        assert!(clock.first.get().is_some(), "the first pair, at start");
        assert!(clock.source.get().is_none());
        // Readings within the baseline come from Instant and settle nothing.
        let before = Stamp::now();
        let reading = clock.now();
        assert!(reading >= before && reading <= Stamp::now());
        assert!(clock.source.get().is_none());
        // A baseline later (the first pair moved back in time rather than waiting), the next
        // reading takes the second pair and settles on the counter.
        let first = *clock.first.get().unwrap();
        let moved = StatementClock::new();
        let _ = moved.invariant.set(true);
        let _ = moved.first.set(Pair {
            ticks: first.ticks,
            ns: first.ns - nanos(BASELINE),
        });
        moved.now();
        assert!(matches!(moved.source.get(), Some(Source::Counter(_))));
    }

    #[test]
    fn without_an_invariant_counter_the_clock_is_instant() {
        let clock = StatementClock::new();
        let _ = clock.invariant.set(false);
        let before = Stamp::now();
        let reading = clock.now();
        assert!(reading >= before && reading <= Stamp::now());
        assert!(matches!(clock.source.get(), Some(Source::Os)));
        assert!(clock.first.get().is_none(), "no pair taken");
    }

    #[test]
    fn readings_go_forward() {
        let a = now();
        let b = now();
        // The counter may settle between the two: the sources agree to microseconds.
        assert!(b.as_nanos() + 50_000 >= a.as_nanos(), "{a:?} then {b:?}");
    }
}
