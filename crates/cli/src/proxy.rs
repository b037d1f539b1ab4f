//! `tlauth proxy`: an authenticating reverse proxy in front of the TrueLayer API, built from
//! the token cache and the bearer layer of this workspace.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;
use truelayer_auth::TokenCache;
use truelayer_auth_tower::{BearerAuth, BearerAuthError, BearerAuthLayer, ReplayFn, replay_with};

use crate::Failure;
use crate::config::AuthArgs;

/// Options of `tlauth proxy`.
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The address to listen on. Port 0 picks a free one (printed on standard error).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Listen on an address that is not loopback. Anything that can reach the port can then
    /// spend the merchant's token.
    #[arg(long)]
    allow_remote: bool,
    /// The API base URL to forward to. Default: the environment's Payments API
    /// (`https://api.truelayer-sandbox.com` for sandbox), or the embedded emulator.
    #[arg(long)]
    upstream: Option<String>,
    /// Request bodies up to this many bytes are held so the request can be replayed after a
    /// 401; larger ones are streamed and their 401 is returned as is.
    #[arg(long, default_value_t = 64 * 1024)]
    replay_limit: u64,
    /// Seconds in-flight requests get to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    #[command(flatten)]
    auth: AuthArgs,
}

/// A request body on its way upstream: held (small enough to replay) or streamed.
enum ProxyBody {
    Held(Full<Bytes>),
    Streamed(Incoming),
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        // Both variants are `Unpin`.
        match self.get_mut() {
            ProxyBody::Held(full) => std::pin::Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyBody::Streamed(incoming) => std::pin::Pin::new(incoming)
                .poll_frame(cx)
                .map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Held(full) => full.is_end_stream(),
            ProxyBody::Streamed(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ProxyBody::Held(full) => full.size_hint(),
            ProxyBody::Streamed(incoming) => incoming.size_hint(),
        }
    }
}

