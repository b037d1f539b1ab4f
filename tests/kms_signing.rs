//! A payment signed by a key that never leaves AWS KMS (moto as the KMS): created through
//! `BearerAuthLayer` + `SigningLayer` against the emulator, which holds only the KMS key's
//! public half (as TrueLayer Console would), with one KMS `Sign` call per payment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use truelayer_auth::{Scopes, TokenCache};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::SigningLayer;
use truelayer_auth_testkit::emulator::{credentials, environment};
use truelayer_auth_testkit::moto;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};
use truelayer_auth_vault::KmsSigningKey;

#[tokio::test]
#[ignore = "needs moto: run cargo xtask ci"]
async fn a_payment_signed_in_kms_is_accepted_by_the_emulator_with_one_sign_per_payment() {
    let config = moto::config("eu-west-3").await;
    // Count the Sign calls the SDK makes (the interceptor sees each request).
    let signs = Arc::new(AtomicUsize::new(0));
    let kms = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&config)
            .interceptor(CountSigns(signs.clone()))
            .build(),
    );
    let created = kms
        .create_key()
        .key_spec(KeySpec::EccNistP521)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    let key_id = created.key_metadata().unwrap().key_id().to_owned();
    let key = KmsSigningKey::new(kms, &key_id).await.unwrap();

    // Console has the KMS key's public half under TrueLayer's kid.
    let emulator = Emulator::start().await.unwrap();
    emulator
        .register_signing_key(emulator.client_id(), "kms-kid", key.public_key_pem())
        .unwrap();
    let tokens = TokenCache::builder(environment(&emulator), credentials(&emulator))
        .scopes(Scopes::payments())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(tokens).replay_policy(CloneBodies))
        .layer(SigningLayer::new(key.signer("kms-kid").unwrap()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let payments = format!("{}/v3/payments", emulator.url());
    for n in 1..=3 {
        let request = http::Request::post(&payments)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"amount_in_minor":{n}}}"#
            ))))
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 201, "payment {n}");
    }
    let stats = emulator.stats();
    assert_eq!(stats.payments_created, 3);
    assert_eq!(stats.signature_rejections, 0);
    assert_eq!(signs.load(Ordering::SeqCst), 3, "one KMS Sign per payment");
}

/// Counts the KMS `Sign` requests the SDK sends.
#[derive(Debug)]
struct CountSigns(Arc<AtomicUsize>);

impl aws_sdk_kms::config::Intercept for CountSigns {
    fn name(&self) -> &'static str {
        "CountSigns"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_kms::config::RuntimeComponents,
        _: &mut aws_sdk_kms::config::ConfigBag,
    ) -> Result<(), aws_sdk_kms::error::BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        if target.ends_with(".Sign") {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}
