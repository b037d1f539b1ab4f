//! The webhook layer and its JWKS cache against JWKS servers run by the test (never the
//! network): allow-list, timestamp window, rotation, kid floods, JWKS outages, key types,
//! body limits, the ledger, axum and plain hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt;
use truelayer_auth_signing::{Signable, Signer};
use truelayer_auth_webhooks::{
    DEFAULT_MAX_BODY, FetchedJwks, InMemoryLedger, JwksFuture, JwksSource, VerifiedWebhook,
    VerifyWebhooksLayer, Webhook, WebhookError, WebhookEvent, WebhookVerifier,
};

/// A JWKS server: its keys, status and caching can change; it counts fetches.
#[derive(Clone)]
struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
}

struct JwksState {
    keys: Mutex<Value>,
    status: AtomicU16,
    max_age: AtomicU64,
    fetches: AtomicUsize,
    delay_ms: AtomicU64,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Self {
        let state = Arc::new(JwksState {
            keys: Mutex::new(json!({ "keys": keys })),
            status: AtomicU16::new(200),
            max_age: AtomicU64::new(300),
            fetches: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let served = state.clone();
        let app = Router::new().route(
            "/jwks",
            get(move || {
                let state = served.clone();
                async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    let delay = state.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst))
                        .unwrap_or(StatusCode::OK);
                    let body = state.keys.lock().unwrap().to_string();
                    let max_age = state.max_age.load(Ordering::SeqCst);
                    (
                        status,
                        [("cache-control", format!("public, max-age={max_age}"))],
                        body,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer { addr, state }
    }

    fn jku(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = json!({ "keys": keys });
    }
}

fn now_rfc3339(offset: Duration, past: bool) -> String {
    let now = OffsetDateTime::now_utc();
    let at = if past { now - offset } else { now + offset };
    at.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

/// A webhook as TrueLayer sends it: signed timestamp and content type, with a jku.
async fn webhook(signer: &Signer, jku: &str, path: &str, body: &str) -> Request<Body> {
    webhook_at(signer, jku, path, body, &now_rfc3339(Duration::ZERO, true)).await
}

async fn webhook_at(
    signer: &Signer,
    jku: &str,
    path: &str,
    body: &str,
    timestamp: &str,
) -> Request<Body> {
    let signature = signer
        .sign_with_jku(
            &Signable::new("POST", path)
                .header("X-Tl-Webhook-Timestamp", timestamp)
                .header("Content-Type", "application/json")
                .body(body.as_bytes()),
            Some(jku),
        )
        .await
        .unwrap();
    Request::post(path)
        .header("x-tl-webhook-timestamp", timestamp)
        .header("content-type", "application/json")
        .header("tl-signature", signature)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn settled_body(event_id: &str) -> String {
    json!({
        "type": "payment_settled",
        "event_id": event_id,
        "event_version": 1,
        "payment_id": "pay-1",
        "settled_at": "2026-11-26T10:00:00Z",
        "payment_method": { "type": "bank_transfer" },
    })
    .to_string()
}

/// An axum app behind the layer; records what its handler saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String)>>>);

impl Seen {
    fn events(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }
}

fn app(layer: VerifyWebhooksLayer, seen: Seen, answer: StatusCode) -> Router {
    Router::new()
        .route(
            "/tl-webhook",
            post(
                move |Extension(verified): Extension<VerifiedWebhook>, webhook: Webhook| {
                    let seen = seen.clone();
                    async move {
                        assert!(!verified.kid().is_empty());
                        seen.0
                            .lock()
                            .unwrap()
                            .push((webhook.event_type().to_owned(), webhook.event_id.clone()));
                        answer
                    }
                },
            ),
        )
        .layer(layer)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn verifier_for(jkus: &[&str]) -> truelayer_auth_webhooks::WebhookVerifierBuilder {
    WebhookVerifier::builder().allowed_jkus(jkus.iter().map(|s| (*s).to_owned()))
}

#[tokio::test]
async fn a_signed_webhook_reaches_the_handler_typed_and_a_tampered_one_does_not() {
    let signer = Signer::generate("tl-key-1");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
    let seen = Seen::default();
    let app = app(
        VerifyWebhooksLayer::new(verifier),
        seen.clone(),
        StatusCode::OK,
    );

    let (status, _) = send(
        &app,
        webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("e-1")).await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen.events(),
        vec![("payment_settled".to_owned(), "e-1".to_owned())]
    );

    // The same signature over a different body.
    let mut tampered = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("e-2")).await;
    *tampered.body_mut() = Body::from(settled_body("e-2").replace("pay-1", "pay-9"));
    let (status, reason) = send(&app, tampered).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );

    // Signed for another path.
    let mut moved = webhook(&signer, &jwks.jku(), "/other", &settled_body("e-3")).await;
    *moved.uri_mut() = "/tl-webhook".parse().unwrap();
    assert_eq!(send(&app, moved).await.0, StatusCode::UNAUTHORIZED);

    // No signature at all.
    let bare = Request::post("/tl-webhook")
        .header("x-tl-webhook-timestamp", now_rfc3339(Duration::ZERO, true))
        .body(Body::from(settled_body("e-4")))
        .unwrap();
    assert_eq!(
        send(&app, bare).await,
        (StatusCode::UNAUTHORIZED, "missing_signature".into())
    );
    assert_eq!(
        seen.events().len(),
        1,
        "refused webhooks never reach the handler"
    );
    assert_eq!(jwks.fetches(), 1, "one fetch served every check");
}

#[tokio::test]
async fn a_jku_off_the_allow_list_is_refused_without_any_fetch() {
    let truelayer = Signer::generate("tl-key");
    let attacker = Signer::generate("tl-key");
    let allowed = JwksServer::start(vec![truelayer.public_jwk().unwrap()]).await;
    let evil = JwksServer::start(vec![attacker.public_jwk().unwrap()]).await;
    let seen = Seen::default();
    let app = app(
        VerifyWebhooksLayer::new(verifier_for(&[&allowed.jku()]).build().unwrap()),
        seen.clone(),
        StatusCode::OK,
    );
    // The attacker's own key and JWKS: a signature that verifies, under a jku of their own.
    let forged = webhook(&attacker, &evil.jku(), "/tl-webhook", &settled_body("e-1")).await;
    assert_eq!(
        send(&app, forged).await,
        (StatusCode::UNAUTHORIZED, "jku_not_allowed".into())
    );
    // A near miss of the allowed URL is not allowed either: the match is exact.
    let near = format!("{}/", allowed.jku());
    let forged = webhook(&attacker, &near, "/tl-webhook", &settled_body("e-2")).await;
    assert_eq!(send(&app, forged).await.0, StatusCode::UNAUTHORIZED);
    // The attacker's key under the allowed jku does not verify.
    let forged = webhook(
        &attacker,
        &allowed.jku(),
        "/tl-webhook",
        &settled_body("e-3"),
    )
    .await;
    assert_eq!(
        send(&app, forged).await,
        (StatusCode::UNAUTHORIZED, "invalid_signature".into())
    );
    assert_eq!(evil.fetches(), 0, "an off-list jku is never fetched");
    assert!(seen.events().is_empty());
}

#[tokio::test]
async fn stale_future_and_unsigned_timestamps_are_refused_before_any_fetch() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let app = app(
        VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap()),
        Seen::default(),
        StatusCode::OK,
    );
    let body = settled_body("e-1");
    for (timestamp, why) in [
        (
            now_rfc3339(Duration::from_secs(6 * 60), true),
            "timestamp_outside_window",
        ),
        (
            now_rfc3339(Duration::from_secs(6 * 60), false),
            "timestamp_outside_window",
        ),
        ("yesterday".to_owned(), "invalid_timestamp"),
    ] {
        let request = webhook_at(&signer, &jwks.jku(), "/tl-webhook", &body, &timestamp).await;
        assert_eq!(
            send(&app, request).await,
            (StatusCode::UNAUTHORIZED, why.into()),
            "{timestamp}"
        );
    }
    // A valid timestamp the signature does not cover: it could be swapped for a fresh one.
    let signature = signer
        .sign_with_jku(
            &Signable::new("POST", "/tl-webhook")
                .header("Content-Type", "application/json")
                .body(body.as_bytes()),
            Some(&jwks.jku()),
        )
        .await
        .unwrap();
    let unsigned = Request::post("/tl-webhook")
        .header("x-tl-webhook-timestamp", now_rfc3339(Duration::ZERO, true))
        .header("content-type", "application/json")
        .header("tl-signature", signature)
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(
        send(&app, unsigned).await,
        (StatusCode::UNAUTHORIZED, "timestamp_not_signed".into())
    );
    assert_eq!(jwks.fetches(), 0);
    // Inside the window, in either direction.
    for timestamp in [
        now_rfc3339(Duration::from_secs(4 * 60), true),
        now_rfc3339(Duration::from_secs(4 * 60), false),
    ] {
        let request = webhook_at(&signer, &jwks.jku(), "/tl-webhook", &body, &timestamp).await;
        assert_eq!(send(&app, request).await.0, StatusCode::OK, "{timestamp}");
    }
}

#[tokio::test]
async fn a_thousand_concurrent_first_webhooks_make_one_fetch() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    jwks.state.delay_ms.store(200, Ordering::SeqCst);
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("e")).await;
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (verifier, headers, body) = (verifier.clone(), parts.headers.clone(), body.clone());
        tasks.spawn(async move {
            verifier
                .verify(&Method::POST, "/tl-webhook", &headers, &body)
                .await
                .map(|_| ())
        });
    }
    let mut verified = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
        verified += 1;
    }
    assert_eq!(verified, 1000);
    assert_eq!(jwks.fetches(), 1);
}

