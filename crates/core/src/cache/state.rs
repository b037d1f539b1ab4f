//! The refresh engine's state and its decisions, as pure functions of the state and the
//! time: what a waiting caller does next, what a background trigger does, when a failed
//! refresh is retried and what a 401 does. `engine.rs` carries them out.

use std::time::Duration;

use tokio::time::Instant;

use super::schedule::{RenewalTimes, storm_pause, suspect_after};
use crate::clock::saturating_add;
use crate::error::Error;
use crate::retry::exponential_cap;

/// Whether a fetch is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    /// No fetch is running.
    #[default]
    Idle,
    /// Attempt `attempt` started at `since`. A fetch in a driven runtime ends within the
    /// engine's patience; one that has not is lost (its runtime is no longer driven) and
    /// the next caller starts another.
    Fetching { attempt: u64, since: Instant },
}

/// The engine's coordination state, changed under the `watch` channel's lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) phase: Phase,
    /// Attempts started (the last one's number).
    pub(crate) attempts: u64,
    /// When the last attempt started: the rate bound counts from here.
    pub(crate) last_start: Option<Instant>,
    /// Consecutive failed attempts.
    pub(crate) failures: u32,
    /// The last attempt's error, until one succeeds.
    pub(crate) last_error: Option<Error>,
    /// The backoff after the last failure: the earliest a waiting caller starts the next
    /// attempt (a server's `Retry-After` does not hold a waiting caller up).
    pub(crate) backoff_until: Option<Instant>,
    /// A token was withdrawn after a 401 and its replacement is wanted, with nothing held.
    pub(crate) wanted: bool,
    pub(crate) rejections: Rejections,
    /// How long recent successful fetches took (the hard margin covers it).
    pub(crate) renewals: RenewalTimes,
    /// The last token's lifetime, to warn once about short ones.
    pub(crate) last_lifetime: Option<Duration>,
}

/// Timing limits the decisions need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The least time between two attempts.
    pub(crate) min_interval: Duration,
    /// How long an attempt in a driven runtime can run at most (its own time limit, plus
    /// slack for a busy runtime).
    pub(crate) patience: Duration,
}

/// What a caller with no usable token does next.
#[derive(Debug)]
pub(crate) enum CallerStep {
    /// Start an attempt now.
    Start,
    /// Wait for a state change or `until`, whichever is first. `attempt`: the attempt under
    /// way, whose outcome this caller then judges.
    Wait {
        until: Instant,
        attempt: Option<u64>,
    },
    /// Give up with this error.
    Fail(Error),
}

/// What a background trigger (the timer, a reader past the refresh point, a 401) does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BackgroundStep {
    /// Start an attempt now.
    Start,
    /// An attempt is under way; it counts as lost at this time.
    Running(Instant),
    /// The rate bound allows the next attempt at this time.
    NotBefore(Instant),
}

impl State {
    /// The attempt under way, if one is and it is not lost.
    fn running(&self, now: Instant, limits: Limits) -> Option<(u64, Instant)> {
        match self.phase {
            Phase::Fetching { attempt, since } => {
                // (Instants from another runtime's paused clock can lie ahead of `now`.)
                let lost_at = saturating_add(since.min(now), limits.patience);
                (now < lost_at).then_some((attempt, lost_at))
            }
            Phase::Idle => None,
        }
    }

    /// The rate bound: the earliest the next attempt may start.
    fn rate_bound(&self, now: Instant, limits: Limits) -> Option<Instant> {
        // (A start ahead of `now` was on another runtime's paused clock: not comparable.)
        self.last_start
            .filter(|t| *t <= now)
            .map(|t| saturating_add(t, limits.min_interval))
    }

