//! The token request: one `POST {auth}/connect/token`, with retries.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::header::{ACCEPT, LOCATION, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

use crate::authorization::AuthorizationCode;
use crate::credentials::ClientCredentials;
use crate::environment::{Environment, check_transport};
use crate::error::{ConfigError, Error, InvalidResponse, InvalidToken, TransportError};
use crate::response::{parse_oauth_error, parse_token_response};
use crate::retry::{RetryPolicy, parse_retry_after};
use crate::scope::Scopes;
use crate::token::AccessToken;

/// Requests payments access tokens (the `client_credentials` grant): the transport.
///
/// Holds one connection pool; clone it freely (clones share the pool). Requests are
/// HTTPS-only (plain http to loopback hosts is allowed, for the emulator), follow no
/// redirects, and have connect and total timeouts. Retries are not the client's: a one-shot
/// request passes a [`RetryPolicy`] to [`request_token`](Self::request_token), and a
/// [`TokenCache`](crate::TokenCache) schedules its own.
///
/// # Example
///
/// ```no_run
/// use truelayer_auth::{ClientCredentials, Environment, RetryPolicy, Scopes, TokenClient};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = TokenClient::new()?;
/// let creds = ClientCredentials::new("sandbox-acme-1a2b3c", std::env::var("SECRET")?.into())?;
/// let token = client
///     .request_token(&Environment::Sandbox, &creds, &Scopes::payments(), &RetryPolicy::default())
///     .await?;
/// println!("expires in {:?}", token.remaining());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    max_body_bytes: usize,
    timeout: Duration,
}

/// Builds a [`TokenClient`].
#[derive(Debug, Clone)]
pub struct TokenClientBuilder {
    connect_timeout: Duration,
    timeout: Duration,
    max_body_bytes: usize,
    user_agent: String,
}

