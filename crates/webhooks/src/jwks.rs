//! The JWKS cache: one entry per allowed `jku`, fetched only from there, single flight,
//! rate limited, served stale when a refresh fails.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use truelayer_auth_http::error_chain;
use truelayer_auth_signing::Verifier;

use crate::error::{JwksError, WebhookError};

/// The largest JWKS document read (TrueLayer's has a handful of keys: a few KiB).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// A JWKS document as fetched, with how long its server says it may be cached.
#[derive(Clone)]
pub struct FetchedJwks {
    body: Bytes,
    max_age: Option<Duration>,
}

impl fmt::Debug for FetchedJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedJwks")
            .field("bytes", &self.body.len())
            .field("max_age", &self.max_age)
            .finish()
    }
}

impl FetchedJwks {
    /// A JWKS document (`{"keys": [...]}`) with no caching hint.
    pub fn new(body: impl Into<Bytes>) -> Self {
        FetchedJwks {
            body: body.into(),
            max_age: None,
        }
    }

    /// How long the document may be cached (`Cache-Control: max-age`), kept within the
    /// verifier's floor and ceiling.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }
}

/// The future a [`JwksSource`] returns.
pub type JwksFuture<'a> = Pin<Box<dyn Future<Output = Result<FetchedJwks, JwksError>> + Send + 'a>>;

/// Where a [`WebhookVerifier`](crate::WebhookVerifier) gets JWKS documents. The default
/// fetches the `jku` over HTTPS with reqwest (no redirects, a timeout, at most
/// [`MAX_JWKS_BYTES`]); implement this to fetch through your own HTTP stack or an egress
/// proxy, or to serve a pinned document, and pass it to
/// [`WebhookVerifierBuilder::jwks_source`](crate::WebhookVerifierBuilder::jwks_source).
///
/// It is only ever asked for a `jku` on the verifier's allow-list.
pub trait JwksSource: Send + Sync + fmt::Debug + 'static {
    /// The JWKS at `jku`, fetched.
    fn jwks<'a>(&'a self, jku: &'a str) -> JwksFuture<'a>;
}

/// The default source: reqwest, rustls, no redirects.
#[derive(Debug)]
pub(crate) struct HttpJwksSource {
    http: reqwest::Client,
}

impl HttpJwksSource {
    pub(crate) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!(
                "truelayer-auth-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(HttpJwksSource { http })
    }
}

impl JwksSource for HttpJwksSource {
    fn jwks<'a>(&'a self, jku: &'a str) -> JwksFuture<'a> {
        Box::pin(async move {
            let transport = |e: reqwest::Error| JwksError::Transport {
                jku: jku.to_owned(),
                source: Arc::new(e.without_url()),
            };
            let mut response = self
                .http
                .get(jku)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(transport)?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(JwksError::Status {
                    jku: jku.to_owned(),
                    status: response.status().as_u16(),
                });
            }
            let max_age = response
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(cache_max_age);
            let too_large = || JwksError::TooLarge {
                jku: jku.to_owned(),
                limit: MAX_JWKS_BYTES,
            };
            if response
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            let mut fetched = FetchedJwks::new(body);
            fetched.max_age = max_age;
            Ok(fetched)
        })
    }
}

/// `max-age` from a `Cache-Control` value; `no-store`/`no-cache` count as zero (the floor
/// applies).
fn cache_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            max_age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

/// How the cache treats freshness and refetching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) default_ttl: Duration,
    pub(crate) refetch_interval: Duration,
    pub(crate) fetch_timeout: Duration,
}

/// The keys of one JWKS: the EC P-521 ones for verifying, and what the others are.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub(crate) verifier: Verifier,
    /// kid → description, for keys that are not EC P-521.
    unusable: HashMap<String, String>,
}

