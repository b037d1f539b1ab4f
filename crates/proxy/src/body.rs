//! Request bodies on their way upstream: held (small enough to replay), a held prefix with
//! the rest streamed, or streamed; and the replay copy of a held one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body the proxy forwards.
pub(crate) enum ProxyBody {
    /// Read in full: replayable after a 401.
    Held(Full<Bytes>),
    /// The copy of a held body, sent again after a 401 (counted as a replay).
    Replay(Full<Bytes>),
    /// A chunked body longer than the replay limit: what was read, then the rest.
    Prefixed(Option<Bytes>, Paced),
    /// Streamed as it comes, never held.
    Streamed(Paced),
}

/// How slowly a client may send a request body: at most `idle` between two parts of it, and
/// `total` for all of it, counted from the end of the request's head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyPace {
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
}

/// A request body was cut off: the client was too slow sending it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TooSlow {
    /// Nothing arrived for the idle timeout.
    #[error("the client sent no part of the request body for {} s", .0.as_secs_f32())]
    Idle(Duration),
    /// It took longer than the total timeout.
    #[error("the client took longer than {} s to send the request body", .0.as_secs_f32())]
    Total(Duration),
}

impl TooSlow {
    /// Whether `error`, or an error in its chain, is a body cut off for slowness.
    pub(crate) fn in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<TooSlow>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// A client's request body under its [`BodyPace`]: whoever reads it (the proxy holding it, the
/// signing layer collecting it, the upstream connection streaming it) gets [`TooSlow`] once
/// the client stalls past a deadline, so no read of a body waits forever.
pub(crate) struct Paced {
    body: Incoming,
    pace: BodyPace,
    idle: Pin<Box<tokio::time::Sleep>>,
    total: Pin<Box<tokio::time::Sleep>>,
}

impl Paced {
    pub(crate) fn new(body: Incoming, pace: BodyPace) -> Self {
        Paced {
            body,
            pace,
            idle: Box::pin(tokio::time::sleep(pace.idle)),
            total: Box::pin(tokio::time::sleep(pace.total)),
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.pace.idle;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
            Poll::Pending => {
                if this.total.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(TooSlow::Total(this.pace.total).into())));
                }
                if this.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(TooSlow::Idle(this.pace.idle).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Held(Full::new(bytes))
    }
}

/// A copy of a held body, to send the same request again (not a replay after a 401).
pub(crate) fn copy_held(body: &ProxyBody) -> Option<ProxyBody> {
    match body {
        ProxyBody::Held(full) => Some(ProxyBody::Held(full.clone())),
        ProxyBody::Replay(full) => Some(ProxyBody::Replay(full.clone())),
        ProxyBody::Prefixed(..) | ProxyBody::Streamed(_) => None,
    }
}

/// The replay policy: held bodies are copied (the copy is marked as a replay).
pub(crate) fn replay_held(body: &ProxyBody) -> Option<ProxyBody> {
    match body {
        ProxyBody::Held(full) | ProxyBody::Replay(full) => Some(ProxyBody::Replay(full.clone())),
        ProxyBody::Prefixed(..) | ProxyBody::Streamed(_) => None,
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is `Unpin`.
        match self.get_mut() {
            ProxyBody::Held(full) | ProxyBody::Replay(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyBody::Prefixed(prefix, rest) => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            ProxyBody::Streamed(paced) => Pin::new(paced).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Held(full) | ProxyBody::Replay(full) => full.is_end_stream(),
            ProxyBody::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
            ProxyBody::Streamed(paced) => paced.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Held(full) | ProxyBody::Replay(full) => full.size_hint(),
            ProxyBody::Prefixed(..) => SizeHint::default(),
            ProxyBody::Streamed(paced) => paced.size_hint(),
        }
    }
}

/// Why a request body could not be taken in.
pub(crate) enum Refused {
    /// The client stopped sending, or the connection failed.
    Incomplete,
    /// The client was slower than the body's [`BodyPace`].
    TooSlow,
}

/// Takes a request body in: held when it is at most `limit` bytes (a `Content-Length`
/// within it, or a chunked body that ends within it), else streamed (a chunked body with the
/// part read so far first). Every read of it, now or later, keeps to `pace`.
pub(crate) async fn take_in(
    body: Incoming,
    content_length: Option<u64>,
    limit: u64,
    pace: BodyPace,
) -> Result<ProxyBody, Refused> {
    if body.is_end_stream() {
        return Ok(ProxyBody::Held(Full::new(Bytes::new())));
    }
    let refused = |e: BoxError| {
        if TooSlow::in_chain(&*e) {
            Refused::TooSlow
        } else {
            Refused::Incomplete
        }
    };
    let mut body = Paced::new(body, pace);
    match content_length {
        Some(length) if length <= limit => match body.collect().await {
            Ok(collected) => Ok(ProxyBody::Held(Full::new(collected.to_bytes()))),
            Err(e) => Err(refused(e)),
        },
        Some(_) => Ok(ProxyBody::Streamed(body)),
        None => {
            // Chunked: read up to the limit; a short body is held (and replayable).
            let mut read = bytes::BytesMut::new();
            loop {
                let frame = match body.frame().await {
                    None => return Ok(ProxyBody::Held(Full::new(read.freeze()))),
                    Some(Err(e)) => return Err(refused(e)),
                    Some(Ok(frame)) => frame,
                };
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
                if read.len() as u64 > limit {
                    return Ok(ProxyBody::Prefixed(Some(read.freeze()), body));
                }
            }
        }
    }
}

/// The memory budget of the bodies the proxy holds at once, across workers, in KiB.
pub(crate) struct BodyMemory(tokio::sync::Semaphore);

/// Room reserved in [`BodyMemory`] for one request's body, given back when dropped.
pub(crate) type BodyRoom<'a> = tokio::sync::SemaphorePermit<'a>;

impl BodyMemory {
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyMemory(tokio::sync::Semaphore::new(kib))
    }

    /// Reserves `bytes` now, or `None` when the budget is spent (the caller answers 503
    /// rather than queueing: a queue of waiting bodies holds connections instead).
    pub(crate) fn reserve(&self, bytes: u64) -> Option<BodyRoom<'_>> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        self.0.try_acquire_many(kib).ok()
    }
}
