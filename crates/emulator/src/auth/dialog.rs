//! The Data API's auth dialog at `GET /` (a mock bank's consent page), its decision at
//! `POST /dialog/decision`, the authorization codes it issues, and the redirect-URI rules.
//!
//! Nothing the client sent travels through the page: the form carries an opaque,
//! single-use `request` id naming a pending authorization kept here, which expires after
//! [`DIALOG_REQUEST_LIFETIME`]. Errors found before the `client_id` and `redirect_uri` are
//! trusted are a 400 HTML page (never a redirect to an unchecked URI); later ones go back to
//! the client on its chosen channel (`response_mode` `query` or `form_post`), and only to an
//! `http`/`https` URL.
//!
//! An extension answered `authentication_needed` hands out a re-consent link: the auth link
//! plus an opaque, single-use `reconsent` id (valid [`RECONSENT_LINK_LIFETIME`]) bound to the
//! connection, its client, redirect URI, scopes and bank. Its code renews that connection
//! instead of making a new one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest;
use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{bad_request, parse};
use crate::data::{DATA_SCOPES, NewConnection, RevocationReason, provider, random_token};
use crate::state::{State, lock};

/// How long a rendered dialog can wait for the user's decision: 10 minutes.
pub const DIALOG_REQUEST_LIFETIME: Duration = Duration::from_secs(600);

/// How long an authorization code can wait to be exchanged: 5 minutes.
pub const CODE_LIFETIME: Duration = Duration::from_secs(300);

/// How long the re-consent link of an `authentication_needed` extension stays usable: a
/// day. (TrueLayer does not document how long its `user_input_link` lasts.)
pub const RECONSENT_LINK_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Whether emulators made from now on in this process allow loopback redirect URIs.
static LOOPBACK_DEFAULT: AtomicBool = AtomicBool::new(false);

/// Sets [`LOOPBACK_DEFAULT`].
pub(crate) fn set_loopback_default(on: bool) {
    LOOPBACK_DEFAULT.store(on, Ordering::Relaxed);
}

/// The dialog's pending authorizations and its codes.
pub(crate) struct Dialog {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Also allow `http://127.0.0.1:<port>/...` and `http://localhost:<port>/...`.
    loopback_redirects: bool,
    /// Whether a code presented again revokes the connection it made.
    revoke_on_code_reuse: bool,
    pending: HashMap<String, Pending>,
    codes: HashMap<String, Code>,
    reconsents: HashMap<String, Reconsent>,
}

/// What a re-consent link is bound to: the connection it renews, and what its dialog must
/// ask for.
pub(crate) struct Reconsent {
    pub(crate) connection_id: String,
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) provider_id: String,
    pub(crate) expires_at: i64,
}

/// What the client asked for, checked, waiting for the user.
#[derive(Clone)]
struct Pending {
    client_id: String,
    redirect_uri: String,
    mode: Mode,
    state: Option<String>,
    scopes: Vec<String>,
    challenge: Option<String>,
    /// The providers the page offered: the decision must choose one of them.
    offered: Vec<&'static str>,
    /// The re-consent link this request came from, and the connection it renews.
    reconsent: Option<(String, String)>,
    expires_at: i64,
}

/// An issued code and what it is bound to.
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    scopes: Vec<String>,
    provider_id: String,
    expires_at: i64,
    /// The connection it renews (a re-consent), rather than making a new one.
    renews: Option<String>,
    /// The connection made (or renewed) with it, once exchanged.
    connection_id: Option<String>,
}

/// How the answer goes back to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Query,
    FormPost,
}

/// A code exchange's request: the code, the client, and what must match the dialog's
/// request.
#[derive(Clone, Copy)]
pub(crate) struct Exchange<'a> {
    pub(crate) code: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) redirect_uri: Option<&'a str>,
    pub(crate) verifier: Option<&'a str>,
    pub(crate) now: i64,
}

