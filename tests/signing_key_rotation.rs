//! One Secrets Manager secret (moto) configures both the token cache and the signing layer;
//! a rotated signing key is picked up: at once when TrueLayer (the emulator) refuses the old
//! key's signature, and after the vault's TTL otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{Scopes, TokenCache};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{SigningLayer, jws_header};
use truelayer_auth_testkit::emulator::{environment, register_new_signer};
use truelayer_auth_testkit::moto;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};
use truelayer_auth_vault::SecretsManagerCredentials;

fn secret_json(emulator: &Emulator, kid: &str, pem: &str) -> String {
    serde_json::json!({
        "client_id": emulator.client_id(),
        "client_secret": emulator.client_secret(),
        "signing_key_id": kid,
        "signing_private_key": pem,
    })
    .to_string()
}

/// A new key pair, registered with the emulator as uploading it in Console would.
fn new_key(emulator: &Emulator, kid: &str) -> String {
    let signer = register_new_signer(emulator, emulator.client_id(), kid);
    signer.private_key_pem().unwrap().to_string()
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn one_secret_signs_and_authorizes_and_a_rotated_signing_key_is_picked_up() {
    let config = moto::config("eu-west-2").await;
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let emulator = Emulator::start().await.unwrap();
    let name = format!("e2e/signing-rotation/{}", std::process::id());
    let first_pem = new_key(&emulator, "key-1");
    moto::create_secret(&config, &name, &secret_json(&emulator, "key-1", &first_pem)).await;

    // One source for both: client credentials and the signing key.
    let vault = SecretsManagerCredentials::builder(&name)
        .sdk_config(config.clone())
        .build()
        .await
        .unwrap();
    let tokens = TokenCache::builder(environment(&emulator), Arc::new(vault.clone()))
        .scopes(Scopes::payments())
        .build()
        .unwrap();
    // What went on the wire: the kid of each Tl-Signature sent.
    let sent_kids = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = sent_kids.clone();
    let client = ServiceBuilder::new()
        .layer(SigningLayer::new(vault.clone()))
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .map_request(move |request: http::Request<Full<Bytes>>| {
            let signature = request.headers()["tl-signature"].to_str().unwrap();
            seen.lock()
                .unwrap()
                .push(jws_header(signature).unwrap().kid);
            request
        })
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let payments = format!("{}/v3/payments", emulator.url());
    let create = || {
        let request = http::Request::post(&payments)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"amount_in_minor":1}"#)))
            .unwrap();
        let client = client.clone();
        async move { client.oneshot(request).await.unwrap().status().as_u16() }
    };
    assert_eq!(create().await, 201);

    // Rotation: a new key is uploaded and stored in the secret, the old one deleted in
    // Console. The held signer is the old one: the first POST is refused (401, invalid
    // signature), the layer reloads the secret, and sends again with the new key.
    let second_pem = new_key(&emulator, "key-2");
    secrets
        .put_secret_value()
        .secret_id(&name)
        .secret_string(secret_json(&emulator, "key-2", &second_pem))
        .send()
        .await
        .unwrap();
    assert!(emulator.remove_signing_key(emulator.client_id(), "key-1"));
    assert_eq!(create().await, 201);
    // A 401 does not say which credential it refuses: the bearer layer (inside the signing
    // layer here, as in the proxy) first replays once with a fresh token, then the signing
    // layer reloads the key and signs again.
    assert_eq!(
        *sent_kids.lock().unwrap(),
        ["key-1", "key-1", "key-1", "key-2"],
        "the refused signature was sent again with the rotated key"
    );
    let stats = emulator.stats();
    assert_eq!(stats.payments_created, 2);
    assert_eq!(stats.signature_rejections, 2);

    // Without a refusal, the vault's TTL (an hour) brings a rotated key in.
    let third_pem = new_key(&emulator, "key-3");
    secrets
        .put_secret_value()
        .secret_id(&name)
        .secret_string(secret_json(&emulator, "key-3", &third_pem))
        .send()
        .await
        .unwrap();
    assert_eq!(create().await, 201);
    assert_eq!(
        sent_kids.lock().unwrap().last().unwrap(),
        "key-2",
        "within the TTL"
    );
    // Jump past the TTL without sleeping (moto is another process: the clock runs again at
    // once, so its requests' timeouts keep real time).
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3601)).await;
    tokio::time::resume();
    assert_eq!(create().await, 201);
    assert_eq!(
        sent_kids.lock().unwrap().last().unwrap(),
        "key-3",
        "after the TTL"
    );
    assert_eq!(
        emulator.stats().signature_rejections,
        2,
        "no refusal needed"
    );
    drop(third_pem);
}
