//! What a proxy is configured with, checked before anything listens.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use truelayer_auth::TokenCache;
use truelayer_auth_signing::{Signer, SignerSource};
use url::{Host, Url};

use crate::Proxy;

/// Why a proxy could not be configured or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The upstream is not a usable base URL.
    #[error("the upstream `{url}` is not usable: {reason}")]
    InvalidUpstream {
        /// The URL as given (without user info).
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Plain `http` to an upstream that is not loopback.
    #[error(
        "refusing plain http to `{host}`: the bearer token and the request signature would cross the network in clear text; use https (http is allowed for loopback upstreams only)"
    )]
    InsecureUpstream {
        /// The upstream host.
        host: String,
    },
    /// A listen address that is not loopback, without `allow_remote`.
    #[error(
        "refusing to listen on {0}: it is not a loopback address, and anything that can reach it could spend the merchant's token; allow remote clients explicitly if that is really wanted"
    )]
    NotLoopback(SocketAddr),
    /// A setting out of range.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// Its allowed range.
        reason: &'static str,
    },
    /// The system's TLS roots could not be loaded.
    #[error("the system's TLS root certificates could not be loaded")]
    TlsRoots(#[source] std::io::Error),
    /// The listen address could not be bound.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The upstream, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// `scheme://authority/`: where to connect.
    pub(crate) origin: Uri,
    /// The base path without a trailing `/` (empty for none).
    pub(crate) base_path: String,
    /// `Host` for upstream requests: the authority, without user info.
    pub(crate) host: HeaderValue,
    /// How it is shown in logs and health.
    pub(crate) display: String,
}

impl Upstream {
    pub(crate) fn parse(text: &str) -> Result<Self, ProxyError> {
        let invalid = |reason| ProxyError::InvalidUpstream {
            url: text.split('@').next_back().unwrap_or_default().to_owned(),
            reason,
        };
        let url = Url::parse(text).map_err(|_| invalid("it is not a URL"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("an upstream takes no query or fragment"));
        }
        let host = url.host().ok_or_else(|| invalid("it has no host"))?;
        let loopback = match &host {
            Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
            Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
        };
        let scheme = match url.scheme() {
            "https" => Scheme::HTTPS,
            "http" if loopback => Scheme::HTTP,
            "http" => {
                return Err(ProxyError::InsecureUpstream {
                    host: host.to_string(),
                });
            }
            _ => return Err(invalid("the scheme is not http or https")),
        };
        // User info never reaches the upstream: the authority is rebuilt from host and port.
        let authority_text = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let authority: Authority = authority_text
            .parse()
            .map_err(|_| invalid("its host is not a valid authority"))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid("its host is not a valid Host header"))?;
        let base_path = url.path().trim_end_matches('/').to_owned();
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| invalid("its scheme and host do not make a URI"))?;
        Ok(Upstream {
            origin,
            display: format!("{}://{}{}", scheme, authority, base_path),
            base_path,
            host: host_header,
        })
    }
}

/// Builds a [`Proxy`]. See the crate docs for an example.
#[derive(Debug)]
pub struct ProxyBuilder<K = Signer> {
    pub(crate) upstream: String,
    pub(crate) tokens: TokenCache,
    pub(crate) signer: Option<K>,
    pub(crate) listen: SocketAddr,
    pub(crate) allow_remote: bool,
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) admin_path: String,
    pub(crate) refused_paths: Vec<String>,
    pub(crate) replay_limit: u64,
    pub(crate) signing_limit: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) body_idle_timeout: Duration,
    pub(crate) body_memory: u64,
    pub(crate) access_log: bool,
    pub(crate) max_connections: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) workers: usize,
}

impl ProxyBuilder {
    pub(crate) fn new(upstream: String, tokens: TokenCache) -> Self {
        ProxyBuilder {
            upstream,
            tokens,
            signer: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_remote: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            admin_path: "/.tlauth".into(),
            refused_paths: Vec::new(),
            replay_limit: 64 * 1024,
            signing_limit: truelayer_auth_signing::DEFAULT_MAX_BODY,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(10),
            body_memory: 64 << 20,
            access_log: true,
            max_connections: 1024,
            drain_timeout: Duration::from_secs(30),
            workers: 1,
        }
    }
}

