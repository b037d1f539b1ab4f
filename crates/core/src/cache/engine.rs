//! The refresh engine: one token, served while usable and refreshed ahead of expiry, by
//! whatever fetches it (a [`Refresh`]). `state.rs` decides; this file carries it out.
//!
//! - `current` (`ArcSwapOption<Published>`): the token with its refresh point and hard
//!   margin. Every reader checks both itself, so nothing depends on a task staying alive:
//!   past the hard margin a reader withdraws it; past the refresh point the first reader
//!   claims the refresh and starts it.
//! - `state` (a mutex, never held across an await): the [`State`]; `changes` (a `watch`)
//!   wakes waiting callers after it changes.
//! - One task per attempt, spawned in the runtime of whoever starts it. Its guard ends the
//!   attempt however the task ends (finished, panicked, dropped with its runtime), so a
//!   waiting caller sees it and starts another. An attempt past its time limit in a runtime
//!   that is no longer driven is replaced by the next caller (see [`Limits::patience`]).
//! - A timer task per engine wakes at the refresh point, so a token is refreshed ahead
//!   even when nobody reads it; readers do the same if the timer's runtime is gone.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use super::CacheSettings;
use super::refresher::Refresh;
use super::schedule::plan;
use super::state::{BackgroundStep, Backoff, CallerStep, Limits, Phase, Rejection, State};
use super::stats::{CacheStats, StripedCounter};
use crate::cache::CacheKey;
use crate::clock::{self, Deadline, Now, saturating_add};
use crate::error::{Error, error_chain};
use crate::token::{AccessToken, Issuer};
use crate::token_source::TokenFuture;

/// Slack on top of an attempt's own time limit before it counts as lost.
const SLACK: Duration = Duration::from_secs(1);

/// A token as handed out, with the points that govern it. Immutable but for `claimed`: a
/// new refresh point is a new `Published`.
#[derive(Debug)]
struct Published {
    token: AccessToken,
    /// Refresh from here (the soft margin; later, a retry or a lost attempt's deadline).
    refresh_at: Deadline,
    /// Never handed out from here (the hard margin).
    usable_until: Deadline,
    /// A reader or the timer took up the refresh due at `refresh_at`.
    claimed: AtomicBool,
}

impl Published {
    fn new(token: AccessToken, refresh_at: Deadline, usable_until: Deadline) -> Self {
        Published {
            token,
            refresh_at,
            usable_until,
            claimed: AtomicBool::new(false),
        }
    }
}

pub(crate) struct Engine<R> {
    current: ArcSwapOption<Published>,
    state: Mutex<State>,
    /// Bumped after every change of `state` or `current` a waiting caller cares about.
    changes: watch::Sender<()>,
    /// The refresh timer: when it wakes, and the task.
    timer: Mutex<Option<(Instant, AbortHandle)>>,
    pub(crate) refresh: R,
    settings: CacheSettings,
    limits: Limits,
    key: Option<CacheKey>,
    me: Weak<Self>,
    hits: StripedCounter,
    waits: AtomicU64,
    failures_total: AtomicU64,
    invalidations: AtomicU64,
}

impl<R> Drop for Engine<R> {
    fn drop(&mut self) {
        if let Some((_, timer)) = self.timer.get_mut().ok().and_then(Option::take) {
            timer.abort();
        }
    }
}

