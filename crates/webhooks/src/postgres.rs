//! [`PostgresLedger`]: the webhook event ledger in PostgreSQL, shared by a fleet.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use truelayer_auth_postgres::{Schema, Session, Settings};

use crate::ledger::{Begin, EventLedger, LedgerError, LedgerFuture};

pub use truelayer_auth_postgres::TlsMode;

/// The schema: its migrations, in order (migration `n`, from 0, takes the schema from
/// version `n` to `n + 1`; a released migration is never edited, a change is a new one),
/// listed as applied in `tlauth_webhook_schema_migrations`.
const SCHEMA: Schema = Schema {
    name: "webhook ledger",
    migrations_table: "tlauth_webhook_schema_migrations",
    table: "tlauth_webhook_events",
    // The advisory lock (one bigint key) that serialises migrations: "TLW1" then "MIGR".
    lock: 0x544C_5731_4D49_4752,
    migrations: &[
        // 1: one row per event; claim numbers from a sequence, so none repeats.
        "CREATE SEQUENCE tlauth_webhook_claims AS bigint MINVALUE 1;
     CREATE TABLE tlauth_webhook_events (
        event_id text PRIMARY KEY CHECK (octet_length(event_id) <= 256),
        status text NOT NULL CHECK (status IN ('claimed', 'done')),
        claim bigint NOT NULL CHECK (claim >= 1),
        claimed_at timestamptz NOT NULL,
        lease_expires timestamptz NOT NULL,
        completed_at timestamptz,
        CHECK ((status = 'done') = (completed_at IS NOT NULL))
     );
     CREATE INDEX tlauth_webhook_events_forget
        ON tlauth_webhook_events ((coalesce(completed_at, lease_expires)));",
    ],
};

/// The longest `event_id` kept (TrueLayer's are UUIDs, 36 bytes); a longer one is a
/// [`LedgerError`] from [`PostgresLedger`]'s `begin`.
///
/// ```
/// assert!("b0f2b4a2-8f7e-4a7c-9c4e-1d2f3a4b5c6d".len() <= truelayer_auth_webhooks::MAX_EVENT_ID_BYTES);
/// ```
pub const MAX_EVENT_ID_BYTES: usize = 256;

const DEFAULT_LEASE: Duration = Duration::from_secs(60);
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_POOL_SIZE: usize = 8;
const DEFAULT_PRUNE_EVERY: u64 = 1000;
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows one pruning statement deletes at most, so none holds locks for long.
const PRUNE_BATCH: i64 = 10_000;

const BEGIN: &str = "INSERT INTO tlauth_webhook_events AS e \
        (event_id, status, claim, claimed_at, lease_expires) \
     VALUES ($1, 'claimed', nextval('tlauth_webhook_claims'), now(), \
        now() + $2::bigint * interval '1 millisecond') \
     ON CONFLICT (event_id) DO UPDATE \
        SET claim = excluded.claim, claimed_at = excluded.claimed_at, \
            lease_expires = excluded.lease_expires \
        WHERE e.status = 'claimed' AND e.lease_expires <= now() \
     RETURNING claim";

const STATUS: &str = "SELECT status = 'done' FROM tlauth_webhook_events WHERE event_id = $1";

const COMPLETE: &str = "UPDATE tlauth_webhook_events \
     SET status = 'done', completed_at = now() \
     WHERE event_id = $1 AND claim = $2 AND status = 'claimed'";

const RELEASE: &str = "DELETE FROM tlauth_webhook_events \
     WHERE event_id = $1 AND claim = $2 AND status = 'claimed'";

/// The outer condition is checked again on a row changed meanwhile (a claim taken over).
const PRUNE: &str = "DELETE FROM tlauth_webhook_events \
     WHERE coalesce(completed_at, lease_expires) < now() - $1::bigint * interval '1 millisecond' \
       AND event_id IN (SELECT event_id FROM tlauth_webhook_events \
         WHERE coalesce(completed_at, lease_expires) < now() - $1::bigint * interval '1 millisecond' \
         LIMIT $2)";

