//! When to refresh a token, and until when to hand it out.

use std::time::Duration;

/// The margins as configured, before scaling to a token's lifetime.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Margins {
    pub(crate) soft: Duration,
    pub(crate) hard: Duration,
    pub(crate) jitter: f64,
}

/// What to do with one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Start the background refresh this long after the request was sent.
    pub(crate) refresh_after: Duration,
    /// Stop handing the token out this long after the request was sent.
    pub(crate) usable_for: Duration,
}

/// Plans a token's life: refresh at `usable - soft`, hand out until `usable - hard`, where
/// `usable` is the lifetime less the second that whole-second expiry can cost.
///
/// Both margins scale with the lifetime so that neither eats most of it: the soft margin is
/// at most a quarter of it and the hard margin at most half the soft one. So an hour-long
/// token refreshes about 5 minutes before expiry (jittered) and is handed out until
/// `30 s + renewal` before it; a 20-second token refreshes at about 14.25 s and is handed out
/// until about 16.6 s. `unit` in `[0, 1]` is the random draw for the jitter.
pub(crate) fn plan(lifetime: Duration, margins: Margins, renewal: Duration, unit: f64) -> Plan {
    // `expires_in` is whole seconds and servers compare a JWT's whole-second `exp` with
    // their clock, so a token can be rejected up to a second before `sent + expires_in`.
    let lifetime = if lifetime >= Duration::from_secs(2) {
        lifetime - Duration::from_secs(1)
    } else {
        lifetime / 2
    };
    let soft = margins.soft.min(lifetime / 4);
    let spread = 1.0 + margins.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    let soft = soft.mul_f64(spread).min(lifetime / 2);
    let hard = (margins.hard + renewal).min(soft / 2);
    Plan {
        refresh_after: lifetime - soft,
        usable_for: lifetime - hard,
    }
}

/// How long a token must have been handed out before a 401 for it is taken at its word (the
/// token was revoked) and it is withdrawn: a minute, or a quarter of a short lifetime. A
/// younger token that is rejected keeps being served while a refresh runs.
pub(crate) fn suspect_after(lifetime: Duration) -> Duration {
    Duration::from_secs(60).min(lifetime / 4)
}

/// The longest a run of rejected replacement tokens can pause refreshing.
const STORM_PAUSE_MAX: Duration = Duration::from_secs(5 * 60);

/// How long to wait before the refresh for the `streak`-th rejection of a run (the first,
/// 0, is at once): doubling from the rate bound, up to 5 minutes, so a 401 storm costs a few
/// fetches an hour, not one a second.
pub(crate) fn storm_pause(min_interval: Duration, streak: u32) -> Duration {
    crate::retry::exponential_cap(
        min_interval.max(Duration::from_secs(1)),
        STORM_PAUSE_MAX,
        streak,
    )
}

/// The longest of the last few successful fetch durations: how long a renewal takes now.
#[derive(Debug, Default)]
pub(crate) struct RenewalTimes {
    recent: [Duration; 8],
    next: usize,
}

impl RenewalTimes {
    pub(crate) fn record(&mut self, took: Duration) {
        self.recent[self.next % self.recent.len()] = took;
        self.next += 1;
    }

    pub(crate) fn max(&self) -> Duration {
        self.recent.iter().copied().max().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Margins = Margins {
        soft: Duration::from_secs(300),
        hard: Duration::from_secs(30),
        jitter: 0.1,
    };

    #[test]
    fn an_hour_long_token_refreshes_five_minutes_early_jittered_by_ten_percent() {
        let low = plan(Duration::from_secs(3600), DEFAULT, Duration::ZERO, 0.0);
        let mid = plan(Duration::from_secs(3600), DEFAULT, Duration::ZERO, 0.5);
        let high = plan(Duration::from_secs(3600), DEFAULT, Duration::ZERO, 1.0);
        assert_eq!(mid.refresh_after, Duration::from_secs(3299));
        assert_eq!(low.refresh_after, Duration::from_secs(3329));
        assert_eq!(high.refresh_after, Duration::from_secs(3269));
        assert_eq!(mid.usable_for, Duration::from_secs(3569));
    }

    #[test]
    fn the_hard_margin_includes_the_observed_renewal_time() {
        let p = plan(
            Duration::from_secs(3600),
            DEFAULT,
            Duration::from_secs(4),
            0.5,
        );
        assert_eq!(p.usable_for, Duration::from_secs(3565));
    }

    #[test]
    fn short_lifetimes_scale_both_margins() {
        let p = plan(
            Duration::from_secs(20),
            DEFAULT,
            Duration::from_millis(10),
            0.5,
        );
        assert_eq!(p.refresh_after, Duration::from_millis(14_250));
        assert_eq!(p.usable_for, Duration::from_millis(16_625));
        for secs in [1, 2, 5, 20, 60, 600, 3600, 86_400] {
            for unit in [0.0, 0.5, 1.0] {
                let life = Duration::from_secs(secs);
                let p = plan(life, DEFAULT, Duration::from_secs(2), unit);
                // Never refresh in the first third, always before withdrawing, and never hand
                // out a token in its last second (or last half, for sub-2-second lifetimes).
                assert!(
                    p.refresh_after >= life / 3,
                    "{secs}s: refresh too early {p:?}"
                );
                assert!(p.refresh_after < p.usable_for, "{secs}s: {p:?}");
                let last_usable = if secs >= 2 {
                    life - Duration::from_secs(1)
                } else {
                    life / 2
                };
                assert!(p.usable_for < last_usable, "{secs}s: {p:?}");
            }
        }
    }

    #[test]
    fn rejections_are_suspect_after_a_minute_or_a_quarter_of_the_lifetime() {
        assert_eq!(
            suspect_after(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            suspect_after(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn storm_pauses_double_up_to_five_minutes() {
        let pauses: Vec<u64> = (1..=12)
            .map(|n| storm_pause(Duration::from_secs(1), n).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn renewal_time_is_the_recent_maximum() {
        let mut r = RenewalTimes::default();
        r.record(Duration::from_millis(5));
        r.record(Duration::from_millis(50));
        assert_eq!(r.max(), Duration::from_millis(50));
        for _ in 0..8 {
            r.record(Duration::from_millis(1));
        }
        assert_eq!(r.max(), Duration::from_millis(1), "old renewals age out");
    }
}
