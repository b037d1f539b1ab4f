//! The Data API's user authorization: the auth link a user's browser goes to, and the
//! callback that brings their consent back as a code.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use url::Url;

use crate::data_scope::DataScopes;
use crate::environment::{Environment, check_transport};
use crate::error::ConfigError;

/// How TrueLayer's dialog hands the code back to the redirect URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResponseMode {
    /// A redirect whose query string carries `code` and `state` (the default).
    #[default]
    Query,
    /// A form POSTed to the redirect URI with `code` and `state`: they stay out of the URL,
    /// so out of browser history, `Referer` headers and access logs.
    FormPost,
}

/// Builds an auth link: the URL of TrueLayer's auth dialog for one user's consent.
///
/// `state` and `nonce` come from a CSPRNG, and PKCE (S256) is on by default. What the
/// callback must check comes back as a [`PendingAuthorization`]: keep it (server side, keyed
/// by [`state`](PendingAuthorization::state)) until the user returns. An auth link is meant
/// to be used once.
///
/// # Example
///
/// ```
/// use truelayer_auth::{AuthLink, DataScope, DataScopes, Environment, ResponseMode};
///
/// let link = AuthLink::builder(Environment::Sandbox, "sandbox-acme-1a2b3c", "https://acme.example/callback")
///     .scopes(DataScopes::new([DataScope::Accounts, DataScope::Balance, DataScope::OfflineAccess])?)
///     .providers(["uk-cs-mock", "uk-ob-all", "uk-oauth-all"])
///     .response_mode(ResponseMode::FormPost)
///     .build()?;
/// assert!(link.url().as_str().starts_with("https://auth.truelayer-sandbox.com/?response_type=code"));
/// assert!(link.url().query().unwrap().contains("code_challenge_method=S256"));
/// let pending = link.pending();
/// assert_eq!(pending.state().len(), 43); // 32 random bytes, base64url
/// # Ok::<(), truelayer_auth::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AuthLinkBuilder {
    environment: Environment,
    client_id: String,
    redirect_uri: String,
    scopes: DataScopes,
    providers: Vec<String>,
    provider_id: Option<String>,
    response_mode: ResponseMode,
    pkce: bool,
}

/// An auth link and what its callback must be checked against. `Debug` leaves out the
/// link's query (its `state` and `nonce`).
#[derive(Clone)]
pub struct AuthLink {
    url: Url,
    pending: PendingAuthorization,
}

impl fmt::Debug for AuthLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        shown.set_query(None);
        f.debug_struct("AuthLink")
            .field("url", &shown.as_str())
            .field("pending", &self.pending)
            .finish()
    }
}