/// Whether this thread can spawn tasks (it runs inside a tokio runtime).
fn in_runtime() -> bool {
    Handle::try_current().is_ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these; a poisoned lock's data is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: Refresh> Engine<R> {
    pub(crate) fn new(refresh: R, settings: CacheSettings, key: Option<CacheKey>) -> Arc<Self> {
        let limits = Limits {
            min_interval: settings.min_fetch_interval,
            patience: refresh.time_limit().saturating_add(SLACK),
        };
        Arc::new_cyclic(|me| Engine {
            current: ArcSwapOption::empty(),
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(()),
            timer: Mutex::new(None),
            refresh,
            settings,
            limits,
            key,
            me: me.clone(),
            hits: StripedCounter::default(),
            waits: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn changed(&self) {
        self.changes.send_modify(|()| {});
    }

    /// The hot path: the usable token, counted as a hit.
    pub(crate) fn cached(self: &Arc<Self>) -> Option<AccessToken> {
        let token = self.usable()?;
        self.hits.add();
        Some(token)
    }

    /// The published token if it is usable now. Past its hard margin it is withdrawn; past
    /// its refresh point, the first reader to see it (in a runtime) starts the refresh.
    fn usable(self: &Arc<Self>) -> Option<AccessToken> {
        let guard = self.current.load();
        let p = guard.as_ref()?;
        // Fast: the coarse clocks say neither point can have passed (`clock.rs`).
        let coarse = clock::coarse_now();
        if clock::coarse_is_real_time()
            && p.usable_until.surely_ahead(coarse)
            && (p.refresh_at.surely_ahead(coarse) || p.claimed.load(Ordering::Relaxed))
        {
            return Some(p.token.clone());
        }
        clock::notice_virtual_time();
        let now = Now::read();
        if p.usable_until.passed_at(now) {
            // A token that lapsed unrefreshed (a clock jumped, the timer's runtime is gone)
            // is refreshed at once; after failures, waiting callers drive the retries.
            if self.withdraw(p.token.id(), "its hard margin passed")
                && in_runtime()
                && self.state().last_error.is_none()
            {
                self.kick(None);
            }
            return None;
        }
        if p.refresh_at.passed_at(now)
            && !p.claimed.load(Ordering::Relaxed)
            && in_runtime()
            && !p.claimed.swap(true, Ordering::Relaxed)
        {
            self.kick(Some(p.token.id()));
        }
        Some(p.token.clone())
    }

    /// Withdraws the published token if it is token `id`. Returns whether it did.
    fn withdraw(&self, id: u64, why: &str) -> bool {
        loop {
            let current = self.current.load_full();
            match &current {
                Some(p) if p.token.id() == id => {
                    let previous = self.current.compare_and_swap(&current, None);
                    if previous.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, p)) {
                        debug!(token_id = id, "withdrew the token ({why})");
                        return true;
                    }
                    // Republished meanwhile (a new refresh point): look again.
                }
                _ => return false,
            }
        }
    }

    /// A background trigger (the timer, a reader past the refresh point, a 401) for the
    /// refresh of token `held` (`None`: none is held): starts an attempt if none is under way
    /// and the rate bound allows, or moves the refresh point to when it does.
    fn kick(self: &Arc<Self>, held: Option<u64>) {
        if !in_runtime() {
            return; // nowhere to run an attempt: readers in a runtime, or waiting callers, will
        }
        let mut s = self.state();
        if self.current.load().as_ref().map(|p| p.token.id()) != held {
            return; // a fetch already replaced (or withdrew) that token
        }
        let now = Instant::now();
        match s.background_step(now, self.limits) {
            BackgroundStep::Start => {
                let attempt = s.begin(now);
                drop(s);
                self.spawn_attempt(attempt, now);
            }
            // Looked at again when it would count as lost (the point moves there, unclaimed).
            BackgroundStep::Running(at) | BackgroundStep::NotBefore(at) => {
                drop(s);
                self.refresh_at(at, true);
            }
        }
    }

    /// Moves the held token's refresh point to `at` (or only earlier, unless `later_too`),
    /// and the timer to the point that holds.
    fn refresh_at(&self, at: Instant, later_too: bool) {
        let now = Now::read();
        let point = now.plus(at.saturating_duration_since(now.mono));
        let Some(p) = self.current.load_full() else {
            return self.arm_timer(at); // for a wanted replacement
        };
        let point = if later_too {
            point
        } else {
            point.min(p.refresh_at)
        };
        let moved = Arc::new(Published::new(p.token.clone(), point, p.usable_until));
        let previous = self.current.compare_and_swap(&p, Some(moved));
        if previous.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &p)) {
            self.arm_timer(point.mono());
        } // else a newer Published came with its own timer
    }

    /// Wakes the engine at `at`, in the caller's runtime, unless a live timer wakes it
    /// sooner (a timer that wakes early sleeps on to the refresh point then current).
    fn arm_timer(&self, at: Instant) {
        let Ok(runtime) = Handle::try_current() else {
            return; // readers take over
        };
        let mut timer = lock(&self.timer);
        // A timer still asleep that wakes no later will do (it sleeps on to the point then
        // current). One that has woken (maybe the caller itself) will not.
        if let Some((wakes, task)) = &*timer
            && *wakes <= at
            && *wakes > Instant::now()
            && !task.is_finished()
        {
            return;
        }
        let me = self.me.clone();
        let task = runtime.spawn(async move {
            let mut at = at;
            loop {
                tokio::time::sleep_until(at).await;
                let Some(engine) = me.upgrade() else { return };
                match engine.current.load_full() {
                    Some(p) if !p.refresh_at.passed_at(Now::read()) => at = p.refresh_at.mono(),
                    Some(_) => return drop(engine.usable()),
                    None if engine.state().wanted => return engine.kick(None),
                    None => return,
                }
            }
        });
        if let Some((_, old)) = timer.replace((at, task.abort_handle())) {
            old.abort();
        }
    }

    /// Runs attempt `attempt`, begun at `since`, in a task of its own in the caller's runtime.
    fn spawn_attempt(self: &Arc<Self>, attempt: u64, since: Instant) {
        self.changed();
        // A held token's refresh point moves to when this attempt would count as lost.
        self.refresh_at(saturating_add(since, self.limits.patience), true);
        let mut guard = AttemptGuard {
            engine: self.clone(),
            attempt,
            ended: false,
        };
        let task = async move {
            let engine = guard.engine.clone();
            // Replaced while it waited to be run (its runtime was not driven): not this one's turn.
            if !matches!(engine.state().phase, Phase::Fetching { attempt: a, .. } if a == attempt) {
                return guard.disarm();
            }
            let started = Instant::now();
            let limit = saturating_add(since, engine.limits.patience.saturating_sub(SLACK));
            // The whole call, its synchronous part included, so a panic anywhere in it is a
            // failed attempt.
            let work = AssertUnwindSafe(async { engine.refresh.refresh().await }).catch_unwind();
            let result = match tokio::time::timeout_at(limit, work).await {
                Err(_) => Err(Error::Timeout),
                Ok(Err(_panic)) => Err(Error::RefreshPanicked),
                Ok(Ok(result)) => result,
            };
            guard.disarm();
            engine.end_attempt(attempt, result, started.elapsed());
        };
        match Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(task.instrument(self.refresh.span()))),
            Err(_) => drop(task), // no runtime: the guard ends the attempt
        }
    }

    /// The outcome of attempt `attempt`, which took `took`.
    fn end_attempt(&self, attempt: u64, result: Result<AccessToken, Error>, took: Duration) {
        let now = Now::read();
        let mut s = self.state();
        let latest = s.end(attempt);
        match result.and_then(|token| self.publishable(&mut s, token, took, now)) {
            // A superseded attempt only fills a gap: it never replaces a token.
            Ok(p) if latest || self.current.load().is_none() => {
                if latest {
                    s.succeeded();
                }
                let (token, refresh_at) = (p.token.clone(), p.refresh_at.mono());
                let lifetime = token.lifetime();
                let newly_short = lifetime < Duration::from_secs(60)
                    && s.last_lifetime.replace(lifetime) != Some(lifetime);
                // Published before the lock is let go: a caller that sees `Idle` sees it.
                self.current.store(Some(Arc::new(p)));
                drop(s);
                if newly_short {
                    warn!(
                        lifetime_s = lifetime.as_secs(),
                        "the token endpoint issues unusually short-lived tokens; fetches are rate limited to one per {:?}",
                        self.settings.min_fetch_interval
                    );
                }
                info!(
                    token_id = token.id(),
                    lifetime_s = token.lifetime().as_secs(),
                    granted_scope = token.granted_scope().unwrap_or(""),
                    took_ms = took.as_millis() as u64,
                    "token fetched"
                );
                self.arm_timer(refresh_at);
            }
            Ok(_) => {
                drop(s);
                debug!("a superseded token fetch succeeded; a newer token is held");
            }
            Err(e) => {
                self.failures_total.fetch_add(1, Ordering::Relaxed);
                let (kind, chain) = (e.kind_name(), error_chain(&e));
                if !latest {
                    drop(s);
                    debug!(kind, error = %chain, "a superseded token fetch failed");
                    return;
                }
                let held = self
                    .current
                    .load_full()
                    .filter(|p| !p.usable_until.passed_at(now));
                let left = held
                    .as_ref()
                    .map_or(Duration::ZERO, |p| p.usable_until.remaining());
                let retry = s.failed(e, left, self.backoff(), now.mono);
                drop(s);
                if held.is_some() {
                    let retry_in_ms = retry.as_millis() as u64;
                    warn!(kind, error = %chain, retry_in_ms, "token refresh failed; still serving the current, valid token");
                    self.refresh_at(saturating_add(now.mono, retry), true);
                } else {
                    error!(kind, error = %chain, "token fetch failed and no valid token is cached");
                }
            }
        }
        self.changed();
    }

    /// `token` as published: its refresh point and hard margin planned, or
    /// [`Error::SlowFetch`] if it arrived past the latter.
    fn publishable(
        &self,
        s: &mut State,
        token: AccessToken,
        took: Duration,
        now: Now,
    ) -> Result<Published, Error> {
        s.renewals.record(took);
        let lifetime = token.lifetime();
        let plan = plan(
            lifetime,
            self.settings.margins,
            s.renewals.max(),
            fastrand::f64(),
        );
        let issued = Now::at(token.issued_at(), token.issued_at_wall());
        let usable_until = issued.plus(plan.usable_for);
        if usable_until.passed_at(now) {
            return Err(Error::SlowFetch { took, lifetime });
        }
        let token = token.tagged(self.key.clone(), self.me.clone());
        Ok(Published::new(
            token,
            issued.plus(plan.refresh_after),
            usable_until,
        ))
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.settings.backoff_initial,
            max: self.settings.backoff_max,
            min_interval: self.settings.min_fetch_interval,
            fixed_draw: self.settings.fixed_backoff_draw,
        }
    }

    /// Waits (up to the wait deadline) for a usable token when none is held.
    pub(crate) async fn wait_for_token(self: &Arc<Self>) -> Result<AccessToken, Error> {
        let started = Instant::now();
        self.wait_until(started, saturating_add(started, self.settings.wait_timeout))
            .await
    }

    /// As [`wait_for_token`](Self::wait_for_token), for a wait that began at `started`.
    async fn wait_until(
        self: &Arc<Self>,
        started: Instant,
        deadline: Instant,
    ) -> Result<AccessToken, Error> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        clock::notice_virtual_time();
        let mut changes = self.changes.subscribe();
        let mut judged = None;
        loop {
            // Marked seen before looking, so no change slips between the look and the wait.
            changes.borrow_and_update();
            if let Some(token) = self.usable() {
                return Ok(token);
            }
            let Some(until) = self.caller_turn(&mut judged, deadline)? else {
                continue; // an attempt started: look again
            };
            let woken = tokio::time::timeout_at(until, changes.changed())
                .await
                .is_ok();
            if !woken && Instant::now() >= deadline {
                let waited = started.elapsed();
                return self.usable().ok_or_else(|| {
                    self.state()
                        .last_error
                        .clone()
                        .unwrap_or(Error::WaitTimedOut { waited })
                });
            }
        }
    }

    /// One turn of a waiting caller: starts an attempt (`None`), or says until when to wait
    /// for a change, or fails. `judged`: the attempt whose outcome the caller judges.
    fn caller_turn(
        self: &Arc<Self>,
        judged: &mut Option<u64>,
        deadline: Instant,
    ) -> Result<Option<Instant>, Error> {
        let mut s = self.state();
        if self.current.load().is_some() {
            return Ok(None); // published since the caller looked: look again
        }
        let now = Instant::now();
        match s.caller_step(*judged, now, deadline, self.limits) {
            CallerStep::Start => {
                let attempt = s.begin(now);
                drop(s);
                *judged = Some(attempt);
                self.spawn_attempt(attempt, now);
                Ok(None)
            }
            CallerStep::Wait { until, attempt } => {
                *judged = attempt.or(*judged);
                Ok(Some(until))
            }
            CallerStep::Fail(error) => Err(error),
        }
    }

    /// A 401 for `token`. See [`TokenCache::invalidate`](crate::TokenCache::invalidate).
    pub(crate) fn invalidate(self: &Arc<Self>, token: &AccessToken) -> bool {
        let id = token.id();
        if self.current.load().as_ref().map(|p| p.token.id()) != Some(id) {
            return false;
        }
        let now = Instant::now();
        let verdict = {
            let mut s = self.state();
            let verdict = s.rejections.report(
                id,
                token.issued_at(),
                token.lifetime(),
                now,
                self.settings.min_fetch_interval,
            );
            // The attempt whose token a replay waits for: the one running, or the next.
            s.rejections.awaited = match (verdict, s.phase) {
                (
                    Rejection::Withdraw | Rejection::Refresh(Duration::ZERO),
                    Phase::Fetching { attempt, .. },
                ) => Some(attempt),
                (Rejection::Withdraw | Rejection::Refresh(Duration::ZERO), Phase::Idle) => {
                    Some(s.attempts + 1)
                }
                (Rejection::Ignored, _) => s.rejections.awaited,
                (Rejection::Refresh(_), _) => None,
            };
            s.wanted |= verdict == Rejection::Withdraw;
            verdict
        };
        match verdict {
            Rejection::Ignored => return false,
            Rejection::Withdraw => {
                self.withdraw(id, "the API rejected it");
                info!(token_id = id, "token rejected (401); withdrawn, refreshing");
                self.kick(None);
            }
            Rejection::Refresh(pause) if pause.is_zero() => {
                info!(
                    token_id = id,
                    "a fresh token was rejected (401); still serving it while refreshing"
                );
                self.kick(Some(id));
            }
            Rejection::Refresh(pause) => {
                let pause_ms = pause.as_millis() as u64;
                warn!(
                    token_id = id,
                    pause_ms,
                    "tokens keep being rejected (401s not about the token?); still serving, refreshing later"
                );
                self.refresh_at(saturating_add(now, pause), false);
            }
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.changed();
        true
    }

    /// The token to replay a request rejected with `rejected`: the one the refresh its
    /// rejection asked for at once brings; otherwise the usable one.
    pub(crate) async fn replacement(
        self: &Arc<Self>,
        rejected: &AccessToken,
    ) -> Result<AccessToken, Error> {
        let now = Instant::now();
        let deadline = saturating_add(now, self.settings.wait_timeout);
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(token) = self.usable().filter(|t| t.id() != rejected.id()) {
                return Ok(token);
            }
            let pending = {
                let s = self.state();
                let awaited = s
                    .rejections
                    .awaited
                    .filter(|_| s.rejections.reported == Some(rejected.id()));
                // Not started yet (the rate bound), or running: wait for it.
                awaited.is_some_and(|n| {
                    s.attempts < n
                        || matches!(s.phase, Phase::Fetching { attempt, .. } if attempt == n)
                })
            };
            if !pending
                || tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
            {
                break;
            }
        }
        match self.usable() {
            Some(token) => Ok(token),
            None => self.wait_until(now, deadline).await,
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        // Read without acting on it: looking at the stats starts no fetch.
        let now = Now::read();
        let held = self.current.load_full();
        let token = held
            .filter(|p| !p.usable_until.passed_at(now))
            .map(|p| p.token.clone());
        let s = self.state();
        CacheStats {
            fetches: s.attempts,
            fetch_failures: self.failures_total.load(Ordering::Relaxed),
            consecutive_failures: s.failures,
            hits: self.hits.sum(),
            waits: self.waits.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            token_age: token.as_ref().map(|t| t.issued_at().elapsed()),
            token_remaining: token.as_ref().map(AccessToken::remaining),
            last_error: s.last_error.as_ref().map(|e| error_chain(e)),
        }
    }
}

