//! An axum server receiving TrueLayer webhooks through `VerifyWebhooksLayer`, end to end
//! against the emulator: create a payment through the bearer + signing stack, let the payer
//! "authorise" it, and wait for its `payment_settled` webhook, signed by the emulator and
//! checked with the JWKS it names.
//!
//! ```sh
//! cargo run -p truelayer-auth-webhooks --example webhook_server
//! ```
//!
//! To receive a running emulator's webhooks instead (`tlauth emulator --webhook-url`):
//!
//! ```sh
//! tlauth emulator --port 8081 --webhook-url http://127.0.0.1:3000/tl-webhook &
//! cargo run -p truelayer-auth-webhooks --example webhook_server -- \
//!     --listen 127.0.0.1:3000 --jku http://127.0.0.1:8081/webhooks/jwks
//! ```
//!
//! Against TrueLayer, build the verifier with `WebhookVerifier::builder().build()` (its
//! production and sandbox JWKS URLs are the default allow-list) and give TrueLayer Console
//! your public URL.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{ClientCredentials, Environment, Scopes, TokenCache};
use truelayer_auth_emulator::{Emulator, PaymentStatus};
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};
use truelayer_auth_webhooks::{
    InMemoryLedger, VerifiedWebhook, VerifyWebhooksLayer, Webhook, WebhookEvent, WebhookVerifier,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The handler: runs only for webhooks the layer verified, once per event.
async fn on_webhook(
    State(events): State<mpsc::UnboundedSender<Webhook>>,
    Extension(verified): Extension<VerifiedWebhook>,
    webhook: Webhook,
) -> StatusCode {
    println!(
        "webhook {} {} (payment {}, signed by key {})",
        webhook.event_type(),
        webhook.event_id,
        webhook.event.payment_id().unwrap_or("-"),
        verified.kid()
    );
    // Hand the event to the application. A real service writes it to its database here and
    // answers 2xx only once that is committed: after a 2xx, TrueLayer does not send it again.
    match events.send(webhook) {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn receiver(jku: String, events: mpsc::UnboundedSender<Webhook>) -> Result<Router, BoxError> {
    // Trust only the JWKS URL the emulator names (TrueLayer's two by default).
    let verifier = WebhookVerifier::builder().allowed_jkus([jku]).build()?;
    Ok(Router::new()
        .route("/tl-webhook", post(on_webhook))
        .with_state(events)
        .layer(VerifyWebhooksLayer::new(verifier).ledger(InMemoryLedger::new(100_000))))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if let Some(listen) = flag("--listen") {
        let jku = flag("--jku").ok_or("--listen needs --jku (the emulator's webhook JWKS URL)")?;
        return serve(listen.parse()?, jku).await;
    }

    let emulator = Emulator::start().await?;
    let (events, mut received) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = receiver(emulator.webhook_jku(), events)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    emulator.set_webhook_url(Some(&format!("http://{addr}/tl-webhook")))?;

    // Create a payment with bearer + signing, as hyper_client does.
    let credentials =
        ClientCredentials::new(emulator.client_id(), emulator.client_secret().into())?;
    let tokens = TokenCache::builder(Environment::custom(&emulator.url())?, credentials)
        .scopes(Scopes::payments())
        .build()?;
    let signer = Signer::from_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )?;
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .layer(SigningLayer::new(signer))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = http::Request::post(format!("{}/v3/payments", emulator.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"amount_in_minor":100,"currency":"GBP","metadata":{"order":"A-1"}}"#,
        )))?;
    let response = client.oneshot(request).await?;
    if response.status() != http::StatusCode::CREATED {
        return Err(format!("expected 201 Created, got {}", response.status()).into());
    }
    let created: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    let payment_id = created["id"].as_str().ok_or("no payment id")?.to_owned();
    println!("created payment {payment_id}");

    // The payer authorises at their bank; the emulator moves the payment to settled.
    emulator.advance_payment(&payment_id, PaymentStatus::Settled)?;

    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(webhook) = received.recv().await {
            if let WebhookEvent::PaymentSettled(settled) = webhook.event
                && settled.payment_id == payment_id
            {
                return Some(settled);
            }
        }
        None
    })
    .await
    .map_err(|_| "no payment_settled webhook within 10 s")?
    .ok_or("the receiver stopped")?;
    println!(
        "payment {} settled at {}",
        settled.payment_id,
        settled.settled_at.as_deref().unwrap_or("?")
    );
    Ok(())
}

async fn serve(listen: SocketAddr, jku: String) -> Result<(), BoxError> {
    let (events, mut received) = mpsc::unbounded_channel();
    let app = receiver(jku, events)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("receiving webhooks on http://{listen}/tl-webhook (Ctrl-C stops)");
    tokio::spawn(async move { while received.recv().await.is_some() {} });
    axum::serve(listener, app).await?;
    Ok(())
}
