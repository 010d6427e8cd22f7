//! What both bench binaries share: the report line (read back by `cargo xtask bench`) and a
//! bounded wait on the background task.

use std::time::{Duration, Instant};

/// Prints one result for people, and the same as a `BENCH name|value|target|met` line that
/// `cargo xtask bench` turns into its table.
pub(crate) fn report(name: &str, value: String, target: &str, met: bool) {
    println!(
        "{name:<48} {value:>14}   target {target:<14} {}",
        if met { "met" } else { "NOT MET" }
    );
    println!(
        "BENCH {name}|{value}|{target}|{}",
        if met { "yes" } else { "no" }
    );
}

/// Waits until `done`, at most 30 s (a bench that cannot finish still prints its results).
pub(crate) fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}
