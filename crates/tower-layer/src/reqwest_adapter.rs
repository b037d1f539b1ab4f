//! A `reqwest::Client` as a `Service<http::Request<B>>` (feature `reqwest`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;

/// The future of [`ReqwestService`]. reqwest boxes its own request future, so this adds no
/// allocation it did not already make.
pub type ReqwestFuture = Pin<
    Box<
        dyn Future<Output = Result<http::Response<reqwest::Body>, reqwest::Error>> + Send + 'static,
    >,
>;

/// Makes a [`reqwest::Client`] a `Service<http::Request<B>>`, so the bearer layer (and any
/// other tower middleware of `http` types) can wrap it.
///
/// reqwest parses the URI again as a WHATWG URL: `.` and `..` path segments are resolved and
/// some characters (`"`, `{`, `}`, ...) percent-encoded. With a signing layer above this
/// service, a path that changes that way is sent other than it was signed, and refused:
/// build request paths already in that form (as TrueLayer's API paths are).
///
/// # Example
///
/// ```no_run
/// use tower::{ServiceBuilder, ServiceExt};
/// use truelayer_auth::{EnvCredentials, Environment, TokenCache};
/// use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let tokens = TokenCache::builder(Environment::Sandbox, EnvCredentials::new()).build()?;
/// let client = ServiceBuilder::new()
///     .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
///     .service(ReqwestService::new(reqwest::Client::new()));
/// let request = http::Request::post("https://api.truelayer-sandbox.com/v3/payments")
///     .header("content-type", "application/json")
///     .body(bytes::Bytes::from_static(b"{}"))?;
/// let response = client.oneshot(request).await?;
/// # let _ = response; Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }
}

impl<B: Into<reqwest::Body>> Service<http::Request<B>> for ReqwestService {
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Converted here: the body type need not be `Send`, only the reqwest request is.
        let converted = reqwest::Request::try_from(request);
        let client = self.client.clone();
        Box::pin(async move {
            let response = client.execute(converted?).await?;
            Ok(http::Response::from(response))
        })
    }
}
