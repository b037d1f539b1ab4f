//! Which TrueLayer authorization server to talk to.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use url::{Host, Url};

use crate::error::ConfigError;

const SANDBOX_AUTH: &str = "https://auth.truelayer-sandbox.com";
const PRODUCTION_AUTH: &str = "https://auth.truelayer.com";
const SANDBOX_API: &str = "https://api.truelayer-sandbox.com";
const PRODUCTION_API: &str = "https://api.truelayer.com";
const SANDBOX_DATA_API: &str = "https://api.truelayer-sandbox.com/data/v1";
const PRODUCTION_DATA_API: &str = "https://api.truelayer.com/data/v1";

/// A TrueLayer environment: where tokens come from.
///
/// There is no `Default`: production is never chosen silently.
///
/// # Example
///
/// ```
/// use truelayer_auth::Environment;
///
/// let env: Environment = "sandbox".parse()?;
/// assert_eq!(env.token_url().as_str(), "https://auth.truelayer-sandbox.com/connect/token");
///
/// // A local emulator (plain http is accepted for loopback hosts only).
/// let local = Environment::custom("http://127.0.0.1:8080")?;
/// assert_eq!(local.token_url().as_str(), "http://127.0.0.1:8080/connect/token");
/// assert!(Environment::custom("http://auth.example.com").is_err());
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Environment {
    /// `https://auth.truelayer-sandbox.com`: test credentials, no real money.
    Sandbox,
    /// `https://auth.truelayer.com`: live credentials, real money.
    Production,
    /// Another authorization server, such as the emulator or a proxy in front of TrueLayer.
    Custom(CustomEndpoint),
}

/// The validated base URL of a custom authorization server.
///
/// Made by [`Environment::custom`]: `https` always, or `http` to a loopback host.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CustomEndpoint {
    base: Url,
    token_url: Url,
    /// Where the auth dialog and the Data API are, when not where they usually are (boxed:
    /// most environments have neither, and `Environment` is passed around by value).
    moved: Option<Box<MovedUrls>>,
}

#[derive(Clone, PartialEq, Eq, Hash, Default)]
struct MovedUrls {
    dialog: Option<Url>,
    data_api: Option<Url>,
}

impl CustomEndpoint {
    fn moved(&self) -> &MovedUrls {
        static NONE: MovedUrls = MovedUrls {
            dialog: None,
            data_api: None,
        };
        self.moved.as_deref().unwrap_or(&NONE)
    }

    /// The base URL, as given (without a trailing slash).
    pub fn base_url(&self) -> &Url {
        &self.base
    }
}

