//! Errors moto cannot produce (AccessDenied, DecryptionFailure, throttling), with
//! `aws-smithy-mocks` in front of the real SDK client.

use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::error::ErrorMetadata;
use aws_sdk_secretsmanager::operation::get_secret_value::{
    GetSecretValueError, GetSecretValueOutput,
};
use aws_sdk_secretsmanager::types::error::DecryptionFailure;
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use secrecy::ExposeSecret;
use truelayer_auth::{CredentialsError, CredentialsSource};
use truelayer_auth_vault::{SecretsManagerCredentials, VaultError};

const ID: &str = "prod/truelayer/merchant-a";

fn client(rules: &[&Rule]) -> Client {
    mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, rules, |c| c
        .retry_config(RetryConfig::disabled()))
}

async fn source(rules: &[&Rule]) -> SecretsManagerCredentials {
    SecretsManagerCredentials::builder(ID)
        .ttl(Duration::from_secs(60))
        .client(client(rules))
        .build()
        .await
        .unwrap()
}

fn coded(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code(code)
        .message("denied or throttled by the mock")
        .build()
}

fn value(version: &str, secret: &str) -> GetSecretValueOutput {
    GetSecretValueOutput::builder()
        .version_id(version)
        .secret_string(format!(
            r#"{{"client_id":"merchant-a","client_secret":"{secret}"}}"#
        ))
        .build()
}

async fn past_ttl() {
    tokio::time::advance(Duration::from_secs(61)).await;
}

/// The client secret the source hands out now.
async fn current_secret(creds: &SecretsManagerCredentials) -> String {
    let c = creds.credentials().await.unwrap();
    c.client_secret().expose_secret().to_owned()
}

#[tokio::test(start_paused = true)]
async fn access_denied_names_the_missing_iam_action() {
    let get = mock!(Client::get_secret_value)
        .then_error(|| GetSecretValueError::generic(coded("AccessDeniedException")));
    let err = source(&[&get]).await.secret().await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::AccessDenied {
                action: "secretsmanager:GetSecretValue",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("secretsmanager:GetSecretValue") && err.to_string().contains(ID)
    );
    assert!(!err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn once_a_secret_is_held_it_is_served_through_any_failure_to_read_it_again() {
    for (what, error) in [
        ("access denied", coded("AccessDeniedException")),
        ("expired AWS credentials", coded("ExpiredTokenException")),
        ("an outage", coded("InternalServiceError")),
        ("throttling", coded("ThrottlingException")),
    ] {
        let get = mock!(Client::get_secret_value)
            .sequence()
            .output(|| value("v1", "s1"))
            .error(move || GetSecretValueError::generic(error.clone()))
            .output(|| value("v2", "s2"))
            .build();
        let creds = source(&[&get]).await;
        assert_eq!(current_secret(&creds).await, "s1");
        past_ttl().await;
        assert_eq!(
            current_secret(&creds).await,
            "s1",
            "{what}: the held secret is served"
        );
        assert_eq!(get.num_calls(), 2, "{what}");
        // Not asked again on every call, but again after a short while.
        for _ in 0..10 {
            creds.credentials().await.unwrap();
        }
        assert_eq!(get.num_calls(), 2, "{what}");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(current_secret(&creds).await, "s2", "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn expired_aws_credentials_are_retryable() {
    let get = mock!(Client::get_secret_value)
        .then_error(|| GetSecretValueError::generic(coded("ExpiredTokenException")));
    let err = source(&[&get]).await.secret().await.unwrap_err();
    assert!(
        matches!(err, VaultError::AwsCredentialsUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(CredentialsError::from(err).is_retryable());
}

#[tokio::test(start_paused = true)]
async fn a_kms_decryption_failure_says_what_to_grant() {
    let get = mock!(Client::get_secret_value).then_error(|| {
        GetSecretValueError::DecryptionFailure(
            DecryptionFailure::builder().message("KMS said no").build(),
        )
    });
    let err = source(&[&get]).await.secret().await.unwrap_err();
    assert!(matches!(err, VaultError::Decryption { .. }), "{err:?}");
    assert!(err.to_string().contains("kms:Decrypt"));
    assert!(!err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retryable_and_the_cache_is_served_through_it() {
    let get = mock!(Client::get_secret_value)
        .then_error(|| GetSecretValueError::generic(coded("ThrottlingException")));
    let err = source(&[&get]).await.secret().await.unwrap_err();
    assert!(matches!(err, VaultError::Throttled { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        CredentialsError::from(err).is_retryable(),
        "the token cache will retry it"
    );
    // With a secret held, a throttled re-read is not an error: the held secret is served.
    let get = mock!(Client::get_secret_value)
        .sequence()
        .output(|| value("v1", "held"))
        .error(|| GetSecretValueError::generic(coded("ThrottlingException")))
        .build();
    let creds = source(&[&get]).await;
    assert_eq!(current_secret(&creds).await, "held");
    past_ttl().await;
    assert_eq!(current_secret(&creds).await, "held", "served through it");
    assert_eq!(get.num_calls(), 2, "the re-read was made, and throttled");
}

#[tokio::test(start_paused = true)]
async fn the_secret_is_read_again_after_the_ttl_and_shared_within_it() {
    let get = mock!(Client::get_secret_value)
        .sequence()
        .output(|| value("v1", "one"))
        .output(|| value("v2", "two"))
        .build();
    let creds = source(&[&get]).await;
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let c = creds.clone();
            tokio::spawn(async move { c.credentials().await.unwrap() })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().client_secret().expose_secret(), "one");
    }
    assert_eq!(get.num_calls(), 1, "concurrent callers share one read");
    past_ttl().await;
    assert_eq!(current_secret(&creds).await, "two");
    assert_eq!(get.num_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_reload_returns_a_secret_read_after_it_was_asked_for() {
    // A read that was already under way when the reload was asked for fails; the reload must
    // not answer with the secret held from before (the one TrueLayer just rejected).
    let get = mock!(Client::get_secret_value)
        .sequence()
        .output(|| value("v1", "rejected"))
        .error(|| GetSecretValueError::generic(coded("ThrottlingException")))
        .output(|| value("v2", "rotated"))
        .build();
    let creds = source(&[&get]).await;
    assert_eq!(current_secret(&creds).await, "rejected");
    past_ttl().await;
    let refresh = {
        let c = creds.clone();
        tokio::spawn(async move { c.secret().await.unwrap() })
    };
    tokio::task::yield_now().await; // the refresh's read is under way
    let reloaded = creds.reload_secret().await.unwrap();
    assert_eq!(
        reloaded.credentials().client_secret().expose_secret(),
        "rotated"
    );
    refresh.await.unwrap();
    assert_eq!(get.num_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_uncoded_5xx_is_retryable_and_an_uncoded_4xx_is_not() {
    use aws_sdk_secretsmanager::config::http::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    for (status, retryable) in [(503, true), (400, false)] {
        let get = mock!(Client::get_secret_value).then_http_response(move || {
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from("{}"))
        });
        let err = source(&[&get]).await.secret().await.unwrap_err();
        assert!(
            matches!(err, VaultError::Service { .. }),
            "{status}: {err:?}"
        );
        assert_eq!(err.is_retryable(), retryable, "{status}: {err:?}");
    }
}
