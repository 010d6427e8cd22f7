//! How much one host asks of its endpoint: a limit on requests in flight that collapses to
//! one after a failure the endpoint answered and grows back by one per success (additive
//! increase, multiplicative decrease), and a pause every request of the host honours when the
//! server asked for one (`Retry-After`).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

struct State {
    limit: usize,
    in_flight: usize,
    paused_until: Option<Instant>,
    /// Throttled answers in a row (less one per success since): the pause's doubling.
    throttle_level: u32,
}

/// One host's pacing, shared by every request of its exporter.
pub(super) struct Pacing {
    max: usize,
    max_pause: Duration,
    state: Mutex<State>,
    freed: Notify,
}

/// A request's place among those in flight; given back on drop (a request cut at a close
/// deadline frees its place too).
pub(super) struct Slot<'a> {
    pacing: &'a Pacing,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.pacing.lock().in_flight -= 1;
        self.pacing.freed.notify_waiters();
    }
}

impl Pacing {
    pub(super) fn new(max: usize, max_pause: Duration) -> Self {
        let max = max.max(1);
        Self {
            max,
            max_pause,
            state: Mutex::new(State {
                limit: max,
                in_flight: 0,
                paused_until: None,
                throttle_level: 0,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code in these critical sections panics; a poisoned lock still holds numbers.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a place among the requests in flight.
    pub(super) async fn acquire(&self) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so that a place freed in between is not missed.
            freed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    return Slot { pacing: self };
                }
            }
            freed.await;
        }
    }

    /// The endpoint accepted a request: one more may run at once, up to the maximum.
    pub(super) fn succeeded(&self) {
        let grew = {
            let mut s = self.lock();
            let before = s.limit;
            s.limit = (s.limit + 1).min(self.max);
            s.throttle_level = s.throttle_level.saturating_sub(1);
            s.limit > before
        };
        if grew {
            self.freed.notify_waiters();
        }
    }

    /// The endpoint failed a request: one at a time until a success.
    pub(super) fn failed(&self) {
        self.lock().limit = 1;
    }

    /// The server asked every request to wait `d` (its `Retry-After`, already bounded): the
    /// host waits that, doubled for each throttled answer in a row before it (up to the
    /// maximum pause, never below `d`), plus up to a quarter more at random, so that a fleet
    /// told the same `Retry-After` in the same second does not come back in the same second,
    /// and a fleet the endpoint keeps throttling keeps slowing down.
    pub(super) fn throttled(&self, d: Duration) {
        let level = {
            let mut s = self.lock();
            s.throttle_level = (s.throttle_level + 1).min(16);
            s.throttle_level
        };
        let grown = d
            .saturating_mul(1 << (level - 1))
            .min(self.max_pause.max(d));
        self.pause(grown);
    }

    fn pause(&self, d: Duration) {
        let now = Instant::now();
        let quarter = u64::try_from(d.as_millis() / 4).unwrap_or(u64::MAX);
        let d = d.saturating_add(Duration::from_millis(
            telemetry_types::random::random_up_to(quarter),
        ));
        // An Instant spans centuries; `d` is at most an hour: the sum fits, and if it ever
        // did not, no pause is safer than a panic.
        let Some(until) = now.checked_add(d) else {
            return;
        };
        let mut s = self.lock();
        if s.paused_until.is_none_or(|u| u < until) {
            s.paused_until = Some(until);
        }
    }

    /// Waits out the host's pause, if one is running.
    pub(super) async fn honour_pause(&self) {
        loop {
            let until = self.lock().paused_until;
            match until {
                Some(u) if u > Instant::now() => tokio::time::sleep_until(u).await,
                _ => return,
            }
        }
    }

    /// Requests allowed in flight now.
    pub(super) fn limit(&self) -> usize {
        self.lock().limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_failure_collapses_the_limit_and_successes_grow_it_back() {
        let p = Arc::new(Pacing::new(4, Duration::from_secs(600)));
        let slots = futures_now(&p, 4).await;
        assert_eq!(slots, 4, "four at once while healthy");
        p.failed();
        assert_eq!(p.limit(), 1);
        p.succeeded();
        p.succeeded();
        assert_eq!(p.limit(), 3);
        for _ in 0..5 {
            p.succeeded();
        }
        assert_eq!(p.limit(), 4, "never past the maximum");
    }

    /// How many slots can be held at once right now.
    async fn futures_now(p: &Arc<Pacing>, want: usize) -> usize {
        let mut held = Vec::new();
        for _ in 0..want + 1 {
            match tokio::time::timeout(Duration::from_millis(1), p.acquire()).await {
                Ok(slot) => held.push(slot),
                Err(_) => break,
            }
        }
        held.len()
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_one_request_at_a_time_and_waiters_wake() {
        let p = Arc::new(Pacing::new(4, Duration::from_secs(600)));
        p.failed();
        let first = p.acquire().await;
        let p2 = p.clone();
        let second = tokio::spawn(async move {
            let _slot = p2.acquire().await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "waits for the first");
        drop(first);
        let at = second.await.unwrap();
        assert!(at.elapsed() <= Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_until_it_ends() {
        let p = Pacing::new(4, Duration::ZERO); // no growth: the server's pause alone
        let start = Instant::now();
        p.throttled(Duration::from_secs(30));
        p.throttled(Duration::from_secs(5)); // a shorter one does not cut it
        p.honour_pause().await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited <= Duration::from_millis(37_500),
            "30 s and up to a quarter more: {waited:?}"
        );
        p.honour_pause().await;
        assert_eq!(start.elapsed(), waited, "over: no wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_throttled_again_and_again_pauses_longer_and_successes_step_back() {
        let p = Pacing::new(4, Duration::from_secs(600));
        let mut pauses = Vec::new();
        for _ in 0..6 {
            p.throttled(Duration::from_secs(30));
            pauses.push(waited(&p).await.as_secs());
        }
        // 30, 60, 120, 240, 480, then the 600 s cap; each up to a quarter longer.
        for (got, base) in pauses.iter().zip([30u64, 60, 120, 240, 480, 600]) {
            assert!(*got >= base && *got <= base + base / 4, "{pauses:?}");
        }
        p.succeeded();
        p.succeeded();
        p.throttled(Duration::from_secs(30));
        let after = waited(&p).await.as_secs();
        assert!((480..=600).contains(&after), "two levels down: {after}");
    }

    /// How long the host's pause holds a request now.
    async fn waited(p: &Pacing) -> Duration {
        let start = Instant::now();
        p.honour_pause().await;
        start.elapsed()
    }
}
