//! The response future: a named state machine, allocation-free while a token is cached.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::Service;
use tower::util::{Oneshot, ServiceExt};
use truelayer_auth::{AccessToken, TokenCache};

use crate::error::BearerAuthError;
use crate::layer::authorize;
use crate::replay::with_body;

type TokenFuture =
    Pin<Box<dyn Future<Output = Result<AccessToken, truelayer_auth::Error>> + Send + 'static>>;

fn wait_for_token(tokens: &TokenCache) -> TokenFuture {
    // Boxed only on the slow paths: a cold cache, or a refresh after a 401.
    let tokens = tokens.clone();
    Box::pin(async move { tokens.token().await })
}

/// A request waiting for its token, with the ready service that will send it.
struct Deferred<S, B> {
    service: S,
    request: Request<B>,
    replay_body: Option<B>,
    tokens: TokenCache,
}

/// What a replay needs: a service to send it, the copy, and the cache for a fresh token.
type Replay<S, B> = (S, Request<B>, TokenCache);

pin_project! {
    /// The future of [`BearerAuth`](crate::BearerAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Fetching {
            token: TokenFuture,
            deferred: Option<Deferred<S, B>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            token: Option<AccessToken>,
            replay: Option<Replay<S, B>>,
        },
        Refetching {
            token: TokenFuture,
            replay: Option<(S, Request<B>)>,
        },
        Replaying {
            #[pin]
            future: Oneshot<S, Request<B>>,
        },
    }
}

impl<S: Service<Request<B>>, B> std::fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn calling(
        future: S::Future,
        token: AccessToken,
        replay: Option<Replay<S, B>>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                token: Some(token),
                replay,
            },
        }
    }

    pub(crate) fn fetching(
        service: S,
        request: Request<B>,
        replay_body: Option<B>,
        tokens: TokenCache,
    ) -> Self {
        ResponseFuture {
            state: State::Fetching {
                token: wait_for_token(&tokens),
                deferred: Some(Deferred {
                    service,
                    request,
                    replay_body,
                    tokens,
                }),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
{
    type Output = Result<Response<ResBody>, BearerAuthError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Fetching { token, deferred } => {
                    let token = match ready!(token.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(e) => return Poll::Ready(Err(BearerAuthError::Token(e))),
                    };
                    let Deferred {
                        mut service,
                        mut request,
                        replay_body,
                        tokens,
                    } = deferred
                        .take()
                        .expect("ResponseFuture polled after completion");
                    authorize(&mut request, &token);
                    let replay = replay_body
                        .map(|body| (service.clone(), with_body(&request, body), tokens));
                    let future = service.call(request);
                    this.state.set(State::Calling {
                        future,
                        token: Some(token),
                        replay,
                    });
                }
                StateProj::Calling {
                    future,
                    token,
                    replay,
                } => {
                    let response = ready!(future.poll(cx)).map_err(BearerAuthError::Service)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let sent = token
                        .take()
                        .expect("ResponseFuture polled after completion");
                    // Only the token that was sent; a newer one in the cache survives.
                    let withdrawn = sent.invalidate();
                    let Some((service, request, tokens)) = replay.take() else {
                        tracing::debug!(withdrawn, "401 for a request that cannot be replayed");
                        return Poll::Ready(Ok(response));
                    };
                    tracing::debug!(withdrawn, "401: replaying with a fresh token");
                    this.state.set(State::Refetching {
                        token: wait_for_token(&tokens),
                        replay: Some((service, request)),
                    });
                }
                StateProj::Refetching { token, replay } => {
                    let token = match ready!(token.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(e) => return Poll::Ready(Err(BearerAuthError::Token(e))),
                    };
                    let (service, mut request) = replay
                        .take()
                        .expect("ResponseFuture polled after completion");
                    authorize(&mut request, &token);
                    this.state.set(State::Replaying {
                        future: service.oneshot(request),
                    });
                }
                StateProj::Replaying { future } => {
                    return future.poll(cx).map_err(BearerAuthError::Service);
                }
            }
        }
    }
}