/// Moves tokio's clock forward without sleeping, then lets it run with real time again
/// (the JWKS servers are real sockets: a clock left paused would fire their timeouts early).
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

async fn verify_request(
    verifier: &WebhookVerifier,
    request: Request<Body>,
) -> Result<VerifiedWebhook, WebhookError> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    verifier
        .verify(&parts.method, parts.uri.path(), &parts.headers, &body)
        .await
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_a_removed_one_refused() {
    let old = Signer::generate("key-2025");
    let new = Signer::generate("key-2026");
    let jwks = JwksServer::start(vec![old.public_jwk().unwrap()]).await;
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap(); // 30 s refetch interval
    let jku = jwks.jku();
    verify_request(
        &verifier,
        webhook(&old, &jku, "/h", &settled_body("1")).await,
    )
    .await
    .unwrap();
    assert_eq!(jwks.fetches(), 1);
    // TrueLayer rotates: the new key is published, the old one withdrawn.
    jwks.set_keys(vec![new.public_jwk().unwrap()]);
    let early = verify_request(
        &verifier,
        webhook(&new, &jku, "/h", &settled_body("2")).await,
    )
    .await;
    assert!(
        matches!(early, Err(WebhookError::UnknownKey { .. })),
        "within the refetch interval of the last fetch, a new kid waits (TrueLayer retries): {early:?}"
    );
    assert_eq!(jwks.fetches(), 1);
    jump(Duration::from_secs(31)).await;
    let verified = verify_request(
        &verifier,
        webhook(&new, &jku, "/h", &settled_body("2")).await,
    )
    .await
    .unwrap();
    assert_eq!(verified.kid(), "key-2026");
    assert_eq!(jwks.fetches(), 2, "the unknown kid made one refetch");
    verify_request(
        &verifier,
        webhook(&new, &jku, "/h", &settled_body("3")).await,
    )
    .await
    .unwrap();
    assert_eq!(jwks.fetches(), 2, "the fresh copy serves the new key");
    let refused = verify_request(
        &verifier,
        webhook(&old, &jku, "/h", &settled_body("4")).await,
    )
    .await;
    assert!(
        matches!(refused, Err(WebhookError::UnknownKey { .. })),
        "{refused:?}"
    );
}

