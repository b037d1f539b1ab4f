//! The refresh task: the one place a cache fetches tokens, so one fetch at a time.
//!
//! It holds the engine weakly (a strong reference only while fetching), so dropping the last
//! `TokenCache` handle drops the engine and its `watch` sender, which ends the task. Its
//! [`Liveness`] guard tells callers when it is gone for any other reason.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use super::engine::{Engine, Liveness, Published, State};
use super::schedule::{RenewalTimes, plan};
use crate::clock;
use crate::credentials::ClientCredentials;
use crate::error::error_chain;
use crate::error::{CredentialsError, Error};
use crate::retry::{exponential_cap, full_jitter};
use crate::token::AccessToken;

enum Step {
    /// Fetch: attempt number `n` (`State::started`).
    Fetch(u64),
    Wait(Option<Instant>),
}

pub(crate) struct Worker {
    engine: Weak<Engine>,
    rx: watch::Receiver<State>,
    generation: u64,
    renewals: RenewalTimes,
    last_lifetime: Option<Duration>,
    liveness: Liveness,
}

impl Worker {
    pub(crate) fn spawn(runtime: &tokio::runtime::Handle, engine: Weak<Engine>, generation: u64) {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        let span = tracing::info_span!(
            "token_cache",
            environment = %strong.environment,
            scope = strong.scopes.as_str(),
            client_id = tracing::field::Empty,
        );
        let rx = strong.state.subscribe();
        drop(strong);
        let worker = Worker {
            engine: engine.clone(),
            rx,
            generation,
            renewals: RenewalTimes::default(),
            last_lifetime: None,
            liveness: Liveness {
                engine,
                generation,
                ran: false,
            },
        };
        runtime.spawn(worker.run().instrument(span));
    }

