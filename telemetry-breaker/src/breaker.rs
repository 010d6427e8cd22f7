use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

/// How failures in the CLOSED state decide to open the breaker.
#[derive(Debug, Clone, PartialEq)]
pub enum FailurePolicy {
    /// Open after `threshold` consecutive failures; a success resets the count.
    Consecutive {
        /// Failures in a row that open the breaker.
        threshold: u32,
    },
    /// Open when, over the last `window` calls (and at least `minimum_calls` of them), the
    /// share of failures is at least `failure_rate` (Go driver: 0.5, 10, 30).
    Rate {
        /// Share of failures in `0.0..=1.0` that opens the breaker.
        failure_rate: f64,
        /// Calls needed in the window before the rate is judged.
        minimum_calls: u32,
        /// How many of the latest calls the window holds.
        window: u32,
    },
    /// Open when, over the calls of the last `window` of time (and at least `minimum_calls`
    /// of them), the share of failures is at least `failure_rate`: resilience4j's time-based
    /// sliding window, kept as one bucket per second (bounded memory whatever the call rate).
    TimeRate {
        /// Share of failures in `0.0..=1.0` that opens the breaker.
        failure_rate: f64,
        /// Calls needed in the window before the rate is judged.
        minimum_calls: u32,
        /// How far back the window reaches: 1 s..=1 h, in whole seconds.
        window: Duration,
    },
}

/// Breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// When CLOSED turns OPEN. Default: 5 consecutive failures.
    pub policy: FailurePolicy,
    /// How long OPEN lasts before probes are admitted. Default 60 s.
    pub open_duration: Duration,
    /// Longest OPEN a failing call may ask for (its `Retry-After`). Default 10 min.
    pub max_open_duration: Duration,
    /// Concurrent probes admitted in HALF_OPEN. Default 1.
    pub half_open_max_probes: u32,
    /// Successful probes that close the breaker. Default 2.
    pub success_threshold: u32,
    /// Each open period is lengthened by a random share of itself, up to this fraction
    /// (`0.0..=1.0`), so that many processes whose breakers opened together (a fleet behind
    /// one endpoint) do not probe together. Default 0 (exact periods).
    pub open_jitter: f64,
    /// Each failed probe multiplies the next open period by this (`1.0..=16.0`), up to
    /// `max_open_duration`; closing resets it. An endpoint that stays down is then asked
    /// less and less often. Default 1 (every period the same).
    pub open_backoff: f64,
    /// A call that succeeds but takes longer than this counts as a failure (a slow call:
    /// [`BreakerEvent::SlowCall`], [`BreakerStats::slow_calls`]): an endpoint that answers
    /// in 30 s is as bad as one that fails. Default `None` (speed is not judged).
    pub slow_call_threshold: Option<Duration>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            policy: FailurePolicy::Consecutive { threshold: 5 },
            open_duration: Duration::from_secs(60),
            max_open_duration: Duration::from_secs(600),
            half_open_max_probes: 1,
            success_threshold: 2,
            open_jitter: 0.0,
            open_backoff: 1.0,
            slow_call_threshold: None,
        }
    }
}

