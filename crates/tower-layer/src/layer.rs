//! [`BearerAuthLayer`] and the [`BearerAuth`] service it builds.

use http::header::AUTHORIZATION;
use http::{Request, Response};
use std::task::{Context, Poll};
use tower::{Layer, Service};
use truelayer_auth::{AccessToken, LogicalRequest, TokenCache, TokenSource};

use crate::error::BearerAuthError;
use crate::future::ResponseFuture;
use crate::replay::{EmptyBodies, ReplayPolicy, with_body};

/// Builds [`BearerAuth`] services that put `Authorization: Bearer <token>` on every request.
///
/// The tokens come from a [`TokenSource`]: a [`TokenCache`] for one merchant, or a
/// [`KeyedTokenCache`](truelayer_auth::KeyedTokenCache) that picks each request's merchant
/// from the [`CacheKey`](truelayer_auth::CacheKey) in its extensions. See the
/// [crate docs](crate) for examples.
#[derive(Debug, Clone)]
pub struct BearerAuthLayer<T = TokenCache, P = EmptyBodies> {
    tokens: T,
    policy: P,
}

impl<T: TokenSource> BearerAuthLayer<T> {
    /// A layer taking tokens from `tokens`, replaying requests with empty bodies after a 401.
    pub fn new(tokens: T) -> Self {
        BearerAuthLayer {
            tokens,
            policy: EmptyBodies,
        }
    }
}

impl<T, P> BearerAuthLayer<T, P> {
    /// Which requests are replayed after a 401: [`EmptyBodies`] (default),
    /// [`CloneBodies`](crate::CloneBodies), [`NoReplay`](crate::NoReplay) or
    /// [`replay_with`](crate::replay_with).
    pub fn replay_policy<Q>(self, policy: Q) -> BearerAuthLayer<T, Q> {
        BearerAuthLayer {
            tokens: self.tokens,
            policy,
        }
    }
}

impl<S, T: Clone, P: Clone> Layer<S> for BearerAuthLayer<T, P> {
    type Service = BearerAuth<S, T, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            tokens: self.tokens.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// Adds `Authorization: Bearer <token>` from a [`TokenSource`] to every request, replacing
/// any `Authorization` header already present. The header value is marked sensitive.
///
/// - With a usable token the request goes straight to the inner service; the per-request
///   work is a reference count on the token (and, for a source other than this project's
///   caches, one on the source) and, for replayable requests, a copy of the request head.
/// - Without one, the request waits for the source (bounded by its wait deadline) and fails
///   with [`BearerAuthError::Token`] if none comes; it is never sent without auth.
/// - A 401 answer is reported for exactly the token that was sent
///   ([`TokenSource::invalidate`]). If the [`ReplayPolicy`] can reproduce the body, the request
///   is sent once more with the token the source then holds (a fresh one if it withdrew the
///   rejected token); otherwise the 401 is returned. Concurrent 401s for one token cause one
///   refresh.
#[derive(Debug, Clone)]
pub struct BearerAuth<S, T = TokenCache, P = EmptyBodies> {
    inner: S,
    tokens: T,
    policy: P,
}

impl<S, T: TokenSource> BearerAuth<S, T> {
    /// Wraps `inner`.
    pub fn new(inner: S, tokens: T) -> Self {
        BearerAuth {
            inner,
            tokens,
            policy: EmptyBodies,
        }
    }

    /// A [`BearerAuthLayer`] with `tokens`.
    pub fn layer(tokens: T) -> BearerAuthLayer<T> {
        BearerAuthLayer::new(tokens)
    }
}

impl<S, T, P> BearerAuth<S, T, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The token source.
    pub fn tokens(&self) -> &T {
        &self.tokens
    }
}

/// Lets the copy made for a replay share the request's identity with layers below (the
/// signing layer's `Idempotency-Key`): only modification requests carry one.
fn share_identity<B>(request: &mut Request<B>) {
    use http::Method;
    let modifies = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if modifies && request.extensions().get::<LogicalRequest>().is_none() {
        request.extensions_mut().insert(LogicalRequest::new());
    }
}

pub(crate) fn authorize<B>(request: &mut Request<B>, token: &AccessToken) {
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.authorization_header());
}

impl<S, T, P, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S, T, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    T: TokenSource,
    P: ReplayPolicy<ReqBody>,
    ResBody: http_body::Body,
{
    type Response = Response<ResBody>;
    type Error = BearerAuthError<S::Error>;
    type Future = ResponseFuture<S, T, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BearerAuthError::Service)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let cached = match self.tokens.cached(request.extensions()) {
            Ok(cached) => cached,
            Err(e) => return ResponseFuture::failed(e),
        };
        let replay_body = self.policy.clone_body(request.body());
        if replay_body.is_some() {
            share_identity(&mut request);
        }
        match cached {
            Some(token) => {
                authorize(&mut request, &token);
                let replay = replay_body.map(|body| {
                    let copy = with_body(&request, body);
                    (self.inner.clone(), copy)
                });
                // `self.inner` was driven ready by `poll_ready`: call it directly.
                let future = self.inner.call(request);
                // A 401 goes to the cache that fetched the token when the source allows it,
                // which saves a clone of the source (a contended reference count) per call.
                let tokens = (!self.tokens.reports_through_tokens()).then(|| self.tokens.clone());
                ResponseFuture::calling(future, token, replay, tokens)
            }
            None => {
                // The call happens later, after the token arrives: take the service that is
                // ready and leave a clone in its place (tower's "clone and swap").
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::fetching(ready, request, replay_body, self.tokens.clone())
            }
        }
    }
}