/// Why a code exchange was refused: `invalid_grant`, with this description.
pub(crate) struct CodeRefused(pub(crate) &'static str);

impl Dialog {
    pub(crate) fn new() -> Self {
        Dialog {
            inner: Mutex::new(Inner {
                loopback_redirects: LOOPBACK_DEFAULT.load(Ordering::Relaxed),
                revoke_on_code_reuse: true,
                pending: HashMap::new(),
                codes: HashMap::new(),
                reconsents: HashMap::new(),
            }),
        }
    }

    /// Allows loopback redirect URIs for every client, or not.
    pub(crate) fn set_loopback_redirects(&self, on: bool) {
        lock(&self.inner).loopback_redirects = on;
    }

    fn loopback_redirects(&self) -> bool {
        lock(&self.inner).loopback_redirects
    }

    /// Whether a code presented again (by its client, with its redirect URI and verifier)
    /// revokes the connection it made.
    pub(crate) fn set_code_reuse_revocation(&self, on: bool) {
        lock(&self.inner).revoke_on_code_reuse = on;
    }

    /// Keeps a re-consent link's binding; returns its id.
    pub(crate) fn add_reconsent(&self, reconsent: Reconsent, now: i64) -> String {
        let mut inner = lock(&self.inner);
        inner.reconsents.retain(|_, r| r.expires_at > now);
        let id = random_token("rc-");
        inner.reconsents.insert(id.clone(), reconsent);
        id
    }

    /// Exchanges `code` for a connection, made (or renewed) by `create` while the code is
    /// held, so a second exchange cannot slip in between. A code presented again by its
    /// client, with its redirect URI and verifier, is refused and revokes the connection it
    /// made (through `revoke`), unless that is turned off; one that fails those checks is
    /// only refused, so an intercepted code alone cannot revoke anything.
    pub(crate) fn redeem<T>(
        &self,
        exchange: &Exchange<'_>,
        create: impl FnOnce(NewConnection) -> Result<(String, T), CodeRefused>,
        revoke: impl FnOnce(&str),
    ) -> Result<T, CodeRefused> {
        let Exchange {
            code,
            client_id,
            redirect_uri,
            verifier,
            now,
        } = *exchange;
        let mut inner = lock(&self.inner);
        let revoke_on_reuse = inner.revoke_on_code_reuse;
        let Some(record) = inner.codes.get_mut(code) else {
            return Err(CodeRefused("the authorization code is not valid"));
        };
        if record.client_id != client_id {
            return Err(CodeRefused(
                "the authorization code was issued to another client",
            ));
        }
        if redirect_uri != Some(record.redirect_uri.as_str()) {
            return Err(CodeRefused(
                "the redirect_uri is not the one the code was issued for",
            ));
        }
        match (&record.challenge, verifier) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(CodeRefused(
                    "a code_verifier was sent but the authorization request had no code_challenge",
                ));
            }
            (Some(_), None) => return Err(CodeRefused("the code_verifier is missing")),
            (Some(challenge), Some(verifier)) => {
                if !is_pkce_value(verifier) || s256(verifier) != *challenge {
                    return Err(CodeRefused(
                        "the code_verifier does not match the challenge",
                    ));
                }
            }
        }
        // Only now, with the client, the redirect URI and the verifier checked, is a second
        // use a reuse by whoever holds all three.
        if let Some(id) = &record.connection_id {
            if revoke_on_reuse {
                revoke(id);
                return Err(CodeRefused(
                    "the authorization code has already been used; the tokens issued with it are revoked",
                ));
            }
            return Err(CodeRefused("the authorization code has already been used"));
        }
        if now >= record.expires_at {
            return Err(CodeRefused("the authorization code has expired"));
        }
        let (connection_id, answer) = create(NewConnection {
            client_id: record.client_id.clone(),
            redirect_uri: record.redirect_uri.clone(),
            scopes: record.scopes.clone(),
            provider_id: record.provider_id.clone(),
            renews: record.renews.clone(),
        })?;
        record.connection_id = Some(connection_id);
        Ok(answer)
    }

    fn add_pending(&self, pending: Pending, now: i64) -> String {
        let mut inner = lock(&self.inner);
        inner.pending.retain(|_, p| p.expires_at > now);
        let id = random_token("req-");
        inner.pending.insert(id.clone(), pending);
        id
    }

    fn issue_code(&self, pending: &Pending, provider_id: &str, now: i64) -> String {
        let mut inner = lock(&self.inner);
        // Keep spent codes a day past their expiry, for reuse detection.
        inner.codes.retain(|_, c| c.expires_at + 86_400 > now);
        let code = random_token("");
        inner.codes.insert(
            code.clone(),
            Code {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                challenge: pending.challenge.clone(),
                scopes: pending.scopes.clone(),
                provider_id: provider_id.to_owned(),
                expires_at: now + CODE_LIFETIME.as_secs() as i64,
                renews: pending.reconsent.as_ref().map(|(_, id)| id.clone()),
                connection_id: None,
            },
        );
        code
    }
}

