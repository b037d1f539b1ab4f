//! Request bodies on their way upstream: held (small enough to replay), a held prefix with
//! the rest streamed, or streamed; and the replay copy of a held one.

use std::pin::Pin;
use std::sync::Arc;
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

/// How slowly a client may send a request body: at most `idle` between two parts of it while
/// it is being read, and `total` for all of it, counted from the end of the request's head.
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

/// A request body was cut off: the memory for bodies in flight is spent.
#[derive(Debug, thiserror::Error)]
#[error("the memory for request bodies in flight is spent")]
pub(crate) struct NoRoom;

/// Whether `error`, or an error in its chain, is a `T`.
pub(crate) fn in_chain<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<T>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// `now + after` on tokio's clock, or `None` ("no limit") when that is past its range.
fn deadline(after: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(after)
}

/// A client's request body under its [`BodyPace`], and charged to [`BodyMemory`] as it arrives
/// when it is to be held: whoever reads it (the proxy holding it, the signing layer
/// collecting it, the upstream connection streaming it) gets [`TooSlow`] once the client
/// stalls past a deadline, or [`NoRoom`] when the memory is spent, so no read of a body
/// waits forever and bodies in flight never hold more than the budget.
pub(crate) struct Paced {
    body: Incoming,
    pace: BodyPace,
    /// Armed when a read finds nothing to read, disarmed by each part that arrives: a body
    /// nobody is reading yet (the request waits for a token or a connection) is not idle.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    total: Option<Pin<Box<tokio::time::Sleep>>>,
    charge: Option<Charge>,
}

impl Paced {
    pub(crate) fn new(body: Incoming, pace: BodyPace, charge: Option<Charge>) -> Self {
        Paced {
            body,
            pace,
            idle: None,
            total: deadline(pace.total).map(|at| Box::pin(tokio::time::sleep_until(at))),
            charge,
        }
    }

    /// The memory charged so far, no longer added to: for a body whose held part is done
    /// (read whole, or its prefix read and the rest to be streamed).
    pub(crate) fn take_charge(&mut self) -> Option<Charge> {
        self.charge.take()
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
                this.idle = None;
                let size = frame.data_ref().map_or(0, Bytes::len);
                if let Some(charge) = this.charge.as_mut()
                    && !charge.add(size)
                {
                    return Poll::Ready(Some(Err(NoRoom.into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
            Poll::Pending => {
                if let Some(total) = this.total.as_mut()
                    && total.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(TooSlow::Total(this.pace.total).into())));
                }
                if this.idle.is_none() {
                    this.idle =
                        deadline(this.pace.idle).map(|at| Box::pin(tokio::time::sleep_until(at)));
                }
                if let Some(idle) = this.idle.as_mut()
                    && idle.as_mut().poll(cx).is_ready()
                {
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
    /// The memory for bodies in flight is spent.
    NoRoom,
}

/// Takes a request body in: held when it is at most `limit` bytes (a `Content-Length`
/// within it, or a chunked body that ends within it), else streamed (a chunked body with the
/// part read so far first). Every read of it, now or later, keeps to `pace`. What is held is
/// charged to `memory` as it arrives; `signed` says the signing layer will hold the rest of a
/// streamed body too (then the charge goes on with it). Returns the charge of what this
/// request holds, to be kept until its answer.
pub(crate) async fn take_in(
    body: Incoming,
    content_length: Option<u64>,
    limit: u64,
    pace: BodyPace,
    memory: &BodyMemory,
    signed: bool,
) -> Result<(ProxyBody, Option<Charge>), Refused> {
    if body.is_end_stream() {
        return Ok((ProxyBody::Held(Full::new(Bytes::new())), None));
    }
    let charge = Some(memory.charge());
    let refused = |e: BoxError| {
        if in_chain::<TooSlow>(&*e) {
            Refused::TooSlow
        } else if in_chain::<NoRoom>(&*e) {
            Refused::NoRoom
        } else {
            Refused::Incomplete
        }
    };
    let mut body = Paced::new(body, pace, charge);
    if content_length.is_some_and(|length| length > limit) {
        // Streamed: charged while the signing layer holds it, else not at all.
        if !signed {
            body.take_charge();
        }
        return Ok((ProxyBody::Streamed(body), None));
    }
    // Read up to the limit; a body that ends within it is held (and replayable).
    let mut read = bytes::BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => {
                let held = body.take_charge();
                return Ok((ProxyBody::Held(Full::new(read.freeze())), held));
            }
            Some(Err(e)) => return Err(refused(e)),
            Some(Ok(frame)) => frame,
        };
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
        }
        if read.len() as u64 > limit {
            // The prefix is held until sent; the rest is charged only if the signing layer
            // is to hold it.
            let prefix = if signed { None } else { body.take_charge() };
            return Ok((ProxyBody::Prefixed(Some(read.freeze()), body), prefix));
        }
    }
}

/// The memory budget of the bodies the proxy holds at once, across workers, in KiB.
pub(crate) struct BodyMemory(Arc<tokio::sync::Semaphore>);

impl BodyMemory {
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyMemory(Arc::new(tokio::sync::Semaphore::new(kib)))
    }

    /// An empty charge against this budget, for one request's body.
    pub(crate) fn charge(&self) -> Charge {
        Charge {
            memory: self.0.clone(),
            held: None,
            bytes: 0,
        }
    }
}

/// What one request's held body takes from [`BodyMemory`], grown as its bytes arrive (never
/// reserved ahead: a client that declares a megabyte and sends a byte costs a kibibyte) and
/// given back when dropped.
pub(crate) struct Charge {
    memory: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    bytes: u64,
}

impl Charge {
    /// Adds `size` bytes; `false` when the budget has no room for them (nothing is waited
    /// for: a request that finds no room is answered 503, rather than queued).
    fn add(&mut self, size: usize) -> bool {
        self.bytes += size as u64;
        let held = self.held.as_ref().map_or(0, |p| p.num_permits() as u64);
        let needed = self.bytes.div_ceil(1024).saturating_sub(held);
        if needed == 0 {
            return true;
        }
        let Ok(needed) = u32::try_from(needed) else {
            return false;
        };
        match self.memory.clone().try_acquire_many_owned(needed) {
            Ok(more) => {
                match self.held.as_mut() {
                    Some(held) => held.merge(more),
                    None => self.held = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }
}