    /// What a caller does that found no usable token at `now`, will wait until `deadline`,
    /// and (`judged`) saw attempt `judged` under way last time it looked.
    pub(crate) fn caller_step(
        &self,
        judged: Option<u64>,
        now: Instant,
        deadline: Instant,
        limits: Limits,
    ) -> CallerStep {
        if let Some((attempt, lost_at)) = self.running(now, limits) {
            return CallerStep::Wait {
                until: lost_at.min(deadline),
                attempt: Some(attempt),
            };
        }
        if matches!(self.phase, Phase::Fetching { .. }) {
            return CallerStep::Start; // lost: replace it
        }
        let earliest = match (self.rate_bound(now, limits), self.backoff_until) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        if let Some(error) = &self.last_error {
            // The attempt this caller waited for failed: a permanent error, or a retry past
            // the deadline, ends the wait. A caller that saw none under way gets a permanent
            // error at once only within the rate bound: after it, one attempt is made.
            let permanent = !error.is_retryable() && (judged.is_some() || earliest > now);
            if permanent || earliest > deadline {
                return CallerStep::Fail(error.clone());
            }
        }
        if earliest <= now {
            CallerStep::Start
        } else {
            CallerStep::Wait {
                until: earliest.min(deadline),
                attempt: None,
            }
        }
    }

    /// The latest attempt brought a token.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.last_error = None;
        self.backoff_until = None;
    }

    /// The latest attempt failed at `now` with `error`, with `usable_left` of the held token
    /// (zero if none is held). Returns when the background retries while a token is held.
    pub(crate) fn failed(
        &mut self,
        error: Error,
        usable_left: Duration,
        backoff: Backoff,
        now: Instant,
    ) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let retry = retry_after_failure(
            self.failures,
            error.retry_after(),
            usable_left,
            backoff,
            backoff.fixed_draw.unwrap_or_else(fastrand::f64),
        );
        self.backoff_until = Some(saturating_add(now, retry.backoff));
        self.last_error = Some(error);
        retry.background
    }

    /// Starts attempt number `attempts + 1` at `now`; returns its number.
    pub(crate) fn begin(&mut self, now: Instant) -> u64 {
        self.attempts += 1;
        self.phase = Phase::Fetching {
            attempt: self.attempts,
            since: now,
        };
        self.last_start = Some(now);
        self.wanted = false;
        self.attempts
    }

    /// Ends attempt `attempt`; returns whether it was the latest one (a superseded attempt
    /// must not change what the newer one decides).
    pub(crate) fn end(&mut self, attempt: u64) -> bool {
        let latest = matches!(self.phase, Phase::Fetching { attempt: a, .. } if a == attempt);
        if latest {
            self.phase = Phase::Idle;
        }
        latest
    }

    /// What a background trigger does at `now`.
    pub(crate) fn background_step(&self, now: Instant, limits: Limits) -> BackgroundStep {
        if let Some((_, lost_at)) = self.running(now, limits) {
            return BackgroundStep::Running(lost_at);
        }
        match self.rate_bound(now, limits) {
            Some(at) if at > now && matches!(self.phase, Phase::Idle) => {
                BackgroundStep::NotBefore(at)
            }
            _ => BackgroundStep::Start,
        }
    }
}

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    /// The rate bound: no retry comes sooner.
    pub(crate) min_interval: Duration,
    /// A fixed jitter draw in `[0, 1]` instead of a random one (a test hook).
    pub(crate) fixed_draw: Option<f64>,
}

/// When to try again after the `failures`-th failure in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// The backoff alone (full jitter): a waiting caller may start the next attempt then.
    pub(crate) backoff: Duration,
    /// When the background retries while a token is held: the backoff, at least the server's
    /// `Retry-After` up to the longest backoff, and at most half the token's usable time left
    /// (but not under the rate bound), so it is retried while it is still usable.
    pub(crate) background: Duration,
}

/// Plans the retry after a failure. `unit` in `[0, 1]` is the jitter's random draw.
pub(crate) fn retry_after_failure(
    failures: u32,
    server_hint: Option<Duration>,
    usable_left: Duration,
    backoff: Backoff,
    unit: f64,
) -> Retry {
    let min_interval = backoff.min_interval;
    let cap = exponential_cap(backoff.initial, backoff.max, failures);
    let jittered = cap.mul_f64(unit.clamp(0.0, 1.0));
    let hinted = server_hint.map_or(jittered, |h| jittered.max(h.min(backoff.max)));
    Retry {
        backoff: jittered,
        background: hinted.min((usable_left / 2).max(min_interval)),
    }
}

