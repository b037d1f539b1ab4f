//! The signing layer in a runtime built without timers (`enable_time` off): bodies are still
//! collected and signed, and a body ready at once (the common `Full<Bytes>`) never asks for a
//! timer. A test binary of its own, because it replaces the process's panic hook to count
//! the messages a refused timer prints.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use truelayer_auth_signing::{Signer, SigningLayer, TL_SIGNATURE};

/// A body that is not ready the first time it is polled, then is.
struct LateOnce {
    chunk: Option<Bytes>,
    late: bool,
}

impl From<Bytes> for LateOnce {
    fn from(chunk: Bytes) -> Self {
        LateOnce {
            chunk: Some(chunk),
            late: true,
        }
    }
}

impl http_body::Body for LateOnce {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if std::mem::take(&mut self.late) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.chunk.take().map(|c| Ok(Frame::data(c))))
    }
}

/// Sends `body` through a signing layer to an upstream that records what it received: the
/// body, and whether it was signed.
async fn sign_and_record<B>(body: B) -> (Bytes, bool)
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + From<Bytes> + Send + 'static,
{
    let seen = Arc::new(Mutex::new(None));
    let recorder = {
        let seen = seen.clone();
        service_fn(move |request: Request<B>| {
            let seen = seen.clone();
            async move {
                let signed = request.headers().contains_key(TL_SIGNATURE);
                let body = request.into_body().collect().await.unwrap().to_bytes();
                *seen.lock().unwrap() = Some((body, signed));
                Ok::<_, Infallible>(http::Response::new(()))
            }
        })
    };
    let request = Request::post("/v3/payments").body(body).unwrap();
    SigningLayer::new(Signer::generate("kid"))
        .layer(recorder)
        .oneshot(request)
        .await
        .unwrap();
    seen.lock().unwrap().take().expect("the request was sent")
}

#[test]
fn without_timers_bodies_are_signed_and_a_ready_one_never_asks_for_a_timer() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    std::panic::set_hook(Box::new(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (full, late, panics_for_full) = runtime.block_on(async {
        let full = sign_and_record(Full::new(Bytes::from_static(b"{}"))).await;
        let panics_for_full = panics.load(Ordering::SeqCst);
        // One that has to be waited for: no timer can bound the wait, and it is waited for.
        let late = sign_and_record(LateOnce::from(Bytes::from_static(b"{\"a\":1}"))).await;
        (full, late, panics_for_full)
    });
    let _ = std::panic::take_hook();
    assert_eq!(panics_for_full, 0, "a body ready at once made no timer");
    assert_eq!(full, (Bytes::from_static(b"{}"), true));
    assert_eq!(late, (Bytes::from_static(b"{\"a\":1}"), true));
    assert!(
        panics.load(Ordering::SeqCst) <= 1,
        "{} panic messages",
        panics.load(Ordering::SeqCst)
    );
}
