//! Retrying one request: a small [`RetryPolicy`], a classification of each attempt's result
//! that carries the server's `Retry-After`, and [`retry_with_backoff`], in the spirit of
//! opentelemetry-otlp's `retry_with_backoff`.
//!
//! A request's retries are bounded in time as well as in number: a batch in retry holds one of
//! its host's export slots, so a server asking for more than `max_retry_after`, or waits adding
//! up to more than `max_total_wait`, end the retries (the breaker still hears the
//! `Retry-After`).

use std::future::Future;
use std::time::Duration;

use telemetry_types::random::random_up_to;
use telemetry_types::validation::ConfigError;

/// How often and how patiently one request is retried:
/// delay before retry `n` (from 0) = `random(0..=min(base * 2^n, max)) + random(0..=jitter)`
/// ("full jitter": a fleet's retries after a shared failure spread over the whole window
/// instead of arriving together; without `full_jitter`, `min(base * 2^n, max) +
/// random(0..=jitter)`), or the server's `Retry-After` (bounded by `max_retry_after`) plus
/// `random(0..=jitter)` when that is longer.
///
/// Defaults follow the Node.js driver: 3 retries, 100 ms base, 1 s max, 100 ms jitter, and a
/// `Retry-After` honoured up to 60 s; full jitter on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first try. Default 3; at most 10.
    pub max_retries: u32,
    /// First delay. Default 100 ms; at most `backoff_max`.
    pub backoff_base: Duration,
    /// Largest delay before jitter. Default 1 s; at most 10 min.
    pub backoff_max: Duration,
    /// Random extra delay, uniformly up to this. Default 100 ms; at most 1 min.
    pub jitter: Duration,
    /// Longest `Retry-After` a retry waits for; a longer one ends the retries. Default 60 s;
    /// at most 1 h.
    pub max_retry_after: Duration,
    /// Longest time all the waits of one request may add up to. Default 15 s; at most 1 h.
    pub max_total_wait: Duration,
    /// Whether the backoff itself is drawn at random below its bound (full jitter). Default
    /// true.
    pub full_jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            jitter: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(60),
            max_total_wait: Duration::from_secs(15),
            full_jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Checks every value against its bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check_range(
            self.max_retries,
            0,
            10,
            "export.retry.max_retries",
            "must be at most 10",
        )?;
        ConfigError::check_range(
            self.backoff_max,
            Duration::ZERO,
            Duration::from_secs(600),
            "export.retry.backoff_max",
            "must be at most 10 min",
        )?;
        ConfigError::check_range(
            self.backoff_base,
            Duration::ZERO,
            self.backoff_max,
            "export.retry.backoff_base",
            "must not exceed backoff_max",
        )?;
        ConfigError::check_range(
            self.jitter,
            Duration::ZERO,
            Duration::from_secs(60),
            "export.retry.jitter",
            "must be at most 1 min",
        )?;
        ConfigError::check_range(
            self.max_retry_after,
            Duration::ZERO,
            Duration::from_secs(3600),
            "export.retry.max_retry_after",
            "must be at most 1 h",
        )?;
        ConfigError::check_range(
            self.max_total_wait,
            Duration::ZERO,
            Duration::from_secs(3600),
            "export.retry.max_total_wait",
            "must be at most 1 h",
        )
    }

    /// The delay before retry number `attempt` (0 = first retry), without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    /// The wait before retry `attempt`: backoff plus jitter, or a longer `Retry-After`;
    /// `None` when the server asks for more than `max_retry_after`.
    fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry_after.is_some_and(|r| r > self.max_retry_after) {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(random_up_to(ms(self.jitter)));
        let backoff = match self.backoff(attempt) {
            b if self.full_jitter => Duration::from_millis(random_up_to(ms(b))),
            b => b,
        }
        .saturating_add(jitter);
        Some(retry_after.map_or(backoff, |r| r.saturating_add(jitter).max(backoff)))
    }
}

/// What one attempt's result means for the retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Done: success, or a failure another try will not fix.
    Stop,
    /// Worth another try, not before the server's `Retry-After` if it gave one.
    After(Option<Duration>),
}

