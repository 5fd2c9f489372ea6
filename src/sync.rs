//! One helper for the standard mutexes: a lock that a panic elsewhere cannot poison.
//! Every critical section guarded this way leaves its data consistent at each step,
//! so the data of a thread that panicked while holding it is still usable.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the guard over even if another thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
