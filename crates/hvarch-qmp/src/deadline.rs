//! Timeouts as deadlines, where a timeout too large to add to the clock means "no deadline".
//!
//! `Instant::now() + Duration::MAX` panics; every timeout this crate accepts goes through
//! [`deadline`] instead, so any `Duration` (zero, one nanosecond, `u64::MAX` seconds,
//! `Duration::MAX`) is a valid timeout.

use std::time::{Duration, Instant};

/// The instant `timeout` from now, or `None` (wait without a deadline) when that instant is not
/// representable.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The time left until `deadline` (zero once it has passed), or `None` for no deadline.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_no_deadline() {
        assert_eq!(deadline(Duration::MAX), None);
        assert_eq!(deadline(Duration::from_secs(u64::MAX)), None);
        assert_eq!(remaining(None), None);
        assert_eq!(remaining(deadline(Duration::ZERO)), Some(Duration::ZERO));
        assert!(remaining(deadline(Duration::from_secs(3600))) > Some(Duration::from_secs(3500)));
    }
}
