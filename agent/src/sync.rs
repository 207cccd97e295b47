//! The one poison-tolerant lock. A panic while a lock was held leaves data
//! that is still valid here (counters, caches, kernel handles), so the agent
//! keeps serving it rather than cascading the panic.
use std::sync::{Mutex, MutexGuard, PoisonError};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
