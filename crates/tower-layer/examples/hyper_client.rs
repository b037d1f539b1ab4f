//! `POST /v3/payments` through hyper-util with the bearer and signing layers: what a real
//! payment creation needs. The emulator's Payments API stand-in checks the token (signature,
//! expiry, scope), the `Tl-Signature` (against the key registered for the client) and the
//! `Idempotency-Key`, as TrueLayer does.
//!
//! ```sh
//! cargo run -p truelayer-auth-tower --example hyper_client
//! ```
//!
//! The emulator runs in-process, so this works offline. Against TrueLayer, build the cache
//! with `Environment::Sandbox` and your credentials, and the signer with your P-521 key and
//! the key id TrueLayer Console shows for it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{ClientCredentials, Environment, Scopes, TokenCache};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let emulator = Emulator::start().await?;
    let credentials =
        ClientCredentials::new(emulator.client_id(), emulator.client_secret().into())?;
    let tokens = TokenCache::builder(Environment::custom(&emulator.url())?, credentials)
        .scopes(Scopes::payments())
        .build()?;

    let signer = Signer::from_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )?;

    let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        // Idempotency-Key (a new UUIDv4) and Tl-Signature on every POST.
        .layer(SigningLayer::new(signer))
        .service(hyper_client);

    let request = http::Request::post(format!("{}/v3/payments", emulator.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"amount_in_minor":100,"currency":"GBP"}"#,
        )))?;
    let response = client.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status} {}", String::from_utf8_lossy(&body));
    if status != http::StatusCode::CREATED {
        return Err(format!("expected 201 Created, got {status}").into());
    }
    Ok(())
}
