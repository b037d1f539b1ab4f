//! A recording server: HTTP/1 on a free loopback port, it records every request that reaches
//! it and answers as told. A stand-in for an upstream behind the proxy, or for a webhook
//! receiver.
//!
//! ```
//! # async fn demo() {
//! use truelayer_auth_testkit::recording::{Answer, RecordingServer};
//!
//! // Answers 500 twice, then 200 to everything.
//! let mut server = RecordingServer::builder()
//!     .answers([Answer::status(500), Answer::status(500)])
//!     .start()
//!     .await;
//! let url = server.url("/hooks");
//! // ... send requests to `url` ...
//! let first = server.next().await;
//! assert_eq!(first.path(), "/hooks");
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How long [`RecordingServer::next`] waits for a request.
const NEXT_WITHIN: Duration = Duration::from_secs(10);

/// One request as it reached the server.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request method.
    pub method: Method,
    /// The request target as sent: the path and query.
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body; empty when the server was built with
    /// [`discard_bodies`](RecordingServerBuilder::discard_bodies).
    pub body: Bytes,
    /// How many body bytes arrived, kept or not.
    pub len: u64,
    /// When the whole request had arrived.
    pub at: Instant,
}

impl Recorded {
    /// The path of the request target.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The value of header `name` (any case).
    ///
    /// # Panics
    ///
    /// When the request has no such header, or its value is not UTF-8.
    pub fn header(&self, name: &str) -> &str {
        let value = self
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"));
        std::str::from_utf8(value.as_bytes())
            .unwrap_or_else(|e| panic!("the {name} header is not UTF-8: {e}"))
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// When the body is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// What [`Answer::echo`] answers: `{"method", "uri", "headers": {name: [values]},
    /// "bytes"}`, a value that is not visible ASCII shown as `?`.
    pub fn echo(&self) -> Value {
        let headers: BTreeMap<&str, Vec<&str>> = self
            .headers
            .keys()
            .map(|name| {
                let values = self.headers.get_all(name).iter();
                (
                    name.as_str(),
                    values.map(|v| v.to_str().unwrap_or("?")).collect(),
                )
            })
            .collect();
        json!({
            "method": self.method.as_str(),
            "uri": self.uri.to_string(),
            "headers": headers,
            "bytes": self.len,
        })
    }
}

/// What the server answers one request with.
#[derive(Clone, Debug)]
pub struct Answer {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: AnswerBody,
}

#[derive(Clone, Debug)]
enum AnswerBody {
    Fixed(Bytes),
    Echo,
}

impl Answer {
    /// `status` with an empty body.
    ///
    /// # Panics
    ///
    /// When `status` is not a valid status code (100 to 999).
    pub fn status(status: u16) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            headers: Vec::new(),
            body: AnswerBody::Fixed(Bytes::new()),
        }
    }

    /// 200 with a JSON description of the request: [`Recorded::echo`].
    pub fn echo() -> Answer {
        Answer {
            body: AnswerBody::Echo,
            ..Answer::status(200)
        }
    }

    /// This answer with `body`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Answer {
        self.body = AnswerBody::Fixed(body.into());
        self
    }

    /// This answer with the header `name: value` too.
    ///
    /// # Panics
    ///
    /// When `value` is not a valid header value.
    pub fn header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push(header(name, value));
        self
    }
}

impl Default for Answer {
    /// 200 with an empty body.
    fn default() -> Self {
        Answer::status(200)
    }
}

fn header(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value).expect("a valid header value"),
    )
}

/// How a [`RecordingServer`] behaves; from [`RecordingServer::builder`].
#[derive(Debug)]
pub struct RecordingServerBuilder {
    answers: VecDeque<Answer>,
    otherwise: Answer,
    headers: Vec<(HeaderName, HeaderValue)>,
    keep_alive: bool,
    keep_bodies: bool,
    hold: Option<String>,
}

impl RecordingServerBuilder {
    /// The answer to every request no [`answers`](Self::answers) are left for (by default
    /// [`Answer::default`], 200 with an empty body).
    pub fn answer(mut self, answer: Answer) -> Self {
        self.otherwise = answer;
        self
    }

    /// The answers to the first requests, in order of arrival.
    pub fn answers(mut self, answers: impl IntoIterator<Item = Answer>) -> Self {
        self.answers.extend(answers);
        self
    }