impl AuthLink {
    /// A builder of a link for `client_id` that returns the user to `redirect_uri` (which
    /// must be allow-listed for the client in TrueLayer Console, exactly).
    pub fn builder(
        environment: Environment,
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> AuthLinkBuilder {
        AuthLinkBuilder {
            environment,
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            scopes: DataScopes::default(),
            providers: Vec::new(),
            provider_id: None,
            response_mode: ResponseMode::Query,
            pkce: true,
        }
    }

    /// The URL to send the user's browser to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// What the callback is checked against.
    pub fn pending(&self) -> &PendingAuthorization {
        &self.pending
    }

    /// The URL and what the callback is checked against.
    pub fn into_parts(self) -> (Url, PendingAuthorization) {
        (self.url, self.pending)
    }
}

impl AuthLinkBuilder {
    /// The scopes to ask consent for. Default: every [`DataScope`](crate::DataScope),
    /// `offline_access` included.
    #[must_use]
    pub fn scopes(mut self, scopes: DataScopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// The providers (banks, or groups such as `uk-ob-all`) the dialog offers. Default: none
    /// named, which TrueLayer may refuse; name the ones your client is set up for.
    #[must_use]
    pub fn providers<I, S>(mut self, providers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.providers = providers.into_iter().map(Into::into).collect();
        self
    }

    /// Preselects one provider, skipping the dialog's choice.
    #[must_use]
    pub fn provider_id(mut self, provider_id: impl Into<String>) -> Self {
        self.provider_id = Some(provider_id.into());
        self
    }

    /// How the code comes back. Default [`ResponseMode::Query`].
    #[must_use]
    pub fn response_mode(mut self, mode: ResponseMode) -> Self {
        self.response_mode = mode;
        self
    }

    /// Leaves PKCE out, for a client whose server cannot take it. PKCE binds the code to this
    /// link, so a code stolen on its way back cannot be exchanged by anyone else: keep it
    /// unless you must not.
    #[must_use]
    pub fn without_pkce(mut self) -> Self {
        self.pkce = false;
        self
    }

    /// The link, with fresh `state`, `nonce` and PKCE verifier.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptyClientId`]; [`ConfigError::InvalidUrl`] or
    /// [`ConfigError::InsecureUrl`] for a redirect URI that is not absolute `https` (or `http`
    /// to a loopback address) or carries a fragment or user credentials;
    /// [`ConfigError::InvalidSetting`] for an empty provider name.
    pub fn build(self) -> Result<AuthLink, ConfigError> {
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::EmptyClientId);
        }
        let redirect = Url::parse(&self.redirect_uri).map_err(|e| ConfigError::InvalidUrl {
            url: crate::error::truncate(&self.redirect_uri, 200),
            reason: e.to_string(),
        })?;
        if redirect.fragment().is_some()
            || !redirect.username().is_empty()
            || redirect.password().is_some()
        {
            return Err(ConfigError::InvalidUrl {
                url: redirect.host_str().unwrap_or_default().to_owned(),
                reason: "a redirect URI takes no fragment or user credentials".into(),
            });
        }
        check_transport(&redirect)?;
        if self.providers.iter().any(|p| p.trim().is_empty())
            || self
                .provider_id
                .as_deref()
                .is_some_and(|p| p.trim().is_empty())
        {
            return Err(ConfigError::InvalidSetting {
                name: "providers",
                reason: "a provider name cannot be empty",
            });
        }
        let state = random_text();
        let nonce = random_text();
        let verifier = self.pkce.then(random_text);
        let mut url = self.environment.auth_dialog_url();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", self.scopes.as_str())
                .append_pair("state", &state)
                .append_pair("nonce", &nonce);
            if !self.providers.is_empty() {
                q.append_pair("providers", &self.providers.join(" "));
            }
            if let Some(p) = &self.provider_id {
                q.append_pair("provider_id", p);
            }
            if self.response_mode == ResponseMode::FormPost {
                q.append_pair("response_mode", "form_post");
            }
            if let Some(v) = &verifier {
                q.append_pair("code_challenge", &pkce_challenge(v))
                    .append_pair("code_challenge_method", "S256");
            }
        }
        Ok(AuthLink {
            url,
            pending: PendingAuthorization {
                client_id: self.client_id,
                redirect_uri: self.redirect_uri,
                scopes: self.scopes,
                state,
                nonce,
                code_verifier: verifier.map(SecretString::from),
            },
        })
    }
}