async fn wait_for_fetches(jwks: &JwksServer, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while jwks.fetches() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the background refresh ran");
}

#[tokio::test]
async fn when_the_jwks_is_down_the_last_good_copy_is_served() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    jwks.state.max_age.store(0, Ordering::SeqCst); // fresh for the floor only
    let verifier = verifier_for(&[&jwks.jku()])
        .jwks_ttl(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .build()
        .unwrap();
    let app = app(
        VerifyWebhooksLayer::new(verifier),
        Seen::default(),
        StatusCode::OK,
    );
    let jku = jwks.jku();
    let request = webhook(&signer, &jku, "/tl-webhook", &settled_body("1")).await;
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    jwks.state.status.store(503, Ordering::SeqCst);
    jump(Duration::from_secs(31)).await; // stale, and a refetch is allowed
    let request = webhook(&signer, &jku, "/tl-webhook", &settled_body("2")).await;
    assert_eq!(
        send(&app, request).await.0,
        StatusCode::OK,
        "the stale copy serves while it is refreshed"
    );
    wait_for_fetches(&jwks, 2).await;
    let request = webhook(&signer, &jku, "/tl-webhook", &settled_body("3")).await;
    assert_eq!(send(&app, request).await.0, StatusCode::OK, "still served");
    // Long enough for a background refetch to reach the local server, were one started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jwks.fetches(), 2, "no second refresh within the interval");
    // Past the refetch interval (30 s), the next webhook starts one.
    jump(Duration::from_secs(31)).await;
    let request = webhook(&signer, &jku, "/tl-webhook", &settled_body("4")).await;
    assert_eq!(send(&app, request).await.0, StatusCode::OK, "still served");
    wait_for_fetches(&jwks, 3).await;

    // With nothing cached, an outage is a 503 (TrueLayer retries), not a 401.
    let cold = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    cold.state.status.store(500, Ordering::SeqCst);
    let app = app_for(&cold);
    let request = webhook(&signer, &cold.jku(), "/tl-webhook", &settled_body("1")).await;
    assert_eq!(
        send(&app, request).await,
        (StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable".into())
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_mid_fetch_neither_cancels_it_nor_wastes_the_interval() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    jwks.state.delay_ms.store(300, Ordering::SeqCst);
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
    let jku = jwks.jku();
    // The first webhook's client hangs up while the JWKS is being fetched.
    let first = verify_request(
        &verifier,
        webhook(&signer, &jku, "/h", &settled_body("1")).await,
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), first)
            .await
            .is_err(),
        "dropped mid-fetch"
    );
    // The fetch it started finishes anyway, and the next webhook uses it.
    let verified = verify_request(
        &verifier,
        webhook(&signer, &jku, "/h", &settled_body("2")).await,
    )
    .await
    .unwrap();
    assert_eq!(verified.kid(), "k");
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn forged_headers_are_refused_before_the_body_is_read() {
    let attacker = Signer::generate("k");
    let seen = Seen::default();
    let app = app(
        VerifyWebhooksLayer::new(
            verifier_for(&["https://webhooks.example.test/jwks"])
                .build()
                .unwrap(),
        ),
        seen.clone(),
        StatusCode::OK,
    );
    let mut forged = webhook(
        &attacker,
        "https://attacker.example/jwks",
        "/tl-webhook",
        &settled_body("e"),
    )
    .await;
    // A body that never arrives: the answer must not wait for it.
    *forged.body_mut() = Body::new(http_body_util::StreamBody::new(
        futures_util::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>(),
    ));
    let answered = tokio::time::timeout(Duration::from_secs(5), send(&app, forged))
        .await
        .expect("answered without reading the body");
    assert_eq!(
        answered,
        (StatusCode::UNAUTHORIZED, "jku_not_allowed".into())
    );
    assert!(seen.events().is_empty());
}

#[tokio::test]
async fn a_handler_that_never_answers_releases_its_claim_for_the_retry() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let layer = VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap())
        .ledger(InMemoryLedger::new(100));
    let stuck: Router = Router::new()
        .route(
            "/tl-webhook",
            post(|_: Webhook| std::future::pending::<StatusCode>()),
        )
        .layer(layer.clone());
    let seen = Seen::default();
    let up = app(layer, seen.clone(), StatusCode::OK);
    let body = settled_body("evt-stuck");
    let first = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    // TrueLayer gives up on the delivery (its client times out): the handler is dropped.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), send(&stuck, first))
            .await
            .is_err()
    );
    let retry = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    assert_eq!(
        send(&up, retry).await.0,
        StatusCode::OK,
        "not 409: the claim was released"
    );
    assert_eq!(seen.events().len(), 1);
}