impl Environment {
    /// A custom authorization server at `base_url`; its token endpoint is `{base_url}/connect/token`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidUrl`] when `base_url` does not parse, has no host, carries a query
    /// or credentials, and [`ConfigError::InsecureUrl`] when it is plain `http` to a host that is
    /// not loopback (client secrets must not cross a network in clear text).
    pub fn custom(base_url: &str) -> Result<Self, ConfigError> {
        let mut base = Url::parse(base_url).map_err(|e| ConfigError::InvalidUrl {
            url: base_url.to_owned(),
            reason: e.to_string(),
        })?;
        if base.host().is_none() || base.cannot_be_a_base() {
            return Err(ConfigError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "it has no host".into(),
            });
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(ConfigError::InvalidUrl {
                url: base.host_str().unwrap_or_default().to_owned(),
                reason: "it carries user credentials; pass credentials separately".into(),
            });
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ConfigError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "a base URL takes no query or fragment".into(),
            });
        }
        check_transport(&base)?;
        let trimmed = base.path().trim_end_matches('/').to_owned();
        base.set_path(&trimmed);
        let token_url = join(&base, "connect/token");
        Ok(Environment::Custom(CustomEndpoint {
            base,
            token_url,
            moved: None,
        }))
    }

    /// The base URL of the authorization server.
    pub fn auth_url(&self) -> Url {
        match self {
            Environment::Sandbox => parse_known(SANDBOX_AUTH),
            Environment::Production => parse_known(PRODUCTION_AUTH),
            Environment::Custom(c) => c.base.clone(),
        }
    }

    /// The token endpoint: `{auth_url}/connect/token`.
    pub fn token_url(&self) -> Url {
        match self {
            Environment::Custom(c) => c.token_url.clone(),
            _ => join(&self.auth_url(), "connect/token"),
        }
    }

    /// TrueLayer's Payments API base URL that goes with this environment's tokens; `None` for
    /// a custom authorization server, whose API is wherever its operator put it.
    pub fn api_url(&self) -> Option<Url> {
        match self {
            Environment::Sandbox => Some(parse_known(SANDBOX_API)),
            Environment::Production => Some(parse_known(PRODUCTION_API)),
            Environment::Custom(_) => None,
        }
    }

    /// TrueLayer's auth dialog, where a Data API auth link sends the user: the auth host's
    /// root, or what [`with_auth_dialog_url`](Self::with_auth_dialog_url) named.
    pub fn auth_dialog_url(&self) -> Url {
        match self {
            Environment::Custom(c) if c.moved().dialog.is_some() => {
                c.moved().dialog.clone().expect("checked above")
            }
            _ => {
                let mut url = self.auth_url();
                url.set_path(&format!("{}/", url.path().trim_end_matches('/')));
                url
            }
        }
    }

    /// The Data API v1 base (`.../data/v1`): TrueLayer's API host for sandbox and
    /// production; for a custom server, `{base_url}/data/v1` (where the emulator serves it)
    /// unless [`with_data_api_url`](Self::with_data_api_url) named another.
    ///
    /// ```
    /// use truelayer_auth::Environment;
    ///
    /// assert_eq!(Environment::Sandbox.data_api_url().as_str(), "https://api.truelayer-sandbox.com/data/v1");
    /// let local = Environment::custom("http://127.0.0.1:8080")?;
    /// assert_eq!(local.data_api_url().as_str(), "http://127.0.0.1:8080/data/v1");
    /// let split = local.with_data_api_url("http://127.0.0.1:9090/data/v1")?;
    /// assert_eq!(split.data_api_url().as_str(), "http://127.0.0.1:9090/data/v1");
    /// # Ok::<(), truelayer_auth::ConfigError>(())
    /// ```
    pub fn data_api_url(&self) -> Url {
        match self {
            Environment::Sandbox => parse_known(SANDBOX_DATA_API),
            Environment::Production => parse_known(PRODUCTION_DATA_API),
            Environment::Custom(c) => c
                .moved()
                .data_api
                .clone()
                .unwrap_or_else(|| join(&c.base, "data/v1")),
        }
    }

    /// This custom environment with its Data API somewhere other than `{base_url}/data/v1`.
    ///
    /// # Errors
    ///
    /// As [`Environment::custom`] for the URL, and [`ConfigError::InvalidSetting`] for
    /// sandbox and production, whose hosts are TrueLayer's.
    pub fn with_data_api_url(self, url: &str) -> Result<Self, ConfigError> {
        let url = checked_base(url)?;
        match self {
            Environment::Custom(mut c) => {
                c.moved.get_or_insert_default().data_api = Some(url);
                Ok(Environment::Custom(c))
            }
            _ => Err(ConfigError::InvalidSetting {
                name: "data_api_url",
                reason: "only a custom environment's Data API can be moved",
            }),
        }
    }

    /// This custom environment with its auth dialog somewhere other than the auth host's root.
    ///
    /// # Errors
    ///
    /// As [`with_data_api_url`](Self::with_data_api_url).
    pub fn with_auth_dialog_url(self, url: &str) -> Result<Self, ConfigError> {
        let url = checked_base(url)?;
        match self {
            Environment::Custom(mut c) => {
                c.moved.get_or_insert_default().dialog = Some(url);
                Ok(Environment::Custom(c))
            }
            _ => Err(ConfigError::InvalidSetting {
                name: "auth_dialog_url",
                reason: "only a custom environment's auth dialog can be moved",
            }),
        }
    }

    /// A short, stable name: `sandbox`, `production` or the custom base URL.
    pub fn name(&self) -> String {
        match self {
            Environment::Sandbox => "sandbox".into(),
            Environment::Production => "production".into(),
            Environment::Custom(c) => c.base.as_str().trim_end_matches('/').to_owned(),
        }
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Environment::Sandbox => f.write_str("Sandbox"),
            Environment::Production => f.write_str("Production"),
            Environment::Custom(c) => f.debug_tuple("Custom").field(&c.base.as_str()).finish(),
        }
    }
}

