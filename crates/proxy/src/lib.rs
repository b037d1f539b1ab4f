//! An authenticating, signing sidecar in front of TrueLayer's API: `tlauth proxy` as a
//! library.
//!
//! It forwards every request to the upstream (TrueLayer's API, or the emulator) with
//! `Authorization: Bearer <token>` from a [`TokenCache`], and, when given a signer, an
//! `Idempotency-Key` and a `Tl-Signature` on every POST, PUT, PATCH and DELETE. It is safe to
//! leave running on a laptop and observable in production:
//!
//! - **Safe by default**: loopback only unless remote clients are allowed; requests whose
//!   `Host` is not the proxy's (a web page that rebound its name to 127.0.0.1) and browser
//!   requests from other sites (`Origin`, `Sec-Fetch-Site: cross-site`) are refused, as
//!   are methods spelled in another case (`post`, which would not be signed); plain
//!   http only to loopback upstreams; user info never leaves the upstream URL; header-read and
//!   body timeouts, a connection cap, and backoff after accept errors.
//! - **Faithful**: bodies stream both ways; hop-by-hop headers are dropped; bodies up to the
//!   replay limit (chunked ones too) are held, so a request the upstream answers 401 is sent
//!   again with a fresh token, after the 401's body is read so its connection is reused.
//! - **Observable**: `{admin}/healthz` (JSON; 200 only while a usable token is held, a
//!   Kubernetes readiness probe) and `{admin}/metrics` (Prometheus), off the proxied paths
//!   (`/.tlauth` by default).
//!
//! # Example
//!
//! ```no_run
//! use truelayer_auth::{EnvCredentials, Environment, TokenCache};
//! use truelayer_auth_proxy::Proxy;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = TokenCache::builder(Environment::Sandbox, EnvCredentials::new()).build()?;
//! let proxy = Proxy::builder("https://api.truelayer-sandbox.com", tokens)
//!     .listen("127.0.0.1:8080".parse()?)
//!     .build()?;
//! let running = proxy.bind().await?;
//! println!("listening on {}", running.local_addr());
//! let stop = running.shutdown_handle();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     stop.shutdown();
//! });
//! running.serve().await; // returns after the drain
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod access;
mod body;
mod config;
mod forward;
mod guard;
mod metrics;
mod pool;
mod server;

use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use truelayer_auth::TokenCache;
use truelayer_auth_signing::{Signer, SignerSource, SigningLayer};
use truelayer_auth_tower::{BearerAuthLayer, ReplayFn, replay_with};

pub use config::{ProxyBuilder, ProxyError};
pub use server::{RunningProxy, ShutdownHandle};

use crate::body::{BodyMemory, BodyPace, ProxyBody, replay_held};
use crate::config::Upstream;
use crate::forward::{Forwarder, Stack};
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::pool::Pool;

/// A configured proxy, not yet listening. Made by [`Proxy::builder`].
pub struct Proxy<K = Signer> {
    builder: ProxyBuilder<K>,
    upstream: Upstream,
    connector: HttpsConnector<HttpConnector>,
    /// One layer for all workers: they share its key-reload limit.
    signing: Option<SigningLayer<K>>,
    metrics: Arc<Metrics>,
}

impl<K> std::fmt::Debug for Proxy<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.upstream.display)
            .field("listen", &self.builder.listen)
            .field("signing", &self.builder.signer.is_some())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to `upstream` (a base URL such as `https://api.truelayer-sandbox.com`) with
    /// tokens from `tokens`.
    pub fn builder(upstream: impl Into<String>, tokens: TokenCache) -> ProxyBuilder {
        ProxyBuilder::new(upstream.into(), tokens)
    }
}

impl<K: SignerSource> Proxy<K> {
    fn from_builder(builder: ProxyBuilder<K>, upstream: Upstream) -> Result<Self, ProxyError> {
        // hyper directly (not reqwest): a proxy forwards `http` types as they are, and follows
        // no redirects.
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(ProxyError::TlsRoots)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let signing = builder.signer.clone().map(|keys| {
            // The proxy's body deadlines are the ones that count: the client's body is
            // already paced (`body::Paced`) when the signing layer reads it.
            SigningLayer::new(keys)
                .max_body_bytes(builder.signing_limit)
                .body_timeouts(builder.body_idle_timeout, builder.body_timeout)
        });
        Ok(Proxy {
            builder,
            upstream,
            connector,
            signing,
            metrics: Metrics::new(),
        })
    }

    /// One worker's client stack: its own connection pool, so its requests stay on its
    /// thread.
    fn stack(&self) -> Stack<K> {
        let pool = Pool::new(
            self.connector.clone(),
            self.upstream.origin.clone(),
            self.metrics.clone(),
        );
        let policy: ReplayFn<fn(&ProxyBody) -> Option<ProxyBody>> = replay_with(replay_held);
        let bearer = tower::Layer::layer(
            &BearerAuthLayer::new(self.builder.tokens.clone()).replay_policy(policy),
            pool,
        );
        match &self.signing {
            None => Stack::Plain(bearer),
            // Signing outside the bearer layer: its replay copies the signed request.
            Some(signing) => Stack::Signed(tower::Layer::layer(signing, bearer)),
        }
    }

    /// Binds the listen address: one listening socket, which every worker accepts from (each
    /// through a handle of its own, registered with its own runtime). Not one socket per
    /// worker with `SO_REUSEPORT`, so a second proxy started on the same port fails to bind
    /// instead of silently taking a share of the connections. Nothing is served until
    /// [`RunningProxy::serve`].
    ///
    /// # Errors
    ///
    /// [`ProxyError::Bind`] when the address cannot be bound.
    pub async fn bind(self) -> Result<RunningProxy<K>, ProxyError> {
        let b = &self.builder;
        let bind_error = |source| ProxyError::Bind {
            addr: b.listen,
            source,
        };
        let first = server::listen(b.listen).map_err(bind_error)?;
        let local = first.local_addr().map_err(bind_error)?;
        let mut listeners = Vec::with_capacity(b.workers);
        for _ in 1..b.workers {
            listeners.push(first.try_clone().map_err(bind_error)?);
        }
        listeners.push(first);
        if !local.ip().is_loopback() {
            tracing::warn!(%local, "listening on an address that is not loopback: anything that can reach it can spend the merchant's token");
        }
        let guard = Guard::new(local, &b.allowed_hosts, &b.allowed_origins, b.allow_remote);
        let memory = Arc::new(BodyMemory::new(b.body_memory));
        let pace = BodyPace {
            idle: b.body_idle_timeout,
            total: b.body_timeout,
        };
        let workers = listeners
            .into_iter()
            .map(|listener| server::Worker {
                listener,
                forwarder: Arc::new(Forwarder {
                    stack: self.stack(),
                    guard: guard.clone(),
                    upstream: self.upstream.clone(),
                    tokens: b.tokens.clone(),
                    metrics: self.metrics.clone(),
                    admin_path: b.admin_path.clone(),
                    refused_paths: b.refused_paths.clone(),
                    replay_limit: b.replay_limit,
                    pace,
                    memory: memory.clone(),
                    access_log: b.access_log,
                }),
            })
            .collect();
        Ok(RunningProxy {
            workers,
            local,
            shutdown: ShutdownHandle::default(),
            max_connections: b.max_connections,
            header_read_timeout: b.header_read_timeout,
            drain_timeout: b.drain_timeout,
        })
    }
}
