//! Errors moto cannot produce (AccessDenied, DecryptionFailure, throttling), with
//! `aws-smithy-mocks` in front of the real SDK client.

use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::error::ErrorMetadata;
use aws_sdk_secretsmanager::operation::describe_secret::{
    DescribeSecretError, DescribeSecretOutput,
};
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

fn current(version: &str) -> DescribeSecretOutput {
    DescribeSecretOutput::builder()
        .version_ids_to_stages(version, vec!["AWSCURRENT".to_owned()])
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

    let get = mock!(Client::get_secret_value).then_output(|| value("v1", "s1"));
    let describe = mock!(Client::describe_secret)
        .then_error(|| DescribeSecretError::generic(coded("AccessDeniedException")));
    let creds = source(&[&get, &describe]).await;
    creds.secret().await.unwrap();
    past_ttl().await;
    let err = creds.secret().await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::AccessDenied {
                action: "secretsmanager:DescribeSecret",
                ..
            }
        ),
        "{err:?}"
    );
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

    // With a cached value, a throttled check keeps serving it.
    let get = mock!(Client::get_secret_value).then_output(|| value("v1", "s1"));
    let describe = mock!(Client::describe_secret)
        .then_error(|| DescribeSecretError::generic(coded("ThrottlingException")));
    let creds = source(&[&get, &describe]).await;
    creds.secret().await.unwrap();
    past_ttl().await;
    let served = creds.credentials().await.unwrap();
    assert_eq!(served.client_secret().expose_secret(), "s1");
    assert_eq!(describe.num_calls(), 1);
    // And the next check waits a little instead of asking AWS on every call.
    for _ in 0..10 {
        creds.credentials().await.unwrap();
    }
    assert_eq!(describe.num_calls(), 1);
    assert_eq!(get.num_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_moved_stage_is_fetched_and_a_current_one_is_not() {
    let get = mock!(Client::get_secret_value)
        .sequence()
        .output(|| value("v1", "one"))
        .output(|| value("v2", "two"))
        .build();
    let describe = mock!(Client::describe_secret)
        .sequence()
        .output(|| current("v1"))
        .output(|| current("v2"))
        .build();
    let creds = source(&[&get, &describe]).await;
    assert_eq!(current_secret(&creds).await, "one");
    past_ttl().await;
    assert_eq!(current_secret(&creds).await, "one");
    assert_eq!(get.num_calls(), 1);
    past_ttl().await;
    assert_eq!(current_secret(&creds).await, "two");
    assert_eq!(get.num_calls(), 2);
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