#[tokio::test]
async fn a_layer_can_be_configured_after_it_was_cloned() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let base = VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap());
    let kept = base.clone();
    let tightened = base
        .max_body_bytes(1024)
        .body_timeout(Duration::from_secs(1));
    let big = json!({"type": "payment_settled", "event_id": "e", "payment_id": "p",
        "padding": "x".repeat(2000)})
    .to_string();
    // The clone keeps the settings it was cloned with; the tightened copy has its own.
    let (kept_seen, tightened_seen) = (Seen::default(), Seen::default());
    let kept = app(kept, kept_seen.clone(), StatusCode::OK);
    let tightened = app(tightened, tightened_seen.clone(), StatusCode::OK);
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &big).await;
    assert_eq!(send(&kept, request).await.0, StatusCode::OK);
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &big).await;
    assert_eq!(
        send(&tightened, request).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(kept_seen.events().len(), 1);
    assert!(tightened_seen.events().is_empty());
}

#[test]
fn settings_that_would_let_a_flood_fetch_in_a_loop_are_refused() {
    for builder in [
        WebhookVerifier::builder().jwks_refetch_interval(Duration::ZERO),
        WebhookVerifier::builder().jwks_ttl(
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::from_secs(600),
        ),
    ] {
        assert!(builder.build().is_err());
    }
    assert!(WebhookVerifier::builder().production_only().build().is_ok());
}

fn app_for(jwks: &JwksServer) -> Router {
    app(
        VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap()),
        Seen::default(),
        StatusCode::OK,
    )
}

