//! One cache for many merchant accounts, keyed by environment, client_id and scopes.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::CacheSettings;
use super::TokenCache;
use crate::client::TokenClient;
use crate::credentials::ClientCredentials;
use crate::environment::Environment;
use crate::error::{ConfigError, Error};
use crate::scope::Scopes;
use crate::source::CredentialsSource;
use crate::token::AccessToken;
use crate::token_source::{TokenFuture, TokenSource};

/// What a keyed cache tells entries apart by: environment, client_id and the normalized
/// scope set. Cheap to clone (one reference count).
///
/// Behind a [`BearerAuthLayer`](https://docs.rs/truelayer-auth-tower) with a
/// [`KeyedTokenCache`] as its token source, each request names its merchant by carrying a
/// `CacheKey` in its extensions.
///
/// # Example
///
/// ```
/// use truelayer_auth::{CacheKey, Environment, Scopes};
///
/// let key = CacheKey::new(Environment::Sandbox, "merchant-a", Scopes::payments());
/// let mut request = http::Request::get("https://api.truelayer-sandbox.com/v3/payments/p-1")
///     .body(())?;
/// request.extensions_mut().insert(key.clone());
/// assert_eq!(key.client_id(), "merchant-a");
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone)]
pub struct CacheKey(Arc<KeyParts>);

struct KeyParts {
    /// The parts' hash, computed once: a key is hashed on every request that names it.
    hash: u64,
    environment: Environment,
    client_id: String,
    scopes: Scopes,
    /// For entries made by [`KeyedTokenCache::get`]: a keyed hash of the secret, so a caller
    /// holding another secret for the same client_id never gets this entry's tokens. 0 for
    /// keys made with [`CacheKey::new`].
    secret_tag: u64,
}

impl CacheKey {
    /// The key for a client_id with these scopes in this environment. The client_id is
    /// trimmed, as [`ClientCredentials::new`] trims it.
    pub fn new(environment: Environment, client_id: impl Into<String>, scopes: Scopes) -> Self {
        Self::tagged(environment, client_id.into(), scopes, 0)
    }

    fn tagged(environment: Environment, client_id: String, scopes: Scopes, tag: u64) -> Self {
        let client_id = match client_id.trim() {
            trimmed if trimmed.len() == client_id.len() => client_id,
            trimmed => trimmed.to_owned(),
        };
        // Keyed randomly per process: client_ids can come from outside, and a fixed hash
        // would let someone craft colliding keys to slow the map down.
        static HASHER: std::sync::LazyLock<std::hash::RandomState> =
            std::sync::LazyLock::new(std::hash::RandomState::new);
        CacheKey(Arc::new(KeyParts {
            hash: HASHER.hash_one((&environment, &client_id, &scopes, tag)),
            environment,
            client_id,
            scopes,
            secret_tag: tag,
        }))
    }

    /// The environment.
    pub fn environment(&self) -> &Environment {
        &self.0.environment
    }

    /// The client_id.
    pub fn client_id(&self) -> &str {
        &self.0.client_id
    }

    /// The normalized scope set.
    pub fn scopes(&self) -> &Scopes {
        &self.0.scopes
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        Arc::ptr_eq(&self.0, &other.0)
            || (a.hash == b.hash
                && a.secret_tag == b.secret_tag
                && a.client_id == b.client_id
                && a.environment == b.environment
                && a.scopes == b.scopes)
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey")
            .field("environment", &self.0.environment)
            .field("client_id", &self.0.client_id)
            .field("scopes", &self.0.scopes.as_str())
            .finish()
    }
}

