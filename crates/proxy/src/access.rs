//! The access log: one line per request at `info`, on the `tlauth::access` target, written
//! when the answer's body has been sent (or dropped), like nginx's `access_log`. It names the
//! method, the path without its query, the status, the time to the upstream's answer, whether
//! the request was signed, replayed after a 401 or sent again after an idle close, and the
//! bytes of the answer's body; never a header value or a body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::{Method, StatusCode};

/// The tracing target of access-log lines.
pub(crate) const TARGET: &str = "tlauth::access";

/// What the upstream side learns about one request, read by its access-log line: carried in
/// the request's extensions down to the connection pool.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// Sent again after a 401, with a fresh token.
    replayed: AtomicBool,
    /// Sent again on a fresh connection after the pooled one closed under it.
    resent: AtomicBool,
    /// Microseconds from forwarding to the upstream's answer (the last try's), plus one; 0
    /// when it never reached the pool.
    upstream_us: AtomicU64,
}

impl Exchange {
    pub(crate) fn replayed(&self) {
        self.replayed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn resent(&self) {
        self.resent.store(true, Ordering::Relaxed);
    }

    pub(crate) fn upstream(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.upstream_us.store(us + 1, Ordering::Relaxed);
    }
}

/// One request's access-log line, written when dropped: when its answer's body has been sent
/// (or dropped), or, with no answer, when the client went away first (status 499, as nginx
/// logs it), so a request that reached the upstream is logged even then.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) method: Method,
    pub(crate) path: String,
    /// `None` until the answer is known.
    pub(crate) status: Option<StatusCode>,
    pub(crate) signed: bool,
    pub(crate) started: tokio::time::Instant,
    pub(crate) exchange: Arc<Exchange>,
    /// Bytes of the answer's body sent so far.
    pub(crate) bytes: u64,
}

impl Drop for Record {
    fn drop(&mut self) {
        let upstream_us = self.exchange.upstream_us.load(Ordering::Relaxed);
        let upstream_ms = (upstream_us > 0).then(|| (upstream_us - 1) as f64 / 1000.0);
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = %self.path,
            // 499: the client closed the connection before the answer.
            status = self.status.map_or(499, |s| s.as_u16()),
            upstream_ms,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            signed = self.signed,
            replayed = self.exchange.replayed.load(Ordering::Relaxed),
            resent = self.exchange.resent.load(Ordering::Relaxed),
            bytes = self.bytes,
            "request"
        );
    }
}
