//! The accept loop: hyper over each connection, with a switch that drops a connection
//! unanswered (a fault axum's own server cannot produce).

use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Put in each request's extensions; notifying it closes the connection without an answer.
#[derive(Clone)]
pub(crate) struct KillSwitch(pub(crate) Arc<Notify>);

pub(crate) async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "emulator accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let kill = Arc::new(Notify::new());
            let switch = KillSwitch(kill.clone());
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(switch.clone());
                    router.clone().oneshot(request.map(axum::body::Body::new))
                });
            // No header-read timeout: idle keep-alive connections stay open until the client
            // closes them, so a jump of a paused test clock cannot close one just as a client
            // reuses it. Dropped connections are a fault tests ask for, not an accident.
            let connection = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = kill.notified() => {}
            }
        });
    }
}
