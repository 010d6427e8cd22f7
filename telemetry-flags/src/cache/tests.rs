use rstest::rstest;
use telemetry_types::BoxFuture;
use telemetry_types::auth::StaticToken;
use telemetry_types::flag::{FlagAnswer, FlagError};
use telemetry_types::testing::{Answer, ScriptedFlagSource};

use super::*;

type Scripted = ScriptedFlagSource;

fn on(ttl: Option<u64>) -> Answer {
    Ok(FlagAnswer {
        enabled: true,
        ttl: ttl.map(Duration::from_secs),
    })
}

fn config() -> FlagCacheConfig {
    FlagCacheConfig {
        switch: DisableSwitch::Unset,
        ..FlagCacheConfig::default()
    }
}

fn cache(source: Arc<Scripted>) -> FeatureFlagCache {
    FeatureFlagCache::new(source, config(), Handle::current())
}

fn host(name: &str) -> Host {
    Host::parse(name, false).unwrap()
}

/// Lets spawned tasks run on the paused clock without moving time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_per_host() {
    let src = Scripted::new(|_| on(None));
    let c = cache(src.clone());
    let a = c.acquire(&host("a.example"), None);
    let b = c.acquire(&host("b.example"), None);
    assert_eq!(a.resolve(Duration::from_secs(1)).await, FlagState::Enabled);
    assert_eq!(b.resolve(Duration::from_secs(1)).await, FlagState::Enabled);
    assert_eq!(src.count(), 2);
    assert_eq!(c.host_count(), 2);
    assert_eq!(c.state(&host("a.example")), FlagState::Enabled);
    assert_eq!(c.state(&host("z.example")), FlagState::Unknown);
    assert_eq!(a.host(), &host("a.example"));
    assert!(format!("{a:?}").contains("Enabled"));
    assert!(format!("{c:?}").contains("fetches"));
}

#[tokio::test(start_paused = true)]
async fn shared_context_for_two_acquirers_and_removal_at_zero() {
    let src = Scripted::new(|_| on(None));
    let c = cache(src.clone());
    let h = host("a.example");
    let first = c.acquire(&h, None);
    let second = c.acquire(&h, Some(Arc::new(StaticToken::new("t"))));
    assert_eq!(c.ref_count(&h), 2);
    let view = second.view();
    assert_eq!(view.state(), FlagState::Unknown);
    first.resolve(Duration::from_secs(1)).await;
    assert_eq!(
        view.state(),
        FlagState::Enabled,
        "views read the one shared answer"
    );
    assert!(!view.is_off());
    assert_eq!(src.count(), 1, "one look-up for both");
    assert_eq!(
        src.count_with_auth(),
        1,
        "latest acquirer's credentials used"
    );
    drop(first);
    assert_eq!(c.ref_count(&h), 1);
    assert_eq!(c.state(&h), FlagState::Enabled);
    drop(second);
    assert_eq!(c.ref_count(&h), 0);
    assert_eq!(c.host_count(), 0);
    assert_eq!(
        c.state(&h),
        FlagState::Unknown,
        "cached value removed with the context"
    );
    // The background refresh stopped with the context.
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(src.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn expires_after_fifteen_minutes() {
    let src = Scripted::new(|n| {
        if n == 0 {
            on(None)
        } else {
            Ok(FlagAnswer {
                enabled: false,
                ttl: None,
            })
        }
    });
    let c = cache(src.clone());
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Enabled);
    tokio::time::advance(Duration::from_secs(15 * 60 - 1)).await;
    settle().await;
    assert_eq!(src.count(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(src.count(), 2);
    assert_eq!(h.state(), FlagState::Disabled);
}

#[rstest]
#[case(Some(300), 300)]
#[case(Some(5), 60)]
#[case(Some(100_000), 3600)]
#[case(None, 900)]
#[tokio::test(start_paused = true)]
async fn server_ttl_honoured_and_clamped(#[case] ttl: Option<u64>, #[case] expected_secs: u64) {
    let src = Scripted::new(move |_| on(ttl));
    let c = cache(src.clone());
    let h = c.acquire(&host("a.example"), None);
    h.resolve(Duration::from_secs(1)).await;
    tokio::time::advance(Duration::from_secs(expected_secs - 1)).await;
    settle().await;
    assert_eq!(src.count(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(src.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn single_request_for_100_concurrent_resolves() {
    let src = Scripted::slow(Duration::from_millis(500), |_| on(None));
    let c = cache(src.clone());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let h = c.acquire(&host("a.example"), None);
            let state = h.resolve(Duration::from_secs(5)).await;
            (h, state)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        let (h, state) = t.await.unwrap();
        assert_eq!(state, FlagState::Enabled);
        held.push(h);
    }
    assert_eq!(src.count(), 1);
    assert_eq!(c.ref_count(&host("a.example")), 100);
}

#[rstest]
#[case(Err(FlagError::Status(404)))]
#[case(Err(FlagError::Status(500)))]
#[case(Err(FlagError::Malformed("bad".into())))]
#[case(
    Err(FlagError::Transport(telemetry_types::transport::TransportError::new(
        telemetry_types::classify::TransportErrorKind::Timeout,
        "t"
    )))
)]
#[case(Ok(FlagAnswer { enabled: false, ttl: None }))]
#[tokio::test(start_paused = true)]
async fn failures_mean_disabled(#[case] answer: Answer) {
    let src = Scripted::new(move |_| answer.clone());
    let c = cache(src.clone());
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Disabled);
}

#[tokio::test(start_paused = true)]
async fn failure_backoff_limits_requests_over_an_hour() {
    let src = Scripted::new(|_| Err(FlagError::Status(503)));
    let c = cache(src.clone());
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Disabled);
    for _ in 0..3600 {
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
    }
    // At 0, 1, 3, 7, 15, 30, 45 and 60 min (backoff 1, 2, 4, 8, then capped at 15 min).
    assert_eq!(src.count(), 8);
    assert_eq!(c.stats().failures, 8);
}

#[tokio::test(start_paused = true)]
async fn failure_is_remembered_across_reconnects() {
    let src = Scripted::new(|_| Err(FlagError::Status(500)));
    let c = cache(src.clone());
    for _ in 0..20 {
        let h = c.acquire(&host("a.example"), None);
        assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Disabled);
        drop(h);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(
        src.count(),
        1,
        "a new connection does not retry before the backoff"
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let h = c.acquire(&host("a.example"), None);
    settle().await;
    assert_eq!(src.count(), 2);
    drop(h);
}

#[tokio::test(start_paused = true)]
async fn success_after_failure_recovers() {
    let src = Scripted::new(|n| {
        if n == 0 {
            Err(FlagError::Status(500))
        } else {
            on(None)
        }
    });
    let c = cache(src.clone());
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Disabled);
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(h.state(), FlagState::Enabled);
}

#[tokio::test(start_paused = true)]
async fn env_switch_forbids_any_request() {
    let src = Scripted::new(|_| on(None));
    let c = FeatureFlagCache::new(
        src.clone(),
        FlagCacheConfig {
            switch: DisableSwitch::Disabled,
            ..config()
        },
        Handle::current(),
    );
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.state(), FlagState::Disabled);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Disabled);
    tokio::time::advance(Duration::from_secs(7200)).await;
    settle().await;
    assert_eq!(src.count(), 0);
    // An unrecognised value is ignored.
    let c = FeatureFlagCache::new(
        src.clone(),
        FlagCacheConfig {
            switch: DisableSwitch::Ignored("maybe".into()),
            ..config()
        },
        Handle::current(),
    );
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Enabled);
}

