//! Deadlines on the two clocks a token's usability is bounded by.
//!
//! - **Monotonic** (`tokio::time::Instant`): immune to wall-clock jumps, and paused in tests.
//! - **Wall** (`SystemTime`): the server judges expiry by its wall clock, and a suspended
//!   machine's monotonic clock stops while the wall clock (and the server's) moves on.
//!
//! A deadline has passed when either clock says so. Both are read exactly on every check
//! (about 20 ns each through the vDSO); `docs/benchmarks.md` measures what that costs the
//! warm read.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A point in time, on both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    mono: Instant,
    wall: SystemTime,
}

impl Deadline {
    /// The deadline `after` past a moment read as `(mono, wall)` on the two clocks.
    pub(crate) fn after(mono: Instant, wall: SystemTime, after: Duration) -> Self {
        Deadline {
            mono: saturating_add(mono, after),
            wall: wall.checked_add(after).unwrap_or(wall + FAR),
        }
    }

    /// Whether the deadline had passed at `now`.
    pub(crate) fn passed_at(&self, now: Now) -> bool {
        now.mono >= self.mono || now.wall >= self.wall
    }

    /// The deadline on the monotonic clock, for timers.
    pub(crate) fn mono(&self) -> Instant {
        self.mono
    }

    /// The earlier of `self` and `other`, clock by clock.
    pub(crate) fn min(self, other: Deadline) -> Deadline {
        Deadline {
            mono: self.mono.min(other.mono),
            wall: self.wall.min(other.wall),
        }
    }

    /// Time left until the earlier of the two clocks reaches it.
    pub(crate) fn remaining(&self) -> Duration {
        let mono = self.mono.saturating_duration_since(Instant::now());
        let wall = self
            .wall
            .duration_since(wall_now())
            .unwrap_or(Duration::ZERO);
        mono.min(wall)
    }
}

/// Both clocks, read once for several checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) mono: Instant,
    wall: SystemTime,
}

impl Now {
    /// The moment read as `mono` and `wall` on the two clocks.
    pub(crate) fn at(mono: Instant, wall: SystemTime) -> Self {
        Now { mono, wall }
    }

    pub(crate) fn read() -> Self {
        Now {
            mono: Instant::now(),
            wall: wall_now(),
        }
    }

    /// The deadline `after` from this moment.
    pub(crate) fn plus(self, after: Duration) -> Deadline {
        Deadline::after(self.mono, self.wall, after)
    }
}

/// The wall clock. Tests inside this crate can move it to simulate a suspended machine.
pub(crate) fn wall_now() -> SystemTime {
    let now = SystemTime::now();
    #[cfg(test)]
    let now = now + test_hooks::wall_offset();
    now
}

/// `instant + duration`, or a time decades away instead of overflowing.
pub(crate) fn saturating_add(instant: Instant, duration: Duration) -> Instant {
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(FAR))
        .unwrap_or(instant)
}

/// "Never", in practice: 30 years.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[cfg(test)]
pub(crate) mod test_hooks {
    use std::cell::Cell;
    use std::time::Duration;

    thread_local! {
        static WALL_OFFSET: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    /// How far this thread's wall clock is moved ahead (a simulated suspend).
    pub(crate) fn wall_offset() -> Duration {
        WALL_OFFSET.with(Cell::get)
    }

    /// Moves this thread's wall clock ahead by `by`, as a suspend and resume would.
    pub(crate) fn suspend_for(by: Duration) {
        WALL_OFFSET.with(|o| o.set(o.get() + by));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_(after: Duration) -> Deadline {
        Now::read().plus(after)
    }

    fn passed(d: &Deadline) -> bool {
        d.passed_at(Now::read())
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_by_the_monotonic_clock() {
        let d = in_(Duration::from_secs(10));
        assert!(!passed(&d));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(passed(&d));
        assert_eq!(d.remaining(), Duration::ZERO);
    }

    #[test]
    fn a_suspend_moves_the_wall_clock_past_a_deadline_the_monotonic_clock_has_not_reached() {
        let d = in_(Duration::from_secs(60));
        assert!(!passed(&d));
        test_hooks::suspend_for(Duration::from_secs(61));
        assert!(passed(&d), "the wall clock bounds usability too");
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert!(saturating_add(now, Duration::MAX) > now);
        assert!(!passed(&in_(Duration::MAX)));
    }
}
