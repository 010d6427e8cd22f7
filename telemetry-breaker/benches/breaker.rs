//! Admission and record (`try_acquire` + `success`) of a CLOSED breaker, alone and with 4
//! threads sharing it, side by side with a bare atomic increment in the same run
//! (`cargo bench -p telemetry-breaker`; `cargo xtask bench` collects the `BENCH` lines).
//! A std-only harness, as the workspace's other benches: the median of many samples.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use telemetry_breaker::{BreakerConfig, CircuitBreaker};

const THREADS: usize = 4;

fn samples() -> usize {
    if std::env::var_os("TELEMETRY_BENCH_QUICK").is_some() {
        11
    } else {
        41
    }
}

/// Median nanoseconds per operation of `samples()` runs of `run(n)` (which does `n`
/// operations on each of its threads and returns the elapsed wall time).
fn median_ns(n: u64, threads: usize, mut run: impl FnMut(u64) -> Duration) -> f64 {
    let _ = run(n);
    let mut v: Vec<f64> = (0..samples())
        .map(|_| run(n).as_nanos() as f64 / (n as f64 * threads as f64))
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `op` `n` times on each of `threads` threads started together.
fn on_threads(threads: usize, n: u64, op: impl Fn() + Send + Sync + 'static) -> Duration {
    let op = Arc::new(op);
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..n {
                    op();
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for h in handles {
        let _ = h.join();
    }
    started.elapsed()
}

fn report(name: &str, ns: f64) {
    let value = format!("{ns:.1} ns");
    println!("{name:<48} {value:>14}");
    println!("BENCH {name}|{value}|-|yes");
}

fn main() {
    let n = 200_000;
    let counter = AtomicU64::new(0);
    let atomic = median_ns(n, 1, |n| {
        let started = Instant::now();
        for _ in 0..n {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        started.elapsed()
    });
    let breaker = CircuitBreaker::new("bench", BreakerConfig::default());
    let alone = median_ns(n, 1, |n| {
        let started = Instant::now();
        for _ in 0..n {
            if let Ok(p) = breaker.try_acquire() {
                p.success();
            }
        }
        started.elapsed()
    });
    let shared = Arc::new(AtomicU64::new(0));
    let atomic_4 = median_ns(n / 4, THREADS, |n| {
        let shared = shared.clone();
        on_threads(THREADS, n, move || {
            black_box(shared.fetch_add(1, Ordering::Relaxed));
        })
    });
    let contended = median_ns(n / 4, THREADS, |n| {
        let b = breaker.clone();
        on_threads(THREADS, n, move || {
            if let Ok(p) = b.try_acquire() {
                p.success();
            }
        })
    });
    report("breaker: atomic increment, 1 thread (floor)", atomic);
    report("breaker: admit + record, 1 thread", alone);
    report(
        "breaker: atomic increment, 4 threads shared (floor)",
        atomic_4,
    );
    report("breaker: admit + record, 4 threads shared", contended);
    black_box(counter.load(Ordering::Relaxed));
}
