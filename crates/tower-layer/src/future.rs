//! The response future: a named state machine, allocation-free while a token is cached.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::Service;
use tower::util::{Oneshot, ServiceExt};
use truelayer_auth::{AccessToken, TokenFuture, TokenSource};

use crate::error::BearerAuthError;
use crate::layer::authorize;
use crate::replay::with_body;

/// A request waiting for its token, with the ready service that will send it.
struct Deferred<S, B> {
    service: S,
    request: Request<B>,
    replay_body: Option<B>,
}

/// What a replay needs: a service to send it, and the copy.
type Replay<S, B> = (S, Request<B>);

pin_project! {
    /// The future of [`BearerAuth`](crate::BearerAuth).
    pub struct ResponseFuture<S, T, B, ResBody>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, ResBody>,
        tokens: Option<T>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, ResBody>
    where
        S: Service<Request<B>>,
    {
        Failed {
            error: Option<truelayer_auth::Error>,
        },
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
        Draining {
            body: Pin<Box<ResBody>>,
            drained: usize,
            // A 401 body trickled slowly is not waited for: the connection is dropped instead.
            // (None outside a tokio runtime with timers: then only the byte limit applies.)
            give_up: Option<Pin<Box<tokio::time::Sleep>>>,
            sent: Option<AccessToken>,
            replay: Option<Replay<S, B>>,
        },
        Refetching {
            token: TokenFuture,
            replay: Option<Replay<S, B>>,
        },
        Replaying {
            #[pin]
            future: Oneshot<S, Request<B>>,
        },
    }
}

impl<S: Service<Request<B>>, T, B, ResBody> std::fmt::Debug for ResponseFuture<S, T, B, ResBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, T, B, ResBody> ResponseFuture<S, T, B, ResBody>
where
    S: Service<Request<B>>,
    T: TokenSource,
{
    pub(crate) fn failed(error: truelayer_auth::Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            tokens: None,
        }
    }

    /// `tokens`: `None` when a 401 is reported through the token itself.
    pub(crate) fn calling(
        future: S::Future,
        token: AccessToken,
        replay: Option<Replay<S, B>>,
        tokens: Option<T>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                token: Some(token),
                replay,
            },
            tokens,
        }
    }

    pub(crate) fn fetching(
        service: S,
        request: Request<B>,
        replay_body: Option<B>,
        tokens: T,
    ) -> Self {
        // Boxed only on the slow paths: no usable token, or a refresh after a 401.
        let token = tokens.token(request.extensions());
        ResponseFuture {
            state: State::Fetching {
                token,
                deferred: Some(Deferred {
                    service,
                    request,
                    replay_body,
                }),
            },
            tokens: Some(tokens),
        }
    }
}

const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

/// The most of a 401's body read so its connection can be reused for the replay.
const DRAIN_LIMIT: usize = 64 * 1024;

/// How long a 401's body is read before the replay goes ahead without it.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// Set once building a timer panicked on this thread: its runtime has no timers.
    static NO_TIMER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The drain's time limit, if this runs where tokio's timers do. Without one the 401's body
/// is not drained (nothing could bound the wait for it); the replay goes ahead at once.
fn drain_timer() -> Option<Pin<Box<tokio::time::Sleep>>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    if NO_TIMER.get() {
        return None;
    }
    let _entered = runtime.enter();
    // A runtime built without `enable_time` has no timer: building a Sleep panics, and the
    // panic hook prints a message. Tokio offers no way to ask first, so the first failure on
    // a thread is remembered and later 401s there print nothing. (A later runtime on the same
    // thread, with timers, then replays without draining: it costs a connection, not a
    // request.)
    let timer = std::panic::catch_unwind(|| Box::pin(tokio::time::sleep(DRAIN_TIME))).ok();
    if timer.is_none() {
        NO_TIMER.set(true);
    }
    timer
}

impl<S, T, B, ResBody> Future for ResponseFuture<S, T, B, ResBody>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    T: TokenSource,
    ResBody: http_body::Body,
{
    type Output = Result<Response<ResBody>, BearerAuthError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Err(BearerAuthError::Token(error)));
                }
                StateProj::Fetching { token, deferred } => {
                    let token = match ready!(token.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(e) => return Poll::Ready(Err(BearerAuthError::Token(e))),
                    };
                    let Deferred {
                        mut service,
                        mut request,
                        replay_body,
                    } = deferred.take().expect(POLLED_AFTER_COMPLETION);
                    authorize(&mut request, &token);
                    let replay =
                        replay_body.map(|body| (service.clone(), with_body(&request, body)));
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
                    let sent = token.take().expect(POLLED_AFTER_COMPLETION);
                    // Only the token that was sent: a newer one in the source survives.
                    let acted = match this.tokens.as_ref() {
                        Some(tokens) => Some(tokens.invalidate(&sent)),
                        // `None`: the cache is gone (every handle dropped), nothing to replay with.
                        None => truelayer_auth::invalidate_issued(&sent),
                    };
                    let (Some(acted), Some(replay)) = (acted, replay.take()) else {
                        tracing::debug!(acted, "401 for a request that cannot be replayed");
                        return Poll::Ready(Ok(response));
                    };
                    tracing::debug!(acted, "401: replaying");
                    // Read the 401's body first, so its connection goes back to the pool.
                    this.state.set(State::Draining {
                        body: Box::pin(response.into_body()),
                        drained: 0,
                        give_up: drain_timer(),
                        sent: Some(sent),
                        replay: Some(replay),
                    });
                }
                StateProj::Draining {
                    body,
                    drained,
                    give_up,
                    sent,
                    replay,
                } => {
                    // No timer: no bound on the wait for the body, so it is not read.
                    while give_up.is_some() && *drained <= DRAIN_LIMIT {
                        match body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                *drained += frame.data_ref().map_or(0, bytes::Buf::remaining);
                            }
                            Poll::Ready(Some(Err(_)) | None) => break,
                            Poll::Pending
                                if give_up
                                    .as_mut()
                                    .is_some_and(|t| t.as_mut().poll(cx).is_ready()) =>
                            {
                                break;
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    let sent = sent.take().expect(POLLED_AFTER_COMPLETION);
                    let (service, request) = replay.take().expect(POLLED_AFTER_COMPLETION);
                    let token = match this.tokens.as_ref() {
                        Some(tokens) => tokens.replacement(&sent, request.extensions()),
                        None => match truelayer_auth::replacement_issued(&sent) {
                            Some(token) => token,
                            // The cache went away while the 401 drained.
                            None => {
                                return Poll::Ready(Err(BearerAuthError::Token(
                                    truelayer_auth::Error::CacheDropped,
                                )));
                            }
                        },
                    };
                    this.state.set(State::Refetching {
                        token,
                        replay: Some((service, request)),
                    });
                }
                StateProj::Refetching { token, replay } => {
                    let token = match ready!(token.as_mut().poll(cx)) {
                        Ok(token) => token,
                        Err(e) => return Poll::Ready(Err(BearerAuthError::Token(e))),
                    };
                    let (service, mut request) = replay.take().expect(POLLED_AFTER_COMPLETION);
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
