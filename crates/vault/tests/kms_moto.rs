//! The KMS signing backend against a real server speaking the KMS protocol: moto, started by
//! `cargo xtask ci`, which passes its address in `MOTO_URL`.
//!
//! Signing inputs here stay under 4 KiB, so KMS is asked with `MessageType::Raw`: moto's
//! DIGEST mode hashes the digest again, which real KMS does not (that path is tested with
//! `aws-smithy-mocks` in `tests/kms.rs`).

#![cfg(feature = "kms")]

use aws_config::SdkConfig;
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use truelayer_auth_signing::{Signable, SignerSource, Verifier};
use truelayer_auth_testkit::moto;
use truelayer_auth_vault::{KmsError, KmsSigningKey, SecretsManagerCredentials};

/// The region these tests keep their keys in.
const REGION: &str = "eu-west-2";
/// TrueLayer's id for the uploaded public key.
const KID: &str = "45fc75cf-5649-4134-84b3-192c2c78e990";
const IDEMPOTENCY_KEY: &str = "2f4e6f0a-7c1b-4b8e-9a55-6a2f1c3d4e5f";
const BODY: &[u8] = br#"{"amount_in_minor":100,"currency":"GBP"}"#;

/// Creates a KMS key of this spec and usage in moto; returns its id.
async fn create_key(config: &SdkConfig, spec: KeySpec, usage: KeyUsageType) -> String {
    let created = aws_sdk_kms::Client::new(config)
        .create_key()
        .key_spec(spec)
        .key_usage(usage)
        .description("truelayer-auth-vault tests")
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating a KMS key in moto: {e:?}"));
    created
        .key_metadata()
        .expect("moto describes the new key")
        .key_id()
        .to_owned()
}

fn payment() -> Signable<'static> {
    Signable::new("POST", "/v3/payments")
        .header("Idempotency-Key", IDEMPOTENCY_KEY)
        .body(BODY)
}

/// Checks `tl_signature` with this project's verifier and with TrueLayer's own crate.
fn verify_with_both(public_key_pem: &str, tl_signature: &str) {
    Verifier::from_public_pem(public_key_pem.as_bytes())
        .unwrap()
        .verify(&payment(), tl_signature)
        .unwrap();
    truelayer_signing::verify_with_pem(public_key_pem.as_bytes())
        .method(truelayer_signing::Method::Post)
        .path("/v3/payments")
        .header("Idempotency-Key", IDEMPOTENCY_KEY.as_bytes())
        .body(BODY)
        .build_verifier()
        .verify(tl_signature)
        .unwrap();
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_p521_key_in_kms_signs_requests_both_verifiers_accept() {
    let config = moto::config(REGION).await;
    let key_id = create_key(&config, KeySpec::EccNistP521, KeyUsageType::SignVerify).await;
    let key = KmsSigningKey::new(aws_sdk_kms::Client::new(&config), &key_id)
        .await
        .unwrap();
    assert_eq!(key.key_id(), key_id);
    let signer = key.signer(KID).unwrap();
    let tl_signature = signer.sign(&payment()).await.unwrap();
    verify_with_both(key.public_key_pem(), &tl_signature);
    assert_eq!(
        truelayer_auth_signing::jws_header(&tl_signature)
            .unwrap()
            .kid,
        KID
    );
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_secret_naming_a_kms_key_signs_with_it_through_one_aws_configuration() {
    let config = moto::config(REGION).await;
    let key_id = create_key(&config, KeySpec::EccNistP521, KeyUsageType::SignVerify).await;
    let name = format!("tests/kms/{key_id}");
    moto::create_secret(
        &config,
        &name,
        &format!(
            r#"{{"client_id":"merchant-a","client_secret":"s3cret","signing_key_id":"{KID}","signing_kms_key_id":"{key_id}"}}"#
        ),
    )
    .await;
    // One SdkConfig: Secrets Manager and KMS both.
    let creds = SecretsManagerCredentials::builder(&name)
        .sdk_config(config.clone())
        .build()
        .await
        .unwrap();
    let signer = creds.signer(&http::Extensions::new()).await.unwrap();
    assert_eq!(signer.kid(), KID);
    let tl_signature = signer.sign(&payment()).await.unwrap();
    let public = KmsSigningKey::new(aws_sdk_kms::Client::new(&config), &key_id)
        .await
        .unwrap();
    verify_with_both(public.public_key_pem(), &tl_signature);
}

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn keys_that_cannot_sign_for_truelayer_are_refused_when_set_up() {
    let config = moto::config(REGION).await;
    let client = aws_sdk_kms::Client::new(&config);
    for (spec, usage) in [
        (KeySpec::EccNistP256, KeyUsageType::SignVerify),
        (KeySpec::Rsa2048, KeyUsageType::SignVerify),
    ] {
        let key_id = create_key(&config, spec.clone(), usage).await;
        let error = KmsSigningKey::new(client.clone(), &key_id)
            .await
            .unwrap_err();
        assert!(
            matches!(error, KmsError::WrongKey { .. }),
            "{spec:?}: {error:?}"
        );
        assert!(error.to_string().contains(spec.as_str()), "{error}");
    }
    let missing = KmsSigningKey::new(client, "alias/no-such-key")
        .await
        .unwrap_err();
    assert!(matches!(missing, KmsError::NotFound { .. }), "{missing:?}");
    assert!(missing.to_string().contains("alias/no-such-key"));
    assert!(!missing.is_retryable());
}