/// Token caches for many client_ids (merchant accounts) sharing one HTTP client.
///
/// Each key (environment, client_id, normalized scopes) gets its own [`TokenCache`] with all
/// of its guarantees. Memory is bounded: entries unused for the idle timeout are dropped by a
/// periodic sweep (their refresh timers stop), and past `max_entries` entries are evicted
/// (S3-FIFO, through `quick_cache`: O(1), no scan). An entry whose [`TokenCache`] a caller
/// still holds is in use and never evicted, so a held cache and the keyed one never diverge.
/// An entry costs about 5 KiB with an hour-long TrueLayer token (measured by the
/// `keyed_memory` test).
///
/// It is also a [`TokenSource`]: behind one bearer layer it serves every merchant, picking
/// each request's from the [`CacheKey`] in its extensions, with entries made on first use by
/// the [`credentials_for`](KeyedTokenCacheBuilder::credentials_for) resolver.
///
/// # Example
///
/// ```no_run
/// use truelayer_auth::{ClientCredentials, Environment, KeyedTokenCache, Scopes};
///
/// # async fn run(merchants: Vec<ClientCredentials>) -> Result<(), Box<dyn std::error::Error>> {
/// let caches = KeyedTokenCache::builder().max_entries(5_000).build()?;
/// for creds in merchants {
///     let token = caches.token(&Environment::Sandbox, &creds, &Scopes::payments()).await?;
///     # let _ = token;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KeyedTokenCache {
    inner: Arc<Inner>,
}

type Resolver = Arc<dyn Fn(&CacheKey) -> Option<Arc<dyn CredentialsSource>> + Send + Sync>;
type Entries = Cache<CacheKey, Arc<Entry>, UnitWeighter, DefaultHashBuilder, InUse>;

struct Inner {
    client: TokenClient,
    settings: CacheSettings,
    entries: Entries,
    resolver: Option<Resolver>,
    max_entries: usize,
    idle_timeout: Duration,
    epoch: Instant,
    sweeping: AtomicBool,
    /// Keys the hash that tells entries of one client_id with different secrets apart
    /// (random per cache: the tag says nothing about the secret outside this process).
    secret_tags: std::hash::RandomState,
}

struct Entry {
    cache: TokenCache,
    last_used_ms: AtomicU64,
}

/// Eviction skips entries whose cache is held outside the map.
#[derive(Clone)]
struct InUse;

impl Lifecycle<CacheKey, Arc<Entry>> for InUse {
    type RequestState = ();

    fn is_pinned(&self, _key: &CacheKey, entry: &Arc<Entry>) -> bool {
        in_use(entry)
    }
}

/// Whether anything besides the map holds the entry: a caller's cache, or a caller between
/// looking the entry up and cloning its cache.
fn in_use(entry: &Arc<Entry>) -> bool {
    Arc::strong_count(entry) > 1 || entry.cache.is_shared()
}

impl fmt::Debug for KeyedTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenCache")
            .field("entries", &self.len())
            .field("max_entries", &self.inner.max_entries)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish()
    }
}

impl KeyedTokenCache {
    /// A builder with the defaults: 10,000 entries, 1 hour idle timeout, default cache settings.
    pub fn builder() -> KeyedTokenCacheBuilder {
        KeyedTokenCacheBuilder {
            client: None,
            max_entries: 10_000,
            idle_timeout: Duration::from_secs(3600),
            settings: CacheSettings::default(),
            resolver: None,
        }
    }

    /// The cache for these credentials and scopes, made on first use.
    ///
    /// Entries are per secret too: a caller never gets a token fetched with a secret other
    /// than the one it holds (client_ids are not secret; a platform's tenants must not reach
    /// each other's tokens by naming them). After a rotation, the new secret makes a new
    /// entry, and the old one is dropped after the idle timeout (or evicted).
    pub fn get(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        scopes: &Scopes,
    ) -> TokenCache {
        let tag = self
            .inner
            .secret_tags
            .hash_one(credentials.client_secret().expose_secret())
            .max(1);
        let key = CacheKey::tagged(
            environment.clone(),
            credentials.client_id().to_owned(),
            scopes.clone(),
            tag,
        );
        self.entry(&key, || {
            Arc::new(credentials.clone()) as Arc<dyn CredentialsSource>
        })
        .cache
        .clone()
    }

    /// The cache for `client_id` and scopes, with credentials from a source made by
    /// `source` on first use (for example an AWS Secrets Manager source per merchant).
    pub fn get_with_source<F>(
        &self,
        environment: &Environment,
        client_id: &str,
        scopes: &Scopes,
        source: F,
    ) -> TokenCache
    where
        F: FnOnce() -> Arc<dyn CredentialsSource>,
    {
        let key = CacheKey::new(environment.clone(), client_id, scopes.clone());
        self.entry(&key, source).cache.clone()
    }

