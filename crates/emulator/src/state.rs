//! The emulator's shared state: clients, faults, counters, clock and revocations.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::Uri;
use serde::Serialize;
use serde_json::json;
use tokio::runtime::Handle;
use tokio::task::JoinSet;

use crate::faults::Fault;
use crate::keys::{AUDIENCE, Claims, signing_key};
use crate::signature::PublicKey;
use crate::webhooks::{
    PaymentStatus, WEBHOOK_RETRY_BASE, Webhook, Webhooks, deliver_queue, failed_event, rfc3339,
    status_event,
};

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
    /// Webhook delivery attempts, retries included.
    pub webhooks_sent: u64,
    /// Webhooks answered with a 2xx status.
    pub webhooks_delivered: u64,
    /// Webhooks given up on after their last attempt failed.
    pub webhooks_abandoned: u64,
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
    webhooks_sent: AtomicU64,
    webhooks_delivered: AtomicU64,
    webhooks_abandoned: AtomicU64,
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
    /// Where webhooks go; none are sent without one.
    webhook_url: Option<Uri>,
    /// When set, each payment created advances one status this often until settled.
    payment_step: Option<Duration>,
    /// The first retry delay, when not [`WEBHOOK_RETRY_BASE`].
    webhook_retry_base: Option<Duration>,
    /// Webhooks waiting for delivery, per payment id, in order. A payment has an entry
    /// exactly while a task is delivering its queue.
    outbox: HashMap<String, VecDeque<Webhook>>,
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
    pub(crate) webhooks: Webhooks,
    /// Payment schedules and webhook deliveries; `None` once the emulator is dropped, which
    /// aborts them all.
    tasks: Mutex<Option<JoinSet<()>>>,
    runtime: Handle,
}

/// A change of a payment's status.
pub(crate) enum PaymentChange {
    /// Forward to this status, through every status between.
    To(PaymentStatus),
    /// Forward to the next status.
    Next,
    /// To `failed`, for this reason.
    Fail(String),
}

