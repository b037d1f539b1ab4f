//! [`BearerAuthLayer`] and the [`BearerAuth`] service it builds.

use http::header::AUTHORIZATION;
use http::{Request, Response};
use std::task::{Context, Poll};
use tower::{Layer, Service};
use truelayer_auth::{AccessToken, TokenCache};

use crate::error::BearerAuthError;
use crate::future::ResponseFuture;
use crate::replay::{EmptyBodies, ReplayPolicy, with_body};

/// Builds [`BearerAuth`] services that put `Authorization: Bearer <token>` on every request.
///
/// See the [crate docs](crate) for an example.
#[derive(Debug, Clone)]
pub struct BearerAuthLayer<P = EmptyBodies> {
    tokens: TokenCache,
    policy: P,
}

impl BearerAuthLayer {
    /// A layer taking tokens from `tokens`, replaying requests with empty bodies after a 401.
    pub fn new(tokens: TokenCache) -> Self {
        BearerAuthLayer {
            tokens,
            policy: EmptyBodies,
        }
    }
}

impl<P> BearerAuthLayer<P> {
    /// Which requests are replayed after a 401: [`EmptyBodies`] (default),
    /// [`CloneBodies`](crate::CloneBodies), [`NoReplay`](crate::NoReplay) or
    /// [`replay_with`](crate::replay_with).
    pub fn replay_policy<Q>(self, policy: Q) -> BearerAuthLayer<Q> {
        BearerAuthLayer {
            tokens: self.tokens,
            policy,
        }
    }
}

impl<S, P: Clone> Layer<S> for BearerAuthLayer<P> {
    type Service = BearerAuth<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            tokens: self.tokens.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// Adds `Authorization: Bearer <token>` from a [`TokenCache`] to every request, replacing any
/// `Authorization` header already present. The header value is marked sensitive.
///
/// - With a usable token the request goes straight to the inner service; the only per-request
///   work is a reference count on the token and, for replayable requests, a copy of the
///   request head.
/// - Without one, the request waits for the cache (bounded by its wait deadline) and fails with
///   [`BearerAuthError::Token`] if none comes; it is never sent without auth.
/// - A 401 answer invalidates exactly the token that was sent. If the [`ReplayPolicy`] can
///   reproduce the body, the request is sent once more with a fresh token; otherwise the 401
///   is returned. Concurrent 401s for one token cause one refresh.
#[derive(Debug, Clone)]
pub struct BearerAuth<S, P = EmptyBodies> {
    inner: S,
    tokens: TokenCache,
    policy: P,
}

impl<S> BearerAuth<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, tokens: TokenCache) -> Self {
        BearerAuth {
            inner,
            tokens,
            policy: EmptyBodies,
        }
    }

    /// A [`BearerAuthLayer`] with `tokens`.
    pub fn layer(tokens: TokenCache) -> BearerAuthLayer {
        BearerAuthLayer::new(tokens)
    }
}

impl<S, P> BearerAuth<S, P> {
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

    /// The token cache.
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }
}

pub(crate) fn authorize<B>(request: &mut Request<B>, token: &AccessToken) {
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.authorization_header());
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    P: ReplayPolicy<ReqBody>,
{
    type Response = Response<ResBody>;
    type Error = BearerAuthError<S::Error>;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BearerAuthError::Service)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let replay_body = self.policy.clone_body(request.body());
        match self.tokens.cached() {
            Some(token) => {
                authorize(&mut request, &token);
                let replay = replay_body.map(|body| {
                    let copy = with_body(&request, body);
                    (self.inner.clone(), copy, self.tokens.clone())
                });
                // `self.inner` was driven ready by `poll_ready`: call it directly.
                let future = self.inner.call(request);
                ResponseFuture::calling(future, token, replay)
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
