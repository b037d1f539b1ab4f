//! A local TrueLayer-compatible authorization server, with a Payments API stand-in and
//! fault injection.
//!
//! The emulator behaves as TrueLayer documents `POST /connect/token`: it checks the
//! `client_credentials` grant, the client's secret and its allowed scopes, and issues real
//! RS256 JWTs (`typ` `at+jwt`, audience `payments_api`) whose public key is published at
//! `GET /.well-known/jwks.json`. `POST /v3/payments` and `GET /v3/payments/{id}` verify the
//! bearer token (signature, expiry, revocation, `payments` scope) and answer `401` with
//! `WWW-Authenticate: Bearer error="invalid_token"` otherwise. A POST also needs a valid
//! `Tl-Signature` from a request-signing key registered for the client (the default client
//! starts with one: [`Emulator::signing_key_pem`]) and an `Idempotency-Key`, and gets a
//! TrueLayer-style problem JSON 401 naming what is wrong otherwise. Idempotency is as TrueLayer
//! documents it: the same key and body give the first answer again, a different body 422, a
//! key still in flight 409. `POST /test-signature` answers 204 for a valid signature, 401 with
//! the reason otherwise. Signatures are checked with RustCrypto's `p521`, apart from the
//! project's signing crate, so the two check each other.
//!
//! # Payment statuses and webhooks
//!
//! A created payment is `authorization_required`, and moves as TrueLayer's do: to
//! `authorizing`, `authorized`, `executed` and `settled` ([`PaymentStatus`]), or from any of
//! the first four to `failed`, with a `failure_stage` (the status it failed in) and a
//! `failure_reason` (`authorization_failed`, `provider_rejected`, `insufficient_funds`,
//! `expired`, ...). Settled and failed are final. Payments move only when told to:
//! [`Emulator::advance_payment`] (forward through every status in between) and
//! [`Emulator::fail_payment`], or `POST /emulator/payments/{id}/status`; or on a schedule,
//! [`Emulator::set_payment_schedule`], which moves each payment created afterwards one status
//! every step until it is settled. `GET /v3/payments/{id}` shows the status, and the failure
//! stage and reason of a failed payment.
//!
//! With a webhook URL set ([`Emulator::set_webhook_url`], `http://` only, as the emulator has
//! no TLS client) the emulator POSTs TrueLayer's v3 webhooks as payments move:
//! `payment_authorized`, `payment_executed`, `payment_settled` and `payment_failed`, each
//! with a new `event_id`, `event_version` 1, the `payment_id`, the `payment_method` type,
//! the time (`authorized_at`, ..., `failed_at`: RFC 3339 UTC, to the second, on the
//! emulator's clock, which [`Emulator::advance_clock`] moves), and the request's `metadata`;
//! `payment_settled` adds a `payment_source` and the request's `user.id` as `user_id`. Each
//! is signed as TrueLayer signs webhooks: a `Tl-Signature` (ES512 detached JWS, `tl_version`
//! 2, `kid` [`WEBHOOK_KEY_ID`]) over `POST`, the URL's path, the `X-Tl-Webhook-Timestamp`
//! and `Content-Type` headers and the body, whose JOSE header has a `jku`
//! ([`Emulator::webhook_jku`], `{url}/webhooks/jwks`) naming the JWKS that holds the key.
//! A receiver verifies it as it would TrueLayer's, with its allowed `jku` list pointing at
//! the emulator. A webhook not answered 2xx within [`WEBHOOK_ATTEMPT_TIMEOUT`] is tried
//! again with the same event id and body, freshly stamped and signed, after 1 s, 2 s, 4 s,
//! ... up to 60 s ([`WEBHOOK_RETRY_BASE`], [`WEBHOOK_RETRY_CAP`]), at most
//! [`WEBHOOK_MAX_ATTEMPTS`] times, then abandoned; [`Stats`] counts attempts, deliveries and
//! abandonments. A payment's webhooks go out in the order of its statuses: the next is sent
//! once the one before is delivered or abandoned. Without a URL, statuses change and nothing
//! is sent. [`Emulator::sign_webhook`] signs webhooks tests craft themselves.
//!
//! # The Data API: the auth dialog, user grants and Data API v1
//!
//! The emulator is also TrueLayer's Data API auth server, as TrueLayer documents it. The auth
//! link, `GET {url}/?response_type=code&client_id=...&redirect_uri=...&scope=...&state=...`
//! ([`Emulator::auth_dialog_url`]; also `nonce`, `providers`, `provider_id`,
//! `response_mode=query|form_post`, and PKCE's `code_challenge` with
//! `code_challenge_method=S256`: `plain` is refused), renders a mock bank's consent page. Its
//! elements have stable ids for browser automation: the form `consent` (POSTed to
//! `/dialog/decision`), one radio `provider-<id>` per bank (`provider-mock` "Mock Bank",
//! `provider-ob-mock-2` "Mock Bank 2"; `provider_id` preselects one) and the buttons
//! `approve` and `deny`. The form carries only an opaque, single-use request id (valid
//! [`DIALOG_REQUEST_LIFETIME`] on the emulator's clock); what the client asked for stays in
//! the emulator. An unknown `client_id` or a `redirect_uri` not allowed for the client is a 400
//! HTML page, never a redirect. As in TrueLayer Console, only the client's allow-listed
//! redirect URIs are accepted, exactly ([`Emulator::allow_redirect_uri`]: absolute `http` or
//! `https` URLs without a fragment). `http` loopback URIs (`127.0.0.1`, `localhost`,
//! `[::1]`, any port, RFC 8252 §7.3) are refused too unless
//! [`Emulator::set_loopback_redirects`] allows them: `tlauth emulator` and the command
//! line's embedded emulator do, for `tlauth connect`'s free loopback port. The bank chosen
//! must be one the page offered. Later errors (`invalid_scope`, `invalid_request`,
//! `unsupported_response_type`) and a denial (`access_denied`) go back to the client with its
//! `state`, as an approval's `code` does: a 303 to the `redirect_uri`, or with `form_post` a
//! page that POSTs them there.
//!
//! A code is single-use, valid [`CODE_LIFETIME`], and bound to the client, the redirect URI,
//! the PKCE challenge, the scopes and the bank. `POST /connect/token` with
//! `grant_type=authorization_code` exchanges it for a connection (one consent, listed by
//! [`Emulator::connections`]) and its first tokens: an RS256 access token (audience
//! [`DATA_AUDIENCE`], claims [`DataClaims`]) and, only with the `offline_access` scope, a
//! refresh token. A code presented again is refused; when its client, redirect URI and PKCE
//! verifier check, it also revokes the connection it made (RFC 6749 §4.1.2; so an
//! intercepted code alone revokes nothing; [`Emulator::set_code_reuse_revocation`] turns
//! the revocation off). `grant_type=refresh_token` rotates both tokens: the refresh token sent
//! is spent and only the newest access token is valid. Presenting a spent refresh token
//! revokes the whole connection (reuse detection, which TrueLayer does not document either
//! way; [`Emulator::set_refresh_reuse_detection`] turns it off). A consent lasts
//! [`CONSENT_LIFETIME`] and a refresh token must be used within [`REFRESH_TOKEN_LIFETIME`];
//! past them, as for revoked connections and other clients' tokens, the answer is
//! `invalid_grant` (spent refresh tokens older than that window are forgotten). Tests make refreshes slow ([`Emulator::delay_refreshes`]), fail
//! ([`Emulator::fail_next_refreshes`]), or lose their answer after rotating
//! ([`Emulator::drop_next_refresh_answers`]), and count them ([`Emulator::data_stats`],
//! [`ConnectionInfo`]).
//!
//! The Data API v1 is under [`Emulator::data_url`] (`{url}/data/v1`): `/me`, `/info`,
//! `/accounts`, `/accounts/{id}` and its `balance`, `transactions?from=&to=`,
//! `transactions/pending`, `direct_debits` and `standing_orders`, and the same under `/cards`,
//! with fake data that is the same for the same connection. A missing, expired, superseded
//! or revoked token is a 401 `unauthorized` with `WWW-Authenticate: Bearer`; a scope not
//! granted a 403 `access_denied`, as is any call once the consent has ended (the user must
//! act: a refresh cannot help), but `/me`, whose `consent_status` then says `Expired`, and
//! `DELETE /api/delete`. `POST /data/v1/connections/extend` with a refresh token,
//! `user_has_reconfirmed_consent: true` and the client's `client_id` and `client_secret`
//! (required by default, as TrueLayer's pages do not say either way:
//! [`Emulator::set_extend_client_authentication`]) renews the consent and rotates both tokens
//! (`no_action_needed`), or answers `authentication_needed` with a re-consent link to the
//! dialog: when told to ([`Emulator::set_extend_action`]), when the user has not
//! reconfirmed, and when the consent has already ended. The link sends its code to the
//! body's `redirect_uri` (allow-list checked) or the connection's own, and exchanging that
//! code renews the same connection (same id and `credentials_id`, a new pair, a new
//! consent) instead of making one; it is single-use and lasts [`RECONSENT_LINK_LIFETIME`].
//! `DELETE /api/delete` with an access token revokes its connection.
//!
//! Tests drive faults, statuses and webhooks through the [`Emulator`] handle; other tools use
//! the admin routes under `/emulator/` ([`ADMIN_ROUTES`], also listed by
//! `tlauth emulator --help`). Since any web page can send requests to a loopback port, they
//! refuse a body not sent as `Content-Type: application/json` (415) and a request whose
//! `Origin` is not the emulator's own (403). A call the emulator refuses fails with an
//! [`Error`].
//!
//! # Running it
//!
//! `tlauth emulator` (the `truelayer-auth-cli` crate) is the emulator's command line: it
//! binds [`DEFAULT_ADDR`]'s address (`--port` to choose the port), prints the `TRUELAYER_*`
//! settings ([`Emulator::env_lines`]) and, with `--webhook-url`, moves each new payment one
//! status every [`DEFAULT_PAYMENT_STEP`] unless told otherwise.
//!
//! # Example
//!
//! ```
//! use truelayer_auth_emulator::{Emulator, Fault};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let emulator = Emulator::start().await?;
//! emulator.fail_next([Fault::unavailable()]);
//! assert!(emulator.url().starts_with("http://127.0.0.1:"));
//! assert_eq!(emulator.stats().token_requests, 0);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