/// An [`EventLedger`] in PostgreSQL, for a fleet: every replica connected to the same
/// database hands each `event_id` to one handler run at a time, and to none once one run
/// succeeded, whichever replica TrueLayer's retries reach.
///
/// The semantics are [`InMemoryLedger`](crate::InMemoryLedger)'s, with the database's clock
/// and a retention period instead of a capacity:
///
/// - [`begin`](EventLedger::begin) claims with one statement (`INSERT ... ON CONFLICT
///   (event_id) DO UPDATE ... WHERE status = 'claimed' AND lease_expires <= now()
///   RETURNING claim`): [`Begin::New`] with a claim number from a sequence (never repeated)
///   for an event not seen, released, or whose claim's lease ran out; else [`Begin::Done`]
///   or [`Begin::InProgress`]. Leases are timed by the server's `now()`, so replicas'
///   clocks do not matter.
/// - [`complete`](EventLedger::complete) marks the event done only if `claim` still holds it
///   (even past its lease, if no one took it over), as the in-memory ledger does.
/// - [`release`](EventLedger::release) deletes the claim (only `claim`'s) in a task spawned
///   on the current tokio runtime, so it never blocks; outside a runtime it is left to the
///   lease. [`flush`](Self::flush) waits for those tasks.
/// - **Retention**: a handled event is remembered for the retention period (7 days unless
///   set; TrueLayer retries for up to 72 hours), then pruned; so is a claim abandoned that
///   long after its lease. Every [`prune_every`](PostgresLedgerBuilder::prune_every) begins
///   a replica prunes a batch in the background; [`prune`](Self::prune) prunes all.
/// - **Versioned schema**: `tlauth_webhook_schema_migrations` lists the migrations applied
///   to `tlauth_webhook_events` (and the sequence `tlauth_webhook_claims`);
///   [`connect`](PostgresLedgerBuilder::connect) applies the missing ones in one
///   transaction under an advisory lock, and refuses a database migrated by a newer library.
/// - An `event_id` longer than [`MAX_EVENT_ID_BYTES`], or with a NUL character, is refused
///   with a [`LedgerError`] (the layer answers 503); TrueLayer's are UUIDs.
/// - [`complete`](EventLedger::complete) runs in a task of its own, so a caller that gives up
///   (a client that hung up) does not cancel it half-way.
///
/// TLS as the connections store does it: rustls with aws-lc-rs, required off loopback
/// unless the URL's `sslmode=disable` or [`TlsMode::Disable`] asks for plain text (logged
/// as a warning), the certificate and host name verified. `Debug` shows the hosts and the
/// database name only, never a password.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use truelayer_auth_webhooks::{PostgresLedger, VerifyWebhooksLayer, WebhookVerifier};
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let ledger = PostgresLedger::builder("postgres://tlauth_webhooks@db.internal/app")
///     .lease(Duration::from_secs(30))
///     .retention(Duration::from_secs(7 * 24 * 3600))
///     .pool_size(8)
///     .connect()
///     .await?;
/// let layer = VerifyWebhooksLayer::new(WebhookVerifier::builder().build()?).ledger(ledger);
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresLedger {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    lease: Duration,
    retention: Duration,
    prune_every: u64,
    target: String,
    begins: AtomicU64,
    pruning: AtomicBool,
    /// Background tasks (releases, prunes) not finished yet.
    pending: AtomicUsize,
    idle: Notify,
}

impl fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("target", &self.inner.target)
            .field("lease", &self.inner.lease)
            .field("retention", &self.inner.retention)
            .finish_non_exhaustive()
    }
}

/// Connects a [`PostgresLedger`] with settings: from [`PostgresLedger::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use truelayer_auth_webhooks::PostgresLedger;
///
/// # async fn f() -> Result<(), truelayer_auth_webhooks::LedgerError> {
/// let ledger = PostgresLedger::builder("postgres://app@db.internal/app")
///     .lease(Duration::from_secs(30))
///     .retention(Duration::from_secs(7 * 24 * 3600))
///     .pool_size(8)
///     .prune_every(1000)
///     .connect()
///     .await?;
/// # let _ = ledger;
/// # Ok(()) }
/// ```
pub struct PostgresLedgerBuilder {
    url: SecretString,
    lease: Duration,
    retention: Duration,
    pool_size: usize,
    prune_every: u64,
    statement_timeout: Duration,
    tls_mode: Option<TlsMode>,
    tls_config: Option<rustls::ClientConfig>,
}

impl fmt::Debug for PostgresLedgerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLedgerBuilder")
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("pool_size", &self.pool_size)
            .field("prune_every", &self.prune_every)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls_mode", &self.tls_mode)
            .finish_non_exhaustive()
    }
}

