//! The event each KMS `Sign` logs. In a test binary of its own: `tracing` caches whether a
//! call site is enabled, and another test hitting the same one on another thread while this
//! one's subscriber is being set can leave it disabled for this test.

#![cfg(feature = "kms")]

mod support;

use support::{ALIAS, KID, LocalKey, client, payment, public_key_rule, sign_rule};
use truelayer_auth_vault::KmsSigningKey;

#[tokio::test]
async fn each_sign_logs_its_latency_and_the_kms_key_id_in_the_callers_span() {
    let local = LocalKey::new();
    let get = public_key_rule(&local);
    let (sign, _) = sign_rule(&local);
    let key = KmsSigningKey::new(client(&[&get, &sign]), ALIAS)
        .await
        .unwrap();
    let signer = key.signer(KID).unwrap();
    let (logs, _guard) = truelayer_auth_testkit::logs::LogCapture::trace();
    let span = tracing::info_span!("signing", kid = KID);
    tracing::Instrument::instrument(signer.sign(&payment(b"{}")), span)
        .await
        .unwrap();
    let text = logs.text();
    let line = text
        .lines()
        .find(|line| line.contains("KMS Sign"))
        .unwrap_or_else(|| panic!("no KMS Sign event in {text}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(
        line.contains(&format!(
            "signing{{kid=\"{KID}\"}}: truelayer_auth_vault::kms: KMS Sign"
        )),
        "in the caller's span: {line}"
    );
    assert!(line.contains(&format!("kms_key_id={ALIAS}")), "{line}");
    assert!(line.contains("latency_ms="), "{line}");

    // Through the signing layer, the event is in the layer's `tl_signature` span.
    use tower::{Layer, ServiceExt};
    let upstream = tower::service_fn(
        |_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        },
    );
    let request = http::Request::post("https://api.truelayer.com/v3/payments")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    truelayer_auth_signing::SigningLayer::new(signer)
        .layer(upstream)
        .oneshot(request)
        .await
        .unwrap();
    let text = logs.text();
    let line = text
        .lines()
        .filter(|line| line.contains("KMS Sign"))
        .nth(1)
        .unwrap_or_else(|| panic!("no second KMS Sign event in {text}"));
    assert!(
        line.contains(&format!("tl_signature{{kid=\"{KID}\"}}")),
        "in the signing layer's span: {line}"
    );
}
