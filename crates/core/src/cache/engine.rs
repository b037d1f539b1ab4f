//! The shared state of one cache: what callers read, and how they coordinate with the
//! refresh task.
//!
//! Three synchronisation parts, each for one job:
//!
//! - `current` (`ArcSwapOption`): the published token with its deadlines. Callers read it
//!   without locks; every reader checks the hard margin itself, so a token past it is never
//!   handed out, whether or not the refresh task runs.
//! - `worker` (`AtomicU64`): the generation of the live refresh task, 0 when there is none.
//!   The task's drop guard clears it, so a task that is gone (its runtime dropped, a panic) is
//!   seen by the next caller, which starts a new one in its own runtime.
//! - `state` (a `watch` channel): everything else (attempts, failures, demand, rejections),
//!   changed under the channel's lock; a change wakes the refresh task and waiting callers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::schedule::{Margins, storm_pause, suspect_after};
use super::stats::{CacheStats, StripedCounter};
use super::worker::Worker;
use crate::cache::CacheKey;
use crate::client::TokenClient;
use crate::clock::{self, Deadline};
use crate::environment::Environment;
use crate::error::Error;
use crate::scope::Scopes;
use crate::source::CredentialsSource;
use crate::token::AccessToken;

/// How long a refresh task may leave a request for a fetch unanswered before a caller
/// decides it is stuck (its runtime is alive but no longer driven) and starts another.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(1);

/// The longest a token request takes with the default client (its total timeout), for
/// bounding how long a fetch in a driven task can last.
const REQUEST_BOUND: Duration = Duration::from_secs(10);

/// Settings of a cache's refresh engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) margins: Margins,
    pub(crate) wait_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) min_fetch_interval: Duration,
    pub(crate) credentials_timeout: Duration,
}

/// A token as handed out, with the deadlines that govern it.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) token: AccessToken,
    /// The soft margin: refresh in the background from here.
    pub(crate) refresh_at: Deadline,
    /// The hard margin: never handed out from here.
    pub(crate) usable_until: Deadline,
    /// The refresh task has taken up this token's refresh.
    pub(crate) refresh_taken: AtomicBool,
    /// When (coarse monotonic ns) a caller first saw the refresh overdue; 0 if none has.
    overdue_seen_ns: AtomicU64,
}

impl Published {
    pub(crate) fn new(token: AccessToken, refresh_after: Duration, usable_for: Duration) -> Self {
        let (mono, wall) = (token.issued_at(), token.issued_at_wall());
        Published {
            refresh_at: Deadline::after(mono, wall, refresh_after),
            usable_until: Deadline::after(mono, wall, usable_for),
            token,
            refresh_taken: AtomicBool::new(false),
            overdue_seen_ns: AtomicU64::new(0),
        }
    }
}

/// Coordination state, behind the `watch` channel's lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The last refresh-task generation handed out.
    pub(crate) generation: u64,
    /// Requests for a fetch by callers waiting with no usable token.
    pub(crate) demand: u64,
    /// The demand the last fetch started for.
    pub(crate) served: u64,
    /// The demand the refresh task has seen.
    pub(crate) acked: u64,
    /// When unacknowledged demand was registered.
    pub(crate) demand_at: Option<Instant>,
    /// Fetches started and finished.
    pub(crate) started: u64,
    pub(crate) done: u64,
    /// When the last fetch started (the rate bound counts from here).
    pub(crate) last_attempt: Option<Instant>,
    /// The last fetch's error, until one succeeds.
    pub(crate) last_error: Option<Error>,
    /// Consecutive failed fetches.
    pub(crate) failures: u32,
    /// When the refresh task retries on its own after a failure (the backoff, or the
    /// server's `Retry-After` up to the longest backoff).
    pub(crate) retry_at: Option<Instant>,
    /// The backoff alone, without the server's hint: the earliest a waiting caller's demand
    /// starts the next attempt.
    pub(crate) backoff_until: Option<Instant>,
    /// A non-retryable failure with no token held: no fetch until a caller asks.
    pub(crate) halted: bool,
    /// A rejected token asked for a refresh at this time.
    pub(crate) refresh_requested: Option<Instant>,
    /// The id of the last token published.
    pub(crate) last_published: Option<u64>,
    /// The id of the last token reported rejected.
    pub(crate) rejected: Option<u64>,
    /// When a 401 was last reported for the token handed out.
    pub(crate) last_rejection: Option<Instant>,
    /// Rejections in the current run (each within the suspect window of the last).
    pub(crate) rejection_streak: u32,
}