#[tokio::test(start_paused = true)]
async fn endpoint_that_never_answers_adds_no_wait() {
    let src = Scripted::slow(Duration::from_secs(1_000_000), |_| on(None));
    let c = FeatureFlagCache::new(
        src.clone(),
        FlagCacheConfig {
            fetch_guard: Duration::from_secs(15),
            ..config()
        },
        Handle::current(),
    );
    let started = Instant::now();
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.state(), FlagState::Unknown);
    assert_eq!(c.state(&host("a.example")), FlagState::Unknown);
    let h2 = c.acquire(&host("a.example"), None);
    assert_eq!(
        Instant::now(),
        started,
        "acquire and state reads take no (virtual) time"
    );
    // resolve is bounded by its timeout.
    assert_eq!(h2.resolve(Duration::from_secs(2)).await, FlagState::Unknown);
    assert_eq!(Instant::now() - started, Duration::from_secs(2));
    // The guard turns the hang into a failure: disabled.
    tokio::time::advance(Duration::from_secs(14)).await;
    settle().await;
    assert_eq!(h.state(), FlagState::Disabled);
}

#[tokio::test(start_paused = true)]
async fn flag_gate_impl() {
    let src = Scripted::new(|_| on(None));
    let c = cache(src);
    let h = c.acquire(&host("a.example"), None);
    let gate: &dyn FlagGate = &h;
    assert_eq!(gate.wait(Duration::from_secs(1)).await, FlagState::Enabled);
    assert_eq!(gate.state(), FlagState::Enabled);
}

#[test]
fn effective_ttl_clamps() {
    let c = config();
    assert_eq!(c.effective_ttl(None), Duration::from_secs(900));
    assert_eq!(
        c.effective_ttl(Some(Duration::ZERO)),
        Duration::from_secs(60)
    );
    assert_eq!(
        c.effective_ttl(Some(Duration::from_secs(7200))),
        Duration::from_secs(3600)
    );
}

