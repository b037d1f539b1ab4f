//! Clients of an [`Emulator`]: its environment, its default client's credentials, a token
//! cache and a signer for it.
//!
//! Start the emulator as usual (`Emulator::start().await.unwrap()`, or `Emulator::bind` on a
//! fixed address), then:
//!
//! ```no_run
//! # async fn demo() {
//! use truelayer_auth_emulator::Emulator;
//! use truelayer_auth_testkit::emulator;
//!
//! let emulator = Emulator::start().await.unwrap();
//! let tokens = emulator::token_cache(&emulator);
//! let signer = emulator::signer(&emulator);
//! # drop((tokens, signer));
//! # }
//! ```

use std::net::SocketAddr;

use secrecy::ExposeSecret;
use truelayer_auth::{
    ClientCredentials, Environment, Scopes, TokenCache, TokenCacheBuilder, TokenClient,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::Signer;

/// The environment whose auth server and API are `emulator`.
pub fn environment(emulator: &Emulator) -> Environment {
    Environment::custom(&emulator.url()).expect("the emulator's URL is a valid environment")
}

/// The environment of an emulator bound (or to be bound) to `addr` on loopback, for caches
/// built before their emulator starts or that outlive it.
pub fn environment_at(addr: SocketAddr) -> Environment {
    Environment::custom(&format!("http://{addr}")).expect("a loopback URL is a valid environment")
}

/// The credentials of the emulator's default client (`client_id`, `client_secret`).
pub fn credentials(emulator: &Emulator) -> ClientCredentials {
    ClientCredentials::new(emulator.client_id(), emulator.client_secret().into())
        .expect("the emulator's default credentials are valid")
}

/// A token cache builder for the emulator's default client, with the defaults, to adjust
/// before `build()`.
pub fn cache_builder(emulator: &Emulator) -> TokenCacheBuilder {
    TokenCache::builder(environment(emulator), credentials(emulator))
}

/// A token cache with the defaults, for the emulator's default client.
pub fn token_cache(emulator: &Emulator) -> TokenCache {
    cache_builder(emulator)
        .build()
        .expect("a cache with the default settings builds")
}

/// A fresh access token (scope `payments`) for the emulator's default client: the bearer for
/// Payments API requests made by hand.
///
/// # Panics
///
/// When the emulator does not issue one (a fault was injected, say).
pub async fn access_token(emulator: &Emulator) -> String {
    let token = TokenClient::new()
        .expect("a token client with the defaults builds")
        .request_token_once(
            &environment(emulator),
            &credentials(emulator),
            &Scopes::payments(),
        )
        .await
        .expect("the emulator issues a token to its default client");
    token.secret().expose_secret().to_owned()
}

/// A signer with the key the emulator registers for its default client: what the Payments
/// stand-in wants every POST signed with.
pub fn signer(emulator: &Emulator) -> Signer {
    Signer::from_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )
    .expect("the emulator's signing key is a P-521 PEM")
}

/// A new key pair, its public half registered for `client_id` under `kid`, as uploading it in
/// Console would.
pub fn register_new_signer(emulator: &Emulator, client_id: &str, kid: &str) -> Signer {
    let signer = Signer::generate(kid);
    let public = signer
        .public_key_pem()
        .expect("a generated key has a public PEM");
    emulator
        .register_signing_key(client_id, kid, &public)
        .expect("the client exists and the key is P-521");
    signer
}

/// What a user does in the emulator's auth dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Chooses the provider and presses Allow.
    Approve(&'static str),
    /// Presses Deny.
    Deny,
}

/// Plays the user in the emulator's auth dialog over plain HTTP (the browser test does it in
/// Chromium): opens `link`, submits `choice`, and returns the callback's parameters, from
/// the redirect's query or, for `form_post`, the auto-submitting form's fields, as a query
/// string for `PendingAuthorization::callback`.
///
/// First it plays the developer in Console: the emulator accepts only allow-listed redirect
/// URIs (loopback ones included, unless told otherwise), so the link's `redirect_uri` is
/// allow-listed for its `client_id` through the emulator's admin route.
///
/// # Panics
///
/// When the dialog does not answer as a dialog should (a test failure).
pub async fn consent(link: &url::Url, choice: Choice) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client builds");
    let query = |name: &str| {
        link.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    if let (Some(client_id), Some(redirect_uri)) = (query("client_id"), query("redirect_uri")) {
        let mut allow = link.clone();
        allow.set_query(None);
        allow
            .path_segments_mut()
            .expect("an http URL")
            .clear()
            .extend(["emulator", "clients", &client_id, "redirect-uris"]);
        http.post(allow)
            .json(&serde_json::json!({ "uri": redirect_uri }))
            .send()
            .await
            .expect("the emulator answers its admin route");
    }
    let page = http
        .get(link.clone())
        .send()
        .await
        .expect("the dialog answers");
    assert_eq!(page.status(), 200, "the dialog refused the link");
    let page = page.text().await.expect("a page");
    let request = field(&page, "name=\"request\" value=\"").expect("the dialog's request id");
    let mut form = vec![("request", request)];
    match choice {
        Choice::Approve(provider) => {
            form.push(("provider", provider.to_owned()));
            form.push(("decision", "approve".to_owned()));
        }
        Choice::Deny => form.push(("decision", "deny".to_owned())),
    }
    let mut decision_url = link.clone();
    decision_url.set_path("/dialog/decision");
    decision_url.set_query(None);
    let answer = http
        .post(decision_url)
        .form(&form)
        .send()
        .await
        .expect("the decision is answered");
    if answer.status().is_redirection() {
        let location = answer.headers()[http::header::LOCATION]
            .to_str()
            .expect("a text Location")
            .to_owned();
        let url = url::Url::parse(&location).expect("an absolute Location");
        return url.query().unwrap_or_default().to_owned();
    }
    // form_post: the page's hidden fields are what the browser would POST.
    let page = answer.text().await.expect("a page");
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    for name in ["code", "state", "error", "error_description"] {
        if let Some(value) = field(&page, &format!("name=\"{name}\" value=\"")) {
            pairs.append_pair(name, &value);
        }
    }
    pairs.finish()
}

/// The HTML-escaped attribute value after `marker`, unescaped.
fn field(page: &str, marker: &str) -> Option<String> {
    let start = page.find(marker)? + marker.len();
    let end = start + page[start..].find('"')?;
    Some(
        page[start..end]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The redirect URI [`authorization_code`] allow-lists and uses.
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

/// A user's consent in the emulator's dialog, for its default client, the redirect URI
/// [`REDIRECT_URI`] (allow-listed for the client first, as Console would: the emulator
/// accepts no other) and `scopes`: the checked code, and what the link handed back.
pub async fn authorization_code(
    emulator: &Emulator,
    scopes: truelayer_auth::DataScopes,
) -> (
    truelayer_auth::AuthorizationCode,
    truelayer_auth::PendingAuthorization,
) {
    assert!(
        emulator.allow_redirect_uri(emulator.client_id(), REDIRECT_URI),
        "the default client exists and the URI is an http URL"
    );
    let link = truelayer_auth::AuthLink::builder(
        environment(emulator),
        emulator.client_id(),
        REDIRECT_URI,
    )
    .scopes(scopes)
    .providers(["mock", "ob-mock-2"])
    .build()
    .expect("a valid link");
    let callback = consent(link.url(), Choice::Approve("mock")).await;
    let pending = link.pending().clone();
    let code = pending
        .callback(&callback)
        .expect("the dialog's callback checks");
    (code, pending)
}
