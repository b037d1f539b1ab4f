//! Every error's `Display` describes its own layer's failure and `source()` carries the
//! cause, never both: printed as a chain (`{:#}` with anyhow), no message appears twice.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::Client as SecretsClient;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::error::ErrorMetadata;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use truelayer_auth::{
    CacheKey, CredentialsError, CredentialsSource, EnvCredentials, Environment, KeyedTokenCache,
    Scopes, TokenCache, TokenClient, TokenSource,
};
use truelayer_auth_emulator::{Emulator, Fault};
use truelayer_auth_testkit::emulator::{credentials, environment};
use truelayer_auth_tower::BearerAuthLayer;
use truelayer_auth_vault::SecretsManagerCredentials;

/// The messages of `error` and its sources, outermost first.
fn chain(error: &(dyn StdError + 'static)) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        messages.push(cause.to_string());
        source = cause.source();
    }
    messages
}

fn assert_no_repeats(what: &str, error: &(dyn StdError + 'static)) {
    let messages = chain(error);
    for (i, outer) in messages.iter().enumerate() {
        assert!(
            !outer.trim().is_empty(),
            "{what}: an empty message in {messages:#?}"
        );
        for inner in &messages[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{what}: `{inner}` is printed twice in the chain {messages:#?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn no_error_chain_prints_a_message_twice() {
    let emulator = Emulator::start().await.unwrap();
    let env = environment(&emulator);
    let creds = credentials(&emulator);
    let client = TokenClient::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let elsewhere = Emulator::start().await.unwrap();

    // Every way the token request can fail.
    let faults = [
        Fault::Body {
            status: 401,
            content_type: "application/json".into(),
            body: r#"{"error":"invalid_client","error_description":"no such client"}"#.into(),
        },
        Fault::rate_limited(5),
        Fault::unavailable(),
        Fault::Body {
            status: 404,
            content_type: "text/plain".into(),
            body: "not here".into(),
        },
        Fault::Redirect {
            location: elsewhere.token_url(),
        },
        Fault::delay(Duration::from_secs(5)),
        Fault::DropConnection,
        Fault::Truncate,
        Fault::malformed(r#"{"access_token":"t","expires_in":"soon","token_type":"Bearer"}"#),
    ];
    for fault in faults {
        emulator.fail_next([fault.clone()]);
        let err = client
            .request_token_once(&env, &creds, &Scopes::payments())
            .await
            .unwrap_err();
        assert_no_repeats(&format!("{fault:?}"), &err);
    }
    let closed = Environment::custom("http://127.0.0.1:9").unwrap();
    let err = client
        .request_token_once(&closed, &creds, &Scopes::payments())
        .await
        .unwrap_err();
    assert!(err.is_connect());
    assert_no_repeats("connect", &err);
    let err = Environment::custom("http://auth.example.com").unwrap_err();
    assert_no_repeats("config", &err);

    // Credentials: the environment, and AWS Secrets Manager through the token cache and the
    // bearer layer (four layers deep).
    let env_source = EnvCredentials::with_names("TL_NO_SUCH_ID_VAR", "TL_NO_SUCH_SECRET_VAR");
    let err = env_source.credentials().await.unwrap_err();
    assert_no_repeats("environment credentials", &err);
    let denied = mock!(SecretsClient::get_secret_value).then_error(|| {
        GetSecretValueError::generic(
            ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message("not allowed")
                .build(),
        )
    });
    let secrets = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&denied], |c| c
        .retry_config(RetryConfig::disabled()));
    let vault = SecretsManagerCredentials::builder("prod/truelayer/merchant-a")
        .build_with_client(secrets)
        .unwrap();
    let vault_error = vault.secret().await.unwrap_err();
    assert_no_repeats("vault", &vault_error);
    assert_no_repeats("vault as credentials", &CredentialsError::from(vault_error));
    let tokens = TokenCache::builder(env.clone(), vault).build().unwrap();
    let err = tokens.token().await.unwrap_err();
    let messages = chain(&err);
    assert_eq!(
        messages.len(),
        3,
        "cache, credentials, vault: {messages:#?}"
    );
    assert_no_repeats("token cache with vault", &err);
    let err = BearerAuthLayer::new(tokens)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        .oneshot(
            http::Request::get(emulator.url())
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(chain(&err).len(), 4, "{:#?}", chain(&err));
    assert_no_repeats("bearer layer", &err);

    // The layer's transparent inner failure, the keyed source's own, and a wait timeout.
    let unreachable = TokenCache::builder(env.clone(), creds.clone())
        .build()
        .unwrap();
    unreachable.token().await.unwrap();
    let err = BearerAuthLayer::new(unreachable)
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        .oneshot(
            http::Request::get("http://127.0.0.1:9/v3/payments")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_no_repeats("inner service", &err);
    let keyed = KeyedTokenCache::builder().build().unwrap();
    let mut extensions = http::Extensions::new();
    extensions.insert(CacheKey::new(env.clone(), "nobody", Scopes::payments()));
    let err = TokenSource::token(&keyed, &extensions).await.unwrap_err();
    assert_no_repeats("keyed", &err);
    emulator.set_latency(Duration::from_secs(3600));
    let slow = TokenCache::builder(env, Arc::new(creds))
        .wait_timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    assert_no_repeats("wait timeout", &slow.token().await.unwrap_err());
}
