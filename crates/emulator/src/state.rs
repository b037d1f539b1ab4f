//! The emulator's shared state: clients, faults, counters, clock and revocations.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::faults::Fault;
use crate::keys::{AUDIENCE, Claims, signing_key};
use crate::signature::PublicKey;

/// The default token lifetime, as TrueLayer issues today.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Every scope TrueLayer documents for the Payments API, legacy ones included.
pub const KNOWN_SCOPES: [&str; 6] = [
    "payments",
    "recurring_payments:sweeping",
    "recurring_payments:commercial",
    "signupplus",
    "payouts",
    "paydirect",
];

#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) secret: String,
    pub(crate) allowed_scopes: HashSet<String>,
}

/// Counters of what the emulator has served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Requests to `POST /connect/token`, whatever their outcome.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Token requests answered with an injected fault.
    pub faults_served: u64,
    /// Token requests answered with an OAuth2 error.
    pub token_errors: u64,
    /// Payments API requests.
    pub api_requests: u64,
    /// Payments API requests rejected for their bearer token.
    pub api_rejections: u64,
    /// Payments API requests rejected for their `Tl-Signature` or a missing
    /// `Idempotency-Key`.
    pub signature_rejections: u64,
    /// Payments created (an idempotent repeat creates none).
    pub payments_created: u64,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    faults_served: AtomicU64,
    token_errors: AtomicU64,
    api_requests: AtomicU64,
    api_rejections: AtomicU64,
    signature_rejections: AtomicU64,
    payments_created: AtomicU64,
}

/// A fraction of token requests that fail, chosen from a set of faults.
#[derive(Debug, Clone)]
pub(crate) struct RandomFaults {
    pub(crate) rate: f64,
    pub(crate) faults: Vec<Fault>,
}

#[derive(Default)]
struct Control {
    queued: VecDeque<Fault>,
    random: Option<RandomFaults>,
    latency: Duration,
    lifetime: Option<i64>,
    revoked_jtis: HashSet<String>,
    payments: HashMap<String, serde_json::Value>,
    api_latency: Duration,
    /// Request-signing public keys: client_id → kid → key.
    signing_keys: HashMap<String, HashMap<String, PublicKey>>,
    /// Idempotency keys: (client_id, key) → what the first request was and got.
    idempotency: HashMap<(String, String), Idempotent>,
}

/// What an `Idempotency-Key` has seen.
#[derive(Clone)]
pub(crate) struct Idempotent {
    pub(crate) body: Vec<u8>,
    /// The first answer, once there is one; `None` while the first request is in flight.
    pub(crate) answer: Option<(u16, serde_json::Value)>,
}

/// What a new request with an `Idempotency-Key` should get.
pub(crate) enum IdempotencyCheck {
    /// A new key: go ahead (it is now in flight).
    New,
    /// The same key and body as an earlier request: its answer again.
    Repeat(u16, serde_json::Value),
    /// The same key, still in flight.
    InFlight,
    /// The same key with a different body.
    Conflict,
}

pub(crate) struct State {
    pub(crate) issuer: String,
    clients: Mutex<HashMap<String, Client>>,
    control: Mutex<Control>,
    counters: Counters,
    clock_offset_secs: AtomicI64,
    next_seq: AtomicU64,
    revoked_below_seq: AtomicU64,
}

pub(crate) enum Authorization {
    Granted { scopes: Vec<String> },
    InvalidClient,
    InvalidScope(String),
}