/// A breaker setting that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// `field` is out of range.
    #[error("invalid breaker config: `{field}` {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl BreakerConfig {
    /// The Go driver's rate policy: 50 % of at least 10 calls in a window of 30.
    pub fn rate_based() -> Self {
        Self {
            policy: FailurePolicy::Rate {
                failure_rate: 0.5,
                minimum_calls: 10,
                window: 30,
            },
            half_open_max_probes: 3,
            ..Self::default()
        }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        let bad = |field, reason| Err(BreakerConfigError::Invalid { field, reason });
        if let FailurePolicy::Rate { failure_rate, .. }
        | FailurePolicy::TimeRate { failure_rate, .. } = self.policy
            && !(failure_rate > 0.0 && failure_rate <= 1.0)
        {
            return bad("policy.failure_rate", "must be in (0, 1]");
        }
        match self.policy {
            FailurePolicy::Consecutive { threshold: 0 } => {
                return bad("policy.threshold", "must be at least 1");
            }
            FailurePolicy::Rate {
                minimum_calls,
                window,
                ..
            } => {
                if window == 0 || window > 10_000 {
                    return bad("policy.window", "must be in 1..=10000");
                }
                if minimum_calls == 0 || minimum_calls > window {
                    return bad("policy.minimum_calls", "must be in 1..=window");
                }
            }
            FailurePolicy::TimeRate {
                minimum_calls,
                window,
                ..
            } => {
                if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
                    return bad("policy.window", "must be in 1 s..=1 h");
                }
                if minimum_calls == 0 {
                    return bad("policy.minimum_calls", "must be at least 1");
                }
            }
            FailurePolicy::Consecutive { .. } => {}
        }
        if self.slow_call_threshold.is_some_and(|t| t.is_zero()) {
            return bad("slow_call_threshold", "must be above zero");
        }
        const DAY: Duration = Duration::from_secs(24 * 3600);
        if self.open_duration.is_zero() || self.open_duration > DAY {
            return bad("open_duration", "must be in (0, 1 day]");
        }
        if self.max_open_duration < self.open_duration || self.max_open_duration > DAY {
            return bad("max_open_duration", "must be in open_duration..=1 day");
        }
        if self.half_open_max_probes > 1000 {
            return bad("half_open_max_probes", "must be at most 1000");
        }
        if self.success_threshold > 1000 {
            return bad("success_threshold", "must be at most 1000");
        }
        if self.half_open_max_probes == 0 {
            return bad("half_open_max_probes", "must be at least 1");
        }
        if self.success_threshold == 0 {
            return bad("success_threshold", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.open_jitter) {
            return bad("open_jitter", "must be in 0.0..=1.0");
        }
        if !(1.0..=16.0).contains(&self.open_backoff) {
            return bad("open_backoff", "must be in 1.0..=16.0");
        }
        Ok(())
    }
}

/// A random number in `0.0..1.0`, from the standard library's randomly keyed hasher (each
/// `RandomState` has fresh keys): enough to spread probes, and called only when a breaker
/// opens.
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(0u8);
    // The top 53 bits, as the mantissa of a number in [0, 1).
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `now + d`, or a year on if the clock cannot hold it (an Instant spans centuries, so a year
/// always fits): an open duration never panics.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls run.
    Closed = 0,
    /// Calls are rejected.
    Open = 1,
    /// A few probes run.
    HalfOpen = 2,
    /// Set by hand ([`CircuitBreaker::disable`]): every call runs, outcomes are counted and
    /// never move the state, until [`CircuitBreaker::reset`].
    Disabled = 3,
    /// Set by hand ([`CircuitBreaker::force_open`]): every call is rejected, until
    /// [`CircuitBreaker::reset`].
    ForcedOpen = 4,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::Disabled,
            4 => Self::ForcedOpen,
            _ => Self::Closed,
        }
    }

    /// `closed`, `open`, `half_open`, `disabled` or `forced_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::Disabled => "disabled",
            Self::ForcedOpen => "forced_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call was not admitted: the breaker is open (or half-open with every probe slot taken).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("circuit breaker `{name}` is {state}: call rejected")]
pub struct Rejected {
    /// The breaker's name.
    pub name: String,
    /// Its state when the call was rejected.
    pub state: BreakerState,
}

/// The result of [`CircuitBreaker::call`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The breaker did not run the future.
    #[error(transparent)]
    Rejected(Rejected),
    /// The future ran and failed.
    #[error("{0}")]
    Inner(E),
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// CLOSED: an ordinary call.
    Normal,
    /// HALF_OPEN: one of the few probes that decide whether the breaker closes.
    Probe,
}

/// How a protected call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint works.
    Success,
    /// The endpoint failed; `retry_after` (a server's hint) may keep the breaker open longer.
    Failure {
        /// Minimum time before the next attempt, if the server said.
        retry_after: Option<Duration>,
    },
    /// Says nothing about the endpoint's health (a caller bug such as HTTP 400).
    Ignored,
}

