//! The accept loop: a connection cap, header-read timeouts, backoff after accept errors, and
//! a graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
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

/// Binds the listening socket, as a std listener: each worker registers a clone of it with
/// its own runtime. One socket, not one per worker with `SO_REUSEPORT`: a second proxy (or
/// any process of the same user) started on the same port fails to bind instead of silently
/// taking a share of the traffic.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's `TcpListener::bind` does on Unix (a restart need not wait out TIME_WAIT); on
    // Windows the same option would let another socket steal the port.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// One accept loop and the forwarder (with its own connection pool) its connections use.
pub(crate) struct Worker<K> {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) forwarder: Arc<Forwarder<K>>,
}

/// Connections the proxy takes beyond `max_connections`, one request each, for its admin
/// endpoints only (a readiness probe, a metrics scrape), so a cap filled by slow clients
/// does not make a healthy proxy look dead.
const ADMIN_SLOTS: usize = 4;

/// How long a connection on an admin slot may take to send its request's head.
const ADMIN_SLOT_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// What every worker shares.
#[derive(Clone)]
struct Shared {
    shutdown: ShutdownHandle,
    permits: Arc<Semaphore>,
    /// Connections taken beyond the cap, for the admin endpoints only (see `ADMIN_SLOTS`).
    admin_slots: Arc<Semaphore>,
    header_read_timeout: Duration,
    drain_timeout: Duration,
}

/// A proxy listening on its address, not yet serving. See the crate docs.
pub struct RunningProxy<K> {
    pub(crate) workers: Vec<Worker<K>>,
    pub(crate) local: SocketAddr,
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) drain_timeout: Duration,
}

impl<K> std::fmt::Debug for RunningProxy<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningProxy")
            .field("local", &self.local)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl<K: SignerSource> RunningProxy<K> {
    /// The address it listens on (the port it was given, or the free one it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many workers will serve: the first on the caller's runtime, each other on a
    /// thread of its own (see [`ProxyBuilder::workers`](crate::ProxyBuilder::workers)).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// A handle that stops it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until shut down, then drains. Returns when every connection has closed or the
    /// drain timeout passed. The first worker runs on the caller's runtime; others (see
    /// [`ProxyBuilder::workers`](crate::ProxyBuilder::workers)) on threads of their own.
    pub async fn serve(self) {
        // Dropping this future (a `select!`, a timeout, an aborted task) stops every worker,
        // not only the one it runs: the others are threads of their own.
        let _stop_all_on_drop = StopOnDrop(self.shutdown.clone());
        let shared = Shared {
            shutdown: self.shutdown,
            permits: Arc::new(Semaphore::new(self.max_connections)),
            admin_slots: Arc::new(Semaphore::new(ADMIN_SLOTS)),
            header_read_timeout: self.header_read_timeout,
            drain_timeout: self.drain_timeout,
        };
        let mut workers = self.workers.into_iter();
        let first = workers.next();
        let mut finished = Vec::new();
        for (index, worker) in workers.enumerate() {
            let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tlauth-proxy-{}", index + 1))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            runtime.block_on(worker.run(shared, false));
                            // Blocking work left behind (a DNS lookup) gets a second.
                            runtime.shutdown_timeout(Duration::from_secs(1));
                        }
                        Err(e) => tracing::error!(error = %e, "a proxy worker could not start its runtime"),
                    }
                    drop(done);
                });
            match spawned {
                Ok(_) => finished.push(finished_rx),
                Err(e) => {
                    tracing::error!(error = %e, "a proxy worker thread could not start; serving with fewer")
                }
            }
        }
        if let Some(first) = first {
            first.run(shared, true).await;
        }
        for worker in finished {
            // Err means the thread ended (its `done` dropped): finished either way.
            let _ = worker.await;
        }
    }
}

/// Asks every worker to stop when dropped.
struct StopOnDrop(ShutdownHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl<K: SignerSource> Worker<K> {
    /// Serves until shut down, then drains. The `lead` worker (the first) writes the
    /// shutdown's log lines at `info`, the others at `debug`: one line per proxy, not per
    /// worker.
    async fn run(self, shared: Shared, lead: bool) {
        let listener = match self
            .listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(self.listener))
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "a proxy worker could not use its socket");
                return;
            }
        };
        let graceful = GracefulShutdown::new();
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shared.shutdown.requested() => break,
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
            // At the cap, a connection gets one of the few admin slots if one is free: it is
            // served the admin endpoints only (a readiness probe still gets its answer when
            // slow clients fill the cap), with a short header timeout. Else it waits
            // (accepted, unserved) for another to close, and this worker accepts no more
            // meanwhile; the others still do. A worker idle in `accept` holds no permit, so
            // permits go where connections are.
            let (permit, admin_only) = match shared.permits.clone().try_acquire_owned() {
                Ok(permit) => (permit, false),
                Err(_) => match shared.admin_slots.clone().try_acquire_owned() {
                    Ok(slot) => (slot, true),
                    Err(_) => tokio::select! {
                        permit = shared.permits.clone().acquire_owned() => match permit {
                            Ok(permit) => (permit, false),
                            Err(_) => break,
                        },
                        () = shared.shutdown.requested() => break,
                    },
                },
            };
            let _ = stream.set_nodelay(true);
            let forwarder = self.forwarder.clone();
            let service = hyper::service::service_fn(move |request| {
                let forwarder = forwarder.clone();
                async move { Ok::<_, Infallible>(forwarder.handle(request, admin_only).await) }
            });
            let header_read_timeout = if admin_only {
                shared.header_read_timeout.min(ADMIN_SLOT_HEADER_TIMEOUT)
            } else {
                shared.header_read_timeout
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .writev(false)
                .timer(TokioTimer::new())
                .keep_alive(!admin_only)
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let watched = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = watched.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        let drain_ms = shared.drain_timeout.as_millis() as u64;
        if lead {
            tracing::info!(drain_ms, "shutting down; waiting for in-flight requests");
        } else {
            tracing::debug!(
                drain_ms,
                "worker shutting down; waiting for its in-flight requests"
            );
        }
        tokio::select! {
            () = graceful.shutdown() => tracing::debug!("a worker's connections all closed"),
            () = tokio::time::sleep(shared.drain_timeout) => tracing::warn!("drain deadline passed; closing the rest of a worker's connections"),
        }
    }
}