impl fmt::Debug for CustomEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CustomEndpoint")
            .field(&self.base.as_str())
            .finish()
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Environment {
    type Err = ConfigError;

    /// `sandbox`, `production` (case-insensitive), or a base URL.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("sandbox") {
            Ok(Environment::Sandbox)
        } else if s.eq_ignore_ascii_case("production") || s.eq_ignore_ascii_case("prod") {
            Ok(Environment::Production)
        } else if s.contains("://") {
            Environment::custom(s)
        } else {
            Err(ConfigError::UnknownEnvironment(s.to_owned()))
        }
    }
}

/// A URL that may carry tokens: it parses, has a host, no credentials, query or fragment,
/// and is `https` (or `http` to loopback). A trailing slash is trimmed from its path.
fn checked_base(url: &str) -> Result<Url, ConfigError> {
    match Environment::custom(url)? {
        Environment::Custom(c) => Ok(c.base),
        _ => unreachable!("Environment::custom makes a custom environment"),
    }
}

/// Whether `url` may carry a client secret: `https`, or `http` to a loopback host.
pub(crate) fn check_transport(url: &Url) -> Result<(), ConfigError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(ConfigError::InsecureUrl {
            host: url.host_str().unwrap_or_default().to_owned(),
        }),
        other => Err(ConfigError::InvalidUrl {
            url: url.as_str().to_owned(),
            reason: format!("the scheme `{other}` is not http or https"),
        }),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

fn parse_known(s: &str) -> Url {
    // The constants above are valid URLs; a failure here is a bug caught by the unit tests.
    Url::parse(s).unwrap_or_else(|e| unreachable!("built-in URL {s} is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_environments_have_documented_endpoints() {
        assert_eq!(
            Environment::Production.token_url().as_str(),
            "https://auth.truelayer.com/connect/token"
        );
        assert_eq!(
            Environment::Sandbox.token_url().as_str(),
            "https://auth.truelayer-sandbox.com/connect/token"
        );
        assert_eq!(
            Environment::Sandbox.api_url().unwrap().as_str(),
            "https://api.truelayer-sandbox.com/"
        );
    }

    #[test]
    fn custom_urls_keep_their_path_and_require_tls_off_loopback() {
        let env = Environment::custom("https://proxy.example.com/truelayer/").unwrap();
        assert_eq!(
            env.token_url().as_str(),
            "https://proxy.example.com/truelayer/connect/token"
        );
        for ok in [
            "http://127.0.0.1:9",
            "http://localhost:9",
            "http://[::1]:9",
            "http://127.8.0.1",
        ] {
            assert!(Environment::custom(ok).is_ok(), "{ok}");
        }
        for insecure in [
            "http://10.0.0.1",
            "http://auth.truelayer.com",
            "http://localhost.evil.com",
        ] {
            assert!(
                matches!(
                    Environment::custom(insecure),
                    Err(ConfigError::InsecureUrl { .. })
                ),
                "{insecure}"
            );
        }
        for bad in ["ftp://x", "not a url", "https://u:p@host", "https://h/?q=1"] {
            assert!(
                matches!(
                    Environment::custom(bad),
                    Err(ConfigError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn parsing_names_and_urls() {
        assert_eq!(
            "Sandbox".parse::<Environment>().unwrap(),
            Environment::Sandbox
        );
        assert_eq!(
            "production".parse::<Environment>().unwrap(),
            Environment::Production
        );
        assert!(matches!(
            "staging".parse::<Environment>(),
            Err(ConfigError::UnknownEnvironment(_))
        ));
        let custom: Environment = "http://127.0.0.1:1234".parse().unwrap();
        assert_eq!(custom.name(), "http://127.0.0.1:1234");
    }

    #[test]
    fn credentials_in_a_url_are_not_echoed() {
        let err = Environment::custom("https://user:hunter2@host.example").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