impl<R: Refresh> Issuer for Engine<R> {
    fn invalidate(&self, token: &AccessToken) -> bool {
        self.me
            .upgrade()
            .is_some_and(|engine| engine.invalidate(token))
    }

    fn replacement(&self, rejected: &AccessToken) -> Option<TokenFuture> {
        let engine = self.me.upgrade()?;
        let rejected = rejected.clone();
        Some(Box::pin(async move { engine.replacement(&rejected).await }))
    }
}

/// Ends an attempt whose task ended without an outcome (it panicked, or was dropped with its
/// runtime): waiting callers look again and start another, and so does the next reader of a
/// held token.
struct AttemptGuard<R: Refresh> {
    engine: Arc<Engine<R>>,
    attempt: u64,
    ended: bool,
}

impl<R: Refresh> AttemptGuard<R> {
    fn disarm(&mut self) {
        self.ended = true;
    }
}

impl<R: Refresh> Drop for AttemptGuard<R> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let engine = &self.engine;
        if !engine.state().end(self.attempt) {
            return;
        }
        warn!(
            attempt = self.attempt,
            "a token fetch was abandoned mid-flight (its runtime shut down?); the next caller fetches again"
        );
        // The next reader of a held token starts another at once.
        engine.refresh_at(Instant::now(), true);
        engine.changes.send_modify(|()| {});
    }
}
