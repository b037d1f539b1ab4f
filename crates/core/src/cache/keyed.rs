//! One cache for many merchant accounts, keyed by environment, client_id and scopes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use super::{TokenCache, TokenCacheBuilder};
use crate::client::TokenClient;
use crate::credentials::ClientCredentials;
use crate::environment::Environment;
use crate::error::{ConfigError, Error};
use crate::scope::Scopes;
use crate::source::{CredentialsFuture, CredentialsSource};
use crate::token::AccessToken;

/// What a keyed cache tells entries apart by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The environment.
    pub environment: Environment,
    /// The client_id.
    pub client_id: String,
    /// The normalized scope set.
    pub scopes: Scopes,
}

/// Token caches for many client_ids (merchant accounts) sharing one HTTP client.
///
/// Each key (environment, client_id, normalized scopes) gets its own [`TokenCache`] with all
/// of its guarantees. Memory is bounded: entries unused for the idle timeout are dropped
/// (their background tasks stop), and past `max_entries` the least recently used entry is
/// dropped. An entry costs about 6 KiB with an hour-long TrueLayer token (measured by the
/// `keyed_memory` test; most of it is the token itself and the idle background task).
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

struct Inner {
    template: TokenCacheBuilderTemplate,
    entries: RwLock<HashMap<CacheKey, Arc<Entry>>>,
    max_entries: usize,
    idle_timeout: Duration,
    epoch: Instant,
    last_sweep_ms: AtomicU64,
}

struct Entry {
    cache: TokenCache,
    credentials: Option<Arc<Swappable>>,
    last_used_ms: AtomicU64,
}

/// Settings every per-key cache is built with.
struct TokenCacheBuilderTemplate {
    client: TokenClient,
    configure: Arc<dyn Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync>,
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

/// Credentials that a later lookup with a new secret replaces.
#[derive(Debug)]
struct Swappable(ArcSwap<ClientCredentials>);

impl CredentialsSource for Swappable {
    fn credentials(&self) -> CredentialsFuture<'_> {
        let creds = (**self.0.load()).clone();
        Box::pin(async move { Ok(creds) })
    }
}

impl KeyedTokenCache {
    /// A builder with the defaults: 10,000 entries, 1 hour idle timeout, default cache settings.
    pub fn builder() -> KeyedTokenCacheBuilder {
        KeyedTokenCacheBuilder {
            client: None,
            max_entries: 10_000,
            idle_timeout: Duration::from_secs(3600),
            configure: Arc::new(|b| b),
        }
    }

    /// The cache for these credentials and scopes, made on first use.
    ///
    /// A later call for the same key with a different secret (say, after a rotation) makes
    /// the cache use the new secret from its next fetch on.
    pub fn get(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        scopes: &Scopes,
    ) -> Result<TokenCache, ConfigError> {
        let key = CacheKey {
            environment: environment.clone(),
            client_id: credentials.client_id().to_owned(),
            scopes: scopes.clone(),
        };
        let entry = self.entry(key, || {
            let swappable = Arc::new(Swappable(ArcSwap::from_pointee(credentials.clone())));
            (
                swappable.clone() as Arc<dyn CredentialsSource>,
                Some(swappable),
            )
        })?;
        if let Some(swappable) = &entry.credentials {
            let held = swappable.0.load();
            if held.client_secret().expose_secret() != credentials.client_secret().expose_secret() {
                swappable.0.store(Arc::new(credentials.clone()));
            }
        }
        Ok(entry.cache.clone())
    }

    /// The cache for `client_id` and scopes, with credentials from a source made by
    /// `source` on first use (for example an AWS Secrets Manager source per merchant).
    pub fn get_with_source<F>(
        &self,
        environment: &Environment,
        client_id: &str,
        scopes: &Scopes,
        source: F,
    ) -> Result<TokenCache, ConfigError>
    where
        F: FnOnce() -> Arc<dyn CredentialsSource>,
    {
        let key = CacheKey {
            environment: environment.clone(),
            client_id: client_id.to_owned(),
            scopes: scopes.clone(),
        };
        Ok(self.entry(key, || (source(), None))?.cache.clone())
    }