#[tokio::test]
async fn an_rsa_or_wrong_curve_key_under_the_kid_is_refused() {
    let signer = Signer::generate("k");
    let rsa = json!({"kty": "RSA", "kid": "k", "n": "0vx7agoebGcQSuu", "e": "AQAB"});
    let p256 = json!({"kty": "EC", "crv": "P-256", "kid": "k",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    for (key, found) in [(rsa, "RSA"), (p256, "P-256")] {
        let jwks = JwksServer::start(vec![key]).await;
        let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
        let request = webhook(&signer, &jwks.jku(), "/h", &settled_body("1")).await;
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let error = verifier
            .verify(&parts.method, "/h", &parts.headers, &body)
            .await
            .unwrap_err();
        match &error {
            WebhookError::UnsupportedKey { kid, found: what } => {
                assert_eq!(kid, "k");
                assert!(what.contains(found), "{what}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_never_reaches_the_handler() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let seen = Seen::default();
    let app = app(
        VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap())
            .max_body_bytes(1024),
        seen.clone(),
        StatusCode::OK,
    );
    let big = json!({"type": "payment_settled", "event_id": "e", "payment_id": "p",
        "padding": "x".repeat(2000)})
    .to_string();
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &big).await;
    assert_eq!(
        send(&app, request).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
    // Without a Content-Length (chunked), the limit holds while reading.
    let mut request = webhook(&signer, &jwks.jku(), "/tl-webhook", &big).await;
    let chunks = big
        .as_bytes()
        .chunks(100)
        .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect::<Vec<_>>();
    *request.body_mut() = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    assert_eq!(send(&app, request).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen.events().is_empty());
    assert_eq!(jwks.fetches(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_stalled_body_gets_408_at_10_s_and_one_over_256_kib_gets_413() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let seen = Seen::default();
    let app = app(
        VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap()),
        seen.clone(),
        StatusCode::OK,
    );
    // A signed webhook whose body stops after its first part.
    let body = json!({"type": "payment_settled", "event_id": "e", "payment_id": "p"}).to_string();
    let mut request = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    request.headers_mut().remove("content-length");
    let first = Bytes::copy_from_slice(&body.as_bytes()[..10]);
    let stalled = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(first))]),
        futures_util::stream::pending(),
    );
    *request.body_mut() = Body::new(http_body_util::StreamBody::new(stalled));
    let started = tokio::time::Instant::now();
    assert_eq!(
        send(&app, request).await,
        (StatusCode::REQUEST_TIMEOUT, "body_timeout".into())
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10), "the default");
    // Over the default limit (256 KiB): refused, whatever the signature.
    let big = json!({"type": "payment_settled", "event_id": "e", "payment_id": "p",
        "padding": "x".repeat(DEFAULT_MAX_BODY)})
    .to_string();
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &big).await;
    assert_eq!(send(&app, request).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen.events().is_empty());
}

#[tokio::test]
async fn the_ledger_hands_an_event_to_the_handler_until_it_succeeds_once() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
    let layer = VerifyWebhooksLayer::new(verifier).ledger(InMemoryLedger::new(1000));
    let failing = Seen::default();
    let down = app(
        layer.clone(),
        failing.clone(),
        StatusCode::INTERNAL_SERVER_ERROR,
    );
    let seen = Seen::default();
    let up = app(layer, seen.clone(), StatusCode::OK);
    let body = settled_body("evt-1");

    // The handler fails: the event is not marked, TrueLayer's retry reaches the handler.
    let first = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    assert_eq!(
        send(&down, first).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let retry = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    assert_eq!(send(&up, retry).await.0, StatusCode::OK);
    // Handled: a later retry, or a replay of the captured request, does not reach it again.
    let again = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    let replay = clone_request(&again, &body).await;
    assert_eq!(
        send(&up, again).await,
        (StatusCode::OK, "already handled".into())
    );
    assert_eq!(send(&up, replay).await.0, StatusCode::OK);
    assert_eq!(failing.events().len(), 1);
    assert_eq!(
        seen.events(),
        vec![("payment_settled".to_owned(), "evt-1".to_owned())]
    );
}

#[tokio::test]
async fn a_body_with_event_id_twice_is_refused_and_never_reaches_the_handler() {
    // Validly signed, with `event_id` twice: parsers disagree on which one counts (serde
    // keeps the last, others the first), so the ledger and the handler could see two events.
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let layer = VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap())
        .ledger(InMemoryLedger::new(1000));
    let seen = Seen::default();
    let app = app(layer, seen.clone(), StatusCode::OK);
    let body =
        r#"{"type":"payment_settled","event_id":"evt-a","payment_id":"p","event_id":"evt-b"}"#;
    for _ in 0..2 {
        let request = webhook(&signer, &jwks.jku(), "/tl-webhook", body).await;
        assert_eq!(
            send(&app, request).await,
            (StatusCode::BAD_REQUEST, "duplicate_key".into())
        );
    }
    assert!(seen.events().is_empty(), "{:?}", seen.events());
    // Each id on its own is still handled once.
    let first = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("evt-a")).await;
    assert_eq!(send(&app, first).await.0, StatusCode::OK);
    let again = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("evt-a")).await;
    assert_eq!(
        send(&app, again).await,
        (StatusCode::OK, "already handled".into())
    );
    assert_eq!(
        seen.events(),
        vec![("payment_settled".to_owned(), "evt-a".to_owned())]
    );
}