/// Counters, all monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerStats {
    /// Current state.
    pub state: Option<BreakerState>,
    /// Calls rejected without running.
    pub rejected: u64,
    /// Calls recorded as failures.
    pub failures: u64,
    /// Calls recorded as successes.
    pub successes: u64,
    /// Calls recorded as ignored (or whose permit was dropped).
    pub ignored: u64,
    /// Successful calls slower than `slow_call_threshold`, recorded as failures (among
    /// `failures`).
    pub slow_calls: u64,
    /// Times the breaker opened.
    pub openings: u64,
}

#[derive(Default)]
struct Counters {
    rejected: AtomicU64,
    failures: AtomicU64,
    successes: AtomicU64,
    ignored: AtomicU64,
    openings: AtomicU64,
    slow_calls: AtomicU64,
}

struct Core {
    state: BreakerState,
    /// Bumped on every transition; permits from an older generation do not move the state.
    generation: u64,
    consecutive_failures: u32,
    window: VecDeque<bool>,
    window_failures: u32,
    /// `TimeRate`: (second since `base`, calls, failures), oldest first.
    buckets: VecDeque<(u64, u32, u32)>,
    base: Instant,
    open_until: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Failed probes since the breaker last closed: each grows the open period.
    failed_probes: u32,
}

pub(crate) struct Inner {
    name: String,
    config: BreakerConfig,
    state: AtomicU8,
    core: Mutex<Core>,
    counters: Counters,
    listeners: RwLock<Vec<Listener>>,
    /// Whether any listener is registered: the event path's one check when none is.
    has_listeners: AtomicBool,
    /// `core.generation`, readable without the lock (stored before `state`).
    generation: AtomicU64,
    /// CLOSED under a consecutive-failures policy with no failure counted: a success or an
    /// ignored outcome changes nothing, so it is recorded without the lock.
    clean: AtomicBool,
}

/// A listener of [`CircuitBreaker::on_event`].
type Listener = Arc<dyn Fn(&str, &BreakerEvent) + Send + Sync>;

/// What a breaker tells its listeners ([`CircuitBreaker::on_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The state changed (by the rules, or by hand).
    StateTransition {
        /// Before.
        from: BreakerState,
        /// After.
        to: BreakerState,
    },
    /// A call was rejected in this state.
    Rejected {
        /// The state that rejected it.
        state: BreakerState,
    },
    /// A call was recorded as a success.
    Success,
    /// A call was recorded as a failure.
    Failure,
    /// A call's outcome said nothing of the endpoint (or its permit was dropped).
    Ignored,
    /// A call succeeded slower than `slow_call_threshold`: recorded as a failure (a
    /// [`Failure`](Self::Failure) event follows).
    SlowCall {
        /// How long it took.
        took: Duration,
    },
}