impl Default for TokenClientBuilder {
    fn default() -> Self {
        TokenClientBuilder {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            user_agent: concat!("truelayer-auth/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl TokenClientBuilder {
    /// Time allowed to establish a connection (TCP and TLS). Default 5 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for one whole attempt, from sending to the end of the body. Default 10 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response body read; larger ones are an error. Default 64 KiB.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The `User-Agent` header. Default `truelayer-auth/<version>`.
    #[must_use]
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidSetting`] for a zero timeout or a user agent that is not a
    /// valid header value, and when the TLS backend cannot be initialised.
    pub fn build(self) -> Result<TokenClient, ConfigError> {
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ConfigError::InvalidSetting {
                name: "timeout",
                reason: "timeouts must be greater than zero",
            });
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .user_agent(self.user_agent)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|_| ConfigError::InvalidSetting {
                name: "http client",
                reason: "the HTTP client could not be built (invalid user agent or TLS setup)",
            })?;
        Ok(TokenClient {
            http,
            max_body_bytes: self.max_body_bytes,
            timeout: self.timeout,
        })
    }
}

impl TokenClient {
    /// The total timeout of one request ([`TokenClientBuilder::timeout`]): a fetch's time
    /// limit is built from it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client with the default settings.
    ///
    /// # Errors
    ///
    /// As [`TokenClientBuilder::build`].
    pub fn new() -> Result<Self, ConfigError> {
        Self::builder().build()
    }

    /// A builder for a client with custom timeouts or limits.
    pub fn builder() -> TokenClientBuilder {
        TokenClientBuilder::default()
    }

    /// Requests a token, retrying retryable failures as `policy` says.
    ///
    /// # Errors
    ///
    /// The last attempt's [`Error`] once retries are exhausted, or at once for errors that are
    /// not retryable.
    pub async fn request_token(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        scopes: &Scopes,
        policy: &RetryPolicy,
    ) -> Result<AccessToken, Error> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let error = match self
                .request_token_once(environment, credentials, scopes)
                .await
            {
                Ok(token) => return Ok(token),
                Err(e) => e,
            };
            if !error.is_retryable() || attempt >= policy.max_attempts() {
                return Err(error);
            }
            let delay = policy.backoff(attempt, error.retry_after());
            if started.elapsed() + delay > policy.deadline() {
                debug!(
                    kind = error.kind_name(),
                    delay_ms = delay.as_millis() as u64,
                    "token request failed; the next retry would start past the deadline"
                );
                return Err(error);
            }
            warn!(
                client_id = credentials.client_id(),
                attempt,
                kind = error.kind_name(),
                delay_ms = delay.as_millis() as u64,
                "token request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Requests a token once, without retries.
    ///
    /// # Errors
    ///
    /// The [`Error`] for what went wrong.
    pub async fn request_token_once(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        scopes: &Scopes,
    ) -> Result<AccessToken, Error> {
        let url = environment.token_url();
        check_transport(&url)?;
        let span = info_span!(
            "token_request",
            client_id = credentials.client_id(),
            scope = scopes.as_str(),
            environment = %environment,
        );
        let secret = credentials.client_secret().expose_secret();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", credentials.client_id()),
            ("client_secret", secret),
            ("scope", scopes.as_str()),
        ];
        let (token, _) = self.send(url, &form, &[secret]).instrument(span).await?;
        Ok(token)
    }

    /// Exchanges the code of a user's consent (the `authorization_code` grant) for their
    /// access token and, with `offline_access`, a refresh token. Sent once: a code is single
    /// use, so a lost answer cannot be asked for again.
    ///
    /// # Errors
    ///
    /// [`Error::OAuth`] with `invalid_grant` ([`Error::is_invalid_grant`]) for a code that is
    /// expired, used, or issued for another redirect URI or PKCE verifier; a
    /// [`ConfigError::InvalidSetting`] when `credentials` are not the client the code is for;
    /// otherwise as [`request_token_once`](Self::request_token_once).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use truelayer_auth::{AuthLink, ClientCredentials, Environment, TokenClient};
    ///
    /// # async fn run(creds: ClientCredentials, callback_query: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let link = AuthLink::builder(Environment::Sandbox, creds.client_id(), "https://acme.example/cb").build()?;
    /// // ... the user consents in their browser and comes back to /cb?code=...&state=...
    /// let code = link.pending().callback(callback_query)?;
    /// let tokens = TokenClient::new()?.exchange_code(&Environment::Sandbox, &creds, &code).await?;
    /// assert!(tokens.refresh_token().is_some()); // offline_access was asked for (the default)
    /// # Ok(()) }
    /// ```
    pub async fn exchange_code(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        code: &AuthorizationCode,
    ) -> Result<UserTokens, Error> {
        if credentials.client_id() != code.client_id() {
            return Err(Error::Config(ConfigError::InvalidSetting {
                name: "client_id",
                reason: "the credentials are not those of the client the auth link was for",
            }));
        }
        let url = environment.token_url();
        check_transport(&url)?;
        let span = info_span!(
            "token_request",
            grant = "authorization_code",
            client_id = credentials.client_id(),
            environment = %environment,
        );
        let secret = credentials.client_secret().expose_secret();
        let code_value = code.secret().expose_secret();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", credentials.client_id()),
            ("client_secret", secret),
            ("redirect_uri", code.redirect_uri()),
            ("code", code_value),
        ];
        let verifier = code.code_verifier().map(|v| v.expose_secret());
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        let secrets: Vec<&str> = [Some(secret), Some(code_value), verifier]
            .into_iter()
            .flatten()
            .collect();
        let (access_token, refresh_token) =
            self.send(url, &form, &secrets).instrument(span).await?;
        Ok(UserTokens {
            access_token,
            refresh_token,
        })
    }

    /// Renews a user's tokens (the `refresh_token` grant). Sent once and never retried here:
    /// TrueLayer spends a refresh token on first use, so the answer is the only copy of the
    /// new one. Store it before anything else can fail; `truelayer-auth-connections` does.
    ///
    /// # Errors
    ///
    /// [`Error::OAuth`] with `invalid_grant` ([`Error::is_invalid_grant`]) for a refresh token
    /// that is spent, revoked or past its consent; [`Error::InvalidResponse`] with
    /// [`InvalidResponse::MissingField`]`("refresh_token")` for an answer without a new refresh
    /// token (the old one is spent: the connection cannot be refreshed again); otherwise as
    /// [`request_token_once`](Self::request_token_once).
    pub async fn refresh_user_token(
        &self,
        environment: &Environment,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<UserTokens, Error> {
        let url = environment.token_url();
        check_transport(&url)?;
        let span = info_span!(
            "token_request",
            grant = "refresh_token",
            client_id = credentials.client_id(),
            environment = %environment,
        );
        let secret = credentials.client_secret().expose_secret();
        let refresh = refresh_token.expose_secret();
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", credentials.client_id()),
            ("client_secret", secret),
            ("refresh_token", refresh),
        ];
        let (access_token, refresh_token) = self
            .send(url, &form, &[secret, refresh])
            .instrument(span)
            .await?;
        let Some(refresh_token) = refresh_token else {
            return Err(Error::InvalidResponse {
                status: StatusCode::OK,
                problem: InvalidResponse::MissingField("refresh_token"),
            });
        };
        Ok(UserTokens {
            access_token,
            refresh_token: Some(refresh_token),
        })
    }

    /// Posts `form` to the token endpoint; `secrets` are every secret in the form, scrubbed
    /// from anything the server echoes into an error.
    async fn send(
        &self,
        url: Url,
        form: &[(&str, &str)],
        secrets: &[&str],
    ) -> Result<(AccessToken, Option<SecretString>), Error> {
        let sent_at = Instant::now();
        let sent_at_wall = crate::clock::wall_now();
        let mut response = self
            .http
            .post(url)
            .header(ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(classify_send_error)?;
        let status = response.status();
        debug!(status = status.as_u16(), "token endpoint answered");

        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|v| sanitize_location(&crate::response::scrub_decoded(v, secrets)));
            return Err(Error::RedirectRefused { status, location });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::RateLimited { retry_after });
        }
        if status.is_server_error() {
            return Err(Error::ServerError {
                status,
                retry_after,
            });
        }

        let body = self.read_body(&mut response, status).await?;
        if !status.is_success() {
            return Err(match parse_oauth_error(status, &body, secrets) {
                Some(oauth) => Error::OAuth(oauth),
                None => Error::UnexpectedStatus { status },
            });
        }
        let invalid = |problem| Error::InvalidResponse { status, problem };
        // A user grant's new refresh token is kept even when the rest of the answer is
        // unusable: the old one is spent, so it is the only copy.
        let salvage = |problem| match crate::response::salvage_refresh_token(&body) {
            Some(refresh_token) => Error::RefreshTokenOnly {
                status,
                problem,
                refresh_token,
            },
            None => invalid(problem),
        };
        let parsed = match parse_token_response(&body, secrets) {
            Ok(parsed) => parsed,
            // Some servers answer 200 with an OAuth2 error body.
            Err(problem) => {
                return Err(match parse_oauth_error(status, &body, secrets) {
                    Some(oauth) => Error::OAuth(oauth),
                    None => salvage(problem),
                });
            }
        };
        let token = match AccessToken::issued(
            parsed.access_token,
            parsed.expires_in,
            sent_at,
            sent_at_wall,
            parsed.scope,
        ) {
            Ok(token) => token,
            Err(e) => {
                return Err(salvage(match e {
                    InvalidToken::Empty => InvalidResponse::EmptyAccessToken,
                    _ => InvalidResponse::AccessTokenCharacters,
                }));
            }
        };
        debug!(
            lifetime_s = parsed.expires_in.as_secs(),
            granted_scope = token.granted_scope().unwrap_or(""),
            "token issued"
        );
        Ok((token, parsed.refresh_token))
    }

    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        status: StatusCode,
    ) -> Result<Vec<u8>, Error> {
        let limit = self.max_body_bytes;
        let too_large = Error::InvalidResponse {
            status,
            problem: InvalidResponse::BodyTooLarge { limit },
        };
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(too_large);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) if e.is_timeout() => return Err(Error::Timeout),
                Err(_) => {
                    return Err(Error::InvalidResponse {
                        status,
                        problem: InvalidResponse::Truncated,
                    });
                }
            }
        }
    }
}

