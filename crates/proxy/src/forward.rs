//! One request: checked, taken in, signed and authorized, forwarded, answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use truelayer_auth::TokenCache;
use truelayer_auth_signing::{SignerSource, Signing, SigningError};
use truelayer_auth_tower::{BearerAuth, BearerAuthError, ReplayFn};

use crate::body::{BoxError, ProxyBody, Refused, take_in};
use crate::config::Upstream;
use crate::guard::{Guard, Refusal};
use crate::metrics::Metrics;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;
pub(crate) type Bearer =
    BearerAuth<Measured, TokenCache, ReplayFn<fn(&ProxyBody) -> Option<ProxyBody>>>;

/// The client stack: bearer auth, and signing when a signer is configured.
#[derive(Clone)]
pub(crate) enum Stack<K> {
    Plain(Bearer),
    Signed(Signing<Bearer, K>),
}

/// What a request needs: shared by every connection.
pub(crate) struct Forwarder<K> {
    pub(crate) stack: Stack<K>,
    pub(crate) upstream: Upstream,
    pub(crate) tokens: TokenCache,
    pub(crate) guard: Guard,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin_path: String,
    pub(crate) replay_limit: u64,
    pub(crate) body_timeout: std::time::Duration,
}

/// A response body: the upstream's, streamed, or one the proxy wrote.
pub enum ResponseBody {
    /// The upstream's body, as it comes.
    Upstream(Incoming),
    /// A body the proxy wrote (errors, health, metrics).
    Local(Full<Bytes>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseBody::Upstream(_) => "ResponseBody::Upstream",
            ResponseBody::Local(_) => "ResponseBody::Local",
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ResponseBody::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Local(body) => body.size_hint(),
        }
    }
}