#[tokio::test]
async fn a_body_without_an_event_id_is_refused_when_a_ledger_is_set() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let layer = VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap())
        .ledger(InMemoryLedger::new(1000));
    // A handler that reads the raw body: nothing but the layer stands in the way.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app: Router = Router::new()
        .route(
            "/tl-webhook",
            post(move |_: Bytes| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::OK }
            }),
        )
        .layer(layer);
    for (body, reason) in [
        (
            r#"{"type":"payment_settled","payment_id":"p"}"#,
            "missing_event_id",
        ),
        (
            r#"{"type":"payment_settled","event_id":7}"#,
            "missing_event_id",
        ),
        (r#"{"event_id":"e"}"#, "missing_type"),
        (r#"["event_id","e"]"#, "not_a_json_object"),
        ("not json", "not_a_json_object"),
    ] {
        for _ in 0..2 {
            let request = webhook(&signer, &jwks.jku(), "/tl-webhook", body).await;
            assert_eq!(
                send(&app, request).await,
                (StatusCode::BAD_REQUEST, reason.into()),
                "{body}"
            );
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // A webhook with its envelope reaches the same handler once.
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("e")).await;
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("e")).await;
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A byte-for-byte copy of a webhook, as an attacker who captured it would send it.
async fn clone_request(request: &Request<Body>, body: &str) -> Request<Body> {
    let mut copy = Request::post(request.uri().clone())
        .body(Body::from(body.to_owned()))
        .unwrap();
    *copy.headers_mut() = request.headers().clone();
    copy
}

#[tokio::test]
async fn under_router_nest_the_original_path_is_verified() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let seen = Seen::default();
    let inner = app(
        VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap()),
        seen.clone(),
        StatusCode::OK,
    );
    let outer = Router::new().nest("/hooks", inner);
    let request = webhook(
        &signer,
        &jwks.jku(),
        "/hooks/tl-webhook",
        &settled_body("1"),
    )
    .await;
    assert_eq!(send(&outer, request).await.0, StatusCode::OK);
    assert_eq!(seen.events().len(), 1);
}