/// A user's Data API tokens, as the `authorization_code` and `refresh_token` grants answer
/// them. `Debug` shows neither token.
#[derive(Clone)]
pub struct UserTokens {
    access_token: AccessToken,
    refresh_token: Option<SecretString>,
}

impl std::fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokens")
            .field("access_token", &self.access_token)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl UserTokens {
    /// The access token, for `Authorization: Bearer` on Data API calls.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The refresh token: present when consent included `offline_access` (and always on a
    /// refresh's answer). The only copy of it: store it.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// Both tokens.
    pub fn into_parts(self) -> (AccessToken, Option<SecretString>) {
        (self.access_token, self.refresh_token)
    }
}

fn classify_send_error(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else if e.is_connect() {
        Error::Connect(TransportError::new(e.without_url()))
    } else {
        Error::Transport(TransportError::new(e.without_url()))
    }
}

/// Keeps scheme, host, port and path of a redirect target: no query, no user info.
fn sanitize_location(location: &str) -> String {
    match Url::parse(location) {
        Ok(url) => format!(
            "{}://{}{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default(),
            url.path()
        ),
        Err(_) => crate::error::truncate(location.split(['?', '#']).next().unwrap_or(""), 200),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets_lose_queries_and_user_info() {
        assert_eq!(
            sanitize_location("https://u:p@evil.example:8443/steal?secret=1#x"),
            "https://evil.example:8443/steal"
        );
        assert_eq!(sanitize_location("/relative?x=1"), "/relative");
    }
}
