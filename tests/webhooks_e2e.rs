//! End to end: a payment created through the bearer + signing stack, moved to settled by the
//! emulator, whose signed `payment_settled` webhook reaches an axum handler through
//! `VerifyWebhooksLayer`; a tampered copy and a replay of it are refused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::Scopes;
use truelayer_auth_emulator::{Emulator, PaymentStatus};
use truelayer_auth_signing::SigningLayer;
use truelayer_auth_testkit::emulator::{cache_builder, signer};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};
use truelayer_auth_webhooks::{
    InMemoryLedger, VerifiedWebhook, VerifyWebhooksLayer, Webhook, WebhookEvent, WebhookVerifier,
};

/// What reached the handler, and every raw request that reached the server.
#[derive(Clone, Default)]
struct Record {
    handled: Arc<Mutex<Vec<(Webhook, VerifiedWebhook)>>>,
    raw: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn handler(
    State(record): State<Record>,
    axum::Extension(verified): axum::Extension<VerifiedWebhook>,
    webhook: Webhook,
) -> StatusCode {
    record.handled.lock().unwrap().push((webhook, verified));
    StatusCode::OK
}

/// Keeps a copy of each request as it arrived, before any check: what an eavesdropper has.
async fn capture(State(record): State<Record>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    record
        .raw
        .lock()
        .unwrap()
        .push((parts.headers.clone(), bytes.clone()));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn receiver(jku: String) -> (SocketAddr, Record) {
    let record = Record::default();
    let verifier = WebhookVerifier::builder()
        .allowed_jkus([jku])
        .build()
        .unwrap();
    let app = Router::new()
        .route("/tl-webhook", post(handler))
        .layer(VerifyWebhooksLayer::new(verifier).ledger(InMemoryLedger::new(1000)))
        .layer(middleware::from_fn_with_state(record.clone(), capture))
        .with_state(record.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, record)
}

async fn post_raw(addr: SocketAddr, headers: &HeaderMap, body: Bytes) -> (StatusCode, String) {
    let mut request = http::Request::post(format!("http://{addr}/tl-webhook"))
        .body(Full::new(body))
        .unwrap();
    for (name, value) in headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            request.headers_mut().insert(name, value.clone());
        }
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn a_payment_created_with_bearer_and_signing_settles_and_its_webhook_is_verified() {
    let emulator = Emulator::start().await.unwrap();
    let (addr, record) = receiver(emulator.webhook_jku()).await;
    emulator
        .set_webhook_url(Some(&format!("http://{addr}/tl-webhook")))
        .unwrap();

    let tokens = cache_builder(&emulator)
        .scopes(Scopes::payments())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .layer(SigningLayer::new(signer(&emulator)))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = http::Request::post(format!("{}/v3/payments", emulator.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"amount_in_minor":1000,"currency":"GBP","metadata":{"order":"A-1"}}"#,
        )))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let payment_id = created["id"].as_str().unwrap().to_owned();

    emulator
        .advance_payment(&payment_id, PaymentStatus::Settled)
        .unwrap();
    let settled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let found = record.handled.lock().unwrap().iter().find_map(|(w, v)| {
                matches!(&w.event, WebhookEvent::PaymentSettled(s) if s.payment_id == payment_id)
                    .then(|| (w.clone(), v.clone()))
            });
            if let Some(found) = found {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the payment_settled webhook arrives");
    let (webhook, verified) = settled;
    assert_eq!(verified.jku(), emulator.webhook_jku());
    assert_eq!(verified.kid(), truelayer_auth_emulator::WEBHOOK_KEY_ID);
    match &webhook.event {
        WebhookEvent::PaymentSettled(s) => {
            assert_eq!(s.metadata.as_ref().unwrap()["order"], "A-1");
        }
        other => panic!("{other:?}"),
    }
    let kinds: Vec<String> = record
        .handled
        .lock()
        .unwrap()
        .iter()
        .map(|(w, _)| w.event_type().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["payment_authorized", "payment_executed", "payment_settled"],
        "each status change once, in order"
    );

    // The settled webhook as it arrived, byte for byte.
    let (headers, body) = record
        .raw
        .lock()
        .unwrap()
        .iter()
        .find(|(_, b)| String::from_utf8_lossy(b).contains("payment_settled"))
        .cloned()
        .unwrap();
    let handled_before = record.handled.lock().unwrap().len();

    // Tampered: another payment id under the same signature.
    let tampered = Bytes::from(
        String::from_utf8_lossy(&body)
            .replace(&payment_id, "00000000-0000-4000-8000-000000000000")
            .into_bytes(),
    );
    assert_eq!(
        post_raw(addr, &headers, tampered).await,
        (StatusCode::UNAUTHORIZED, "invalid_signature".to_owned())
    );
    // Replayed as captured: acknowledged (so a retrying sender stops) but not handled again.
    assert_eq!(
        post_raw(addr, &headers, body.clone()).await,
        (StatusCode::OK, "already handled".to_owned())
    );
    // Replayed later with a re-signed but old timestamp (outside the 5-minute window).
    let old = "2020-01-01T00:00:00Z";
    let mut stale = headers.clone();
    stale.insert("x-tl-webhook-timestamp", old.parse().unwrap());
    stale.insert(
        "tl-signature",
        emulator
            .sign_webhook("/tl-webhook", old, &body)
            .parse()
            .unwrap(),
    );
    assert_eq!(
        post_raw(addr, &stale, body).await,
        (
            StatusCode::UNAUTHORIZED,
            "timestamp_outside_window".to_owned()
        )
    );
    assert_eq!(record.handled.lock().unwrap().len(), handled_before);
}
