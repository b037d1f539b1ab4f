//! The emulator's wall clock, which tests move forward to expire tokens.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system's wall clock plus an offset that only grows.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_secs: AtomicI64,
}

impl Clock {
    /// Now, in Unix seconds, on the emulator's clock.
    pub(crate) fn now_unix(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now + self.offset_secs.load(Ordering::Relaxed)
    }

    /// Moves the clock forward by `by` (whole seconds).
    pub(crate) fn advance(&self, by: Duration) {
        self.offset_secs
            .fetch_add(by.as_secs() as i64, Ordering::Relaxed);
    }
}

/// RFC 3339 in UTC to the second, as TrueLayer writes timestamps: `2021-11-29T11:42:55Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&format)
        .unwrap_or_else(|_| unreachable!("a UTC date always formats"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(1_638_186_175), "2021-11-29T11:42:55Z");
    }

    #[test]
    fn the_clock_moves_forward_by_whole_seconds() {
        let clock = Clock::default();
        let before = clock.now_unix();
        clock.advance(Duration::from_millis(3_600_900));
        let after = clock.now_unix();
        assert!(
            (3600..=3601).contains(&(after - before)),
            "{before} {after}"
        );
    }
}