impl KeySet {
    fn parse(jku: &str, body: &[u8]) -> Result<Self, JwksError> {
        // The limit holds for custom sources too.
        if body.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge {
                jku: jku.to_owned(),
                limit: MAX_JWKS_BYTES,
            });
        }
        let not_jwks = || JwksError::NotJwks {
            jku: jku.to_owned(),
        };
        let verifier = Verifier::from_jwks(body).map_err(|_| not_jwks())?;
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| not_jwks())?;
        let mut unusable = HashMap::new();
        for key in value["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let field = |name: &str| key.get(name).and_then(serde_json::Value::as_str);
            let Some(kid) = field("kid") else { continue };
            if verifier.has_key(kid) {
                continue;
            }
            let found = match (field("kty"), field("crv")) {
                (Some("EC"), Some("P-521")) => "an EC P-521 key with invalid coordinates".into(),
                (Some(kty), Some(crv)) => format!("a {kty} key on {crv}"),
                (Some(kty), None) => format!("a {kty} key"),
                (None, _) => "a key with no kty".into(),
            };
            unusable.insert(kid.to_owned(), truncate(&found, 60));
        }
        Ok(KeySet { verifier, unusable })
    }

    fn knows(&self, kid: &str) -> bool {
        self.verifier.has_key(kid) || self.unusable.contains_key(kid)
    }

    /// The verifier when `kid` is a usable key, else why not.
    fn check(self: &Arc<Self>, kid: &str) -> Result<Arc<KeySet>, WebhookError> {
        if self.verifier.has_key(kid) {
            return Ok(self.clone());
        }
        Err(match self.unusable.get(kid) {
            Some(found) => WebhookError::UnsupportedKey {
                kid: truncate(kid, 100),
                found: found.clone(),
            },
            None => WebhookError::UnknownKey {
                kid: truncate(kid, 100),
            },
        })
    }
}

#[derive(Default)]
struct EntryState {
    keys: Option<Arc<KeySet>>,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<JwksError>,
    /// Bumped by every fetch attempt, so a caller that waited for one knows it happened.
    attempts: u64,
}

struct Entry {
    jku: String,
    state: Mutex<EntryState>,
    /// Held by the fetch task while it fetches: one fetch at a time per `jku`, and a caller
    /// can wait for the running one by locking it.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

enum Decision {
    /// These keys know the kid (fresh, or stale with no refresh allowed yet).
    Use(Arc<KeySet>),
    /// Fetch first; `Some` holds stale keys that know the kid.
    Fetch(Option<Arc<KeySet>>),
    /// No keys know the kid and no fetch is allowed yet.
    Refuse,
}

/// The JWKS of each allowed `jku`.
pub(crate) struct JwksCache {
    entries: HashMap<String, Arc<Entry>>,
    source: Arc<dyn JwksSource>,
    policy: Policy,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("jkus", &self.entries.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .field("policy", &self.policy)
            .finish()
    }
}

impl JwksCache {
    pub(crate) fn new(jkus: &[String], source: Arc<dyn JwksSource>, policy: Policy) -> Self {
        let entries = jkus
            .iter()
            .map(|jku| {
                (
                    jku.clone(),
                    Arc::new(Entry {
                        jku: jku.clone(),
                        state: Mutex::default(),
                        fetching: Arc::new(tokio::sync::Mutex::new(())),
                    }),
                )
            })
            .collect();
        JwksCache {
            entries,
            source,
            policy,
        }
    }

    pub(crate) fn allows(&self, jku: &str) -> bool {
        self.entries.contains_key(jku)
    }

    /// The keys that can check a signature by `kid` from `jku` (which must be allowed).
    ///
    /// A fetch runs in a task of its own that holds the entry's lock until it has stored
    /// its result: a caller dropped while waiting (a client that hung up) neither cancels it
    /// nor uses up the refetch interval without a result.
    pub(crate) async fn keys_for(&self, jku: &str, kid: &str) -> Result<Arc<KeySet>, WebhookError> {
        let Some(entry) = self.entries.get(jku) else {
            return Err(WebhookError::JkuNotAllowed {
                jku: truncate(jku, 200),
            });
        };
        let (decision, seen) = self.decide(entry, kid, true);
        match decision {
            Decision::Use(keys) => return keys.check(kid),
            Decision::Fetch(Some(stale)) => {
                // The kid is known from a stale copy: serve it, and refresh in the background
                // unless a refresh is already running.
                if let Ok(guard) = entry.fetching.clone().try_lock_owned()
                    && lock(&entry.state).attempts == seen
                {
                    drop(self.spawn_fetch(entry, guard));
                }
                return stale.check(kid);
            }
            Decision::Fetch(None) => {
                let guard = entry.fetching.clone().lock_owned().await;
                // Someone fetched while this caller waited: use what they got, fetch no
                // more (a flood of unknown kids makes one fetch, not one each).
                if lock(&entry.state).attempts == seen {
                    // A join error means the runtime is shutting down: decide below.
                    let _ = self.spawn_fetch(entry, guard).await;
                }
            }
            Decision::Refuse => {
                // No fetch allowed now, but one may be running (the first webhooks arrive
                // together): wait for its result rather than refuse.
                drop(entry.fetching.lock().await);
            }
        }
        match self.decide(entry, kid, false).0 {
            Decision::Use(keys) | Decision::Fetch(Some(keys)) => keys.check(kid),
            Decision::Fetch(None) | Decision::Refuse => Err(self.refusal(entry, kid)),
        }
    }