    async fn run(mut self) {
        self.liveness.ran = true;
        loop {
            let Some(engine) = self.engine.upgrade() else {
                return; // every handle is gone
            };
            if engine.worker.load(Ordering::Acquire) != self.generation {
                return; // a caller replaced this task
            }
            match Self::next_step(&engine) {
                Step::Fetch(attempt) => self.fetch(engine, attempt).await,
                Step::Wait(until) => {
                    drop(engine);
                    tokio::select! {
                        () = sleep_until_opt(until) => {}
                        changed = self.rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    /// Withdraws an expired token, acknowledges demand, and decides: fetch now, or wait
    /// until when.
    fn next_step(engine: &Engine) -> Step {
        clock::notice_virtual_time();
        let now = Instant::now();
        let mut current = engine.current.load_full();
        if let Some(p) = &current
            && p.usable_until.passed_at(now)
        {
            engine.withdraw(p, "its hard margin passed");
            current = None;
        }
        let min_interval = engine.config.min_fetch_interval;
        let mut step = Step::Wait(current.as_ref().map(|p| p.usable_until.mono()));
        engine.state.send_if_modified(|s| {
            s.acked = s.demand;
            s.demand_at = None;
            let due = match &current {
                // A token is held: refresh at the soft margin, or on the failure backoff, or
                // when a rejection asked for it.
                Some(p) => {
                    // The soft margin on either clock (after a suspend the wall clock is
                    // ahead of the monotonic one), unless a failed refresh backs off.
                    let soft = if p.refresh_at.passed_at(now) {
                        now
                    } else {
                        p.refresh_at.mono()
                    };
                    let due = s.retry_at.unwrap_or(soft);
                    Some(s.refresh_requested.map_or(due, |r| r.min(due)))
                }
                // None is held: fetch for a waiting caller, a rejection, or a retry, but not
                // after a permanent failure until a caller asks again.
                None if s.demand > s.served => Some(s.backoff_until.map_or(now, |b| b.max(now))),
                None => match (s.refresh_requested, s.halted) {
                    (Some(r), _) => Some(r),
                    (None, true) => None,
                    // A token lapsed without a refresh (this task ran late, or a caller
                    // withdrew it first): the refresh is overdue.
                    (None, false) if s.last_error.is_none() && s.last_published.is_some() => {
                        Some(now)
                    }
                    (None, false) => s.retry_at,
                },
            };
            let Some(due) = due else {
                return false;
            };
            if due <= now
                && let Some(p) = &current
            {
                p.refresh_taken.store(true, Ordering::Relaxed);
            }
            let start = s.earliest(min_interval).map_or(due, |e| e.max(due));
            if start > now {
                let withdraw = current.as_ref().map(|p| p.usable_until.mono());
                step = Step::Wait(Some(withdraw.map_or(start, |w| w.min(start))));
                return false;
            }
            s.started += 1;
            s.served = s.demand;
            s.last_attempt = Some(now);
            s.refresh_requested = None;
            s.retry_at = None;
            step = Step::Fetch(s.started);
            true // waiting callers see the attempt in flight
        });
        step
    }

    async fn fetch(&mut self, engine: Arc<Engine>, attempt: u64) {
        // If this future is dropped mid-fetch (its runtime shut down, a panic), the attempt
        // must still end, or callers would wait for it forever.
        let mut abandoned = Abandoned {
            engine: &engine,
            attempt,
            armed: true,
        };
        let started = Instant::now();
        debug!("requesting a token");
        // Boxed: the request's large future exists only while fetching, so an idle cache
        // (most of a keyed cache's entries, most of the time) stays small.
        let mut work = Box::pin(fetch_token(engine.clone()));
        let mut withdraw_at = engine
            .current
            .load()
            .as_ref()
            .map(|p| p.usable_until.mono());
        let result = loop {
            tokio::select! {
                out = &mut work => break out,
                // The hard margin can pass during a slow fetch.
                () = sleep_until_opt(withdraw_at) => {
                    withdraw_at = None;
                    engine.usable();
                }
                _ = self.rx.changed() => {
                    engine.state.send_if_modified(|s| {
                        s.acked = s.demand;
                        s.demand_at = None;
                        false
                    });
                }
            }
        };
        let took = started.elapsed();
        abandoned.armed = false;
        match result {
            Ok(token) => self.on_success(&engine, attempt, token, took),
            Err(e) => Self::on_failure(&engine, attempt, e),
        }
    }

    fn on_success(&mut self, engine: &Engine, attempt: u64, token: AccessToken, took: Duration) {
        self.renewals.record(took);
        let lifetime = token.lifetime();
        let plan = plan(
            lifetime,
            engine.config.margins,
            self.renewals.max(),
            fastrand::f64(),
        );
        if Instant::now() >= clock::saturating_add(token.issued_at(), plan.usable_for) {
            return Self::on_failure(engine, attempt, Error::SlowFetch { took, lifetime });
        }
        if lifetime < Duration::from_secs(60) && self.last_lifetime != Some(lifetime) {
            warn!(
                lifetime_s = lifetime.as_secs(),
                refresh_after_ms = plan.refresh_after.as_millis() as u64,
                "the token endpoint issues unusually short-lived tokens; fetches are rate limited to one per {:?}",
                engine.config.min_fetch_interval
            );
        }
        self.last_lifetime = Some(lifetime);
        info!(
            token_id = token.id(),
            lifetime_s = lifetime.as_secs(),
            granted_scope = token.granted_scope().unwrap_or(""),
            took_ms = took.as_millis() as u64,
            "token fetched"
        );
        let token = match &engine.key {
            Some(key) => token.with_key(key.clone()),
            None => token,
        };
        engine.state.send_modify(|s| {
            // A superseded attempt (its task was replaced, a newer attempt started) only
            // fills a gap: it never replaces a token or resets the newer attempt's state.
            if !s.finish(attempt) {
                if engine.current.load().is_none() {
                    s.last_published = Some(token.id());
                    engine.current.store(Some(Arc::new(Published::new(
                        token,
                        plan.refresh_after,
                        plan.usable_for,
                    ))));
                }
                return;
            }
            s.last_published = Some(token.id());
            engine.current.store(Some(Arc::new(Published::new(
                token,
                plan.refresh_after,
                plan.usable_for,
            ))));
            s.last_error = None;
            s.failures = 0;
            s.retry_at = None;
            s.backoff_until = None;
            s.halted = false;
        });
    }

    fn on_failure(engine: &Engine, attempt: u64, error: Error) {
        engine.failures_total.fetch_add(1, Ordering::Relaxed);
        let cfg = engine.config;
        let held = engine.current.load_full();
        let now = Instant::now();
        let mut retry_in = None;
        let mut superseded = false;
        engine.state.send_modify(|s| {
            if !s.finish(attempt) {
                superseded = true; // the newer attempt's outcome is what counts
                return;
            }
            s.failures = s.failures.saturating_add(1);
            let backoff = full_jitter(exponential_cap(
                cfg.backoff_initial,
                cfg.backoff_max,
                s.failures,
            ));
            s.backoff_until = Some(clock::saturating_add(now, backoff));
            let mut delay = backoff;
            // A server's hint is honoured up to the longest backoff: a `Retry-After: 3600`
            // must not stall refreshing for an hour.
            if let Some(after) = error.retry_after() {
                delay = delay.max(after.min(cfg.backoff_max));
            }
            if let Some(p) = &held {
                // Retry while the token is still usable, however long the backoff.
                let left = p.usable_until.remaining();
                delay = delay.min((left / 2).max(cfg.min_fetch_interval));
                s.halted = false;
                s.retry_at = Some(clock::saturating_add(now, delay));
            } else if error.is_retryable() {
                s.halted = false;
                s.retry_at = Some(clock::saturating_add(now, delay));
            } else {
                // Permanent, and nothing to serve: stop until a caller asks again.
                s.halted = true;
                s.retry_at = None;
            }
            retry_in = s.retry_at.map(|at| at.saturating_duration_since(now));
            s.last_error = Some(error.clone());
        });
        let chain = error_chain(&error);
        if superseded {
            debug!(kind = error.kind_name(), error = %chain, "a superseded token fetch failed");
            return;
        }
        let retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
        if held.is_some() {
            warn!(kind = error.kind_name(), error = %chain, retry_in_ms, "token refresh failed; still serving the current, valid token");
        } else {
            error!(kind = error.kind_name(), error = %chain, retry_in_ms, "token fetch failed and no valid token is cached");
        }
    }
}

/// Ends an attempt whose future was dropped before it finished: waiting callers look again
/// (and ask for a new one), and whichever task runs next fetches at once.
struct Abandoned<'a> {
    engine: &'a Engine,
    attempt: u64,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let now = Instant::now();
        self.engine.state.send_modify(|s| {
            if s.finish(self.attempt) {
                // Whatever halted the cache before, this attempt was asked for.
                s.halted = false;
                if s.retry_at.is_none() {
                    s.retry_at = Some(now);
                }
            }
        });
        warn!(
            attempt = self.attempt,
            "a token fetch was abandoned mid-flight (its runtime shut down?); the next refresh task fetches again"
        );
    }
}

/// One fetch: credentials, the request, and on `invalid_client` one reload, and one retry if
/// the reload brought different credentials.
async fn fetch_token(engine: Arc<Engine>) -> Result<AccessToken, Error> {
    let creds = load_credentials(&engine, false).await?;
    tracing::Span::current().record("client_id", creds.client_id());
    let first = engine
        .client
        .request_token_once(&engine.environment, &creds, &engine.scopes)
        .await;
    match first {
        Err(e) if e.is_invalid_client() => {
            let fresh = load_credentials(&engine, true).await?;
            if fresh.same_as(&creds) {
                debug!(
                    "invalid_client, and reloading the credentials gave the same ones: not retrying"
                );
                return Err(e);
            }
            warn!(
                "invalid_client: the credentials source had new credentials (a rotation?); retrying once with them"
            );
            engine
                .client
                .request_token_once(&engine.environment, &fresh, &engine.scopes)
                .await
        }
        other => other,
    }
}

/// Asks the credentials source, time-boxed, and survives it panicking.
async fn load_credentials(engine: &Engine, reload: bool) -> Result<ClientCredentials, Error> {
    let panicked = || {
        Error::Credentials(CredentialsError::retryable(
            "the credentials source panicked (a bug in it); retrying with backoff",
        ))
    };
    let source = &engine.source;
    let Ok(call) = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if reload {
            source.reload()
        } else {
            source.credentials()
        }
    })) else {
        return Err(panicked());
    };
    let limit = engine.config.credentials_timeout;
    match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
        Err(_) => Err(Error::Credentials(CredentialsError::retryable(format!(
            "the credentials source did not answer within {} ms",
            limit.as_millis()
        )))),
        Ok(Err(_)) => Err(panicked()),
        Ok(Ok(result)) => result.map_err(Error::Credentials),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
