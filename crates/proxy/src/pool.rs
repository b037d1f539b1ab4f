//! One worker's HTTP/1.1 connections to the upstream.
//!
//! A proxy has one upstream, and each worker its own connections, so the pool is a stack of
//! idle senders: no key to hash, no lock anyone else takes, no task spawned per request. A
//! connection goes back on the stack when its response body has been read to the end (a
//! response dropped half-read closes its connection, which cannot be reused).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Service, ServiceExt};

use crate::access::Exchange;
use crate::body::{BoxError, ProxyBody, copy_held};
use crate::metrics::Metrics;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per worker.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (upstreams close theirs
/// after a minute or so; TrueLayer's load balancers after 60 s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Why a request could not be exchanged with the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// TCP or TLS connection failed.
    #[error("could not connect to the upstream")]
    Connect(#[source] BoxError),
    /// Connecting took longer than the connect timeout.
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    /// The HTTP exchange failed.
    #[error("the exchange with the upstream failed")]
    Http(#[source] hyper::Error),
}

/// The pool of one worker: a cheap handle.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: where to connect.
    target: Uri,
    idle: Mutex<Vec<(SendRequest<ProxyBody>, Instant)>>,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pool {
            inner: Arc::new(Inner {
                connector,
                target,
                idle: Mutex::new(Vec::new()),
                metrics,
            }),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(SendRequest<ProxyBody>, Instant)>> {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open (the hottest).
    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle();
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Pools a connection whose response has been read. If its request body is still being
    /// sent (a streamed upload answered early), it goes back only once that is done, from a
    /// task: pooled, it would make the next request wait on someone else's upload.
    fn give_back(&self, mut sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            let pool = self.clone();
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, sender.ready()).await {
                    pool.give_back(sender);
                }
            });
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let connecting = self
            .inner
            .connector
            .clone()
            .oneshot(self.inner.target.clone());
        let io = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn send(
        self,
        request: Request<ProxyBody>,
        exchange: Option<Arc<Exchange>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let started = tokio::time::Instant::now();
        let result = self.exchange(request, exchange.as_deref()).await;
        // Every outcome, failures too: from the call to the response head, connecting and
        // waiting for a connection included.
        let took = started.elapsed();
        self.inner.metrics.upstream(took);
        if let Some(exchange) = exchange {
            exchange.upstream(took);
        }
        result
    }

    async fn exchange(
        &self,
        mut request: Request<ProxyBody>,
        log: Option<&Exchange>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // Set once a request is sent again because its pooled connection closed under it:
        // the next try takes a fresh connection, and is the last.
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only { None } else { self.checkout() };
            let (mut sender, reused) = match pooled {
                Some(sender) => (sender, true),
                // Boxed: the connect future is large and rarely needed.
                None => (Box::pin(self.connect()).await?, false),
            };
            // Pooled connections are idle (see `give_back`); one the upstream closed
            // meanwhile fails here, and another is tried.
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(UpstreamError::Http(e));
            }
            // A copy to send again should this pooled connection turn out closed once the
            // request is written (see `closed_under_it`).
            let again = if reused { send_again(&request) } else { None };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let mut body = UpstreamBody {
                        body,
                        sender: Some(sender),
                        pool: self.clone(),
                    };
                    if body.body.is_end_stream() {
                        body.finished();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match (e.take_message(), again) {
                    // Never taken by the connection (it closed first): not sent, so safe to
                    // send on another.
                    (Some(unsent), _) if reused => request = unsent,
                    (_, Some(copy)) if closed_under_it(e.error()) => {
                        tracing::debug!(error = %e.error(), "the upstream closed a pooled connection under a request; sending it again on a fresh one");
                        self.inner.metrics.resent();
                        if let Some(log) = log {
                            log.resent();
                        }
                        request = copy;
                        fresh_only = true;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }
}

/// A copy of `request` to send again on a fresh connection, when that is safe: its body is
/// held (a streamed one is spent), and sending it twice does no harm: an idempotent method
/// (RFC 9110 §9.2.2), or one that carries an `Idempotency-Key` (TrueLayer then acts on it
/// once; the signing layer gives every signed request one). nginx's `proxy_next_upstream`
/// makes the same choice for non-idempotent requests unless told otherwise.
fn send_again(request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let keyed = request
        .headers()
        .get("idempotency-key")
        .is_some_and(|key| !key.as_bytes().trim_ascii().is_empty());
    if !idempotent && !keyed {
        return None;
    }
    let body = copy_held(request.body())?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Whether a request failed because its (reused) connection closed before any answer came:
/// the upstream had closed it while idle, as servers do after their keep-alive timeout, and
/// the close crossed the request on the wire. Then the upstream did not act on it (it read
/// nothing more on that connection); a request that got any part of an answer is not here,
/// since `try_send_request` hands back only failures before the response's head.
fn closed_under_it(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}

/// The future [`Pool`] returns: one allocation per request.
pub(crate) type PoolFuture =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send>>;

impl Service<Request<ProxyBody>> for Pool {
    type Response = Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = PoolFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let exchange = request.extensions().get::<Arc<Exchange>>().cloned();
        if matches!(request.body(), ProxyBody::Replay(_)) {
            self.inner.metrics.replayed();
            if let Some(exchange) = &exchange {
                exchange.replayed();
            }
        }
        Box::pin(self.clone().send(request, exchange))
    }
}

/// An upstream response body; its connection returns to the pool once it has been read to
/// the end.
pub(crate) struct UpstreamBody {
    body: Incoming,
    sender: Option<SendRequest<ProxyBody>>,
    pool: Pool,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn finished(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.give_back(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished(),
            // Trailers end a body too (hyper's server stops polling after them).
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || self.body.is_end_stream() => {
                self.finished();
            }
            // An error: the connection is not reused (dropping the sender closes it).
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