pub(crate) enum Rejection {
    InvalidToken(&'static str),
    InsufficientScope,
}

impl State {
    pub(crate) fn new(issuer: String) -> Self {
        State {
            issuer,
            clients: Mutex::default(),
            control: Mutex::default(),
            counters: Counters::default(),
            clock_offset_secs: AtomicI64::new(0),
            next_seq: AtomicU64::new(1),
            revoked_below_seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn add_client(&self, id: String, client: Client) {
        lock(&self.clients).insert(id, client);
    }

    pub(crate) fn set_secret(&self, id: &str, secret: String) -> bool {
        match lock(&self.clients).get_mut(id) {
            Some(c) => {
                c.secret = secret;
                true
            }
            None => false,
        }
    }

    pub(crate) fn authorize(&self, id: &str, secret: &str, requested: &str) -> Authorization {
        let clients = lock(&self.clients);
        let Some(client) = clients.get(id) else {
            return Authorization::InvalidClient;
        };
        if !constant_time_eq(client.secret.as_bytes(), secret.as_bytes()) {
            return Authorization::InvalidClient;
        }
        let mut scopes: Vec<String> = Vec::new();
        for scope in requested.split(' ').filter(|s| !s.is_empty()) {
            if !client.allowed_scopes.contains(scope) {
                return Authorization::InvalidScope(scope.to_owned());
            }
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
        Authorization::Granted { scopes }
    }

    pub(crate) fn now_unix(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now + self.clock_offset_secs.load(Ordering::Relaxed)
    }

    pub(crate) fn advance_clock(&self, by: Duration) {
        self.clock_offset_secs
            .fetch_add(by.as_secs() as i64, Ordering::Relaxed);
    }

    pub(crate) fn lifetime_secs(&self) -> i64 {
        lock(&self.control)
            .lifetime
            .unwrap_or(DEFAULT_LIFETIME.as_secs() as i64)
    }

    pub(crate) fn set_lifetime(&self, secs: Option<i64>) {
        lock(&self.control).lifetime = secs;
    }

    pub(crate) fn issue(&self, client_id: &str, scopes: Vec<String>, lifetime: i64) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let now = self.now_unix();
        let claims = Claims {
            iss: self.issuer.clone(),
            nbf: now,
            iat: now,
            exp: now + lifetime,
            aud: AUDIENCE.to_owned(),
            scope: scopes,
            client_id: client_id.to_owned(),
            jti: format!("{seq:016X}{:016X}", fastrand::u64(..)),
        };
        signing_key().sign(&claims)
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejection::InvalidToken("the token is not a JWT"))?;
        if header.kid.as_deref() != Some(crate::keys::KEY_ID) {
            return Err(Rejection::InvalidToken("unknown signing key"));
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[&self.issuer]);
        let data = jsonwebtoken::decode::<Claims>(token, &signing_key().decoding, &validation)
            .map_err(|_| Rejection::InvalidToken("the signature or claims are invalid"))?;
        let claims = data.claims;
        let now = self.now_unix();
        if claims.exp <= now {
            return Err(Rejection::InvalidToken("the token has expired"));
        }
        if claims.nbf > now {
            return Err(Rejection::InvalidToken("the token is not valid yet"));
        }
        let seq = u64::from_str_radix(claims.jti.get(..16).unwrap_or(""), 16).unwrap_or(0);
        if seq < self.revoked_below_seq.load(Ordering::Relaxed)
            || lock(&self.control).revoked_jtis.contains(&claims.jti)
        {
            return Err(Rejection::InvalidToken("the token has been revoked"));
        }
        if !claims.scope.iter().any(|s| s == "payments") {
            return Err(Rejection::InsufficientScope);
        }
        Ok(claims)
    }

    pub(crate) fn revoke_all(&self) {
        self.revoked_below_seq
            .store(self.next_seq.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn revoke(&self, token: &str) -> bool {
        // Revocation needs the jti only; the signature is not checked so any issued token can be named.
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Claims>(&b).ok());
        match claims {
            Some(c) => lock(&self.control).revoked_jtis.insert(c.jti),
            None => false,
        }
    }

    pub(crate) fn queue_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.control).queued.extend(faults);
    }

    pub(crate) fn set_random_faults(&self, random: Option<RandomFaults>) {
        lock(&self.control).random = random;
    }

    pub(crate) fn clear_faults(&self) {
        let mut c = lock(&self.control);
        c.queued.clear();
        c.random = None;
        c.latency = Duration::ZERO;
    }

    pub(crate) fn next_fault(&self) -> Option<Fault> {
        let mut c = lock(&self.control);
        if let Some(f) = c.queued.pop_front() {
            return Some(f);
        }
        let random = c.random.as_ref()?;
        if !random.faults.is_empty() && fastrand::f64() < random.rate {
            return Some(random.faults[fastrand::usize(..random.faults.len())].clone());
        }
        None
    }

    pub(crate) fn latency(&self) -> Duration {
        lock(&self.control).latency
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        lock(&self.control).latency = latency;
    }

