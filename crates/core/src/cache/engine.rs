//! The shared state of one cache and its refresh task.
//!
//! Exactly one task per cache fetches tokens, so there is never more than one request in
//! flight. It publishes a usable token through an `ArcSwapOption` that callers read without
//! locks, and its progress through a `watch` channel that waiting callers follow. Timers in the
//! task move a token through its life: at the soft margin the task refreshes in the background
//! while the old token is still handed out; at the hard margin the token is withdrawn. The
//! task holds the engine but not the handles; when the last handle drops, it signals
//! `shutdown` and the task ends. Tokens point back at their engine weakly, so a token can
//! invalidate itself without the handle.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, warn};

use super::schedule::{Margins, RenewalTimes, plan};
use super::stats::{CacheStats, StripedCounter};
use crate::client::TokenClient;
use crate::environment::Environment;
use crate::error::Error;
use crate::retry::{exponential_cap, full_jitter};
use crate::scope::Scopes;
use crate::source::CredentialsSource;
use crate::token::{AccessToken, Inner};

/// Settings of a cache's refresh engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) margins: Margins,
    pub(crate) wait_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) min_fetch_interval: Duration,
}

/// What waiting callers follow.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    pub(crate) in_flight: bool,
    pub(crate) error: Option<Error>,
    pub(crate) next_attempt: Option<Instant>,
}

pub(crate) struct Engine {
    pub(crate) current: ArcSwapOption<Inner>,
    writer: Mutex<()>,
    pub(crate) status: watch::Sender<Status>,
    /// Notified when a token is invalidated.
    wake: Notify,
    /// Notified once, when the last handle drops.
    pub(crate) shutdown: Notify,
    pub(crate) closed: std::sync::atomic::AtomicBool,
    pub(crate) client: TokenClient,
    pub(crate) source: Arc<dyn CredentialsSource>,
    pub(crate) environment: Environment,
    pub(crate) scopes: Scopes,
    pub(crate) config: Config,
    pub(crate) hits: StripedCounter,
    pub(crate) waits: AtomicU64,
    fetches: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    invalidations: AtomicU64,
}

impl Engine {
    pub(crate) fn new(
        client: TokenClient,
        source: Arc<dyn CredentialsSource>,
        environment: Environment,
        scopes: Scopes,
        config: Config,
    ) -> Self {
        Engine {
            current: ArcSwapOption::empty(),
            writer: Mutex::new(()),
            status: watch::Sender::new(Status::default()),
            wake: Notify::new(),
            shutdown: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            client,
            source,
            environment,
            scopes,
            config,
            hits: StripedCounter::default(),
            waits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn load(&self) -> Option<AccessToken> {
        self.current.load_full().map(AccessToken::from_shared)
    }

    /// Withdraws `token` if it is still the one handed out. Returns whether it was.
    pub(crate) fn withdraw(&self, token: &AccessToken) -> bool {
        let _w = self.write_lock();
        let is_current = self
            .current
            .load()
            .as_ref()
            .is_some_and(|cur| Arc::ptr_eq(cur, token.shared()));
        if is_current {
            self.current.store(None);
        }
        is_current
    }

    /// Withdraws `token` if it is the one handed out, and wakes the task to refresh.
    pub(crate) fn invalidate(&self, token: &AccessToken) -> bool {
        if !self.withdraw(token) {
            return false;
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        info!(token_id = token.id(), "token invalidated; refreshing");
        self.wake.notify_one();
        true
    }

    fn publish(&self, token: &AccessToken) {
        {
            let _w = self.write_lock();
            self.current.store(Some(token.shared().clone()));
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.in_flight = false;
            s.error = None;
            s.next_attempt = None;
        });
    }

    fn publish_failure(&self, error: Error, next_attempt: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.in_flight = false;
            s.error = Some(error);
            s.next_attempt = Some(next_attempt);
        });
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let token = self.load();
        let status = self.status.borrow();
        CacheStats {
            fetches: self.fetches.load(Ordering::Relaxed),
            fetch_failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            hits: self.hits.sum(),
            waits: self.waits.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            token_age: token.as_ref().map(|t| t.issued_at().elapsed()),
            token_remaining: token.as_ref().map(AccessToken::remaining),
            last_error: status.error.as_ref().map(ToString::to_string),
        }
    }

    /// One fetch: credentials, the request, and on `invalid_client` one reload and one retry.
    async fn fetch(&self) -> Result<AccessToken, Error> {
        let creds = self
            .source
            .credentials()
            .await
            .map_err(Error::Credentials)?;
        tracing::Span::current().record("client_id", creds.client_id());
        let first = self
            .client
            .request_token_once(&self.environment, &creds, &self.scopes)
            .await;
        match first {
            Err(e) if e.is_invalid_client() => {
                warn!(
                    "invalid_client: reloading the credentials (the secret may have been rotated) and retrying once"
                );
                let creds = self.source.reload().await.map_err(Error::Credentials)?;
                self.client
                    .request_token_once(&self.environment, &creds, &self.scopes)
                    .await
            }
            other => other,
        }
    }
}

enum Woke {
    /// The wait ran out.
    Elapsed,
    /// A caller invalidated the token handed out.
    Invalidated,
    /// Every handle was dropped.
    Shutdown,
}

/// The refresh task.
pub(crate) struct Worker {
    engine: Arc<Engine>,
    /// When the token handed out must be withdrawn (its hard margin), and which one it is.
    withdraw_at: Option<(Instant, AccessToken)>,
    failures: u32,
    last_fetch: Option<Instant>,
    renewals: RenewalTimes,
    last_lifetime: Option<Duration>,
}