impl PostgresLedgerBuilder {
    /// How long a claim holds before another delivery may take the event (a minute unless
    /// set; at least 1 ms): longer than the slowest handler, or a slow run and a retry's
    /// run overlap. A replica that dies holding claims delays those events by up to this.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth_webhooks::{PostgresLedger, TlsMode};
    /// let builder = PostgresLedger::builder("postgres://app@db.internal/app").lease(Duration::from_secs(30));
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long a handled event is remembered (7 days unless set; never less than the
    /// [`lease`](Self::lease), so zero does not switch deduplication off): a delivery after
    /// that reaches the handler again. Keep it above TrueLayer's 72 hours of retries.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth_webhooks::{PostgresLedger, TlsMode};
    /// let builder = PostgresLedger::builder("postgres://app@db.internal/app").retention(Duration::from_secs(4 * 24 * 3600));
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How many database connections the ledger keeps at most (8 unless set; at least 1).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth_webhooks::{PostgresLedger, TlsMode};
    /// let builder = PostgresLedger::builder("postgres://app@db.internal/app").pool_size(4);
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Prunes a batch of expired rows in the background every `n` begins on this ledger
    /// (1000 unless set); 0 never does, for a fleet that calls [`PostgresLedger::prune`]
    /// from a job of its own.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth_webhooks::{PostgresLedger, TlsMode};
    /// let builder = PostgresLedger::builder("postgres://app@db.internal/app").prune_every(0);
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn prune_every(mut self, n: u64) -> Self {
        self.prune_every = n;
        self
    }

    /// `statement_timeout` of the ledger's sessions, and how long `begin` waits for a free
    /// database connection (10 s unless set; at least 100 ms). A connection whose sent data
    /// goes unacknowledged 5 s longer than this is counted dead (`TCP_USER_TIMEOUT`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth_webhooks::{PostgresLedger, TlsMode};
    /// let builder = PostgresLedger::builder("postgres://app@db.internal/app").statement_timeout(Duration::from_secs(5));
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Plain or TLS ([`TlsMode`]). Unless set: the URL's `sslmode` when it has one, else
    /// [`TlsMode::Disable`] for a server on loopback or a Unix socket and
    /// [`TlsMode::Require`] for any other. Off loopback, [`TlsMode::Prefer`] is
    /// [`TlsMode::Require`], and [`TlsMode::Disable`] is logged as a warning.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth_webhooks::{PostgresLedger, TlsMode};
    /// let builder = PostgresLedger::builder("postgres://app@db.internal/app").tls_mode(TlsMode::Require);
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = Some(mode);
        self
    }