    pub(crate) fn store_payment(&self, id: String, payment: serde_json::Value) {
        lock(&self.control).payments.insert(id, payment);
    }

    pub(crate) fn payment(&self, id: &str) -> Option<serde_json::Value> {
        lock(&self.control).payments.get(id).cloned()
    }

    pub(crate) fn set_api_latency(&self, latency: Duration) {
        lock(&self.control).api_latency = latency;
    }

    pub(crate) fn api_latency(&self) -> Duration {
        lock(&self.control).api_latency
    }

    pub(crate) fn register_signing_key(&self, client_id: &str, kid: &str, key: PublicKey) {
        lock(&self.control)
            .signing_keys
            .entry(client_id.to_owned())
            .or_default()
            .insert(kid.to_owned(), key);
    }

    /// The key `kid` of `client_id`, or of any client when none is given.
    pub(crate) fn signing_key(&self, client_id: Option<&str>, kid: &str) -> Option<PublicKey> {
        let control = lock(&self.control);
        match client_id {
            Some(client) => control.signing_keys.get(client)?.get(kid).cloned(),
            None => control
                .signing_keys
                .values()
                .find_map(|keys| keys.get(kid).cloned()),
        }
    }

    pub(crate) fn check_idempotency(
        &self,
        client_id: &str,
        key: &str,
        body: &[u8],
    ) -> IdempotencyCheck {
        let mut control = lock(&self.control);
        let slot = (client_id.to_owned(), key.to_owned());
        match control.idempotency.get(&slot) {
            None => {
                control.idempotency.insert(
                    slot,
                    Idempotent {
                        body: body.to_vec(),
                        answer: None,
                    },
                );
                IdempotencyCheck::New
            }
            Some(seen) if seen.body != body => IdempotencyCheck::Conflict,
            Some(Idempotent { answer: None, .. }) => IdempotencyCheck::InFlight,
            Some(Idempotent {
                answer: Some((status, body)),
                ..
            }) => IdempotencyCheck::Repeat(*status, body.clone()),
        }
    }

    /// Records the first answer to an idempotency key (or forgets a key whose request
    /// failed, so it can be tried again).
    pub(crate) fn answer_idempotency(
        &self,
        client_id: &str,
        key: &str,
        answer: Option<(u16, serde_json::Value)>,
    ) {
        let mut control = lock(&self.control);
        let slot = (client_id.to_owned(), key.to_owned());
        match answer {
            Some(answer) => {
                if let Some(seen) = control.idempotency.get_mut(&slot) {
                    seen.answer = Some(answer);
                }
            }
            None => {
                control.idempotency.remove(&slot);
            }
        }
    }

    pub(crate) fn count(&self, counter: Counter) {
        let c = &self.counters;
        let atomic = match counter {
            Counter::TokenRequest => &c.token_requests,
            Counter::TokenIssued => &c.tokens_issued,
            Counter::FaultServed => &c.faults_served,
            Counter::TokenError => &c.token_errors,
            Counter::ApiRequest => &c.api_requests,
            Counter::ApiRejection => &c.api_rejections,
            Counter::SignatureRejection => &c.signature_rejections,
            Counter::PaymentCreated => &c.payments_created,
        };
        atomic.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            token_requests: c.token_requests.load(Ordering::Relaxed),
            tokens_issued: c.tokens_issued.load(Ordering::Relaxed),
            faults_served: c.faults_served.load(Ordering::Relaxed),
            token_errors: c.token_errors.load(Ordering::Relaxed),
            api_requests: c.api_requests.load(Ordering::Relaxed),
            api_rejections: c.api_rejections.load(Ordering::Relaxed),
            signature_rejections: c.signature_rejections.load(Ordering::Relaxed),
            payments_created: c.payments_created.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Counter {
    TokenRequest,
    TokenIssued,
    FaultServed,
    TokenError,
    ApiRequest,
    ApiRejection,
    SignatureRejection,
    PaymentCreated,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random secret for a new or rotated client.
pub(crate) fn random_secret() -> String {
    let mut s = String::from("emu-");
    for _ in 0..4 {
        s.push_str(&format!("{:016x}", fastrand::u64(..)));
    }
    s
}
