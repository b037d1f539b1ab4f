//! One request: checked, taken in, signed and authorized, forwarded, answered.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::ServiceExt;
use truelayer_auth::TokenCache;
use truelayer_auth_signing::{IDEMPOTENCY_KEY, SignerSource, Signing, SigningError};
use truelayer_auth_tower::{BearerAuth, BearerAuthError, ReplayFn};

use crate::access;
use crate::body::{
    BodyMemory, BodyPace, BoxError, Charge, NoRoom, ProxyBody, Refused, TooSlow, in_chain, take_in,
};
use crate::config::Upstream;
use crate::guard::{Guard, Refusal};
use crate::metrics::Metrics;
use crate::pool::{Pool, UpstreamBody, UpstreamError};

pub(crate) type Bearer =
    BearerAuth<Pool, TokenCache, ReplayFn<fn(&ProxyBody) -> Option<ProxyBody>>>;

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
    /// Paths never forwarded (an upstream's admin routes).
    pub(crate) refused_paths: Vec<String>,
    pub(crate) replay_limit: u64,
    pub(crate) pace: BodyPace,
    /// Shared by every worker.
    pub(crate) memory: Arc<BodyMemory>,
    /// Whether each request gets an access-log line.
    pub(crate) access_log: bool,
}

/// A response body: the upstream's, streamed, or one the proxy wrote.
pub(crate) enum ResponseBody {
    /// The upstream's body, as it comes.
    Upstream(UpstreamBody),
    /// A body the proxy wrote (errors, health, metrics).
    Local(Full<Bytes>),
    /// Either, counted for the access log, whose line is written when this is dropped.
    Logged(Box<ResponseBody>, Box<access::Record>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseBody::Upstream(_) => "ResponseBody::Upstream",
            ResponseBody::Local(_) => "ResponseBody::Local",
            ResponseBody::Logged(..) => "ResponseBody::Logged",
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
            ResponseBody::Logged(body, record) => {
                let polled = Pin::new(body.as_mut()).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    record.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Local(body) => body.is_end_stream(),
            ResponseBody::Logged(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Local(body) => body.size_hint(),
            ResponseBody::Logged(body, _) => body.size_hint(),
        }
    }
}

impl<K: SignerSource> Forwarder<K> {
    /// Answers `request`. On a connection taken beyond the cap (`admin_only`), only the
    /// admin endpoints are served; anything else gets 503.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        admin_only: bool,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        // The line is written when the record is dropped: with the answer's body, or here if
        // the client goes away first (this future is then dropped).
        let mut record = self.access_log.then(|| {
            let exchange = Arc::new(access::Exchange::default());
            request.extensions_mut().insert(exchange.clone());
            Box::new(access::Record {
                method: method.clone(),
                path: request.uri().path().to_owned(),
                status: None,
                signed: matches!(self.stack, Stack::Signed(_)) && signs(&method),
                started: tokio::time::Instant::now(),
                exchange,
                bytes: 0,
            })
        });
        let response = if admin_only && under(request.uri().path(), &self.admin_path).is_none() {
            let mut busy = json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "error": "connection_limit_reached",
                    "message": "every connection slot is taken; retry shortly (the operator can raise --max-connections)",
                }),
            );
            busy.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            busy
        } else {
            self.respond(request).await
        };
        let response = match record.take() {
            Some(mut record) => {
                let (parts, body) = response.into_parts();
                record.status = Some(parts.status);
                Response::from_parts(parts, ResponseBody::Logged(Box::new(body), record))
            }
            None => response,
        };
        self.metrics.answered(&method, response.status());
        response
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        if let Err(refusal) = self.guard.check(request.headers()) {
            self.metrics.refused();
            let (error, message) = match refusal {
                Refusal::Host => (
                    "host_not_allowed",
                    "the Host header does not name this proxy (DNS rebinding?); if the host is yours, allow it: `tlauth proxy --allow-host HOST` (ProxyBuilder::allow_host)",
                ),
                Refusal::CrossSite => (
                    "cross_site_request",
                    "browser requests from other sites are refused; if the Origin is yours, allow it: `tlauth proxy --allow-origin ORIGIN` (ProxyBuilder::allow_origin)",
                ),
            };
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({ "error": error, "message": message }),
            );
        }
        if let Some(standard) = miscased(request.method()) {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": "method_not_canonical",
                    "message": format!(
                        "the method `{}` is not `{standard}`: methods are case-sensitive, and only their standard spelling is signed; send `{standard}`",
                        request.method(),
                    ),
                }),
            );
        }
        // A forward proxy's tunnel is not this proxy's job, and `*` names no path upstream.
        if request.method() == Method::CONNECT || request.uri().path() == "*" {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "method_not_allowed", "message": "CONNECT and `*` requests are not forwarded" }),
            );
        }
        if let Some(admin) = under(request.uri().path(), &self.admin_path) {
            return self.admin(request.method(), admin);
        }
        if let Some(refused) = self
            .refused_paths
            .iter()
            .find(|refused| under(request.uri().path(), refused).is_some())
        {
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({
                    "error": "path_not_forwarded",
                    "message": format!("requests to `{refused}` and under it are not forwarded: they are the upstream's own admin routes"),
                }),
            );
        }
        // Two keys: which one the upstream would read is not defined, and the signing layer
        // cannot sign both. The client's mistake, not the gateway's (it was a 502).
        if request
            .headers()
            .get_all(IDEMPOTENCY_KEY)
            .iter()
            .nth(1)
            .is_some()
        {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": "duplicate_header",
                    "message": "the request has more than one Idempotency-Key; which one the upstream would read is not defined, so nothing was sent: send one",
                }),
            );
        }
        // What it holds of its body is charged to the shared budget as it arrives, and
        // kept charged until the answer's head is out (a held body lives that long, for the
        // replay).
        let (upstream_request, _held) = match self.upstream_request(request).await {
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
                    "message": truelayer_auth::error_chain(&e),
                }),
            ),
            Failure::Bearer(BearerAuthError::Service(e)) if in_chain::<TooSlow>(&e) => too_slow(),
            Failure::Signing(SigningError::Body(e)) if in_chain::<TooSlow>(&*e) => too_slow(),
            Failure::Signing(SigningError::Body(e)) if in_chain::<NoRoom>(&*e) => no_room(),
            Failure::Signing(SigningError::BodyTimedOut { .. }) => too_slow(),
            Failure::Bearer(e) => json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({ "error": "upstream_unreachable", "message": truelayer_auth::error_chain(&e) }),
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
                tracing::error!(error = %truelayer_auth::error_chain(&e), "a request could not be signed");
                json(
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({ "error": "signing_failed", "message": truelayer_auth::error_chain(&e) }),
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
    ) -> Result<(Request<ProxyBody>, Option<Charge>), Response<ResponseBody>> {
        let signed = matches!(self.stack, Stack::Signed(_)) && signs(request.method());
        let (mut parts, body) = request.into_parts();
        // Read before the hop-by-hop headers go: a `Content-Length` named in `Connection`
        // still says how long this body is.
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
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
        let (body, held) = take_in(
            body,
            length,
            self.replay_limit,
            self.pace,
            &self.memory,
            signed,
        )
        .await
        .map_err(|refused| match refused {
            Refused::Incomplete => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "request_body_incomplete" }),
            ),
            Refused::TooSlow => too_slow(),
            Refused::NoRoom => no_room(),
        })?;
        Ok((Request::from_parts(parts, body), held))
    }

    /// The request target on the upstream, in origin form (the pool knows where to
    /// connect): its base path, then the path and query as received. Without a base path
    /// nothing is allocated.
    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = match (self.upstream.base_path.is_empty(), uri.path_and_query()) {
            (true, Some(pq)) => pq.clone(),
            (true, None) => http::uri::PathAndQuery::from_static("/"),
            (false, pq) => {
                let pq = pq.map_or("/", |p| p.as_str());
                format!("{}{pq}", self.upstream.base_path).parse().ok()?
            }
        };
        Some(Uri::from(path_and_query))
    }
}