/// BASE64URL(SHA-256(verifier)), RFC 7636's S256.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// 43 to 128 characters of RFC 7636's unreserved set (`[A-Za-z0-9-._~]`).
fn is_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `uri` is an absolute `http` or `https` URL with a host, no user info and no
/// fragment, in printable ASCII: what a redirect URI may be.
pub(crate) fn is_http_url(uri: &str) -> bool {
    if !uri.bytes().all(|b| b.is_ascii_graphic()) || uri.contains('#') {
        return false;
    }
    let scheme_len = if uri
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        7
    } else if uri
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        8
    } else {
        return false;
    };
    let rest = &uri[scheme_len..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    !authority.is_empty() && !authority.starts_with(':') && !authority.contains('@')
}

/// Whether the dialog accepts `uri` as `client_id`'s redirect URI: allow-listed, or a
/// loopback URI while those are allowed.
pub(crate) fn redirect_allowed(state: &State, client_id: &str, uri: &str) -> bool {
    is_http_url(uri)
        && (state.auth.redirect_uri_listed(client_id, uri)
            || (state.dialog.loopback_redirects() && is_loopback(uri)))
}

/// Whether `uri` is an `http` loopback URI (`127.0.0.1`, `localhost` or `[::1]`, any port),
/// as RFC 8252 §7.3 lets native apps use.
fn is_loopback(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// The auth dialog, its decision, and the admin route for loopback redirects.
pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/", get(dialog))
        .route("/dialog/decision", post(decision))
        .route("/emulator/loopback-redirects", post(loopback_redirects))
}

#[derive(Deserialize, Default)]
struct AuthLink {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    #[allow(dead_code)]
    nonce: Option<String>,
    providers: Option<String>,
    provider_id: Option<String>,
    response_mode: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// A re-consent link's id (see the module docs).
    reconsent: Option<String>,
}

