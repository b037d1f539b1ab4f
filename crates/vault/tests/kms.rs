//! The KMS signing backend against `aws-smithy-mocks`: KMS's answers are made by a local
//! P-521 key, as KMS would make them (a DER signature of the SHA-512 digest), so what the
//! backend makes of them is verified for real. Also what moto cannot do: the DIGEST path
//! (moto hashes the digest again), throttling, denials, answers that are wrong.

#![cfg(feature = "kms")]

mod support;

use std::time::Duration;

use aws_sdk_kms::Client;
use aws_sdk_kms::operation::get_public_key::GetPublicKeyOutput;
use aws_sdk_kms::operation::sign::{SignInput, SignOutput};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use aws_smithy_mocks::mock;
use p521::ecdsa::signature::hazmat::PrehashSigner;
use support::{
    ALIAS, ARN, KID, LocalKey, client, kms_error, payment, public_key_rule, sha512, sign_rule,
};
use truelayer_auth_signing::{SignatureError, Signer, SigningBackend, Verifier};
use truelayer_auth_vault::{KmsError, KmsSigningKey};

/// The KMS error behind a signing failure.
fn kms_cause(error: &SignatureError) -> &KmsError {
    let SignatureError::Backend(cause) = error else {
        panic!("not a backend failure: {error:?}");
    };
    cause
        .downcast_ref::<KmsError>()
        .unwrap_or_else(|| panic!("not a KmsError: {cause:?}"))
}

#[tokio::test]
async fn a_large_body_is_signed_over_its_sha512_digest_and_both_verifiers_accept_it() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let (sign, seen) = sign_rule(&local);
    let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
        .await
        .unwrap();
    let signer = Signer::with_backend(KID, key.clone()).unwrap();
    // A payment with a long remitter list: well over the 4 KiB KMS takes RAW.
    let body = format!(
        r#"{{"amount_in_minor":100,"metadata":"{}"}}"#,
        "x".repeat(8_000)
    );
    let request = payment(body.as_bytes());
    let tl_signature = signer.sign(&request).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, MessageType::Digest);
    assert_eq!(seen[0].1.len(), 64, "a SHA-512 digest");
    Verifier::from_public_pem(key.public_key_pem().as_bytes())
        .unwrap()
        .verify(&request, &tl_signature)
        .unwrap();
    truelayer_signing::verify_with_pem(key.public_key_pem().as_bytes())
        .method(truelayer_signing::Method::Post)
        .path("/v3/payments")
        .header("Idempotency-Key", b"2f4e6f0a-7c1b-4b8e-9a55-6a2f1c3d4e5f")
        .body(body.as_bytes())
        .build_verifier()
        .verify(&tl_signature)
        .unwrap();
    assert_eq!(get.num_calls(), 1, "the public key is asked for once");
}

