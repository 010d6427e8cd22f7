//! Memory of idle hosts (`cargo bench -p telemetry-client --bench memory`): the heap a host
//! client holds once its connection is open, its flag known and its first statement exported,
//! counted by a global allocator that tracks live bytes (exact, unlike the resident set, which
//! moves with the allocator's arenas). A separate bench binary, so the counting allocator
//! costs the timing benchmarks nothing. Prints the same `BENCH` lines as `telemetry`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use telemetry_client::{
    AuthType, ClientPreset, Connection, ConnectionOptions, DisableSwitch, FlagState, OperationType,
    ProviderOptions, StatementType, StaticToken, TelemetryClientProvider,
};
use telemetry_types::testing::{ScriptedFlagSource, ScriptedTransport};

mod common;
use common::{report, wait_until};

/// The system allocator, counting the bytes it has handed out and not had back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the count
// is bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HOSTS: usize = 100;

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A connection's open row and one statement's row.
fn one_statement(c: &Connection) {
    c.opened(Duration::from_millis(3));
    let s = c.statement(StatementType::Query, OperationType::ExecuteStatement);
    s.attach_id("01ef-statement");
    s.chunk(Duration::from_millis(3), 1 << 20, true);
    s.complete();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("(not invoked by cargo bench: skipping)");
        return;
    }
    let transport = ScriptedTransport::counting(200);
    let mut o = ProviderOptions::new("Bench", "1.0.0", ClientPreset::adbc());
    o.config.enabled = true;
    o.transport = Some(transport.clone());
    o.flag_source = Some(ScriptedFlagSource::fixed(true));
    o.switch = Some(DisableSwitch::Unset);
    let provider = TelemetryClientProvider::new(o);
    // One host first, so the provider's own runtime and registry are in the baseline.
    let warm = provider.connect(
        ConnectionOptions::new("warm.example")
            .with_auth(Arc::new(StaticToken::new("t")), AuthType::Pat),
    );
    wait_until(|| {
        provider
            .host_stats("warm.example")
            .is_some_and(|h| h.flag == FlagState::Enabled)
    });
    one_statement(&warm);
    let _ = provider.force_flush_blocking(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(50));
    let (heap_before, rss_before) = (LIVE.load(Ordering::Relaxed), resident_bytes());

    let connections: Vec<Connection> = (0..HOSTS)
        .map(|i| {
            provider.connect(
                ConnectionOptions::new(format!("host-{i}.example"))
                    .with_auth(Arc::new(StaticToken::new("t")), AuthType::Pat),
            )
        })
        .collect();
    for (i, c) in connections.iter().enumerate() {
        wait_until(|| {
            provider
                .host_stats(&format!("host-{i}.example"))
                .is_some_and(|h| h.flag == FlagState::Enabled)
        });
        one_statement(c);
    }
    let _ = provider.force_flush_blocking(Duration::from_secs(10));
    let warm_rows = 2;
    wait_until(|| provider.stats().rows_exported >= (2 * HOSTS + warm_rows) as u64);
    // Let the flushes' buffers and the tasks' wake-ups settle.
    std::thread::sleep(Duration::from_millis(200));
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    let per_host = heap as f64 / HOSTS as f64;
    report(
        "memory: heap per idle host (1 connection)",
        format!("{:.1} KiB", per_host / 1024.0),
        "<= 64 KiB",
        per_host <= 64.0 * 1024.0,
    );
    if let (Some(a), Some(b)) = (rss_before, resident_bytes()) {
        report(
            "memory: resident set per idle host",
            format!("{:.1} KiB", (b as f64 - a as f64) / HOSTS as f64 / 1024.0),
            "-",
            true,
        );
    }
    println!(
        "  ({} rows exported, {} export requests, {HOSTS} hosts)",
        provider.stats().rows_exported,
        transport.count()
    );
    drop(connections);
    drop(warm);
    let _ = provider.shutdown_blocking(Duration::from_secs(5));
}