impl<K> ProxyBuilder<K> {
    /// Signs every POST, PUT, PATCH and DELETE it forwards (`Idempotency-Key` and
    /// `Tl-Signature`, over the path as sent upstream) with the signers `keys` gives.
    pub fn signer<K2: SignerSource>(self, keys: K2) -> ProxyBuilder<K2> {
        ProxyBuilder {
            upstream: self.upstream,
            tokens: self.tokens,
            signer: Some(keys),
            listen: self.listen,
            allow_remote: self.allow_remote,
            allowed_hosts: self.allowed_hosts,
            allowed_origins: self.allowed_origins,
            admin_path: self.admin_path,
            refused_paths: self.refused_paths,
            replay_limit: self.replay_limit,
            signing_limit: self.signing_limit,
            header_read_timeout: self.header_read_timeout,
            body_timeout: self.body_timeout,
            body_idle_timeout: self.body_idle_timeout,
            body_memory: self.body_memory,
            access_log: self.access_log,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            workers: self.workers,
        }
    }

    /// The address to listen on (port 0 picks a free one). Default `127.0.0.1:8080`.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Allows a listen address that is not loopback. Anything that can reach it can then
    /// spend the merchant's token. Off by default.
    #[must_use]
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// A `Host` (`name` or `name:port`) requests may carry, besides the listen address and
    /// `localhost` (DNS rebinding protection). With remote clients allowed and no host named,
    /// any `Host` is accepted.
    #[must_use]
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.allowed_hosts.push(host.into());
        self
    }

    /// A browser `Origin` allowed to use the proxy (`https://app.example`). By default
    /// requests with any `Origin` are refused, as are browsers' `Sec-Fetch-Site: cross-site`
    /// requests.
    #[must_use]
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// Where the proxy's own endpoints live (`{path}/healthz`, `{path}/metrics`), off the
    /// proxied path space: the path itself and the paths under it (`{path}/...`) are
    /// answered by the proxy, every other path (`{path}z`, say) is forwarded. A trailing `/`
    /// is ignored. Default `/.tlauth`.
    #[must_use]
    pub fn admin_path(mut self, path: impl Into<String>) -> Self {
        self.admin_path = path.into();
        self
    }

    /// A path the proxy never forwards: requests to it, or under it (`{path}/...`), are
    /// answered 403 `path_not_forwarded`. For an upstream's own admin routes, such as the
    /// emulator's `/emulator`, which anything that reaches the proxy could otherwise call.
    /// Matched as sent, as the upstream routes it; a trailing `/` is ignored. Repeat for
    /// several.
    #[must_use]
    pub fn refuse_path(mut self, path: impl Into<String>) -> Self {
        self.refused_paths.push(path.into());
        self
    }

    /// Request bodies up to this many bytes (and chunked ones that end within it) are held,
    /// so the request can be replayed after a 401; longer ones are streamed. Default 64 KiB.
    #[must_use]
    pub fn replay_limit(mut self, bytes: u64) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// The largest body collected to be signed. Default 1 MiB.
    #[must_use]
    pub fn signing_limit(mut self, bytes: usize) -> Self {
        self.signing_limit = bytes;
        self
    }

    /// How long a client may take to send a request's headers. Default 10 s.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a client may take to send a request body, from the end of its head, whatever
    /// reads it (the proxy holding it, the signing layer, the upstream it streams to); then
    /// the client gets 408 if an answer can still be sent, and the upstream request (if any
    /// was started) is cut off. Default 30 s.
    #[must_use]
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long a client may pause between two parts of a request body before it is cut off
    /// (408), as [`body_timeout`](Self::body_timeout). Default 10 s.
    #[must_use]
    pub fn body_idle_timeout(mut self, timeout: Duration) -> Self {
        self.body_idle_timeout = timeout;
        self
    }

    /// The most memory that request bodies held by the proxy may take at once, in bytes,
    /// across every connection and worker: a body held for a replay (up to the replay limit)
    /// or collected for signing (up to the signing limit) is charged as its bytes arrive (a
    /// client that declares a megabyte and sends a byte costs a kibibyte), until its answer's
    /// head is out. A request whose body finds no room gets 503 with `Retry-After: 1`.
    /// Default 64 MiB; it must be at least the signing and the replay limits.
    #[must_use]
    pub fn body_memory(mut self, bytes: u64) -> Self {
        self.body_memory = bytes;
        self
    }

    /// Whether each request gets an access-log line: `info` on the `tlauth::access` target,
    /// written when its answer has been sent, with the method, the path without its query,
    /// the status, the time to the upstream's answer and in all, whether it was signed,
    /// replayed after a 401 or sent again after an idle close, and the answer's body bytes;
    /// never a header value or a body. Default on.
    #[must_use]
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// The most client connections at once. Beyond it, 4 more are taken for the admin
    /// endpoints only (one request each; anything else on them gets 503 with
    /// `Retry-After: 1`), so health and metrics answer while slow clients fill the cap; more
    /// than that wait to be accepted. Default 1024.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long in-flight requests get to finish after a shutdown is asked. Default 30 s.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How many threads serve, each with its own single-threaded tokio runtime and upstream
    /// connection pool, all accepting from the one listening socket, as nginx runs a worker
    /// per core. Default 1: [`RunningProxy::serve`] runs on the caller's runtime. With more,
    /// one worker runs there and the others on threads of their own; a request then never
    /// crosses threads, which is what brings the proxy close to nginx (see
    /// `docs/benchmarks.md`). The token cache is shared by all.
    ///
    /// [`RunningProxy::serve`]: crate::RunningProxy::serve
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ProxyError`]: an unusable or plain-http remote upstream, a remote listen address
    /// without [`allow_remote`](Self::allow_remote), zero limits or timeouts, or TLS roots
    /// that cannot be loaded.
    pub fn build(mut self) -> Result<Proxy<K>, ProxyError>
    where
        K: SignerSource,
    {
        let upstream = Upstream::parse(&self.upstream)?;
        if !self.listen.ip().is_loopback() && !self.allow_remote {
            return Err(ProxyError::NotLoopback(self.listen));
        }
        if self.max_connections == 0 {
            return Err(ProxyError::InvalidSetting {
                name: "max_connections",
                reason: "at least one connection is needed",
            });
        }
        if self.workers == 0 || self.workers > 1024 {
            return Err(ProxyError::InvalidSetting {
                name: "workers",
                reason: "between 1 and 1024 workers",
            });
        }
        if self.body_memory < self.signing_limit as u64 || self.body_memory < self.replay_limit {
            return Err(ProxyError::InvalidSetting {
                name: "body_memory",
                reason: "the body memory must hold at least one body of the signing and replay limits",
            });
        }
        if self.header_read_timeout.is_zero()
            || self.body_timeout.is_zero()
            || self.body_idle_timeout.is_zero()
        {
            return Err(ProxyError::InvalidSetting {
                name: "timeout",
                reason: "timeouts must be greater than zero",
            });
        }
        // `/x/` means `/x`: its endpoints are `/x/healthz`, not `/x//healthz`.
        let trimmed = self.admin_path.trim_end_matches('/').len();
        self.admin_path.truncate(trimmed);
        if !self.admin_path.starts_with('/') {
            return Err(ProxyError::InvalidSetting {
                name: "admin_path",
                reason: "give the admin path with a leading `/` and at least one name after it, such as `/.tlauth` or `/_proxy`",
            });
        }
        for path in &mut self.refused_paths {
            let trimmed = path.trim_end_matches('/').len();
            path.truncate(trimmed);
            if !path.starts_with('/') {
                return Err(ProxyError::InvalidSetting {
                    name: "refuse_path",
                    reason: "a refused path starts with `/` and is not `/` alone",
                });
            }
        }
        Proxy::from_builder(self, upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_lose_user_info_and_refuse_plain_http_off_loopback() {
        let u = Upstream::parse("https://user:pass@api.truelayer.com/base/").unwrap();
        assert_eq!(u.host, "api.truelayer.com");
        assert_eq!(u.base_path, "/base");
        assert!(!u.display.contains("pass"));
        assert!(matches!(
            Upstream::parse("http://api.truelayer.com"),
            Err(ProxyError::InsecureUpstream { .. })
        ));
        let local = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(local.host, "127.0.0.1:9000");
        assert!(Upstream::parse("http://localhost:1").is_ok());
        let err = Upstream::parse("ftp://user:secret@host").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(Upstream::parse("https://h/?q=1").is_err());
    }
}