/// A circuit breaker. Cheap to clone (clones share state).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker. A config that does not validate (e.g. `half_open_max_probes: 0`,
    /// which could never close again) is replaced as a whole by [`BreakerConfig::default`],
    /// with a warning; [`CircuitBreaker::try_new`] returns the error instead.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let config = match config.validate() {
            Ok(()) => config,
            Err(e) => {
                tracing::warn!(error = %e, "invalid breaker config replaced by the defaults");
                BreakerConfig::default()
            }
        };
        Self::with_valid(name, config)
    }

    /// A closed breaker with a config already validated.
    fn with_valid(name: impl Into<String>, config: BreakerConfig) -> Self {
        let window = match config.policy {
            FailurePolicy::Rate { window, .. } => window as usize,
            FailurePolicy::Consecutive { .. } | FailurePolicy::TimeRate { .. } => 0,
        };
        let clean = matches!(config.policy, FailurePolicy::Consecutive { .. });
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                config,
                state: AtomicU8::new(BreakerState::Closed as u8),
                core: Mutex::new(Core {
                    state: BreakerState::Closed,
                    generation: 0,
                    consecutive_failures: 0,
                    window: VecDeque::with_capacity(window),
                    window_failures: 0,
                    buckets: VecDeque::new(),
                    base: Instant::now(),
                    open_until: Instant::now(),
                    probes_in_flight: 0,
                    probe_successes: 0,
                    failed_probes: 0,
                }),
                counters: Counters::default(),
                listeners: RwLock::new(Vec::new()),
                has_listeners: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                clean: AtomicBool::new(clean),
            }),
        }
    }

    /// A closed breaker, if the config is valid.
    pub fn try_new(
        name: impl Into<String>,
        config: BreakerConfig,
    ) -> Result<Self, BreakerConfigError> {
        config.validate()?;
        Ok(Self::with_valid(name, config))
    }

    pub(crate) fn inner_arc(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The breaker's name (e.g. the host it protects).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The config.
    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }

    /// The state: one atomic load (and, for an OPEN breaker, a look at its deadline). An
    /// OPEN breaker whose open period is over reads HALF_OPEN: the next call is a probe.
    pub fn state(&self) -> BreakerState {
        match BreakerState::from_u8(self.inner.state.load(Ordering::Acquire)) {
            BreakerState::Open if Instant::now() >= self.lock().open_until => {
                BreakerState::HalfOpen
            }
            state => state,
        }
    }

    /// Opens the breaker by hand: every call is rejected until [`reset`](Self::reset)
    /// (maintenance, a known outage). Reads [`BreakerState::ForcedOpen`].
    pub fn force_open(&self) {
        self.set_by_hand(BreakerState::ForcedOpen);
    }

    /// Turns the breaker off by hand: every call runs, outcomes are still counted but never
    /// open it, until [`reset`](Self::reset). Reads [`BreakerState::Disabled`].
    pub fn disable(&self) {
        self.set_by_hand(BreakerState::Disabled);
    }

    /// Back to CLOSED with nothing remembered (failures, the open period's growth), from any
    /// state, forced or not. Permits taken before do not move the new state.
    pub fn reset(&self) {
        self.set_by_hand(BreakerState::Closed);
    }

    /// A transition asked for by hand; each forgets the open period's growth.
    fn set_by_hand(&self, to: BreakerState) {
        let mut core = self.lock();
        core.failed_probes = 0;
        let t = self.set_state(&mut core, to, Instant::now(), Duration::ZERO);
        drop(core);
        self.emit(t);
    }

    /// Whether the breaker remembers nothing worth keeping: CLOSED with no failure counted
    /// toward opening it. A registry drops only such a breaker when its last user leaves.
    pub fn is_at_rest(&self) -> bool {
        let core = self.lock();
        core.state == BreakerState::Closed
            && core.consecutive_failures == 0
            && core.window_failures == 0
            && core.buckets.iter().all(|b| b.2 == 0)
    }

    /// Counters and state.
    pub fn stats(&self) -> BreakerStats {
        let c = &self.inner.counters;
        BreakerStats {
            state: Some(self.state()),
            rejected: c.rejected.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            successes: c.successes.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            slow_calls: c.slow_calls.load(Ordering::Relaxed),
            openings: c.openings.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // Poisoning needs a panic inside the critical section, whose code cannot panic; if it
        // ever happened, the state is still consistent enough to keep going.
        self.inner.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `to`; the transition is told to the listeners by the caller, once the lock is
    /// released (a listener may call back into the breaker).
    #[must_use = "the transition goes to the listeners once the lock is released"]
    fn set_state(
        &self,
        core: &mut Core,
        to: BreakerState,
        now: Instant,
        open_for: Duration,
    ) -> BreakerEvent {
        let from = core.state;
        core.state = to;
        core.generation = core.generation.wrapping_add(1);
        core.consecutive_failures = 0;
        core.window.clear();
        core.window_failures = 0;
        core.buckets.clear();
        core.probes_in_flight = 0;
        core.probe_successes = 0;
        if to == BreakerState::Open {
            core.open_until = later(now, open_for);
            self.inner.counters.openings.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(breaker = %self.inner.name, from = %from, open_for_ms = open_for.as_millis() as u64, "circuit breaker opened");
        } else {
            tracing::debug!(breaker = %self.inner.name, from = %from, to = %to, "circuit breaker transition");
        }
        self.inner
            .generation
            .store(core.generation, Ordering::Release);
        self.set_clean(core);
        self.inner.state.store(to as u8, Ordering::Release);
        BreakerEvent::StateTransition { from, to }
    }

    /// Keeps `clean` in step with the core (called under its lock).
    fn set_clean(&self, core: &Core) {
        let clean = core.state == BreakerState::Closed
            && core.consecutive_failures == 0
            && matches!(self.inner.config.policy, FailurePolicy::Consecutive { .. });
        self.inner.clean.store(clean, Ordering::Release);
    }

    /// Tells every listener of `event` (none registered: one atomic load). A listener's
    /// panic is contained.
    fn emit(&self, event: BreakerEvent) {
        if !self.inner.has_listeners.load(Ordering::Acquire) {
            return;
        }
        let listeners = self
            .inner
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in listeners {
            let name = self.inner.name.as_str();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(name, &event)));
        }
    }

    /// Calls `listener` with the breaker's name and each [`BreakerEvent`] from now on: state
    /// transitions, rejections, successes, failures, ignored outcomes (to feed metrics or
    /// logs). Shared by every clone. Called outside the breaker's lock, on the thread that
    /// caused the event; keep it quick. A panic in it is contained.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use telemetry_breaker::{BreakerConfig, BreakerEvent, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("api", BreakerConfig::default());
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// breaker.on_event(move |_name, e| log.lock().unwrap().push(*e));
    /// breaker.try_acquire().unwrap().success();
    /// assert_eq!(*seen.lock().unwrap(), vec![BreakerEvent::Success]);
    /// ```
    pub fn on_event(&self, listener: impl Fn(&str, &BreakerEvent) + Send + Sync + 'static) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(listener));
        self.inner.has_listeners.store(true, Ordering::Release);
    }

    fn open_for(&self, retry_after: Option<Duration>, failed_probes: u32) -> Duration {
        let c = &self.inner.config;
        let growth = if (1.0..=16.0).contains(&c.open_backoff) {
            c.open_backoff
                .powi(i32::try_from(failed_probes.min(64)).unwrap_or(64))
        } else {
            1.0
        };
        // A growth past what a Duration holds saturates to the cap below.
        let grown = Duration::try_from_secs_f64(c.open_duration.as_secs_f64() * growth)
            .unwrap_or(c.max_open_duration);
        let base = retry_after
            .map_or(grown, |r| r.max(grown))
            .min(c.max_open_duration);
        // A NaN or out-of-range jitter (a config not validated) adds nothing.
        let share = if (0.0..=1.0).contains(&c.open_jitter) {
            c.open_jitter * random_fraction()
        } else {
            0.0
        };
        base.saturating_add(base.mul_f64(share))
    }

    /// Asks to run one call. On success, record the call's outcome on the permit; a permit
    /// dropped without a record counts as [`Outcome::Ignored`] and frees its probe slot.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        // CLOSED or disabled: admitted without the lock. A transition between the two loads
        // of the state sends the call the slow way; one after them leaves a permit of the
        // old generation, which the new state ignores (as any permit from before it).
        let state = self.inner.state.load(Ordering::Acquire);
        if state == BreakerState::Closed as u8 || state == BreakerState::Disabled as u8 {
            let generation = self.inner.generation.load(Ordering::Acquire);
            if self.inner.state.load(Ordering::Acquire) == state {
                return Ok(Permit::new(self.clone(), generation, false, self.start()));
            }
        }
        let now = Instant::now();
        let mut core = self.lock();
        let transition = (core.state == BreakerState::Open && now >= core.open_until)
            .then(|| self.set_state(&mut core, BreakerState::HalfOpen, now, Duration::ZERO));
        let admitted = match core.state {
            BreakerState::Closed | BreakerState::Disabled => Ok(Permit::new(
                self.clone(),
                core.generation,
                false,
                self.start(),
            )),
            BreakerState::HalfOpen
                if core.probes_in_flight < self.inner.config.half_open_max_probes =>
            {
                core.probes_in_flight += 1;
                Ok(Permit::new(
                    self.clone(),
                    core.generation,
                    true,
                    self.start(),
                ))
            }
            state => Err(state),
        };
        drop(core);
        if let Some(t) = transition {
            self.emit(t);
        }
        admitted.map_err(|state| {
            self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
            self.emit(BreakerEvent::Rejected { state });
            Rejected {
                name: self.inner.name.clone(),
                state,
            }
        })
    }

    /// When a call starts, if its speed is judged (a clock reading only then).
    fn start(&self) -> Option<Instant> {
        self.inner
            .config
            .slow_call_threshold
            .map(|_| Instant::now())
    }

    /// A success slower than the slow-call threshold is a failure.
    fn judge_speed(&self, started: Option<Instant>, outcome: Outcome) -> Outcome {
        match (outcome, self.inner.config.slow_call_threshold, started) {
            (Outcome::Success, Some(threshold), Some(started)) => {
                let took = started.elapsed();
                if took > threshold {
                    self.inner
                        .counters
                        .slow_calls
                        .fetch_add(1, Ordering::Relaxed);
                    self.emit(BreakerEvent::SlowCall { took });
                    Outcome::Failure { retry_after: None }
                } else {
                    outcome
                }
            }
            _ => outcome,
        }
    }

    fn record(&self, generation: u64, probe: bool, outcome: Outcome) {
        let counters = &self.inner.counters;
        match outcome {
            Outcome::Success => counters.successes.fetch_add(1, Ordering::Relaxed),
            Outcome::Failure { .. } => counters.failures.fetch_add(1, Ordering::Relaxed),
            Outcome::Ignored => counters.ignored.fetch_add(1, Ordering::Relaxed),
        };
        self.emit(match outcome {
            Outcome::Success => BreakerEvent::Success,
            Outcome::Failure { .. } => BreakerEvent::Failure,
            Outcome::Ignored => BreakerEvent::Ignored,
        });
        // Nothing to change (a success or an ignored call of a clean CLOSED breaker, anything
        // of a disabled one, of the current generation): no lock.
        if !probe && self.inner.generation.load(Ordering::Acquire) == generation {
            let state = self.inner.state.load(Ordering::Acquire);
            let unchanged = match outcome {
                Outcome::Success => self.inner.clean.load(Ordering::Acquire),
                Outcome::Ignored => state == BreakerState::Closed as u8,
                Outcome::Failure { .. } => false,
            };
            if unchanged || state == BreakerState::Disabled as u8 {
                return;
            }
        }
        let now = Instant::now();
        let mut core = self.lock();
        let mut transition = None;
        if generation != core.generation {
            // The state moved on while this call ran. A late failure with a server hint may
            // still keep an open breaker open longer.
            if let (
                BreakerState::Open,
                Outcome::Failure {
                    retry_after: Some(r),
                },
            ) = (core.state, outcome)
            {
                let until = later(now, self.open_for(Some(r), core.failed_probes));
                if until > core.open_until {
                    core.open_until = until;
                }
            }
            return;
        }
        match core.state {
            BreakerState::Closed => match outcome {
                Outcome::Success => {
                    core.consecutive_failures = 0;
                    self.push_window(&mut core, false, now);
                    self.set_clean(&core);
                }
                Outcome::Failure { retry_after } => {
                    core.consecutive_failures = core.consecutive_failures.saturating_add(1);
                    self.set_clean(&core);
                    self.push_window(&mut core, true, now);
                    if self.should_open(&core) {
                        core.failed_probes = 0;
                        let open_for = self.open_for(retry_after, 0);
                        transition =
                            Some(self.set_state(&mut core, BreakerState::Open, now, open_for));
                    }
                }
                Outcome::Ignored => {}
            },
            BreakerState::HalfOpen if probe => {
                core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Success => {
                        core.probe_successes += 1;
                        if core.probe_successes >= self.inner.config.success_threshold {
                            core.failed_probes = 0;
                            transition = Some(self.set_state(
                                &mut core,
                                BreakerState::Closed,
                                now,
                                Duration::ZERO,
                            ));
                        }
                    }
                    Outcome::Failure { retry_after } => {
                        core.failed_probes = core.failed_probes.saturating_add(1);
                        let open_for = self.open_for(retry_after, core.failed_probes);
                        transition =
                            Some(self.set_state(&mut core, BreakerState::Open, now, open_for));
                    }
                    Outcome::Ignored => {}
                }
            }
            _ => {}
        }
        drop(core);
        if let Some(t) = transition {
            self.emit(t);
        }
    }

    fn push_window(&self, core: &mut Core, failed: bool, now: Instant) {
        match self.inner.config.policy {
            FailurePolicy::Rate { window, .. } => {
                if core.window.len() >= window as usize && core.window.pop_front() == Some(true) {
                    core.window_failures -= 1;
                }
                core.window.push_back(failed);
                core.window_failures += u32::from(failed);
            }
            FailurePolicy::TimeRate { window, .. } => {
                let second = now.saturating_duration_since(core.base).as_secs();
                Self::prune(core, second, window);
                match core.buckets.back_mut() {
                    Some(b) if b.0 == second => {
                        b.1 = b.1.saturating_add(1);
                        b.2 = b.2.saturating_add(u32::from(failed));
                    }
                    _ => core.buckets.push_back((second, 1, u32::from(failed))),
                }
            }
            FailurePolicy::Consecutive { .. } => {}
        }
    }

    /// Drops the buckets that fell out of a `window` ending at `second`.
    fn prune(core: &mut Core, second: u64, window: Duration) {
        let oldest = second.saturating_sub(window.as_secs().saturating_sub(1));
        while core.buckets.front().is_some_and(|b| b.0 < oldest) {
            core.buckets.pop_front();
        }
    }

    fn should_open(&self, core: &Core) -> bool {
        match self.inner.config.policy {
            FailurePolicy::Consecutive { threshold } => core.consecutive_failures >= threshold,
            FailurePolicy::Rate {
                failure_rate,
                minimum_calls,
                ..
            } => {
                let calls = core.window.len() as u32;
                calls >= minimum_calls
                    && f64::from(core.window_failures) >= failure_rate * f64::from(calls)
            }
            FailurePolicy::TimeRate {
                failure_rate,
                minimum_calls,
                ..
            } => {
                let (calls, failures) = core.buckets.iter().fold((0u64, 0u64), |(c, f), b| {
                    (c + u64::from(b.1), f + u64::from(b.2))
                });
                calls >= u64::from(minimum_calls) && failures as f64 >= failure_rate * calls as f64
            }
        }
    }

    /// Runs `fut` if admitted; `classify` tells the breaker what its output means. Returns the
    /// output, or [`Rejected`] without polling `fut`.
    pub async fn call_with<T, F>(
        &self,
        fut: F,
        classify: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, Rejected>
    where
        F: Future<Output = T>,
    {
        self.call_admitted(|_| fut, classify).await
    }

    /// [`call_with`](Self::call_with) for calls that behave differently as a HALF_OPEN
    /// probe: `make` learns how the call was admitted (a probe should be a single attempt,
    /// without retries of its own) and builds the future only once admitted.
    ///
    /// ```
    /// use telemetry_breaker::{Admission, BreakerConfig, CircuitBreaker, Outcome};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new("api", BreakerConfig::default());
    /// let attempts = breaker
    ///     .call_admitted(
    ///         |admission| async move { if admission == Admission::Probe { 1 } else { 4 } },
    ///         |_| Outcome::Success,
    ///     )
    ///     .await;
    /// assert_eq!(attempts, Ok(4));
    /// # }
    /// ```
    pub async fn call_admitted<T, F>(
        &self,
        make: impl FnOnce(Admission) -> F,
        classify: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, Rejected>
    where
        F: Future<Output = T>,
    {
        let permit = self.try_acquire()?;
        let admission = if permit.is_probe() {
            Admission::Probe
        } else {
            Admission::Normal
        };
        let out = make(admission).await;
        permit.record(classify(&out));
        Ok(out)
    }

    /// [`call_with`](Self::call_with) for a synchronous call: runs `f` on this thread if
    /// admitted, and `classify` says what its output means. A panic in `f` unwinds through
    /// and counts as ignored (its permit is dropped unrecorded).
    pub fn call_sync_with<T>(
        &self,
        f: impl FnOnce() -> T,
        classify: impl FnOnce(&T) -> Outcome,
    ) -> Result<T, Rejected> {
        let permit = self.try_acquire()?;
        let out = f();
        permit.record(classify(&out));
        Ok(out)
    }

    /// [`call`](Self::call) for a synchronous call.
    ///
    /// ```
    /// use telemetry_breaker::{BreakerConfig, CallError, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("db", BreakerConfig::default());
    /// let rows: Result<u32, CallError<std::io::Error>> =
    ///     breaker.call_sync(|| Ok(42), |_e: &std::io::Error| true);
    /// assert_eq!(rows.unwrap(), 42);
    /// ```
    pub fn call_sync<T, E>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, CallError<E>> {
        self.call_sync_with(f, |r| classify_result(r, is_failure))
            .map_err(CallError::Rejected)?
            .map_err(CallError::Inner)
    }

    /// Runs `fut` if admitted. `Ok` is a success; an `Err` for which `is_failure` is true is a
    /// failure, any other `Err` leaves the breaker alone.
    pub async fn call<T, E, F>(
        &self,
        fut: F,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let out = self
            .call_with(fut, |r| classify_result(r, is_failure))
            .await
            .map_err(CallError::Rejected)?;
        out.map_err(CallError::Inner)
    }
}

impl CircuitBreaker {
    /// [`call`](Self::call) with the outcome decided by `classify` from the whole result, so
    /// that a failure can carry the server's `Retry-After`, without the nested
    /// `Ok(Err(..))` of [`call_with`](Self::call_with).
    ///
    /// ```
    /// use std::time::Duration;
    /// use telemetry_breaker::{BreakerConfig, CallError, CircuitBreaker, Outcome};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new("api", BreakerConfig::default());
    /// // A 429 with `Retry-After: 30`, as the caller's own error type.
    /// let r: Result<(), CallError<(u16, u64)>> = breaker
    ///     .call_classified(async { Err((429, 30)) }, |r| match r {
    ///         Err((429 | 503, secs)) => Outcome::Failure {
    ///             retry_after: Some(Duration::from_secs(*secs)),
    ///         },
    ///         Err(_) => Outcome::Ignored,
    ///         Ok(_) => Outcome::Success,
    ///     })
    ///     .await;
    /// assert!(matches!(r, Err(CallError::Inner((429, 30)))));
    /// # }
    /// ```
    pub async fn call_classified<T, E, F>(
        &self,
        fut: F,
        classify: impl FnOnce(&Result<T, E>) -> Outcome,
    ) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_with(fut, classify)
            .await
            .map_err(CallError::Rejected)?
            .map_err(CallError::Inner)
    }
}