/// `GET /?response_type=code&client_id=...`: the consent page, or why not.
async fn dialog(AxumState(state): AxumState<Arc<State>>, RawQuery(query): RawQuery) -> Response {
    let link: AuthLink = match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
        Ok(link) => link,
        Err(_) => return error_page("The authorization link is malformed."),
    };
    // Until the client and its redirect URI are checked, errors stay on this page.
    let client_id = match link.client_id.as_deref() {
        Some(id) if state.auth.has_client(id) => id.to_owned(),
        Some(_) => return error_page("Unknown client_id."),
        None => return error_page("The client_id is missing."),
    };
    let redirect_uri = match link.redirect_uri.as_deref() {
        None | Some("") => return error_page("The redirect_uri is missing."),
        Some(uri) if uri.contains('#') => {
            return error_page("The redirect_uri must not have a fragment.");
        }
        Some(uri) if redirect_allowed(&state, &client_id, uri) => uri.to_owned(),
        Some(_) => return error_page("The redirect_uri is not allowed for this client."),
    };
    let (mode, mode_error) = match link.response_mode.as_deref() {
        None | Some("query") => (Mode::Query, None),
        Some("form_post") => (Mode::FormPost, None),
        Some(_) => (Mode::Query, Some("unsupported response_mode")),
    };
    let fail = |error: &str, description: &str| {
        let mut params = vec![("error", error.to_owned())];
        params.push(("error_description", description.to_owned()));
        if let Some(s) = &link.state {
            params.push(("state", s.clone()));
        }
        back_to_client(&redirect_uri, mode, &params)
    };
    if let Some(why) = mode_error {
        return fail("invalid_request", why);
    }
    match link.response_type.as_deref() {
        Some("code") => {}
        None => return fail("invalid_request", "response_type is required"),
        Some(_) => return fail("unsupported_response_type", "only response_type=code"),
    }
    let mut scopes: Vec<String> = Vec::new();
    for scope in link.scope.as_deref().unwrap_or("").split(' ') {
        if scope.is_empty() {
            continue;
        }
        if !DATA_SCOPES.contains(&scope) {
            return fail("invalid_scope", &format!("unknown scope '{scope}'"));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    if scopes.is_empty() {
        return fail("invalid_scope", "scope is required");
    }
    let challenge = match (
        link.code_challenge.as_deref(),
        link.code_challenge_method.as_deref(),
    ) {
        (None, None) => None,
        (None, Some(_)) => {
            return fail(
                "invalid_request",
                "code_challenge_method without code_challenge",
            );
        }
        (Some(c), Some("S256")) if is_pkce_value(c) && c.bytes().all(is_base64url) => {
            Some(c.to_owned())
        }
        (Some(_), Some("S256")) => {
            return fail(
                "invalid_request",
                "code_challenge must be 43-128 base64url characters",
            );
        }
        (Some(_), _) => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not supported)",
            );
        }
    };
    let mut preselected = match link.provider_id.as_deref() {
        None | Some("") => None,
        Some(id) => match provider(id) {
            Some(p) => Some(p.id),
            None => return fail("invalid_request", "unknown provider_id"),
        },
    };
    let mut offered = offered_providers(link.providers.as_deref(), preselected);
    let now = state.clock.now_unix();
    // A re-consent link asks for what the connection has, at its bank.
    let reconsent = match link.reconsent.as_deref() {
        None => None,
        Some(id) => {
            let inner = lock(&state.dialog.inner);
            let bound = inner.reconsents.get(id).filter(|r| {
                r.expires_at > now
                    && r.client_id == client_id
                    && r.redirect_uri == redirect_uri
                    && same_scopes(&r.scopes, &scopes)
            });
            match bound.and_then(|r| Some((r, provider(&r.provider_id)?.id))) {
                Some((r, bank)) => {
                    preselected = Some(bank);
                    offered = vec![bank];
                    Some((id.to_owned(), r.connection_id.clone()))
                }
                None => {
                    drop(inner);
                    return fail(
                        "invalid_request",
                        "the re-consent link is unknown, expired, already used or altered",
                    );
                }
            }
        }
    };
    let pending = Pending {
        client_id: client_id.clone(),
        redirect_uri: redirect_uri.clone(),
        mode,
        state: link.state.clone(),
        scopes: scopes.clone(),
        challenge,
        offered: offered.clone(),
        reconsent,
        expires_at: now + DIALOG_REQUEST_LIFETIME.as_secs() as i64,
    };
    let request_id = state.dialog.add_pending(pending, now);
    consent_page(&client_id, &scopes, &offered, preselected, &request_id)
}

/// The same scopes, in any order.
fn same_scopes(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|s| b.contains(s))
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The providers the dialog offers: those of `providers` that are emulator providers, or
/// all of them when it names none (groups such as `uk-ob-all`); plus the preselected one.
fn offered_providers(
    providers: Option<&str>,
    preselected: Option<&'static str>,
) -> Vec<&'static str> {
    let named: Vec<&'static str> = providers
        .unwrap_or("")
        .split(' ')
        .filter_map(|p| provider(p).map(|p| p.id))
        .collect();
    let mut offered: Vec<&'static str> = if named.is_empty() {
        crate::data::fake::PROVIDERS.iter().map(|p| p.id).collect()
    } else {
        named
    };
    if let Some(p) = preselected.filter(|p| !offered.contains(p)) {
        offered.push(p);
    }
    offered.dedup();
    offered
}

#[derive(Deserialize)]
struct Decision {
    request: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    decision: Option<String>,
}