impl State {
    pub(crate) fn in_flight(&self) -> bool {
        self.started > self.done
    }

    /// Attempt `attempt` is over (succeeded, failed or abandoned). A newer attempt may still
    /// be in flight (a task that took over from a stalled one). Demand registered while it
    /// ran was for it: callers still waiting ask again.
    ///
    /// Returns whether it is the latest attempt; a superseded one must not change what the
    /// newer one decides (errors, backoff, halting, the published token).
    pub(crate) fn finish(&mut self, attempt: u64) -> bool {
        let latest = attempt >= self.started;
        self.done = self.done.max(attempt);
        if !self.in_flight() {
            self.served = self.demand;
        }
        latest
    }

    /// The earliest a new fetch may start: the rate bound.
    pub(crate) fn earliest(&self, min_interval: Duration) -> Option<Instant> {
        self.last_attempt
            .map(|t| clock::saturating_add(t, min_interval))
    }

    /// The earliest a fetch for a waiting caller may start: the rate bound and the backoff
    /// after failures (but not a server's longer hint, nor a halt).
    pub(crate) fn earliest_on_demand(&self, min_interval: Duration) -> Option<Instant> {
        match (self.earliest(min_interval), self.backoff_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

pub(crate) struct Engine {
    pub(crate) current: ArcSwapOption<Published>,
    pub(crate) worker: AtomicU64,
    pub(crate) state: watch::Sender<State>,
    pub(crate) client: TokenClient,
    pub(crate) source: Arc<dyn CredentialsSource>,
    pub(crate) environment: Environment,
    pub(crate) scopes: Scopes,
    pub(crate) key: Option<CacheKey>,
    pub(crate) config: Config,
    pub(crate) hits: StripedCounter,
    pub(crate) waits: AtomicU64,
    pub(crate) failures_total: AtomicU64,
    pub(crate) invalidations: AtomicU64,
}

impl Engine {
    pub(crate) fn new(
        client: TokenClient,
        source: Arc<dyn CredentialsSource>,
        environment: Environment,
        scopes: Scopes,
        key: Option<CacheKey>,
        config: Config,
    ) -> Self {
        Engine {
            current: ArcSwapOption::empty(),
            worker: AtomicU64::new(0),
            state: watch::Sender::new(State::default()),
            client,
            source,
            environment,
            scopes,
            key,
            config,
            hits: StripedCounter::default(),
            waits: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    /// The hot path: a usable token without locks, I/O or allocation. The coarse clocks
    /// answer "surely usable" almost always; anything else goes to the exact check.
    #[inline]
    pub(crate) fn cached(self: &Arc<Self>) -> Option<AccessToken> {
        {
            let guard = self.current.load();
            if let Some(p) = guard.as_ref() {
                let now = clock::coarse_now();
                if p.usable_until.surely_ahead(now)
                    && self.worker.load(Ordering::Relaxed) != 0
                    && clock::coarse_is_real_time()
                {
                    if !p.refresh_at.surely_ahead(now) && !p.refresh_taken.load(Ordering::Relaxed) {
                        self.refresh_overdue(p, now);
                    }
                    self.hits.add();
                    return Some(p.token.clone());
                }
            }
        }
        self.cached_slow()
    }

    /// A usable token by the exact clocks, restarting the refresh task if it is gone.
    pub(crate) fn cached_slow(self: &Arc<Self>) -> Option<AccessToken> {
        clock::notice_virtual_time();
        self.ensure_worker();
        let token = self.usable()?;
        self.hits.add();
        Some(token)
    }

    /// The published token if it is usable by the exact clocks; withdraws it if not.
    pub(crate) fn usable(&self) -> Option<AccessToken> {
        let p = self.current.load_full()?;
        if p.usable_until.passed() {
            self.withdraw(&p, "its hard margin passed");
            return None;
        }
        Some(p.token.clone())
    }

    /// Withdraws `p` if it is still the published token. Returns whether it was.
    pub(crate) fn withdraw(&self, p: &Arc<Published>, why: &str) -> bool {
        let previous = self.current.compare_and_swap(&Some(p.clone()), None);
        let withdrawn = previous.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, p));
        if withdrawn {
            debug!(
                token_id = p.token.id(),
                "withdrew the token ({why}); callers wait for a fresh one"
            );
        }
        withdrawn
    }

    /// Past the soft margin and the refresh task has not taken the refresh up: probe it,
    /// and if it stays silent, replace it.
    #[cold]
    fn refresh_overdue(self: &Arc<Self>, p: &Published, now: clock::CoarseNow) {
        // The coarse clocks only say "maybe"; a paused test clock may disagree.
        if !p.refresh_at.passed() {
            return;
        }
        let seen = p.overdue_seen_ns.load(Ordering::Relaxed);
        if seen == 0 {
            let _ = p.overdue_seen_ns.compare_exchange(
                0,
                now.mono_ns().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.state.send_modify(|_| {}); // wakes the task, if it is driven at all
        } else if now.mono_ns().saturating_sub(seen) > STALL_AFTER.as_nanos() as u64 {
            warn!("the refresh task did not refresh at the soft margin; starting another");
            self.replace_worker(self.worker.load(Ordering::Acquire));
            p.overdue_seen_ns.store(0, Ordering::Relaxed);
        }
    }

    /// Starts a refresh task in the caller's runtime if there is none, or if the one there is
    /// has not answered demand for [`STALL_AFTER`].
    pub(crate) fn ensure_worker(self: &Arc<Self>) {
        let generation = self.worker.load(Ordering::Acquire);
        if generation != 0 && !self.stalled() {
            return;
        }
        self.replace_worker(generation);
    }

    fn stalled(&self) -> bool {
        let s = self.state.borrow();
        s.demand > s.acked
            && s.demand_at
                .is_some_and(|at| Instant::now() >= clock::saturating_add(at, STALL_AFTER))
    }

    /// Replaces the refresh task of generation `seen` (0: none) with a new one in the
    /// caller's runtime. Outside a runtime nothing can run, so nothing happens.
    fn replace_worker(self: &Arc<Self>, seen: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let now = Instant::now();
        let mut new_generation = None;
        self.state.send_if_modified(|s| {
            if self.worker.load(Ordering::Acquire) != seen {
                return false; // another caller got there first
            }
            s.generation += 1;
            s.acked = s.demand;
            s.demand_at = (s.demand > s.served).then_some(now);
            self.worker.store(s.generation, Ordering::Release);
            new_generation = Some(s.generation);
            true
        });
        if let Some(generation) = new_generation {
            if seen != 0 {
                warn!(
                    generation,
                    "the refresh task stopped answering; started another in this runtime"
                );
            } else if generation > 1 {
                info!(
                    generation,
                    "the refresh task was gone (its runtime ended?); started another in this runtime"
                );
            }
            Worker::spawn(&runtime, Arc::downgrade(self), generation);
        }
    }

    /// How long a fetch can run in a task that is driven: two credentials loads and two
    /// token requests (the `invalid_client` reload path), each time-boxed, plus slack.
    fn in_flight_patience(&self) -> Duration {
        let credentials = self.config.credentials_timeout.saturating_mul(2);
        credentials
            .saturating_add(REQUEST_BOUND.saturating_mul(2))
            .saturating_add(STALL_AFTER)
    }

    /// Waits (up to the wait deadline) for a usable token when none is held.
    pub(crate) async fn wait_for_token(self: &Arc<Self>) -> Result<AccessToken, Error> {
        clock::notice_virtual_time();
        let started = Instant::now();
        let deadline = clock::saturating_add(started, self.config.wait_timeout);
        self.wait_for_token_until(started, deadline).await
    }

    /// As [`wait_for_token`](Self::wait_for_token), for a caller whose wait began at
    /// `started` and ends at `deadline`.
    async fn wait_for_token_until(
        self: &Arc<Self>,
        started: Instant,
        deadline: Instant,
    ) -> Result<AccessToken, Error> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        // Subscribe before looking, so no change can slip between the two.
        let mut rx = self.state.subscribe();
        let mut target: Option<u64> = None;
        loop {
            if let Some(token) = self.usable() {
                return Ok(token);
            }
            self.ensure_worker();
            let now = Instant::now();
            let mut verdict = None;
            let mut wake = deadline;
            self.state.send_if_modified(|s| {
                rx.mark_unchanged();
                let earliest = s
                    .earliest_on_demand(self.config.min_fetch_interval)
                    .unwrap_or(now);
                if let Some(t) = target
                    && s.done >= t
                {
                    // The attempt this caller waited for is over, and gave no usable token.
                    target = None;
                    if let Some(e) = &s.last_error
                        && (!e.is_retryable() || earliest > deadline)
                    {
                        verdict = Some(e.clone());
                        return false;
                    }
                }
                if target.is_none() && s.in_flight() {
                    target = Some(s.started);
                }
                if s.in_flight() && target == Some(s.started) {
                    // Wait for the attempt under way. Once it has run longer than a fetch in
                    // a driven task can (every step of it is time-boxed), say so: a task that
                    // does not acknowledge that (its runtime is no longer driven) counts as
                    // stalled and is replaced. Not sooner: a busy runtime is slow to answer,
                    // and a second fetch would be waste.
                    let patient_until = s
                        .last_attempt
                        .map_or(now, |t| clock::saturating_add(t, self.in_flight_patience()));
                    if patient_until > now {
                        wake = wake.min(patient_until);
                    } else if s.demand == s.served {
                        s.demand += 1;
                        s.demand_at = Some(now);
                        return true;
                    }
                }
                if target.is_none() {
                    if let Some(e) = &s.last_error
                        && ((!e.is_retryable() && earliest > now) || earliest > deadline)
                    {
                        // A permanent failure is not tried again within the rate bound, and
                        // a retry past this caller's deadline is not worth waiting for.
                        verdict = Some(e.clone());
                        return false;
                    }
                    target = Some(s.started + 1);
                    if s.demand == s.served {
                        s.demand += 1;
                        s.demand_at = Some(now);
                        return true;
                    }
                }
                if let Some(at) = s.demand_at
                    && s.demand > s.acked
                {
                    // Look again when the refresh task would count as stuck (never in the past:
                    // a task that could not be started must not make this loop spin).
                    let stuck_at = clock::saturating_add(at, STALL_AFTER);
                    if stuck_at > now {
                        wake = wake.min(stuck_at);
                    }
                }
                false
            });
            if let Some(error) = verdict {
                return Err(error);
            }
            if tokio::time::timeout_at(wake, rx.changed()).await.is_err()
                && Instant::now() >= deadline
            {
                if let Some(token) = self.usable() {
                    return Ok(token);
                }
                let s = self.state.borrow();
                return Err(s.last_error.clone().unwrap_or(Error::WaitTimedOut {
                    waited: started.elapsed(),
                }));
            }
        }
    }

    /// A 401 for `token`. See [`TokenCache::invalidate`](crate::TokenCache::invalidate).
    pub(crate) fn invalidate(&self, token: &AccessToken) -> bool {
        let Some(p) = self.current.load_full() else {
            return false;
        };
        if p.token.id() != token.id() {
            return false;
        }
        let now = Instant::now();
        let window = suspect_after(token.lifetime());
        let mut acted = false;
        let mut withdraw = false;
        let mut pause = Duration::ZERO;
        self.state.send_if_modified(|s| {
            // A run of rejections: each within the suspect window of the one before.
            let in_run = s
                .last_rejection
                .is_some_and(|t| now.saturating_duration_since(t) < window);
            if !in_run {
                s.rejection_streak = 0;
            }
            s.last_rejection = Some(now);
            if s.rejected == Some(token.id()) {
                return false; // one report per token
            }
            s.rejected = Some(token.id());
            acted = true;
            // The first rejection of a run withdraws a token in use long enough to be
            // suspect (it was probably revoked); a fresh one keeps being served. Later ones
            // are more likely not about tokens at all: keep serving, refresh ever more slowly.
            let age = now.saturating_duration_since(token.issued_at());
            withdraw = s.rejection_streak == 0 && age >= window;
            if s.rejection_streak > 0 {
                pause = storm_pause(self.config.min_fetch_interval, s.rejection_streak);
            }
            s.rejection_streak = s.rejection_streak.saturating_add(1);
            let at = clock::saturating_add(now, pause);
            s.refresh_requested = Some(s.refresh_requested.map_or(at, |r| r.min(at)));
            true
        });
        if acted {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
            if withdraw {
                self.withdraw(&p, "the API rejected it");
                info!(
                    token_id = token.id(),
                    "token rejected (401); withdrawn, refreshing"
                );
            } else if pause.is_zero() {
                info!(
                    token_id = token.id(),
                    "a fresh token was rejected (401); still serving it while refreshing"
                );
            } else {
                warn!(
                    token_id = token.id(),
                    pause_ms = pause.as_millis() as u64,
                    "tokens keep being rejected (401s not about the token?); still serving, refreshing later"
                );
            }
        }
        acted
    }

    /// The token to replay a request rejected with `rejected`: the one the refresh that its
    /// rejection started brings, if that refresh is under way now; otherwise the usable one.
    pub(crate) async fn replacement(
        self: &Arc<Self>,
        rejected: &AccessToken,
    ) -> Result<AccessToken, Error> {
        let now = Instant::now();
        let deadline = clock::saturating_add(now, self.config.wait_timeout);
        let mut rx = self.state.subscribe();
        let target = {
            let s = rx.borrow_and_update();
            let pending = s.rejected == Some(rejected.id())
                && (s.in_flight() || s.refresh_requested.is_some_and(|at| at <= now));
            pending.then(|| s.started + u64::from(!s.in_flight()))
        };
        if let Some(target) = target {
            self.ensure_worker();
            loop {
                if let Some(token) = self.usable()
                    && token.id() != rejected.id()
                {
                    return Ok(token);
                }
                if rx.borrow_and_update().done >= target
                    || tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }
        // One deadline for the whole replay: what is left of it after waiting for the refresh.
        match self.cached() {
            Some(token) => Ok(token),
            None => self.wait_for_token_until(now, deadline).await,
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let token = self.usable();
        let s = self.state.borrow();
        CacheStats {
            fetches: s.started,
            fetch_failures: self.failures_total.load(Ordering::Relaxed),
            consecutive_failures: s.failures,
            hits: self.hits.sum(),
            waits: self.waits.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            token_age: token.as_ref().map(|t| t.issued_at().elapsed()),
            token_remaining: token.as_ref().map(AccessToken::remaining),
            last_error: s.last_error.as_ref().map(|e| crate::error::error_chain(e)),
        }
    }
}

/// Clears the engine's worker generation when the task ends, however it ends (returned,
/// panicked, or dropped with its runtime), and wakes waiting callers so one restarts it. A
/// task dropped before it ever ran (a runtime shutting down drops new tasks at once) wakes
/// nobody: a waiter would only start another into the same runtime, again and again.
pub(crate) struct Liveness {
    pub(crate) engine: Weak<Engine>,
    pub(crate) generation: u64,
    pub(crate) ran: bool,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.upgrade()
            && engine
                .worker
                .compare_exchange(self.generation, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            && self.ran
        {
            engine.state.send_modify(|_| {});
        }
    }
}