/// `Ok` a success; an `Err` that `is_failure` says is one a failure; any other ignored.
fn classify_result<T, E>(r: &Result<T, E>, is_failure: impl FnOnce(&E) -> bool) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(e) if is_failure(e) => Outcome::Failure { retry_after: None },
        Err(_) => Outcome::Ignored,
    }
}

/// Permission to make one call. Record how it went with [`Permit::record`] (or the
/// shorthands); dropping it unrecorded counts as [`Outcome::Ignored`].
#[must_use = "a permit records nothing until `record` is called"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    recorded: bool,
    /// When it was admitted, if slow calls are judged.
    started: Option<Instant>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.inner.name)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit {
    fn new(
        breaker: CircuitBreaker,
        generation: u64,
        probe: bool,
        started: Option<Instant>,
    ) -> Self {
        Self {
            breaker,
            generation,
            probe,
            recorded: false,
            started,
        }
    }

    /// Whether this permit is a HALF_OPEN probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the outcome.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        let outcome = self.breaker.judge_speed(self.started, outcome);
        self.breaker.record(self.generation, self.probe, outcome);
    }

    /// Records a success.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Records a failure.
    pub fn failure(self) {
        self.record(Outcome::Failure { retry_after: None });
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .record(self.generation, self.probe, Outcome::Ignored);
        }
    }
}

#[cfg(test)]
mod tests;