/// The run of 401s a cache has seen.
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    /// The last token reported (one report per token is acted on).
    pub(crate) reported: Option<u64>,
    /// When the last report came.
    last: Option<Instant>,
    /// Reports in the current run (each within the suspect window of the one before).
    streak: u32,
    /// The attempt a replay of the last reported token waits for (its report asked for a
    /// refresh at once), set by the engine.
    pub(crate) awaited: Option<u64>,
}

/// What a 401 does to the token it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Already reported: nothing.
    Ignored,
    /// Withdraw it: callers wait for a fresh one, fetched at once.
    Withdraw,
    /// Keep serving it, and refresh after this pause (zero: at once).
    Refresh(Duration),
}

impl Rejections {
    /// A 401 at `now` for token `id`, handed out since `issued` with lifetime `lifetime`.
    ///
    /// The first report of a run withdraws a token in use long enough to be suspect (it was
    /// probably revoked); a fresher one keeps being served while a refresh runs. Later
    /// reports in the run are more likely not about tokens at all (a gateway, a signature
    /// error): keep serving, and refresh ever more slowly.
    pub(crate) fn report(
        &mut self,
        id: u64,
        issued: Instant,
        lifetime: Duration,
        now: Instant,
        min_interval: Duration,
    ) -> Rejection {
        let window = suspect_after(lifetime);
        let in_run = self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < window);
        if !in_run {
            self.streak = 0;
        }
        self.last = Some(now);
        if self.reported == Some(id) {
            return Rejection::Ignored;
        }
        self.reported = Some(id);
        let streak = self.streak;
        self.streak = self.streak.saturating_add(1);
        if streak == 0 && now.saturating_duration_since(issued) >= window {
            Rejection::Withdraw
        } else if streak == 0 {
            Rejection::Refresh(Duration::ZERO)
        } else {
            Rejection::Refresh(storm_pause(min_interval, streak))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const LIMITS: Limits = Limits {
        min_interval: S,
        patience: Duration::from_secs(61),
    };

    impl PartialEq for CallerStep {
        fn eq(&self, other: &Self) -> bool {
            format!("{self:?}") == format!("{other:?}")
        }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn what_a_waiting_caller_does() {
        let t0 = Instant::now();
        let server = || Error::ServerError {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
        };
        let invalid_client = || {
            Error::OAuth(crate::error::OAuthError {
                code: crate::error::OAuthErrorCode::InvalidClient,
                description: None,
                status: http::StatusCode::UNAUTHORIZED,
            })
        };
        // Attempt 1 under way since t0.
        let running = || State {
            phase: Phase::Fetching {
                attempt: 1,
                since: t0,
            },
            attempts: 1,
            ..State::default()
        };
        // Attempt 1 began at t0 and ended with `error`, backing off until `backoff` s.
        let failed = |error: Option<Error>, backoff: Option<u64>| State {
            attempts: 1,
            last_start: Some(t0),
            last_error: error,
            backoff_until: backoff.map(|b| at(t0, b)),
            ..State::default()
        };
        let wait = |until, attempt| CallerStep::Wait {
            until: at(t0, until),
            attempt,
        };
        // (state, attempt judged, now, deadline, expected)
        let cases: Vec<(State, Option<u64>, u64, u64, CallerStep)> = vec![
            // Nothing ever fetched: start.
            (State::default(), None, 0, 15, CallerStep::Start),
            // An attempt under way: wait for it, until it would be lost or the deadline.
            (running(), None, 10, 15, wait(15, Some(1))),
            (running(), None, 10, 100, wait(61, Some(1))),
            // One that outlived the patience is lost: start another.
            (running(), Some(1), 61, 100, CallerStep::Start),
            // The rate bound holds the next attempt back.
            (failed(None, None), None, 0, 15, wait(1, None)),
            // The attempt waited for failed, retryably: retry after the backoff...
            (
                failed(Some(server()), Some(3)),
                Some(1),
                1,
                15,
                wait(3, None),
            ),
            // ...unless the backoff ends past the deadline: the error now.
            (
                failed(Some(server()), Some(30)),
                Some(1),
                1,
                15,
                CallerStep::Fail(server()),
            ),
            // A permanent failure ends the wait of whoever waited for it...
            (
                failed(Some(invalid_client()), None),
                Some(1),
                5,
                15,
                CallerStep::Fail(invalid_client()),
            ),
            // ...and reaches new callers at once within the rate bound...
            (
                failed(Some(invalid_client()), None),
                None,
                0,
                15,
                CallerStep::Fail(invalid_client()),
            ),
            // ...but a caller who asks later gets one attempt.
            (
                failed(Some(invalid_client()), None),
                None,
                3600,
                3615,
                CallerStep::Start,
            ),
        ];
        for (n, (state, judged, now, deadline, expected)) in cases.into_iter().enumerate() {
            let step = state.caller_step(judged, at(t0, now), at(t0, deadline), LIMITS);
            assert_eq!(step, expected, "case {n}: {state:?}");
        }
    }

    #[test]
    fn what_a_background_trigger_does() {
        let t0 = Instant::now();
        let cases = [
            (State::default(), 0, BackgroundStep::Start),
            (
                State {
                    phase: Phase::Fetching {
                        attempt: 1,
                        since: t0,
                    },
                    ..State::default()
                },
                60,
                BackgroundStep::Running(at(t0, 61)),
            ),
            (
                State {
                    phase: Phase::Fetching {
                        attempt: 1,
                        since: t0,
                    },
                    ..State::default()
                },
                61,
                BackgroundStep::Start,
            ),
            (
                State {
                    last_start: Some(t0),
                    ..State::default()
                },
                0,
                BackgroundStep::NotBefore(at(t0, 1)),
            ),
            (
                State {
                    last_start: Some(t0),
                    ..State::default()
                },
                1,
                BackgroundStep::Start,
            ),
        ];
        for (n, (state, now, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                state.background_step(at(t0, now), LIMITS),
                expected,
                "case {n}"
            );
        }
    }

    #[test]
    fn retries_back_off_exponentially_capped_by_the_hint_and_the_token_left() {
        let backoff = Backoff {
            initial: S,
            max: Duration::from_secs(60),
            min_interval: S,
            fixed_draw: None,
        };
        let hour = Duration::from_secs(3600);
        // (failures, hint, usable left, unit) -> (backoff, background)
        let cases = [
            ((1, None, hour, 1.0), (1, 1)),
            ((2, None, hour, 1.0), (2, 2)),
            ((6, None, hour, 1.0), (32, 32)),
            ((7, None, hour, 1.0), (60, 60)),
            ((30, None, hour, 1.0), (60, 60)),
            ((3, None, hour, 0.5), (2, 2)),
            ((1, None, hour, 0.0), (0, 0)),
            // A server's hint delays the background retry, up to the longest backoff.
            ((1, Some(45), hour, 1.0), (1, 45)),
            ((1, Some(3600), hour, 1.0), (1, 60)),
            // Never later than half the usable time left, never under the rate bound.
            ((7, None, Duration::from_secs(40), 1.0), (60, 20)),
            ((7, None, Duration::ZERO, 1.0), (60, 1)),
        ];
        for ((failures, hint, left, unit), (back, background)) in cases {
            let r =
                retry_after_failure(failures, hint.map(Duration::from_secs), left, backoff, unit);
            assert_eq!(
                (r.backoff, r.background),
                (Duration::from_secs(back), Duration::from_secs(background)),
                "{failures} failures, hint {hint:?}, {left:?} left, unit {unit}"
            );
        }
    }

    #[test]
    fn what_a_401_does() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut r = Rejections::default();
        // A token used for two minutes: suspect, withdrawn.
        assert_eq!(r.report(1, t0, hour, at(t0, 120), S), Rejection::Withdraw);
        // The same token again: one report per token.
        assert_eq!(r.report(1, t0, hour, at(t0, 121), S), Rejection::Ignored);
        // Its replacement, rejected within the run: kept, refreshed after 1 s, 2 s, 4 s ...
        assert_eq!(
            r.report(2, at(t0, 121), hour, at(t0, 122), S),
            Rejection::Refresh(S)
        );
        assert_eq!(
            r.report(3, at(t0, 123), hour, at(t0, 124), S),
            Rejection::Refresh(2 * S)
        );
        // A fresh token rejected after a quiet spell: kept, refreshed at once.
        assert_eq!(
            r.report(4, at(t0, 500), hour, at(t0, 505), S),
            Rejection::Refresh(Duration::ZERO)
        );
    }
}
