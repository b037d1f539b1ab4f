//! Faults the token endpoint can be told to produce, how each is served, and the admin
//! routes that inject them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::server::KillSwitch;
use crate::state::{State, lock};

/// One misbehaviour of the token endpoint, used in place of a normal answer.
///
/// Over the admin API a fault is JSON tagged by `kind`, for example
/// `{"kind":"status","status":503,"retry_after":"2"}` or `{"kind":"drop_connection"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status (500, 503, 429, ...) and an empty body, with `Retry-After` if given.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header value, verbatim (seconds or an HTTP-date).
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Answer with this status, content type and body (malformed JSON, HTML pages, ...).
    Body {
        /// The HTTP status.
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body.
        body: String,
    },
    /// Close the connection without answering.
    DropConnection,
    /// Announce a longer body than is sent, then close the connection.
    Truncate,
    /// Redirect to `location` with 307 (which would replay the POST, secret included).
    Redirect {
        /// The `Location` header.
        location: String,
    },
    /// Wait this long, then answer normally.
    Delay {
        /// The delay in milliseconds.
        millis: u64,
    },
}

impl Fault {
    /// A 500 Internal Server Error.
    pub fn internal_error() -> Self {
        Fault::Status {
            status: 500,
            retry_after: None,
        }
    }

    /// A 503 Service Unavailable.
    pub fn unavailable() -> Self {
        Fault::Status {
            status: 503,
            retry_after: None,
        }
    }

    /// A 429 Too Many Requests with `Retry-After: <seconds>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// A 200 with this body as `application/json`.
    pub fn malformed(body: impl Into<String>) -> Self {
        Fault::Body {
            status: 200,
            content_type: "application/json".into(),
            body: body.into(),
        }
    }

    /// A delay before an otherwise normal answer.
    pub fn delay(delay: Duration) -> Self {
        Fault::Delay {
            millis: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A fraction of token requests that fail, chosen from a set of faults.
#[derive(Debug, Clone)]
struct RandomFaults {
    rate: f64,
    faults: Vec<Fault>,
}

/// What the token endpoint is told to do instead of answering normally.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queued: VecDeque<Fault>,
    random: Option<RandomFaults>,
    latency: Duration,
}

impl Faults {
    /// Serves these faults to the next token requests, in order, after those already queued.
    pub(crate) fn queue(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.inner).queued.extend(faults);
    }

    /// Fails a fraction `rate` (0 to 1) of later token requests with one of `faults`; a rate
    /// of 0 (or less) turns it off.
    pub(crate) fn set_random(&self, rate: f64, faults: Vec<Fault>) {
        lock(&self.inner).random = (rate > 0.0).then(|| RandomFaults {
            rate: rate.min(1.0),
            faults,
        });
    }

    /// Removes queued and random faults and latency.
    pub(crate) fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.queued.clear();
        inner.random = None;
        inner.latency = Duration::ZERO;
    }

    /// The fault for this token request: the next queued one, or maybe a random one.
    pub(crate) fn next(&self) -> Option<Fault> {
        let mut inner = lock(&self.inner);
        if let Some(f) = inner.queued.pop_front() {
            return Some(f);
        }
        let random = inner.random.as_ref()?;
        if !random.faults.is_empty() && fastrand::f64() < random.rate {
            return Some(random.faults[fastrand::usize(..random.faults.len())].clone());
        }
        None
    }

    /// The delay before every token answer.
    pub(crate) fn latency(&self) -> Duration {
        lock(&self.inner).latency
    }

    /// Sets the delay before every token answer.
    pub(crate) fn set_latency(&self, latency: Duration) {
        lock(&self.inner).latency = latency;
    }
}

/// Serves `fault`: the answer to send instead of the normal one, or `None` (after waiting)
/// for a [`Fault::Delay`], when the normal answer follows. `kill` closes the connection for
/// [`Fault::DropConnection`].
pub(crate) async fn serve(fault: Fault, kill: Option<KillSwitch>) -> Option<Response> {
    let response = match fault {
        Fault::Delay { millis } => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            return None;
        }
        Fault::Status {
            status,
            retry_after,
        } => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = status_or_500(status);
            if let Some(after) = retry_after.and_then(|a| HeaderValue::from_str(&a).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, after);
            }
            response
        }
        Fault::Body {
            status,
            content_type,
            body,
        } => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status_or_500(status);
            if let Ok(ct) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Fault::Redirect { location } => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            if let Ok(l) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, l);
            }
            response
        }
        Fault::Truncate => {
            // Promise 1000 bytes, send a few, then fail the body: hyper closes the connection.
            let mut response = Response::new(Body::new(TruncatedBody::default()));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Fault::DropConnection => {
            if let Some(kill) = kill {
                kill.0.notify_one();
            }
            // The connection task drops this request with its connection.
            std::future::pending::<Response>().await
        }
    };
    Some(response)
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// One chunk of a token body, a pause (so hyper flushes the headers and the chunk), then an
/// error: the client sees a body cut short.
#[derive(Default)]
struct TruncatedBody {
    step: u8,
}

impl http_body::Body for TruncatedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        self.step += 1;
        match self.step {
            1 => {
                let chunk = Bytes::from_static(b"{\"access_token\":\"eyJ");
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Some(Err(std::io::Error::other("truncated on purpose")))),
        }
    }
}

/// `POST` and `DELETE /emulator/faults`, `POST /emulator/latency`.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/emulator/faults", post(faults).delete(clear))
        .route("/emulator/latency", post(latency))
}

#[derive(Deserialize)]
struct FaultsBody {
    #[serde(default)]
    faults: Vec<Fault>,
    /// Fail this fraction of later token requests with one of `random` (0 turns it off).
    #[serde(default)]
    random_rate: Option<f64>,
    #[serde(default)]
    random: Vec<Fault>,
}

/// `POST /emulator/faults` with `{"faults": [...], "random_rate": 0.1, "random": [...]}`.
async fn faults(AxumState(state): AxumState<Arc<State>>, Json(body): Json<FaultsBody>) -> Response {
    state.faults.queue(body.faults);
    if let Some(rate) = body.random_rate {
        state.faults.set_random(rate, body.random);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /emulator/faults`: no more faults or latency.
async fn clear(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct LatencyBody {
    millis: u64,
}

/// `POST /emulator/latency` with `{"millis": N}`: the delay before every token answer.
async fn latency(
    AxumState(state): AxumState<Arc<State>>,
    Json(body): Json<LatencyBody>,
) -> Response {
    state.faults.set_latency(Duration::from_millis(body.millis));
    StatusCode::NO_CONTENT.into_response()
}