/// Runs `attempt` until `classify` says [`Retry::Stop`], `policy.max_retries` retries are
/// spent, or the next wait is not allowed (a `Retry-After` over `max_retry_after`, or waits
/// past `max_total_wait`), sleeping (tokio time) between tries; returns the last result. `on_retry` sees the
/// number of each retry and its wait, for counting and logging.
///
/// ```
/// use std::time::Duration;
/// use telemetry_export::{Retry, RetryPolicy, retry_with_backoff};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut tries = 0;
/// let result = retry_with_backoff(
///     &RetryPolicy::default(),
///     || { tries += 1; let n = tries; async move { if n < 3 { Err(503) } else { Ok(200) } } },
///     |r: &Result<u16, u16>| if r.is_err() { Retry::After(None) } else { Retry::Stop },
///     |_, _| {},
/// ).await;
/// assert_eq!((result, tries), (Ok(200), 3));
/// # }
/// ```
pub async fn retry_with_backoff<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
    classify: impl Fn(&T) -> Retry,
    mut on_retry: impl FnMut(u32, Duration),
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut retries = 0u32;
    let mut waited = Duration::ZERO;
    loop {
        let result = attempt().await;
        let Retry::After(retry_after) = classify(&result) else {
            return result;
        };
        if retries >= policy.max_retries {
            return result;
        }
        let Some(wait) = policy
            .wait(retries, retry_after)
            .filter(|w| waited.saturating_add(*w) <= policy.max_total_wait)
        else {
            return result;
        };
        on_retry(retries, wait);
        tokio::time::sleep(wait).await;
        waited = waited.saturating_add(wait);
        retries += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0, 100)]
    #[case(1, 200)]
    #[case(2, 400)]
    #[case(3, 800)]
    #[case(4, 1000)]
    #[case(40, 1000)]
    fn backoff_grows_and_caps(#[case] attempt: u32, #[case] millis: u64) {
        assert_eq!(
            RetryPolicy::default().backoff(attempt),
            Duration::from_millis(millis)
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_past_its_cap_ends_the_retries() {
        let p = RetryPolicy {
            jitter: Duration::ZERO,
            full_jitter: false,
            ..RetryPolicy::default()
        };
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(p.wait(0, None), ms(100));
        assert_eq!(p.wait(0, ms(7000)), ms(7000));
        assert_eq!(p.wait(3, ms(1)), ms(800));
        assert_eq!(p.wait(0, ms(60_000)), ms(60_000));
        assert_eq!(p.wait(0, ms(60_001)), None);
        assert_eq!(p.wait(0, Some(Duration::MAX)), None);
        let huge = RetryPolicy {
            backoff_base: Duration::MAX,
            backoff_max: Duration::MAX,
            jitter: Duration::MAX,
            full_jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(
            huge.wait(5, None),
            Some(Duration::MAX),
            "saturates, never panics"
        );
    }

    #[rstest]
    #[case(RetryPolicy { max_retries: 11, ..RetryPolicy::default() }, "export.retry.max_retries")]
    #[case(RetryPolicy { backoff_base: Duration::from_secs(2), ..RetryPolicy::default() }, "export.retry.backoff_base")]
    #[case(RetryPolicy { backoff_max: Duration::MAX, ..RetryPolicy::default() }, "export.retry.backoff_max")]
    #[case(RetryPolicy { jitter: Duration::MAX, ..RetryPolicy::default() }, "export.retry.jitter")]
    #[case(RetryPolicy { max_retry_after: Duration::MAX, ..RetryPolicy::default() }, "export.retry.max_retry_after")]
    #[case(RetryPolicy { max_total_wait: Duration::MAX, ..RetryPolicy::default() }, "export.retry.max_total_wait")]
    fn out_of_range_is_rejected(#[case] policy: RetryPolicy, #[case] field: &str) {
        let err = policy.validate().unwrap_err();
        let ConfigError::Invalid { field: got, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*got, field);
        RetryPolicy::default().validate().unwrap();
    }

    #[test]
    fn full_jitter_spreads_the_backoff_over_its_whole_window() {
        let p = RetryPolicy {
            jitter: Duration::ZERO,
            ..RetryPolicy::default()
        };
        let waits: Vec<u128> = (0..200)
            .map(|_| p.wait(3, None).unwrap().as_millis())
            .collect();
        assert!(waits.iter().all(|w| *w <= 800), "bounded by the backoff");
        assert!(waits.iter().any(|w| *w < 200) && waits.iter().any(|w| *w > 600));
        let after = p.wait(0, Some(Duration::from_secs(3))).unwrap();
        assert_eq!(after, Duration::from_secs(3), "a Retry-After is a floor");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_retries_and_reports_each_wait() {
        let policy = RetryPolicy {
            max_retries: 2,
            jitter: Duration::ZERO,
            full_jitter: false,
            ..RetryPolicy::default()
        };
        let mut tries = 0;
        let mut waits = Vec::new();
        let started = tokio::time::Instant::now();
        let last = retry_with_backoff(
            &policy,
            || {
                tries += 1;
                async { 503 }
            },
            |_| Retry::After(None),
            |n, wait| waits.push((n, wait)),
        )
        .await;
        assert_eq!((last, tries), (503, 3));
        assert_eq!(
            waits,
            [
                (0, Duration::from_millis(100)),
                (1, Duration::from_millis(200))
            ]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_waits_of_one_request_are_bounded_in_total() {
        let policy = RetryPolicy {
            max_retries: 10,
            jitter: Duration::ZERO,
            max_total_wait: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let mut tries = 0;
        let started = tokio::time::Instant::now();
        retry_with_backoff(
            &policy,
            || {
                tries += 1;
                async {}
            },
            |_| Retry::After(Some(Duration::from_secs(4))),
            |_, _| {},
        )
        .await;
        assert_eq!(tries, 3, "4 s + 4 s fit in 10 s, a third wait does not");
        assert_eq!(started.elapsed(), Duration::from_secs(8));
    }
}
