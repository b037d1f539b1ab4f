//! Deadlines on the two clocks a token's usability is bounded by, and a cheap way to check them.
//!
//! - **Monotonic** (`tokio::time::Instant`): immune to wall-clock jumps, and paused in tests.
//! - **Wall** (`SystemTime`): the server judges expiry by its wall clock, and a suspended
//!   machine's monotonic clock stops while the wall clock (and the server's) moves on.
//!
//! A deadline has passed when either clock says so. Reading both exactly costs several times
//! the rest of the cache's hot path (`docs/benchmarks.md`), so the hot path reads the kernel's
//! coarse clocks instead (`CLOCK_MONOTONIC_COARSE` and `CLOCK_REALTIME_COARSE`, a few ns each
//! through the vDSO). A coarse clock is the exact clock as of the last timer tick: it lags by
//! at most one tick (its resolution, 4 ms here) and never runs ahead. So the fast check treats
//! a deadline as reached two resolutions early, and is never late; a "maybe passed" answer
//! goes to [`Deadline::passed_at`], which reads the exact clocks, so nothing is refused early
//! either. The exact monotonic reading is tokio's clock, so a paused test clock is obeyed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Whether tokio's clock has been seen paused in this process (tests). Then the hot path
/// reads tokio's clock exactly, like tokio itself does once any clock was paused: the coarse
/// clocks follow real time, not a test's virtual time. Never set in production, unless a
/// platform's monotonic clock is too coarse to tell two reads apart (then: exact and slower).
static VIRTUAL_TIME: AtomicBool = AtomicBool::new(false);

/// Notes whether tokio's clock is paused in the current runtime: two reads with nothing in
/// between are equal only on a paused clock (a real one has nanosecond resolution). Called
/// on slow paths; once seen, it stays set.
pub(crate) fn notice_virtual_time() {
    if !VIRTUAL_TIME.load(Ordering::Relaxed) && Instant::now() == Instant::now() {
        VIRTUAL_TIME.store(true, Ordering::Relaxed);
    }
}

/// Whether the fast, coarse check may be trusted (tokio's clock was never seen paused).
#[inline]
pub(crate) fn coarse_is_real_time() -> bool {
    !VIRTUAL_TIME.load(Ordering::Relaxed)
}

/// A point in time, on both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    mono: Instant,
    wall: SystemTime,
    /// The fast check's limits, already moved earlier by the coarse clocks' slack.
    fast_mono_ns: u64,
    fast_wall_ns: u64,
}

impl Deadline {
    /// The deadline `after` past a moment read as `(mono, wall)` on the two clocks.
    pub(crate) fn after(mono: Instant, wall: SystemTime, after: Duration) -> Self {
        let mono = saturating_add(mono, after);
        let wall = wall.checked_add(after).unwrap_or(wall + FAR);
        // Map the tokio deadline onto the kernel's monotonic timeline: they are the same clock
        // unless tokio's is paused (tests), where the exact check decides anyway.
        let left = mono.saturating_duration_since(Instant::now());
        let slack = fast::slack();
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Deadline {
            mono,
            wall,
            fast_mono_ns: (fast::mono_exact_ns().saturating_add(nanos(left))).saturating_sub(slack),
            fast_wall_ns: nanos(since_epoch).saturating_sub(slack),
        }
    }

    /// Whether the deadline has certainly not passed, by the coarse clocks (`now` from
    /// [`coarse_now`]). `false` means "maybe": ask [`Deadline::passed_at`].
    #[inline]
    pub(crate) fn surely_ahead(&self, now: CoarseNow) -> bool {
        now.mono_ns < self.fast_mono_ns && now.wall_ns < self.fast_wall_ns
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
            fast_mono_ns: self.fast_mono_ns.min(other.fast_mono_ns),
            fast_wall_ns: self.fast_wall_ns.min(other.fast_wall_ns),
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The coarse clocks, read once for several checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoarseNow {
    mono_ns: u64,
    wall_ns: u64,
}

/// Reads the coarse clocks (a few nanoseconds each).
#[inline]
pub(crate) fn coarse_now() -> CoarseNow {
    fast::coarse_now()
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod fast {
    use std::sync::OnceLock;

    use rustix::time::{ClockId, Timespec, clock_getres, clock_gettime};

    use super::CoarseNow;

    fn ns(t: Timespec) -> u64 {
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
    }

    #[inline]
    pub(super) fn coarse_now() -> CoarseNow {
        let now = CoarseNow {
            mono_ns: ns(clock_gettime(ClockId::MonotonicCoarse)),
            wall_ns: ns(clock_gettime(ClockId::RealtimeCoarse)),
        };
        #[cfg(test)]
        let now = CoarseNow {
            wall_ns: now
                .wall_ns
                .saturating_add(super::nanos(super::test_hooks::wall_offset())),
            ..now
        };
        now
    }

    /// The exact monotonic clock (`std::time::Instant` reads the same one on Linux).
    pub(super) fn mono_exact_ns() -> u64 {
        ns(clock_gettime(ClockId::Monotonic))
    }

    /// How far the coarse clocks may lag: two of their ticks.
    pub(super) fn slack() -> u64 {
        static SLACK: OnceLock<u64> = OnceLock::new();
        *SLACK.get_or_init(|| {
            let tick = ns(clock_getres(ClockId::MonotonicCoarse))
                .max(ns(clock_getres(ClockId::RealtimeCoarse)));
            // A tick of 0 would mean an exact clock; 1 ms is the floor anyway.
            tick.max(1_000_000).saturating_mul(2)
        })
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
mod fast {
    //! Without coarse clocks the fast check reads the exact ones (correct, just slower).
    use std::sync::OnceLock;
    use std::time::{Instant, UNIX_EPOCH};

    use super::{CoarseNow, nanos};

    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    pub(super) fn coarse_now() -> CoarseNow {
        CoarseNow {
            mono_ns: mono_exact_ns(),
            wall_ns: nanos(
                super::wall_now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        }
    }

    pub(super) fn mono_exact_ns() -> u64 {
        nanos(base().elapsed())
    }

    pub(super) fn slack() -> u64 {
        0
    }
}

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

    #[tokio::test(start_paused = true)]
    async fn the_fast_check_is_never_late_and_the_exact_check_decides_the_rest() {
        let d = in_(Duration::from_secs(10));
        assert!(d.surely_ahead(coarse_now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        // The paused monotonic clock passed it; the coarse (real) clocks cannot know.
        assert!(passed(&d));
    }

    #[test]
    fn a_deadline_closer_than_the_slack_is_never_surely_ahead() {
        assert!(!in_(Duration::from_micros(500)).surely_ahead(coarse_now()));
    }

    #[test]
    fn a_suspend_is_seen_by_the_fast_check_too() {
        let d = in_(Duration::from_secs(60));
        assert!(d.surely_ahead(coarse_now()));
        test_hooks::suspend_for(Duration::from_secs(61));
        assert!(!d.surely_ahead(coarse_now()));
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert!(saturating_add(now, Duration::MAX) > now);
        assert!(!passed(&in_(Duration::MAX)));
    }
}
