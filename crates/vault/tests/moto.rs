//! Against a real server speaking the Secrets Manager protocol: moto, started by
//! `cargo xtask ci`, which passes its address in `MOTO_URL`.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::Client;
use aws_smithy_types::Blob;
use secrecy::ExposeSecret;
use truelayer_auth::CredentialsSource;
use truelayer_auth_testkit::moto;
use truelayer_auth_vault::{SecretFormat, SecretProblem, SecretsManagerCredentials, VaultError};

/// The region these tests keep their secrets in.
const REGION: &str = "us-east-1";

/// A secret name no other test uses (moto's state is shared by the whole run).
fn unique(name: &str) -> String {
    format!("tests/{name}/{:016x}", fastrand_u64())
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// Writes a new version as AWSPENDING, as a rotation's first step; returns its version id.
async fn put_pending(admin: &Client, name: &str, value: &str) -> String {
    let out = admin
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    out.version_id().unwrap().to_owned()
}

/// Moves AWSCURRENT from `from` to `to`, as a rotation's last step.
async fn promote(admin: &Client, name: &str, to: &str, from: &str) {
    admin
        .update_secret_version_stage()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(to)
        .remove_from_version_id(from)
        .send()
        .await
        .unwrap();
}

async fn source(config: &SdkConfig, name: &str) -> SecretsManagerCredentials {
    SecretsManagerCredentials::builder(name)
        .sdk_config(config.clone())
        .build()
        .await
        .unwrap()
}

/// The client secret the source hands out now.
async fn current_secret(creds: &SecretsManagerCredentials) -> String {
    let c = creds.credentials().await.unwrap();
    c.client_secret().expose_secret().to_owned()
}

/// The client secret after a forced reload.
async fn reloaded_secret(creds: &SecretsManagerCredentials) -> String {
    let c = creds.reload().await.unwrap();
    c.client_secret().expose_secret().to_owned()
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn reads_a_json_secret_by_stage() {
    let config = moto::config(REGION).await;
    let name = unique("json");
    let version = moto::create_secret(
        &config,
        &name,
        r#"{"client_id":"merchant-a","client_secret":"s3cret-a","signing_key_id":"kid-1"}"#,
    )
    .await;
    let creds = source(&config, &name).await;
    let loaded = creds.secret().await.unwrap();
    assert_eq!(loaded.credentials().client_id(), "merchant-a");
    assert_eq!(
        loaded.credentials().client_secret().expose_secret(),
        "s3cret-a"
    );
    assert_eq!(loaded.signing_key_id(), Some("kid-1"));
    assert_eq!(loaded.version_id(), Some(version.as_str()));
    assert!(!format!("{loaded:?} {creds:?}").contains("s3cret-a"));
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn reads_plain_string_and_binary_secrets() {
    let config = moto::config(REGION).await;
    let plain = unique("plain");
    moto::create_secret(&config, &plain, "plain-s3cret\n").await;
    let creds = SecretsManagerCredentials::builder(&plain)
        .format(SecretFormat::plain_secret("merchant-p"))
        .sdk_config(config.clone())
        .build()
        .await
        .unwrap();
    let got = creds.credentials().await.unwrap();
    assert_eq!(
        (got.client_id(), got.client_secret().expose_secret()),
        ("merchant-p", "plain-s3cret")
    );

    let binary = unique("binary");
    Client::new(&config)
        .create_secret()
        .name(&binary)
        .secret_binary(Blob::new(
            br#"{"client_id":"merchant-b","client_secret":"bin-s3cret"}"#.to_vec(),
        ))
        .send()
        .await
        .unwrap();
    let got = source(&config, &binary).await.credentials().await.unwrap();
    assert_eq!(
        (got.client_id(), got.client_secret().expose_secret()),
        ("merchant-b", "bin-s3cret")
    );
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_missing_field_is_named_without_the_value() {
    let config = moto::config(REGION).await;
    let name = unique("missing");
    moto::create_secret(
        &config,
        &name,
        r#"{"client_id":"merchant-m","secret":"VALUE-NOT-TO-LEAK"}"#,
    )
    .await;
    let err = source(&config, &name).await.secret().await.unwrap_err();
    match &err {
        VaultError::Malformed { secret_id, problem } => {
            assert_eq!(secret_id, &name);
            assert_eq!(
                problem,
                &SecretProblem::MissingField("client_secret".into())
            );
        }
        other => panic!("{other:?}"),
    }
    let text = format!("{err} {err:?}");
    assert!(text.contains("client_secret") && text.contains(&name));
    assert!(!text.contains("VALUE-NOT-TO-LEAK"));
    assert!(!err.is_retryable());
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_missing_secret_is_not_found_naming_it() {
    let config = moto::config(REGION).await;
    let name = unique("absent");
    let err = source(&config, &name).await.secret().await.unwrap_err();
    assert!(
        matches!(&err, VaultError::NotFound { secret_id, .. } if secret_id == &name),
        "{err:?}"
    );
    assert!(err.to_string().contains(&name));
    let as_credentials_error = truelayer_auth::CredentialsError::from(err);
    assert!(!as_credentials_error.is_retryable());
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn rotation_pending_is_ignored_current_is_picked_up_on_reload() {
    let config = moto::config(REGION).await;
    let admin = Client::new(&config);
    let name = unique("rotation");
    let v1 = moto::create_secret(
        &config,
        &name,
        r#"{"client_id":"merchant-r","client_secret":"old"}"#,
    )
    .await;
    let creds = source(&config, &name).await;
    assert_eq!(current_secret(&creds).await, "old");

    // A rotation writes the new value as AWSPENDING first: it must be ignored.
    let v2 = put_pending(
        &admin,
        &name,
        r#"{"client_id":"merchant-r","client_secret":"new"}"#,
    )
    .await;
    assert_eq!(reloaded_secret(&creds).await, "old");

    // Then AWSCURRENT moves to it.
    promote(&admin, &name, &v2, &v1).await;
    assert_eq!(current_secret(&creds).await, "old", "cached within the TTL");
    assert_eq!(reloaded_secret(&creds).await, "new");
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn after_the_ttl_a_promoted_version_is_read() {
    let config = moto::config(REGION).await;
    let admin = Client::new(&config);
    let name = unique("ttl");
    let v1 = moto::create_secret(
        &config,
        &name,
        r#"{"client_id":"merchant-t","client_secret":"one"}"#,
    )
    .await;
    let creds = SecretsManagerCredentials::builder(&name)
        .ttl(Duration::from_secs(600))
        .sdk_config(config.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(current_secret(&creds).await, "one");

    // The clock is paused only to jump past the TTL: moto is another process, so requests run
    // on a running clock.
    let past_ttl = || async {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(601)).await;
        tokio::time::resume();
    };
    let v2 = put_pending(
        &admin,
        &name,
        r#"{"client_id":"merchant-t","client_secret":"two"}"#,
    )
    .await;
    promote(&admin, &name, &v2, &v1).await;
    assert_eq!(current_secret(&creds).await, "one", "within the TTL");
    past_ttl().await;
    assert_eq!(current_secret(&creds).await, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run cargo xtask ci"]
async fn concurrent_callers_all_get_the_secret() {
    let config = moto::config(REGION).await;
    let name = unique("herd");
    moto::create_secret(
        &config,
        &name,
        r#"{"client_id":"merchant-h","client_secret":"h"}"#,
    )
    .await;
    let creds = source(&config, &name).await;
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let c = creds.clone();
            tokio::spawn(async move { c.credentials().await.unwrap() })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().client_id(), "merchant-h");
    }
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn missing_aws_credentials_are_reported_as_such() {
    let config = SdkConfig::builder()
        .region(Region::new(REGION))
        .endpoint_url(moto::url())
        .behavior_version(BehaviorVersion::latest())
        .build();
    let err = source(&config, "tests/no-credentials")
        .await
        .secret()
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::MissingCredentials { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_configuration_without_a_region_is_refused_up_front() {
    let config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .build();
    let err = SecretsManagerCredentials::builder("any")
        .sdk_config(config)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::MissingRegion));
    assert!(err.to_string().contains("AWS_REGION"));
}
