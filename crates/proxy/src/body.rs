//! Request bodies on their way upstream: held (small enough to replay), a held prefix with
//! the rest streamed, or streamed; and the replay copy of a held one.

use std::pin::Pin;
use std::task::{Context, Poll};

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
    Prefixed(Option<Bytes>, Incoming),
    /// Streamed as it comes, never held.
    Streamed(Incoming),
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> Self {
        ProxyBody::Held(Full::new(bytes))
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
                None => Pin::new(rest).poll_frame(cx).map_err(BoxError::from),
            },
            ProxyBody::Streamed(incoming) => {
                Pin::new(incoming).poll_frame(cx).map_err(BoxError::from)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Held(full) | ProxyBody::Replay(full) => full.is_end_stream(),
            ProxyBody::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
            ProxyBody::Streamed(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Held(full) | ProxyBody::Replay(full) => full.size_hint(),
            ProxyBody::Prefixed(..) => SizeHint::default(),
            ProxyBody::Streamed(incoming) => incoming.size_hint(),
        }
    }
}

/// Why a request body could not be taken in.
pub(crate) enum Refused {
    /// The client stopped sending, or the connection failed.
    Incomplete,
    /// The client took longer than the body timeout.
    TooSlow,
}

/// Takes a request body in: held when it is at most `limit` bytes (a `Content-Length`
/// within it, or a chunked body that ends within it), else streamed (a chunked body with the
/// part read so far first). Reading what is held is bounded by `timeout`.
pub(crate) async fn take_in(
    body: Incoming,
    content_length: Option<u64>,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<ProxyBody, Refused> {
    if body.is_end_stream() {
        return Ok(ProxyBody::Held(Full::new(Bytes::new())));
    }
    match content_length {
        Some(length) if length <= limit => {
            match tokio::time::timeout(timeout, body.collect()).await {
                Ok(Ok(collected)) => Ok(ProxyBody::Held(Full::new(collected.to_bytes()))),
                Ok(Err(_)) => Err(Refused::Incomplete),
                Err(_) => Err(Refused::TooSlow),
            }
        }
        Some(_) => Ok(ProxyBody::Streamed(body)),
        None => {
            // Chunked: read up to the limit; a short body is held (and replayable).
            let mut body = body;
            let mut read = bytes::BytesMut::new();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                    Err(_) => return Err(Refused::TooSlow),
                    Ok(None) => return Ok(ProxyBody::Held(Full::new(read.freeze()))),
                    Ok(Some(Err(_))) => return Err(Refused::Incomplete),
                    Ok(Some(Ok(frame))) => frame,
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