/// `POST /dialog/decision` (form: `request`, `provider`, `decision` = `approve` | `deny`).
async fn decision(AxumState(state): AxumState<Arc<State>>, Form(form): Form<Decision>) -> Response {
    let now = state.clock.now_unix();
    let approve = match form.decision.as_deref() {
        Some("approve") => true,
        Some("deny") => false,
        _ => return error_page("Choose to allow or deny."),
    };
    let chosen = form.provider.as_deref().and_then(provider).map(|p| p.id);
    let pending = {
        let mut inner = lock(&state.dialog.inner);
        match inner.pending.get(&form.request) {
            None => {
                return error_page("This authorization request is unknown or was already used.");
            }
            Some(p) if now >= p.expires_at => {
                inner.pending.remove(&form.request);
                return error_page("This authorization request has expired: start again.");
            }
            // An approval without one of the banks offered leaves the request pending, to
            // choose again.
            Some(p) if approve && !chosen.is_some_and(|c| p.offered.contains(&c)) => {
                return error_page("Choose one of the banks offered, then allow.");
            }
            Some(_) => {
                let pending = inner
                    .pending
                    .remove(&form.request)
                    .unwrap_or_else(|| unreachable!("just seen"));
                // A re-consent link is spent by its first decision.
                if let Some((id, _)) = &pending.reconsent
                    && inner.reconsents.remove(id).is_none()
                {
                    return error_page("This re-consent link was already used.");
                }
                pending
            }
        }
    };
    let mut params = Vec::new();
    if let (true, Some(provider_id)) = (approve, chosen) {
        let code = state.dialog.issue_code(&pending, provider_id, now);
        state.data.count(|s| s.codes_issued += 1);
        params.push(("code", code));
        params.push(("scope", pending.scopes.join(" ")));
    } else {
        params.push(("error", "access_denied".to_owned()));
        params.push(("error_description", "the user denied access".to_owned()));
    }
    if let Some(s) = &pending.state {
        params.push(("state", s.clone()));
    }
    back_to_client(&pending.redirect_uri, pending.mode, &params)
}

/// The answer to the client: a 303 to `redirect_uri` with `params` in its query, or for
/// `form_post` a page that POSTs them there.
fn back_to_client(redirect_uri: &str, mode: Mode, params: &[(&str, String)]) -> Response {
    // Never a `javascript:` (or any other) URL in the form's action or the Location.
    if !is_http_url(redirect_uri) {
        return error_page("The redirect_uri cannot be redirected to.");
    }
    match mode {
        Mode::Query => {
            let query = serde_urlencoded::to_string(params).unwrap_or_default();
            let separator = if redirect_uri.contains('?') { '&' } else { '?' };
            let location = format!("{redirect_uri}{separator}{query}");
            match HeaderValue::from_str(&location) {
                Ok(location) => (
                    StatusCode::SEE_OTHER,
                    [
                        (header::LOCATION, location),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    ],
                )
                    .into_response(),
                Err(_) => error_page("The redirect_uri cannot be redirected to."),
            }
        }
        Mode::FormPost => {
            let mut page = String::from(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Returning to the application</title></head>\n<body>\n",
            );
            let _ = writeln!(
                page,
                "<form method=\"post\" action=\"{}\">",
                escape(redirect_uri)
            );
            for (name, value) in params {
                let _ = writeln!(
                    page,
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    escape(name),
                    escape(value)
                );
            }
            page.push_str(
                "<noscript><button type=\"submit\">Continue</button></noscript>\n</form>\n<script>document.forms[0].submit()</script>\n</body></html>\n",
            );
            html(StatusCode::OK, page)
        }
    }
}