    /// The TLS client settings (roots, client certificates). Unless set: the system's
    /// trust store (`rustls-platform-verifier`) with aws-lc-rs.
    ///
    /// ```no_run
    /// # fn f(roots: rustls::RootCertStore) {
    /// // The database's own CA, with aws-lc-rs.
    /// let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    /// let tls = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .unwrap()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let builder = truelayer_auth_webhooks::PostgresLedger::builder("postgres://app@db.internal/app")
    ///     .tls_config(tls);
    /// # let _ = builder;
    /// # }
    /// ```
    #[must_use]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Connects, and migrates the schema if it is older than this library's (creating it
    /// in an empty database).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), truelayer_auth_webhooks::LedgerError> {
    /// let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    /// let ledger = truelayer_auth_webhooks::PostgresLedger::builder(&url)
    ///     .connect()
    ///     .await?;
    /// # let _ = ledger;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`LedgerError`]: a bad URL, the server unreachable or refusing, TLS, a database
    /// migrated by a newer library, or a `tlauth_webhook_events` table that is not ours.
    pub async fn connect(self) -> Result<PostgresLedger, LedgerError> {
        let session = Session {
            application_name: "truelayer-auth-webhooks",
            keepalives_idle: Duration::from_secs(10),
            keepalives_interval: Duration::from_secs(5),
            // A connection whose sent data goes unacknowledged this long is dead, even if
            // the kernel would retransmit for minutes: statements end within the timeout.
            tcp_user_timeout: self.statement_timeout + Duration::from_secs(5),
            options: format!(
                "-c statement_timeout={}",
                self.statement_timeout.as_millis().max(1)
            ),
        };
        let settings = Settings::read(
            self.url.expose_secret(),
            self.tls_mode,
            self.tls_config,
            &session,
        )
        .map_err(shared_error)?;
        let target = settings.target().to_owned();
        if settings.plain_off_loopback() {
            tracing::warn!(
                target = %target,
                "the webhook ledger connects to a server off loopback without TLS, as asked (sslmode=disable)"
            );
        }
        let pool = settings
            .pool(self.pool_size, self.statement_timeout)
            .map_err(LedgerError::new)?;
        let mut client = pool.get().await.map_err(LedgerError::new)?;
        SCHEMA.migrate(&mut client).await.map_err(shared_error)?;
        drop(client);
        Ok(PostgresLedger {
            inner: Arc::new(Inner {
                pool,
                lease: self.lease,
                // Never shorter than a lease: retention zero would switch deduplication off.
                retention: self.retention.max(self.lease),
                prune_every: self.prune_every,
                target,
                begins: AtomicU64::new(0),
                pruning: AtomicBool::new(false),
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        })
    }
}

impl PostgresLedger {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db?...`, or
    /// libpq's `key=value` form) with the defaults; see [`PostgresLedgerBuilder::connect`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), truelayer_auth_webhooks::LedgerError> {
    /// let ledger = truelayer_auth_webhooks::PostgresLedger::connect(
    ///     "postgres://tlauth_webhooks@db.internal/app",
    /// )
    /// .await?;
    /// # let _ = ledger;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PostgresLedgerBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        Self::builder(url).connect().await
    }

    /// A builder for the ledger in the database at `url`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let builder = truelayer_auth_webhooks::PostgresLedger::builder(
    ///     "postgres://tlauth_webhooks:secret@db.internal/app",
    /// )
    /// .lease(Duration::from_secs(30));
    /// assert!(!format!("{builder:?}").contains("secret"));
    /// ```
    pub fn builder(url: &str) -> PostgresLedgerBuilder {
        PostgresLedgerBuilder {
            url: SecretString::from(url.to_owned()),
            lease: DEFAULT_LEASE,
            retention: DEFAULT_RETENTION,
            pool_size: DEFAULT_POOL_SIZE,
            prune_every: DEFAULT_PRUNE_EVERY,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            tls_mode: None,
            tls_config: None,
        }
    }

    /// Deletes the events handled longer ago than the retention period, and the claims
    /// abandoned that long after their lease ran out; returns how many rows went. A
    /// delivery of a pruned event reaches the handler again.
    ///
    /// ```no_run
    /// # async fn f(ledger: truelayer_auth_webhooks::PostgresLedger) -> Result<(), truelayer_auth_webhooks::LedgerError> {
    /// let pruned = ledger.prune().await?;
    /// println!("{pruned} webhook events forgotten");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`LedgerError`] when the database fails.
    pub async fn prune(&self) -> Result<u64, LedgerError> {
        let mut total = 0;
        loop {
            let deleted = self.inner.prune_batch().await?;
            total += deleted;
            if deleted < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Waits until the releases and prunes this ledger started in the background have
    /// finished (or failed). Call it at shutdown, so TrueLayer's retries of the events
    /// released last need not wait for their leases.
    ///
    /// ```no_run
    /// # async fn f(ledger: truelayer_auth_webhooks::PostgresLedger) {
    /// // ... the server has stopped taking requests ...
    /// ledger.flush().await;
    /// # }
    /// ```
    pub async fn flush(&self) {
        loop {
            let mut idle = pin!(self.inner.idle.notified());
            idle.as_mut().enable();
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Runs `task` in the background on the current runtime, counted for [`flush`](Self::flush)
    /// until it ends or is dropped (a runtime shutting down drops it unrun); `None` (and
    /// nothing run) outside a tokio runtime.
    fn spawn<F>(&self, task: impl FnOnce(Arc<Inner>) -> F) -> Option<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let pending = Pending::new(Arc::clone(&self.inner));
        let task = task(Arc::clone(&self.inner));
        Some(runtime.spawn(async move {
            let _pending = pending;
            task.await
        }))
    }

    fn maybe_prune(&self) {
        let every = self.inner.prune_every;
        if every == 0
            || !(self.inner.begins.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every)
        {
            return;
        }
        if self.inner.pruning.swap(true, Ordering::SeqCst) {
            return;
        }
        // Reset when the task ends or is dropped unrun, or here outside a runtime.
        let pruning = Pruning(Arc::clone(&self.inner));
        self.spawn(|inner| async move {
            let _pruning = pruning;
            match inner.prune_batch().await {
                Ok(n) => tracing::debug!(pruned = n, "webhook ledger pruned"),
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "webhook ledger pruning failed"
                ),
            }
        });
    }
}

/// One background task counted in `pending`, until dropped (with the task, run or not).
struct Pending(Arc<Inner>);

impl Pending {
    fn new(inner: Arc<Inner>) -> Self {
        inner.pending.fetch_add(1, Ordering::SeqCst);
        Pending(inner)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A background prune under way: `pruning` is reset when it is dropped.
struct Pruning(Arc<Inner>);

impl Drop for Pruning {
    fn drop(&mut self) {
        self.0.pruning.store(false, Ordering::SeqCst);
    }
}

impl Inner {
    async fn client(&self) -> Result<Object, LedgerError> {
        self.pool.get().await.map_err(LedgerError::new)
    }

    async fn prune_batch(&self) -> Result<u64, LedgerError> {
        let client = self.client().await?;
        client
            .execute(PRUNE, &[&millis(self.retention), &PRUNE_BATCH])
            .await
            .map_err(LedgerError::new)
    }

    async fn begin(&self, event_id: &str) -> Result<Begin, LedgerError> {
        if event_id.len() > MAX_EVENT_ID_BYTES {
            return Err(problem(format!(
                "an event_id of {} bytes (at most {MAX_EVENT_ID_BYTES} are kept)",
                event_id.len()
            )));
        }
        if event_id.contains('\0') {
            return Err(problem(
                "an event_id containing a NUL character (PostgreSQL text cannot hold one)",
            ));
        }
        let client = self.client().await?;
        let begin = client
            .prepare_cached(BEGIN)
            .await
            .map_err(LedgerError::new)?;
        let status = client
            .prepare_cached(STATUS)
            .await
            .map_err(LedgerError::new)?;
        // A row released between the claim attempt and the look is claimed on the next turn.
        for _ in 0..3 {
            let claimed = client
                .query_opt(&begin, &[&event_id, &millis(self.lease)])
                .await
                .map_err(LedgerError::new)?;
            if let Some(row) = claimed {
                let claim: i64 = row.get(0);
                return u64::try_from(claim)
                    .map(Begin::New)
                    .map_err(|_| problem(format!("claim number {claim}")));
            }
            let done: Option<bool> = client
                .query_opt(&status, &[&event_id])
                .await
                .map_err(LedgerError::new)?
                .map(|row| row.get(0));
            match done {
                Some(true) => return Ok(Begin::Done),
                Some(false) => return Ok(Begin::InProgress),
                None => continue,
            }
        }
        Ok(Begin::InProgress)
    }

    async fn complete(&self, event_id: &str, claim: u64) -> Result<(), LedgerError> {
        let Ok(claim) = i64::try_from(claim) else {
            return Ok(()); // never one of ours
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(COMPLETE)
            .await
            .map_err(LedgerError::new)?;
        client
            .execute(&statement, &[&event_id, &claim])
            .await
            .map_err(LedgerError::new)?;
        Ok(())
    }

    async fn release(&self, event_id: &str, claim: i64) -> Result<(), LedgerError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(RELEASE)
            .await
            .map_err(LedgerError::new)?;
        client
            .execute(&statement, &[&event_id, &claim])
            .await
            .map_err(LedgerError::new)?;
        Ok(())
    }
}

impl EventLedger for PostgresLedger {
    fn begin<'a>(&'a self, event_id: &'a str) -> LedgerFuture<'a, Begin> {
        Box::pin(async move {
            let begin = self.inner.begin(event_id).await;
            self.maybe_prune();
            begin
        })
    }

    /// Runs in a task on the current tokio runtime (counted for
    /// [`flush`](PostgresLedger::flush)) that the future awaits: a caller that gives up (a
    /// client that hung up) does not cancel it, so a handled event is recorded, never
    /// forgotten half-way.
    fn complete<'a>(&'a self, event_id: &'a str, claim: u64) -> LedgerFuture<'a, ()> {
        let owned = event_id.to_owned();
        let task = self.spawn(|inner| async move { inner.complete(&owned, claim).await });
        Box::pin(async move {
            match task {
                Some(task) => task
                    .await
                    .unwrap_or_else(|error| Err(LedgerError::new(error))),
                None => self.inner.complete(event_id, claim).await,
            }
        })
    }

    /// Deletes the claim in a task on the current tokio runtime (outside one, the claim is
    /// left to its lease); [`flush`](PostgresLedger::flush) waits for it.
    fn release(&self, event_id: &str, claim: u64) {
        let Ok(claim) = i64::try_from(claim) else {
            return;
        };
        let event_id = event_id.to_owned();
        let _ = self.spawn(|inner| async move {
            if let Err(error) = inner.release(&event_id, claim).await {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "a webhook claim was not released; a retry waits for its lease"
                );
            }
        });
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn problem(what: impl Into<String>) -> LedgerError {
    LedgerError::new(what.into())
}

fn shared_error(e: truelayer_auth_postgres::Error) -> LedgerError {
    use truelayer_auth_postgres::Error;
    match e {
        Error::Config(what) | Error::Corrupt(what) => problem(what),
        Error::Tls(e) => LedgerError::new(e),
        Error::Database(e) => LedgerError::new(e),
        Error::NewerSchema { found, supported } => problem(format!(
            "the webhook ledger's schema is version {found}, newer than this library's {supported}: upgrade the library"
        )),
    }
}