    fn decide(&self, entry: &Entry, kid: &str, may_fetch: bool) -> (Decision, u64) {
        let state = lock(&entry.state);
        let now = Instant::now();
        let may_attempt = may_fetch
            && state
                .last_attempt
                .is_none_or(|at| now >= at + self.policy.refetch_interval);
        let fresh = state.fresh_until.is_some_and(|until| now < until);
        let decision = match &state.keys {
            Some(keys) if keys.knows(kid) => {
                if fresh || !may_attempt {
                    Decision::Use(keys.clone())
                } else {
                    Decision::Fetch(Some(keys.clone()))
                }
            }
            _ if may_attempt => Decision::Fetch(None),
            _ => Decision::Refuse,
        };
        (decision, state.attempts)
    }

    fn refusal(&self, entry: &Entry, kid: &str) -> WebhookError {
        let state = lock(&entry.state);
        match (&state.keys, &state.last_error) {
            (Some(keys), _) => match keys.check(kid) {
                Err(e) => e,
                Ok(_) => WebhookError::UnknownKey {
                    kid: truncate(kid, 100),
                },
            },
            (None, Some(error)) => WebhookError::KeysUnavailable(error.clone()),
            (None, None) => WebhookError::KeysUnavailable(JwksError::NotFetched {
                jku: entry.jku.clone(),
            }),
        }
    }

    /// Starts one fetch of `entry`'s JWKS, in a task that holds `guard` until the result is
    /// stored.
    fn spawn_fetch(
        &self,
        entry: &Arc<Entry>,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> tokio::task::JoinHandle<()> {
        let (entry, source, policy) = (entry.clone(), self.source.clone(), self.policy);
        tokio::spawn(async move {
            let _guard = guard;
            fetch(&entry, &*source, policy).await;
        })
    }
}

/// One fetch of `entry`'s JWKS, its result stored. If the task is dropped before the end
/// (its runtime shutting down), the attempt is taken back so the next caller fetches.
async fn fetch(entry: &Entry, source: &dyn JwksSource, policy: Policy) {
    let started = Instant::now();
    let previous = {
        let mut state = lock(&entry.state);
        let previous = state.last_attempt.replace(started);
        state.attempts += 1;
        previous
    };
    let mut undo = Undo {
        entry,
        previous,
        armed: true,
    };
    let result = match tokio::time::timeout(policy.fetch_timeout, source.jwks(&entry.jku)).await {
        Ok(Ok(fetched)) => KeySet::parse(&entry.jku, &fetched.body).map(|keys| (keys, fetched)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(JwksError::Timeout {
            jku: entry.jku.clone(),
        }),
    };
    undo.armed = false;
    let mut state = lock(&entry.state);
    match result {
        Ok((keys, fetched)) => {
            let ttl = fetched
                .max_age
                .unwrap_or(policy.default_ttl)
                .clamp(policy.min_ttl, policy.max_ttl);
            tracing::debug!(jku = %entry.jku, ttl_secs = ttl.as_secs(), "fetched webhook JWKS");
            state.keys = Some(Arc::new(keys));
            state.fresh_until = Some(started + ttl);
            state.last_error = None;
        }
        Err(error) => {
            tracing::warn!(
                jku = %entry.jku,
                error = %error_chain(&error),
                serving_stale = state.keys.is_some(),
                "webhook JWKS fetch failed"
            );
            state.last_error = Some(error);
        }
    }
}

/// Takes back an attempt that never finished.
struct Undo<'a> {
    entry: &'a Entry,
    previous: Option<Instant>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = lock(&self.entry.state);
            // As if it never started: a caller that queued behind it fetches.
            state.last_attempt = self.previous;
            state.attempts = state.attempts.wrapping_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At most `max` characters of a value a sender chose, control characters replaced (so a
/// `kid` or `jku` cannot forge log lines).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_and_no_store() {
        assert_eq!(
            cache_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(
            cache_max_age("Max-Age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=soon"), None);
    }
}
