//! One client stack, one connection pool, many merchants: a `KeyedTokenCache` behind the
//! bearer layer picks each request's merchant from the `CacheKey` in its extensions.
//!
//! ```sh
//! cargo run -p truelayer-auth-tower --example multi_merchant
//! ```
//!
//! The emulator runs in-process with three merchants, so this works offline. In production
//! the resolver would return, say, a `SecretsManagerCredentials` for `prod/truelayer/{client_id}`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use truelayer_auth::{
    CacheKey, ClientCredentials, CredentialsSource, Environment, KeyedTokenCache, Scopes,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MERCHANTS: [(&str, &str); 3] = [
    ("merchant-a", "secret-a"),
    ("merchant-b", "secret-b"),
    ("merchant-c", "secret-c"),
];

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let emulator = Emulator::start().await?;
    // The platform's request-signing key, registered for each merchant (each could have its
    // own: a SignerSource gets the request's extensions and can pick by its CacheKey).
    let signer = Signer::generate("platform-signing-key");
    for (id, secret) in MERCHANTS {
        emulator.add_client(id, secret, ["payments"]);
        emulator.register_signing_key(
            id,
            signer.kid(),
            &signer.public_key_pem().unwrap_or_default(),
        )?;
    }
    let environment = Environment::custom(&emulator.url())?;

    // Where a merchant's credentials come from, the first time a request names it.
    let tokens = KeyedTokenCache::builder()
        .max_entries(10_000)
        .credentials_for(|key: &CacheKey| {
            let (id, secret) = MERCHANTS.iter().find(|(id, _)| *id == key.client_id())?;
            let creds = ClientCredentials::new(*id, (*secret).into()).ok()?;
            Some(Arc::new(creds) as Arc<dyn CredentialsSource>)
        })
        .build()?;
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .layer(SigningLayer::new(signer))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    for (merchant, _) in MERCHANTS {
        let mut request = http::Request::post(format!("{}/v3/payments", emulator.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"amount_in_minor":100,"currency":"GBP"}"#,
            )))?;
        // The merchant this request is for.
        request.extensions_mut().insert(CacheKey::new(
            environment.clone(),
            merchant,
            Scopes::payments(),
        ));
        let response = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut client)
            .await?
            .call(request)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("{merchant}: {status} {}", String::from_utf8_lossy(&body));
        if status != http::StatusCode::CREATED {
            return Err(format!("{merchant}: expected 201 Created, got {status}").into());
        }
    }
    let fetched = emulator.stats().token_requests;
    println!("{fetched} token requests, one per merchant");
    if fetched != MERCHANTS.len() as u64 {
        return Err("expected one token request per merchant".into());
    }
    Ok(())
}
