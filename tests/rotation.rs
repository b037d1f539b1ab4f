//! A secret rotation end to end: the emulator rotates a client's secret, the new secret is
//! written to Secrets Manager (moto), the next token fetch gets `invalid_client`, the vault
//! reloads, the fetch succeeds, and no caller of the token cache sees an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use truelayer_auth::{CredentialsFuture, CredentialsSource, TokenCache, TokenSource};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::environment;
use truelayer_auth_testkit::moto;
use truelayer_auth_vault::SecretsManagerCredentials;

fn secret_json(id: &str, secret: &str) -> String {
    serde_json::json!({ "client_id": id, "client_secret": secret }).to_string()
}

/// Counts the reloads the token cache asks of the vault.
#[derive(Debug)]
struct CountingReloads {
    vault: SecretsManagerCredentials,
    reloads: AtomicU32,
}

impl CredentialsSource for CountingReloads {
    fn credentials(&self) -> CredentialsFuture<'_> {
        self.vault.credentials()
    }
    fn reload(&self) -> CredentialsFuture<'_> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        self.vault.reload()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_rotated_secret_is_picked_up_without_any_caller_seeing_an_error() {
    let config = moto::config("eu-west-2").await;
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let emulator = Emulator::start().await.unwrap();
    let name = format!("e2e/rotation/{}", std::process::id());
    moto::create_secret(
        &config,
        &name,
        &secret_json(emulator.client_id(), emulator.client_secret()),
    )
    .await;

    let vault = SecretsManagerCredentials::builder(&name)
        .sdk_config(config.clone())
        .build()
        .await
        .unwrap();
    let source = Arc::new(CountingReloads {
        vault,
        reloads: AtomicU32::new(0),
    });
    let tokens = TokenCache::builder(environment(&emulator), source.clone())
        .min_fetch_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let before = tokens.token().await.unwrap();

    // Rotation: TrueLayer (the emulator) issues a new secret; the rotation job stores it.
    let rotated = emulator.rotate_secret(emulator.client_id()).unwrap();
    secrets
        .put_secret_value()
        .secret_id(&name)
        .secret_string(secret_json(emulator.client_id(), &rotated))
        .send()
        .await
        .unwrap();

    // The API rejects the old token (say, it was revoked with the old secret): a refresh.
    assert!(tokens.invalidate(&before));
    let replay = tokens
        .replacement(&before, &http::Extensions::new())
        .await
        .expect("the replay gets the fresh token");
    assert_ne!(replay.id(), before.id());
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.token().await })
        })
        .collect();
    for caller in callers {
        let token = caller.await.unwrap().expect("no caller sees the rotation");
        assert_ne!(token.id(), before.id());
    }
    let stats = emulator.stats();
    assert_eq!(stats.token_errors, 1, "one invalid_client");
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(
        source.reloads.load(Ordering::SeqCst),
        1,
        "the vault reloaded once"
    );
}