    /// A usable token for these credentials and scopes; see [`TokenCache::token`].
    ///
    /// # Errors
    ///
    /// As [`TokenCache::token`], and [`Error::Config`] if the per-key cache cannot be built.
    pub async fn token(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        scopes: &Scopes,
    ) -> Result<AccessToken, Error> {
        self.get(environment, credentials, scopes)?.token().await
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entry for `key`; returns whether there was one.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.write().remove(key).is_some()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CacheKey, Arc<Entry>>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CacheKey, Arc<Entry>>> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry<F>(&self, key: CacheKey, make_source: F) -> Result<Arc<Entry>, ConfigError>
    where
        F: FnOnce() -> (Arc<dyn CredentialsSource>, Option<Arc<Swappable>>),
    {
        let now = self.now_ms();
        self.maybe_sweep(now);
        if let Some(entry) = self.read().get(&key) {
            entry.last_used_ms.store(now, Ordering::Relaxed);
            return Ok(entry.clone());
        }
        let mut entries = self.write();
        if let Some(entry) = entries.get(&key) {
            entry.last_used_ms.store(now, Ordering::Relaxed);
            return Ok(entry.clone());
        }
        if entries.len() >= self.inner.max_entries {
            evict(&mut entries, now, self.inner.idle_timeout);
        }
        while entries.len() >= self.inner.max_entries {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used_ms.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            entries.remove(&oldest);
        }
        let (source, credentials) = make_source();
        let template = &self.inner.template;
        let builder = TokenCache::builder(key.environment.clone(), source)
            .scopes(key.scopes.clone())
            .client(template.client.clone());
        let cache = (template.configure)(builder).build()?;
        let entry = Arc::new(Entry {
            cache,
            credentials,
            last_used_ms: AtomicU64::new(now),
        });
        entries.insert(key, entry.clone());
        Ok(entry)
    }

    fn maybe_sweep(&self, now: u64) {
        let every = u64::try_from((self.inner.idle_timeout / 4).as_millis()).unwrap_or(u64::MAX);
        let last = self.inner.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every.max(1) {
            return;
        }
        if self
            .inner
            .last_sweep_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            evict(&mut self.write(), now, self.inner.idle_timeout);
        }
    }
}

fn evict(entries: &mut HashMap<CacheKey, Arc<Entry>>, now: u64, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    entries.retain(|_, e| now.saturating_sub(e.last_used_ms.load(Ordering::Relaxed)) < idle_ms);
}

/// Builds a [`KeyedTokenCache`].
pub struct KeyedTokenCacheBuilder {
    client: Option<TokenClient>,
    max_entries: usize,
    idle_timeout: Duration,
    configure: Arc<dyn Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync>,
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

    /// The most keys held; past it the least recently used is dropped. Default 10,000.
    #[must_use]
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    /// Entries unused for this long are dropped. Default 1 hour.
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Settings applied to every per-key cache (margins, wait timeout, backoff).
    #[must_use]
    pub fn configure(
        mut self,
        configure: impl Fn(TokenCacheBuilder) -> TokenCacheBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// Builds the keyed cache.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for zero `max_entries` or idle timeout, and as
    /// [`TokenClient::new`].
    pub fn build(self) -> Result<KeyedTokenCache, ConfigError> {
        if self.max_entries == 0 || self.idle_timeout.is_zero() {
            return Err(ConfigError::InvalidSetting {
                name: "max_entries",
                reason: "max_entries and the idle timeout must be greater than zero",
            });
        }
        let client = match self.client {
            Some(c) => c,
            None => TokenClient::new()?,
        };
        Ok(KeyedTokenCache {
            inner: Arc::new(Inner {
                template: TokenCacheBuilderTemplate {
                    client,
                    configure: self.configure,
                },
                entries: RwLock::default(),
                max_entries: self.max_entries,
                idle_timeout: self.idle_timeout,
                epoch: Instant::now(),
                last_sweep_ms: AtomicU64::new(0),
            }),
        })
    }
}
