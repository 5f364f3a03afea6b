//! Where the server reads the time.
//!
//! Caps are per UTC day, keys expire, reservations whose outcome stays unknown are reconciled
//! after a horizon: all of it hangs on "now". The server reads it from a [`Clock`] so that tests
//! can cross a UTC midnight or expire a key without waiting for one.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock: what a server runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until it is moved (for tests). Clones share one time.
///
/// ```
/// use time::macros::datetime;
/// use vault_key_server::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new(datetime!(2026-12-01 23:59:59 UTC));
/// clock.advance(std::time::Duration::from_secs(2));
/// assert_eq!(clock.now(), datetime!(2026-12-02 00:00:01 UTC));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: OffsetDateTime) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(at)))
    }

    /// Shows `at` from now on.
    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
