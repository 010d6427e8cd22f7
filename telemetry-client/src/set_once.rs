//! A value set at most once and read by any thread without a lock: the shared statement's
//! id, attached by whichever task gets the server's answer and read by every clone.
//!
//! `std::sync::OnceLock` would do, but its first `set` runs the `Once` machinery (two
//! read-modify-writes and a look for waiters, about 70 instructions, most of what attaching
//! an id cost a shared statement; callgrind: 1,104 instructions a statement with it, 1,007
//! with this cell). Here a `set` is one compare-and-swap and a release store. Nothing ever waits: a cell being written reads as empty, and a second
//! writer, racing or late, is refused, which is what "the first id attached stays" asks.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const SET: u8 = 2;

/// A value written at most once, by the first [`set`](SetOnce::set) (see the module docs).
pub(crate) struct SetOnce<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written by one thread only (the one whose compare-and-swap took the
// cell from EMPTY to WRITING), before its release store of SET, and is read only after an
// acquire load sees SET; it is never written again. Readers on many threads share `&T`
// (so `T: Sync`), and the value moves in from, and is dropped on, any thread (`T: Send`):
// the bounds of `OnceLock`'s own `Sync`.
unsafe impl<T: Send + Sync> Sync for SetOnce<T> {}

impl<T> SetOnce<T> {
    /// An empty cell, or one holding `value`.
    pub(crate) fn new(value: Option<T>) -> Self {
        let (state, value) = match value {
            Some(v) => (SET, MaybeUninit::new(v)),
            None => (EMPTY, MaybeUninit::uninit()),
        };
        Self {
            state: AtomicU8::new(state),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, once set (a cell being written reads as empty).
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        if self.state.load(Ordering::Acquire) == SET {
            // SAFETY: SET is stored (release) only after the value was written, this load
            // (acquire) saw it, and the value is never written again while `self` lives.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }

    /// Sets the value if the cell is empty; else hands it back (another is set, or being
    /// set by another thread).
    #[inline]
    pub(crate) fn set(&self, value: T) -> Result<(), T> {
        if self
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(value);
        }
        // SAFETY: the compare-and-swap made this thread the cell's only writer, ever, and no
        // reader looks at the value before the SET stored below.
        unsafe { (*self.value.get()).write(value) };
        self.state.store(SET, Ordering::Release);
        Ok(())
    }
}

impl<T> Drop for SetOnce<T> {
    fn drop(&mut self) {
        if *self.state.get_mut() == SET {
            // SAFETY: SET means the value was written (WRITING never outlives `set`, which
            // cannot panic between its two steps), and `&mut self` means no one reads it.
            unsafe { self.value.get_mut().assume_init_drop() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// Counts its drops.
    struct Counted(u32, Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_first_value_set_stays_and_later_ones_are_handed_back() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = SetOnce::new(None);
        assert!(cell.get().is_none());
        assert!(cell.set(Counted(1, drops.clone())).is_ok());
        assert_eq!(cell.get().map(|c| c.0), Some(1));
        let refused = cell.set(Counted(2, drops.clone()));
        assert_eq!(refused.as_ref().err().map(|c| c.0), Some(2));
        drop(refused);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            1,
            "the refused value, dropped by its caller"
        );
        assert_eq!(cell.get().map(|c| c.0), Some(1));
        drop(cell);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            2,
            "the set value, dropped with the cell"
        );
    }

    #[test]
    fn a_cell_dropped_empty_or_made_full_drops_exactly_what_it_holds() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop(SetOnce::<Counted>::new(None));
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        let full = SetOnce::new(Some(Counted(7, drops.clone())));
        assert_eq!(full.get().map(|c| c.0), Some(7));
        assert!(full.set(Counted(8, drops.clone())).is_err());
        assert_eq!(drops.load(Ordering::Relaxed), 1, "the refused one");
        drop(full);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn racing_writers_set_one_value_that_every_reader_sees() {
        for _ in 0..200 {
            let cell = Arc::new(SetOnce::new(None));
            let start = Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = (0..4u32)
                .map(|i| {
                    let (cell, start) = (cell.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let won = cell.set(format!("id-{i}")).is_ok();
                        let seen = cell.get().cloned();
                        assert!(
                            !won || seen == Some(format!("id-{i}")),
                            "a winner reads its own"
                        );
                        (won, seen)
                    })
                })
                .collect();
            let results: Vec<(bool, Option<String>)> =
                threads.into_iter().filter_map(|t| t.join().ok()).collect();
            assert_eq!(results.len(), 4);
            let winners = results.iter().filter(|(won, _)| *won).count();
            assert_eq!(winners, 1, "{results:?}");
            let set = cell.get().cloned();
            assert!(set.is_some());
            // A loser may have looked while the winner was writing (it then saw nothing);
            // whatever a thread saw is the one value set.
            for (_, seen) in &results {
                assert!(seen.is_none() || *seen == set, "{results:?}");
            }
        }
    }
}