impl Worker {
    pub(crate) fn spawn(engine: Arc<Engine>) {
        let span = tracing::info_span!(
            "token_cache",
            environment = %engine.environment,
            scope = engine.scopes.as_str(),
            client_id = tracing::field::Empty,
        );
        let worker = Worker {
            engine,
            withdraw_at: None,
            failures: 0,
            last_fetch: None,
            renewals: RenewalTimes::default(),
            last_lifetime: None,
        };
        tokio::spawn(worker.run().instrument(span));
    }

    async fn run(mut self) {
        loop {
            if self.engine.closed.load(Ordering::Acquire) {
                return;
            }
            // Bound the fetch rate, whatever the lifetimes and invalidations.
            if let Some(last) = self.last_fetch {
                let earliest = last + self.engine.config.min_fetch_interval;
                if let Woke::Shutdown = self.pause_until(earliest, false).await {
                    return;
                }
            }
            let started = Instant::now();
            self.last_fetch = Some(started);
            self.engine.fetches.fetch_add(1, Ordering::Relaxed);
            self.engine.status.send_modify(|s| s.in_flight = true);
            debug!("requesting a token");
            let engine = self.engine.clone();
            // Boxed: the request's large future exists only while fetching, so an idle cache
            // (most of a keyed cache's entries, most of the time) stays small.
            let Some(result) = self.with_housekeeping(Box::pin(engine.fetch())).await else {
                return;
            };
            let next = match result {
                Ok(token) => self.on_success(token, started.elapsed()),
                Err(e) => self.on_failure(e),
            };
            let (until, wakeable) = next;
            if let Woke::Shutdown = self.pause_until(until, wakeable).await {
                return;
            }
        }
    }

    /// Publishes `token`; returns when to refresh it.
    fn on_success(&mut self, token: AccessToken, took: Duration) -> (Instant, bool) {
        self.failures = 0;
        self.renewals.record(took);
        let lifetime = token.lifetime();
        let plan = plan(
            lifetime,
            self.engine.config.margins,
            self.renewals.max(),
            fastrand::f64(),
        );
        if lifetime < Duration::from_secs(60) && self.last_lifetime != Some(lifetime) {
            warn!(
                lifetime_s = lifetime.as_secs(),
                refresh_after_ms = plan.refresh_after.as_millis() as u64,
                "the token endpoint issues unusually short-lived tokens; refreshes are rate limited to one per {:?}",
                self.engine.config.min_fetch_interval
            );
        }
        self.last_lifetime = Some(lifetime);
        info!(
            lifetime_s = lifetime.as_secs(),
            granted_scope = token.granted_scope().unwrap_or(""),
            took_ms = took.as_millis() as u64,
            "token fetched"
        );
        self.withdraw_at = Some((token.issued_at() + plan.usable_for, token.clone()));
        token.set_origin(Arc::downgrade(&self.engine));
        self.engine.publish(&token);
        (token.issued_at() + plan.refresh_after, true)
    }

    /// Publishes the failure; returns when to try again.
    fn on_failure(&mut self, error: Error) -> (Instant, bool) {
        self.failures = self.failures.saturating_add(1);
        let cfg = &self.engine.config;
        let mut delay = full_jitter(exponential_cap(
            cfg.backoff_initial,
            cfg.backoff_max,
            self.failures,
        ));
        if let Some(after) = error.retry_after() {
            delay = delay.max(after);
        }
        let next = Instant::now() + delay;
        let serving = self.engine.current.load().is_some();
        if serving {
            warn!(
                kind = error.kind_name(),
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "token refresh failed; still serving the current, valid token"
            );
        } else {
            error!(
                kind = error.kind_name(),
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "token fetch failed and no valid token is cached"
            );
        }
        self.engine.publish_failure(error, next);
        (next, false)
    }

    /// Runs `work` while still withdrawing an expiring token and watching for shutdown.
    /// `None` means shutdown.
    async fn with_housekeeping<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        loop {
            let withdraw = self.withdraw_at.as_ref().map(|(at, _)| *at);
            tokio::select! {
                out = &mut work => return Some(out),
                () = sleep_until_opt(withdraw) => self.withdraw_expiring(),
                () = self.engine.wake.notified() => {}
                () = self.engine.shutdown.notified() => return None,
            }
        }
    }

    /// Waits until `until`; an invalidation ends the wait early when `wakeable`.
    async fn pause_until(&mut self, until: Instant, wakeable: bool) -> Woke {
        loop {
            let withdraw = self.withdraw_at.as_ref().map(|(at, _)| *at);
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Woke::Elapsed,
                () = sleep_until_opt(withdraw) => self.withdraw_expiring(),
                () = self.engine.shutdown.notified() => return Woke::Shutdown,
                // A wake only matters if the token really is gone (stale wakes are ignored).
                () = self.engine.wake.notified() => {
                    if wakeable && self.engine.current.load().is_none() {
                        return Woke::Invalidated;
                    }
                }
            }
        }
    }

    fn withdraw_expiring(&mut self) {
        if let Some((_, token)) = self.withdraw_at.take()
            && self.engine.withdraw(&token)
        {
            warn!(
                remaining_ms = token.remaining().as_millis() as u64,
                "withdrew the token at its hard margin: callers wait for a fresh one"
            );
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