// The state is split by domain: each module below (but `admin`, `error`, `server`,
// `signature` and `state`) owns one part of `State` and serves its own routes, admin ones
// included. See `state.rs`.
mod admin;
mod auth;
mod clock;
mod data;
mod error;
mod faults;
mod payments;
mod server;
mod signature;
mod signing_keys;
mod state;
mod stats;
mod webhooks;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use auth::dialog::{CODE_LIFETIME, DIALOG_REQUEST_LIFETIME, RECONSENT_LINK_LIFETIME};
pub use auth::{AUDIENCE, Claims, DEFAULT_LIFETIME, KEY_ID, KNOWN_SCOPES};
pub use data::{
    CONSENT_LIFETIME, ConnectionInfo, ConnectionStatus, DATA_AUDIENCE, DATA_SCOPES,
    DEFAULT_DATA_TOKEN_LIFETIME, DataClaims, DataStats, ExtendAction, REFRESH_TOKEN_LIFETIME,
    RevocationReason,
};
pub use error::{Cause, Error};
pub use faults::Fault;
pub use payments::PaymentStatus;
pub use stats::Stats;
pub use webhooks::{
    WEBHOOK_ATTEMPT_TIMEOUT, WEBHOOK_KEY_ID, WEBHOOK_MAX_ATTEMPTS, WEBHOOK_RETRY_BASE,
    WEBHOOK_RETRY_CAP,
};

