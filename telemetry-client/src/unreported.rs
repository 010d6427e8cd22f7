//! Calls that reported nothing, counted with their reason, so that every call a driver makes
//! is accounted: `driver calls = events emitted + calls not reported`.
//!
//! The count sits on the disabled path, whose budget is the one atomic load of the flag: no
//! read-modify-write there. Each thread counts in its own cells (a thread-local read, then a
//! load and a store: one writer per cell), taken on its first count; reading sums the live
//! threads' cells and what threads that ended left behind, and an ended thread's cells go to
//! the next thread. The counts are therefore per process, across providers.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Why a call reported nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NotReported {
    /// Its connection reports nothing from the start: off by config or the environment
    /// switch, an invalid host or header, a shut-down provider, or `Connection::default()`
    /// (see [`Connection::disabled_reason`](crate::Connection::disabled_reason)).
    Disabled,
    /// Its host's feature flag is off: the server said no, or the look-up failed (the
    /// provider's stats say which).
    FlagOff,
    /// A call on a statement handle that reports nothing (begun while its connection was off,
    /// or refused): an error or chunk failure that would have been a row of its own. The
    /// statement itself was counted when it began.
    StatementOff,
    /// An error on a statement that had already ended.
    AfterEnd,
}

impl NotReported {
    /// Every reason, in order.
    pub const ALL: [NotReported; 4] = [
        NotReported::Disabled,
        NotReported::FlagOff,
        NotReported::StatementOff,
        NotReported::AfterEnd,
    ];

    /// Its name in reports (`flag_off`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            NotReported::Disabled => "disabled",
            NotReported::FlagOff => "flag_off",
            NotReported::StatementOff => "statement_off",
            NotReported::AfterEnd => "after_end",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for NotReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const REASONS: usize = NotReported::ALL.len();

type Cells = [AtomicU64; REASONS];

/// The cells of the threads alive that counted something.
static LIVE: Mutex<Vec<&'static Cells>> = Mutex::new(Vec::new());
/// Cells of threads that ended, zeroed, for the next thread: cells are bounded by the most
/// threads alive at once, whatever the number of threads a process starts over time.
static FREE: Mutex<Vec<&'static Cells>> = Mutex::new(Vec::new());
/// What threads that ended counted (and the rare count made while a thread ends).
static RETIRED: Cells = [const { AtomicU64::new(0) }; REASONS];

fn locked<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // Nothing panics while these locks are held; a poisoned list still holds the cells.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// This thread's cells, once it counted something. No destructor: readable to the end.
    static CELLS: Cell<Option<&'static Cells>> = const { Cell::new(None) };
    /// Retires this thread's cells as it ends.
    static RETIRE: Retire = const { Retire };
}

struct Retire;

impl Drop for Retire {
    fn drop(&mut self) {
        let Some(cells) = CELLS.take() else { return };
        {
            let mut live = locked(&LIVE);
            for (retired, cell) in RETIRED.iter().zip(cells.iter()) {
                retired.fetch_add(cell.swap(0, Ordering::Relaxed), Ordering::Relaxed);
            }
            live.retain(|c| !std::ptr::eq(*c, cells));
        }
        locked(&FREE).push(cells);
    }
}

/// Counts one call that reported nothing: a thread-local read, a load and a store.
#[inline]
pub(crate) fn count(reason: NotReported) {
    match CELLS.get() {
        // This thread is the cell's only writer: a load and a store are exact.
        Some(cells) => {
            let cell = &cells[reason.index()];
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
        None => register_and_count(reason),
    }
}

/// This thread's first count: takes cells (a free one, or new ones kept for the process's
/// life) and registers them.
#[cold]
#[inline(never)]
fn register_and_count(reason: NotReported) {
    if RETIRE.try_with(|_| ()).is_err() {
        // The thread is ending and its cells are retired: count where they went.
        RETIRED[reason.index()].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let cells = locked(&FREE)
        .pop()
        .unwrap_or_else(|| Box::leak(Box::new([const { AtomicU64::new(0) }; REASONS])));
    locked(&LIVE).push(cells);
    CELLS.set(Some(cells));
    cells[reason.index()].store(1, Ordering::Relaxed);
}

/// Calls that reported nothing so far in this process, by reason (reasons never seen are
/// absent). Every provider's connections and statements count here; take the difference of
/// two readings to count a stretch of work.
///
/// ```
/// use telemetry_client::{Connection, NotReported, OperationType, StatementType};
/// let before = telemetry_client::calls_not_reported();
/// let conn = Connection::default(); // telemetry not set up: reports nothing
/// conn.statement(StatementType::Query, OperationType::ExecuteStatement).complete();
/// let after = telemetry_client::calls_not_reported();
/// let disabled = |m: &std::collections::BTreeMap<NotReported, u64>| {
///     m.get(&NotReported::Disabled).copied().unwrap_or(0)
/// };
/// assert!(disabled(&after) >= disabled(&before) + 1);
/// ```
pub fn calls_not_reported() -> BTreeMap<NotReported, u64> {
    let live = locked(&LIVE);
    NotReported::ALL
        .iter()
        .map(|&r| {
            let i = r.index();
            let n = RETIRED[i].load(Ordering::Relaxed)
                + live
                    .iter()
                    .map(|c| c[i].load(Ordering::Relaxed))
                    .sum::<u64>();
            (r, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What this thread alone counted (tests run in parallel threads of one process).
#[cfg(test)]
pub(crate) fn this_thread() -> BTreeMap<NotReported, u64> {
    let Some(cells) = CELLS.get() else {
        return BTreeMap::new();
    };
    NotReported::ALL
        .iter()
        .map(|&r| (r, cells[r.index()].load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_threads_that_ended_are_kept() {
        let before = calls_not_reported();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        count(NotReported::AfterEnd);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let after = calls_not_reported();
        let n = |m: &BTreeMap<NotReported, u64>| m.get(&NotReported::AfterEnd).copied();
        // Other tests of this process may count too, never less.
        assert!(n(&after).unwrap_or(0) >= n(&before).unwrap_or(0) + 4000);
        count(NotReported::StatementOff);
        assert_eq!(this_thread().get(&NotReported::StatementOff), Some(&1));
    }
}
