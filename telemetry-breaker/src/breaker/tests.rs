use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rstest::rstest;

use super::*;
use crate::CircuitBreakerRegistry;

fn breaker(threshold: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        "test",
        BreakerConfig {
            policy: FailurePolicy::Consecutive { threshold },
            ..BreakerConfig::default()
        },
    )
}

fn fail(b: &CircuitBreaker, n: u32) {
    for _ in 0..n {
        b.try_acquire().unwrap().failure();
    }
}

#[tokio::test(start_paused = true)]
async fn starts_closed() {
    let b = breaker(5);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.stats(),
        BreakerStats {
            state: Some(BreakerState::Closed),
            ..Default::default()
        }
    );
    assert_eq!(b.name(), "test");
    assert!(format!("{b:?}").contains("Closed"));
}

#[tokio::test(start_paused = true)]
async fn opens_after_threshold() {
    let b = breaker(5);
    fail(&b, 4);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
    let s = b.stats();
    assert_eq!((s.failures, s.openings), (5, 1));
}

#[tokio::test(start_paused = true)]
async fn rejects_while_open_without_running_the_future() {
    let b = breaker(1);
    fail(&b, 1);
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let out = b
        .call(
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(())
            },
            |_| true,
        )
        .await;
    match out {
        Err(CallError::Rejected(rej)) => {
            assert_eq!(rej.state, BreakerState::Open);
            assert!(rej.to_string().contains("open"));
        }
        other => panic!("expected rejection, got {other:?}"),
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(b.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_after_the_timeout() {
    let b = breaker(1);
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    let p = b.try_acquire().unwrap();
    assert!(p.is_probe());
    assert_eq!(b.state(), BreakerState::HalfOpen);
    drop(p);
}

#[tokio::test(start_paused = true)]
async fn only_n_probes_admitted_when_many_race() {
    let b = CircuitBreaker::new(
        "t",
        BreakerConfig {
            policy: FailurePolicy::Consecutive { threshold: 1 },
            half_open_max_probes: 3,
            ..Default::default()
        },
    );
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    let results: Vec<_> = (0..50).map(|_| b.try_acquire()).collect();
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 3);
    assert_eq!(b.stats().rejected, 47);
}

#[tokio::test(start_paused = true)]
async fn closes_after_successes() {
    let b = breaker(1);
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), BreakerState::Closed);
    // Closed again: the failure count starts from zero.
    let b2 = breaker(2);
    fail(&b2, 1);
    b2.try_acquire().unwrap().success();
    fail(&b2, 1);
    assert_eq!(b2.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn reopens_on_a_half_open_failure() {
    let b = breaker(1);
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.stats().openings, 2);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(b.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_consecutive_count() {
    let b = breaker(3);
    for _ in 0..10 {
        fail(&b, 2);
        b.try_acquire().unwrap().success();
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.stats().failures, 20);
}

#[tokio::test(start_paused = true)]
async fn rate_policy_opens_at_threshold_only_after_minimum_calls() {
    let b = CircuitBreaker::try_new("r", BreakerConfig::rate_based()).unwrap();
    // 9 failures: 100 % but fewer than 10 calls.
    fail(&b, 9);
    assert_eq!(b.state(), BreakerState::Closed);
    // The 10th call is a success: only a failure is judged against the rate.
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), BreakerState::Closed, "successes never open");
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);

    let b = CircuitBreaker::try_new("r2", BreakerConfig::rate_based()).unwrap();
    // 20 % failures over a full window stays closed.
    for i in 0..60 {
        let p = b.try_acquire().unwrap();
        if i % 5 == 0 { p.failure() } else { p.success() }
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // Then failures push the window over 50 %.
    let mut n = 0;
    while b.state() == BreakerState::Closed {
        fail(&b, 1);
        n += 1;
    }
    assert!(n > 1 && n < 30, "{n}");
}