    /// A usable token for these credentials and scopes; see [`TokenCache::token`].
    ///
    /// # Errors
    ///
    /// As [`TokenCache::token`].
    pub async fn token(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        scopes: &Scopes,
    ) -> Result<AccessToken, Error> {
        self.get(environment, credentials, scopes).token().await
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries for `key`'s merchant (environment, client_id, scopes), including
    /// those [`get`](Self::get) made per secret; returns whether there was one.
    pub fn remove(&self, key: &CacheKey) -> bool {
        let removed = self.inner.entries.remove(key).is_some();
        let before = self.inner.entries.len();
        self.inner.entries.retain(|k, _| {
            !(k.0.client_id == key.0.client_id
                && k.0.environment == key.0.environment
                && k.0.scopes == key.0.scopes)
        });
        removed || self.inner.entries.len() < before
    }

    /// The entry for `key`, made with `make` if there is none. Two callers racing for a new
    /// key make one entry.
    fn entry<F>(&self, key: &CacheKey, make: F) -> Arc<Entry>
    where
        F: FnOnce() -> Arc<dyn CredentialsSource>,
    {
        self.ensure_sweeper();
        let now = self.inner.now_ms();
        let entry = self
            .inner
            .entries
            .get_or_insert_with(key, || {
                Ok::<_, std::convert::Infallible>(Arc::new(Entry {
                    cache: self.inner.new_cache(key, make()),
                    last_used_ms: AtomicU64::new(now),
                }))
            })
            .unwrap_or_else(|never| match never {});
        entry.last_used_ms.store(now, Ordering::Relaxed);
        entry
    }

    /// The cache a request's [`CacheKey`] names: an entry, or one made by the resolver.
    fn for_request(&self, request: &http::Extensions) -> Result<TokenCache, Error> {
        let key = request.get::<CacheKey>().ok_or(Error::MissingCacheKey)?;
        // Hits restart the idle sweep too, if its runtime has gone (one atomic load).
        self.ensure_sweeper();
        if let Some(entry) = self.inner.entries.get(key) {
            entry
                .last_used_ms
                .store(self.inner.now_ms(), Ordering::Relaxed);
            return Ok(entry.cache.clone());
        }
        let resolved = self.inner.resolver.as_ref().and_then(|resolve| {
            // A resolver bug must not unwind through the caller's `call`.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| resolve(key))).unwrap_or_else(
                |_| {
                    tracing::error!(
                        client_id = key.client_id(),
                        "the credentials_for resolver panicked; the request is refused"
                    );
                    None
                },
            )
        });
        let Some(source) = resolved else {
            return Err(Error::UnknownCacheKey {
                client_id: key.client_id().to_owned(),
            });
        };
        Ok(self.entry(key, || source).cache.clone())
    }

    /// Starts the idle sweep in the caller's runtime unless it runs already.
    fn ensure_sweeper(&self) {
        if self.inner.sweeping.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .inner
            .sweeping
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let guard = SweepGuard(Arc::downgrade(&self.inner));
            runtime.spawn(sweep(guard));
        }
    }
}

/// Clears `sweeping` however the sweep ends, so the next lookup starts another.
struct SweepGuard(Weak<Inner>);

impl Drop for SweepGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.sweeping.store(false, Ordering::Release);
        }
    }
}

/// Every quarter of the idle timeout (between 1 s and 15 minutes), drops entries unused for
/// the idle timeout that no caller holds. Ends with the keyed cache.
async fn sweep(guard: SweepGuard) {
    loop {
        let every = {
            let Some(inner) = guard.0.upgrade() else {
                return;
            };
            (inner.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(900))
        };
        tokio::time::sleep(every).await;
        let Some(inner) = guard.0.upgrade() else {
            return;
        };
        let now = inner.now_ms();
        let idle_ms = u64::try_from(inner.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        inner.entries.retain(|_, entry| {
            in_use(entry)
                || now.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed)) < idle_ms
        });
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn new_cache(&self, key: &CacheKey, source: Arc<dyn CredentialsSource>) -> TokenCache {
        TokenCache::from_parts(
            self.client.clone(),
            source,
            key.environment().clone(),
            key.scopes().clone(),
            Some(key.clone()),
            self.settings,
        )
    }
}

impl TokenSource for KeyedTokenCache {
    fn cached(&self, request: &http::Extensions) -> Result<Option<AccessToken>, Error> {
        Ok(self.for_request(request)?.cached())
    }