use auth::{Client, random_secret};
use data::RefreshFault;
use payments::Change;
use state::State;

/// The client_id of the client every emulator starts with.
pub const DEFAULT_CLIENT_ID: &str = "emulator-client";

/// The key id of the request-signing key the default client starts with.
pub const DEFAULT_SIGNING_KEY_ID: &str = "emulator-signing-key";

/// Where an emulator listens unless told otherwise: a free port of 127.0.0.1 (loopback only:
/// its admin routes answer anyone, rotated secrets included). [`Emulator::start`] binds it,
/// and `tlauth emulator` binds its address with `--port`'s port, whose default is this one's.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The step `tlauth emulator --webhook-url` moves each new payment by, one status at a time
/// until settled, when `--payment-step-ms` is not given: webhooks then arrive with no further
/// calls. ([`Emulator::set_payment_schedule`] sets a schedule; an emulator starts without
/// one.)
pub const DEFAULT_PAYMENT_STEP: Duration = Duration::from_secs(2);

/// The admin routes under `/emulator/` (and the webhook JWKS), one a line, for a command
/// line's help.
pub const ADMIN_ROUTES: &str = "\
Admin routes (JSON bodies, sent with Content-Type: application/json: 415 otherwise; a
request with an Origin header other than the emulator's own gets 403):
  POST   /emulator/faults                      {\"faults\": [...], \"random_rate\": 0.1, \"random\": [...]}
  DELETE /emulator/faults                      clear faults and latency
  POST   /emulator/latency                     {\"millis\": N}
  POST   /emulator/token-lifetime              {\"seconds\": N | null}
  POST   /emulator/clients/{id}/rotate         a new client secret
  POST   /emulator/clients/{id}/signing-keys   {\"kid\": ..., \"public_key_pem\": ...}
  POST   /emulator/revoke                      revoke every token issued so far
  GET    /emulator/stats                       counters
  POST   /emulator/webhooks                    {\"url\": \"http://...\" | null}
  POST   /emulator/payment-schedule            {\"step_millis\": N | null}
  POST   /emulator/payments/{id}/status        {\"status\": \"settled\"} or
                                               {\"status\": \"failed\", \"failure_reason\": \"expired\"}
  GET    /webhooks/jwks                        the webhook signing key (the jku)
Data API (user grants):
  POST   /emulator/clients/{id}/redirect-uris  {\"uri\": \"https://...\"}: allow-list it (http(s), no #)
  POST   /emulator/loopback-redirects          {\"allow\": bool}: http loopback URIs too (off by default)
  POST   /emulator/data-token-lifetime         {\"seconds\": N | null}
  POST   /emulator/refresh-reuse-detection     {\"enabled\": bool} (on by default)
  GET    /emulator/connections                 {\"connections\": [...]}
  POST   /emulator/connections/{id}/revoke
  POST   /emulator/connections/{id}/expire-consent
  POST   /emulator/refresh-delay               {\"millis\": N, \"count\": N | null}
  POST   /emulator/refresh-failures            {\"count\": N, \"status\": 400, \"error\": \"invalid_grant\"}
  POST   /emulator/refresh-drops               {\"count\": N}: rotate, then close unanswered
  DELETE /emulator/refresh-faults              clear refresh delays, failures and drops
  POST   /emulator/extend-action               {\"action_needed\": \"no_action_needed\"} or
                                               {\"action_needed\": \"authentication_needed\"},
                                               {\"client_authentication\": bool} (on by default)
  GET    /emulator/data-stats                  Data API counters
";

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    client_secret: String,
    signing_key_pem: String,
    task: JoinHandle<()>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url())
            .field("client_id", &DEFAULT_CLIENT_ID)
            .field("client_secret", &"[redacted]")
            .field("signing_key_id", &DEFAULT_SIGNING_KEY_ID)
            .field("webhook_jku", &self.webhook_jku())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts an emulator on [`DEFAULT_ADDR`] (a free port of 127.0.0.1), in the current
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::bind(DEFAULT_ADDR).await
    }

    /// Starts an emulator on `addr`.
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(format!("http://{addr}")));
        let client_secret = random_secret();
        state.auth.add_client(
            DEFAULT_CLIENT_ID.to_owned(),
            Client {
                secret: client_secret.clone(),
                allowed_scopes: KNOWN_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                redirect_uris: HashSet::new(),
            },
        );
        // The default client's request-signing key, registered as TrueLayer Console would.
        let signing = signature::KeyPair::generate();
        state
            .signing_keys
            .register(DEFAULT_CLIENT_ID, DEFAULT_SIGNING_KEY_ID, signing.public());
        // Make the key before the first request, so no request pays for it.
        let _ = auth::signing_key();
        let task = tokio::spawn(server::serve(listener, router(state.clone())));
        Ok(Emulator {
            state,
            addr,
            client_secret,
            signing_key_pem: signing.private_pem(),
            task,
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`, of both the token endpoint and the Payments API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shell-style lines that configure `tlauth` and the examples for this emulator:
    /// `TRUELAYER_ENV`, `TRUELAYER_CLIENT_ID` and `TRUELAYER_CLIENT_SECRET` (the emulator's
    /// own, throwaway secret).
    pub fn env_lines(&self) -> String {
        format!(
            "TRUELAYER_ENV={}\nTRUELAYER_CLIENT_ID={}\nTRUELAYER_CLIENT_SECRET={}\n",
            self.url(),
            self.client_id(),
            self.client_secret()
        )
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}/connect/token", self.url())
    }

    /// The default client's id.
    pub fn client_id(&self) -> &str {
        DEFAULT_CLIENT_ID
    }

    /// The default client's secret as it was at start (see [`Emulator::rotate_secret`]).
    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// The id of the default client's request-signing key.
    pub fn signing_key_id(&self) -> &str {
        DEFAULT_SIGNING_KEY_ID
    }

    /// The default client's request-signing private key (PKCS#8 PEM, P-521): a throwaway
    /// key made at start, for tools and tests that sign requests to this emulator.
    pub fn signing_key_pem(&self) -> &str {
        &self.signing_key_pem
    }

    /// Registers a request-signing public key (SPKI PEM, P-521) for `client_id` under `kid`,
    /// as uploading it in TrueLayer Console does.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSigningKey`] when `public_key_pem` is not an EC P-521 public key.
    pub fn register_signing_key(
        &self,
        client_id: &str,
        kid: &str,
        public_key_pem: &str,
    ) -> Result<(), Error> {
        let key = signature::PublicKey::from_pem(public_key_pem)?;
        self.state.signing_keys.register(client_id, kid, key);
        Ok(())
    }

    /// Removes a request-signing key, as deleting it in TrueLayer Console does: signatures
    /// by it are refused from then on. Returns whether the client had it.
    pub fn remove_signing_key(&self, client_id: &str, kid: &str) -> bool {
        self.state.signing_keys.remove(client_id, kid)
    }

    /// Delays every Payments API answer by `latency` (after the request is checked), on
    /// tokio's clock.
    pub fn set_api_latency(&self, latency: Duration) {
        self.state.payments.set_api_latency(latency);
    }

    /// Adds (or replaces) a client with its secret and allowed scopes.
    pub fn add_client<I, S>(&self, client_id: &str, client_secret: &str, allowed_scopes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state.auth.add_client(
            client_id.to_owned(),
            Client {
                secret: client_secret.to_owned(),
                allowed_scopes: allowed_scopes
                    .into_iter()
                    .map(Into::into)
                    .collect::<HashSet<_>>(),
                redirect_uris: HashSet::new(),
            },
        );
    }

    /// Gives `client_id` a new random secret and returns it; the old one stops working.
    /// Returns `None` for an unknown client.
    pub fn rotate_secret(&self, client_id: &str) -> Option<String> {
        let secret = random_secret();
        self.state
            .auth
            .set_secret(client_id, secret.clone())
            .then_some(secret)
    }

    /// Sets `client_id`'s secret; returns whether the client exists.
    pub fn set_secret(&self, client_id: &str, secret: &str) -> bool {
        self.state.auth.set_secret(client_id, secret.to_owned())
    }

    /// Answers the next token requests with these faults, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.queue(faults);
    }

    /// Fails a fraction `rate` (0 to 1) of later token requests with a fault picked at random
    /// from `faults`. A rate of 0 turns it off.
    pub fn fail_randomly(&self, rate: f64, faults: Vec<Fault>) {
        self.state.faults.set_random(rate, faults);
    }

    /// Removes queued and random faults and latency.
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Delays every token answer by `latency` (on tokio's clock, so paused-clock tests skip it).
    pub fn set_latency(&self, latency: Duration) {
        self.state.faults.set_latency(latency);
    }

    /// Issues tokens with this `expires_in` (seconds; may be 0 or negative to test clients),
    /// or the default hour with `None`.
    pub fn set_token_lifetime(&self, seconds: Option<i64>) {
        self.state.auth.set_lifetime(seconds);
    }

    /// Revokes every token issued so far: the Payments stand-in rejects them with 401.
    pub fn revoke_all_tokens(&self) {
        self.state.auth.revoke_all();
    }

    /// Revokes one token; returns false when it is not a token this emulator could have issued.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.state.auth.revoke(token)
    }

    /// The Data API v1 base URL, `{url}/data/v1`.
    pub fn data_url(&self) -> String {
        format!("{}/data/v1", self.url())
    }

    /// The auth dialog's URL, `{url}/` (the auth host's root): add the auth link's query
    /// (`response_type=code&client_id=...&redirect_uri=...&scope=...`).
    pub fn auth_dialog_url(&self) -> String {
        format!("{}/", self.url())
    }

    /// Adds `uri` to `client_id`'s redirect-URI allow-list (exact match), as allow-listing
    /// it in TrueLayer Console does. Returns false for an unknown client, and for a `uri`
    /// that is not an absolute `http` or `https` URL with a host and without a fragment
    /// (nothing is added then).
    pub fn allow_redirect_uri(&self, client_id: &str, uri: &str) -> bool {
        auth::dialog::is_http_url(uri) && self.state.auth.allow_redirect_uri(client_id, uri)
    }

    /// Whether the dialog also accepts any `http://127.0.0.1:<port>/...`,
    /// `http://localhost:<port>/...` or `http://[::1]:<port>/...` redirect URI for every
    /// client, as RFC 8252 §7.3 allows for native apps. Off by default: TrueLayer accepts
    /// only the redirect URIs allow-listed in Console, exactly
    /// ([`Emulator::allow_redirect_uri`]). `tlauth emulator` and the command line's embedded
    /// emulator turn it on (through [`Emulator::set_loopback_redirects_by_default`]), for
    /// `tlauth connect`, which listens on a free loopback port.
    pub fn set_loopback_redirects(&self, allow: bool) {
        self.state.dialog.set_loopback_redirects(allow);
    }

    /// Sets whether emulators started afterwards in this process allow loopback redirect
    /// URIs ([`Emulator::set_loopback_redirects`]); `false` until called. For developer
    /// tools, such as `tlauth`, that start emulators in several places; emulators already
    /// running keep their setting.
    pub fn set_loopback_redirects_by_default(allow: bool) {
        auth::dialog::set_loopback_default(allow);
    }

    /// Whether an authorization code presented again revokes the connection it made (on by
    /// default, as RFC 6749 §4.1.2 says it should): only a reuse by the code's client, with
    /// its redirect URI and PKCE verifier, does; one failing those checks is just refused.
    /// With `false`, every reuse is just refused.
    pub fn set_code_reuse_revocation(&self, on: bool) {
        self.state.dialog.set_code_reuse_revocation(on);
    }

    /// Whether `POST /data/v1/connections/extend` requires the client's credentials,
    /// `client_id` and `client_secret`, in its body (on by default: without them, or with
    /// wrong ones, it answers 401 `invalid_client`). TrueLayer's extend pages show only the
    /// refresh token and `user_has_reconfirmed_consent`, so whether it requires them is not
    /// confirmed; the strict choice is the default. With `false`, they are optional, but
    /// checked when sent.
    pub fn set_extend_client_authentication(&self, required: bool) {
        self.state.data.set_extend_client_auth(required);
    }

    /// Sets the `expires_in` of Data API access tokens issued from now on (default
    /// [`DEFAULT_DATA_TOKEN_LIFETIME`], an hour).
    pub fn set_data_token_lifetime(&self, lifetime: Duration) {
        self.state
            .data
            .set_lifetime(Some(lifetime.as_secs() as i64));
    }

    /// Whether presenting a spent refresh token revokes its whole connection (on by
    /// default): all its tokens stop working and later refreshes get `invalid_grant`. With
    /// `false`, only that refresh is refused. TrueLayer does not document which it does.
    pub fn set_refresh_reuse_detection(&self, on: bool) {
        self.state.data.set_reuse_detection(on);
    }

    /// Every Data API connection made so far, oldest first, with its status, its refresh
    /// token generation and its counters.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.state.data.list(self.state.clock.now_unix())
    }

    /// The connection with this id.
    pub fn connection(&self, id: &str) -> Option<ConnectionInfo> {
        self.connections().into_iter().find(|c| c.id == id)
    }

    /// Revokes a connection, as the user or the bank revoking their consent would: its
    /// tokens stop working, refreshes get `invalid_grant`. False for an unknown (or already
    /// revoked) connection.
    pub fn revoke_connection(&self, id: &str) -> bool {
        self.state.data.revoke(id, RevocationReason::Admin)
    }

    /// Ends a connection's consent now, as 90 days passing would: refreshes get
    /// `invalid_grant` until it is extended. False for an unknown connection.
    pub fn expire_consent(&self, id: &str) -> bool {
        self.state
            .data
            .expire_consent(id, self.state.clock.now_unix())
    }

    /// Delays each refresh answer (`grant_type=refresh_token`) by `delay` on tokio's clock,
    /// for the next `count` refreshes, or until [`Emulator::clear_refresh_faults`] with
    /// `None`. The refresh happens after the delay.
    pub fn delay_refreshes(&self, delay: Duration, count: Option<u32>) {
        self.state.data.set_refresh_delay(delay, count);
    }

    /// Fails the next `count` refreshes with `status` and, if given, the OAuth2 `error` (an
    /// empty body otherwise), without touching the tokens: the refresh token stays valid.
    pub fn fail_next_refreshes(&self, count: u32, status: u16, error: Option<&str>) {
        let fault = RefreshFault::Fail {
            status,
            error: error.map(str::to_owned),
        };
        self.state
            .data
            .queue_refresh_faults(std::iter::repeat_n(fault, count as usize));
    }

    /// Makes the next `count` refreshes lose their answer: the emulator rotates the tokens
    /// (the refresh token sent is spent, and only the new access token is valid), then
    /// closes the connection without answering, so the client sees a transport error and
    /// never learns the new refresh token. Retrying with the old one is then a reuse.
    pub fn drop_next_refresh_answers(&self, count: u32) {
        self.state.data.queue_refresh_faults(std::iter::repeat_n(
            RefreshFault::DropAfterRotating,
            count as usize,
        ));
    }

    /// Removes refresh delays, failures and drops.
    pub fn clear_refresh_faults(&self) {
        self.state.data.clear_refresh_faults();
    }

    /// Sets what `POST /data/v1/connections/extend` answers (default
    /// [`ExtendAction::NoActionNeeded`]).
    pub fn set_extend_action(&self, action: ExtendAction) {
        self.state.data.set_extend_action(action);
    }

    /// Counters of the Data API side: codes, refreshes, reuse, extensions, API requests.
    pub fn data_stats(&self) -> DataStats {
        self.state.data.stats()
    }

    /// Moves the emulator's wall clock forward, for expiry checks of issued tokens.
    pub fn advance_clock(&self, by: Duration) {
        self.state.clock.advance(by);
    }

    /// Issues a token directly, bypassing the token endpoint (and its counters).
    pub fn issue_token(&self, client_id: &str, scopes: &[&str], lifetime_secs: i64) -> String {
        self.state.auth.issue(
            client_id,
            scopes.iter().map(|s| (*s).to_owned()).collect(),
            lifetime_secs,
            self.state.clock.now_unix(),
        )
    }

    /// Verifies a bearer token as the Payments stand-in does, returning its claims.
    ///
    /// # Errors
    ///
    /// Why the Payments stand-in would reject it: [`Error::TokenNotJwt`],
    /// [`Error::TokenUnknownKey`], [`Error::TokenInvalid`], [`Error::TokenExpired`],
    /// [`Error::TokenNotYetValid`], [`Error::TokenRevoked`] (answered 401) or
    /// [`Error::TokenLacksScope`] (answered 403).
    pub fn verify_token(&self, token: &str) -> Result<Claims, Error> {
        self.state.auth.verify(token, self.state.clock.now_unix())
    }

    /// The JWKS document published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        auth::signing_key().jwks()
    }

    /// Counters of what has been served.
    pub fn stats(&self) -> Stats {
        self.state.stats.snapshot()
    }

    /// A payment as `GET /v3/payments/{id}` answers it (`id`, `status`, and for a failed
    /// payment `failure_stage` and `failure_reason`), or `None` for an unknown id.
    pub fn payment(&self, id: &str) -> Option<serde_json::Value> {
        self.state.payments.view(id)
    }

    /// The URL of the JWKS holding the webhook signing key, `{url}/webhooks/jwks`: the `jku`
    /// in every webhook's `Tl-Signature` header.
    pub fn webhook_jku(&self) -> String {
        self.state.webhooks.jku().to_owned()
    }

    /// The JWKS served at [`Emulator::webhook_jku`]: `{"keys": [<the P-521 key>]}`, its
    /// `kid` [`WEBHOOK_KEY_ID`].
    pub fn webhook_jwks(&self) -> serde_json::Value {
        self.state.webhooks.jwks()
    }

    /// The webhook signing public key (SPKI PEM, P-521), for receivers that pin a key rather
    /// than fetch the JWKS.
    pub fn webhook_public_key_pem(&self) -> String {
        self.state.webhooks.public_pem()
    }

    /// Sets the URL webhooks are POSTed to, or stops sending them with `None` (statuses still
    /// change). Webhooks already queued keep their URL.
    ///
    /// # Errors
    ///
    /// When `url` is not an absolute `http://` URL with a host ([`Error::WebhookUrlInvalid`],
    /// [`Error::WebhookUrlScheme`], [`Error::WebhookUrlRelative`], [`Error::WebhookUrlHost`]):
    /// the emulator has no TLS client, so `https://` URLs are refused
    /// ([`Error::WebhookUrlHttps`]).
    pub fn set_webhook_url(&self, url: Option<&str>) -> Result<(), Error> {
        let url = url.map(webhooks::parse_url).transpose()?;
        self.state.webhooks.set_url(url);
        Ok(())
    }

    /// Moves payment `id` forward to `to` through every status in between, in order,
    /// sending the webhook of each status that has one (`payment_authorized`,
    /// `payment_executed`, `payment_settled`) when a webhook URL is set.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPayment`]; [`Error::PaymentAlreadyInStatus`] or
    /// [`Error::PaymentCannotMoveBack`] for a payment already at or past `to`;
    /// [`Error::PaymentSettled`] or [`Error::PaymentFailed`] for a payment whose status is
    /// final.
    pub fn advance_payment(&self, id: &str, to: PaymentStatus) -> Result<(), Error> {
        payments::move_payment(&self.state, id, Change::To(to)).map(drop)
    }

    /// Fails payment `id` with `reason` (TrueLayer's `failure_reason`, such as
    /// `authorization_failed`, `provider_rejected`, `insufficient_funds` or `expired`); its
    /// `failure_stage` is the status it was in. Sends `payment_failed` when a webhook URL is
    /// set.
    ///
    /// # Errors
    ///
    /// [`Error::MissingFailureReason`] for an empty reason, [`Error::UnknownPayment`], and
    /// [`Error::PaymentSettled`] or [`Error::PaymentFailed`] for a payment whose status is
    /// final.
    pub fn fail_payment(&self, id: &str, reason: &str) -> Result<(), Error> {
        if reason.trim().is_empty() {
            return Err(Error::MissingFailureReason);
        }
        payments::move_payment(&self.state, id, Change::Fail(reason.to_owned())).map(drop)
    }

    /// With `Some(step)`, every payment created afterwards moves forward one status each
    /// `step` (on tokio's clock, so paused-clock tests skip the waits) until it is settled,
    /// sending its webhooks on the way; a payment failed or moved to settled meanwhile stops
    /// its schedule. `None` (the default) leaves new payments in `authorization_required`.
    pub fn set_payment_schedule(&self, step: Option<Duration>) {
        self.state.payments.set_step(step);
    }

    /// Sets the wait after a webhook's first failed attempt ([`WEBHOOK_RETRY_BASE`], 1 s, by
    /// default); later waits double it up to [`WEBHOOK_RETRY_CAP`]. For tests that exercise
    /// retries on a real clock.
    pub fn set_webhook_retry_base(&self, base: Duration) {
        self.state.webhooks.set_retry_base(base);
    }

    /// The `Tl-Signature` the emulator would send with a webhook POSTed to `path` with this
    /// `X-Tl-Webhook-Timestamp` and body: for tests that craft webhooks, such as ones with a
    /// stale timestamp.
    pub fn sign_webhook(&self, path: &str, timestamp: &str, body: &[u8]) -> String {
        self.state.webhooks.sign(path, timestamp, body)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
        self.state.tasks.shutdown();
    }
}

/// Every domain's routes, the admin ones included.
fn router(state: Arc<State>) -> Router {
    Router::new()
        .merge(auth::routes())
        .merge(faults::routes())
        .merge(signing_keys::routes())
        .merge(payments::routes())
        .merge(webhooks::routes())
        .merge(stats::routes())
        .merge(data::routes())
        .layer(axum::middleware::from_fn(admin::guard))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn every_route_in_the_admin_list_is_served() {
        let state = Arc::new(State::new("http://127.0.0.1:1".to_owned()));
        state.auth.add_client(
            "x".to_owned(),
            Client {
                secret: "s".to_owned(),
                allowed_scopes: HashSet::new(),
                redirect_uris: HashSet::new(),
            },
        );
        let app = router(state);
        let mut seen = 0;
        for line in ADMIN_ROUTES.lines() {
            let mut words = line.split_whitespace();
            let (Some(method), Some(path)) = (words.next(), words.next()) else {
                continue;
            };
            if !path.starts_with('/') {
                continue;
            }
            let request = Request::builder()
                .method(method)
                .uri(path.replace("{id}", "x"))
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            // A handler's own 404 (an unknown connection) says so in its body; the router's
            // has none.
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert!(
                (status != StatusCode::NOT_FOUND || !body.is_empty())
                    && status != StatusCode::METHOD_NOT_ALLOWED,
                "{line}: {status}"
            );
            seen += 1;
        }
        assert_eq!(seen, 25);
    }
}