/// Why a payment's status could not change.
pub(crate) enum MoveError {
    UnknownPayment(String),
    Refused(String),
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveError::UnknownPayment(id) => write!(f, "there is no payment {id}"),
            MoveError::Refused(why) => f.write_str(why),
        }
    }
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
    /// A new state for an emulator at `issuer`, its tasks spawned on the current runtime.
    pub(crate) fn new(issuer: String) -> Self {
        State {
            webhooks: Webhooks::new(&issuer),
            tasks: Mutex::new(Some(JoinSet::new())),
            runtime: Handle::current(),
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

    /// A payment as `GET /v3/payments/{id}` shows it.
    pub(crate) fn payment_view(&self, id: &str) -> Option<serde_json::Value> {
        let control = lock(&self.control);
        let payment = control.payments.get(id)?;
        let mut view = json!({ "id": payment["id"], "status": payment["status"] });
        if payment["status"] == "failed" {
            view["failure_stage"] = payment["failure_stage"].clone();
            view["failure_reason"] = payment["failure_reason"].clone();
        }
        Some(view)
    }

    pub(crate) fn set_webhook_url(&self, url: Option<Uri>) {
        lock(&self.control).webhook_url = url;
    }

    pub(crate) fn set_payment_step(&self, step: Option<Duration>) {
        lock(&self.control).payment_step = step;
    }

    pub(crate) fn set_webhook_retry_base(&self, base: Duration) {
        lock(&self.control).webhook_retry_base = Some(base);
    }

    pub(crate) fn webhook_retry_base(&self) -> Duration {
        lock(&self.control)
            .webhook_retry_base
            .unwrap_or(WEBHOOK_RETRY_BASE)
    }

    /// Moves a payment to another status, queueing the webhooks of every status it passes
    /// (when a webhook URL is set). Returns the status it is in now.
    pub(crate) fn move_payment(
        self: &Arc<Self>,
        id: &str,
        change: PaymentChange,
    ) -> Result<&'static str, MoveError> {
        let now = rfc3339(self.now_unix());
        let mut control = lock(&self.control);
        let url = control.webhook_url.clone();
        let payment = control
            .payments
            .get_mut(id)
            .ok_or_else(|| MoveError::UnknownPayment(id.to_owned()))?;
        let current = match payment["status"].as_str().unwrap_or_default() {
            "failed" => {
                return Err(MoveError::Refused(format!(
                    "payment {id} has failed, and failed is final"
                )));
            }
            status => status
                .parse::<PaymentStatus>()
                .map_err(MoveError::Refused)?,
        };
        if current == PaymentStatus::Settled {
            return Err(MoveError::Refused(format!(
                "payment {id} is settled, and settled is final"
            )));
        }
        let mut events = Vec::new();
        let now_in = match change {
            PaymentChange::Fail(reason) => {
                payment["status"] = json!("failed");
                payment["failure_stage"] = json!(current.as_str());
                payment["failure_reason"] = json!(reason);
                events.push(failed_event(payment, current, &reason, &now));
                "failed"
            }
            PaymentChange::To(_) | PaymentChange::Next => {
                let to = match change {
                    PaymentChange::To(to) => to,
                    _ => current.next().unwrap_or(current),
                };
                if to == current {
                    return Err(MoveError::Refused(format!(
                        "payment {id} is already {current}"
                    )));
                }
                if to < current {
                    return Err(MoveError::Refused(format!(
                        "payment {id} is {current}; it cannot move back to {to}"
                    )));
                }
                let mut status = current;
                while let Some(next) = status.next().filter(|next| *next <= to) {
                    status = next;
                    payment["status"] = json!(status.as_str());
                    events.extend(status_event(payment, status, &now));
                }
                status.as_str()
            }
        };
        let start = match url {
            Some(url) if !events.is_empty() => {
                let entry = control.outbox.entry(id.to_owned());
                let start = matches!(entry, Entry::Vacant(_));
                entry
                    .or_default()
                    .extend(events.into_iter().map(|event| Webhook {
                        url: url.clone(),
                        event,
                    }));
                start
            }
            _ => false,
        };
        drop(control);
        if start {
            self.spawn(deliver_queue(self.clone(), id.to_owned()));
        }
        Ok(now_in)
    }

    /// The next webhook queued for `payment_id`; `None` (and the queue gone, so the next
    /// webhook starts a new delivery task) when there is none.
    pub(crate) fn next_webhook(&self, payment_id: &str) -> Option<Webhook> {
        let mut control = lock(&self.control);
        let next = control
            .outbox
            .get_mut(payment_id)
            .and_then(VecDeque::pop_front);
        if next.is_none() {
            control.outbox.remove(payment_id);
        }
        next
    }

    /// With a payment schedule set, moves the new payment `id` forward one status each step
    /// until it is settled (or another change makes it final).
    pub(crate) fn schedule_payment(self: &Arc<Self>, id: String) {
        let Some(step) = lock(&self.control).payment_step else {
            return;
        };
        // The task holds no strong reference between steps: a dropped emulator is gone.
        let state = Arc::downgrade(self);
        self.spawn(async move {
            loop {
                tokio::time::sleep(step).await;
                let Some(state) = state.upgrade() else { return };
                match state.move_payment(&id, PaymentChange::Next) {
                    Ok(status) if status != PaymentStatus::Settled.as_str() => {}
                    Ok(_) => return,
                    Err(why) => {
                        tracing::debug!(payment_id = %id, "payment schedule stopped: {why}");
                        return;
                    }
                }
            }
        });
    }

    /// Runs `task` until it ends or the emulator is dropped.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        if let Some(set) = tasks.as_mut() {
            // Reap finished tasks so the set does not grow without bound.
            while set.try_join_next().is_some() {}
            set.spawn_on(task, &self.runtime);
        }
    }

    /// Aborts every schedule and delivery, and refuses new ones.
    pub(crate) fn shutdown(&self) {
        let tasks = lock(&self.tasks).take();
        // Dropping the set aborts its tasks.
        drop(tasks);
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

    pub(crate) fn remove_signing_key(&self, client_id: &str, kid: &str) -> bool {
        lock(&self.control)
            .signing_keys
            .get_mut(client_id)
            .is_some_and(|keys| keys.remove(kid).is_some())
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
            Counter::WebhookSent => &c.webhooks_sent,
            Counter::WebhookDelivered => &c.webhooks_delivered,
            Counter::WebhookAbandoned => &c.webhooks_abandoned,
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
            webhooks_sent: c.webhooks_sent.load(Ordering::Relaxed),
            webhooks_delivered: c.webhooks_delivered.load(Ordering::Relaxed),
            webhooks_abandoned: c.webhooks_abandoned.load(Ordering::Relaxed),
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
    WebhookSent,
    WebhookDelivered,
    WebhookAbandoned,
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
