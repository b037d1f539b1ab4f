//! What the proxy's test files share: a proxy started in-process on a free port, and a
//! recording upstream.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;

use truelayer_auth_proxy::{ProxyBuilder, ShutdownHandle};
use truelayer_auth_signing::SignerSource;
use truelayer_auth_testkit::recording::RecordingServer;

/// A proxy serving on a free loopback port.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) workers: usize,
    pub(crate) stop: ShutdownHandle,
    pub(crate) served: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `http://{addr}{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Builds, binds (127.0.0.1, a free port) and serves `builder` in a task.
pub(crate) async fn start<K: SignerSource>(builder: ProxyBuilder<K>) -> Running {
    let running = builder
        .listen("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = running.local_addr();
    let workers = running.workers();
    let stop = running.shutdown_handle();
    let served = tokio::spawn(running.serve());
    Running {
        addr,
        workers,
        stop,
        served,
    }
}

/// An upstream that echoes what reaches it (method, target, headers and the number of body
/// bytes), with a hop-by-hop header named in its `Connection` and an end-to-end one, and
/// counts its connections and requests.
pub(crate) async fn recorder() -> RecordingServer {
    recorder_with(true).await
}

/// A recorder that closes each connection after one response when `keep_alive` is false.
pub(crate) async fn recorder_with(keep_alive: bool) -> RecordingServer {
    RecordingServer::echoing_upstream()
        .keep_alive(keep_alive)
        .start()
        .await
}
