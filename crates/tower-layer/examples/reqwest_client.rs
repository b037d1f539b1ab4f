//! The same payment through a reqwest client, via the `reqwest` feature's adapter.
//!
//! ```sh
//! cargo run -p truelayer-auth-tower --features reqwest --example reqwest_client
//! ```

use bytes::Bytes;
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{ClientCredentials, Environment, TokenCache};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies, ReqwestService};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let emulator = Emulator::start().await?;
    let credentials =
        ClientCredentials::new(emulator.client_id(), emulator.client_secret().into())?;
    let tokens = TokenCache::builder(Environment::custom(&emulator.url())?, credentials).build()?;

    let signer = Signer::from_pem(
        emulator.signing_key_id(),
        emulator.signing_key_pem().as_bytes(),
    )?;
    let client = ServiceBuilder::new()
        // Signing outside: the bearer layer's replay after a 401 copies the signed request.
        .layer(SigningLayer::new(signer))
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .map_request(|request: http::Request<Full<Bytes>>| request.map(reqwest::Body::wrap))
        .service(ReqwestService::new(reqwest::Client::new()));

    let request = http::Request::post(format!("{}/v3/payments", emulator.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"amount_in_minor":250,"currency":"EUR"}"#,
        )))?;
    let response = client.oneshot(request).await?;
    let status = response.status();
    let body = reqwest::Response::from(response).text().await?;
    println!("{status} {body}");
    if status != http::StatusCode::CREATED {
        return Err(format!("expected 201 Created, got {status}").into());
    }
    Ok(())
}