/// The consent page: a mock bank asking the user to allow `client_id` the `scopes`.
fn consent_page(
    client_id: &str,
    scopes: &[String],
    offered: &[&'static str],
    preselected: Option<&'static str>,
    request_id: &str,
) -> Response {
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Mock Bank: connect your account</title></head>\n<body>\n<h1>Connect your bank account</h1>\n",
    );
    let _ = writeln!(
        page,
        "<p><strong id=\"client\">{}</strong> asks to see:</p>\n<ul id=\"scopes\">",
        escape(client_id)
    );
    for scope in scopes {
        let _ = writeln!(page, "<li>{}</li>", escape(scope));
    }
    page.push_str("</ul>\n<form id=\"consent\" method=\"post\" action=\"/dialog/decision\">\n");
    let _ = writeln!(
        page,
        "<input type=\"hidden\" name=\"request\" value=\"{}\">",
        escape(request_id)
    );
    page.push_str("<fieldset><legend>Choose your bank</legend>\n");
    for id in offered {
        let Some(p) = provider(id) else { continue };
        let checked = if preselected == Some(p.id) {
            " checked"
        } else {
            ""
        };
        let _ = writeln!(
            page,
            "<label><input type=\"radio\" id=\"provider-{id}\" name=\"provider\" value=\"{id}\" required{checked}> {name}</label><br>",
            id = escape(p.id),
            name = escape(p.display_name),
        );
    }
    page.push_str(
        "</fieldset>\n<button type=\"submit\" id=\"approve\" name=\"decision\" value=\"approve\">Allow</button>\n<button type=\"submit\" id=\"deny\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button>\n</form>\n</body></html>\n",
    );
    html(StatusCode::OK, page)
}

/// A 400 page saying what is wrong, for errors that cannot go back to the client.
fn error_page(why: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error</title></head>\n<body>\n<h1>Something is wrong with this link</h1>\n<p id=\"error\">{}</p>\n</body></html>\n",
        escape(why)
    );
    html(StatusCode::BAD_REQUEST, page)
}

fn html(status: StatusCode, page: String) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(page),
    )
        .into_response()
}

/// `text` safe in HTML text and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectUriBody {
    uri: String,
}

/// `POST /emulator/clients/{id}/redirect-uris` with `{"uri": "..."}`: allow-lists it (an
/// absolute `http(s)` URL without a fragment; 400 otherwise).
pub(crate) async fn allow_redirect_uri_route(
    AxumState(state): AxumState<Arc<State>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let body: RedirectUriBody = match parse(&body) {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    if !is_http_url(&body.uri) {
        return bad_request("uri must be an absolute http(s) URL without a fragment");
    }
    if state.auth.allow_redirect_uri(&client_id, &body.uri) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "unknown client" })),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowBody {
    allow: bool,
}

/// `POST /emulator/loopback-redirects` with `{"allow": bool}`.
async fn loopback_redirects(AxumState(state): AxumState<Arc<State>>, body: Bytes) -> Response {
    match parse::<AllowBody>(&body) {
        Ok(body) => {
            state.dialog.set_loopback_redirects(body.allow);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(why) => bad_request(why),
    }
}

/// Revokes the connection a reused code made.
pub(crate) fn revoke_for_code_reuse(state: &State, connection_id: &str) {
    state
        .data
        .revoke(connection_id, RevocationReason::CodeReuse);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_uris_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:8080/callback"));
        assert!(is_loopback("http://localhost:1/"));
        assert!(is_loopback("http://[::1]:9/cb"));
        assert!(is_loopback("http://127.0.0.1/cb"));
        assert!(!is_loopback("https://127.0.0.1:8080/callback"));
        assert!(!is_loopback("http://127.0.0.1.evil.example/cb"));
        assert!(!is_loopback("http://evil.example/?x=http://127.0.0.1:1/"));
        assert!(!is_loopback("http://user@evil.example:80/"));
    }

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_answer_goes_only_to_http_urls() {
        for uri in [
            "javascript:alert(1)",
            "data:text/html,x",
            "JAVASCRIPT:alert(1)",
        ] {
            for mode in [Mode::FormPost, Mode::Query] {
                let response = back_to_client(uri, mode, &[("code", "c".to_owned())]);
                assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
                assert!(response.headers().get(header::LOCATION).is_none());
            }
        }
        let response = back_to_client("https://app.example/cb", Mode::FormPost, &[]);
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn escaping_covers_attributes() {
        assert_eq!(escape("\"><script>"), "&quot;&gt;&lt;script&gt;");
    }
}