    fn token(&self, request: &http::Extensions) -> TokenFuture {
        match self.for_request(request) {
            Ok(cache) => TokenSource::token(&cache, request),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn invalidate(&self, token: &AccessToken) -> bool {
        token
            .key()
            .and_then(|key| self.inner.entries.get(key))
            .is_some_and(|entry| entry.cache.invalidate(token))
    }

    fn replacement(&self, rejected: &AccessToken, request: &http::Extensions) -> TokenFuture {
        match rejected.key().and_then(|key| self.inner.entries.get(key)) {
            Some(entry) => TokenSource::replacement(&entry.cache, rejected, request),
            None => TokenSource::token(self, request),
        }
    }
}

/// Builds a [`KeyedTokenCache`].
pub struct KeyedTokenCacheBuilder {
    client: Option<TokenClient>,
    max_entries: usize,
    idle_timeout: Duration,
    settings: CacheSettings,
    resolver: Option<Resolver>,
}

impl fmt::Debug for KeyedTokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokenCacheBuilder")
            .field("max_entries", &self.max_entries)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl KeyedTokenCacheBuilder {
    /// The token client every entry shares. Default: a new [`TokenClient`].
    #[must_use]
    pub fn client(mut self, client: TokenClient) -> Self {
        self.client = Some(client);
        self
    }

    /// The most keys held; past it entries are evicted (never one in use). Default 10,000.
    #[must_use]
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Entries unused for this long, and not held by a caller, are dropped. Default 1 hour.
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Settings applied to every per-key cache: margins, jitter, wait and credentials
    /// timeouts, backoff, rate bound; checked once, by [`build`](Self::build). Scopes and
    /// the client are not among them: they come from the key and from
    /// [`client`](Self::client).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use truelayer_auth::KeyedTokenCache;
    /// let keyed = KeyedTokenCache::builder()
    ///     .configure(|s| s.soft_margin(Duration::from_secs(600)).wait_timeout(Duration::from_secs(5)))
    ///     .build();
    /// # drop(keyed);
    /// ```
    ///
    /// Scopes set here would be ignored, so they cannot be:
    ///
    /// ```compile_fail
    /// # use truelayer_auth::{KeyedTokenCache, Scopes};
    /// KeyedTokenCache::builder().configure(|s| s.scopes(Scopes::payments()));
    /// ```
    #[must_use]
    pub fn configure(mut self, configure: impl FnOnce(CacheSettings) -> CacheSettings) -> Self {
        self.settings = configure(self.settings);
        self
    }

    /// Where the credentials for a key come from when a request names a key that has no
    /// entry yet (as a [`TokenSource`]): for example, one AWS Secrets Manager secret per
    /// merchant. Return `None` for a key that is not a known merchant.
    #[must_use]
    pub fn credentials_for(
        mut self,
        resolver: impl Fn(&CacheKey) -> Option<Arc<dyn CredentialsSource>> + Send + Sync + 'static,
    ) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// Builds the keyed cache.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for zero `max_entries` or idle timeout, for per-key
    /// settings [`CacheSettings`] refuses, and as [`TokenClient::new`].
    pub fn build(self) -> Result<KeyedTokenCache, ConfigError> {
        if self.max_entries == 0 || self.idle_timeout.is_zero() {
            return Err(ConfigError::InvalidSetting {
                name: "max_entries",
                reason: "max_entries and the idle timeout must be greater than zero",
            });
        }
        // The per-key settings, checked once here rather than on every new key.
        self.settings.validate()?;
        let client = match self.client {
            Some(c) => c,
            None => TokenClient::new()?,
        };
        let entries = Cache::with(
            self.max_entries.min(1 << 20),
            self.max_entries as u64,
            UnitWeighter,
            DefaultHashBuilder::default(),
            InUse,
        );
        Ok(KeyedTokenCache {
            inner: Arc::new(Inner {
                client,
                settings: self.settings,
                entries,
                resolver: self.resolver,
                max_entries: self.max_entries,
                idle_timeout: self.idle_timeout,
                epoch: Instant::now(),
                sweeping: AtomicBool::new(false),
                secret_tags: std::hash::RandomState::new(),
            }),
        })
    }
}