impl<K: SignerSource> Forwarder<K> {
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let response = self.respond(request).await;
        self.metrics.answered(&method, response.status());
        response
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        if let Err(refusal) = self.guard.check(request.headers()) {
            self.metrics.refused();
            let (error, message) = match refusal {
                Refusal::Host => (
                    "host_not_allowed",
                    "the Host header does not name this proxy (DNS rebinding?); allow the host explicitly if it is yours",
                ),
                Refusal::CrossSite => (
                    "cross_site_request",
                    "browser requests from other sites are refused; allow the Origin explicitly if it is yours",
                ),
            };
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "error": error, "message": message }),
            );
        }
        if let Some(admin) = request.uri().path().strip_prefix(self.admin_path.as_str()) {
            return self.admin(request.method(), admin);
        }
        let upstream_request = match self.upstream_request(request).await {
            Ok(r) => r,
            Err(response) => return response,
        };
        let result = match &self.stack {
            Stack::Plain(stack) => stack
                .clone()
                .oneshot(upstream_request)
                .await
                .map_err(Failure::Bearer),
            Stack::Signed(stack) => {
                stack
                    .clone()
                    .oneshot(upstream_request)
                    .await
                    .map_err(|e| match e {
                        SigningError::Service(e) => Failure::Bearer(e),
                        other => Failure::Signing(other),
                    })
            }
        };
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.append(header::VIA, VIA);
                Response::from_parts(parts, ResponseBody::Upstream(body))
            }
            Err(failure) => self.failure(failure),
        }
    }

    fn failure(&self, failure: Failure) -> Response<ResponseBody> {
        match failure {
            Failure::Bearer(BearerAuthError::Token(e)) => json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "error": "token_unavailable",
                    "kind": e.kind_name(),
                    "retryable": e.is_retryable(),
                    "message": chain(&e),
                }),
            ),
            Failure::Bearer(e) => json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({ "error": "upstream_unreachable", "message": chain(&e) }),
            ),
            Failure::Signing(SigningError::BodyTooLarge { limit }) => json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({
                    "error": "body_too_large_to_sign",
                    "message": format!("the body is larger than the {limit}-byte limit for signing it; nothing was sent"),
                }),
            ),
            Failure::Signing(SigningError::Body(_)) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "request_body_incomplete" }),
            ),
            Failure::Signing(e) => {
                self.metrics.signing_failed();
                tracing::error!(error = %chain(&e), "a request could not be signed");
                json(
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({ "error": "signing_failed", "message": chain(&e) }),
                )
            }
        }
    }

    fn admin(&self, method: &Method, path: &str) -> Response<ResponseBody> {
        match (method, path) {
            (&Method::GET, "/healthz") => self.health(),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(ResponseBody::Local(Full::new(Bytes::from(
                    self.metrics.render(&self.tokens),
                ))));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not_found", "message": "the admin endpoints are healthz and metrics" }),
            ),
        }
    }

    /// Readiness for Kubernetes: 200 only while a usable token is held.
    fn health(&self) -> Response<ResponseBody> {
        let stats = self.tokens.stats();
        let ready = stats.token_remaining.is_some();
        let state = match (ready, &stats.last_error) {
            (true, None) => "ok",
            (true, Some(_)) => "degraded",
            (false, _) => "unavailable",
        };
        json(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "status": state,
                "ready": ready,
                "upstream": self.upstream.display,
                "token_remaining_s": stats.token_remaining.map(|d| d.as_secs()),
                "token_age_s": stats.token_age.map(|d| d.as_secs()),
                "fetches": stats.fetches,
                "fetch_failures": stats.fetch_failures,
                "consecutive_failures": stats.consecutive_failures,
                "last_error": stats.last_error,
            }),
        )
    }

    async fn upstream_request(
        &self,
        request: Request<Incoming>,
    ) -> Result<Request<ProxyBody>, Response<ResponseBody>> {
        let (mut parts, body) = request.into_parts();
        parts.uri = self.upstream_uri(&parts.uri).ok_or_else(|| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "bad_request_target" }),
            )
        })?;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The upstream's own authority, as the Host a direct client would send.
        parts
            .headers
            .insert(header::HOST, self.upstream.host.clone());
        parts.headers.append(header::VIA, VIA);
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = take_in(body, length, self.replay_limit, self.body_timeout)
            .await
            .map_err(|refused| match refused {
                Refused::Incomplete => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "request_body_incomplete" }),
                ),
                Refused::TooSlow => json(
                    StatusCode::REQUEST_TIMEOUT,
                    serde_json::json!({ "error": "request_body_too_slow" }),
                ),
            })?;
        Ok(Request::from_parts(parts, body))
    }

    /// The request target on the upstream: its scheme and authority, its base path, then the
    /// path and query as received. Without a base path nothing is allocated.
    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = match (self.upstream.base_path.is_empty(), uri.path_and_query()) {
            (true, Some(pq)) => pq.clone(),
            (true, None) => http::uri::PathAndQuery::from_static("/"),
            (false, pq) => {
                let pq = pq.map_or("/", |p| p.as_str());
                format!("{}{pq}", self.upstream.base_path).parse().ok()?
            }
        };
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

enum Failure {
    Bearer(BearerAuthError<hyper_util::client::legacy::Error>),
    Signing(SigningError<BearerAuthError<hyper_util::client::legacy::Error>>),
}

const VIA: HeaderValue = HeaderValue::from_static("1.1 tlauth");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too; most requests have none to collect.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Local(Full::new(Bytes::from(
        body.to_string(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error and its sources, joined by `: `.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The hyper client, timing each exchange and counting replays.
#[derive(Clone)]
pub(crate) struct Measured {
    pub(crate) client: HttpClient,
    pub(crate) metrics: Arc<Metrics>,
}

impl Service<Request<ProxyBody>> for Measured {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = MeasuredFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        if matches!(request.body(), ProxyBody::Replay(_)) {
            self.metrics.replayed();
        }
        MeasuredFuture {
            inner: self.client.call(request),
            started: Instant::now(),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    pub(crate) struct MeasuredFuture {
        #[pin]
        inner: hyper_util::client::legacy::ResponseFuture,
        started: Instant,
        metrics: Arc<Metrics>,
    }
}

impl Future for MeasuredFuture {
    type Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        this.metrics.upstream(this.started.elapsed());
        Poll::Ready(out)
    }
}