#[rstest]
#[case(|c: &mut FlagCacheConfig| c.default_ttl = Duration::ZERO, "flags.default_ttl")]
#[case(|c: &mut FlagCacheConfig| c.default_ttl = Duration::MAX, "flags.default_ttl")]
#[case(|c: &mut FlagCacheConfig| c.credentials_wait = Duration::from_secs(3600), "flags.credentials_wait")]
#[case(|c: &mut FlagCacheConfig| c.max_ttl = Duration::MAX, "flags.max_ttl")]
#[case(|c: &mut FlagCacheConfig| c.min_ttl = Duration::from_secs(7200), "flags.min_ttl")]
#[case(|c: &mut FlagCacheConfig| c.max_failure_backoff = Duration::MAX, "flags.max_failure_backoff")]
#[case(|c: &mut FlagCacheConfig| c.failure_backoff = Duration::ZERO, "flags.failure_backoff")]
#[case(|c: &mut FlagCacheConfig| c.fetch_guard = Duration::MAX, "flags.fetch_guard")]
fn config_out_of_range_is_rejected(#[case] set: fn(&mut FlagCacheConfig), #[case] field: &str) {
    config().validate().unwrap();
    let mut c = config();
    set(&mut c);
    let err = c.validate().unwrap_err();
    assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_answer_outlives_the_connections_until_its_ttl() {
    let src = Scripted::new(|_| on(Some(600)));
    let c = cache(src.clone());
    let h = host("serverless.example");
    for i in 0..50 {
        let handle = c.acquire(&h, None);
        if i > 0 {
            assert_eq!(
                handle.state(),
                FlagState::Enabled,
                "connection {i}: known at once"
            );
        }
        assert_eq!(
            handle.resolve(Duration::from_secs(1)).await,
            FlagState::Enabled
        );
        drop(handle);
        assert_eq!(c.host_count(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(src.count(), 1, "one look-up for 50 sequential connections");
    // Past the TTL the next connection looks the flag up again.
    tokio::time::advance(Duration::from_secs(600)).await;
    let handle = c.acquire(&h, None);
    assert_eq!(handle.state(), FlagState::Unknown);
    assert_eq!(
        handle.resolve(Duration::from_secs(1)).await,
        FlagState::Enabled
    );
    assert_eq!(src.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn remembered_answers_are_bounded() {
    let src = Scripted::new(|_| on(None));
    let c = cache(src.clone());
    for i in 0..(MAX_MEMOS + 100) {
        let handle = c.acquire(&host(&format!("h{i}.example")), None);
        handle.resolve(Duration::from_secs(1)).await;
    }
    assert_eq!(c.inner.memos.lock().unwrap().len(), MAX_MEMOS);
}

#[tokio::test(start_paused = true)]
async fn a_failed_look_up_says_why_until_an_answer_comes() {
    use telemetry_types::classify::TransportErrorKind;
    use telemetry_types::transport::TransportError;
    let src = Scripted::new(|n| match n {
        0 => Err(FlagError::Transport(TransportError::new(
            TransportErrorKind::DnsPermanent,
            "no such host",
        ))),
        1 => Err(FlagError::Status(503)),
        _ => on(None),
    });
    let c = cache(src.clone());
    let h = c.acquire(&host("a.example"), None);
    assert_eq!(h.resolve(Duration::from_secs(1)).await, FlagState::Disabled);
    assert_eq!(h.failure(), Some(FlagFailure::Dns));
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.failure(), Some(FlagFailure::Status(503)));
    assert_eq!(FlagFailure::Status(503).to_string(), "status 503");
    tokio::time::advance(Duration::from_secs(121)).await;
    tokio::task::yield_now().await;
    assert_eq!((h.state(), h.failure()), (FlagState::Enabled, None));
}

/// Credentials that never come.
struct HangingAuth;
impl AuthProvider for HangingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        Box::pin(std::future::pending())
    }
}

/// Credentials whose provider panics.
struct PanickingAuth;
impl AuthProvider for PanickingAuth {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        panic!("provider bug")
    }
}

fn quick_auth() -> FlagCacheConfig {
    FlagCacheConfig {
        auth_timeout: Duration::from_millis(50),
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_flag_source_fails_closed_and_its_task_lives_on() {
    let src = Scripted::new(|n| {
        if n == 0 {
            panic!("source bug")
        } else {
            on(None)
        }
    });
    let c = cache(src.clone());
    let h = host("a.example");
    let flag = c.acquire(&h, None);
    assert_eq!(
        flag.resolve(Duration::from_secs(1)).await,
        FlagState::Disabled,
        "failed closed at once, not after the wait bound"
    );
    assert_eq!(flag.failure(), Some(FlagFailure::Plugin));
    assert_eq!(c.stats().failures, 1);
    // The refresh task survived the panic: the next look-up, after the backoff, answers.
    tokio::time::advance(config().failure_backoff).await;
    settle().await;
    assert_eq!(flag.state(), FlagState::Enabled);
    assert_eq!(flag.failure(), None);
    assert_eq!(src.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_provider_bounds_the_look_up_and_later_credentials_retry_at_once() {
    let src = Scripted::new(|_| on(None));
    let c = FeatureFlagCache::new(src.clone(), quick_auth(), Handle::current());
    let h = host("a.example");
    let first = c.acquire(&h, Some(Arc::new(HangingAuth)));
    assert_eq!(
        first.resolve(Duration::from_secs(1)).await,
        FlagState::Disabled
    );
    assert_eq!(first.failure(), Some(FlagFailure::Auth));
    assert_eq!(
        src.count(),
        0,
        "the source was never asked without credentials"
    );
    // A later tenant's credentials are tried now, not after the 60 s backoff.
    let second = c.acquire(&h, Some(Arc::new(StaticToken::new("good"))));
    settle().await;
    assert_eq!(
        second.resolve(Duration::from_secs(1)).await,
        FlagState::Enabled
    );
    assert_eq!((src.count(), src.count_with_auth()), (1, 1));
    assert_eq!(first.failure(), None);
}

#[tokio::test(start_paused = true)]
async fn a_look_up_uses_the_first_credentials_that_answer() {
    let src = Scripted::new(|_| on(None));
    let c = FeatureFlagCache::new(src.clone(), quick_auth(), Handle::current());
    let h = host("a.example");
    let good = c.acquire(&h, Some(Arc::new(StaticToken::new("good"))));
    let _panics = c.acquire(&h, Some(Arc::new(PanickingAuth)));
    let _hangs = c.acquire(&h, Some(Arc::new(HangingAuth)));
    assert_eq!(
        good.resolve(Duration::from_secs(1)).await,
        FlagState::Enabled
    );
    assert_eq!(
        src.count(),
        1,
        "one look-up, with the credentials that answered"
    );
    assert_eq!(good.failure(), None);
}

/// A cache whose look-ups wait up to `wait` for credentials said to be coming.
fn waiting_cache(src: &Arc<Scripted>, wait: Duration) -> FeatureFlagCache {
    FeatureFlagCache::new(src.clone(), waiting(wait), Handle::current())
}

fn waiting(wait: Duration) -> FlagCacheConfig {
    FlagCacheConfig {
        credentials_wait: wait,
        ..quick_auth()
    }
}

#[tokio::test(start_paused = true)]
async fn a_look_up_waits_for_credentials_that_are_coming() {
    let src = Scripted::new(|_| on(None));
    let c = waiting_cache(&src, Duration::from_secs(60));
    let h = host("a.example");
    let (handle, pending) = c.acquire_expecting_credentials(&h, None);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.state(), FlagState::Unknown, "still waiting");
    assert_eq!(src.count(), 0, "not asked without the credentials");
    handle.add_credentials(Arc::new(StaticToken::new("late")), None);
    drop(pending);
    assert_eq!(
        handle.resolve(Duration::from_millis(10)).await,
        FlagState::Enabled
    );
    assert_eq!((src.count(), src.count_with_auth()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_credentials_is_bounded_and_their_arrival_retries_at_once() {
    let src = Scripted::new(|_| on(None));
    let c = waiting_cache(&src, Duration::from_secs(5));
    let h = host("a.example");
    let (handle, _pending) = c.acquire_expecting_credentials(&h, None);
    let started = Instant::now();
    assert_eq!(
        handle.resolve(Duration::from_secs(60)).await,
        FlagState::Disabled
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(handle.failure(), Some(FlagFailure::Auth));
    assert_eq!((src.count(), c.stats().failures), (0, 1));
    // They arrive well within the 60 s failure backoff: tried at once.
    let asked = Instant::now();
    handle.add_credentials(Arc::new(StaticToken::new("late")), None);
    settle().await;
    assert_eq!(
        handle.resolve(Duration::from_secs(1)).await,
        FlagState::Enabled
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "not after the backoff"
    );
    assert_eq!((src.count(), src.count_with_auth()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_gives_up_ends_the_wait() {
    let src = Scripted::new(|_| on(None));
    let c = waiting_cache(&src, Duration::from_secs(60));
    let h = host("a.example");
    let (handle, pending) = c.acquire_expecting_credentials(&h, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(pending);
    assert_eq!(
        handle.resolve(Duration::from_millis(10)).await,
        FlagState::Enabled,
        "nobody awaits credentials any more: asked without"
    );
    assert_eq!((src.count(), src.count_with_auth()), (1, 0));
}