#[tokio::test(start_paused = true)]
async fn non_counting_errors_leave_state_alone() {
    let b = breaker(2);
    for _ in 0..10 {
        let r = b
            .call(async { Err::<(), u16>(400) }, |status| *status >= 500)
            .await;
        assert!(matches!(r, Err(CallError::Inner(400))));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.stats().ignored, 10);
    let r = b.call(async { Err::<(), u16>(503) }, |s| *s >= 500).await;
    assert!(matches!(r, Err(CallError::Inner(503))));
    let r = b.call(async { Ok::<u8, u16>(7) }, |s| *s >= 500).await;
    assert!(matches!(r, Ok(7)));
}

#[tokio::test(start_paused = true)]
async fn retry_after_extends_open() {
    let b = breaker(1);
    b.try_acquire().unwrap().record(Outcome::Failure {
        retry_after: Some(Duration::from_secs(120)),
    });
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(b.try_acquire().is_err(), "still open past the default 60 s");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_and_late_failures_extend() {
    let b = breaker(1);
    b.try_acquire().unwrap().record(Outcome::Failure {
        retry_after: Some(Duration::from_secs(100_000)),
    });
    tokio::time::advance(Duration::from_secs(600)).await;
    let p = b.try_acquire().unwrap();
    p.failure();
    // A call admitted while closed that fails after the breaker opened extends the opening.
    let b = breaker(1);
    let late = b.try_acquire().unwrap();
    fail(&b, 1);
    late.record(Outcome::Failure {
        retry_after: Some(Duration::from_secs(90)),
    });
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn dropped_permits_release_half_open_slots() {
    let b = breaker(1);
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    let p = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err(), "the single slot is taken");
    drop(p);
    let p = b.try_acquire().expect("slot released by the drop");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    drop(p);
    assert_eq!(b.stats().ignored, 2);
}

#[tokio::test(start_paused = true)]
async fn cancelled_call_releases_its_probe_slot() {
    let b = breaker(1);
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    let hung = b.call(std::future::pending::<Result<(), ()>>(), |_| true);
    let r = tokio::time::timeout(Duration::from_secs(1), hung).await;
    assert!(r.is_err());
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn stale_permits_do_not_move_state() {
    let b = breaker(1);
    let old = b.try_acquire().unwrap();
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    let probe = b.try_acquire().unwrap();
    old.success(); // from the closed generation: must not count as a probe success
    assert_eq!(b.state(), BreakerState::HalfOpen);
    probe.success();
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn registry_isolates_hosts() {
    let reg = CircuitBreakerRegistry::new(BreakerConfig {
        policy: FailurePolicy::Consecutive { threshold: 1 },
        ..Default::default()
    });
    let a = reg.get_or_create("a".to_string());
    let b = reg.get_or_create("b".to_string());
    fail(&a, 1);
    assert_eq!(a.state(), BreakerState::Open);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        reg.get(&"a".to_string()).unwrap().state(),
        BreakerState::Open
    );
    assert_eq!(reg.len(), 2);
    assert!(reg.remove(&"a".to_string()).is_some());
    assert!(reg.get(&"a".to_string()).is_none());
    assert_eq!(
        reg.get_or_create("a".to_string()).state(),
        BreakerState::Closed
    );
    assert!(format!("{reg:?}").contains("\"b\""));
}

#[tokio::test(start_paused = true)]
async fn registry_leases_remove_at_zero() {
    let reg = CircuitBreakerRegistry::new(BreakerConfig::default());
    let l1 = reg.lease("h".to_string());
    let l2 = reg.lease("h".to_string());
    assert!(Arc::ptr_eq(
        l1.breaker().inner_arc(),
        l2.breaker().inner_arc()
    ));
    drop(l1);
    assert_eq!(reg.len(), 1);
    drop(l2);
    assert!(reg.is_empty());
    // A lease whose entry was removed and re-created leaves the new entry alone.
    let old = reg.lease("h".to_string());
    reg.remove(&"h".to_string());
    let _new = reg.lease("h".to_string());
    drop(old);
    assert_eq!(reg.len(), 1);
    assert!(format!("{_new:?}").contains("h"));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_outlives_its_leases_until_it_closes() {
    let reg = CircuitBreakerRegistry::new(BreakerConfig::default());
    let lease = reg.lease("h".to_string());
    for _ in 0..5 {
        lease.breaker().try_acquire().unwrap().failure();
    }
    drop(lease);
    assert_eq!(reg.len(), 1, "kept while open");
    // The next user (a new connection) still finds it open: no call goes through.
    let lease = reg.lease("h".to_string());
    assert_eq!(lease.breaker().state(), BreakerState::Open);
    assert!(lease.breaker().try_acquire().is_err());
    drop(lease);
    // After the open period two probes close it; then the last lease removes it.
    tokio::time::advance(Duration::from_secs(60)).await;
    let lease = reg.lease("h".to_string());
    lease.breaker().try_acquire().unwrap().success();
    lease.breaker().try_acquire().unwrap().success();
    assert_eq!(lease.breaker().state(), BreakerState::Closed);
    drop(lease);
    assert!(reg.is_empty());
}

#[tokio::test(start_paused = true)]
async fn failures_accumulate_across_short_lived_leases() {
    let reg = CircuitBreakerRegistry::new(BreakerConfig::default());
    for _ in 0..5 {
        let lease = reg.lease("h".to_string());
        lease.breaker().try_acquire().unwrap().failure();
    }
    let lease = reg.lease("h".to_string());
    assert_eq!(
        lease.breaker().state(),
        BreakerState::Open,
        "5 users, 1 failure each"
    );
    assert_eq!(lease.breaker().stats().openings, 1);
    drop(lease);
    let lease = reg.lease("ok".to_string());
    assert!(lease.breaker().is_at_rest());
    lease.breaker().try_acquire().unwrap().success();
    drop(lease);
    assert_eq!(reg.len(), 1, "a breaker at rest is not kept");
}

#[tokio::test(start_paused = true)]
async fn idle_breakers_are_bounded() {
    let reg = CircuitBreakerRegistry::new(BreakerConfig::default());
    for i in 0..(crate::MAX_IDLE_BREAKERS + 10) {
        let lease = reg.lease(format!("h{i}"));
        for _ in 0..5 {
            lease.breaker().try_acquire().unwrap().failure();
        }
    }
    assert_eq!(reg.len(), crate::MAX_IDLE_BREAKERS);
    let busy = reg.lease("busy".to_string());
    assert_eq!(reg.len(), crate::MAX_IDLE_BREAKERS, "an idle one made room");
    drop(busy);
}

#[tokio::test(start_paused = true)]
async fn eviction_goes_least_recently_used_and_keeps_open_breakers_last() {
    let reg = CircuitBreakerRegistry::new(BreakerConfig::default());
    // One open breaker, idle, used first (the oldest of all).
    let open = reg.lease("open".to_string());
    for _ in 0..5 {
        open.breaker().try_acquire().unwrap().failure();
    }
    assert_eq!(open.breaker().state(), BreakerState::Open);
    drop(open);
    // Then closed breakers counting one failure each, idle, up to the cap.
    for i in 0..crate::MAX_IDLE_BREAKERS - 1 {
        let lease = reg.lease(format!("h{i}"));
        lease.breaker().try_acquire().unwrap().failure();
    }
    assert_eq!(reg.len(), crate::MAX_IDLE_BREAKERS);
    // h0 is used again: it is now recent.
    assert!(reg.get(&"h0".to_string()).is_some());
    let newcomer = reg.lease("new".to_string());
    assert_eq!(reg.len(), crate::MAX_IDLE_BREAKERS);
    assert!(
        reg.get(&"open".to_string()).is_some(),
        "the open one is kept"
    );
    assert!(reg.get(&"h0".to_string()).is_some(), "recently used: kept");
    assert!(
        reg.get(&"h1".to_string()).is_none(),
        "least recently used: gone"
    );
    drop(newcomer);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_grow_the_open_period_up_to_its_cap_and_closing_resets_it() {
    let config = BreakerConfig {
        policy: FailurePolicy::Consecutive { threshold: 1 },
        open_duration: Duration::from_secs(10),
        max_open_duration: Duration::from_secs(50),
        open_backoff: 2.0,
        success_threshold: 1,
        ..BreakerConfig::default()
    };
    assert!(config.validate().is_ok());
    // Each failed probe doubles the next period, up to 50 s.
    let mut b2_periods = Vec::new();
    let b2 = CircuitBreaker::new("h2", config);
    b2.try_acquire().unwrap().failure();
    for _ in 0..4 {
        let mut waited = 0;
        let probe = loop {
            match b2.try_acquire() {
                Ok(p) => break p,
                Err(_) => {
                    tokio::time::advance(Duration::from_secs(1)).await;
                    waited += 1;
                }
            }
        };
        b2_periods.push(waited);
        probe.failure();
    }
    assert_eq!(b2_periods, [10, 20, 40, 50]);
    // A successful probe closes it; the next opening starts from the base again.
    tokio::time::advance(Duration::from_secs(50)).await;
    b2.try_acquire().unwrap().success();
    assert_eq!(b2.state(), BreakerState::Closed);
    b2.try_acquire().unwrap().failure();
    let mut waited = 0;
    while b2.try_acquire().is_err() {
        tokio::time::advance(Duration::from_secs(1)).await;
        waited += 1;
    }
    assert_eq!(waited, 10);
    let bad = BreakerConfig {
        open_backoff: 0.5,
        ..BreakerConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[tokio::test(start_paused = true)]
async fn the_open_period_is_jittered_within_its_bound() {
    let config = BreakerConfig {
        policy: FailurePolicy::Consecutive { threshold: 1 },
        open_duration: Duration::from_secs(60),
        open_jitter: 0.5,
        ..BreakerConfig::default()
    };
    assert!(config.validate().is_ok());
    let mut periods = Vec::new();
    for _ in 0..40 {
        let b = CircuitBreaker::new("h", config.clone());
        b.try_acquire().unwrap().failure();
        let mut waited = 0;
        while b.try_acquire().is_err() {
            tokio::time::advance(Duration::from_secs(1)).await;
            waited += 1;
        }
        periods.push(waited);
    }
    assert!(periods.iter().all(|p| (60..=91).contains(p)), "{periods:?}");
    let distinct: std::collections::BTreeSet<_> = periods.iter().collect();
    assert!(distinct.len() > 5, "spread: {periods:?}");
    let bad = BreakerConfig {
        open_jitter: 1.5,
        ..BreakerConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stress_keeps_counters_consistent() {
    // Real time with a 1 ms opening, so the breaker cycles through every state many times.
    let b = CircuitBreaker::new(
        "s",
        BreakerConfig {
            policy: FailurePolicy::Consecutive { threshold: 3 },
            open_duration: Duration::from_millis(1),
            max_open_duration: Duration::from_millis(1),
            ..Default::default()
        },
    );
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500u32 {
                let _ = b
                    .call_with(async { (t + i) % 7 == 0 }, |failed| {
                        if *failed {
                            Outcome::Failure { retry_after: None }
                        } else if i % 11 == 0 {
                            Outcome::Ignored
                        } else {
                            Outcome::Success
                        }
                    })
                    .await;
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = b.stats();
    assert_eq!(s.rejected + s.failures + s.successes + s.ignored, 16 * 500);
    assert!(s.successes > 0);
}

#[rstest]
#[case(BreakerConfig { policy: FailurePolicy::Consecutive { threshold: 0 }, ..Default::default() }, "policy.threshold")]
#[case(BreakerConfig { policy: FailurePolicy::Rate { failure_rate: 0.0, minimum_calls: 1, window: 1 }, ..Default::default() }, "policy.failure_rate")]
#[case(BreakerConfig { policy: FailurePolicy::Rate { failure_rate: 1.5, minimum_calls: 1, window: 1 }, ..Default::default() }, "policy.failure_rate")]
#[case(BreakerConfig { policy: FailurePolicy::Rate { failure_rate: 0.5, minimum_calls: 1, window: 0 }, ..Default::default() }, "policy.window")]
#[case(BreakerConfig { policy: FailurePolicy::Rate { failure_rate: 0.5, minimum_calls: 31, window: 30 }, ..Default::default() }, "policy.minimum_calls")]
#[case(BreakerConfig { open_duration: Duration::ZERO, ..Default::default() }, "open_duration")]
#[case(BreakerConfig { max_open_duration: Duration::from_secs(1), ..Default::default() }, "max_open_duration")]
#[case(BreakerConfig { half_open_max_probes: 0, ..Default::default() }, "half_open_max_probes")]
#[case(BreakerConfig { success_threshold: 0, ..Default::default() }, "success_threshold")]
fn invalid_configs(#[case] config: BreakerConfig, #[case] field: &str) {
    let err = CircuitBreaker::try_new("x", config).unwrap_err();
    assert!(err.to_string().contains(field), "{err}");
}

#[test]
fn state_names() {
    assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
    assert_eq!(BreakerState::from_u8(1), BreakerState::Open);
    assert_eq!(BreakerState::from_u8(0), BreakerState::Closed);
    assert_eq!(BreakerState::from_u8(2), BreakerState::HalfOpen);
}

#[test]
fn new_replaces_a_config_that_could_never_close_again() {
    let stuck = BreakerConfig {
        half_open_max_probes: 0,
        ..Default::default()
    };
    let b = CircuitBreaker::new("h", stuck.clone());
    assert_eq!(b.config(), &BreakerConfig::default());
    assert!(CircuitBreaker::try_new("h", stuck).is_err());
}

#[tokio::test(start_paused = true)]
async fn state_reads_half_open_once_the_open_period_is_over() {
    let b = CircuitBreaker::new(
        "t",
        BreakerConfig {
            policy: FailurePolicy::Consecutive { threshold: 1 },
            open_duration: Duration::from_secs(10),
            open_jitter: 0.0,
            ..BreakerConfig::default()
        },
    );
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen, "without a call");
    assert!(b.try_acquire().unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_until_reset_and_disabled_admits_without_opening() {
    let b = breaker(2);
    b.force_open();
    assert_eq!(b.state(), BreakerState::ForcedOpen);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let err = b.try_acquire().unwrap_err();
    assert_eq!(
        err.state,
        BreakerState::ForcedOpen,
        "no open period ends it"
    );
    b.reset();
    assert_eq!(b.state(), BreakerState::Closed);
    b.try_acquire().unwrap().success();

    b.disable();
    fail(&b, 10);
    assert_eq!(b.state(), BreakerState::Disabled, "failures never open it");
    assert_eq!(b.stats().failures, 10, "but are counted");
    b.reset();
    fail(&b, 2);
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "back to the rules after reset"
    );
}

#[tokio::test(start_paused = true)]
async fn reset_forgets_the_open_periods_growth_and_old_permits_do_not_move_it() {
    let b = CircuitBreaker::new(
        "t",
        BreakerConfig {
            policy: FailurePolicy::Consecutive { threshold: 1 },
            open_duration: Duration::from_secs(10),
            open_backoff: 2.0,
            open_jitter: 0.0,
            max_open_duration: Duration::from_secs(600),
            ..BreakerConfig::default()
        },
    );
    let old = b.try_acquire().unwrap();
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    b.try_acquire().unwrap().failure(); // a failed probe: the next period is 20 s
    b.reset();
    old.failure();
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "a permit from before the reset"
    );
    fail(&b, 1);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen, "10 s again, not 20");
}

#[tokio::test(start_paused = true)]
async fn listeners_hear_every_event_outside_the_lock() {
    let b = breaker(2);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, again) = (seen.clone(), b.clone());
    b.on_event(move |name, e| {
        assert_eq!(name, "test");
        // Calling back into the breaker from a listener must not deadlock.
        let _ = again.state();
        log.lock().unwrap().push(*e);
    });
    b.on_event(|_, _| panic!("a listener's bug"));
    b.try_acquire().unwrap().success();
    fail(&b, 2);
    let _ = b.try_acquire().unwrap_err();
    drop(b.clone());
    b.reset();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            BreakerEvent::Success,
            BreakerEvent::Failure,
            BreakerEvent::Failure,
            BreakerEvent::StateTransition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            },
            BreakerEvent::Rejected {
                state: BreakerState::Open
            },
            BreakerEvent::StateTransition {
                from: BreakerState::Open,
                to: BreakerState::Closed
            },
        ]
    );
}

#[test]
fn sync_calls_are_admitted_classified_and_rejected() {
    let b = breaker(2);
    let ok: Result<u32, CallError<&str>> = b.call_sync(|| Ok(1), |_| true);
    assert_eq!(ok.unwrap(), 1);
    for _ in 0..2 {
        let e = b.call_sync(|| Err::<u32, _>("down"), |_| true);
        assert!(matches!(e, Err(CallError::Inner("down"))));
    }
    let mut ran = false;
    let r = b.call_sync_with(
        || {
            ran = true;
        },
        |_| Outcome::Success,
    );
    assert!(r.is_err() && !ran, "open: not run");
    assert_eq!(b.stats().successes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_registry_takes_any_hashable_key_a_config_per_key_and_lists_its_breakers() {
    let r: CircuitBreakerRegistry<(String, u16)> =
        CircuitBreakerRegistry::new(BreakerConfig::default());
    let strict = BreakerConfig {
        policy: FailurePolicy::Consecutive { threshold: 1 },
        ..BreakerConfig::default()
    };
    let a = r.lease_with(("a.example".into(), 443), &strict);
    let b = r.lease(("b.example".into(), 8443));
    assert_eq!(a.breaker().name(), r#"("a.example", 443)"#);
    assert_eq!(a.breaker().config(), &strict);
    assert_eq!(b.breaker().config(), &BreakerConfig::default());
    // An existing breaker keeps its own config.
    let again = r.get_or_create_with(("a.example".into(), 443), &BreakerConfig::default());
    assert_eq!(again.config(), &strict);
    a.breaker().try_acquire().unwrap().failure();
    let mut listed: Vec<_> = r
        .breakers()
        .into_iter()
        .map(|(k, b)| (k.1, b.state()))
        .collect();
    listed.sort_by_key(|(port, _)| *port);
    assert_eq!(
        listed,
        vec![(443, BreakerState::Open), (8443, BreakerState::Closed)]
    );
    let s: CircuitBreakerRegistry<String> = CircuitBreakerRegistry::new(BreakerConfig::default());
    assert_eq!(s.get_or_create("h.example".into()).name(), "h.example");
}

mod state_machine {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Record(usize, u8),
        Drop(usize),
        Advance(u64),
        ForceOpen,
        Disable,
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            4 => (0usize..8, 0u8..3).prop_map(|(i, o)| Op::Record(i, o)),
            1 => (0usize..8).prop_map(Op::Drop),
            2 => (0u64..90).prop_map(Op::Advance),
            1 => prop_oneof![Just(Op::ForceOpen), Just(Op::Disable), Just(Op::Reset)],
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Never more concurrent probes than allowed in one HALF_OPEN period, and every
        /// admitted call recorded exactly once, recorded or dropped, whatever the order.
        #[test]
        fn probes_are_bounded_and_every_admitted_call_is_recorded_once(
            ops in proptest::collection::vec(op(), 1..120),
            max_probes in 1u32..4,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                let b = CircuitBreaker::new(
                    "p",
                    BreakerConfig {
                        policy: FailurePolicy::Consecutive { threshold: 2 },
                        open_duration: Duration::from_secs(30),
                        half_open_max_probes: max_probes,
                        success_threshold: 2,
                        ..BreakerConfig::default()
                    },
                );
                // Periods of HALF_OPEN, counted by the listener.
                let epoch = Arc::new(AtomicU64::new(0));
                let e = epoch.clone();
                b.on_event(move |_, ev| {
                    if matches!(ev, BreakerEvent::StateTransition { to: BreakerState::HalfOpen, .. }) {
                        e.fetch_add(1, Ordering::SeqCst);
                    }
                });
                let mut held: Vec<(Permit, u64)> = Vec::new();
                let mut admitted = 0u64;
                for op in ops {
                    match op {
                        Op::Acquire => {
                            if let Ok(p) = b.try_acquire() {
                                admitted += 1;
                                held.push((p, epoch.load(Ordering::SeqCst)));
                            }
                        }
                        Op::Record(i, o) if !held.is_empty() => {
                            let (p, _) = held.remove(i % held.len());
                            p.record(match o {
                                0 => Outcome::Success,
                                1 => Outcome::Failure { retry_after: None },
                                _ => Outcome::Ignored,
                            });
                        }
                        Op::Drop(i) if !held.is_empty() => drop(held.remove(i % held.len())),
                        Op::Advance(s) => tokio::time::advance(Duration::from_secs(s)).await,
                        Op::ForceOpen => b.force_open(),
                        Op::Disable => b.disable(),
                        Op::Reset => b.reset(),
                        _ => {}
                    }
                    let now = epoch.load(Ordering::SeqCst);
                    let probes = held.iter().filter(|(p, e)| p.is_probe() && *e == now).count();
                    assert!(probes <= max_probes as usize, "{probes} probes at once");
                }
                drop(held);
                let s = b.stats();
                assert_eq!(s.successes + s.failures + s.ignored, admitted);
            });
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_time_based_window_judges_the_last_seconds_only() {
    let b = CircuitBreaker::new(
        "t",
        BreakerConfig {
            policy: FailurePolicy::TimeRate {
                failure_rate: 0.5,
                minimum_calls: 4,
                window: Duration::from_secs(10),
            },
            ..BreakerConfig::default()
        },
    );
    // Three failures, then 11 s pass: they fall out of the window.
    fail(&b, 3);
    tokio::time::advance(Duration::from_secs(11)).await;
    b.try_acquire().unwrap().success();
    fail(&b, 1);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "2 calls in the window: too few"
    );
    b.try_acquire().unwrap().success();
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open, "2 of 4 in the last 10 s");
    assert!(
        BreakerConfig {
            policy: FailurePolicy::TimeRate {
                failure_rate: 0.5,
                minimum_calls: 1,
                window: Duration::from_millis(500),
            },
            ..BreakerConfig::default()
        }
        .validate()
        .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_slower_than_the_threshold_is_a_failure() {
    let b = CircuitBreaker::new(
        "t",
        BreakerConfig {
            policy: FailurePolicy::Consecutive { threshold: 2 },
            slow_call_threshold: Some(Duration::from_secs(2)),
            ..BreakerConfig::default()
        },
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    b.on_event(move |_, e| log.lock().unwrap().push(*e));
    for _ in 0..2 {
        let r = b
            .call_with(
                async { tokio::time::sleep(Duration::from_secs(3)).await },
                |_| Outcome::Success,
            )
            .await;
        assert!(r.is_ok(), "the call itself ran and returned");
    }
    assert_eq!(b.state(), BreakerState::Open);
    let s = b.stats();
    assert_eq!((s.slow_calls, s.failures, s.successes), (2, 2, 0));
    assert!(seen.lock().unwrap().contains(&BreakerEvent::SlowCall {
        took: Duration::from_secs(3)
    }));
    // A fast one is a success as usual.
    b.reset();
    b.try_acquire().unwrap().success();
    assert_eq!(b.stats().successes, 1);
}

#[tokio::test(start_paused = true)]
async fn call_classified_honours_retry_after_without_nesting() {
    let b = breaker(1);
    let r: Result<(), CallError<u64>> = b
        .call_classified(async { Err(90) }, |r| match r {
            Err(secs) => Outcome::Failure {
                retry_after: Some(Duration::from_secs(*secs)),
            },
            Ok(_) => Outcome::Success,
        })
        .await;
    assert!(matches!(r, Err(CallError::Inner(90))));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "90 s asked, not the 60 s default"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
}
