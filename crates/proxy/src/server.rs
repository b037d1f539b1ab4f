//! The accept loop: a connection cap, header-read timeouts, backoff after accept errors, and
//! a graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use truelayer_auth_signing::SignerSource;

use crate::forward::Forwarder;

/// Asks a running proxy to stop: it stops accepting, lets in-flight requests finish (up to
/// the drain timeout), then [`RunningProxy::serve`] returns. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle(Arc<ShutdownState>);

#[derive(Debug, Default)]
struct ShutdownState {
    requested: AtomicBool,
    notify: Notify,
}

impl ShutdownHandle {
    /// Asks the proxy to stop.
    pub fn shutdown(&self) {
        self.0.requested.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    async fn requested(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.0.requested.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A proxy listening on its address, not yet serving. See the crate docs.
pub struct RunningProxy<K> {
    pub(crate) listener: TcpListener,
    pub(crate) local: SocketAddr,
    pub(crate) forwarder: Arc<Forwarder<K>>,
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) drain_timeout: Duration,
}

impl<K> std::fmt::Debug for RunningProxy<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningProxy")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<K: SignerSource> RunningProxy<K> {
    /// The address it listens on (the port it was given, or the free one it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that stops it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until shut down, then drains. Returns when every connection has closed or the
    /// drain timeout passed.
    pub async fn serve(self) {
        let graceful = GracefulShutdown::new();
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let mut backoff = Duration::ZERO;
        loop {
            // At the cap, wait for a connection to close before accepting another.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = self.shutdown.requested() => break,
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = self.shutdown.requested() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    stream
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let forwarder = self.forwarder.clone();
            let service = hyper::service::service_fn(move |request| {
                let forwarder = forwarder.clone();
                async move { Ok::<_, Infallible>(forwarder.handle(request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let watched = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = watched.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(self.listener);
        tracing::info!(
            drain_ms = self.drain_timeout.as_millis() as u64,
            "shutting down; waiting for in-flight requests"
        );
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(self.drain_timeout) => tracing::warn!("drain deadline passed; closing the rest"),
        }
    }
}