fn replay_held(body: &ProxyBody) -> Option<ProxyBody> {
    match body {
        ProxyBody::Held(full) => Some(ProxyBody::Held(full.clone())),
        ProxyBody::Streamed(_) => None,
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;
type Upstream = BearerAuth<HttpClient, TokenCache, ReplayFn<fn(&ProxyBody) -> Option<ProxyBody>>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

struct Proxy {
    upstream: Upstream,
    base: Uri,
    tokens: TokenCache,
    replay_limit: u64,
}

pub(crate) async fn run(args: ProxyArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        return Err(Failure::usage(format!(
            "refusing to listen on {}: it is not a loopback address, and anything that can reach it \
             could spend the merchant's token; pass --allow-remote if that is really wanted",
            args.listen
        )));
    }
    let resolved = args.auth.resolve().await?;
    let upstream_url = match (&args.upstream, &resolved.embedded) {
        (Some(url), _) => url.clone(),
        (None, Some(emulator)) => emulator.url(),
        (None, None) => resolved.environment.api_url().to_string(),
    };
    let base: Uri = upstream_url
        .trim_end_matches('/')
        .parse()
        .map_err(|_| Failure::usage(format!("--upstream `{upstream_url}` is not a URL")))?;
    if base.scheme().is_none() || base.authority().is_none() {
        return Err(Failure::usage(format!(
            "--upstream `{upstream_url}` needs a scheme and a host"
        )));
    }
    let tokens = TokenCache::builder(resolved.environment.clone(), resolved.source.clone())
        .scopes(resolved.scopes.clone())
        .build()
        .map_err(|e| Failure::usage(e.to_string()))?;
    // Fetch the first token now: a configuration error shows at start, not on the first call.
    if let Err(e) = tokens.token().await {
        tracing::error!(error = %e, "no token at start; requests will get 502 until one can be had");
    }
    // hyper directly (not reqwest): a proxy forwards `http` types as they are, and follows
    // no redirects.
    let https = HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| Failure::usage(format!("could not load the system's TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let http: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(https);
    let policy: ReplayFn<fn(&ProxyBody) -> Option<ProxyBody>> = replay_with(replay_held);
    let layer = BearerAuthLayer::new(tokens.clone()).replay_policy(policy);
    let upstream: Upstream = tower::Layer::layer(&layer, http);
    let proxy = Arc::new(Proxy {
        upstream,
        base,
        tokens,
        replay_limit: args.replay_limit,
    });

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::usage(format!("could not listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::failed(e.to_string()))?;
    if !local.ip().is_loopback() {
        eprintln!(
            "tlauth: WARNING: listening on {local}, which is not loopback: anything that can reach it can spend the merchant's token"
        );
    }
    eprintln!("tlauth: proxy listening on http://{local} -> {upstream_url}");
    serve(listener, proxy, Duration::from_secs(args.shutdown_timeout)).await;
    drop(resolved.embedded);
    Ok(())
}

async fn serve(listener: TcpListener, proxy: Arc<Proxy>, drain: Duration) {
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = watched.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut stop => break,
        }
    }
    drop(listener);
    eprintln!("tlauth: shutting down; waiting up to {drain:?} for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => eprintln!("tlauth: all connections closed"),
        () = tokio::time::sleep(drain) => eprintln!("tlauth: drain deadline passed; closing the rest"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too; most requests have none to collect.
    let named: Vec<HeaderName> = if !headers.contains_key(header::CONNECTION) {
        Vec::new()
    } else {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect()
    };
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

impl Proxy {
    async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        if request.method() == Method::GET && request.uri().path() == "/healthz" {
            return self.health();
        }
        let upstream_request = match self.upstream_request(request).await {
            Ok(r) => r,
            Err(response) => return response,
        };
        match self.upstream.clone().oneshot(upstream_request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .append(header::VIA, HeaderValue::from_static("1.1 tlauth"));
                Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
            }
            Err(BearerAuthError::Token(e)) => json_response(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "error": "token_unavailable",
                    "kind": e.kind_name(),
                    "retryable": e.is_retryable(),
                    "message": crate::chain(&e),
                }),
            ),
            Err(e) => json_response(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({ "error": "upstream_unreachable", "message": crate::chain(&e) }),
            ),
        }
    }

    async fn upstream_request(
        &self,
        request: Request<Incoming>,
    ) -> Result<Request<ProxyBody>, Response<ResponseBody>> {
        let (mut parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let base_path = self.base.path().trim_end_matches('/');
        let uri = Uri::builder()
            .scheme(
                self.base
                    .scheme()
                    .cloned()
                    .unwrap_or(http::uri::Scheme::HTTPS),
            )
            .authority(self.base.authority().cloned().expect("checked at start"))
            .path_and_query(format!("{base_path}{path_and_query}"))
            .build()
            .map_err(|_| {
                json_response(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "bad_request_target" }),
                )
            })?;
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The upstream's own authority, as the Host a direct client would send.
        if let Some(authority) = self.base.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static("1.1 tlauth"));

        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = if http_body::Body::is_end_stream(&body) {
            ProxyBody::Held(Full::new(Bytes::new()))
        } else if length.is_some_and(|len| len <= self.replay_limit) {
            match body.collect().await {
                Ok(collected) => ProxyBody::Held(Full::new(collected.to_bytes())),
                Err(_) => {
                    return Err(json_response(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({ "error": "request_body_incomplete" }),
                    ));
                }
            }
        } else {
            ProxyBody::Streamed(body)
        };
        Ok(Request::from_parts(parts, body))
    }

    fn health(&self) -> Response<ResponseBody> {
        let stats = self.tokens.stats();
        let (status, state) = match (stats.token_remaining, &stats.last_error) {
            (Some(_), None) => (StatusCode::OK, "ok"),
            (Some(_), Some(_)) => (StatusCode::OK, "degraded"),
            (None, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        json_response(
            status,
            serde_json::json!({
                "status": state,
                "token_remaining_s": stats.token_remaining.map(|d| d.as_secs()),
                "token_age_s": stats.token_age.map(|d| d.as_secs()),
                "fetches": stats.fetches,
                "fetch_failures": stats.fetch_failures,
                "consecutive_failures": stats.consecutive_failures,
                "last_error": stats.last_error,
            }),
        )
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
