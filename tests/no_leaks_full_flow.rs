//! The whole flow with marker secrets and tokens: vault load, token fetch, bearer layer,
//! 401 recovery, rotation, and every failure kind. All `tracing` output at TRACE and every
//! error's and secret-holding type's `Display`/`Debug` are captured; no marker may appear.

use std::time::Duration;

use aws_sdk_secretsmanager::Client as SecretsClient;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::error::ErrorMetadata;
use aws_sdk_secretsmanager::operation::get_secret_value::{
    GetSecretValueError, GetSecretValueOutput,
};
use aws_sdk_secretsmanager::types::error::DecryptionFailure;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use tower::{Layer, ServiceExt};
use truelayer_auth::{
    ClientCredentials, CredentialsError, CredentialsSource, KeyedTokenCache, Scopes, TokenCache,
    TokenClient, TokenSource,
};
use truelayer_auth_emulator::{Emulator, Fault, KNOWN_SCOPES};
use truelayer_auth_signing::{Signer, SigningLayer};
use truelayer_auth_testkit::emulator::{environment, register_new_signer};
use truelayer_auth_testkit::logs::LogCapture;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};
use truelayer_auth_vault::{SecretFormat, SecretsManagerCredentials};

const SECRET: &str = "MARKER-SECRET-1f0c9";
const ROTATED: &str = "MARKER-ROTATED-77ab";
const TOKEN: &str = "MARKER-TOKEN-5e2d1";
const CLIENT: &str = "marker-client";

fn secret_value(secret: &str) -> GetSecretValueOutput {
    GetSecretValueOutput::builder()
        .version_id(format!("v-{}", &secret[7..13]))
        .secret_string(
            serde_json::json!({ "client_id": CLIENT, "client_secret": secret }).to_string(),
        )
        .build()
}