/// What an auth link's callback is checked against: the `state` it carried, the PKCE
/// verifier, and what the code exchange must repeat.
///
/// `Debug` shows no secret (the verifier).
#[derive(Clone)]
pub struct PendingAuthorization {
    client_id: String,
    redirect_uri: String,
    scopes: DataScopes,
    state: String,
    nonce: String,
    code_verifier: Option<SecretString>,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes.as_str())
            .field("pkce", &self.code_verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl PendingAuthorization {
    /// The `state` the link carried: the key to keep this under until the user returns.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The `nonce` the link carried.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The redirect URI, which the code exchange repeats.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The client the link is for.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The scopes consent was asked for.
    pub fn scopes(&self) -> &DataScopes {
        &self.scopes
    }

    /// The PKCE verifier, if the link used PKCE: for an application that must keep a pending
    /// authorization outside memory (say, encrypted, until a code typed by hand arrives) and
    /// rebuild the code with [`AuthorizationCode::new`].
    pub fn code_verifier(&self) -> Option<&SecretString> {
        self.code_verifier.as_ref()
    }

    /// Checks a callback, given the redirect's query string or the POSTed form body
    /// (`application/x-www-form-urlencoded`, with or without a leading `?`), and returns the
    /// code to exchange.
    ///
    /// `state` is compared in constant time, and checked first, for an `error` callback as
    /// for a code: TrueLayer returns the `state` with an error, and an error with a missing
    /// or foreign `state` is a forged or crossed callback (a page that loads the redirect URI
    /// with `error=access_denied` must not end a wait for the real redirect).
    ///
    /// # Errors
    ///
    /// [`CallbackError`]: the user or the bank refused (`error=access_denied` and friends),
    /// `state` missing or not this link's, no code, or a parameter given twice.
    ///
    /// # Example
    ///
    /// ```
    /// use truelayer_auth::{AuthLink, CallbackError, Environment};
    ///
    /// let link = AuthLink::builder(Environment::Sandbox, "client", "https://acme.example/cb").build()?;
    /// let pending = link.pending();
    /// let query = format!("code=abc&state={}", pending.state());
    /// let code = pending.callback(&query)?;
    /// assert_eq!(code.redirect_uri(), "https://acme.example/cb");
    ///
    /// let denied = pending.callback(&format!("error=access_denied&state={}", pending.state()));
    /// assert!(matches!(denied, Err(e) if e.is_access_denied()));
    /// assert!(matches!(pending.callback("code=abc&state=forged"), Err(CallbackError::StateMismatch)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn callback(&self, params: &str) -> Result<AuthorizationCode, CallbackError> {
        let params = params.strip_prefix('?').unwrap_or(params);
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = None;
        for (name, value) in url::form_urlencoded::parse(params.as_bytes()) {
            let slot = match name.as_ref() {
                "code" => &mut code,
                "state" => &mut state,
                "error" => &mut error,
                "error_description" => &mut description,
                _ => continue,
            };
            if slot.is_some() {
                return Err(CallbackError::DuplicateParameter(match name.as_ref() {
                    "code" => "code",
                    "state" => "state",
                    "error" => "error",
                    _ => "error_description",
                }));
            }
            *slot = Some(value.into_owned());
        }
        // `state` first, for an error as for a code: a forged `error=access_denied` from
        // another page must not end a wait for the real redirect.
        let state = state.ok_or(CallbackError::MissingState)?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            state.as_bytes(),
            self.state.as_bytes(),
        )
        .is_err()
        {
            return Err(CallbackError::StateMismatch);
        }
        if let Some(error) = error {
            return Err(CallbackError::Refused {
                error: clean(&error, 64),
                description: description.map(|d| clean(&d, 300)),
            });
        }
        let code = match code {
            Some(c) if !c.is_empty() => SecretString::from(c),
            _ => return Err(CallbackError::MissingCode),
        };
        Ok(AuthorizationCode {
            code,
            client_id: self.client_id.clone(),
            redirect_uri: self.redirect_uri.clone(),
            scopes: self.scopes.clone(),
            code_verifier: self.code_verifier.clone(),
        })
    }
}

/// A code from a checked callback, with what its exchange must send
/// ([`TokenClient::exchange_code`](crate::TokenClient::exchange_code)).
///
/// Codes are single use and live minutes: exchange it at once. `Debug` shows no secret.
#[derive(Clone)]
pub struct AuthorizationCode {
    code: SecretString,
    client_id: String,
    redirect_uri: String,
    scopes: DataScopes,
    code_verifier: Option<SecretString>,
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("pkce", &self.code_verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl AuthorizationCode {
    /// A code obtained another way (say, copied by hand from TrueLayer Console's redirect
    /// page), with the redirect URI and PKCE verifier of the link that produced it.
    pub fn new(
        code: SecretString,
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
        scopes: DataScopes,
        code_verifier: Option<SecretString>,
    ) -> Self {
        AuthorizationCode {
            code,
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            scopes,
            code_verifier,
        }
    }

    /// The code.
    pub fn secret(&self) -> &SecretString {
        &self.code
    }

    /// The client the link was for.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The link's redirect URI.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The scopes consent was asked for.
    pub fn scopes(&self) -> &DataScopes {
        &self.scopes
    }

    /// The PKCE verifier, if the link used PKCE.
    pub fn code_verifier(&self) -> Option<&SecretString> {
        self.code_verifier.as_ref()
    }
}

/// A callback that brings no usable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// The dialog came back with an `error`: `access_denied` when the user declined, or the
    /// bank's or TrueLayer's refusal.
    #[error("the authorization was refused with `{error}`{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The `error` code.
        error: String,
        /// The `error_description`, if any (truncated, control characters removed).
        description: Option<String>,
    },
    /// No `state`: this is not the redirect of one of our links.
    #[error("the callback carries no `state`; it did not come from this auth link")]
    MissingState,
    /// A `state` that is not the link's: a forged or crossed callback (CSRF). Refuse it.
    #[error(
        "the callback's `state` is not the auth link's: a forged callback or another link's; refused"
    )]
    StateMismatch,
    /// No `code` (and no `error`).
    #[error("the callback carries no `code`")]
    MissingCode,
    /// A parameter given twice: ambiguous, so refused.
    #[error("the callback gives `{0}` more than once")]
    DuplicateParameter(&'static str),
}