/// Whether `SigningLayer` signs requests with this method.
fn signs(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The methods of RFC 9110 and PATCH, as spelled there.
static STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// The standard method `method` spells in another case (`POST` for `post`). hyper takes such
/// a spelling as an extension method, which the signing layer does not sign, yet an upstream
/// that reads methods without regard to case would act on it.
fn miscased(method: &Method) -> Option<&'static Method> {
    if STANDARD_METHODS.contains(method) {
        return None;
    }
    STANDARD_METHODS
        .iter()
        .find(|standard| standard.as_str().eq_ignore_ascii_case(method.as_str()))
}

/// What follows `prefix` in `path` when `path` is `prefix` itself (`""`) or lies under it
/// (`"/..."`): `/.tlauthz` is not under `/.tlauth`.
fn under<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// 503: no room in the memory for bodies in flight.
fn no_room() -> Response<ResponseBody> {
    let mut busy = json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({
            "error": "too_many_bodies_in_flight",
            "message": "the memory for request bodies in flight is spent; retry shortly (the operator can raise --body-memory-mib)",
        }),
    );
    busy.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    busy
}

/// 408: the client was slower sending its body than the body timeouts allow.
fn too_slow() -> Response<ResponseBody> {
    json(
        StatusCode::REQUEST_TIMEOUT,
        serde_json::json!({
            "error": "request_body_too_slow",
            "message": "the request body did not arrive within the proxy's body timeouts; nothing more of it is read",
        }),
    )
}

enum Failure {
    Bearer(BearerAuthError<UpstreamError>),
    Signing(SigningError<BearerAuthError<UpstreamError>>),
}

const VIA: HeaderValue = HeaderValue::from_static("1.1 tlauth");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
// A static, not a const: a const array of names is built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
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
    // One pass over the (few) names present, removing only what is there: a lookup per
    // hop-by-hop name would hash each of them for every message, and most messages carry
    // none, or only `Connection: keep-alive`.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too (`keep-alive` and `close` name none),
    // all of them: a cap would let a client pass the rest on. Read as bytes (a value that is
    // not ASCII still names its tokens); each token is one hashed removal, so the work is
    // linear in the header's length, which hyper bounds with the request head.
    let named: Vec<HeaderValue> = headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    let tokens = named
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter_map(|token| std::str::from_utf8(token).ok());
    for token in tokens {
        // A token that is not a header name names nothing here.
        headers.remove(token);
    }
    for name in &doomed {
        headers.remove(name);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-end-to-end", "2"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-end-to-end"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