#[tokio::test]
async fn no_marker_reaches_logs_errors_or_debug_output() {
    let (capture, _logs) = LogCapture::trace();
    let mut shown: Vec<String> = Vec::new();
    let mut forbidden: Vec<String> = vec![SECRET.into(), ROTATED.into(), TOKEN.into()];

    let emulator = Emulator::start().await.unwrap();
    emulator.add_client(CLIENT, SECRET, KNOWN_SCOPES);
    let env = environment(&emulator);

    // The vault: the secret, then the rotated secret on reload.
    let get = mock!(SecretsClient::get_secret_value)
        .sequence()
        .output(|| secret_value(SECRET))
        .output(|| secret_value(ROTATED))
        .repeatedly()
        .build();
    let secrets = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&get], |c| c
        .retry_config(RetryConfig::disabled()));
    let vault = SecretsManagerCredentials::builder("prod/truelayer/marker")
        .client(secrets)
        .build()
        .await
        .unwrap();
    let loaded = vault.secret().await.unwrap();
    shown.push(format!("{vault:?} {loaded:?} {:?}", loaded.credentials()));

    // Success, and the bearer layer with 401 recovery.
    let tokens = TokenCache::builder(env.clone(), vault.clone())
        .scopes(Scopes::payments())
        .min_fetch_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    let first = tokens.token().await.unwrap();
    forbidden.push(first.secret().expose_secret().to_owned());
    // Requests are signed with a key registered for the marker client; its PEM is a marker.
    let signer = register_new_signer(&emulator, CLIENT, "marker-signing-key");
    let signing_pem = signer.private_key_pem().unwrap().to_string();
    forbidden.push(signing_pem.lines().nth(1).unwrap().to_owned());
    let signer = Signer::from_pem(signer.kid(), signing_pem.as_bytes()).unwrap();
    shown.push(format!("{signer:?}"));
    let api = BearerAuthLayer::new(tokens.clone())
        .replay_policy(CloneBodies)
        .layer(
            SigningLayer::new(signer)
                .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()),
        );
    let pay = || {
        Request::post(format!("{}/v3/payments", emulator.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let request = pay();
    shown.push(format!("{request:?}"));
    assert_eq!(api.clone().oneshot(request).await.unwrap().status(), 201);
    emulator.revoke_all_tokens();
    let recovered = api.clone().oneshot(pay()).await.unwrap();
    assert_eq!(recovered.status(), 201, "401 recovery");
    recovered.into_body().collect().await.unwrap();
    let second = tokens.token().await.unwrap();
    forbidden.push(second.secret().expose_secret().to_owned());

    // Rotation: the emulator takes the new secret; invalid_client makes the vault reload.
    emulator.set_secret(CLIENT, ROTATED);
    assert!(tokens.invalidate(&second));
    // The second rejection in a run: refreshed in the background after a 1 s pause.
    let third = loop {
        let token = tokens
            .replacement(&second, &http::Extensions::new())
            .await
            .unwrap();
        if token.id() != second.id() {
            break token;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    forbidden.push(third.secret().expose_secret().to_owned());
    shown.push(format!(
        "{first:?} {second:?} {third:?} {:?} {tokens:?} {:?}",
        third.authorization_header(),
        tokens.stats()
    ));

    // A marker token served by the token endpoint.
    let creds = ClientCredentials::new(CLIENT, ROTATED.into()).unwrap();
    let once = TokenClient::new().unwrap();
    emulator.fail_next([Fault::malformed(format!(
        r#"{{"access_token":"{TOKEN}","expires_in":3600,"token_type":"Bearer"}}"#
    ))]);
    let marker_token = once
        .request_token_once(&env, &creds, &Scopes::payments())
        .await
        .unwrap();
    shown.push(format!("{marker_token:?} {once:?} {creds:?}"));

    // Every failure kind of the token endpoint, some echoing the markers back.
    let faults = [
        Fault::Body {
            status: 401,
            content_type: "application/json".into(),
            body: format!(
                r#"{{"error":"invalid_client","error_description":"{ROTATED} is wrong"}}"#
            ),
        },
        Fault::Body {
            status: 400,
            content_type: "application/json".into(),
            body: format!(r#"{{"error":"{ROTATED}"}}"#),
        },
        Fault::malformed(format!(
            r#"{{"access_token":"{TOKEN}","expires_in":"{TOKEN}","token_type":"Bearer"}}"#
        )),
        Fault::malformed(format!(
            r#"{{"access_token":"{TOKEN} x","expires_in":9,"token_type":"Bearer"}}"#
        )),
        Fault::malformed(format!(
            r#"{{"access_token":"{TOKEN}","access_token":"{TOKEN}","expires_in":9,"token_type":"Bearer"}}"#
        )),
        Fault::malformed(format!(r#"{{"access_token":"{TOKEN}""#)),
        Fault::rate_limited(1),
        Fault::unavailable(),
        Fault::DropConnection,
        Fault::Truncate,
        Fault::Redirect {
            location: format!("https://evil.example/?t={TOKEN}&s={ROTATED}"),
        },
    ];
    for fault in faults {
        emulator.fail_next([fault]);
        let err = once
            .request_token_once(&env, &creds, &Scopes::payments())
            .await
            .unwrap_err();
        shown.push(format!("{err} {err:?}"));
        let as_credentials = CredentialsError::new(err.to_string());
        shown.push(format!("{as_credentials} {as_credentials:?}"));
    }

    // The layer's error, and the keyed cache, with rejected marker credentials.
    let wrong = ClientCredentials::new(CLIENT, SecretString::from(SECRET)).unwrap();
    let keyed = KeyedTokenCache::builder().build().unwrap();
    let err = keyed
        .token(&env, &wrong, &Scopes::payments())
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?} {keyed:?}"));
    let rejected = TokenCache::builder(env.clone(), wrong).build().unwrap();
    let err = BearerAuthLayer::new(rejected.clone())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        .oneshot(pay())
        .await
        .unwrap_err();
    shown.push(format!("{err} {err:?} {rejected:?}"));

    // The vault's failures.
    let failing = [
        mock!(SecretsClient::get_secret_value).then_error(|| {
            GetSecretValueError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message(format!("no {SECRET}"))
                    .build(),
            )
        }),
        mock!(SecretsClient::get_secret_value).then_error(|| {
            GetSecretValueError::DecryptionFailure(
                DecryptionFailure::builder().message(ROTATED).build(),
            )
        }),
        mock!(SecretsClient::get_secret_value).then_error(|| {
            GetSecretValueError::generic(
                ErrorMetadata::builder().code("ThrottlingException").build(),
            )
        }),
        mock!(SecretsClient::get_secret_value).then_output(|| {
            GetSecretValueOutput::builder()
                .secret_string(format!(r#"{{"client_id":"{SECRET}""#))
                .build()
        }),
        mock!(SecretsClient::get_secret_value).then_output(|| {
            GetSecretValueOutput::builder()
                .secret_string(format!(r#"{{"id":"x","secret":"{SECRET}"}}"#))
                .build()
        }),
    ];
    for rule in &failing {
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [rule], |c| c
            .retry_config(RetryConfig::disabled()));
        let source = SecretsManagerCredentials::builder("prod/truelayer/marker")
            .client(client)
            .build()
            .await
            .unwrap();
        let err = source.secret().await.unwrap_err();
        shown.push(format!("{err} {err:?}"));
        let through_trait = source.credentials().await.unwrap_err();
        shown.push(format!("{through_trait} {through_trait:?}"));
    }
    let parsed = SecretFormat::json().parse(&SecretString::from(format!(
        r#"{{"client_id":"a","client_secret":"{SECRET}","signing_private_key":"{ROTATED}"}}"#
    )));
    shown.push(format!("{parsed:?}"));

    let logs = capture.text();
    assert!(
        logs.contains("invalid_client") && logs.contains("TRACE"),
        "the capture sees TRACE logs"
    );
    for marker in &forbidden {
        assert!(!logs.contains(marker.as_str()), "the logs contain a marker");
        for text in &shown {
            assert!(
                !text.contains(marker.as_str()),
                "a formatted value contains a marker: {text}"
            );
        }
    }
}
