//! What the KMS tests share: a local P-521 key standing in for the one in KMS, and the
//! `aws-smithy-mocks` rules and answers made with it.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::sync::{Arc, Mutex};

use aws_sdk_kms::Client;
use aws_sdk_kms::operation::get_public_key::GetPublicKeyOutput;
use aws_sdk_kms::operation::sign::{SignInput, SignOutput};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use p521::ecdsa::signature::hazmat::PrehashSigner;
use p521::pkcs8::{DecodePrivateKey, EncodePublicKey};
use truelayer_auth_signing::{Signable, Signer};

/// The key id as configured: an alias, as operators usually give it.
pub const ALIAS: &str = "alias/truelayer-signing";
/// The key's ARN, as `GetPublicKey` answers it.
pub const ARN: &str = "arn:aws:kms:eu-west-2:123456789012:key/0f6c3a4e-8d1b-4e53-9a1c-2b7d5e9f0a11";
/// TrueLayer's id for the uploaded public key.
pub const KID: &str = "45fc75cf-5649-4134-84b3-192c2c78e990";

/// A P-521 key standing in for the one inside KMS.
pub struct LocalKey {
    pub signing: p521::ecdsa::SigningKey,
    pub spki_der: Vec<u8>,
}

impl LocalKey {
    pub fn new() -> Arc<Self> {
        let pem = Signer::generate("local").private_key_pem().unwrap();
        let signing = p521::ecdsa::SigningKey::from_pkcs8_pem(&pem).unwrap();
        let spki_der = signing
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        Arc::new(LocalKey { signing, spki_der })
    }

    /// KMS's `GetPublicKey` answer for an ECC_NIST_P521 SIGN_VERIFY key.
    pub fn public_key(&self) -> GetPublicKeyOutput {
        GetPublicKeyOutput::builder()
            .key_id(ARN)
            .public_key(Blob::new(self.spki_der.clone()))
            .key_spec(KeySpec::EccNistP521)
            .key_usage(KeyUsageType::SignVerify)
            .signing_algorithms(SigningAlgorithmSpec::EcdsaSha512)
            .build()
    }

    /// KMS's `Sign` answer: ECDSA over the SHA-512 of a RAW message, or over the DIGEST
    /// given, as DER.
    pub fn sign(&self, input: &SignInput) -> SignOutput {
        assert_eq!(
            input.signing_algorithm(),
            Some(&SigningAlgorithmSpec::EcdsaSha512)
        );
        let message = input.message().expect("a message").as_ref();
        let digest = match input.message_type() {
            Some(MessageType::Digest) => message.to_vec(),
            _ => sha512(message),
        };
        let der: p521::ecdsa::DerSignature = self.signing.sign_prehash(&digest).unwrap();
        SignOutput::builder()
            .key_id(ARN)
            .signature(Blob::new(der.as_bytes()))
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha512)
            .build()
    }
}

pub fn sha512(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, data)
        .as_ref()
        .to_vec()
}

pub fn client(rules: &[&Rule]) -> Client {
    // The SDK's defaults otherwise: the standard retry mode, 3 attempts.
    mock_client!(aws_sdk_kms, RuleMode::MatchAny, rules)
}

pub fn public_key_rule(key: &Arc<LocalKey>) -> Rule {
    let key = key.clone();
    mock!(Client::get_public_key)
        .match_requests(|input| input.key_id() == Some(ALIAS))
        .then_output(move || key.public_key())
}

/// The message type and message of each `Sign` call, in order.
pub type SignCalls = Arc<Mutex<Vec<(MessageType, Vec<u8>)>>>;

/// A `Sign` rule that answers with `key` and records each call. Only calls naming the key by
/// its ARN match.
pub fn sign_rule(key: &Arc<LocalKey>) -> (Rule, SignCalls) {
    let key = key.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let rule = mock!(Client::sign)
        .match_requests(|input| input.key_id() == Some(ARN))
        .then_compute_output(move |input| {
            record.lock().unwrap().push((
                input.message_type().cloned().expect("a message type"),
                input.message().expect("a message").as_ref().to_vec(),
            ));
            key.sign(input)
        });
    (rule, seen)
}

/// An answer KMS gives over HTTP: `status` with the awsJson error `code`.
pub fn kms_error(status: u16, code: &str) -> HttpResponse {
    HttpResponse::new(
        StatusCode::try_from(status).unwrap(),
        SdkBody::from(format!(
            r#"{{"__type":"{code}","message":"answered by the mock"}}"#
        )),
    )
}

pub fn payment(body: &[u8]) -> Signable<'_> {
    Signable::new("POST", "/v3/payments")
        .header("Idempotency-Key", "2f4e6f0a-7c1b-4b8e-9a55-6a2f1c3d4e5f")
        .body(body)
}
