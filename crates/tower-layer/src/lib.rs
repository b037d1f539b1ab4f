//! A tower layer that adds TrueLayer bearer auth to any HTTP client stack.
//!
//! [`BearerAuthLayer`] wraps any `Service<http::Request<B>>` (hyper-util's client, a reqwest
//! client through [`ReqwestService`] with the `reqwest` feature, or a stack with `Buffer`,
//! concurrency limits, timeouts and `tower_http::trace`) and sets
//! `Authorization: Bearer <token>` from a [`TokenCache`](truelayer_auth::TokenCache) on every
//! request. A 401 invalidates exactly the token that was sent and, when the request can be
//! replayed, sends it once more with a fresh one.
//!
//! # Example
//!
//! ```no_run
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use truelayer_auth::{EnvCredentials, Environment, Scopes, TokenCache};
//! use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let tokens = TokenCache::builder(Environment::Sandbox, EnvCredentials::new())
//!     .scopes(Scopes::payments())
//!     .build()?;
//! # let connector = hyper_util::client::legacy::connect::HttpConnector::new();
//! let hyper_client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
//!     .service(hyper_client);
//!
//! let request = http::Request::post("https://api.truelayer-sandbox.com/v3/payments")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let response = client.oneshot(request).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! # Replaying after a 401
//!
//! The request head is copied before sending; the body is reproduced by a
//! [`ReplayPolicy`]: [`EmptyBodies`] (the default: bodies whose size hint is exactly 0),
//! [`CloneBodies`] (body types that are `Clone`, such as `Full<Bytes>`), [`replay_with`] (a
//! function), or [`NoReplay`]. A request that cannot be replayed gets the 401 back; its token
//! is still invalidated, so the next request gets a fresh one.

#![forbid(unsafe_code)]

mod error;
mod future;
mod layer;
mod replay;
#[cfg(feature = "reqwest")]
mod reqwest_adapter;

pub use error::BearerAuthError;
pub use future::ResponseFuture;
pub use layer::{BearerAuth, BearerAuthLayer};
pub use replay::{CloneBodies, EmptyBodies, NoReplay, ReplayFn, ReplayPolicy, replay_with};
#[cfg(feature = "reqwest")]
pub use reqwest_adapter::{ReqwestFuture, ReqwestService};
