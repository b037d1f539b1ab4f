//! Where a client stack's tokens come from.

use std::future::Future;
use std::pin::Pin;

use crate::error::Error;
use crate::token::AccessToken;

/// The future of [`TokenSource::token`].
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<AccessToken, Error>> + Send + 'static>>;

/// Where a client stack gets its tokens: a usable token, the cached one, and a way to report
/// one the API rejected.
///
/// Implemented by [`TokenCache`](crate::TokenCache) (one merchant: the request is ignored)
/// and [`KeyedTokenCache`](crate::KeyedTokenCache) (many merchants: each request names its
/// own with a [`CacheKey`](crate::CacheKey) extension). The bearer layer of
/// `truelayer-auth-tower` takes any `TokenSource`, so one client stack and one connection
/// pool can serve every merchant of a platform.
///
/// # Example
///
/// ```
/// use truelayer_auth::{AccessToken, Error, TokenFuture, TokenSource};
///
/// /// A fixed token, for tests of code that sits behind the bearer layer.
/// #[derive(Clone)]
/// struct Fixed(AccessToken);
///
/// impl TokenSource for Fixed {
///     fn cached(&self, _: &http::Extensions) -> Result<Option<AccessToken>, Error> {
///         Ok(Some(self.0.clone()))
///     }
///     fn token(&self, _: &http::Extensions) -> TokenFuture {
///         let token = self.0.clone();
///         Box::pin(async move { Ok(token) })
///     }
///     fn invalidate(&self, _: &AccessToken) -> bool {
///         false
///     }
/// }
/// ```
pub trait TokenSource: Clone + Send + Sync + 'static {
    /// A usable token for a request with these extensions, if one is held now. Never waits
    /// and never fetches.
    ///
    /// # Errors
    ///
    /// When the request cannot be served at all (a keyed source: no or an unknown merchant).
    fn cached(&self, request: &http::Extensions) -> Result<Option<AccessToken>, Error>;

    /// A usable token for a request with these extensions, waiting (bounded) for a fetch
    /// when none is held.
    fn token(&self, request: &http::Extensions) -> TokenFuture;

    /// Reports that the API rejected `token` (a 401); returns whether the report was acted on.
    fn invalidate(&self, token: &AccessToken) -> bool;

    /// The token to replay a request rejected with `rejected` (after
    /// [`invalidate`](Self::invalidate)): a fresh one if the source is fetching one because
    /// of that rejection, otherwise as [`token`](Self::token). The default is `token`.
    fn replacement(&self, rejected: &AccessToken, request: &http::Extensions) -> TokenFuture {
        let _ = rejected;
        self.token(request)
    }

    /// Whether a 401 for a token from this source may be reported to the cache that fetched
    /// the token, bypassing the source: true for this crate's caches, whose `invalidate` and
    /// `replacement` do exactly that, so the bearer layer need not keep a clone of the
    /// source per request. A source that wraps another keeps the default, `false`.
    #[doc(hidden)]
    fn reports_through_tokens(&self) -> bool {
        false
    }
}

/// A 401 for `token` reported to the cache that fetched it: `None` if it did not come from
/// one of this crate's caches, or that cache is gone. For the bearer layer (see
/// [`TokenSource::reports_through_tokens`]).
#[doc(hidden)]
pub fn invalidate_issued(token: &AccessToken) -> Option<bool> {
    Some(token.issuer()?.invalidate(token))
}

/// The replacement for a rejected `token` from the cache that fetched it, as
/// [`invalidate_issued`].
#[doc(hidden)]
pub fn replacement_issued(rejected: &AccessToken) -> Option<TokenFuture> {
    rejected.issuer()?.replacement(rejected)
}