#[tokio::test]
async fn the_extractor_refuses_requests_no_layer_verified() {
    let app: Router = Router::new().route(
        "/tl-webhook",
        post(|webhook: Webhook| async move { webhook.event_id }),
    );
    let request = Request::post("/tl-webhook")
        .body(Body::from(settled_body("e")))
        .unwrap();
    assert_eq!(
        send(&app, request).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn plain_hyper_serves_the_layer_over_a_real_connection() {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let service = tower::ServiceBuilder::new()
        .layer(VerifyWebhooksLayer::new(verifier))
        .service_fn(move |request: Request<Full<Bytes>>| {
            let counter = counter.clone();
            async move {
                assert!(request.extensions().get::<VerifiedWebhook>().is_some());
                let body = request.into_body().collect().await?.to_bytes();
                let webhook: Webhook = serde_json::from_slice(&body).unwrap();
                assert!(matches!(webhook.event, WebhookEvent::PaymentSettled(_)));
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let request = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("1")).await;
    let client = reqwest_like(addr, request).await;
    assert_eq!(client, 200);
    let mut forged = webhook(&signer, &jwks.jku(), "/tl-webhook", &settled_body("1")).await;
    forged
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(reqwest_like(addr, forged).await, 401);
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

/// Sends a request over a real hyper client connection, returning the status.
async fn reqwest_like(addr: SocketAddr, request: Request<Body>) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .insert("host", HeaderValue::from_str(&addr.to_string()).unwrap());
    let body = body.collect().await.unwrap().to_bytes();
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .unwrap();
    response.status().as_u16()
}

/// TrueLayer's webhook vector, with the JWKS of the vectors folder served for its jku.
#[derive(Debug)]
struct VectorJwks;

impl JwksSource for VectorJwks {
    fn jwks<'a>(&'a self, jku: &'a str) -> JwksFuture<'a> {
        assert_eq!(jku, truelayer_auth_webhooks::TRUELAYER_PRODUCTION_JKU);
        Box::pin(async {
            Ok(FetchedJwks::new(include_str!(
                "../../signing/tests/vectors/jwks.json"
            )))
        })
    }
}

#[tokio::test]
async fn truelayers_webhook_vector_verifies_with_the_vector_jwks() {
    let signature = include_str!("../../signing/tests/vectors/webhook-signature.txt").trim();
    let sent = OffsetDateTime::parse("2021-11-29T11:42:55Z", &Rfc3339).unwrap();
    let age = SystemTime::now().duration_since(sent.into()).unwrap();
    let verifier = WebhookVerifier::builder()
        .allowed_jkus([truelayer_auth_webhooks::TRUELAYER_PRODUCTION_JKU])
        .jwks_source(VectorJwks)
        // The vector was signed in 2021: widen the window to reach it.
        .timestamp_window(age + Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-tl-webhook-timestamp",
        HeaderValue::from_static("2021-11-29T11:42:55Z"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("tl-signature", HeaderValue::from_str(signature).unwrap());
    let body = br#"{"event_type":"example","event_id":"18b2842b-a57b-4887-a0a6-d3c7c36f1020"}"#;
    let verified = verifier
        .verify(&Method::POST, "/tl-webhook", &headers, body)
        .await
        .unwrap();
    assert_eq!(verified.kid(), "45fc75cf-5649-4134-84b3-192c2c78e990");
    assert_eq!(verified.timestamp(), SystemTime::from(sent));
    let webhook: Webhook = serde_json::from_slice(body).unwrap();
    assert_eq!(webhook.event_type(), "example");
    // The same vector with the timestamp changed, or under the default window, is refused.
    let mut moved = headers.clone();
    moved.insert(
        "x-tl-webhook-timestamp",
        HeaderValue::from_static("2021-11-29T11:42:56Z"),
    );
    assert!(matches!(
        verifier
            .verify(&Method::POST, "/tl-webhook", &moved, body)
            .await,
        Err(WebhookError::InvalidSignature(_))
    ));
    let strict = WebhookVerifier::builder()
        .jwks_source(VectorJwks)
        .build()
        .unwrap();
    assert!(matches!(
        strict
            .verify(&Method::POST, "/tl-webhook", &headers, body)
            .await,
        Err(WebhookError::TimestampOutsideWindow { .. })
    ));
}

/// A fetcher in the test process, so time can run on tokio's paused clock (no sockets).
#[derive(Debug, Clone)]
struct CountingJwks {
    jwks: Arc<Mutex<FetchedJwks>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksSource for CountingJwks {
    fn jwks<'a>(&'a self, _jku: &'a str) -> JwksFuture<'a> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let jwks = self.jwks.lock().unwrap().clone();
        Box::pin(async move { Ok(jwks) })
    }
}

#[tokio::test(start_paused = true)]
async fn cache_control_is_kept_within_the_floor_and_ceiling_and_refetches_are_spaced() {
    let signer = Signer::generate("k");
    let jku = "https://webhooks.example.test/jwks";
    let document = json!({ "keys": [signer.public_jwk().unwrap()] }).to_string();
    let fetcher = CountingJwks {
        jwks: Arc::new(Mutex::new(
            FetchedJwks::new(document.clone()).max_age(Duration::from_secs(5)),
        )),
        fetches: Arc::new(AtomicUsize::new(0)),
    };
    let verifier = WebhookVerifier::builder()
        .allowed_jkus([jku])
        .jwks_source(fetcher.clone())
        .jwks_ttl(
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(3600),
        )
        .build()
        .unwrap();
    let verify = |signer: Signer| {
        let verifier = verifier.clone();
        async move {
            let request = webhook(&signer, jku, "/h", &settled_body("1")).await;
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            verifier
                .verify(&parts.method, "/h", &parts.headers, &body)
                .await
        }
    };
    let fetches = || fetcher.fetches.load(Ordering::SeqCst);
    verify(signer.clone()).await.unwrap();
    assert_eq!(fetches(), 1);
    // max-age=5 is raised to the 60 s floor.
    tokio::time::advance(Duration::from_secs(59)).await;
    verify(signer.clone()).await.unwrap();
    assert_eq!(fetches(), 1, "fresh for the floor, not the 5 s asked");
    tokio::time::advance(Duration::from_secs(2)).await;
    verify(signer.clone()).await.unwrap();
    settle().await; // the stale copy answered; the refresh runs beside it
    assert_eq!(fetches(), 2, "stale after the floor: one refresh");

    // A week asked is cut to the one-hour ceiling.
    *fetcher.jwks.lock().unwrap() =
        FetchedJwks::new(document).max_age(Duration::from_secs(7 * 24 * 3600));
    tokio::time::advance(Duration::from_secs(61)).await;
    verify(signer.clone()).await.unwrap();
    settle().await;
    assert_eq!(fetches(), 3);
    tokio::time::advance(Duration::from_secs(3599)).await;
    verify(signer.clone()).await.unwrap();
    assert_eq!(fetches(), 3);
    tokio::time::advance(Duration::from_secs(2)).await;
    verify(signer.clone()).await.unwrap();
    settle().await;
    assert_eq!(fetches(), 4, "the ceiling ends freshness");

    // Unknown kids: at most one refetch per 30 s interval.
    let stranger = Signer::generate("stranger");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(verify(stranger.clone()).await.is_err());
    assert_eq!(fetches(), 4, "29 s after the last fetch: no refetch");
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..10 {
        assert!(verify(stranger.clone()).await.is_err());
    }
    assert_eq!(fetches(), 5, "one refetch for ten webhooks in the interval");
}

/// Lets spawned tasks (a background refresh) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_webhook_signed_by_truelayers_own_crate_passes_the_layer() {
    // TrueLayer's implementation, as its webhook sender would sign: jku in the JOSE header,
    // the timestamp signed, headers in its own order and case.
    let ours = Signer::generate("tl-interop-1");
    let pem = ours.private_key_pem().expect("a generated key has a PEM");
    let jwks = JwksServer::start(vec![ours.public_jwk().unwrap()]).await;
    let verifier = verifier_for(&[&jwks.jku()]).build().unwrap();
    let seen = Seen::default();
    let app = app(
        VerifyWebhooksLayer::new(verifier),
        seen.clone(),
        StatusCode::OK,
    );

    let sign = |body: &str, timestamp: &str| {
        truelayer_signing::sign_with_pem("tl-interop-1", pem.as_bytes())
            .method(truelayer_signing::Method::Post)
            .path("/tl-webhook")
            .header("x-tl-webhook-timestamp", timestamp.as_bytes())
            .header("Content-Type", b"application/json")
            .body(body.as_bytes())
            .jku(&jwks.jku())
            .build_signer()
            .sign()
            .unwrap()
    };
    let request = |body: &str, timestamp: &str, signature: String| {
        Request::post("/tl-webhook")
            .header("X-TL-Webhook-Timestamp", timestamp)
            .header("content-type", "application/json")
            .header("Tl-Signature", signature)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };

    let now = now_rfc3339(Duration::ZERO, true);
    let body = settled_body("interop-1");
    let (status, _) = send(&app, request(&body, &now, sign(&body, &now))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen.events(),
        vec![("payment_settled".to_owned(), "interop-1".to_owned())]
    );

    // Their signature over one body does not carry another.
    let other = settled_body("interop-2");
    let (status, reason) = send(&app, request(&other, &now, sign(&body, &now))).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );

    // Signed by their crate with a timestamp outside the window: refused as stale.
    let old = now_rfc3339(Duration::from_secs(600), true);
    let (status, reason) = send(&app, request(&other, &old, sign(&other, &old))).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::UNAUTHORIZED, "timestamp_outside_window")
    );
    assert_eq!(seen.events().len(), 1);
}

/// An [`InMemoryLedger`] whose `complete` waits until the test opens its gate (as a
/// database ledger waits for a free connection); counts releases.
#[derive(Debug, Clone)]
struct GatedLedger(Arc<Gated>);

#[derive(Debug)]
struct Gated {
    inner: InMemoryLedger,
    gate: tokio::sync::Semaphore,
    releases: AtomicUsize,
}

impl truelayer_auth_webhooks::EventLedger for GatedLedger {
    fn begin<'a>(
        &'a self,
        event_id: &'a str,
    ) -> truelayer_auth_webhooks::LedgerFuture<'a, truelayer_auth_webhooks::Begin> {
        self.0.inner.begin(event_id)
    }

    fn complete<'a>(
        &'a self,
        event_id: &'a str,
        claim: u64,
    ) -> truelayer_auth_webhooks::LedgerFuture<'a, ()> {
        Box::pin(async move {
            let _permit = self.0.gate.acquire().await.unwrap();
            self.0.inner.complete(event_id, claim).await
        })
    }

    fn release(&self, event_id: &str, claim: u64) {
        self.0.releases.fetch_add(1, Ordering::SeqCst);
        self.0.inner.release(event_id, claim);
    }
}

