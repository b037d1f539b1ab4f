//! Who may use the proxy: requests meant for it (DNS rebinding), not browsers on other sites.

use std::net::SocketAddr;

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, HeaderName};

/// Why a request was refused before anything was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A `Host` that is not the proxy's: a web page that rebound its name to loopback.
    Host,
    /// A browser request from a page on another site.
    CrossSite,
}

#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// Accepted `Host` values, lower case; `None`: any.
    hosts: Option<Vec<String>>,
    origins: Vec<String>,
}

impl Guard {
    /// The hosts a client of `local` may name: the address itself, `localhost` on its port,
    /// and the configured ones. With remote clients allowed and none configured, any.
    pub(crate) fn new(
        local: SocketAddr,
        allowed_hosts: &[String],
        allowed_origins: &[String],
        allow_remote: bool,
    ) -> Self {
        let hosts = if allow_remote && allowed_hosts.is_empty() {
            None
        } else {
            let port = local.port();
            let mut hosts = vec![local.to_string(), format!("localhost:{port}")];
            if local.ip().is_loopback() && local.is_ipv4() {
                hosts.push(format!("127.0.0.1:{port}"));
            }
            hosts.extend(allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
            Some(hosts)
        };
        Guard {
            hosts,
            origins: allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        // One pass over the request's few headers rather than three hashed lookups.
        let (mut host, mut origin, mut fetch_site) = (None, None, None);
        for (name, value) in headers {
            if name == HOST {
                host.get_or_insert(value);
            } else if name == ORIGIN {
                origin.get_or_insert(value);
            } else if *name == SEC_FETCH_SITE {
                fetch_site.get_or_insert(value);
            }
        }
        if let Some(hosts) = &self.hosts {
            let host = host.and_then(|v| v.to_str().ok()).unwrap_or("");
            if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return Err(Refusal::Host);
            }
        }
        if let Some(origin) = origin {
            let origin = origin.to_str().unwrap_or("");
            if !self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                return Err(Refusal::CrossSite);
            }
        } else if fetch_site.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
            return Err(Refusal::CrossSite);
        }
        Ok(())
    }
}

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn rebinding_hosts_and_cross_site_browsers_are_refused() {
        let guard = Guard::new("127.0.0.1:8080".parse().unwrap(), &[], &[], false);
        assert_eq!(guard.check(&headers(&[("host", "127.0.0.1:8080")])), Ok(()));
        assert_eq!(guard.check(&headers(&[("host", "LOCALHOST:8080")])), Ok(()));
        assert_eq!(
            guard.check(&headers(&[("host", "evil.example:8080")])),
            Err(Refusal::Host)
        );
        assert_eq!(guard.check(&headers(&[])), Err(Refusal::Host));
        assert_eq!(
            guard.check(&headers(&[
                ("host", "localhost:8080"),
                ("origin", "https://evil.example")
            ])),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            guard.check(&headers(&[
                ("host", "localhost:8080"),
                ("sec-fetch-site", "cross-site")
            ])),
            Err(Refusal::CrossSite)
        );
        let open = Guard::new(
            "0.0.0.0:80".parse().unwrap(),
            &[],
            &["https://app.example".into()],
            true,
        );
        assert_eq!(
            open.check(&headers(&[
                ("host", "pod-1:80"),
                ("origin", "https://app.example")
            ])),
            Ok(())
        );
    }
}