impl CallbackError {
    /// Whether the user declined consent (`error=access_denied`).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, CallbackError::Refused { error, .. } if error == "access_denied")
    }
}

/// 32 bytes from the operating system's CSPRNG, base64url without padding: 43 characters,
/// within PKCE's 43..=128 for a verifier.
fn random_text() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system CSPRNG is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7636's S256: base64url(SHA-256(verifier)).
fn pkce_challenge(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn clean(text: &str, max: usize) -> String {
    crate::error::truncate(
        &text.chars().filter(|c| !c.is_control()).collect::<String>(),
        max,
    )
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn the_s256_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn link() -> AuthLink {
        AuthLink::builder(
            Environment::Sandbox,
            "client",
            "http://127.0.0.1:3000/callback",
        )
        .build()
        .unwrap()
    }

    #[test]
    fn each_link_has_fresh_secrets_and_its_challenge_is_of_its_verifier() {
        let (a, b) = (link(), link());
        assert_ne!(a.pending().state(), b.pending().state());
        assert_ne!(a.pending().nonce(), b.pending().nonce());
        let pairs: std::collections::HashMap<_, _> = a.url().query_pairs().into_owned().collect();
        let verifier = a.pending().code_verifier.as_ref().unwrap().expose_secret();
        assert_eq!(pairs["code_challenge"], pkce_challenge(verifier));
        assert_eq!(pairs["state"], a.pending().state());
        assert_eq!(pairs["redirect_uri"], "http://127.0.0.1:3000/callback");
        assert!(!a.url().as_str().contains(verifier));
    }

    #[test]
    fn a_callback_is_checked_before_its_code_is_trusted() {
        let link = link();
        let p = link.pending();
        let s = p.state();
        assert!(p.callback(&format!("?code=c&state={s}")).is_ok());
        assert_eq!(
            p.callback("code=c").unwrap_err(),
            CallbackError::MissingState
        );
        assert_eq!(
            p.callback(&format!("code=c&state={s}x")).unwrap_err(),
            CallbackError::StateMismatch
        );
        assert_eq!(
            p.callback(&format!("state={s}")).unwrap_err(),
            CallbackError::MissingCode
        );
        assert_eq!(
            p.callback(&format!("code=&state={s}")).unwrap_err(),
            CallbackError::MissingCode
        );
        assert_eq!(
            p.callback(&format!("code=a&code=b&state={s}")).unwrap_err(),
            CallbackError::DuplicateParameter("code")
        );
        assert_eq!(
            p.callback(&format!("state={s}&state={s}&code=a"))
                .unwrap_err(),
            CallbackError::DuplicateParameter("state")
        );
        assert_eq!(
            p.callback("error=access_denied&state=forged").unwrap_err(),
            CallbackError::StateMismatch
        );
        assert_eq!(
            p.callback("error=access_denied").unwrap_err(),
            CallbackError::MissingState
        );
        let refused = p
            .callback(&format!(
                "error=provider_error&error_description=bank%0Adown&state={s}"
            ))
            .unwrap_err();
        assert!(!refused.is_access_denied());
        assert_eq!(
            refused.to_string(),
            "the authorization was refused with `provider_error` (bankdown)"
        );
    }

    #[test]
    fn redirect_uris_must_be_safe_to_carry_a_code() {
        for bad in [
            "http://acme.example/cb",
            "https://acme.example/cb#frag",
            "https://u:p@acme.example/cb",
            "/relative",
        ] {
            assert!(
                AuthLink::builder(Environment::Sandbox, "c", bad)
                    .build()
                    .is_err(),
                "{bad}"
            );
        }
    }
}