#[tokio::test]
async fn a_request_dropped_while_its_success_is_being_recorded_is_completed_not_released() {
    let signer = Signer::generate("k");
    let jwks = JwksServer::start(vec![signer.public_jwk().unwrap()]).await;
    let ledger = GatedLedger(Arc::new(Gated {
        inner: InMemoryLedger::new(100),
        gate: tokio::sync::Semaphore::new(0),
        releases: AtomicUsize::new(0),
    }));
    let layer = VerifyWebhooksLayer::new(verifier_for(&[&jwks.jku()]).build().unwrap())
        .ledger(ledger.clone());
    let seen = Seen::default();
    let up = app(layer, seen.clone(), StatusCode::OK);
    let body = settled_body("evt-hangup");
    let first = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    // The handler answers 200; the layer waits to record it; the client hangs up meanwhile.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), send(&up, first))
            .await
            .is_err()
    );
    assert_eq!(seen.events().len(), 1);
    ledger.0.gate.add_permits(100);
    settle().await;
    assert_eq!(
        ledger.0.releases.load(Ordering::SeqCst),
        0,
        "never released"
    );
    let retry = webhook(&signer, &jwks.jku(), "/tl-webhook", &body).await;
    assert_eq!(
        send(&up, retry).await,
        (StatusCode::OK, "already handled".into()),
        "the handler's success was recorded"
    );
    assert_eq!(seen.events().len(), 1, "the handler ran once");
}