#[tokio::test]
async fn a_signing_input_of_4096_bytes_goes_raw_and_one_of_4097_as_its_digest() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let (sign, seen) = sign_rule(&local);
    let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
        .await
        .unwrap();
    let verifying = p521::ecdsa::VerifyingKey::from(&local.signing);
    for (len, expected) in [(4096, MessageType::Raw), (4097, MessageType::Digest)] {
        let input = vec![b'a'; len];
        let signature = key.sign(&input).await.unwrap();
        let (message_type, message) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(message_type, expected, "{len} bytes");
        match expected {
            MessageType::Raw => assert_eq!(message, input),
            _ => assert_eq!(message, sha512(&input)),
        }
        // The 132-byte r || s of a JWS, over the input itself.
        assert_eq!(signature.len(), 132);
        let signature = p521::ecdsa::Signature::from_slice(&signature).unwrap();
        p521::ecdsa::signature::hazmat::PrehashVerifier::verify_prehash(
            &verifying,
            &sha512(&input),
            &signature,
        )
        .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_and_internal_errors_are_retried_by_the_sdk_three_times_then_retryable() {
    for (status, code) in [(400, "ThrottlingException"), (500, "KMSInternalException")] {
        let local = LocalKey::new();
        let get = public_key_rule(&local);
        let sign = mock!(Client::sign)
            .sequence()
            .http_response(move || kms_error(status, code))
            .repeatedly()
            .build();
        let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
            .await
            .unwrap();
        let error = key
            .signer(KID)
            .unwrap()
            .sign(&payment(b"{}"))
            .await
            .unwrap_err();
        assert_eq!(sign.num_calls(), 3, "{code}: the SDK's standard 3 attempts");
        let cause = kms_cause(&error);
        assert!(cause.is_retryable(), "{code}: {cause:?}");
        assert!(cause.to_string().contains(ALIAS), "{cause}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_sign_throttled_twice_signs_on_the_third_attempt() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let input = b"eyJhbGciOiJFUzUxMiJ9..payload";
    // The mock cannot see the input of a retried attempt: KMS's answer is made up front.
    let answer = local.sign(
        &SignInput::builder()
            .message(Blob::new(input.as_slice()))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha512)
            .build()
            .unwrap(),
    );
    let sign = mock!(Client::sign)
        .sequence()
        .http_response(|| kms_error(400, "ThrottlingException"))
        .times(2)
        .output(move || answer.clone())
        .build();
    let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
        .await
        .unwrap();
    let signature = key.sign(input).await.unwrap();
    assert_eq!(sign.num_calls(), 3);
    let signature = p521::ecdsa::Signature::from_slice(&signature).unwrap();
    p521::ecdsa::signature::hazmat::PrehashVerifier::verify_prehash(
        &p521::ecdsa::VerifyingKey::from(&local.signing),
        &sha512(input),
        &signature,
    )
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn access_denied_is_not_retried_and_names_kms_sign_and_the_key() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let sign = mock!(Client::sign).then_http_response(|| kms_error(400, "AccessDeniedException"));
    let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
        .await
        .unwrap();
    let error = key
        .signer(KID)
        .unwrap()
        .sign(&payment(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(sign.num_calls(), 1, "not retried");
    let cause = kms_cause(&error);
    assert!(
        matches!(
            cause,
            KmsError::AccessDenied {
                action: "kms:Sign",
                ..
            }
        ),
        "{cause:?}"
    );
    assert!(!cause.is_retryable());
    let message = cause.to_string();
    assert!(
        message.contains("kms:Sign") && message.contains(ALIAS),
        "{message}"
    );
}

#[tokio::test]
async fn access_denied_at_get_public_key_names_that_action() {
    let get = mock!(Client::get_public_key)
        .then_http_response(|| kms_error(400, "AccessDeniedException"));
    let error = KmsSigningKey::new(client(&[&get]), ALIAS)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("kms:GetPublicKey") && error.to_string().contains(ALIAS),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn keys_that_are_not_p521_sign_verify_are_refused_saying_what_they_are() {
    let local = LocalKey::new();
    // Each fails one check: the key spec, the key usage, the signing algorithms.
    for (spec, usage, algorithm, named) in [
        (
            KeySpec::EccNistP256,
            KeyUsageType::SignVerify,
            SigningAlgorithmSpec::EcdsaSha512,
            "ECC_NIST_P256",
        ),
        (
            KeySpec::EccNistP521,
            KeyUsageType::EncryptDecrypt,
            SigningAlgorithmSpec::EcdsaSha512,
            "ENCRYPT_DECRYPT",
        ),
        (
            KeySpec::EccNistP521,
            KeyUsageType::SignVerify,
            SigningAlgorithmSpec::EcdsaSha256,
            "[ECDSA_SHA_256]",
        ),
    ] {
        let spki = local.spki_der.clone();
        let get = mock!(Client::get_public_key).then_output(move || {
            GetPublicKeyOutput::builder()
                .key_id(ARN)
                .public_key(Blob::new(spki.clone()))
                .key_spec(spec.clone())
                .key_usage(usage.clone())
                .signing_algorithms(algorithm.clone())
                .build()
        });
        let error = KmsSigningKey::new(client(&[&get]), ALIAS)
            .await
            .unwrap_err();
        assert!(
            matches!(error, KmsError::WrongKey { .. }),
            "{named}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(named)
                && message.contains("needs an ECC_NIST_P521 key")
                && message.contains(ALIAS),
            "{message}"
        );
        assert!(!error.is_retryable());
    }
}

#[tokio::test]
async fn a_public_key_that_is_not_p521_despite_the_key_spec_is_refused() {
    // A P-256 SubjectPublicKeyInfo under an ECC_NIST_P521 key spec.
    let p256_spki = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let p256_spki =
        aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(
            aws_lc_rs::signature::KeyPair::public_key(&p256_spki),
        )
        .unwrap()
        .as_ref()
        .to_vec();
    let get = mock!(Client::get_public_key).then_output(move || {
        GetPublicKeyOutput::builder()
            .key_id(ARN)
            .public_key(Blob::new(p256_spki.clone()))
            .key_spec(KeySpec::EccNistP521)
            .key_usage(KeyUsageType::SignVerify)
            .signing_algorithms(SigningAlgorithmSpec::EcdsaSha512)
            .build()
    });
    let error = KmsSigningKey::new(client(&[&get]), ALIAS)
        .await
        .unwrap_err();
    assert!(
        matches!(error, KmsError::MalformedAnswer { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("P-521"), "{error}");
}

#[tokio::test]
async fn a_public_key_answer_without_the_keys_arn_is_refused_not_signed_by_alias() {
    let local = LocalKey::new();
    let get = mock!(Client::get_public_key).then_output(move || {
        let mut answer = local.public_key();
        answer.key_id = None;
        answer
    });
    let error = KmsSigningKey::new(client(&[&get]), ALIAS)
        .await
        .unwrap_err();
    assert!(
        matches!(error, KmsError::MalformedAnswer { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(ALIAS), "{error}");
}

#[tokio::test]
async fn a_signature_that_is_not_der_is_a_clear_error() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    for (what, answer) in [
        // What a JWS wants, but not what KMS answers: must not be taken for DER.
        ("raw r || s", vec![1u8; 132]),
        ("truncated DER", {
            let der: p521::ecdsa::DerSignature = local.signing.sign_prehash(&[7; 64]).unwrap();
            der.as_bytes()[..40].to_vec()
        }),
        ("empty", Vec::new()),
        ("DER with a byte after it", {
            let der: p521::ecdsa::DerSignature = local.signing.sign_prehash(&[7; 64]).unwrap();
            let mut bytes = der.as_bytes().to_vec();
            bytes.push(0);
            bytes
        }),
    ] {
        let sign = mock!(Client::sign).then_output(move || {
            SignOutput::builder()
                .key_id(ARN)
                .signature(Blob::new(answer.clone()))
                .build()
        });
        let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
            .await
            .unwrap();
        let error = key.sign(b"input").await.unwrap_err();
        let error = error
            .downcast_ref::<KmsError>()
            .unwrap_or_else(|| panic!("{what}: {error:?}"));
        assert!(
            matches!(error, KmsError::MalformedAnswer { .. }),
            "{what}: {error:?}"
        );
        assert!(error.to_string().contains("DER"), "{what}: {error}");
        assert!(!error.is_retryable(), "{what}");
    }
}

/// An HTTP client that answers anything but `Sign` at once (the mock interceptor then puts
/// its answer in) and never answers `Sign`.
#[derive(Debug, Clone)]
struct SilentOnSign;

mod silent {
    use aws_smithy_runtime_api::client::http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::SilentOnSign;

    impl HttpConnector for SilentOnSign {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            if request.headers().get("x-amz-target") == Some("TrentService.Sign") {
                return HttpConnectorFuture::new(std::future::pending());
            }
            let ok = HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from("{}"));
            HttpConnectorFuture::ready(Ok(ok))
        }
    }

    impl HttpClient for SilentOnSign {
        fn http_connector(
            &self,
            _settings: &HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> SharedHttpConnector {
            SharedHttpConnector::new(self.clone())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_sign_that_gets_no_answer_fails_after_five_seconds_with_its_retries() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let interceptor = aws_smithy_mocks::MockResponseInterceptor::new()
        .with_rule(&get)
        .allow_passthrough();
    let client = Client::from_conf(
        aws_sdk_kms::Config::builder()
            .with_test_defaults_v2()
            .http_client(SilentOnSign)
            .interceptor(interceptor)
            .build(),
    );
    let key = KmsSigningKey::new(client, ALIAS).await.unwrap();
    let started = tokio::time::Instant::now();
    // Without timeouts the call would wait for ever: fail instead.
    let error = tokio::time::timeout(Duration::from_secs(60), key.sign(b"input"))
        .await
        .expect("the SDK's timeouts end the call")
        .unwrap_err();
    let waited = started.elapsed();
    let error = error.downcast_ref::<KmsError>().unwrap();
    assert!(matches!(error, KmsError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("kms:Sign"), "{error}");
    // 2 s a attempt, 5 s for the call: a retry was made, and the call was cut at 5 s.
    assert!(
        waited > Duration::from_secs(2) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn debug_shows_the_key_id_only() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let key = KmsSigningKey::new(client(&[&get]), ALIAS).await.unwrap();
    assert_eq!(
        format!("{key:?}"),
        format!("KmsSigningKey {{ key_id: \"{ALIAS}\", .. }}")
    );
    let signer = format!("{:?}", key.signer(KID).unwrap());
    assert!(
        signer.contains(ALIAS) && !signer.contains("PUBLIC KEY") && !signer.contains("Client"),
        "{signer}"
    );
    assert!(
        key.public_key_pem()
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
    assert_eq!(key.key_id(), ALIAS);
}

/// A secret that names its signing key in KMS: the signer `SecretsManagerCredentials` hands
/// the signing layer.
mod secret {
    use std::time::Duration;

    use aws_sdk_secretsmanager::config::retry::RetryConfig;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_smithy_mocks::{Rule, RuleMode, mock_client};
    use p521::pkcs8::{EncodePublicKey, LineEnding};
    use truelayer_auth_signing::{Signer, SignerSource, Verifier};
    use truelayer_auth_vault::{SecretProblem, SecretsManagerCredentials, VaultError};

    use super::*;

    const SECRET_ID: &str = "prod/truelayer/merchant-a";

    fn secrets_manager(value: String) -> (aws_sdk_secretsmanager::Client, Rule) {
        let get = mock!(aws_sdk_secretsmanager::Client::get_secret_value).then_output(move || {
            GetSecretValueOutput::builder()
                .secret_string(value.clone())
                .build()
        });
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&get], |c| c
            .retry_config(RetryConfig::disabled()));
        (client, get)
    }

    fn naming(fields: &str) -> String {
        format!(r#"{{"client_id":"merchant-a","client_secret":"s3cret",{fields}}}"#)
    }

    async fn signer(creds: &SecretsManagerCredentials) -> Result<Signer, VaultError> {
        SignerSource::signer(creds, &http::Extensions::new())
            .await
            .map_err(|e| {
                e.downcast_ref::<VaultError>()
                    .expect("a VaultError")
                    .clone()
            })
    }

    #[tokio::test(start_paused = true)]
    async fn signs_with_the_kms_key_under_the_secrets_signing_key_id_asking_for_it_once() {
        let local = LocalKey::new();
        let get_key = public_key_rule(&local);
        let (sign, _) = sign_rule(&local);
        let (sm, get_secret) = secrets_manager(naming(&format!(
            r#""signing_key_id":"{KID}","signing_kms_key_id":"{ALIAS}""#
        )));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .kms_client(client(&[&get_key, &sign]))
            .ttl(Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        let loaded = creds.secret().await.unwrap();
        assert_eq!(loaded.signing_kms_key_id(), Some(ALIAS));

        let signer = signer(&creds).await.unwrap();
        assert_eq!(signer.kid(), KID);
        let request = payment(br#"{"amount_in_minor":100}"#);
        let tl_signature = signer.sign(&request).await.unwrap();
        let public_pem = local
            .signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        Verifier::from_public_pem(public_pem.as_bytes())
            .unwrap()
            .verify(&request, &tl_signature)
            .unwrap();
        assert_eq!(sign.num_calls(), 1);

        // Read again after the TTL: the same KMS key, so its public key is not asked again.
        tokio::time::advance(Duration::from_secs(61)).await;
        let again = super::secret::signer(&creds).await.unwrap();
        assert_eq!(get_secret.num_calls(), 2, "the secret was read again");
        assert!(again.same_key(&signer));
        assert_eq!(get_key.num_calls(), 1, "GetPublicKey once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_kid_for_the_same_alias_is_a_rotation_and_asks_kms_again() {
        let local = LocalKey::new();
        let get_key = public_key_rule(&local);
        let get = mock!(aws_sdk_secretsmanager::Client::get_secret_value)
            .sequence()
            .output(|| {
                GetSecretValueOutput::builder()
                    .secret_string(naming(&format!(
                        r#""signing_key_id":"kid-1","signing_kms_key_id":"{ALIAS}""#
                    )))
                    .build()
            })
            .output(|| {
                GetSecretValueOutput::builder()
                    .secret_string(naming(&format!(
                        r#""signing_key_id":"kid-2","signing_kms_key_id":"{ALIAS}""#
                    )))
                    .build()
            })
            .build();
        let sm = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&get], |c| c
            .retry_config(RetryConfig::disabled()));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .kms_client(client(&[&get_key]))
            .ttl(Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        assert_eq!(signer(&creds).await.unwrap().kid(), "kid-1");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(signer(&creds).await.unwrap().kid(), "kid-2");
        // The alias may point at another key now: it is resolved again.
        assert_eq!(get_key.num_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_after_a_rejection_asks_kms_again_and_an_alias_moved_to_another_key_is_a_new_key()
     {
        // The alias points at key A, then (moved, same kid) at key B.
        let (a, b) = (LocalKey::new(), LocalKey::new());
        let get_key = mock!(Client::get_public_key)
            .sequence()
            .output(move || a.public_key())
            .output(move || b.public_key())
            .build();
        let (sm, _) = secrets_manager(naming(&format!(
            r#""signing_key_id":"{KID}","signing_kms_key_id":"{ALIAS}""#
        )));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .kms_client(client(&[&get_key]))
            .build()
            .await
            .unwrap();
        let before = signer(&creds).await.unwrap();
        // What the signing layer does after a 401: read again.
        let after = SignerSource::reload(&creds, &http::Extensions::new())
            .await
            .unwrap();
        assert_eq!(get_key.num_calls(), 2, "the alias was resolved again");
        assert!(
            !after.same_key(&before),
            "another key under the same kid is a change, so the request is re-signed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_queued_behind_a_failed_kms_key_set_up_get_that_failure_not_a_call_each() {
        let get_key = mock!(Client::get_public_key)
            .sequence()
            .http_response(|| kms_error(400, "AccessDeniedException"))
            .repeatedly()
            .build();
        let (sm, _) = secrets_manager(naming(&format!(
            r#""signing_key_id":"{KID}","signing_kms_key_id":"{ALIAS}""#
        )));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .kms_client(client(&[&get_key]))
            .build()
            .await
            .unwrap();
        for _ in 0..10 {
            assert!(matches!(
                signer(&creds).await,
                Err(VaultError::KmsKey { .. })
            ));
        }
        assert_eq!(get_key.num_calls(), 1, "one call for ten requests");
        // Later, KMS is asked again.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(signer(&creds).await.is_err());
        assert_eq!(get_key.num_calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn while_kms_is_throttled_at_a_rotation_the_key_held_before_still_signs() {
        let local = LocalKey::new();
        let old_key = public_key_rule(&local);
        let new_key = mock!(Client::get_public_key)
            .match_requests(|input| input.key_id() == Some("alias/new"))
            .sequence()
            .http_response(|| kms_error(400, "ThrottlingException"))
            .repeatedly()
            .build();
        let get = mock!(aws_sdk_secretsmanager::Client::get_secret_value)
            .sequence()
            .output(|| {
                GetSecretValueOutput::builder()
                    .secret_string(naming(&format!(
                        r#""signing_key_id":"kid-1","signing_kms_key_id":"{ALIAS}""#
                    )))
                    .build()
            })
            .output(|| {
                GetSecretValueOutput::builder()
                    .secret_string(naming(
                        r#""signing_key_id":"kid-2","signing_kms_key_id":"alias/new""#,
                    ))
                    .build()
            })
            .build();
        let sm = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&get], |c| c
            .retry_config(RetryConfig::disabled()));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .kms_client(client(&[&old_key, &new_key]))
            .ttl(Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        assert_eq!(signer(&creds).await.unwrap().kid(), "kid-1");
        tokio::time::advance(Duration::from_secs(61)).await;
        // The new version names a key KMS cannot set up just now: the held one signs.
        assert_eq!(signer(&creds).await.unwrap().kid(), "kid-1");
        assert!(new_key.num_calls() >= 1, "the new key was asked for");
    }

    #[tokio::test]
    async fn a_secret_must_name_one_signing_key_and_its_kid() {
        for (fields, problem) in [
            (
                format!(
                    r##""signing_key_id":"{KID}","signing_kms_key_id":"{ALIAS}","signing_private_key":"-----BEGIN""##
                ),
                SecretProblem::ConflictingSigningKeys,
            ),
            (
                format!(r#""signing_kms_key_id":"{ALIAS}""#),
                SecretProblem::MissingField("signing_key_id".into()),
            ),
        ] {
            let local = LocalKey::new();
            let get_key = public_key_rule(&local);
            let (sm, _) = secrets_manager(naming(&fields));
            let creds = SecretsManagerCredentials::builder(SECRET_ID)
                .client(sm)
                .kms_client(client(&[&get_key]))
                .build()
                .await
                .unwrap();
            let error = signer(&creds).await.unwrap_err();
            assert!(
                matches!(&error, VaultError::Malformed { problem: p, .. } if *p == problem),
                "{fields}: {error:?}"
            );
            assert_eq!(get_key.num_calls(), 0, "{fields}");
        }
    }

    #[tokio::test]
    async fn a_kms_key_that_cannot_be_used_names_the_secret_and_the_missing_action() {
        let get_key = mock!(Client::get_public_key)
            .then_http_response(|| kms_error(400, "AccessDeniedException"));
        let (sm, _) = secrets_manager(naming(&format!(
            r#""signing_key_id":"{KID}","signing_kms_key_id":"{ALIAS}""#
        )));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .kms_client(client(&[&get_key]))
            .build()
            .await
            .unwrap();
        let error = signer(&creds).await.unwrap_err();
        assert!(matches!(error, VaultError::KmsKey { .. }), "{error:?}");
        assert!(!error.is_retryable());
        let chain = truelayer_auth::error_chain(&error).to_string();
        assert!(
            chain.contains(SECRET_ID)
                && chain.contains(ALIAS)
                && chain.contains("kms:GetPublicKey"),
            "{chain}"
        );
        assert!(!chain.contains("s3cret"), "{chain}");
    }

    #[tokio::test]
    async fn a_source_built_from_a_secrets_manager_client_alone_asks_for_a_kms_client() {
        let (sm, _) = secrets_manager(naming(&format!(
            r#""signing_key_id":"{KID}","signing_kms_key_id":"{ALIAS}""#
        )));
        let creds = SecretsManagerCredentials::builder(SECRET_ID)
            .client(sm)
            .build()
            .await
            .unwrap();
        // The client credentials are served all the same.
        creds.secret().await.unwrap();
        let error = signer(&creds).await.unwrap_err();
        assert!(matches!(error, VaultError::NoKmsClient { .. }), "{error:?}");
        assert!(error.to_string().contains("kms_client"), "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn when_kms_throttles_or_denies_the_signing_layer_sends_nothing_and_says_why() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};
    use truelayer_auth_signing::{SigningError, SigningLayer};

    for (code, retryable) in [
        ("ThrottlingException", true),
        ("AccessDeniedException", false),
    ] {
        let local = LocalKey::new();
        let get = public_key_rule(&local);
        let sign = mock!(Client::sign)
            .sequence()
            .http_response(move || kms_error(400, code))
            .repeatedly()
            .build();
        let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
            .await
            .unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let upstream = {
            let sent = sent.clone();
            tower::service_fn(
                move |_: http::Request<http_body_util::Full<bytes::Bytes>>| {
                    sent.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
                },
            )
        };
        let request = http::Request::post("https://api.truelayer.com/v3/payments")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        let error = SigningLayer::new(key.signer(KID).unwrap())
            .layer(upstream)
            .oneshot(request)
            .await
            .unwrap_err();
        assert_eq!(
            sent.load(Ordering::SeqCst),
            0,
            "{code}: nothing is sent unsigned"
        );
        let SigningError::Sign(cause) = &error else {
            panic!("{code}: {error:?}");
        };
        assert_eq!(kms_cause(cause).is_retryable(), retryable, "{code}");
        // Bounded: the SDK's standard mode makes at most 3 attempts.
        assert!(sign.num_calls() <= 3, "{code}: {} calls", sign.num_calls());
        assert!(error.to_string().contains("not sent"), "{error}");
    }
}