    /// A header on every answer (before the answer's own headers).
    ///
    /// # Panics
    ///
    /// When `value` is not a valid header value.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push(header(name, value));
        self
    }

    /// Whether connections are kept open between requests (the default) or closed after
    /// each response.
    pub fn keep_alive(mut self, keep_alive: bool) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Counts the body bytes of each request without keeping them: for large uploads.
    pub fn discard_bodies(mut self) -> Self {
        self.keep_bodies = false;
        self
    }

    /// Requests to `path` are answered only after [`RecordingServer::release`]:
    /// [`RecordingServer::held`] says when one has arrived.
    pub fn hold(mut self, path: &str) -> Self {
        self.hold = Some(path.to_owned());
        self
    }

    /// Binds a free port on 127.0.0.1 and serves until the server is dropped.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(self) -> RecordingServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound listener's address");
        let (sent, received) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            sent,
            answers: Mutex::new(self.answers),
            otherwise: self.otherwise,
            headers: self.headers,
            keep_bodies: self.keep_bodies,
            hold: self.hold,
            arrived: Notify::new(),
            release: Notify::new(),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let keep_alive = self.keep_alive;
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                serving.connections.fetch_add(1, Ordering::SeqCst);
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingServer {
            addr,
            shared,
            received,
            task,
        }
    }
}

#[derive(Debug)]
struct Shared {
    sent: mpsc::UnboundedSender<Recorded>,
    answers: Mutex<VecDeque<Answer>>,
    otherwise: Answer,
    headers: Vec<(HeaderName, HeaderValue)>,
    keep_bodies: bool,
    hold: Option<String>,
    arrived: Notify,
    release: Notify,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

impl Shared {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let (parts, mut body) = request.into_parts();
        let mut kept = BytesMut::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // The client went away mid-body: nothing to record or to answer.
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Full::default())
                    .expect("a valid response");
            };
            if let Ok(data) = frame.into_data() {
                len += data.len() as u64;
                if self.keep_bodies {
                    kept.extend_from_slice(&data);
                }
            }
        }
        let recorded = Recorded {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body: kept.freeze(),
            len,
            at: Instant::now(),
        };
        let held = self.hold.as_deref() == Some(recorded.path());
        let _ = self.sent.send(recorded.clone());
        if held {
            self.arrived.notify_one();
            self.release.notified().await;
        }
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or_else(|| self.otherwise.clone());
        let body = match answer.body {
            AnswerBody::Fixed(bytes) => bytes,
            AnswerBody::Echo => Bytes::from(recorded.echo().to_string()),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = answer.status;
        for (name, value) in self.headers.iter().chain(&answer.headers) {
            response.headers_mut().append(name, value.clone());
        }
        response
    }
}

/// A running recording server; it stops accepting connections when dropped.
#[derive(Debug)]
pub struct RecordingServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    received: mpsc::UnboundedReceiver<Recorded>,
    task: JoinHandle<()>,
}

impl RecordingServer {
    /// A server answering 200, with an empty body, to every request.
    pub async fn start() -> RecordingServer {
        RecordingServer::builder().start().await
    }

    /// A server to configure: answers, headers, connection handling, held paths.
    pub fn builder() -> RecordingServerBuilder {
        RecordingServerBuilder {
            answers: VecDeque::new(),
            otherwise: Answer::default(),
            headers: Vec::new(),
            keep_alive: true,
            keep_bodies: true,
            hold: None,
        }
    }

    /// An upstream for a proxy under test: it answers every request with
    /// [`Answer::echo`], counts body bytes without keeping them, and adds to every answer
    /// `x-upstream: kept` and `x-upstream-hop: dropped`, a hop-by-hop header named in its
    /// `Connection: keep-alive, x-upstream-hop`, which the proxy must drop.
    pub fn echoing_upstream() -> RecordingServerBuilder {
        RecordingServer::builder()
            .answer(Answer::echo())
            .header("connection", "keep-alive, x-upstream-hop")
            .header("x-upstream-hop", "dropped")
            .header("x-upstream", "kept")
            .discard_bodies()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}{path}`: `url("")` is the server's base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests (after any answers already waiting) with `answers`, in
    /// order.
    pub fn answer_next(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(answers);
    }

    /// How many requests have started to arrive.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The next request recorded, in order of arrival.
    ///
    /// # Panics
    ///
    /// When none arrives within 10 seconds.
    pub async fn next(&mut self) -> Recorded {
        tokio::time::timeout(NEXT_WITHIN, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("no request within {NEXT_WITHIN:?}"))
            .expect("the server's sender lives as long as the server")
    }

    /// Whether no request arrives within `wait` (one that does is consumed).
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .is_err()
    }

    /// The requests recorded and not yet taken, without waiting.
    pub fn drain(&mut self) -> Vec<Recorded> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }

    /// Waits until a request to the [held](RecordingServerBuilder::hold) path has arrived
    /// (at once if one arrived since the last call).
    pub async fn held(&self) {
        self.shared.arrived.notified().await;
    }

    /// Lets one held request be answered (the next one to arrive, if none is held now).
    pub fn release(&self) {
        self.shared.release.notify_one();
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
